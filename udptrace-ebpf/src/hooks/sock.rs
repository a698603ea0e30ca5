//! Socket-level outcomes of UDP: errors reported to a socket and failed sends/receives.
//!
//! - `sock:inet_sk_error_report`, `TP_PROTO(const struct sock *sk)` (include/trace/events/sock.h):
//!   `sk->sk_err` was set, e.g. ECONNREFUSED after an ICMP port unreachable reached a connected
//!   socket (`__udp4_lib_err`). Runs in softirq context.
//! - `sock:sock_send_length` / `sock:sock_recv_length`, `TP_PROTO(struct sock *sk, int ret,
//!   int flags)` (net/socket.c, Linux 6.3+): every send/receive with its result, in the caller's
//!   process. Only negative results are reported.
//! - `fexit` (or kprobe + kretprobe) on `udp_sendmsg` / `udpv6_sendmsg` (`int (struct sock
//!   *sk, struct msghdr *msg, size_t len)`): the same send result on kernels that allow
//!   function probes, including those older than the sock tracepoints, plus what the caller
//!   asked for: the destination, `IP_PKTINFO`, whether the socket is connected.

use aya_ebpf::helpers::generated::bpf_get_func_ret;
use aya_ebpf::{
    EbpfContext as _,
    macros::{btf_tracepoint, fentry, fexit, kprobe, kretprobe, raw_tracepoint, tracepoint},
    programs::{
        BtfTracePointContext, FEntryContext, FExitContext, ProbeContext, RawTracePointContext,
        RetProbeContext, TracePointContext,
    },
};
use udptrace_common::{
    event::{
        AF_INET, AF_INET6, EventKind, FLAG_CONNECTED, FLAG_PKTINFO, FLAG_SEND_CALL, Mechanism,
    },
    offsets::ClassicTracepoint,
};

use crate::{
    emit::{Context, Report},
    hooks::{Probed, arg, classic_args, finish, save_entry, take_entry},
    kernel::{self, ReadError},
    mem,
};

#[btf_tracepoint(function = "inet_sk_error_report")]
pub fn sk_error_tp_btf(ctx: BtfTracePointContext) -> u32 {
    finish(on_sk_error(ctx.arg(0), Mechanism::TpBtf))
}

#[raw_tracepoint(tracepoint = "inet_sk_error_report")]
pub fn sk_error_raw_tp(ctx: RawTracePointContext) -> u32 {
    finish(on_sk_error(ctx.arg(0), Mechanism::RawTracepoint))
}

/// Kernels without `inet_sk_error_report` (5.10): `void sock_def_error_report(struct sock
/// *sk)` (net/core/sock.c), the `sk_error_report` of UDP sockets, which `__udp4_lib_err` and
/// `__udp6_lib_err` call once `sk->sk_err` is set (the tracepoint was added in this function).
#[fentry(function = "sock_def_error_report")]
pub fn sk_error_fentry(ctx: FEntryContext) -> u32 {
    finish(on_sk_error(ctx.arg(0), Mechanism::Fentry))
}

#[kprobe]
pub fn sk_error_kprobe(ctx: ProbeContext) -> u32 {
    finish(on_sk_error(arg(&ctx, 0), Mechanism::Kprobe))
}

#[inline(always)]
fn on_sk_error(sk: u64, mechanism: Mechanism) -> Result<(), ReadError> {
    let error: i32 = kernel::read(sk, kernel::offset(|o| &o.sk_err))?;
    // On an IP_RECVERR socket `__udp4_lib_err` / `__udp6_lib_err` queue the error first
    // (`ip_icmp_error` -> `sock_queue_err_skb`, which reports to the socket while `sk_err` is
    // still 0) and then set `sk->sk_err = err` and report again (net/ipv4/udp.c,
    // net/core/skbuff.c): the first report has no errno to give, the second one carries it.
    if error == 0 {
        return Ok(());
    }
    let Some(mut report) = Report::socket(sk, mechanism)? else {
        return Ok(());
    };
    report.detail.error = error.unsigned_abs();
    report.submit(EventKind::SockError, Context::Softirq);
    Ok(())
}

#[fexit(function = "udp_sendmsg")]
pub fn send_fexit_udp_sendmsg(ctx: FExitContext) -> u32 {
    // fexit sees the arguments followed by the return value: sk, msg, len, ret.
    finish(on_send_call(
        ctx.arg(0),
        ctx.arg(1),
        ctx.arg::<i64>(3) as i32,
        Mechanism::Fentry,
        false,
    ))
}

#[fexit(function = "udpv6_sendmsg")]
pub fn send_fexit_udpv6_sendmsg(ctx: FExitContext) -> u32 {
    finish(on_send_call(
        ctx.arg(0),
        ctx.arg(1),
        ctx.arg::<i64>(3) as i32,
        Mechanism::Fentry,
        true,
    ))
}

