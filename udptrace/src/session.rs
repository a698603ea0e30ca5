//! One tracing run, wired together: kernel knowledge → filter → load and attach → stream →
//! decode → output, until a signal, `--count` or `--duration` ends it.

use std::{
    cell::RefCell,
    future::Future,
    io::{BufWriter, Write},
    net::SocketAddr,
    path::{Path, PathBuf},
    rc::Rc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::{Ebpf, EbpfLoader, maps::StackTraceMap};
use udptrace_common::{
    event::{Capture, Counter, EventKind, FlowCountKey, Mechanism},
    filter::Selectors,
    names::{
        CAPTURE_GLOBAL, DEBUG_BPF_GLOBAL, DROP_SITES_GLOBAL, ESCALATED_MAP, FEATURE_ICMP6_PROBE,
        FEATURE_NARROW, FEATURE_XMIT, FEATURES_MAP, FILTER_GLOBAL, OFFSETS_GLOBAL,
        SELECTED_NETNS_MAP, SELECTORS_GLOBAL, STACKS_MAP,
    },
};

use crate::{
    clock::{WallClock, monotonic_ns},
    container_filter::{ContainerSelection, Following, Wanted},
    debug_bpf::{self, BpfLogger},
    decode::{self, KernelNames},
    escalation::Ports,
    filter::{self, CompiledFilter},
    firewall::{Dropped, parse_ruleset},
    flows::{
        DEFAULT_REPLY_TIMEOUT,
        diagnosis::Diagnosis,
        ledger::SETTLE,
        rule::{
            ConntrackReader, IcmpLimitsReader, QdiscLister, Question, RuleLister, SocketLister,
        },
        table::{DEFAULT_MAX_FLOWS, FlowKey, Tally, canonical},
    },
    host::{check_pid, ifindex_in, open_netns, preflight},
    knowledge::Knowledge,
    metrics::{self, Metrics, server::Endpoint},
    model::{TraceEvent, What},
    namespaces::Namespaces,
    probes::{
        attach::{AttachContext, HookOutcome, attach_all, detach, kprobe_status, reattach},
        plan::Role,
    },
    procs::Processes,
    qdiscs::parse_qdiscs,
    recording::{Header, RECORDING_VERSION, Recording, RecordingOutput, SharedRecording},
    render::{Output, Stats, Status, Tee, pcap::PcapOutput},
    reorder::{REORDER_WINDOW, Reorder},
    stream::{CounterValues, Counters, EventRing, FlowCounts, KernelCounts},
};

/// Context of an output error (`main` tells a closed pipe from the others by its source).
const WRITING: &str = "writing the output";

/// Longest an event waits in the ring before it is printed.
const DRAIN_INTERVAL: Duration = Duration::from_millis(25);

/// The eBPF object built by build.rs from `udptrace-ebpf`.
pub(crate) static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/udptrace"));

/// What to trace and how.
#[derive(Clone, Debug, Default)]
pub struct TraceConfig {
    pub filter: Vec<String>,
    pub interface: Option<String>,
    pub netns: Option<String>,
    pub pid: Option<u32>,
    pub probes: Option<Mechanism>,
    pub ring_size: u32,
    /// `--debug-bpf`: the programs log to stderr (see `debug_bpf`).
    pub debug_bpf: bool,
    /// `--max-flows`: flows kept one by one (default `DEFAULT_MAX_FLOWS`).
    pub max_flows: Option<usize>,
    /// `--reply-timeout` (default `DEFAULT_REPLY_TIMEOUT`).
    pub reply_timeout: Option<Duration>,
    pub count: Option<u64>,
    pub duration: Option<Duration>,
    /// `doctor`: attach what can be attached and report, even without a core hook.
    pub diagnose_only: bool,
    /// `-o FILE`: record the run for `udptrace replay`.
    pub record: Option<PathBuf>,
    /// `-w FILE` (`-` for stdout): write the hop events' packets as pcapng.
    pub pcap: Option<PathBuf>,
    /// `--snaplen`: bytes of each packet `-w` keeps.
    pub snaplen: u32,
    /// `--stack`: kernel call stacks of drops and ICMP errors.
    pub stack: bool,
    /// The Docker API socket that names containers, instead of DOCKER_HOST's or
    /// /run/docker.sock (`lab run docker-...`: the lab's private daemon).
    pub docker_socket: Option<PathBuf>,
    /// `udptrace watch --escalate SECS`: only the failure hooks stay attached; an anomaly
    /// attaches the path hooks, narrowed to its flow's ports, for this long.
    pub watch: Option<Duration>,
    /// `--metrics ADDR`: serve Prometheus metrics there.
    pub metrics: Option<SocketAddr>,
    /// `--park-after SECS` (interactive tracer; `udptrace watch` parks its path hooks itself,
    /// until an anomaly): park the hop hooks on tracepoints after this long without a
    /// matching event (at least the reply timeout plus a second); `None` keeps them attached.
    pub park_after: Option<Duration>,
    /// `--container`, `--pod`: only events in their network namespaces.
    pub containers: Vec<Wanted>,
}

/// Where `-w` writes: a file or standard output.
type PcapFile = PcapOutput<Box<dyn Write>>;

/// Creates the `-w` output (`-`: standard output), its section header written.
fn create_pcap(path: &Path, snaplen: u32) -> anyhow::Result<PcapFile> {
    let (out, name): (Box<dyn Write>, String) = if path == Path::new("-") {
        (Box::new(std::io::stdout()), "- (stdout)".into())
    } else {
        let file = std::fs::File::create(path).with_context(|| format!("-w {}", path.display()))?;
        (Box::new(file), path.display().to_string())
    };
    let out: Box<dyn Write> = Box::new(BufWriter::with_capacity(1 << 16, out));
    PcapOutput::new(out, name, snaplen, monotonic_ns)
        .with_context(|| format!("-w {}", path.display()))
}

/// `udptrace watch`'s escalations: which ports the path hooks are narrowed to (the
/// bookkeeping, and the kernel's copy), and whether those hooks are attached now.
struct Escalation {
    ports: Ports,
    /// `names::ESCALATED_MAP`: the ports the kernel lets path events through for.
    map: aya::maps::HashMap<aya::maps::MapData, u32, u8>,
    attached: bool,
}

/// The interactive tracer's hop hooks (`Role::Hop`): parked once no event has matched for
/// `quiet`, attached again by the next event that does (see `TraceEvent::hops_untraced`).
struct LazyHops {
    quiet: Duration,
    /// When an event last came through the filter (or the run started).
    last_match: Instant,
    /// Monotonic time the hooks were parked at, while they are.
    parked_since: Option<u64>,
    /// The last span they were parked for, `[parked, attached again)` in monotonic time:
    /// events of it can still come out of the reorder window after they are back.
    last_gap: Option<(u64, u64)>,
}

impl LazyHops {
    /// Parking starts no sooner than the reply timeout and a second after the last match:
    /// every request is judged (answered or not) before its evidence can have a gap.
    fn new(park_after: Duration, reply_timeout: Duration) -> Self {
        Self {
            quiet: park_after.max(reply_timeout + Duration::from_secs(1)),
            last_match: Instant::now(),
            parked_since: None,
            last_gap: None,
        }
    }

    /// The interactive tracer's, unless `--park-after 0` or none of its hooks can be parked
    /// (every hop hook a function probe: `--probes kprobe`, or a kernel without the
    /// tracepoints). Then nothing is ever detached, and no event may be marked untraced.
    fn of_run(
        config: &TraceConfig,
        probes: &[HookOutcome],
        reply_timeout: Duration,
    ) -> Option<Self> {
        config
            .park_after
            .filter(|_| config.watch.is_none() && probes.iter().any(Self::parks))
            .map(|park_after| Self::new(park_after, reply_timeout))
    }

    /// Whether an event at `ts_ns` happened while the hooks were parked (or attaching).
    fn untraced(&self, ts_ns: u64) -> bool {
        self.parked_since.is_some_and(|since| ts_ns >= since)
            || self
                .last_gap
                .is_some_and(|(from, until)| (from..until).contains(&ts_ns))
    }

    /// Which hooks it parks: hop hooks attached to tracepoints. Function probes stay: a
    /// kretprobe re-attached during a drop storm is the suspect of a 6.1 guest's crash (stop
    /// 21's note), and fentry/fexit re-attach through trampolines.
    fn parks(outcome: &HookOutcome) -> bool {
        outcome.hook.role == Role::Hop
            && matches!(
                outcome.attached,
                Some(Mechanism::TpBtf | Mechanism::RawTracepoint | Mechanism::Tracepoint)
            )
    }
}

/// `udptrace watch` parks every hook but the failure hooks between escalations.
fn watch_parks(outcome: &HookOutcome) -> bool {
    outcome.hook.role != Role::Failure
}

/// Parks the hooks `which` picks (see `attach::detach`).
fn park(ebpf: &mut Ebpf, probes: &mut [HookOutcome], which: fn(&HookOutcome) -> bool) {
    for outcome in probes.iter_mut().filter(|o| which(o)) {
        detach(ebpf, outcome);
    }
}

/// Attaches the parked hooks again; the failures, as "hook: error".
fn unpark(ebpf: &mut Ebpf, probes: &mut [HookOutcome], context: &AttachContext<'_>) -> Vec<String> {
    probes
        .iter_mut()
        .filter_map(|outcome| {
            let name = outcome.hook.name;
            reattach(ebpf, outcome, context)
                .err()
                .map(|error| format!("{name}: {error}"))
        })
        .collect()
}

/// The attach engine's view of this kernel.
fn attach_context<'a>(
    knowledge: &'a Knowledge,
    forced: Option<Mechanism>,
    has_function: &'a dyn Fn(&str) -> bool,
) -> AttachContext<'a> {
    AttachContext {
        btf: knowledge.attach_btf.as_ref(),
        offsets: &knowledge.offsets,
        tracefs: knowledge.tracefs_mounted(),
        kprobes: kprobe_status().is_ok(),
        has_function,
        forced,
        kfree_skb_reason: !knowledge.reasons.are_inferred(),
    }
}

