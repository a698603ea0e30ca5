//! Raw ring-buffer records → domain events. Nothing above this module knows a kernel layout;
//! nothing below it knows about output. Keep in sync with `udptrace-common/src/event.rs`.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use udptrace_common::event::{
    AF_INET, AF_INET6, Event, EventDetail, EventKind, FLAG_CONNECTED, FLAG_CONNTRACK,
    FLAG_FRAGMENT, FLAG_PKTINFO, FLAG_ROUTE_INPUT, FLAG_SEND_CALL, FLAG_STACK, FLAG_TRACKED,
    Mechanism, PacketHeader, Tuple,
};

use crate::{
    clock::WallClock,
    containers::Container,
    flows::rule::KnownReason,
    model::{
        Conntrack, DropReason, Endpoints, Errno, Family, IpFragment, Location, PacketBytes, Probe,
        Process, RouteDevice, RouteDirection, SendCall, Skb, SocketErrno, SocketInfo, TraceEvent,
        What,
    },
    sanitize::sanitize_kernel_string,
};

/// Why a record could not be decoded (counted, never fatal).
#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than an `Event`: a mismatched or corrupted record.
    Short(usize),
    /// Written by a different layout version.
    Version(u8),
    /// Unknown event kind.
    Kind(u8),
}

impl std::error::Error for DecodeError {}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Short(len) => write!(f, "record of {len} bytes is shorter than an event"),
            Self::Version(version) => write!(f, "record has layout version {version}"),
            Self::Kind(kind) => write!(f, "record has unknown kind {kind}"),
        }
    }
}

/// Turns kernel numbers into names: drop reasons, code addresses, socket owners.
pub trait KernelNames {
    fn drop_reason(&self, value: u32) -> DropReason;
    /// Whether drop reasons are inferred by udptrace (kernels before 5.17).
    fn reasons_inferred(&self) -> bool;
    /// `symbol+0xoff` of a kernel code address, when /proc/kallsyms shows it.
    fn symbol(&self, address: u64) -> Option<String>;
    /// The process holding the socket with this inode, if one does.
    fn socket_owner(&self, inode: u64) -> Option<Process>;
    /// Name of a network namespace (/run/netns name, its container's, or `pid:comm` of a
    /// process in it).
    fn netns_name(&self, inode: u32) -> Option<String>;
    /// The kernel call stack `--stack` collected under `id`, innermost frame first, as
    /// `symbol+0xoff` (the address when kallsyms does not name it).
    fn stack(&self, id: u32) -> Option<Vec<String>>;
    /// The container a network namespace belongs to.
    fn container(&self, inode: u32) -> Option<Container>;
}

/// Reassembly timeouts, which Linux 6.1 frees without a reason (NOT_SPECIFIED) and later
/// kernels as FRAG_REASM_TIMEOUT, by the function that frees them: `ip_expire`
/// (net/ipv4/ip_fragment.c: `kfree_skb(head)` after ICMP time exceeded), and for IPv6 the
/// callers `ip6frag_expire_frag_queue` (include/net/ipv6_frag.h) is inlined into,
/// `ip6_frag_expire` (net/ipv6/reassembly.c) and `nf_ct_frag6_expire`
/// (net/ipv6/netfilter/nf_conntrack_reasm.c).
const REASSEMBLY_EXPIRED: [&str; 3] = ["ip_expire+", "ip6_frag_expire+", "nf_ct_frag6_expire+"];

/// The name later kernels give a drop this one freed without a reason at `location` (shown
/// inferred, as the reasons of kernels before 5.17 are), so that it reads and is judged alike
/// on every kernel.
fn named_later(reason: &DropReason, location: &Location) -> Option<&'static str> {
    let Location::Symbol(symbol) = location else {
        return None;
    };
    (reason.is("NOT_SPECIFIED")
        && REASSEMBLY_EXPIRED
            .iter()
            .any(|function| symbol.starts_with(function)))
    .then_some("FRAG_REASM_TIMEOUT")
}

impl SendCall {
    fn of(detail: &EventDetail) -> Option<Self> {
        (detail.flags & FLAG_SEND_CALL != 0).then_some(Self {
            pktinfo: detail.flags & FLAG_PKTINFO != 0,
            connected: detail.flags & FLAG_CONNECTED != 0,
        })
    }
}

