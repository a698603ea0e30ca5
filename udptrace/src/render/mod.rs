//! Presentation only: text for a human at 3 a.m., NDJSON for machines. Both see the same
//! domain events and statistics. The JSON schema is documented in docs/json-schema.md.

pub mod event;
pub mod json;
pub mod pcap;
pub mod text;
pub mod verdict;
pub mod wire;

use std::{
    io::{self, IsTerminal as _},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::io::{Interest, unix::AsyncFd};

use crate::{
    clock::WallTime,
    decode::DecodeError,
    flows::{table::FlowTable, verdict::Verdict},
    model::TraceEvent,
    probes::attach::HookOutcome,
};

/// The output for `--json` (NDJSON) or text, on standard output, or on standard error when
/// stdout carries something else (`-w -`); text is coloured only on a terminal without
/// NO_COLOR.
pub fn output_for(json_output: bool, on_stderr: bool) -> Box<dyn Output> {
    let (out, terminal): (Box<dyn io::Write>, bool) = if on_stderr {
        (Box::new(io::stderr()), io::stderr().is_terminal())
    } else {
        (Box::new(io::stdout()), io::stdout().is_terminal())
    };
    let out = io::BufWriter::with_capacity(1 << 16, out);
    if json_output {
        Box::new(json::JsonOutput::new(out))
    } else {
        let colour = terminal && std::env::var_os("NO_COLOR").is_none();
        Box::new(text::TextOutput::new(out, colour))
    }
}

/// A write error on a file beside the output (`file`: `-w PATH`, `-o PATH`): which file, the
/// error, and what the file holds now (`holds`), so that the run's one line of error says
/// what was left half-written.
pub fn file_cut_short(error: &io::Error, file: &str, holds: &str) -> io::Error {
    io::Error::new(error.kind(), format!("{file}: {error}; {holds}"))
}

/// Two outputs fed the same records: the user's and a file beside it (`-o`, `-w`). The
/// first error stops the run.
pub struct Tee<'a> {
    first: &'a mut dyn Output,
    second: &'a mut dyn Output,
}

impl<'a> Tee<'a> {
    pub fn new(first: &'a mut dyn Output, second: &'a mut dyn Output) -> Self {
        Self { first, second }
    }
}

impl Output for Tee<'_> {
    fn ready(&mut self, filter: &str, probes: &[HookOutcome]) -> io::Result<()> {
        self.first.ready(filter, probes)?;
        self.second.ready(filter, probes)
    }

    fn event(&mut self, event: &TraceEvent) -> io::Result<()> {
        self.first.event(event)?;
        self.second.event(event)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.first.flush()?;
        self.second.flush()
    }

    fn lost(&mut self, lost: u64, total: u64) -> io::Result<()> {
        self.first.lost(lost, total)?;
        self.second.lost(lost, total)
    }

    fn sampled(&mut self, sampled: u64, total: u64) -> io::Result<()> {
        self.first.sampled(sampled, total)?;
        self.second.sampled(sampled, total)
    }

    fn status(&mut self, status: &Status) -> io::Result<()> {
        self.first.status(status)?;
        self.second.status(status)
    }

    fn verdict(&mut self, verdict: &Verdict) -> io::Result<()> {
        self.first.verdict(verdict)?;
        self.second.verdict(verdict)
    }

    fn summary(
        &mut self,
        flows: &FlowTable,
        verdicts: &[Verdict],
        stats: &Stats,
    ) -> io::Result<()> {
        self.first.summary(flows, verdicts, stats)?;
        self.second.summary(flows, verdicts, stats)
    }
}

/// Something the user should know about the run itself (not about the traffic), told once
/// when it happens; the totals at exit count it too.
#[derive(Debug, PartialEq, Eq)]
pub enum Status {
    /// Events the kernel counted in the last second without their flow: its per-flow map was
    /// full (too many new flows a second). They are added up under other flows
    /// (`Stats::kernel_overflow_events`).
    FlowMapFull { events: u64 },
    /// The first record that could not be decoded; later ones are only counted
    /// (`Stats::decode_errors`).
    Undecodable(DecodeError),
    /// `udptrace watch` attached the path hooks, narrowed to these ports, for an anomaly on
    /// their flow; they stay until `until_ms` (monotonic milliseconds).
    Escalated { ports: Vec<u16>, seconds: u64 },
    /// Every escalation expired: the path hooks are detached again.
    EscalationEnded,
    /// The path hooks could not be attached again: the anomaly's verdict lacks path evidence.
    EscalationFailed(String),
    /// No event matched the filter for `quiet`: the hop hooks on tracepoints (`hooks`) are
    /// detached until the next event that does.
    HopsParked {
        hooks: Vec<&'static str>,
        quiet: Duration,
    },
    /// An event matched while the hop hooks were parked: they are attached again. Datagrams
    /// before `untraced_before` show no hops and are judged by no rule
    /// (`TraceEvent::hops_untraced`); `failed`: hooks that could not attach (hook: error).
    HopsAttached {
        untraced_before: WallTime,
        /// The same instant in kernel time (events' `ts_ns`).
        untraced_before_ns: u64,
        failed: Vec<String>,
    },
}

