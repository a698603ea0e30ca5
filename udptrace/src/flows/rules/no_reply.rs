//! no_reply and no_reply_from_peer: a request that nothing answered within the reply timeout
//! (`--reply-timeout`). `no_reply`: the request was delivered to a socket on this host and its
//! owner sent nothing back to the client. `no_reply_from_peer`: the request left through a
//! device and nothing came back, with no drop or ICMP error about the flow on this host.
//!
//! Only request/response conversations are judged: the server's port is in
//! `REQUEST_RESPONSE_PORTS`, or the server answered the client before. A one-way stream
//! (syslog, statsd, metrics) on another port never is; nor is a two-way stream (QUIC after
//! its handshake, RTP, a game): a server that sends twice without a datagram of the client in
//! between does not answer requests, and the last datagram of such a flow has no answer to wait
//! for. Requests to a broadcast or multicast address, or from no address (a DHCP discover), are
//! answered from and to other addresses: they are not followed either. Time is the event clock: a request is
//! unanswered once an event at least the timeout later has been observed, so that a replay of
//! the recording reaches the same verdicts as the live run; a request still waiting when the
//! trace ends is not judged. A server whose answer failed in its own send (EMSGSIZE past the
//! path MTU, ENETUNREACH, ENOBUFS from a full queue) did answer: that failure has a verdict
//! of its own (fragment_loss, no_route, tx_drop), and "did not answer" would send the person
//! on call to the wrong process.

use std::{
    collections::VecDeque,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use crate::{
    flows::{
        bounded::Bounded,
        rule::{Context, Rule},
        table::{FlowKey, canonical},
        verdict::{Facts, Namespace, VerdictCode},
    },
    model::{Skb, TraceEvent, What},
};

/// The default `--reply-timeout`.
pub const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(2);

/// Server ports of request/response protocols: a datagram to one is a request that expects an
/// answer, from the first. IANA's assignments.
const REQUEST_RESPONSE_PORTS: &[u16] = &[
    53,   // DNS
    67,   // DHCP server (BOOTP)
    68,   // DHCP client (the server's offers answer its discovers)
    69,   // TFTP
    88,   // Kerberos
    123,  // NTP
    161,  // SNMP
    443,  // QUIC (HTTP/3)
    500,  // IKE
    1812, // RADIUS authentication
    1813, // RADIUS accounting
    3478, // STUN/TURN
    4500, // IKE over NAT traversal
];

/// How a request was seen on this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Seen {
    /// Queued to a socket here: its owner is to answer (`no_reply`).
    Delivered,
    /// Handed to a device for transmission, not seen arriving anywhere here
    /// (`no_reply_from_peer`).
    Left,
}

/// A conversation: its client and the server's port.
type Conversation = (SocketAddr, u16);

/// What the server of a conversation did.
#[derive(Clone, Copy, Default)]
struct Exchange {
    /// It answered the client.
    answered: bool,
    /// It sent twice without a datagram of the client in between: not request/response.
    streaming: bool,
    /// The client sent since the server's last datagram.
    asked: bool,
    /// The server's last datagram, seen again at its next hop.
    last_answer: Option<Skb>,
}

/// The oldest unanswered request of a conversation, as seen one way.
struct Pending {
    request: TraceEvent,
    server: SocketAddr,
}

pub struct NoReply {
    timeout_ns: u64,
    /// Conversations by client and server port (the client is the side that spoke first, or
    /// the side whose peer's port is a request/response port).
    conversations: Bounded<Conversation, Exchange>,
    pending: Bounded<(Conversation, Seen), Pending>,
    /// When each pending request times out, in the order they were made (the timeout is the
    /// same for all, events come in kernel-time order); at most `capacity` long.
    deadlines: VecDeque<(u64, (Conversation, Seen))>,
    capacity: usize,
    /// When a send from each socket (namespace, local address) last failed. A failed send names
    /// its destination only where a function probe saw the call; from the `sock_send_length`
    /// tracepoint it carries the socket's connected peer, 0.0.0.0:0 for a server's unconnected
    /// socket: failures are kept by socket.
    failed_sends: Bounded<(u32, SocketAddr), u64>,
}

