//! NO_SOCKET drops: a socket on the port that does not accept the datagram
//! (connected_socket_mismatch), a NAT reply that conntrack did not map back
//! (nat_reply_mismatch), or nothing listening at all (port_unreachable). One rule, one
//! allowance: the three are the readings of one drop, most specific first.
//!
//! A port_unreachable flow also counts the ICMP port unreachables its datagrams got: the
//! kernel rate-limits them (`icmp_limits`), and a datagram whose error was suppressed leaves
//! a connected client waiting for a timeout instead of failing with ECONNREFUSED.

use std::{collections::HashSet, net::SocketAddr};

use crate::{
    flows::{
        rule::{Context, KnownReason, Rule},
        table::FlowKey,
        verdict::{Facts, IcmpCounted, Namespace, Pinned, PortUnreachables, VerdictCode},
    },
    icmp_limits::XRLIM_BURST_FACTOR,
    model::{Conntrack, Family, TraceEvent, What},
    sockets::ListedSocket,
};

#[derive(Default)]
pub struct NoSocket {
    /// The flows whose port_unreachable verdict asked for its namespace's ICMP limits (once
    /// per verdict; at most the rule's allowance).
    asked_limits: HashSet<FlowKey>,
}

impl Rule for NoSocket {
    fn drops(&self) -> &'static [KnownReason] {
        &[KnownReason::NoSocket]
    }

    fn on_drop(&mut self, event: &TraceEvent, _reason: KnownReason, cx: &mut Context<'_>) {
        let key = FlowKey::of(event);
        // Listing sockets costs a sock_diag dump (cached per namespace): once per flow, not per
        // drop, and not past the rule's allowance of verdicts.
        if [
            VerdictCode::ConnectedSocketMismatch,
            VerdictCode::NatReplyMismatch,
            VerdictCode::PortUnreachable,
        ]
        .into_iter()
        .any(|code| cx.ledger.bump(key, code, event))
        {
            self.ask_limits(key, event, cx);
            return;
        }
        if !cx.room() {
            return;
        }
        let sockets = (cx.env.sockets)(event).unwrap_or_default();
        let mismatched = sockets.iter().find_map(|(entry, owner)| {
            (entry.local.port() == event.dport)
                .then(|| entry.mismatch(event.source(), event.destination()))
                .flatten()
                .map(|mismatch| (entry, owner, mismatch))
        });
        if let Some((entry, owner, mismatch)) = mismatched {
            // With a function probe on the connect path: who pinned the socket, and when.
            let connect = cx
                .recent(|e| {
                    matches!(&e.what, What::Connect { error: None, .. })
                        && e.sport == event.dport
                        && (e.netns == event.netns || e.netns == 0 || event.netns == 0)
                })
                .cloned();
            cx.verdict(key, VerdictCode::ConnectedSocketMismatch, event, || {
                let pinned = connect.as_ref().map(|connect| Pinned {
                    process: connect.process.clone(),
                    local: connect.source(),
                    peer: connect.destination(),
                });
                let mut evidence = vec![event.clone()];
                evidence.extend(connect);
                (
                    Facts::ConnectedSocket {
                        source: event.source(),
                        destination: event.destination(),
                        namespace: Namespace::of(event),
                        socket: ListedSocket {
                            entry: entry.clone(),
                            owner: owner.clone(),
                        },
                        mismatch,
                        connect: pinned,
                    },
                    evidence,
                )
            });
            return;
        }
        if let Some((expected, conntrack)) = nat_expectation(event, cx) {
            cx.verdict(key, VerdictCode::NatReplyMismatch, event, || {
                (
                    Facts::NatReply {
                        source: event.source(),
                        destination: event.destination(),
                        namespace: Namespace::of(event),
                        expected,
                        conntrack,
                    },
                    vec![event.clone()],
                )
            });
            return;
        }
        // The datagram's own error comes before its drop (`__udp4_lib_rcv` sends it, then
        // frees the datagram; net/ipv4/udp.c): the flow's first.
        let icmp = cx
            .recent(|e| {
                port_unreachable(e)
                    && e.source() == event.source()
                    && e.destination() == event.destination()
            })
            .cloned();
        let opened = cx.verdict(key, VerdictCode::PortUnreachable, event, || {
            let counted = icmp.as_ref().map(|icmp| PortUnreachables {
                seen: 1,
                counted: IcmpCounted::of(icmp.probe),
                limits: None,
            });
            let mut evidence = vec![event.clone()];
            evidence.extend(icmp);
            (
                Facts::PortUnreachable {
                    source: event.source(),
                    destination: event.destination(),
                    namespace: Namespace::of(event),
                    icmp: counted,
                },
                evidence,
            )
        });
        if opened.is_some() {
            self.ask_limits(key, event, cx);
        }
    }

    /// A port unreachable about a datagram of a port_unreachable flow counts on its verdict.
    fn on_event(&mut self, event: &TraceEvent, cx: &mut Context<'_>) {
        if !port_unreachable(event) {
            return;
        }
        let Some(index) = cx
            .ledger
            .open_verdict(FlowKey::of(event), VerdictCode::PortUnreachable)
        else {
            return;
        };
        let counted = IcmpCounted::of(event.probe);
        if let Facts::PortUnreachable { icmp, .. } = &mut cx.ledger.verdict_mut(index).facts {
            let icmp = icmp.get_or_insert(PortUnreachables {
                seen: 0,
                counted,
                limits: None,
            });
            icmp.seen += 1;
            // One attempt among them and the count is no longer one of errors sent.
            if counted == IcmpCounted::Attempted {
                icmp.counted = counted;
            }
        }
    }
}

