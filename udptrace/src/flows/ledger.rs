//! The verdicts' ledger, below the rules: it stores the verdicts, keeps each rule within its
//! allowance, counts occurrences (including those the kernel counted without writing their
//! events), collects evidence, remembers which datagrams a verdict already explains and
//! decides when a verdict has settled.
//!
//! A verdict is held back for `SETTLE` after its first evidence so that the events that
//! complete it (the ICMP error, the ECONNREFUSED it causes) can join it; it is then emitted
//! once, and again in the exit summary with its final counts.

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use super::{
    bounded::Bounded,
    table::{FlowKey, FlowTable, Tally, canonical},
    verdict::{Facts, Verdict, VerdictCode},
};
use crate::model::TraceEvent;

/// How long a verdict waits for the rest of its evidence.
pub const SETTLE: Duration = Duration::from_millis(300);
/// Evidence kept per verdict (the count keeps going). The text shows at most this many
/// evidence lines, the lines a verdict's facts add (its socket, its rules) included.
pub const MAX_EVIDENCE: usize = 12;
/// Verdicts opened per rule (the three NO_SOCKET codes share one rule, and one allowance). A
/// storm of broken flows (a port scan, thousands of clients of a dead service) would otherwise
/// open a verdict, list sockets and print a report per flow; past this, occurrences in new
/// flows are counted (`not_opened`) and their drops stay in the flows.
pub const MAX_VERDICTS_PER_RULE: usize = 256;

/// A rule, by its place in the registration list (`rules::registered`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleId(pub usize);

/// The kernel's count of a (flow, tally) credited to the verdict its events count towards.
struct Credit {
    verdict: usize,
    /// Events of the tally this verdict counted since the credit began.
    observed: u64,
    /// What the kernel counted of the tally since.
    kernel: u64,
}

impl Credit {
    /// What the verdict counts beyond its observed events: the verdict's share is
    /// max(observed, kernel), whichever order events and kernel counts arrive in.
    fn extra(&self) -> u64 {
        self.kernel.saturating_sub(self.observed)
    }
}

/// When a verdict was opened (kernel time) and whether it was emitted.
struct Settling {
    first_ns: u64,
    emitted: bool,
}

pub struct Ledger {
    verdicts: Vec<Verdict>,
    /// Per verdict, in the same order.
    settling: Vec<Settling>,
    index: HashMap<(FlowKey, VerdictCode), usize>,
    /// Verdicts opened per rule.
    opened: Vec<usize>,
    /// Occurrences that would have opened a verdict past `MAX_VERDICTS_PER_RULE`.
    not_opened: u64,
    /// Datagrams (source, destination) already explained by a verdict.
    explained: Bounded<(SocketAddr, SocketAddr), usize>,
    /// (flow, tally) → the verdict those events count towards, so that events the kernel
    /// counted without writing them (sampled out, lost) count there too (`count_in_kernel`).
    tally_verdicts: Bounded<(FlowKey, Tally), Credit>,
    /// The verdict the event being observed counted towards, if any.
    counted: Option<usize>,
}

impl Ledger {
    /// A ledger for `rules` rules, remembering as many explained datagrams and credited
    /// tallies as `max_flows`.
    pub fn new(rules: usize, max_flows: usize) -> Self {
        Self {
            verdicts: Vec::new(),
            settling: Vec::new(),
            index: HashMap::new(),
            opened: vec![0; rules],
            not_opened: 0,
            explained: Bounded::new(max_flows),
            tally_verdicts: Bounded::new(max_flows),
            counted: None,
        }
    }

    /// Starts the observation of a new event.
    pub fn begin(&mut self) {
        self.counted = None;
    }

