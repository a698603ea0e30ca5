//! The verdicts of event sequences, as the rules reach them and as they read: the rules'
//! scenarios (flows/rules/) end to end through the dispatcher and `render/verdict.rs`.

use std::net::{IpAddr, SocketAddr};

use super::*;
use crate::{
    firewall::FirewallRule,
    flows::{
        diagnosis::Diagnosis,
        ledger::{MAX_EVIDENCE, MAX_VERDICTS_PER_RULE, SETTLE},
        rule::{RuleLister, SocketLister},
        table::{FlowKey, Tally},
        testing::{
            drop, event, masquerade, no_sockets, pinned_socket_lister, pinning_connect,
            port_unreachable, process, request, sendto_without_pktinfo, wildcard_socket,
            wrong_source_reply,
        },
        verdict::VerdictCode,
    },
    model::{
        DropReason, Errno, IpFragment, RouteDevice, RouteDirection, SendCall, SocketErrno,
        SocketInfo, What,
    },
    sockets::{SocketList, UdpSocketEntry},
};

fn codes(diagnosis: &mut Diagnosis) -> Vec<VerdictCode> {
    diagnosis
        .ready(u64::MAX, true)
        .iter()
        .map(|v| v.code)
        .collect()
}

#[test]
fn wildcard_server_replying_from_another_address() {
    let mut diagnosis = Diagnosis::new(no_sockets());
    let client = "198.51.100.2:40000";
    for event in wrong_source_reply(client) {
        diagnosis.observe(&event);
    }
    // The same reply at its next hop (bridge port) is not another reply.
    let mut next_hop = event(What::Xmit, "198.51.100.1:4000", client, 3);
    next_hop.tracked = true;
    diagnosis.observe(&next_hop);
    // Nor is a later hop whose tuple NAT rewrote.
    let mut translated = event(What::Xmit, "192.0.2.1:4000", client, 3);
    translated.tracked = true;
    diagnosis.observe(&translated);
    // The client's connected socket drops it: explained by the same verdict, not another.
    diagnosis.observe(&event(drop("NO_SOCKET"), "198.51.100.1:4000", client, 4));
    assert!(
        diagnosis.ready(4, false).is_empty(),
        "held back while evidence settles"
    );
    let verdicts = diagnosis.ready(4 + SETTLE.as_nanos() as u64, false);
    assert_eq!(verdicts.len(), 1);
    let verdict = &verdicts[0];
    assert_eq!(verdict.code, VerdictCode::ReplySourceMismatch);
    assert!(
        summary(verdict).contains("sent to 192.0.2.1:4000"),
        "{}",
        summary(verdict)
    );
    assert!(
        summary(verdict).contains("came from 198.51.100.1:4000"),
        "{}",
        summary(verdict)
    );
    assert!(
        summary(verdict).contains("route to 198.51.100.2 goes out br0"),
        "{}",
        summary(verdict)
    );
    assert!(
        summary(verdict).contains("owned by server[42]"),
        "{}",
        summary(verdict)
    );
    assert!(fix(verdict).contains("IP_PKTINFO"));
    assert_eq!(
        evidence_lines(verdict).len(),
        4,
        "{:#?}",
        evidence_lines(verdict)
    );
    assert_eq!(verdict.count, 1);
    assert!(diagnosis.ready(u64::MAX, true).is_empty(), "emitted once");
    diagnosis.observe(&event(What::Xmit, "198.51.100.1:4000", client, 5));
    assert_eq!(diagnosis.verdicts()[0].count, 2, "a second reply counts");
}

/// Issue 15: the wildcard replier is docker-proxy and the route back goes out docker0 (as
/// `lab run docker-proxy-reply` traces with a real dockerd): the verdict says so and its fix
/// is in Docker's terms, not "bind the server socket".
#[test]
fn docker_proxy_replying_from_the_bridge_address() {
    let mut diagnosis = Diagnosis::new(no_sockets());
    let client = "198.51.100.2:40000";
    let proxy = SocketInfo {
        owner: Some(process(7, "docker-proxy")),
        ..wildcard_socket()
    };
    let [_, route, reply] = wrong_source_reply(client);
    let route = TraceEvent {
        what: What::Route {
            direction: RouteDirection::Output,
            device: RouteDevice(Some("docker0".into())),
            table: 254,
            error: None,
        },
        ..route
    };
    // The request's first hop, in the client container's namespace.
    let sent = TraceEvent {
        netns: 8,
        netns_name: Some("ctr web-1 (docker 7b0095692950)".into()),
        container: Some(Box::new(web_1())),
        ..event(What::Xmit, client, "192.0.2.1:4000", 0)
    };
    for event in [
        sent,
        event(What::Deliver { socket: proxy }, client, "192.0.2.1:4000", 1),
        route,
        reply,
    ] {
        diagnosis.observe(&event);
    }
    let verdicts = diagnosis.ready(u64::MAX, true);
    assert_eq!(verdicts.len(), 1);
    let (summary, fix) = (summary(&verdicts[0]), fix(&verdicts[0]));
    assert!(
        summary.starts_with(&format!(
            "{client} in container web-1 (docker 7b0095692950) sent to 192.0.2.1:4000"
        )),
        "{summary}"
    );
    let record = serde_json::to_value(VerdictRecord::of(&verdicts[0])).unwrap();
    assert_eq!(record["facts"]["client_container"]["name"], "web-1");
    assert!(
        record["facts"].get("server_container").is_none(),
        "{record}"
    );
    assert!(
        summary.contains(
            "owned by docker-proxy[7] (Docker's userland proxy for port 4000 published on every \
             host address)"
        ),
        "{summary}"
    );
    assert!(
        summary.contains("goes out docker0 (Docker's default bridge network)"),
        "{summary}"
    );
    assert!(
        fix.contains("docker run -p 192.0.2.1:4000:PORT/udp"),
        "{fix}"
    );
    assert!(fix.contains("--userland-proxy=false"), "{fix}");
    assert!(!fix.contains("bind the server socket"), "{fix}");
}

