//! Prometheus metrics (`--metrics ADDR`): counters fed by the typed events, verdicts and the
//! kernel's counts (never by parsing output), served in the Prometheus text exposition format
//! by the prometheus-client crate from a thread of their own (`server`).
//!
//! How a tracing loop feeds them (the interactive tracer in `session.rs`; `watch` the same):
//! - [`Metrics`] is an [`Output`]: tee it beside the user's output and it counts ICMP errors
//!   and socket errors from the events, verdicts as they are emitted, lost and sampled events
//!   from the totals the loop reports, and the hooks attached from `ready`;
//! - drops come from the kernel's per-flow counts, which include the events sampled out or
//!   lost (a storm's drop events are not all written): call [`Metrics::drops`] with what the
//!   loop drains from `FLOW_COUNTS` (and `FLOW_OVERFLOW`, without a flow);
//! - the tracer's CPU time is read (getrusage) at each scrape.
//!
//! Every labelled counter is bounded (`labels`): its first label sets, then `other`.

pub mod labels;
pub mod server;

use std::{
    io,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use udptrace_common::event::Mechanism;

use self::labels::{BoundedCounter, DropLabels, ErrnoLabels, IcmpLabels, OverflowLabels};
use crate::{
    flows::{bounded::Bounded, table::FlowTable, verdict::Verdict},
    model::{DropReason, Family as AddressFamily, TraceEvent, What},
    probes::attach::HookOutcome,
    render::{Output, Stats, Status},
};

/// Series kept per labelled counter before `other` (see `labels`). Drops are per reason, port,
/// namespace and container, hence the most; a few hundred series per metric is what a
/// Prometheus server takes from each of a fleet's hosts without noticing.
const MAX_DROP_SERIES: usize = 500;
const MAX_ICMP_SERIES: usize = 100;
const MAX_ERRNO_SERIES: usize = 100;

/// Flows whose drop place (namespace, container) is remembered for the kernel's counts that
/// follow their drop events (`Metrics::drops`).
const DROP_PLACES: usize = 4_096;

/// What the kernel's drop counts are keyed by: the dropped datagram and its reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct DroppedFlow {
    source: SocketAddr,
    destination: SocketAddr,
    reason: String,
}

/// Where a flow's drops happened, as its drop events said.
#[derive(Clone, Debug)]
struct Place {
    netns: String,
    container: String,
}

/// `udptrace_hooks_attached{mechanism}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MechanismLabels {
    /// `tp_btf`, `fentry`, ...; `none` for the hooks that attached with nothing.
    mechanism: &'static str,
}

/// `udptrace_verdicts_total{code}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabels {
    code: &'static str,
}