    /// Credits the event just observed to the verdict it counted towards, for the kernel's
    /// counts of its tally.
    pub fn end(&mut self, event: &TraceEvent) {
        let (Some(tally), Some(index)) = (Tally::of(event), self.counted) else {
            return;
        };
        let credit = self.tally_verdicts.get_or_insert_with(
            (FlowKey::of(event), tally),
            || Credit {
                verdict: index,
                observed: 0,
                kernel: 0,
            },
            |_, _| {},
        );
        if credit.verdict != index {
            *credit = Credit {
                verdict: index,
                observed: 0,
                kernel: 0,
            };
        }
        let before = credit.extra();
        credit.observed += 1;
        // The event already counted once on the verdict: the kernel's count of it, if
        // credited before the event arrived, is taken back.
        self.verdicts[index].count -= before - credit.extra();
    }

    /// The kernel counted `count` more of `tally` in `flow`: the verdict those events feed
    /// takes them (beyond the events it already counted).
    pub fn count_in_kernel(&mut self, flow: FlowKey, tally: Tally, count: u64) {
        if let Some(credit) = self.tally_verdicts.get_mut(&(flow, tally)) {
            let before = credit.extra();
            credit.kernel += count;
            self.verdicts[credit.verdict].count += credit.extra() - before;
        }
    }

    /// Occurrences past `MAX_VERDICTS_PER_RULE` that opened no verdict.
    pub fn not_opened(&self) -> u64 {
        self.not_opened
    }

    /// Whether `rule` may still open a verdict; counts the occurrence otherwise.
    pub fn room_for(&mut self, rule: RuleId) -> bool {
        let room = self.opened[rule.0] < MAX_VERDICTS_PER_RULE;
        if !room {
            self.not_opened += 1;
        }
        room
    }

    /// Whether a verdict of `code` is open on `key` (nothing is counted).
    pub fn is_open(&self, key: FlowKey, code: VerdictCode) -> bool {
        self.index.contains_key(&(key, code))
    }

    /// The index of the open verdict of `code` on `key`, for `verdict_mut`.
    pub fn open_verdict(&self, key: FlowKey, code: VerdictCode) -> Option<usize> {
        self.index.get(&(key, code)).copied()
    }

    /// Whether the event being observed already counted on a verdict (a rule earlier in
    /// `rules::registered` took it).
    pub fn counted(&self) -> bool {
        self.counted.is_some()
    }

    /// Counts another occurrence on the open verdict of `code` on `key`; `false` when none is
    /// open.
    pub fn bump(&mut self, key: FlowKey, code: VerdictCode, event: &TraceEvent) -> bool {
        let Some(&index) = self.index.get(&(key, code)) else {
            return false;
        };
        self.count_occurrence(index, event);
        true
    }

    /// `event` is another occurrence of verdict `index`.
    pub fn count_occurrence(&mut self, index: usize, event: &TraceEvent) {
        let verdict = &mut self.verdicts[index];
        verdict.count += 1;
        add_evidence(verdict, event);
        self.counted = Some(index);
    }

    /// Counts `event` on the open verdict of `code` on `key`, or opens it for `rule` (within
    /// the rule's allowance: `None` past it) with the facts and first evidence `make` gives,
    /// marking it on its flow.
    pub fn open(
        &mut self,
        rule: RuleId,
        flows: &mut FlowTable,
        (key, code): (FlowKey, VerdictCode),
        event: &TraceEvent,
        make: impl FnOnce() -> (Facts, Vec<TraceEvent>),
    ) -> Option<usize> {
        if let Some(&index) = self.index.get(&(key, code)) {
            self.count_occurrence(index, event);
            return Some(index);
        }
        if !self.room_for(rule) {
            return None;
        }
        self.opened[rule.0] += 1;
        let (facts, mut evidence) = make();
        evidence.truncate(MAX_EVIDENCE);
        flows.mark(key, code);
        self.verdicts.push(Verdict {
            code,
            key,
            facts,
            evidence,
            count: 1,
        });
        self.settling.push(Settling {
            first_ns: event.ts_ns,
            emitted: false,
        });
        let index = self.verdicts.len() - 1;
        self.index.insert((key, code), index);
        self.counted = Some(index);
        Some(index)
    }