impl NoReply {
    pub fn new(max_flows: usize, timeout: Duration) -> Self {
        Self {
            timeout_ns: u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX),
            conversations: Bounded::new(max_flows),
            pending: Bounded::new(max_flows),
            deadlines: VecDeque::new(),
            capacity: max_flows,
            failed_sends: Bounded::new(max_flows),
        }
    }

    /// The conversation `event`'s datagram belongs to and whether it goes from its client to
    /// its server; a conversation is made for it when new.
    fn conversation(&mut self, event: &TraceEvent) -> (Conversation, bool) {
        let (source, destination) = (canonical(event.source()), canonical(event.destination()));
        let forward = (source, destination.port());
        let backward = (destination, source.port());
        if self.conversations.get(&forward).is_some() {
            return (forward, true);
        }
        if self.conversations.get(&backward).is_some() {
            return (backward, false);
        }
        // A reply from a request/response port seen before its request (the trace began in
        // between): its destination is the client.
        let reply = REQUEST_RESPONSE_PORTS.contains(&source.port())
            && !REQUEST_RESPONSE_PORTS.contains(&destination.port());
        let (conversation, from_client) = if reply {
            (backward, false)
        } else {
            (forward, true)
        };
        self.conversations.insert(conversation, Exchange::default());
        (conversation, from_client)
    }

    fn expect_reply(&mut self, conversation: Conversation, seen: Seen, request: &TraceEvent) {
        let key = (conversation, seen);
        if self.pending.get(&key).is_some() || self.deadlines.len() >= self.capacity {
            // A retry while the first request waits; or too many waiting to follow more.
            return;
        }
        self.pending.insert(
            key,
            Pending {
                request: request.clone(),
                server: canonical(request.destination()),
            },
        );
        self.deadlines
            .push_back((request.ts_ns.saturating_add(self.timeout_ns), key));
    }

    fn forget(&mut self, conversation: Conversation) {
        for seen in [Seen::Delivered, Seen::Left] {
            self.pending.remove(&(conversation, seen));
        }
    }

    /// Judges the requests whose timeout ended by `now_ns`.
    fn expire(&mut self, now_ns: u64, cx: &mut Context<'_>) {
        while let Some(&(deadline, key)) = self.deadlines.front()
            && deadline <= now_ns
        {
            self.deadlines.pop_front();
            // Answered since, or asked again after an answer (a later deadline of its own).
            let current = self.pending.get(&key).is_some_and(|pending| {
                pending.request.ts_ns.saturating_add(self.timeout_ns) == deadline
            });
            if current && let Some(pending) = self.pending.remove(&key) {
                self.judge(key.0.0, key.1, &pending, cx);
            }
        }
    }

    /// Whether a send from the socket that `request` was delivered to failed after it: its
    /// owner did answer (see the module comment).
    fn answer_failed(&self, request: &TraceEvent, server: SocketAddr) -> bool {
        let wildcard = SocketAddr::new(
            match server.ip() {
                IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
            },
            server.port(),
        );
        [server, wildcard].iter().any(|socket| {
            self.failed_sends
                .get(&(request.netns, *socket))
                .is_some_and(|&failed| failed >= request.ts_ns)
        })
    }

    fn judge(&self, client: SocketAddr, seen: Seen, pending: &Pending, cx: &mut Context<'_>) {
        let request = &pending.request;
        let server = pending.server;
        let timeout_ms = self.timeout_ns / 1_000_000;
        let key = FlowKey::new(client, server);
        let namespace = Namespace::of(request);
        match seen {
            Seen::Delivered => {
                let What::Deliver { socket } = &request.what else {
                    return;
                };
                if self.answer_failed(request, server) {
                    return;
                }
                cx.verdict(key, VerdictCode::NoReply, request, || {
                    (
                        Facts::NoReply {
                            client,
                            server,
                            namespace,
                            socket: socket.clone(),
                            timeout_ms,
                        },
                        vec![request.clone()],
                    )
                });
            }
            Seen::Left => {
                cx.verdict(key, VerdictCode::NoReplyFromPeer, request, || {
                    (
                        Facts::NoReplyFromPeer {
                            client,
                            server,
                            namespace,
                            device: request.ifname.clone(),
                            timeout_ms,
                        },
                        vec![request.clone()],
                    )
                });
            }
        }
    }
}

