//! Fills [`KernelOffsets`] from the running kernel's BTF and tracepoint format files.
//!
//! Why: the kernel programs cannot carry CO-RE relocations (Rust eBPF emits none, see
//! udptrace-common/src/offsets.rs), so every struct member and record field they read is
//! located here, at start-up, and written into their `OFFSETS` global before load.
//!
//! Nothing here is fatal: a member or field this kernel lacks, or has with a size the programs
//! do not read it with, stays [`OFFSET_MISSING`] and is listed in [`OffsetReport::missing`]
//! with the reason; the programs skip what needs it (and count a read error) instead of
//! reading garbage.

use udptrace_common::offsets::{
    ClassicTracepoint, KernelOffsets, OFFSET_MISSING, RouteRecordFields,
};

use super::{
    btf::{Btf, BtfError},
    tracefs::{FormatError, FormatField, FormatSource},
};

/// Why a tracepoint record field cannot be read; the message follows the field's name in
/// [`OffsetReport::missing`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    #[error("not in the format file")]
    Absent,
    #[error("is a dynamic array ({type_name})")]
    Dynamic { type_name: String },
    #[error("is {actual} bytes here, udptrace reads {read}")]
    Size { actual: u32, read: u32 },
}

/// Why a route tracepoint's record cannot be read.
#[derive(Debug, thiserror::Error)]
enum RouteError {
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error("field `{name}` {error}")]
    Field {
        name: &'static str,
        error: FieldError,
    },
}

/// The offsets, and what could not be resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffsetReport {
    pub offsets: KernelOffsets,
    /// (what: `sk_buff.head`, `skb:kfree_skb.reason`; why it is missing).
    pub missing: Vec<(String, String)>,
}

/// The size the kernel programs read a member with.
#[derive(Clone, Copy, Debug)]
enum Size {
    /// Read as exactly this many bytes; another size would be misread.
    Bytes(u32),
    /// Only used as a base address (an embedded struct, an array with its own stride).
    Any,
}

/// Read widths. Pointers and `unsigned long` are read as u64 (64-bit kernels only).
const PTR: Size = Size::Bytes(8);
const U8: Size = Size::Bytes(1);
const U16: Size = Size::Bytes(2);
const U32: Size = Size::Bytes(4);
/// `struct in6_addr`, `union nf_inet_addr`.
const ADDR16: Size = Size::Bytes(16);
/// `char name[IFNAMSIZ]`, IFNAMSIZ = 16 (include/uapi/linux/if.h).
const IFNAME: Size = Size::Bytes(16);

/// One struct member the programs read: where its offset goes, `struct.member.path` in BTF,
/// and its read width.
struct Member {
    field: fn(&mut KernelOffsets) -> &mut u32,
    path: &'static str,
    size: Size,
}

const fn member(
    field: fn(&mut KernelOffsets) -> &mut u32,
    path: &'static str,
    size: Size,
) -> Member {
    Member { field, path, size }
}

