//! `cargo xtask bench`: udptrace's overhead on a UDP load, side by side with no tracer and with
//! the tools a user would reach for instead (bpftrace on the same tracepoints, tcpdump), in one
//! run, variants alternated round by round so machine drift cancels out. Writes a Markdown
//! table to `bench/results.md` (or the path given) and a summary to stdout.
//!
//! Load: a `sendmmsg` blaster in one private namespace, a `recvmmsg` receiver in another, over
//! veth, documentation-range addresses, fixed duration; measured as datagrams per second
//! delivered to the receiver. The storms are timed instead: a million datagrams of one flow
//! to a closed port, and one datagram from each of a million distinct flows (`lab::storm`).

use std::{
    fmt::Write as _,
    io::{BufRead as _, BufReader},
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    os::fd::AsRawFd as _,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use udptrace::{
    lab::{
        netns::{Netns, veth},
        storm,
    },
    probes::plan::Role,
};

const LOAD_PORT: u16 = 7000;
const CLOSED_PORT: u16 = 7001;
/// Closed port of the flow storm: `FLOW_STORM_FLOWS` distinct flows, one datagram each.
const FLOW_STORM_PORT: u16 = 7002;
const FLOW_STORM_FLOWS: u32 = 1_000_000;
/// The watch flow storm: this many distinct flows (issue 16), sent again and again for
/// `WATCH_FLOWS_DURATION` ("a few minutes"; `UDPTRACE_BENCH_WATCH_FLOWS_SECS` shortens it for a
/// try), to `FLOW_STORM_PORT`.
const WATCH_FLOWS: u32 = 100_000;
const WATCH_FLOWS_DURATION: Duration = Duration::from_mins(3);
/// Peak RSS `udptrace watch` must stay under through the watch flow storm. Nothing it keeps
/// grows with the number of flows: the flow table holds the `--max-flows` (10,000) most
/// recently active and adds the others up in one "other flows" bucket, the kernel's maps are
/// fixed-size, the metrics keep at most 500 drop series (then `other`) and 4,096 drop places.
/// Quiet, it is about 40 MiB (8 of them the ring buffer mapped twice); 128 MiB is the bound the
/// scale test holds the interactive tracer to for a million flows, and half the DaemonSet's
/// memory limit (deploy/kubernetes/udptrace.yaml).
const WATCH_PEAK_RSS_MIB: u64 = 128;
/// The watch flow storm runs watch as deployed, `--metrics` included (their memory counts);
/// on loopback, nothing scrapes it.
const WATCH_METRICS: &str = "127.0.0.1:47200";
/// Seconds of load per sample by default; `UDPTRACE_BENCH_SECS` asks for longer ones (a cost of
/// a few percent needs them on a machine whose throughput moves that much second to second).
const DURATION: Duration = Duration::from_secs(3);
/// A drop storm is this many datagrams to a closed port (timed: the rate is how fast they
/// went out), bounded by `STORM_TIMEOUT`.
const STORM_DATAGRAMS: u64 = 1_000_000;
const STORM_TIMEOUT: Duration = Duration::from_secs(30);
/// Rounds by default; `UDPTRACE_BENCH_ROUNDS` asks for more (medians of more rounds, for
/// figures near their targets).
const ROUNDS: usize = 3;
/// The hooks of each floor row: all, `udptrace watch`'s when nothing fails, and the
/// interactive tracer's while its hop hooks are parked.
const ALL_ROLES: &[Role] = &[Role::Failure, Role::Path, Role::Hop];
const WATCH_ROLES: &[Role] = &[Role::Failure];
const PARKED_ROLES: &[Role] = &[Role::Failure, Role::Path];
/// Starts of each tracer for the start-up rows (on the idle host, alternating).
const STARTS: usize = 5;
const BATCH: usize = 64;
const PAYLOAD: usize = 64;

/// bpftrace with the scope of `udptrace 'port 7000'`'s hop events: one line per datagram at
/// each device it leaves or enters.
const BPFTRACE_SCRIPT: &str = r#"
tracepoint:net:net_dev_queue, tracepoint:net:netif_receive_skb {
  $skb = (struct sk_buff *)args->skbaddr;
  $ip = $skb->head + $skb->network_header;
  if (*(uint8 *)($ip + 9) == 17) {
    $udp = $ip + ((*(uint8 *)$ip) & 15) * 4;
    $dport = ((*(uint8 *)($udp + 2)) << 8) | *(uint8 *)($udp + 3);
    $sport = ((*(uint8 *)($udp + 0)) << 8) | *(uint8 *)($udp + 1);
    if ($dport == 7000 || $sport == 7000) {
      printf("%s %llx %d %d\n", probe, $skb, $sport, $dport);
    }
  }
}
"#;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    Baseline,
    UdptraceNoMatch,
    UdptraceMatch,
    UdptraceMatchPcap,
    ReferenceNoMatch,
    ReferenceMatch,
    Bpftrace,
    Tcpdump,
    DropStormBaseline,
    UdptraceDropStorm,
    EmptyPrograms,
    UdptraceCostliestFilter,
    FlowStormBaseline,
    UdptraceFlowStorm,
    UdptraceWatch,
    EmptyWatchPrograms,
    WatchDropStorm,
    WatchFlowStorm,
    EmptyParkedPrograms,
    UdptraceNoMatchParked,
}

