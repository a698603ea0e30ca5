//! A verdict in words: its summary, evidence lines and fix, written from its facts and
//! evidence events (`flows/verdict.rs`); the text output prints them as a block, the JSON
//! verdict record carries them next to the facts and events themselves.

use serde::Serialize;

use super::{
    event::summary as event_summary,
    wire::{device_text, endpoints_text, flow_key_text, location_text, process_text},
};
use crate::{
    containers::Container,
    firewall::FirewallRule,
    flows::{
        ledger::MAX_EVIDENCE,
        verdict::{
            ConntrackCause, Facts, FragmentCause, IcmpCounted, Namespace, PortUnreachables,
            RouteFound, Verdict,
        },
    },
    icmp_limits::{IcmpLimits, XRLIM_BURST_FACTOR},
    model::{Process, SocketInfo, TraceEvent, What},
    qdiscs::Qdisc,
    sockets::{ListedSocket, Mismatch},
};

/// The JSON verdict record (docs/json-schema.md).
#[derive(Serialize)]
pub struct VerdictRecord<'a> {
    code: &'static str,
    /// `a <> b`, or `* > socket` for a socket-wide verdict.
    flow: String,
    summary: String,
    /// The evidence as text lines with their times.
    evidence: Vec<String>,
    fix: String,
    count: u64,
    /// `port_unreachable`: the drops whose ICMP error a rate limit suppressed, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    suppressed: Option<u64>,
    facts: &'a Facts,
    /// The evidence events, as event records (without `type`).
    evidence_events: &'a [TraceEvent],
}

impl<'a> VerdictRecord<'a> {
    pub fn of(verdict: &'a Verdict) -> Self {
        Self {
            code: verdict.code.name(),
            flow: flow_text(verdict),
            summary: summary(verdict),
            evidence: evidence_lines(verdict),
            fix: fix(verdict),
            count: verdict.count,
            suppressed: verdict.icmp_suppressed(),
            facts: &verdict.facts,
            evidence_events: &verdict.evidence,
        }
    }
}

/// A verdict as a block: headline, evidence, fix.
pub fn verdict_text(verdict: &Verdict) -> String {
    let mut text = format!(
        "VERDICT {} ({}, x{}): {}\n",
        verdict.code.name(),
        flow_text(verdict),
        verdict.count,
        summary(verdict)
    );
    for line in evidence_lines(verdict) {
        text.push_str(&format!("    evidence: {line}\n"));
    }
    text.push_str(&format!("    fix: {}", fix(verdict)));
    text
}

/// The flow it concerns; a socket-wide verdict concerns every sender.
pub fn flow_text(verdict: &Verdict) -> String {
    if verdict.socket_wide() {
        format!("* > {}", verdict.key.a)
    } else {
        flow_key_text(&verdict.key)
    }
}

/// One event as an evidence line: time, kind, what happened, where.
pub fn evidence_line(event: &TraceEvent) -> String {
    let place = match (&event.netns_name, &event.ifname) {
        (Some(ns), Some(dev)) => format!(" [ns {ns} dev {dev}]"),
        (Some(ns), None) => format!(" [ns {ns}]"),
        (None, Some(dev)) => format!(" [dev {dev}]"),
        (None, None) => String::new(),
    };
    let location = match &event.what {
        What::Drop { location, .. } => format!(" at {}", location_text(location)),
        _ => String::new(),
    };
    // `udptrace watch`: the hooks that saw it were attached because the flow was escalated.
    let escalated = if event.escalated {
        " (from escalation)"
    } else {
        ""
    };
    format!(
        "{} {} {}{location}{place}{escalated}",
        event.time.time_of_day(),
        event.kind_name(),
        event_summary(event)
    )
}

