//! The domain model: what `decode` makes of kernel records, what flows and rules reason on and
//! what `render` shows. Values only (addresses, numbers, the kernel's own names); their text
//! forms, and the JSON record's field formats, live in `render/` (`render/wire.rs` holds the
//! serde impls of the types below whose record form is text).

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use serde::{Deserialize, Serialize};
use udptrace_common::event::Mechanism;

use crate::{clock::WallTime, containers::Container};

/// A process: its pid and `comm` (sanitized; empty when the kernel gave none).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Process {
    pub pid: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub comm: String,
}

/// Address family of a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

/// Which way a route lookup was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteDirection {
    /// For a locally sent datagram.
    Output,
    /// For a received one.
    Input,
}

/// The attach mechanism that produced an event (`None`: a number this build does not know).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe(pub Option<Mechanism>);

/// One IP fragment of a UDP datagram (udptrace_common's `Fragment`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpFragment {
    /// IP identification, shared by the datagram's fragments.
    pub id: u32,
    /// Where its data starts in the datagram, in bytes (0: the first fragment).
    pub offset: u16,
    /// Its IP length: the first fragment's is the MTU the datagram was cut for.
    pub ip_len: u16,
    /// The whole datagram's UDP length, when its first fragment was seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datagram_len: Option<u16>,
    /// More fragments follow.
    pub more: bool,
}

/// Kernel address of an skb: shared by the hops of one datagram (and reused once it is freed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Skb(pub u64);

/// A drop reason of the running kernel: its name in `enum skb_drop_reason` without the
/// `SKB_DROP_REASON_` prefix (`UNKNOWN(n)` or `SUBSYSTEM(n)` when the enum lacks the value),
/// and the number it has on this kernel. Two reasons are the same reason when their names are:
/// the numbers differ between kernels (NO_SOCKET is 2 on 6.1, 3 on 7.3), and a reason read back
/// from a JSON record has no number.
#[derive(Clone, Debug)]
pub struct DropReason {
    pub name: String,
    pub value: Option<u32>,
}

impl DropReason {
    /// A reason known by name only (read back from a record, or named in a test).
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            value: None,
        }
    }

    /// Whether this is the reason `name` (the one place rules compare reasons).
    pub fn is(&self, name: &str) -> bool {
        self.name == name
    }
}

impl PartialEq for DropReason {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for DropReason {}

impl std::hash::Hash for DropReason {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

/// Where in the kernel a datagram was freed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// `symbol+0xoff`, from /proc/kallsyms.
    Symbol(String),
    /// The raw address, when kallsyms hides addresses.
    Address(u64),
}

/// The device a route lookup chose (`None` when it chose none: the lookup failed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteDevice(pub Option<String>);

/// An errno value (positive).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Errno(pub u32);

impl Errno {
    /// `ECONNREFUSED` (`E?` for a number the table lacks).
    pub fn name(self) -> &'static str {
        crate::kernel::errno_name(i32::try_from(self.0).unwrap_or(i32::MAX))
    }
}

/// An error reported to or returned by a socket: its JSON record carries the errno's name and
/// number (`errno`, `code`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketErrno(pub Errno);

/// A datagram's direction as a pair of endpoints, e.g. a conntrack tuple.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Endpoints {
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

/// Conntrack entry attached to the skb at that point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conntrack {
    /// Original direction.
    pub original: Endpoints,
    /// Reply direction as conntrack expects it (NAT shows here as a different address).
    pub reply: Endpoints,
    /// `nf_conn.status` bits (IPS_*; include/uapi/linux/netfilter/nf_conntrack_common.h).
    pub status: u64,
}

/// A socket as `ss` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketInfo {
    /// Bound address and port (`0.0.0.0:4000` for a wildcard-bound socket).
    pub local: SocketAddr,
    /// Connected peer, when connect()ed.
    pub peer: Option<SocketAddr>,
    /// Socket inode (`ss -e` `ino:`), 0 when unknown.
    pub inode: u64,
    /// Owning process, found from the inode in /proc/*/fd.
    pub owner: Option<Process>,
}

