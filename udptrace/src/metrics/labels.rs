//! Label sets of the metrics, and the bound on how many each metric keeps.
//!
//! Anyone who can send UDP to the host can invent ports, and so label values: every labelled
//! counter keeps its first `limit` label sets as series of their own and adds whatever comes
//! after into one series whose labels all read `other`, counting those additions in
//! `udptrace_metric_overflow_total{metric}`. The first sets keep their series rather than
//! the most active ones (the flow table's rule) because a Prometheus counter must never move:
//! handing an evicted series' count to `other` would make `rate(other)` jump by everything it
//! ever counted, and the evicted series would restart from zero if it came back.

use std::{
    fmt::Debug,
    hash::Hash,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
};

/// The value of every label of the `other` series.
pub const OTHER: &str = "other";

/// A label set with an `other` form.
pub trait LabelSet: Clone + Debug + Hash + Eq + EncodeLabelSet + Send + Sync + 'static {
    /// The set whose labels all read [`OTHER`].
    fn other() -> Self;
}

/// Drops by reason and place (`udptrace_drops_total`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    /// The kernel's drop reason (`NO_SOCKET`).
    pub reason: String,
    /// The dropped datagram's destination port: the local port of the receive-side drops
    /// (`NO_SOCKET`, `SOCKET_RCVBUFF`, an input firewall rule).
    pub port: String,
    /// The network namespace the drop happened in: its name (a /run/netns name) or inode;
    /// empty when no drop event of the flow was seen (all of them lost to a full ring).
    pub netns: String,
    /// The container that namespace belongs to (its name, else its short id); empty for none.
    pub container: String,
}

impl LabelSet for DropLabels {
    fn other() -> Self {
        Self {
            reason: OTHER.into(),
            port: OTHER.into(),
            netns: OTHER.into(),
            container: OTHER.into(),
        }
    }
}

/// ICMP errors sent by the kernel, by type and code (`udptrace_icmp_errors_total`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IcmpLabels {
    /// `ipv4` (ICMP) or `ipv6` (ICMPv6): their type numbers mean different things.
    pub family: String,
    pub icmp_type: String,
    pub icmp_code: String,
    /// The type and code in words (`port-unreachable`): a function of the two, so no series
    /// of its own.
    pub meaning: String,
}

impl LabelSet for IcmpLabels {
    fn other() -> Self {
        Self {
            family: OTHER.into(),
            icmp_type: OTHER.into(),
            icmp_code: OTHER.into(),
            meaning: OTHER.into(),
        }
    }
}

/// Errors reported to or returned by sockets, by errno (`udptrace_socket_errors_total`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrnoLabels {
    /// Where it surfaced: `sock_error` (reported to the socket, e.g. by an ICMP error),
    /// `send_error`, `recv_error`.
    pub kind: String,
    /// `ECONNREFUSED`.
    pub errno: String,
}

impl LabelSet for ErrnoLabels {
    fn other() -> Self {
        Self {
            kind: OTHER.into(),
            errno: OTHER.into(),
        }
    }
}

/// The counter of additions that went to `other` because their metric was full, labelled by
/// that metric's name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OverflowLabels {
    pub metric: &'static str,
}

/// A counter family holding at most `limit` label sets of its own, plus `other`.
#[derive(Clone, Debug)]
pub struct BoundedCounter<S: LabelSet> {
    family: Family<S, Counter>,
    limit: usize,
    /// Label sets with a series of their own (`other` aside): the family counts its series
    /// only in test builds.
    series: Arc<AtomicUsize>,
    /// This metric's series of `udptrace_metric_overflow_total`.
    overflow: Counter,
}

impl<S: LabelSet> BoundedCounter<S> {
    /// `overflow`: the family counting additions folded into `other`; `metric` names this
    /// metric there.
    pub fn new(
        limit: usize,
        overflow: &Family<OverflowLabels, Counter>,
        metric: &'static str,
    ) -> Self {
        Self {
            family: Family::default(),
            limit,
            series: Arc::default(),
            overflow: overflow.get_or_create_owned(&OverflowLabels { metric }),
        }
    }

    /// The family, for registering.
    pub fn family(&self) -> &Family<S, Counter> {
        &self.family
    }

    /// Adds `count` to `labels`' series, or to `other` once `limit` sets have series.
    pub fn add(&self, labels: &S, count: u64) {
        if let Some(counter) = self.family.get(labels) {
            counter.inc_by(count);
        } else if self.series.load(Ordering::Relaxed) < self.limit {
            // Only the tracing thread adds, so no other series can appear between the test
            // and the insert; the scrape thread only reads.
            self.series.fetch_add(1, Ordering::Relaxed);
            self.family.get_or_create(labels).inc_by(count);
        } else {
            self.overflow.inc_by(count);
            self.add_other(count);
        }
    }

    /// Adds `count` to `other` directly: occurrences whose labels are unknown (the kernel
    /// counted them without their flow), not an overflow of this metric.
    pub fn add_other(&self, count: u64) {
        self.family.get_or_create(&S::other()).inc_by(count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errno(name: &str) -> ErrnoLabels {
        ErrnoLabels {
            kind: "sock_error".into(),
            errno: name.into(),
        }
    }

    fn value(counter: &BoundedCounter<ErrnoLabels>, labels: &ErrnoLabels) -> Option<u64> {
        counter.family().get(labels).map(|c| c.get())
    }

    #[test]
    fn past_the_limit_new_label_sets_go_to_other_and_are_counted() {
        let overflow = Family::default();
        let counter = BoundedCounter::new(2, &overflow, "socket_errors");
        counter.add(&errno("ECONNREFUSED"), 3);
        counter.add(&errno("EHOSTUNREACH"), 1);
        counter.add(&errno("ENETUNREACH"), 4);
        counter.add(&errno("EMSGSIZE"), 2);
        // Sets that have a series keep counting in it.
        counter.add(&errno("ECONNREFUSED"), 1);
        assert_eq!(value(&counter, &errno("ECONNREFUSED")), Some(4));
        assert_eq!(value(&counter, &errno("EHOSTUNREACH")), Some(1));
        assert_eq!(value(&counter, &errno("ENETUNREACH")), None);
        assert_eq!(value(&counter, &ErrnoLabels::other()), Some(6));
        assert_eq!(value(&counter, &errno("EMSGSIZE")), None);
        assert_eq!(counter.series.load(Ordering::Relaxed), 2);
        let folded = overflow
            .get(&OverflowLabels {
                metric: "socket_errors",
            })
            .map(|c| c.get());
        assert_eq!(folded, Some(6));
    }

    #[test]
    fn unknown_labels_go_to_other_without_counting_as_overflow() {
        let overflow = Family::default();
        let counter = BoundedCounter::<ErrnoLabels>::new(2, &overflow, "socket_errors");
        counter.add_other(5);
        counter.add(&errno("ECONNREFUSED"), 1);
        assert_eq!(value(&counter, &ErrnoLabels::other()), Some(5));
        assert_eq!(value(&counter, &errno("ECONNREFUSED")), Some(1));
        let folded = overflow
            .get(&OverflowLabels {
                metric: "socket_errors",
            })
            .map(|c| c.get());
        assert_eq!(folded, Some(0));
    }
}
