//! Raw ring-buffer records → domain events. Nothing above this module knows a kernel layout;
//! nothing below it knows about output. Keep in sync with `udptrace-common/src/event.rs`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;
use udptrace_common::event::{
    AF_INET, AF_INET6, Event, EventDetail, EventKind, FLAG_CONNECTED, FLAG_CONNTRACK, FLAG_PKTINFO,
    FLAG_ROUTE_INPUT, FLAG_SEND_CALL, FLAG_TRACKED, Mechanism, Tuple,
};

use crate::{clock::WallClock, sanitize::sanitize_kernel_string};

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

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Short(len) => write!(f, "record of {len} bytes is shorter than an event"),
            Self::Version(version) => write!(f, "record has layout version {version}"),
            Self::Kind(kind) => write!(f, "record has unknown kind {kind}"),
        }
    }
}

/// Turns kernel numbers into names: drop reasons, code addresses, errnos.
pub trait KernelNames {
    fn drop_reason(&self, value: u32) -> String;
    fn symbol(&self, address: u64) -> Option<String>;
    /// Owner (pid, comm) of the socket with this inode, if a process holds it.
    fn socket_owner(&self, inode: u64) -> Option<(u32, String)>;
    /// Name of a network namespace (/run/netns name, or `pid:comm` of a process in it).
    fn netns_name(&self, inode: u32) -> Option<String>;
}

/// What happened, with the fields that only that kind has.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum What {
    /// A UDP datagram was freed with a drop reason.
    Drop {
        /// `enum skb_drop_reason` name without `SKB_DROP_REASON_`.
        reason: String,
        /// Where in the kernel (`symbol+0xoff`, or the raw address when symbols are hidden).
        location: String,
    },
    /// An ICMP error was sent about the datagram in `src`/`dst`.
    Icmp {
        icmp_type: u8,
        icmp_code: u8,
        /// e.g. `port-unreachable`.
        meaning: &'static str,
    },
    /// An error was reported to a socket (`sk_err`); `src` is the socket's local address,
    /// `dst` its connected peer.
    SockError { errno: String, code: u32 },
    /// A send on a UDP socket failed.
    SendError {
        errno: String,
        code: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        call: Option<SendCall>,
    },
    /// A receive on a UDP socket failed.
    RecvError { errno: String, code: u32 },
    /// A UDP send returned. From a function probe on `udp_sendmsg` (`call` set): `dst` is the
    /// destination asked for and `src` the socket's local address, or the source the caller
    /// asked for with `IP_PKTINFO`. From the `sock_send_length` tracepoint: `src`/`dst` are the
    /// socket's local address and connected peer (`0.0.0.0:0` when unconnected: the destination
    /// then shows in the `route` and `xmit` events of the datagram).
    Send {
        bytes: u32,
        socket: SocketInfo,
        #[serde(skip_serializing_if = "Option::is_none")]
        call: Option<SendCall>,
    },
    /// A route lookup for the flow `src > dst` (source `0.0.0.0`/`::` when the kernel is to
    /// choose it: the address it chose is the source of the `xmit` that follows).
    Route {
        /// `output` for locally sent datagrams, `input` for received ones.
        direction: &'static str,
        /// Device the lookup chose (`-` when it failed).
        device: String,
        table: u32,
        /// 0, or the negative errno of a failed lookup (e.g. ENETUNREACH).
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// The datagram was handed to device `ifname` for transmission.
    Xmit,
    /// The datagram entered device `ifname`.
    Recv,
    /// The datagram was queued to a socket.
    Deliver { socket: SocketInfo },
    /// `connect()` on a UDP socket returned: `src` is the local address the kernel pinned the
    /// socket to, `dst` its peer (`error` when the call failed).
    Connect {
        socket: SocketInfo,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// UDP looked up the socket for the received datagram `src > dst`: the socket it found,
    /// `null` when none matched (the datagram then dies NO_SOCKET).
    Lookup { socket: Option<SocketInfo> },
}

/// What the sender asked `udp_sendmsg` for, known from function probes only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct SendCall {
    /// `IP_PKTINFO`/`IPV6_PKTINFO` ancillary data was passed (the way a server bound to the
    /// wildcard address answers from the address the request came to).
    pub pktinfo: bool,
    /// The socket is connected (`send()`/`write()` to its peer).
    pub connected: bool,
}

impl SendCall {
    fn of(detail: &EventDetail) -> Option<Self> {
        (detail.flags & FLAG_SEND_CALL != 0).then_some(Self {
            pktinfo: detail.flags & FLAG_PKTINFO != 0,
            connected: detail.flags & FLAG_CONNECTED != 0,
        })
    }
}

