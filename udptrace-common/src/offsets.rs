//! Kernel layout facts the programs need, resolved in userspace at start-up from the running
//! kernel's BTF (`/sys/kernel/btf/vmlinux`) and tracefs format files, then written into the
//! `OFFSETS` global before the object is loaded.
//!
//! Rust cannot emit CO-RE relocations yet, so without this every read would be pinned to the
//! layout of one kernel build (see ../shared/notes/aya-and-style.md, B.1).

/// Marks a field the running kernel does not have; programs that need it give up on the event
/// (and count a read error) instead of reading garbage.
pub const OFFSET_MISSING: u32 = u32::MAX;

/// Classic tracepoints whose record fields stand in for the raw tracepoint arguments. Index
/// into [`KernelOffsets::tracepoint_args`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClassicTracepoint {
    /// `skb:kfree_skb`: skbaddr, location, reason.
    KfreeSkb = 0,
    /// `icmp:icmp_send`: skbaddr, type, code.
    IcmpSend = 1,
    /// `net:net_dev_queue`: skbaddr.
    NetDevQueue = 2,
    /// `sock:sock_send_length`: sk, ret, flags.
    SockSendLength = 3,
    /// `sock:sock_recv_length`: sk, ret, flags.
    SockRecvLength = 4,
}

pub const CLASSIC_TRACEPOINT_COUNT: usize = 5;
/// Raw tracepoint arguments mirrored per classic tracepoint, at most.
pub const CLASSIC_TRACEPOINT_ARGS: usize = 3;

impl ClassicTracepoint {
    pub const ALL: [Self; CLASSIC_TRACEPOINT_COUNT] = [
        Self::KfreeSkb,
        Self::IcmpSend,
        Self::NetDevQueue,
        Self::SockSendLength,
        Self::SockRecvLength,
    ];

    /// `(tracefs group, event)`.
    pub const fn event(self) -> (&'static str, &'static str) {
        match self {
            Self::KfreeSkb => ("skb", "kfree_skb"),
            Self::IcmpSend => ("icmp", "icmp_send"),
            Self::NetDevQueue => ("net", "net_dev_queue"),
            Self::SockSendLength => ("sock", "sock_send_length"),
            Self::SockRecvLength => ("sock", "sock_recv_length"),
        }
    }

    /// Record fields, in the order of the raw tracepoint's `TP_PROTO` arguments they mirror.
    pub const fn fields(self) -> &'static [&'static str] {
        match self {
            Self::KfreeSkb => &["skbaddr", "location", "reason"],
            Self::IcmpSend => &["skbaddr", "type", "code"],
            Self::NetDevQueue => &["skbaddr"],
            Self::SockSendLength | Self::SockRecvLength => &["sk", "ret", "flags"],
        }
    }
}

/// Byte offsets of every kernel struct field the programs read ([`OFFSET_MISSING`] when absent).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `sk_buff.head`: start of the buffer the header offsets are relative to.
    pub skb_head: u32,
    /// `sk_buff.network_header` (u16 offset from head).
    pub skb_network_header: u32,
    /// `sk_buff.transport_header` (u16 offset from head, `0xffff` when unset).
    pub skb_transport_header: u32,
    /// `sk_buff.protocol` (big-endian ethertype).
    pub skb_protocol: u32,
    /// `sk_buff.dev`.
    pub skb_dev: u32,
    /// `sk_buff.sk`.
    pub skb_sk: u32,
    /// `net_device.ifindex`.
    pub dev_ifindex: u32,
    /// `net_device.name` (`char[IFNAMSIZ]`).
    pub dev_name: u32,
    /// `net_device.nd_net.net`.
    pub dev_net: u32,
    /// `net.ns.inum`.
    pub net_inum: u32,
    /// `sock.__sk_common.skc_family`.
    pub sk_family: u32,
    /// `sock.__sk_common.skc_daddr`.
    pub sk_daddr: u32,
    /// `sock.__sk_common.skc_rcv_saddr`.
    pub sk_rcv_saddr: u32,
    /// `sock.__sk_common.skc_dport` (big-endian).
    pub sk_dport: u32,
    /// `sock.__sk_common.skc_num` (host order).
    pub sk_num: u32,
    /// `sock.__sk_common.skc_v6_daddr`.
    pub sk_v6_daddr: u32,
    /// `sock.__sk_common.skc_v6_rcv_saddr`.
    pub sk_v6_rcv_saddr: u32,
    /// `sock.__sk_common.skc_net.net`.
    pub sk_net: u32,
    /// `sock.sk_protocol` (u16 since Linux 5.6).
    pub sk_protocol: u32,
    /// `sock.sk_err`.
    pub sk_err: u32,
    /// Per [`ClassicTracepoint`]: record offsets of the fields listed by `fields()`.
    pub tracepoint_args: [[u32; CLASSIC_TRACEPOINT_ARGS]; CLASSIC_TRACEPOINT_COUNT],
}

impl KernelOffsets {
    pub const MISSING: Self = Self {
        skb_head: OFFSET_MISSING,
        skb_network_header: OFFSET_MISSING,
        skb_transport_header: OFFSET_MISSING,
        skb_protocol: OFFSET_MISSING,
        skb_dev: OFFSET_MISSING,
        skb_sk: OFFSET_MISSING,
        dev_ifindex: OFFSET_MISSING,
        dev_name: OFFSET_MISSING,
        dev_net: OFFSET_MISSING,
        net_inum: OFFSET_MISSING,
        sk_family: OFFSET_MISSING,
        sk_daddr: OFFSET_MISSING,
        sk_rcv_saddr: OFFSET_MISSING,
        sk_dport: OFFSET_MISSING,
        sk_num: OFFSET_MISSING,
        sk_v6_daddr: OFFSET_MISSING,
        sk_v6_rcv_saddr: OFFSET_MISSING,
        sk_net: OFFSET_MISSING,
        sk_protocol: OFFSET_MISSING,
        sk_err: OFFSET_MISSING,
        tracepoint_args: [[OFFSET_MISSING; CLASSIC_TRACEPOINT_ARGS]; CLASSIC_TRACEPOINT_COUNT],
    };
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)] made only of u32s; every bit pattern is valid.
    unsafe impl aya::Pod for super::KernelOffsets {}
}
