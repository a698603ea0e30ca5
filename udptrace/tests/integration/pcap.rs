//! `-w FILE` and `-w -`: the pcapng of a traced lab incident, read back by the real tshark
//! (Debian package `tshark`): it opens without warnings, has one frame per hop event of the
//! JSON output of the same run, with the same tuples, interfaces named `ns/dev` and comments
//! carrying the drop reason, the kernel location and the verdict.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use udptrace::lab::scenarios;

use crate::{
    common::{events, require_root, serial},
    drops::traced,
};

/// Removes the file however the test ends.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn temp_file(name: &str) -> TempFile {
    TempFile(std::env::temp_dir().join(format!("udptrace-{}-{name}.pcapng", std::process::id())))
}

/// Event kinds that carry a packet with `-w`.
const HOPS: [&str; 5] = ["xmit", "recv", "drop", "icmp", "deliver"];

fn hop_events(records: &[Value]) -> Vec<&Value> {
    records
        .iter()
        .filter(|r| r["type"] == "event" && HOPS.contains(&r["kind"].as_str().unwrap_or("")))
        .collect()
}

/// tshark's notice when run as root, on stderr whatever the file: not a warning about it.
const ROOT_NOTICE: &str = "Running as user \"root\" and group \"root\". This could be dangerous.";

/// What tshark wrote to stderr besides the root notice.
fn warnings(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .filter(|line| !line.is_empty() && *line != ROOT_NOTICE)
        .map(str::to_owned)
        .collect()
}

/// `tshark -r FILE` (`-`: the given stdin) printing, per frame, the interface name, the
/// comment and the innermost IP/UDP tuple (an ICMPv6 error quotes the datagram it is about:
/// the last occurrence is the quoted one, as the JSON event's tuple).
fn tshark_fields(file: &str, stdin: Stdio) -> std::process::Child {
    let mut command = Command::new("tshark");
    command.args([
        "-r",
        file,
        "-T",
        "fields",
        "-E",
        "occurrence=l",
        "-E",
        "separator=\t",
    ]);
    for field in [
        "frame.interface_name",
        "frame.comment",
        "ip.src",
        "ipv6.src",
        "udp.srcport",
        "ip.dst",
        "ipv6.dst",
        "udp.dstport",
    ] {
        command.args(["-e", field]);
    }
    command
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running tshark (Debian package tshark; `cargo xtask setup` installs it)")
}

/// One frame as tshark printed it.
#[derive(Debug)]
struct Frame {
    interface: String,
    comment: String,
    src: String,
    sport: String,
    dst: String,
    dport: String,
}

fn frames(output: &Output) -> Vec<Frame> {
    String::from_utf8(output.stdout.clone())
        .unwrap()
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            assert_eq!(f.len(), 8, "{line:?}");
            let either = |a: &str, b: &str| if a.is_empty() { b } else { a }.to_owned();
            Frame {
                interface: f[0].to_owned(),
                comment: f[1].to_owned(),
                src: either(f[2], f[3]),
                sport: f[4].to_owned(),
                dst: either(f[5], f[6]),
                dport: f[7].to_owned(),
            }
        })
        .collect()
}

/// The frames are the hop events, in order: same tuples, interfaces named `ns/dev`, comments
/// starting with the event's kind; drops say their reason and location.
fn assert_frames_match(scenario: &str, frames: &[Frame], records: &[Value]) {
    let hops = hop_events(records);
    assert!(
        !hops.is_empty(),
        "{scenario}: no hop events in {records:#?}"
    );
    assert_eq!(
        frames.len(),
        hops.len(),
        "{scenario}: one frame per hop event: {frames:#?}"
    );
    for (frame, event) in frames.iter().zip(&hops) {
        let text = |key: &str| match &event[key] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        assert_eq!(
            (&frame.src, &frame.sport, &frame.dst, &frame.dport),
            (
                &text("saddr"),
                &text("sport"),
                &text("daddr"),
                &text("dport")
            ),
            "{scenario}: {frame:?} vs {event}"
        );
        let namespace = event["netns_name"].as_str().unwrap();
        let device = event["ifname"].as_str().unwrap_or("-");
        assert_eq!(frame.interface, format!("{namespace}/{device}"), "{event}");
        let kind = event["kind"].as_str().unwrap();
        assert!(
            frame.comment.starts_with(&format!("{kind} ")),
            "{scenario}: {frame:?} vs {event}"
        );
        // `--stack`: the event's frames, innermost first.
        if let Some(stack) = event["stack"].as_array() {
            let frames: Vec<&str> = stack.iter().map(|f| f.as_str().unwrap()).collect();
            assert!(
                frame
                    .comment
                    .contains(&format!("; stack {}", frames.join(" < "))),
                "{scenario}: {frame:?} vs {event}"
            );
        }
        if kind == "drop" {
            let reason = event["reason"].as_str().unwrap();
            let location = event["location"].as_str().unwrap();
            assert!(
                frame.comment.contains(reason) && frame.comment.contains(&format!("at {location}")),
                "{scenario}: {frame:?} vs {event}"
            );
        }
    }
}

