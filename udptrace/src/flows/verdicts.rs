//! Verdict rules: each turns a pattern of events into a diagnosis with a stable code, a
//! one-sentence summary naming addresses, ports, sockets and processes, the evidence (the
//! events that prove it) and the fix. The codes are an interface (docs/verdicts.md).
//!
//! A verdict is held back for `SETTLE` after its first evidence so that the events that
//! complete it (the ICMP error, the ECONNREFUSED it causes) can join it; it is then emitted
//! once, and again in the exit summary with its final counts.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    time::Duration,
};

use serde::Serialize;

use super::{
    bounded::Bounded,
    table::{DEFAULT_MAX_FLOWS, FlowKey, FlowTable, Tally, canonical},
};
use crate::{
    firewall::FirewallRule,
    model::{DropReason, Process, RouteDirection, SendCall, SocketInfo, TraceEvent, What},
    render::{
        text::summary,
        wire::{device_text, endpoints_text, location_text, process_text},
    },
    sockets::{Mismatch, SocketList, UdpSocketEntry},
};

/// Wording the send-call refinement of reply_source_mismatch inserts after (and finds).
const NO_SOURCE_CHOSEN: &str = "replied without choosing a source";
const SENDER_SHOWN: &str = "udp_sendmsg shows";

/// How long a verdict waits for the rest of its evidence.
pub const SETTLE: Duration = Duration::from_millis(300);
/// Evidence lines kept per verdict (the count keeps going).
const MAX_EVIDENCE: usize = 12;
/// Recent events remembered for rules that look back (ICMP errors, route lookups, NAT).
const HISTORY: usize = 2_048;
/// Verdicts opened per rule (the three NO_SOCKET codes share one allowance). A storm of
/// broken flows (a port scan, thousands of clients of a dead service) would otherwise open a
/// verdict, list sockets and print a report per flow; past this, occurrences in new flows are
/// counted (`not_opened`) and their drops stay in the flows.
pub const MAX_VERDICTS_PER_RULE: usize = 256;
/// The rules, for `MAX_VERDICTS_PER_RULE`.
const RULES: usize = 6;

pub const REPLY_SOURCE_MISMATCH: &str = "reply_source_mismatch";
pub const CONNECTED_SOCKET_MISMATCH: &str = "connected_socket_mismatch";
pub const PORT_UNREACHABLE: &str = "port_unreachable";
pub const FIREWALL_DROP: &str = "firewall_drop";
pub const RCVBUF_OVERFLOW: &str = "rcvbuf_overflow";
pub const NAT_REPLY_MISMATCH: &str = "nat_reply_mismatch";
pub const RP_FILTER_DROP: &str = "rp_filter_drop";
pub const CHECKSUM_ERROR: &str = "checksum_error";

#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    pub code: &'static str,
    /// The flow it concerns (`a <> b`).
    pub flow: String,
    pub summary: String,
    /// The events that prove it, as text lines with their times.
    pub evidence: Vec<String>,
    pub fix: String,
    /// Occurrences of the failure so far (drops, wrong-source replies, ...).
    pub count: u64,
    #[serde(skip)]
    first_ns: u64,
    #[serde(skip)]
    emitted: bool,
    #[serde(skip)]
    key: FlowKey,
}

impl Verdict {
    fn add_evidence(&mut self, event: &TraceEvent) {
        if self.evidence.len() < MAX_EVIDENCE {
            self.evidence.push(evidence_line(event));
        }
    }
}

fn evidence_line(event: &TraceEvent) -> String {
    let time = event.time.time_of_day();
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
    format!(
        "{time} {} {}{location}{place}",
        event.kind_name(),
        summary(event)
    )
}

/// A request delivered to a wildcard-bound socket: the address the client asked for.
struct Request {
    server: SocketAddr,
    socket: String,
    evidence: String,
}

/// Lists the UDP sockets of the event's network namespace, as they were at the event or since;
/// `None` when it cannot be entered.
pub type SocketLister = Box<dyn Fn(&TraceEvent) -> Option<SocketList>>;

/// Lists the firewall rules of the event's network namespace that drop its destination port.
pub type RuleLister = Box<dyn Fn(&TraceEvent) -> Option<Vec<FirewallRule>>>;

/// The kernel's count of a (flow, tally) credited to the verdict its events count towards.
struct Credit {
    verdict: usize,
    /// Events of the tally this verdict counted since the credit began.
    observed: u64,
    /// What the kernel counted of the tally since.
    kernel: u64,
}

impl Credit {
    /// What the verdict counts beyond its observed events: the verdict's share is
    /// max(observed, kernel), whichever order events and kernel counts arrive in.
    fn extra(&self) -> u64 {
        self.kernel.saturating_sub(self.observed)
    }
}

