//! Command-line definitions only (clap).

use std::{net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};
use udptrace_common::event::{MAX_SNAPLEN, Mechanism};

use crate::{container_filter::Wanted, flows::table::DEFAULT_MAX_FLOWS};

#[derive(Debug, Parser)]
#[command(
    name = "udptrace",
    version,
    about = "Live tracer for the kernel's UDP path: drops with reasons, ICMP errors, socket errors",
    after_help = "FILTER is a tcpdump-style expression, e.g. 'port 4000', \
                  'udp and dst port 53 and not host 192.0.2.1', 'portrange 5000-5100 or net 2001:db8::/32'.\n\
                  Examples:\n  sudo udptrace 'port 4000'\n  sudo udptrace --json -c 10 'dst port 53'\n  \
                  sudo udptrace doctor\n  sudo udptrace lab run closed-port --trace",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub trace: TraceArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check the kernel, permissions and every hook; exits non-zero when a core hook is missing.
    Doctor {
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
        /// Only try this attach mechanism.
        #[arg(long, value_enum)]
        probes: Option<ProbeMechanism>,
    },
    /// Reproduce classic UDP incidents in private network namespaces.
    Lab {
        #[command(subcommand)]
        command: LabCommand,
    },
    /// Show a recording (`-o FILE`) as the live run showed it: events, verdicts, flows,
    /// rebuilt offline by the same rules.
    Replay {
        /// The recording.
        file: PathBuf,
        /// NDJSON output, one object per line (schema: docs/json-schema.md).
        #[arg(long)]
        json: bool,
    },
    /// Print the shell completion script for SHELL (e.g. `udptrace completions bash >
    /// /etc/bash_completion.d/udptrace`).
    Completions {
        #[arg(value_enum)]
        shell: CompletionShell,
    },
    /// Print the manual page (roff; `udptrace man | man -l -`).
    Man,
    /// Always-on mode, cheap enough to leave running: only the hooks that fire on failures
    /// (drops, ICMP and socket errors) stay attached, the kernel counts per flow and reason,
    /// and anomaly, status and verdict records are written as NDJSON (docs/json-schema.md).
    /// An anomaly attaches the path hooks, narrowed to its flow's ports, for --escalate
    /// seconds, so that its verdict gets path evidence.
    Watch(Box<WatchArgs>),
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// How long the path hooks stay attached for a flow with an anomaly.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_escalate)]
    pub escalate: Duration,
    /// Write the records to FILE instead of standard output; at --log-size bytes it is
    /// renamed FILE.1 (the previous FILE.1 goes) and a new FILE started; SIGHUP reopens FILE
    /// (after logrotate moved it).
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,
    /// Size at which --log FILE is rotated.
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 20, value_parser = parse_log_size)]
    pub log_size: u64,
    #[command(flatten)]
    pub trace: TraceArgs,
}

/// The shells `udptrace completions` writes for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// List the scenarios.
    List,
    /// Build a scenario's namespaces, run its peers, clean up; with --trace, trace it.
    Run {
        /// Scenario name (see `udptrace lab list`).
        name: String,
        /// Run the tracer on the scenario and show what it saw.
        #[arg(long)]
        trace: bool,
        /// Allow a scenario that changes a setting every namespace of this machine shares
        /// (`conntrack-full` lowers net.netfilter.nf_conntrack_max while it runs); without it
        /// they run only in the test guests of `cargo xtask vm-test`.
        #[arg(long)]
        allow_global_changes: bool,
        #[command(flatten)]
        output: OutputArgs,
    },
}