impl Variant {
    const ALL: [Self; 20] = [
        Self::Baseline,
        Self::EmptyPrograms,
        Self::EmptyWatchPrograms,
        Self::EmptyParkedPrograms,
        Self::UdptraceWatch,
        Self::UdptraceNoMatch,
        Self::UdptraceNoMatchParked,
        Self::ReferenceNoMatch,
        Self::UdptraceCostliestFilter,
        Self::UdptraceMatch,
        Self::ReferenceMatch,
        Self::UdptraceMatchPcap,
        Self::Bpftrace,
        Self::Tcpdump,
        Self::DropStormBaseline,
        Self::UdptraceDropStorm,
        Self::WatchDropStorm,
        Self::FlowStormBaseline,
        Self::UdptraceFlowStorm,
        Self::WatchFlowStorm,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Baseline => "no tracer (baseline)",
            Self::UdptraceNoMatch => "udptrace, filter matching nothing",
            Self::UdptraceMatch => "udptrace, filter matching the load",
            Self::UdptraceMatchPcap => "udptrace -w FILE, filter matching the load",
            Self::ReferenceNoMatch => "reference build, filter matching nothing",
            Self::ReferenceMatch => "reference build, filter matching the load",
            Self::Bpftrace => "bpftrace, same hops printed",
            Self::Tcpdump => "tcpdump -w /dev/null on the receiver",
            Self::DropStormBaseline => "drop storm, no tracer",
            Self::UdptraceDropStorm => "drop storm, udptrace matching the drops",
            Self::EmptyPrograms => "floor: empty BPF programs on udptrace's tracepoints",
            Self::UdptraceCostliestFilter => {
                "udptrace, costliest accepted filter, matching nothing"
            }
            Self::FlowStormBaseline => "flow storm (1M distinct flows), no tracer",
            Self::UdptraceFlowStorm => "flow storm (1M distinct flows), udptrace matching them",
            Self::UdptraceWatch => "udptrace watch (all UDP), healthy load",
            Self::EmptyWatchPrograms => "floor: empty BPF programs on watch's tracepoints",
            Self::WatchDropStorm => "drop storm, udptrace watch matching the drops",
            Self::WatchFlowStorm => "100k flows for minutes, udptrace watch --metrics",
            Self::EmptyParkedPrograms => {
                "floor: empty BPF programs on the tracepoints kept while hop hooks are parked"
            }
            Self::UdptraceNoMatchParked => {
                "udptrace, filter matching nothing, hop hooks parked (--park-after)"
            }
        }
    }

    /// Short name for `UDPTRACE_BENCH_ONLY`.
    fn key(self) -> &'static str {
        match self {
            Self::Baseline => "baseline",
            Self::UdptraceNoMatch => "no-match",
            Self::UdptraceMatch => "match",
            Self::UdptraceMatchPcap => "match-w",
            Self::ReferenceNoMatch => "ref-no-match",
            Self::ReferenceMatch => "ref-match",
            Self::Bpftrace => "bpftrace",
            Self::Tcpdump => "tcpdump",
            Self::DropStormBaseline => "storm-baseline",
            Self::UdptraceDropStorm => "storm",
            Self::EmptyPrograms => "floor",
            Self::UdptraceCostliestFilter => "costliest-filter",
            Self::FlowStormBaseline => "flows-baseline",
            Self::UdptraceFlowStorm => "flows",
            Self::UdptraceWatch => "watch",
            Self::EmptyWatchPrograms => "floor-watch",
            Self::WatchDropStorm => "storm-watch",
            Self::WatchFlowStorm => "flows-watch",
            Self::EmptyParkedPrograms => "floor-parked",
            Self::UdptraceNoMatchParked => "no-match-parked",
        }
    }

    /// The variants to run: all, or those named in `UDPTRACE_BENCH_ONLY` (comma-separated
    /// keys) for a quick look at one change; the baselines always run, every ratio needs one.
    /// The reference rows run only with `UDPTRACE_BENCH_REFERENCE`.
    fn selected() -> anyhow::Result<Vec<Self>> {
        let available = |variant: &Self| !variant.reference() || reference_binary().is_some();
        let Ok(only) = std::env::var("UDPTRACE_BENCH_ONLY") else {
            return Ok(Self::ALL.into_iter().filter(available).collect());
        };
        let keys: Vec<&str> = only.split(',').map(str::trim).collect();
        if let Some(unknown) = keys
            .iter()
            .find(|key| **key != STARTUP_KEY && !Self::ALL.iter().any(|v| v.key() == **key))
        {
            let known: Vec<&str> = Self::ALL
                .iter()
                .map(|v| v.key())
                .chain([STARTUP_KEY])
                .collect();
            bail!(
                "UDPTRACE_BENCH_ONLY: unknown variant {unknown:?} (known: {})",
                known.join(", ")
            );
        }
        if let Some(reference) = keys.iter().find(|key| {
            Self::ALL
                .iter()
                .any(|v| v.reference() && v.key() == **key && !available(v))
        }) {
            bail!(
                "UDPTRACE_BENCH_ONLY names {reference:?}: set UDPTRACE_BENCH_REFERENCE to the udptrace binary to compare with"
            );
        }
        let selected = |v: &Self| keys.contains(&v.key());
        Ok(Self::ALL
            .into_iter()
            .filter(|v| {
                selected(v)
                    || *v == Self::Baseline
                    || Self::ALL
                        .iter()
                        .any(|other| selected(other) && other.baseline() == *v)
            })
            .collect())
    }

    /// Whether the start-up rows run: always, unless `UDPTRACE_BENCH_ONLY` leaves out
    /// `startup`.
    fn startup_selected() -> bool {
        std::env::var("UDPTRACE_BENCH_ONLY").map_or(true, |only| {
            only.split(',').any(|key| key.trim() == STARTUP_KEY)
        })
    }

    /// Whether the row runs udptrace (whose exit stats are read and checked). Every variant
    /// named: a new one must say (the parked row was once left out, its stats unchecked).
    fn udptrace(self) -> bool {
        match self {
            Self::UdptraceNoMatch
            | Self::UdptraceNoMatchParked
            | Self::UdptraceMatch
            | Self::UdptraceMatchPcap
            | Self::UdptraceCostliestFilter
            | Self::ReferenceNoMatch
            | Self::ReferenceMatch
            | Self::UdptraceDropStorm
            | Self::UdptraceFlowStorm
            | Self::UdptraceWatch
            | Self::WatchDropStorm
            | Self::WatchFlowStorm => true,
            Self::Baseline
            | Self::EmptyPrograms
            | Self::EmptyWatchPrograms
            | Self::EmptyParkedPrograms
            | Self::Bpftrace
            | Self::Tcpdump
            | Self::DropStormBaseline
            | Self::FlowStormBaseline => false,
        }
    }

    /// Rows of the build named by `UDPTRACE_BENCH_REFERENCE`, measured beside this build's.
    fn reference(self) -> bool {
        matches!(self, Self::ReferenceNoMatch | Self::ReferenceMatch)
    }

    fn storm(self) -> bool {
        matches!(
            self,
            Self::DropStormBaseline | Self::UdptraceDropStorm | Self::WatchDropStorm
        )
    }

    fn flow_storm(self) -> bool {
        matches!(
            self,
            Self::FlowStormBaseline | Self::UdptraceFlowStorm | Self::WatchFlowStorm
        )
    }

    /// The rows whose drop counts must equal the kernel's (the bench fails otherwise).
    fn counts_drops(self) -> bool {
        matches!(
            self,
            Self::UdptraceDropStorm
                | Self::WatchDropStorm
                | Self::UdptraceFlowStorm
                | Self::WatchFlowStorm
        )
    }

    /// Rounds this variant runs in, of the run's `rounds`: every one, but the watch flow
    /// storm, minutes long, whose figure is its peak RSS: once (the first round).
    fn rounds(self, rounds: usize) -> usize {
        if self == Self::WatchFlowStorm {
            1
        } else {
            rounds
        }
    }

    /// The flows of one pass of a flow storm, and until when passes repeat (`None`: once).
    fn flow_passes(
        self,
        start: Instant,
    ) -> anyhow::Result<(std::ops::Range<u32>, Option<Instant>)> {
        Ok(if self == Self::WatchFlowStorm {
            (0..WATCH_FLOWS, Some(start + watch_flows_duration()?))
        } else {
            (0..FLOW_STORM_FLOWS, None)
        })
    }

    /// The variant whose rate this one's is compared with.
    fn baseline(self) -> Self {
        if self.storm() {
            Self::DropStormBaseline
        } else if self.flow_storm() {
            Self::FlowStormBaseline
        } else {
            Self::Baseline
        }
    }
}