/// Which `MAX_VERDICTS_PER_RULE` allowance a code draws on.
fn rule_of(code: &str) -> usize {
    match code {
        PORT_UNREACHABLE | CONNECTED_SOCKET_MISMATCH | NAT_REPLY_MISMATCH => 0,
        REPLY_SOURCE_MISMATCH => 1,
        FIREWALL_DROP => 2,
        RCVBUF_OVERFLOW => 3,
        RP_FILTER_DROP => 4,
        _ => 5,
    }
}

pub struct Diagnosis {
    pub flows: FlowTable,
    verdicts: Vec<Verdict>,
    index: HashMap<(FlowKey, &'static str), usize>,
    /// Verdicts opened per rule (`rule_of`).
    opened: [usize; RULES],
    /// Occurrences that would have opened a verdict past `MAX_VERDICTS_PER_RULE`.
    not_opened: u64,
    /// (client endpoint, server port) → request to a wildcard socket; as many as flows.
    requests: Bounded<(SocketAddr, u16), Request>,
    /// Datagrams (source, destination) already explained by a verdict.
    explained: Bounded<(SocketAddr, SocketAddr), usize>,
    /// (flow, tally) → the verdict those events count towards, so that events the kernel
    /// counted without writing them (sampled out, lost) count there too (`count_in_kernel`).
    tally_verdicts: Bounded<(FlowKey, Tally), Credit>,
    /// The verdict the event being observed counted towards, if any.
    counted: Option<usize>,
    history: VecDeque<TraceEvent>,
    sockets: SocketLister,
    rules: RuleLister,
}

impl Diagnosis {
    pub fn new(sockets: SocketLister) -> Self {
        Self {
            flows: FlowTable::default(),
            verdicts: Vec::new(),
            index: HashMap::new(),
            opened: [0; RULES],
            not_opened: 0,
            requests: Bounded::new(DEFAULT_MAX_FLOWS),
            explained: Bounded::new(DEFAULT_MAX_FLOWS),
            tally_verdicts: Bounded::new(DEFAULT_MAX_FLOWS),
            counted: None,
            history: VecDeque::new(),
            sockets,
            rules: Box::new(|_| None),
        }
    }

    /// Keeps at most `max_flows` flows (and as many requests, explained datagrams and
    /// credited tallies).
    #[must_use]
    pub fn with_max_flows(mut self, max_flows: usize) -> Self {
        self.flows = FlowTable::new(max_flows);
        self.requests = Bounded::new(max_flows);
        self.explained = Bounded::new(max_flows);
        self.tally_verdicts = Bounded::new(max_flows);
        self
    }

    /// Names the rule behind `firewall_drop` verdicts.
    #[must_use]
    pub fn with_rules(mut self, rules: RuleLister) -> Self {
        self.rules = rules;
        self
    }

    /// Feeds one event to the rules.
    pub fn observe(&mut self, event: &TraceEvent) {
        self.flows.record(event);
        self.counted = None;
        match &event.what {
            What::Deliver { socket } => self.on_deliver(event, socket),
            What::Xmit => self.on_xmit(event),
            What::Drop { reason, .. } => self.on_drop(event, reason),
            What::Icmp { .. }
            | What::SockError { .. }
            | What::SendError { .. }
            | What::RecvError { .. } => {
                self.attach_to_flow(event);
            }
            What::Send {
                call: Some(call), ..
            } => self.on_send_call(event, *call),
            What::Send { .. }
            | What::Route { .. }
            | What::Recv
            | What::Connect { .. }
            | What::Lookup { .. } => {}
        }
        if let Some(tally) = Tally::of(event)
            && let Some(index) = self.counted
        {
            let credit = self.tally_verdicts.get_or_insert_with(
                (FlowKey::of(event), tally),
                || Credit {
                    verdict: index,
                    observed: 0,
                    kernel: 0,
                },
                |_, _| {},
            );
            if credit.verdict != index {
                *credit = Credit {
                    verdict: index,
                    observed: 0,
                    kernel: 0,
                };
            }
            let before = credit.extra();
            credit.observed += 1;
            // The event already counted once on the verdict: the kernel's count of it, if
            // credited before the event arrived, is taken back.
            self.verdicts[index].count -= before - credit.extra();
        }
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(event.clone());
    }

    /// The kernel counted `count` more of `tally` in `flow`, events written or not (a storm's
    /// events are sampled): the flow takes them, and so does the verdict those events feed
    /// (beyond the events it already counted).
    pub fn count_in_kernel(&mut self, flow: FlowKey, tally: Tally, count: u64) {
        self.flows.add_tally(flow, &tally, count);
        if let Some(credit) = self.tally_verdicts.get_mut(&(flow, tally)) {
            let before = credit.extra();
            credit.kernel += count;
            self.verdicts[credit.verdict].count += credit.extra() - before;
        }
    }

    /// Occurrences past `MAX_VERDICTS_PER_RULE` that opened no verdict.
    pub fn not_opened(&self) -> u64 {
        self.not_opened
    }

