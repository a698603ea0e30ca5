//! Raw ring-buffer records → domain events. Nothing above this module knows a kernel layout;
//! nothing below it knows about output. Keep in sync with `udptrace-common/src/event.rs`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;
use udptrace_common::event::{AF_INET, AF_INET6, Event, EventKind, Mechanism, Tuple};

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
    SendError { errno: String, code: u32 },
    /// A receive on a UDP socket failed.
    RecvError { errno: String, code: u32 },
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
    pub family: &'static str,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
}

impl TraceEvent {
    pub fn kind_name(&self) -> &'static str {
        match self.what {
            What::Drop { .. } => "drop",
            What::Icmp { .. } => "icmp",
            What::SockError { .. } => "sock_error",
            What::SendError { .. } => "send_error",
            What::RecvError { .. } => "recv_error",
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
        },
        EventKind::RecvError => What::RecvError {
            errno: crate::kernel::errno_name(detail.error as i32).to_owned(),
            code: detail.error,
        },
    };
    let (saddr, daddr) = addresses(&event.tuple);
    Ok(TraceEvent {
        time: clock.rfc3339(header.ts_ns),
        ts_ns: header.ts_ns,
        what,
        probe: Mechanism::from_u8(header.mechanism).map_or("unknown", Mechanism::name),
        netns: header.netns,
        ifindex: (header.ifindex != 0).then_some(header.ifindex),
        ifname: non_empty(sanitize_kernel_string(&header.ifname)),
        pid: (header.pid != 0).then_some(header.pid),
        comm: (header.pid != 0)
            .then(|| sanitize_kernel_string(&header.comm))
            .and_then(non_empty),
        skb: (header.skb != 0).then(|| format!("{:#x}", header.skb)),
        family: if event.tuple.family == AF_INET6 { "ipv6" } else { "ipv4" },
        saddr,
        sport: event.tuple.sport,
        daddr,
        dport: event.tuple.dport,
    })
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
            if value == 3 { "NO_SOCKET".into() } else { format!("UNKNOWN({value})") }
        }
        fn symbol(&self, address: u64) -> Option<String> {
            (address == 0xffff_ffff_8100_0010).then(|| "__udp4_lib_rcv+0x10".into())
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
        assert_eq!(decode(&raw(&event), &Names, &clock), Err(DecodeError::Kind(200)));
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