/// What the sender asked `udp_sendmsg` for, known from function probes only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendCall {
    /// `IP_PKTINFO`/`IPV6_PKTINFO` ancillary data was passed (the way a server bound to the
    /// wildcard address answers from the address the request came to).
    pub pktinfo: bool,
    /// The socket is connected (`send()`/`write()` to its peer).
    pub connected: bool,
}

/// What happened, with the fields that only that kind has.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum What {
    /// A UDP datagram was freed with a drop reason.
    Drop {
        reason: DropReason,
        /// The kernel gave no reason (before Linux 5.17): udptrace inferred it from the
        /// location and the hooks before it (`udptrace_common::drops`).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        reason_inferred: bool,
        location: Location,
        /// A drop on the way out (`KnownReason::TxQueue`): the device's transmit queue whose
        /// qdisc refused it (`skb->queue_mapping`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        txq: Option<u16>,
    },
    /// An ICMP error was sent about the datagram in `src`/`dst`.
    Icmp {
        icmp_type: u8,
        icmp_code: u8,
        /// e.g. `port-unreachable` (RFC 792, RFC 4443 names in the words of `tcpdump`).
        meaning: String,
        /// The MTU a fragmentation-needed (ICMPv4 3/4) or packet-too-big (ICMPv6 2) error
        /// announces, read from its ICMP header.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mtu: Option<u32>,
    },
    /// An error was reported to a socket (`sk_err`); `src` is the socket's local address,
    /// `dst` its connected peer.
    SockError {
        #[serde(flatten)]
        error: SocketErrno,
    },
    /// A send on a UDP socket failed.
    SendError {
        #[serde(flatten)]
        error: SocketErrno,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        call: Option<SendCall>,
    },
    /// A receive on a UDP socket failed.
    RecvError {
        #[serde(flatten)]
        error: SocketErrno,
    },
    /// A UDP send returned. From a function probe on `udp_sendmsg` (`call` set): `dst` is the
    /// destination asked for and `src` the socket's local address, or the source the caller
    /// asked for with `IP_PKTINFO`. From the `sock_send_length` tracepoint: `src`/`dst` are the
    /// socket's local address and connected peer (`0.0.0.0:0` when unconnected: the destination
    /// then shows in the `route` and `xmit` events of the datagram).
    Send {
        bytes: u32,
        socket: SocketInfo,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        call: Option<SendCall>,
    },
    /// A route lookup for the flow `src > dst` (source `0.0.0.0`/`::` when the kernel is to
    /// choose it: the address it chose is the source of the `xmit` that follows).
    Route {
        direction: RouteDirection,
        device: RouteDevice,
        table: u32,
        /// The errno of a failed lookup (e.g. ENETUNREACH).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<Errno>,
    },
    /// The datagram was handed to device `ifname` for transmission.
    Xmit,
    /// The datagram entered device `ifname`.
    Recv,
    /// The datagram was queued to a socket.
    Deliver { socket: SocketInfo },
    /// `connect()` on a UDP socket returned: `src` is the local address the kernel pinned the
    /// socket to, `dst` its peer (`error` when the call failed).
    Connect {
        socket: SocketInfo,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<Errno>,
    },
    /// UDP looked up the socket for the received datagram `src > dst`: the socket it found,
    /// `None` when none matched (the datagram then dies NO_SOCKET).
    Lookup { socket: Option<SocketInfo> },
}

