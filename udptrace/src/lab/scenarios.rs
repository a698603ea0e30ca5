//! The classic UDP incidents, reproduced in private namespaces with documentation-range
//! addresses (../shared/seeds/). Each scenario builds its topology (`setup`), then runs its
//! peers (`exercise`, about a second, bounded) so that a tracer can attach in between; the
//! `Outcome` holds what a tracer's output can be checked against (namespace names and inodes,
//! addresses and ports, counts, errno values, the kernel's UDP counters before and after, and
//! the source the replies really came from). Every scenario uses its own server port so that
//! several can be traced at once.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context as _;
use serde::Serialize;

use super::{
    netns::{Netns, NetnsInfo, veth},
    peers::{
        ClientReport, ClientSpec, Proxy, ProxyReport, SeenDatagram, Server, ServerMode,
        ServerReport, UdpCounters, Witness, run_client, send_with_bad_checksum, udp_counters,
    },
};

/// Lifetime of the peers of one exercise: a bound, not a pause (they are stopped as soon as
/// the client is done).
pub(super) const PEER_LIFETIME: Duration = Duration::from_secs(4);
/// After the client's last datagram: for the last replies, ICMP errors and drops to happen
/// before the servers close their sockets (a closed socket would add NO_SOCKET drops).
pub(super) const SETTLE: Duration = Duration::from_millis(150);
/// How long the neighbor-unreachable client keeps reading after its burst: resolution gives up
/// 300 ms after its one probe (`shorten_neighbour_resolution`); the rest is margin.
const UNRESOLVED_LINGER: Duration = Duration::from_secs(1);

/// Where the userland proxy of a scenario runs and forwards.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct ProxyPlan {
    /// Role of the namespace it runs in.
    pub netns: &'static str,
    pub listen: SocketAddr,
    pub backend: SocketAddr,
}

/// A built topology; its namespaces (and with them every link and bridge in them) are deleted
/// when it is dropped, also when a test panics.
pub struct Lab {
    pub scenario: &'static str,
    pub client: Netns,
    pub server: Netns,
    /// The address:port the client sends to.
    pub target: SocketAddr,
    /// Where the server socket binds.
    pub bind: SocketAddr,
    /// The client's wildcard bind address (family of the scenario).
    pub client_bind: SocketAddr,
    /// Namespaces between client and server (routers, NAT, the proxy's host), kept alive with
    /// the lab.
    pub middle: Vec<Netns>,
    pub proxy: Option<ProxyPlan>,
    /// Role of the namespace where the server's replies come back to: the client's, or the
    /// NAT namespace in front of it.
    pub reply_netns: &'static str,
    /// A machine-wide setting the scenario changed (`Scenario::global_change`), restored when
    /// the lab is dropped.
    pub global: Option<GlobalSetting>,
}

/// A sysctl that every network namespace shares, set for a scenario and restored on drop
/// (also when a test panics).
pub struct GlobalSetting {
    path: PathBuf,
    previous: String,
}

impl GlobalSetting {
    /// Writes `value` to the sysctl `key` of the initial namespace (where the lab runs; such
    /// sysctls are read-only elsewhere), keeping the value it had.
    fn set(key: &str, value: &str) -> anyhow::Result<Self> {
        let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
        let previous = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {key}"))?
            .trim()
            .to_owned();
        std::fs::write(&path, value).with_context(|| format!("`sysctl -w {key}={value}`"))?;
        Ok(Self { path, previous })
    }
}

impl Drop for GlobalSetting {
    fn drop(&mut self) {
        if let Err(error) = std::fs::write(&self.path, &self.previous) {
            eprintln!(
                "lab: could not restore {} to {}: {error}",
                self.path.display(),
                self.previous
            );
        }
    }
}

impl Lab {
    /// Every namespace of the lab: client, server, then the middle ones.
    pub fn namespaces(&self) -> Vec<&Netns> {
        [&self.client, &self.server]
            .into_iter()
            .chain(&self.middle)
            .collect()
    }

    pub fn namespace(&self, role: &str) -> Option<&Netns> {
        self.namespaces().into_iter().find(|n| n.role == role)
    }

    fn counters(&self) -> anyhow::Result<Vec<UdpCounters>> {
        self.namespaces().into_iter().map(udp_counters).collect()
    }
}

/// One namespace of an exercised lab and its UDP counters around the exercise.
#[derive(Clone, Debug, Serialize)]
pub struct NamespaceFacts {
    pub role: String,
    pub name: String,
    /// `net->ns.inum`, as the tracer reports it.
    pub inode: u32,
    pub before: UdpCounters,
    pub after: UdpCounters,
}

impl NamespaceFacts {
    /// How much a Udp (or Udp6) counter grew during the exercise.
    pub fn delta(&self, ipv6: bool, counter: &str) -> u64 {
        self.after.since(&self.before, ipv6, counter)
    }
}

/// What happened, for people, tests and the tracer's checks.
#[derive(Debug, Serialize)]
pub struct Outcome {
    pub scenario: &'static str,
    pub ipv6: bool,
    /// Where the client sent.
    pub target: SocketAddr,
    /// Where the server socket was bound (the port is the scenario's).
    pub server_bind: SocketAddr,
    pub client_netns: NetnsInfo,
    pub server_netns: NetnsInfo,
    /// Local address, sent, replies (their sources), errno values.
    pub client: ClientReport,
    pub server: Option<ServerReport>,
    pub proxy: Option<ProxyReport>,
    /// Role of the namespace the witness watched (`Lab::reply_netns`), if one ran.
    pub witness_netns: Option<String>,
    /// UDP datagrams from the server's port that reached that namespace, accepted by a socket
    /// or not: the source the replies really came from.
    pub replies_seen: Vec<SeenDatagram>,
    /// Every namespace with its Udp/Udp6 counters before and after the exercise.
    pub namespaces: Vec<NamespaceFacts>,
    /// Server namespace's UDP receive-buffer errors during the exercise (kernel counter).
    pub rcvbuf_errors: Option<u64>,
}

impl Outcome {
    pub fn namespace(&self, role: &str) -> Option<&NamespaceFacts> {
        self.namespaces.iter().find(|n| n.role == role)
    }

    /// How much a Udp (or Udp6, for IPv6 scenarios) counter grew in namespace `role`.
    pub fn delta(&self, role: &str, counter: &str) -> Option<u64> {
        self.namespace(role).map(|n| n.delta(self.ipv6, counter))
    }

    /// Sources of the replies that reached the client side (whether it took them or not).
    pub fn reply_sources(&self) -> Vec<SocketAddr> {
        self.replies_seen.iter().map(|d| d.source).collect()
    }