#[derive(Debug, Args, Clone)]
pub struct OutputArgs {
    /// NDJSON output, one object per line (schema: docs/json-schema.md).
    #[arg(long)]
    pub json: bool,
    /// Only try this attach mechanism for every hook.
    #[arg(long, value_enum)]
    pub probes: Option<ProbeMechanism>,
    /// Ring buffer size in bytes (power of two, at least one page).
    #[arg(long, default_value_t = 4 << 20, value_parser = parse_ring_size)]
    pub ring_size: u32,
    /// Also record the run into FILE (NDJSON with what the verdicts were based on), for
    /// `udptrace replay FILE`; the output above stays as chosen.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// Also write the packets of the hop events (transmit, receive, drop, ICMP error, delivery)
    /// to FILE as pcapng, for Wireshark and tshark, each with a comment saying what udptrace
    /// knows; `-w -` writes them to stdout, and the output above then goes to stderr.
    #[arg(short = 'w', long = "write", value_name = "FILE")]
    pub pcap: Option<PathBuf>,
    /// Attach the kernel call stack (symbolized from /proc/kallsyms) to drop and ICMP error
    /// events: in the text, the JSON (`stack`) and the -w comments.
    #[arg(long)]
    pub stack: bool,
    /// Bytes of each packet -w keeps, from its IP header (at most 1500).
    #[arg(long, value_name = "BYTES", default_value_t = 256, value_parser = parse_snaplen)]
    pub snaplen: u32,
    /// Print the kernel programs' diagnostics to stderr: the tuple each hook parsed and why an
    /// event was skipped (filter, --netns/-i/--pid). For debugging udptrace; costs nothing
    /// when off.
    #[arg(long)]
    pub debug_bpf: bool,
}

impl OutputArgs {
    /// `-w -`: the packets take standard output, the events go to standard error.
    pub fn pcap_on_stdout(&self) -> bool {
        self.pcap.as_deref() == Some(std::path::Path::new("-"))
    }
}

#[derive(Debug, Args, Clone)]
pub struct TraceArgs {
    #[command(flatten)]
    pub output: OutputArgs,
    /// Stop after N events (at least 1).
    #[arg(short = 'c', long, value_name = "N", value_parser = parse_count)]
    pub count: Option<u64>,
    /// Keep at most N flows in the table; the least recently active are added up into one
    /// "other flows" line (counted: `flows_evicted`).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_FLOWS, value_parser = parse_max_flows)]
    pub max_flows: usize,
    /// Stop after SECS seconds.
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// A request to a request/response service (DNS, NTP, SNMP, ...; or on a flow answered
    /// before) that nothing answers within SECS seconds is a `no_reply` or
    /// `no_reply_from_peer` verdict. Measured in event time: judged once a later event shows
    /// the time has passed.
    #[arg(long, value_name = "SECS", default_value = "2", value_parser = parse_reply_timeout)]
    pub reply_timeout: Duration,
    /// After SECS seconds without a matching event (at least the reply timeout plus one),
    /// detach the per-datagram hop hooks (device transmit and receive, route lookups,
    /// delivery) until the next matching event attaches them again: a filter that matches
    /// nothing then costs only the send and receive hooks. The events before they are back
    /// are marked "hops not traced" and no verdict is drawn from them. 0 keeps them attached.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_whole_seconds)]
    pub park_after: Duration,
    /// Only events on this device (name as seen in --netns, else in udptrace's namespace).
    #[arg(short = 'i', long, value_name = "NAME")]
    pub interface: Option<String>,
    /// Only events in this network namespace: a name from /run/netns, a path, a PID, or an
    /// inode number.
    #[arg(long, value_name = "NAME|PATH|PID|INODE")]
    pub netns: Option<String>,
    /// Only events in this container's network namespace: a container's name or id
    /// (repeatable), as Docker or Podman know it, else a running containerd or CRI-O
    /// container's (found in /proc; a `ctr run` container's name is its id). A container that
    /// restarts is followed into its new namespace (containerd, CRI-O: within a second).
    #[arg(long = "container", value_name = "NAME|ID", value_parser = Wanted::parse_container, conflicts_with = "netns")]
    pub containers: Vec<Wanted>,
    /// Only events in this Kubernetes pod's network namespace: its containers carry the
    /// kubelet's labels (Docker, Podman) or CRI's annotations (containerd, CRI-O; repeatable).
    #[arg(long = "pod", value_name = "NAMESPACE/NAME", value_parser = Wanted::parse_pod, conflicts_with = "netns")]
    pub pods: Vec<Wanted>,
    /// Only socket events of this process (drops and ICMP errors are not tied to a process).
    #[arg(long, value_parser = parse_pid)]
    pub pid: Option<u32>,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464): drops by
    /// reason, port, namespace and container; ICMP and socket errors; verdicts by code; lost
    /// and sampled events; hooks by mechanism; CPU time.
    #[arg(long, value_name = "ADDR", value_parser = parse_metrics_address)]
    pub metrics: Option<SocketAddr>,
    /// tcpdump-style filter expression. Options may come before, between or after its words
    /// (no filter word starts with `-`); after `--` every word is a filter word.
    #[arg(value_name = "FILTER")]
    pub filter: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProbeMechanism {
    Fentry,
    Kprobe,
    TpBtf,
    RawTp,
    Tracepoint,
}