/// A socket as `ss` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SocketInfo {
    /// Bound address and port (`0.0.0.0:4000` for a wildcard-bound socket).
    pub local: String,
    /// Connected peer, when connect()ed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// Socket inode (`ss -e` `ino:`), 0 when unknown.
    pub inode: u64,
    /// Owning process, found from the inode in /proc/*/fd.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner_pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner_comm: Option<String>,
}

/// Conntrack entry attached to the skb at that point.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Conntrack {
    /// Original direction `saddr:sport > daddr:dport`.
    pub original: String,
    /// Reply direction as conntrack expects it (NAT shows here as a different address).
    pub reply: String,
    /// `nf_conn.status` bits (IPS_*; include/uapi/linux/netfilter/nf_conntrack_common.h).
    pub status: u64,
}

/// A decoded event, ready for flows and output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TraceEvent {
    /// Wall-clock time, RFC 3339 UTC with microseconds.
    pub time: String,
    /// CLOCK_MONOTONIC nanoseconds from the kernel, for ordering.
    pub ts_ns: u64,
    #[serde(flatten)]
    pub what: What,
    /// Attach mechanism that produced it.
    pub probe: &'static str,
    pub netns: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ifindex: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ifname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    /// Kernel address of the skb, hex; shared by the hops of one datagram.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skb: Option<String>,
    /// Reported because the datagram was followed from an earlier matching hop, not because
    /// this event's own addresses matched the filter (e.g. after NAT).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub tracked: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conntrack: Option<Conntrack>,
    pub family: &'static str,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
}

impl TraceEvent {
    pub fn source(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::new(self.saddr, self.sport)
    }

    pub fn destination(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::new(self.daddr, self.dport)
    }

    pub fn kind_name(&self) -> &'static str {
        match self.what {
            What::Drop { .. } => "drop",
            What::Icmp { .. } => "icmp",
            What::SockError { .. } => "sock_error",
            What::SendError { .. } => "send_error",
            What::RecvError { .. } => "recv_error",
            What::Send { .. } => "send",
            What::Route { .. } => "route",
            What::Xmit => "xmit",
            What::Recv => "recv",
            What::Deliver { .. } => "deliver",
            What::Connect { .. } => "connect",
            What::Lookup { .. } => "lookup",
        }
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
        EventKind::Drop => What::Drop {
            reason: names.drop_reason(detail.reason),
            location: names
                .symbol(detail.location)
                .unwrap_or_else(|| format!("{:#x}", detail.location)),
        },
        EventKind::IcmpError => What::Icmp {
            icmp_type: detail.icmp_type,
            icmp_code: detail.icmp_code,
            meaning: icmp_meaning(event.tuple.family, detail.icmp_type, detail.icmp_code),
        },
        EventKind::SockError => What::SockError {
            errno: crate::kernel::errno_name(detail.error as i32).to_owned(),
            code: detail.error,
        },
        EventKind::SendError => What::SendError {
            errno: crate::kernel::errno_name(detail.error as i32).to_owned(),
            code: detail.error,
            call: SendCall::of(detail),
        },
        EventKind::RecvError => What::RecvError {
            errno: crate::kernel::errno_name(detail.error as i32).to_owned(),
            code: detail.error,
        },
        EventKind::Send => What::Send {
            bytes: detail.bytes,
            socket: socket_info(detail, names),
            call: SendCall::of(detail),
        },
        EventKind::Route => {
            let device = sanitize_kernel_string(&detail.route_dev);
            What::Route {
                direction: if detail.flags & FLAG_ROUTE_INPUT != 0 {
                    "input"
                } else {
                    "output"
                },
                device: if device.is_empty() {
                    "-".into()
                } else {
                    device
                },
                table: detail.route_table,
                error: (detail.route_err != 0)
                    .then(|| crate::kernel::errno_name(-detail.route_err).to_owned()),
            }
        }
        EventKind::Xmit => What::Xmit,
        EventKind::Recv => What::Recv,
        EventKind::Deliver => What::Deliver {
            socket: socket_info(detail, names),
        },
        EventKind::Connect => What::Connect {
            socket: socket_info(detail, names),
            error: (detail.error != 0)
                .then(|| crate::kernel::errno_name(detail.error as i32).to_owned()),
        },
        EventKind::Lookup => What::Lookup {
            socket: (detail.sock.family != 0).then(|| socket_info(detail, names)),
        },
    };
    let (saddr, daddr) = addresses(&event.tuple);
    Ok(TraceEvent {
        time: clock.rfc3339(header.ts_ns),
        ts_ns: header.ts_ns,
        what,
        probe: Mechanism::from_u8(header.mechanism).map_or("unknown", Mechanism::name),
        netns: header.netns,
        netns_name: names.netns_name(header.netns),
        ifindex: (header.ifindex != 0).then_some(header.ifindex),
        ifname: non_empty(sanitize_kernel_string(&header.ifname)),
        pid: (header.pid != 0).then_some(header.pid),
        comm: (header.pid != 0)
            .then(|| sanitize_kernel_string(&header.comm))
            .and_then(non_empty),
        skb: (header.skb != 0).then(|| format!("{:#x}", header.skb)),
        tracked: detail.flags & FLAG_TRACKED != 0,
        conntrack: (detail.flags & FLAG_CONNTRACK != 0).then(|| Conntrack {
            original: flow_text(&detail.ct_original),
            reply: flow_text(&detail.ct_reply),
            status: detail.ct_status,
        }),
        family: if event.tuple.family == AF_INET6 {
            "ipv6"
        } else {
            "ipv4"
        },
        saddr,
        sport: event.tuple.sport,
        daddr,
        dport: event.tuple.dport,
    })
}