/// A loaded and attached tracer; dropping it detaches every program.
pub struct Tracer {
    // Owns the programs and their links: detached when dropped.
    ebpf: Ebpf,
    pub probes: Vec<HookOutcome>,
    pub filter: CompiledFilter,
    ring: EventRing,
    counters: Counters,
    flow_counts: FlowCounts,
    knowledge: Knowledge,
    clock: WallClock,
    config: TraceConfig,
    /// Decoded events waiting for earlier ones still on their way (see `reorder`).
    pending: Reorder<TraceEvent>,
    diagnosis: Diagnosis,
    /// `--debug-bpf`: the programs' log, printed as the ring is drained.
    bpf_log: Option<BpfLogger>,
    /// Shared with the diagnosis' socket and rule listers.
    namespaces: Rc<RefCell<Namespaces>>,
    /// `-o FILE`, shared with the listers, which record what they answered.
    recording: Option<SharedRecording>,
    /// `-w FILE`.
    pcap: Option<PcapFile>,
    /// `udptrace watch`.
    escalation: Option<Escalation>,
    /// The interactive tracer's hop hooks, unless `--park-after 0`.
    lazy_hops: Option<LazyHops>,
    /// `--metrics`: fed as the output is, and with the kernel's drop counts.
    metrics: Option<Metrics>,
    /// Serves `metrics` until the tracer is dropped.
    _metrics_server: Option<metrics::server::Server>,
    /// `--container`/`--pod`: keeps the selected namespaces current while it lives.
    _containers: Option<Following>,
}