impl From<ProbeMechanism> for Mechanism {
    fn from(value: ProbeMechanism) -> Self {
        match value {
            ProbeMechanism::Fentry => Self::Fentry,
            ProbeMechanism::Kprobe => Self::Kprobe,
            ProbeMechanism::TpBtf => Self::TpBtf,
            ProbeMechanism::RawTp => Self::RawTracepoint,
            ProbeMechanism::Tracepoint => Self::Tracepoint,
        }
    }
}

/// A whole number of at least 1: `what` names such a number in errors, `zero` says why 0 is
/// refused.
fn parse_positive<T: FromStr + Default + PartialEq>(
    text: &str,
    what: &str,
    zero: &str,
) -> Result<T, String> {
    match text.parse::<T>() {
        Ok(value) if value == T::default() => Err(zero.into()),
        Ok(value) => Ok(value),
        Err(_) => Err(format!("`{text}` is not {what}")),
    }
}

fn parse_count(text: &str) -> Result<u64, String> {
    parse_positive(
        text,
        "a number of events",
        "0 would stop before the first event: give at least 1",
    )
}

fn parse_pid(text: &str) -> Result<u32, String> {
    // The kernel's PIDs start at 1; 0 would mean "any process" to the programs.
    parse_positive(text, "a process id", "0 is not a process id")
}

fn parse_ring_size(text: &str) -> Result<u32, String> {
    let size: u32 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a size in bytes"))?;
    if size < 4096 || !size.is_power_of_two() {
        return Err(format!("{size} must be a power of two of at least 4096"));
    }
    Ok(size)
}

fn parse_reply_timeout(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|timeout| !timeout.is_zero())
        .ok_or_else(|| format!("{text} must be a positive number of seconds"))
}

fn parse_whole_seconds(text: &str) -> Result<Duration, String> {
    text.parse()
        .map(Duration::from_secs)
        .map_err(|_| format!("`{text}` is not a whole number of seconds"))
}

fn parse_escalate(text: &str) -> Result<Duration, String> {
    let duration = parse_whole_seconds(text)?;
    if duration.is_zero() {
        return Err("0 would detach the path hooks as soon as they attach: give at least 1".into());
    }
    Ok(duration)
}

fn parse_log_size(text: &str) -> Result<u64, String> {
    let size: u64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a size in bytes"))?;
    // A record (a verdict with its evidence) is a few KiB: a smaller file would rotate at
    // every record.
    if size < 65_536 {
        return Err(format!("{size} is too small: give at least 65536"));
    }
    Ok(size)
}

fn parse_snaplen(text: &str) -> Result<u32, String> {
    let snaplen: u32 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of bytes"))?;
    if !(1..=MAX_SNAPLEN).contains(&snaplen) {
        return Err(format!("{snaplen} must be from 1 to {MAX_SNAPLEN}"));
    }
    Ok(snaplen)
}

fn parse_metrics_address(text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|_| {
        format!("`{text}` is not an address and port (e.g. 127.0.0.1:9464 or [::1]:9464)")
    })
}

fn parse_max_flows(text: &str) -> Result<usize, String> {
    parse_positive(text, "a number of flows", "must be at least 1")
}

/// Where `--netns` points, before it is opened and checked (`host::open_netns`).
#[derive(Debug, PartialEq, Eq)]
pub enum NetnsSpec {
    /// A namespace inode number (as `ls -i /run/netns` or `lsns` show it), not zero.
    Inode(u32),
    Path(PathBuf),
}