#[kprobe]
pub fn send_kprobe_udp_sendmsg(ctx: ProbeContext) -> u32 {
    save_entry(Probed::SendV4, [arg(&ctx, 0), arg(&ctx, 1), 0, 0])
}

#[kretprobe]
pub fn send_kretprobe_udp_sendmsg(ctx: RetProbeContext) -> u32 {
    send_returned(&ctx, Probed::SendV4)
}

#[kprobe]
pub fn send_kprobe_udpv6_sendmsg(ctx: ProbeContext) -> u32 {
    save_entry(Probed::SendV6, [arg(&ctx, 0), arg(&ctx, 1), 0, 0])
}

#[kretprobe]
pub fn send_kretprobe_udpv6_sendmsg(ctx: RetProbeContext) -> u32 {
    send_returned(&ctx, Probed::SendV6)
}

/// kretprobe of `function`: the call's sk and msg saved at entry, with the return value.
#[inline(always)]
fn send_returned(ctx: &RetProbeContext, function: Probed) -> u32 {
    let Some([sk, msg, _, _]) = take_entry(function) else {
        return 0;
    };
    let ipv6 = matches!(function, Probed::SendV6);
    finish(on_send_call(sk, msg, ctx.ret(), Mechanism::Kprobe, ipv6))
}

/// `ip_cmsg_send`/`ip6_datagram_send_ctl` (net/ipv4/ip_sockglue.c, net/ipv6/datagram.c):
/// `SOL_IP`/`IP_PKTINFO` carries `struct in_pktinfo { int ipi_ifindex; struct in_addr
/// ipi_spec_dst; struct in_addr ipi_addr; }` whose `ipi_spec_dst` becomes the source;
/// `SOL_IPV6`/`IPV6_PKTINFO` carries `struct in6_pktinfo { struct in6_addr ipi6_addr; int
/// ipi6_ifindex; }`.
const SOL_IP: i32 = 0;
const IP_PKTINFO: i32 = 8;
const SOL_IPV6: i32 = 41;
const IPV6_PKTINFO: i32 = 50;
/// `sizeof(struct cmsghdr)` on 64-bit: `size_t cmsg_len; int cmsg_level; int cmsg_type;`.
const CMSG_HEADER: u64 = 16;
/// Control messages examined per send (a bounded loop; senders pass one or two).
const MAX_CMSGS: u32 = 4;
/// `TCP_ESTABLISHED`: what `__ip4_datagram_connect` sets `sk_state` to.
const TCP_ESTABLISHED: u8 = 1;

/// `udp_sendmsg`/`udpv6_sendmsg(sk, msg, len)` returned `ret`: reports the send with what the
/// caller asked for. In the kernel's `struct msghdr` (net/socket.c `____sys_sendmsg` copied
/// both in), `msg_name` is the destination of `sendto()`/`sendmsg()` (NULL for `send()` on a
/// connected socket) and `msg_control` the ancillary data. `ipv6`: the IPv6 function, which
/// hands v4-mapped destinations to `udp_sendmsg` (reported there, not twice).
#[inline(always)]
fn on_send_call(
    sk: u64,
    msg: u64,
    ret: i32,
    mechanism: Mechanism,
    ipv6: bool,
) -> Result<(), ReadError> {
    if ret == -EAGAIN {
        return Ok(());
    }
    let Some(mut report) = Report::socket(sk, mechanism)? else {
        return Ok(());
    };
    let event = &mut *report;
    event.detail.sock = event.tuple;
    let mut flags = FLAG_SEND_CALL;
    let state: u8 = kernel::read(sk, kernel::offset(|o| &o.sk_state))?;
    if state == TCP_ESTABLISHED {
        flags |= FLAG_CONNECTED;
    }
    let name: u64 = kernel::read(msg, kernel::offset(|o| &o.msg_name))?;
    let name_len: i32 = kernel::read(msg, kernel::offset(|o| &o.msg_namelen))?;
    if name != 0 && name_len >= 8 {
        // struct sockaddr_in: family @0, port @2 (big-endian), addr @4; sockaddr_in6: family,
        // port, flowinfo @4, addr @8.
        let [family, port]: [u16; 2] = kernel::read(name, 0)?;
        if family == u16::from(AF_INET) {
            mem::set_ipv4(&mut event.tuple.daddr, kernel::read(name, 4)?);
            event.tuple.dport = u16::from_be(port);
        } else if family == u16::from(AF_INET6) && name_len >= 24 {
            event.tuple.daddr = kernel::read(name, 8)?;
            event.tuple.dport = u16::from_be(port);
        }
    }
    if ipv6 && is_v4_mapped(&event.tuple.daddr) {
        return Ok(());
    }
    if pktinfo_source(msg, &mut event.tuple.saddr)? {
        flags |= FLAG_PKTINFO;
    }
    event.detail.flags = flags;
    report_result(report.naming(sk), ret, EventKind::SendError);
    Ok(())
}

