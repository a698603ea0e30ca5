//! fragment_loss: a fragmented UDP datagram never arrives whole. Either some of its fragments
//! are dropped on the way (a firewall rule about fragments, such as nftables' `ip frag-off`,
//! which a port rule cannot be: later fragments carry no UDP header), or the receiver's
//! reassembly gives up waiting for them (`FRAG_REASM_TIMEOUT`, freed in `ip_expire`,
//! net/ipv4/ip_fragment.c, or `ip6_expire_frag_queue`, include/net/ipv6_frag.h, which also send
//! ICMP time exceeded, fragment reassembly, back). The kernel side gives every fragment its
//! datagram's ports (learned from the first fragment), so both kinds of loss belong to the flow.
//!
//! Path MTU failures belong here too: a datagram that may not be fragmented (IPv4 with DF, as
//! `IP_PMTUDISC_DO` sends it, or any IPv6 datagram on the way) meets a link narrower than
//! itself: the router sends ICMP fragmentation needed (3/4, net/ipv4/ip_forward.c) or packet
//! too big (ICMPv6 2, net/ipv6/ip6_output.c `ip6_forward`) with the MTU, and the sender's next
//! sends of that size fail with EMSGSIZE (net/ipv4/ip_output.c `__ip_append_data`).

use crate::{
    flows::{
        rule::{Context, KnownReason, Rule},
        table::FlowKey,
        verdict::{Facts, FragmentCause, Namespace, VerdictCode},
    },
    model::{Family, TraceEvent, What},
};

/// `EMSGSIZE` (include/uapi/asm-generic/errno.h).
const EMSGSIZE: u32 = 90;

/// An ICMP error saying a datagram is too big for the next link: fragmentation needed (ICMPv4
/// 3/4) or packet too big (ICMPv6 2).
fn too_big(event: &TraceEvent) -> bool {
    matches!(
        (event.family, &event.what),
        (
            Family::Ipv4,
            What::Icmp {
                icmp_type: 3,
                icmp_code: 4,
                ..
            }
        ) | (Family::Ipv6, What::Icmp { icmp_type: 2, .. })
    )
}

pub struct FragmentLoss;

impl Rule for FragmentLoss {
    fn drops(&self) -> &'static [KnownReason] {
        &[KnownReason::FragReasmTimeout, KnownReason::NetfilterDrop]
    }

    fn on_drop(&mut self, event: &TraceEvent, reason: KnownReason, cx: &mut Context<'_>) {
        let (Some(fragment), What::Drop { location, .. }) = (&event.fragment, &event.what) else {
            // A whole datagram's netfilter drop is firewall_drop's.
            return;
        };
        let cause = if reason == KnownReason::NetfilterDrop {
            FragmentCause::Firewall
        } else {
            FragmentCause::ReassemblyTimeout
        };
        let key = FlowKey::of(event);
        // Listing rules costs a namespace switch: not for verdicts past the allowance.
        if cx.ledger.bump(key, VerdictCode::FragmentLoss, event) || !cx.room() {
            return;
        }
        // The first fragment's size is the MTU the sender cut the datagram for; a later
        // fragment's first one is looked for among the recent events.
        let first = (fragment.offset == 0).then_some(fragment).or_else(|| {
            cx.recent(|seen| {
                seen.saddr == event.saddr
                    && seen.daddr == event.daddr
                    && seen
                        .fragment
                        .is_some_and(|f| f.id == fragment.id && f.offset == 0)
            })
            .and_then(|seen| seen.fragment.as_ref())
        });
        let fragment_size = first.map(|first| first.ip_len);
        let rules = match cause {
            FragmentCause::Firewall => (cx.env.rules)(event).unwrap_or_default(),
            FragmentCause::ReassemblyTimeout => Vec::new(),
        };
        cx.verdict(key, VerdictCode::FragmentLoss, event, || {
            (
                Facts::FragmentLoss {
                    source: event.source(),
                    destination: event.destination(),
                    namespace: Namespace::of(event),
                    location: location.clone(),
                    cause,
                    datagram_len: fragment.datagram_len,
                    fragment_size,
                    rules,
                },
                vec![event.clone()],
            )
        });
    }

    fn on_event(&mut self, event: &TraceEvent, cx: &mut Context<'_>) {
        let announced = match &event.what {
            What::Icmp { mtu, .. } if too_big(event) => *mtu,
            What::SendError { error, .. } if error.0.0 == EMSGSIZE => {
                // The send hook names the socket, not the destination: the error that taught
                // the kernel the smaller MTU, about a datagram from this socket, is the flow.
                if let Some(icmp) = cx
                    .recent(|seen| {
                        too_big(seen)
                            && seen.sport == event.sport
                            && (seen.saddr == event.saddr || event.saddr.is_unspecified())
                    })
                    .cloned()
                {
                    cx.ledger
                        .bump(FlowKey::of(&icmp), VerdictCode::FragmentLoss, event);
                    return;
                }
                None
            }
            _ => return,
        };
        cx.verdict(FlowKey::of(event), VerdictCode::FragmentLoss, event, || {
            (
                Facts::PathMtu {
                    source: event.source(),
                    destination: event.destination(),
                    namespace: Namespace::of(event),
                    mtu: announced,
                },
                vec![event.clone()],
            )
        });
    }
}