impl NoSocket {
    /// Reads the ICMP limits of the drop's namespace for the port_unreachable verdict on
    /// `key` once they explain something: when its drops outnumber the errors sent, or (where
    /// the hook counts attempts, before the limits) exceed what one destination's burst lets
    /// through. Once per verdict: never per drop.
    fn ask_limits(&mut self, key: FlowKey, event: &TraceEvent, cx: &mut Context<'_>) {
        let Some(index) = cx.ledger.open_verdict(key, VerdictCode::PortUnreachable) else {
            return;
        };
        let verdict = cx.ledger.verdict_mut(index);
        let Facts::PortUnreachable {
            icmp: Some(icmp), ..
        } = &verdict.facts
        else {
            return;
        };
        let due = match icmp.counted {
            IcmpCounted::Sent => verdict.count > icmp.seen,
            IcmpCounted::Attempted => verdict.count > XRLIM_BURST_FACTOR,
        };
        if !due || !self.asked_limits.insert(key) {
            return;
        }
        let limits = (cx.env.icmp_limits)(event);
        if let Facts::PortUnreachable {
            icmp: Some(icmp), ..
        } = &mut cx.ledger.verdict_mut(index).facts
        {
            icmp.limits = limits;
        }
    }
}

/// An ICMP port unreachable: destination unreachable 3/3 (RFC 792), ICMPv6 1/4 (RFC 4443).
fn port_unreachable(event: &TraceEvent) -> bool {
    let What::Icmp {
        icmp_type,
        icmp_code,
        ..
    } = event.what
    else {
        return false;
    };
    match event.family {
        Family::Ipv4 => (icmp_type, icmp_code) == (3, 3),
        Family::Ipv6 => (icmp_type, icmp_code) == (1, 4),
    }
}

/// A datagram that left this namespace earlier with a conntrack entry whose reply goes to
/// the dropped datagram's destination, but from another source: the reply conntrack was
/// waiting for (its source), and the entry.
fn nat_expectation(event: &TraceEvent, cx: &Context<'_>) -> Option<(SocketAddr, Conntrack)> {
    cx.history.iter().rev().find_map(|earlier| {
        let conntrack = earlier.conntrack?;
        (earlier.netns == event.netns
            && conntrack.reply.dst == event.destination()
            && conntrack.reply.src != event.source())
        .then_some((conntrack.reply.src, conntrack))
    })
}

#[cfg(test)]
mod tests {
    use std::{cell::Cell, rc::Rc};

    use udptrace_common::event::Mechanism;

    use crate::{
        flows::{
            diagnosis::Diagnosis,
            testing::{
                drop, event, masquerade, no_sockets, pinned_socket, pinned_socket_lister,
                pinning_connect, port_unreachable, process,
            },
            verdict::{Facts, IcmpCounted, Namespace, Pinned, VerdictCode},
        },
        icmp_limits::IcmpLimits,
        model::Probe,
        model::What,
        sockets::{ListedSocket, Mismatch},
    };