/// `::ffff:a.b.c.d`.
#[inline(always)]
fn is_v4_mapped(address: &[u8; 16]) -> bool {
    let mut index = 0;
    while index < 10 {
        if address[index] != 0 {
            return false;
        }
        index += 1;
    }
    address[10] == 0xff && address[11] == 0xff
}

/// Walks the ancillary data of `msg` for `IP_PKTINFO`/`IPV6_PKTINFO`; when found writes the
/// source address it asks for into `source` (unless it names only an interface) and says so.
#[inline(always)]
fn pktinfo_source(msg: u64, source: &mut [u8; 16]) -> Result<bool, ReadError> {
    let control: u64 = kernel::read(msg, kernel::offset(|o| &o.msg_control))?;
    let control_len: u64 = kernel::read(msg, kernel::offset(|o| &o.msg_controllen))?;
    if control == 0 {
        return Ok(false);
    }
    let mut at = 0u64;
    let mut index = 0;
    while index < MAX_CMSGS && at + CMSG_HEADER <= control_len {
        let [len_low, len_high, level, kind]: [u32; 4] = kernel::read(control + at, 0)?;
        let (len, level, kind) = (
            u64::from(len_low) | (u64::from(len_high) << 32),
            level as i32,
            kind as i32,
        );
        let data = control + at + CMSG_HEADER;
        if level == SOL_IP && kind == IP_PKTINFO {
            let spec_dst: [u8; 4] = kernel::read(data, 4)?;
            if spec_dst != [0; 4] {
                mem::set_ipv4(source, spec_dst);
            }
            return Ok(true);
        }
        if level == SOL_IPV6 && kind == IPV6_PKTINFO {
            let address: [u8; 16] = kernel::read(data, 0)?;
            if address != [0; 16] {
                *source = address;
            }
            return Ok(true);
        }
        if len < CMSG_HEADER {
            break;
        }
        // CMSG_ALIGN: 8-byte steps (include/linux/socket.h).
        at += (len + 7) & !7;
        index += 1;
    }
    Ok(false)
}

#[btf_tracepoint(function = "sock_send_length")]
pub fn send_tp_btf(ctx: BtfTracePointContext) -> u32 {
    finish(on_result(
        ctx.arg(0),
        ctx.arg(1),
        EventKind::SendError,
        Mechanism::TpBtf,
    ))
}

#[raw_tracepoint(tracepoint = "sock_send_length")]
pub fn send_raw_tp(ctx: RawTracePointContext) -> u32 {
    finish(on_result(
        ctx.arg(0),
        ctx.arg(1),
        EventKind::SendError,
        Mechanism::RawTracepoint,
    ))
}

#[tracepoint(category = "sock", name = "sock_send_length")]
pub fn send_tracepoint(ctx: TracePointContext) -> u32 {
    finish(classic_result(
        &ctx,
        ClassicTracepoint::SockSendLength,
        EventKind::SendError,
    ))
}

#[btf_tracepoint(function = "sock_recv_length")]
pub fn recv_tp_btf(ctx: BtfTracePointContext) -> u32 {
    finish(on_result(
        ctx.arg(0),
        ctx.arg(1),
        EventKind::RecvError,
        Mechanism::TpBtf,
    ))
}

#[raw_tracepoint(tracepoint = "sock_recv_length")]
pub fn recv_raw_tp(ctx: RawTracePointContext) -> u32 {
    finish(on_result(
        ctx.arg(0),
        ctx.arg(1),
        EventKind::RecvError,
        Mechanism::RawTracepoint,
    ))
}

#[tracepoint(category = "sock", name = "sock_recv_length")]
pub fn recv_tracepoint(ctx: TracePointContext) -> u32 {
    finish(classic_result(
        &ctx,
        ClassicTracepoint::SockRecvLength,
        EventKind::RecvError,
    ))
}

#[fexit(function = "udp_recvmsg")]
pub fn recv_fexit_udp_recvmsg(ctx: FExitContext) -> u32 {
    recv_returned(&ctx, fexit_return(&ctx))
}

#[fexit(function = "udpv6_recvmsg")]
pub fn recv_fexit_udpv6_recvmsg(ctx: FExitContext) -> u32 {
    recv_returned(&ctx, fexit_return(&ctx))
}