#[cfg(test)]
mod tests {
    use crate::{
        firewall::FirewallRule,
        flows::{
            diagnosis::Diagnosis,
            rule::RuleLister,
            testing::{drop, event, no_sockets},
            verdict::{Facts, FragmentCause, Namespace, VerdictCode},
        },
        model::{Errno, IpFragment, Location, SocketErrno, TraceEvent, What},
    };

    const ANSWER: &str = "192.0.2.2:5051";
    const CLIENT: &str = "198.51.100.2:40000";

    /// Fragment `offset` of the 4008-byte answer, as the kernel side reports it.
    fn fragment(what: What, offset: u16, ts_ns: u64) -> TraceEvent {
        let mut event = event(what, ANSWER, CLIENT, ts_ns);
        event.fragment = Some(IpFragment {
            id: 0xbeef,
            offset,
            ip_len: 1_500,
            datagram_len: Some(4_008),
            more: true,
        });
        event
    }

    fn frag_off_rule() -> FirewallRule {
        FirewallRule {
            table: "inet lab".into(),
            chain: "forward".into(),
            hook: Some("forward".into()),
            text: "ip frag-off & 8191 != 0 drop # handle 2".into(),
        }
    }

    /// Answers with the frag-off rule for fragments only (as `session`'s lister does).
    fn rules() -> RuleLister {
        Box::new(|event| Some(event.fragment.iter().map(|_| frag_off_rule()).collect()))
    }

    #[test]
    fn a_dropped_later_fragment_names_the_rule_and_the_first_fragments_size() {
        let mut diagnosis = Diagnosis::new(no_sockets()).with_rules(rules());
        diagnosis.observe(&fragment(What::Xmit, 0, 1));
        let dropped = fragment(drop("NETFILTER_DROP"), 1_480, 2);
        diagnosis.observe(&dropped);
        let expired = fragment(drop("FRAG_REASM_TIMEOUT"), 0, 3);
        diagnosis.observe(&expired);
        let verdicts = diagnosis.verdicts();
        assert_eq!(verdicts.len(), 1, "{verdicts:#?}");
        let verdict = &verdicts[0];
        assert_eq!(verdict.code, VerdictCode::FragmentLoss);
        assert_eq!(verdict.count, 2);
        assert_eq!(
            verdict.facts,
            Facts::FragmentLoss {
                source: ANSWER.parse().unwrap(),
                destination: CLIENT.parse().unwrap(),
                namespace: Namespace {
                    netns: 7,
                    netns_name: Some("host".into()),
                    container: None,
                },
                location: Location::Symbol("__udp4_lib_rcv+0x2cd".into()),
                cause: FragmentCause::Firewall,
                datagram_len: Some(4_008),
                fragment_size: Some(1_500),
                rules: vec![frag_off_rule()],
            }
        );
        assert_eq!(verdict.evidence, [dropped, expired]);
    }