/// The evidence events as lines, with the lines the facts add (the socket on the port, the
/// firewall rules) after the first; at most `MAX_EVIDENCE`.
pub fn evidence_lines(verdict: &Verdict) -> Vec<String> {
    let mut events = verdict.evidence.iter().map(evidence_line);
    let mut lines: Vec<String> = events.next().into_iter().collect();
    match &verdict.facts {
        Facts::ConnectedSocket {
            namespace, socket, ..
        } => lines.push(format!(
            "socket {} in {}",
            connected_socket_text(socket),
            namespace_text(namespace)
        )),
        Facts::Firewall { rules, .. } | Facts::FragmentLoss { rules, .. } => {
            lines.extend(rules.iter().map(|rule| format!("rule {}", rule_text(rule))));
        }
        Facts::TxDrop {
            device,
            txq,
            qdisc: Some(qdisc),
            ..
        } => lines.push(format!(
            "qdisc {} on {}{}: {}, {} dropped, {} overlimits, {} packets ({} bytes) queued \
             when udptrace read it (`tc -s qdisc show`)",
            qdisc.name(),
            device.as_deref().unwrap_or("?"),
            txq.map_or_else(String::new, |txq| format!(" transmit queue {txq}")),
            qdisc_limit_text(qdisc, device.as_deref()),
            qdisc.drops,
            qdisc.overlimits,
            qdisc.qlen,
            qdisc.backlog
        )),
        _ => {}
    }
    lines.extend(events);
    lines.truncate(MAX_EVIDENCE);
    lines
}