/// Every final verdict appears in the comment of at least one frame.
fn assert_verdicts_in_comments(scenario: &str, frames: &[Frame], records: &[Value]) {
    let codes: Vec<&str> = records
        .iter()
        .filter(|r| r["type"] == "verdict" && r["final"] == true)
        .map(|r| r["code"].as_str().unwrap())
        .collect();
    assert!(!codes.is_empty(), "{scenario}: no verdict");
    for code in codes {
        assert!(
            frames
                .iter()
                .any(|f| f.comment.contains(&format!("verdict {code} ("))),
            "{scenario}: verdict {code} in no comment: {frames:#?}"
        );
    }
}

/// The kernel side of `-w` on every kernel of the matrix, where tshark is not at hand (the
/// guests' initramfs): the packet copy is only verified by the kernel when `-w` turns it on
/// (frozen globals prune it otherwise), so a traced incident with `-w` must load, and its file
/// must hold one packet per hop event (read back by udptrace's own reader).
#[test]
fn w_writes_one_packet_per_hop_event() {
    let file = temp_file("count");
    let path = file.0.to_str().unwrap();
    let (_lab, _outcome, records) = traced("closed-port", &["-w", path]);
    let hops = hop_events(&records);
    assert!(!hops.is_empty(), "no hop events in {records:#?}");
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(
        udptrace::pcapng::packet_count(&bytes),
        Some(hops.len() as u64),
        "{records:#?}"
    );
}

/// With `--stack` on closed-port, the drops' and ICMP errors' comments carry their stacks too.
#[test]
fn a_traced_incident_written_with_w_reads_in_tshark_as_its_json_events() {
    for (scenario, stack) in [("closed-port", true), ("wrong-source-reply-v6", false)] {
        let file = temp_file(scenario);
        let path = file.0.to_str().unwrap();
        let args: &[&str] = if stack {
            &["--stack", "-w", path]
        } else {
            &["-w", path]
        };
        let (_lab, _outcome, records) = traced(scenario, args);
        if stack {
            assert!(
                events(&records, "drop")
                    .iter()
                    .all(|d| d["stack"].is_array()),
                "{records:#?}"
            );
        }
        let plain = Command::new("tshark").args(["-r", path]).output().unwrap();
        assert!(plain.status.success(), "{scenario}: {plain:?}");
        assert_eq!(warnings(&plain), Vec::<String>::new(), "{scenario}");
        let output = tshark_fields(path, Stdio::null())
            .wait_with_output()
            .unwrap();
        assert!(output.status.success(), "{scenario}: {output:?}");
        assert_eq!(warnings(&output), Vec::<String>::new(), "{scenario}");
        let frames = frames(&output);
        assert_frames_match(scenario, &frames, &records);
        assert_verdicts_in_comments(scenario, &frames, &records);
    }
}

