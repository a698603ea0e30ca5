//! Fills `KernelOffsets` from the running kernel's BTF and tracefs formats. A field this
//! kernel lacks stays `OFFSET_MISSING` and is reported with the reason; only what reads it is
//! disabled.

use udptrace_common::offsets::{
    ClassicTracepoint, KernelOffsets, OFFSET_MISSING, RouteRecordFields,
};

use super::{
    btf::Btf,
    tracefs::{FormatField, Tracefs},
};

pub struct OffsetReport {
    pub offsets: KernelOffsets,
    /// (field, why it is missing).
    pub missing: Vec<(String, String)>,
}

/// One struct member: where it goes, its BTF path, and the size the programs read it with
/// (`None`: any size, e.g. a nested struct only used as a base).
struct Member {
    set: fn(&mut KernelOffsets) -> &mut u32,
    structure: &'static str,
    path: &'static str,
    size: Option<u32>,
}

const fn member(
    set: fn(&mut KernelOffsets) -> &mut u32,
    structure: &'static str,
    path: &'static str,
    size: Option<u32>,
) -> Member {
    Member {
        set,
        structure,
        path,
        size,
    }
}

/// Every struct member the kernel programs read (udptrace-ebpf/src/kernel.rs).
const MEMBERS: &[Member] = &[
    member(|o| &mut o.skb_head, "sk_buff", "head", Some(8)),
    member(
        |o| &mut o.skb_network_header,
        "sk_buff",
        "network_header",
        Some(2),
    ),
    member(
        |o| &mut o.skb_transport_header,
        "sk_buff",
        "transport_header",
        Some(2),
    ),
    member(|o| &mut o.skb_protocol, "sk_buff", "protocol", Some(2)),
    member(|o| &mut o.skb_dev, "sk_buff", "dev", Some(8)),
    member(|o| &mut o.skb_sk, "sk_buff", "sk", Some(8)),
    member(|o| &mut o.skb_nfct, "sk_buff", "_nfct", Some(8)),
    member(|o| &mut o.dev_ifindex, "net_device", "ifindex", Some(4)),
    member(|o| &mut o.dev_name, "net_device", "name", Some(16)),
    member(|o| &mut o.dev_net, "net_device", "nd_net.net", Some(8)),
    member(|o| &mut o.net_inum, "net", "ns.inum", Some(4)),
    member(
        |o| &mut o.sk_family,
        "sock",
        "__sk_common.skc_family",
        Some(2),
    ),
    member(
        |o| &mut o.sk_daddr,
        "sock",
        "__sk_common.skc_daddr",
        Some(4),
    ),
    member(
        |o| &mut o.sk_rcv_saddr,
        "sock",
        "__sk_common.skc_rcv_saddr",
        Some(4),
    ),
    member(
        |o| &mut o.sk_dport,
        "sock",
        "__sk_common.skc_dport",
        Some(2),
    ),
    member(|o| &mut o.sk_num, "sock", "__sk_common.skc_num", Some(2)),
    member(
        |o| &mut o.sk_v6_daddr,
        "sock",
        "__sk_common.skc_v6_daddr",
        Some(16),
    ),
    member(
        |o| &mut o.sk_v6_rcv_saddr,
        "sock",
        "__sk_common.skc_v6_rcv_saddr",
        Some(16),
    ),
    member(
        |o| &mut o.sk_net,
        "sock",
        "__sk_common.skc_net.net",
        Some(8),
    ),
    member(|o| &mut o.sk_protocol, "sock", "sk_protocol", Some(2)),
    member(|o| &mut o.sk_err, "sock", "sk_err", Some(4)),
    member(|o| &mut o.sk_socket, "sock", "sk_socket", Some(8)),
    member(|o| &mut o.socket_inode, "socket_alloc", "vfs_inode", None),
    member(|o| &mut o.inode_ino, "inode", "i_ino", Some(8)),
    member(|o| &mut o.ct_tuplehash, "nf_conn", "tuplehash", None),
    member(|o| &mut o.ct_status, "nf_conn", "status", Some(8)),
    member(
        |o| &mut o.ct_hash_tuple,
        "nf_conntrack_tuple_hash",
        "tuple",
        None,
    ),
    member(
        |o| &mut o.ct_src_addr,
        "nf_conntrack_tuple",
        "src.u3",
        Some(16),
    ),
    member(
        |o| &mut o.ct_src_port,
        "nf_conntrack_tuple",
        "src.u.all",
        Some(2),
    ),
    member(
        |o| &mut o.ct_l3num,
        "nf_conntrack_tuple",
        "src.l3num",
        Some(2),
    ),
    member(
        |o| &mut o.ct_dst_addr,
        "nf_conntrack_tuple",
        "dst.u3",
        Some(16),
    ),
    member(
        |o| &mut o.ct_dst_port,
        "nf_conntrack_tuple",
        "dst.u.all",
        Some(2),
    ),
    member(
        |o| &mut o.ct_protonum,
        "nf_conntrack_tuple",
        "dst.protonum",
        Some(1),
    ),
    member(|o| &mut o.task_nsproxy, "task_struct", "nsproxy", Some(8)),
    member(|o| &mut o.nsproxy_net, "nsproxy", "net_ns", Some(8)),
];