/// Whether `event` goes from an address to one other host (not 0.0.0.0, not a group or the
/// IPv4 broadcast address).
fn unicast(event: &TraceEvent) -> bool {
    let broadcast = match event.daddr {
        IpAddr::V4(address) => address.is_broadcast(),
        IpAddr::V6(_) => false,
    };
    !event.saddr.is_unspecified() && !event.daddr.is_multicast() && !broadcast
}

impl Rule for NoReply {
    fn on_clock(&mut self, event: &TraceEvent, cx: &mut Context<'_>) {
        if matches!(event.what, What::SendError { .. }) {
            self.failed_sends
                .insert((event.netns, canonical(event.source())), event.ts_ns);
        }
        self.expire(event.ts_ns, cx);
        // A drop or an ICMP error about the flow, either way: what happened is on this host,
        // and other verdicts say what.
        if matches!(event.what, What::Drop { .. } | What::Icmp { .. }) {
            let (source, destination) = (canonical(event.source()), canonical(event.destination()));
            self.forget((source, destination.port()));
            self.forget((destination, source.port()));
        }
    }

    fn on_event(&mut self, event: &TraceEvent, _cx: &mut Context<'_>) {
        // Datagrams at a device or a socket, at every hop (a hop whose tuple NAT changed is a
        // conversation of its own, answered at its own addresses).
        if !matches!(event.what, What::Deliver { .. } | What::Xmit | What::Recv) {
            return;
        }
        let (conversation, from_client) = self.conversation(event);
        let Some(exchange) = self.conversations.get_mut(&conversation) else {
            return;
        };
        if !from_client {
            // From the server to the client: the answer, unless nothing was asked since its
            // last one (another hop of that one shows the same skb).
            if !exchange.asked && exchange.last_answer != event.skb {
                exchange.streaming = true;
            }
            exchange.answered = true;
            exchange.asked = false;
            exchange.last_answer = event.skb;
            self.forget(conversation);
            return;
        }
        exchange.asked = true;
        let Exchange {
            answered,
            streaming,
            ..
        } = *exchange;
        if !matches!(event.what, What::Xmit) {
            // The request arrived at a device or socket of this host: it did not vanish
            // beyond it.
            self.pending.remove(&(conversation, Seen::Left));
        }
        if streaming
            || (!answered && !REQUEST_RESPONSE_PORTS.contains(&conversation.1))
            || !unicast(event)
        {
            // A stream, maybe one-way (judged only once the server has answered), or a request
            // to many.
            return;
        }
        match event.what {
            What::Deliver { .. } => self.expect_reply(conversation, Seen::Delivered, event),
            What::Xmit => self.expect_reply(conversation, Seen::Left, event),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::DEFAULT_REPLY_TIMEOUT;
    use crate::{
        flows::{
            diagnosis::Diagnosis,
            testing::{drop, event, no_sockets, wildcard_socket},
            verdict::{Facts, Verdict, VerdictCode},
        },
        model::{TraceEvent, What},
    };

    const CLIENT: &str = "198.51.100.2:40000";
    const SECOND: u64 = 1_000_000_000;
    const TIMEOUT: u64 = 2 * SECOND;

    fn delivered(dst: &str, ts_ns: u64) -> TraceEvent {
        event(
            What::Deliver {
                socket: wildcard_socket(),
            },
            CLIENT,
            dst,
            ts_ns,
        )
    }

    fn xmit(src: &str, dst: &str, ts_ns: u64) -> TraceEvent {
        let mut xmit = event(What::Xmit, src, dst, ts_ns);
        xmit.ifname = Some("eth0".into());
        xmit
    }

    /// Feeds `events`, then an unrelated event at `end_ns` (the event clock); the verdicts of
    /// this rule (a wrong-source answer or a NO_SOCKET drop get their own).
    fn verdicts(events: &[TraceEvent], end_ns: u64) -> Vec<Verdict> {
        let mut diagnosis = Diagnosis::new(no_sockets());
        assert_eq!(TIMEOUT, DEFAULT_REPLY_TIMEOUT.as_nanos() as u64);
        for event in events {
            diagnosis.observe(event);
        }
        diagnosis.observe(&event(What::Xmit, "192.0.2.9:1", "192.0.2.8:1", end_ns));
        diagnosis
            .verdicts()
            .iter()
            .filter(|v| matches!(v.code, VerdictCode::NoReply | VerdictCode::NoReplyFromPeer))
            .cloned()
            .collect()
    }

    #[test]
    fn a_request_delivered_and_not_answered_names_the_socket() {
        let request = delivered("192.0.2.1:53", SECOND);
        // A retry while the first waits is the same wait.
        let retry = delivered("192.0.2.1:53", SECOND + SECOND / 2);
        let found = verdicts(&[request.clone(), retry], SECOND + TIMEOUT);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].code, VerdictCode::NoReply);
        assert_eq!(found[0].count, 1);
        assert_eq!(found[0].evidence, vec![request]);
        assert_eq!(
            found[0].facts,
            Facts::NoReply {
                client: CLIENT.parse().unwrap(),
                server: "192.0.2.1:53".parse().unwrap(),
                namespace: crate::flows::verdict::Namespace {
                    netns: 7,
                    netns_name: Some("host".into()),
                    container: None,
                },
                socket: wildcard_socket(),
                timeout_ms: 2_000,
            }
        );
        // Judged by the event clock only: without an event that late, nothing.
        assert!(verdicts(&[delivered("192.0.2.1:53", SECOND)], SECOND + TIMEOUT - 1).is_empty());
    }