    /// `udptrace watch`: the hops escalation saw before and after the drop join the verdict,
    /// one of each kind; hops of other flows and hops seen without escalation do not.
    #[test]
    fn escalated_hops_of_the_flow_become_evidence_once_per_kind() {
        let mut diagnosis = Diagnosis::new(no_sockets());
        let (client, server) = ("192.0.2.1:40000", "192.0.2.2:5801");
        let hop = |what: What, src: &str, dst: &str, ts_ns: u64, escalated: bool| {
            let mut hop = event(what, src, dst, ts_ns);
            hop.escalated = escalated;
            hop
        };
        diagnosis.observe(&hop(What::Xmit, client, server, 1, false));
        diagnosis.observe(&hop(What::Xmit, client, server, 2, true));
        diagnosis.observe(&hop(What::Recv, "192.0.2.9:1", server, 3, true));
        diagnosis.observe(&event(drop("NO_SOCKET"), client, server, 4));
        diagnosis.observe(&hop(What::Recv, client, server, 5, true));
        diagnosis.observe(&hop(What::Recv, client, server, 6, true));
        let verdict = &diagnosis.verdicts()[0];
        assert_eq!(verdict.code, VerdictCode::PortUnreachable);
        let evidence: Vec<(&str, u64, bool)> = verdict
            .evidence
            .iter()
            .map(|e| (e.kind_name(), e.ts_ns, e.escalated))
            .collect();
        assert_eq!(
            evidence,
            [("drop", 4, false), ("xmit", 2, true), ("recv", 5, true)]
        );
    }

    /// The interactive tracer's hop hooks were parked: the events until they are back are
    /// counted in their flow, but no rule judges them (`TraceEvent::hops_untraced`); the
    /// next datagram, traced, opens the verdict, which counts it alone.
    #[test]
    fn untraced_hops_are_counted_but_not_judged() {
        let mut diagnosis = Diagnosis::new(no_sockets());
        let (client, server) = ("192.0.2.1:40000", "192.0.2.2:5801");
        let untraced = |what: What, ts_ns: u64| {
            let mut untraced = event(what, client, server, ts_ns);
            untraced.hops_untraced = true;
            untraced
        };
        diagnosis.observe(&untraced(port_unreachable(), 1));
        diagnosis.observe(&untraced(drop("NO_SOCKET"), 2));
        diagnosis.observe(&event(What::Xmit, client, server, 2_000_000_000));
        assert!(
            diagnosis.verdicts().is_empty(),
            "{:?}",
            diagnosis.verdicts()
        );
        // Its ICMP error is in the flow (drops are the kernel's counts, `add_tally`).
        assert_eq!(diagnosis.flows.sorted()[0].1.icmp_errors, 1);
        diagnosis.observe(&event(port_unreachable(), client, server, 2_000_000_001));
        diagnosis.observe(&event(drop("NO_SOCKET"), client, server, 2_000_000_002));
        let verdict = &diagnosis.verdicts()[0];
        assert_eq!(verdict.code, VerdictCode::PortUnreachable);
        assert_eq!(verdict.count, 1);
        assert!(verdict.evidence.iter().all(|e| !e.hops_untraced));
        assert_eq!(diagnosis.flows.sorted()[0].1.icmp_errors, 2);
    }

    /// `count` datagrams of one flow to a closed port, the first `sent` with their port
    /// unreachable (before their drop, as `__udp4_lib_rcv` sends it) from `mechanism`; how
    /// often the ICMP limits were asked for, and the verdict.
    fn burst(
        count: u64,
        sent: u64,
        mechanism: Mechanism,
    ) -> (usize, crate::flows::verdict::Verdict) {
        let asked = Rc::new(Cell::new(0));
        let counter = Rc::clone(&asked);
        let mut diagnosis = Diagnosis::new(no_sockets()).with_icmp_limits(Box::new(move |event| {
            assert_eq!(event.netns, 7);
            counter.set(counter.get() + 1);
            Some(IcmpLimits {
                ratelimit_ms: Some(1000),
                ..IcmpLimits::default()
            })
        }));
        let (client, server) = ("192.0.2.1:40000", "192.0.2.2:5063");
        for index in 0..count {
            if index < sent {
                let mut icmp = event(port_unreachable(), client, server, 10 * index);
                icmp.probe = Probe(Some(mechanism));
                diagnosis.observe(&icmp);
            }
            diagnosis.observe(&event(drop("NO_SOCKET"), client, server, 10 * index + 1));
        }
        (asked.get(), diagnosis.verdicts()[0].clone())
    }