/// `int udp_recvmsg(struct sock *sk, struct msghdr *msg, size_t len, int noblock, int flags,
/// int *addr_len)` (net/ipv4/udp.c before 5.19; `udpv6_recvmsg` alike): on kernels without
/// `bpf_get_func_ret` (before 5.17) the return value is read from the fexit context, where it
/// follows the six arguments.
#[fexit(function = "udp_recvmsg")]
pub fn recv_fexit_ctx_udp_recvmsg(ctx: FExitContext) -> u32 {
    recv_returned(&ctx, ctx.arg::<i32>(6))
}

#[fexit(function = "udpv6_recvmsg")]
pub fn recv_fexit_ctx_udpv6_recvmsg(ctx: FExitContext) -> u32 {
    recv_returned(&ctx, ctx.arg::<i32>(6))
}

/// What every recv fexit program does with the return value `ret` it read (the socket is the
/// first argument of both functions).
#[inline(always)]
fn recv_returned(ctx: &FExitContext, ret: i32) -> u32 {
    finish(on_result(
        ctx.arg(0),
        ret,
        EventKind::RecvError,
        Mechanism::Fentry,
    ))
}

/// Attached to `udp_recvmsg` and `udpv6_recvmsg` (the logic reads the family from the socket).
#[kprobe]
pub fn recv_kprobe(ctx: ProbeContext) -> u32 {
    save_entry(Probed::Recv, [arg(&ctx, 0), 0, 0, 0])
}

#[kretprobe]
pub fn recv_kretprobe(ctx: RetProbeContext) -> u32 {
    let Some([sk, _, _, _]) = take_entry(Probed::Recv) else {
        return 0;
    };
    finish(on_result(
        sk,
        ctx.ret(),
        EventKind::RecvError,
        Mechanism::Kprobe,
    ))
}

/// The traced function's return value, wherever its argument count puts it (`udp_recvmsg`
/// lost its `noblock` argument in Linux 5.19).
#[inline(always)]
fn fexit_return(ctx: &FExitContext) -> i32 {
    let mut ret = 0u64;
    // SAFETY: bpf_get_func_ret writes one u64 into `ret`; fexit programs may call it (5.17+).
    unsafe { bpf_get_func_ret(ctx.as_ptr(), &raw mut ret) };
    ret as i32
}

#[inline(always)]
fn classic_result(
    ctx: &TracePointContext,
    tracepoint: ClassicTracepoint,
    kind: EventKind,
) -> Result<(), ReadError> {
    let [sk, ret, _flags] = classic_args(ctx.as_ptr() as u64, tracepoint)?;
    on_result(sk, ret as i32, kind, Mechanism::Tracepoint)
}

/// EAGAIN: a non-blocking socket with nothing to read, the normal idle state of every event
/// loop; reporting it would bury real errors.
const EAGAIN: i32 = 11;

/// A send or receive returned `ret`: failures become `SendError`/`RecvError`, successful
/// sends `Send` (the sending process and its socket).
#[inline(always)]
fn on_result(sk: u64, ret: i32, kind: EventKind, mechanism: Mechanism) -> Result<(), ReadError> {
    if ret == -EAGAIN || (ret >= 0 && kind != EventKind::SendError) {
        return Ok(());
    }
    // The destination of a send on an unconnected socket that failed in its route lookup,
    // which `path::on_route` kept for this task; taken whatever the filter says of this send.
    let failed_route = if kind == EventKind::SendError && ret < 0 {
        take_entry(Probed::FailedRoute)
    } else {
        None
    };
    let Some(mut report) = Report::socket(sk, mechanism)? else {
        return Ok(());
    };
    report.detail.sock = report.tuple;
    if let Some([ports, low, high, _]) = failed_route {
        let tuple = &mut report.tuple;
        // The lookup of this socket's own send: same family and source port (autobound by
        // then, inet_send_prepare), no peer of its own.
        if tuple.dport == 0
            && u64::from(tuple.family) == ports & 0xff
            && u64::from(tuple.sport) == (ports >> 16) & 0xffff
        {
            // SAFETY: two u64s as 16 bytes; every bit pattern is valid.
            tuple.daddr = unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>([low, high]) };
            tuple.dport = (ports >> 32) as u16;
        }
    }
    report_result(report.naming(sk), ret, kind);
    Ok(())
}

/// Submits the outcome `ret` of a call on the socket `report` names (`detail.sock` its own
/// tuple, `detail.flags` set): `Send` with the bytes sent, or `failure` with the errno.
#[inline(always)]
fn report_result(mut report: Report, ret: i32, failure: EventKind) {
    let kind = if ret >= 0 {
        report.detail.bytes = ret as u32;
        EventKind::Send
    } else {
        report.detail.error = ret.unsigned_abs();
        failure
    };
    report.submit(kind, Context::Process);
}
