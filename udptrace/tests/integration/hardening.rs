//! Issue 12, items 4, 7 and 9 (the command line's): closed pipes and full disks, `--netns`
//! values that are not network namespaces, bad flags, SIGINT right after `ready`, and `lab
//! run` killed early. Each runs the real binary as a user would.

use std::{
    fs::File,
    io::{BufRead as _, BufReader, Read as _},
    net::UdpSocket,
    os::unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use udptrace::lab::netns::Netns;

use crate::common::{require_root, serial};

const UDPTRACE: &str = env!("CARGO_BIN_EXE_udptrace");

/// Waits for `child` at most `limit` (polling every 2 ms, so the moment it is seen gone is
/// precise enough to measure); kills it and fails the test when it is still running.
fn wait_within(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {limit:?}");
        }
        thread::sleep(Duration::from_millis(2));
    }
}

/// Runs `udptrace ARGS` to completion (at most 30 s): status, stdout, stderr.
fn run(args: &[&str]) -> (ExitStatus, String, String) {
    let mut child = Command::new(UDPTRACE)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting udptrace");
    let status = wait_within(&mut child, Duration::from_secs(30), &format!("{args:?}"));
    (
        status,
        read_all(child.stdout.take()),
        read_all(child.stderr.take()),
    )
}

fn read_all(pipe: Option<impl std::io::Read>) -> String {
    let mut text = String::new();
    if let Some(mut pipe) = pipe {
        pipe.read_to_string(&mut text).expect("reading a pipe");
    }
    text
}

/// A namespace with 192.0.2.1 on its loopback, and a bounded sender in it: one datagram to
/// 192.0.2.1:`port` (nobody listens: a NO_SOCKET drop) every 20 ms, at most 500, until the
/// returned flag is set.
fn closed_port_sender(port: u16) -> (Netns, Arc<AtomicBool>, thread::JoinHandle<()>) {
    let netns = Netns::create("hardening").expect("namespace");
    netns.addr("lo", "192.0.2.1/32").expect("address");
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = Arc::clone(&stop);
    let sender = netns
        .spawn(move || {
            let socket = UdpSocket::bind("192.0.2.1:0")?;
            for _ in 0..500 {
                if stopped.load(Ordering::Relaxed) {
                    break;
                }
                // ECONNREFUSED from the previous datagram's ICMP error is expected.
                let _ = socket.send_to(b"hardening", ("192.0.2.1", port));
                thread::sleep(Duration::from_millis(20));
            }
            Ok(())
        })
        .expect("sender thread");
    let sender = thread::spawn(move || sender.join().unwrap().unwrap());
    (netns, stop, sender)
}

/// `udptrace ARGS | head -n LINES` (`2>&1 |` with `merge_stderr`): head's lines, udptrace's
/// status and stderr (empty when merged), and how long udptrace outlived head.
fn through_head(
    args: &[&str],
    lines: usize,
    merge_stderr: bool,
) -> (Vec<String>, ExitStatus, String, Duration) {
    let (reader, writer) = std::io::pipe().expect("pipe");
    let stderr = if merge_stderr {
        Stdio::from(writer.try_clone().expect("dup"))
    } else {
        Stdio::piped()
    };
    let mut tracer = Command::new(UDPTRACE)
        .args(args)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(stderr)
        .spawn()
        .expect("starting udptrace");
    // The command still holds the parent's copies of the write end: gone with it here.
    let mut head = Command::new("head")
        .args(["-n", &lines.to_string()])
        .stdin(reader)
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting head");
    let head_status = wait_within(&mut head, Duration::from_secs(30), "head");
    let head_gone = Instant::now();
    assert!(head_status.success(), "head: {head_status}");
    let status = wait_within(
        &mut tracer,
        Duration::from_secs(10),
        "udptrace after head exited",
    );
    let outlived = head_gone.elapsed();
    let printed = read_all(head.stdout.take())
        .lines()
        .map(str::to_owned)
        .collect();
    (printed, status, read_all(tracer.stderr.take()), outlived)
}

