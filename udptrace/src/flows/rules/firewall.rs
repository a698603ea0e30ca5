//! firewall_drop: a netfilter rule drops the datagram; the verdict names the nftables rules
//! that drop its destination port (`firewall.rs` reads them).

use crate::{
    flows::{
        rule::{Context, KnownReason, Rule},
        table::FlowKey,
        verdict::{Facts, Namespace, VerdictCode},
    },
    model::{TraceEvent, What},
};

pub struct FirewallDrop;

impl Rule for FirewallDrop {
    fn drops(&self) -> &'static [KnownReason] {
        &[KnownReason::NetfilterDrop]
    }

    fn on_drop(&mut self, event: &TraceEvent, _reason: KnownReason, cx: &mut Context<'_>) {
        if event.fragment.is_some() || cx.ledger.counted() {
            // A fragment: fragment_loss's, with the rule about fragments that dropped it; a
            // drop conntrack made: conntrack_drop's (registered before this rule).
            return;
        }
        let key = FlowKey::of(event);
        // Listing rules costs a namespace switch: not for verdicts past the allowance.
        if cx.ledger.bump(key, VerdictCode::FirewallDrop, event) || !cx.room() {
            return;
        }
        let What::Drop { location, .. } = &event.what else {
            return;
        };
        let rules = (cx.env.rules)(event).unwrap_or_default();
        cx.verdict(key, VerdictCode::FirewallDrop, event, || {
            (
                Facts::Firewall {
                    source: event.source(),
                    destination: event.destination(),
                    namespace: Namespace::of(event),
                    location: location.clone(),
                    rules,
                },
                vec![event.clone()],
            )
        });
    }
}