fn socket_info(detail: &EventDetail, names: &dyn KernelNames) -> SocketInfo {
    let (local, peer) = addresses(&detail.sock);
    let owner = names.socket_owner(detail.sock_ino);
    SocketInfo {
        local: endpoint(local, detail.sock.sport),
        peer: (detail.sock.dport != 0).then(|| endpoint(peer, detail.sock.dport)),
        inode: detail.sock_ino,
        owner_pid: owner.as_ref().map(|(pid, _)| *pid),
        owner_comm: owner.map(|(_, comm)| comm),
    }
}

/// `192.0.2.1:4000` or `[2001:db8::1]:4000`.
pub fn endpoint(address: IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(address, port).to_string()
}

/// `saddr:sport > daddr:dport`.
fn flow_text(tuple: &Tuple) -> String {
    let (saddr, daddr) = addresses(tuple);
    format!(
        "{} > {}",
        endpoint(saddr, tuple.sport),
        endpoint(daddr, tuple.dport)
    )
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
    use udptrace_common::event::{EVENT_VERSION, EventDetail, EventHeader, IPPROTO_UDP};

    use super::*;

    struct Names;
    impl KernelNames for Names {
        fn drop_reason(&self, value: u32) -> String {
            if value == 3 {
                "NO_SOCKET".into()
            } else {
                format!("UNKNOWN({value})")
            }
        }
        fn symbol(&self, address: u64) -> Option<String> {
            (address == 0xffff_ffff_8100_0010).then(|| "__udp4_lib_rcv+0x10".into())
        }
        fn socket_owner(&self, inode: u64) -> Option<(u32, String)> {
            (inode == 77).then(|| (1234, "nc".into()))
        }
        fn netns_name(&self, inode: u32) -> Option<String> {
            (inode == 4_026_531_840).then(|| "client".into())
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
                reason: "NO_SOCKET".into(),
                location: "__udp4_lib_rcv+0x10".into()
            }
        );
        assert_eq!(event.saddr.to_string(), "192.0.2.1");
        assert_eq!(event.daddr.to_string(), "192.0.2.2");
        assert_eq!((event.sport, event.dport), (40_000, 4_000));
        assert_eq!(event.ifname.as_deref(), Some("veth0"));
        assert_eq!(event.pid, None, "softirq events claim no process");
        assert_eq!(event.probe, "tp_btf");
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["kind"], "drop");
        assert_eq!(json["reason"], "NO_SOCKET");
        assert_eq!(json["saddr"], "192.0.2.1");
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
                reason: "UNKNOWN(77)".into(),
                location: "0x1234".into()
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
        assert_eq!(socket.local, "0.0.0.0:4000");
        assert_eq!(socket.peer, None, "an unconnected socket has no peer");
        assert_eq!(socket.owner_pid, Some(1234));
        assert_eq!(socket.owner_comm.as_deref(), Some("nc"));
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
        assert_eq!(conntrack.original, "192.0.2.1:40000 > 192.0.2.2:4000");
        assert_eq!(conntrack.reply, "192.0.2.2:4000 > 203.0.113.9:1024");
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
        assert_eq!(decoded.family, "ipv6");
        assert_eq!(decoded.saddr.to_string(), "2001:db8::1");
    }
}
