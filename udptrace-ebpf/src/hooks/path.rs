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
        AF_INET, AF_INET6, Event, EventKind, FLAG_ROUTE_INPUT, IPPROTO_ICMPV6, IPPROTO_UDP,
        Mechanism,
    },
    offsets::{ClassicTracepoint, OFFSET_MISSING, RouteRecordFields},
};

use crate::{
    CURRENT_RX, OFFSETS, TRACKED,
    emit::{Context, Place, following_anything, scratch, submit},
    hooks::{arg, classic_args, finish, icmp},
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
    let Some(mut lease) = scratch() else {
        return Ok(());
    };
    let event = &mut *lease;
    let protocol = kernel::ip_udp(&net, &mut event.tuple)?;
    if protocol == IPPROTO_ICMPV6 && net.family == AF_INET6 {
        return icmp::icmp6_error(skb, &net, mechanism);
    }
    if protocol != IPPROTO_UDP {
        return Ok(());
    }
    hop(event, skb, EventKind::Xmit, mechanism);
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
    let Some(mut lease) = scratch() else {
        return Ok(());
    };
    let event = &mut *lease;
    if kernel::ip_udp(&net, &mut event.tuple)? != IPPROTO_UDP {
        return Ok(());
    }
    if hop(event, skb, EventKind::Recv, mechanism)
        && let Some(slot) = CURRENT_RX.get_ptr_mut(0)
    {
        // Remember it for sk_data_ready: it is being followed now.
        // SAFETY: this CPU's slot.
        unsafe { *slot = skb };
    }
    Ok(())
}

/// Reports the UDP datagram in `event.tuple` at a device hop; whether it passed the filter.
#[inline(always)]
fn hop(event: &mut Event, skb: u64, kind: EventKind, mechanism: Mechanism) -> bool {
    mem::zero(&mut event.detail);
    let context = if kind == EventKind::Xmit {
        // Locally generated datagrams reach the device in the sender's system call.
        Context::Process
    } else {
        Context::Softirq
    };
    submit(
        event,
        kind,
        mechanism,
        context,
        skb,
        Place::Skb(skb, Access::of_arguments(mechanism)),
        0,
    )
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
    let Some(mut lease) = scratch() else {
        return Ok(());
    };
    let event = &mut *lease;
    if !kernel::udp_sock_tuple(sk, Access::of_arguments(mechanism), &mut event.detail.sock)? {
        return Ok(());
    }
    if !kernel::udp_datagram(skb, Access::Probe, &mut event.tuple)?
        || event.tuple.dport != event.detail.sock.sport
    {
        // Not the datagram this CPU last received for a tracked flow: stay silent rather than
        // attribute a delivery to the wrong datagram.
        return Ok(());
    }
    // SAFETY: this CPU's slot.
    unsafe { *slot = 0 };
    let sock = event.detail.sock;
    mem::zero(&mut event.detail);
    event.detail.sock = sock;
    // Place::Sock, not Skb: UDP reuses `skb->dev` as `dev_scratch` once the datagram is
    // queued (udp_set_dev_scratch, net/ipv4/udp.c), so the socket says where this happens.
    submit(
        event,
        EventKind::Deliver,
        mechanism,
        Context::Softirq,
        skb,
        Place::Sock(sk, Access::of_arguments(mechanism)),
        sk,
    );
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
    let Some(mut lease) = scratch() else {
        return Ok(());
    };
    let event = &mut *lease;
    mem::zero(&mut event.tuple);
    event.tuple.family = family;
    event.tuple.proto = proto;
    mem::zero(&mut event.detail);
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
    event.detail.route_iif = read(record, field(fields, |f| &f.iif))?;
    event.detail.route_dev = read(record, field(fields, |f| &f.name))?;
    // LOOPBACK_IFINDEX (1) is the input device of locally generated lookups
    // (flowi4_init_output); anything else is a lookup for a received packet.
    let input = event.detail.route_iif > 1;
    if input {
        event.detail.flags = FLAG_ROUTE_INPUT;
    }
    // The record's `oif` is the one requested (0 for "any"); the device chosen is `name`.
    let context = if input {
        Context::Softirq
    } else {
        Context::Process
    };
    let place = if input { Place::Unknown } else { Place::Task };
    submit(
        event,
        EventKind::Route,
        Mechanism::Tracepoint,
        context,
        0,
        place,
        0,
    );
    Ok(())
}