/// Decodes one ring-buffer record.
pub fn decode(
    bytes: &[u8],
    names: &dyn KernelNames,
    clock: &WallClock,
) -> Result<TraceEvent, DecodeError> {
    if bytes.len() < size_of::<Event>() {
        return Err(DecodeError::Short(bytes.len()));
    }
    // SAFETY: length checked; Event is plain #[repr(C)] data valid for any bytes;
    // read_unaligned because ring records are only 8-byte aligned by contract, not by type.
    let event: Event = unsafe { bytes.as_ptr().cast::<Event>().read_unaligned() };
    let header = &event.header;
    if header.version != udptrace_common::event::EVENT_VERSION {
        return Err(DecodeError::Version(header.version));
    }
    let kind = EventKind::from_u8(header.kind).ok_or(DecodeError::Kind(header.kind))?;
    let detail = &event.detail;
    let what = match kind {
        EventKind::Drop => {
            let location = names
                .symbol(detail.location)
                .map_or(Location::Address(detail.location), Location::Symbol);
            let reason = names.drop_reason(detail.reason);
            // Only a drop on the way out has a transmit queue; on a received skb the field
            // holds the receive queue plus one (`skb_record_rx_queue`, include/linux/skbuff.h).
            // `QUEUE_UNKNOWN` (not read) is no u16.
            let txq = (KnownReason::of_drop(&reason, &location) == Some(KnownReason::TxQueue))
                .then(|| u16::try_from(detail.queue_mapping).ok())
                .flatten();
            match named_later(&reason, &location) {
                Some(name) => What::Drop {
                    reason: DropReason::named(name),
                    reason_inferred: true,
                    location,
                    txq,
                },
                None => What::Drop {
                    reason,
                    reason_inferred: names.reasons_inferred(),
                    location,
                    txq,
                },
            }
        }
        EventKind::IcmpError => What::Icmp {
            icmp_type: detail.icmp_type,
            icmp_code: detail.icmp_code,
            meaning: icmp_meaning(event.tuple.family, detail.icmp_type, detail.icmp_code).into(),
            mtu: (detail.bytes != 0).then_some(detail.bytes),
        },
        EventKind::SockError => What::SockError {
            error: SocketErrno(errno(detail.error as i32)),
        },
        EventKind::SendError => What::SendError {
            error: SocketErrno(errno(detail.error as i32)),
            call: SendCall::of(detail),
        },
        EventKind::RecvError => What::RecvError {
            error: SocketErrno(errno(detail.error as i32)),
        },
        EventKind::Send => What::Send {
            bytes: detail.bytes,
            socket: socket_info(detail, names),
            call: SendCall::of(detail),
        },
        EventKind::Route => What::Route {
            direction: if detail.flags & FLAG_ROUTE_INPUT != 0 {
                RouteDirection::Input
            } else {
                RouteDirection::Output
            },
            device: RouteDevice(non_empty(sanitize_kernel_string(&detail.route_dev))),
            table: detail.route_table,
            error: (detail.route_err != 0).then(|| errno(detail.route_err)),
        },
        EventKind::Xmit => What::Xmit,
        EventKind::Recv => What::Recv,
        EventKind::Deliver => What::Deliver {
            socket: socket_info(detail, names),
        },
        EventKind::Connect => What::Connect {
            socket: socket_info(detail, names),
            error: (detail.error != 0).then(|| errno(detail.error as i32)),
        },
        EventKind::Lookup => What::Lookup {
            socket: (detail.sock.family != 0).then(|| socket_info(detail, names)),
        },
    };
    let (saddr, daddr) = addresses(&event.tuple);
    Ok(TraceEvent {
        time: clock.at(header.ts_ns),
        ts_ns: header.ts_ns,
        what,
        probe: Probe(Mechanism::from_u8(header.mechanism)),
        netns: header.netns,
        netns_name: names.netns_name(header.netns),
        container: names.container(header.netns).map(Box::new),
        ifindex: (header.ifindex != 0).then_some(header.ifindex),
        ifname: non_empty(sanitize_kernel_string(&header.ifname)),
        process: (header.pid != 0).then(|| Process {
            pid: header.pid,
            comm: sanitize_kernel_string(&header.comm),
        }),
        skb: (header.skb != 0).then_some(Skb(header.skb)),
        tracked: detail.flags & FLAG_TRACKED != 0,
        escalated: false,
        hops_untraced: false,
        conntrack: (detail.flags & FLAG_CONNTRACK != 0).then(|| Conntrack {
            original: endpoints(&detail.ct_original),
            reply: endpoints(&detail.ct_reply),
            status: detail.ct_status,
        }),
        fragment: (detail.flags & FLAG_FRAGMENT != 0).then(|| IpFragment {
            id: detail.fragment.id,
            offset: detail.fragment.offset,
            ip_len: detail.fragment.ip_len,
            datagram_len: (detail.fragment.datagram_len != 0)
                .then_some(detail.fragment.datagram_len),
            more: detail.fragment.more != 0,
        }),
        family: if event.tuple.family == AF_INET6 {
            Family::Ipv6
        } else {
            Family::Ipv4
        },
        saddr,
        sport: event.tuple.sport,
        daddr,
        dport: event.tuple.dport,
        packet: packet(&bytes[size_of::<Event>()..]),
        stack: if detail.flags & FLAG_STACK == 0 {
            None
        } else {
            names.stack(detail.stack_id).map(Box::new)
        },
    })
}