/// One measurement.
#[derive(Clone, Debug, Default)]
struct Sample {
    /// Datagrams per second received (or, in a drop storm, sent).
    rate: f64,
    events: Option<u64>,
    lost: Option<u64>,
    lost_reported: Option<bool>,
    /// Storm: the flows' NO_SOCKET counts, and delivered + lost + sampled-out drop events,
    /// each == the receiver namespace's NoPorts delta (`check_drops`: the bench fails
    /// otherwise).
    drops_exact: Option<bool>,
    /// `-w`: packets in the file, and whether they are the hop events printed (each hop
    /// event shown has its packet; the lost ones are in `lost`).
    packets: Option<(u64, bool)>,
    cpu_seconds: Option<f64>,
    peak_rss_kib: Option<u64>,
    ready_ms: Option<u128>,
    exit_ms: Option<u128>,
}

/// A tracer running during one sample.
struct Tool {
    child: Child,
    ready: Duration,
    lines: Arc<AtomicU64>,
    stats: Arc<std::sync::Mutex<Option<serde_json::Value>>>,
    lost_reported: Arc<AtomicU64>,
    /// udptrace `drop` events printed.
    drops: Arc<AtomicU64>,
    /// NO_SOCKET drops in udptrace's flow summaries and its other-flows aggregate (the
    /// kernel's per-flow counts).
    flow_drops: Arc<AtomicU64>,
    /// udptrace hop events printed (the kinds `-w` writes a packet for).
    hops: Arc<AtomicU64>,
}

/// `WATCH_FLOWS_DURATION`, or `UDPTRACE_BENCH_WATCH_FLOWS_SECS` seconds to try the row out.
fn watch_flows_duration() -> anyhow::Result<Duration> {
    Ok(whole_number("UDPTRACE_BENCH_WATCH_FLOWS_SECS")?
        .map_or(WATCH_FLOWS_DURATION, Duration::from_secs))
}

/// `DURATION`, or `UDPTRACE_BENCH_SECS` seconds.
fn sample_duration() -> anyhow::Result<Duration> {
    Ok(whole_number("UDPTRACE_BENCH_SECS")?.map_or(DURATION, Duration::from_secs))
}

/// `ROUNDS`, or `UDPTRACE_BENCH_ROUNDS`.
fn rounds() -> anyhow::Result<usize> {
    Ok(whole_number("UDPTRACE_BENCH_ROUNDS")?.map_or(ROUNDS, |rounds| rounds as usize))
}

/// The whole number above 0 in environment variable `name`, if set.
fn whole_number(name: &str) -> anyhow::Result<Option<u64>> {
    match std::env::var(name) {
        Err(_) => Ok(None),
        Ok(text) => match text.trim().parse::<u64>() {
            Ok(number) if number > 0 => Ok(Some(number)),
            _ => bail!("{name}: {text:?} is not a whole number above 0"),
        },
    }
}

/// The udptrace binary cargo built for this bench (in the same profile).
fn udptrace_binary() -> &'static str {
    env!("CARGO_BIN_EXE_udptrace")
}

/// Another udptrace build (`UDPTRACE_BENCH_REFERENCE`, e.g. one built from an earlier commit):
/// its rows run beside this build's in the same rounds, so that "this change made nothing
/// slower" is a ratio from one run, not a comparison of two runs on a drifting machine.
fn reference_binary() -> Option<String> {
    std::env::var("UDPTRACE_BENCH_REFERENCE")
        .ok()
        .filter(|path| !path.is_empty())
}

/// The build a udptrace row runs.
fn udptrace_of(variant: Variant) -> String {
    if variant.reference() {
        reference_binary().unwrap_or_default()
    } else {
        udptrace_binary().to_owned()
    }
}

