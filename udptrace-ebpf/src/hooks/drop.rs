//! Drops: `skb:kfree_skb`.
//!
//! `TP_PROTO(struct sk_buff *skb, void *location, enum skb_drop_reason reason, ...)`
//! (include/trace/events/skb.h; 6.12 appended `struct sock *rx_sk`, the first three are stable).
//! The classic record moved `reason` from offset 28 (6.1) to 36 (6.12), so the classic program
//! reads offsets userspace took from the format file.

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext as _,
    macros::{btf_tracepoint, raw_tracepoint, tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext, TracePointContext},
};
use udptrace_common::{
    event::{EventKind, Mechanism},
    offsets::ClassicTracepoint,
};

use crate::{
    emit::{Context, Report},
    hooks::{classic_args, finish},
    kernel::ReadError,
};

#[btf_tracepoint(function = "kfree_skb")]
pub fn drop_tp_btf(ctx: BtfTracePointContext) -> u32 {
    finish(on_drop(
        ctx.as_ptr(),
        ctx.arg(0),
        ctx.arg(1),
        ctx.arg(2),
        Mechanism::TpBtf,
    ))
}

#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn drop_raw_tp(ctx: RawTracePointContext) -> u32 {
    finish(on_drop(
        ctx.as_ptr(),
        ctx.arg(0),
        ctx.arg(1),
        ctx.arg(2),
        Mechanism::RawTracepoint,
    ))
}

#[tracepoint(category = "skb", name = "kfree_skb")]
pub fn drop_tracepoint(ctx: TracePointContext) -> u32 {
    // skbaddr and location are pointers, reason an enum (4 bytes).
    finish(
        classic_args(ctx.as_ptr() as u64, ClassicTracepoint::KfreeSkb).and_then(
            |[skb, location, reason]| {
                on_drop(
                    ctx.as_ptr(),
                    skb,
                    location,
                    reason as u32,
                    Mechanism::Tracepoint,
                )
            },
        ),
    )
}

#[inline(always)]
fn on_drop(
    ctx: *mut c_void,
    skb: u64,
    location: u64,
    reason: u32,
    mechanism: Mechanism,
) -> Result<(), ReadError> {
    let Some(report) = Report::datagram(skb, mechanism)? else {
        return Ok(());
    };
    let mut report = report.with_stack(ctx);
    report.detail.location = location;
    report.detail.reason = reason;
    report.submit(EventKind::Drop, Context::Softirq);
    Ok(())
}
