//! The ICMP rate limits of a network namespace and its counters of what they suppressed: what
//! a `port_unreachable` verdict names when NO_SOCKET drops outnumber the port unreachables
//! sent. Every value is per network namespace (`net->ipv4.sysctl_icmp_*`,
//! `net->ipv6.sysctl.icmpv6_time`, the namespace's SNMP MIBs), so they are read from a thread
//! inside it (`host::in_netns`): /proc/sys/net and /proc/thread-self/net then show that
//! namespace.
//!
//! The limits (net/ipv4/icmp.c, net/ipv6/icmp.c):
//! - per destination: `icmpv4_xrlim_allow` / `icmpv6_xrlim_allow` ask the destination's
//!   `inet_peer` token bucket (`inet_peer_xrlim_allow`, net/ipv4/inetpeer.c): one token per
//!   `icmp_ratelimit` ms (IPv6: `net.ipv6.icmp.ratelimit`), at most `XRLIM_BURST_FACTOR` (6)
//!   saved, so a burst gets six errors and then one per interval. IPv4 limits only the types
//!   in `icmp_ratemask` (destination unreachable included by default) and never a route out
//!   of a loopback device.
//! - all destinations: `icmp_global_allow`: `icmp_msgs_per_sec` with a burst of
//!   `icmp_msgs_burst`, shared by ICMPv4 and ICMPv6.
//!
//! Linux 6.7 added the counters `Icmp: OutRateLimitGlobal OutRateLimitHost` (/proc/net/snmp)
//! and `Icmp6OutRateLimitHost` (/proc/net/snmp6); older kernels lack them (`None`).

use std::{fs::File, io};

use serde::{Deserialize, Serialize};

use crate::host::{in_netns, snmp_counter};

/// `XRLIM_BURST_FACTOR` (net/ipv4/icmp.c): the per-destination bucket holds this many
/// intervals' worth of tokens.
pub const XRLIM_BURST_FACTOR: u64 = 6;

/// A namespace's ICMP rate limits (sysctls) and counters, as read at one moment. A value the
/// kernel does not have (or that could not be read) is `None`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IcmpLimits {
    /// `net.ipv4.icmp_ratelimit`, ms between errors to one destination (0: unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratelimit_ms: Option<u64>,
    /// `net.ipv4.icmp_ratemask`: the ICMP types the per-destination limit applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratemask: Option<u64>,
    /// `net.ipv6.icmp.ratelimit`, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_ratelimit_ms: Option<u64>,
    /// `net.ipv4.icmp_msgs_per_sec` and `net.ipv4.icmp_msgs_burst`: all destinations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msgs_per_sec: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msgs_burst: Option<u64>,
    /// `Icmp OutRateLimitHost` / `OutRateLimitGlobal` (6.7+), since the namespace was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_rate_limit_host: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_rate_limit_global: Option<u64>,
    /// `Icmp6OutRateLimitHost` (6.7+).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp6_out_rate_limit_host: Option<u64>,
}

impl IcmpLimits {
    /// Parses the namespace's files: `sysctl(path)` reads /proc/sys/PATH, `snmp` and `snmp6`
    /// are /proc/net/snmp and /proc/net/snmp6.
    pub fn parse(sysctl: impl Fn(&str) -> Option<String>, snmp: &str, snmp6: &str) -> Self {
        let number = |path: &str| sysctl(path).and_then(|text| text.trim().parse().ok());
        Self {
            ratelimit_ms: number("net/ipv4/icmp_ratelimit"),
            ratemask: number("net/ipv4/icmp_ratemask"),
            ipv6_ratelimit_ms: number("net/ipv6/icmp/ratelimit"),
            msgs_per_sec: number("net/ipv4/icmp_msgs_per_sec"),
            msgs_burst: number("net/ipv4/icmp_msgs_burst"),
            out_rate_limit_host: snmp_counter(snmp, "Icmp", "OutRateLimitHost"),
            out_rate_limit_global: snmp_counter(snmp, "Icmp", "OutRateLimitGlobal"),
            icmp6_out_rate_limit_host: snmp_counter(snmp6, "Icmp6", "OutRateLimitHost"),
        }
    }

    /// The per-destination interval for a flow of that family, ms.
    pub fn interval_ms(&self, ipv6: bool) -> Option<u64> {
        if ipv6 {
            self.ipv6_ratelimit_ms
        } else {
            self.ratelimit_ms
        }
    }

    /// The per-destination suppressions counted for that family (6.7+).
    pub fn host_suppressed(&self, ipv6: bool) -> Option<u64> {
        if ipv6 {
            self.icmp6_out_rate_limit_host
        } else {
            self.out_rate_limit_host
        }
    }
}

/// The ICMP limits and counters of the network namespace `netns` refers to.
pub fn read_in(netns: &File) -> io::Result<IcmpLimits> {
    in_netns(netns, || {
        // thread-self: /proc/net follows the thread group leader's namespace, not this
        // thread's (see `lab::netns::Netns::snmp`).
        let snmp = std::fs::read_to_string("/proc/thread-self/net/snmp").unwrap_or_default();
        let snmp6 = std::fs::read_to_string("/proc/thread-self/net/snmp6").unwrap_or_default();
        IcmpLimits::parse(
            |path| std::fs::read_to_string(format!("/proc/sys/{path}")).ok(),
            &snmp,
            &snmp6,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_sysctls_and_the_counters_a_kernel_has() {
        let sysctl = |path: &str| {
            Some(
                match path {
                    "net/ipv4/icmp_ratelimit" | "net/ipv4/icmp_msgs_per_sec" => "1000\n",
                    "net/ipv4/icmp_ratemask" => "6168\n",
                    "net/ipv6/icmp/ratelimit" => "100\n",
                    "net/ipv4/icmp_msgs_burst" => "50\n",
                    _ => return None,
                }
                .to_owned(),
            )
        };
        // Linux 6.18's rows.
        let snmp = "Icmp: InMsgs OutMsgs OutErrors OutRateLimitGlobal OutRateLimitHost OutDestUnreachs\n\
                    Icmp: 3 30 0 1 24 6\n";
        let snmp6 = "Icmp6OutMsgs                    \t4\nIcmp6OutRateLimitHost           \t9\n";
        let limits = IcmpLimits::parse(sysctl, snmp, snmp6);
        assert_eq!(
            limits,
            IcmpLimits {
                ratelimit_ms: Some(1000),
                ratemask: Some(6168),
                ipv6_ratelimit_ms: Some(100),
                msgs_per_sec: Some(1000),
                msgs_burst: Some(50),
                out_rate_limit_host: Some(24),
                out_rate_limit_global: Some(1),
                icmp6_out_rate_limit_host: Some(9),
            }
        );
        assert_eq!(limits.interval_ms(true), Some(100));
        assert_eq!(limits.host_suppressed(false), Some(24));
        // Linux 5.10's rows have no rate-limit counters.
        let old = IcmpLimits::parse(
            sysctl,
            "Icmp: InMsgs OutMsgs OutDestUnreachs\nIcmp: 0 2 2\n",
            "Icmp6OutMsgs \t0\n",
        );
        assert_eq!(old.out_rate_limit_host, None);
        assert_eq!(old.out_rate_limit_global, None);
        assert_eq!(old.icmp6_out_rate_limit_host, None);
        assert_eq!(old.ratelimit_ms, Some(1000));
    }
}