    /// Whether a verdict of `code` may still be opened; counts the occurrence otherwise.
    fn room_for(&mut self, code: &str) -> bool {
        let room = self.opened[rule_of(code)] < MAX_VERDICTS_PER_RULE;
        if !room {
            self.not_opened += 1;
        }
        room
    }

    /// Verdicts whose evidence has settled by `now_ns` (kernel monotonic time) and were not yet
    /// emitted; `flush` emits all.
    pub fn ready(&mut self, now_ns: u64, flush: bool) -> Vec<Verdict> {
        let settle = SETTLE.as_nanos() as u64;
        let mut ready = Vec::new();
        for verdict in &mut self.verdicts {
            if !verdict.emitted && (flush || now_ns >= verdict.first_ns + settle) {
                verdict.emitted = true;
                ready.push(verdict.clone());
            }
        }
        ready
    }

    /// Every verdict with its final evidence and counts.
    pub fn verdicts(&self) -> &[Verdict] {
        &self.verdicts
    }

    /// Counts another occurrence on an open verdict; `false` when none is open.
    fn bump(&mut self, key: FlowKey, code: &'static str, event: &TraceEvent) -> bool {
        let Some(&index) = self.index.get(&(key, code)) else {
            return false;
        };
        self.count_occurrence(index, event);
        true
    }

    /// `event` is another occurrence of verdict `index`.
    fn count_occurrence(&mut self, index: usize, event: &TraceEvent) {
        let verdict = &mut self.verdicts[index];
        verdict.count += 1;
        verdict.add_evidence(event);
        self.counted = Some(index);
    }

    /// Counts `event` on the open verdict of `code` on `key`, or opens it (within the rule's
    /// allowance: `None` past it).
    fn verdict(
        &mut self,
        key: FlowKey,
        code: &'static str,
        event: &TraceEvent,
        make: impl FnOnce() -> (String, Vec<String>, String),
    ) -> Option<usize> {
        if let Some(&index) = self.index.get(&(key, code)) {
            self.count_occurrence(index, event);
            return Some(index);
        }
        if !self.room_for(code) {
            return None;
        }
        self.opened[rule_of(code)] += 1;
        let (summary, evidence, fix) = make();
        self.flows.mark(key, code);
        self.verdicts.push(Verdict {
            code,
            // A socket-wide verdict (both ends the same) concerns every sender.
            flow: if key.a == key.b {
                format!("* > {}", key.a)
            } else {
                key.to_string()
            },
            summary,
            evidence,
            fix,
            count: 1,
            first_ns: event.ts_ns,
            emitted: false,
            key,
        });
        let index = self.verdicts.len() - 1;
        self.index.insert((key, code), index);
        self.counted = Some(index);
        Some(index)
    }

    /// Adds ICMP errors and socket errors to verdicts already open on their flow.
    fn attach_to_flow(&mut self, event: &TraceEvent) {
        let datagram = (canonical(event.source()), canonical(event.destination()));
        if let Some(&index) = self.explained.get(&datagram) {
            self.verdicts[index].add_evidence(event);
            return;
        }
        let key = FlowKey::of(event);
        for verdict in self.verdicts.iter_mut().filter(|v| v.key == key) {
            verdict.add_evidence(event);
        }
    }

    fn on_deliver(&mut self, event: &TraceEvent, socket: &SocketInfo) {
        if socket.local.ip().is_unspecified() && socket.peer.is_none() {
            let owner = socket.owner.as_ref().map_or_else(String::new, |owner| {
                format!(" owned by {}", process_text(owner))
            });
            self.requests.insert(
                (canonical(event.source()), event.dport),
                Request {
                    server: canonical(event.destination()),
                    socket: format!("{} (inode {}){owner}", socket.local, socket.inode),
                    evidence: evidence_line(event),
                },
            );
        }
    }