#[test]
fn bridges_name_their_container_networks() {
    assert_eq!(
        bridge_network("br-3f2a9c1d0b7e").as_deref(),
        Some("the bridge of the Docker network with id 3f2a9c1d0b7e")
    );
    assert_eq!(
        bridge_network("cni0").as_deref(),
        Some("the CNI bridge of the pod network")
    );
    assert_eq!(bridge_network("br0"), None);
    assert_eq!(bridge_network("br-lan"), None, "not a Docker network id");
    assert_eq!(bridge_network("eth0"), None);
}

/// The wrong-source reply of `lab run wrong-source-reply-v6` as a function-probe kernel
/// reports it: the request delivered to a wildcard socket, the reply's route and first
/// hop from the bridge address, its arrival, and its drop at the client, whose connected
/// socket is on the port (so a drop judged before the reply's first hop would also read
/// as a connected-socket mismatch).
fn wrong_source_reply_v6() -> (Vec<TraceEvent>, SocketLister) {
    let client = "[2001:db8:1::2]:40000";
    let wildcard = SocketInfo {
        local: "[::]:4000".parse().unwrap(),
        ..wildcard_socket()
    };
    let events = vec![
        event(
            What::Deliver { socket: wildcard },
            client,
            "[2001:db8::1]:4000",
            1_000,
        ),
        event(
            What::Route {
                direction: RouteDirection::Output,
                device: RouteDevice(Some("br0".into())),
                table: 254,
                error: None,
            },
            "[::]:4000",
            client,
            2_000,
        ),
        event(What::Xmit, "[2001:db8:1::1]:4000", client, 3_000),
        event(What::Recv, "[2001:db8:1::1]:4000", client, 4_000),
        event(drop("NO_SOCKET"), "[2001:db8:1::1]:4000", client, 5_000),
    ];
    let sockets: SocketLister = Box::new(|_| {
        Some(SocketList::from([(
            UdpSocketEntry {
                local: "[2001:db8:1::2]:40000".parse().unwrap(),
                peer: Some("[2001:db8::1]:4000".parse().unwrap()),
                rx_queue: 0,
                inode: 5,
                uid: 0,
                drops: 0,
                rcvbuf: None,
            },
            Some(process(9, "client")),
        )]))
    });
    (events, sockets)
}

/// Every order the ring buffer may deliver the events in (events of different CPUs come
/// in the order they were reserved, not by time) gives the same verdict once the events
/// went through the reorder stage, as session.rs does.
#[test]
fn verdicts_do_not_depend_on_ring_order() {
    let (events, _) = wrong_source_reply_v6();
    let mut orders = vec![Vec::new()];
    for index in 0..events.len() {
        orders = orders
            .into_iter()
            .flat_map(|order: Vec<usize>| {
                (0..=order.len()).map(move |at| {
                    let mut longer = order.clone();
                    longer.insert(at, index);
                    longer
                })
            })
            .collect();
    }
    assert_eq!(orders.len(), 120, "every permutation of five events");
    let mut outcomes = Vec::new();
    for order in orders {
        let (events, sockets) = wrong_source_reply_v6();
        let mut diagnosis = Diagnosis::new(sockets);
        let mut reorder = crate::reorder::Reorder::default();
        for index in order {
            reorder.push(events[index].ts_ns, events[index].clone());
        }
        for event in reorder.release_all() {
            diagnosis.observe(&event);
        }
        let verdicts: Vec<_> = diagnosis
            .ready(u64::MAX, true)
            .into_iter()
            .map(|v| (summary(&v), evidence_lines(&v), v))
            .collect();
        outcomes.push(verdicts);
    }
    assert_eq!(outcomes[0].len(), 1, "{:#?}", outcomes[0]);
    assert_eq!(outcomes[0][0].2.code, VerdictCode::ReplySourceMismatch);
    assert!(
        outcomes.iter().all(|outcome| *outcome == outcomes[0]),
        "the same verdict in every order"
    );
}

#[test]
fn function_probes_show_how_the_reply_was_sent() {
    let mut diagnosis = Diagnosis::new(no_sockets());
    let client = "198.51.100.2:40000";
    diagnosis.observe(&request(client));
    let send = sendto_without_pktinfo(client, 2);
    // Another socket's send to the client says nothing about this reply.
    diagnosis.observe(&event(
        What::Send {
            bytes: 5,
            socket: wildcard_socket(),
            call: Some(SendCall {
                pktinfo: true,
                connected: false,
            }),
        },
        "192.0.2.1:5000",
        client,
        2,
    ));
    // The function probe reports the send when udp_sendmsg returns: after the xmit.
    diagnosis.observe(&event(What::Xmit, "198.51.100.1:4000", client, 3));
    diagnosis.observe(&send);
    let verdicts = diagnosis.ready(u64::MAX, true);
    assert_eq!(verdicts.len(), 1);
    assert!(
        summary(&verdicts[0])
            .contains("udp_sendmsg shows server[42] replying with sendto() without IP_PKTINFO"),
        "{}",
        summary(&verdicts[0])
    );
    assert!(
        evidence_lines(&verdicts[0])
            .iter()
            .any(|line| line.contains("send") && line.contains("without IP_PKTINFO")),
        "{:#?}",
        evidence_lines(&verdicts[0])
    );
}

#[test]
fn replies_from_the_requested_address_are_healthy() {
    let mut diagnosis = Diagnosis::new(no_sockets());
    let client = "198.51.100.2:40000";
    diagnosis.observe(&request(client));
    diagnosis.observe(&event(What::Xmit, "192.0.2.1:4000", client, 2));
    diagnosis.observe(&event(What::Recv, "192.0.2.1:4000", client, 3));
    assert!(codes(&mut diagnosis).is_empty());
}

