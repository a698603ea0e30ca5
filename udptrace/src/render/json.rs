//! NDJSON: one object per line, each with a `type` (`ready`, `event`, `lost`, `sampled`,
//! `status`, `verdict`, `flow`, `other_flows`, `stats`).

use std::io::{self, Write};

use serde_json::{Value, json};
use udptrace_common::event::Mechanism;

use super::{Output, Stats, Status, verdict::VerdictRecord, wire::processes_text};
use crate::{
    flows::{table::FlowTable, verdict::Verdict},
    model::TraceEvent,
    probes::attach::HookOutcome,
};

pub struct JsonOutput<W: Write> {
    out: W,
    buffer: Vec<u8>,
    /// `udptrace watch`: failures are written as `anomaly` records and path events not at
    /// all (they reach the verdicts' evidence).
    anomalies_only: bool,
}

impl<W: Write> JsonOutput<W> {
    pub fn new(out: W) -> Self {
        Self {
            out,
            buffer: Vec::with_capacity(1024),
            anomalies_only: false,
        }
    }

    /// The records of `udptrace watch` (docs/json-schema.md): `anomaly` instead of `event`.
    pub fn watch(out: W) -> Self {
        Self {
            anomalies_only: true,
            ..Self::new(out)
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

    /// Writes one record of type `kind` (a struct serializing to a JSON object).
    pub fn record(&mut self, kind: &str, value: &impl serde::Serialize) -> io::Result<()> {
        self.tagged(kind, value, false)
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
        match (self.anomalies_only, event.is_anomaly()) {
            (false, _) => self.tagged("event", event, false),
            (true, true) => self.tagged("anomaly", event, false),
            (true, false) => Ok(()),
        }
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
            Status::Escalated { ports, seconds } => {
                json!({"type": "status", "code": "escalated", "ports": ports, "seconds": seconds})
            }
            Status::EscalationEnded => json!({"type": "status", "code": "escalation_ended"}),
            Status::EscalationFailed(error) => {
                json!({"type": "status", "code": "escalation_failed", "error": error})
            }
            Status::HopsParked { hooks, quiet } => json!({
                "type": "status",
                "code": "hops_parked",
                "hooks": hooks,
                "quiet_seconds": quiet.as_secs_f64(),
            }),
            Status::HopsAttached {
                untraced_before,
                untraced_before_ns,
                failed,
            } => json!({
                "type": "status",
                "code": "hops_attached",
                "untraced_before": untraced_before.rfc3339(),
                "untraced_before_ns": untraced_before_ns,
                "failed": failed,
            }),
        })?;
        self.flush()
    }

