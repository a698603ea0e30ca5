//! NDJSON: one object per line, each with a `type` (`ready`, `event`, `lost`, `stats`).

use std::io::Write;

use serde_json::{Value, json};
use udptrace_common::event::Mechanism;

use super::{Output, Stats};
use crate::{
    decode::TraceEvent,
    flows::{table::FlowTable, verdicts::Verdict},
    probes::attach::HookOutcome,
};

pub struct JsonOutput<W: Write> {
    out: W,
}

impl<W: Write> JsonOutput<W> {
    pub fn new(out: W) -> Self {
        Self { out }
    }

    /// Serializes `value` with a `type` field (and `final: true` for exit-summary records).
    fn tagged(&mut self, kind: &str, value: &impl serde::Serialize, last: bool) {
        let mut value = serde_json::to_value(value).unwrap_or(Value::Null);
        if let Value::Object(map) = &mut value {
            map.insert("type".into(), kind.into());
            if last {
                map.insert("final".into(), true.into());
            }
        }
        self.line(&value);
    }

    fn line(&mut self, value: &Value) {
        // A closed stdout (e.g. `| head`) must not panic; the run ends on its own.
        let _ = writeln!(self.out, "{value}");
    }
}

pub fn probes_json(probes: &[HookOutcome]) -> Value {
    Value::Array(
        probes
            .iter()
            .map(|outcome| {
                json!({
                    "hook": outcome.hook.name,
                    "core": outcome.hook.core,
                    "mechanism": outcome.attached.map(Mechanism::name),
                    "attempts": outcome.attempts.iter().map(|attempt| json!({
                        "mechanism": attempt.mechanism.name(),
                        "ok": attempt.result.is_ok(),
                        "error": attempt.result.as_ref().err(),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect(),
    )
}

impl<W: Write> Output for JsonOutput<W> {
    fn ready(&mut self, filter: &str, probes: &[HookOutcome]) {
        self.line(&json!({
            "type": "ready",
            "filter": filter,
            "probes": probes_json(probes),
        }));
        self.flush();
    }

    fn flush(&mut self) {
        let _ = self.out.flush();
    }

    fn event(&mut self, event: &TraceEvent) {
        self.tagged("event", event, false);
    }

    fn lost(&mut self, lost: u64, total: u64) {
        self.line(&json!({"type": "lost", "count": lost, "total": total}));
        self.flush();
    }

    fn verdict(&mut self, verdict: &Verdict) {
        self.tagged("verdict", verdict, false);
        self.flush();
    }

    fn summary(&mut self, flows: &FlowTable, verdicts: &[Verdict], stats: &Stats) {
        for (key, flow) in flows.sorted() {
            let mut value = serde_json::to_value(flow).unwrap_or(Value::Null);
            if let Value::Object(map) = &mut value {
                map.insert("type".into(), "flow".into());
                map.insert("a".into(), key.a.to_string().into());
                map.insert("b".into(), key.b.to_string().into());
            }
            self.line(&value);
        }
        for verdict in verdicts {
            self.tagged("verdict", verdict, true);
        }
        self.tagged("stats", stats, false);
        self.flush();
    }
}