    /// Issue 17: the `icmp:icmp_send` tracepoint counts errors sent, after the rate limits:
    /// drops beyond them were suppressed, and the limits are read once, at the first.
    #[test]
    fn drops_beyond_the_errors_sent_are_suppressed_errors() {
        let (asked, verdict) = burst(8, 6, Mechanism::TpBtf);
        assert_eq!(asked, 1);
        assert_eq!(verdict.count, 8);
        assert_eq!(verdict.icmp_suppressed(), Some(2));
        let Facts::PortUnreachable {
            icmp: Some(icmp), ..
        } = &verdict.facts
        else {
            panic!("{:?}", verdict.facts);
        };
        assert_eq!(icmp.seen, 6);
        assert_eq!(icmp.counted, IcmpCounted::Sent);
        assert_eq!(icmp.limits.as_ref().unwrap().ratelimit_ms, Some(1000));
        // Every error sent: nothing suppressed, nothing read.
        let (asked, verdict) = burst(8, 8, Mechanism::TpBtf);
        assert_eq!((asked, verdict.icmp_suppressed()), (0, None));
    }

    /// A function probe on `__icmp_send` (5.10) sees attempts, before the limits: no count
    /// of suppressed errors, and the limits are read once a destination's burst is exceeded.
    #[test]
    fn attempts_before_the_limits_give_no_suppressed_count() {
        let (asked, verdict) = burst(8, 8, Mechanism::Fentry);
        assert_eq!(asked, 1);
        assert_eq!(verdict.icmp_suppressed(), None);
        let (asked, _) = burst(6, 6, Mechanism::Kprobe);
        assert_eq!(asked, 0, "within one destination's burst");
    }

    #[test]
    fn a_connected_socket_is_a_fact_with_its_mismatch_and_its_connect() {
        let mut diagnosis = Diagnosis::new(pinned_socket_lister());
        let connect = pinning_connect();
        diagnosis.observe(&connect);
        diagnosis.observe(&event(
            drop("NO_SOCKET"),
            "198.51.100.2:40000",
            "192.0.2.1:4000",
            2,
        ));
        let verdict = &diagnosis.verdicts()[0];
        assert_eq!(verdict.code, VerdictCode::ConnectedSocketMismatch);
        assert_eq!(
            verdict.facts,
            Facts::ConnectedSocket {
                source: "198.51.100.2:40000".parse().unwrap(),
                destination: "192.0.2.1:4000".parse().unwrap(),
                namespace: Namespace {
                    netns: 7,
                    netns_name: Some("host".into()),
                    container: None,
                },
                socket: ListedSocket {
                    entry: pinned_socket(),
                    owner: Some(process(77, "nc")),
                },
                mismatch: Mismatch::Address {
                    bound: "198.51.100.1".parse().unwrap(),
                    addressed: "192.0.2.1".parse().unwrap(),
                },
                connect: Some(Pinned {
                    process: Some(process(77, "nc")),
                    local: "198.51.100.1:4000".parse().unwrap(),
                    peer: "198.51.100.2:40000".parse().unwrap(),
                }),
            }
        );
        assert_eq!(
            verdict.evidence,
            [diagnosis.verdicts()[0].evidence[0].clone(), connect]
        );
    }

    #[test]
    fn a_nat_reply_names_the_source_conntrack_expected() {
        let mut diagnosis = Diagnosis::new(no_sockets());
        let conntrack = masquerade();
        let mut outgoing = event(What::Xmit, "198.51.100.2:40000", "203.0.113.1:4000", 1);
        outgoing.conntrack = Some(conntrack);
        diagnosis.observe(&outgoing);
        // A drop in another namespace is not this entry's reply.
        let mut elsewhere = event(drop("NO_SOCKET"), "192.0.2.2:4001", "192.0.2.3:40000", 2);
        elsewhere.netns = 8;
        diagnosis.observe(&elsewhere);
        diagnosis.observe(&event(
            drop("NO_SOCKET"),
            "192.0.2.2:4000",
            "192.0.2.3:40000",
            3,
        ));
        let codes: Vec<VerdictCode> = diagnosis.verdicts().iter().map(|v| v.code).collect();
        assert_eq!(
            codes,
            [VerdictCode::PortUnreachable, VerdictCode::NatReplyMismatch]
        );
        let Facts::NatReply {
            expected,
            conntrack: fact,
            ..
        } = &diagnosis.verdicts()[1].facts
        else {
            panic!("{:?}", diagnosis.verdicts()[1].facts);
        };
        assert_eq!(*expected, "203.0.113.1:4000".parse().unwrap());
        assert_eq!(*fact, conntrack);
    }
}