/// The one-sentence diagnosis.
pub fn summary(verdict: &Verdict) -> String {
    match &verdict.facts {
        Facts::ReplySource {
            client,
            asked,
            used,
            socket,
            route_device,
            sender,
            client_container,
            server_container,
        } => {
            let proxy = if is_docker_proxy(socket.owner.as_ref()) {
                format!(
                    " (Docker's userland proxy for port {} published on every host address)",
                    socket.local.port()
                )
            } else {
                String::new()
            };
            let owner = format!(
                "{}{proxy}{}",
                owned_by(socket),
                in_container(server_container.as_ref())
            );
            let in_client = in_container(client_container.as_ref());
            let how = sender.as_ref().map_or_else(String::new, |sender| {
                let who = named(sender.process.as_ref())
                    .map_or_else(String::new, |process| format!("{} ", process_text(process)));
                format!(
                    " (udp_sendmsg shows {who}replying with {} without IP_PKTINFO)",
                    if sender.call.connected {
                        "send()"
                    } else {
                        "sendto()"
                    }
                )
            });
            let why = route_device.as_ref().map_or_else(String::new, |device| {
                let device = device_text(device);
                let network = bridge_network(device)
                    .map_or_else(String::new, |network| format!(" ({network})"));
                format!(
                    ": the route to {} goes out {device}{network}, so the kernel chose {device}'s address as the source",
                    client.ip()
                )
            });
            format!(
                "{client}{in_client} sent to {asked} but the reply came from {used}: the server \
                 socket {} (inode {}){owner} is bound to the wildcard address and replied \
                 without choosing a source{how}{why}; {client} does not accept a reply from {}",
                socket.local,
                socket.inode,
                used.ip()
            )
        }
        Facts::ConnectedSocket {
            source,
            destination,
            socket,
            mismatch,
            connect,
            ..
        } => {
            let pinned = connect.as_ref().map_or_else(String::new, |connect| {
                let who = named(connect.process.as_ref()).map_or_else(String::new, |process| {
                    format!(" by {}", process_text(process))
                });
                format!(
                    "; connect(){who} pinned it to local address {} and peer {}",
                    connect.local, connect.peer
                )
            });
            format!(
                "{source} > {destination} is dropped (NO_SOCKET) although socket {} exists on \
                 port {}: {}{pinned}",
                connected_socket_text(socket),
                destination.port(),
                mismatch_text(*mismatch)
            )
        }
        Facts::NatReply {
            source,
            destination,
            namespace,
            expected,
            conntrack,
        } => format!(
            "the reply {source} > {destination} reaches {} but conntrack expected the \
             reply to come from {expected} (original {}, reply {}); it is not translated back \
             and dies NO_SOCKET",
            namespace_text(namespace),
            endpoints_text(&conntrack.original),
            endpoints_text(&conntrack.reply)
        ),
        Facts::PortUnreachable {
            source,
            destination,
            namespace,
            icmp,
        } => format!(
            "nothing listens on {destination} in {}: {source} gets NO_SOCKET drops and \
             ICMP port unreachable (ECONNREFUSED on a connected client socket){}",
            namespace_text(namespace),
            icmp.as_ref()
                .map_or_else(String::new, |icmp| rate_limited_text(verdict, icmp))
        ),
        Facts::Firewall {
            source,
            destination,
            namespace,
            location,
            rules,
        } => format!(
            "a netfilter rule drops {source} > {destination} in {} (dropped at {}){}",
            namespace_text(namespace),
            location_text(location),
            rules
                .first()
                .map_or_else(String::new, |rule| format!(": {}", rule_text(rule)))
        ),
        Facts::Rcvbuf {
            destination,
            namespace,
            socket,
        } => {
            let socket = socket.as_ref().map_or_else(
                || destination.to_string(),
                |socket| {
                    let entry = &socket.entry;
                    format!(
                        "{} (inode {}, owned by {}, {} bytes queued{}, {} drops counted by the socket)",
                        entry.local,
                        entry.inode,
                        owner_text(socket),
                        entry.rx_queue,
                        entry.rcvbuf.map_or_else(String::new, |rb| {
                            format!(" in a {rb}-byte receive buffer")
                        }),
                        entry.drops
                    )
                },
            );
            format!(
                "socket {socket} in {} drops datagrams: its receive buffer is full (the \
                 process does not read fast enough)",
                namespace_text(namespace)
            )
        }
        Facts::RpFilter {
            source,
            destination,
            device,
        } => format!(
            "reverse-path filtering drops {source} > {destination} on {}: the route back to \
             {} does not leave through the interface it arrived on",
            device.as_deref().unwrap_or("?"),
            source.ip()
        ),
        Facts::Checksum {
            source,
            destination,
        } => format!("{source} > {destination} arrives with a bad UDP checksum"),
        Facts::NeighborUnreachable {
            source,
            destination,
            namespace,
            device,
        } => {
            // IPv6's ndisc_error_report frees without a reason what ARP frees NEIGH_FAILED.
            let (protocol, failed, icmp) = if destination.is_ipv4() {
                ("ARP", "NEIGH_FAILED", "ICMP host unreachable")
            } else {
                (
                    "NDP",
                    "NOT_SPECIFIED in neigh_invalidate",
                    "ICMPv6 address unreachable",
                )
            };
            format!(
                "no host answered {protocol} for the next hop towards {} on {} in {}: \
                 {source} > {destination} waited for the neighbour's address and was dropped \
                 (NEIGH_QUEUEFULL while waiting, {failed} when resolution gave up); the \
                 sender gets {icmp}, EHOSTUNREACH on a socket with IP_RECVERR",
                destination.ip(),
                device.as_deref().unwrap_or("?"),
                namespace_text(namespace)
            )
        }
        Facts::NoRoute {
            source,
            destination,
            namespace,
            forwarded,
            found,
            device,
            process,
            error,
            table,
        } => {
            let table = table.map_or_else(String::new, |table| format!(" (table {table})"));
            let found = route_found_text(*found, destination);
            if *forwarded {
                format!(
                    "{source} > {destination} arriving on {} in {} is dropped: the route \
                     lookup{table} found {found}",
                    device.as_deref().unwrap_or("?"),
                    namespace_text(namespace)
                )
            } else {
                let who = named(process.as_ref())
                    .map_or_else(String::new, |process| format!("{} ", process_text(process)));
                format!(
                    "{who}in {} cannot send from {source} to {destination}: the route \
                     lookup{table} found {found}, so the call fails with {}",
                    namespace_text(namespace),
                    error.map_or("an error", |error| error.name())
                )
            }
        }
        Facts::NoReply {
            client,
            server,
            namespace,
            socket,
            timeout_ms,
        } => {
            let owner = owned_by(socket);
            format!(
                "{client}'s request to {server} was delivered to socket {} (inode {}){owner} in \
                 {}, and nothing was sent back to {client} within {timeout_ms} ms: \
                 the process received the request and did not answer",
                socket.local,
                socket.inode,
                namespace_text(namespace)
            )
        }
        Facts::NoReplyFromPeer {
            client,
            server,
            namespace,
            device,
            timeout_ms,
        } => format!(
            "{client}'s request to {server} left through {} in {} and nothing came \
             back within {timeout_ms} ms, with no drop or ICMP error on this host: the problem \
             is beyond this host",
            device.as_deref().unwrap_or("?"),
            namespace_text(namespace)
        ),
        Facts::TxDrop {
            source,
            destination,
            namespace,
            device,
            reason,
            txq,
            qdisc,
            process,
            error,
        } => {
            let who = named(process.as_ref()).map_or_else(String::new, |process| {
                format!(" sent by {}", process_text(process))
            });
            let queue = txq.map_or_else(String::new, |txq| format!(" on transmit queue {txq}"));
            let which = match qdisc {
                Some(qdisc) => format!(
                    ", {}{queue} ({}, full: {reason})",
                    qdisc.name(),
                    qdisc_limit_text(qdisc, device.as_deref())
                ),
                None => format!("{queue} ({reason}: its queue was full)"),
            };
            let seen = match error {
                Some(error) => format!(
                    "the sender's send returned {} (it has IP_RECVERR: the application saw it)",
                    error.name()
                ),
                None => "a sender without IP_RECVERR is told nothing (its send succeeds; Udp \
                         SndbufErrors counts it), one with it gets ENOBUFS"
                    .to_owned(),
            };
            format!(
                "{} datagram(s) {source} > {destination}{who} were dropped on the way out by \
                 the queueing discipline of {} in {}{which}: {seen}",
                verdict.count,
                device.as_deref().unwrap_or("?"),
                namespace_text(namespace)
            )
        }
        Facts::FragmentLoss {
            source,
            destination,
            namespace,
            location,
            cause,
            datagram_len,
            fragment_size,
            rules,
        } => {
            let size = datagram_len.map_or_else(String::new, |len| format!(" of {len} bytes"));
            let cut = fragment_size.map_or_else(String::new, |size| {
                format!(", cut into fragments of {size} bytes (the MTU on the sender's path)")
            });
            let how = match cause {
                FragmentCause::Firewall => format!(
                    "a netfilter rule in {} drops its fragments (at {}){}",
                    namespace_text(namespace),
                    location_text(location),
                    rules
                        .first()
                        .map_or_else(String::new, |rule| format!(": {}", rule_text(rule)))
                ),
                FragmentCause::ReassemblyTimeout => format!(
                    "{} waited for its missing fragments until reassembly timed out \
                     (FRAG_REASM_TIMEOUT at {}; ICMP time exceeded goes back to {})",
                    namespace_text(namespace),
                    location_text(location),
                    source.ip()
                ),
            };
            format!(
                "the fragmented datagram {source} > {destination}{size}{cut} never arrives \
                 whole: {how}"
            )
        }
        Facts::PathMtu {
            source,
            destination,
            namespace,
            mtu: Some(mtu),
        } => format!(
            "{source} > {destination} is too big for the path and may not be fragmented (DF, \
             IP_PMTUDISC_DO, or IPv6 on the way): {} answers with ICMP that the next \
             link's MTU is {mtu}; the sender's datagrams larger than that fail with EMSGSIZE",
            namespace_text(namespace)
        ),
        Facts::PathMtu {
            source,
            namespace,
            mtu: None,
            ..
        } => format!(
            "sends from {source} in {} fail with EMSGSIZE: the datagram is larger than \
             the path MTU and may not be fragmented (IP_PMTUDISC_DO, or IPv6)",
            namespace_text(namespace)
        ),
        Facts::ConntrackDrop {
            source,
            destination,
            namespace,
            location,
            cause,
            stats,
        } => {
            let why = match cause {
                ConntrackCause::TableFull => format!(
                    "its table is full ({} of nf_conntrack_max {} entries, nothing to evict)",
                    stats.count, stats.max
                ),
                ConntrackCause::InsertFailed => format!(
                    "its new entry clashed with one another CPU inserted at the same time (two \
                     datagrams of a new flow at once, like a resolver's A and AAAA queries from \
                     one socket; insert_failed {})",
                    stats.insert_failed
                ),
                ConntrackCause::Other => format!(
                    "it could not track the flow ({} of nf_conntrack_max {} entries)",
                    stats.count, stats.max
                ),
            };
            format!(
                "connection tracking, not a rule, drops {source} > {destination} in {} \
                 (dropped at {}): {why}; the namespace's conntrack drop counter is {}, \
                 insert_failed {}, early_drop {}",
                namespace_text(namespace),
                location_text(location),
                stats.drop,
                stats.insert_failed,
                stats.early_drop
            )
        }
    }
}