/// The packet bytes after an event in its record (`udptrace-common`'s `Captured`), if any.
fn packet(rest: &[u8]) -> Option<Arc<PacketBytes>> {
    let data = rest.get(size_of::<PacketHeader>()..)?;
    // SAFETY: length checked by `get`; PacketHeader is plain #[repr(C)] data.
    let header: PacketHeader = unsafe { rest.as_ptr().cast::<PacketHeader>().read_unaligned() };
    let data = data.get(..header.caplen as usize)?;
    Some(Arc::new(PacketBytes {
        len: header.len,
        data: data.to_vec(),
    }))
}

/// An errno the kernel reported, positive or negative.
fn errno(value: i32) -> Errno {
    Errno(value.unsigned_abs())
}

fn socket_info(detail: &EventDetail, names: &dyn KernelNames) -> SocketInfo {
    let (local, peer) = addresses(&detail.sock);
    SocketInfo {
        local: SocketAddr::new(local, detail.sock.sport),
        peer: (detail.sock.dport != 0).then(|| SocketAddr::new(peer, detail.sock.dport)),
        inode: detail.sock_ino,
        owner: names.socket_owner(detail.sock_ino),
    }
}

/// A kernel tuple as the endpoints of its direction.
fn endpoints(tuple: &Tuple) -> Endpoints {
    let (saddr, daddr) = addresses(tuple);
    Endpoints {
        src: SocketAddr::new(saddr, tuple.sport),
        dst: SocketAddr::new(daddr, tuple.dport),
    }
}

fn non_empty(text: String) -> Option<String> {
    (!text.is_empty()).then_some(text)
}

/// The tuple's addresses as `IpAddr`s (IPv4 in the first 4 bytes).
pub fn addresses(tuple: &Tuple) -> (IpAddr, IpAddr) {
    let to_ip = |bytes: &[u8; 16]| -> IpAddr {
        if tuple.family == AF_INET {
            IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
        } else {
            IpAddr::V6(Ipv6Addr::from(*bytes))
        }
    };
    (to_ip(&tuple.saddr), to_ip(&tuple.daddr))
}

/// Names of ICMP/ICMPv6 errors (RFC 792, RFC 4443) in the words `ping`/`tcpdump` use.
pub fn icmp_meaning(family: u8, icmp_type: u8, code: u8) -> &'static str {
    if family == AF_INET6 {
        match (icmp_type, code) {
            (1, 0) => "no-route",
            (1, 1) => "admin-prohibited",
            (1, 3) => "address-unreachable",
            (1, 4) => "port-unreachable",
            (1, 5) => "source-address-failed-policy",
            (1, 6) => "reject-route",
            (1, _) => "destination-unreachable",
            (2, _) => "packet-too-big",
            (3, _) => "time-exceeded",
            (4, _) => "parameter-problem",
            _ => "other",
        }
    } else {
        match (icmp_type, code) {
            (3, 0) => "net-unreachable",
            (3, 1) => "host-unreachable",
            (3, 2) => "protocol-unreachable",
            (3, 3) => "port-unreachable",
            (3, 4) => "fragmentation-needed",
            (3, 9 | 10 | 13) => "admin-prohibited",
            (3, _) => "destination-unreachable",
            (11, _) => "time-exceeded",
            (12, _) => "parameter-problem",
            _ => "other",
        }
    }
}

#[cfg(test)]
mod tests {
    use udptrace_common::event::{EVENT_VERSION, EventDetail, EventHeader, Fragment, IPPROTO_UDP};

    use super::*;