    /// Verdict `index`, for a rule to complete its facts and evidence.
    pub fn verdict_mut(&mut self, index: usize) -> &mut Verdict {
        &mut self.verdicts[index]
    }

    /// Adds `event` to verdict `index`'s evidence (not another occurrence).
    pub fn add_evidence(&mut self, index: usize, event: &TraceEvent) {
        add_evidence(&mut self.verdicts[index], event);
    }

    /// Records that verdict `index` explains the datagram `source > destination`.
    pub fn explain(&mut self, datagram: (SocketAddr, SocketAddr), index: usize) {
        self.explained.insert(datagram, index);
    }

    /// The verdict explaining the datagram `source > destination`, if one does.
    pub fn explained(&self, datagram: &(SocketAddr, SocketAddr)) -> Option<usize> {
        self.explained.get(datagram).copied()
    }

    /// The explained datagrams and their verdicts.
    pub fn explained_datagrams(&self) -> impl Iterator<Item = (&(SocketAddr, SocketAddr), usize)> {
        self.explained
            .iter()
            .map(|(datagram, index)| (datagram, *index))
    }

    /// Adds an event about a datagram (an ICMP error, a socket error, a drop) to the verdict
    /// that explains its datagram; `false` when none does.
    pub fn add_to_explained(&mut self, event: &TraceEvent) -> bool {
        let datagram = (canonical(event.source()), canonical(event.destination()));
        let Some(&index) = self.explained.get(&datagram) else {
            return false;
        };
        add_evidence(&mut self.verdicts[index], event);
        true
    }

    /// Adds `event` to every verdict on its flow.
    pub fn add_to_flow(&mut self, event: &TraceEvent) {
        let key = FlowKey::of(event);
        for verdict in self.verdicts.iter_mut().filter(|v| v.key == key) {
            add_evidence(verdict, event);
        }
    }

    /// How many verdicts were opened so far (an index past the last one).
    pub fn opened(&self) -> usize {
        self.verdicts.len()
    }

    /// Adds a path event seen under escalation (`udptrace watch`) to the verdicts on its flow
    /// from index `from` on: one event of each kind per verdict, so that a busy flow's hops do
    /// not crowd the failures out of the evidence.
    pub fn add_escalated(&mut self, event: &TraceEvent, from: usize) {
        let key = FlowKey::of(event);
        for verdict in self.verdicts.iter_mut().skip(from).filter(|v| v.key == key) {
            let known = verdict
                .evidence
                .iter()
                .any(|e| e.escalated && e.kind_name() == event.kind_name());
            if !known {
                add_evidence(verdict, event);
            }
        }
    }

    /// Verdicts whose evidence has settled by `now_ns` (kernel monotonic time) and were not yet
    /// emitted; `flush` emits all.
    pub fn ready(&mut self, now_ns: u64, flush: bool) -> Vec<Verdict> {
        let settle = SETTLE.as_nanos() as u64;
        let mut ready = Vec::new();
        for (verdict, settling) in self.verdicts.iter().zip(&mut self.settling) {
            if !settling.emitted && (flush || now_ns >= settling.first_ns + settle) {
                settling.emitted = true;
                ready.push(verdict.clone());
            }
        }
        ready
    }

    /// Every verdict with its final evidence and counts, in the order they were opened.
    pub fn verdicts(&self) -> &[Verdict] {
        &self.verdicts
    }
}

fn add_evidence(verdict: &mut Verdict, event: &TraceEvent) {
    // A socket error the flow adds and the rule then counts (no_route's failed send) is one
    // piece of evidence.
    if verdict.evidence.last() == Some(event) {
        return;
    }
    if verdict.evidence.len() < MAX_EVIDENCE {
        verdict.evidence.push(event.clone());
    }
}
