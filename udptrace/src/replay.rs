//! `udptrace replay FILE`: a recording (`-o FILE`, `recording.rs`) through the same rules and
//! outputs as a live run, with no kernel: the events in their recorded order, the socket lists,
//! firewall rules, ICMP limits and conntrack counters the rules got then, and the kernel's counts
//! where they came. Verdicts settle on the events' kernel time, so a replay is deterministic; its
//! final verdicts and
//! flows are the live run's (the golden tests check that on recordings of every lab scenario).

use std::{
    cell::{Cell, RefCell},
    collections::VecDeque,
    io::BufRead,
    rc::Rc,
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{
    flows::{
        diagnosis::Diagnosis,
        rule::{
            ConntrackReader, IcmpLimitsReader, QdiscLister, Question, RuleLister, SocketLister,
        },
        table::DEFAULT_MAX_FLOWS,
    },
    model::TraceEvent,
    recording::{
        ConntrackAnswer, Header, IcmpLimitsAnswer, KernelCount, QdiscsAnswer, RECORDING_VERSION,
        RulesAnswer, SocketsAnswer,
    },
    render::{Output, Stats},
    sockets::SocketList,
};

/// An answer the live run's rules got, waiting for the question in the replay.
enum Answer {
    Sockets(SocketsAnswer),
    Rules(RulesAnswer),
    /// Boxed: the largest answer, and the rarest.
    IcmpLimits(Box<IcmpLimitsAnswer>),
    Conntrack(ConntrackAnswer),
    Qdiscs(QdiscsAnswer),
}

/// One record of a recording.
enum Record {
    Header(Header),
    Event(Box<TraceEvent>),
    Answer(Answer),
    KernelCount(KernelCount),
    Stats(Box<Stats>),
    /// What the live run wrote that a replay writes again itself (verdicts, flows, ...).
    Output,
}

/// What the replay's rules asked that the recording has no answer for: the rules changed
/// since it was made (the answers are taken in order, so a mismatch is reported, not hidden).
#[derive(Default)]
struct Mismatches {
    unanswered: Cell<u64>,
    /// Answers to a question about another namespace, or of another kind, than asked.
    misplaced: Cell<u64>,
}

/// The outcome of a replay, for its caller and the golden tests.
pub struct Replayed {
    pub diagnosis: Diagnosis,
    pub stats: Stats,
    /// Recorded answers left unused plus questions left unanswered: 0 when the recording and
    /// this build's rules agree.
    pub mismatches: u64,
}

/// Replays the recording in `input` into `output` (events, verdicts as they settle, summary).
pub fn replay(input: impl BufRead, output: &mut dyn Output) -> anyhow::Result<Replayed> {
    let mut records = input
        .lines()
        .enumerate()
        .map(|(index, line)| {
            let line_number = index + 1;
            let record = line
                .map_err(anyhow::Error::from)
                .and_then(|line| parse(&line))
                .with_context(|| format!("line {line_number}"));
            (line_number, record)
        })
        .peekable();
    let header = match records.next() {
        Some((_, Ok(Record::Header(header)))) => header,
        Some((_, Ok(_))) => {
            bail!("not a udptrace recording: it does not start with a `recording` record")
        }
        Some((_, Err(error))) => return Err(error.context("not a udptrace recording")),
        None => bail!("the recording is empty"),
    };
    if header.version != RECORDING_VERSION {
        bail!(
            "recording version {} (this udptrace reads version {RECORDING_VERSION})",
            header.version
        );
    }
    let answers = Rc::new(RefCell::new(VecDeque::new()));
    let mismatches = Rc::new(Mismatches::default());
    let mut diagnosis = Diagnosis::new(socket_answers(&answers, &mismatches))
        .with_rules(rule_answers(&answers, &mismatches))
        .with_icmp_limits(icmp_limits_answers(&answers, &mismatches))
        .with_conntrack(conntrack_answers(&answers, &mismatches))
        .with_qdiscs(qdisc_answers(&answers, &mismatches))
        .with_max_flows(if header.max_flows == 0 {
            DEFAULT_MAX_FLOWS
        } else {
            header.max_flows
        })
        .with_reply_timeout(Duration::from_millis(header.reply_timeout_ms));
    let mut stats = None;
    let mut events = 0;
    let mut lines = 1;
    while let Some((line_number, record)) = records.next() {
        lines = line_number;
        match record? {
            Record::Header(_) => bail!("line {line_number}: a second `recording` record"),
            Record::Event(event) => {
                // Answers follow the event whose judgement asked for them: queue them before
                // judging it.
                while let Some((_, Ok(Record::Answer(answer)))) =
                    records.next_if(|(_, record)| matches!(record, Ok(Record::Answer(_))))
                {
                    answers.borrow_mut().push_back(answer);
                }
                output.event(&event)?;
                events += 1;
                diagnosis.observe(&event);
                let unused = answers.borrow_mut().drain(..).count() as u64;
                mismatches
                    .misplaced
                    .set(mismatches.misplaced.get() + unused);
                for verdict in diagnosis.ready(event.ts_ns, false) {
                    output.verdict(&verdict)?;
                }
            }
            Record::Answer(_) => {
                mismatches.misplaced.set(mismatches.misplaced.get() + 1);
            }
            Record::KernelCount(count) => {
                let tally = count.tally.clone().into();
                match count.flow() {
                    Some(flow) => diagnosis.count_in_kernel(flow, tally, count.count),
                    None => diagnosis.flows.add_other(&tally, count.count),
                }
            }
            Record::Stats(recorded) => stats = Some(*recorded),
            Record::Output => {}
        }
    }
    output.flush()?;
    // A run writes its totals last, also when a signal ends it: without them the file was cut
    // short (a full disk, a killed run, a partial copy), and verdicts and counts would be
    // shown as final when they are not.
    let Some(mut stats) = stats else {
        bail!(
            "the recording ends at line {lines} without the run's totals (a `stats` record): it was cut short; the events above are the part it holds"
        );
    };
    for verdict in diagnosis.ready(u64::MAX, true) {
        output.verdict(&verdict)?;
    }
    // The kernel's totals are the live run's; what this replay showed is its own.
    stats.events = events;
    stats.flows_evicted = diagnosis.flows.other().flows_evicted;
    stats.verdicts_not_opened = diagnosis.not_opened();
    output.summary(&diagnosis.flows, diagnosis.verdicts(), &stats)?;
    Ok(Replayed {
        diagnosis,
        stats,
        mismatches: mismatches.unanswered.get() + mismatches.misplaced.get(),
    })
}

fn parse(line: &str) -> anyhow::Result<Record> {
    let value: Value = serde_json::from_str(line).context("not a JSON record")?;
    let kind = value
        .get("type")
        .and_then(Value::as_str)
        .context("a record without a `type`")?;
    Ok(match kind {
        "recording" => Record::Header(typed(value)?),
        "event" => Record::Event(Box::new(typed(value)?)),
        "sockets" => Record::Answer(Answer::Sockets(typed(value)?)),
        "rules" => Record::Answer(Answer::Rules(typed(value)?)),
        "icmp_limits" => Record::Answer(Answer::IcmpLimits(typed(value)?)),
        "conntrack" => Record::Answer(Answer::Conntrack(typed(value)?)),
        "qdiscs" => Record::Answer(Answer::Qdiscs(typed(value)?)),
        "kernel_count" => Record::KernelCount(typed(value)?),
        "stats" => Record::Stats(Box::new(typed(value)?)),
        _ => Record::Output,
    })
}

fn typed<T: DeserializeOwned>(value: Value) -> anyhow::Result<T> {
    let kind = value["type"].as_str().unwrap_or_default().to_owned();
    serde_json::from_value(value).with_context(|| format!("a malformed `{kind}` record"))
}

/// The next recorded answer, if it is the one asked for (`matches`).
fn take_answer<T>(
    answers: &RefCell<VecDeque<Answer>>,
    mismatches: &Mismatches,
    matches: impl FnOnce(Answer) -> Result<T, Answer>,
) -> Option<T> {
    let Some(answer) = answers.borrow_mut().pop_front() else {
        mismatches.unanswered.set(mismatches.unanswered.get() + 1);
        return None;
    };
    match matches(answer) {
        Ok(answer) => Some(answer),
        Err(other) => {
            // Put it back for the question it answers; this one stays unanswered.
            answers.borrow_mut().push_front(other);
            mismatches.unanswered.set(mismatches.unanswered.get() + 1);
            None
        }
    }
}

/// A question the rules ask, answered in turn by the recording's next answer when `pick`
/// takes it as this event's (`Err` gives it back: it answers another question).
fn answered<T: 'static>(
    answers: &Rc<RefCell<VecDeque<Answer>>>,
    mismatches: &Rc<Mismatches>,
    pick: impl Fn(Answer, &TraceEvent) -> Result<Option<T>, Answer> + 'static,
) -> Question<T> {
    let (answers, mismatches) = (Rc::clone(answers), Rc::clone(mismatches));
    Box::new(move |event| take_answer(&answers, &mismatches, |answer| pick(answer, event))?)
}