/// The metrics of one tracing run: cheap to clone (every clone counts into the same series),
/// and safe to feed from one thread while the server encodes them on another.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    drops: BoundedCounter<DropLabels>,
    icmp_errors: BoundedCounter<IcmpLabels>,
    socket_errors: BoundedCounter<ErrnoLabels>,
    verdicts: Family<VerdictLabels, Counter>,
    lost: Counter,
    sampled: Counter,
    hooks: Family<MechanismLabels, Gauge>,
    places: Arc<Mutex<Bounded<DroppedFlow, Place>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let overflow = Family::<OverflowLabels, Counter>::default();
        let drops = BoundedCounter::new(MAX_DROP_SERIES, &overflow, "udptrace_drops");
        let icmp_errors = BoundedCounter::new(MAX_ICMP_SERIES, &overflow, "udptrace_icmp_errors");
        let socket_errors =
            BoundedCounter::new(MAX_ERRNO_SERIES, &overflow, "udptrace_socket_errors");
        let (verdicts, lost, sampled, hooks) = Default::default();
        let mut registry = Registry::with_prefix("udptrace");
        registry.register(
            "drops",
            "UDP datagrams the kernel dropped, by drop reason, destination port, network namespace and container (every drop the kernel counted, sampled-out and lost events included)",
            drops.family().clone(),
        );
        registry.register(
            "icmp_errors",
            "ICMP and ICMPv6 errors the kernel sent about traced datagrams, by family, type and code",
            icmp_errors.family().clone(),
        );
        registry.register(
            "socket_errors",
            "Errors reported to or returned by UDP sockets, by where they surfaced and errno",
            socket_errors.family().clone(),
        );
        registry.register(
            "verdicts",
            "Verdicts given, by code (docs/verdicts.md)",
            Family::clone(&verdicts),
        );
        registry.register(
            "events_lost",
            "Events the kernel could not write: the ring buffer was full",
            Counter::clone(&lost),
        );
        registry.register(
            "events_sampled",
            "Events counted but not written: their flow had had its share of that kind in that second",
            Counter::clone(&sampled),
        );
        registry.register(
            "hooks_attached",
            "Hooks attached, by attach mechanism (none: the hooks this kernel refused; parked: udptrace watch's path hooks, detached until an anomaly escalates)",
            Family::clone(&hooks),
        );
        registry.register(
            "metric_overflow",
            "Occurrences counted under the other series of a metric because it had its maximum of label sets",
            overflow,
        );
        registry.register_collector(Box::new(CpuTime));
        Self {
            registry: Arc::new(registry),
            drops,
            icmp_errors,
            socket_errors,
            verdicts,
            lost,
            sampled,
            hooks,
            places: Arc::new(Mutex::new(Bounded::new(DROP_PLACES))),
        }
    }

    /// The exposition, as a scrape gets it.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail, and every label value is escaped by the encoder.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry);
        text
    }

    /// Counts what an event tells: ICMP errors and socket errors one by one (the kernel
    /// writes every one of them: they are never sampled), and where a flow's drops happen
    /// (their counts come from the kernel: [`Self::drops`]).
    pub fn event(&self, event: &TraceEvent) {
        match &event.what {
            What::Drop { reason, .. } => {
                let place = Place {
                    netns: event
                        .netns_name
                        .clone()
                        .unwrap_or_else(|| namespace_inode(event.netns)),
                    container: event
                        .container
                        .as_ref()
                        .map(|c| c.name.clone().unwrap_or_else(|| c.short_id().to_owned()))
                        .unwrap_or_default(),
                };
                let flow = DroppedFlow {
                    source: event.source(),
                    destination: event.destination(),
                    reason: reason.name.clone(),
                };
                self.places
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(flow, place);
            }
            What::Icmp {
                icmp_type,
                icmp_code,
                meaning,
                ..
            } => self.icmp_errors.add(
                &IcmpLabels {
                    family: match event.family {
                        AddressFamily::Ipv4 => "ipv4",
                        AddressFamily::Ipv6 => "ipv6",
                    }
                    .into(),
                    icmp_type: icmp_type.to_string(),
                    icmp_code: icmp_code.to_string(),
                    meaning: meaning.clone(),
                },
                1,
            ),
            What::SockError { error }
            | What::SendError { error, .. }
            | What::RecvError { error } => self.socket_errors.add(
                &ErrnoLabels {
                    kind: event.kind_name().into(),
                    errno: error.0.name().into(),
                },
                1,
            ),
            What::Send { .. }
            | What::Route { .. }
            | What::Xmit
            | What::Recv
            | What::Deliver { .. }
            | What::Connect { .. }
            | What::Lookup { .. } => {}
        }
    }

    /// The kernel counted `count` drops for `reason` of the datagram `source > destination`
    /// (`None`: of flows it could not key, its per-flow map being full: counted under
    /// `other`).
    pub fn drops(
        &self,
        datagram: Option<(SocketAddr, SocketAddr)>,
        reason: &DropReason,
        count: u64,
    ) {
        let Some((source, destination)) = datagram else {
            self.drops.add_other(count);
            return;
        };
        let flow = DroppedFlow {
            source,
            destination,
            reason: reason.name.clone(),
        };
        let place = self
            .places
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&flow)
            .cloned();
        let (netns, container) = place.map_or_else(Default::default, |p| (p.netns, p.container));
        self.drops.add(
            &DropLabels {
                reason: flow.reason,
                port: destination.port().to_string(),
                netns,
                container,
            },
            count,
        );
    }

    /// A verdict was given.
    pub fn verdict(&self, verdict: &Verdict) {
        self.verdicts
            .get_or_create(&VerdictLabels {
                code: verdict.code.name(),
            })
            .inc();
    }

    /// The hooks attached now, by mechanism; those parked (detached for now) as `parked`.
    pub fn hooks(&self, probes: &[HookOutcome]) {
        let parked = |o: &&HookOutcome| o.parked;
        let count = |mechanism: Option<Mechanism>| {
            probes
                .iter()
                .filter(|o| o.attached == mechanism && !parked(o))
                .count() as i64
        };
        self.hooks
            .get_or_create(&MechanismLabels {
                mechanism: "parked",
            })
            .set(probes.iter().filter(parked).count() as i64);
        for mechanism in Mechanism::ALL {
            self.hooks
                .get_or_create(&MechanismLabels {
                    mechanism: mechanism.name(),
                })
                .set(count(Some(mechanism)));
        }
        self.hooks
            .get_or_create(&MechanismLabels { mechanism: "none" })
            .set(count(None));
    }

    /// The run's totals of lost and sampled-out events so far.
    pub fn kernel_totals(&self, lost: u64, sampled: u64) {
        raise(&self.lost, lost);
        raise(&self.sampled, sampled);
    }
}