fn start_tool(variant: Variant, receiver: &Netns) -> anyhow::Result<Option<Tool>> {
    let started = Instant::now();
    let mut command = match variant {
        Variant::Baseline
        | Variant::DropStormBaseline
        | Variant::EmptyPrograms
        | Variant::EmptyWatchPrograms
        | Variant::EmptyParkedPrograms
        | Variant::FlowStormBaseline => return Ok(None),
        // No filter: everything UDP, as it would run on a host; the load is healthy, so only
        // the failure hooks are attached.
        Variant::UdptraceWatch => {
            let mut c = Command::new(udptrace_binary());
            c.arg("watch");
            c
        }
        Variant::UdptraceNoMatch | Variant::ReferenceNoMatch => {
            let mut c = Command::new(udptrace_of(variant));
            c.args(["--json", "port", "9"]);
            c
        }
        // The shortest quiet period (the reply timeout plus a second): measured once the
        // tracer says its hop hooks are parked, as a run left waiting for its filter would be.
        Variant::UdptraceNoMatchParked => {
            let mut c = Command::new(udptrace_binary());
            c.args([
                "--json",
                "--park-after",
                "1",
                "--reply-timeout",
                "0.5",
                "port",
                "9",
            ]);
            c
        }
        // Its ready time, next to the one-port filter's above, is the verification cost of the
        // largest filter; every datagram of the load runs all its tests.
        Variant::UdptraceCostliestFilter => {
            let mut c = Command::new(udptrace_binary());
            c.args(["--json", &udptrace::filter::costliest_expression()]);
            c
        }
        Variant::UdptraceMatch | Variant::ReferenceMatch => {
            let mut c = Command::new(udptrace_of(variant));
            c.args(["--json", "port", &LOAD_PORT.to_string()]);
            c
        }
        Variant::UdptraceMatchPcap => {
            let mut c = Command::new(udptrace_binary());
            c.args(["--json", "-w"])
                .arg(pcap_path())
                .args(["port", &LOAD_PORT.to_string()]);
            c
        }
        Variant::UdptraceDropStorm => {
            let mut c = Command::new(udptrace_binary());
            c.args(["--json", "port", &CLOSED_PORT.to_string()]);
            c
        }
        Variant::UdptraceFlowStorm => {
            let mut c = Command::new(udptrace_binary());
            c.args(["--json", "port", &FLOW_STORM_PORT.to_string()]);
            c
        }
        Variant::WatchDropStorm => {
            let mut c = Command::new(udptrace_binary());
            c.args(["watch", "port", &CLOSED_PORT.to_string()]);
            c
        }
        Variant::WatchFlowStorm => {
            let mut c = Command::new(udptrace_binary());
            c.args(["watch", "--metrics", WATCH_METRICS, "port"])
                .arg(FLOW_STORM_PORT.to_string());
            c
        }
        Variant::Bpftrace => {
            let mut c = Command::new("bpftrace");
            c.args(["-e", BPFTRACE_SCRIPT]);
            c
        }
        Variant::Tcpdump => {
            let mut c = Command::new("ip");
            c.args([
                "netns",
                "exec",
                &receiver.name,
                "tcpdump",
                "-i",
                "eth0",
                "-n",
                "-w",
                "/dev/null",
            ]);
            c.args(["udp", "port", &LOAD_PORT.to_string()]);
            c
        }
    };
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", variant.name()))?;
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let lines = Arc::new(AtomicU64::new(0));
    let stats = Arc::new(std::sync::Mutex::new(None));
    let lost_reported = Arc::new(AtomicU64::new(0));
    let drops = Arc::new(AtomicU64::new(0));
    let flow_drops = Arc::new(AtomicU64::new(0));
    let hops = Arc::new(AtomicU64::new(0));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (parked_tx, parked_rx) = std::sync::mpsc::channel();
    {
        let (lines, stats, lost_reported, drops, flow_drops, hops, ready_tx) = (
            Arc::clone(&lines),
            Arc::clone(&stats),
            Arc::clone(&lost_reported),
            Arc::clone(&drops),
            Arc::clone(&flow_drops),
            Arc::clone(&hops),
            ready_tx.clone(),
        );
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                lines.fetch_add(1, Ordering::Relaxed);
                // Event records (watch: anomaly records) only: verdict records carry their
                // evidence events too.
                if (line.starts_with("{\"type\":\"event\"")
                    || line.starts_with("{\"type\":\"anomaly\""))
                    && line.contains("\"kind\":\"drop\"")
                {
                    drops.fetch_add(1, Ordering::Relaxed);
                }
                if line.starts_with("{\"type\":\"event\"")
                    && HOP_KINDS
                        .iter()
                        .any(|kind| line.contains(&format!("\"kind\":\"{kind}\"")))
                {
                    hops.fetch_add(1, Ordering::Relaxed);
                }
                // bpftrace says "Attaching N probes..." on stdout; udptrace sends `ready`.
                if line.contains("\"type\":\"ready\"") || line.starts_with("Attaching") {
                    let _ = ready_tx.send(());
                } else if line.contains("\"code\":\"hops_parked\"") {
                    let _ = parked_tx.send(());
                } else if (line.contains("\"type\":\"flow\"")
                    || line.contains("\"type\":\"other_flows\""))
                    && let Ok(flow) = serde_json::from_str::<serde_json::Value>(&line)
                {
                    let no_socket = flow["drops"]["NO_SOCKET"].as_u64().unwrap_or(0);
                    flow_drops.fetch_add(no_socket, Ordering::Relaxed);
                } else if line.contains("\"type\":\"stats\"") {
                    *stats.lock().unwrap() = serde_json::from_str(&line).ok();
                } else if line.contains("\"type\":\"lost\"")
                    && let Ok(value) = serde_json::from_str::<serde_json::Value>(&line)
                {
                    lost_reported
                        .fetch_add(value["count"].as_u64().unwrap_or(0), Ordering::Relaxed);
                }
            }
        });
    }
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            // tcpdump: "listening on eth0, ..."
            if line.contains("listening on") {
                let _ = ready_tx.send(());
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(30))
        .with_context(|| format!("{} did not become ready", variant.name()))?;
    let ready = started.elapsed();
    if variant == Variant::UdptraceNoMatchParked {
        parked_rx
            .recv_timeout(Duration::from_secs(30))
            .context("udptrace did not park its hop hooks")?;
    }
    // Let a tracer's attach settle before the load.
    thread::sleep(Duration::from_millis(300));
    Ok(Some(Tool {
        child,
        ready,
        lines,
        stats,
        lost_reported,
        drops,
        flow_drops,
        hops,
    }))
}

