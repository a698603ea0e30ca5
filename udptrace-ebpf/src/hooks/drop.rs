//! Drops: `skb:kfree_skb`.
//!
//! `TP_PROTO(struct sk_buff *skb, void *location, enum skb_drop_reason reason, ...)`
//! (include/trace/events/skb.h; 6.12 appended `struct sock *rx_sk`, the first three are stable).
//! The classic record moved `reason` from offset 28 (6.1) to 36 (6.12), so the classic program
//! reads offsets userspace took from the format file.
//!
//! Before Linux 5.17 the tracepoint is `TP_PROTO(struct sk_buff *skb, void *location)`: no
//! reason. The `drop_inferred_*` programs, which userspace picks by the argument count of
//! `btf_trace_kfree_skb` / the format file, infer one (`udptrace_common::drops`) from the
//! function the location lies in and from the evidence the ICMP hooks and the enqueue hook
//! below left for the same skb on this CPU. `__udp_enqueue_schedule_skb`'s return value is
//! that evidence rather than `udp:udp_fail_queue_rcv_skb`'s rc, which is the same number but
//! fires after the kfree_skb (5.10 net/ipv4/udp.c `__udp_queue_rcv_skb`: `kfree_skb(skb);
//! trace_udp_fail_queue_rcv_skb(rc, sk);`).

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext as _,
    macros::{btf_tracepoint, fexit, kprobe, kretprobe, raw_tracepoint, tracepoint},
    programs::{
        BtfTracePointContext, FExitContext, ProbeContext, RawTracePointContext, RetProbeContext,
        TracePointContext,
    },
};
use udptrace_common::{
    drops::{
        DropEvidence, DropSiteKind, DropSites, FailedCall, InferredReason, freed_with_datagram,
        infer,
    },
    event::{AF_INET6, EventKind, FLAG_FRAGMENT, Mechanism, QUEUE_UNKNOWN},
    offsets::ClassicTracepoint,
};

use crate::{
    DROP_EVIDENCE, DROP_SITES,
    emit::{Context, Report},
    hooks::{Probed, arg, classic_args, finish, save_entry, take_entry},
    kernel::{self, Access, ReadError},
};

#[btf_tracepoint(function = "kfree_skb")]
pub fn drop_tp_btf(ctx: BtfTracePointContext) -> u32 {
    finish(report_drop(
        ctx.as_ptr(),
        ctx.arg(0),
        ctx.arg(1),
        ctx.arg(2),
        Mechanism::TpBtf,
    ))
}