/// What to do about it.
pub fn fix(verdict: &Verdict) -> String {
    match &verdict.facts {
        Facts::ReplySource { asked, socket, .. } if is_docker_proxy(socket.owner.as_ref()) => {
            format!(
                "publish the port on the host address clients use (docker run -p {}:{}:PORT/udp: \
                 docker-proxy then binds to it and replies from it), or run dockerd with \
                 --userland-proxy=false so that hairpin NAT answers from the address asked, or \
                 have clients address the container directly on its network",
                asked.ip(),
                asked.port()
            )
        }
        Facts::ReplySource { asked, .. } => format!(
            "bind the server socket to {} (the address clients use), or receive the destination \
             address with IP_PKTINFO/IPV6_RECVPKTINFO and send the reply with sendmsg() carrying \
             it as the source",
            asked.ip()
        ),
        Facts::ConnectedSocket { destination, .. } => format!(
            "do not connect() a server socket (netcat -u -l does after the first datagram), or \
             bind it to the address clients use ({})",
            destination.ip()
        ),
        // Seed 004 with real Docker: the masquerade that is not undone is a Docker-in-Docker
        // daemon's (its containers' network NATed out of the outer container's namespace), and
        // the wrong replier is the port the host publishes, so the fix is in Docker's options.
        Facts::NatReply {
            expected,
            namespace,
            ..
        } if let Some(container) = namespace.container.as_ref().and_then(Container::described) => {
            format!(
                "{container} masquerades its own containers' traffic (Docker-in-Docker) and \
                 undoes it only for replies from {expected}, the port the host publishes: make \
                 the reply come back from there. Publish the port on that address (docker run \
                 -p {}:{}:PORT/udp: docker-proxy then binds to it and replies from it), or run \
                 the host's dockerd with --userland-proxy=false (hairpin NAT: the reply returns \
                 through the host's conntrack; bridged traffic must pass iptables, \
                 net.bridge.bridge-nf-call-iptables=1), or have the inner containers address \
                 the server container directly on its network",
                expected.ip(),
                expected.port()
            )
        }
        Facts::NatReply { expected, .. } => format!(
            "make the reply come from {expected}: the server (or its userland proxy) must answer \
             from the address the client's NAT sent to — disable the userland proxy \
             (dockerd --userland-proxy=false) or bind/answer with IP_PKTINFO"
        ),
        Facts::PortUnreachable { destination, .. } => format!(
            "start the service on port {} (check `ss -uanp` in that namespace), or point the \
             client at the right address and port{}",
            destination.port(),
            if verdict.icmp_suppressed().is_some() {
                "; under the ICMP rate limit a closed port looks like a lost datagram: do not \
                 rely on ECONNREFUSED to detect it (the limit protects against floods; lowering \
                 the ratelimit sysctl named above lets more errors through)"
            } else {
                ""
            }
        ),
        Facts::Firewall { destination, .. } => format!(
            "find the rule with `nft list ruleset` (or `iptables-save`) in that namespace and \
             allow udp dport {}",
            destination.port()
        ),
        Facts::Rcvbuf { .. } => "read faster (more threads, recvmmsg), or raise the buffer: \
                                 setsockopt SO_RCVBUF (capped by net.core.rmem_max) or \
                                 SO_RCVBUFFORCE"
            .into(),
        Facts::RpFilter { .. } => "set net.ipv4.conf.<dev>.rp_filter=2 (loose) on multi-homed \
                                   hosts, or fix the routes"
            .into(),
        Facts::Checksum { .. } => "check the sender's checksum offload (ethtool -K DEV tx off) \
                                   and anything rewriting the packet on the way"
            .into(),
        Facts::NeighborUnreachable {
            destination,
            device,
            ..
        } => format!(
            "the host {} (or the gateway towards it) is down, unplugged or on another VLAN or \
             subnet: `ip neigh show dev {}` in that namespace lists the next hop as FAILED or \
             INCOMPLETE; check the host, the cabling/VLAN and the route (`ip route get {0}`)",
            destination.ip(),
            device.as_deref().unwrap_or("DEV")
        ),
        Facts::NoReply { socket, .. } => format!(
            "look at the server{}: stuck or overloaded (`ss -uanp` shows its receive queue), or \
             ignoring this client (an ACL, a view, a rate limit): its logs say which; a client \
             that retries sooner than the server answers needs a longer timeout",
            socket
                .owner
                .as_ref()
                .map_or_else(String::new, |owner| format!(
                    " process {}",
                    process_text(owner)
                ))
        ),
        Facts::NoRoute {
            destination,
            namespace,
            found,
            ..
        } => {
            let ip = destination.ip();
            let inside = namespace_text(namespace);
            let show = format!("`ip route get {ip}` in {inside} shows the answer");
            match found {
                RouteFound::NoRoute => format!(
                    "{show}: add a route to {ip} (or a default route) in that namespace, or \
                     bring up the interface or VPN whose route is missing"
                ),
                RouteFound::NotForwarding => format!(
                    "{show}: the datagram is for another host but {inside} does not forward; \
                     enable forwarding there (`net.ipv4.ip_forward=1`, \
                     `net.ipv6.conf.all.forwarding=1`) or send it to the right host"
                ),
                RouteFound::Unreachable
                | RouteFound::Blackhole
                | RouteFound::Prohibit
                | RouteFound::Reject => {
                    // `ip route show type` takes one type.
                    let (route, list) = match found {
                        RouteFound::Unreachable => ("unreachable", "type unreachable"),
                        RouteFound::Blackhole => ("blackhole", "type blackhole"),
                        RouteFound::Prohibit => ("prohibit", "type prohibit"),
                        _ => ("reject", "(unreachable, blackhole and prohibit routes)"),
                    };
                    format!(
                        "{show}: remove the {route} route that covers {ip} (`ip route show \
                         table all {list}`, `ip -6 route` for IPv6) or add a more specific \
                         route to it"
                    )
                }
            }
        }
        Facts::NoReplyFromPeer { server, device, .. } => format!(
            "follow the request beyond this host: capture on {} (`tcpdump -ni {0} udp port {}`), \
             check that {} is up and its service answers, and the firewalls and NAT on the way \
             (both directions)",
            device.as_deref().unwrap_or("the device"),
            server.port(),
            server.ip()
        ),
        Facts::TxDrop {
            device,
            namespace,
            qdisc,
            ..
        } => {
            let device = device.as_deref().unwrap_or("DEV");
            let knob = match qdisc {
                Some(qdisc) if qdisc.limited_by_txqueuelen() => format!(
                    "raise {device}'s queue length (`ip link set dev {device} txqueuelen N`: \
                     {} queues up to it)",
                    qdisc.name()
                ),
                Some(qdisc) => {
                    let limit = qdisc.limit.map_or_else(String::new, |limit| {
                        format!(" (now {limit} {})", qdisc.limit_unit())
                    });
                    let rate = if SHAPERS.contains(&qdisc.kind.as_str()) {
                        " or its shaping rate"
                    } else {
                        ""
                    };
                    format!(
                        "raise the limit of {}{limit}{rate} (`tc qdisc change dev {device} \
                         handle {} {} ...`)",
                        qdisc.name(),
                        qdisc.handle,
                        qdisc.kind
                    )
                }
                None => "raise its limit or its shaping rate".to_owned(),
            };
            format!(
                "`tc -s qdisc show dev {device}` in {} shows the qdisc and its dropped/overlimits \
                 counters: {knob}, or pace the sender to the rate the device is given; a sender \
                 that must know sets IP_RECVERR and handles ENOBUFS",
                namespace_text(namespace)
            )
        }
        Facts::FragmentLoss { source, rules, .. } => {
            let through = rules.first().map_or_else(
                || "let fragments through the firewalls on the path".to_owned(),
                |rule| format!("let fragments through (`{}`)", rule_text(rule)),
            );
            format!(
                "send smaller datagrams from {source} (e.g. an EDNS buffer of 1232 bytes, which \
                 fits any IPv6 path), or {through}, or lower the sender's MTU so that nothing \
                 needs fragmenting"
            )
        }
        Facts::PathMtu { source, mtu, .. } => {
            let fits = mtu.map_or_else(String::new, |mtu| {
                // IPv4 header 20 bytes, IPv6 40, UDP 8.
                let headers = if source.is_ipv4() { 28 } else { 48 };
                format!(
                    " (at most {} bytes of payload)",
                    mtu.saturating_sub(headers)
                )
            });
            format!(
                "send smaller datagrams{fits}, e.g. an EDNS buffer of 1232 bytes; or raise the MTU \
                 of the narrow link; and let ICMP fragmentation-needed (3/4) and packet-too-big \
                 through every firewall on the path, so that senders learn the path MTU"
            )
        }
        Facts::ConntrackDrop {
            cause: ConntrackCause::InsertFailed,
            ..
        } => "send the A and AAAA queries one after the other (`options single-request-reopen` \
              in /etc/resolv.conf), or run a kernel whose conntrack resolves such clashes \
              (`nf_ct_resolve_clash`: identical entries since Linux 4.6, NATed UDP since 5.6); \
              or exempt the traffic \
              from tracking (`notrack` for udp dport 53 in a raw-priority chain)"
            .into(),
        Facts::ConntrackDrop { destination, .. } => format!(
            "raise net.netfilter.nf_conntrack_max (and the hash size, \
             /sys/module/nf_conntrack/parameters/hashsize), shorten \
             net.netfilter.nf_conntrack_udp_timeout and nf_conntrack_udp_timeout_stream, or \
             exempt high-volume UDP such as DNS from tracking (`udp dport {} notrack` in an \
             nftables chain of priority raw); `conntrack -C` and `conntrack -S` in that \
             namespace show the count and the drops",
            destination.port()
        ),
    }
}

