//! A verdict as data: its code (an interface: docs/verdicts.md), the facts the rule
//! established, the events that prove it and how often it happened. `render/verdict.rs` writes
//! its sentences (summary, evidence lines, fix) from these.

use std::net::SocketAddr;

use serde::Serialize;

pub use super::code::VerdictCode;
use super::table::FlowKey;
use crate::{
    firewall::FirewallRule,
    model::{Conntrack, Location, Process, RouteDevice, SendCall, SocketInfo, TraceEvent},
    sockets::{ListedSocket, Mismatch},
};

/// A network namespace as an event names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Namespace {
    pub netns: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns_name: Option<String>,
}

impl Namespace {
    pub fn of(event: &TraceEvent) -> Self {
        Self {
            netns: event.netns,
            netns_name: event.netns_name.clone(),
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

/// How a fragmented datagram was lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FragmentCause {
    /// A netfilter rule dropped a fragment (`NETFILTER_DROP`).
    Firewall,
    /// The receiver gave up waiting for the missing fragments (`FRAG_REASM_TIMEOUT`).
    ReassemblyTimeout,
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
}
