//! Presentation only: text for a human at 3 a.m., NDJSON for machines. Both see the same
//! domain events and statistics. The JSON schema is documented in docs/json-schema.md.

pub mod json;
pub mod text;

use serde::Serialize;

use crate::{
    decode::TraceEvent,
    flows::{table::FlowTable, verdicts::Verdict},
    probes::attach::HookOutcome,
};

/// Totals at exit (and the numbers behind the status line).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// UDP occurrences the kernel programs examined.
    pub seen: u64,
    /// Rejected in the kernel by the filter or selectors.
    pub filtered_in_kernel: u64,
    /// Written to the ring buffer.
    pub submitted: u64,
    /// Not written: the ring buffer was full.
    pub lost: u64,
    /// Of `lost`, drop events.
    pub drops_lost: u64,
    /// Events not written: their flow had had its share of that kind in that second
    /// (`SAMPLE_EVENTS_PER_SECOND`); the flows' drop and datagram counts include them.
    pub sampled: u64,
    /// Of `sampled`, drop events: delivered drops + `drops_lost` + this = every drop the kernel
    /// made.
    pub drops_sampled: u64,
    /// Per-datagram events the kernel could count neither per flow nor in its other-flows
    /// bucket (both maps full; sized to stay 0).
    pub uncounted: u64,
    /// Flows evicted from the flow table (`--max-flows`) into the `other_flows` aggregate.
    pub flows_evicted: u64,
    /// Events the kernel counted without their flow, its per-flow map being full; in
    /// `other_flows` too.
    pub kernel_overflow_events: u64,
    /// Occurrences in new flows that opened no verdict: the rule had opened
    /// `MAX_VERDICTS_PER_RULE` already.
    pub verdicts_not_opened: u64,
    /// Abandoned in the kernel because a read of kernel memory failed.
    pub kernel_read_errors: u64,
    /// Records userspace could not decode.
    pub decode_errors: u64,
    /// Events shown.
    pub events: u64,
}

/// Where output goes; one implementation per format.
pub trait Output {
    fn ready(&mut self, filter: &str, probes: &[HookOutcome]);
    /// Events are buffered: written out after each batch drained from the ring, not one
    /// system call per event.
    fn event(&mut self, event: &TraceEvent);
    fn flush(&mut self);
    /// Events lost in the last interval (`lost` > 0), and in total.
    fn lost(&mut self, lost: u64, total: u64);
    /// A verdict whose evidence is complete.
    fn verdict(&mut self, verdict: &Verdict);
    /// At exit: every flow and every verdict with final counts, then the totals.
    fn summary(&mut self, flows: &FlowTable, verdicts: &[Verdict], stats: &Stats);
}