    pub fn describe(&self) -> String {
        let mut text = format!(
            "client {} → {}: sent {}, {} replies{}, errors {:?}",
            self.client
                .local
                .map_or_else(|| "?".into(), |a| a.to_string()),
            self.target,
            self.client.sent,
            self.client.replies.len(),
            self.client
                .replies
                .first()
                .map_or_else(String::new, |from| format!(" (from {from})")),
            self.client
                .errors
                .iter()
                .map(|e| crate::kernel::errno_name(*e))
                .collect::<Vec<_>>()
        );
        if let Some(proxy) = &self.proxy {
            text.push_str(&format!(
                "; proxy {} received {}, forwarded {} to {}, relayed {}",
                proxy.listen, proxy.received, proxy.forwarded, proxy.backend, proxy.relayed
            ));
        }
        if let Some(server) = &self.server {
            text.push_str(&format!(
                "; server {} received {}",
                server.local, server.received
            ));
            if let Some(after) = server.local_after
                && after != server.local
            {
                text.push_str(&format!(
                    " (socket now {after}{})",
                    server
                        .peer_after
                        .map_or_else(String::new, |peer| format!(" connected to {peer}"))
                ));
            }
        }
        if let Some(role) = &self.witness_netns {
            let mut sources = self.reply_sources();
            sources.dedup();
            text.push_str(&format!(
                "; replies reaching {role}: {} from {sources:?}",
                self.replies_seen.len()
            ));
        }
        for facts in &self.namespaces {
            let no_ports = facts.delta(self.ipv6, "NoPorts");
            if no_ports > 0 {
                text.push_str(&format!("; {} NoPorts +{no_ports}", facts.role));
            }
        }
        if let Some(errors) = self.rcvbuf_errors {
            text.push_str(&format!("; kernel RcvbufErrors +{errors}"));
        }
        text
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Topology {
    /// Client and server namespaces joined by a veth pair.
    TwoHosts,
    /// A Docker-like host: bridge `br0` (like docker0) with a container on it and an uplink
    /// `eth0`; the server runs on the host, the client in the container.
    DockerHost,
    /// Seed 004 with hairpin DNAT: a client container behind a masquerading Docker-in-Docker
    /// namespace (`dind2`), a host namespace publishing port P by DNAT to a second DinD
    /// namespace (`dind1`, the server) on the same bridge. The reply is bridged straight back
    /// to `dind2` without passing the host's conntrack, so it arrives from dind1's address
    /// instead of the host's, `dind2`'s conntrack cannot undo its masquerade and the reply dies
    /// NO_SOCKET there.
    DindNat,
    /// Seed 004 as written: the same namespaces, but the host's DNAT exempts traffic from its
    /// own bridge (Docker's `! -i br-xxx`), so a userland proxy (docker-proxy) on the host's
    /// wildcard address takes the datagram, forwards it to dind1 and relays the reply from its
    /// wildcard socket: from the bridge address, not the uplink address dind2's NAT sent to.
    DindProxy,
    /// A multi-homed server: `eth0` towards the client (192.0.2.0/24) and `eth1` towards
    /// 203.0.113.0/24 (a third namespace), strict reverse-path filtering on; the client sends
    /// from its second address 203.0.113.1 through `eth0`.
    MultiHomed,
    /// A client (198.51.100.2) behind a router namespace (198.51.100.1, forwarding on) whose
    /// table has an `unreachable` route for 203.0.113.0/24.
    RejectRoute,
    /// Client 198.51.100.2 behind a router (198.51.100.1 / 192.0.2.1) from the server
    /// 192.0.2.2, every link with an MTU of 1500 (IPv6: 2001:db8:1::2, 2001:db8:1::1 /
    /// 2001:db8:2::1, 2001:db8:2::2).
    Routed,
}

#[derive(Clone, Copy, Debug)]
enum Traffic {
    /// Nothing listens.
    ClosedPort,
    /// Nothing listens, and the server namespace keeps its default ICMP rate limits: a
    /// connected client sends `RATE_LIMITED_BURST` datagrams, each followed by a short wait
    /// for its error (`RATE_LIMITED_WAIT`), so that every error that comes is read apart.
    RateLimited,
    /// A server listens but nftables drops its port on input.
    Firewalled,
    /// A server that never reads, with a 4 KiB receive buffer, gets a burst of 500.
    Overflow,
    /// A request/reply exchange with the given server.
    Exchange(ServerMode),
    /// Datagrams with a wrong UDP checksum (a raw socket writes the header) to a closed port.
    BadChecksum,
    /// A burst of `UNRESOLVED_BURST` datagrams to an address on the client's link that no host
    /// holds, from a socket with IP_RECVERR; the client's neighbour resolution is shortened
    /// (`shorten_neighbour_resolution`).
    Unresolved,
    /// `SPREAD_REQUESTS` requests `SPREAD_INTERVAL` apart, longer in all than the default reply
    /// timeout, to a server in the given mode; with none, to 203.0.113.53 out of the client's
    /// ifb device, where they vanish as beyond this host.
    Spread(Option<ServerMode>),
    /// To an address the client has no route to: `UNROUTED_SENDS` datagrams with sendto() from
    /// an unbound socket, then a connect() of another one.
    Unrouted,
    /// A connected client with IP_RECVERR sends `UNROUTED_SENDS` datagrams, which the router
    /// drops for its reject route.
    Rejected,
    /// The client's eth0 is shaped by `tc qdisc add dev eth0 root tbf` with these parameters;
    /// after one datagram that resolves ARP, a connected client with IP_RECVERR sends
    /// `TX_BURST` datagrams at once to a server that reads them.
    Shaped(&'static [&'static str]),
    /// Requests answered with `FRAGMENTED_ANSWER` bytes, which the server's kernel sends in
    /// fragments, across a router whose firewall drops those of the given kind.
    Fragmented(FragmentDrop),
    /// Requests answered with `PATH_MTU_ANSWER` bytes and DF set (IP_PMTUDISC_DO) across a
    /// router whose link to the client has an MTU of `NARROW_MTU`.
    PathMtu,
    /// The server's namespace tracks connections (an nftables `ct state` rule);
    /// `CONNTRACK_ENTRIES` echo conversations fill its table with entries that cannot be
    /// evicted, then a new client sends two datagrams. With `full`, the machine's
    /// `nf_conntrack_max` is lowered to `CONNTRACK_ENTRIES` first, so that the new flow finds
    /// the table full.
    Conntrack { full: bool },
}

/// Conversations that fill the conntrack table (and, in `conntrack-full`, its limit).
pub const CONNTRACK_ENTRIES: usize = 4;
/// How long a filling conversation waits before its second request: UDP entries become
/// ASSURED, which `early_drop` (net/netfilter/nf_conntrack_core.c) never evicts for a new
/// entry, only once they have seen a reply and, since 5.16, are still active 2 s after their
/// creation (`nf_conntrack_udp_packet`, net/netfilter/nf_conntrack_proto_udp.c, `stream_ts`).
const CONNTRACK_ASSURE: Duration = Duration::from_millis(2_200);

/// The path-MTU scenario's answer: fits the server's 1500-byte link, not the client's.
pub const PATH_MTU_ANSWER: usize = 1_400;
/// The MTU of the client's link in the path-MTU scenario (IPv6's minimum).
pub const NARROW_MTU: u32 = 1_280;

/// Which IP fragments the router's firewall drops.
#[derive(Clone, Copy, Debug)]
enum FragmentDrop {
    /// None: the answer is reassembled.
    Nothing,
    /// Every fragment after the first (`ip frag-off & 0x1fff != 0`): the first waits for them
    /// at the client until reassembly times out.
    Later,
    /// Every fragment (`ip frag-off & 0x3fff != 0`: offset or MF set).
    All,
}

/// The large answer's size: a 4000-byte DNS answer over EDNS, three fragments on a
/// 1500-byte MTU.
pub const FRAGMENTED_ANSWER: usize = 4_000;

/// The client's reassembly timeout (`net.ipv4.ipfrag_time`, per namespace; 30 s by default),
/// short so that it expires within the exercise.
const REASSEMBLY_TIME: Duration = Duration::from_secs(1);

/// Datagrams of the `RateLimited` client: more than one destination's burst of port
/// unreachables (`XRLIM_BURST_FACTOR`, 6: `inet_peer_xrlim_allow`, net/ipv4/inetpeer.c, on a
/// new peer whose bucket starts full) and fewer than `icmp_msgs_burst` (50), so that only the
/// per-destination limit applies.
pub const RATE_LIMITED_BURST: usize = 30;
/// How long the `RateLimited` client waits for each datagram's error: an error comes within
/// microseconds across the veth, and the whole burst (at most 30 × 10 ms) ends well within
/// `net.ipv4.icmp_ratelimit`'s 1 s, so no token is added to the bucket in between.
const RATE_LIMITED_WAIT_MS: u64 = 10;

/// Datagrams in the rcvbuf-overflow burst.
pub const OVERFLOW_BURST: usize = 500;
/// Datagrams in the neighbor-unreachable burst: all but the last are pushed out of the
/// neighbour's one-datagram queue (NEIGH_QUEUEFULL), the last dies when resolution fails.
pub const UNRESOLVED_BURST: usize = 3;
/// Datagrams the `Unrouted` and `Rejected` clients send.
pub const UNROUTED_SENDS: usize = 2;
/// Datagrams of the `Traffic::Shaped` burst (66 bytes each on the wire, 86 over IPv6): more
/// than `TX_QUEUE_FULL`'s bucket and queue hold together (about 23 and 24; 17 and 18), fewer
/// than `TX_QUEUE_AMPLE`'s bucket takes at once.
pub const TX_BURST: usize = 100;
/// The handle the lab gives the shaper (the kernel would pick one, `qdisc_alloc_handle`), which
/// a `tx_drop` verdict names.
pub const TX_SHAPER_HANDLE: &str = "1:";
/// A token bucket of one full-size packet at 80 kbit/s with a 1,600-byte queue: tbf_enqueue
/// (net/sched/sch_tbf.c) drops what its queue cannot hold (`qdisc_drop`), and the queue
/// drains in 160 ms.
const TX_QUEUE_FULL: &[&str] = &["rate", "80kbit", "burst", "1540", "limit", "1600"];
/// The same shaper with room for the burst: a 16 KiB bucket at 10 Mbit/s.
const TX_QUEUE_AMPLE: &[&str] = &["rate", "10mbit", "burst", "16kb", "limit", "16kb"];
/// Requests of `Traffic::Spread`: the last leaves more than the default reply timeout (2 s)
/// after the first, so that its events show the first's timeout has passed.
const SPREAD_REQUESTS: usize = 3;
const SPREAD_INTERVAL: Duration = Duration::from_millis(1_050);
/// How long the `Spread` client waits for each answer (an echo comes at once).
const SPREAD_REPLY_WAIT_MS: u64 = 50;
/// The host part of the address `Traffic::Unresolved` sends to on the client's link (192.0.2.99,
/// 2001:db8::99: its decimal digits read as the same text in both).
const ABSENT_HOST: u8 = 99;

pub struct Scenario {
    pub name: &'static str,
    /// The incident it reproduces.
    pub description: &'static str,
    /// What a correct diagnosis says.
    pub diagnosis: &'static str,
    /// The verdict codes a correct diagnosis gives (none for healthy controls).
    pub expected: &'static [&'static str],
    topology: Topology,
    ipv6: bool,
    port: u16,
    /// Bind the server to the address the client targets instead of the wildcard.
    bind_specific: bool,
    traffic: Traffic,
}

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "closed-port",
        description: "a connected client (192.0.2.1) sends to 192.0.2.2:5001 where nothing listens",
        diagnosis: "NO_SOCKET drops in the server namespace, ICMP port unreachable back (rate limit off there), ECONNREFUSED on the client's connected socket: nothing listens on the port",
        expected: &["port_unreachable"],
        topology: Topology::TwoHosts,
        ipv6: false,
        port: 5001,
        bind_specific: false,
        traffic: Traffic::ClosedPort,
    },
    Scenario {
        name: "closed-port-ratelimited",
        description: "a connected client (192.0.2.1) sends 30 datagrams, one every 10 ms at most, to 192.0.2.2:5063 where nothing listens; the server namespace keeps its default ICMP rate limits",
        diagnosis: "NO_SOCKET drops for all 30 but only 6 ICMP port unreachables (the per-destination limit, net.ipv4.icmp_ratelimit=1000 ms: a burst of 6): 24 errors suppressed, and for those the client times out instead of getting ECONNREFUSED",
        expected: &["port_unreachable"],
        topology: Topology::TwoHosts,
        ipv6: false,
        port: 5063,
        bind_specific: false,
        traffic: Traffic::RateLimited,
    },
    Scenario {
        name: "closed-port-v6",
        description: "the same over IPv6: 2001:db8::1 sends to [2001:db8::2]:5002 where nothing listens",
        diagnosis: "NO_SOCKET in __udp6_lib_rcv, ICMPv6 destination unreachable type 1 code 4, ECONNREFUSED on the client: nothing listens on the port",
        expected: &["port_unreachable"],
        topology: Topology::TwoHosts,
        ipv6: true,
        port: 5002,
        bind_specific: false,
        traffic: Traffic::ClosedPort,
    },
    Scenario {
        name: "firewalled-port",
        description: "a server listens on 192.0.2.2:5003 but an nftables input rule in its namespace drops the port",
        diagnosis: "NETFILTER_DROP at the input hook in the server namespace, naming the rule; the server receives nothing and the client sees no error at all (no ICMP)",
        expected: &["firewall_drop"],
        topology: Topology::TwoHosts,
        ipv6: false,
        port: 5003,
        bind_specific: true,
        traffic: Traffic::Firewalled,
    },
    Scenario {
        name: "rcvbuf-overflow",
        description: "a burst of 500 datagrams into a socket with a 4 KiB receive buffer that nobody reads",
        diagnosis: "SOCKET_RCVBUFF drops on the server socket (named by inode and owner), as many as the namespace's Udp RcvbufErrors grew; the rest were queued",
        expected: &["rcvbuf_overflow"],
        topology: Topology::TwoHosts,
        ipv6: false,
        port: 5004,
        bind_specific: true,
        traffic: Traffic::Overflow,
    },
    Scenario {
        name: "wrong-source-reply",
        description: "seeds 000/003: a server bound to 0.0.0.0:5005 on a Docker-like host answers a container (198.51.100.2) that wrote to the uplink address 192.0.2.1 with recvfrom/sendto",
        diagnosis: "the reply leaves from the bridge address 198.51.100.1 (route lookup picks br0's address), the container's connected socket does not match it: NO_SOCKET there and ICMP port unreachable back; fix: bind to 192.0.2.1 or reply with IP_PKTINFO",
        expected: &["reply_source_mismatch"],
        topology: Topology::DockerHost,
        ipv6: false,
        port: 5005,
        bind_specific: false,
        traffic: Traffic::Exchange(ServerMode::Echo),
    },
    Scenario {
        name: "wrong-source-reply-pktinfo",
        description: "healthy control: the same wildcard server replying with IP_PKTINFO (recvmsg/sendmsg, as dnsmasq does)",
        diagnosis: "no verdict: every reply comes from 192.0.2.1, the address the container asked",
        expected: &[],
        topology: Topology::DockerHost,
        ipv6: false,
        port: 5006,
        bind_specific: false,
        traffic: Traffic::Exchange(ServerMode::EchoPktinfo),
    },
    Scenario {
        name: "bound-server",
        description: "healthy control: the server bound to the uplink address 192.0.2.1 itself",
        diagnosis: "no verdict: a socket bound to one address replies from it",
        expected: &[],
        topology: Topology::DockerHost,
        ipv6: false,
        port: 5007,
        bind_specific: true,
        traffic: Traffic::Exchange(ServerMode::Echo),
    },
    Scenario {
        name: "nc-connect-pinning",
        description: "seed 001: a netcat -u -l style server on 0.0.0.0:5008 connect()s to its first peer (a container that wrote to 192.0.2.1)",
        diagnosis: "connect() pins the server socket to the bridge address 198.51.100.1: its reply comes from the wrong source (NO_SOCKET in the container), and the container's next datagrams to 192.0.2.1 find no socket on the host (NO_SOCKET, ICMP, ECONNREFUSED) although the connected socket exists",
        expected: &["reply_source_mismatch", "connected_socket_mismatch"],
        topology: Topology::DockerHost,
        ipv6: false,
        port: 5008,
        bind_specific: false,
        traffic: Traffic::Exchange(ServerMode::ConnectFirstPeer),
    },
    Scenario {
        name: "wrong-source-reply-v6",
        description: "the wrong-source reply over IPv6: bridge 2001:db8:1::1, uplink 2001:db8:2::1, container 2001:db8:1::2, server on [::]:5009",
        diagnosis: "the reply leaves from 2001:db8:1::1 (source address selection for the route out br0), the container's connected socket drops it NO_SOCKET; fix: bind or IPV6_RECVPKTINFO",
        expected: &["reply_source_mismatch"],
        topology: Topology::DockerHost,
        ipv6: true,
        port: 5009,
        bind_specific: false,
        traffic: Traffic::Exchange(ServerMode::Echo),
    },
    Scenario {
        name: "dind-nat-hairpin",
        description: "seed 004, DNAT variant: a client behind a masquerading DinD namespace sends to 192.0.2.1:5010, which the host publishes by DNAT to dind1 on the same bridge",
        diagnosis: "the reply is bridged back from dind1's own address 192.0.2.2 without the host's conntrack undoing the DNAT; dind2's conntrack expected it from 192.0.2.1, does not undo its masquerade, and it dies NO_SOCKET in dind2",
        expected: &["nat_reply_mismatch"],
        topology: Topology::DindNat,
        ipv6: false,
        port: 5010,
        bind_specific: false,
        traffic: Traffic::Exchange(ServerMode::Echo),
    },
    Scenario {
        name: "dind-masquerade-proxy",
        description: "seed 004 as written: a client container behind a masquerading DinD namespace (dind2) sends to the host's address 203.0.113.1:5011; the host's DNAT exempts its own bridge, so a userland proxy on 0.0.0.0:5011 (a thread of this lab standing in for docker-proxy) forwards to dind1 and relays the reply",
        diagnosis: "the proxy relays from its wildcard socket, so the reply leaves from the bridge address 192.0.2.1 instead of 203.0.113.1; dind2's conntrack does not recognise it, does not undo the masquerade, and it dies NO_SOCKET in dind2; the verdict names the socket's owner (udptrace here) with the generic fix (bind to 203.0.113.1 or reply with IP_PKTINFO); when the owner is docker-proxy itself (lab run docker-proxy-reply) it gives Docker's: --userland-proxy=false (hairpin NAT) or -p 203.0.113.1:5011:PORT/udp",
        expected: &["reply_source_mismatch"],
        topology: Topology::DindProxy,
        ipv6: false,
        port: 5011,
        bind_specific: false,
        traffic: Traffic::Exchange(ServerMode::Echo),
    },
    Scenario {
        name: "rp-filter",
        description: "a multi-homed server (eth0 192.0.2.2, eth1 203.0.113.2) with strict rp_filter gets datagrams to 192.0.2.2:5012 on eth0 from 203.0.113.1, whose route back leaves through eth1",
        diagnosis: "IP_RPFILTER drops on eth0 in the server namespace before UDP sees them: the server socket receives nothing and the client sees no error; fix: rp_filter=2 (loose) or routes that make the path symmetric",
        expected: &["rp_filter_drop"],
        topology: Topology::MultiHomed,
        ipv6: false,
        port: 5012,
        bind_specific: true,
        traffic: Traffic::Exchange(ServerMode::Echo),
    },
    Scenario {
        name: "bad-checksum",
        description: "a sender writes UDP datagrams to 192.0.2.2:5013 with a wrong checksum (a raw socket, as a broken offload or a middlebox rewriting the payload would leave them)",
        diagnosis: "UDP_CSUM drops in __udp4_lib_rcv in the server namespace (Udp InCsumErrors grows), no ICMP error back: the datagram is discarded before the port is looked at",
        expected: &["checksum_error"],
        topology: Topology::TwoHosts,
        ipv6: false,
        port: 5013,
        bind_specific: false,
        traffic: Traffic::BadChecksum,
    },
    Scenario {
        name: "neighbor-unreachable",
        description: "a client (192.0.2.1, IP_RECVERR) sends a burst of 3 datagrams to 192.0.2.99:5031, an address on its link that no host holds (ARP: one probe, 300 ms, a one-datagram queue)",
        diagnosis: "ARP for 192.0.2.99 on eth0 gets no answer: the first datagrams are pushed out of the neighbour queue (NEIGH_QUEUEFULL at __neigh_event_send), the last is freed when resolution fails (NEIGH_FAILED at neigh_invalidate) after an ICMP host unreachable to the client, whose socket gets EHOSTUNREACH; fix: the host is down or on another VLAN, check `ip neigh show dev eth0`",
        expected: &["neighbor_unreachable"],
        topology: Topology::TwoHosts,
        ipv6: false,
        port: 5031,
        bind_specific: false,
        traffic: Traffic::Unresolved,
    },
    Scenario {
        name: "neighbor-unreachable-v6",
        description: "the same over IPv6: 2001:db8::1 sends to [2001:db8::99]:5032, which no host on the link holds (NDP: one solicitation, 300 ms, a one-datagram queue)",
        diagnosis: "neighbour solicitations for 2001:db8::99 on eth0 get no answer: NEIGH_QUEUEFULL drops, then the last datagram freed in neigh_invalidate (by ndisc_error_report, without a reason) after an ICMPv6 address unreachable to the client, whose socket gets EHOSTUNREACH",
        expected: &["neighbor_unreachable"],
        topology: Topology::TwoHosts,
        ipv6: true,
        port: 5032,
        bind_specific: false,
        traffic: Traffic::Unresolved,
    },
    Scenario {
        name: "no-reply",
        description: "a DNS-like server on 192.0.2.2:53 reads its requests and never answers; the client asks three times, 1.05 s apart",
        diagnosis: "the requests are delivered to the server's socket (named with its owner) and nothing goes back to the client within the reply timeout (2 s): the process received them and did not answer",
        expected: &["no_reply"],
        topology: Topology::TwoHosts,
        ipv6: false,
        port: 53,
        bind_specific: true,
        traffic: Traffic::Spread(Some(ServerMode::Sink {
            rcvbuf: 65_536,
            read: true,
        })),
    },
    Scenario {
        name: "no-reply-from-peer",
        description: "a client sends NTP-like requests to 203.0.113.53:123 out of a device where they leave the host (an ifb device: gone without a drop), three times, 1.05 s apart",
        diagnosis: "the requests leave through ifb0 and nothing comes back within the reply timeout, with no drop or ICMP error on this host: the problem is beyond this host",
        expected: &["no_reply_from_peer"],
        topology: Topology::TwoHosts,
        ipv6: false,
        port: 123,
        bind_specific: false,
        traffic: Traffic::Spread(None),
    },
    Scenario {
        name: "one-way-stream",
        description: "healthy control: a syslog-like one-way stream to 192.0.2.2:514, read and never answered, three datagrams 1.05 s apart",
        diagnosis: "no verdict: port 514 is not a request/response protocol and its server never answered, so silence is its normal",
        expected: &[],
        topology: Topology::TwoHosts,
        ipv6: false,
        port: 514,
        bind_specific: true,
        traffic: Traffic::Spread(Some(ServerMode::Sink {
            rcvbuf: 65_536,
            read: true,
        })),
    },
    Scenario {
        name: "requests-answered",
        description: "healthy control: an SNMP-like server on 192.0.2.2:161 answers each of three requests 1.05 s apart at once",
        diagnosis: "no verdict: every request is answered well within the reply timeout",
        expected: &[],
        topology: Topology::TwoHosts,
        ipv6: false,
        port: 161,
        bind_specific: true,
        traffic: Traffic::Spread(Some(ServerMode::Echo)),
    },
    Scenario {
        name: "no-route",
        description: "a client (192.0.2.1/24, no default route) sends twice with sendto() to 203.0.113.41:5041, then connect()s another socket there",
        diagnosis: "the output route lookups fail (no route in the main table): each sendto() returns ENETUNREACH and so does the connect(); fix: `ip route get 203.0.113.41` in the client namespace, add the missing route",
        expected: &["no_route"],
        topology: Topology::TwoHosts,
        ipv6: false,
        port: 5041,
        bind_specific: false,
        traffic: Traffic::Unrouted,
    },
    Scenario {
        name: "no-route-forwarded",
        description: "a client (198.51.100.2, IP_RECVERR) sends twice to 203.0.113.42:5042 through a router namespace whose table has `unreachable 203.0.113.0/24`",
        diagnosis: "the router drops each forwarded datagram in ip_error on its eth0 (NOT_SPECIFIED on 5.17+ too: only ENETUNREACH gets IP_INNOROUTES) after an ICMP host unreachable to the client, whose socket gets EHOSTUNREACH; fix: `ip route get 203.0.113.42` in the router, remove the unreachable route",
        expected: &["no_route"],
        topology: Topology::RejectRoute,
        ipv6: false,
        port: 5042,
        bind_specific: false,
        traffic: Traffic::Rejected,
    },
    Scenario {
        name: "tx-queue-full",
        description: "a connected client (192.0.2.1, IP_RECVERR) sends a burst of 100 datagrams to 192.0.2.2:5061 out of eth0, shaped by `tbf rate 80kbit burst 1540 limit 1600` (handle 1:)",
        diagnosis: "the shaper's queue on the client's eth0 overflows: QDISC_DROP drops on transmit queue 0 in __dev_queue_xmit in the sender's own send (inferred from kfree_skb_list before 5.17), each send returns ENOBUFS and Udp SndbufErrors counts them; the verdict names `tbf 1:` and its limit of 1600 bytes; fix: `tc -s qdisc show dev eth0`, raise the limit or rate, or pace the sender",
        expected: &["tx_drop"],
        topology: Topology::TwoHosts,
        ipv6: false,
        port: 5061,
        bind_specific: true,
        traffic: Traffic::Shaped(TX_QUEUE_FULL),
    },
    Scenario {
        name: "tx-queue-fits",
        description: "healthy control: the same burst of 100 datagrams to 192.0.2.2:5062 out of eth0 shaped by `tbf rate 10mbit burst 16kb limit 16kb`, whose bucket holds the burst",
        diagnosis: "no verdict: the shaper passes every datagram, no send fails",
        expected: &[],
        topology: Topology::TwoHosts,
        ipv6: false,
        port: 5062,
        bind_specific: true,
        traffic: Traffic::Shaped(TX_QUEUE_AMPLE),
    },
    Scenario {
        name: "tx-queue-full-v6",
        description: "a connected client (2001:db8::1, IPV6_RECVERR) sends a burst of 100 datagrams to [2001:db8::2]:5064 out of eth0, shaped by `tbf rate 80kbit burst 1540 limit 1600` (handle 1:)",
        diagnosis: "as tx-queue-full over IPv6: QDISC_DROP drops on transmit queue 0 in the sender's own send (udp_v6_send_skb → ip6_send_skb; inferred from kfree_skb_list before 5.17), each send returns ENOBUFS and Udp6 SndbufErrors counts them; the verdict names `tbf 1:` and its limit of 1600 bytes; fix: `tc -s qdisc show dev eth0`, raise the limit or rate, or pace the sender",
        expected: &["tx_drop"],
        topology: Topology::TwoHosts,
        ipv6: true,
        port: 5064,
        bind_specific: true,
        traffic: Traffic::Shaped(TX_QUEUE_FULL),
    },
    Scenario {
        name: "neighbor-resolved",
        description: "healthy control: a client on the same link as its server (192.0.2.2:5033) that answers ARP; the first request waits in the neighbour queue until ARP resolves",
        diagnosis: "no verdict: ARP resolves, the requests leave and the echoes come back",
        expected: &[],
        topology: Topology::TwoHosts,
        ipv6: false,
        port: 5033,
        bind_specific: true,
        traffic: Traffic::Exchange(ServerMode::Echo),
    },
    Scenario {
        name: "fragments-dropped",
        description: "a client (198.51.100.2) asks 192.0.2.2:5051 across a router whose nftables forward rule drops non-first fragments (ip frag-off & 0x1fff != 0 drop); the 4000-byte answer leaves the server in three fragments",
        diagnosis: "NETFILTER_DROP of the later fragments in the router namespace (followed by IP ID from the first, so the port filter shows them), the first fragment waits at the client until reassembly times out (FRAG_REASM_TIMEOUT at ip_expire, ICMP time exceeded 11/1 back): fragment_loss naming the datagram size, the fragment size and the frag-off rule; fix: smaller answers (EDNS buffer 1232) or let fragments through",
        expected: &["fragment_loss"],
        topology: Topology::Routed,
        ipv6: false,
        port: 5051,
        bind_specific: true,
        traffic: Traffic::Fragmented(FragmentDrop::Later),
    },
    Scenario {
        name: "fragments-all-dropped",
        description: "the same router dropping every fragment (ip frag-off & 0x3fff != 0 drop), first one included, of the 4000-byte answer from 192.0.2.2:5052",
        diagnosis: "NETFILTER_DROP of all three fragments in the router namespace: fragment_loss naming the frag-off rule, not a firewall_drop that would suggest allowing the client's ephemeral port",
        expected: &["fragment_loss"],
        topology: Topology::Routed,
        ipv6: false,
        port: 5052,
        bind_specific: true,
        traffic: Traffic::Fragmented(FragmentDrop::All),
    },
    Scenario {
        name: "fragments-reassembled",
        description: "healthy control: the 4000-byte answer from 192.0.2.2:5053 crosses the router in three fragments, nothing drops them",
        diagnosis: "no verdict: the client reassembles every answer",
        expected: &[],
        topology: Topology::Routed,
        ipv6: false,
        port: 5053,
        bind_specific: true,
        traffic: Traffic::Fragmented(FragmentDrop::Nothing),
    },
    Scenario {
        name: "fragments-dropped-v6",
        description: "the same over IPv6: 2001:db8:1::2 asks [2001:db8:2::2]:5055 across a router whose nftables forward rule drops non-first fragments (frag frag-off != 0 drop); the 4000-byte answer leaves the server in three fragments (fragment header)",
        diagnosis: "NETFILTER_DROP of the later fragments in the router namespace, followed by the fragment header's identification; reassembly times out at the client (FRAG_REASM_TIMEOUT, ICMPv6 time exceeded 3/1 back): fragment_loss naming the rule",
        expected: &["fragment_loss"],
        topology: Topology::Routed,
        ipv6: true,
        port: 5055,
        bind_specific: true,
        traffic: Traffic::Fragmented(FragmentDrop::Later),
    },
    Scenario {
        name: "path-mtu",
        description: "a server on 192.0.2.2:5054 answers with 1400 bytes and DF set (IP_PMTUDISC_DO) across a router whose link to the client (198.51.100.2) has an MTU of 1280",
        diagnosis: "the router cannot forward the first answer and sends ICMP fragmentation needed (3/4) announcing MTU 1280; the server's later answers fail with EMSGSIZE: fragment_loss (path MTU) with the MTU; fix: smaller answers, a larger MTU, or let ICMP 3/4 through",
        expected: &["fragment_loss"],
        topology: Topology::Routed,
        ipv6: false,
        port: 5054,
        bind_specific: true,
        traffic: Traffic::PathMtu,
    },
    Scenario {
        name: "conntrack-fits",
        description: "healthy control: a server on 192.0.2.2:5072 in a namespace that tracks connections (nftables ct state) answers 4 conversations that stay in the table, then a new client",
        diagnosis: "no verdict: the table has room, conntrack drops nothing (its drop counter stays 0)",
        expected: &[],
        topology: Topology::TwoHosts,
        ipv6: false,
        port: 5072,
        bind_specific: true,
        traffic: Traffic::Conntrack { full: false },
    },
];

