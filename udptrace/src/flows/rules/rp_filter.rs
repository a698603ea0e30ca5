//! rp_filter_drop: reverse-path filtering drops a datagram whose route back does not leave
//! through the interface it arrived on.

use crate::{
    flows::{
        rule::{Context, KnownReason, Rule},
        table::FlowKey,
        verdict::{Facts, VerdictCode},
    },
    model::TraceEvent,
};

pub struct RpFilterDrop;

impl Rule for RpFilterDrop {
    fn drops(&self) -> &'static [KnownReason] {
        &[KnownReason::IpRpfilter]
    }

    fn on_drop(&mut self, event: &TraceEvent, _reason: KnownReason, cx: &mut Context<'_>) {
        cx.verdict(FlowKey::of(event), VerdictCode::RpFilterDrop, event, || {
            (
                Facts::RpFilter {
                    source: event.source(),
                    destination: event.destination(),
                    device: event.ifname.clone(),
                },
                vec![event.clone()],
            )
        });
    }
}