/// Totals at exit (and the numbers behind the status line).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// UDP occurrences the kernel programs examined.
    pub seen: u64,
    /// Rejected in the kernel by the filter or selectors.
    pub filtered_in_kernel: u64,
    /// Written to the ring buffer.
    pub submitted: u64,
    /// Not written: the ring buffer was full.
    pub lost: u64,
    /// Of `lost`, drop events.
    pub drops_lost: u64,
    /// Events not written: their flow had had its share of that kind in that second
    /// (`SAMPLE_EVENTS_PER_SECOND`); the flows' drop and datagram counts include them.
    pub sampled: u64,
    /// Of `sampled`, drop events: delivered drops + `drops_lost` + this = every drop the kernel
    /// made.
    pub drops_sampled: u64,
    /// Per-datagram events the kernel could count neither per flow nor in its other-flows
    /// bucket (both maps full; sized to stay 0).
    pub uncounted: u64,
    /// Flows evicted from the flow table (`--max-flows`) into the `other_flows` aggregate.
    pub flows_evicted: u64,
    /// Events the kernel counted without their flow, its per-flow map being full; in
    /// `other_flows` too.
    pub kernel_overflow_events: u64,
    /// Occurrences in new flows that opened no verdict: the rule had opened
    /// `MAX_VERDICTS_PER_RULE` already.
    pub verdicts_not_opened: u64,
    /// Abandoned in the kernel because a read of kernel memory failed.
    pub kernel_read_errors: u64,
    /// Records userspace could not decode.
    pub decode_errors: u64,
    /// Events shown.
    pub events: u64,
}

/// Where output goes; one implementation per format. Every write reports its error: the
/// session stops at the first one (`main` exits quietly on a closed pipe, with a message and a
/// failure status on anything else, e.g. ENOSPC).
pub trait Output {
    /// The start-up line (text: on stderr, like tcpdump's banner; JSON: the `ready` record).
    fn ready(&mut self, filter: &str, probes: &[HookOutcome]) -> io::Result<()>;
    /// Events are buffered: written out after each batch drained from the ring, not one
    /// system call per event.
    fn event(&mut self, event: &TraceEvent) -> io::Result<()>;
    fn flush(&mut self) -> io::Result<()>;
    /// Events lost in the last interval (`lost` > 0), and in total.
    fn lost(&mut self, lost: u64, total: u64) -> io::Result<()>;
    /// Events sampled out in the last second (`sampled` > 0), and in total: past
    /// `SAMPLE_EVENTS_PER_SECOND` per flow and kind, the kernel counts events without sending
    /// them.
    fn sampled(&mut self, sampled: u64, total: u64) -> io::Result<()>;
    /// A condition of the run itself.
    fn status(&mut self, status: &Status) -> io::Result<()>;
    /// A verdict whose evidence is complete.
    fn verdict(&mut self, verdict: &Verdict) -> io::Result<()>;
    /// At exit: every flow and every verdict with final counts, then the totals.
    fn summary(&mut self, flows: &FlowTable, verdicts: &[Verdict], stats: &Stats)
    -> io::Result<()>;
}

/// Whether `error` comes from writing into a pipe nobody reads any more (EPIPE: Rust ignores
/// SIGPIPE, so the write fails instead of killing the process): `udptrace ... | head -1`.
pub fn is_closed_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// Completes when standard output's reader is gone, without writing to it: a quiet trace
/// (nothing matching) must notice `| head -1` exiting as promptly as a busy one. A pipe's
/// write end polls EPOLLERR once the last reader closed (fs/pipe.c `pipe_poll`), which epoll
/// reports whatever interest was registered. Never completes for files and /dev/null: epoll
/// refuses them (EPERM) and they have no reader to lose.
pub async fn stdout_closed() {
    // AsyncFd only watches the descriptor: it neither sets O_NONBLOCK on the shared file
    // description nor closes fd 1 when dropped (dropping a `Stdout` handle closes nothing).
    // SAFETY: fd 1 is open (std reopens a closed one on /dev/null before `main`) and udptrace
    // never closes or replaces it, so it refers to the same file description throughout.
    let registered = unsafe { AsyncFd::register_with_interest(io::stdout(), Interest::ERROR) };
    if let Ok(watch) = registered
        && watch.ready(Interest::ERROR).await.is_ok()
    {
        return;
    }
    std::future::pending::<()>().await;
}

/// Whether standard output was closed when udptrace started (`udptrace ... >&-`). Rust's
/// runtime reopens a closed descriptor 0-2 on /dev/null, read-write, before `main` (std's
/// `sanitize_standard_fds`), so every write would vanish without an error; a shell's
/// `>/dev/null` opens it write-only.
pub fn stdout_was_closed() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(null) = std::fs::metadata("/dev/null") else {
        return false;
    };
    // SAFETY: fstat and fcntl(F_GETFL) on a descriptor number only read; an invalid one fails.
    let (stat, flags) = unsafe {
        let mut stat: libc::stat = std::mem::zeroed();
        if libc::fstat(libc::STDOUT_FILENO, &raw mut stat) != 0 {
            return true;
        }
        (stat, libc::fcntl(libc::STDOUT_FILENO, libc::F_GETFL))
    };
    stat.st_mode & libc::S_IFMT == libc::S_IFCHR
        && stat.st_rdev == null.rdev()
        && flags >= 0
        && flags & libc::O_ACCMODE == libc::O_RDWR
}

/// Writes `text` to standard output now, reporting the error (`println!` would panic on it).
pub fn print_stdout(text: &str) -> io::Result<()> {
    use io::Write as _;
    let mut stdout = io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()
}

/// Writes one diagnostic line to stderr. Unlike `eprintln!`, which panics when the write fails
/// (`udptrace ... 2>&1 | head` once head is gone, `2>/dev/full`), a failure is dropped: stderr
/// is where it would have been reported.
pub fn note(line: std::fmt::Arguments<'_>) {
    use io::Write as _;
    let _ = writeln!(io::stderr(), "{line}");
}
