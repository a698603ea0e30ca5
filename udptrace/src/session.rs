//! One tracing run, wired together: kernel knowledge → filter → load and attach → stream →
//! decode → output, until a signal, `--count` or `--duration` ends it.

use std::{
    future::Future,
    net::SocketAddr,
    os::unix::fs::MetadataExt as _,
    rc::Rc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use aya::{Ebpf, EbpfLoader};
use udptrace_common::{
    event::{Counter, EventKind, FlowCountKey, Mechanism, SAMPLE_EVENTS_PER_SECOND},
    filter::Selectors,
    names::{FEATURE_ICMP6_PROBE, FEATURES_MAP, FILTER_GLOBAL, OFFSETS_GLOBAL, SELECTORS_GLOBAL},
};

use crate::{
    cli::NetnsSpec,
    clock::{WallClock, monotonic_ns},
    decode::{self, KernelNames},
    filter::{self, CompiledFilter},
    firewall::rules_dropping_port,
    flows::{
        table::{DEFAULT_MAX_FLOWS, FlowKey, Tally, canonical},
        verdicts::{Diagnosis, RuleLister, SETTLE, SocketLister},
    },
    host::{ifindex_in, preflight},
    knowledge::Knowledge,
    probes::attach::{AttachContext, HookOutcome, attach_all, kprobe_status},
    procs::Processes,
    render::{Output, Stats},
    sockets::{receive_buffers_in, udp_sockets_in},
    stream::{CounterValues, Counters, EventRing, FlowCounts, KernelCounts},
};

/// Longest an event waits in the ring before it is printed.
const DRAIN_INTERVAL: Duration = Duration::from_millis(25);

/// The eBPF object built by build.rs from `udptrace-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/udptrace"));

/// What to trace and how.
#[derive(Clone, Debug, Default)]
pub struct TraceConfig {
    pub filter: Vec<String>,
    pub interface: Option<String>,
    pub netns: Option<String>,
    pub pid: Option<u32>,
    pub probes: Option<Mechanism>,
    pub ring_size: u32,
    /// `--max-flows`: flows kept one by one (default `DEFAULT_MAX_FLOWS`).
    pub max_flows: Option<usize>,
    pub count: Option<u64>,
    pub duration: Option<Duration>,
    /// `doctor`: attach what can be attached and report, even without a core hook.
    pub diagnose_only: bool,
}

/// A loaded and attached tracer; dropping it detaches every program.
pub struct Tracer {
    // Owns the programs and their links: detached when dropped.
    _ebpf: Ebpf,
    pub probes: Vec<HookOutcome>,
    pub filter: CompiledFilter,
    ring: EventRing,
    counters: Counters,
    flow_counts: FlowCounts,
    knowledge: Knowledge,
    clock: WallClock,
    config: TraceConfig,
    diagnosis: Diagnosis,
}

/// Tells the programs which hooks attached where that changes what another hook reports.
fn announce_features(ebpf: &mut Ebpf, probes: &[HookOutcome]) -> anyhow::Result<()> {
    let icmp6_probed = probes
        .iter()
        .any(|outcome| outcome.hook.name == "icmp6_error" && outcome.attached.is_some());
    let features = if icmp6_probed { FEATURE_ICMP6_PROBE } else { 0 };
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
        let knowledge = Knowledge::load()?;
        let selectors = selectors(&config)?;
        let mut ebpf = EbpfLoader::new()
            .override_global(OFFSETS_GLOBAL, &knowledge.offsets, true)
            .override_global(FILTER_GLOBAL, &filter.program, true)
            .override_global(SELECTORS_GLOBAL, &selectors, true)
            .map_max_entries(udptrace_common::names::EVENTS_MAP, config.ring_size)
            .load(OBJECT)
            .context("loading the eBPF object")?;
        let probes = attach_all(
            &mut ebpf,
            &AttachContext {
                btf: knowledge.aya_btf.as_ref(),
                offsets: &knowledge.offsets,
                tracefs: knowledge.tracefs_mounted(),
                kprobes: kprobe_status().is_ok(),
                has_function: &|name| knowledge.has_function(name),
                forced: config.probes,
            },
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
        announce_features(&mut ebpf, &probes)?;
        let ring = EventRing::take(&mut ebpf)?;
        let counters = Counters::take(&mut ebpf)?;
        let flow_counts = FlowCounts::take(&mut ebpf)?;
        let diagnosis = Diagnosis::new(socket_lister(Rc::clone(&knowledge.processes)))
            .with_rules(rule_lister(Rc::clone(&knowledge.processes)))
            .with_max_flows(config.max_flows.unwrap_or(DEFAULT_MAX_FLOWS));
        Ok(Self {
            diagnosis,
            _ebpf: ebpf,
            probes,
            filter,
            ring,
            counters,
            flow_counts,
            knowledge,
            clock: WallClock::now(),
            config,
        })
    }

    /// Streams events to `output` until `stop` completes, `--count` events were shown or
    /// `--duration` passed; then drains what is left and reports the totals.
    pub async fn run(
        mut self,
        output: &mut dyn Output,
        stop: impl Future<Output = ()>,
    ) -> anyhow::Result<Stats> {
        output.ready(&self.filter.expression, &self.probes);
        let deadline = self.config.duration.map(|d| Instant::now() + d);
        let mut stats = Stats::default();
        let mut last_lost = 0;
        let mut last_sampled = 0;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
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
                    self.drain(output, &mut stats);
                }
                _ = drain_tick.tick() => self.drain(output, &mut stats),
                _ = verdict_tick.tick() => {
                    for verdict in self.diagnosis.ready(monotonic_ns(), false) {
                        output.verdict(&verdict);
                    }
                }
                _ = tick.tick() => {
                    // Also the generation's end: the sampling allowances restart with it.
                    let counts = self.flow_counts.drain()?;
                    let flowless: u64 = counts.overflow.iter().map(|(_, count)| count).sum();
                    if flowless > 0 {
                        eprintln!(
                            "udptrace: {flowless} events counted without their flow (the kernel's flow map was full: too many new flows a second); added up under other flows"
                        );
                    }
                    self.count_in_kernel(counts);
                    let counters = self.counters.read()?;
                    let sampled = counters.get(Counter::Sampled);
                    if sampled > last_sampled {
                        eprintln!(
                            "udptrace: {} events sampled out in the last second (about {SAMPLE_EVENTS_PER_SECOND} a second per flow and kind are shown; the flows count them all)",
                            sampled - last_sampled
                        );
                        last_sampled = sampled;
                    }
                    let lost = counters.get(Counter::Lost);
                    if lost > last_lost {
                        let delta = lost - last_lost;
                        eprintln!("udptrace: {delta} events lost in the last second (ring buffer full; {lost} in total)");
                        output.lost(delta, lost);
                        last_lost = lost;
                    }
                }
                () = sleep_until_deadline => break,
                () = &mut stop => break,
            }
        }
        // Records already in the ring belong to this run.
        self.drain(output, &mut stats);
        let counters = self.counters.read()?;
        let lost = counters.get(Counter::Lost);
        if lost > last_lost {
            output.lost(lost - last_lost, lost);
        }
        fill_stats(&mut stats, &counters);
        let counts = self.flow_counts.read_rest()?;
        self.count_in_kernel(counts);
        stats.flows_evicted = self.diagnosis.flows.other().flows_evicted;
        stats.kernel_overflow_events = self.diagnosis.flows.other().kernel_overflow_events;
        stats.verdicts_not_opened = self.diagnosis.not_opened();
        for verdict in self.diagnosis.ready(monotonic_ns(), true) {
            output.verdict(&verdict);
        }
        output.summary(&self.diagnosis.flows, self.diagnosis.verdicts(), &stats);
        Ok(stats)
    }

    /// Adds the kernel's counts to the flows' drop and datagram counts (and the verdicts they
    /// feed): they include the events sampled out or lost.
    fn count_in_kernel(&mut self, counts: KernelCounts) {
        for (key, count) in counts.flows {
            if let Some((flow, tally)) = self.tally(&key) {
                self.diagnosis.count_in_kernel(flow, tally, count);
            }
        }
        for (key, count) in counts.overflow {
            if let Some((_, tally)) = self.tally(&key) {
                self.diagnosis.flows.add_other(&tally, count);
            }
        }
    }

    /// What a kernel count key adds to: drops by reason, or datagrams at their first device.
    fn tally(&self, key: &FlowCountKey) -> Option<(FlowKey, Tally)> {
        let (saddr, daddr) = decode::addresses(&key.tuple);
        let source = SocketAddr::new(saddr, key.tuple.sport);
        let flow = FlowKey::new(source, SocketAddr::new(daddr, key.tuple.dport));
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

    pub fn knowledge(&self) -> &Knowledge {
        &self.knowledge
    }

    fn reached_count(&self, stats: &Stats) -> bool {
        self.config.count.is_some_and(|count| stats.events >= count)
    }

    fn drain(&mut self, output: &mut dyn Output, stats: &mut Stats) {
        let limit = self.config.count;
        let knowledge = &self.knowledge;
        let clock = &self.clock;
        let diagnosis = &mut self.diagnosis;
        self.ring.drain(|bytes| {
            if limit.is_some_and(|limit| stats.events >= limit) {
                return;
            }
            match decode::decode(bytes, knowledge as &dyn KernelNames, clock) {
                Ok(event) => {
                    stats.events += 1;
                    output.event(&event);
                    diagnosis.observe(&event);
                }
                Err(error) => {
                    stats.decode_errors += 1;
                    if stats.decode_errors == 1 {
                        eprintln!("udptrace: undecodable record ({error}); counting the rest");
                    }
                }
            }
        });
        output.flush();
    }
}