fn socket_answers(
    answers: &Rc<RefCell<VecDeque<Answer>>>,
    mismatches: &Rc<Mismatches>,
) -> SocketLister {
    answered(answers, mismatches, |answer, event| match answer {
        Answer::Sockets(sockets) if sockets.netns == event.netns => {
            Ok(sockets.sockets.map(|sockets| {
                sockets
                    .into_iter()
                    .map(|socket| (socket.entry, socket.owner))
                    .collect::<SocketList>()
            }))
        }
        other => Err(other),
    })
}

fn rule_answers(
    answers: &Rc<RefCell<VecDeque<Answer>>>,
    mismatches: &Rc<Mismatches>,
) -> RuleLister {
    answered(answers, mismatches, |answer, event| match answer {
        Answer::Rules(rules) if rules.netns == event.netns && rules.dport == event.dport => {
            Ok(rules.rules)
        }
        other => Err(other),
    })
}

fn icmp_limits_answers(
    answers: &Rc<RefCell<VecDeque<Answer>>>,
    mismatches: &Rc<Mismatches>,
) -> IcmpLimitsReader {
    answered(answers, mismatches, |answer, event| match answer {
        Answer::IcmpLimits(limits) if limits.netns == event.netns => Ok(limits.limits),
        other => Err(other),
    })
}