/// Every struct member the kernel programs read (udptrace-ebpf/src/kernel.rs), with the
/// paths documented on `KernelOffsets`. The sizes are the widths of those reads: a kernel that
/// changed one (as `sk_protocol` went from an 8-bit bitfield to a u16 in 5.6) gets the member
/// reported instead of misread.
const MEMBERS: &[Member] = &[
    member(|o| &mut o.skb_head, "sk_buff.head", PTR),
    // u16 offsets from `head` (include/linux/skbuff.h, skb_network_header()).
    member(|o| &mut o.skb_network_header, "sk_buff.network_header", U16),
    member(
        |o| &mut o.skb_transport_header,
        "sk_buff.transport_header",
        U16,
    ),
    member(|o| &mut o.skb_tail, "sk_buff.tail", U32),
    member(|o| &mut o.skb_protocol, "sk_buff.protocol", U16),
    member(|o| &mut o.skb_dev, "sk_buff.dev", PTR),
    member(|o| &mut o.skb_sk, "sk_buff.sk", PTR),
    member(|o| &mut o.skb_nfct, "sk_buff._nfct", PTR),
    member(|o| &mut o.skb_queue_mapping, "sk_buff.queue_mapping", U16),
    member(|o| &mut o.dev_ifindex, "net_device.ifindex", U32),
    member(|o| &mut o.dev_name, "net_device.name", IFNAME),
    // possible_net_t holds `struct net *net` with CONFIG_NET_NS (include/net/net_namespace.h).
    member(|o| &mut o.dev_net, "net_device.nd_net.net", PTR),
    member(|o| &mut o.net_inum, "net.ns.inum", U32),
    member(|o| &mut o.sk_family, "sock.__sk_common.skc_family", U16),
    member(|o| &mut o.sk_daddr, "sock.__sk_common.skc_daddr", U32),
    member(
        |o| &mut o.sk_rcv_saddr,
        "sock.__sk_common.skc_rcv_saddr",
        U32,
    ),
    member(|o| &mut o.sk_dport, "sock.__sk_common.skc_dport", U16),
    member(|o| &mut o.sk_num, "sock.__sk_common.skc_num", U16),
    // Only with CONFIG_IPV6 (include/net/sock.h, struct sock_common).
    member(
        |o| &mut o.sk_v6_daddr,
        "sock.__sk_common.skc_v6_daddr",
        ADDR16,
    ),
    member(
        |o| &mut o.sk_v6_rcv_saddr,
        "sock.__sk_common.skc_v6_rcv_saddr",
        ADDR16,
    ),
    member(|o| &mut o.sk_net, "sock.__sk_common.skc_net.net", PTR),
    member(|o| &mut o.sk_protocol, "sock.sk_protocol", U16),
    member(|o| &mut o.sk_err, "sock.sk_err", U32),
    member(|o| &mut o.sk_state, "sock.__sk_common.skc_state", U8),
    member(|o| &mut o.msg_name, "msghdr.msg_name", PTR),
    member(|o| &mut o.msg_namelen, "msghdr.msg_namelen", U32),
    // In an anonymous union with msg_control_user since 5.19 (include/linux/socket.h).
    member(|o| &mut o.msg_control, "msghdr.msg_control", PTR),
    member(|o| &mut o.msg_controllen, "msghdr.msg_controllen", PTR),
    member(|o| &mut o.sk_socket, "sock.sk_socket", PTR),
    // SOCK_INODE(): &container_of(socket, struct socket_alloc, socket)->vfs_inode
    // (include/net/sock.h); only a base for inode.i_ino.
    member(|o| &mut o.socket_inode, "socket_alloc.vfs_inode", Size::Any),
    member(|o| &mut o.inode_ino, "inode.i_ino", PTR),
    // tuplehash[IP_CT_DIR_MAX], stepped through with ct_tuplehash_size.
    member(|o| &mut o.ct_tuplehash, "nf_conn.tuplehash", Size::Any),
    member(|o| &mut o.ct_status, "nf_conn.status", PTR),
    member(
        |o| &mut o.ct_hash_tuple,
        "nf_conntrack_tuple_hash.tuple",
        Size::Any,
    ),
    member(|o| &mut o.ct_src_addr, "nf_conntrack_tuple.src.u3", ADDR16),
    member(|o| &mut o.ct_src_port, "nf_conntrack_tuple.src.u.all", U16),
    member(|o| &mut o.ct_l3num, "nf_conntrack_tuple.src.l3num", U16),
    member(|o| &mut o.ct_dst_addr, "nf_conntrack_tuple.dst.u3", ADDR16),
    member(|o| &mut o.ct_dst_port, "nf_conntrack_tuple.dst.u.all", U16),
    member(
        |o| &mut o.ct_protonum,
        "nf_conntrack_tuple.dst.protonum",
        U8,
    ),
    member(|o| &mut o.task_nsproxy, "task_struct.nsproxy", PTR),
    member(|o| &mut o.nsproxy_net, "nsproxy.net_ns", PTR),
    // Only with CONFIG_FAIR_GROUP_SCHED (struct cfs_rq, kernel/sched/sched.h).
    member(|o| &mut o.task_cfs_rq, "task_struct.se.cfs_rq", PTR),
    member(|o| &mut o.cfs_rq_rq, "cfs_rq.rq", PTR),
];

