//! Issue 12, items 1 and 3: per-flow counts stay exact and memory stays bounded whatever the
//! number of flows. The flows are crafted with a raw socket (`lab::storm`: documentation-range
//! sources and a range of ports) in one test namespace and sent over a veth into a second,
//! which holds the (closed or open) destination port.

use std::{
    io::{BufRead as _, BufReader},
    net::{Ipv4Addr, UdpSocket},
    ops::Range,
    process::Child,
    sync::{
        Arc, MutexGuard,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use udptrace::lab::{
    netns::{Netns, veth},
    storm,
};

use crate::common::{Descendants, spawn_udptrace};

const RECEIVER: [u8; 4] = [192, 0, 2, 2];

/// Two namespaces joined by a veth: `tx` (192.0.2.1) crafts, `rx` (192.0.2.2) receives.
struct Bed {
    tx: Netns,
    rx: Netns,
}

impl Bed {
    fn new() -> Self {
        let tx = Netns::create("scale-tx").expect("namespace");
        let rx = Netns::create("scale-rx").expect("namespace");
        veth(&tx, "eth0", &rx, "eth0").expect("veth");
        tx.addr("eth0", "192.0.2.1/24").expect("address");
        rx.addr("eth0", "192.0.2.2/24").expect("address");
        storm::prepare(&tx, &rx, Ipv4Addr::from(RECEIVER)).expect("preparing the storm");
        Self { tx, rx }
    }

    fn no_ports(&self) -> u64 {
        self.rx.snmp("Udp", "NoPorts").expect("snmp")
    }

    /// Waits until the receiver's NoPorts stops moving (the storm's last datagrams crossed).
    fn settled_no_ports(&self) -> u64 {
        let mut last = self.no_ports();
        loop {
            thread::sleep(Duration::from_millis(300));
            let now = self.no_ports();
            if now == last {
                return now;
            }
            last = now;
        }
    }
}

/// Sends one datagram for each flow of `flows` to 192.0.2.2:`dport` (see `lab::storm`).
fn send_flows(
    tx: &Netns,
    flows: Range<u32>,
    dport: u16,
    per_second: Option<u32>,
) -> thread::JoinHandle<anyhow::Result<u64>> {
    storm::send_flows(tx, Ipv4Addr::from(RECEIVER), dport, flows, per_second)
        .expect("sender thread")
}

fn sent(handle: thread::JoinHandle<anyhow::Result<u64>>) -> u64 {
    handle
        .join()
        .expect("sender thread panicked")
        .expect("sending")
}

/// A running `udptrace --json` for storms: event records are counted, not kept (a storm
/// prints hundreds of thousands), except those containing `keep`; every other record is.
struct Run {
    _serial: MutexGuard<'static, ()>,
    child: Child,
    lines: mpsc::Receiver<(Instant, Value)>,
    events: Arc<AtomicU64>,
    records: Vec<(Instant, Value)>,
}

/// What a run left at exit.
struct Exit {
    records: Vec<Value>,
    /// From SIGINT to the process's end.
    took: Duration,
    /// Peak resident set (VmHWM), KiB.
    peak_kib: u64,
}

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

impl Run {
    fn start(args: &[&str], keep: &'static str) -> Self {
        let (serial, child, stdout) = spawn_udptrace(args);
        let (sender, lines) = mpsc::channel();
        let events = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&events);
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with(r#"{"type":"event""#) {
                    counted.fetch_add(1, Ordering::Relaxed);
                    if keep.is_empty() || !line.contains(keep) {
                        continue;
                    }
                }
                let value: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("udptrace printed a non-JSON line {line:?}: {e}"));
                if sender.send((Instant::now(), value)).is_err() {
                    break;
                }
            }
        });
        let mut run = Self {
            _serial: serial,
            child,
            lines,
            events,
            records: Vec::new(),
        };
        let ready = run.wait_for(Instant::now() + Duration::from_secs(30), |r| {
            r["type"] == "ready"
        });
        assert!(ready.is_some(), "udptrace did not become ready within 30 s");
        run
    }

    /// The first record (from now on) matching `wanted` before `deadline`, with its arrival.
    fn wait_for(
        &mut self,
        deadline: Instant,
        wanted: impl Fn(&Value) -> bool,
    ) -> Option<(Instant, Value)> {
        while let Ok(record) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.records.push(record.clone());
            if wanted(&record.1) {
                return Some(record);
            }
        }
        None
    }

    /// SIGINT; waits for the exit summary and the end of the process.
    fn stop(mut self) -> Exit {
        let pid = self.child.id();
        let mut peak_kib = vm_hwm_kib(pid).expect("VmHWM of a live udptrace");
        let interrupted = Instant::now();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid as i32, libc::SIGINT) };
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("waiting for udptrace") {
                break status;
            }
            // The summary is written after the signal: its memory counts too.
            peak_kib = peak_kib.max(vm_hwm_kib(pid).unwrap_or(0));
            assert!(
                interrupted.elapsed() < Duration::from_secs(30),
                "udptrace still running 30 s after SIGINT"
            );
            thread::sleep(Duration::from_millis(2));
        };
        let took = interrupted.elapsed();
        assert!(status.success(), "udptrace exited with {status}");
        while let Ok(record) = self.lines.recv_timeout(Duration::from_secs(10)) {
            self.records.push(record);
        }
        let records: Vec<Value> = self.records.drain(..).map(|(_, value)| value).collect();
        assert!(
            records.iter().any(|r| r["type"] == "stats"),
            "no stats record at exit"
        );
        Exit {
            records,
            took,
            peak_kib,
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn record<'a>(records: &'a [Value], kind: &str) -> &'a Value {
    records
        .iter()
        .find(|r| r["type"] == kind)
        .unwrap_or_else(|| panic!("no {kind} record"))
}