    /// reply_source_mismatch: a reply to a request that went to A:p leaves from B:p.
    fn on_xmit(&mut self, event: &TraceEvent) {
        // Only a datagram's first hop shows the source the sender chose; later hops of the
        // same skb (`tracked`) may carry a tuple NAT rewrote on the way (a DNAT undone is not
        // a wrong source).
        if event.tracked {
            return;
        }
        let client = canonical(event.destination());
        let Some(request) = self.requests.get(&(client, event.sport)) else {
            return;
        };
        let replied_from = canonical(event.source());
        if replied_from.ip() == request.server.ip() {
            return;
        }
        let datagram = (replied_from, client);
        if let Some(&index) = self.explained.get(&datagram) {
            self.count_occurrence(index, event);
            return;
        }
        let key = FlowKey::new(client, request.server);
        let route = self
            .history
            .iter()
            .rev()
            .find(|e| {
                matches!(
                    &e.what,
                    What::Route {
                        direction: RouteDirection::Output,
                        ..
                    }
                ) && canonical(e.destination()) == client
                    && e.sport == event.sport
            })
            .cloned();
        let server = request.server;
        let request_socket = request.socket.clone();
        let request_evidence = request.evidence.clone();
        let device = route.as_ref().and_then(|r| match &r.what {
            What::Route { device, .. } => Some(device_text(device).to_owned()),
            _ => None,
        });
        let index = self.verdict(key, REPLY_SOURCE_MISMATCH, event, || {
            let why = device.as_ref().map_or_else(String::new, |device| {
                format!(
                    ": the route to {} goes out {device}, so the kernel chose {device}'s address as the source",
                    client.ip()
                )
            });
            let mut evidence = vec![request_evidence, evidence_line(event)];
            if let Some(route) = &route {
                evidence.push(evidence_line(route));
            }
            (
                format!(
                    "{client} sent to {server} but the reply came from {replied_from}: the server socket \
                     {request_socket} is bound to the wildcard address and {NO_SOURCE_CHOSEN}{why}; \
                     {client} does not accept a reply from {}",
                    replied_from.ip()
                ),
                evidence,
                format!(
                    "bind the server socket to {} (the address clients use), or receive the destination \
                     address with IP_PKTINFO/IPV6_RECVPKTINFO and send the reply with sendmsg() carrying \
                     it as the source",
                    server.ip()
                ),
            )
        });
        if let Some(index) = index {
            self.explained.insert(datagram, index);
        }
    }

    /// A send seen by a function probe on `udp_sendmsg` is reported when the call returns,
    /// after its datagram's `xmit`: it completes the reply_source_mismatch of that reply with
    /// how the server sent it.
    fn on_send_call(&mut self, event: &TraceEvent, call: SendCall) {
        if call.pktinfo {
            return;
        }
        let client = canonical(event.destination());
        let Some(&index) = self
            .explained
            .iter()
            .find(|((from, to), _)| *to == client && from.port() == event.sport)
            .map(|(_, index)| index)
        else {
            return;
        };
        let verdict = &mut self.verdicts[index];
        if verdict.code != REPLY_SOURCE_MISMATCH || verdict.summary.contains(SENDER_SHOWN) {
            return;
        }
        let who = named(event.process.as_ref())
            .map_or_else(String::new, |process| format!("{} ", process_text(process)));
        let how = format!(
            " ({SENDER_SHOWN} {who}replying with {} without IP_PKTINFO)",
            if call.connected { "send()" } else { "sendto()" }
        );
        verdict.summary =
            verdict
                .summary
                .replacen(NO_SOURCE_CHOSEN, &format!("{NO_SOURCE_CHOSEN}{how}"), 1);
        verdict.add_evidence(event);
    }