/// Qdiscs that shape to a configured rate (whose `rate` is a knob besides their limit).
const SHAPERS: [&str; 4] = ["tbf", "htb", "hfsc", "cake"];

/// `limit 1600 bytes`; `up to eth0's txqueuelen` for pfifo_fast; `no limit of its own`.
fn qdisc_limit_text(qdisc: &Qdisc, device: Option<&str>) -> String {
    match qdisc.limit {
        Some(limit) => format!("limit {limit} {}", qdisc.limit_unit()),
        None if qdisc.limited_by_txqueuelen() => {
            format!(
                "queues up to {}'s txqueuelen",
                device.unwrap_or("the device")
            )
        }
        None => "no limit shown".to_owned(),
    }
}

/// Whether the process is Docker's userland proxy (dockerd `--userland-proxy=true`, the
/// default), which relays a published port from a socket bound to `-host-ip` (0.0.0.0 unless
/// `-p IP:PORT:PORT` names one): its wrong-source replies are fixed in Docker's options, not
/// in its code.
fn is_docker_proxy(process: Option<&Process>) -> bool {
    process.is_some_and(|process| process.comm == "docker-proxy")
}

/// The container network a bridge device belongs to, by the names the runtimes give them:
/// docker0 (`--bip`), br-<network id> (`docker network create`), cni0 (the CNI bridge plugin's
/// default, Kubernetes pods), podman0 (Podman's default network).
fn bridge_network(device: &str) -> Option<String> {
    match device {
        "docker0" => Some("Docker's default bridge network".into()),
        "cni0" => Some("the CNI bridge of the pod network".into()),
        "podman0" => Some("Podman's default network".into()),
        _ => device
            .strip_prefix("br-")
            .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit()))
            .map(|id| format!("the bridge of the Docker network with id {id}")),
    }
}

