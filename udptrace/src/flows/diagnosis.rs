//! The dispatcher: feeds each event to the flow table, the ledger and the registered rules
//! (`rules::registered`), and answers for the verdicts.

use std::{collections::VecDeque, time::Duration};

use super::{
    ledger::{Ledger, RuleId},
    rule::{
        ConntrackReader, Context, Environment, HISTORY, IcmpLimitsReader, KnownReason, QdiscLister,
        Rule, RuleLister, SocketLister,
    },
    rules::{self, DEFAULT_REPLY_TIMEOUT},
    table::{DEFAULT_MAX_FLOWS, FlowKey, FlowTable, Tally},
    verdict::Verdict,
};
use crate::model::{TraceEvent, What};

pub struct Diagnosis {
    pub flows: FlowTable,
    max_flows: usize,
    reply_timeout: Duration,
    ledger: Ledger,
    rules: Vec<Box<dyn Rule>>,
    history: VecDeque<TraceEvent>,
    env: Environment,
}

impl Diagnosis {
    pub fn new(sockets: SocketLister) -> Self {
        Self::build(
            DEFAULT_MAX_FLOWS,
            DEFAULT_REPLY_TIMEOUT,
            Environment {
                sockets,
                rules: Box::new(|_| None),
                icmp_limits: Box::new(|_| None),
                conntrack: Box::new(|_| None),
                qdiscs: Box::new(|_| None),
            },
        )
    }

    fn build(max_flows: usize, reply_timeout: Duration, env: Environment) -> Self {
        let rules = rules::registered(max_flows, reply_timeout);
        Self {
            flows: FlowTable::new(max_flows),
            max_flows,
            reply_timeout,
            ledger: Ledger::new(rules.len(), max_flows),
            rules,
            history: VecDeque::new(),
            env,
        }
    }

    /// Keeps at most `max_flows` flows (and as many requests, explained datagrams and
    /// credited tallies); before any event.
    #[must_use]
    pub fn with_max_flows(self, max_flows: usize) -> Self {
        Self::build(max_flows, self.reply_timeout, self.env)
    }

    /// Judges a request unanswered after `reply_timeout` (`no_reply`); before any event.
    #[must_use]
    pub fn with_reply_timeout(self, reply_timeout: Duration) -> Self {
        Self::build(self.max_flows, reply_timeout, self.env)
    }

    /// Names the rule behind `firewall_drop` verdicts.
    #[must_use]
    pub fn with_rules(mut self, rules: RuleLister) -> Self {
        self.env.rules = rules;
        self
    }

    /// Reads the ICMP rate limits a `port_unreachable` verdict names.
    #[must_use]
    pub fn with_icmp_limits(mut self, icmp_limits: IcmpLimitsReader) -> Self {
        self.env.icmp_limits = icmp_limits;
        self
    }

    /// Reads the conntrack counters behind `conntrack_drop` verdicts.
    #[must_use]
    pub fn with_conntrack(mut self, conntrack: ConntrackReader) -> Self {
        self.env.conntrack = conntrack;
        self
    }

    /// Names the qdisc behind `tx_drop` verdicts.
    #[must_use]
    pub fn with_qdiscs(mut self, qdiscs: QdiscLister) -> Self {
        self.env.qdiscs = qdiscs;
        self
    }

    /// Feeds one event to the rules.
    pub fn observe(&mut self, event: &TraceEvent) {
        let opened = self.ledger.opened();
        self.flows.record(event);
        if event.hops_untraced {
            // Counted in its flow, judged by no rule (see `TraceEvent::hops_untraced`).
            return;
        }
        // Before `begin`: a verdict a timeout opens is not counted towards this event's tally.
        self.each_rule(|rule, cx| rule.on_clock(event, cx));
        self.ledger.begin();
        match &event.what {
            What::Drop {
                reason, location, ..
            } => {
                // A drop of a datagram a verdict explains (a wrong-source reply dying at the
                // client) is its evidence, not a new case.
                if !self.ledger.add_to_explained(event)
                    && let Some(known) = KnownReason::of_drop(reason, location)
                {
                    self.each_rule(|rule, cx| {
                        if rule.drops().contains(&known) {
                            rule.on_drop(event, known, cx);
                        }
                    });
                }
            }
            other => {
                if matches!(
                    other,
                    What::Icmp { .. }
                        | What::SockError { .. }
                        | What::SendError { .. }
                        | What::RecvError { .. }
                ) && !self.ledger.add_to_explained(event)
                {
                    self.ledger.add_to_flow(event);
                }
                self.each_rule(|rule, cx| rule.on_event(event, cx));
            }
        }
        self.ledger.end(event);
        // `udptrace watch`: path evidence that escalation gathered joins the verdicts on its
        // flow, those open already and those this event opened (from the history: the hops
        // of a datagram come before its drop).
        if event.escalated {
            self.ledger.add_escalated(event, 0);
        }
        if self.ledger.opened() > opened {
            for past in self.history.iter().filter(|past| past.escalated) {
                self.ledger.add_escalated(past, opened);
            }
        }
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(event.clone());
    }

    fn each_rule(&mut self, mut run: impl FnMut(&mut dyn Rule, &mut Context<'_>)) {
        for (index, rule) in self.rules.iter_mut().enumerate() {
            let mut cx = Context {
                rule: RuleId(index),
                ledger: &mut self.ledger,
                flows: &mut self.flows,
                history: &self.history,
                env: &self.env,
            };
            run(rule.as_mut(), &mut cx);
        }
    }

    /// The kernel counted `count` more of `tally` in `flow`, events written or not (a storm's
    /// events are sampled): the flow takes them, and so does the verdict those events feed
    /// (beyond the events it already counted).
    pub fn count_in_kernel(&mut self, flow: FlowKey, tally: Tally, count: u64) {
        self.flows.add_tally(flow, &tally, count);
        self.ledger.count_in_kernel(flow, tally, count);
    }

    /// Occurrences past `MAX_VERDICTS_PER_RULE` that opened no verdict.
    pub fn not_opened(&self) -> u64 {
        self.ledger.not_opened()
    }

    /// Verdicts whose evidence has settled by `now_ns` (kernel monotonic time) and were not yet
    /// emitted; `flush` emits all.
    pub fn ready(&mut self, now_ns: u64, flush: bool) -> Vec<Verdict> {
        self.ledger.ready(now_ns, flush)
    }

    /// Every verdict with its final evidence and counts.
    pub fn verdicts(&self) -> &[Verdict] {
        self.ledger.verdicts()
    }
}
