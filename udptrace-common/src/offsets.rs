//! Kernel layout facts the programs need, resolved in userspace at start-up from the running
//! kernel's BTF (`/sys/kernel/btf/vmlinux`) and tracefs format files, then written into the
//! `OFFSETS` global before the object is loaded.
//!
//! Rust cannot emit CO-RE relocations yet, so without this every read would be pinned to the
//! layout of one kernel build (see ../shared/notes/aya-and-style.md, B.1).

/// Marks a field the running kernel does not have; programs that need it give up on the event
/// (and count a read error) instead of reading garbage.
pub const OFFSET_MISSING: u32 = u32::MAX;

enum_table! {
/// Classic tracepoints whose record fields stand in for the raw tracepoint arguments. Index
/// into [`KernelOffsets::tracepoint_args`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClassicTracepoint: u32, from_u32 {
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
    /// `net:netif_receive_skb`: skbaddr.
    NetifReceiveSkb = 5,
    /// `skb:consume_skb`: skbaddr.
    ConsumeSkb = 6,
    /// `sock:sk_data_ready`: skaddr.
    SkDataReady = 7,
    /// `skb:kfree_skb` before Linux 5.17, without `reason`: skbaddr, location.
    KfreeSkbNoReason = 8,
}
}

pub const CLASSIC_TRACEPOINT_COUNT: usize = ClassicTracepoint::COUNT;
/// Raw tracepoint arguments mirrored per classic tracepoint, at most.
pub const CLASSIC_TRACEPOINT_ARGS: usize = 3;

impl ClassicTracepoint {
    /// `(tracefs group, event)`.
    pub const fn event(self) -> (&'static str, &'static str) {
        match self {
            Self::KfreeSkb | Self::KfreeSkbNoReason => ("skb", "kfree_skb"),
            Self::IcmpSend => ("icmp", "icmp_send"),
            Self::NetDevQueue => ("net", "net_dev_queue"),
            Self::SockSendLength => ("sock", "sock_send_length"),
            Self::SockRecvLength => ("sock", "sock_recv_length"),
            Self::NetifReceiveSkb => ("net", "netif_receive_skb"),
            Self::ConsumeSkb => ("skb", "consume_skb"),
            Self::SkDataReady => ("sock", "sk_data_ready"),
        }
    }