/// A process with a name: the kernel gives some without (`comm` empty).
fn named(process: Option<&Process>) -> Option<&Process> {
    process.filter(|process| !process.comm.is_empty())
}

/// ` owned by comm[pid]` for a socket whose owner is known, else nothing.
fn owned_by(socket: &SocketInfo) -> String {
    socket.owner.as_ref().map_or_else(String::new, |owner| {
        format!(" owned by {}", process_text(owner))
    })
}

/// `container web-1 (docker 3336e43c0a1b)` for a named container's namespace, else
/// `namespace NAME` (its inode when it has no name).
/// What a failed route lookup found, for a summary.
fn route_found_text(found: RouteFound, destination: &std::net::SocketAddr) -> String {
    match found {
        RouteFound::NoRoute => format!("no route to {} (ENETUNREACH)", destination.ip()),
        RouteFound::Unreachable => {
            "an `unreachable` route (EHOSTUNREACH, ICMP host unreachable to forwarded traffic)".into()
        }
        RouteFound::Blackhole => "a `blackhole` route (EINVAL; forwarded traffic is dropped silently)".into(),
        RouteFound::Prohibit => {
            "a `prohibit` route (EACCES, ICMP administratively prohibited to forwarded traffic)".into()
        }
        RouteFound::Reject => "a reject route (unreachable, blackhole or prohibit)".into(),
        RouteFound::NotForwarding => "that the destination is another host's, and this one does not forward (IP_INADDRERRORS)".into(),
    }
}