/// Container web-1, as Docker names it.
fn web_1() -> Container {
    Container {
        runtime: crate::containers::Runtime::Docker,
        id: "7b0095692950c3c15eb927493b46a55845f0d0cc445aac805d53a6c759eb343f".into(),
        name: Some("web-1".into()),
        image: Some("nginx:1".into()),
        pod: None,
    }
}

#[test]
fn drops_inside_a_container_name_the_container() {
    let mut diagnosis = Diagnosis::new(no_sockets());
    let (client, server) = ("192.0.2.1:40000", "192.0.2.2:4000");
    let in_web_1 = |event: TraceEvent| TraceEvent {
        container: Some(Box::new(web_1())),
        netns_name: Some("ctr web-1 (docker 7b0095692950)".into()),
        ..event
    };
    diagnosis.observe(&in_web_1(event(drop("NO_SOCKET"), client, server, 2)));
    let verdicts = diagnosis.ready(u64::MAX, true);
    assert_eq!(verdicts[0].code, VerdictCode::PortUnreachable);
    let summary = summary(&verdicts[0]);
    assert!(
        summary.starts_with(&format!(
            "nothing listens on {server} in container web-1 (docker 7b0095692950):"
        )),
        "{summary}"
    );
    let record = serde_json::to_value(VerdictRecord::of(&verdicts[0])).unwrap();
    let container = &record["facts"]["namespace"]["container"];
    assert_eq!(container["runtime"], "docker", "{record}");
    assert_eq!(container["name"], "web-1", "{record}");
    assert_eq!(container["image"], "nginx:1", "{record}");
}

#[test]
fn closed_port_ties_drop_icmp_and_econnrefused() {
    let mut diagnosis = Diagnosis::new(no_sockets());
    let (client, server) = ("192.0.2.1:40000", "192.0.2.2:4000");
    diagnosis.observe(&event(port_unreachable(), client, server, 1));
    diagnosis.observe(&event(drop("NO_SOCKET"), client, server, 2));
    diagnosis.observe(&event(
        What::SockError {
            error: SocketErrno(Errno(111)),
        },
        client,
        server,
        3,
    ));
    let verdicts = diagnosis.ready(u64::MAX, true);
    assert_eq!(verdicts.len(), 1);
    assert_eq!(verdicts[0].code, VerdictCode::PortUnreachable);
    let evidence = evidence_lines(&verdicts[0]).join("\n");
    assert!(evidence.contains("NO_SOCKET"));
    assert!(evidence.contains("port-unreachable"));
    assert!(evidence.contains("ECONNREFUSED"));
}

#[test]
fn a_connected_socket_on_the_port_is_named() {
    let mut diagnosis = Diagnosis::new(pinned_socket_lister());
    diagnosis.observe(&event(
        drop("NO_SOCKET"),
        "198.51.100.2:40000",
        "192.0.2.1:4000",
        1,
    ));
    let verdicts = diagnosis.ready(u64::MAX, true);
    assert_eq!(verdicts.len(), 1);
    assert_eq!(verdicts[0].code, VerdictCode::ConnectedSocketMismatch);
    assert!(summary(&verdicts[0]).contains("connected to 198.51.100.2:40000"));
    assert!(summary(&verdicts[0]).contains("nc[77]"));
    assert!(
        summary(&verdicts[0])
            .contains("bound to 198.51.100.1 but the datagram is addressed to 192.0.2.1")
    );
}

#[test]
fn the_connect_that_pinned_the_socket_is_evidence() {
    let mut diagnosis = Diagnosis::new(pinned_socket_lister());
    diagnosis.observe(&pinning_connect());
    diagnosis.observe(&event(
        drop("NO_SOCKET"),
        "198.51.100.2:40000",
        "192.0.2.1:4000",
        2,
    ));
    let verdicts = diagnosis.ready(u64::MAX, true);
    assert_eq!(verdicts.len(), 1);
    assert_eq!(verdicts[0].code, VerdictCode::ConnectedSocketMismatch);
    assert!(
        summary(&verdicts[0]).contains(
            "connect() by nc[77] pinned it to local address 198.51.100.1:4000 and peer 198.51.100.2:40000"
        ),
        "{}",
        summary(&verdicts[0])
    );
    assert!(
        evidence_lines(&verdicts[0])
            .iter()
            .any(|line| line.contains("connect")),
        "{:#?}",
        evidence_lines(&verdicts[0])
    );
}

#[test]
fn nat_reply_from_the_wrong_source() {
    let mut diagnosis = Diagnosis::new(no_sockets());
    let mut outgoing = event(What::Xmit, "198.51.100.2:40000", "203.0.113.1:4000", 1);
    outgoing.conntrack = Some(masquerade());
    diagnosis.observe(&outgoing);
    diagnosis.observe(&event(
        drop("NO_SOCKET"),
        "192.0.2.2:4000",
        "192.0.2.3:40000",
        2,
    ));
    let verdicts = diagnosis.ready(u64::MAX, true);
    assert_eq!(verdicts.len(), 1);
    assert_eq!(verdicts[0].code, VerdictCode::NatReplyMismatch);
    assert!(summary(&verdicts[0]).contains("expected the reply to come from 203.0.113.1:4000"));
    assert!(fix(&verdicts[0]).starts_with("make the reply come from 203.0.113.1:4000"));
}

