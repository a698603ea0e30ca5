//! What a verdict rule is (`Rule`), what it may use (`Context`), and the drop reasons rules
//! judge (`KnownReason`). The rules themselves are in `rules/`, one file per family; the
//! dispatcher (`diagnosis.rs`) hands them the events.

use std::collections::VecDeque;

use super::{
    ledger::{Ledger, RuleId},
    table::{FlowKey, FlowTable},
    verdict::{Facts, VerdictCode},
};
use crate::{
    conntrack::ConntrackStats,
    firewall::FirewallRule,
    icmp_limits::IcmpLimits,
    model::{DropReason, Location, TraceEvent},
    qdiscs::Qdisc,
    sockets::SocketList,
};

/// Recent events remembered for rules that look back (ICMP errors, route lookups, NAT).
pub const HISTORY: usize = 2_048;

/// What a rule may ask about an event's network namespace (or device there), answered by the
/// live host or by a recording; `None` when it cannot be told.
pub type Question<T> = Box<dyn Fn(&TraceEvent) -> Option<T>>;

/// The UDP sockets of the event's network namespace, as they were at the event or since.
pub type SocketLister = Question<SocketList>;

/// The firewall rules of the event's network namespace that drop its destination port.
pub type RuleLister = Question<Vec<FirewallRule>>;

/// The ICMP rate limits and counters of the event's network namespace.
pub type IcmpLimitsReader = Question<IcmpLimits>;

/// The connection-tracking counters of the event's network namespace, as they were at the
/// event or since; `None` also when it has no conntrack.
pub type ConntrackReader = Question<ConntrackStats>;

/// The qdiscs of the device of an event (a drop on the way out) in its namespace.
pub type QdiscLister = Question<Vec<Qdisc>>;

/// What rules may ask about the namespace of an event.
pub struct Environment {
    pub sockets: SocketLister,
    pub rules: RuleLister,
    pub icmp_limits: IcmpLimitsReader,
    pub conntrack: ConntrackReader,
    pub qdiscs: QdiscLister,
}

/// Where a qdisc's drops are freed on kernels without drop reasons (`KnownReason::of_drop`).
const TX_QUEUE_FREES: [&str; 3] = ["kfree_skb_list+", "__dev_xmit_skb+", "__dev_queue_xmit+"];

/// The drop reasons rules judge: the one place their kernel names are matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KnownReason {
    /// No socket accepted the datagram.
    NoSocket,
    /// A netfilter (nftables/iptables) rule dropped it.
    NetfilterDrop,
    /// The receiving socket's buffer was full.
    SocketRcvbuff,
    /// Reverse-path filtering dropped it.
    IpRpfilter,
    /// Its UDP checksum was wrong.
    UdpCsum,
    /// Neighbour (ARP/NDP) resolution of its next hop failed: freed from the neighbour's queue
    /// by `neigh_invalidate` (net/core/neighbour.c).
    NeighFailed,
    /// The queue of datagrams waiting for neighbour resolution overflowed
    /// (`__neigh_event_send`, net/core/neighbour.c; `unres_qlen_bytes`).
    NeighQueuefull,
    /// The route lookup for it failed: no route (IP_INNOROUTES, IP_OUTNOROUTES), a host that
    /// does not forward (IP_INADDRERRORS), or an unreachable/blackhole/prohibit route, which
    /// `ip_error` (net/ipv4/route.c) and `ip6_pkt_drop` (net/ipv6/route.c) free.
    NoRoute,
    /// The device's queueing discipline (or a tc egress action) refused it on the way out:
    /// QDISC_DROP from `__dev_xmit_skb`'s `to_free` list (net/core/dev.c), the qdiscs' own
    /// reasons (QDISC_*, FQ_*, CAKE_*: include/net/dropreason-core.h; `QDISC(<code>)` on 7.x)
    /// and TC_EGRESS.
    TxQueue,
    /// Its fragments did not all arrive before the reassembly timeout.
    FragReasmTimeout,
}

impl KnownReason {
    pub fn of(reason: &DropReason) -> Option<Self> {
        Some(match reason.name.as_str() {
            "NO_SOCKET" => Self::NoSocket,
            "NETFILTER_DROP" => Self::NetfilterDrop,
            "SOCKET_RCVBUFF" => Self::SocketRcvbuff,
            "IP_RPFILTER" => Self::IpRpfilter,
            "UDP_CSUM" => Self::UdpCsum,
            "NEIGH_FAILED" => Self::NeighFailed,
            "NEIGH_QUEUEFULL" => Self::NeighQueuefull,
            "IP_INNOROUTES" | "IP_OUTNOROUTES" => Self::NoRoute,
            "TC_EGRESS" => Self::TxQueue,
            // Linux 7.x moved the qdiscs' own reasons to a subsystem (`enum
            // qdisc_drop_reason`, SKB_DROP_REASON_SUBSYS_QDISC = 3 in Debian's 7.3.4), which
            // `DropReasons::name` calls `QDISC(<code>)`.
            name if ["QDISC", "FQ_", "CAKE_"]
                .iter()
                .any(|prefix| name.starts_with(prefix)) =>
            {
                Self::TxQueue
            }
            "FRAG_REASM_TIMEOUT" => Self::FragReasmTimeout,
            _ => return None,
        })
    }

