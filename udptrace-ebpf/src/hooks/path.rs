//! The packet path: every device a datagram leaves or enters, the route lookups made for it,
//! the socket it is queued to, and the end of tracking when it is consumed.
//!
//! - `net:net_dev_queue`, `TP_PROTO(struct sk_buff *skb)` (include/trace/events/net.h): handed
//!   to a device (veth, bridge, loopback) for transmission. Also where ICMPv6 errors are seen.
//! - `net:netif_receive_skb`, `TP_PROTO(struct sk_buff *skb)`: entered a device's receive path,
//!   in whichever namespace the device lives.
//! - `sock:sk_data_ready`, `TP_PROTO(const struct sock *sk)` (Linux 6.7+; before, a function
//!   probe on `sock_def_readable(struct sock *sk)`, UDP's `sk_data_ready`, which the
//!   tracepoint sits in, net/core/sock.c): data was queued to
//!   a socket. It names no skb: the tracked skb this CPU is receiving (`CURRENT_RX`, set at
//!   `netif_receive_skb`, which runs the whole receive path synchronously on the CPU) is the
//!   one delivered, checked against the socket's port.
//! - `skb:consume_skb`, `TP_PROTO(struct sk_buff *skb, void *location)`: freed normally; ends
//!   tracking.
//! - `fib:fib_table_lookup` / `fib6:fib6_table_lookup` (include/trace/events/fib.h, fib6.h):
//!   route lookups, read from the classic record which already names the output device.

use aya_ebpf::{
    EbpfContext as _,
    macros::{btf_tracepoint, fentry, kprobe, raw_tracepoint, tracepoint},
    programs::{
        BtfTracePointContext, FEntryContext, ProbeContext, RawTracePointContext, TracePointContext,
    },
};
use udptrace_common::{
    event::{
        AF_INET, AF_INET6, EventKind, FLAG_ROUTE_INPUT, Fragment, IPPROTO_ICMP, IPPROTO_ICMPV6,
        IPPROTO_UDP, Mechanism, Tuple,
    },
    offsets::{ClassicTracepoint, OFFSET_MISSING, RouteRecordFields},
};

use crate::{
    CURRENT_RX, OFFSETS, TRACKED,
    emit::{Context, Place, Report, following_anything},
    hooks::{Probed, arg, classic_args, finish, icmp, save_entry, take_entry},
    kernel::{self, Access, ReadError, read},
    mem,
};

#[btf_tracepoint(function = "net_dev_queue")]
pub fn dev_queue_tp_btf(ctx: BtfTracePointContext) -> u32 {
    finish(on_dev_queue(ctx.arg(0), Mechanism::TpBtf))
}

#[raw_tracepoint(tracepoint = "net_dev_queue")]
pub fn dev_queue_raw_tp(ctx: RawTracePointContext) -> u32 {
    finish(on_dev_queue(ctx.arg(0), Mechanism::RawTracepoint))
}

#[tracepoint(category = "net", name = "net_dev_queue")]
pub fn dev_queue_tracepoint(ctx: TracePointContext) -> u32 {
    finish(
        classic_args(ctx.as_ptr() as u64, ClassicTracepoint::NetDevQueue)
            .and_then(|[skb, _, _]| on_dev_queue(skb, Mechanism::Tracepoint)),
    )
}

#[inline(always)]
fn on_dev_queue(skb: u64, mechanism: Mechanism) -> Result<(), ReadError> {
    // Every transmitted packet passes here: non-IP leaves after the skb's own fields.
    let Some(net) = kernel::network_header(skb, Access::of_arguments(mechanism))? else {
        return Ok(());
    };
    match Report::packet(skb, &net, mechanism)? {
        // Locally generated datagrams reach the device in the sender's system call.
        (_, Some(report)) => {
            report.submit(EventKind::Xmit, Context::Process);
        }
        (IPPROTO_ICMPV6, None) if net.family == AF_INET6 => {
            icmp::icmp6_error(skb, &net, mechanism)?;
        }
        (IPPROTO_ICMP, None) if net.family == AF_INET => {
            icmp::frag_needed(skb, &net, mechanism)?;
        }
        _ => {}
    }
    Ok(())
}