    /// path-mtu's server: its answers fail with EMSGSIZE in its own sendto() (an unconnected
    /// socket: the error names no peer). It answered; fragment_loss says why nothing arrived.
    #[test]
    fn an_answer_that_failed_in_the_servers_send_is_not_a_missing_answer() {
        let request = delivered("192.0.2.1:53", SECOND);
        let failed = |socket: &str, ts_ns| {
            event(
                What::SendError {
                    error: crate::model::SocketErrno(crate::model::Errno(
                        libc::EMSGSIZE.unsigned_abs(),
                    )),
                    call: None,
                },
                socket,
                "0.0.0.0:0",
                ts_ns,
            )
        };
        for socket in ["192.0.2.1:53", "0.0.0.0:53"] {
            let found = verdicts(
                &[request.clone(), failed(socket, SECOND + 1)],
                SECOND + TIMEOUT,
            );
            assert!(found.is_empty(), "{socket}: {found:?}");
        }
        // A failure before the request, or of another socket, does not answer it.
        for (socket, ts_ns) in [("192.0.2.1:53", SECOND - 1), ("192.0.2.1:54", SECOND + 1)] {
            let found = verdicts(&[failed(socket, ts_ns), request.clone()], SECOND + TIMEOUT);
            assert_eq!(found.len(), 1, "{socket} at {ts_ns}: {found:?}");
        }
    }

    #[test]
    fn an_answer_within_the_timeout_is_healthy_whatever_its_source_address() {
        let request = delivered("192.0.2.1:53", SECOND);
        // A wildcard server's answer may leave from another address: still an answer.
        let answer = xmit("198.51.100.1:53", CLIENT, SECOND + 1);
        assert!(verdicts(&[request, answer], 10 * TIMEOUT).is_empty());
    }

