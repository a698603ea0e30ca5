//! conntrack_drop: connection tracking itself dropped the datagram (a full table, an insert
//! race), not a rule.
//!
//! Both are NETFILTER_DROP at `nf_hook_slow` (net/netfilter/core.c, the NF_DROP verdict of
//! the conntrack hook; 5.10 has no reasons and the drop is inferred from that location), as
//! a rule's drop is: the drop event alone cannot tell them apart. The namespace's conntrack
//! counters can. `nf_conntrack_in` counts each packet it drops in the per-CPU `drop`
//! statistic (`NF_CT_STAT_INC_ATOMIC(net, drop)` when `resolve_normal_ct` fails: the table
//! is full and `early_drop` found no unassured entry to evict), and so does
//! `nf_ct_resolve_clash` with `insert_failed` when `__nf_conntrack_confirm` finds the entry
//! inserted meanwhile by another CPU and cannot resolve the clash
//! (net/netfilter/nf_conntrack_core.c); rules never touch them. So each netfilter drop is
//! conntrack's when the namespace's `drop` counter, read after it, has grown by more than the
//! drops already matched to it: each increment explains one drop. The counts before the first
//! reading of a namespace are taken as unmatched (the counter only grows while conntrack is
//! in use there).

use crate::{
    conntrack::ConntrackStats,
    flows::{
        bounded::Bounded,
        rule::{Context, KnownReason, Rule},
        table::FlowKey,
        verdict::{ConntrackCause, Facts, Namespace, VerdictCode},
    },
    model::{TraceEvent, What},
};

/// The counter values of a namespace already matched to drops.
#[derive(Clone, Copy, Default)]
struct Matched {
    drop: u64,
    insert_failed: u64,
}

pub struct ConntrackDrop {
    /// Per namespace (inode).
    matched: Bounded<u32, Matched>,
}

impl ConntrackDrop {
    pub fn new(max_flows: usize) -> Self {
        Self {
            matched: Bounded::new(max_flows),
        }
    }

    /// Whether `stats`, read after `event`, show a conntrack drop not matched yet, and why.
    fn cause(&mut self, event: &TraceEvent, stats: &ConntrackStats) -> Option<ConntrackCause> {
        let matched = self
            .matched
            .get_or_insert_with(event.netns, Matched::default, |_, _| {});
        if stats.drop <= matched.drop {
            return None;
        }
        matched.drop += 1;
        let insert_failed = stats.insert_failed > matched.insert_failed;
        matched.insert_failed = stats.insert_failed;
        Some(if stats.full() {
            ConntrackCause::TableFull
        } else if insert_failed {
            ConntrackCause::InsertFailed
        } else {
            ConntrackCause::Other
        })
    }
}

impl Rule for ConntrackDrop {
    fn drops(&self) -> &'static [KnownReason] {
        &[KnownReason::NetfilterDrop]
    }

    fn on_drop(&mut self, event: &TraceEvent, _reason: KnownReason, cx: &mut Context<'_>) {
        if event.fragment.is_some() {
            // fragment_loss's, which names the rule about fragments.
            return;
        }
        let key = FlowKey::of(event);
        // A flow's later drops count on the verdict it has (reading the counters costs a
        // namespace switch).
        if cx.ledger.bump(key, VerdictCode::ConntrackDrop, event)
            || cx.ledger.is_open(key, VerdictCode::FirewallDrop)
        {
            return;
        }
        let What::Drop { location, .. } = &event.what else {
            return;
        };
        let Some(stats) = (cx.env.conntrack)(event) else {
            return;
        };
        let Some(cause) = self.cause(event, &stats) else {
            return;
        };
        cx.verdict(key, VerdictCode::ConntrackDrop, event, || {
            (
                Facts::ConntrackDrop {
                    source: event.source(),
                    destination: event.destination(),
                    namespace: Namespace::of(event),
                    location: location.clone(),
                    cause,
                    stats,
                },
                vec![event.clone()],
            )
        });
    }
}

#[cfg(test)]
mod tests {
    use std::{cell::RefCell, collections::VecDeque, rc::Rc};

    use crate::{
        conntrack::ConntrackStats,
        firewall::FirewallRule,
        flows::{
            diagnosis::Diagnosis,
            rule::ConntrackReader,
            testing::{event, no_sockets},
            verdict::{ConntrackCause, Facts, VerdictCode},
        },
        model::{DropReason, Location, TraceEvent, What},
    };

    const CLIENT: &str = "192.0.2.1:40000";
    const SERVER: &str = "192.0.2.2:5071";

    fn netfilter_drop(src: &str, ts_ns: u64) -> TraceEvent {
        event(
            What::Drop {
                reason: DropReason::named("NETFILTER_DROP"),
                reason_inferred: false,
                location: Location::Symbol("nf_hook_slow+0x9e".into()),
                txq: None,
            },
            src,
            SERVER,
            ts_ns,
        )
    }

    fn stats(count: u64, drop: u64, insert_failed: u64) -> ConntrackStats {
        ConntrackStats {
            count,
            max: 8,
            drop,
            insert_failed,
            early_drop: 0,
        }
    }

