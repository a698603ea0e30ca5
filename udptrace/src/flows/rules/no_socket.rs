//! NO_SOCKET drops: a socket on the port that does not accept the datagram
//! (connected_socket_mismatch), a NAT reply that conntrack did not map back
//! (nat_reply_mismatch), or nothing listening at all (port_unreachable). One rule, one
//! allowance: the three are the readings of one drop, most specific first.

use std::net::SocketAddr;

use crate::{
    flows::{
        rule::{Context, KnownReason, Rule},
        table::FlowKey,
        verdict::{Facts, Namespace, Pinned, VerdictCode},
    },
    model::{Conntrack, TraceEvent, What},
    sockets::ListedSocket,
};

pub struct NoSocket;

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
            || !cx.room()
        {
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
        let icmp = cx
            .recent(|e| {
                matches!(e.what, What::Icmp { .. })
                    && e.source() == event.source()
                    && e.destination() == event.destination()
            })
            .cloned();
        cx.verdict(key, VerdictCode::PortUnreachable, event, || {
            let mut evidence = vec![event.clone()];
            evidence.extend(icmp);
            (
                Facts::PortUnreachable {
                    source: event.source(),
                    destination: event.destination(),
                    namespace: Namespace::of(event),
                },
                evidence,
            )
        });
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
    use crate::{
        flows::{
            diagnosis::Diagnosis,
            testing::{
                drop, event, masquerade, no_sockets, pinned_socket, pinned_socket_lister,
                pinning_connect, process,
            },
            verdict::{Facts, Namespace, Pinned, VerdictCode},
        },
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
                    netns_name: Some("host".into())
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
