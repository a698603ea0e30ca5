//! Socket-level outcomes of UDP: errors reported to a socket and failed sends/receives.
//!
//! - `sock:inet_sk_error_report`, `TP_PROTO(const struct sock *sk)` (include/trace/events/sock.h):
//!   `sk->sk_err` was set, e.g. ECONNREFUSED after an ICMP port unreachable reached a connected
//!   socket (`__udp4_lib_err`). Runs in softirq context.
//! - `sock:sock_send_length` / `sock:sock_recv_length`, `TP_PROTO(struct sock *sk, int ret,
//!   int flags)` (net/socket.c, Linux 6.3+): every send/receive with its result, in the caller's
//!   process. Only negative results are reported.
//! - `fexit` on `udp_sendmsg` / `udpv6_sendmsg` (`int (struct sock *sk, struct msghdr *msg,
//!   size_t len)`): the same send result on kernels that allow trampolines, including those
//!   older than the sock tracepoints.

use aya_ebpf::{
    EbpfContext as _,
    macros::{btf_tracepoint, fexit, raw_tracepoint, tracepoint},
    programs::{BtfTracePointContext, FExitContext, RawTracePointContext, TracePointContext},
};
use udptrace_common::{
    event::{EventDetail, EventKind, Mechanism},
    offsets::ClassicTracepoint,
};

use crate::{
    emit::{Context, Place, scratch, submit},
    hooks::{classic_args, finish},
    kernel::{self, ReadError},
};

#[btf_tracepoint(function = "inet_sk_error_report")]
pub fn sk_error_tp_btf(ctx: BtfTracePointContext) -> u32 {
    finish(on_sk_error(ctx.arg(0), Mechanism::TpBtf))
}

#[raw_tracepoint(tracepoint = "inet_sk_error_report")]
pub fn sk_error_raw_tp(ctx: RawTracePointContext) -> u32 {
    finish(on_sk_error(ctx.arg(0), Mechanism::RawTracepoint))
}

#[inline(always)]
fn on_sk_error(sk: u64, mechanism: Mechanism) -> Result<(), ReadError> {
    let Some(event) = scratch() else {
        return Ok(());
    };
    if !kernel::udp_sock_tuple(sk, &mut event.tuple)? {
        return Ok(());
    }
    let error: i32 = kernel::read(sk, kernel::offset(|o| &o.sk_err))?;
    event.detail = EventDetail {
        error: error.unsigned_abs(),
        ..EventDetail::default()
    };
    submit(
        event,
        EventKind::SockError,
        mechanism,
        Context::Softirq,
        0,
        Place::Sock(sk),
        0,
    );
    Ok(())
}

#[fexit(function = "udp_sendmsg")]
pub fn send_fexit_udp_sendmsg(ctx: FExitContext) -> u32 {
    // fexit sees the arguments followed by the return value: sk, msg, len, ret.
    finish(on_result(
        ctx.arg(0),
        ctx.arg::<i64>(3) as i32,
        EventKind::SendError,
        Mechanism::Fentry,
    ))
}

#[fexit(function = "udpv6_sendmsg")]
pub fn send_fexit_udpv6_sendmsg(ctx: FExitContext) -> u32 {
    finish(on_result(
        ctx.arg(0),
        ctx.arg::<i64>(3) as i32,
        EventKind::SendError,
        Mechanism::Fentry,
    ))
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

#[inline(always)]
fn classic_result(
    ctx: &TracePointContext,
    tracepoint: ClassicTracepoint,
    kind: EventKind,
) -> Result<(), ReadError> {
    let [sk, ret, _flags] = classic_args(ctx.as_ptr() as u64, tracepoint, [8, 4, 4])?;
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
    let Some(event) = scratch() else {
        return Ok(());
    };
    if !kernel::udp_sock_tuple(sk, &mut event.tuple)? {
        return Ok(());
    }
    let (kind, error, bytes) = if ret >= 0 {
        (EventKind::Send, 0, ret as u32)
    } else {
        (kind, ret.unsigned_abs(), 0)
    };
    event.detail = EventDetail {
        error,
        bytes,
        sock: event.tuple,
        ..EventDetail::default()
    };
    submit(
        event,
        kind,
        mechanism,
        Context::Process,
        0,
        Place::Sock(sk),
        sk,
    );
    Ok(())
}
