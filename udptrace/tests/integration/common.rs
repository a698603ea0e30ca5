//! Shared by the root integration tests: run the real `udptrace` binary with `--json` while a
//! test produces traffic, and collect what it printed.
//!
//! These tests need root (BPF, namespaces). Under `CI=true` a test that cannot run fails;
//! elsewhere it fails too, with a message saying to run `cargo xtask test` (which uses sudo):
//! nothing here skips silently.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Child, ChildStdout, Command, Stdio},
    sync::{Mutex, MutexGuard, mpsc},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use udptrace::lab::netns::{Netns, veth};

/// Two namespaces `{prefix}client` and `{prefix}server` joined by a veth pair (`eth0` in
/// each), at `{net}.1/24` and `{net}.2/24` (`net`: a documentation /24 such as "203.0.113").
pub fn client_and_server(prefix: &str, net: &str) -> (Netns, Netns) {
    let client = Netns::create(&format!("{prefix}client")).unwrap();
    let server = Netns::create(&format!("{prefix}server")).unwrap();
    veth(&client, "eth0", &server, "eth0").unwrap();
    client.addr("eth0", &format!("{net}.1/24")).unwrap();
    server.addr("eth0", &format!("{net}.2/24")).unwrap();
    (client, server)
}

/// Fails the test (never skips) when not root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "this integration test needs root (BPF and network namespaces): run `cargo xtask test`"
    );
}

/// Whether the running kernel has tracepoint `group:event` (tracefs, mounted by udptrace or
/// the test bed at /sys/kernel/tracing).
pub fn tracepoint_exists(group: &str, event: &str) -> bool {
    std::path::Path::new("/sys/kernel/tracing/events")
        .join(group)
        .join(event)
        .exists()
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
    spawn_udptrace_with(&["--json"], args, &[])
}

/// `udptrace LEADING ARGS...` with environment variables `env` set.
fn spawn_udptrace_with(
    leading: &[&str],
    args: &[&str],
    env: &[(&str, &str)],
) -> (MutexGuard<'static, ()>, Child, ChildStdout) {
    let serial = serial();
    let (child, stdout) = spawn_unserialized(leading, args, env, Stdio::inherit());
    (serial, child, stdout)
}

/// `udptrace LEADING ARGS...` started at once, its stderr to `stderr`: the caller holds the
/// turn to trace.
fn spawn_unserialized(
    leading: &[&str],
    args: &[&str],
    env: &[(&str, &str)],
    stderr: Stdio,
) -> (Child, ChildStdout) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_udptrace"))
        .args(leading)
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("starting udptrace");
    let stdout = child.stdout.take().expect("stdout");
    (child, stdout)
}

/// A running `udptrace --json` whose stdout lines are collected in the background.
pub struct Trace {
    /// The turn to trace; `None` for a trace of a [`Traces`] group, which holds it.
    _serial: Option<MutexGuard<'static, ()>>,
    child: Child,
    lines: mpsc::Receiver<Value>,
    pub records: Vec<Value>,
    /// From starting the process to its `ready` record (load, verification, attach).
    pub ready_after: Duration,
    started: Instant,
}