/// A decoded event, ready for flows and output. Its JSON record (`render/json.rs`) reads back
/// into an equal event (`Deserialize`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceEvent {
    /// Wall-clock time, derived from `ts_ns` (`clock::WallClock`).
    pub time: WallTime,
    /// CLOCK_MONOTONIC nanoseconds from the kernel, for ordering.
    pub ts_ns: u64,
    #[serde(flatten)]
    pub what: What,
    /// Attach mechanism that produced it.
    pub probe: Probe,
    pub netns: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns_name: Option<String>,
    /// The container the namespace belongs to (runtime, id; name, image, pod once the
    /// runtime told). Boxed: events are kept by the hundred thousand in a storm, and most
    /// have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Box<Container>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ifindex: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ifname: Option<String>,
    /// The process in whose context it happened (process-context hooks only).
    #[serde(flatten)]
    pub process: Option<Process>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skb: Option<Skb>,
    /// Reported because the datagram was followed from an earlier matching hop, not because
    /// this event's own addresses matched the filter (e.g. after NAT).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tracked: bool,
    /// Seen by a path hook `udptrace watch` attached only because an anomaly on the flow
    /// escalated it (evidence gathered by escalation).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub escalated: bool,
    /// Happened while the interactive tracer's hop hooks were parked (its filter had matched
    /// nothing for `--park-after` seconds), or before they were attached again: the
    /// datagram's device hops, route lookups and delivery were not traced. Shown, counted in
    /// its flow, but judged by no rule: a verdict built on half the evidence could name the
    /// wrong cause, so verdicts start where the hops do (as they would had the run started
    /// there).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hops_untraced: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conntrack: Option<Conntrack>,
    /// The packet is one IP fragment of the datagram (its ports are the datagram's, learned
    /// in the kernel from its first fragment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fragment: Option<IpFragment>,
    pub family: Family,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    /// `--stack`, drops and ICMP errors: the kernel call stack, innermost frame first. Boxed,
    /// as the packet is: every event pays a pointer for them, not a vector (a storm holds
    /// hundreds of thousands of events in the reorder window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<Box<Vec<String>>>,
    /// The packet's bytes, when `-w` had the kernel copy them (not in the JSON record).
    #[serde(skip)]
    pub packet: Option<Arc<PacketBytes>>,
}

/// Bytes of the packet a hop event is about, from its IP header, as the kernel copied them
/// for `-w` (at most `--snaplen`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PacketBytes {
    /// The IP packet's length by its header.
    pub len: u32,
    pub data: Vec<u8>,
}

impl TraceEvent {
    /// A path event (`EventKind::narrowed`): under `udptrace watch`, seen only while its flow
    /// is escalated.
    pub fn is_path(&self) -> bool {
        matches!(
            self.what,
            What::Send { .. }
                | What::Route { .. }
                | What::Xmit
                | What::Recv
                | What::Deliver { .. }
                | What::Lookup { .. }
        )
    }

    /// A failure: what `udptrace watch` reports as an anomaly and escalates.
    pub fn is_anomaly(&self) -> bool {
        matches!(
            self.what,
            What::Drop { .. }
                | What::Icmp { .. }
                | What::SockError { .. }
                | What::SendError { .. }
                | What::RecvError { .. }
        )
    }

    pub fn source(&self) -> SocketAddr {
        SocketAddr::new(self.saddr, self.sport)
    }

    pub fn destination(&self) -> SocketAddr {
        SocketAddr::new(self.daddr, self.dport)
    }

    /// The drop reason, for a drop.
    pub fn drop_reason(&self) -> Option<&DropReason> {
        match &self.what {
            What::Drop { reason, .. } => Some(reason),
            _ => None,
        }
    }

    pub fn kind_name(&self) -> &'static str {
        match self.what {
            What::Drop { .. } => "drop",
            What::Icmp { .. } => "icmp",
            What::SockError { .. } => "sock_error",
            What::SendError { .. } => "send_error",
            What::RecvError { .. } => "recv_error",
            What::Send { .. } => "send",
            What::Route { .. } => "route",
            What::Xmit => "xmit",
            What::Recv => "recv",
            What::Deliver { .. } => "deliver",
            What::Connect { .. } => "connect",
            What::Lookup { .. } => "lookup",
        }
    }
}