/// Seed 004 with real Docker: the namespace whose masquerade is not undone is a DinD
/// container's, and the verdict speaks Docker's options like the docker-proxy one.
#[test]
fn nat_reply_inside_a_dind_container_speaks_docker() {
    let mut diagnosis = Diagnosis::new(no_sockets());
    let in_dind = |event: TraceEvent| TraceEvent {
        container: Some(Box::new(web_1())),
        netns_name: Some("ctr web-1 (docker 7b0095692950)".into()),
        ..event
    };
    let mut outgoing = event(What::Xmit, "198.51.100.2:40000", "203.0.113.1:4000", 1);
    outgoing.conntrack = Some(masquerade());
    diagnosis.observe(&in_dind(outgoing));
    diagnosis.observe(&in_dind(event(
        drop("NO_SOCKET"),
        "192.0.2.2:4000",
        "192.0.2.3:40000",
        2,
    )));
    let verdicts = diagnosis.ready(u64::MAX, true);
    assert_eq!(verdicts[0].code, VerdictCode::NatReplyMismatch);
    let (summary, fix) = (summary(&verdicts[0]), fix(&verdicts[0]));
    assert!(
        summary.contains("reaches container web-1 (docker 7b0095692950) but conntrack"),
        "{summary}"
    );
    assert!(
        fix.starts_with("container web-1 (docker 7b0095692950) masquerades"),
        "{fix}"
    );
    assert!(
        fix.contains("docker run -p 203.0.113.1:4000:PORT/udp"),
        "{fix}"
    );
    assert!(fix.contains("--userland-proxy=false"), "{fix}");
}

#[test]
fn firewall_drops_name_the_rule() {
    let rules: RuleLister = Box::new(|event| {
        assert_eq!((event.netns, event.dport), (7, 5000));
        Some(vec![FirewallRule {
            table: "inet f".into(),
            chain: "input".into(),
            hook: Some("input".into()),
            text: "udp dport 5000 drop # handle 2".into(),
        }])
    });
    let mut diagnosis = Diagnosis::new(no_sockets()).with_rules(rules);
    diagnosis.observe(&event(
        drop("NETFILTER_DROP"),
        "192.0.2.1:1",
        "192.0.2.2:5000",
        1,
    ));
    let verdicts = diagnosis.ready(u64::MAX, true);
    assert!(
        summary(&verdicts[0]).contains("(hook input): udp dport 5000 drop"),
        "{}",
        summary(&verdicts[0])
    );
}

#[test]
fn fragment_loss_reads_for_the_person_on_call() {
    let rules: RuleLister = Box::new(|_| {
        Some(vec![FirewallRule {
            table: "inet lab".into(),
            chain: "forward".into(),
            hook: Some("forward".into()),
            text: "ip frag-off & 8191 != 0 drop # handle 2".into(),
        }])
    });
    let mut diagnosis = Diagnosis::new(no_sockets()).with_rules(rules);
    let mut dropped = event(
        drop("NETFILTER_DROP"),
        "192.0.2.2:5051",
        "198.51.100.2:40000",
        1,
    );
    dropped.fragment = Some(IpFragment {
        id: 0xbeef,
        offset: 0,
        ip_len: 1_500,
        datagram_len: Some(4_008),
        more: true,
    });
    diagnosis.observe(&dropped);
    let verdicts = diagnosis.ready(u64::MAX, true);
    assert_eq!(
        summary(&verdicts[0]),
        "the fragmented datagram 192.0.2.2:5051 > 198.51.100.2:40000 of 4008 bytes, cut into \
         fragments of 1500 bytes (the MTU on the sender's path) never arrives whole: a netfilter \
         rule in namespace host drops its fragments (at __udp4_lib_rcv+0x2cd): table inet lab \
         chain forward (hook forward): ip frag-off & 8191 != 0 drop # handle 2"
    );
    assert_eq!(
        evidence_lines(&verdicts[0]),
        [
            "12:00:00.000000 drop 192.0.2.2:5051 > 198.51.100.2:40000 NETFILTER_DROP (first \
             fragment (id 0xbeef, 1500 bytes) of a 4008-byte datagram) at __udp4_lib_rcv+0x2cd \
             [ns host]",
            "rule table inet lab chain forward (hook forward): ip frag-off & 8191 != 0 drop # \
             handle 2"
        ]
    );
    assert!(fix(&verdicts[0]).contains("EDNS buffer of 1232 bytes"));
    assert!(fix(&verdicts[0]).contains("let fragments through (`table inet lab"));
}

#[test]
fn path_mtu_failures_name_the_mtu_and_the_payload_that_fits() {
    let mut diagnosis = Diagnosis::new(no_sockets());
    diagnosis.observe(&event(
        What::Icmp {
            icmp_type: 2,
            icmp_code: 0,
            meaning: "packet-too-big".into(),
            mtu: Some(1_280),
        },
        "[2001:db8:2::2]:5054",
        "[2001:db8:1::2]:40000",
        1,
    ));
    let verdicts = diagnosis.ready(u64::MAX, true);
    assert_eq!(
        summary(&verdicts[0]),
        "[2001:db8:2::2]:5054 > [2001:db8:1::2]:40000 is too big for the path and may not be \
         fragmented (DF, IP_PMTUDISC_DO, or IPv6 on the way): namespace host answers with ICMP \
         that the next link's MTU is 1280; the sender's datagrams larger than that fail with \
         EMSGSIZE"
    );
    assert!(
        fix(&verdicts[0]).starts_with("send smaller datagrams (at most 1232 bytes of payload)"),
        "{}",
        fix(&verdicts[0])
    );
    assert!(evidence_lines(&verdicts[0])[0].contains("(type 2 code 0, mtu 1280)"));
}

#[test]
fn firewall_and_rcvbuf_drops() {
    let mut diagnosis = Diagnosis::new(no_sockets());
    diagnosis.observe(&event(
        drop("NETFILTER_DROP"),
        "192.0.2.1:1",
        "192.0.2.2:5000",
        1,
    ));
    for ts in 2..12 {
        let sender = format!("192.0.2.1:{}", 1000 + ts);
        diagnosis.observe(&event(
            drop("SOCKET_RCVBUFF"),
            &sender,
            "192.0.2.2:6000",
            ts,
        ));
    }
    let verdicts = diagnosis.ready(u64::MAX, true);
    let codes: Vec<_> = verdicts.iter().map(|v| (v.code, v.count)).collect();
    assert_eq!(
        codes,
        [
            (VerdictCode::FirewallDrop, 1),
            (VerdictCode::RcvbufOverflow, 10)
        ]
    );
    assert_eq!(flow_text(&verdicts[1]), "* > 192.0.2.2:6000");
}