impl Trace {
    /// Starts `udptrace --json ARGS...` and waits for its `ready` record.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with(args, &[])
    }

    /// `start` with environment variables `env` set (e.g. DOCKER_HOST).
    pub fn start_with(args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::spawned(spawn_udptrace_with(&["--json"], args, env))
    }

    /// `start_with`, with udptrace's stderr collected instead of shown: the trace, and what
    /// udptrace wrote there, complete once it has exited (read on a thread of its own, so that
    /// udptrace never waits on a full pipe).
    pub fn start_capturing_stderr(
        args: &[&str],
        env: &[(&str, &str)],
    ) -> (Self, thread::JoinHandle<String>) {
        let serial = serial();
        let (mut child, stdout) = spawn_unserialized(&["--json"], args, env, Stdio::piped());
        let mut stderr = child.stderr.take().expect("stderr");
        let collected = thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
            text
        });
        (Self::spawned((serial, child, stdout)), collected)
    }

    /// Starts `udptrace watch ARGS...` (NDJSON without `--json`) and waits for its `ready`.
    pub fn watch(args: &[&str]) -> Self {
        Self::spawned(spawn_udptrace_with(&["watch"], args, &[]))
    }

    /// Waits up to `timeout` for a record `wanted` accepts (kept with the others); whether
    /// one came.
    pub fn wait_for(&mut self, timeout: Duration, wanted: impl Fn(&Value) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while let Ok(record) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            let found = wanted(&record);
            self.records.push(record);
            if found {
                return true;
            }
        }
        false
    }

    fn spawned((serial, child, stdout): (MutexGuard<'static, ()>, Child, ChildStdout)) -> Self {
        let mut trace = Self::launched(Some(serial), child, stdout);
        trace.wait_ready();
        trace
    }

    /// A started process whose stdout is read in the background; not ready yet.
    fn launched(
        serial: Option<MutexGuard<'static, ()>>,
        child: Child,
        stdout: ChildStdout,
    ) -> Self {
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
        Self {
            _serial: serial,
            child,
            lines,
            records: Vec::new(),
            ready_after: Duration::ZERO,
            started: Instant::now(),
        }
    }

    /// Waits for the `ready` record (at most 30 s from the start).
    fn wait_ready(&mut self) {
        let deadline = self.started + Duration::from_secs(30);
        while let Ok(record) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            let ready = record["type"] == "ready";
            self.records.push(record);
            if ready {
                self.ready_after = self.started.elapsed();
                return;
            }
        }
        let status = self.child.try_wait().ok().flatten();
        panic!("udptrace did not become ready within 30 s (exit status {status:?})");
    }

    /// The udptrace process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGINT, waits for the exit summary and returns every record.
    pub fn stop(self) -> Vec<Value> {
        // Let in-flight events reach the ring buffer and verdicts settle.
        thread::sleep(Duration::from_millis(700));
        self.interrupt();
        self.finish()
    }

    fn interrupt(&self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
    }

    /// After `interrupt`: the exit summary, and every record.
    fn finish(mut self) -> Vec<Value> {
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

/// Several `udptrace --json` runs at once, one turn to trace for all (each sees every
/// namespace; each has its own filter).
pub struct Traces {
    traces: Vec<Trace>,
    _serial: MutexGuard<'static, ()>,
}

impl Traces {
    /// Starts `udptrace --json ARGS...` for each argument list, and waits until all are ready.
    pub fn start(arg_lists: &[Vec<&str>]) -> Self {
        let serial = serial();
        let mut traces: Vec<Trace> = arg_lists
            .iter()
            .map(|args| {
                let (child, stdout) = spawn_unserialized(&["--json"], args, &[], Stdio::inherit());
                Trace::launched(None, child, stdout)
            })
            .collect();
        for trace in &mut traces {
            trace.wait_ready();
        }
        Self {
            traces,
            _serial: serial,
        }
    }

    /// Stops them all as `Trace::stop` does; each one's records, in the order started.
    pub fn stop(self) -> Vec<Vec<Value>> {
        thread::sleep(Duration::from_millis(700));
        for trace in &self.traces {
            trace.interrupt();
        }
        self.traces.into_iter().map(Trace::finish).collect()
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

/// The processes a process and its descendants start, and the programs they execute, seen
/// by the kernel: an ftrace instance records `task:task_newtask` (with the new task's clone
/// flags, include/trace/events/task.h) and `sched:sched_process_exec` for the process's
/// threads (`set_event_pid`) and every task they create from then on (`options/event-fork`).
pub struct Descendants {
    instance: PathBuf,
}

/// include/uapi/linux/sched.h: a new thread, not a new process.
const CLONE_THREAD: u64 = 0x0001_0000;

impl Descendants {
    pub fn of(pid: u32) -> Self {
        let instance = PathBuf::from(format!(
            "/sys/kernel/tracing/instances/udptrace-test-{}",
            std::process::id()
        ));
        fs::create_dir(&instance)
            .unwrap_or_else(|e| panic!("creating ftrace instance {}: {e}", instance.display()));
        // The guard owns the instance from here.
        let descendants = Self { instance };
        descendants.write("options/event-fork", "1");
        let threads = || {
            let mut tids: Vec<String> = fs::read_dir(format!("/proc/{pid}/task"))
                .unwrap()
                .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            tids.sort();
            tids
        };
        let tids = threads();
        descendants.write("set_event_pid", &tids.join(" "));
        // A thread started between the listing and the write would escape event-fork.
        assert_eq!(
            threads(),
            tids,
            "udptrace started threads while being listed"
        );
        descendants.write("events/task/task_newtask/enable", "1");
        descendants.write("events/sched/sched_process_exec/enable", "1");
        descendants
    }

    fn write(&self, file: &str, value: &str) {
        let path = self.instance.join(file);
        fs::write(&path, value)
            .unwrap_or_else(|e| panic!("writing {value:?} to {}: {e}", path.display()));
    }

    /// `new process PID` for each process started so far, `exec FILENAME` for each program
    /// executed.
    pub fn spawned(&self) -> Vec<String> {
        let text = fs::read_to_string(self.instance.join("trace")).unwrap();
        let field = |line: &str, name: &str| {
            line.split_whitespace()
                .find_map(|word| word.strip_prefix(name))
                .map(str::to_owned)
        };
        let mut spawned = Vec::new();
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            if line.contains("task_newtask:") {
                let flags = field(line, "clone_flags=")
                    .and_then(|flags| u64::from_str_radix(&flags, 16).ok())
                    .unwrap_or_else(|| panic!("no clone_flags in {line:?}"));
                if flags & CLONE_THREAD == 0 {
                    spawned.push(format!("new process {}", field(line, "pid=").unwrap()));
                }
            } else if line.contains("sched_process_exec:") {
                spawned.push(format!("exec {}", field(line, "filename=").unwrap()));
            }
        }
        spawned
    }
}

impl Drop for Descendants {
    fn drop(&mut self) {
        // Removing an instance disables its events.
        let _ = fs::remove_dir(&self.instance);
    }
}