    /// Record fields, in the order of the raw tracepoint's `TP_PROTO` arguments they mirror.
    pub const fn fields(self) -> &'static [&'static str] {
        match self {
            Self::KfreeSkb => &["skbaddr", "location", "reason"],
            Self::KfreeSkbNoReason => &["skbaddr", "location"],
            Self::IcmpSend => &["skbaddr", "type", "code"],
            Self::NetDevQueue | Self::NetifReceiveSkb | Self::ConsumeSkb => &["skbaddr"],
            Self::SkDataReady => &["skaddr"],
            Self::SockSendLength | Self::SockRecvLength => &["sk", "ret", "flags"],
        }
    }

    /// The width in bytes each [`Self::fields`] entry is read with (0 past the last): pointers
    /// 8, ints and enums 4 (sign-extended to the raw tracepoint's 64-bit argument). The one
    /// definition both sides use: the classic programs read with it
    /// (udptrace-ebpf/src/hooks/mod.rs `classic_args`), userspace refuses a format file whose
    /// field has another size (udptrace/src/kernel/offsets.rs), which would be misread.
    pub const fn read_sizes(self) -> [u32; CLASSIC_TRACEPOINT_ARGS] {
        match self {
            // skbaddr, location: pointers; reason: enum skb_drop_reason.
            Self::KfreeSkb => [8, 8, 4],
            Self::KfreeSkbNoReason => [8, 8, 0],
            // skbaddr or sk; type, code or ret, flags: int.
            Self::IcmpSend | Self::SockSendLength | Self::SockRecvLength => [8, 4, 4],
            Self::NetDevQueue | Self::NetifReceiveSkb | Self::ConsumeSkb | Self::SkDataReady => {
                [8, 0, 0]
            }
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
    /// `sk_buff.tail` (an offset from head on 64-bit kernels: `sk_buff_data_t` is u32 with
    /// `NET_SKBUFF_DATA_USES_OFFSET`, include/linux/skbuff.h): end of the linear data.
    pub skb_tail: u32,
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
    /// `sock.__sk_common.skc_state` (`TCP_ESTABLISHED` once a UDP socket is connected).
    pub sk_state: u32,
    /// `msghdr.msg_name`, `.msg_namelen`, `.msg_control`, `.msg_controllen`: what
    /// `udp_sendmsg` was asked to do (destination, ancillary data).
    pub msg_name: u32,
    pub msg_namelen: u32,
    pub msg_control: u32,
    pub msg_controllen: u32,
    /// `sock.sk_socket`.
    pub sk_socket: u32,
    /// `socket_alloc.vfs_inode`: the inode that follows a `struct socket` (`SOCK_INODE()`).
    pub socket_inode: u32,
    /// `inode.i_ino`.
    pub inode_ino: u32,
    /// `sk_buff._nfct` (conntrack pointer | ctinfo in the low 3 bits).
    pub skb_nfct: u32,
    /// `sk_buff.queue_mapping` (u16): on the way out, the transmit queue `__dev_queue_xmit`
    /// picked (`netdev_core_pick_tx` → `skb_set_queue_mapping`, net/core/dev.c) before the
    /// qdisc of that queue enqueues or drops it.
    pub skb_queue_mapping: u32,
    /// `nf_conn.tuplehash`: `[ORIGINAL, REPLY]` of `nf_conntrack_tuple_hash`.
    pub ct_tuplehash: u32,
    /// `sizeof(struct nf_conntrack_tuple_hash)`: stride of `ct_tuplehash`.
    pub ct_tuplehash_size: u32,
    /// `nf_conntrack_tuple_hash.tuple`.
    pub ct_hash_tuple: u32,
    /// `nf_conntrack_tuple.src.u3`, `.src.u.all`, `.src.l3num`, `.dst.u3`, `.dst.u.all`,
    /// `.dst.protonum`.
    pub ct_src_addr: u32,
    pub ct_src_port: u32,
    pub ct_l3num: u32,
    pub ct_dst_addr: u32,
    pub ct_dst_port: u32,
    pub ct_protonum: u32,
    /// `nf_conn.status`.
    pub ct_status: u32,
    /// `task_struct.nsproxy` and `nsproxy.net_ns`: the namespace of the current task, for
    /// events in process context that carry no skb or socket (route lookups).
    pub task_nsproxy: u32,
    pub nsproxy_net: u32,
    /// `task_struct.se.cfs_rq` and `cfs_rq.rq` (CONFIG_FAIR_GROUP_SCHED): the run queue of
    /// the current task, which is this CPU's (`set_task_rq` at every `__set_task_cpu`,
    /// kernel/sched/sched.h, the idle task's included), i.e. this CPU's copy of the per-CPU
    /// `runqueues`: the anchor from which this CPU's preempt count is found.
    pub task_cfs_rq: u32,
    pub cfs_rq_rq: u32,
    /// Offsets in the per-CPU section (`.data..percpu`, BTF's DATASEC of that name) of
    /// `runqueues` and of the preempt count (`__preempt_count`, or `pcpu_hot.preempt_count`
    /// on x86 6.2 to 6.14). A CPU's copy of any per-CPU variable is the section copied to one
    /// place, so the preempt count of this CPU is at `rq - percpu_runqueues +
    /// percpu_preempt_count`, whatever the per-CPU base (zero-based x86-64 before 6.15 or not).
    pub percpu_runqueues: u32,
    pub percpu_preempt_count: u32,
    /// `fib:fib_table_lookup` record fields (IPv4 route lookups).
    pub fib4: RouteRecordFields,
    /// `fib6:fib6_table_lookup` record fields (IPv6 route lookups).
    pub fib6: RouteRecordFields,
    /// Per [`ClassicTracepoint`]: record offsets of the fields listed by `fields()`.
    pub tracepoint_args: [[u32; CLASSIC_TRACEPOINT_ARGS]; CLASSIC_TRACEPOINT_COUNT],
}

impl KernelOffsets {
    pub const MISSING: Self = Self {
        skb_head: OFFSET_MISSING,
        skb_network_header: OFFSET_MISSING,
        skb_transport_header: OFFSET_MISSING,
        skb_tail: OFFSET_MISSING,
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
        sk_state: OFFSET_MISSING,
        msg_name: OFFSET_MISSING,
        msg_namelen: OFFSET_MISSING,
        msg_control: OFFSET_MISSING,
        msg_controllen: OFFSET_MISSING,
        sk_socket: OFFSET_MISSING,
        socket_inode: OFFSET_MISSING,
        inode_ino: OFFSET_MISSING,
        skb_nfct: OFFSET_MISSING,
        skb_queue_mapping: OFFSET_MISSING,
        ct_tuplehash: OFFSET_MISSING,
        ct_tuplehash_size: OFFSET_MISSING,
        ct_hash_tuple: OFFSET_MISSING,
        ct_src_addr: OFFSET_MISSING,
        ct_src_port: OFFSET_MISSING,
        ct_l3num: OFFSET_MISSING,
        ct_dst_addr: OFFSET_MISSING,
        ct_dst_port: OFFSET_MISSING,
        ct_protonum: OFFSET_MISSING,
        ct_status: OFFSET_MISSING,
        task_nsproxy: OFFSET_MISSING,
        nsproxy_net: OFFSET_MISSING,
        task_cfs_rq: OFFSET_MISSING,
        cfs_rq_rq: OFFSET_MISSING,
        percpu_runqueues: OFFSET_MISSING,
        percpu_preempt_count: OFFSET_MISSING,
        fib4: RouteRecordFields::MISSING,
        fib6: RouteRecordFields::MISSING,
        tracepoint_args: [[OFFSET_MISSING; CLASSIC_TRACEPOINT_ARGS]; CLASSIC_TRACEPOINT_COUNT],
    };
}

/// Offsets of the fields of a route-lookup tracepoint record (`fib:fib_table_lookup`,
/// `fib6:fib6_table_lookup`, include/trace/events/fib.h and fib6.h). These records already
/// carry the chosen device's name, so udptrace reads them rather than `struct
/// flowi4`/`fib_nh_common`. The gateway fields are not used: the tracepoint leaves them
/// unwritten (stale ring-buffer bytes) when the next hop has no gateway (`nhc_gw_family == 0`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteRecordFields {
    pub tb_id: u32,
    pub err: u32,
    pub oif: u32,
    pub iif: u32,
    pub proto: u32,
    /// `src`/`dst`: 4 bytes in `fib`, 16 in `fib6`.
    pub src: u32,
    pub dst: u32,
    pub sport: u32,
    pub dport: u32,
    /// `char name[IFNAMSIZ]`: the output device.
    pub name: u32,
    /// 1 when `name` is `__data_loc char[]` (older kernels, e.g. 5.10): the record holds a
    /// u32 locator there, the string's offset in the low 16 bits and its length in the high
    /// 16 (include/trace/trace_events.h `__get_dynamic_array`).
    pub name_dynamic: u32,
}