    fn on_drop(&mut self, event: &TraceEvent, reason: &DropReason) {
        let datagram = (canonical(event.source()), canonical(event.destination()));
        if let Some(&index) = self.explained.get(&datagram) {
            self.verdicts[index].add_evidence(event);
            return;
        }
        let key = FlowKey::of(event);
        match reason.name.as_str() {
            "NO_SOCKET" => self.on_no_socket(event, key),
            "NETFILTER_DROP" => {
                // Listing rules costs a namespace switch: not for verdicts past the allowance.
                if self.bump(key, FIREWALL_DROP, event) || !self.room_for(FIREWALL_DROP) {
                    return;
                }
                let location = match &event.what {
                    What::Drop { location, .. } => location_text(location),
                    _ => String::new(),
                };
                let rules: Vec<String> = (self.rules)(event)
                    .unwrap_or_default()
                    .iter()
                    .map(rule_text)
                    .collect();
                let rule = rules
                    .first()
                    .map_or_else(String::new, |rule| format!(": {rule}"));
                self.verdict(key, FIREWALL_DROP, event, || {
                    let mut evidence = vec![evidence_line(event)];
                    evidence.extend(rules.iter().map(|rule| format!("rule {rule}")));
                    (
                        format!(
                            "a netfilter rule drops {} > {} in namespace {} (dropped at {location}){rule}",
                            event.source(),
                            event.destination(),
                            namespace(event)
                        ),
                        evidence,
                        format!(
                            "find the rule with `nft list ruleset` (or `iptables-save`) in that namespace and \
                             allow udp dport {}",
                            event.dport
                        ),
                    )
                });
            }
            "SOCKET_RCVBUFF" => {
                // Keyed by the receiving socket: every sender's drops count together.
                let key = FlowKey::new(event.destination(), event.destination());
                if self.bump(key, RCVBUF_OVERFLOW, event) || !self.room_for(RCVBUF_OVERFLOW) {
                    return;
                }
                let sockets = (self.sockets)(event).unwrap_or_default();
                let socket = sockets
                    .iter()
                    .find(|(entry, _)| entry.accepts(event.source(), event.destination()))
                    .map_or_else(
                        || event.destination().to_string(),
                        |(entry, owner)| {
                            format!(
                                "{} (inode {}, owned by {}, {} bytes queued{}, {} drops counted by the socket)",
                                entry.local,
                                entry.inode,
                                owner_text(entry, owner.as_ref()),
                                entry.rx_queue,
                                entry.rcvbuf.map_or_else(String::new, |rb| {
                                    format!(" in a {rb}-byte receive buffer")
                                }),
                                entry.drops
                            )
                        },
                    );
                self.verdict(key, RCVBUF_OVERFLOW, event, || {
                    (
                        format!(
                            "socket {socket} in namespace {} drops datagrams: its receive buffer is full \
                             (the process does not read fast enough)",
                            namespace(event)
                        ),
                        vec![evidence_line(event)],
                        "read faster (more threads, recvmmsg), or raise the buffer: setsockopt SO_RCVBUF \
                         (capped by net.core.rmem_max) or SO_RCVBUFFORCE"
                            .into(),
                    )
                });
            }
            "IP_RPFILTER" => {
                self.verdict(key, RP_FILTER_DROP, event, || {
                    (
                        format!(
                            "reverse-path filtering drops {} > {} on {}: the route back to {} does not \
                             leave through the interface it arrived on",
                            event.source(),
                            event.destination(),
                            event.ifname.as_deref().unwrap_or("?"),
                            event.saddr
                        ),
                        vec![evidence_line(event)],
                        "set net.ipv4.conf.<dev>.rp_filter=2 (loose) on multi-homed hosts, or fix the routes"
                            .into(),
                    )
                });
            }
            "UDP_CSUM" => {
                self.verdict(key, CHECKSUM_ERROR, event, || {
                    (
                        format!("{} > {} arrives with a bad UDP checksum", event.source(), event.destination()),
                        vec![evidence_line(event)],
                        "check the sender's checksum offload (ethtool -K DEV tx off) and anything rewriting \
                         the packet on the way"
                            .into(),
                    )
                });
            }
            _ => {}
        }
    }

    /// NO_SOCKET: a socket on the port that does not accept the datagram, a NAT reply that
    /// conntrack did not map back, or nothing listening at all.
    fn on_no_socket(&mut self, event: &TraceEvent, key: FlowKey) {
        // Listing sockets costs a sock_diag dump (cached per namespace): once per flow, not per
        // drop, and not past the rule's allowance of verdicts.
        if [
            CONNECTED_SOCKET_MISMATCH,
            NAT_REPLY_MISMATCH,
            PORT_UNREACHABLE,
        ]
        .into_iter()
        .any(|code| self.bump(key, code, event))
            || !self.room_for(PORT_UNREACHABLE)
        {
            return;
        }
        let sockets = (self.sockets)(event).unwrap_or_default();
        let on_port: Vec<_> = sockets
            .iter()
            .filter(|(entry, _)| entry.local.port() == event.dport)
            .collect();
        if let Some((entry, owner)) = on_port.iter().find(|(entry, _)| {
            entry
                .mismatch(event.source(), event.destination())
                .is_some()
        }) {
            let why = entry
                .mismatch(event.source(), event.destination())
                .map_or_else(String::new, mismatch_text);
            let socket = format!(
                "{}{} (inode {}, owned by {})",
                entry.local,
                entry
                    .peer
                    .map_or_else(String::new, |peer| format!(" connected to {peer}")),
                entry.inode,
                owner_text(entry, owner.as_ref())
            );
            // With a function probe on the connect path: who pinned the socket, and when.
            let connect = self
                .history
                .iter()
                .rev()
                .find(|e| {
                    matches!(&e.what, What::Connect { error: None, .. })
                        && e.sport == event.dport
                        && (e.netns == event.netns || e.netns == 0 || event.netns == 0)
                })
                .cloned();
            self.verdict(key, CONNECTED_SOCKET_MISMATCH, event, || {
                let pinned = connect.as_ref().map_or_else(String::new, |connect| {
                    let who = named(connect.process.as_ref())
                        .map_or_else(String::new, |process| format!(" by {}", process_text(process)));
                    format!(
                        "; connect(){who} pinned it to local address {} and peer {}",
                        connect.source(),
                        connect.destination()
                    )
                });
                let mut evidence = vec![
                    evidence_line(event),
                    format!("socket {socket} in namespace {}", namespace(event)),
                ];
                if let Some(connect) = &connect {
                    evidence.push(evidence_line(connect));
                }
                (
                    format!(
                        "{} > {} is dropped (NO_SOCKET) although socket {socket} exists on port {}: {why}{pinned}",
                        event.source(),
                        event.destination(),
                        event.dport
                    ),
                    evidence,
                    format!(
                        "do not connect() a server socket (netcat -u -l does after the first datagram), \
                         or bind it to the address clients use ({})",
                        event.daddr
                    ),
                )
            });
            return;
        }
        if let Some((expected, conntrack)) = self.nat_expectation(event) {
            self.verdict(key, NAT_REPLY_MISMATCH, event, || {
                (
                    format!(
                        "the reply {} > {} reaches namespace {} but conntrack expected the reply to come \
                         from {expected} ({conntrack}); it is not translated back and dies NO_SOCKET",
                        event.source(),
                        event.destination(),
                        namespace(event)
                    ),
                    vec![evidence_line(event)],
                    format!(
                        "make the reply come from {expected}: the server (or its userland proxy) must answer \
                         from the address the client's NAT sent to — disable the userland proxy \
                         (dockerd --userland-proxy=false) or bind/answer with IP_PKTINFO"
                    ),
                )
            });
            return;
        }
        let icmp = self
            .history
            .iter()
            .rev()
            .find(|e| {
                matches!(e.what, What::Icmp { .. })
                    && e.source() == event.source()
                    && e.destination() == event.destination()
            })
            .map(evidence_line);
        self.verdict(key, PORT_UNREACHABLE, event, || {
            let mut evidence = vec![evidence_line(event)];
            evidence.extend(icmp);
            (
                format!(
                    "nothing listens on {} in namespace {}: {} gets NO_SOCKET drops and ICMP port \
                     unreachable (ECONNREFUSED on a connected client socket)",
                    event.destination(),
                    namespace(event),
                    event.source()
                ),
                evidence,
                format!(
                    "start the service on port {} (check `ss -uanp` in that namespace), or point the client \
                     at the right address and port",
                    event.dport
                ),
            )
        });
    }