impl NetnsSpec {
    /// A number is a PID when /proc has it, else an inode; a word is a name in /run/netns; a
    /// word with a `/` is a path. Empty and 0 name nothing (0 would mean "every namespace" to
    /// the programs).
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err(
                "--netns '': empty; give a name from /run/netns, a path, a PID or an inode number"
                    .into(),
            );
        }
        if let Ok(number) = text.parse::<u32>() {
            if number == 0 {
                return Err("--netns 0: neither a process nor a namespace inode".into());
            }
            let proc_path = PathBuf::from(format!("/proc/{number}/ns/net"));
            if proc_path.exists() {
                return Ok(Self::Path(proc_path));
            }
            return Ok(Self::Inode(number));
        }
        if text.contains('/') {
            Ok(Self::Path(PathBuf::from(text)))
        } else {
            Ok(Self::Path(PathBuf::from("/run/netns").join(text)))
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::flows::DEFAULT_REPLY_TIMEOUT;

    #[test]
    fn filter_words_are_positional() {
        let cli = Cli::try_parse_from(["udptrace", "--json", "port", "4000", "or", "53"]).unwrap();
        assert!(cli.command.is_none());
        assert!(cli.trace.output.json);
        assert_eq!(cli.trace.filter, ["port", "4000", "or", "53"]);
    }

    #[test]
    fn subcommands_parse() {
        let cli =
            Cli::try_parse_from(["udptrace", "lab", "run", "closed-port", "--trace"]).unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Lab {
                command: LabCommand::Run { trace: true, .. }
            })
        ));
        let cli = Cli::try_parse_from(["udptrace", "doctor"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Doctor { .. })));
    }

    #[test]
    fn watch_parses_its_options_and_filter() {
        let cli = Cli::try_parse_from([
            "udptrace",
            "watch",
            "--escalate",
            "3",
            "port",
            "5800",
            "--log",
            "/tmp/x",
        ])
        .unwrap();
        let Some(Command::Watch(args)) = cli.command else {
            panic!("not watch: {cli:?}");
        };
        assert_eq!(args.escalate, Duration::from_secs(3));
        assert_eq!(args.trace.filter, ["port", "5800"]);
        assert_eq!(args.log, Some(PathBuf::from("/tmp/x")));
        assert_eq!(args.log_size, 64 << 20);
        let cli = Cli::try_parse_from(["udptrace", "watch"]).unwrap();
        let Some(Command::Watch(args)) = cli.command else {
            panic!("not watch");
        };
        assert_eq!(args.escalate, Duration::from_secs(10));
        for bad in [
            ["--escalate", "0"],
            ["--escalate", "x"],
            ["--log-size", "100"],
        ] {
            let error = Cli::try_parse_from(["udptrace", "watch", bad[0], bad[1]]).unwrap_err();
            assert!(error.to_string().contains(bad[1]), "{error}");
        }
    }

    #[test]
    fn ring_size_is_validated() {
        assert!(Cli::try_parse_from(["udptrace", "--ring-size", "1000"]).is_err());
        assert!(Cli::try_parse_from(["udptrace", "--ring-size", "65536"]).is_ok());
    }

    #[test]
    fn count_must_be_positive() {
        let error = Cli::try_parse_from(["udptrace", "--count", "0"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("give at least 1"), "{error}");
        assert!(Cli::try_parse_from(["udptrace", "-c", "x"]).is_err());
        let cli = Cli::try_parse_from(["udptrace", "-c", "1", "port", "53"]).unwrap();
        assert_eq!(cli.trace.count, Some(1));
    }

    #[test]
    fn pid_zero_is_refused() {
        let error = Cli::try_parse_from(["udptrace", "--pid", "0"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("0 is not a process id"), "{error}");
        assert!(Cli::try_parse_from(["udptrace", "--pid", "-3"]).is_err());
    }

    #[test]
    fn unknown_flags_are_flags_not_filter_words() {
        let error = Cli::try_parse_from(["udptrace", "--bogus", "port", "53"]).unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::UnknownArgument);
        assert!(error.to_string().contains("--bogus"), "{error}");
        // Options after the filter words are still options.
        let cli =
            Cli::try_parse_from(["udptrace", "not", "port", "53", "--json", "-c", "2"]).unwrap();
        assert_eq!(cli.trace.filter, ["not", "port", "53"]);
        assert!(cli.trace.output.json);
        assert_eq!(cli.trace.count, Some(2));
        // After `--`, anything is a filter word (the filter parser judges it).
        let cli = Cli::try_parse_from(["udptrace", "--", "--bogus", "port"]).unwrap();
        assert_eq!(cli.trace.filter, ["--bogus", "port"]);
    }

    #[test]
    fn max_flows_is_validated() {
        let cli = Cli::try_parse_from(["udptrace", "port", "53"]).unwrap();
        assert_eq!(cli.trace.max_flows, DEFAULT_MAX_FLOWS);
        let cli = Cli::try_parse_from(["udptrace", "--max-flows", "5", "port", "53"]).unwrap();
        assert_eq!(cli.trace.max_flows, 5);
        for bad in ["0", "-1", "many"] {
            assert!(Cli::try_parse_from(["udptrace", "--max-flows", bad]).is_err());
        }
    }

    #[test]
    fn reply_timeout_is_validated() {
        let cli = Cli::try_parse_from(["udptrace", "port", "53"]).unwrap();
        assert_eq!(cli.trace.reply_timeout, DEFAULT_REPLY_TIMEOUT);
        let cli = Cli::try_parse_from(["udptrace", "--reply-timeout", "0.5"]).unwrap();
        assert_eq!(cli.trace.reply_timeout, Duration::from_millis(500));
        for bad in ["0", "-1", "soon", "inf"] {
            let error = Cli::try_parse_from(["udptrace", "--reply-timeout", bad]).unwrap_err();
            assert!(error.to_string().contains(bad), "{error}");
        }
    }

    #[test]
    fn park_after_takes_whole_seconds_and_zero() {
        let cli = Cli::try_parse_from(["udptrace", "port", "53"]).unwrap();
        assert_eq!(cli.trace.park_after, Duration::from_secs(10));
        let cli = Cli::try_parse_from(["udptrace", "--park-after", "0"]).unwrap();
        assert_eq!(cli.trace.park_after, Duration::ZERO);
        for bad in ["1.5", "soon", "1e3"] {
            let error = Cli::try_parse_from(["udptrace", "--park-after", bad]).unwrap_err();
            assert!(
                error.to_string().contains("whole number of seconds"),
                "{error}"
            );
        }
    }

    #[test]
    fn metrics_takes_an_address_and_port() {
        let cli = Cli::try_parse_from(["udptrace", "--metrics", "127.0.0.1:9464"]).unwrap();
        assert_eq!(cli.trace.metrics, Some("127.0.0.1:9464".parse().unwrap()));
        let cli =
            Cli::try_parse_from(["udptrace", "--metrics", "[::1]:9464", "port", "53"]).unwrap();
        assert_eq!(cli.trace.metrics, Some("[::1]:9464".parse().unwrap()));
        for bad in ["9464", "localhost:9464", "127.0.0.1", "127.0.0.1:99999", ""] {
            let error = Cli::try_parse_from(["udptrace", "--metrics", bad]).unwrap_err();
            assert!(
                error.to_string().contains("is not an address and port"),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn netns_specs() {
        assert_eq!(
            NetnsSpec::parse("4026531840"),
            Ok(NetnsSpec::Inode(4_026_531_840))
        );
        let pid = std::process::id();
        assert_eq!(
            NetnsSpec::parse(&pid.to_string()),
            Ok(NetnsSpec::Path(format!("/proc/{pid}/ns/net").into()))
        );
        assert_eq!(
            NetnsSpec::parse("blue"),
            Ok(NetnsSpec::Path("/run/netns/blue".into()))
        );
        assert_eq!(
            NetnsSpec::parse("/var/run/netns/x"),
            Ok(NetnsSpec::Path("/var/run/netns/x".into()))
        );
    }

    #[test]
    fn netns_specs_that_name_nothing() {
        assert!(NetnsSpec::parse("").unwrap_err().contains("empty"));
        assert!(NetnsSpec::parse("0").unwrap_err().contains("--netns 0"));
    }
}