/// `IP_CT_DIR_MAX` (include/uapi/linux/netfilter/nf_conntrack_tuple_common.h): ORIGINAL and
/// REPLY.
const CT_DIRECTIONS: u32 = 2;

/// Resolves every offset the programs need: struct members from `btf`, tracepoint record
/// fields from `formats` (the live [`Tracefs`](super::tracefs::Tracefs), or
/// [`FormatTexts`](super::tracefs::FormatTexts)); without `formats` every record field is
/// missing.
pub fn resolve_offsets<F: FormatSource + ?Sized>(btf: &Btf, formats: Option<&F>) -> OffsetReport {
    let mut report = OffsetReport {
        offsets: KernelOffsets::MISSING,
        missing: Vec::new(),
    };
    resolve_members(btf, &mut report);
    match formats {
        Some(formats) => {
            for tracepoint in ClassicTracepoint::ALL {
                resolve_tracepoint(formats, tracepoint, &mut report);
            }
            resolve_routes(formats, &mut report);
        }
        None => report.missing.push((
            "tracepoint formats".into(),
            "tracefs is not available: classic tracepoints cannot be read".into(),
        )),
    }
    report
}

fn resolve_members(btf: &Btf, report: &mut OffsetReport) {
    for member in MEMBERS {
        let name = member.path.to_owned();
        let (structure, path) = member.path.split_once('.').unwrap_or((member.path, ""));
        match btf.member_offset(structure, path) {
            Ok(field) => match member.size {
                Size::Bytes(size) if size != field.size => report.missing.push((
                    name,
                    format!("is {} bytes here, udptrace reads {size}", field.size),
                )),
                _ => *(member.field)(&mut report.offsets) = field.offset,
            },
            Err(error) => report.missing.push((name, error.to_string())),
        }
    }
    // The stride of nf_conn.tuplehash[]; checked against the array so a layout change cannot
    // make the REPLY tuple read from the wrong place.
    let stride = btf.struct_size("nf_conntrack_tuple_hash");
    let array = btf.member_offset("nf_conn", "tuplehash");
    match (stride, array) {
        (Ok(stride), Ok(array)) if stride.checked_mul(CT_DIRECTIONS) == Some(array.size) => {
            report.offsets.ct_tuplehash_size = stride;
        }
        (Ok(stride), Ok(array)) => report.missing.push((
            "sizeof(struct nf_conntrack_tuple_hash)".into(),
            format!(
                "{stride} bytes, but nf_conn.tuplehash is {} bytes, not {CT_DIRECTIONS} of them",
                array.size
            ),
        )),
        (Err(error), _) | (_, Err(error)) => report.missing.push((
            "sizeof(struct nf_conntrack_tuple_hash)".into(),
            error.to_string(),
        )),
    }
    resolve_preempt_count(btf, report);
}

/// Where this CPU's preempt count is, relative to its run queue (see
/// `KernelOffsets::percpu_preempt_count`): the programs tell from it whether they run in a
/// softirq or hardirq, where the current task is only the one interrupted. x86-64 keeps the
/// count in the per-CPU `__preempt_count` (arch/x86/include/asm/preempt.h; Linux 5.10, 6.1,
/// and again from 6.15), in `struct pcpu_hot` from 6.2 to 6.14 (arch/x86/include/asm/
/// current.h); other architectures keep it in `thread_info`, not read here.
fn resolve_preempt_count(btf: &Btf, report: &mut OffsetReport) {
    const WITHOUT_IT: &str = " (without it, transmits and route lookups made in a softirq \
                              name the process it interrupted)";
    match btf.percpu_offset("runqueues") {
        Ok(offset) => report.offsets.percpu_runqueues = offset,
        Err(error) => report
            .missing
            .push((format!("per-CPU runqueues{WITHOUT_IT}"), error.to_string())),
    }
    let hot = || -> Result<u32, BtfError> {
        let base = btf.percpu_offset("pcpu_hot")?;
        let field = btf.member_offset("pcpu_hot", "preempt_count")?;
        Ok(base + field.offset)
    };
    match btf.percpu_offset("__preempt_count").or_else(|_| hot()) {
        Ok(offset) => report.offsets.percpu_preempt_count = offset,
        Err(error) => report.missing.push((
            format!("per-CPU __preempt_count or pcpu_hot.preempt_count{WITHOUT_IT}"),
            error.to_string(),
        )),
    }
}

