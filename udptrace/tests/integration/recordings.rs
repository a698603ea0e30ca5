//! `-o FILE` and `udptrace replay FILE`: a live run, recorded, replays to the verdicts and
//! flows it showed (with socket lists and kernel counts: the rcvbuf-overflow storm is sampled,
//! so its counts come from the kernel).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

use crate::{
    common::verdicts,
    drops::traced,
    pcap::{SmallDisk, stopped_by_a_full_disk},
};

/// Removes the recording however the test ends.
pub struct TempFile(pub PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn finals(records: &[Value]) -> (Vec<Value>, Vec<Value>) {
    let flows = records
        .iter()
        .filter(|record| record["type"] == "flow")
        .cloned()
        .collect();
    let verdicts = verdicts(records)
        .into_iter()
        .filter(|verdict| verdict["final"] == true)
        .cloned()
        .collect();
    (verdicts, flows)
}

#[test]
fn recorded_runs_replay_to_the_verdicts_and_flows_they_showed() {
    for scenario in ["nc-connect-pinning", "rcvbuf-overflow"] {
        let file = TempFile(std::env::temp_dir().join(format!(
            "udptrace-recording-{}-{scenario}.ndjson",
            std::process::id()
        )));
        let path = file.0.to_str().unwrap();
        let (_lab, _outcome, live) = traced(scenario, &["-o", path]);
        let (live_verdicts, live_flows) = finals(&live);
        assert!(!live_verdicts.is_empty(), "{scenario}: {live:#?}");
        let replay = Command::new(env!("CARGO_BIN_EXE_udptrace"))
            .args(["replay", path, "--json"])
            .output()
            .unwrap();
        assert!(
            replay.status.success() && replay.stderr.is_empty(),
            "{scenario}: {}",
            String::from_utf8_lossy(&replay.stderr)
        );
        let replayed: Vec<Value> = String::from_utf8(replay.stdout)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        let (verdicts, flows) = finals(&replayed);
        assert_eq!(verdicts, live_verdicts, "{scenario}");
        assert_eq!(flows, live_flows, "{scenario}");
        // The live run's events, in its order.
        let events = |records: &[Value]| -> Vec<Value> {
            records
                .iter()
                .filter(|record| record["type"] == "event")
                .cloned()
                .collect()
        };
        assert_eq!(events(&replayed), events(&live), "{scenario}");
        let text = Command::new(env!("CARGO_BIN_EXE_udptrace"))
            .args(["replay", path])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&text.stdout);
        for verdict in &live_verdicts {
            let code = verdict["code"].as_str().unwrap();
            assert!(
                text.contains(&format!("VERDICT {code} (")),
                "{scenario}: {text}"
            );
        }
    }
}

#[test]
fn a_cut_or_corrupt_recording_is_one_line_and_a_failure() {
    // Compiled in: the kernel matrix runs this binary in guests without the source tree.
    let recorded = include_str!("../recordings/closed-port.ndjson");
    let lines: Vec<&str> = recorded.lines().collect();
    let cases = [
        ("cut-at-line", lines[..lines.len() - 1].join("\n")),
        ("cut-within", recorded[..recorded.len() - 20].to_owned()),
        (
            "corrupt",
            recorded.replacen("\"type\":\"event\"", "\"type\":\"event", 1),
        ),
    ];
    for (name, text) in cases {
        let file = TempFile(std::env::temp_dir().join(format!(
            "udptrace-recording-{}-{name}.ndjson",
            std::process::id()
        )));
        std::fs::write(&file.0, text).unwrap();
        let expected = if name == "cut-at-line" {
            "it was cut short"
        } else {
            "not a JSON record"
        };
        let refusal = refused(&file.0);
        assert!(refusal.contains(expected), "{name}: {refusal}");
    }
}

/// `udptrace replay FILE --json` refuses the file: status 1, one line on stderr naming it,
/// and nothing on stdout claims to be the run's end. That line.
fn refused(file: &Path) -> String {
    let replay = Command::new(env!("CARGO_BIN_EXE_udptrace"))
        .args(["replay", file.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&replay.stderr);
    assert_eq!(
        replay.status.code(),
        Some(1),
        "{}: {stderr}",
        file.display()
    );
    assert_eq!(stderr.lines().count(), 1, "{}: {stderr}", file.display());
    assert!(
        stderr.starts_with(&format!("udptrace: replay {}: ", file.display())),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&replay.stdout);
    assert!(
        !stdout.contains("\"type\":\"stats\""),
        "{}: {stdout}",
        file.display()
    );
    stderr.into_owned()
}

/// A full disk under `-o` (a 16 KiB tmpfs) ends the run with one line naming the file and
/// saying that it is cut short, status 1; replay then refuses what it holds.
#[test]
fn a_full_disk_under_o_ends_the_run_and_replay_refuses_the_cut_recording() {
    let disk = SmallDisk::mount("o");
    let target = disk.0.join("storm.ndjson");
    let lines = stopped_by_a_full_disk("-o", &target);
    assert_eq!(
        lines,
        [format!(
            "udptrace: writing the output: -o {}: No space left on device (os error 28); the \
             recording is cut short (replay refuses it)",
            target.display()
        )]
    );
    // The disk filled within a line (the usual case: a 64 KiB buffer written into 16 KiB),
    // or, by chance, at a line's end.
    let refusal = refused(&target);
    assert!(
        refusal.contains("not a JSON record") || refusal.contains("it was cut short"),
        "{refusal}"
    );
}