/// How long udptrace may outlive its reader: a second (issue 12's bound), or twice what its own
/// exit on Ctrl-C takes on this machine where that is longer (the kernel matrix runs these
/// tests under QEMU's emulation, where detaching alone takes over a second). The old behaviour,
/// writing into the closed pipe for minutes, fails either way.
fn exit_bound() -> Duration {
    static BOUND: OnceLock<Duration> = OnceLock::new();
    *BOUND.get_or_init(|| {
        let mut tracer = Command::new(UDPTRACE)
            .args(["--json", "port", "6308"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting udptrace");
        let mut ready = String::new();
        BufReader::new(tracer.stdout.take().expect("stdout"))
            .read_line(&mut ready)
            .expect("reading the ready record");
        assert!(ready.contains(r#""type":"ready""#), "{ready}");
        let interrupted = Instant::now();
        // SAFETY: a signal to our own child.
        assert_eq!(unsafe { libc::kill(tracer.id() as i32, libc::SIGINT) }, 0);
        wait_within(
            &mut tracer,
            Duration::from_secs(30),
            "udptrace after SIGINT",
        );
        let exit = interrupted.elapsed();
        eprintln!("udptrace exits {exit:?} after SIGINT here");
        Duration::from_secs(1).max(exit * 2)
    })
}

#[test]
fn head_ends_a_quiet_trace_within_a_second() {
    require_root();
    let _turn = serial();
    let bound = exit_bound();
    // Nothing matches after `ready`: only watching stdout can notice head is gone.
    let (printed, status, stderr, outlived) = through_head(&["--json", "port", "6302"], 1, false);
    eprintln!("quiet trace: udptrace exited {outlived:?} after head");
    let ready: Value = serde_json::from_str(&printed[0]).unwrap();
    assert_eq!(ready["type"], "ready");
    assert!(status.success(), "status {status}, stderr {stderr:?}");
    assert_eq!(stderr, "", "a closed pipe ends the trace quietly");
    assert!(outlived < bound, "{outlived:?} (bound {bound:?})");
}

#[test]
fn head_ends_a_text_trace_with_stderr_in_the_pipe() {
    require_root();
    let _turn = serial();
    let bound = exit_bound();
    // `2>&1 | head -1`: the banner (stderr) is the first line; every later write, to stdout
    // or to stderr, meets the closed pipe and must neither panic nor complain.
    let (printed, status, _, outlived) = through_head(&["port", "6307"], 1, true);
    eprintln!("text trace, 2>&1: udptrace exited {outlived:?} after head");
    assert!(printed[0].starts_with("tracing port 6307 ("), "{printed:?}");
    assert!(status.success(), "status {status}");
    assert!(outlived < bound, "{outlived:?} (bound {bound:?})");
}

#[test]
fn head_ends_a_busy_trace_within_a_second() {
    require_root();
    let _turn = serial();
    let bound = exit_bound();
    let (netns, stop, sender) = closed_port_sender(6301);
    // The ready record and the first event of the sender's flow; the sender goes on.
    let (printed, status, stderr, outlived) = through_head(&["--json", "port", "6301"], 2, false);
    let sender_ran = !stop.swap(true, Ordering::Relaxed);
    sender.join().unwrap();
    drop(netns);
    eprintln!("busy trace: udptrace exited {outlived:?} after head");
    assert!(sender_ran);
    let event: Value = serde_json::from_str(&printed[1]).unwrap();
    assert_eq!(event["type"], "event", "{event}");
    assert!(event["dport"] == 6301 || event["sport"] == 6301, "{event}");
    assert!(status.success(), "status {status}, stderr {stderr:?}");
    assert_eq!(stderr, "", "a closed pipe ends the trace quietly");
    assert!(outlived < bound, "{outlived:?} (bound {bound:?})");
}

/// `udptrace ARGS > /dev/full`, or with stdout closed (`>&-`): one line on stderr naming the
/// problem, status 1.
fn assert_output_error(args: &[&str], closed: bool, expected: &str) {
    let mut command = if closed {
        let mut shell = Command::new("sh");
        shell
            .args(["-c", "exec \"$0\" \"$@\" >&-", UDPTRACE])
            .args(args);
        shell
    } else {
        let mut command = Command::new(UDPTRACE);
        command.args(args).stdout(
            File::options()
                .write(true)
                .open("/dev/full")
                .expect("/dev/full"),
        );
        command
    };
    let mut child = command
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting udptrace");
    let status = wait_within(&mut child, Duration::from_secs(30), &format!("{args:?}"));
    let stderr = read_all(child.stderr.take());
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|line| !line.starts_with("tracing "))
        .collect();
    assert_eq!(status.code(), Some(1), "{args:?}: {stderr}");
    assert_eq!(errors.len(), 1, "{args:?}: {stderr}");
    assert!(errors[0].starts_with("udptrace: "), "{stderr}");
    assert!(errors[0].contains(expected), "{args:?}: {stderr}");
}

#[test]
fn full_disk_and_closed_stdout_are_errors() {
    require_root();
    let _turn = serial();
    let no_space = "writing the output: No space left on device";
    // JSON: the ready record is the first write.
    assert_output_error(&["--json", "port", "6303"], false, no_space);
    // Text: the banner goes to stderr; the first event is the first write to stdout.
    let (netns, stop, sender) = closed_port_sender(6303);
    assert_output_error(&["port", "6303"], false, no_space);
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    drop(netns);
    // Reports and listings too.
    assert_output_error(&["lab", "list"], false, no_space);
    assert_output_error(&["doctor", "--json"], false, no_space);
    assert_output_error(
        &["--json", "port", "6303"],
        true,
        "standard output is closed",
    );
}

/// `udptrace ARGS` refused before tracing: status `code`, nothing on stdout, `expected` in the
/// first line of stderr (clap adds usage lines after it), no raw escape. Returns stderr.
fn assert_refused(args: &[&str], code: i32, expected: &str) -> String {
    let (status, stdout, stderr) = run(args);
    assert_eq!(status.code(), Some(code), "{args:?}: {stderr}");
    assert_eq!(stdout, "", "{args:?}: nothing traced");
    assert!(
        stderr.lines().next().unwrap_or("").contains(expected),
        "{args:?}: {stderr}"
    );
    assert!(!stderr.contains('\x1b'), "{args:?}: {stderr:?}");
    stderr
}

#[test]
fn hostile_netns_values_are_rejected() {
    require_root();
    let _turn = serial();
    // A FIFO must not hang udptrace in open().
    let fifo = std::env::temp_dir().join(format!("udptrace-fifo-{}", std::process::id()));
    let fifo_c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
    // SAFETY: valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo_c.as_ptr(), 0o600) }, 0);
    let fifo_text = fifo.to_str().unwrap().to_owned();
    let cases = [
        ("0", "--netns 0: neither a process nor a namespace inode"),
        ("", "--netns '': empty"),
        ("/etc/passwd", "--netns /etc/passwd: not a namespace file"),
        ("/tmp", "--netns /tmp: not a namespace file"),
        (fifo_text.as_str(), "not a namespace file"),
        (
            "/proc/self/ns/mnt",
            "--netns /proc/self/ns/mnt: a mnt namespace, not a network namespace",
        ),
        (
            "/proc/self/ns/pid",
            "--netns /proc/self/ns/pid: a pid namespace, not a network namespace",
        ),
        // No PID this large exists (pid_max is at most 2^22), and no namespace has it.
        (
            "4194305",
            "--netns 4194305: no process and no /run/netns entry",
        ),
        ("no-such-netns", "/run/netns/no-such-netns: No such file"),
        ("\x1b[2Jevil", "--netns \\x1b[2Jevil:"),
    ];
    for (value, expected) in cases {
        let stderr = assert_refused(&["--netns", value, "--json", "port", "6304"], 1, expected);
        assert_eq!(stderr.lines().count(), 1, "--netns {value:?}: {stderr}");
    }
    std::fs::remove_file(&fifo).unwrap();
    // What is a network namespace still works: by name, and by inode number (which `-i`
    // can now enter too).
    let netns = Netns::create("netns-ok").expect("namespace");
    let inode = std::fs::metadata(&netns.path).unwrap().ino().to_string();
    for args in [
        ["--netns", netns.name.as_str(), "-i", "lo"],
        ["--netns", inode.as_str(), "-i", "lo"],
    ] {
        let mut all = args.to_vec();
        all.extend(["--json", "--duration", "0.3", "port", "6304"]);
        let (status, stdout, stderr) = run(&all);
        assert!(status.success(), "{all:?}: {stderr}");
        assert!(stdout.contains("\"type\":\"stats\""), "{all:?}: {stdout}");
    }
}

#[test]
fn bad_flags_are_usage_errors() {
    require_root();
    let _turn = serial();
    for (args, expected) in [
        (
            &["--count", "0", "port", "6305"][..],
            "invalid value '0' for '--count <N>': 0 would stop before the first event",
        ),
        (
            &["--bogus", "port", "6305"][..],
            "unexpected argument '--bogus' found",
        ),
        (
            &["port", "6305", "--bogus"][..],
            "unexpected argument '--bogus' found",
        ),
        (
            &["--pid", "0", "port", "6305"][..],
            "invalid value '0' for '--pid <PID>': 0 is not a process id",
        ),
        // After `--` it is a filter word, and the filter's parser rejects it.
        (&["--", "--bogus"][..], "unknown word '--bogus'"),
    ] {
        assert_refused(args, 2, expected);
    }
    // Filter words with options around them.
    let (status, stdout, stderr) = run(&["not", "port", "53", "--json", "--duration", "0.3"]);
    assert!(status.success(), "{stderr}");
    assert!(stdout.contains("\"filter\":\"not port 53\""), "{stdout}");
}

#[test]
fn sigint_right_after_ready_always_gives_the_summary() {
    require_root();
    let _turn = serial();
    // Busy CPUs (the machine has two) widen the window between `ready` and the wait for
    // signals: before the fix, 7 of 7 such tries died without a summary.
    let spin = Arc::new(AtomicBool::new(true));
    let hogs: Vec<_> = (0..2)
        .map(|_| {
            let spin = Arc::clone(&spin);
            thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_mins(2);
                while spin.load(Ordering::Relaxed) && Instant::now() < deadline {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    let mut failures = Vec::new();
    for attempt in 0..10 {
        let mut child = Command::new(UDPTRACE)
            .args(["--json", "port", "6306"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting udptrace");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).expect("ready line");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let mut rest = String::new();
        stdout.read_to_string(&mut rest).expect("rest of stdout");
        let status = wait_within(&mut child, Duration::from_secs(10), "udptrace after SIGINT");
        let ready = serde_json::from_str::<Value>(&line).is_ok_and(|r| r["type"] == "ready");
        let summary = rest
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|r| r["type"] == "stats");
        if !(ready && summary && status.success()) {
            failures.push(format!(
                "try {attempt}: {status}, ready {ready}, stats {summary}"
            ));
        }
    }
    spin.store(false, Ordering::Relaxed);
    for hog in hogs {
        hog.join().unwrap();
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The lab namespaces of process `pid` (`udpt-<pid>-<n>-<role>`).
fn lab_namespaces(pid: u32) -> Vec<String> {
    let prefix = format!("udpt-{pid}-");
    std::fs::read_dir("/run/netns")
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits (at most 30 s) until process `pid` runs udptrace (/proc/PID/exe: before the exec the
/// child still shows this test process, whose handlers an earlier test may have set) and
/// catches SIGINT: its `SigCgt` mask in /proc/PID/status has bit SIGINT - 1 (proc(5)).
/// udptrace installs its handler first thing (`StopSignals` in main), before it loads
/// anything; a fixed delay instead was too short for a loaded QEMU guest, where the signal
/// came before the handler and killed it.
fn wait_until_it_catches_sigint(pid: u32) {
    let udptrace = std::fs::canonicalize(UDPTRACE).expect("the udptrace binary");
    let catches = || {
        if std::fs::read_link(format!("/proc/{pid}/exe")).ok()? != udptrace {
            return Some(false);
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let mask = status
            .lines()
            .find_map(|line| line.strip_prefix("SigCgt:"))?;
        let mask = u64::from_str_radix(mask.trim(), 16).ok()?;
        Some(mask & (1 << (libc::SIGINT - 1)) != 0)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while catches() != Some(true) {
        assert!(Instant::now() < deadline, "udptrace never caught SIGINT");
        thread::sleep(Duration::from_millis(1));
    }
}

/// Starts `udptrace lab run closed-port --trace` and waits (at most 30 s) until its first
/// namespace exists: the earliest moment a kill can leave something behind.
fn lab_with_a_namespace() -> (Child, u32) {
    let child = Command::new(UDPTRACE)
        .args(["lab", "run", "closed-port", "--trace"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting udptrace lab run");
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(30);
    while lab_namespaces(pid).is_empty() {
        assert!(Instant::now() < deadline, "lab run made no namespace");
        thread::sleep(Duration::from_millis(1));
    }
    (child, pid)
}

#[test]
fn lab_run_killed_early_leaves_no_namespace() {
    require_root();
    let _turn = serial();
    for delay_ms in [0, 100, 300] {
        let (mut child, pid) = lab_with_a_namespace();
        thread::sleep(Duration::from_millis(delay_ms));
        let killed = Instant::now();
        child.kill().expect("SIGKILL");
        child.wait().expect("reaping udptrace");
        while !lab_namespaces(pid).is_empty() && killed.elapsed() < Duration::from_secs(2) {
            thread::sleep(Duration::from_millis(5));
        }
        let left = lab_namespaces(pid);
        eprintln!(
            "SIGKILL {delay_ms} ms after the first namespace: {} left {:?} after the kill",
            left.len(),
            killed.elapsed()
        );
        assert!(left.is_empty(), "left behind: {left:?}");
        let stderr = read_all(child.stderr.take());
        assert!(
            stderr.contains("udptrace: removed lab namespace udpt-"),
            "the guardian says what it removed: {stderr}"
        );
    }
}

#[test]
fn lab_run_interrupted_early_cleans_up_before_exiting() {
    require_root();
    let _turn = serial();
    // While the tracer loads (no namespace yet), then as soon as the first namespace exists.
    for early in [true, false] {
        let (mut child, pid) = if early {
            let child = Command::new(UDPTRACE)
                .args(["lab", "run", "closed-port", "--trace"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("starting udptrace lab run");
            let pid = child.id();
            wait_until_it_catches_sigint(pid);
            (child, pid)
        } else {
            lab_with_a_namespace()
        };
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid as i32, libc::SIGINT) };
        let status = wait_within(&mut child, Duration::from_secs(15), "lab run after SIGINT");
        let left = lab_namespaces(pid);
        let stderr = read_all(child.stderr.take());
        assert!(left.is_empty(), "early {early}: left behind {left:?}");
        assert_eq!(status.code(), Some(1), "early {early}: {stderr}");
        assert!(
            stderr.contains("interrupted; the lab's namespaces were removed"),
            "early {early}: {stderr}"
        );
    }
}