/// A namespace by its inode number (`""` when the kernel gave none).
fn namespace_inode(inode: u32) -> String {
    if inode == 0 {
        String::new()
    } else {
        inode.to_string()
    }
}

/// Makes `counter` read `total` (the kernel's counters are totals, Prometheus counters take
/// increments).
fn raise(counter: &Counter, total: u64) {
    let now = counter.get();
    if total > now {
        counter.inc_by(total - now);
    }
}

/// `udptrace_cpu_seconds_total{mode}`: the tracer's CPU time, all its threads, read at each
/// scrape (getrusage(2), RUSAGE_SELF).
#[derive(Debug)]
struct CpuTime;

impl Collector for CpuTime {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF is always valid.
        let usage = unsafe {
            let mut usage: libc::rusage = std::mem::zeroed();
            libc::getrusage(libc::RUSAGE_SELF, &raw mut usage);
            usage
        };
        let seconds = |time: libc::timeval| time.tv_sec as f64 + time.tv_usec as f64 / 1e6;
        let mut family = encoder.encode_descriptor(
            "cpu_seconds",
            "CPU time udptrace used, in user and kernel mode (its own work: the kernel programs' time is the traced threads')",
            None,
            MetricType::Counter,
        )?;
        for (mode, time) in [("user", usage.ru_utime), ("system", usage.ru_stime)] {
            ConstCounter::new(seconds(time)).encode(family.encode_family(&[("mode", mode)])?)?;
        }
        Ok(())
    }
}

/// Metrics are an output: tee them beside the user's (`render::Tee`).
impl Output for Metrics {
    fn ready(&mut self, _filter: &str, probes: &[HookOutcome]) -> io::Result<()> {
        self.hooks(probes);
        Ok(())
    }