    fn verdict(&mut self, verdict: &Verdict) -> io::Result<()> {
        self.tagged("verdict", &VerdictRecord::of(verdict), false)?;
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
                map.insert("processes".into(), processes_text(&flow.processes).into());
            }
            self.line(&value)?;
        }
        self.tagged("other_flows", flows.other(), false)?;
        for verdict in verdicts {
            self.tagged("verdict", &VerdictRecord::of(verdict), true)?;
        }
        self.tagged("stats", stats, false)?;
        self.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        clock::WallTime,
        model::{
            Conntrack, DropReason, Endpoints, Errno, Family, IpFragment, Location, Probe, Process,
            RouteDevice, RouteDirection, SendCall, Skb, SocketErrno, SocketInfo, What,
        },
        render::Stats,
    };

    fn socket(owner: Option<Process>) -> SocketInfo {
        SocketInfo {
            local: "0.0.0.0:4000".parse().unwrap(),
            peer: Some("[2001:db8::2]:40000".parse().unwrap()),
            inode: 31_337,
            owner,
        }
    }

    /// One event of every kind, every optional field set somewhere.
    fn events() -> Vec<TraceEvent> {
        let nc = Process {
            pid: 77,
            comm: "nc".into(),
        };
        let whats = [
            What::Drop {
                reason: DropReason {
                    name: "NO_SOCKET".into(),
                    value: Some(3),
                },
                reason_inferred: false,
                location: Location::Symbol("__udp4_lib_rcv+0x2cd".into()),
                txq: None,
            },
            What::Drop {
                reason: DropReason::named("SOCKET_RCVBUFF"),
                reason_inferred: true,
                location: Location::Address(0xffff_ffff_8100_0010),
                txq: None,
            },
            What::Icmp {
                icmp_type: 3,
                icmp_code: 3,
                meaning: "port-unreachable".into(),
                mtu: None,
            },
            What::SockError {
                error: SocketErrno(Errno(111)),
            },
            What::SendError {
                error: SocketErrno(Errno(101)),
                call: Some(SendCall {
                    pktinfo: false,
                    connected: true,
                }),
            },
            What::RecvError {
                error: SocketErrno(Errno(11)),
            },
            What::Send {
                bytes: 5,
                socket: socket(Some(nc.clone())),
                call: Some(SendCall {
                    pktinfo: true,
                    connected: false,
                }),
            },
            What::Send {
                bytes: 5,
                socket: socket(None),
                call: None,
            },
            What::Route {
                direction: RouteDirection::Output,
                device: RouteDevice(Some("br0".into())),
                table: 254,
                error: None,
            },
            What::Route {
                direction: RouteDirection::Input,
                device: RouteDevice(None),
                table: 0,
                error: Some(Errno(101)),
            },
            What::Xmit,
            What::Recv,
            What::Deliver {
                socket: socket(Some(nc.clone())),
            },
            What::Connect {
                socket: socket(None),
                error: Some(Errno(111)),
            },
            What::Lookup { socket: None },
            What::Lookup {
                socket: Some(socket(None)),
            },
        ];
        whats
            .into_iter()
            .enumerate()
            .map(|(index, what)| {
                let index = index as u64;
                TraceEvent {
                    time: WallTime(1_795_346_768_123_456_000 + index * 1_000),
                    ts_ns: 1_000 + index,
                    what,
                    probe: Probe(Mechanism::ALL.get(index as usize % 6).copied()),
                    netns: 4_026_531_840,
                    netns_name: index.is_multiple_of(2).then(|| "client".into()),
                    container: None,
                    ifindex: index.is_multiple_of(3).then_some(7),
                    ifname: index.is_multiple_of(3).then(|| "veth0".into()),
                    process: match index % 3 {
                        0 => None,
                        1 => Some(nc.clone()),
                        _ => Some(Process {
                            pid: 9,
                            comm: String::new(),
                        }),
                    },
                    skb: (index % 2 == 1).then_some(Skb(0xffff_8880_0000_1000 + index)),
                    tracked: index.is_multiple_of(4),
                    escalated: index == 11,
                    hops_untraced: index == 12,
                    conntrack: index.is_multiple_of(5).then_some(Conntrack {
                        original: Endpoints {
                            src: "192.0.2.1:40000".parse().unwrap(),
                            dst: "192.0.2.2:4000".parse().unwrap(),
                        },
                        reply: Endpoints {
                            src: "192.0.2.2:4000".parse().unwrap(),
                            dst: "203.0.113.9:1024".parse().unwrap(),
                        },
                        status: 0x18a,
                    }),
                    // A first fragment (datagram length known) and a later one.
                    fragment: index.is_multiple_of(7).then_some(IpFragment {
                        id: 0xbeef,
                        offset: if index == 0 { 0 } else { 1_480 },
                        ip_len: 1_500,
                        datagram_len: (index == 0).then_some(4_008),
                        more: index == 0,
                    }),
                    family: Family::Ipv4,
                    saddr: "192.0.2.1".parse().unwrap(),
                    sport: 40_000,
                    daddr: "192.0.2.2".parse().unwrap(),
                    dport: 4_000,
                    packet: None,
                    stack: None,
                }
            })
            .collect()
    }

    /// The event records of `events`, one line each.
    fn records(events: &[TraceEvent]) -> Vec<String> {
        let mut out = Vec::new();
        let mut json = JsonOutput::new(&mut out);
        for event in events {
            json.event(event).unwrap();
        }
        String::from_utf8(out)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// `udptrace watch`: failures as `anomaly` records, path events not written one by one.
    #[test]
    fn watch_writes_anomalies_only() {
        let events = events();
        let mut out = Vec::new();
        let mut json = JsonOutput::watch(&mut out);
        for event in &events {
            json.event(event).unwrap();
        }
        let text = String::from_utf8(out).unwrap();
        let kinds: Vec<String> = text
            .lines()
            .map(|line| {
                let value: Value = serde_json::from_str(line).unwrap();
                assert_eq!(value["type"], "anomaly", "{line}");
                value["kind"].as_str().unwrap().to_owned()
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "drop",
                "drop",
                "icmp",
                "sock_error",
                "send_error",
                "recv_error"
            ]
        );
        // In `--json` and verdict evidence, a path event escalation gathered says so.
        let recv = &records(&events)[11];
        assert!(recv.contains(r#""kind":"recv","probe""#), "{recv}");
        assert!(recv.contains(r#""escalated":true"#), "{recv}");
    }

    #[test]
    fn event_records_read_back_into_the_same_events() {
        let events = events();
        for (event, line) in events.iter().zip(records(&events)) {
            let read: TraceEvent =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
            assert_eq!(&read, event, "{line}");
        }
    }

    /// The record format scripts and docs/json-schema.md rely on, field by field and in order.
    #[test]
    fn event_records_keep_their_format() {
        let lines = records(&events());
        assert_eq!(
            lines[0],
            r#"{"type":"event","time":"2026-11-22T11:26:08.123456Z","ts_ns":1000,"kind":"drop","reason":"NO_SOCKET","location":"__udp4_lib_rcv+0x2cd","probe":"fentry","netns":4026531840,"netns_name":"client","ifindex":7,"ifname":"veth0","tracked":true,"conntrack":{"original":"192.0.2.1:40000 > 192.0.2.2:4000","reply":"192.0.2.2:4000 > 203.0.113.9:1024","status":394},"fragment":{"id":48879,"offset":0,"ip_len":1500,"datagram_len":4008,"more":true},"family":"ipv4","saddr":"192.0.2.1","sport":40000,"daddr":"192.0.2.2","dport":4000}"#
        );
        assert_eq!(
            lines[1],
            r#"{"type":"event","time":"2026-11-22T11:26:08.123457Z","ts_ns":1001,"kind":"drop","reason":"SOCKET_RCVBUFF","reason_inferred":true,"location":"0xffffffff81000010","probe":"kprobe","netns":4026531840,"pid":77,"comm":"nc","skb":"0xffff888000001001","family":"ipv4","saddr":"192.0.2.1","sport":40000,"daddr":"192.0.2.2","dport":4000}"#
        );
        assert!(
            lines[3].contains(r#""kind":"sock_error","errno":"ECONNREFUSED","code":111,"probe":"#),
            "{}",
            lines[3]
        );
        assert!(
            lines[5].contains(r#""pid":9,"skb""#),
            "no comm: {}",
            lines[5]
        );
        assert!(
            lines[6].contains(r#""socket":{"local":"0.0.0.0:4000","peer":"[2001:db8::2]:40000","inode":31337,"owner_pid":77,"owner_comm":"nc"},"call":{"pktinfo":true,"connected":false}"#),
            "{}",
            lines[6]
        );
        assert!(
            lines[8].contains(
                r#""kind":"route","direction":"output","device":"br0","table":254,"probe""#
            ),
            "{}",
            lines[8]
        );
        assert!(
            lines[9].contains(
                r#""kind":"route","direction":"input","device":"-","table":0,"error":"ENETUNREACH""#
            ),
            "{}",
            lines[9]
        );
        assert!(
            lines[14].contains(r#""kind":"lookup","socket":null"#),
            "{}",
            lines[14]
        );
    }

    #[test]
    fn malformed_event_records_are_refused() {
        let line = &records(&events())[1];
        for (good, bad) in [
            ("0xffff888000001001", "ffff888000001001"),
            ("2026-11-22T11:26:08.123457Z", "yesterday"),
            (r#""probe":"kprobe""#, r#""probe":"uprobe""#),
        ] {
            let broken = line.replacen(good, bad, 1);
            assert!(
                serde_json::from_str::<TraceEvent>(&broken).is_err(),
                "{broken}"
            );
        }
    }

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