    /// A datagram that left this namespace earlier with a conntrack entry whose reply goes to
    /// the dropped datagram's destination, but from another source: the reply conntrack was
    /// waiting for, and the one that came.
    fn nat_expectation(&self, event: &TraceEvent) -> Option<(String, String)> {
        self.history.iter().rev().find_map(|earlier| {
            let conntrack = earlier.conntrack.as_ref()?;
            if earlier.netns != event.netns {
                return None;
            }
            let reply = conntrack.reply;
            (reply.dst == event.destination() && reply.src != event.source()).then(|| {
                (
                    reply.src.to_string(),
                    format!(
                        "original {}, reply {}",
                        endpoints_text(&conntrack.original),
                        endpoints_text(&reply)
                    ),
                )
            })
        })
    }
}

/// A process with a name: the kernel gives some without (`comm` empty).
fn named(process: Option<&Process>) -> Option<&Process> {
    process.filter(|process| !process.comm.is_empty())
}

/// `comm[pid]` of the process holding the socket, else `uid N`.
fn owner_text(entry: &UdpSocketEntry, owner: Option<&Process>) -> String {
    owner.map_or_else(|| format!("uid {}", entry.uid), process_text)
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

fn rule_text(rule: &FirewallRule) -> String {
    format!(
        "table {} chain {} (hook {}): {}",
        rule.table,
        rule.chain,
        rule.hook.as_deref().unwrap_or("?"),
        rule.text
    )
}

fn namespace(event: &TraceEvent) -> String {
    event
        .netns_name
        .clone()
        .unwrap_or_else(|| event.netns.to_string())
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::{
        clock::WallTime,
        model::{Conntrack, Endpoints, Family, Location, Probe, Skb},
        sockets::UdpSocketEntry,
    };

    fn event(what: What, src: &str, dst: &str, ts_ns: u64) -> TraceEvent {
        let src: SocketAddr = src.parse().unwrap();
        let dst: SocketAddr = dst.parse().unwrap();
        TraceEvent {
            time: WallTime::parse_rfc3339("2026-11-22T12:00:00.000000Z").unwrap(),
            ts_ns,
            what,
            probe: Probe(Some(udptrace_common::event::Mechanism::TpBtf)),
            netns: 7,
            netns_name: Some("host".into()),
            ifindex: None,
            ifname: None,
            process: None,
            skb: Some(Skb(ts_ns)),
            tracked: false,
            conntrack: None,
            family: if src.is_ipv4() {
                Family::Ipv4
            } else {
                Family::Ipv6
            },
            saddr: src.ip(),
            sport: src.port(),
            daddr: dst.ip(),
            dport: dst.port(),
        }
    }

    fn drop(reason: &str) -> What {
        What::Drop {
            reason: DropReason::named(reason),
            location: Location::Symbol("__udp4_lib_rcv+0x2cd".into()),
        }
    }

    fn wildcard_socket() -> SocketInfo {
        SocketInfo {
            local: "0.0.0.0:4000".parse().unwrap(),
            peer: None,
            inode: 99,
            owner: Some(process(42, "server")),
        }
    }

    fn process(pid: u32, comm: &str) -> Process {
        Process {
            pid,
            comm: comm.into(),
        }
    }

    fn no_sockets() -> SocketLister {
        Box::new(|_| Some(SocketList::default()))
    }

    fn codes(diagnosis: &mut Diagnosis) -> Vec<&'static str> {
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
        diagnosis.observe(&event(
            What::Deliver {
                socket: wildcard_socket(),
            },
            client,
            "192.0.2.1:4000",
            1,
        ));
        diagnosis.observe(&event(
            What::Route {
                direction: RouteDirection::Output,
                device: crate::model::RouteDevice(Some("br0".into())),
                table: 254,
                error: None,
            },
            "0.0.0.0:4000",
            client,
            2,
        ));
        diagnosis.observe(&event(What::Xmit, "198.51.100.1:4000", client, 3));
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
        assert_eq!(verdict.code, REPLY_SOURCE_MISMATCH);
        assert!(
            verdict.summary.contains("sent to 192.0.2.1:4000"),
            "{}",
            verdict.summary
        );
        assert!(
            verdict.summary.contains("came from 198.51.100.1:4000"),
            "{}",
            verdict.summary
        );
        assert!(
            verdict
                .summary
                .contains("route to 198.51.100.2 goes out br0"),
            "{}",
            verdict.summary
        );
        assert!(
            verdict.summary.contains("owned by server[42]"),
            "{}",
            verdict.summary
        );
        assert!(verdict.fix.contains("IP_PKTINFO"));
        assert_eq!(verdict.evidence.len(), 4, "{:#?}", verdict.evidence);
        assert_eq!(verdict.count, 1);
        assert!(diagnosis.ready(u64::MAX, true).is_empty(), "emitted once");
        diagnosis.observe(&event(What::Xmit, "198.51.100.1:4000", client, 5));
        assert_eq!(diagnosis.verdicts()[0].count, 2, "a second reply counts");
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
                    device: crate::model::RouteDevice(Some("br0".into())),
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
                .map(|v| (v.code, v.summary, v.evidence, v.count))
                .collect();
            outcomes.push(verdicts);
        }
        assert_eq!(outcomes[0].len(), 1, "{:#?}", outcomes[0]);
        assert_eq!(outcomes[0][0].0, REPLY_SOURCE_MISMATCH);
        assert!(
            outcomes.iter().all(|outcome| *outcome == outcomes[0]),
            "the same verdict in every order"
        );
    }