/// Scenarios that change a setting every namespace of the machine shares
/// (`Scenario::global_change`): `lab run` refuses them outside a `cargo xtask vm-test`
/// guest unless given `--allow-global-changes`, and the host's sweeps over `SCENARIOS` leave
/// them out.
pub const GLOBAL_SCENARIOS: &[Scenario] = &[Scenario {
    name: "conntrack-full",
    description: "the conntrack table of a server namespace (192.0.2.2:5071, nftables ct state) is full: nf_conntrack_max, one limit for the whole machine, is lowered to 4 and 4 answered conversations hold it; a new client sends twice",
    diagnosis: "NETFILTER_DROP at nf_hook_slow in the server namespace, not by a rule: conntrack could not add the new flow (table full, nothing evictable), its drop counter grew; conntrack_drop with count 4 of max 4; fix: raise nf_conntrack_max, shorten the UDP timeouts or notrack the traffic",
    expected: &["conntrack_drop"],
    topology: Topology::TwoHosts,
    ipv6: false,
    port: 5071,
    bind_specific: true,
    traffic: Traffic::Conntrack { full: true },
}];

/// Every scenario, in `udptrace lab list` order.
pub fn all() -> Vec<&'static Scenario> {
    SCENARIOS.iter().chain(GLOBAL_SCENARIOS).collect()
}