/// Event kinds `-w` writes a packet for.
const HOP_KINDS: [&str; 5] = ["xmit", "recv", "drop", "icmp", "deliver"];

/// Where the `-w` variant writes (replaced by each sample, removed after it).
fn pcap_path() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("udptrace-bench-{}.pcapng", std::process::id()))
}

/// utime+stime (s) and VmHWM (KiB) of a live process.
fn usage(pid: u32) -> (Option<f64>, Option<u64>) {
    let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let after = stat.rsplit_once(')')?.1;
            let fields: Vec<&str> = after.split_whitespace().collect();
            Some(fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?)
        });
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        });
    (ticks.map(|t| t / hz), rss)
}

/// udptrace's exit stats, its drop events and its flows' NO_SOCKET drops.
struct UdptraceTotals {
    stats: serde_json::Value,
    drop_events: u64,
    flow_drops: u64,
    hop_events: u64,
    /// Events the `lost` records reported.
    lost_reported: u64,
}

/// Which peak RSS a sample reports.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Peak {
    /// VmHWM when the tool is interrupted (start-up rows: at ready).
    AtInterrupt,
    /// VmHWM until the process ends: its exit summary (up to `--max-flows` flow records)
    /// counts too.
    UntilExit,
}

/// Stops a tracer and fills the sample; returns udptrace's totals.
fn stop_tool(
    tool: Tool,
    sample: &mut Sample,
    is_udptrace: bool,
    peak: Peak,
) -> anyhow::Result<Option<UdptraceTotals>> {
    let mut child = tool.child;
    let (cpu, rss) = usage(child.id());
    sample.cpu_seconds = cpu;
    sample.peak_rss_kib = rss;
    sample.ready_ms = Some(tool.ready.as_millis());
    let interrupted = Instant::now();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            // Recorded as a 20 s exit (an unresponsive tool is a result, not a bench failure);
            // bpftrace has been seen to hang printing its backlog.
            if is_udptrace {
                bail!("udptrace did not exit within 20 s of SIGINT");
            }
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        if peak == Peak::UntilExit {
            // None once it has exited (a zombie has no VmHWM): the maximum keeps the last.
            sample.peak_rss_kib = sample.peak_rss_kib.max(usage(child.id()).1);
        }
        thread::sleep(Duration::from_millis(5));
    }
    sample.exit_ms = Some(interrupted.elapsed().as_millis());
    // Let the reader threads finish the pipe.
    thread::sleep(Duration::from_millis(300));
    if !is_udptrace {
        sample.events = Some(tool.lines.load(Ordering::Relaxed));
        return Ok(None);
    }
    let stats = tool
        .stats
        .lock()
        .unwrap()
        .clone()
        .context("udptrace printed no stats")?;
    sample.events = stats["events"].as_u64();
    let lost = stats["lost"].as_u64().unwrap_or(0);
    sample.lost = Some(lost);
    let lost_reported = tool.lost_reported.load(Ordering::Relaxed);
    sample.lost_reported = Some(lost_reported == lost);
    Ok(Some(UdptraceTotals {
        stats,
        drop_events: tool.drops.load(Ordering::Relaxed),
        flow_drops: tool.flow_drops.load(Ordering::Relaxed),
        hop_events: tool.hops.load(Ordering::Relaxed),
        lost_reported,
    }))
}

/// Receives on `port` in `netns` until `stop`, counting datagrams.
fn receiver(
    netns: &Netns,
    stop: Instant,
) -> anyhow::Result<thread::JoinHandle<anyhow::Result<u64>>> {
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    let handle = netns.spawn(move || {
        let socket = UdpSocket::bind(("192.0.2.2", LOAD_PORT))?;
        let size: i32 = 8 << 20;
        // SAFETY: valid fd and int option (SO_RCVBUFFORCE: root may exceed rmem_max).
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&raw const size).cast(),
                4,
            );
        }
        socket.set_read_timeout(Some(Duration::from_millis(50)))?;
        let _ = bound_tx.send(());
        let mut buffers = vec![[0u8; PAYLOAD]; BATCH];
        let mut received = 0u64;
        while Instant::now() < stop {
            // SAFETY: iovecs and headers point into `buffers`, alive for the call.
            let n = unsafe {
                let mut iovecs: Vec<libc::iovec> =
                    buffers.iter_mut().map(|b| storm::iovec(b)).collect();
                let mut headers = storm::message_headers(&mut iovecs, None);
                libc::recvmmsg(
                    socket.as_raw_fd(),
                    headers.as_mut_ptr(),
                    BATCH as u32,
                    0,
                    std::ptr::null_mut(),
                )
            };
            if n > 0 {
                received += n as u64;
            }
        }
        Ok(received)
    })?;
    bound_rx
        .recv_timeout(Duration::from_secs(5))
        .context("receiver did not bind")?;
    Ok(handle)
}

/// Blasts `target` from `netns` until `stop` or `limit` datagrams; returns datagrams sent.
fn blaster(netns: &Netns, target: SocketAddr, stop: Instant, limit: u64) -> anyhow::Result<u64> {
    netns.enter(move || {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        socket.connect(target)?;
        let payload = [0x55u8; PAYLOAD];
        let mut sent = 0u64;
        while sent < limit && Instant::now() < stop {
            // SAFETY: every header points at the same payload, alive for the call.
            let n = unsafe {
                // sendmmsg only reads the payload.
                let iov = libc::iovec {
                    iov_base: payload.as_ptr().cast_mut().cast(),
                    iov_len: PAYLOAD,
                };
                let mut iovecs = [iov; BATCH];
                let mut headers = storm::message_headers(&mut iovecs, None);
                libc::sendmmsg(socket.as_raw_fd(), headers.as_mut_ptr(), BATCH as u32, 0)
            };
            // A closed port answers with ICMP errors that fail the next send (ECONNREFUSED):
            // keep sending, as a storm does.
            if n > 0 {
                sent += n as u64;
            }
        }
        Ok(sent)
    })
}