    struct Names;
    impl KernelNames for Names {
        fn drop_reason(&self, value: u32) -> DropReason {
            DropReason {
                name: match value {
                    3 => "NO_SOCKET".into(),
                    4 => "QDISC_DROP".into(),
                    _ => format!("UNKNOWN({value})"),
                },
                value: Some(value),
            }
        }
        fn reasons_inferred(&self) -> bool {
            false
        }
        fn symbol(&self, address: u64) -> Option<String> {
            (address == 0xffff_ffff_8100_0010).then(|| "__udp4_lib_rcv+0x10".into())
        }
        fn socket_owner(&self, inode: u64) -> Option<Process> {
            (inode == 77).then(|| Process {
                pid: 1234,
                comm: "nc".into(),
            })
        }
        fn netns_name(&self, inode: u32) -> Option<String> {
            (inode == 4_026_531_840).then(|| "client".into())
        }
        fn stack(&self, id: u32) -> Option<Vec<String>> {
            (id == 5).then(|| vec!["__udp4_lib_rcv+0x10".into(), "udp_rcv+0x1c".into()])
        }
        fn container(&self, _inode: u32) -> Option<Container> {
            None
        }
    }

    fn raw(event: &Event) -> Vec<u8> {
        // SAFETY: Event is plain data; viewing it as bytes is what the ring buffer does.
        unsafe {
            std::slice::from_raw_parts(std::ptr::from_ref(event).cast::<u8>(), size_of::<Event>())
        }
        .to_vec()
    }

    fn drop_event() -> Event {
        let mut ifname = [0u8; 16];
        ifname[..5].copy_from_slice(b"veth0");
        let mut saddr = [0u8; 16];
        saddr[..4].copy_from_slice(&[192, 0, 2, 1]);
        let mut daddr = [0u8; 16];
        daddr[..4].copy_from_slice(&[192, 0, 2, 2]);
        Event {
            header: EventHeader {
                kind: EventKind::Drop as u8,
                version: EVENT_VERSION,
                mechanism: Mechanism::TpBtf as u8,
                ts_ns: 1_000,
                skb: 0xffff_8880_0000_1000,
                netns: 4_026_531_840,
                ifindex: 7,
                ifname,
                ..EventHeader::default()
            },
            tuple: Tuple {
                family: AF_INET,
                proto: IPPROTO_UDP,
                sport: 40_000,
                dport: 4_000,
                saddr,
                daddr,
                ..Tuple::default()
            },
            detail: EventDetail {
                location: 0xffff_ffff_8100_0010,
                reason: 3,
                ..EventDetail::default()
            },
        }
    }

    #[test]
    fn decodes_a_drop() {
        let clock = WallClock::fixed(0);
        let event = decode(&raw(&drop_event()), &Names, &clock).unwrap();
        assert_eq!(
            event.what,
            What::Drop {
                reason: DropReason::named("NO_SOCKET"),
                reason_inferred: false,
                location: Location::Symbol("__udp4_lib_rcv+0x10".into()),
                txq: None,
            }
        );
        assert_eq!(event.saddr.to_string(), "192.0.2.1");
        assert_eq!(event.daddr.to_string(), "192.0.2.2");
        assert_eq!((event.sport, event.dport), (40_000, 4_000));
        assert_eq!(event.ifname.as_deref(), Some("veth0"));
        assert_eq!(event.process, None, "softirq events claim no process");
        assert_eq!(event.probe, Probe(Some(Mechanism::TpBtf)));
        assert_eq!(event.skb, Some(Skb(0xffff_8880_0000_1000)));
        assert_eq!(event.drop_reason().and_then(|r| r.value), Some(3));
    }

    #[test]
    fn a_drop_on_the_way_out_names_its_transmit_queue_and_others_none() {
        let clock = WallClock::fixed(0);
        let txq = |reason, queue_mapping| {
            let mut event = drop_event();
            event.detail.reason = reason;
            event.detail.queue_mapping = queue_mapping;
            let What::Drop { txq, .. } = decode(&raw(&event), &Names, &clock).unwrap().what else {
                panic!("a drop");
            };
            txq
        };
        assert_eq!(txq(4, 3), Some(3));
        // Not read (no BTF member): nothing to show.
        assert_eq!(txq(4, udptrace_common::event::QUEUE_UNKNOWN), None);
        // A received datagram's field is its receive queue plus one: not shown.
        assert_eq!(txq(3, 2), None);
    }