#[test]
fn neighbour_failures_name_the_address_and_device_for_arp_and_ndp() {
    for (client, absent, protocol, icmp) in [
        (
            "192.0.2.1:40000",
            "192.0.2.99:5031",
            "ARP",
            "ICMP host unreachable",
        ),
        (
            "[2001:db8::1]:40000",
            "[2001:db8::99]:5032",
            "NDP",
            "ICMPv6 address unreachable",
        ),
    ] {
        let mut diagnosis = Diagnosis::new(no_sockets());
        let mut failed = event(drop("NEIGH_FAILED"), client, absent, 1);
        failed.ifname = Some("eth0".into());
        diagnosis.observe(&failed);
        let verdicts = diagnosis.ready(u64::MAX, true);
        assert_eq!(verdicts.len(), 1);
        let text = summary(&verdicts[0]);
        let ip = absent.parse::<SocketAddr>().unwrap().ip();
        assert!(
            text.starts_with(&format!(
                "no host answered {protocol} for the next hop towards {ip} on eth0 in namespace host: {client} > {absent}"
            )),
            "{text}"
        );
        assert!(text.contains(icmp), "{text}");
        assert!(
            fix(&verdicts[0]).contains("`ip neigh show dev eth0`"),
            "{}",
            fix(&verdicts[0])
        );
    }
}

#[test]
fn transmit_drops_name_the_device_the_sender_and_what_it_saw() {
    let (client, server) = ("192.0.2.1:40000", "192.0.2.2:5061");
    for (errno, saw) in [
        (
            Some(105),
            "the sender's send returned ENOBUFS (it has IP_RECVERR: the application saw it)",
        ),
        (None, "a sender without IP_RECVERR is told nothing"),
    ] {
        let mut diagnosis = Diagnosis::new(no_sockets());
        let mut handed = event(What::Xmit, client, server, 1);
        handed.ifindex = Some(2);
        handed.ifname = Some("eth0".into());
        handed.skb = Some(crate::model::Skb(0x100));
        handed.process = Some(process(42, "sender"));
        diagnosis.observe(&handed);
        let mut dropped = event(drop("QDISC_DROP"), client, server, 2);
        dropped.process = None;
        dropped.ifindex = Some(2);
        dropped.ifname = Some("eth0".into());
        dropped.skb = Some(crate::model::Skb(0x100));
        diagnosis.observe(&dropped);
        if let Some(errno) = errno {
            diagnosis.observe(&event(
                What::SendError {
                    error: SocketErrno(Errno(errno)),
                    call: None,
                },
                client,
                server,
                3,
            ));
        }
        let verdicts = diagnosis.ready(u64::MAX, true);
        assert_eq!(verdicts.len(), 1);
        let text = summary(&verdicts[0]);
        assert!(
            text.starts_with(
                "1 datagram(s) 192.0.2.1:40000 > 192.0.2.2:5061 sent by sender[42] were dropped \
                 on the way out by the queueing discipline of eth0 in namespace host \
                 (QDISC_DROP: its queue was full): "
            ),
            "{text}"
        );
        assert!(text.contains(saw), "{text}");
        assert!(
            fix(&verdicts[0]).starts_with("`tc -s qdisc show dev eth0` in namespace host"),
            "{}",
            fix(&verdicts[0])
        );
    }
}

#[test]
fn route_failures_name_the_route_the_namespace_and_the_fix() {
    // A blackhole route refuses a local sendto() with EINVAL.
    let mut diagnosis = Diagnosis::new(no_sockets());
    let (src, dst) = ("0.0.0.0:40000", "203.0.113.41:5041");
    let mut lookup = event(
        What::Route {
            direction: RouteDirection::Output,
            device: RouteDevice(None),
            table: 254,
            error: Some(Errno(22)),
        },
        src,
        dst,
        1,
    );
    lookup.process = Some(process(9, "dig"));
    diagnosis.observe(&lookup);
    let mut failed = event(
        What::SendError {
            error: SocketErrno(Errno(22)),
            call: None,
        },
        src,
        dst,
        2,
    );
    failed.process = Some(process(9, "dig"));
    diagnosis.observe(&failed);
    // A router drops a forwarded datagram for a route it cannot tell (no ICMP error).
    let mut forwarded = event(
        What::Drop {
            reason: DropReason::named("NOT_SPECIFIED"),
            reason_inferred: true,
            location: crate::model::Location::Symbol("ip_error+0x94".into()),
            txq: None,
        },
        "198.51.100.2:40001",
        "203.0.113.42:5042",
        3,
    );
    forwarded.ifname = Some("eth0".into());
    diagnosis.observe(&forwarded);
    let verdicts = diagnosis.ready(u64::MAX, true);
    assert_eq!(verdicts.len(), 2, "{verdicts:?}");
    assert_eq!(
        summary(&verdicts[0]),
        "dig[9] in namespace host cannot send from 0.0.0.0:40000 to 203.0.113.41:5041: the route \
         lookup (table 254) found a `blackhole` route (EINVAL; forwarded traffic is dropped \
         silently), so the call fails with EINVAL"
    );
    assert_eq!(
        fix(&verdicts[0]),
        "`ip route get 203.0.113.41` in namespace host shows the answer: remove the blackhole \
         route that covers 203.0.113.41 (`ip route show table all type blackhole`, `ip -6 route` \
         for IPv6) or add a more specific route to it"
    );
    assert_eq!(
        summary(&verdicts[1]),
        "198.51.100.2:40001 > 203.0.113.42:5042 arriving on eth0 in namespace host is dropped: \
         the route lookup found a reject route (unreachable, blackhole or prohibit)"
    );
    assert!(
        fix(&verdicts[1]).contains("(unreachable, blackhole and prohibit routes)"),
        "{}",
        fix(&verdicts[1])
    );
}