fn conntrack_answers(
    answers: &Rc<RefCell<VecDeque<Answer>>>,
    mismatches: &Rc<Mismatches>,
) -> ConntrackReader {
    answered(answers, mismatches, |answer, event| match answer {
        Answer::Conntrack(stats) if stats.netns == event.netns => Ok(stats.stats),
        other => Err(other),
    })
}

fn qdisc_answers(
    answers: &Rc<RefCell<VecDeque<Answer>>>,
    mismatches: &Rc<Mismatches>,
) -> QdiscLister {
    answered(answers, mismatches, |answer, event| match answer {
        Answer::Qdiscs(qdiscs)
            if qdiscs.netns == event.netns
                && Some(qdiscs.device.as_str()) == event.ifname.as_deref() =>
        {
            Ok(qdiscs.qdiscs)
        }
        other => Err(other),
    })
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeSet, path::PathBuf};

    use super::*;
    use crate::{lab::scenarios, render::json::JsonOutput};

    /// `cargo xtask recordings` writes one per lab scenario (a real traced run each); those of
    /// scenarios that change a machine-wide setting (`scenarios::GLOBAL_SCENARIOS`) come from a
    /// test guest (udptrace/tests/integration/conntrack.rs prints its run's recording).
    fn recordings() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/recordings")
    }

    /// The final verdicts and the flows of a run, as JSON records.
    fn final_records(ndjson: &[u8]) -> (Vec<Value>, Vec<Value>) {
        let records: Vec<Value> = ndjson
            .split(|&byte| byte == b'\n')
            .filter(|line| !line.is_empty())
            .map(|line| serde_json::from_slice(line).unwrap())
            .collect();
        let of = |kind: &str| -> Vec<Value> {
            records
                .iter()
                .filter(|record| {
                    record["type"] == kind && (kind != "verdict" || record["final"] == true)
                })
                .cloned()
                .collect()
        };
        (of("verdict"), of("flow"))
    }

    #[test]
    fn every_recorded_lab_run_replays_to_its_verdicts_and_flows() {
        let mut codes = BTreeSet::new();
        for scenario in scenarios::all() {
            let path = recordings().join(format!("{}.ndjson", scenario.name));
            let recorded =
                std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
            let mut replayed = Vec::new();
            let outcome = replay(recorded.as_slice(), &mut JsonOutput::new(&mut replayed))
                .unwrap_or_else(|error| panic!("{}: {error:#}", scenario.name));
            assert_eq!(outcome.mismatches, 0, "{}", scenario.name);
            let (live_verdicts, live_flows) = final_records(&recorded);
            let (verdicts, flows) = final_records(&replayed);
            assert_eq!(verdicts, live_verdicts, "{}: verdicts", scenario.name);
            assert_eq!(flows, live_flows, "{}: flows", scenario.name);
            let found: BTreeSet<&str> = verdicts
                .iter()
                .filter_map(|verdict| verdict["code"].as_str())
                .collect();
            let expected: BTreeSet<&str> = scenario.expected.iter().copied().collect();
            assert_eq!(found, expected, "{}", scenario.name);
            codes.extend(expected);
        }
        let documented = std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/verdicts.md"),
        )
        .unwrap();
        for line in documented.lines().filter(|line| line.starts_with("| `")) {
            let code = line.split('`').nth(1).unwrap();
            assert!(codes.contains(code), "no recording shows verdict {code}");
        }
    }

    #[test]
    fn answers_that_do_not_fit_the_rules_are_counted() {
        let path = recordings().join("nc-connect-pinning.ndjson");
        let recorded = std::fs::read_to_string(&path).unwrap();
        // Without its socket list, the connected-socket rule asks and gets no answer.
        let without: String = recorded
            .lines()
            .filter(|line| !line.starts_with(r#"{"type":"sockets""#))
            .flat_map(|line| [line, "\n"])
            .collect();
        assert_ne!(
            without.len(),
            recorded.len(),
            "the recording has a socket list"
        );
        let mut sink = Vec::new();
        let outcome = replay(without.as_bytes(), &mut JsonOutput::new(&mut sink)).unwrap();
        assert!(outcome.mismatches > 0);
    }

    #[test]
    fn foreign_files_are_refused_with_a_reason() {
        let mut sink = Vec::new();
        let mut output = JsonOutput::new(&mut sink);
        let mut error = |input: &str| {
            replay(input.as_bytes(), &mut output)
                .err()
                .map(|e| format!("{e:#}"))
        };
        assert_eq!(error(""), Some("the recording is empty".into()));
        assert!(
            error("{\"type\":\"event\"}\n")
                .unwrap()
                .contains("not a udptrace recording")
        );
        assert!(error("not json\n").unwrap().contains("not a JSON record"));
        let recorded = std::fs::read_to_string(recordings().join("closed-port.ndjson")).unwrap();
        let lines: Vec<&str> = recorded.lines().collect();
        // Cut at a line boundary, before the totals.
        let cut = lines[..lines.len() - 1].join("\n");
        assert_eq!(
            error(&cut),
            Some(format!(
                "the recording ends at line {} without the run's totals (a `stats` record): it was cut short; the events above are the part it holds",
                lines.len() - 1
            ))
        );
        // Cut within a line.
        let within = &recorded[..recorded.len() - 20];
        assert!(
            error(within).unwrap().starts_with(&format!(
                "line {}: not a JSON record: EOF while parsing",
                lines.len()
            )),
            "{:?}",
            error(within)
        );
        assert!(
            error("{\"type\":\"recording\",\"version\":99,\"filter\":\"\",\"max_flows\":1}\n")
                .unwrap()
                .contains("recording version 99")
        );
    }
}
