//! neighbor_unreachable: ARP (IPv4) or NDP (IPv6) resolution of the next hop failed, so the
//! datagrams waiting for it were freed: NEIGH_QUEUEFULL while they wait (`__neigh_event_send`,
//! net/core/neighbour.c, past `unres_qlen_bytes`), NEIGH_FAILED when resolution gives up
//! (`neigh_invalidate`). These drops happen in no socket's context; the drop hook names their
//! flow from the skb's own headers. `neigh_invalidate` first has the error report send ICMP
//! host unreachable (ICMPv6 address unreachable) to the sender, which a socket with
//! IP_RECVERR/IPV6_RECVERR gets as EHOSTUNREACH: the ICMP error, seen just before the drop,
//! joins the evidence, and the socket errors after it join through the flow.

use crate::{
    flows::{
        rule::{Context, KnownReason, Rule},
        table::FlowKey,
        verdict::{Facts, Namespace, VerdictCode},
    },
    model::{TraceEvent, What},
};

pub struct NeighborUnreachable;

impl Rule for NeighborUnreachable {
    fn drops(&self) -> &'static [KnownReason] {
        &[KnownReason::NeighFailed, KnownReason::NeighQueuefull]
    }

    fn on_drop(&mut self, event: &TraceEvent, _reason: KnownReason, cx: &mut Context<'_>) {
        let key = FlowKey::of(event);
        // The error report's ICMP error about this flow, sent just before the first drop.
        let icmp = cx
            .recent(|e| matches!(e.what, What::Icmp { .. }) && FlowKey::of(e) == key)
            .cloned();
        cx.verdict(key, VerdictCode::NeighborUnreachable, event, || {
            let mut evidence: Vec<TraceEvent> = icmp.into_iter().collect();
            evidence.push(event.clone());
            (
                Facts::NeighborUnreachable {
                    source: event.source(),
                    destination: event.destination(),
                    namespace: Namespace::of(event),
                    device: event.ifname.clone(),
                },
                evidence,
            )
        });
    }
}

#[cfg(test)]
mod tests {
    use crate::{
        flows::{
            diagnosis::Diagnosis,
            testing::{drop, event, no_sockets},
            verdict::{Facts, VerdictCode},
        },
        model::{DropReason, Location, What},
    };

    fn host_unreachable(src: &str, dst: &str, ts_ns: u64) -> crate::model::TraceEvent {
        event(
            What::Icmp {
                icmp_type: 3,
                icmp_code: 1,
                meaning: "host-unreachable".into(),
                mtu: None,
            },
            src,
            dst,
            ts_ns,
        )
    }

    #[test]
    fn queue_and_resolution_drops_make_one_verdict_with_the_icmp_error() {
        let mut diagnosis = Diagnosis::new(no_sockets());
        let (client, absent) = ("192.0.2.1:40000", "192.0.2.99:5031");
        let mut queuefull = event(drop("NEIGH_QUEUEFULL"), client, absent, 1);
        queuefull.ifname = Some("eth0".into());
        diagnosis.observe(&queuefull);
        let icmp = host_unreachable(client, absent, 2);
        diagnosis.observe(&icmp);
        let mut failed = event(drop("NEIGH_FAILED"), client, absent, 3);
        failed.ifname = Some("eth0".into());
        diagnosis.observe(&failed);
        let verdicts = diagnosis.verdicts();
        assert_eq!(verdicts.len(), 1, "{verdicts:?}");
        let verdict = &verdicts[0];
        assert_eq!(verdict.code, VerdictCode::NeighborUnreachable);
        assert_eq!(verdict.count, 2);
        // The ICMP error after the verdict opened joins it through the flow.
        assert_eq!(verdict.evidence, vec![queuefull, icmp, failed]);
        assert_eq!(
            verdict.facts,
            Facts::NeighborUnreachable {
                source: client.parse().unwrap(),
                destination: absent.parse().unwrap(),
                namespace: crate::flows::verdict::Namespace {
                    netns: 7,
                    netns_name: Some("host".into()),
                    container: None,
                },
                device: Some("eth0".into()),
            }
        );
    }

    #[test]
    fn ipv6_resolution_failure_is_the_unnamed_drop_in_neigh_invalidate() {
        let (client, absent) = ("[2001:db8::1]:40000", "[2001:db8::99]:5032");
        let at = |symbol: &str| What::Drop {
            reason: DropReason::named("NOT_SPECIFIED"),
            reason_inferred: false,
            location: Location::Symbol(symbol.into()),
            txq: None,
        };
        let mut diagnosis = Diagnosis::new(no_sockets());
        // An ICMPv6 address unreachable before the drop is its first evidence.
        let icmp = event(
            What::Icmp {
                icmp_type: 1,
                icmp_code: 3,
                meaning: "address-unreachable".into(),
                mtu: None,
            },
            client,
            absent,
            1,
        );
        diagnosis.observe(&icmp);
        let failed = event(at("neigh_invalidate+0x7e"), client, absent, 2);
        diagnosis.observe(&failed);
        // Unnamed drops anywhere else are not neighbour failures.
        diagnosis.observe(&event(
            at("skb_release_data+0x10"),
            "[2001:db8::1]:40001",
            absent,
            3,
        ));
        let verdicts = diagnosis.verdicts();
        assert_eq!(verdicts.len(), 1, "{verdicts:?}");
        assert_eq!(verdicts[0].code, VerdictCode::NeighborUnreachable);
        assert_eq!(verdicts[0].evidence, vec![icmp, failed]);
    }

    #[test]
    fn an_icmp_error_of_another_flow_is_not_evidence() {
        let mut diagnosis = Diagnosis::new(no_sockets());
        diagnosis.observe(&host_unreachable("192.0.2.1:40001", "192.0.2.99:5031", 1));
        let failed = event(
            drop("NEIGH_FAILED"),
            "192.0.2.1:40000",
            "192.0.2.99:5031",
            2,
        );
        diagnosis.observe(&failed);
        assert_eq!(diagnosis.verdicts()[0].evidence, vec![failed]);
    }
}
