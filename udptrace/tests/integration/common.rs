//! Shared by the root integration tests: run the real `udptrace` binary with `--json` while a
//! test produces traffic, and collect what it printed.
//!
//! These tests need root (BPF, namespaces). Under `CI=true` a test that cannot run fails;
//! elsewhere it fails too, with a message saying to run `cargo xtask test` (which uses sudo):
//! nothing here skips silently.

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, ChildStdout, Command, Stdio},
    sync::{Mutex, MutexGuard, mpsc},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

/// Fails the test (never skips) when not root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "this integration test needs root (BPF and network namespaces): run `cargo xtask test`"
    );
}

/// Traces run one at a time: each sees every namespace, and the lab scenarios reuse their
/// ports, so two at once would see each other's events.
static SERIAL: Mutex<()> = Mutex::new(());

/// Waits for this test's turn to trace (see `SERIAL`); the trace may start once this returns.
pub fn serial() -> MutexGuard<'static, ()> {
    require_root();
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Starts `udptrace --json ARGS...` once it is this test's turn to trace: the turn, the
/// process and its stdout.
pub fn spawn_udptrace(args: &[&str]) -> (MutexGuard<'static, ()>, Child, ChildStdout) {
    let serial = serial();
    let mut child = Command::new(env!("CARGO_BIN_EXE_udptrace"))
        .arg("--json")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting udptrace");
    let stdout = child.stdout.take().expect("stdout");
    (serial, child, stdout)
}

/// A running `udptrace --json` whose stdout lines are collected in the background.
pub struct Trace {
    _serial: MutexGuard<'static, ()>,
    child: Child,
    lines: mpsc::Receiver<Value>,
    pub records: Vec<Value>,
    /// From starting the process to its `ready` record (load, verification, attach).
    pub ready_after: Duration,
}

impl Trace {
    /// Starts `udptrace --json ARGS...` and waits for its `ready` record.
    pub fn start(args: &[&str]) -> Self {
        let (serial, child, stdout) = spawn_udptrace(args);
        let started = Instant::now();
        let (sender, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let value: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("udptrace printed a non-JSON line {line:?}: {e}"));
                if sender.send(value).is_err() {
                    break;
                }
            }
        });
        let mut trace = Self {
            _serial: serial,
            child,
            lines,
            records: Vec::new(),
            ready_after: Duration::ZERO,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Ok(record) = trace
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            let ready = record["type"] == "ready";
            trace.records.push(record);
            if ready {
                trace.ready_after = started.elapsed();
                return trace;
            }
        }
        let status = trace.child.try_wait().ok().flatten();
        panic!("udptrace did not become ready within 30 s (exit status {status:?})");
    }

    /// The udptrace process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGINT, waits for the exit summary and returns every record.
    pub fn stop(mut self) -> Vec<Value> {
        // Let in-flight events reach the ring buffer and verdicts settle.
        thread::sleep(Duration::from_millis(700));
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Ok(record) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.records.push(record);
        }
        let status = self.child.wait().expect("waiting for udptrace");
        assert!(status.success(), "udptrace exited with {status}");
        assert!(
            self.records.iter().any(|r| r["type"] == "stats"),
            "no stats record at exit"
        );
        std::mem::take(&mut self.records)
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Event records of `kind`.
pub fn events<'a>(records: &'a [Value], kind: &str) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| r["type"] == "event" && r["kind"] == kind)
        .collect()
}

/// Final verdict records (from the exit summary).
pub fn verdicts(records: &[Value]) -> Vec<&Value> {
    records
        .iter()
        .filter(|r| r["type"] == "verdict" && r["final"] == true)
        .collect()
}

pub fn stats(records: &[Value]) -> &Value {
    records
        .iter()
        .find(|r| r["type"] == "stats")
        .expect("stats record")
}

/// The mechanism the run's `ready` record says `hook` attached with, if any.
fn mechanism<'a>(records: &'a [Value], hook: &str) -> Option<&'a str> {
    let ready = records
        .iter()
        .find(|r| r["type"] == "ready")
        .expect("ready record");
    ready["probes"]
        .as_array()
        .expect("probes in the ready record")
        .iter()
        .find(|p| p["hook"] == hook)
        .and_then(|p| p["mechanism"].as_str())
}

/// Whether `hook` attached at all in this run.
pub fn attached(records: &[Value], hook: &str) -> bool {
    mechanism(records, hook).is_some()
}

/// Whether `hook` attached through a function probe (fentry or kprobe): what the richer
/// assertions of the kernel matrix depend on.
pub fn function_probe(records: &[Value], hook: &str) -> bool {
    matches!(mechanism(records, hook), Some("fentry" | "kprobe"))
}