pub fn find(name: &str) -> Option<&'static Scenario> {
    SCENARIOS
        .iter()
        .chain(GLOBAL_SCENARIOS)
        .find(|scenario| scenario.name == name)
}

/// The client's neighbour resolution for `Traffic::Unresolved`: one probe (ARP request or
/// neighbour solicitation), given up after 300 ms instead of three after a second each, and a
/// queue of waiting datagrams that holds one (`unres_qlen_bytes`: `__neigh_event_send`,
/// net/core/neighbour.c, frees the oldest NEIGH_QUEUEFULL to make room for the next).
fn shorten_neighbour_resolution(client: &Netns, ipv6: bool) -> anyhow::Result<()> {
    let family = if ipv6 { "ipv6" } else { "ipv4" };
    for (key, value) in [
        ("mcast_solicit", "1"),
        ("retrans_time_ms", "300"),
        ("unres_qlen_bytes", "1"),
    ] {
        client.sysctl(&format!("net.{family}.neigh.eth0.{key}"), value)?;
    }
    Ok(())
}

/// `CONNTRACK_ENTRIES` conversations from `bind` to `target`: a request and its echo, and
/// after `CONNTRACK_ASSURE` another, which makes their entries ASSURED (never evicted for a
/// new one). Fails unless every request is answered: the table must hold them all.
fn fill_conntrack(bind: SocketAddr, target: SocketAddr) -> anyhow::Result<()> {
    let sockets = (0..CONNTRACK_ENTRIES)
        .map(|_| {
            let socket = std::net::UdpSocket::bind(bind)?;
            socket.connect(target)?;
            socket.set_read_timeout(Some(Duration::from_millis(300)))?;
            Ok(socket)
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut buffer = [0u8; 64];
    for round in 0..2 {
        if round > 0 {
            std::thread::sleep(CONNTRACK_ASSURE);
        }
        for socket in &sockets {
            socket.send(b"udptrace lab conntrack fill")?;
            socket
                .recv(&mut buffer)
                .with_context(|| format!("no echo from {target} (round {round})"))?;
        }
    }
    Ok(())
}

fn address(text: &str) -> SocketAddr {
    text.parse().expect("literal socket address")
}

/// The namespaces and addresses a topology builder returns.
struct Built {
    client: Netns,
    server: Netns,
    target: SocketAddr,
    middle: Vec<Netns>,
    proxy: Option<ProxyPlan>,
    reply_netns: &'static str,
    /// Where the client binds, when not the wildcard address.
    client_source: Option<SocketAddr>,
}

impl Scenario {
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The incident it reproduces and what a correct diagnosis is.
    pub fn description(&self) -> String {
        format!(
            "{}. Correct diagnosis: {}.",
            self.description, self.diagnosis
        )
    }

    pub fn expected(&self) -> &'static [&'static str] {
        self.expected
    }

    /// The server port, which a tracer filter can select.
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn ipv6(&self) -> bool {
        self.ipv6
    }

    /// The machine-wide setting the scenario changes (for the time its lab lives), if any.
    pub fn global_change(&self) -> Option<String> {
        matches!(self.traffic, Traffic::Conntrack { full: true }).then(|| {
            format!(
                "lowers net.netfilter.nf_conntrack_max, the limit of every network namespace's \
                 conntrack table on this machine (read-only in other namespaces), to \
                 {CONNTRACK_ENTRIES} while it runs"
            )
        })
    }

    /// Builds the topology. Namespaces are deleted when the `Lab` is dropped, and by
    /// `netns::cleanup_all` on Ctrl-C; leftovers of dead processes are removed first.
    pub fn setup(&self) -> anyhow::Result<Lab> {
        if let Some(change) = self.global_change()
            && !super::global_changes_allowed()
        {
            anyhow::bail!(
                "lab {} {change}: it runs in the test guests of `cargo xtask vm-test`; on this \
                 machine only with `udptrace lab run {} --allow-global-changes` (restored \
                 afterwards, but every container and service here shares that limit meanwhile)",
                self.name,
                self.name
            );
        }
        let _ = super::netns::cleanup_stale();
        let built = match self.topology {
            Topology::TwoHosts => self.two_hosts(),
            Topology::DockerHost => self.docker_host(),
            Topology::DindNat => self.dind_nat(),
            Topology::DindProxy => self.dind_proxy(),
            Topology::MultiHomed => self.multi_homed(),
            Topology::RejectRoute => self.reject_route(),
            Topology::Routed => self.routed(),
        }
        .with_context(|| format!("setting up lab {}", self.name))?;
        let wildcard = if self.ipv6 { "[::]" } else { "0.0.0.0" };
        let bind = if self.bind_specific {
            built.target
        } else {
            address(&format!("{wildcard}:{}", self.port))
        };
        if let Traffic::Firewalled = self.traffic {
            built.server.nft(&format!(
                "table inet udptrace_lab {{\n chain input {{\n  type filter hook input priority 0;\n  udp dport {} drop\n }}\n}}\n",
                self.port
            ))?;
        }
        let mut global = None;
        if let Traffic::Conntrack { full } = self.traffic {
            // A `ct` expression makes the namespace track connections (nf_ct_netns_get);
            // `ip`, not `inet`: IPv6 neighbour discovery would take entries too.
            built.server.nft(&format!(
                "table ip udptrace_lab {{\n chain input {{\n  type filter hook input priority 0;\n  \
                 ct state established,related accept\n  udp dport {} ct state new accept\n }}\n}}\n",
                self.port
            ))?;
            if full {
                global = Some(GlobalSetting::set(
                    "net.netfilter.nf_conntrack_max",
                    &CONNTRACK_ENTRIES.to_string(),
                )?);
            }
        }
        if let Traffic::Fragmented(drop) = self.traffic {
            // IPv4: offset bits (and MF); IPv6: its fragment header (RFC 8200 §4.5).
            let rule = match (drop, self.ipv6) {
                (FragmentDrop::Nothing, _) => None,
                (FragmentDrop::Later, false) => Some("ip frag-off & 0x1fff != 0 drop"),
                (FragmentDrop::All, false) => Some("ip frag-off & 0x3fff != 0 drop"),
                (FragmentDrop::Later, true) => Some("frag frag-off != 0 drop"),
                (FragmentDrop::All, true) => Some("exthdr frag exists drop"),
            };
            if let Some(rule) = rule
                && let Some(router) = built.middle.first()
            {
                router.nft(&format!(
                    "table inet udptrace_lab {{\n chain forward {{\n  type filter hook forward priority 0;\n  {rule}\n }}\n}}\n"
                ))?;
            }
        }
        if let (Traffic::PathMtu, Some(router)) = (self.traffic, built.middle.first()) {
            let mtu = NARROW_MTU.to_string();
            for netns in [&built.client, router] {
                netns.ip(&["link", "set", "eth0", "mtu", &mtu])?;
            }
        }
        Ok(Lab {
            scenario: self.name,
            client: built.client,
            server: built.server,
            target: built.target,
            bind,
            client_bind: built
                .client_source
                .unwrap_or_else(|| address(if self.ipv6 { "[::]:0" } else { "0.0.0.0:0" })),
            middle: built.middle,
            proxy: built.proxy,
            reply_netns: built.reply_netns,
            global,
        })
    }

    fn two_hosts(&self) -> anyhow::Result<Built> {
        let client = Netns::create("client")?;
        let server = Netns::create("server")?;
        veth(&client, "eth0", &server, "eth0")?;
        // The client sends to the server, or for `Unresolved` to an address nobody holds.
        let host = if let Traffic::Unresolved = self.traffic {
            shorten_neighbour_resolution(&client, self.ipv6)?;
            ABSENT_HOST
        } else {
            2
        };
        if let Traffic::Shaped(shaper) = self.traffic {
            let mut args = vec![
                "qdisc",
                "add",
                "dev",
                "eth0",
                "root",
                "handle",
                TX_SHAPER_HANDLE,
                "tbf",
            ];
            args.extend_from_slice(shaper);
            client.tc(&args)?;
        }
        if let Traffic::Spread(None) = self.traffic {
            client.ifb("ifb0")?;
            client.addr("ifb0", "203.0.113.1/24")?;
        }
        let target = if self.ipv6 {
            client.addr("eth0", "2001:db8::1/64")?;
            server.addr("eth0", "2001:db8::2/64")?;
            // ICMP errors are rate limited per destination (1/s by default, per namespace):
            // off, so every datagram to a closed port gets its error.
            server.sysctl("net.ipv6.icmp.ratelimit", "0")?;
            address(&format!("[2001:db8::{host}]:{}", self.port))
        } else {
            client.addr("eth0", "192.0.2.1/24")?;
            server.addr("eth0", "192.0.2.2/24")?;
            // `RateLimited` is about that limit: it stays at the namespace's default there.
            if !matches!(self.traffic, Traffic::RateLimited) {
                server.sysctl("net.ipv4.icmp_ratelimit", "0")?;
            }
            address(&format!("192.0.2.{host}:{}", self.port))
        };
        let target = match self.traffic {
            Traffic::Spread(None) => address(&format!("203.0.113.53:{}", self.port)),
            Traffic::Unrouted => address(&format!("203.0.113.41:{}", self.port)),
            _ => target,
        };
        Ok(Built {
            client,
            server,
            target,
            middle: Vec::new(),
            proxy: None,
            reply_netns: "client",
            client_source: None,
        })
    }

    fn multi_homed(&self) -> anyhow::Result<Built> {
        let client = Netns::create("client")?;
        let server = Netns::create("server")?;
        let other = Netns::create("other")?;
        veth(&client, "eth0", &server, "eth0")?;
        veth(&server, "eth1", &other, "eth0")?;
        client.addr("eth0", "192.0.2.1/24")?;
        // The client's second address: its datagrams from it still leave through eth0.
        client.addr("eth0", "203.0.113.1/32")?;
        // ARP for the server from 192.0.2.1, not from the datagram's source: the server's
        // reverse-path check applies to ARP requests too (net/ipv4/arp.c `arp_process` routes
        // them as input), and would leave 192.0.2.2 unresolved instead of showing the drop.
        for key in [
            "net.ipv4.conf.all.arp_announce",
            "net.ipv4.conf.eth0.arp_announce",
        ] {
            client.sysctl(key, "2")?;
        }
        server.addr("eth0", "192.0.2.2/24")?;
        server.addr("eth1", "203.0.113.2/24")?;
        other.addr("eth0", "203.0.113.9/24")?;
        // Strict mode (RFC 3704): the kernel uses the larger of `all` and the device's value
        // (net/ipv4/fib_frontend.c `fib_validate_source` via IN_DEV_RPFILTER).
        for key in [
            "net.ipv4.conf.all.rp_filter",
            "net.ipv4.conf.eth0.rp_filter",
        ] {
            server.sysctl(key, "1")?;
        }
        Ok(Built {
            client,
            server,
            target: address(&format!("192.0.2.2:{}", self.port)),
            middle: vec![other],
            proxy: None,
            reply_netns: "client",
            client_source: Some(address("203.0.113.1:0")),
        })
    }

    fn reject_route(&self) -> anyhow::Result<Built> {
        let client = Netns::create("client")?;
        let router = Netns::create("router")?;
        veth(&client, "eth0", &router, "eth0")?;
        client.addr("eth0", "198.51.100.2/24")?;
        client.route(&["default", "via", "198.51.100.1"])?;
        router.addr("eth0", "198.51.100.1/24")?;
        router.sysctl("net.ipv4.ip_forward", "1")?;
        // `ip_error` sends its ICMP errors through the ICMP rate limit as well as its own
        // per-peer one (inet_peer_xrlim_allow, which allows a burst of six): off here.
        router.sysctl("net.ipv4.icmp_ratelimit", "0")?;
        router.route(&["unreachable", "203.0.113.0/24"])?;
        Ok(Built {
            client,
            server: router,
            target: address(&format!("203.0.113.42:{}", self.port)),
            middle: Vec::new(),
            proxy: None,
            reply_netns: "client",
            client_source: None,
        })
    }

    fn routed(&self) -> anyhow::Result<Built> {
        let client = Netns::create("client")?;
        let router = Netns::create("router")?;
        let server = Netns::create("server")?;
        veth(&client, "eth0", &router, "eth0")?;
        veth(&router, "eth1", &server, "eth0")?;
        let reassembly = REASSEMBLY_TIME.as_secs().to_string();
        let target = if self.ipv6 {
            client.addr("eth0", "2001:db8:1::2/64")?;
            client.route(&["default", "via", "2001:db8:1::1"])?;
            router.addr("eth0", "2001:db8:1::1/64")?;
            router.addr("eth1", "2001:db8:2::1/64")?;
            server.addr("eth0", "2001:db8:2::2/64")?;
            server.route(&["default", "via", "2001:db8:2::1"])?;
            router.sysctl("net.ipv6.conf.all.forwarding", "1")?;
            for netns in [&client, &router, &server] {
                netns.sysctl("net.ipv6.icmp.ratelimit", "0")?;
            }
            client.sysctl("net.ipv6.ip6frag_time", &reassembly)?;
            address(&format!("[2001:db8:2::2]:{}", self.port))
        } else {
            client.addr("eth0", "198.51.100.2/24")?;
            client.route(&["default", "via", "198.51.100.1"])?;
            router.addr("eth0", "198.51.100.1/24")?;
            router.addr("eth1", "192.0.2.1/24")?;
            server.addr("eth0", "192.0.2.2/24")?;
            server.route(&["default", "via", "192.0.2.1"])?;
            router.sysctl("net.ipv4.ip_forward", "1")?;
            for netns in [&client, &router, &server] {
                netns.sysctl("net.ipv4.icmp_ratelimit", "0")?;
            }
            client.sysctl("net.ipv4.ipfrag_time", &reassembly)?;
            address(&format!("192.0.2.2:{}", self.port))
        };
        Ok(Built {
            client,
            server,
            target,
            middle: vec![router],
            proxy: None,
            reply_netns: "client",
            client_source: None,
        })
    }

    fn docker_host(&self) -> anyhow::Result<Built> {
        let host = Netns::create("host")?;
        let container = Netns::create("container")?;
        host.bridge("br0")?;
        host.uplink("eth0")?;
        veth(&host, "veth-ctr", &container, "eth0")?;
        host.attach("veth-ctr", "br0")?;
        let target = if self.ipv6 {
            host.addr("br0", "2001:db8:1::1/64")?;
            host.addr("eth0", "2001:db8:2::1/64")?;
            container.addr("eth0", "2001:db8:1::2/64")?;
            container.route(&["default", "via", "2001:db8:1::1"])?;
            container.sysctl("net.ipv6.icmp.ratelimit", "0")?;
            host.sysctl("net.ipv6.icmp.ratelimit", "0")?;
            address(&format!("[2001:db8:2::1]:{}", self.port))
        } else {
            host.addr("br0", "198.51.100.1/24")?;
            host.addr("eth0", "192.0.2.1/24")?;
            container.addr("eth0", "198.51.100.2/24")?;
            container.route(&["default", "via", "198.51.100.1"])?;
            container.sysctl("net.ipv4.icmp_ratelimit", "0")?;
            host.sysctl("net.ipv4.icmp_ratelimit", "0")?;
            address(&format!("192.0.2.1:{}", self.port))
        };
        Ok(Built {
            client: container,
            server: host,
            target,
            middle: Vec::new(),
            proxy: None,
            reply_netns: "container",
            client_source: None,
        })
    }

    /// The Docker network of seed 004's host: bridge `br0` 192.0.2.1/24 with dind1
    /// (192.0.2.2) and dind2 (192.0.2.3) on it, and dind2's own container network
    /// 198.51.100.0/24 (docker0 198.51.100.1, the client 198.51.100.2) masqueraded out of
    /// dind2's eth0. Returns (host, dind1, dind2, client).
    fn dind_network() -> anyhow::Result<(Netns, Netns, Netns, Netns)> {
        let host = Netns::create("host")?;
        let dind1 = Netns::create("dind1")?;
        let dind2 = Netns::create("dind2")?;
        let client = Netns::create("client")?;
        host.bridge("br0")?;
        host.addr("br0", "192.0.2.1/24")?;
        for (netns, port, cidr) in [
            (&dind1, "veth-d1", "192.0.2.2/24"),
            (&dind2, "veth-d2", "192.0.2.3/24"),
        ] {
            veth(&host, port, netns, "eth0")?;
            host.attach(port, "br0")?;
            netns.addr("eth0", cidr)?;
            netns.route(&["default", "via", "192.0.2.1"])?;
        }
        host.sysctl("net.ipv4.ip_forward", "1")?;
        host.sysctl("net.ipv4.icmp_ratelimit", "0")?;
        veth(&dind2, "docker0", &client, "eth0")?;
        dind2.addr("docker0", "198.51.100.1/24")?;
        client.addr("eth0", "198.51.100.2/24")?;
        client.route(&["default", "via", "198.51.100.1"])?;
        dind2.sysctl("net.ipv4.ip_forward", "1")?;
        dind2.sysctl("net.ipv4.icmp_ratelimit", "0")?;
        // What dockerd in dind2 installs for its containers (seed 004, hop 2:
        // 172.17.0.2 → 172.18.0.3).
        dind2.nft(
            "table ip udptrace_lab {\n chain postrouting {\n  type nat hook postrouting priority 100;\n  \
             ip saddr 198.51.100.0/24 oifname \"eth0\" masquerade\n }\n}\n",
        )?;
        Ok((host, dind1, dind2, client))
    }

    fn dind_nat(&self) -> anyhow::Result<Built> {
        let (host, dind1, dind2, client) = Self::dind_network()?;
        // With br_netfilter loaded, bridged frames pass the host's conntrack, which would undo
        // the DNAT on the reply (Docker relies on it); this variant is the host without it.
        // Off in this namespace (a per-namespace setting), when the module exists.
        if std::path::Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables").exists() {
            host.sysctl("net.bridge.bridge-nf-call-iptables", "0")?;
        }
        // The published port: DNAT host:P to dind1:P (what `docker run -p P:P/udp` installs).
        host.nft(&format!(
            "table ip udptrace_lab {{\n chain prerouting {{\n  type nat hook prerouting priority -100;\n  \
             udp dport {port} dnat to 192.0.2.2:{port}\n }}\n}}\n",
            port = self.port
        ))?;
        Ok(Built {
            client,
            server: dind1,
            target: address(&format!("192.0.2.1:{}", self.port)),
            middle: vec![host, dind2],
            proxy: None,
            reply_netns: "dind2",
            client_source: None,
        })
    }

    fn dind_proxy(&self) -> anyhow::Result<Built> {
        let (host, dind1, dind2, client) = Self::dind_network()?;
        // The host's own address (seed 004's 192.168.0.239) on its uplink.
        host.uplink("eth0")?;
        host.addr("eth0", "203.0.113.1/24")?;
        // `docker run -p P:P/udp` with the userland proxy on: DNAT for traffic from outside,
        // but not from the bridge itself (Docker's `-A DOCKER ! -i br-xxx ... -j DNAT`), which
        // docker-proxy, listening on the host's wildcard address, handles instead.
        host.nft(&format!(
            "table ip udptrace_lab {{\n chain prerouting {{\n  type nat hook prerouting priority -100;\n  \
             iifname != \"br0\" ip daddr 203.0.113.1 udp dport {port} dnat to 192.0.2.2:{port}\n }}\n}}\n",
            port = self.port
        ))?;
        Ok(Built {
            client,
            server: dind1,
            target: address(&format!("203.0.113.1:{}", self.port)),
            middle: vec![host, dind2],
            proxy: Some(ProxyPlan {
                netns: "host",
                listen: address(&format!("0.0.0.0:{}", self.port)),
                backend: address(&format!("192.0.2.2:{}", self.port)),
            }),
            reply_netns: "dind2",
            client_source: None,
        })
    }

    /// Runs the scenario's traffic (bounded: about a second, `PEER_LIFETIME` at most per peer).
    pub fn exercise(&self, lab: &Lab) -> anyhow::Result<Outcome> {
        let before = lab.counters()?;
        let client = |count, interval_ms, reply_ms| ClientSpec {
            bind: lab.client_bind,
            target: lab.target,
            connect: true,
            count,
            interval: Duration::from_millis(interval_ms),
            reply_timeout: Duration::from_millis(reply_ms),
            recverr: false,
            linger: Duration::ZERO,
        };
        let mut server_report = None;
        let mut proxy_report = None;
        let mut witness_netns = None;
        let mut replies_seen = Vec::new();
        let client_report = match self.traffic {
            // Two datagrams: ICMP errors are not rate limited in the server namespace, so
            // each gets its ECONNREFUSED.
            Traffic::ClosedPort => run_client(&lab.client, &client(2, 50, 300))?,
            Traffic::RateLimited => run_client(
                &lab.client,
                &client(RATE_LIMITED_BURST, 0, RATE_LIMITED_WAIT_MS),
            )?,
            Traffic::BadChecksum => send_with_bad_checksum(&lab.client, lab.target, 2, 0)?,
            // Sent at once, so that they wait together for the neighbour; the socket stays
            // open (and reads) until resolution fails and its error arrives.
            Traffic::Unresolved => run_client(
                &lab.client,
                &ClientSpec {
                    recverr: true,
                    linger: UNRESOLVED_LINGER,
                    ..client(UNRESOLVED_BURST, 0, 0)
                },
            )?,
            Traffic::Unrouted => {
                let mut report = run_client(
                    &lab.client,
                    &ClientSpec {
                        connect: false,
                        ..client(UNROUTED_SENDS, 50, 0)
                    },
                )?;
                let connected = run_client(&lab.client, &client(1, 0, 0))?;
                report.errors.extend(connected.errors);
                report
            }
            Traffic::Rejected => run_client(
                &lab.client,
                &ClientSpec {
                    recverr: true,
                    ..client(UNROUTED_SENDS, 50, 300)
                },
            )?,
            Traffic::Firewalled => {
                let server = Server::start(&lab.server, lab.bind, ServerMode::Echo, PEER_LIFETIME)?;
                let report = run_client(&lab.client, &client(2, 50, 300))?;
                std::thread::sleep(SETTLE);
                server_report = Some(server.stop()?);
                report
            }
            Traffic::Fragmented(_) | Traffic::PathMtu => {
                let (bytes, dont_fragment, requests, linger) = match self.traffic {
                    // Each answer after the first meets the MTU the router announced.
                    Traffic::PathMtu => (PATH_MTU_ANSWER, true, 3, SETTLE),
                    // Past the client's reassembly timeout, so that the fragments waiting
                    // there expire while a tracer watches.
                    _ => (
                        FRAGMENTED_ANSWER,
                        false,
                        2,
                        REASSEMBLY_TIME + Duration::from_millis(500),
                    ),
                };
                let server = Server::start(
                    &lab.server,
                    lab.bind,
                    ServerMode::Answer {
                        bytes,
                        dont_fragment,
                    },
                    PEER_LIFETIME,
                )?;
                let report = run_client(&lab.client, &client(requests, 100, 300))?;
                std::thread::sleep(linger);
                server_report = Some(server.stop()?);
                report
            }
            Traffic::Conntrack { .. } => {
                let server = Server::start(&lab.server, lab.bind, ServerMode::Echo, PEER_LIFETIME)?;
                let (bind, target) = (lab.client_bind, lab.target);
                lab.client
                    .enter(move || fill_conntrack(bind, target))
                    .context("filling the conntrack table")?;
                let report = run_client(&lab.client, &client(2, 50, 300))?;
                std::thread::sleep(SETTLE);
                server_report = Some(server.stop()?);
                report
            }
            Traffic::Overflow => {
                let server = Server::start(
                    &lab.server,
                    lab.bind,
                    ServerMode::Sink {
                        rcvbuf: 4_096,
                        read: false,
                    },
                    PEER_LIFETIME,
                )?;
                let mut spec = client(OVERFLOW_BURST, 0, 0);
                spec.connect = false;
                let report = run_client(&lab.client, &spec)?;
                // Let the last datagrams cross the veth; then the sink reads what its buffer
                // held (Udp InDatagrams counts at recvmsg, so before the second snapshot).
                std::thread::sleep(Duration::from_millis(200));
                server_report = Some(server.stop()?);
                report
            }
            Traffic::Shaped(_) => {
                let server = Server::start(
                    &lab.server,
                    lab.bind,
                    ServerMode::Sink {
                        rcvbuf: 65_536,
                        read: true,
                    },
                    PEER_LIFETIME,
                )?;
                // ARP first, from another socket: datagrams waiting for the neighbour leave
                // from the softirq that receives the ARP reply (`neigh_update`), not from the
                // sender's send, which then could not see their fate.
                run_client(
                    &lab.client,
                    &ClientSpec {
                        linger: Duration::from_millis(100),
                        ..client(1, 0, 0)
                    },
                )?;
                let report = run_client(
                    &lab.client,
                    &ClientSpec {
                        recverr: true,
                        ..client(TX_BURST, 0, 0)
                    },
                )?;
                // The shaper's queue drains (at most 1,600 bytes at 10 kB/s) before the
                // server stops reading.
                std::thread::sleep(Duration::from_millis(300));
                server_report = Some(server.stop()?);
                report
            }
            Traffic::Spread(mode) => {
                let server = mode
                    .map(|mode| Server::start(&lab.server, lab.bind, mode, PEER_LIFETIME))
                    .transpose()
                    .context("starting the lab server")?;
                let report = run_client(
                    &lab.client,
                    &client(
                        SPREAD_REQUESTS,
                        SPREAD_INTERVAL.as_millis() as u64,
                        SPREAD_REPLY_WAIT_MS,
                    ),
                )?;
                if let Some(server) = server {
                    server_report = Some(server.stop()?);
                }
                report
            }
            Traffic::Exchange(mode) => {
                let server = Server::start(&lab.server, lab.bind, mode, PEER_LIFETIME)
                    .context("starting the lab server")?;
                let proxy = match lab.proxy {
                    Some(plan) => {
                        let netns = lab.namespace(plan.netns).context("the proxy's namespace")?;
                        Some(Proxy::start(
                            netns,
                            plan.listen,
                            plan.backend,
                            PEER_LIFETIME,
                        )?)
                    }
                    None => None,
                };
                let reply_netns = lab
                    .namespace(lab.reply_netns)
                    .context("the reply namespace")?;
                let witness =
                    Witness::start(reply_netns, self.ipv6, Some(self.port), PEER_LIFETIME)?;
                let report = run_client(&lab.client, &client(3, 100, 250))?;
                std::thread::sleep(SETTLE);
                replies_seen = witness.stop()?;
                witness_netns = Some(lab.reply_netns.to_owned());
                if let Some(proxy) = proxy {
                    proxy_report = Some(proxy.stop()?);
                }
                server_report = Some(server.stop()?);
                report
            }
        };
        let after = lab.counters()?;
        let namespaces: Vec<NamespaceFacts> = lab
            .namespaces()
            .into_iter()
            .zip(before.into_iter().zip(after))
            .map(|(netns, (before, after))| NamespaceFacts {
                role: netns.role.clone(),
                name: netns.name.clone(),
                inode: netns.inode,
                before,
                after,
            })
            .collect();
        let rcvbuf_errors = matches!(self.traffic, Traffic::Overflow)
            .then(|| namespaces[1].delta(self.ipv6, "RcvbufErrors"));
        Ok(Outcome {
            scenario: self.name,
            ipv6: self.ipv6,
            target: lab.target,
            server_bind: lab.bind,
            client_netns: lab.client.info(),
            server_netns: lab.server.info(),
            client: client_report,
            server: server_report,
            proxy: proxy_report,
            witness_netns,
            replies_seen,
            namespaces,
            rcvbuf_errors,
        })
    }

    /// `setup` then `exercise`, for callers that trace nothing in between.
    pub fn run(&self) -> anyhow::Result<(Lab, Outcome)> {
        let lab = self.setup()?;
        let outcome = self.exercise(&lab)?;
        Ok((lab, outcome))
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeSet, time::Instant};

    use super::*;
    use crate::lab::root_or_skip;

    /// Sets up and exercises `name`, checking the time bound: 5 s beyond the pauses the
    /// scenario makes on purpose (the spread requests' intervals), so that a loaded machine
    /// starting the peers slowly does not eat into those.
    fn run(name: &str) -> (Lab, Outcome) {
        let scenario = find(name).unwrap();
        let lab = scenario.setup().expect("setup");
        let pauses = match scenario.traffic {
            Traffic::Spread(_) => SPREAD_INTERVAL * (SPREAD_REQUESTS as u32 - 1),
            _ => Duration::ZERO,
        };
        let started = Instant::now();
        let outcome = scenario.exercise(&lab).expect("exercise");
        assert!(
            started.elapsed() < Duration::from_secs(5) + pauses,
            "{name} took {:?}",
            started.elapsed()
        );
        (lab, outcome)
    }

    fn ip_netns_list() -> String {
        let output = std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    #[test]
    fn scenarios_are_unique_and_described() {
        let names: BTreeSet<_> = all().iter().map(|s| s.name()).collect();
        let ports: BTreeSet<_> = all().iter().map(|s| s.port()).collect();
        assert_eq!(names.len(), all().len());
        assert_eq!(ports.len(), all().len());
        for scenario in all() {
            assert!(scenario.description().contains("Correct diagnosis: "));
            assert!(find(scenario.name()).is_some());
        }
        for required in [
            "closed-port",
            "closed-port-v6",
            "firewalled-port",
            "rcvbuf-overflow",
            "wrong-source-reply",
            "wrong-source-reply-pktinfo",
            "bound-server",
            "nc-connect-pinning",
            "wrong-source-reply-v6",
            "dind-masquerade-proxy",
        ] {
            assert!(names.contains(required), "{required}");
        }
    }

    #[test]
    fn closed_port_refuses() {
        if !root_or_skip() {
            return;
        }
        for name in ["closed-port", "closed-port-v6"] {
            let (lab, outcome) = run(name);
            let text = outcome.describe();
            assert!(outcome.client.refused(), "{name}: {text}");
            assert_eq!(outcome.client.sent, 2, "{name}: {text}");
            assert_eq!(outcome.client.received(), 0);
            // The kernel counted both datagrams as NoPorts in the server namespace.
            assert_eq!(
                outcome.delta("server", "NoPorts"),
                Some(2),
                "{name}: {text}"
            );
            assert_eq!(outcome.server_netns.inode, lab.server.inode);
            assert_eq!(outcome.client_netns.name, lab.client.name);
            assert_eq!(
                outcome.client.local.unwrap().ip(),
                match name {
                    "closed-port" => "192.0.2.1".parse::<std::net::IpAddr>().unwrap(),
                    _ => "2001:db8::1".parse().unwrap(),
                }
            );
        }
    }

    #[test]
    fn firewalled_port_is_silent() {
        if !root_or_skip() {
            return;
        }
        let (_lab, outcome) = run("firewalled-port");
        let text = outcome.describe();
        assert_eq!(outcome.server.as_ref().unwrap().received, 0, "{text}");
        assert_eq!(outcome.client.sent, 2);
        assert!(
            outcome.client.replies.is_empty() && outcome.client.errors.is_empty(),
            "{text}"
        );
        // Dropped before UDP: neither delivered nor NoPorts.
        assert_eq!(outcome.delta("server", "NoPorts"), Some(0));
        assert_eq!(outcome.delta("server", "InDatagrams"), Some(0));
    }

    #[test]
    fn overflow_counts_in_the_kernel() {
        if !root_or_skip() {
            return;
        }
        let (_lab, outcome) = run("rcvbuf-overflow");
        let text = outcome.describe();
        let errors = outcome.rcvbuf_errors.unwrap();
        let server = outcome.server.as_ref().unwrap();
        assert_eq!(outcome.client.sent, OVERFLOW_BURST);
        assert!(errors > 0, "{text}");
        // Every datagram was either queued (and read when the sink stopped) or dropped.
        assert_eq!(errors as usize, OVERFLOW_BURST - server.received, "{text}");
        assert_eq!(server.queued_at_end, server.received);
        assert_eq!(
            outcome.delta("server", "InDatagrams"),
            Some(server.received as u64)
        );
        assert!(outcome.delta("server", "InErrors").unwrap() >= errors);
    }

    #[test]
    fn wrong_source_replies_never_arrive() {
        if !root_or_skip() {
            return;
        }
        for (name, bridge) in [
            ("wrong-source-reply", "198.51.100.1"),
            ("wrong-source-reply-v6", "2001:db8:1::1"),
        ] {
            let (lab, outcome) = run(name);
            let text = outcome.describe();
            let server = outcome.server.as_ref().unwrap();
            assert_eq!(server.received, 3, "{name}: {text}");
            assert_eq!(server.replies_sent, 3, "{name}: {text}");
            assert!(server.local.ip().is_unspecified());
            assert_eq!(outcome.client.received(), 0, "{name}: {text}");
            // The replies did reach the container, from the bridge address, and died there.
            let sources = outcome.reply_sources();
            assert_eq!(sources.len(), 3, "{name}: {text}");
            assert!(
                sources
                    .iter()
                    .all(|s| s.ip().to_string() == bridge && s.port() == lab.target.port()),
                "{name}: {text}"
            );
            assert!(
                outcome
                    .replies_seen
                    .iter()
                    .all(|d| Some(d.destination) == outcome.client.local)
            );
            assert_eq!(
                outcome.delta("container", "NoPorts"),
                Some(3),
                "{name}: {text}"
            );
        }
    }

    #[test]
    fn healthy_controls_get_their_replies_from_the_target() {
        if !root_or_skip() {
            return;
        }
        for name in ["wrong-source-reply-pktinfo", "bound-server"] {
            let (lab, outcome) = run(name);
            let text = outcome.describe();
            assert_eq!(outcome.client.received(), 3, "{name}: {text}");
            assert!(
                outcome
                    .client
                    .replies
                    .iter()
                    .all(|from| *from == lab.target),
                "{name}: {text}"
            );
            assert!(outcome.client.errors.is_empty(), "{name}: {text}");
            assert_eq!(
                outcome.reply_sources(),
                vec![lab.target; 3],
                "{name}: {text}"
            );
            assert_eq!(outcome.delta("container", "NoPorts"), Some(0), "{name}");
        }
    }

    #[test]
    fn netcat_pins_its_socket_to_the_bridge_address() {
        if !root_or_skip() {
            return;
        }
        let (lab, outcome) = run("nc-connect-pinning");
        let text = outcome.describe();
        let server = outcome.server.as_ref().unwrap();
        assert_eq!(server.received, 1, "later datagrams find no socket: {text}");
        assert_eq!(
            server.local_after.unwrap().to_string(),
            format!("198.51.100.1:{}", lab.target.port())
        );
        assert_eq!(server.peer_after, outcome.client.local, "{text}");
        assert_eq!(outcome.client.received(), 0, "{text}");
        // The one echo left from the bridge address and died in the container...
        assert_eq!(
            outcome.reply_sources(),
            vec![address(&format!("198.51.100.1:{}", lab.target.port()))],
            "{text}"
        );
        assert_eq!(outcome.delta("container", "NoPorts"), Some(1), "{text}");
        // ...and the two next datagrams died on the host, where the connected socket no longer
        // matches them: ICMP port unreachable, ECONNREFUSED in the container.
        assert_eq!(outcome.delta("host", "NoPorts"), Some(2), "{text}");
        assert!(outcome.client.refused(), "{text}");
        // The container's ICMP error about the echo reached the connected server socket.
        assert!(server.errors.contains(&libc::ECONNREFUSED), "{text}");
    }

    #[test]
    fn dind_hairpin_replies_are_not_translated_back() {
        if !root_or_skip() {
            return;
        }
        let (lab, outcome) = run("dind-nat-hairpin");
        let text = outcome.describe();
        assert_eq!(
            outcome.server.as_ref().unwrap().received,
            3,
            "DNAT reaches the server: {text}"
        );
        assert_eq!(outcome.client.received(), 0, "{text}");
        let expected = address(&format!("192.0.2.2:{}", lab.target.port()));
        assert_eq!(outcome.reply_sources(), vec![expected; 3], "{text}");
        assert_eq!(outcome.delta("dind2", "NoPorts"), Some(3), "{text}");
        assert_eq!(outcome.witness_netns.as_deref(), Some("dind2"));
    }

    #[test]
    fn dind_proxy_replies_from_the_bridge_address_and_dies_in_dind2() {
        if !root_or_skip() {
            return;
        }
        let (lab, outcome) = run("dind-masquerade-proxy");
        let text = outcome.describe();
        let proxy = outcome.proxy.as_ref().unwrap();
        let port = lab.target.port();
        assert_eq!(
            (proxy.received, proxy.forwarded, proxy.relayed),
            (3, 3, 3),
            "{text}"
        );
        // The proxy saw dind2's masqueraded address, not the client's.
        assert_eq!(proxy.clients.len(), 1, "{text}");
        assert_eq!(proxy.clients[0].ip().to_string(), "192.0.2.3");
        let backend = outcome.server.as_ref().unwrap();
        assert_eq!(backend.received, 3, "{text}");
        assert!(
            backend
                .sources
                .iter()
                .all(|s| s.ip().to_string() == "192.0.2.1")
        );
        assert_eq!(outcome.client.received(), 0, "{text}");
        // The relayed replies reached dind2 from the bridge address, not 203.0.113.1...
        assert_eq!(
            outcome.reply_sources(),
            vec![address(&format!("192.0.2.1:{port}")); 3],
            "{text}"
        );
        assert!(
            outcome
                .replies_seen
                .iter()
                .all(|d| d.destination == proxy.clients[0])
        );
        // ...and found no socket there (conntrack did not undo the masquerade).
        assert_eq!(outcome.delta("dind2", "NoPorts"), Some(3), "{text}");
        assert_eq!(outcome.delta("client", "NoPorts"), Some(0), "{text}");
    }

    #[test]
    fn an_absent_neighbour_fails_the_burst_with_ehostunreach() {
        if !root_or_skip() {
            return;
        }
        for (name, absent) in [
            ("neighbor-unreachable", "192.0.2.99:5031"),
            ("neighbor-unreachable-v6", "[2001:db8::99]:5032"),
        ] {
            let (lab, outcome) = run(name);
            let text = outcome.describe();
            assert_eq!(lab.target, address(absent));
            assert_eq!(outcome.client.sent, UNRESOLVED_BURST, "{name}: {text}");
            assert_eq!(outcome.client.received(), 0, "{name}: {text}");
            // The error report's ICMP error, through IP_RECVERR.
            assert_eq!(
                outcome.client.errors,
                vec![libc::EHOSTUNREACH],
                "{name}: {text}"
            );
            // Nothing reached the other host on the link.
            assert_eq!(outcome.delta("server", "InDatagrams"), Some(0), "{name}");
            assert_eq!(outcome.delta("server", "NoPorts"), Some(0), "{name}");
        }
    }

    #[test]
    fn unrouted_sends_fail_where_the_route_lookup_does() {
        if !root_or_skip() {
            return;
        }
        let (_lab, outcome) = run("no-route");
        let text = outcome.describe();
        // Both sendto() calls and the connect() are refused by the client's own kernel.
        assert_eq!(outcome.client.sent, 0, "{text}");
        assert_eq!(
            outcome.client.errors,
            vec![libc::ENETUNREACH; UNROUTED_SENDS + 1],
            "{text}"
        );
        let (_lab, outcome) = run("no-route-forwarded");
        let text = outcome.describe();
        assert_eq!(outcome.client.sent, UNROUTED_SENDS, "{text}");
        // The router's ICMP host unreachable for each, through IP_RECVERR.
        assert_eq!(
            outcome.client.errors,
            vec![libc::EHOSTUNREACH; UNROUTED_SENDS],
            "{text}"
        );
    }

    #[test]
    fn a_full_shaper_fails_sends_with_enobufs_and_an_ample_one_none() {
        if !root_or_skip() {
            return;
        }
        for name in ["tx-queue-full", "tx-queue-full-v6"] {
            let (_lab, outcome) = run(name);
            let text = outcome.describe();
            let failed = outcome.client.errors.len();
            assert!(failed > 0, "{name}: {text}");
            assert!(
                outcome.client.errors.iter().all(|&e| e == libc::ENOBUFS),
                "{name}: {text}"
            );
            assert_eq!(outcome.client.sent + failed, TX_BURST, "{name}: {text}");
            // udp_sendmsg and udpv6_sendmsg count every ENOBUFS (net/ipv4/udp.c,
            // net/ipv6/udp.c, `out:`).
            assert_eq!(
                outcome.delta("client", "SndbufErrors"),
                Some(failed as u64),
                "{name}: {text}"
            );
            assert_eq!(
                outcome.server.as_ref().map(|server| server.received),
                // and the datagram that resolved the neighbour.
                Some(outcome.client.sent + 1),
                "{name}: {text}"
            );
        }
        let (_lab, outcome) = run("tx-queue-fits");
        let text = outcome.describe();
        assert_eq!(outcome.client.sent, TX_BURST, "{text}");
        assert!(outcome.client.errors.is_empty(), "{text}");
        assert_eq!(outcome.delta("client", "SndbufErrors"), Some(0), "{text}");
    }

    #[test]
    fn spread_requests_outlast_the_reply_timeout() {
        if !root_or_skip() {
            return;
        }
        // The last request leaves after the default reply timeout has passed for the first.
        assert!(
            SPREAD_INTERVAL * (SPREAD_REQUESTS as u32 - 1) > crate::flows::DEFAULT_REPLY_TIMEOUT
        );
        for (name, answered, received) in [
            ("no-reply", false, Some(SPREAD_REQUESTS)),
            ("one-way-stream", false, Some(SPREAD_REQUESTS)),
            ("requests-answered", true, Some(SPREAD_REQUESTS)),
            ("no-reply-from-peer", false, None),
        ] {
            let (_lab, outcome) = run(name);
            let text = outcome.describe();
            assert_eq!(outcome.client.sent, SPREAD_REQUESTS, "{name}: {text}");
            assert!(outcome.client.errors.is_empty(), "{name}: {text}");
            let replies = if answered { SPREAD_REQUESTS } else { 0 };
            assert_eq!(outcome.client.received(), replies, "{name}: {text}");
            assert_eq!(
                outcome.server.as_ref().map(|server| server.received),
                received,
                "{name}: {text}"
            );
        }
    }

    #[test]
    fn a_panicking_scenario_still_cleans_up() {
        if !root_or_skip() {
            return;
        }
        let names = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = std::sync::Arc::clone(&names);
        let result = std::panic::catch_unwind(move || {
            let lab = find("dind-masquerade-proxy").unwrap().setup().unwrap();
            *seen.lock().unwrap() = lab.namespaces().iter().map(|n| n.name.clone()).collect();
            panic!("a scenario failed half-way");
        });
        assert!(result.is_err());
        let names = names.lock().unwrap().clone();
        assert_eq!(names.len(), 4);
        let listed = ip_netns_list();
        for name in &names {
            assert!(
                !listed
                    .lines()
                    .any(|l| l.split_whitespace().next() == Some(name)),
                "{name} left behind:\n{listed}"
            );
        }
    }
}