fn measure(
    variant: Variant,
    sender: &Netns,
    receiver_ns: &Netns,
    duration: Duration,
) -> anyhow::Result<Sample> {
    // Detached (closed) when this function returns.
    let _floor = match variant {
        Variant::EmptyPrograms => Some(empty_programs::attach(ALL_ROLES)?),
        Variant::EmptyWatchPrograms => Some(empty_programs::attach(WATCH_ROLES)?),
        Variant::EmptyParkedPrograms => Some(empty_programs::attach(PARKED_ROLES)?),
        _ => None,
    };
    let tool = start_tool(variant, receiver_ns)?;
    let mut sample = Sample::default();
    let no_ports_before = receiver_ns.snmp("Udp", "NoPorts")?;
    let start = Instant::now();
    let stop = start + duration;
    let rate = if variant.flow_storm() {
        let (flows, until) = variant.flow_passes(start)?;
        let mut sent = 0;
        loop {
            sent += storm::send_flows(
                sender,
                Ipv4Addr::new(192, 0, 2, 2),
                FLOW_STORM_PORT,
                flows.clone(),
                None,
            )?
            .join()
            .map_err(|_| anyhow::anyhow!("flow storm sender panicked"))??;
            if until.is_none_or(|until| Instant::now() >= until) {
                break;
            }
        }
        sent as f64 / start.elapsed().as_secs_f64()
    } else if variant.storm() {
        let target: SocketAddr = ([192, 0, 2, 2], CLOSED_PORT).into();
        let sent = blaster(sender, target, start + STORM_TIMEOUT, STORM_DATAGRAMS)?;
        sent as f64 / start.elapsed().as_secs_f64()
    } else {
        let receiving = receiver(receiver_ns, stop + Duration::from_millis(100))?;
        let target: SocketAddr = ([192, 0, 2, 2], LOAD_PORT).into();
        blaster(sender, target, stop, u64::MAX)?;
        let received = receiving
            .join()
            .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
        received as f64 / duration.as_secs_f64()
    };
    sample.rate = rate;
    let no_ports = settled_no_ports(receiver_ns)? - no_ports_before;
    if let Some(tool) = tool {
        let stats = stop_tool(tool, &mut sample, variant.udptrace(), Peak::UntilExit)?;
        if variant == Variant::UdptraceMatchPcap
            && let Some(totals) = &stats
        {
            let file = std::fs::read(pcap_path()).context("reading the -w file")?;
            let _ = std::fs::remove_file(pcap_path());
            let packets = udptrace::pcapng::packet_count(&file)
                .context("the -w file is not a whole pcapng stream")?;
            sample.packets = Some((packets, packets == totals.hop_events));
        }
        if variant.counts_drops()
            && let Some(totals) = stats
        {
            check_drops(&totals, no_ports, &sample)?;
            sample.drops_exact = Some(true);
        }
    }
    if variant == Variant::WatchFlowStorm {
        let peak = sample.peak_rss_kib.context("no VmHWM for udptrace watch")?;
        if peak > WATCH_PEAK_RSS_MIB * 1024 {
            bail!(
                "udptrace watch peaked at {:.1} MiB resident under {WATCH_FLOWS} flows, over the \
                 {WATCH_PEAK_RSS_MIB} MiB bound (WATCH_PEAK_RSS_MIB)",
                peak as f64 / 1024.0
            );
        }
    }
    Ok(sample)
}

/// The receiver's NoPorts once it stops moving: the storm's last datagrams have crossed the
/// veth (a storm's backlog can outlast a fixed pause).
fn settled_no_ports(receiver_ns: &Netns) -> anyhow::Result<u64> {
    let mut last = receiver_ns.snmp("Udp", "NoPorts")?;
    loop {
        thread::sleep(Duration::from_millis(300));
        let now = receiver_ns.snmp("Udp", "NoPorts")?;
        if now == last {
            return Ok(now);
        }
        last = now;
    }
}

/// A storm row's counts against the kernel's: one NO_SOCKET drop per datagram that reached the
/// closed port (`no_ports`, the receiver namespace's NoPorts delta). The flows' counts (listed
/// and other flows) and the drop records (written, lost to a full ring, sampled out) must each
/// equal it, and every loss must have been reported; the bench fails otherwise.
fn check_drops(totals: &UdptraceTotals, no_ports: u64, sample: &Sample) -> anyhow::Result<()> {
    let field = |name: &str| {
        totals.stats[name]
            .as_u64()
            .with_context(|| format!("udptrace's stats lack {name:?}: {}", totals.stats))
    };
    let (lost, sampled, uncounted) = (
        field("drops_lost")?,
        field("drops_sampled")?,
        field("uncounted")?,
    );
    if totals.flow_drops != no_ports {
        bail!(
            "the flows' NO_SOCKET drops ({}, listed and other flows) differ from the kernel's \
             NoPorts delta ({no_ports})",
            totals.flow_drops
        );
    }
    let accounted = totals.drop_events + lost + sampled;
    if accounted != no_ports {
        bail!(
            "drop records written ({}) + lost ({lost}) + sampled out ({sampled}) = {accounted}, \
             not the kernel's NoPorts delta ({no_ports}): drops went uncounted",
            totals.drop_events
        );
    }
    if uncounted != 0 || sample.lost_reported != Some(true) {
        bail!(
            "events lost without a trace: {uncounted} uncounted by the kernel, {} lost in \
             udptrace's stats of which {} reported in `lost` records",
            sample.lost.unwrap_or_default(),
            totals.lost_reported
        );
    }
    Ok(())
}

