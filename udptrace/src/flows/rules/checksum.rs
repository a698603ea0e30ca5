//! checksum_error: the datagram arrived with a bad UDP checksum.

use crate::{
    flows::{
        rule::{Context, KnownReason, Rule},
        table::FlowKey,
        verdict::{Facts, VerdictCode},
    },
    model::TraceEvent,
};

pub struct ChecksumError;

impl Rule for ChecksumError {
    fn drops(&self) -> &'static [KnownReason] {
        &[KnownReason::UdpCsum]
    }

    fn on_drop(&mut self, event: &TraceEvent, _reason: KnownReason, cx: &mut Context<'_>) {
        cx.verdict(
            FlowKey::of(event),
            VerdictCode::ChecksumError,
            event,
            || {
                (
                    Facts::Checksum {
                        source: event.source(),
                        destination: event.destination(),
                    },
                    vec![event.clone()],
                )
            },
        );
    }
}
