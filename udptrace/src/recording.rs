//! Recordings (`-o FILE`): the run's NDJSON records, as `--json` writes them, interleaved with
//! everything else the diagnosis consumed, in the order it consumed it: the socket lists,
//! firewall rules, ICMP limits, conntrack counters and qdiscs the rules asked for while judging
//! an event (written right after that event)
//! and the kernel's per-flow counts (written when they were added). `udptrace replay FILE`
//! (`replay.rs`) feeds the same inputs to the same rules and gets the same flows and verdicts,
//! with no kernel and no host. The record types are documented in docs/json-schema.md.

use std::{
    cell::RefCell,
    fs::File,
    io::{self, BufWriter},
    net::SocketAddr,
    path::Path,
    rc::Rc,
};

use serde::{Deserialize, Serialize};

use crate::{
    conntrack::ConntrackStats,
    firewall::FirewallRule,
    flows::{
        DEFAULT_REPLY_TIMEOUT,
        table::{FlowKey, FlowTable, Tally},
        verdict::Verdict,
    },
    icmp_limits::IcmpLimits,
    model::{DropReason, TraceEvent},
    probes::attach::HookOutcome,
    qdiscs::Qdisc,
    render::{Output, Stats, Status, file_cut_short, json::JsonOutput},
    sockets::{ListedSocket, SocketList},
};

/// Layout version of the context records; `replay` refuses others.
pub const RECORDING_VERSION: u32 = 1;

/// The first record: what `replay` needs to set the rules up as the run had them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub version: u32,
    pub filter: String,
    pub max_flows: usize,
    /// `--reply-timeout` in milliseconds (recordings made before it existed: the default).
    #[serde(default = "default_reply_timeout_ms")]
    pub reply_timeout_ms: u64,
}

fn default_reply_timeout_ms() -> u64 {
    u64::try_from(DEFAULT_REPLY_TIMEOUT.as_millis()).unwrap_or(u64::MAX)
}

/// A socket list a rule asked for about an event (`None`: the namespace could not be read).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketsAnswer {
    pub netns: u32,
    pub sockets: Option<Vec<ListedSocket>>,
}

/// The firewall rules a rule asked for about an event (`None`: none could be read).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RulesAnswer {
    pub netns: u32,
    pub dport: u16,
    pub rules: Option<Vec<FirewallRule>>,
}

/// The ICMP rate limits and counters a rule asked for about an event (`None`: the namespace
/// could not be read).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IcmpLimitsAnswer {
    pub netns: u32,
    pub limits: Option<IcmpLimits>,
}

/// The conntrack counters a rule read about an event (`None`: none could be read).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConntrackAnswer {
    pub netns: u32,
    pub stats: Option<ConntrackStats>,
}

/// The qdiscs of a device a rule asked for about a drop there (`None`: they could not be read).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QdiscsAnswer {
    pub netns: u32,
    pub device: String,
    pub qdiscs: Option<Vec<Qdisc>>,
}

/// What a kernel count adds to (`flows::table::Tally`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TallyRecord {
    Drops(String),
    DatagramsFrom(SocketAddr),
}

impl From<&Tally> for TallyRecord {
    fn from(tally: &Tally) -> Self {
        match tally {
            Tally::Drops(reason) => Self::Drops(reason.name.clone()),
            Tally::DatagramsFrom(endpoint) => Self::DatagramsFrom(*endpoint),
        }
    }
}

impl From<TallyRecord> for Tally {
    fn from(record: TallyRecord) -> Self {
        match record {
            TallyRecord::Drops(name) => Self::Drops(DropReason::named(&name)),
            TallyRecord::DatagramsFrom(endpoint) => Self::DatagramsFrom(endpoint),
        }
    }
}

/// The kernel counted `count` more of `tally` in the flow `a <> b` (`None`: in no flow, the
/// kernel's flow map being full: "other flows").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelCount {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub a: Option<SocketAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub b: Option<SocketAddr>,
    pub tally: TallyRecord,
    pub count: u64,
}

impl KernelCount {
    pub fn flow(&self) -> Option<FlowKey> {
        Some(FlowKey::new(self.a?, self.b?))
    }
}

/// The file being recorded: the JSON output on it, and the context records written beside.
pub struct Recording {
    json: JsonOutput<BufWriter<File>>,
    /// `-o PATH`, for write errors.
    file: String,
    /// The first failed write of a context record, reported by the next output call (the
    /// rules that asked cannot fail).
    error: Option<io::Error>,
}

/// Shared between the output (events, verdicts, summary) and the session's listers and
/// kernel counts.
pub type SharedRecording = Rc<RefCell<Recording>>;

