//! A verdict as data: its code (an interface: docs/verdicts.md), the facts the rule
//! established, the events that prove it and how often it happened. `render/verdict.rs` writes
//! its sentences (summary, evidence lines, fix) from these.

use std::net::SocketAddr;

use serde::Serialize;
use udptrace_common::event::Mechanism;

pub use super::code::VerdictCode;
use super::table::FlowKey;
use crate::{
    conntrack::ConntrackStats,
    containers::Container,
    firewall::FirewallRule,
    icmp_limits::IcmpLimits,
    model::{
        Conntrack, Errno, Location, Probe, Process, RouteDevice, SendCall, SocketInfo, TraceEvent,
    },
    qdiscs::Qdisc,
    sockets::{ListedSocket, Mismatch},
};

/// A network namespace as an event names it, with its container when it is one's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Namespace {
    pub netns: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<Container>,
}

impl Namespace {
    pub fn of(event: &TraceEvent) -> Self {
        Self {
            netns: event.netns,
            netns_name: event.netns_name.clone(),
            container: event.container.as_deref().cloned(),
        }
    }
}

/// How the server sent a wrong-source reply, as a function probe on `udp_sendmsg` saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Sender {
    pub process: Option<Process>,
    pub call: SendCall,
}

/// The `connect()` that pinned a socket, from a function probe on the connect path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Pinned {
    pub process: Option<Process>,
    pub local: SocketAddr,
    pub peer: SocketAddr,
}

/// What a failed route lookup found, as the errno it gave (the `error` of `fib_props[]`,
/// net/ipv4/fib_semantics.c; `ip6_rt_type_to_error`, net/ipv6/route.c).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteFound {
    /// No route matched: ENETUNREACH (a table's own miss is EAGAIN in `fib_table_lookup`).
    NoRoute,
    /// An `unreachable` route: EHOSTUNREACH.
    Unreachable,
    /// A `blackhole` route: EINVAL.
    Blackhole,
    /// A `prohibit` route: EACCES.
    Prohibit,
    /// A reject route of a type the evidence does not tell (a forwarded drop without its
    /// lookup or ICMP error).
    Reject,
    /// A datagram to another host arrived at a host that does not forward (IP_INADDRERRORS).
    NotForwarding,
}

impl RouteFound {
    /// What a lookup that failed with `errno` found.
    pub fn of_errno(errno: Errno) -> Option<Self> {
        Some(match i32::try_from(errno.0) {
            Ok(libc::EAGAIN | libc::ENETUNREACH) => Self::NoRoute,
            Ok(libc::EHOSTUNREACH) => Self::Unreachable,
            Ok(libc::EINVAL) => Self::Blackhole,
            Ok(libc::EACCES) => Self::Prohibit,
            _ => return None,
        })
    }
}