#[btf_tracepoint(function = "netif_receive_skb")]
pub fn receive_tp_btf(ctx: BtfTracePointContext) -> u32 {
    finish(on_receive(ctx.arg(0), Mechanism::TpBtf))
}

#[raw_tracepoint(tracepoint = "netif_receive_skb")]
pub fn receive_raw_tp(ctx: RawTracePointContext) -> u32 {
    finish(on_receive(ctx.arg(0), Mechanism::RawTracepoint))
}

#[tracepoint(category = "net", name = "netif_receive_skb")]
pub fn receive_tracepoint(ctx: TracePointContext) -> u32 {
    finish(
        classic_args(ctx.as_ptr() as u64, ClassicTracepoint::NetifReceiveSkb)
            .and_then(|[skb, _, _]| on_receive(skb, Mechanism::Tracepoint)),
    )
}

#[inline(always)]
fn on_receive(skb: u64, mechanism: Mechanism) -> Result<(), ReadError> {
    let Some(net) = kernel::network_header(skb, Access::of_arguments(mechanism))? else {
        return Ok(());
    };
    let (_, Some(report)) = Report::packet(skb, &net, mechanism)? else {
        return Ok(());
    };
    if report.submit(EventKind::Recv, Context::Softirq)
        && let Some(slot) = CURRENT_RX.get_ptr_mut(0)
    {
        // Remember it for sk_data_ready: it is being followed now.
        // SAFETY: this CPU's slot.
        unsafe { *slot = skb };
    }
    Ok(())
}

#[btf_tracepoint(function = "sk_data_ready")]
pub fn data_ready_tp_btf(ctx: BtfTracePointContext) -> u32 {
    finish(on_data_ready(ctx.arg(0), Mechanism::TpBtf))
}

#[raw_tracepoint(tracepoint = "sk_data_ready")]
pub fn data_ready_raw_tp(ctx: RawTracePointContext) -> u32 {
    finish(on_data_ready(ctx.arg(0), Mechanism::RawTracepoint))
}

#[fentry(function = "sock_def_readable")]
pub fn data_ready_fentry(ctx: FEntryContext) -> u32 {
    finish(on_data_ready(ctx.arg(0), Mechanism::Fentry))
}

#[kprobe]
pub fn data_ready_kprobe(ctx: ProbeContext) -> u32 {
    finish(on_data_ready(arg(&ctx, 0), Mechanism::Kprobe))
}

#[tracepoint(category = "sock", name = "sk_data_ready")]
pub fn data_ready_tracepoint(ctx: TracePointContext) -> u32 {
    finish(
        classic_args(ctx.as_ptr() as u64, ClassicTracepoint::SkDataReady)
            .and_then(|[sk, _, _]| on_data_ready(sk, Mechanism::Tracepoint)),
    )
}

#[inline(always)]
fn on_data_ready(sk: u64, mechanism: Mechanism) -> Result<(), ReadError> {
    let Some(slot) = CURRENT_RX.get_ptr_mut(0) else {
        return Ok(());
    };
    // SAFETY: this CPU's slot.
    let skb = unsafe { *slot };
    if skb == 0 {
        return Ok(());
    }
    // The socket's tuple, then the datagram's into the detail: Place::Sock, not Skb, because
    // UDP reuses `skb->dev` as `dev_scratch` once the datagram is queued
    // (udp_set_dev_scratch, net/ipv4/udp.c), so the socket says where this happens.
    let Some(mut report) = Report::socket(sk, mechanism)? else {
        return Ok(());
    };
    let event = &mut *report;
    event.detail.sock = event.tuple;
    // A queued datagram is whole (reassembled before UDP sees it): no fragment to describe.
    if !kernel::udp_datagram(
        skb,
        Access::Probe,
        &mut event.tuple,
        &mut event.detail.fragment,
    )? || event.tuple.dport != event.detail.sock.sport
    {
        // Not the datagram this CPU last received for a tracked flow: stay silent rather than
        // attribute a delivery to the wrong datagram.
        return Ok(());
    }
    // SAFETY: this CPU's slot.
    unsafe { *slot = 0 };
    report
        .about_skb(skb)
        .naming(sk)
        .submit(EventKind::Deliver, Context::Softirq);
    Ok(())
}

