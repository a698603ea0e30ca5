//! The flow table: both directions of a conversation are one flow, keyed by its two endpoints;
//! at most `--max-flows` of them, the least recently active evicted into one aggregate.

use std::net::SocketAddr;

use serde::Serialize;

use super::{bounded::Bounded, code::VerdictCode};
use crate::model::{DropReason, Process, TraceEvent, What};

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

/// IPv4-mapped IPv6 addresses compare as IPv4.
pub fn canonical(address: SocketAddr) -> SocketAddr {
    SocketAddr::new(address.ip().to_canonical(), address.port())
}

/// A per-flow total the kernel keeps for sampled events (`FLOW_COUNTS`), so that flows and
/// verdicts stay exact when a storm's events are not all written. Flows take these totals from
/// the kernel only (`FlowTable::add_tally`), never from events: every event of these kinds is
/// counted there, written or not.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Tally {
    /// Drops with this reason.
    Drops(DropReason),
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

/// Name → count pairs, few per flow (a drop reason or two): a vector costs a fraction of a
/// `BTreeMap` node. Serialized as a JSON object, sorted by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts(Vec<(String, u64)>);

impl Counts {
    pub fn add(&mut self, name: &str, count: u64) {
        match self
            .0
            .binary_search_by(|(known, _)| known.as_str().cmp(name))
        {
            Ok(index) => self.0[index].1 += count,
            Err(index) => self.0.insert(index, (name.to_owned(), count)),
        }
    }

    pub fn get(&self, name: &str) -> u64 {
        self.0
            .iter()
            .find(|(known, _)| known == name)
            .map_or(0, |(_, count)| *count)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.0.iter().map(|(name, count)| (name.as_str(), *count))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn merge(&mut self, other: &Self) {
        for (name, count) in other.iter() {
            self.add(name, count);
        }
    }
}

impl Serialize for Counts {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

/// What happened in one flow.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Flow {
    /// Datagrams from `a` to `b` and from `b` to `a`, each counted once at the first device
    /// it was seen at.
    pub datagrams_a_to_b: u64,
    pub datagrams_b_to_a: u64,
    pub drops: Counts,
    pub icmp_errors: u64,
    pub socket_errors: Counts,
    /// Processes that sent or received in this flow (the record shows them as `comm[pid]`:
    /// `render`).
    #[serde(skip)]
    pub processes: Vec<Process>,
    /// Codes of the verdicts given on this flow, sorted.
    pub verdicts: Vec<VerdictCode>,
}

/// Inserts `item` into a sorted vector unless present.
fn insert_sorted<T: Ord>(items: &mut Vec<T>, item: T) {
    if let Err(index) = items.binary_search(&item) {
        items.insert(index, item);
    }
}

/// Flows no longer (or never) listed one by one, added up: those evicted from the table, and
/// the events the kernel counted without their flow because its per-flow map was full.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct OtherFlows {
    /// Flows evicted from the table (least recently active first) to keep it within
    /// `--max-flows`; their counts are added here.
    pub flows_evicted: u64,
    /// Events the kernel counted in its "other flows" bucket (`FLOW_OVERFLOW`); their counts
    /// are added here.
    pub kernel_overflow_events: u64,
    /// Datagrams, either direction.
    pub datagrams: u64,
    pub drops: Counts,
    pub icmp_errors: u64,
    pub socket_errors: Counts,
}

impl OtherFlows {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    fn absorb(&mut self, flow: &Flow) {
        self.flows_evicted += 1;
        self.datagrams += flow.datagrams_a_to_b + flow.datagrams_b_to_a;
        self.drops.merge(&flow.drops);
        self.icmp_errors += flow.icmp_errors;
        self.socket_errors.merge(&flow.socket_errors);
    }
}

/// Flows kept when `--max-flows` is not given.
pub const DEFAULT_MAX_FLOWS: usize = 10_000;

/// Every flow, up to a maximum: past it, the least recently active flows are evicted into
/// `other` (their counts survive there, their endpoints do not).
pub struct FlowTable {
    flows: Bounded<FlowKey, Flow>,
    other: OtherFlows,
}

impl Default for FlowTable {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FLOWS)
    }
}

impl FlowTable {
    pub fn new(max_flows: usize) -> Self {
        Self {
            flows: Bounded::new(max_flows),
            other: OtherFlows::default(),
        }
    }

    /// `key`'s flow, created (evicting the least recently active when full) if absent.
    fn flow(&mut self, key: FlowKey) -> &mut Flow {
        let other = &mut self.other;
        self.flows
            .get_or_insert_with(key, Flow::default, |_, flow| other.absorb(&flow))
    }