/// Lists a namespace's UDP sockets with their owners, for verdicts.
fn socket_lister(processes: Rc<Processes>) -> SocketLister {
    Box::new(move |netns| {
        let path = processes.netns_path(netns)?;
        let entries = udp_sockets_in(&path).ok()?;
        let buffers = receive_buffers_in(&path).unwrap_or_default();
        Some(
            entries
                .into_iter()
                .map(|mut entry| {
                    entry.rcvbuf = buffers.get(&entry.inode).copied();
                    let owner = processes
                        .socket_owner(entry.inode)
                        .map(|(pid, comm)| format!("{comm}[{pid}]"));
                    (entry, owner)
                })
                .collect(),
        )
    })
}

/// Lists the nftables rules dropping a port in a namespace, for firewall verdicts.
fn rule_lister(processes: Rc<Processes>) -> RuleLister {
    Box::new(move |netns, port| {
        let path = processes.netns_path(netns)?;
        rules_dropping_port(&path, port).ok()
    })
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

/// `--netns`, `-i`, `--pid` → the kernel's numbers.
fn selectors(config: &TraceConfig) -> anyhow::Result<Selectors> {
    let netns_path = match config.netns.as_deref().map(NetnsSpec::parse) {
        None => None,
        Some(NetnsSpec::Inode(inode)) => {
            return Ok(Selectors {
                netns: inode,
                ifindex: match &config.interface {
                    Some(name) => bail!(
                        "-i {name} needs --netns as a name, path or PID to find the device in (an inode cannot be entered)"
                    ),
                    None => 0,
                },
                pid: config.pid.unwrap_or(0),
                padding: 0,
            });
        }
        Some(NetnsSpec::Path(path)) => Some(path),
    };
    let netns = match &netns_path {
        Some(path) => {
            let metadata = std::fs::metadata(path)
                .with_context(|| format!("--netns: cannot open {}", path.display()))?;
            metadata.ino() as u32
        }
        None => 0,
    };
    let ifindex = match &config.interface {
        None => 0,
        Some(name) => ifindex_in(netns_path.as_deref(), name)?,
    };
    if let Some(pid) = config.pid
        && !std::path::Path::new(&format!("/proc/{pid}")).exists()
    {
        return Err(anyhow!("--pid {pid}: no such process"));
    }
    Ok(Selectors {
        netns,
        ifindex,
        pid: config.pid.unwrap_or(0),
        padding: 0,
    })
}