    #[test]
    fn a_reassembly_timeout_alone_is_fragment_loss() {
        let mut diagnosis = Diagnosis::new(no_sockets()).with_rules(rules());
        diagnosis.observe(&fragment(drop("FRAG_REASM_TIMEOUT"), 0, 1));
        let Facts::FragmentLoss { cause, rules, .. } = &diagnosis.verdicts()[0].facts else {
            panic!("{:#?}", diagnosis.verdicts());
        };
        assert_eq!(*cause, FragmentCause::ReassemblyTimeout);
        assert!(rules.is_empty(), "no firewall rule is asked about");
    }

    fn fragmentation_needed(mtu: u32, ts_ns: u64) -> TraceEvent {
        event(
            What::Icmp {
                icmp_type: 3,
                icmp_code: 4,
                meaning: "fragmentation-needed".into(),
                mtu: Some(mtu),
            },
            ANSWER,
            CLIENT,
            ts_ns,
        )
    }

    fn emsgsize(ts_ns: u64) -> TraceEvent {
        event(
            What::SendError {
                error: SocketErrno(Errno(90)),
                call: None,
            },
            ANSWER,
            "0.0.0.0:0",
            ts_ns,
        )
    }

    #[test]
    fn a_too_big_error_names_its_mtu_and_the_refused_sends_count_on_it() {
        let mut diagnosis = Diagnosis::new(no_sockets());
        let icmp = fragmentation_needed(1_280, 1);
        diagnosis.observe(&icmp);
        let refused = emsgsize(2);
        diagnosis.observe(&refused);
        let verdicts = diagnosis.verdicts();
        assert_eq!(verdicts.len(), 1, "{verdicts:#?}");
        assert_eq!(verdicts[0].code, VerdictCode::FragmentLoss);
        assert_eq!(verdicts[0].count, 2);
        assert_eq!(
            verdicts[0].facts,
            Facts::PathMtu {
                source: ANSWER.parse().unwrap(),
                destination: CLIENT.parse().unwrap(),
                namespace: Namespace {
                    netns: 7,
                    netns_name: Some("host".into()),
                    container: None,
                },
                mtu: Some(1_280),
            }
        );
        assert_eq!(verdicts[0].evidence, [icmp, refused]);
    }

    #[test]
    fn emsgsize_alone_is_a_path_mtu_failure_without_an_mtu() {
        let mut diagnosis = Diagnosis::new(no_sockets());
        diagnosis.observe(&emsgsize(1));
        let Facts::PathMtu { mtu, .. } = diagnosis.verdicts()[0].facts else {
            panic!("{:#?}", diagnosis.verdicts());
        };
        assert_eq!(mtu, None);
    }

    #[test]
    fn other_icmp_errors_are_not_path_mtu_failures() {
        let mut diagnosis = Diagnosis::new(no_sockets());
        // Port unreachable (3/3), and ICMPv4 code 4 of another type.
        for (icmp_type, icmp_code) in [(3, 3), (11, 4)] {
            diagnosis.observe(&event(
                What::Icmp {
                    icmp_type,
                    icmp_code,
                    meaning: String::new(),
                    mtu: None,
                },
                ANSWER,
                CLIENT,
                1,
            ));
        }
        assert!(
            diagnosis
                .verdicts()
                .iter()
                .all(|v| v.code != VerdictCode::FragmentLoss),
            "{:#?}",
            diagnosis.verdicts()
        );
    }

    #[test]
    fn a_fragment_dropped_by_netfilter_is_not_a_firewall_drop_of_its_port() {
        let mut diagnosis = Diagnosis::new(no_sockets()).with_rules(rules());
        diagnosis.observe(&fragment(drop("NETFILTER_DROP"), 0, 1));
        diagnosis.observe(&event(drop("NETFILTER_DROP"), CLIENT, ANSWER, 2));
        let mut codes: Vec<VerdictCode> = diagnosis.verdicts().iter().map(|v| v.code).collect();
        codes.sort();
        // The whole datagram's drop stays firewall_drop's.
        assert_eq!(
            codes,
            [VerdictCode::FirewallDrop, VerdictCode::FragmentLoss]
        );
    }
}
