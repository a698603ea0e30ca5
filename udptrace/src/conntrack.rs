//! A network namespace's connection-tracking counters, for the `conntrack_drop` verdict: the
//! table's fill (`nf_conntrack_count` of the namespace against the global `nf_conntrack_max`)
//! and the per-CPU statistics of /proc/net/stat/nf_conntrack summed over the CPUs.
//!
//! The kernel counts every packet conntrack itself makes netfilter drop in `drop`
//! (net/netfilter/nf_conntrack_core.c: `nf_conntrack_in` when `resolve_normal_ct` fails, as
//! when `__nf_conntrack_alloc` finds the table full and `early_drop` finds nothing to evict;
//! `nf_ct_resolve_clash` when a clash on insertion cannot be resolved), and the failed
//! insertions of `__nf_conntrack_confirm` in `insert_failed`. A rule's drop (nftables,
//! iptables) touches neither.

use std::{fs, io};

use serde::{Deserialize, Serialize};

/// What the kernel says about a namespace's connection tracking.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConntrackStats {
    /// Entries in the namespace's table (`net.netfilter.nf_conntrack_count`).
    pub count: u64,
    /// The limit every namespace's count is held to (`net.netfilter.nf_conntrack_max`, one
    /// value for all namespaces: read-only outside the initial one).
    pub max: u64,
    /// Packets conntrack dropped (`drop`, all CPUs).
    pub drop: u64,
    /// Entries that could not be inserted at confirmation (`insert_failed`, all CPUs).
    pub insert_failed: u64,
    /// Entries evicted to make room for new ones (`early_drop`, all CPUs).
    pub early_drop: u64,
}

impl ConntrackStats {
    /// Whether the table is full: `__nf_conntrack_alloc` refuses a new entry once the count
    /// would pass the limit (a limit of 0 means none).
    pub fn full(&self) -> bool {
        self.max > 0 && self.count >= self.max
    }
}

/// The counters of the calling thread's network namespace; an error when conntrack is not
/// loaded (no /proc/sys/net/netfilter/nf_conntrack_count) or its statistics cannot be read.
pub fn read_own_namespace() -> io::Result<ConntrackStats> {
    let sysctl = |name: &str| -> io::Result<u64> {
        fs::read_to_string(format!("/proc/sys/net/netfilter/{name}"))?
            .trim()
            .parse()
            .map_err(|_| io::Error::other(format!("{name}: not a number")))
    };
    // thread-self: the namespace the thread entered (`host::in_netns`), not the process's.
    let stat = fs::read_to_string("/proc/thread-self/net/stat/nf_conntrack")?;
    let mut stats = parse_stat(&stat)
        .ok_or_else(|| io::Error::other("/proc/net/stat/nf_conntrack: unexpected layout"))?;
    stats.count = sysctl("nf_conntrack_count")?;
    stats.max = sysctl("nf_conntrack_max")?;
    Ok(stats)
}

/// Sums the per-CPU rows of /proc/net/stat/nf_conntrack (hexadecimal, columns named by its
/// first line: net/netfilter/nf_conntrack_standalone.c `ct_cpu_seq_show`, whose columns
/// changed between kernels, e.g. `delete_list` before 5.13 and `chainlength` after). Only
/// `drop`, `insert_failed` and `early_drop` are taken; the count and max come from the sysctls.
pub fn parse_stat(text: &str) -> Option<ConntrackStats> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next()?.split_whitespace().collect();
    let column = |name: &str| header.iter().position(|&column| column == name);
    let (drop, insert_failed, early_drop) = (
        column("drop")?,
        column("insert_failed")?,
        column("early_drop")?,
    );
    let mut stats = ConntrackStats::default();
    for line in lines.filter(|line| !line.trim().is_empty()) {
        let values: Vec<u64> = line
            .split_whitespace()
            .map(|value| u64::from_str_radix(value, 16).ok())
            .collect::<Option<_>>()?;
        let value = |index: usize| values.get(index).copied();
        stats.drop += value(drop)?;
        stats.insert_failed += value(insert_failed)?;
        stats.early_drop += value(early_drop)?;
    }
    Some(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 6.18's layout (two CPUs), and 5.10's with `delete_list` where 6.x has `chainlength`.
    #[test]
    fn sums_the_cpus_by_column_name() {
        let now = "entries  clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop icmp_error  expect_new expect_create expect_delete search_restart\n\
                   00000008  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000001 00000002 00000000 00000000  00000000 00000000 00000000 00000000\n\
                   00000008  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 0000000a 00000003 00000000  00000000 00000000 00000000 00000000\n";
        assert_eq!(
            parse_stat(now),
            Some(ConntrackStats {
                count: 0,
                max: 0,
                drop: 12,
                insert_failed: 1,
                early_drop: 3,
            })
        );
        let old = "entries  searched found new invalid ignore delete delete_list insert insert_failed drop early_drop icmp_error  expect_new expect_create expect_delete search_restart\n\
                   00000001  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000004 00000000 00000000  00000000 00000000 00000000 00000000\n";
        assert_eq!(parse_stat(old).map(|stats| stats.drop), Some(4));
        assert_eq!(parse_stat("entries drop\n00000001 00000002\n"), None);
        assert_eq!(parse_stat(""), None);
    }

    #[test]
    fn full_when_the_count_reaches_a_limit() {
        let stats = |count, max| ConntrackStats {
            count,
            max,
            ..ConntrackStats::default()
        };
        assert!(stats(8, 8).full());
        assert!(!stats(7, 8).full());
        assert!(!stats(8, 0).full(), "no limit");
    }
}