    #[test]
    fn a_reassembly_timeout_without_a_reason_is_named_as_later_kernels_do() {
        struct Linux61;
        impl KernelNames for Linux61 {
            fn drop_reason(&self, value: u32) -> DropReason {
                DropReason {
                    name: ["NOT_DROPPED_YET", "NOT_SPECIFIED", "NO_SOCKET"][value as usize].into(),
                    value: Some(value),
                }
            }
            fn reasons_inferred(&self) -> bool {
                false
            }
            fn symbol(&self, address: u64) -> Option<String> {
                match address {
                    0xffff_ffff_8100_0010 => Some("ip_expire+0x1b7".into()),
                    0xffff_ffff_8100_0020 => Some("ip6_frag_expire+0x1e1".into()),
                    0xffff_ffff_8100_0030 => Some("ip_expired_elsewhere+0x10".into()),
                    _ => None,
                }
            }
            fn socket_owner(&self, _inode: u64) -> Option<Process> {
                None
            }
            fn netns_name(&self, _inode: u32) -> Option<String> {
                None
            }
            fn stack(&self, _id: u32) -> Option<Vec<String>> {
                None
            }
            fn container(&self, _inode: u32) -> Option<Container> {
                None
            }
        }
        let clock = WallClock::fixed(0);
        let decoded = |location, reason| {
            let mut event = drop_event();
            event.detail.location = location;
            event.detail.reason = reason;
            decode(&raw(&event), &Linux61, &clock).unwrap()
        };
        for location in [0xffff_ffff_8100_0010, 0xffff_ffff_8100_0020] {
            let What::Drop {
                reason,
                reason_inferred,
                ..
            } = decoded(location, 1).what
            else {
                panic!("a drop");
            };
            assert_eq!(reason, DropReason::named("FRAG_REASM_TIMEOUT"));
            assert!(reason_inferred, "marked: the kernel gave none");
        }
        // Another reason at the same place, NOT_SPECIFIED elsewhere (even under a name that
        // starts alike) or at an address kallsyms does not name: as the kernel said.
        for (location, reason, name) in [
            (0xffff_ffff_8100_0010, 2, "NO_SOCKET"),
            (0xffff_ffff_8100_0030, 1, "NOT_SPECIFIED"),
            (0xffff_ffff_8100_0040, 1, "NOT_SPECIFIED"),
        ] {
            assert_eq!(
                decoded(location, reason).drop_reason(),
                Some(&DropReason::named(name)),
                "{location:#x}"
            );
        }
    }

    #[test]
    fn a_collected_stack_is_named_and_an_absent_one_is_none() {
        let clock = WallClock::fixed(0);
        let mut event = drop_event();
        event.detail.stack_id = 5;
        assert_eq!(decode(&raw(&event), &Names, &clock).unwrap().stack, None);
        event.detail.flags |= FLAG_STACK;
        assert_eq!(
            decode(&raw(&event), &Names, &clock).unwrap().stack,
            Some(Box::new(vec![
                "__udp4_lib_rcv+0x10".into(),
                "udp_rcv+0x1c".into()
            ]))
        );
    }

    #[test]
    fn packet_bytes_after_the_event_are_its_packet() {
        let clock = WallClock::fixed(0);
        let bare = decode(&raw(&drop_event()), &Names, &clock).unwrap();
        assert_eq!(bare.packet, None, "a bare event has no packet");
        let mut record = raw(&drop_event());
        let header = PacketHeader { len: 51, caplen: 3 };
        // SAFETY: PacketHeader is plain data.
        record.extend_from_slice(unsafe {
            std::slice::from_raw_parts(
                std::ptr::from_ref(&header).cast::<u8>(),
                size_of::<PacketHeader>(),
            )
        });
        record.extend_from_slice(&[0x45, 0, 0]);
        let event = decode(&record, &Names, &clock).unwrap();
        assert_eq!(
            event.packet.as_deref(),
            Some(&PacketBytes {
                len: 51,
                data: vec![0x45, 0, 0]
            })
        );
        // A record shorter than the bytes its header announces: no packet, the event stays.
        record.pop();
        let event = decode(&record, &Names, &clock).unwrap();
        assert_eq!((event.packet, event.sport), (None, 40_000));
    }