#[test]
fn unanswered_requests_name_the_owner_or_the_device() {
    let mut diagnosis = Diagnosis::new(no_sockets());
    // A DNS request delivered to server[42]'s socket; one that left through eth0 for NTP.
    diagnosis.observe(&event(
        What::Deliver {
            socket: wildcard_socket(),
        },
        "198.51.100.2:40000",
        "192.0.2.1:53",
        1,
    ));
    let mut left = event(What::Xmit, "198.51.100.2:40001", "203.0.113.53:123", 2);
    left.ifname = Some("eth0".into());
    diagnosis.observe(&left);
    // The event clock: something traced 2 s later.
    diagnosis.observe(&event(
        What::Xmit,
        "192.0.2.9:1",
        "192.0.2.8:1",
        2_000_000_002,
    ));
    let verdicts = diagnosis.ready(u64::MAX, true);
    assert_eq!(verdicts.len(), 2, "{verdicts:?}");
    assert_eq!(
        summary(&verdicts[0]),
        "198.51.100.2:40000's request to 192.0.2.1:53 was delivered to socket 0.0.0.0:4000 \
         (inode 99) owned by server[42] in namespace host, and nothing was sent back to \
         198.51.100.2:40000 within 2000 ms: the process received the request and did not answer"
    );
    assert!(fix(&verdicts[0]).starts_with("look at the server process server[42]:"));
    assert_eq!(
        summary(&verdicts[1]),
        "198.51.100.2:40001's request to 203.0.113.53:123 left through eth0 in namespace host \
         and nothing came back within 2000 ms, with no drop or ICMP error on this host: the \
         problem is beyond this host"
    );
    assert!(
        fix(&verdicts[1]).contains("`tcpdump -ni eth0 udp port 123`"),
        "{}",
        fix(&verdicts[1])
    );
}

#[test]
fn drops_counted_without_events_reach_the_flow_and_its_verdict() {
    let mut diagnosis = Diagnosis::new(no_sockets());
    for ts in 1..=3 {
        diagnosis.observe(&event(
            drop("SOCKET_RCVBUFF"),
            "192.0.2.1:1000",
            "192.0.2.2:6000",
            ts,
        ));
    }
    assert_eq!(diagnosis.verdicts()[0].count, 3);
    let flow = FlowKey::new(
        "192.0.2.1:1000".parse().unwrap(),
        "192.0.2.2:6000".parse().unwrap(),
    );
    // The kernel counted 10: 7 events were sampled out.
    let rcvbuf = Tally::Drops(DropReason::named("SOCKET_RCVBUFF"));
    diagnosis.count_in_kernel(flow, rcvbuf.clone(), 10);
    assert_eq!(diagnosis.verdicts()[0].count, 10);
    assert_eq!(diagnosis.flows.tally(flow, &rcvbuf), 10);
    // Drops of a flow without a verdict only reach the flow.
    let other = FlowKey::new(
        "192.0.2.1:1001".parse().unwrap(),
        "192.0.2.2:6001".parse().unwrap(),
    );
    let no_socket = Tally::Drops(DropReason::named("NO_SOCKET"));
    diagnosis.count_in_kernel(other, no_socket.clone(), 5);
    assert_eq!(diagnosis.flows.tally(other, &no_socket), 5);
    assert_eq!(diagnosis.verdicts().len(), 1);
}

#[test]
fn flows_count_both_directions_once_per_datagram() {
    let mut diagnosis = Diagnosis::new(no_sockets());
    let client: SocketAddr = "192.0.2.1:1000".parse().unwrap();
    let server: SocketAddr = "192.0.2.2:53".parse().unwrap();
    let mut request = event(What::Xmit, "192.0.2.1:1000", "192.0.2.2:53", 1);
    // A datagram counts where it is first seen (the kernel counts it there: `Tally`).
    assert_eq!(Tally::of(&request), Some(Tally::DatagramsFrom(client)));
    diagnosis.observe(&request);
    // The same datagram at the next device: the kernel flags it as followed.
    request.what = What::Recv;
    request.tracked = true;
    assert_eq!(Tally::of(&request), None);
    diagnosis.observe(&request);
    let reply = event(What::Xmit, "192.0.2.2:53", "192.0.2.1:1000", 2);
    assert_eq!(Tally::of(&reply), Some(Tally::DatagramsFrom(server)));
    diagnosis.observe(&reply);
    // A new datagram in a recycled skb (same address, not followed): counted.
    let mut next = event(What::Xmit, "192.0.2.1:1000", "192.0.2.2:53", 3);
    next.skb.clone_from(&request.skb);
    assert_eq!(Tally::of(&next), Some(Tally::DatagramsFrom(client)));
    diagnosis.observe(&next);
    let flows = diagnosis.flows.sorted();
    assert_eq!(flows.len(), 1, "both directions are one flow");
    let (key, flow) = flows[0];
    assert_eq!(key.a, client);
    // The counts are the kernel's, which include events sampled out.
    assert_eq!((flow.datagrams_a_to_b, flow.datagrams_b_to_a), (0, 0));
    let key = *key;
    diagnosis.count_in_kernel(key, Tally::DatagramsFrom(client), 2);
    diagnosis.count_in_kernel(key, Tally::DatagramsFrom(server), 1);
    diagnosis.count_in_kernel(key, Tally::DatagramsFrom(server), 39);
    let (_, flow) = diagnosis.flows.sorted()[0];
    assert_eq!((flow.datagrams_a_to_b, flow.datagrams_b_to_a), (2, 40));
    assert!(IpAddr::from([192, 0, 2, 1]) == key.a.ip());
}