    fn event(&mut self, event: &TraceEvent) -> io::Result<()> {
        Metrics::event(self, event);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn lost(&mut self, _lost: u64, total: u64) -> io::Result<()> {
        raise(&self.lost, total);
        Ok(())
    }

    fn sampled(&mut self, _sampled: u64, total: u64) -> io::Result<()> {
        raise(&self.sampled, total);
        Ok(())
    }

    fn status(&mut self, _status: &Status) -> io::Result<()> {
        Ok(())
    }

    fn verdict(&mut self, verdict: &Verdict) -> io::Result<()> {
        Metrics::verdict(self, verdict);
        Ok(())
    }

    fn summary(
        &mut self,
        _flows: &FlowTable,
        _verdicts: &[Verdict],
        stats: &Stats,
    ) -> io::Result<()> {
        self.kernel_totals(stats.lost, stats.sampled);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        flows::{
            table::FlowKey,
            testing::{drop, event},
            verdict::{Facts, Namespace, VerdictCode},
        },
        model::{Errno, SocketErrno},
    };

    /// The exposition's sample lines (no `#` comments).
    fn samples(metrics: &Metrics) -> Vec<String> {
        let mut lines: Vec<String> = metrics
            .encode()
            .lines()
            .filter(|line| !line.starts_with('#'))
            .map(str::to_owned)
            .collect();
        lines.sort();
        lines
    }

    fn has(metrics: &Metrics, line: &str) -> bool {
        samples(metrics).iter().any(|sample| sample == line)
    }

    #[test]
    fn drops_take_the_namespace_of_their_events_and_the_count_of_the_kernel() {
        let metrics = Metrics::new();
        metrics.event(&event(
            drop("NO_SOCKET"),
            "192.0.2.1:40000",
            "192.0.2.2:5700",
            1,
        ));
        // The kernel counted more than the one event written (the rest sampled out).
        metrics.drops(
            Some((
                "192.0.2.1:40000".parse().unwrap(),
                "192.0.2.2:5700".parse().unwrap(),
            )),
            &DropReason::named("NO_SOCKET"),
            250,
        );
        // A flow none of whose drop events was seen: its place is unknown.
        metrics.drops(
            Some((
                "192.0.2.1:40001".parse().unwrap(),
                "192.0.2.2:5701".parse().unwrap(),
            )),
            &DropReason::named("SOCKET_RCVBUFF"),
            3,
        );
        // Flows the kernel could not key: other.
        metrics.drops(None, &DropReason::named("NO_SOCKET"), 7);
        assert!(has(
            &metrics,
            r#"udptrace_drops_total{reason="NO_SOCKET",port="5700",netns="host",container=""} 250"#
        ));
        assert!(has(
            &metrics,
            r#"udptrace_drops_total{reason="SOCKET_RCVBUFF",port="5701",netns="",container=""} 3"#
        ));
        assert!(has(
            &metrics,
            r#"udptrace_drops_total{reason="other",port="other",netns="other",container="other"} 7"#
        ));
        assert!(has(
            &metrics,
            r#"udptrace_metric_overflow_total{metric="udptrace_drops"} 0"#
        ));
    }

    #[test]
    fn icmp_and_socket_errors_are_counted_from_their_events() {
        let metrics = Metrics::new();
        let icmp = What::Icmp {
            icmp_type: 3,
            icmp_code: 3,
            meaning: "port-unreachable".into(),
            mtu: None,
        };
        for ts in 0..2 {
            metrics.event(&event(
                icmp.clone(),
                "192.0.2.1:40000",
                "192.0.2.2:5700",
                ts,
            ));
        }
        let refused = SocketErrno(Errno(libc::ECONNREFUSED as u32));
        metrics.event(&event(
            What::SockError { error: refused },
            "192.0.2.1:40000",
            "192.0.2.2:5700",
            3,
        ));
        metrics.event(&event(
            What::RecvError { error: refused },
            "192.0.2.1:40000",
            "192.0.2.2:5700",
            4,
        ));
        assert!(has(
            &metrics,
            r#"udptrace_icmp_errors_total{family="ipv4",icmp_type="3",icmp_code="3",meaning="port-unreachable"} 2"#
        ));
        assert!(has(
            &metrics,
            r#"udptrace_socket_errors_total{kind="sock_error",errno="ECONNREFUSED"} 1"#
        ));
        assert!(has(
            &metrics,
            r#"udptrace_socket_errors_total{kind="recv_error",errno="ECONNREFUSED"} 1"#
        ));
    }

    #[test]
    fn verdicts_lost_and_sampled_events_and_cpu_time() {
        let mut metrics = Metrics::new();
        let source: SocketAddr = "192.0.2.1:40000".parse().unwrap();
        let destination: SocketAddr = "192.0.2.2:5700".parse().unwrap();
        let verdict = Verdict {
            code: VerdictCode::PortUnreachable,
            key: FlowKey::new(source, destination),
            facts: Facts::PortUnreachable {
                source,
                destination,
                namespace: Namespace {
                    netns: 7,
                    netns_name: Some("host".into()),
                    container: None,
                },
                icmp: None,
            },
            evidence: Vec::new(),
            count: 4,
        };
        Output::verdict(&mut metrics, &verdict).unwrap();
        Output::lost(&mut metrics, 5, 5).unwrap();
        Output::lost(&mut metrics, 2, 7).unwrap();
        Output::sampled(&mut metrics, 100, 100).unwrap();
        assert!(has(
            &metrics,
            r#"udptrace_verdicts_total{code="port_unreachable"} 1"#
        ));
        assert!(has(&metrics, "udptrace_events_lost_total 7"));
        assert!(has(&metrics, "udptrace_events_sampled_total 100"));
        let cpu: Vec<String> = samples(&metrics)
            .into_iter()
            .filter(|line| line.starts_with("udptrace_cpu_seconds_total{mode="))
            .collect();
        assert_eq!(cpu.len(), 2, "{cpu:?}");
    }

    #[test]
    fn every_metric_is_named_udptrace_and_typed() {
        let metrics = Metrics::new();
        // A family is shown once it has a series.
        metrics.drops(None, &DropReason::named("NO_SOCKET"), 1);
        metrics.hooks(&[]);
        let text = metrics.encode();
        let typed: Vec<&str> = text
            .lines()
            .filter_map(|line| line.strip_prefix("# TYPE "))
            .collect();
        for expected in [
            "udptrace_drops_total counter",
            "udptrace_events_lost_total counter",
            "udptrace_events_sampled_total counter",
            "udptrace_hooks_attached gauge",
            "udptrace_metric_overflow_total counter",
            "udptrace_cpu_seconds_total counter",
        ] {
            assert!(typed.contains(&expected), "{expected} in {typed:?}");
        }
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            assert!(line.starts_with("udptrace_"), "{line}");
        }
    }
}