/// What a rule established, per code: what `render` words the verdict from, and what the JSON
/// verdict record carries as `facts`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Facts {
    ReplySource {
        /// The client, which sent the request.
        client: SocketAddr,
        /// Where the client sent it: the address a reply must come from.
        asked: SocketAddr,
        /// Where the reply came from.
        used: SocketAddr,
        /// The wildcard-bound socket the request was delivered to.
        socket: SocketInfo,
        /// The device the route back to the client goes out of, when its lookup was seen.
        #[serde(skip_serializing_if = "Option::is_none")]
        route_device: Option<RouteDevice>,
        /// How the reply was sent, when a function probe saw it.
        #[serde(skip_serializing_if = "Option::is_none")]
        sender: Option<Sender>,
        /// The container the client sent from (where the reply is refused), when it is in one.
        #[serde(skip_serializing_if = "Option::is_none")]
        client_container: Option<Container>,
        /// The container of the server socket's namespace, when it is in one.
        #[serde(skip_serializing_if = "Option::is_none")]
        server_container: Option<Container>,
    },
    ConnectedSocket {
        source: SocketAddr,
        destination: SocketAddr,
        namespace: Namespace,
        /// The socket on the port, which does not accept the datagram.
        socket: ListedSocket,
        mismatch: Mismatch,
        #[serde(skip_serializing_if = "Option::is_none")]
        connect: Option<Pinned>,
    },
    NatReply {
        source: SocketAddr,
        destination: SocketAddr,
        namespace: Namespace,
        /// Where conntrack expected the reply from.
        expected: SocketAddr,
        conntrack: Conntrack,
    },
    PortUnreachable {
        source: SocketAddr,
        destination: SocketAddr,
        namespace: Namespace,
        /// The ICMP port unreachables about the flow's datagrams, once one was seen.
        #[serde(skip_serializing_if = "Option::is_none")]
        icmp: Option<PortUnreachables>,
    },
    Firewall {
        source: SocketAddr,
        destination: SocketAddr,
        namespace: Namespace,
        location: Location,
        /// The nftables rules that drop the destination port, when they could be read.
        rules: Vec<FirewallRule>,
    },
    Rcvbuf {
        destination: SocketAddr,
        namespace: Namespace,
        /// The receiving socket, when the listing had it.
        #[serde(skip_serializing_if = "Option::is_none")]
        socket: Option<ListedSocket>,
    },
    RpFilter {
        source: SocketAddr,
        destination: SocketAddr,
        #[serde(skip_serializing_if = "Option::is_none")]
        device: Option<String>,
    },
    Checksum {
        source: SocketAddr,
        destination: SocketAddr,
    },
    NeighborUnreachable {
        source: SocketAddr,
        destination: SocketAddr,
        namespace: Namespace,
        /// The device whose neighbour resolution failed, when the drop named it.
        #[serde(skip_serializing_if = "Option::is_none")]
        device: Option<String>,
    },
    NoReply {
        client: SocketAddr,
        /// Where the client sent its request.
        server: SocketAddr,
        namespace: Namespace,
        /// The socket the request was delivered to, and its owner.
        socket: SocketInfo,
        /// The reply timeout (`--reply-timeout`).
        timeout_ms: u64,
    },
    NoReplyFromPeer {
        client: SocketAddr,
        server: SocketAddr,
        namespace: Namespace,
        /// The device the request left through.
        #[serde(skip_serializing_if = "Option::is_none")]
        device: Option<String>,
        timeout_ms: u64,
    },
    NoRoute {
        /// The sender (a local socket's address; `0.0.0.0`/`::` when unbound).
        source: SocketAddr,
        destination: SocketAddr,
        /// Where the lookup failed: the sender's namespace, or the forwarding one's.
        namespace: Namespace,
        /// A forwarded datagram dropped (else a local send that failed).
        forwarded: bool,
        found: RouteFound,
        /// The device a forwarded datagram arrived on.
        #[serde(skip_serializing_if = "Option::is_none")]
        device: Option<String>,
        /// The process whose send (or connect) failed.
        #[serde(skip_serializing_if = "Option::is_none")]
        process: Option<Process>,
        /// The errno the send or connect returned.
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<Errno>,
        /// The routing table of the failed lookup, when it was seen.
        #[serde(skip_serializing_if = "Option::is_none")]
        table: Option<u32>,
    },
    TxDrop {
        source: SocketAddr,
        destination: SocketAddr,
        /// The sender's namespace, where the device's queue is.
        namespace: Namespace,
        /// The device whose queueing discipline dropped the datagram.
        #[serde(skip_serializing_if = "Option::is_none")]
        device: Option<String>,
        /// The kernel's drop reason (`QDISC_DROP`, `FQ_FLOW_LIMIT`, ...), `NOT_SPECIFIED`
        /// before 5.17.
        reason: String,
        /// The device's transmit queue the first drop was on (`skb->queue_mapping`).
        #[serde(skip_serializing_if = "Option::is_none")]
        txq: Option<u16>,
        /// The qdisc of that queue, read when the verdict opened (its counters then).
        #[serde(skip_serializing_if = "Option::is_none")]
        qdisc: Option<Qdisc>,
        /// The process that handed the datagram to the device (its send).
        #[serde(skip_serializing_if = "Option::is_none")]
        process: Option<Process>,
        /// The errno the sender's send returned for a dropped datagram (ENOBUFS with
        /// IP_RECVERR), when the send hook saw it.
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<Errno>,
    },
    FragmentLoss {
        source: SocketAddr,
        destination: SocketAddr,
        /// Where the first loss happened.
        namespace: Namespace,
        location: Location,
        cause: FragmentCause,
        /// The datagram's UDP length, when its first fragment was seen.
        #[serde(skip_serializing_if = "Option::is_none")]
        datagram_len: Option<u16>,
        /// Its first fragment's IP length: the MTU the sender cut it for.
        #[serde(skip_serializing_if = "Option::is_none")]
        fragment_size: Option<u16>,
        /// The nftables rules about fragments in that namespace (firewall drops).
        #[serde(skip_serializing_if = "Vec::is_empty")]
        rules: Vec<FirewallRule>,
    },
    ConntrackDrop {
        source: SocketAddr,
        destination: SocketAddr,
        /// Where conntrack dropped it.
        namespace: Namespace,
        location: Location,
        cause: ConntrackCause,
        /// The namespace's counters read just after the drop.
        stats: ConntrackStats,
    },
    PathMtu {
        /// The datagram too big for the path (for an EMSGSIZE seen alone: the sending socket).
        source: SocketAddr,
        destination: SocketAddr,
        /// Where the ICMP error was sent from, or where the send failed.
        namespace: Namespace,
        /// The MTU the ICMP error announces.
        #[serde(skip_serializing_if = "Option::is_none")]
        mtu: Option<u32>,
    },
}

