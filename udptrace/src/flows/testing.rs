//! Events and listers for the rules' tests.

use std::net::SocketAddr;

use super::rule::SocketLister;
use crate::{
    clock::WallTime,
    model::{
        Conntrack, DropReason, Endpoints, Family, Location, Probe, Process, RouteDevice,
        RouteDirection, SendCall, Skb, SocketInfo, TraceEvent, What,
    },
    sockets::{SocketList, UdpSocketEntry},
};

/// An event of namespace 7 (`host`) from `src` to `dst` at kernel time `ts_ns`, its skb
/// numbered by its time.
pub fn event(what: What, src: &str, dst: &str, ts_ns: u64) -> TraceEvent {
    let src: SocketAddr = src.parse().unwrap();
    let dst: SocketAddr = dst.parse().unwrap();
    TraceEvent {
        time: WallTime::parse_rfc3339("2026-11-22T12:00:00.000000Z").unwrap(),
        ts_ns,
        what,
        probe: Probe(Some(udptrace_common::event::Mechanism::TpBtf)),
        netns: 7,
        netns_name: Some("host".into()),
        container: None,
        ifindex: None,
        ifname: None,
        process: None,
        skb: Some(Skb(ts_ns)),
        tracked: false,
        escalated: false,
        hops_untraced: false,
        conntrack: None,
        fragment: None,
        family: if src.is_ipv4() {
            Family::Ipv4
        } else {
            Family::Ipv6
        },
        saddr: src.ip(),
        sport: src.port(),
        daddr: dst.ip(),
        dport: dst.port(),
        packet: None,
        stack: None,
    }
}

pub fn drop(reason: &str) -> What {
    What::Drop {
        reason: DropReason::named(reason),
        reason_inferred: false,
        location: Location::Symbol("__udp4_lib_rcv+0x2cd".into()),
        txq: None,
    }
}

/// An ICMP port unreachable (3/3) about the event's datagram.
pub fn port_unreachable() -> What {
    What::Icmp {
        icmp_type: 3,
        icmp_code: 3,
        meaning: "port-unreachable".into(),
        mtu: None,
    }
}

pub fn process(pid: u32, comm: &str) -> Process {
    Process {
        pid,
        comm: comm.into(),
    }
}

/// An unconnected socket on 0.0.0.0:4000 held by `server[42]`.
pub fn wildcard_socket() -> SocketInfo {
    SocketInfo {
        local: "0.0.0.0:4000".parse().unwrap(),
        peer: None,
        inode: 99,
        owner: Some(process(42, "server")),
    }
}

pub fn no_sockets() -> SocketLister {
    Box::new(|_| Some(SocketList::default()))
}

/// A request from `client` delivered to the wildcard socket at 192.0.2.1:4000, the lookup of
/// the route back (out of br0) and the reply's first hop from 198.51.100.1:4000, at times 1-3.
pub fn wrong_source_reply(client: &str) -> [TraceEvent; 3] {
    [
        request(client),
        event(
            What::Route {
                direction: RouteDirection::Output,
                device: RouteDevice(Some("br0".into())),
                table: 254,
                error: None,
            },
            "0.0.0.0:4000",
            client,
            2,
        ),
        event(What::Xmit, "198.51.100.1:4000", client, 3),
    ]
}

/// A request from `client` delivered to the wildcard socket at 192.0.2.1:4000, at time 1.
pub fn request(client: &str) -> TraceEvent {
    event(
        What::Deliver {
            socket: wildcard_socket(),
        },
        client,
        "192.0.2.1:4000",
        1,
    )
}

/// `server[42]`'s `sendto()` to `client` without IP_PKTINFO, as a function probe on
/// `udp_sendmsg` reports it, at `ts_ns`.
pub fn sendto_without_pktinfo(client: &str, ts_ns: u64) -> TraceEvent {
    let mut send = event(
        What::Send {
            bytes: 5,
            socket: wildcard_socket(),
            call: Some(SendCall {
                pktinfo: false,
                connected: false,
            }),
        },
        "0.0.0.0:4000",
        client,
        ts_ns,
    );
    send.process = Some(process(42, "server"));
    send
}

/// The conntrack entry of 198.51.100.2:40000 > 203.0.113.1:4000 masqueraded as 192.0.2.3.
pub fn masquerade() -> Conntrack {
    Conntrack {
        original: Endpoints {
            src: "198.51.100.2:40000".parse().unwrap(),
            dst: "203.0.113.1:4000".parse().unwrap(),
        },
        reply: Endpoints {
            src: "203.0.113.1:4000".parse().unwrap(),
            dst: "192.0.2.3:40000".parse().unwrap(),
        },
        status: 0,
    }
}

/// A socket bound to 198.51.100.1:4000 and connected to 198.51.100.2:40000 (inode 5).
pub fn pinned_socket() -> UdpSocketEntry {
    UdpSocketEntry {
        local: "198.51.100.1:4000".parse().unwrap(),
        peer: Some("198.51.100.2:40000".parse().unwrap()),
        rx_queue: 0,
        inode: 5,
        uid: 0,
        drops: 0,
        rcvbuf: None,
    }
}

/// Lists `pinned_socket`, held by `nc[77]`.
pub fn pinned_socket_lister() -> SocketLister {
    Box::new(|event| {
        assert_eq!(event.netns, 7);
        Some(SocketList::from([(
            pinned_socket(),
            Some(process(77, "nc")),
        )]))
    })
}

/// `nc[77]`'s `connect()` that pinned `pinned_socket`, at time 1.
pub fn pinning_connect() -> TraceEvent {
    let mut connect = event(
        What::Connect {
            socket: SocketInfo {
                local: "198.51.100.1:4000".parse().unwrap(),
                peer: Some("198.51.100.2:40000".parse().unwrap()),
                inode: 5,
                owner: Some(process(77, "nc")),
            },
            error: None,
        },
        "198.51.100.1:4000",
        "198.51.100.2:40000",
        1,
    );
    connect.process = Some(process(77, "nc"));
    connect
}