/// Resolves every offset the programs need.
pub fn resolve_offsets(btf: &Btf, tracefs: Option<&Tracefs>) -> OffsetReport {
    let mut offsets = KernelOffsets::MISSING;
    let mut missing = Vec::new();
    for member in MEMBERS {
        let name = format!("{}.{}", member.structure, member.path);
        match btf.member_offset(member.structure, member.path) {
            Ok(field) if member.size.is_none_or(|size| size == field.size) => {
                *(member.set)(&mut offsets) = field.offset;
            }
            Ok(field) => missing.push((
                name,
                format!(
                    "is {} bytes, udptrace reads {}",
                    field.size,
                    member.size.unwrap_or(0)
                ),
            )),
            Err(error) => missing.push((name, error.to_string())),
        }
    }
    match btf.struct_size("nf_conntrack_tuple_hash") {
        Ok(size) => offsets.ct_tuplehash_size = size,
        Err(error) => missing.push(("sizeof(nf_conntrack_tuple_hash)".into(), error.to_string())),
    }
    let Some(tracefs) = tracefs else {
        missing.push((
            "tracepoint formats".into(),
            "tracefs is not available".into(),
        ));
        return OffsetReport { offsets, missing };
    };
    for tracepoint in ClassicTracepoint::ALL {
        let (group, event) = tracepoint.event();
        match tracefs.format(group, event) {
            Ok(fields) => {
                for (slot, name) in tracepoint.fields().iter().enumerate() {
                    match fields.iter().find(|f| f.name == *name) {
                        Some(field) => {
                            offsets.tracepoint_args[tracepoint as usize][slot] = field.offset;
                        }
                        None => missing.push((
                            format!("{group}:{event}.{name}"),
                            "not in the format file".into(),
                        )),
                    }
                }
            }
            Err(error) => missing.push((format!("{group}:{event}"), error)),
        }
    }
    for (ipv6, (group, event)) in [
        (false, ("fib", "fib_table_lookup")),
        (true, ("fib6", "fib6_table_lookup")),
    ] {
        let fields = match tracefs.format(group, event) {
            Ok(fields) => route_fields(&fields, ipv6),
            Err(error) => Err(error),
        };
        match fields {
            Ok(fields) if ipv6 => offsets.fib6 = fields,
            Ok(fields) => offsets.fib4 = fields,
            Err(error) => missing.push((format!("{group}:{event}"), error)),
        }
    }
    OffsetReport { offsets, missing }
}