#[test]
fn w_dash_streams_the_packets_into_tshark_and_the_json_to_stderr() {
    let scenario = scenarios::find("closed-port").unwrap();
    let _serial = serial();
    let lab = scenario.setup().expect("lab setup");
    let port = scenario.port().to_string();
    let mut udptrace = Command::new(env!("CARGO_BIN_EXE_udptrace"))
        .args(["--json", "-w", "-", "port", &port])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let tshark = tshark_fields("-", Stdio::from(udptrace.stdout.take().unwrap()));
    let stderr = udptrace.stderr.take().unwrap();
    let (sender, lines) = std::sync::mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    let mut records: Vec<Value> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !records.iter().any(|r| r["type"] == "ready") {
        let line = lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("udptrace did not become ready within 30 s");
        records.push(serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}")));
    }
    scenario.exercise(&lab).expect("exercise");
    thread::sleep(Duration::from_millis(700));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(udptrace.id() as i32, libc::SIGINT) };
    let status = udptrace.wait().unwrap();
    assert!(status.success(), "udptrace exited with {status}");
    for line in &lines {
        records.push(serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}")));
    }
    assert!(records.iter().any(|r| r["type"] == "stats"), "{records:#?}");
    let output = tshark.wait_with_output().unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(warnings(&output), Vec::<String>::new());
    let frames = frames(&output);
    assert_frames_match("closed-port", &frames, &records);
    assert_verdicts_in_comments("closed-port", &frames, &records);
}

#[test]
fn an_unwritable_w_path_is_one_line_and_a_failure() {
    require_root();
    let path = std::env::temp_dir().join(format!("udptrace-{}-no-such-dir", std::process::id()));
    let target = path.join("out.pcapng");
    let output = Command::new(env!("CARGO_BIN_EXE_udptrace"))
        .args(["-w", target.to_str().unwrap(), "--duration", "1"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr,
        format!(
            "udptrace: -w {}: No such file or directory (os error 2)\n",
            target.display()
        )
    );
    assert!(output.stdout.is_empty());
    assert!(!path.exists());
}

/// A tmpfs of 16 KiB the test mounts and unmounts, however it ends.
pub struct SmallDisk(pub PathBuf);

impl SmallDisk {
    /// Mounted at a directory of its own, named after `what` (tests run side by side).
    pub fn mount(what: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("udptrace-{}-full-{what}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=16k", "udptrace-test"])
            .arg(&path)
            .status()
            .unwrap();
        assert!(status.success(), "mounting a tmpfs on {}", path.display());
        Self(path)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// `udptrace --json --snaplen 1500 OPTION TARGET port P` during the rcvbuf-overflow burst,
/// `TARGET` on a `SmallDisk`: the run must stop on the full disk (within 20 s), failing; the
/// lines it wrote to stderr.
pub fn stopped_by_a_full_disk(option: &str, target: &Path) -> Vec<String> {
    let scenario = scenarios::find("rcvbuf-overflow").unwrap();
    let _serial = serial();
    let lab = scenario.setup().expect("lab setup");
    let port = scenario.port().to_string();
    // The burst's ~300 hop events written (the rest sampled) make about 64 KiB of pcapng (a
    // packet and its comment are ~200 bytes), or of NDJSON: four times the disk.
    let mut udptrace = Command::new(env!("CARGO_BIN_EXE_udptrace"))
        .args(["--json", "--snaplen", "1500", option])
        .arg(target)
        .args(["port", &port])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(udptrace.stdout.take().unwrap());
    let mut line = String::new();
    while stdout.read_line(&mut line).unwrap() > 0 && !line.contains("\"type\":\"ready\"") {
        line.clear();
    }
    assert!(line.contains("\"type\":\"ready\""), "no ready record");
    // Keep reading, so that the run is never held up by a full pipe.
    thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    scenario.exercise(&lab).expect("exercise");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = udptrace.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "udptrace did not stop on ENOSPC ({option})"
        );
        thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success(), "{option}");
    let mut stderr = String::new();
    udptrace
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    stderr.lines().map(str::to_owned).collect()
}

#[test]
fn a_full_disk_under_w_ends_the_run_saying_what_the_file_holds() {
    let disk = SmallDisk::mount("w");
    let target = disk.0.join("storm.pcapng");
    let lines = stopped_by_a_full_disk("-w", &target);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with(&format!(
            "udptrace: writing the output: -w {}: No space left on device",
            target.display()
        )) && lines[0].ends_with("; the file is cut short (its packets end before the cut)"),
        "{lines:?}"
    );
    // What was written before is a readable capture, cut short (tshark says so).
    let read = Command::new("tshark")
        .arg("-r")
        .arg(&target)
        .output()
        .unwrap();
    assert!(!read.stdout.is_empty(), "{read:?}");
    assert!(
        String::from_utf8_lossy(&read.stderr).contains("appears to have been cut short"),
        "{read:?}"
    );
}
