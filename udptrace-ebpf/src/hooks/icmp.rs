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
//!
//! Path MTU errors carry the MTU they announce in the ICMP header (`detail.bytes`): ICMPv6
//! packet too big in its 4 data bytes (RFC 4443 §3.2, read from the packet or `icmp6_send`'s
//! `info`), ICMPv4 fragmentation needed in the last 2 (RFC 1191 §4). The `icmp_send`
//! tracepoint lacks `__icmp_send`'s `info`, so fragmentation needed is reported from the packet
//! where it reaches a device (`frag_needed`), and not at `icmp_send` (there without its MTU
//! only when the device hop could not be attached).

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext as _,
    macros::{btf_tracepoint, fentry, kprobe, raw_tracepoint, tracepoint},
    programs::{
        BtfTracePointContext, FEntryContext, ProbeContext, RawTracePointContext, TracePointContext,
    },
};
use network_types::{
    icmp::Icmpv6Hdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};
use udptrace_common::{
    event::{AF_INET, AF_INET6, EventKind, Mechanism},
    names::{FEATURE_ICMP6_PROBE, FEATURE_XMIT},
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
        0,
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
        0,
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
                    0,
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
        0,
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
        0,
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
        ctx.arg(3),
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
        arg(&ctx, 3) as u32,
        Mechanism::Kprobe,
    ))
}

/// `skb` is the offending datagram (IPv4 or IPv6) an ICMP error of `icmp_type`/`code` is
/// about to be sent for; `info` is `icmp6_send`'s (the MTU of a packet too big), 0 from hooks
/// that lack it.
#[inline(always)]
fn on_icmp_send(
    ctx: *mut c_void,
    skb: u64,
    icmp_type: i32,
    code: i32,
    info: u32,
    mechanism: Mechanism,
) -> Result<(), ReadError> {
    // Destination unreachable / port unreachable: ICMP 3/3 (RFC 792), ICMPv6 1/4 (RFC 4443).
    if matches!((icmp_type, code), (3, 3) | (1, 4)) {
        drop::port_unreachable(skb);
    }
    let Some(report) = Report::datagram(skb, mechanism)? else {
        return Ok(());
    };
    if report.tuple.family == AF_INET
        && (icmp_type as u8, code as u8) == (ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED)
        && FEATURES
            .get(0)
            .is_some_and(|features| features & FEATURE_XMIT != 0)
    {
        // Reported with its MTU where it leaves (`frag_needed`).
        return Ok(());
    }
    let mut report = report.with_stack(ctx);
    report.detail.icmp_type = icmp_type as u8;
    report.detail.icmp_code = code as u8;
    if icmp_type as u8 == ICMPV6_PKT_TOOBIG && report.tuple.family == AF_INET6 {
        report.detail.bytes = info;
    }
    report.submit(EventKind::IcmpError, Context::Softirq);
    Ok(())
}

/// ICMPv4 destination unreachable / fragmentation needed (include/uapi/linux/icmp.h).
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;
/// ICMPv6 packet too big (include/uapi/linux/icmpv6.h `ICMPV6_PKT_TOOBIG`).
const ICMPV6_PKT_TOOBIG: u8 = 2;

/// An ICMPv4 error header (`struct icmphdr` of include/uapi/linux/icmp.h): for fragmentation
/// needed, `un.frag.mtu` is the last two bytes of `rest`.
#[repr(C)]
#[derive(Clone, Copy)]
struct IcmpErrorHdr {
    icmp_type: u8,
    code: u8,
    checksum: [u8; 2],
    rest: [u8; 4],
}

/// Reports the ICMPv4 fragmentation-needed error in the outgoing IPv4 packet `skb` (network
/// header at `net`), if it is about a UDP datagram, with the next-hop MTU it announces. Called
/// from `hooks::path` for every transmitted IPv4 packet whose protocol is ICMP.
#[inline(always)]
pub fn frag_needed(skb: u64, net: &kernel::Network, mechanism: Mechanism) -> Result<(), ReadError> {
    let ip: Ipv4Hdr = kernel::read(net.header, 0)?;
    let icmp = net.header + u64::from(ip.ihl());
    let header: IcmpErrorHdr = kernel::read(icmp, 0)?;
    if (header.icmp_type, header.code) != (ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED) {
        return Ok(());
    }
    let quoted = kernel::Network {
        family: AF_INET,
        header: icmp + size_of::<IcmpErrorHdr>() as u64,
    };
    let (_, Some(mut report)) = Report::packet(skb, &quoted, mechanism)? else {
        return Ok(());
    };
    report.detail.icmp_type = header.icmp_type;
    report.detail.icmp_code = header.code;
    report.detail.bytes = u32::from(u16::from_be_bytes([header.rest[2], header.rest[3]]));
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
        data,
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
    if icmp_type == ICMPV6_PKT_TOOBIG {
        report.detail.bytes = u32::from_be_bytes(data);
    }
    report.submit(EventKind::IcmpError, Context::Softirq);
    Ok(())
}