/// The route record's fields in `RouteRecordFields` order, checked for the sizes the program
/// reads.
fn route_fields(fields: &[FormatField], ipv6: bool) -> Result<RouteRecordFields, String> {
    let address = if ipv6 { 16 } else { 4 };
    let sizes = [4, 4, 4, 4, 1, address, address, 2, 2, 16];
    let mut offsets = [OFFSET_MISSING; 10];
    for ((name, size), offset) in RouteRecordFields::FIELD_NAMES
        .iter()
        .zip(sizes)
        .zip(offsets.iter_mut())
    {
        let field = fields
            .iter()
            .find(|f| f.name == *name)
            .ok_or_else(|| format!("format has no field `{name}`"))?;
        if field.size != size {
            return Err(format!(
                "field `{name}` is {} bytes, expected {size}",
                field.size
            ));
        }
        *offset = field.offset;
    }
    let [tb_id, err, oif, iif, proto, src, dst, sport, dport, name] = offsets;
    Ok(RouteRecordFields {
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
    use std::io::Read as _;

    use super::*;

    /// This machine's BTF (Linux 6.18), saved so the resolver is tested without root or the
    /// live kernel.
    fn fixture() -> Btf {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/btf/vmlinux-6.18.gz"
        );
        let mut data = Vec::new();
        flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
            .read_to_end(&mut data)
            .unwrap();
        Btf::from_bytes(data).unwrap()
    }

    #[test]
    fn resolves_every_member_on_the_fixture() {
        let report = resolve_offsets(&fixture(), None);
        assert_eq!(
            report.missing,
            [(
                "tracepoint formats".to_owned(),
                "tracefs is not available".to_owned()
            )]
        );
        let o = report.offsets;
        // Cross-checked with `bpftool btf dump file /sys/kernel/btf/vmlinux` on the machine the
        // fixture comes from (members of anonymous unions summed by hand).
        assert_eq!(
            (
                o.skb_dev,
                o.skb_sk,
                o.skb_nfct,
                o.skb_protocol,
                o.skb_transport_header
            ),
            (16, 24, 104, 176, 178)
        );
        assert_eq!((o.skb_network_header, o.skb_head), (180, 192));
        assert_eq!(
            (o.dev_ifindex, o.dev_net, o.dev_name, o.net_inum),
            (224, 264, 280, 176)
        );
        assert_eq!(
            (
                o.sk_daddr,
                o.sk_rcv_saddr,
                o.sk_dport,
                o.sk_num,
                o.sk_family
            ),
            (0, 4, 12, 14, 16)
        );
        assert_eq!((o.sk_net, o.sk_v6_daddr, o.sk_v6_rcv_saddr), (48, 56, 72));
        assert_eq!((o.sk_err, o.sk_socket, o.sk_protocol), (284, 288, 532));
        assert_eq!((o.socket_inode, o.inode_ino), (128, 64));
        assert_eq!(
            (
                o.ct_tuplehash,
                o.ct_tuplehash_size,
                o.ct_hash_tuple,
                o.ct_status
            ),
            (16, 56, 16, 128)
        );
        assert_eq!(
            (
                o.ct_src_addr,
                o.ct_src_port,
                o.ct_l3num,
                o.ct_dst_addr,
                o.ct_dst_port,
                o.ct_protonum
            ),
            (0, 16, 18, 20, 36, 38)
        );
    }

    #[test]
    fn drop_reasons_and_functions_on_the_fixture() {
        let btf = fixture();
        let reasons = super::super::reasons::DropReasons::from_btf(&btf);
        assert_eq!(reasons.name(3), "NO_SOCKET");
        let values = btf.enum_values("skb_drop_reason").unwrap();
        for name in [
            "NETFILTER_DROP",
            "SOCKET_RCVBUFF",
            "UDP_CSUM",
            "IP_RPFILTER",
        ] {
            let full = format!("SKB_DROP_REASON_{name}");
            let (_, value) = values.iter().find(|(n, _)| *n == full).unwrap();
            assert_eq!(reasons.name(*value as u32), name);
        }
        assert!(btf.has_function("udp_sendmsg"));
        assert!(btf.has_function("__udp4_lib_rcv"));
        assert!(!btf.has_function("no_such_function_in_any_kernel"));
    }

    #[test]
    fn errors_instead_of_panics() {
        let btf = fixture();
        assert!(btf.member_offset("sk_buff", "no_such_member").is_err());
        assert!(btf.member_offset("no_such_struct", "x").is_err());
        assert!(btf.member_offset("sk_buff", "head.deeper").is_err());
        // Bitfields cannot be read as bytes.
        assert!(btf.member_offset("sk_buff", "pkt_type").is_err());
        for len in [0, 3, 24, 100, 4096] {
            let mut data = btf.data_prefix(len);
            assert!(Btf::from_bytes(data.clone()).is_err(), "truncated to {len}");
            data.iter_mut().skip(24).for_each(|b| *b = 0xff);
            let _ = Btf::from_bytes(data);
        }
    }

    #[test]
    fn the_live_kernel_matches_the_fixture_machine_or_resolves_fully() {
        let live = Btf::from_sys_fs().expect("/sys/kernel/btf/vmlinux");
        let report = resolve_offsets(&live, None);
        assert_eq!(report.missing.len(), 1, "{:?}", report.missing);
    }

    #[test]
    fn route_records_need_every_field() {
        let fields = super::super::tracefs::parse_format(
            "\tfield:u32 tb_id;\toffset:8;\tsize:4;\tsigned:0;\n",
        );
        assert!(route_fields(&fields, false).unwrap_err().contains("`err`"));
    }
}