    #[test]
    fn rejects_short_and_foreign_records() {
        let clock = WallClock::fixed(0);
        let bytes = raw(&drop_event());
        assert_eq!(
            decode(&bytes[..10], &Names, &clock),
            Err(DecodeError::Short(10))
        );
        let mut event = drop_event();
        event.header.version = EVENT_VERSION + 1;
        assert_eq!(
            decode(&raw(&event), &Names, &clock),
            Err(DecodeError::Version(EVENT_VERSION + 1))
        );
        let mut event = drop_event();
        event.header.kind = 200;
        assert_eq!(
            decode(&raw(&event), &Names, &clock),
            Err(DecodeError::Kind(200))
        );
    }

    #[test]
    fn unknown_locations_show_the_address() {
        let clock = WallClock::fixed(0);
        let mut event = drop_event();
        event.detail.location = 0x1234;
        event.detail.reason = 77;
        let decoded = decode(&raw(&event), &Names, &clock).unwrap();
        assert_eq!(
            decoded.what,
            What::Drop {
                reason: DropReason::named("UNKNOWN(77)"),
                reason_inferred: false,
                location: Location::Address(0x1234),
                txq: None,
            }
        );
    }

    #[test]
    fn deliveries_name_the_socket_and_its_owner() {
        let mut event = drop_event();
        event.header.kind = EventKind::Deliver as u8;
        event.detail.sock = Tuple {
            family: AF_INET,
            proto: IPPROTO_UDP,
            sport: 4_000,
            ..Tuple::default()
        };
        event.detail.sock_ino = 77;
        let decoded = decode(&raw(&event), &Names, &WallClock::fixed(0)).unwrap();
        let What::Deliver { socket } = &decoded.what else {
            panic!("not a delivery: {decoded:?}");
        };
        assert_eq!(socket.local, "0.0.0.0:4000".parse().unwrap());
        assert_eq!(socket.peer, None, "an unconnected socket has no peer");
        assert_eq!(
            socket.owner,
            Some(Process {
                pid: 1234,
                comm: "nc".into()
            })
        );
    }

    #[test]
    fn conntrack_and_tracking_flags() {
        let mut event = drop_event();
        event.detail.flags = FLAG_TRACKED | FLAG_CONNTRACK;
        event.detail.ct_original = event.tuple;
        event.detail.ct_reply = Tuple {
            saddr: event.tuple.daddr,
            daddr: [203, 0, 113, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            sport: 4_000,
            dport: 1_024,
            ..event.tuple
        };
        let decoded = decode(&raw(&event), &Names, &WallClock::fixed(0)).unwrap();
        assert!(decoded.tracked);
        let conntrack = decoded.conntrack.unwrap();
        assert_eq!(conntrack.original.src, "192.0.2.1:40000".parse().unwrap());
        assert_eq!(conntrack.original.dst, "192.0.2.2:4000".parse().unwrap());
        assert_eq!(conntrack.reply.src, "192.0.2.2:4000".parse().unwrap());
        assert_eq!(conntrack.reply.dst, "203.0.113.9:1024".parse().unwrap());
    }

    #[test]
    fn fragments_and_their_datagram() {
        let mut event = drop_event();
        assert_eq!(
            decode(&raw(&event), &Names, &WallClock::fixed(0))
                .unwrap()
                .fragment,
            None
        );
        event.detail.flags = FLAG_FRAGMENT;
        event.detail.fragment = Fragment {
            id: 0xbeef,
            offset: 1_480,
            ip_len: 1_068,
            datagram_len: 0,
            more: 0,
            padding: [0; 5],
        };
        let decoded = decode(&raw(&event), &Names, &WallClock::fixed(0)).unwrap();
        assert_eq!(
            decoded.fragment,
            Some(IpFragment {
                id: 0xbeef,
                offset: 1_480,
                ip_len: 1_068,
                datagram_len: None,
                more: false,
            }),
            "a later fragment whose first was not seen: no datagram length"
        );
    }

    #[test]
    fn icmp_names() {
        assert_eq!(icmp_meaning(AF_INET, 3, 3), "port-unreachable");
        assert_eq!(icmp_meaning(AF_INET6, 1, 4), "port-unreachable");
        assert_eq!(icmp_meaning(AF_INET, 3, 13), "admin-prohibited");
    }

    #[test]
    fn ipv6_tuples() {
        let mut event = drop_event();
        event.tuple.family = AF_INET6;
        event.tuple.saddr = "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets();
        let decoded = decode(&raw(&event), &Names, &WallClock::fixed(0)).unwrap();
        assert_eq!(decoded.family, Family::Ipv6);
        assert_eq!(decoded.saddr.to_string(), "2001:db8::1");
    }
}
