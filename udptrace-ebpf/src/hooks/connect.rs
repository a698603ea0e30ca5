//! `connect()` on UDP sockets: the moment a socket gets pinned to a peer *and a local
//! address*. netcat's `-u -l` connects its listening socket to the first client, after which
//! datagrams from elsewhere (or to another local address) find no socket (the NO_SOCKET
//! incident in ../shared/seeds).
//!
//! There is no tracepoint (`sock:inet_sock_set_state` is TCP-only), so only function probes:
//! `udp_connect`/`udpv6_connect` where they exist (Linux 6.13+, `udp_prot.connect`), else
//! `ip4_datagram_connect`/`ip6_datagram_connect`, all `int (struct sock *sk, struct sockaddr
//! *uaddr, int addr_len)`. After the call, `inet_rcv_saddr`/`sk_v6_rcv_saddr` hold the local
//! address the route chose (`__ip4_datagram_connect`, net/ipv4/datagram.c).

use aya_ebpf::{
    macros::{fexit, kprobe, kretprobe},
    programs::{FExitContext, ProbeContext, RetProbeContext},
};
use udptrace_common::event::{EventKind, FLAG_CONNECTED, Mechanism};

use crate::{
    emit::{Context, Report},
    hooks::{Probed, arg, finish, save_entry, take_entry},
    kernel::ReadError,
};

#[fexit(function = "udp_connect")]
pub fn connect_fexit_udp_connect(ctx: FExitContext) -> u32 {
    // sk, uaddr, addr_len, ret.
    finish(on_connect(
        ctx.arg(0),
        ctx.arg::<i64>(3) as i32,
        Mechanism::Fentry,
    ))
}

#[fexit(function = "udpv6_connect")]
pub fn connect_fexit_udpv6_connect(ctx: FExitContext) -> u32 {
    finish(on_connect(
        ctx.arg(0),
        ctx.arg::<i64>(3) as i32,
        Mechanism::Fentry,
    ))
}

#[fexit(function = "ip4_datagram_connect")]
pub fn connect_fexit_ip4_datagram_connect(ctx: FExitContext) -> u32 {
    finish(on_connect(
        ctx.arg(0),
        ctx.arg::<i64>(3) as i32,
        Mechanism::Fentry,
    ))
}

#[fexit(function = "ip6_datagram_connect")]
pub fn connect_fexit_ip6_datagram_connect(ctx: FExitContext) -> u32 {
    finish(on_connect(
        ctx.arg(0),
        ctx.arg::<i64>(3) as i32,
        Mechanism::Fentry,
    ))
}

/// Attached to whichever pair of connect functions the kernel has (the logic reads the
/// family from the socket).
#[kprobe]
pub fn connect_kprobe(ctx: ProbeContext) -> u32 {
    save_entry(Probed::Connect, [arg(&ctx, 0), 0, 0, 0])
}

#[kretprobe]
pub fn connect_kretprobe(ctx: RetProbeContext) -> u32 {
    let Some([sk, _, _, _]) = take_entry(Probed::Connect) else {
        return 0;
    };
    finish(on_connect(sk, ctx.ret(), Mechanism::Kprobe))
}

/// Reports the socket as the connect left it: local address and port pinned, peer set.
/// Disconnects (`AF_UNSPEC`) leave a zero peer and are not reported.
#[inline(always)]
fn on_connect(sk: u64, ret: i32, mechanism: Mechanism) -> Result<(), ReadError> {
    let Some(mut report) = Report::socket(sk, mechanism)? else {
        return Ok(());
    };
    if ret == 0 && report.tuple.dport == 0 {
        return Ok(());
    }
    report.detail.error = ret.unsigned_abs();
    report.detail.flags = if ret == 0 { FLAG_CONNECTED } else { 0 };
    report.detail.sock = report.tuple;
    report
        .naming(sk)
        .submit(EventKind::Connect, Context::Process);
    Ok(())
}
