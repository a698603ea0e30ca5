//! Issue 16: lazy hop hooks in the interactive tracer. After `--park-after` without a
//! matching event the hop hooks on tracepoints are detached; the next matching event attaches
//! them again. Events until then are marked `hops_untraced` and judged by no rule; the
//! datagrams after it get their whole path and their verdict.

use std::time::Duration;

use serde_json::Value;
use udptrace::lab::scenarios;

use crate::common::{Trace, verdicts};

/// The tracer's BPF links (tp_btf, raw_tp) and perf events (classic tracepoints): one or more
/// per attached program, as the kernel holds them for the process.
fn attachments(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the tracer's descriptors")
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| {
            let target = target.to_string_lossy();
            target == "anon_inode:bpf_link" || target == "anon_inode:[perf_event]"
        })
        .count()
}

/// The ids of the BPF programs the tracer holds (`prog_id` in the fdinfo of its bpf-prog
/// descriptors, kernel/bpf/syscall.c bpf_prog_show_fdinfo).
fn programs(pid: u32) -> std::collections::BTreeSet<u32> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the tracer's descriptors")
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let target = std::fs::read_link(entry.path()).ok()?;
            if target.to_string_lossy() != "anon_inode:bpf-prog" {
                return None;
            }
            let info = std::fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                entry.file_name().to_string_lossy()
            ))
            .ok()?;
            info.lines()
                .find_map(|line| line.strip_prefix("prog_id:"))?
                .trim()
                .parse()
                .ok()
        })
        .collect()
}

fn status<'a>(records: &'a [Value], code: &str) -> Option<&'a Value> {
    records
        .iter()
        .find(|r| r["type"] == "status" && r["code"] == code)
}

/// The event kind each hop hook reports.
fn kind_of(hook: &str) -> Option<&'static str> {
    Some(match hook {
        "xmit" => "xmit",
        "recv" => "recv",
        "deliver" => "deliver",
        "route4" | "route6" => "route",
        "lookup" => "lookup",
        // consume reports nothing: it forgets the skbs it frees.
        _ => return None,
    })
}

/// Whether verdict `verdict` is about a flow one of whose ends has port `port`.
fn about_port(verdict: &Value, port: u16) -> bool {
    verdict["flow"]
        .as_str()
        .unwrap()
        .split(" <> ")
        .any(|end| end.ends_with(&format!(":{port}")))
}

#[test]
fn hop_hooks_park_while_nothing_matches_and_the_next_match_brings_them_back() {
    let scenario = scenarios::find("wrong-source-reply").unwrap();
    let lab = scenario.setup().expect("lab setup");
    let port = scenario.port().to_string();
    // The shortest quiet period: the reply timeout (0.5 s) plus a second.
    let mut trace = Trace::start(&["--park-after", "1", "--reply-timeout", "0.5", "port", &port]);
    let attached = attachments(trace.pid());
    let loaded = programs(trace.pid());
    assert!(
        trace.wait_for(Duration::from_secs(10), |r| r["code"] == "hops_parked"),
        "no hops_parked status: {:#?}",
        trace.records
    );
    let parked: Vec<String> = status(&trace.records, "hops_parked").unwrap()["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|hook| hook.as_str().unwrap().to_owned())
        .collect();
    // Device transmit and receive are tracepoints on every supported kernel.
    for hook in ["xmit", "recv"] {
        assert!(
            parked.iter().any(|p| p == hook),
            "{hook} not parked: {parked:?}"
        );
    }
    // The kernel agrees: each parked hook's links are gone, and its programs stay loaded (so
    // attaching again verifies nothing).
    let while_parked = attachments(trace.pid());
    assert!(
        while_parked + parked.len() <= attached,
        "{attached} attachments before, {while_parked} with {parked:?} parked"
    );
    assert_eq!(
        programs(trace.pid()),
        loaded,
        "programs unloaded while parked"
    );

    // The first exchange meets the cheap hooks alone, and brings the hop hooks back.
    let first = scenario.exercise(&lab).expect("exercise");
    assert!(
        trace.wait_for(Duration::from_secs(20), |r| r["code"] == "hops_attached"),
        "no hops_attached status: {:#?}",
        trace.records
    );
    assert_eq!(
        attachments(trace.pid()),
        attached,
        "not every hook came back"
    );
    assert_eq!(programs(trace.pid()), loaded, "programs loaded again");
    let second = scenario.exercise(&lab).expect("exercise");
    let records = trace.stop();

    let back = status(&records, "hops_attached").unwrap();
    assert_eq!(back["failed"], serde_json::json!([]), "{back}");
    let untraced_before = back["untraced_before_ns"].as_u64().unwrap();
    let events: Vec<&Value> = records.iter().filter(|r| r["type"] == "event").collect();
    // Marked exactly: before the hooks were back, and nothing after.
    for event in &events {
        let untraced = event["hops_untraced"] == true;
        let before = event["ts_ns"].as_u64().unwrap() < untraced_before;
        assert_eq!(untraced, before, "{event}");
    }
    let untraced: Vec<&&Value> = events
        .iter()
        .filter(|e| e["hops_untraced"] == true)
        .collect();
    assert!(
        !untraced.is_empty(),
        "the first exchange left no event: {records:#?}"
    );
    // While parked, the parked hooks reported nothing: over veth a datagram's device hops run
    // inside the sender's sendmsg, before its send event, so the first event of the gap comes
    // from a hook that stayed. (Later ones may be hops: re-attaching goes hook by hook, and the
    // gap ends when the last one is back; under emulation that takes a while.)
    let parked_kinds: Vec<&str> = parked.iter().filter_map(|hook| kind_of(hook)).collect();
    let earliest = untraced
        .iter()
        .min_by_key(|e| e["ts_ns"].as_u64().unwrap())
        .unwrap();
    assert!(
        !parked_kinds.contains(&earliest["kind"].as_str().unwrap()),
        "the first event of the gap came from a parked hook: {earliest}"
    );
    // The second exchange, after them, has its whole path.
    let second_port = second.client.local.unwrap().port();
    let second_kinds: Vec<&str> = events
        .iter()
        .filter(|e| e["sport"] == second_port || e["dport"] == second_port)
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    for kind in ["xmit", "recv", "route"] {
        assert!(second_kinds.contains(&kind), "no {kind}: {second_kinds:?}");
    }
    // Verdicts: the right one for the second exchange, with its three requests; none drawn
    // from an untraced event (the first exchange's later requests may have been traced,
    // and then get the same verdict).
    let verdicts = verdicts(&records);
    for verdict in &verdicts {
        assert_eq!(verdict["code"], "reply_source_mismatch", "{verdict:#}");
        for evidence in verdict["evidence_events"].as_array().unwrap() {
            assert_ne!(evidence["hops_untraced"], true, "{verdict:#}");
        }
    }
    let verdict = verdicts
        .iter()
        .find(|v| about_port(v, second_port))
        .unwrap_or_else(|| panic!("no verdict for the second exchange: {verdicts:#?}"));
    assert_eq!(verdict["count"], 3, "{verdict:#}");
    let first_port = first.client.local.unwrap().port();
    assert!(
        events.iter().any(|e| e["hops_untraced"] == true
            && (e["sport"] == first_port || e["dport"] == first_port)),
        "the first exchange's first request is not among the untraced events: {untraced:#?}"
    );
}
