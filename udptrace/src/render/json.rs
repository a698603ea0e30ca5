//! NDJSON: one object per line, each with a `type` (`ready`, `event`, `lost`, `sampled`,
//! `status`, `verdict`, `flow`, `other_flows`, `stats`).

use std::io::{self, Write};

use serde_json::{Value, json};
use udptrace_common::event::Mechanism;

use super::{Output, Stats, Status};
use crate::{
    decode::TraceEvent,
    flows::{table::FlowTable, verdicts::Verdict},
    probes::attach::HookOutcome,
};

pub struct JsonOutput<W: Write> {
    out: W,
    buffer: Vec<u8>,
}

impl<W: Write> JsonOutput<W> {
    pub fn new(out: W) -> Self {
        Self {
            out,
            buffer: Vec::with_capacity(1024),
        }
    }

    /// Writes `value` (a struct serializing to a JSON object) with a leading `type` field (and
    /// `final: true` for exit-summary records). Serialized straight into a reused buffer and
    /// spliced, not through `serde_json::Value`: this runs once per event.
    fn tagged(&mut self, kind: &str, value: &impl serde::Serialize, last: bool) -> io::Result<()> {
        self.buffer.clear();
        if serde_json::to_writer(&mut self.buffer, value).is_err()
            || self.buffer.first() != Some(&b'{')
        {
            return Ok(());
        }
        let rest = &self.buffer[1..];
        let separator = if rest == b"}" { "" } else { "," };
        let fin = if last { ",\"final\":true" } else { "" };
        write!(self.out, "{{\"type\":\"{kind}\"{fin}{separator}")?;
        self.out.write_all(rest)?;
        self.out.write_all(b"\n")
    }

    fn line(&mut self, value: &Value) -> io::Result<()> {
        writeln!(self.out, "{value}")
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
                        "error": attempt.result.as_ref().err().map(ToString::to_string),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect(),
    )
}

impl<W: Write> Output for JsonOutput<W> {
    fn ready(&mut self, filter: &str, probes: &[HookOutcome]) -> io::Result<()> {
        self.line(&json!({
            "type": "ready",
            "filter": filter,
            "probes": probes_json(probes),
        }))?;
        self.flush()
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    fn event(&mut self, event: &TraceEvent) -> io::Result<()> {
        self.tagged("event", event, false)
    }

    fn lost(&mut self, lost: u64, total: u64) -> io::Result<()> {
        self.line(&json!({"type": "lost", "count": lost, "total": total}))?;
        self.flush()
    }

    fn sampled(&mut self, sampled: u64, total: u64) -> io::Result<()> {
        self.line(&json!({"type": "sampled", "count": sampled, "total": total}))?;
        self.flush()
    }

    fn status(&mut self, status: &Status) -> io::Result<()> {
        self.line(&match status {
            Status::FlowMapFull { events } => {
                json!({"type": "status", "code": "flow_map_full", "count": events})
            }
            Status::Undecodable(error) => {
                json!({"type": "status", "code": "undecodable", "error": error.to_string()})
            }
        })?;
        self.flush()
    }

    fn verdict(&mut self, verdict: &Verdict) -> io::Result<()> {
        self.tagged("verdict", verdict, false)?;
        self.flush()
    }

    fn summary(
        &mut self,
        flows: &FlowTable,
        verdicts: &[Verdict],
        stats: &Stats,
    ) -> io::Result<()> {
        for (key, flow) in flows.sorted() {
            let mut value = serde_json::to_value(flow).unwrap_or(Value::Null);
            if let Value::Object(map) = &mut value {
                map.insert("type".into(), "flow".into());
                map.insert("a".into(), key.a.to_string().into());
                map.insert("b".into(), key.b.to_string().into());
            }
            self.line(&value)?;
        }
        self.tagged("other_flows", flows.other(), false)?;
        for verdict in verdicts {
            self.tagged("verdict", verdict, true)?;
        }
        self.tagged("stats", stats, false)?;
        self.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::Stats;

    #[test]
    fn records_are_tagged_objects() {
        let mut out = Vec::new();
        let mut json = JsonOutput::new(&mut out);
        json.tagged("stats", &Stats::default(), true).unwrap();
        json.tagged("empty", &serde_json::Map::new(), false)
            .unwrap();
        json.lost(3, 7).unwrap();
        json.sampled(40, 90).unwrap();
        json.status(&Status::FlowMapFull { events: 5 }).unwrap();
        json.status(&Status::Undecodable(crate::decode::DecodeError::Kind(200)))
            .unwrap();
        let lines: Vec<Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["type"], "stats");
        assert_eq!(lines[0]["final"], true);
        assert_eq!(lines[0]["lost"], 0);
        assert_eq!(lines[1], serde_json::json!({"type": "empty"}));
        assert_eq!(
            lines[2],
            serde_json::json!({"type": "lost", "count": 3, "total": 7})
        );
        assert_eq!(
            lines[3],
            serde_json::json!({"type": "sampled", "count": 40, "total": 90})
        );
        assert_eq!(
            lines[4],
            serde_json::json!({"type": "status", "code": "flow_map_full", "count": 5})
        );
        assert_eq!(
            lines[5],
            serde_json::json!({
                "type": "status",
                "code": "undecodable",
                "error": "record has unknown kind 200"
            })
        );
    }
}