    /// Accounts `event` to its flow. Route lookups (the source may still be unchosen) and
    /// sends on unconnected sockets (no peer) name no complete flow: their datagram is counted
    /// at its hops instead. Drops and datagrams are counted by the kernel (`add_tally`).
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
        let flow = self.flow(FlowKey::of(event));
        match &event.what {
            What::Icmp { .. } => flow.icmp_errors += 1,
            What::SockError { error, .. }
            | What::SendError { error, .. }
            | What::RecvError { error, .. } => flow.socket_errors.add(error.0.name(), 1),
            What::Drop { .. }
            | What::Xmit
            | What::Recv
            | What::Deliver { .. }
            | What::Send { .. }
            | What::Route { .. }
            | What::Connect { .. }
            | What::Lookup { .. } => {}
        }
        if let Some(process) = event.process.as_ref().filter(|p| !p.comm.is_empty()) {
            insert_sorted(&mut flow.processes, process.clone());
        }
        if let What::Deliver { socket } = &event.what
            && let Some(owner) = &socket.owner
        {
            insert_sorted(&mut flow.processes, owner.clone());
        }
    }

    /// What `key` counted of `tally` so far (0 once evicted).
    pub fn tally(&self, key: FlowKey, tally: &Tally) -> u64 {
        let Some(flow) = self.flows.get(&key) else {
            return 0;
        };
        match tally {
            Tally::Drops(reason) => flow.drops.get(&reason.name),
            Tally::DatagramsFrom(source) if *source == key.a => flow.datagrams_a_to_b,
            Tally::DatagramsFrom(_) => flow.datagrams_b_to_a,
        }
    }

    /// Adds `count` events of `tally` the kernel counted in `key` (written, sampled out or
    /// lost alike).
    pub fn add_tally(&mut self, key: FlowKey, tally: &Tally, count: u64) {
        let flow = self.flow(key);
        match tally {
            Tally::Drops(reason) => flow.drops.add(&reason.name, count),
            Tally::DatagramsFrom(source) if *source == key.a => flow.datagrams_a_to_b += count,
            Tally::DatagramsFrom(_) => flow.datagrams_b_to_a += count,
        }
    }

    /// Adds `count` events the kernel counted in its "other flows" bucket.
    pub fn add_other(&mut self, tally: &Tally, count: u64) {
        self.other.kernel_overflow_events += count;
        match tally {
            Tally::Drops(reason) => self.other.drops.add(&reason.name, count),
            Tally::DatagramsFrom(_) => self.other.datagrams += count,
        }
    }

    /// Records a verdict on a flow; socket-wide verdicts (`a == b`) belong to no single flow.
    pub fn mark(&mut self, key: FlowKey, code: VerdictCode) {
        if key.a != key.b {
            insert_sorted(&mut self.flow(key).verdicts, code);
        }
    }

    /// Flows in a stable order (by key).
    pub fn sorted(&self) -> Vec<(&FlowKey, &Flow)> {
        let mut flows: Vec<_> = self.flows.iter().collect();
        flows.sort_by_key(|(key, _)| **key);
        flows
    }

    /// The evicted flows and the kernel's flowless counts, added up.
    pub fn other(&self) -> &OtherFlows {
        &self.other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> FlowKey {
        FlowKey::new(
            SocketAddr::from(([198, 51, 100, 1], port)),
            SocketAddr::from(([192, 0, 2, 2], 4000)),
        )
    }

    #[test]
    fn evicted_flows_add_up_in_other_flows() {
        let mut table = FlowTable::new(10);
        let no_socket = Tally::Drops(DropReason::named("NO_SOCKET"));
        for port in 1..=25 {
            table.add_tally(key(port), &no_socket, u64::from(port));
            table.add_tally(
                key(port),
                &Tally::DatagramsFrom(SocketAddr::from(([198, 51, 100, 1], port))),
                2,
            );
        }
        table.add_other(&no_socket, 7);
        table.add_other(
            &Tally::DatagramsFrom(SocketAddr::from(([0, 0, 0, 0], 0))),
            3,
        );
        let listed = table.sorted();
        assert!(listed.len() <= 10);
        let other = table.other();
        assert_eq!(other.flows_evicted as usize + listed.len(), 25);
        assert_eq!(other.kernel_overflow_events, 10);
        // Nothing is lost: listed + other = everything counted.
        let listed_drops: u64 = listed.iter().map(|(_, f)| f.drops.get("NO_SOCKET")).sum();
        assert_eq!(
            listed_drops + other.drops.get("NO_SOCKET"),
            (1..=25).sum::<u64>() + 7
        );
        let listed_datagrams: u64 = listed
            .iter()
            .map(|(_, f)| f.datagrams_a_to_b + f.datagrams_b_to_a)
            .sum();
        assert_eq!(listed_datagrams + other.datagrams, 25 * 2 + 3);
        // The most recently active flows are the ones listed.
        assert!(listed.iter().any(|(k, _)| **k == key(25)));
        assert!(!listed.iter().any(|(k, _)| **k == key(1)));
    }

    #[test]
    fn counts_serialize_as_sorted_objects() {
        let mut counts = Counts::default();
        counts.add("NO_SOCKET", 2);
        counts.add("NETFILTER_DROP", 1);
        counts.add("NO_SOCKET", 3);
        assert_eq!(
            serde_json::to_string(&counts).unwrap(),
            r#"{"NETFILTER_DROP":1,"NO_SOCKET":5}"#
        );
    }
}
