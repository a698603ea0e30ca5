//! ICMP errors about UDP datagrams.
//!
//! IPv4: `icmp:icmp_send`, `TP_PROTO(const struct sk_buff *skb, int type, int code)`
//! (include/trace/events/icmp.h): `skb` is the offending datagram, so its headers give the
//! quoted tuple directly.
//! Kernels without that tracepoint: a function probe on `void __icmp_send(struct sk_buff
//! *skb_in, int type, int code, __be32 info, ...)` (net/ipv4/icmp.c), same arguments.
//! IPv6 has no such tracepoint: `void icmp6_send(struct sk_buff *skb, u8 type, u8 code, __u32
//! info, ...)` (net/ipv6/icmp.c) is probed where the kernel allows function probes; elsewhere
//! the error is caught where its packet reaches a device (`net:net_dev_queue`, in
//! `hooks::path`) by parsing the outgoing ICMPv6 error and the datagram it quotes.

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext as _,
    macros::{btf_tracepoint, fentry, kprobe, raw_tracepoint, tracepoint},
    programs::{
        BtfTracePointContext, FEntryContext, ProbeContext, RawTracePointContext, TracePointContext,
    },
};
use network_types::{icmp::Icmpv6Hdr, ip::Ipv6Hdr};
use udptrace_common::{
    event::{AF_INET6, EventKind, Mechanism},
    names::FEATURE_ICMP6_PROBE,
    offsets::ClassicTracepoint,
};

use crate::{
    FEATURES,
    emit::{Context, Report},
    hooks::{arg, classic_args, drop, finish},
    kernel::{self, ReadError},
};

#[btf_tracepoint(function = "icmp_send")]
pub fn icmp_send_tp_btf(ctx: BtfTracePointContext) -> u32 {
    finish(on_icmp_send(
        ctx.as_ptr(),
        ctx.arg(0),
        ctx.arg(1),
        ctx.arg(2),
        Mechanism::TpBtf,
    ))
}

#[raw_tracepoint(tracepoint = "icmp_send")]
pub fn icmp_send_raw_tp(ctx: RawTracePointContext) -> u32 {
    finish(on_icmp_send(
        ctx.as_ptr(),
        ctx.arg(0),
        ctx.arg(1),
        ctx.arg(2),
        Mechanism::RawTracepoint,
    ))
}

#[tracepoint(category = "icmp", name = "icmp_send")]
pub fn icmp_send_tracepoint(ctx: TracePointContext) -> u32 {
    finish(
        classic_args(ctx.as_ptr() as u64, ClassicTracepoint::IcmpSend).and_then(
            |[skb, icmp_type, code]| {
                on_icmp_send(
                    ctx.as_ptr(),
                    skb,
                    icmp_type as i32,
                    code as i32,
                    Mechanism::Tracepoint,
                )
            },
        ),
    )
}

#[fentry(function = "__icmp_send")]
pub fn icmp_send_fentry(ctx: FEntryContext) -> u32 {
    finish(on_icmp_send(
        ctx.as_ptr(),
        ctx.arg(0),
        ctx.arg(1),
        ctx.arg(2),
        Mechanism::Fentry,
    ))
}

#[kprobe]
pub fn icmp_send_kprobe(ctx: ProbeContext) -> u32 {
    finish(on_icmp_send(
        ctx.as_ptr(),
        arg(&ctx, 0),
        arg(&ctx, 1) as i32,
        arg(&ctx, 2) as i32,
        Mechanism::Kprobe,
    ))
}

#[fentry(function = "icmp6_send")]
pub fn icmp6_send_fentry(ctx: FEntryContext) -> u32 {
    finish(on_icmp_send(
        ctx.as_ptr(),
        ctx.arg(0),
        i32::from(ctx.arg::<u8>(1)),
        i32::from(ctx.arg::<u8>(2)),
        Mechanism::Fentry,
    ))
}

#[kprobe]
pub fn icmp6_send_kprobe(ctx: ProbeContext) -> u32 {
    finish(on_icmp_send(
        ctx.as_ptr(),
        arg(&ctx, 0),
        i32::from(arg(&ctx, 1) as u8),
        i32::from(arg(&ctx, 2) as u8),
        Mechanism::Kprobe,
    ))
}

/// `skb` is the offending datagram (IPv4 or IPv6) an ICMP error of `icmp_type`/`code` is
/// about to be sent for.
#[inline(always)]
fn on_icmp_send(
    ctx: *mut c_void,
    skb: u64,
    icmp_type: i32,
    code: i32,
    mechanism: Mechanism,
) -> Result<(), ReadError> {
    // Destination unreachable / port unreachable: ICMP 3/3 (RFC 792), ICMPv6 1/4 (RFC 4443).
    if matches!((icmp_type, code), (3, 3) | (1, 4)) {
        drop::port_unreachable(skb);
    }
    let Some(report) = Report::datagram(skb, mechanism)? else {
        return Ok(());
    };
    let mut report = report.with_stack(ctx);
    report.detail.icmp_type = icmp_type as u8;
    report.detail.icmp_code = code as u8;
    report.submit(EventKind::IcmpError, Context::Softirq);
    Ok(())
}

/// ICMPv6 error types (RFC 4443 §3): destination unreachable, packet too big, time exceeded,
/// parameter problem.
const ICMPV6_ERROR_MAX: u8 = 4;

/// Reports the ICMPv6 error in the outgoing IPv6 packet `skb` (network header at `net`), if it
/// is one about a UDP datagram. Called from `hooks::path` for every transmitted IPv6 packet
/// whose next header is ICMPv6.
#[inline(always)]
pub fn icmp6_error(skb: u64, net: &kernel::Network, mechanism: Mechanism) -> Result<(), ReadError> {
    if FEATURES
        .get(0)
        .is_some_and(|features| features & FEATURE_ICMP6_PROBE != 0)
    {
        // Reported at `icmp6_send` already.
        return Ok(());
    }
    // struct icmp6hdr: type, code, checksum, 4 bytes of data; the invoking packet follows.
    let icmp = net.header + Ipv6Hdr::LEN as u64;
    let Icmpv6Hdr {
        type_: icmp_type,
        code: icmp_code,
        ..
    } = kernel::read(icmp, 0)?;
    if icmp_type == 0 || icmp_type > ICMPV6_ERROR_MAX {
        return Ok(());
    }
    let quoted = kernel::Network {
        family: AF_INET6,
        header: icmp + Icmpv6Hdr::LEN as u64,
    };
    let (_, Some(mut report)) = Report::packet(skb, &quoted, mechanism)? else {
        return Ok(());
    };
    report.detail.icmp_type = icmp_type;
    report.detail.icmp_code = icmp_code;
    report.submit(EventKind::IcmpError, Context::Softirq);
    Ok(())
}