#[test]
fn verdict_counts_do_not_depend_on_when_the_kernel_counts_arrive() {
    let flow = FlowKey::new(
        "192.0.2.1:1000".parse().unwrap(),
        "192.0.2.2:6000".parse().unwrap(),
    );
    let rcvbuf = Tally::Drops(DropReason::named("SOCKET_RCVBUFF"));
    let drop_at = |ts| {
        event(
            drop("SOCKET_RCVBUFF"),
            "192.0.2.1:1000",
            "192.0.2.2:6000",
            ts,
        )
    };
    // Kernel drains (deltas) interleaved with the events in every order: 5 drops, 3 shown.
    for kernel_first in [0, 1, 2, 3] {
        let mut diagnosis = Diagnosis::new(no_sockets());
        for ts in 0..3 {
            if ts == kernel_first {
                diagnosis.count_in_kernel(flow, rcvbuf.clone(), 2);
                diagnosis.count_in_kernel(flow, rcvbuf.clone(), 3);
            }
            diagnosis.observe(&drop_at(ts + 1));
        }
        if kernel_first == 3 {
            diagnosis.count_in_kernel(flow, rcvbuf.clone(), 5);
        }
        let expected = if kernel_first == 0 {
            // The kernel's counts came before the verdict existed: only the flow has them.
            3
        } else {
            5
        };
        assert_eq!(
            diagnosis.verdicts()[0].count,
            expected,
            "kernel counts after event {kernel_first}"
        );
        assert_eq!(diagnosis.flows.tally(flow, &rcvbuf), 5);
    }
}

#[test]
fn verdicts_past_the_allowance_are_counted_not_opened() {
    let listed = std::rc::Rc::new(std::cell::Cell::new(0));
    let calls = std::rc::Rc::clone(&listed);
    let sockets: SocketLister = Box::new(move |_| {
        calls.set(calls.get() + 1);
        Some(SocketList::default())
    });
    let mut diagnosis = Diagnosis::new(sockets).with_max_flows(100);
    let flows = MAX_VERDICTS_PER_RULE + 50;
    for port in 0..flows {
        let source = format!("198.51.100.7:{}", 10_000 + port);
        diagnosis.observe(&event(drop("NO_SOCKET"), &source, "192.0.2.2:4000", 1));
    }
    assert_eq!(diagnosis.verdicts().len(), MAX_VERDICTS_PER_RULE);
    assert_eq!(diagnosis.not_opened(), 50);
    assert_eq!(
        listed.get(),
        MAX_VERDICTS_PER_RULE,
        "no socket listing past it"
    );
    // Another rule keeps its own allowance: a firewall drop still opens its verdict.
    diagnosis.observe(&event(
        drop("NETFILTER_DROP"),
        "198.51.100.8:1",
        "192.0.2.2:5000",
        2,
    ));
    assert!(
        diagnosis
            .verdicts()
            .iter()
            .any(|v| v.code == VerdictCode::FirewallDrop)
    );
    // The flow table kept at most 100 flows; the others were evicted, counted.
    let listed = diagnosis.flows.sorted().len();
    assert!(listed <= 100, "{listed}");
    assert_eq!(
        diagnosis.flows.other().flows_evicted as usize + listed,
        flows + 1
    );
}

/// The JSON verdict record: today's fields, plus the facts and the evidence as event records
/// that read back into the observed events.
#[test]
fn json_verdict_records_carry_facts_and_evidence_events() {
    let rules: RuleLister = Box::new(|_| {
        Some(vec![FirewallRule {
            table: "inet f".into(),
            chain: "input".into(),
            hook: Some("input".into()),
            text: "udp dport 5000 drop # handle 2".into(),
        }])
    });
    let mut diagnosis = Diagnosis::new(no_sockets()).with_rules(rules);
    let dropped = event(drop("NETFILTER_DROP"), "192.0.2.1:1", "192.0.2.2:5000", 1);
    diagnosis.observe(&dropped);
    let client = "198.51.100.2:40000";
    let [deliver, route, reply] = wrong_source_reply(client);
    for event in [&deliver, &route, &reply] {
        diagnosis.observe(event);
    }
    let verdicts = diagnosis.ready(u64::MAX, true);
    assert_eq!(verdicts.len(), 2);
    let records: Vec<serde_json::Value> = verdicts
        .iter()
        .map(|verdict| serde_json::to_value(VerdictRecord::of(verdict)).unwrap())
        .collect();

    let firewall = &records[0];
    assert_eq!(firewall["code"], "firewall_drop");
    assert_eq!(firewall["flow"], "192.0.2.1:1 <> 192.0.2.2:5000");
    assert_eq!(firewall["summary"], summary(&verdicts[0]));
    assert_eq!(firewall["fix"], fix(&verdicts[0]));
    assert_eq!(firewall["count"], 1);
    assert_eq!(
        firewall["evidence"],
        serde_json::json!(evidence_lines(&verdicts[0]))
    );
    assert_eq!(
        firewall["evidence"][1],
        "rule table inet f chain input (hook input): udp dport 5000 drop # handle 2"
    );
    assert_eq!(firewall["facts"]["source"], "192.0.2.1:1");
    assert_eq!(firewall["facts"]["destination"], "192.0.2.2:5000");
    assert_eq!(
        firewall["facts"]["namespace"],
        serde_json::json!({"netns": 7, "netns_name": "host"})
    );
    assert_eq!(firewall["facts"]["location"], "__udp4_lib_rcv+0x2cd");
    assert_eq!(
        firewall["facts"]["rules"],
        serde_json::json!([{"table": "inet f", "chain": "input", "hook": "input",
            "text": "udp dport 5000 drop # handle 2"}])
    );
    let events: Vec<TraceEvent> =
        serde_json::from_value(firewall["evidence_events"].clone()).unwrap();
    assert_eq!(events, [dropped]);

    let mismatch = &records[1];
    assert_eq!(mismatch["code"], "reply_source_mismatch");
    assert_eq!(mismatch["facts"]["client"], client);
    assert_eq!(mismatch["facts"]["asked"], "192.0.2.1:4000");
    assert_eq!(mismatch["facts"]["used"], "198.51.100.1:4000");
    assert_eq!(
        mismatch["facts"]["socket"],
        serde_json::json!({"local": "0.0.0.0:4000", "inode": 99, "owner_pid": 42,
            "owner_comm": "server"})
    );
    assert_eq!(mismatch["facts"]["route_device"], "br0");
    let events: Vec<TraceEvent> =
        serde_json::from_value(mismatch["evidence_events"].clone()).unwrap();
    assert_eq!(events, [deliver, reply, route]);
}