#[btf_tracepoint(function = "consume_skb")]
pub fn consume_tp_btf(ctx: BtfTracePointContext) -> u32 {
    on_consume(ctx.arg(0));
    0
}

#[raw_tracepoint(tracepoint = "consume_skb")]
pub fn consume_raw_tp(ctx: RawTracePointContext) -> u32 {
    on_consume(ctx.arg(0));
    0
}

#[tracepoint(category = "skb", name = "consume_skb")]
pub fn consume_tracepoint(ctx: TracePointContext) -> u32 {
    finish(
        classic_args(ctx.as_ptr() as u64, ClassicTracepoint::ConsumeSkb).map(|[skb, _, _]| {
            on_consume(skb);
        }),
    )
}

/// A consumed skb's address may be reused by an unrelated packet: forget it. Every freed skb
/// of the host passes here; a lookup (lock-free) is cheaper than a delete (bucket lock) for
/// the vast majority that were never followed, and no lookup at all while nothing is.
#[inline(always)]
fn on_consume(skb: u64) {
    // SAFETY: only tested for presence.
    if following_anything() && unsafe { TRACKED.get(&skb) }.is_some() {
        let _ = TRACKED.remove(&skb);
    }
}

#[tracepoint(category = "fib", name = "fib_table_lookup")]
pub fn route4_tracepoint(ctx: TracePointContext) -> u32 {
    // Fields of OFFSETS.fib4 are read volatile in `field`.
    finish(on_route(ctx.as_ptr() as u64, &OFFSETS.fib4, AF_INET))
}

#[tracepoint(category = "fib6", name = "fib6_table_lookup")]
pub fn route6_tracepoint(ctx: TracePointContext) -> u32 {
    finish(on_route(ctx.as_ptr() as u64, &OFFSETS.fib6, AF_INET6))
}

#[inline(always)]
fn field(fields: &RouteRecordFields, pick: impl Fn(&RouteRecordFields) -> &u32) -> u32 {
    // SAFETY: reference into the OFFSETS static; volatile defeats constant folding.
    unsafe { core::ptr::read_volatile(pick(fields)) }
}