/// What the ICMP rate limits did to a port_unreachable flow's errors: how many they
/// suppressed where the hook counts errors sent, or that the count is unknown where it counts
/// attempts; empty when nothing was suppressed (or, for attempts, when no more than one
/// destination's burst was attempted).
fn rate_limited_text(verdict: &Verdict, icmp: &PortUnreachables) -> String {
    let ipv6 = verdict.key.a.is_ipv6();
    let limits = icmp
        .limits
        .as_ref()
        .map_or_else(String::new, |limits| limits_text(limits, ipv6));
    let timeout = "for those datagrams the client gets no error: it waits for its timeout \
                   instead of failing with ECONNREFUSED";
    match (icmp.counted, verdict.icmp_suppressed()) {
        (IcmpCounted::Sent, Some(suppressed)) => format!(
            "; the ICMP rate limit suppressed {suppressed} of the {} port unreachables ({} \
             sent): {timeout}{limits}",
            verdict.count, icmp.seen
        ),
        (IcmpCounted::Attempted, _) if icmp.limits.is_some() => format!(
            "; {} port unreachables were attempted, and how many the ICMP rate limit \
             suppressed is unknown on this kernel (its ICMP hook, a function probe at the entry \
             of {}, fires before the limits); {timeout} whose error was suppressed{limits}",
            icmp.seen,
            if ipv6 { "icmp6_send" } else { "__icmp_send" }
        ),
        _ => String::new(),
    }
}