    #[test]
    fn function_probes_show_how_the_reply_was_sent() {
        let mut diagnosis = Diagnosis::new(no_sockets());
        let client = "198.51.100.2:40000";
        diagnosis.observe(&event(
            What::Deliver {
                socket: wildcard_socket(),
            },
            client,
            "192.0.2.1:4000",
            1,
        ));
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
            2,
        );
        send.process = Some(process(42, "server"));
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
            verdicts[0]
                .summary
                .contains("udp_sendmsg shows server[42] replying with sendto() without IP_PKTINFO"),
            "{}",
            verdicts[0].summary
        );
        assert!(
            verdicts[0]
                .evidence
                .iter()
                .any(|line| line.contains("send") && line.contains("without IP_PKTINFO")),
            "{:#?}",
            verdicts[0].evidence
        );
    }

    #[test]
    fn replies_from_the_requested_address_are_healthy() {
        let mut diagnosis = Diagnosis::new(no_sockets());
        let client = "198.51.100.2:40000";
        diagnosis.observe(&event(
            What::Deliver {
                socket: wildcard_socket(),
            },
            client,
            "192.0.2.1:4000",
            1,
        ));
        diagnosis.observe(&event(What::Xmit, "192.0.2.1:4000", client, 2));
        diagnosis.observe(&event(What::Recv, "192.0.2.1:4000", client, 3));
        assert!(codes(&mut diagnosis).is_empty());
    }

    #[test]
    fn closed_port_ties_drop_icmp_and_econnrefused() {
        let mut diagnosis = Diagnosis::new(no_sockets());
        let (client, server) = ("192.0.2.1:40000", "192.0.2.2:4000");
        diagnosis.observe(&event(
            What::Icmp {
                icmp_type: 3,
                icmp_code: 3,
                meaning: "port-unreachable".into(),
            },
            client,
            server,
            1,
        ));
        diagnosis.observe(&event(drop("NO_SOCKET"), client, server, 2));
        diagnosis.observe(&event(
            What::SockError {
                error: crate::model::SocketErrno(crate::model::Errno(111)),
            },
            client,
            server,
            3,
        ));
        let verdicts = diagnosis.ready(u64::MAX, true);
        assert_eq!(verdicts.len(), 1);
        assert_eq!(verdicts[0].code, PORT_UNREACHABLE);
        let evidence = verdicts[0].evidence.join("\n");
        assert!(evidence.contains("NO_SOCKET"));
        assert!(evidence.contains("port-unreachable"));
        assert!(evidence.contains("ECONNREFUSED"));
    }

    #[test]
    fn a_connected_socket_on_the_port_is_named() {
        let sockets: SocketLister = Box::new(|event| {
            assert_eq!(event.netns, 7);
            Some(SocketList::from([(
                UdpSocketEntry {
                    local: "198.51.100.1:4000".parse().unwrap(),
                    peer: Some("198.51.100.2:40000".parse().unwrap()),
                    rx_queue: 0,
                    inode: 5,
                    uid: 0,
                    drops: 0,
                    rcvbuf: None,
                },
                Some(process(77, "nc")),
            )]))
        });
        let mut diagnosis = Diagnosis::new(sockets);
        diagnosis.observe(&event(
            drop("NO_SOCKET"),
            "198.51.100.2:40000",
            "192.0.2.1:4000",
            1,
        ));
        let verdicts = diagnosis.ready(u64::MAX, true);
        assert_eq!(verdicts.len(), 1);
        assert_eq!(verdicts[0].code, CONNECTED_SOCKET_MISMATCH);
        assert!(
            verdicts[0]
                .summary
                .contains("connected to 198.51.100.2:40000")
        );
        assert!(verdicts[0].summary.contains("nc[77]"));
        assert!(
            verdicts[0]
                .summary
                .contains("bound to 198.51.100.1 but the datagram is addressed to 192.0.2.1")
        );
    }

    #[test]
    fn the_connect_that_pinned_the_socket_is_evidence() {
        let sockets: SocketLister = Box::new(|_| {
            Some(SocketList::from([(
                UdpSocketEntry {
                    local: "198.51.100.1:4000".parse().unwrap(),
                    peer: Some("198.51.100.2:40000".parse().unwrap()),
                    rx_queue: 0,
                    inode: 5,
                    uid: 0,
                    drops: 0,
                    rcvbuf: None,
                },
                Some(process(77, "nc")),
            )]))
        });
        let mut diagnosis = Diagnosis::new(sockets);
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
        diagnosis.observe(&connect);
        diagnosis.observe(&event(
            drop("NO_SOCKET"),
            "198.51.100.2:40000",
            "192.0.2.1:4000",
            2,
        ));
        let verdicts = diagnosis.ready(u64::MAX, true);
        assert_eq!(verdicts.len(), 1);
        assert_eq!(verdicts[0].code, CONNECTED_SOCKET_MISMATCH);
        assert!(
            verdicts[0].summary.contains(
                "connect() by nc[77] pinned it to local address 198.51.100.1:4000 and peer 198.51.100.2:40000"
            ),
            "{}",
            verdicts[0].summary
        );
        assert!(
            verdicts[0]
                .evidence
                .iter()
                .any(|line| line.contains("connect")),
            "{:#?}",
            verdicts[0].evidence
        );
    }

    #[test]
    fn nat_reply_from_the_wrong_source() {
        let mut diagnosis = Diagnosis::new(no_sockets());
        let mut outgoing = event(What::Xmit, "198.51.100.2:40000", "203.0.113.1:4000", 1);
        outgoing.conntrack = Some(Conntrack {
            original: Endpoints {
                src: "198.51.100.2:40000".parse().unwrap(),
                dst: "203.0.113.1:4000".parse().unwrap(),
            },
            reply: Endpoints {
                src: "203.0.113.1:4000".parse().unwrap(),
                dst: "192.0.2.3:40000".parse().unwrap(),
            },
            status: 0,
        });
        diagnosis.observe(&outgoing);
        diagnosis.observe(&event(
            drop("NO_SOCKET"),
            "192.0.2.2:4000",
            "192.0.2.3:40000",
            2,
        ));
        let verdicts = diagnosis.ready(u64::MAX, true);
        assert_eq!(verdicts.len(), 1);
        assert_eq!(verdicts[0].code, NAT_REPLY_MISMATCH);
        assert!(
            verdicts[0]
                .summary
                .contains("expected the reply to come from 203.0.113.1:4000")
        );
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
            verdicts[0]
                .summary
                .contains("(hook input): udp dport 5000 drop"),
            "{}",
            verdicts[0].summary
        );
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
        assert_eq!(codes, [(FIREWALL_DROP, 1), (RCVBUF_OVERFLOW, 10)]);
        assert_eq!(verdicts[1].flow, "* > 192.0.2.2:6000");
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
        assert!(diagnosis.verdicts().iter().any(|v| v.code == FIREWALL_DROP));
        // The flow table kept at most 100 flows; the others were evicted, counted.
        let listed = diagnosis.flows.sorted().len();
        assert!(listed <= 100, "{listed}");
        assert_eq!(
            diagnosis.flows.other().flows_evicted as usize + listed,
            flows + 1
        );
    }
}
