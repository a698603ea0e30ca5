//! UDP's socket lookup for a received datagram: which socket the kernel chose, or that none
//! matched (the datagram then dies NO_SOCKET and may trigger a port unreachable).
//!
//! `struct sock *__udp4_lib_lookup(const struct net *net, __be32 saddr, __be16 sport, __be32
//! daddr, __be16 dport, int dif, int sdif, struct udp_table *udptable, struct sk_buff *skb)`
//! and `__udp6_lib_lookup` (same, with `const struct in6_addr *` addresses), called from
//! `__udp4_lib_rcv`/`__udp6_lib_rcv` (net/ipv4/udp.c, net/ipv6/udp.c) for every datagram not
//! early-demultiplexed to a connected socket. No tracepoint exists: function probes only.
//! `saddr:sport` is the sender, `daddr:dport` the local destination. Nine arguments exceed what
//! older x86 trampolines pass (6 before Linux 6.6), so fexit may be refused where kprobes work.

use aya_ebpf::{
    macros::{fexit, kprobe, kretprobe},
    programs::{FExitContext, ProbeContext, RetProbeContext},
};
use udptrace_common::event::{AF_INET, AF_INET6, EventKind, IPPROTO_UDP, Mechanism};

use crate::{
    emit::{Context, Place, Report},
    hooks::{Probed, arg, finish, save_entry, take_entry},
    kernel::{self, ReadError},
    mem,
};

#[fexit(function = "__udp4_lib_lookup")]
pub fn lookup_fexit_udp4(ctx: FExitContext) -> u32 {
    finish(on_lookup(
        [ctx.arg(0), ctx.arg(1), ctx.arg(2), ctx.arg(3), ctx.arg(4)],
        ctx.arg(9),
        AF_INET,
        Mechanism::Fentry,
    ))
}

#[fexit(function = "__udp6_lib_lookup")]
pub fn lookup_fexit_udp6(ctx: FExitContext) -> u32 {
    finish(on_lookup(
        [ctx.arg(0), ctx.arg(1), ctx.arg(2), ctx.arg(3), ctx.arg(4)],
        ctx.arg(9),
        AF_INET6,
        Mechanism::Fentry,
    ))
}

#[kprobe]
pub fn lookup_kprobe_udp4(ctx: ProbeContext) -> u32 {
    save_lookup(&ctx, Probed::LookupV4)
}

#[kretprobe]
pub fn lookup_kretprobe_udp4(ctx: RetProbeContext) -> u32 {
    finish_lookup(&ctx, Probed::LookupV4, AF_INET)
}

#[kprobe]
pub fn lookup_kprobe_udp6(ctx: ProbeContext) -> u32 {
    save_lookup(&ctx, Probed::LookupV6)
}

#[kretprobe]
pub fn lookup_kretprobe_udp6(ctx: RetProbeContext) -> u32 {
    finish_lookup(&ctx, Probed::LookupV6, AF_INET6)
}

/// Saves net, saddr, daddr and both ports (packed: sport in the low half) for the kretprobe.
#[inline(always)]
fn save_lookup(ctx: &ProbeContext, function: Probed) -> u32 {
    let ports = (arg(ctx, 2) & 0xffff) | ((arg(ctx, 4) & 0xffff) << 16);
    save_entry(function, [arg(ctx, 0), arg(ctx, 1), ports, arg(ctx, 3)])
}

#[inline(always)]
fn finish_lookup(ctx: &RetProbeContext, function: Probed, family: u8) -> u32 {
    let Some([net, saddr, ports, daddr]) = take_entry(function) else {
        return 0;
    };
    finish(on_lookup(
        [net, saddr, ports & 0xffff, daddr, ports >> 16],
        ctx.ret(),
        family,
        Mechanism::Kprobe,
    ))
}

/// Pointers this close to the top are `ERR_PTR` values, not sockets.
const MAX_ERRNO: u64 = 4095;

/// `args`: net, saddr, sport, daddr, dport as passed (IPv4 addresses by value, IPv6 by
/// pointer; ports big-endian); `found` the returned socket.
#[inline(always)]
fn on_lookup(
    args: [u64; 5],
    found: u64,
    family: u8,
    mechanism: Mechanism,
) -> Result<(), ReadError> {
    let [net, saddr, sport, daddr, dport] = args;
    let Some(mut report) = Report::blank(mechanism, Place::Net(net)) else {
        return Ok(());
    };
    let event = &mut *report;
    event.tuple.family = family;
    event.tuple.proto = IPPROTO_UDP;
    if family == AF_INET {
        mem::set_ipv4(&mut event.tuple.saddr, (saddr as u32).to_ne_bytes());
        mem::set_ipv4(&mut event.tuple.daddr, (daddr as u32).to_ne_bytes());
    } else {
        event.tuple.saddr = kernel::read(saddr, 0)?;
        event.tuple.daddr = kernel::read(daddr, 0)?;
    }
    event.tuple.sport = u16::from_be(sport as u16);
    event.tuple.dport = u16::from_be(dport as u16);
    let found = if found > u64::MAX - MAX_ERRNO {
        0
    } else {
        found
    };
    if found != 0 && kernel::udp_sock_tuple(found, kernel::Access::Probe, &mut event.detail.sock)? {
        report.at(Place::Sock(found, kernel::Access::Probe));
    }
    report
        .naming(found)
        .submit(EventKind::Lookup, Context::Softirq);
    Ok(())
}
