//! fragment_loss: a fragmented UDP datagram never arrives whole. Either some of its fragments
//! are dropped on the way (a firewall rule about fragments, such as nftables' `ip frag-off`,
//! which a port rule cannot be: later fragments carry no UDP header), or the receiver's
//! reassembly gives up waiting for them (`FRAG_REASM_TIMEOUT`, freed in `ip_expire`,
//! net/ipv4/ip_fragment.c, or `ip6_expire_frag_queue`, include/net/ipv6_frag.h, which also send
//! ICMP time exceeded, fragment reassembly, back). The kernel side gives every fragment its
//! datagram's ports (learned from the first fragment), so both kinds of loss belong to the flow.

use crate::{
    flows::{
        rule::{Context, KnownReason, Rule},
        table::FlowKey,
        verdict::{Facts, FragmentCause, Namespace, VerdictCode},
    },
    model::{TraceEvent, What},
};

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
}