#[inline(always)]
fn on_route(record: u64, fields: &RouteRecordFields, family: u8) -> Result<(), ReadError> {
    if field(fields, |f| &f.name) == OFFSET_MISSING {
        return Ok(());
    }
    let proto: u8 = read(record, field(fields, |f| &f.proto))?;
    if proto != IPPROTO_UDP {
        return Ok(());
    }
    // LOOPBACK_IFINDEX (1) is the input device of locally generated lookups
    // (flowi4_init_output); anything else is a lookup for a received packet.
    let iif: u32 = read(record, field(fields, |f| &f.iif))?;
    let input = iif > 1;
    // An input lookup runs in softirq and its record names no namespace; so does an output
    // lookup made in an interrupt (an ICMP error's, `icmp_route_lookup`, net/ipv4/icmp.c),
    // whose current task is only the one interrupted: its namespace is found below if it
    // answers the datagram being received.
    let interrupted = !input && kernel::in_interrupt();
    let (context, place) = if input || interrupted {
        (Context::Softirq, Place::Unknown)
    } else {
        (Context::Process, Place::Task)
    };
    let Some(mut report) = Report::blank(Mechanism::Tracepoint, place) else {
        return Ok(());
    };
    let event = &mut *report;
    event.tuple.family = family;
    event.tuple.proto = proto;
    if family == AF_INET {
        mem::set_ipv4(
            &mut event.tuple.saddr,
            read(record, field(fields, |f| &f.src))?,
        );
        mem::set_ipv4(
            &mut event.tuple.daddr,
            read(record, field(fields, |f| &f.dst))?,
        );
    } else {
        event.tuple.saddr = read(record, field(fields, |f| &f.src))?;
        event.tuple.daddr = read(record, field(fields, |f| &f.dst))?;
    }
    event.tuple.sport = read(record, field(fields, |f| &f.sport))?;
    event.tuple.dport = read(record, field(fields, |f| &f.dport))?;
    event.detail.route_table = read(record, field(fields, |f| &f.tb_id))?;
    event.detail.route_err = read(record, field(fields, |f| &f.err))?;
    event.detail.route_oif = read(record, field(fields, |f| &f.oif))?;
    event.detail.route_iif = iif;
    // The record's `oif` is the one requested (0 for "any"); the device chosen is `name`,
    // inline or, as `__data_loc char[]`, where its locator's low 16 bits say.
    let mut name = field(fields, |f| &f.name);
    if field(fields, |f| &f.name_dynamic) != 0 {
        let locator: u32 = read(record, name)?;
        name = locator & 0xffff;
    }
    event.detail.route_dev = read(record, name)?;
    if input {
        event.detail.flags = FLAG_ROUTE_INPUT;
    } else if interrupted {
        if let Some(net) = answered_net(&event.tuple) {
            report.at(Place::Net(net));
        }
    } else if event.detail.route_err != 0 {
        // A failed output lookup in a task's system call (not in an interrupt) fails the
        // send that made it (ENETUNREACH for no route,
        // EHOSTUNREACH/EINVAL/EACCES for an unreachable/blackhole/prohibit route: fib_props[],
        // net/ipv4/fib_semantics.c), and the send tracepoint sees only the socket's addresses:
        // its destination is kept for the send hook of this task (`sock::on_result`).
        let tuple = &event.tuple;
        let ports = u64::from(tuple.family)
            | (u64::from(tuple.sport) << 16)
            | (u64::from(tuple.dport) << 32);
        // SAFETY: 16 bytes as two u64s; every bit pattern is valid.
        let [low, high]: [u64; 2] = unsafe { core::mem::transmute(tuple.daddr) };
        save_entry(Probed::FailedRoute, [ports, low, high, 0]);
    } else {
        // With policy routing a later table may still answer (fib_rules_lookup): a lookup
        // that succeeds clears what an earlier table's miss left.
        let _ = take_entry(Probed::FailedRoute);
    }
    report.submit(EventKind::Route, context);
    Ok(())
}

/// The namespace of the datagram this CPU is receiving (`CURRENT_RX`: followed, not yet
/// delivered) when `lookup` is the route back to its sender: its addresses and ports
/// reversed. `icmp_route_lookup` (net/ipv4/icmp.c) looks up the route of the ICMP error
/// (protocol ICMP, not traced) and then, with no xfrm policy to change it, the received
/// datagram's own flow reversed (`xfrm_decode_session_reverse`), which is the UDP lookup
/// seen here; it runs in the receive softirq, on the received skb's device.
#[inline(always)]
fn answered_net(lookup: &Tuple) -> Option<u64> {
    // SAFETY: this CPU's slot, read once.
    let skb = unsafe { *CURRENT_RX.get_ptr_mut(0)? };
    if skb == 0 {
        return None;
    }
    // Rare (lookups in interrupts only): the memset a default may cost does not matter.
    let mut received = Tuple::default();
    // The ICMP error quotes the whole datagram (reassembled before UDP saw it).
    let mut fragment = Fragment::default();
    let udp = kernel::udp_datagram(skb, Access::Probe, &mut received, &mut fragment).ok()?;
    let answers = udp
        && received.family == lookup.family
        && received.sport == lookup.dport
        && received.dport == lookup.sport
        && same_address(&received.saddr, &lookup.daddr)
        && same_address(&received.daddr, &lookup.saddr);
    answers.then(|| kernel::skb_dev_net(skb)).flatten()
}

/// Two tuple addresses compared as words (an array comparison would call `memcmp`).
#[inline(always)]
fn same_address(a: &[u8; 16], b: &[u8; 16]) -> bool {
    // SAFETY: 16 bytes as two u64s; every bit pattern is valid.
    let (a, b): ([u64; 2], [u64; 2]) =
        unsafe { (core::mem::transmute(*a), core::mem::transmute(*b)) };
    a[0] == b[0] && a[1] == b[1]
}