fn flows(records: &[Value]) -> Vec<&Value> {
    records.iter().filter(|r| r["type"] == "flow").collect()
}

/// `reason` drops of the listed flows and of the other-flows aggregate.
fn drops(records: &[Value], reason: &str) -> (u64, u64) {
    let listed = flows(records)
        .iter()
        .map(|flow| flow["drops"][reason].as_u64().unwrap_or(0))
        .sum();
    let other = record(records, "other_flows")["drops"][reason]
        .as_u64()
        .unwrap_or(0);
    (listed, other)
}

/// The evicted-flows counter agrees between `stats` and `other_flows`, and the table kept at
/// most `max` flows.
fn assert_bounded(records: &[Value], max: usize) {
    let stats = record(records, "stats");
    let other = record(records, "other_flows");
    assert!(
        flows(records).len() <= max,
        "{} flows listed",
        flows(records).len()
    );
    assert_eq!(
        stats["flows_evicted"], other["flows_evicted"],
        "{stats}\n{other}"
    );
    assert_eq!(
        stats["kernel_overflow_events"], other["kernel_overflow_events"],
        "{stats}\n{other}"
    );
    assert_eq!(stats["uncounted"], 0, "{stats}");
}

#[test]
fn closed_port_drops_of_100k_flows_add_up_to_no_ports() {
    let bed = Bed::new();
    let before = bed.no_ports();
    let run = Run::start(&["dst", "port", "4000"], "");
    let descendants = Descendants::of(run.child.id());
    // Each flow twice, in two passes: counts of a flow add up across generations too.
    let mut datagrams = 0;
    for _ in 0..2 {
        datagrams += sent(send_flows(&bed.tx, 0..100_000, 4000, None));
    }
    let no_ports = bed.settled_no_ports() - before;
    let exit = run.stop();
    // Nothing udptrace learns about 100,000 new flows' sockets may cost a process (it used to
    // run `ss` for each new flow with a NO_SOCKET drop).
    let spawned = descendants.spawned();
    assert!(
        spawned.is_empty(),
        "udptrace started processes: {spawned:?}"
    );
    let records = &exit.records;
    let (listed, other) = drops(records, "NO_SOCKET");
    eprintln!(
        "100k flows: NoPorts {no_ports}, NO_SOCKET drops {listed} listed + {other} other flows; {}",
        record(records, "stats")
    );
    assert_eq!(
        listed + other,
        no_ports,
        "NO_SOCKET drops of the flows ({listed}) and of the other flows ({other}) == the \
         receiver's NoPorts delta ({datagrams} datagrams sent): {}\n{}",
        record(records, "stats"),
        record(records, "other_flows")
    );
    assert!(
        no_ports * 10 >= datagrams * 9,
        "the storm reached the closed port: {no_ports} of {datagrams}"
    );
    assert_bounded(records, udptrace::flows::table::DEFAULT_MAX_FLOWS);
    assert!(
        record(records, "stats")["flows_evicted"].as_u64().unwrap() > 0,
        "100,000 flows cannot fit the default table"
    );
}