/// `UDPTRACE_BENCH_ONLY` key of the start-up rows.
const STARTUP_KEY: &str = "startup";

/// Start-up rows: spawn to ready (udptrace's `ready` record, bpftrace's "Attaching N probes")
/// and peak RSS at ready, for udptrace with a one-port filter and for bpftrace on the same
/// hops, `STARTS` starts each, alternating, on the idle host; medians, and udptrace's as a
/// ratio of bpftrace's.
fn startup(receiver: &Netns) -> anyhow::Result<String> {
    let tracers = [Variant::UdptraceNoMatch, Variant::Bpftrace];
    let mut ready: [Vec<f64>; 2] = Default::default();
    let mut rss: [Vec<f64>; 2] = Default::default();
    for start in 0..STARTS {
        for index in [start % 2, 1 - start % 2] {
            let variant = tracers[index];
            let tool = start_tool(variant, receiver)?.context("a tracer variant")?;
            let mut sample = Sample::default();
            stop_tool(tool, &mut sample, variant.udptrace(), Peak::AtInterrupt)
                .with_context(|| format!("start {start}, {}", variant.name()))?;
            ready[index].extend(sample.ready_ms.map(|ms| ms as f64));
            rss[index].extend(sample.peak_rss_kib.map(|kib| kib as f64 / 1024.0));
        }
    }
    let [ready_udptrace, ready_bpftrace] = ready.each_mut().map(|values| median(values));
    let [rss_udptrace, rss_bpftrace] = rss.each_mut().map(|values| median(values));
    let mut text = String::new();
    let _ = writeln!(
        text,
        "\n## Start-up\n\n{STARTS} starts of each, alternating, on the idle host; medians. Ready: \
         from spawn to udptrace's `ready` record (every hook attached) or bpftrace's \
         \"Attaching N probes\". Peak RSS: VmHWM at ready; udptrace's includes its ring \
         buffer's kernel pages, mapped twice (2 × `--ring-size`, 8 MiB by default).\n\n\
         | tracer | ready ms | peak RSS MiB |\n|---|---:|---:|\n\
         | {} | {ready_udptrace:.0} | {rss_udptrace:.1} |\n\
         | {} | {ready_bpftrace:.0} | {rss_bpftrace:.1} |\n\
         | udptrace / bpftrace | {:.2} | {:.2} |",
        Variant::UdptraceNoMatch.name(),
        Variant::Bpftrace.name(),
        ready_udptrace / ready_bpftrace,
        rss_udptrace / rss_bpftrace,
    );
    Ok(text)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` appends `--bench` to the arguments given after `--`.
    let output = std::env::args()
        .skip(1)
        .find(|arg| !arg.starts_with("--"))
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../bench/results.md").into());
    let sender = Netns::create("bench-tx")?;
    let receiver_ns = Netns::create("bench-rx")?;
    veth(&sender, "eth0", &receiver_ns, "eth0")?;
    sender.ip(&["addr", "add", "192.0.2.1/24", "dev", "eth0"])?;
    receiver_ns.ip(&["addr", "add", "192.0.2.2/24", "dev", "eth0"])?;
    storm::prepare(&sender, &receiver_ns, Ipv4Addr::new(192, 0, 2, 2))?;
    let variants = Variant::selected()?;
    let rounds = rounds()?;
    let duration = sample_duration()?;
    let mut samples: Vec<(Variant, Sample)> = Vec::new();
    for round in 0..rounds {
        // Alternate the order so that drift over the run hits every variant alike.
        let mut order = variants.clone();
        if round % 2 == 1 {
            order.reverse();
        }
        for variant in order {
            if round >= variant.rounds(rounds) {
                continue;
            }
            let sample = measure(variant, &sender, &receiver_ns, duration)
                .with_context(|| format!("round {round}, {}", variant.name()))?;
            eprintln!(
                "round {round}: {:<42} {:>12.0} datagrams/s",
                variant.name(),
                sample.rate
            );
            samples.push((variant, sample));
        }
    }
    let mut report = report(&samples, rounds, duration);
    if Variant::startup_selected() {
        report.push_str(&startup(&receiver_ns)?);
    }
    std::fs::write(&output, &report).with_context(|| format!("writing {output}"))?;
    println!("{report}");
    Ok(())
}

fn report(samples: &[(Variant, Sample)], rounds: usize, duration: Duration) -> String {
    let rate_of = |variant: Variant| {
        let mut rates: Vec<f64> = samples
            .iter()
            .filter(|(v, _)| *v == variant)
            .map(|(_, s)| s.rate)
            .collect();
        median(&mut rates)
    };
    let mut text = String::new();
    let _ = writeln!(
        text,
        "# udptrace overhead benchmark\n\nLoad: sendmmsg blaster → recvmmsg receiver over veth between two namespaces, {PAYLOAD}-byte \
         datagrams, {} s per sample, {rounds} rounds alternating the variants; medians. Throughput is datagrams \
         per second delivered to the receiver (drop storm: {STORM_DATAGRAMS} datagrams sent to a closed port, \
         timed; flow storm: one datagram from each of {FLOW_STORM_FLOWS} distinct flows to a closed port, sent \
         from a raw socket, timed), as a ratio of the baseline of the same kind from the same run. The floor row attaches a program that only returns to each \
         tracepoint udptrace uses ({}): no tracer built on them can cost less; the watch floor row the same \
         on the tracepoints `udptrace watch` keeps attached when nothing fails ({}); the parked floor row on \
         those the interactive tracer keeps while its hop hooks are parked ({}).\n",
        duration.as_secs(),
        empty_programs::tracepoints(ALL_ROLES).join(", "),
        empty_programs::tracepoints(WATCH_ROLES).join(", "),
        empty_programs::tracepoints(PARKED_ROLES).join(", ")
    );
    if samples.iter().any(|(v, _)| *v == Variant::WatchFlowStorm) {
        let _ = writeln!(
            text,
            "The watch flow storm sends one datagram from each of {WATCH_FLOWS} distinct flows to the flow storm's \
             closed port, again and again for {} s, in the first round only, to `udptrace watch --metrics` (as \
             deployed); its peak RSS (VmHWM until exit) must stay under {WATCH_PEAK_RSS_MIB} MiB. In every storm \
             row the flows' drop counts and the drop records (written, lost, sampled out) must each equal the \
             receiver's NoPorts delta and every loss must be reported, or the bench fails.\n",
            watch_flows_duration()
                .unwrap_or(WATCH_FLOWS_DURATION)
                .as_secs()
        );
    }
    if let Some(reference) = reference_binary() {
        let _ = writeln!(
            text,
            "The reference rows run `{reference}` (UDPTRACE_BENCH_REFERENCE), another build, with the same arguments as this build's rows of the same name, in the same rounds.\n"
        );
    }
    let _ = writeln!(
        text,
        "| variant | datagrams/s | ratio | events | lost (reported?) | drops exact | -w packets (= hop events?) | CPU s | peak RSS MiB | ready ms | exit ms |"
    );
    let _ = writeln!(text, "|---|---:|---:|---:|---|---|---|---:|---:|---:|---:|");
    for variant in Variant::ALL {
        if !samples.iter().any(|(v, _)| *v == variant) {
            continue;
        }
        let rate = rate_of(variant);
        let base = rate_of(variant.baseline());
        let last = samples
            .iter()
            .rev()
            .find(|(v, _)| *v == variant)
            .map(|(_, s)| s.clone())
            .unwrap_or_default();
        let opt = |value: Option<String>| value.unwrap_or_else(|| "–".into());
        let _ = writeln!(
            text,
            "| {} | {rate:.0} | {:.3} | {} | {} | {} | {} | {} | {} | {} | {} |",
            variant.name(),
            rate / base,
            opt(last.events.map(|e| e.to_string())),
            opt(last.lost.map(|l| format!(
                "{l} ({})",
                if last.lost_reported == Some(true) {
                    "yes"
                } else {
                    "NO"
                }
            ))),
            opt(last
                .drops_exact
                .map(|e| if e { "yes".into() } else { "NO".into() })),
            opt(last
                .packets
                .map(|(count, exact)| format!("{count} ({})", if exact { "yes" } else { "NO" }))),
            opt(last.cpu_seconds.map(|c| format!("{c:.2}"))),
            opt(last
                .peak_rss_kib
                .map(|r| format!("{:.1}", r as f64 / 1024.0))),
            opt(last.ready_ms.map(|r| r.to_string())),
            opt(last.exit_ms.map(|r| r.to_string())),
        );
    }
    text
}

/// The cost floor of tracing by tracepoint on this host: a program that only returns,
/// attached as a raw tracepoint to every tracepoint udptrace's hooks use (taken from
/// `probes::plan::HOOKS`). No tracer built on these tracepoints can cost less; the gap between
/// this and udptrace's no-match variant is what udptrace's own filtering costs.
///
/// Loaded with the bare `bpf(2)` system call: two instructions need no object file.
mod empty_programs {
    use std::os::fd::{FromRawFd as _, OwnedFd};

    use anyhow::{Context as _, bail};
    use udptrace::probes::plan::{HOOKS, Role, Target};

    /// `enum bpf_cmd` and `enum bpf_prog_type` (include/uapi/linux/bpf.h).
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;
    const BPF_PROG_TYPE_RAW_TRACEPOINT: u32 = 17;
    /// `r0 = 0; exit`.
    const RETURN_ZERO: [u64; 2] = [0xb7, 0x95];

    /// The tracepoints of the hooks of `roles`, each once.
    pub fn tracepoints(roles: &[Role]) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = HOOKS
            .iter()
            .filter(|hook| roles.contains(&hook.role))
            .flat_map(|hook| hook.attachments.iter())
            .flat_map(|attachment| attachment.programs.iter())
            .filter_map(|(_, target)| match target {
                Target::RawTp(name) => Some(*name),
                Target::RouteTracepoint { ipv6 } => Some(Target::route_event(*ipv6).1),
                _ => None,
            })
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    fn bpf(command: libc::c_long, attr: &mut [u64; 16]) -> std::io::Result<OwnedFd> {
        // SAFETY: `attr` is a zero-padded `union bpf_attr` larger than either command reads.
        let fd =
            unsafe { libc::syscall(libc::SYS_bpf, command, attr.as_mut_ptr(), size_of_val(attr)) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a new descriptor the kernel just returned to us.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    /// Loads the empty program and attaches it to every tracepoint; the links live as long as
    /// the returned descriptors.
    pub fn attach(roles: &[Role]) -> anyhow::Result<Vec<OwnedFd>> {
        use std::os::fd::AsRawFd as _;
        let license = c"GPL";
        let mut attr = [0u64; 16];
        // struct { u32 prog_type, insn_cnt; u64 insns, license; ... }
        attr[0] = u64::from(BPF_PROG_TYPE_RAW_TRACEPOINT) | (RETURN_ZERO.len() as u64) << 32;
        attr[1] = RETURN_ZERO.as_ptr() as u64;
        attr[2] = license.as_ptr() as u64;
        let program = bpf(BPF_PROG_LOAD, &mut attr).context("loading the empty program")?;
        let mut links = vec![program];
        for name in tracepoints(roles) {
            let name = std::ffi::CString::new(name)?;
            // struct { u64 name; u32 prog_fd; }
            let mut attr = [0u64; 16];
            attr[0] = name.as_ptr() as u64;
            attr[1] = links[0].as_raw_fd() as u64;
            match bpf(BPF_RAW_TRACEPOINT_OPEN, &mut attr) {
                Ok(link) => links.push(link),
                // A tracepoint this kernel lacks (udptrace falls back to a function there).
                Err(error) if error.raw_os_error() == Some(libc::ENOENT) => {}
                Err(error) => bail!("attaching the empty program to {name:?}: {error}"),
            }
        }
        Ok(links)
    }
}