/// Tells the programs which hooks attached where that changes what another hook reports, and
/// whether path events are narrowed to escalated flows (`udptrace watch`).
fn announce_features(ebpf: &mut Ebpf, probes: &[HookOutcome], narrow: bool) -> anyhow::Result<()> {
    let attached = |name: &str| {
        probes.iter().any(|outcome| {
            outcome.hook.name == name && outcome.attached.is_some() && !outcome.parked
        })
    };
    let mut features = 0;
    if attached("icmp6_error") {
        features |= FEATURE_ICMP6_PROBE;
    }
    // Under `watch` the device hop is parked (detached) between escalations, and in the
    // interactive tracer while nothing matches: icmp_send then reports fragmentation needed
    // itself (without the MTU), or those errors would be lost.
    if attached("xmit") && !narrow {
        features |= FEATURE_XMIT;
    }
    if narrow {
        features |= FEATURE_NARROW;
    }
    let mut map: aya::maps::Array<_, u32> = aya::maps::Array::try_from(
        ebpf.map_mut(FEATURES_MAP)
            .context("the eBPF object has no FEATURES map")?,
    )?;
    map.set(0, features, 0)
        .context("writing the FEATURES map")?;
    Ok(())
}

impl Tracer {
    /// Everything up to `ready`: fails with a one-line reason when udptrace cannot trace here.
    pub fn start(config: TraceConfig) -> anyhow::Result<Self> {
        if OBJECT.is_empty() {
            bail!("this binary was built with UDPTRACE_SKIP_EBPF and carries no eBPF programs");
        }
        // Parse the user's words first: a typo should not wait for BTF parsing.
        let filter = filter::compile(&config.filter)?;
        preflight()?;
        // Before anything is loaded: an unwritable -w path fails at once.
        let pcap = config
            .pcap
            .as_deref()
            .map(|path| create_pcap(path, config.snaplen))
            .transpose()?;
        // Likewise a busy or foreign --metrics address.
        let endpoint = config.metrics.map(Endpoint::bind).transpose()?;
        // aya 0.14's `EbpfLoader::new` parses the kernel's whole BTF for CO-RE relocations
        // (aya/src/bpf.rs, `new`), which Rust programs never carry: drop that parse before
        // ours starts, so the two are never held at once (peak RSS).
        let mut loader = EbpfLoader::new();
        loader.btf(None);
        // Before BTF too: an unknown container fails at once.
        let containers = (!config.containers.is_empty())
            .then(|| {
                ContainerSelection::resolve(&config.containers, config.docker_socket.as_deref())
            })
            .transpose()?;
        let knowledge = Knowledge::load(config.docker_socket.as_deref())?;
        let mut selectors = selectors(&config, &knowledge.processes)?;
        selectors.netns_set = u32::from(containers.is_some());
        let mut ebpf = loader
            .override_global(OFFSETS_GLOBAL, &knowledge.offsets, true)
            .override_global(DROP_SITES_GLOBAL, &knowledge.drop_sites(), true)
            .override_global(FILTER_GLOBAL, &*filter.program, true)
            .override_global(SELECTORS_GLOBAL, &selectors, true)
            .override_global(DEBUG_BPF_GLOBAL, &u8::from(config.debug_bpf), true)
            .override_global(
                CAPTURE_GLOBAL,
                &Capture {
                    snaplen: if config.pcap.is_some() {
                        config.snaplen
                    } else {
                        0
                    },
                    stack: u32::from(config.stack),
                },
                true,
            )
            .map_max_entries(udptrace_common::names::EVENTS_MAP, config.ring_size)
            .load(OBJECT)
            .context("loading the eBPF object")?;
        // Before any program is attached: from the first event on, the map holds them.
        let containers = containers
            .map(|selection| {
                let map = ebpf
                    .take_map(SELECTED_NETNS_MAP)
                    .context("the eBPF object has no SELECTED_NETNS map")?;
                selection.install(aya::maps::HashMap::try_from(map)?)
            })
            .transpose()?;
        // Every hook is attached once, even under `watch`: what each would use is known (and
        // reported in `ready`) before the path hooks are parked.
        let mut probes = attach_all(
            &mut ebpf,
            &attach_context(&knowledge, config.probes, &|name| {
                knowledge.has_function(name)
            }),
        );
        if let Some(missing) = probes
            .iter()
            .find(|o| o.hook.core && o.attached.is_none() && !config.diagnose_only)
        {
            let reasons: Vec<String> = missing
                .attempts
                .iter()
                .filter_map(|a| {
                    a.result
                        .as_ref()
                        .err()
                        .map(|e| format!("{}: {e}", a.mechanism.name()))
                })
                .collect();
            bail!(
                "cannot attach the {} hook ({}); run `udptrace doctor` for details",
                missing.hook.name,
                reasons.join("; ")
            );
        }
        let escalation = config
            .watch
            .map(|duration| -> anyhow::Result<Escalation> {
                let map = ebpf
                    .take_map(ESCALATED_MAP)
                    .context("the eBPF object has no ESCALATED map")?;
                park(&mut ebpf, &mut probes, watch_parks);
                Ok(Escalation {
                    ports: Ports::new(duration),
                    map: aya::maps::HashMap::try_from(map)?,
                    attached: false,
                })
            })
            .transpose()?;
        announce_features(&mut ebpf, &probes, config.watch.is_some())?;
        let (metrics, metrics_server) = match endpoint {
            Some(endpoint) => {
                let metrics = Metrics::new();
                // Before the first scrape can come.
                metrics.hooks(&probes);
                let server = endpoint.serve(&metrics)?;
                (Some(metrics), Some(server))
            }
            None => (None, None),
        };
        let bpf_log = if config.debug_bpf {
            Some(debug_bpf::start(&mut ebpf)?)
        } else {
            None
        };
        let mut knowledge = knowledge;
        if config.stack {
            knowledge.stacks = Some(
                ebpf.take_map(STACKS_MAP)
                    .context("the eBPF object has no STACKS map")
                    .and_then(|map| Ok(StackTraceMap::try_from(map)?))?,
            );
        }
        let ring = EventRing::take(&mut ebpf)?;
        let counters = Counters::take(&mut ebpf)?;
        let flow_counts = FlowCounts::take(&mut ebpf)?;
        let namespaces = Rc::new(RefCell::new(Namespaces::new(Rc::clone(
            &knowledge.processes,
        ))));
        let max_flows = config.max_flows.unwrap_or(DEFAULT_MAX_FLOWS);
        let reply_timeout = config.reply_timeout.unwrap_or(DEFAULT_REPLY_TIMEOUT);
        let lazy_hops = LazyHops::of_run(&config, &probes, reply_timeout);
        let recording = config
            .record
            .as_deref()
            .map(|path| {
                Recording::create(
                    path,
                    &Header {
                        version: RECORDING_VERSION,
                        filter: filter.expression.clone(),
                        max_flows,
                        reply_timeout_ms: u64::try_from(reply_timeout.as_millis())
                            .unwrap_or(u64::MAX),
                    },
                )
                .with_context(|| format!("-o {}", path.display()))
            })
            .transpose()?;
        let diagnosis = Diagnosis::new(socket_lister(Rc::clone(&namespaces), recording.clone()))
            .with_rules(rule_lister(Rc::clone(&namespaces), recording.clone()))
            .with_icmp_limits(icmp_limits_reader(
                Rc::clone(&namespaces),
                recording.clone(),
            ))
            .with_conntrack(conntrack_reader(Rc::clone(&namespaces), recording.clone()))
            .with_qdiscs(qdisc_lister(Rc::clone(&namespaces), recording.clone()))
            .with_max_flows(max_flows)
            .with_reply_timeout(reply_timeout);
        Ok(Self {
            diagnosis,
            bpf_log,
            namespaces,
            recording,
            pcap,
            escalation,
            lazy_hops,
            ebpf,
            metrics,
            _metrics_server: metrics_server,
            probes,
            filter,
            ring,
            counters,
            flow_counts,
            knowledge,
            clock: WallClock::now(),
            config,
            pending: Reorder::default(),
            _containers: containers,
        })
    }