/// The namespace's ICMP limits for a flow of that family, and its counters of what they
/// suppressed where the kernel has them.
fn limits_text(limits: &IcmpLimits, ipv6: bool) -> String {
    let value = |value: Option<u64>| value.map_or_else(|| "?".to_owned(), |v| v.to_string());
    let interval = value(limits.interval_ms(ipv6));
    let host = if ipv6 {
        format!("net.ipv6.icmp.ratelimit={interval}")
    } else {
        format!("net.ipv4.icmp_ratelimit={interval}")
    };
    let mut text = format!(
        "; limits in that namespace: {host} (ms between errors to one destination, after a \
         burst of {XRLIM_BURST_FACTOR}), net.ipv4.icmp_msgs_per_sec={} with \
         net.ipv4.icmp_msgs_burst={} (all destinations)",
        value(limits.msgs_per_sec),
        value(limits.msgs_burst)
    );
    let counter = if ipv6 {
        "Icmp6OutRateLimitHost"
    } else {
        "Icmp OutRateLimitHost"
    };
    match (limits.host_suppressed(ipv6), limits.out_rate_limit_global) {
        (Some(host), Some(global)) => text.push_str(&format!(
            "; its counters when udptrace read them (at the first suppressed error): {counter} \
             {host}, Icmp OutRateLimitGlobal {global}"
        )),
        (Some(host), None) => {
            text.push_str(&format!(
                "; its counter when udptrace read it (at the first suppressed error): {counter} \
                 {host}"
            ));
        }
        _ => {}
    }
    text
}

fn namespace_text(namespace: &Namespace) -> String {
    namespace
        .container
        .as_ref()
        .and_then(Container::described)
        .unwrap_or_else(|| {
            format!(
                "namespace {}",
                namespace
                    .netns_name
                    .clone()
                    .unwrap_or_else(|| namespace.netns.to_string())
            )
        })
}

/// ` in container web-1 (docker 3336e43c0a1b)` when `container` is named, else nothing.
fn in_container(container: Option<&Container>) -> String {
    container
        .and_then(Container::described)
        .map_or_else(String::new, |text| format!(" in {text}"))
}

/// `comm[pid]` of the process holding the socket, else `uid N`.
fn owner_text(socket: &ListedSocket) -> String {
    socket
        .owner
        .as_ref()
        .map_or_else(|| format!("uid {}", socket.entry.uid), process_text)
}

/// `198.51.100.1:4000 connected to 198.51.100.2:40000 (inode 5, owned by nc[77])`.
fn connected_socket_text(socket: &ListedSocket) -> String {
    format!(
        "{}{} (inode {}, owned by {})",
        socket.entry.local,
        socket
            .entry
            .peer
            .map_or_else(String::new, |peer| format!(" connected to {peer}")),
        socket.entry.inode,
        owner_text(socket)
    )
}

fn mismatch_text(mismatch: Mismatch) -> String {
    match mismatch {
        Mismatch::Port { listens } => format!("it listens on port {listens}"),
        Mismatch::Address { bound, addressed } => {
            format!("it is bound to {bound} but the datagram is addressed to {addressed}")
        }
        Mismatch::Peer { connected, source } => {
            format!("it is connected to {connected}, not to {source}")
        }
    }
}

/// `table inet f chain input (hook input): udp dport 5000 drop # handle 2`.
fn rule_text(rule: &FirewallRule) -> String {
    format!(
        "table {} chain {} (hook {}): {}",
        rule.table,
        rule.chain,
        rule.hook.as_deref().unwrap_or("?"),
        rule.text
    )
}

#[cfg(test)]
#[path = "verdict_tests.rs"]
mod tests;