/// The ICMP port unreachables a `port_unreachable` flow's datagrams got, for telling how many
/// the kernel's ICMP rate limits suppressed (`icmp_limits`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PortUnreachables {
    /// ICMP port unreachable events about the flow's datagrams.
    pub seen: u64,
    /// What those events count, by where the hook that saw them fires.
    pub counted: IcmpCounted,
    /// The namespace's ICMP limits and counters, read once the drops outnumbered the errors
    /// sent (or, where only attempts are seen, once they exceeded a destination's burst).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits: Option<IcmpLimits>,
}

/// Where the ICMP hook that saw a port unreachable fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IcmpCounted {
    /// After the rate limits: errors sent. The `icmp:icmp_send` tracepoint fires in
    /// `__icmp_send` after `icmpv4_xrlim_allow` (net/ipv4/icmp.c), right before
    /// `icmp_push_reply`; an ICMPv6 error parsed where it reaches a device was sent.
    Sent,
    /// Before them: attempts. A function probe on `__icmp_send` or `icmp6_send` fires at
    /// their entry, before `icmp_global_allow` and the per-destination limit (Linux 5.10
    /// has no `icmp_send` tracepoint; ICMPv6 has none anywhere).
    Attempted,
}

impl IcmpCounted {
    /// What an ICMP error event from `probe` counts.
    pub fn of(probe: Probe) -> Self {
        match probe.0 {
            Some(Mechanism::Fentry | Mechanism::Kprobe) => Self::Attempted,
            _ => Self::Sent,
        }
    }
}

/// How a fragmented datagram was lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FragmentCause {
    /// A netfilter rule dropped a fragment (`NETFILTER_DROP`).
    Firewall,
    /// The receiver gave up waiting for the missing fragments (`FRAG_REASM_TIMEOUT`).
    ReassemblyTimeout,
}

/// Why conntrack dropped a datagram, from the namespace's counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConntrackCause {
    /// The table held `nf_conntrack_max` entries and none could be evicted
    /// (`__nf_conntrack_alloc`: "nf_conntrack: table full, dropping packet").
    TableFull,
    /// Its new entry clashed with one inserted meanwhile by another CPU (two datagrams of one
    /// new flow at once: a resolver's A and AAAA queries from one socket) and the clash could
    /// not be resolved (`__nf_conntrack_confirm`, `nf_ct_resolve_clash`): `insert_failed` grew.
    InsertFailed,
    /// Conntrack dropped it (its `drop` counter grew) for neither reason above.
    Other,
}

/// A diagnosis of one flow (or of one socket, for every sender: `key.a == key.b`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub code: VerdictCode,
    pub key: FlowKey,
    pub facts: Facts,
    /// The events that prove it, first ones first (at most `ledger::MAX_EVIDENCE`).
    pub evidence: Vec<TraceEvent>,
    /// Occurrences of the failure so far (drops, wrong-source replies, ...), including those
    /// the kernel counted without writing their events.
    pub count: u64,
}

impl Verdict {
    /// Whether it concerns every sender to one socket rather than one flow.
    pub fn socket_wide(&self) -> bool {
        self.key.a == self.key.b
    }

    /// For `port_unreachable`: how many of its drops got no ICMP port unreachable because a
    /// rate limit suppressed it (its count, the kernel's count of drops, less the errors
    /// sent), when the ICMP hook counted errors sent and some were suppressed.
    pub fn icmp_suppressed(&self) -> Option<u64> {
        let Facts::PortUnreachable {
            icmp: Some(icmp), ..
        } = &self.facts
        else {
            return None;
        };
        (icmp.counted == IcmpCounted::Sent && self.count > icmp.seen)
            .then(|| self.count - icmp.seen)
    }
}