/// The record offsets of `tracepoint`'s fields, each checked for the width it is read with.
fn resolve_tracepoint<F: FormatSource + ?Sized>(
    formats: &F,
    tracepoint: ClassicTracepoint,
    report: &mut OffsetReport,
) {
    let (group, event) = tracepoint.event();
    let fields = match formats.format(group, event) {
        Ok(fields) => fields,
        Err(error) => {
            report
                .missing
                .push((format!("{group}:{event}"), error.to_string()));
            return;
        }
    };
    let sizes = tracepoint.read_sizes();
    for (slot, name) in tracepoint.fields().iter().enumerate() {
        let what = format!("{group}:{event}.{name}");
        match checked_field(&fields, name, sizes[slot]) {
            Ok(offset) => report.offsets.tracepoint_args[tracepoint as usize][slot] = offset,
            Err(why) => report.missing.push((what, why.to_string())),
        }
    }
}

/// The offset of record field `name`, if it is a plain field of `size` bytes.
fn checked_field(fields: &[FormatField], name: &str, size: u32) -> Result<u32, FieldError> {
    let field = fields
        .iter()
        .find(|f| f.name == name)
        .ok_or(FieldError::Absent)?;
    if field.is_dynamic() {
        return Err(FieldError::Dynamic {
            type_name: field.type_name.clone(),
        });
    }
    if field.size != size {
        return Err(FieldError::Size {
            actual: field.size,
            read: size,
        });
    }
    Ok(field.offset)
}

/// The offset of the 4-byte `__data_loc` locator of dynamic field `name`.
fn dynamic_locator(fields: &[FormatField], name: &str) -> Option<u32> {
    fields
        .iter()
        .find(|f| f.name == name && f.type_name.starts_with("__data_loc") && f.size == 4)
        .map(|f| f.offset)
}

/// `fib:fib_table_lookup` and `fib6:fib6_table_lookup`: all fields or none (the route hook
/// reads the record as a whole).
fn resolve_routes<F: FormatSource + ?Sized>(formats: &F, report: &mut OffsetReport) {
    for (ipv6, group, event) in [
        (false, "fib", "fib_table_lookup"),
        (true, "fib6", "fib6_table_lookup"),
    ] {
        let fields = formats
            .format(group, event)
            .map_err(RouteError::from)
            .and_then(|fields| route_fields(&fields, ipv6));
        match fields {
            Ok(fields) if ipv6 => report.offsets.fib6 = fields,
            Ok(fields) => report.offsets.fib4 = fields,
            Err(error) => report
                .missing
                .push((format!("{group}:{event}"), error.to_string())),
        }
    }
}

