//! The flow table: both directions of a conversation are one flow, keyed by its two endpoints.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::SocketAddr,
};

use serde::Serialize;

use crate::decode::{TraceEvent, What};

/// Two endpoints, smaller first, so that both directions map to one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub a: SocketAddr,
    pub b: SocketAddr,
}

impl FlowKey {
    pub fn new(x: SocketAddr, y: SocketAddr) -> Self {
        let (x, y) = (canonical(x), canonical(y));
        if x <= y {
            Self { a: x, b: y }
        } else {
            Self { a: y, b: x }
        }
    }

    /// The flow of an event: its datagram's endpoints, or for socket events the socket and its
    /// connected peer.
    pub fn of(event: &TraceEvent) -> Self {
        Self::new(event.source(), event.destination())
    }
}

impl std::fmt::Display for FlowKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} <> {}", self.a, self.b)
    }
}

/// IPv4-mapped IPv6 addresses compare as IPv4.
pub fn canonical(address: SocketAddr) -> SocketAddr {
    SocketAddr::new(address.ip().to_canonical(), address.port())
}

/// A per-flow total the kernel keeps for sampled events (`FLOW_COUNTS`), so that flows and
/// verdicts stay exact when a storm's events are not all written.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Tally {
    /// Drops with this reason.
    Drops(String),
    /// Datagrams sent by this endpoint (counted once, at the first device).
    DatagramsFrom(SocketAddr),
}

impl Tally {
    /// What `event` counts towards, if it is sampled in the kernel.
    pub fn of(event: &TraceEvent) -> Option<Self> {
        match &event.what {
            What::Drop { reason, .. } => Some(Self::Drops(reason.clone())),
            What::Xmit | What::Recv if !event.tracked => {
                Some(Self::DatagramsFrom(canonical(event.source())))
            }
            _ => None,
        }
    }
}

/// What happened in one flow.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Flow {
    /// Datagrams from `a` to `b` and from `b` to `a`, each counted once at the first device
    /// it was seen at.
    pub datagrams_a_to_b: u64,
    pub datagrams_b_to_a: u64,
    pub drops: BTreeMap<String, u64>,
    pub icmp_errors: u64,
    pub socket_errors: BTreeMap<String, u64>,
    /// `comm[pid]` of processes that sent or received in this flow.
    pub processes: BTreeSet<String>,
    pub verdicts: BTreeSet<&'static str>,
}

#[derive(Default)]
pub struct FlowTable {
    flows: HashMap<FlowKey, Flow>,
}

impl FlowTable {
    /// Accounts `event` to its flow. Route lookups (the source may still be unchosen) and
    /// sends on unconnected sockets (no peer) name no complete flow: their datagram is counted
    /// at its hops instead.
    pub fn record(&mut self, event: &TraceEvent) {
        let incomplete = match &event.what {
            What::Route { .. } => true,
            // Unconnected and unbound: the destination may be known, the source is not yet.
            What::Send { .. } => event.saddr.is_unspecified() || event.dport == 0,
            _ => false,
        };
        if incomplete {
            return;
        }
        let key = FlowKey::of(event);
        let flow = self.flows.entry(key).or_default();
        let forward = canonical(event.source()) == key.a;
        let count_datagram = |flow: &mut Flow| {
            if forward {
                flow.datagrams_a_to_b += 1;
            } else {
                flow.datagrams_b_to_a += 1;
            }
        };
        match &event.what {
            // A datagram crosses several hops: counted at the first, where the kernel starts
            // following its skb; later hops carry the `tracked` flag. (skb addresses are
            // recycled within microseconds, so they cannot tell datagrams apart.)
            What::Xmit | What::Recv if !event.tracked => count_datagram(flow),
            What::Drop { reason, .. } => *flow.drops.entry(reason.clone()).or_default() += 1,
            What::Icmp { .. } => flow.icmp_errors += 1,
            What::SockError { errno, .. }
            | What::SendError { errno, .. }
            | What::RecvError { errno, .. } => {
                *flow.socket_errors.entry(errno.clone()).or_default() += 1;
            }
            What::Xmit
            | What::Recv
            | What::Deliver { .. }
            | What::Send { .. }
            | What::Route { .. }
            | What::Connect { .. }
            | What::Lookup { .. } => {}
        }
        if let (Some(pid), Some(comm)) = (event.pid, &event.comm) {
            flow.processes.insert(format!("{comm}[{pid}]"));
        }
        if let What::Deliver { socket } = &event.what
            && let (Some(pid), Some(comm)) = (socket.owner_pid, &socket.owner_comm)
        {
            flow.processes.insert(format!("{comm}[{pid}]"));
        }
    }

    /// What `key` counted of `tally` so far.
    pub fn tally(&self, key: FlowKey, tally: &Tally) -> u64 {
        let Some(flow) = self.flows.get(&key) else {
            return 0;
        };
        match tally {
            Tally::Drops(reason) => flow.drops.get(reason).copied().unwrap_or(0),
            Tally::DatagramsFrom(source) if *source == key.a => flow.datagrams_a_to_b,
            Tally::DatagramsFrom(_) => flow.datagrams_b_to_a,
        }
    }

    /// Sets what `key` counted of `tally` to the kernel's total, which includes events sampled
    /// out or lost (never below what the events showed).
    pub fn set_tally(&mut self, key: FlowKey, tally: Tally, total: u64) {
        let flow = self.flows.entry(key).or_default();
        let count = match tally {
            Tally::Drops(reason) => flow.drops.entry(reason).or_default(),
            Tally::DatagramsFrom(source) if source == key.a => &mut flow.datagrams_a_to_b,
            Tally::DatagramsFrom(_) => &mut flow.datagrams_b_to_a,
        };
        *count = (*count).max(total);
    }

    /// Records a verdict on a flow; socket-wide verdicts (`a == b`) belong to no single flow.
    pub fn mark(&mut self, key: FlowKey, code: &'static str) {
        if key.a != key.b {
            self.flows.entry(key).or_default().verdicts.insert(code);
        }
    }

    /// Flows in a stable order (by key).
    pub fn sorted(&self) -> Vec<(&FlowKey, &Flow)> {
        let mut flows: Vec<_> = self.flows.iter().collect();
        flows.sort_by_key(|(key, _)| **key);
        flows
    }
}