    #[test]
    fn one_way_streams_are_not_judged_until_answered_once() {
        // Syslog: nothing ever answers.
        let syslog: Vec<_> = (1..=5)
            .map(|n| delivered("192.0.2.1:514", n * SECOND))
            .collect();
        assert!(verdicts(&syslog, 10 * TIMEOUT).is_empty());
        // A custom port whose server answered once: its later silence counts.
        let events = [
            delivered("192.0.2.1:7000", SECOND),
            xmit("192.0.2.1:7000", CLIENT, SECOND + 1),
            delivered("192.0.2.1:7000", 2 * SECOND),
        ];
        let found = verdicts(&events, 2 * SECOND + TIMEOUT);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].code, VerdictCode::NoReply);
    }

    #[test]
    fn requests_that_leave_and_vanish_are_beyond_this_host() {
        let request = xmit(CLIENT, "203.0.113.53:123", SECOND);
        let found = verdicts(std::slice::from_ref(&request), SECOND + TIMEOUT);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].code, VerdictCode::NoReplyFromPeer);
        assert_eq!(found[0].evidence, vec![request.clone()]);
        let Facts::NoReplyFromPeer { device, .. } = &found[0].facts else {
            panic!("{:?}", found[0].facts);
        };
        assert_eq!(device.as_deref(), Some("eth0"));
        // Seen arriving at another device of this host (and not delivered): not beyond it.
        let arrived = event(What::Recv, CLIENT, "203.0.113.53:123", SECOND + 1);
        assert!(verdicts(&[request.clone(), arrived], SECOND + TIMEOUT).is_empty());
        // A drop or an ICMP error about the flow: other verdicts say what happened.
        let dropped = event(drop("NO_SOCKET"), CLIENT, "203.0.113.53:123", SECOND + 1);
        assert!(verdicts(&[request, dropped], SECOND + TIMEOUT).is_empty());
    }

    #[test]
    fn two_way_streams_and_broadcasts_are_not_judged() {
        // A server that sends twice in a row (each datagram seen at two hops: one datagram
        // each) streams: the client's last datagram waits for nothing.
        let answer = |ts_ns| {
            let mut xmit = xmit("192.0.2.1:7000", CLIENT, ts_ns);
            xmit.skb = Some(crate::model::Skb(ts_ns));
            let mut recv = event(What::Recv, "192.0.2.1:7000", CLIENT, ts_ns + 1);
            recv.skb = xmit.skb;
            [xmit, recv]
        };
        let mut events = vec![xmit(CLIENT, "192.0.2.1:7000", SECOND)];
        events.extend(answer(SECOND + 10));
        events.push(xmit(CLIENT, "192.0.2.1:7000", SECOND + 20));
        let judged = {
            let mut events = events.clone();
            events.extend(answer(SECOND + 30));
            events.push(xmit(CLIENT, "192.0.2.1:7000", SECOND + 40));
            verdicts(&events, SECOND + 40 + TIMEOUT)
        };
        assert_eq!(judged.len(), 1, "one answer per request: judged {judged:?}");
        events.extend(answer(SECOND + 30));
        events.extend(answer(SECOND + 40));
        events.push(xmit(CLIENT, "192.0.2.1:7000", SECOND + 50));
        assert!(verdicts(&events, SECOND + 50 + TIMEOUT).is_empty());
        // A DHCP discover: from 0.0.0.0 to the broadcast address.
        let discover = xmit("0.0.0.0:68", "255.255.255.255:67", SECOND);
        assert!(verdicts(&[discover], SECOND + TIMEOUT).is_empty());
    }

    #[test]
    fn a_reply_seen_before_its_request_does_not_turn_the_roles_around() {
        // The trace began between a DNS request and its answer: the answer, then the client's
        // next request, answered too. The server's answer is no request.
        let events = [
            xmit("192.0.2.1:53", CLIENT, SECOND),
            xmit(CLIENT, "192.0.2.1:53", 2 * SECOND),
            xmit("192.0.2.1:53", CLIENT, 2 * SECOND + 1),
        ];
        assert!(verdicts(&events, 10 * TIMEOUT).is_empty());
    }
}