impl RouteRecordFields {
    pub const MISSING: Self = Self {
        tb_id: OFFSET_MISSING,
        err: OFFSET_MISSING,
        oif: OFFSET_MISSING,
        iif: OFFSET_MISSING,
        proto: OFFSET_MISSING,
        src: OFFSET_MISSING,
        dst: OFFSET_MISSING,
        sport: OFFSET_MISSING,
        dport: OFFSET_MISSING,
        name: OFFSET_MISSING,
        name_dynamic: 0,
    };

    /// Record field names, in struct order (the same in `fib` and `fib6`).
    pub const FIELD_NAMES: [&'static str; 10] = [
        "tb_id", "err", "oif", "iif", "proto", "src", "dst", "sport", "dport", "name",
    ];
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)] made only of u32s; every bit pattern is valid.
    unsafe impl aya::Pod for super::KernelOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RouteRecordFields {}
}

#[cfg(test)]
mod tests {
    use super::{CLASSIC_TRACEPOINT_ARGS, ClassicTracepoint};

    #[test]
    fn every_classic_field_has_a_read_width_and_only_those() {
        for tracepoint in ClassicTracepoint::ALL {
            let sizes = tracepoint.read_sizes();
            let fields = tracepoint.fields().len();
            assert!(fields <= CLASSIC_TRACEPOINT_ARGS, "{tracepoint:?}");
            for (slot, size) in sizes.iter().enumerate() {
                let expected: &[u32] = if slot < fields { &[4, 8] } else { &[0] };
                assert!(
                    expected.contains(size),
                    "{tracepoint:?} slot {slot}: {size}"
                );
            }
        }
    }
}