/// The route record's fields in [`RouteRecordFields::FIELD_NAMES`] order, checked for the
/// sizes the program reads (include/trace/events/fib.h, fib6.h).
fn route_fields(fields: &[FormatField], ipv6: bool) -> Result<RouteRecordFields, RouteError> {
    let address = if ipv6 { 16 } else { 4 };
    // tb_id, err, oif, iif, proto, src, dst, sport, dport, name[IFNAMSIZ].
    let sizes = [4, 4, 4, 4, 1, address, address, 2, 2, 16];
    let mut offsets = [OFFSET_MISSING; 10];
    let mut name_dynamic = 0;
    for ((name, size), offset) in RouteRecordFields::FIELD_NAMES
        .iter()
        .zip(sizes)
        .zip(offsets.iter_mut())
    {
        *offset = match (
            checked_field(fields, name, size),
            dynamic_locator(fields, name),
        ) {
            (Ok(offset), _) => offset,
            // Older kernels (5.10) declare `__dynamic_array(char, name, IFNAMSIZ)`: a u32
            // locator the program follows (`RouteRecordFields::name_dynamic`).
            (Err(FieldError::Dynamic { .. }), Some(locator)) if *name == "name" => {
                name_dynamic = 1;
                locator
            }
            (Err(error), _) => return Err(RouteError::Field { name, error }),
        };
    }
    let [tb_id, err, oif, iif, proto, src, dst, sport, dport, name] = offsets;
    Ok(RouteRecordFields {
        name_dynamic,
        tb_id,
        err,
        oif,
        iif,
        proto,
        src,
        dst,
        sport,
        dport,
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::{
        btf::fixture,
        tracefs::{FormatTexts, Tracefs, fixtures},
    };

    const NO_FORMATS: Option<&Tracefs> = None;

    /// The fixture's offsets. Cross-checked against `bpftool btf dump file
    /// /sys/kernel/btf/vmlinux format raw` on the machine the fixture was saved on (Linux
    /// 6.18.44): each is the sum of the `bits_offset`s along the path, anonymous unions and
    /// structs included, divided by 8. E.g. sk_buff.dev: anon union [2772] @0 → anon struct
    /// [2771] @0 → anon union [2770] @128 → dev @0 = 16; sk_buff.network_header: anon union
    /// [2784] @1024 → `headers` struct [2783] → @416 = 128 + 52 = 180; net.ns.inum:
    /// ns @1216 + inum @192 = 152 + 24 = 176; task_struct.nsproxy @14720 = 1840.
    fn expected_6_18() -> KernelOffsets {
        KernelOffsets {
            skb_head: 192,
            skb_network_header: 180,
            skb_transport_header: 178,
            skb_tail: 184,
            skb_protocol: 176,
            skb_dev: 16,
            skb_sk: 24,
            dev_ifindex: 224,
            dev_name: 280,
            dev_net: 264,
            net_inum: 176,
            sk_family: 16,
            sk_daddr: 0,
            sk_rcv_saddr: 4,
            sk_dport: 12,
            sk_num: 14,
            sk_v6_daddr: 56,
            sk_v6_rcv_saddr: 72,
            sk_net: 48,
            sk_protocol: 532,
            sk_err: 284,
            sk_state: 18,
            // msg_control is in an anonymous union @448 bits; msg_controllen follows the
            // two bitfields @576.
            msg_name: 0,
            msg_namelen: 8,
            msg_control: 56,
            msg_controllen: 72,
            sk_socket: 288,
            socket_inode: 128,
            inode_ino: 64,
            skb_nfct: 104,
            skb_queue_mapping: 124,
            ct_tuplehash: 16,
            ct_tuplehash_size: 56,
            ct_hash_tuple: 16,
            ct_src_addr: 0,
            ct_src_port: 16,
            ct_l3num: 18,
            ct_dst_addr: 20,
            ct_dst_port: 36,
            ct_protonum: 38,
            ct_status: 128,
            task_nsproxy: 1840,
            nsproxy_net: 40,
            task_cfs_rq: 296,
            cfs_rq_rq: 312,
            // `.data..percpu` entries of runqueues and __preempt_count.
            percpu_runqueues: 0x2ba40,
            percpu_preempt_count: 0x15030,
            // From the 6.18 format files in tracefs::fixtures (read on the same machine).
            fib4: RouteRecordFields {
                tb_id: 8,
                err: 12,
                oif: 16,
                iif: 20,
                proto: 24,
                src: 28,
                dst: 32,
                sport: 56,
                dport: 58,
                name: 60,
                name_dynamic: 0,
            },
            fib6: RouteRecordFields {
                tb_id: 8,
                err: 12,
                oif: 16,
                iif: 20,
                proto: 68,
                src: 31,
                dst: 47,
                sport: 64,
                dport: 66,
                name: 70,
                name_dynamic: 0,
            },
            tracepoint_args: [
                // kfree_skb: skbaddr, location, reason.
                [8, 16, 36],
                // icmp_send: skbaddr, type, code.
                [8, 16, 20],
                // net_dev_queue: skbaddr.
                [8, OFFSET_MISSING, OFFSET_MISSING],
                // sock_send_length: sk, ret, flags.
                [8, 20, 24],
                // sock_recv_length.
                [8, 20, 24],
                // netif_receive_skb, consume_skb, sk_data_ready: skbaddr / skaddr.
                [8, OFFSET_MISSING, OFFSET_MISSING],
                [8, OFFSET_MISSING, OFFSET_MISSING],
                [8, OFFSET_MISSING, OFFSET_MISSING],
                // kfree_skb read without its reason (the record of kernels before 5.17).
                [8, 16, OFFSET_MISSING],
            ],
        }
    }

    #[test]
    fn resolves_everything_on_the_fixture() {
        let report = resolve_offsets(fixture::btf(), Some(&fixtures::linux_6_18()));
        assert_eq!(report.missing, []);
        assert_eq!(report.offsets, expected_6_18());
    }

    #[test]
    fn without_formats_only_the_records_are_missing() {
        let report = resolve_offsets(fixture::btf(), NO_FORMATS);
        assert_eq!(report.missing.len(), 1);
        assert_eq!(report.missing[0].0, "tracepoint formats");
        let expected = KernelOffsets {
            fib4: RouteRecordFields::MISSING,
            fib6: RouteRecordFields::MISSING,
            tracepoint_args: KernelOffsets::MISSING.tracepoint_args,
            ..expected_6_18()
        };
        assert_eq!(report.offsets, expected);
    }

    /// 5.10's route records name the device as `__data_loc char[] name` (fib: the locator at
    /// 60, fib6: at 68, as Debian 11's 5.10.0-43 format files list them): followed, not refused.
    #[test]
    fn route_device_names_behind_a_data_loc() {
        let fib = fixtures::FIB_TABLE_LOOKUP_6_18.replace(
            "field:char name[16];\toffset:60;\tsize:16;\tsigned:0;",
            "field:__data_loc char[] name;\toffset:60;\tsize:4;\tsigned:0;",
        );
        assert_ne!(fib, fixtures::FIB_TABLE_LOOKUP_6_18);
        let formats = fixtures::linux_6_18().with("fib", "fib_table_lookup", &fib);
        let report = resolve_offsets(fixture::btf(), Some(&formats));
        assert_eq!(report.missing, []);
        assert_eq!(report.offsets.fib4.name, 60);
        assert_eq!(report.offsets.fib4.name_dynamic, 1);
        assert_eq!(
            report.offsets.fib6.name_dynamic, 0,
            "6.18's fib6 record is inline"
        );
        // Any other dynamic field is still refused.
        let src = fib.replace(
            "field:__u8 src[4];\toffset:28;\tsize:4;\tsigned:0;",
            "field:__data_loc char[] src;\toffset:28;\tsize:4;\tsigned:0;",
        );
        assert_ne!(src, fib);
        let formats = fixtures::linux_6_18().with("fib", "fib_table_lookup", &src);
        let report = resolve_offsets(fixture::btf(), Some(&formats));
        assert_eq!(report.offsets.fib4, RouteRecordFields::MISSING);
    }

    /// 6.1's kfree_skb record: the reason is read at 28, not 36.
    #[test]
    fn kfree_skb_on_6_1() {
        let formats = fixtures::linux_6_18().with("skb", "kfree_skb", fixtures::KFREE_SKB_6_1);
        let report = resolve_offsets(fixture::btf(), Some(&formats));
        assert_eq!(report.missing, []);
        assert_eq!(
            report.offsets.tracepoint_args[ClassicTracepoint::KfreeSkb as usize],
            [8, 16, 28]
        );
    }

    /// A kernel without a tracepoint, without a field (kfree_skb before 5.17 had no
    /// `reason`), with a field of another width, or with a broken route record: each is
    /// reported and only it stays missing.
    #[test]
    fn missing_events_and_fields_are_reported_not_fatal() {
        let no_reason = fixtures::KFREE_SKB_6_18
            .lines()
            .filter(|line| !line.contains(" reason;"))
            .collect::<Vec<_>>()
            .join("\n");
        let narrow_ret = fixtures::SOCK_SEND_LENGTH_6_18.replace(
            "int ret;\toffset:20;\tsize:4;",
            "short ret;\toffset:20;\tsize:2;",
        );
        let no_dport = fixtures::FIB_TABLE_LOOKUP_6_18.replace("u16 dport;", "u16 dst_port;");
        let mut formats = FormatTexts::new();
        for (group, event, text) in [
            ("skb", "kfree_skb", no_reason.as_str()),
            ("net", "net_dev_queue", fixtures::NET_DEV_QUEUE_6_18),
            ("net", "netif_receive_skb", fixtures::NETIF_RECEIVE_SKB_6_18),
            ("skb", "consume_skb", fixtures::CONSUME_SKB_6_18),
            ("sock", "sock_send_length", narrow_ret.as_str()),
            ("sock", "sock_recv_length", fixtures::SOCK_RECV_LENGTH_6_18),
            ("sock", "sk_data_ready", fixtures::SK_DATA_READY_6_18),
            ("fib", "fib_table_lookup", no_dport.as_str()),
            (
                "fib6",
                "fib6_table_lookup",
                fixtures::FIB6_TABLE_LOOKUP_6_18,
            ),
        ] {
            formats = formats.with(group, event, text);
        }
        let report = resolve_offsets(fixture::btf(), Some(&formats));
        let missing: Vec<(&str, &str)> = report
            .missing
            .iter()
            .map(|(what, why)| (what.as_str(), why.as_str()))
            .collect();
        assert_eq!(
            missing,
            [
                ("skb:kfree_skb.reason", "not in the format file"),
                ("icmp:icmp_send", "no format for icmp:icmp_send"),
                (
                    "sock:sock_send_length.ret",
                    "is 2 bytes here, udptrace reads 4"
                ),
                (
                    "fib:fib_table_lookup",
                    "field `dport` not in the format file"
                ),
            ]
        );
        let args = report.offsets.tracepoint_args;
        assert_eq!(
            args[ClassicTracepoint::KfreeSkb as usize],
            [8, 16, OFFSET_MISSING]
        );
        // What the drop programs of such kernels read instead: the record without reason.
        assert_eq!(
            args[ClassicTracepoint::KfreeSkbNoReason as usize],
            [8, 16, OFFSET_MISSING]
        );
        assert_eq!(
            args[ClassicTracepoint::IcmpSend as usize],
            [OFFSET_MISSING; 3]
        );
        assert_eq!(
            args[ClassicTracepoint::SockSendLength as usize],
            [8, OFFSET_MISSING, 24]
        );
        assert_eq!(report.offsets.fib4, RouteRecordFields::MISSING);
        assert_eq!(report.offsets.fib6, expected_6_18().fib6);
        // The struct members are untouched by all this.
        assert_eq!(report.offsets.skb_dev, 16);
    }

    #[test]
    fn dynamic_fields_are_not_read_as_plain_ones() {
        let fields = crate::kernel::tracefs::parse_format(fixtures::NET_DEV_QUEUE_6_18);
        let error = checked_field(&fields, "name", 4).unwrap_err();
        assert_eq!(
            error,
            FieldError::Dynamic {
                type_name: "__data_loc char[]".into()
            }
        );
        assert_eq!(error.to_string(), "is a dynamic array (__data_loc char[])");
    }

    /// The running kernel, read live from /sys/kernel/btf/vmlinux (present wherever udptrace
    /// runs): every member resolves as on the fixture's kernel, and when the live BTF is the
    /// fixture's own (this development machine) every offset is the fixture's.
    #[test]
    fn the_live_kernel_against_the_fixture() {
        let live_bytes = std::fs::read(Btf::SYS_FS_PATH).expect("read /sys/kernel/btf/vmlinux");
        let live = resolve_offsets(&Btf::from_bytes(&live_bytes).unwrap(), NO_FORMATS);
        let saved = resolve_offsets(fixture::btf(), NO_FORMATS);
        assert_eq!(live.missing, saved.missing);
        if live_bytes == fixture::bytes() {
            assert_eq!(live.offsets, saved.offsets);
        } else {
            eprintln!(
                "live BTF differs from the fixture's kernel; live offsets: {:?}",
                live.offsets
            );
        }
    }

    /// The live tracefs as well (mounting it if needed, as udptrace does). On the fixture's
    /// kernel everything resolves, to the same offsets as from the saved format files; on
    /// another kernel only tracepoint records may be missing (older kernels lack some events).
    #[test]
    fn the_live_tracefs() {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("not root: tracefs is covered by tracefs::tests::live_tracefs");
            return;
        }
        let tracefs = Tracefs::find_or_mount().expect("tracefs as root");
        let live_bytes = std::fs::read(Btf::SYS_FS_PATH).expect("read /sys/kernel/btf/vmlinux");
        let live = resolve_offsets(&Btf::from_bytes(&live_bytes).unwrap(), Some(&tracefs));
        if live_bytes == fixture::bytes() {
            assert_eq!(live.missing, []);
            assert_eq!(live.offsets, expected_6_18());
        } else {
            let not_records: Vec<_> = live
                .missing
                .iter()
                .filter(|(what, _)| !what.contains(':'))
                .collect();
            assert_eq!(not_records, [] as [&(String, String); 0]);
        }
    }

    /// x86-64 from 6.2 to 6.14 keeps the preempt count in `struct pcpu_hot` (arch/x86/
    /// include/asm/current.h); a kernel with neither variable leaves it missing, named.
    #[test]
    fn the_preempt_count_is_found_in_pcpu_hot_and_reported_missing_otherwise() {
        use crate::kernel::btf::BlobWriter;
        const INT: u32 = 1;
        const PTR: u32 = 2;
        const STRUCT: u32 = 4;
        const VAR: u32 = 14;
        const DATASEC: u32 = 15;
        let mut blob = BlobWriter::new();
        let int = blob.add(INT, false, "int", 0, 4, &[32]);
        let pointer = blob.add(PTR, false, "", 0, int, &[]);
        let (current, preempt) = (blob.name("current_task"), blob.name("preempt_count"));
        // Members: name, type, bit offset.
        let hot = blob.add(
            STRUCT,
            false,
            "pcpu_hot",
            2,
            64,
            &[current, pointer, 0, preempt, int, 64],
        );
        let rq = blob.add(STRUCT, false, "rq", 0, 3584, &[]);
        let hot_var = blob.add(VAR, false, "pcpu_hot", 0, hot, &[1]);
        let rq_var = blob.add(VAR, false, "runqueues", 0, rq, &[1]);
        blob.add(
            DATASEC,
            false,
            ".data..percpu",
            2,
            0x3000,
            &[hot_var, 0x100, 64, rq_var, 0x2000, 3584],
        );
        let btf = Btf::from_bytes(&blob.bytes()).unwrap();
        let report = resolve_offsets(&btf, NO_FORMATS);
        assert_eq!(report.offsets.percpu_runqueues, 0x2000);
        assert_eq!(report.offsets.percpu_preempt_count, 0x108);
        assert!(
            !report
                .missing
                .iter()
                .any(|(name, _)| name.starts_with("per-CPU")),
            "{:?}",
            report.missing
        );

        let mut bare = BlobWriter::new();
        bare.add(INT, false, "int", 0, 4, &[32]);
        let report = resolve_offsets(&Btf::from_bytes(&bare.bytes()).unwrap(), NO_FORMATS);
        assert_eq!(report.offsets.percpu_preempt_count, OFFSET_MISSING);
        let missing: Vec<&str> = report
            .missing
            .iter()
            .filter(|(name, _)| name.starts_with("per-CPU"))
            .map(|(_, why)| why.as_str())
            .collect();
        assert_eq!(
            missing,
            [
                "no .data..percpu section in BTF",
                "no .data..percpu section in BTF"
            ]
        );
    }
}