impl Recording {
    /// Creates `path` (replacing it) and writes the header.
    pub fn create(path: &Path, header: &Header) -> io::Result<SharedRecording> {
        let file = File::create(path)?;
        let mut recording = Self {
            json: JsonOutput::new(BufWriter::with_capacity(1 << 16, file)),
            file: format!("-o {}", path.display()),
            error: None,
        };
        recording.json.record("recording", header)?;
        Ok(Rc::new(RefCell::new(recording)))
    }

    fn context(&mut self, kind: &str, value: &impl Serialize) {
        if self.error.is_none()
            && let Err(error) = self.json.record(kind, value)
        {
            self.error = Some(error);
        }
    }

    fn take_error(&mut self) -> io::Result<()> {
        self.error.take().map_or(Ok(()), Err)
    }

    /// The socket list the rules got about `event`.
    pub fn sockets(&mut self, event: &TraceEvent, answer: Option<&SocketList>) {
        let sockets = answer.map(|list| {
            list.iter()
                .map(|(entry, owner)| ListedSocket {
                    entry: entry.clone(),
                    owner: owner.clone(),
                })
                .collect()
        });
        self.context(
            "sockets",
            &SocketsAnswer {
                netns: event.netns,
                sockets,
            },
        );
    }

    /// The firewall rules the rules got about `event`.
    pub fn rules(&mut self, event: &TraceEvent, answer: Option<&[FirewallRule]>) {
        self.context(
            "rules",
            &RulesAnswer {
                netns: event.netns,
                dport: event.dport,
                rules: answer.map(<[FirewallRule]>::to_vec),
            },
        );
    }

    /// The ICMP limits the rules got about `event`.
    pub fn icmp_limits(&mut self, event: &TraceEvent, answer: Option<&IcmpLimits>) {
        self.context(
            "icmp_limits",
            &IcmpLimitsAnswer {
                netns: event.netns,
                limits: answer.cloned(),
            },
        );
    }

    /// The conntrack counters the rules got about `event`.
    pub fn conntrack(&mut self, event: &TraceEvent, answer: Option<ConntrackStats>) {
        self.context(
            "conntrack",
            &ConntrackAnswer {
                netns: event.netns,
                stats: answer,
            },
        );
    }

    /// The qdiscs the rules got about the device of `event`.
    pub fn qdiscs(&mut self, event: &TraceEvent, answer: Option<&[Qdisc]>) {
        self.context(
            "qdiscs",
            &QdiscsAnswer {
                netns: event.netns,
                device: event.ifname.clone().unwrap_or_default(),
                qdiscs: answer.map(<[Qdisc]>::to_vec),
            },
        );
    }

    /// A kernel count added to `flow` (`None`: to the other flows).
    pub fn kernel_count(&mut self, flow: Option<FlowKey>, tally: &Tally, count: u64) {
        self.context(
            "kernel_count",
            &KernelCount {
                a: flow.map(|key| key.a),
                b: flow.map(|key| key.b),
                tally: tally.into(),
                count,
            },
        );
    }
}

/// The recording as an output (the `-o FILE` side of the session's `Tee`): the JSON records,
/// after reporting a context record that failed.
pub struct RecordingOutput(pub SharedRecording);

impl RecordingOutput {
    /// `write` on the JSON records, after reporting a context record that failed; an error
    /// names the file and says that it is cut short (`replay` refuses it: its `stats` record,
    /// written last, is missing).
    fn write(
        &mut self,
        write: impl FnOnce(&mut JsonOutput<BufWriter<File>>) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut recording = self.0.borrow_mut();
        let result = recording
            .take_error()
            .and_then(|()| write(&mut recording.json));
        result.map_err(|error| {
            file_cut_short(
                &error,
                &recording.file,
                "the recording is cut short (replay refuses it)",
            )
        })
    }
}

impl Output for RecordingOutput {
    fn ready(&mut self, filter: &str, probes: &[HookOutcome]) -> io::Result<()> {
        self.write(|json| json.ready(filter, probes))
    }

    fn event(&mut self, event: &TraceEvent) -> io::Result<()> {
        self.write(|json| json.event(event))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.write(Output::flush)
    }

    fn lost(&mut self, lost: u64, total: u64) -> io::Result<()> {
        self.write(|json| json.lost(lost, total))
    }

    fn sampled(&mut self, sampled: u64, total: u64) -> io::Result<()> {
        self.write(|json| json.sampled(sampled, total))
    }

    fn status(&mut self, status: &Status) -> io::Result<()> {
        self.write(|json| json.status(status))
    }

    fn verdict(&mut self, verdict: &Verdict) -> io::Result<()> {
        self.write(|json| json.verdict(verdict))
    }

    fn summary(
        &mut self,
        flows: &FlowTable,
        verdicts: &[Verdict],
        stats: &Stats,
    ) -> io::Result<()> {
        self.write(|json| json.summary(flows, verdicts, stats))
    }
}
