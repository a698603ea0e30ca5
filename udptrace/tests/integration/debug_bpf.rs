//! `--debug-bpf`: the kernel programs say on stderr why they skipped an event, and say nothing
//! without the flag.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    net::{SocketAddr, UdpSocket},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use crate::common::{client_and_server, serial};

const TRACED_PORT: u16 = 6121;
const OTHER_PORT: u16 = 6122;

/// Traces `port TRACED_PORT` (with `--debug-bpf` when `debug`) while a client namespace sends
/// three datagrams to a closed OTHER_PORT of a server namespace; returns udptrace's stderr.
fn stderr_of_a_trace(debug: bool) -> String {
    let (client, _server) = client_and_server("dbg", "198.51.100");
    let _turn = serial();
    let port = TRACED_PORT.to_string();
    let mut args = vec!["--json", "--duration", "4", "port", &port];
    if debug {
        args.insert(0, "--debug-bpf");
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_udptrace"))
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting udptrace");
    let stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let (ready_sender, ready) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.contains(r#""type":"ready""#) {
                let _ = ready_sender.send(());
            }
        }
    });
    let collected = thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    // Loading and verifying the programs takes seconds under QEMU's emulation (the kernel
    // matrix), more with the logging path in them: the same bound as `common::Trace`.
    ready
        .recv_timeout(Duration::from_secs(30))
        .expect("udptrace ready within 30 s");
    let started = Instant::now();
    let target: SocketAddr = format!("198.51.100.2:{OTHER_PORT}").parse().unwrap();
    client
        .spawn(move || {
            let socket = UdpSocket::bind("0.0.0.0:0")?;
            for _ in 0..3 {
                socket.send_to(b"not traced", target)?;
                thread::sleep(Duration::from_millis(50));
            }
            Ok(())
        })
        .unwrap()
        .join()
        .unwrap()
        .unwrap();
    let status = child.wait().expect("waiting for udptrace");
    assert!(status.success(), "udptrace exited with {status}");
    // `--duration 4` ends the run 4 s after it became ready.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "--duration 4 ran {:?}",
        started.elapsed()
    );
    collected.join().unwrap()
}

#[test]
fn debug_bpf_logs_why_events_were_skipped_and_is_silent_without_the_flag() {
    let skipped = "skipped by the filter: 198.51.100.1:";
    let with_flag = stderr_of_a_trace(true);
    let lines: Vec<&str> = with_flag
        .lines()
        .filter(|line| line.starts_with("udptrace: bpf: "))
        .collect();
    assert!(
        lines
            .iter()
            .any(|line| line.contains(skipped)
                && line.contains(&format!("198.51.100.2:{OTHER_PORT}"))),
        "no skip reason for the datagrams to port {OTHER_PORT} in:\n{with_flag}"
    );
    let without_flag = stderr_of_a_trace(false);
    assert!(
        !without_flag.contains("udptrace: bpf:"),
        "kernel diagnostics without --debug-bpf:\n{without_flag}"
    );
}