#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn drop_raw_tp(ctx: RawTracePointContext) -> u32 {
    finish(report_drop(
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
                report_drop(
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

/// Reports the drop of `skb`, freed at `location` with `reason`, if it is a UDP datagram and
/// not a fragment freed with its reassembled datagram (`freed_with_datagram`).
#[inline(always)]
fn report_drop(
    ctx: *mut c_void,
    skb: u64,
    location: u64,
    reason: u32,
    mechanism: Mechanism,
) -> Result<(), ReadError> {
    let Some(report) = Report::datagram(skb, mechanism)? else {
        return Ok(());
    };
    let kind = drop_sites().kind_of(location);
    if freed_with_datagram(kind, report.detail.flags & FLAG_FRAGMENT != 0) {
        return Ok(());
    }
    // A socket's reader drops what fails its checksum in its own `recvmsg`: there the task is
    // the datagram's receiver, and the skb's `dev` is UDP's `dev_scratch` (udp_set_dev_scratch).
    let (report, context) = if kind == Some(DropSiteKind::Reader) {
        (report.at_task(), Context::Process)
    } else {
        (report, Context::Softirq)
    };
    let mut report = report.with_stack(ctx);
    report.detail.location = location;
    report.detail.reason = reason;
    // The transmit queue of a drop on the way out (userspace shows it for those only): a
    // full qdisc drops in `__dev_xmit_skb` after `netdev_core_pick_tx` set it (net/core/dev.c).
    report.detail.queue_mapping = kernel::field::<u16>(
        skb,
        kernel::offset(|o| &o.skb_queue_mapping),
        Access::of_arguments(mechanism),
    )
    .map_or(QUEUE_UNKNOWN, u32::from);
    report.submit(EventKind::Drop, context);
    Ok(())
}

#[btf_tracepoint(function = "kfree_skb")]
pub fn drop_inferred_tp_btf(ctx: BtfTracePointContext) -> u32 {
    finish(on_drop_inferred(
        ctx.as_ptr(),
        ctx.arg(0),
        ctx.arg(1),
        Mechanism::TpBtf,
    ))
}

#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn drop_inferred_raw_tp(ctx: RawTracePointContext) -> u32 {
    finish(on_drop_inferred(
        ctx.as_ptr(),
        ctx.arg(0),
        ctx.arg(1),
        Mechanism::RawTracepoint,
    ))
}

#[tracepoint(category = "skb", name = "kfree_skb")]
pub fn drop_inferred_tracepoint(ctx: TracePointContext) -> u32 {
    finish(
        classic_args(ctx.as_ptr() as u64, ClassicTracepoint::KfreeSkbNoReason).and_then(
            |[skb, location, _]| {
                on_drop_inferred(ctx.as_ptr(), skb, location, Mechanism::Tracepoint)
            },
        ),
    )
}

/// A drop on a kernel without reasons: reported (and counted) with the inferred reason's
/// number, except frees at socket close or of a fragment with its reassembled datagram, which
/// are no network drop.
#[inline(always)]
fn on_drop_inferred(
    ctx: *mut c_void,
    skb: u64,
    location: u64,
    mechanism: Mechanism,
) -> Result<(), ReadError> {
    let evidence = match DROP_EVIDENCE.get_ptr_mut(0) {
        // SAFETY: this CPU's slot (as in `remember_failure`); read, then what it says about
        // this skb is forgotten: the skb ends here.
        Some(evidence) => unsafe {
            let seen = *evidence;
            (*evidence).forget(skb);
            seen
        },
        None => DropEvidence::default(),
    };
    let Some(reason) = infer(drop_sites().kind_of(location), skb, &evidence) else {
        return Ok(());
    };
    let reason = if reason == InferredReason::ShortOrChecksum
        && let Some(net) = kernel::network_header(skb, Access::of_arguments(mechanism))?
    {
        let (udp_length, ip_payload) = kernel::udp_length(&net)?;
        reason.by_udp_length(udp_length, ip_payload, net.family == AF_INET6)
    } else {
        reason
    };
    report_drop(ctx, skb, location, reason as u32, mechanism)
}

/// The `DROP_SITES` global.
#[inline(always)]
fn drop_sites() -> &'static DropSites {
    // SAFETY: a read-only global userspace set before load.
    unsafe { &*core::ptr::addr_of!(DROP_SITES) }
}

/// `int __udp_enqueue_schedule_skb(struct sock *sk, struct sk_buff *skb)` (net/ipv4/udp.c):
/// the fexit context holds the arguments, then the return value at index 2 (the
/// `bpf_get_func_ret` helper needs 5.17).
#[fexit(function = "__udp_enqueue_schedule_skb")]
pub fn enqueue_fexit(ctx: FExitContext) -> u32 {
    remember_failure(ctx.arg(1), ctx.arg::<i32>(2), |evidence| {
        &mut evidence.enqueue
    });
    0
}

#[kprobe]
pub fn enqueue_kprobe(ctx: ProbeContext) -> u32 {
    save_entry(Probed::Enqueue, [arg(&ctx, 1), 0, 0, 0])
}

#[kretprobe]
pub fn enqueue_kretprobe(ctx: RetProbeContext) -> u32 {
    if let Some([skb, ..]) = take_entry(Probed::Enqueue) {
        remember_failure(skb, ctx.ret::<i32>(), |evidence| &mut evidence.enqueue);
    }
    0
}

/// Remembers a failed call (`rc` < 0) on `skb` in this CPU's evidence, in the slot `call`
/// picks, for the kfree_skb that follows it on this CPU.
#[inline(always)]
fn remember_failure(skb: u64, rc: i32, call: impl FnOnce(&mut DropEvidence) -> &mut FailedCall) {
    if rc < 0
        && let Some(evidence) = DROP_EVIDENCE.get_ptr_mut(0)
    {
        // SAFETY: this CPU's slot; softirq work on one CPU does not interleave with itself.
        *call(unsafe { &mut *evidence }) = FailedCall {
            skb,
            rc: i64::from(rc),
        };
    }
}

/// `int ip_route_input_noref(struct sk_buff *skb, __be32 daddr, __be32 saddr, u8 tos, struct
/// net_device *dev)` (net/ipv4/route.c, 5.10): the return value follows the five arguments.
/// `ip_rcv_finish_core` frees the skb when it fails.
#[fexit(function = "ip_route_input_noref")]
pub fn route_input_fexit(ctx: FExitContext) -> u32 {
    remember_failure(ctx.arg(0), ctx.arg::<i32>(5), |evidence| {
        &mut evidence.route_input
    });
    0
}

#[kprobe]
pub fn route_input_kprobe(ctx: ProbeContext) -> u32 {
    save_entry(Probed::RouteInput, [arg(&ctx, 0), 0, 0, 0])
}

#[kretprobe]
pub fn route_input_kretprobe(ctx: RetProbeContext) -> u32 {
    if let Some([skb, ..]) = take_entry(Probed::RouteInput) {
        remember_failure(skb, ctx.ret::<i32>(), |evidence| &mut evidence.route_input);
    }
    0
}

/// Remembers that a port unreachable is being sent about `skb` (called by the ICMP hooks for
/// every error, before any filter): in `__udp4_lib_rcv`/`__udp6_lib_rcv` the kfree_skb follows.
#[inline(always)]
pub fn port_unreachable(skb: u64) {
    if let Some(evidence) = DROP_EVIDENCE.get_ptr_mut(0) {
        // SAFETY: as in `remember_failure`.
        unsafe { (*evidence).port_unreachable_skb = skb };
    }
}