    /// The reason of a drop freed at `location`: as `of`, and for a drop the kernel freed
    /// without a reason (NOT_SPECIFIED) the one its freeing site means. IPv6's
    /// `ndisc_error_report` (net/ipv6/ndisc.c) frees with plain `kfree_skb` what IPv4's
    /// `arp_error_report` (net/ipv4/arp.c) frees NEIGH_FAILED; both are tail calls from
    /// `neigh_invalidate`, which kfree_skb's return address names.
    ///
    /// A forwarded datagram whose input route is a reject route gets `ip_error` as its
    /// `dst.input` (net/ipv4/route.c `ip_route_input_slow`, `no_route:`), which frees it with
    /// a reason only for ENETUNREACH (IP_INNOROUTES) and, on a host that does not forward,
    /// EHOSTUNREACH (IP_INADDRERRORS); unreachable, blackhole and prohibit routes leave it
    /// NOT_SPECIFIED, as do kernels before 5.17 for all. IPv6's `ip6_pkt_drop`
    /// (net/ipv6/route.c) names its drops, except before 5.17.
    ///
    /// Before 5.17 a full qdisc's drops are freed by `kfree_skb_list(to_free)` at the end of
    /// `__dev_xmit_skb` (net/core/dev.c, inlined into `__dev_queue_xmit`), whose `kfree_skb`
    /// names `kfree_skb_list` as the location, or the caller when the compiler inlined it. That
    /// function frees fragment lists too, so the `tx_drop` rule takes such a drop only when the
    /// same skb was handed to the device just before (`net:net_dev_queue` fires in
    /// `__dev_queue_xmit` before the qdisc's enqueue).
    pub fn of_drop(reason: &DropReason, location: &Location) -> Option<Self> {
        Self::of(reason).or_else(|| {
            let Location::Symbol(symbol) = location else {
                return None;
            };
            if reason.is("NOT_SPECIFIED") && symbol.starts_with("neigh_invalidate+") {
                return Some(Self::NeighFailed);
            }
            if reason.is("NOT_SPECIFIED")
                && TX_QUEUE_FREES
                    .iter()
                    .any(|function| symbol.starts_with(function))
            {
                return Some(Self::TxQueue);
            }
            ((reason.is("NOT_SPECIFIED") || reason.is("IP_INADDRERRORS"))
                && ["ip_error+", "ip6_pkt_drop+"]
                    .iter()
                    .any(|function| symbol.starts_with(function)))
            .then_some(Self::NoRoute)
        })
    }
}

/// A verdict rule: it follows the events it needs, in kernel-time order, and opens or counts
/// verdicts through the context's ledger. It owns whatever state it keeps.
pub trait Rule {
    /// The drop reasons it judges (`on_drop`).
    fn drops(&self) -> &'static [KnownReason] {
        &[]
    }

    /// A drop with one of `drops()`'s reasons that no verdict explains yet.
    fn on_drop(&mut self, _event: &TraceEvent, _reason: KnownReason, _cx: &mut Context<'_>) {}

    /// Every event that is not a drop.
    fn on_event(&mut self, _event: &TraceEvent, _cx: &mut Context<'_>) {}

    /// Every event, drops included, before the rules judge it: its time is the clock of the
    /// rules that judge what did not happen (a reply), so that replay agrees with the live run.
    fn on_clock(&mut self, _event: &TraceEvent, _cx: &mut Context<'_>) {}
}

/// What a rule works with while it looks at one event.
pub struct Context<'a> {
    /// The rule being run (its allowance of verdicts).
    pub rule: RuleId,
    pub ledger: &'a mut Ledger,
    pub flows: &'a mut FlowTable,
    /// Recent events, oldest first (the event being observed is not in it yet).
    pub history: &'a VecDeque<TraceEvent>,
    pub env: &'a Environment,
}

impl Context<'_> {
    /// Counts `event` on the open verdict of `code` on `key`, or opens it with the facts and
    /// first evidence `make` gives (within the rule's allowance: `None` past it).
    pub fn verdict(
        &mut self,
        key: FlowKey,
        code: VerdictCode,
        event: &TraceEvent,
        make: impl FnOnce() -> (Facts, Vec<TraceEvent>),
    ) -> Option<usize> {
        self.ledger
            .open(self.rule, self.flows, (key, code), event, make)
    }

    /// Whether the rule may still open a verdict; counts the occurrence otherwise.
    pub fn room(&mut self) -> bool {
        self.ledger.room_for(self.rule)
    }

    /// The most recent event of the history that `matches`.
    pub fn recent(&self, matches: impl Fn(&TraceEvent) -> bool) -> Option<&TraceEvent> {
        self.history.iter().rev().find(|event| matches(event))
    }
}