/// Evidence lines stop at `MAX_EVIDENCE`, the lines of the facts included; the events are kept
/// up to the same number.
#[test]
fn evidence_stops_at_its_maximum() {
    let rules: RuleLister = Box::new(|_| {
        Some(
            (0..3)
                .map(|handle| FirewallRule {
                    table: "inet f".into(),
                    chain: "input".into(),
                    hook: None,
                    text: format!("udp dport 5000 drop # handle {handle}"),
                })
                .collect(),
        )
    });
    let mut diagnosis = Diagnosis::new(no_sockets()).with_rules(rules);
    for ts in 1..=20 {
        diagnosis.observe(&event(
            drop("NETFILTER_DROP"),
            "192.0.2.1:1",
            "192.0.2.2:5000",
            ts,
        ));
    }
    let verdict = &diagnosis.verdicts()[0];
    assert_eq!(verdict.count, 20);
    assert_eq!(verdict.evidence.len(), MAX_EVIDENCE);
    let lines = evidence_lines(verdict);
    assert_eq!(lines.len(), MAX_EVIDENCE);
    assert!(lines[0].contains("NETFILTER_DROP"), "{lines:#?}");
    assert!(
        lines[3].starts_with("rule table inet f chain input (hook ?)"),
        "{lines:#?}"
    );
    assert!(lines[4].contains("NETFILTER_DROP"), "{lines:#?}");
}

#[test]
fn conntrack_drops_say_it_was_not_a_rule_and_give_the_counters() {
    let stats = crate::conntrack::ConntrackStats {
        count: 4,
        max: 4,
        drop: 2,
        insert_failed: 0,
        early_drop: 0,
    };
    let mut full = Diagnosis::new(no_sockets()).with_conntrack(Box::new(move |_| Some(stats)));
    full.observe(&event(
        drop("NETFILTER_DROP"),
        "192.0.2.1:40000",
        "192.0.2.2:5071",
        1,
    ));
    let verdict = &full.ready(u64::MAX, true)[0];
    assert_eq!(
        summary(verdict),
        "connection tracking, not a rule, drops 192.0.2.1:40000 > 192.0.2.2:5071 in namespace \
         host (dropped at __udp4_lib_rcv+0x2cd): its table is full (4 of \
         nf_conntrack_max 4 entries, nothing to evict); the namespace's conntrack drop counter \
         is 2, insert_failed 0, early_drop 0"
    );
    assert!(fix(verdict).starts_with("raise net.netfilter.nf_conntrack_max"));
    assert!(fix(verdict).contains("udp dport 5071 notrack"));
    let raced = crate::conntrack::ConntrackStats {
        count: 2,
        max: 65_536,
        insert_failed: 1,
        ..stats
    };
    let mut race = Diagnosis::new(no_sockets()).with_conntrack(Box::new(move |_| Some(raced)));
    race.observe(&event(
        drop("NETFILTER_DROP"),
        "192.0.2.1:40001",
        "192.0.2.53:53",
        1,
    ));
    let verdict = &race.ready(u64::MAX, true)[0];
    assert!(
        summary(verdict).contains("A and AAAA"),
        "{}",
        summary(verdict)
    );
    assert!(fix(verdict).contains("single-request-reopen"));
}

/// A transmit drop under a multiqueue root: the qdisc of the drop's queue is named, and a
/// `pfifo_fast` (no limit of its own) gets the device's txqueuelen as its knob.
#[test]
fn a_transmit_drop_names_the_queue_s_qdisc_and_its_knob() {
    let qdisc = |kind: &str, handle: &str, parent: Option<&str>| Qdisc {
        kind: kind.into(),
        handle: handle.into(),
        parent: parent.map(Into::into),
        limit: None,
        drops: 9,
        overlimits: 0,
        backlog: 0,
        qlen: 0,
    };
    let mut diagnosis = Diagnosis::new(no_sockets()).with_qdiscs(Box::new(move |_| {
        Some(vec![
            qdisc("mq", "1:", None),
            qdisc("pfifo_fast", "0:", Some("1:1")),
            qdisc("pfifo_fast", "0:", Some("1:2")),
        ])
    }));
    let mut dropped = event(
        What::Drop {
            reason: DropReason::named("QDISC_DROP"),
            reason_inferred: false,
            location: crate::model::Location::Symbol("__dev_queue_xmit+0xdd1".into()),
            txq: Some(1),
        },
        "192.0.2.1:40000",
        "192.0.2.2:5061",
        1,
    );
    dropped.ifname = Some("eth0".into());
    diagnosis.observe(&dropped);
    let verdicts = diagnosis.ready(u64::MAX, true);
    assert_eq!(verdicts.len(), 1);
    let text = verdict_text(&verdicts[0]);
    assert!(
        text.contains(
            "eth0 in namespace host, pfifo_fast 0: (parent 1:2) on transmit queue 1 (queues up \
             to eth0's txqueuelen, full: QDISC_DROP)"
        ),
        "{text}"
    );
    assert!(
        text.contains("evidence: qdisc pfifo_fast 0: (parent 1:2) on eth0 transmit queue 1: "),
        "{text}"
    );
    assert!(
        text.contains("raise eth0's queue length (`ip link set dev eth0 txqueuelen N`"),
        "{text}"
    );
    assert!(
        text.contains("QDISC_DROP on transmit queue 1 at __dev_queue_xmit"),
        "{text}"
    );
}