    /// Answers with `readings` in turn (the last one again once they run out), counting the
    /// questions.
    fn reader(readings: Vec<ConntrackStats>) -> (ConntrackReader, Rc<RefCell<usize>>) {
        let asked = Rc::new(RefCell::new(0));
        let readings = RefCell::new(VecDeque::from(readings));
        let counter = Rc::clone(&asked);
        let reader: ConntrackReader = Box::new(move |_| {
            *counter.borrow_mut() += 1;
            let mut readings = readings.borrow_mut();
            if readings.len() > 1 {
                readings.pop_front()
            } else {
                readings.front().copied()
            }
        });
        (reader, asked)
    }

    fn firewall_rule() -> FirewallRule {
        FirewallRule {
            table: "inet filter".into(),
            chain: "input".into(),
            hook: Some("input".into()),
            text: "udp dport 5071 drop # handle 3".into(),
        }
    }

    #[test]
    fn a_drop_while_the_table_is_full_is_conntrack_drop_not_a_rule() {
        let (conntrack, asked) = reader(vec![stats(8, 1, 0)]);
        let mut diagnosis = Diagnosis::new(no_sockets())
            .with_rules(Box::new(|_| Some(vec![firewall_rule()])))
            .with_conntrack(conntrack);
        let first = netfilter_drop(CLIENT, 1);
        diagnosis.observe(&first);
        // The flow's next drop counts on its verdict without another reading.
        diagnosis.observe(&netfilter_drop(CLIENT, 2));
        let verdicts = diagnosis.verdicts();
        assert_eq!(verdicts.len(), 1, "{verdicts:#?}");
        assert_eq!(verdicts[0].code, VerdictCode::ConntrackDrop);
        assert_eq!(verdicts[0].count, 2);
        assert_eq!(*asked.borrow(), 1);
        let Facts::ConntrackDrop {
            cause,
            stats: read,
            location,
            ..
        } = &verdicts[0].facts
        else {
            panic!("{:?}", verdicts[0].facts)
        };
        assert_eq!(*cause, ConntrackCause::TableFull);
        assert_eq!(*read, stats(8, 1, 0));
        assert_eq!(*location, Location::Symbol("nf_hook_slow+0x9e".into()));
        assert_eq!(verdicts[0].evidence[0], first);
    }

    #[test]
    fn a_failed_insert_is_an_insert_race() {
        let (conntrack, _) = reader(vec![stats(3, 1, 1)]);
        let mut diagnosis = Diagnosis::new(no_sockets()).with_conntrack(conntrack);
        diagnosis.observe(&netfilter_drop(CLIENT, 1));
        let Facts::ConntrackDrop { cause, .. } = &diagnosis.verdicts()[0].facts else {
            panic!("{:?}", diagnosis.verdicts())
        };
        assert_eq!(*cause, ConntrackCause::InsertFailed);
    }

    #[test]
    fn a_rule_drop_leaves_the_counter_alone_and_stays_firewall_drop() {
        // Conntrack is in use and even full, but its drop counter does not move.
        let (conntrack, _) = reader(vec![stats(8, 0, 0)]);
        let mut diagnosis = Diagnosis::new(no_sockets())
            .with_rules(Box::new(|_| Some(vec![firewall_rule()])))
            .with_conntrack(conntrack);
        diagnosis.observe(&netfilter_drop(CLIENT, 1));
        let verdicts = diagnosis.verdicts();
        assert_eq!(verdicts.len(), 1, "{verdicts:#?}");
        assert_eq!(verdicts[0].code, VerdictCode::FirewallDrop);
    }

    #[test]
    fn each_counted_drop_explains_one_drop_event() {
        // One conntrack drop, then a rule's drop of another flow in the same namespace: the
        // reading after the second still shows one drop, already matched.
        let (conntrack, asked) = reader(vec![stats(8, 1, 0), stats(8, 1, 0)]);
        let mut diagnosis = Diagnosis::new(no_sockets())
            .with_rules(Box::new(|_| Some(vec![firewall_rule()])))
            .with_conntrack(conntrack);
        diagnosis.observe(&netfilter_drop(CLIENT, 1));
        diagnosis.observe(&netfilter_drop("192.0.2.1:40001", 2));
        let codes: Vec<_> = diagnosis.verdicts().iter().map(|v| v.code).collect();
        assert_eq!(
            codes,
            [VerdictCode::ConntrackDrop, VerdictCode::FirewallDrop]
        );
        assert_eq!(*asked.borrow(), 2);
    }

    #[test]
    fn a_namespace_without_conntrack_is_left_to_the_firewall_rule() {
        let mut diagnosis = Diagnosis::new(no_sockets())
            .with_rules(Box::new(|_| Some(vec![firewall_rule()])))
            .with_conntrack(Box::new(|_| None));
        diagnosis.observe(&netfilter_drop(CLIENT, 1));
        assert_eq!(diagnosis.verdicts()[0].code, VerdictCode::FirewallDrop);
    }
}