    /// Streams events to `output` until `stop` completes, `--count` events were shown or
    /// `--duration` passed; then drains what is left and reports the totals.
    pub async fn run(
        mut self,
        output: &mut dyn Output,
        stop: impl Future<Output = ()>,
    ) -> anyhow::Result<Stats> {
        let mut recording = self.recording.clone().map(RecordingOutput);
        let mut pcap = self.pcap.take();
        let (mut recorded, mut captured);
        let output: &mut dyn Output = match &mut recording {
            Some(recording) => {
                recorded = Tee::new(output, recording);
                &mut recorded
            }
            None => output,
        };
        let output: &mut dyn Output = match &mut pcap {
            Some(pcap) => {
                captured = Tee::new(output, pcap);
                &mut captured
            }
            None => output,
        };
        let mut metrics = self.metrics.clone();
        let mut counted;
        let output: &mut dyn Output = match &mut metrics {
            Some(metrics) => {
                counted = Tee::new(output, metrics);
                &mut counted
            }
            None => output,
        };
        output
            .ready(&self.filter.expression, &self.probes)
            .context(WRITING)?;
        // The quiet period starts at `ready`, not with the start-up (seconds under emulation).
        if let Some(lazy) = &mut self.lazy_hops {
            lazy.last_match = Instant::now();
        }
        let deadline = self.config.duration.map(|d| Instant::now() + d);
        let mut stats = Stats::default();
        let mut last_lost = 0;
        let mut last_sampled = 0;
        // The per-second reports (sampled, lost, flow map full) start a second after `ready`,
        // not at once: records already in the ring come first. Start-up under emulation takes
        // seconds, in which a busy flow's first generation uses up its sample; reporting that
        // before the events written in it put a `sampled` record ahead of the first event.
        let mut tick = tokio::time::interval_at(
            tokio::time::Instant::now() + Duration::from_secs(1),
            Duration::from_secs(1),
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut verdict_tick = tokio::time::interval(SETTLE / 2);
        // The kernel wakes us only when the ring is an eighth full (udptrace-ebpf/src/emit.rs);
        // below that, records are collected on this tick.
        let mut drain_tick = tokio::time::interval(DRAIN_INTERVAL);
        drain_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        loop {
            if self.reached_count(&stats) {
                break;
            }
            let sleep_until_deadline = async {
                match deadline {
                    Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ready = self.ring.readable() => {
                    ready?;
                    self.drain(output, &mut stats)?;
                }
                _ = drain_tick.tick() => self.drain(output, &mut stats)?,
                _ = verdict_tick.tick() => {
                    // Evidence is observed a reorder window after it happened.
                    let observed_until = monotonic_ns().saturating_sub(REORDER_WINDOW.as_nanos() as u64);
                    for verdict in self.diagnosis.ready(observed_until, false) {
                        output.verdict(&verdict).context(WRITING)?;
                    }
                }
                _ = tick.tick() => {
                    self.expire_escalations(output)?;
                    self.park_idle_hops(output)?;
                    self.namespaces.borrow_mut().release_idle(monotonic_ns());
                    // Also the generation's end: the sampling allowances restart with it.
                    let counts = self.flow_counts.drain()?;
                    let flowless: u64 = counts.overflow.iter().map(|(_, count)| count).sum();
                    if flowless > 0 {
                        output.status(&Status::FlowMapFull { events: flowless }).context(WRITING)?;
                    }
                    self.count_in_kernel(counts);
                    let counters = self.counters.read()?;
                    let sampled = counters.get(Counter::Sampled);
                    if sampled > last_sampled {
                        output.sampled(sampled - last_sampled, sampled).context(WRITING)?;
                        last_sampled = sampled;
                    }
                    let lost = counters.get(Counter::Lost);
                    if lost > last_lost {
                        output.lost(lost - last_lost, lost).context(WRITING)?;
                        last_lost = lost;
                    }
                }
                () = sleep_until_deadline => break,
                () = &mut stop => break,
            }
        }
        // Records already in the ring belong to this run, and nothing earlier than the held
        // events can come any more.
        self.drain(output, &mut stats)?;
        let rest = self.pending.release_all();
        self.observe(rest, output, &mut stats)?;
        let counters = self.counters.read()?;
        let lost = counters.get(Counter::Lost);
        if lost > last_lost {
            output.lost(lost - last_lost, lost).context(WRITING)?;
        }
        let sampled = counters.get(Counter::Sampled);
        if sampled > last_sampled {
            output
                .sampled(sampled - last_sampled, sampled)
                .context(WRITING)?;
        }
        fill_stats(&mut stats, &counters);
        let counts = self.flow_counts.read_rest()?;
        self.count_in_kernel(counts);
        stats.flows_evicted = self.diagnosis.flows.other().flows_evicted;
        stats.kernel_overflow_events = self.diagnosis.flows.other().kernel_overflow_events;
        stats.verdicts_not_opened = self.diagnosis.not_opened();
        for verdict in self.diagnosis.ready(monotonic_ns(), true) {
            output.verdict(&verdict).context(WRITING)?;
        }
        output
            .summary(&self.diagnosis.flows, self.diagnosis.verdicts(), &stats)
            .context(WRITING)?;
        Ok(stats)
    }

    /// Adds the kernel's counts to the flows' drop and datagram counts (and the verdicts they
    /// feed): they include the events sampled out or lost.
    fn count_in_kernel(&mut self, counts: KernelCounts) {
        for (key, count) in counts.flows {
            if let Some((flow, tally)) = self.tally(&key) {
                if let Some(recording) = &self.recording {
                    recording
                        .borrow_mut()
                        .kernel_count(Some(flow), &tally, count);
                }
                if let (Some(metrics), Tally::Drops(reason)) = (&self.metrics, &tally) {
                    metrics.drops(Some(datagram(&key)), reason, count);
                }
                self.diagnosis.count_in_kernel(flow, tally, count);
            }
        }
        for (key, count) in counts.overflow {
            if let Some((_, tally)) = self.tally(&key) {
                if let Some(recording) = &self.recording {
                    recording.borrow_mut().kernel_count(None, &tally, count);
                }
                if let (Some(metrics), Tally::Drops(reason)) = (&self.metrics, &tally) {
                    metrics.drops(None, reason, count);
                }
                self.diagnosis.flows.add_other(&tally, count);
            }
        }
    }

    /// What a kernel count key adds to: drops by reason, or datagrams at their first device.
    fn tally(&self, key: &FlowCountKey) -> Option<(FlowKey, Tally)> {
        let (source, destination) = datagram(key);
        let flow = FlowKey::new(source, destination);
        let tally = match EventKind::from_u8(key.kind) {
            Some(EventKind::Drop) => Tally::Drops(self.knowledge.drop_reason(key.reason)),
            // A datagram is first seen at one device: where it was sent, or where it
            // arrived from elsewhere.
            Some(EventKind::Xmit | EventKind::Recv) if key.first != 0 => {
                Tally::DatagramsFrom(canonical(source))
            }
            _ => return None,
        };
        Some((flow, tally))
    }

    /// `udptrace watch`: narrows the path hooks to the ports of the flows with anomalies (those
    /// `escalation::Ports` wants) and attaches them if parked.
    fn escalate(
        &mut self,
        anomalies: &[(u16, u16)],
        output: &mut dyn Output,
    ) -> anyhow::Result<()> {
        let Some(escalation) = &mut self.escalation else {
            return Ok(());
        };
        let now = Instant::now();
        let mut added = Vec::new();
        for port in anomalies.iter().flat_map(|&(a, b)| [a, b]) {
            // A full map (`ESCALATED_ENTRIES` ports at once) refuses it: that flow waits
            // for a slot, its anomalies still reported.
            if escalation.ports.wanted(port, now)
                && escalation.map.insert(u32::from(port), 1, 0).is_ok()
            {
                escalation.ports.escalate(port, now);
                added.push(port);
            }
        }
        if added.is_empty() {
            return Ok(());
        }
        let seconds = escalation.ports.duration().as_secs();
        if !escalation.attached {
            escalation.attached = true;
            for error in self.unpark_all()? {
                output
                    .status(&Status::EscalationFailed(error))
                    .context(WRITING)?;
            }
        }
        output
            .status(&Status::Escalated {
                ports: added,
                seconds,
            })
            .context(WRITING)
    }

    /// Ends the escalations whose time is over; parks the path hooks once none is left.
    fn expire_escalations(&mut self, output: &mut dyn Output) -> anyhow::Result<()> {
        let Some(escalation) = &mut self.escalation else {
            return Ok(());
        };
        for port in escalation.ports.expire(Instant::now()) {
            // Gone already only if userspace lost track of it: nothing to undo.
            let _ = escalation.map.remove(&u32::from(port));
        }
        if !escalation.ports.any() && escalation.attached {
            escalation.attached = false;
            self.park(watch_parks)?;
            output.status(&Status::EscalationEnded).context(WRITING)?;
        }
        Ok(())
    }

    /// Parks the hooks `which` picks, and says so to the programs and the metrics.
    fn park(&mut self, which: fn(&HookOutcome) -> bool) -> anyhow::Result<()> {
        park(&mut self.ebpf, &mut self.probes, which);
        self.hooks_changed()
    }

    /// Attaches every parked hook again; the failures, as "hook: error".
    fn unpark_all(&mut self) -> anyhow::Result<Vec<String>> {
        let knowledge = &self.knowledge;
        let has_function = |name: &str| knowledge.has_function(name);
        let context = attach_context(knowledge, self.config.probes, &has_function);
        let failed = unpark(&mut self.ebpf, &mut self.probes, &context);
        self.hooks_changed()?;
        Ok(failed)
    }

    fn hooks_changed(&mut self) -> anyhow::Result<()> {
        announce_features(&mut self.ebpf, &self.probes, self.escalation.is_some())?;
        if let Some(metrics) = &self.metrics {
            metrics.hooks(&self.probes);
        }
        Ok(())
    }

    /// The interactive tracer: parks the hop hooks once nothing has matched for their quiet
    /// period.
    fn park_idle_hops(&mut self, output: &mut dyn Output) -> anyhow::Result<()> {
        let Some(lazy) = &mut self.lazy_hops else {
            return Ok(());
        };
        if lazy.parked_since.is_some() || lazy.last_match.elapsed() < lazy.quiet {
            return Ok(());
        }
        let quiet = lazy.quiet;
        lazy.parked_since = Some(monotonic_ns());
        self.park(LazyHops::parks)?;
        let hooks = self
            .probes
            .iter()
            .filter(|o| o.parked)
            .map(|o| o.hook.name)
            .collect();
        output
            .status(&Status::HopsParked { hooks, quiet })
            .context(WRITING)
    }

    /// The interactive tracer, after a drain that decoded events: a match. Attaches the hop
    /// hooks again if they are parked; events until then are marked untraced (`drain`).
    fn match_seen(&mut self, output: &mut dyn Output) -> anyhow::Result<()> {
        let Some(lazy) = &mut self.lazy_hops else {
            return Ok(());
        };
        lazy.last_match = Instant::now();
        let Some(since) = lazy.parked_since else {
            return Ok(());
        };
        let failed = self.unpark_all()?;
        // Set only now: hooks attached, the events from here on have their hops.
        let attached = monotonic_ns();
        if let Some(lazy) = &mut self.lazy_hops {
            lazy.parked_since = None;
            lazy.last_gap = Some((since, attached));
        }
        output
            .status(&Status::HopsAttached {
                untraced_before: self.clock.at(attached),
                untraced_before_ns: attached,
                failed,
            })
            .context(WRITING)
    }

    pub fn knowledge(&self) -> &Knowledge {
        &self.knowledge
    }

    fn reached_count(&self, stats: &Stats) -> bool {
        self.config.count.is_some_and(|count| stats.events >= count)
    }

    /// Decodes what the ring holds, then shows and diagnoses the events whose turn has come.
    fn drain(&mut self, output: &mut dyn Output, stats: &mut Stats) -> anyhow::Result<()> {
        if let Some(log) = &mut self.bpf_log {
            log.flush();
        }
        let knowledge = &self.knowledge;
        let clock = &self.clock;
        let pending = &mut self.pending;
        let namespaces = &self.namespaces;
        let mut undecodable = None;
        let watching = self.escalation.is_some();
        let lazy_hops = self.lazy_hops.as_ref();
        let mut anomalies = Vec::new();
        let mut decoded = false;
        self.ring.drain(|bytes| {
            match decode::decode(bytes, knowledge as &dyn KernelNames, clock) {
                Ok(mut event) => {
                    decoded = true;
                    event.hops_untraced = lazy_hops.is_some_and(|lazy| lazy.untraced(event.ts_ns));
                    if watching {
                        // Narrowed in the kernel: a path event passed only for an escalated
                        // flow, so escalation is how it was seen.
                        event.escalated = event.is_path();
                        if event.is_anomaly() {
                            anomalies.push((event.sport, event.dport));
                        }
                    }
                    if matches!(event.what, What::Drop { .. }) {
                        // The rules judge this drop a reorder window from now, by the sockets
                        // its namespace has: list them as the drop left them (a listing
                        // taken after a drop answers for it), before its socket can close.
                        namespaces
                            .borrow_mut()
                            .sockets(event.netns, event.ts_ns, monotonic_ns());
                    }
                    pending.push(event.ts_ns, event);
                }
                Err(error) => {
                    stats.decode_errors += 1;
                    if stats.decode_errors == 1 {
                        undecodable = Some(error);
                    }
                }
            }
        });
        if let Some(error) = undecodable {
            output
                .status(&Status::Undecodable(error))
                .context(WRITING)?;
        }
        self.escalate(&anomalies, output)?;
        if decoded {
            self.match_seen(output)?;
        }
        let due = self.pending.release(monotonic_ns());
        self.observe(due, output, stats)
    }

    /// Shows `events` (in kernel-time order) and feeds them to the rules, up to `--count`;
    /// fails with the first write error (the run ends on it).
    fn observe(
        &mut self,
        events: Vec<TraceEvent>,
        output: &mut dyn Output,
        stats: &mut Stats,
    ) -> anyhow::Result<()> {
        for event in events {
            if self.reached_count(stats) {
                break;
            }
            stats.events += 1;
            output.event(&event).context(WRITING)?;
            self.diagnosis.observe(&event);
        }
        output.flush().context(WRITING)
    }
}

/// A question the rules ask about an event's namespace: answered by `ask` (from the
/// `Namespaces` cache, at the current time), the answer written to the recording by `record`
/// so that a replay gets the same one.
fn asked<T: 'static>(
    namespaces: Rc<RefCell<Namespaces>>,
    recording: Option<SharedRecording>,
    ask: impl Fn(&mut Namespaces, &TraceEvent, u64) -> Option<T> + 'static,
    record: impl Fn(&mut Recording, &TraceEvent, Option<&T>) + 'static,
) -> Question<T> {
    Box::new(move |event| {
        let answer = ask(&mut namespaces.borrow_mut(), event, monotonic_ns());
        if let Some(recording) = &recording {
            record(&mut recording.borrow_mut(), event, answer.as_ref());
        }
        answer
    })
}

/// Lists a namespace's UDP sockets with their owners, for verdicts.
fn socket_lister(
    namespaces: Rc<RefCell<Namespaces>>,
    recording: Option<SharedRecording>,
) -> SocketLister {
    asked(
        namespaces,
        recording,
        |namespaces, event, now| namespaces.sockets(event.netns, event.ts_ns, now),
        Recording::sockets,
    )
}

/// Lists the nftables rules that can have dropped an event's datagram (its port's, or the
/// rules about fragments for a fragment) in its namespace, for firewall and fragment verdicts.
fn rule_lister(
    namespaces: Rc<RefCell<Namespaces>>,
    recording: Option<SharedRecording>,
) -> RuleLister {
    asked(
        namespaces,
        recording,
        |namespaces, event, now| {
            let ruleset = namespaces.ruleset(event.netns, event.ts_ns, now)?;
            let dropped = if event.fragment.is_some() {
                Dropped::Fragment
            } else {
                Dropped::Port(event.dport)
            };
            Some(parse_ruleset(&ruleset, dropped))
        },
        |recording, event, rules| recording.rules(event, rules.map(Vec::as_slice)),
    )
}

/// Reads the ICMP rate limits and counters of an event's namespace, for port_unreachable
/// verdicts.
fn icmp_limits_reader(
    namespaces: Rc<RefCell<Namespaces>>,
    recording: Option<SharedRecording>,
) -> IcmpLimitsReader {
    asked(
        namespaces,
        recording,
        |namespaces, event, now| namespaces.icmp_limits(event.netns, event.ts_ns, now),
        Recording::icmp_limits,
    )
}

/// Reads the conntrack counters of an event's namespace, for conntrack_drop verdicts.
fn conntrack_reader(
    namespaces: Rc<RefCell<Namespaces>>,
    recording: Option<SharedRecording>,
) -> ConntrackReader {
    asked(
        namespaces,
        recording,
        |namespaces, event, now| namespaces.conntrack(event.netns, event.ts_ns, now),
        |recording, event, stats| recording.conntrack(event, stats.copied()),
    )
}

/// Lists the qdiscs of the device an event (a drop on the way out) happened at, in its
/// namespace, for transmit-drop verdicts.
fn qdisc_lister(
    namespaces: Rc<RefCell<Namespaces>>,
    recording: Option<SharedRecording>,
) -> QdiscLister {
    asked(
        namespaces,
        recording,
        |namespaces, event, now| {
            let device = event.ifname.as_deref()?;
            let json = namespaces.qdiscs(event.netns, device, event.ts_ns, now)?;
            Some(parse_qdiscs(&json))
        },
        |recording, event, qdiscs| recording.qdiscs(event, qdiscs.map(Vec::as_slice)),
    )
}

/// The source and destination of the datagrams a kernel count key counts.
fn datagram(key: &FlowCountKey) -> (SocketAddr, SocketAddr) {
    let (saddr, daddr) = decode::addresses(&key.tuple);
    (
        SocketAddr::new(saddr, key.tuple.sport),
        SocketAddr::new(daddr, key.tuple.dport),
    )
}

fn fill_stats(stats: &mut Stats, counters: &CounterValues) {
    stats.seen = counters.get(Counter::Seen);
    stats.filtered_in_kernel = counters.get(Counter::FilteredOut);
    stats.submitted = counters.get(Counter::Submitted);
    stats.lost = counters.get(Counter::Lost);
    stats.drops_lost = counters.get(Counter::DropsLost);
    stats.sampled = counters.get(Counter::Sampled);
    stats.drops_sampled = counters.get(Counter::DropsSampled);
    stats.uncounted = counters.get(Counter::Uncounted);
    stats.kernel_read_errors = counters.get(Counter::ReadErrors);
}

/// `--netns`, `-i`, `--pid` → the kernel's numbers (`--container`/`--pod` set `netns_set`).
fn selectors(config: &TraceConfig, known: &Processes) -> anyhow::Result<Selectors> {
    let netns = config
        .netns
        .as_deref()
        .map(|text| open_netns(text, known))
        .transpose()?;
    let ifindex = match &config.interface {
        None => 0,
        Some(name) => ifindex_in(netns.as_ref().map(|n| n.path.as_path()), name)?,
    };
    if let Some(pid) = config.pid {
        check_pid(pid)?;
    }
    Ok(Selectors {
        netns: netns.map_or(0, |n| n.inode),
        ifindex,
        pid: config.pid.unwrap_or(0),
        netns_set: 0,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use udptrace_common::event::Mechanism;

    use super::{HookOutcome, LazyHops, TraceConfig};
    use crate::probes::attach::Links;
    use crate::probes::plan::HOOKS;

    #[test]
    fn hop_hooks_park_no_sooner_than_a_second_after_the_reply_timeout() {
        let secs = Duration::from_secs;
        assert_eq!(LazyHops::new(secs(10), secs(2)).quiet, secs(10));
        assert_eq!(LazyHops::new(secs(1), secs(2)).quiet, secs(3));
        assert_eq!(
            LazyHops::new(secs(1), Duration::from_millis(500)).quiet,
            Duration::from_millis(1_500)
        );
    }

    /// Parking needs a hop hook on a tracepoint: with only function probes (`--probes
    /// kprobe`) there is nothing to detach, hence no gap to mark.
    #[test]
    fn only_hop_hooks_on_tracepoints_make_a_run_lazy() {
        let hook = |name: &str, attached: Option<Mechanism>| HookOutcome {
            hook: HOOKS.iter().find(|h| h.name == name).unwrap(),
            attached,
            attempts: Vec::new(),
            parked: false,
            links: Links::default(),
        };
        let config = TraceConfig {
            park_after: Some(Duration::from_secs(10)),
            ..TraceConfig::default()
        };
        let lazy = |probes: &[HookOutcome], config: &TraceConfig| {
            LazyHops::of_run(config, probes, Duration::from_secs(2)).is_some()
        };
        let kprobes = [
            hook("xmit", None),
            hook("lookup", Some(Mechanism::Kprobe)),
            hook("send", Some(Mechanism::Kprobe)),
        ];
        assert!(!lazy(&kprobes, &config));
        let tracepoints = [hook("xmit", Some(Mechanism::TpBtf)), hook("send", None)];
        assert!(lazy(&tracepoints, &config));
        // Not asked for, or `udptrace watch` (which parks its own way).
        assert!(!lazy(&tracepoints, &TraceConfig::default()));
        let watch = TraceConfig {
            watch: Some(Duration::from_secs(10)),
            ..config.clone()
        };
        assert!(!lazy(&tracepoints, &watch));
    }

    /// Untraced: from the park on while parked; afterwards, the last gap only.
    #[test]
    fn events_of_a_parked_span_are_untraced() {
        let mut lazy = LazyHops::new(Duration::from_secs(10), Duration::from_secs(2));
        assert!(!lazy.untraced(5));
        lazy.parked_since = Some(100);
        assert!(!lazy.untraced(99));
        assert!(lazy.untraced(100));
        assert!(lazy.untraced(u64::MAX));
        lazy.parked_since = None;
        lazy.last_gap = Some((100, 200));
        assert!(!lazy.untraced(99));
        assert!(lazy.untraced(199));
        assert!(!lazy.untraced(200));
    }
}