#[test]
fn a_million_flows_keep_memory_bounded_and_exit_within_a_second() {
    const PEAK_MIB: u64 = 128;
    let bed = Bed::new();
    // A wildcard-bound server (its requests are remembered per client, bounded too).
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = Arc::clone(&stop);
    let (bound_tx, bound) = mpsc::channel();
    let server = bed
        .rx
        .spawn(move || {
            let socket = UdpSocket::bind("0.0.0.0:4001")?;
            socket.set_read_timeout(Some(Duration::from_millis(50)))?;
            let _ = bound_tx.send(());
            let mut buffer = [0u8; 64];
            let mut received = 0u64;
            let deadline = Instant::now() + Duration::from_mins(2);
            while !stopping.load(Ordering::Relaxed) && Instant::now() < deadline {
                if socket.recv_from(&mut buffer).is_ok() {
                    received += 1;
                }
            }
            Ok(received)
        })
        .expect("server thread");
    bound
        .recv_timeout(Duration::from_secs(5))
        .expect("server bound");
    let run = Run::start(&["dst", "port", "4001"], "");
    let datagrams = sent(send_flows(&bed.tx, 0..1_000_000, 4001, None));
    // The last generation is drained on the next tick; what remains is read at exit anyway.
    thread::sleep(Duration::from_millis(1_200));
    let exit = run.stop();
    stop.store(true, Ordering::Relaxed);
    let received = server
        .join()
        .expect("server thread panicked")
        .expect("server");
    let records = &exit.records;
    eprintln!(
        "1M flows: peak RSS {} KiB, exit {:?} after SIGINT, {received} datagrams received; {}",
        exit.peak_kib,
        exit.took,
        record(records, "stats")
    );
    assert!(
        exit.peak_kib < PEAK_MIB * 1024,
        "peak RSS {} KiB over {PEAK_MIB} MiB",
        exit.peak_kib
    );
    assert!(
        exit.took < Duration::from_secs(1),
        "exit took {:?} after SIGINT",
        exit.took
    );
    // Every datagram counted once, at the first device it crossed, in its flow or in the
    // other flows.
    let listed: u64 = flows(records)
        .iter()
        .map(|flow| {
            flow["datagrams_a_to_b"].as_u64().unwrap() + flow["datagrams_b_to_a"].as_u64().unwrap()
        })
        .sum();
    let other = record(records, "other_flows")["datagrams"]
        .as_u64()
        .unwrap();
    assert_eq!(
        listed + other,
        datagrams,
        "{}",
        record(records, "other_flows")
    );
    assert_bounded(records, udptrace::flows::table::DEFAULT_MAX_FLOWS);
}

#[test]
fn a_storm_of_new_flows_does_not_hide_another_flows_drop() {
    const STORM_PER_SECOND: u32 = 10_000;
    const PROBES: u64 = 30;
    let bed = Bed::new();
    // A table larger than the storm: this test is about the kernel and the ring, and a flow
    // evicted by the storm would split its count (tested above).
    let mut run = Run::start(
        &[
            "--max-flows",
            "100000",
            "dst",
            "port",
            "4002",
            "or",
            "dst",
            "port",
            "4003",
        ],
        r#""dport":4003"#,
    );
    let storm = send_flows(
        &bed.tx,
        0..3 * STORM_PER_SECOND,
        4002,
        Some(STORM_PER_SECOND),
    );
    // Let the storm run before the flow to find starts.
    thread::sleep(Duration::from_millis(500));
    let probe = bed
        .tx
        .spawn(|| {
            let socket = UdpSocket::bind("192.0.2.1:0")?;
            for _ in 0..PROBES {
                socket.send_to(b"probe", "192.0.2.2:4003")?;
                thread::sleep(Duration::from_millis(100));
            }
            Ok(socket.local_addr()?.port())
        })
        .expect("probe thread");
    let first_probe = Instant::now();
    // Reported live: its drop within a second, or a loss report within a second (the drop
    // may be among the events a full ring lost; then the loss is what is shown).
    let seen = run.wait_for(first_probe + Duration::from_secs(1), |r| {
        (r["type"] == "event" && r["kind"] == "drop" && r["dport"] == 4003) || r["type"] == "lost"
    });
    assert!(
        seen.is_some(),
        "neither the probe flow's drop nor a loss was reported within a second of its first \
         datagram ({} storm events so far)",
        run.events.load(Ordering::Relaxed)
    );
    let storm_sent = sent(storm);
    let port = probe.join().expect("probe thread panicked").expect("probe");
    let exit = run.stop();
    let records = &exit.records;
    let shown = records
        .iter()
        .filter(|r| r["type"] == "event" && r["kind"] == "drop" && r["dport"] == 4003)
        .count();
    assert!(
        shown > 0,
        "none of the probe flow's {PROBES} drops was shown during a storm of {storm_sent} \
         new flows: {}",
        record(records, "stats")
    );
    let probe_flow = flows(records)
        .into_iter()
        .find(|flow| flow["a"] == format!("192.0.2.1:{port}"))
        .unwrap_or_else(|| panic!("no flow for the probe's port {port}"));
    assert_eq!(
        probe_flow["drops"]["NO_SOCKET"], PROBES,
        "every probe datagram counted in its flow: {probe_flow}"
    );
}
