//! Issue 12, items 1 and 3: per-flow counts stay exact and memory stays bounded whatever the
//! number of flows. The flows are crafted with a raw socket (IPv4 + UDP headers written here,
//! sources from 198.51.100.0/24 and 203.0.113.0/24 and a range of ports) in one test namespace
//! and sent over a veth into a second, which holds the (closed or open) destination port.

use std::{
    io::{BufRead as _, BufReader},
    net::{Ipv4Addr, UdpSocket},
    ops::Range,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
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
use udptrace::lab::netns::{Netns, veth};

use crate::common::spawn_udptrace;

const RECEIVER: [u8; 4] = [192, 0, 2, 2];
/// Source addresses cycled through: hosts 1-250 of 198.51.100.0/24 and of 203.0.113.0/24.
const SOURCES: u32 = 500;
/// Datagrams per `sendmmsg`.
const BATCH: usize = 64;
/// IPv4 header (20) + UDP header (8) + 8 bytes of payload.
const PACKET: usize = 36;

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
        // The sources have no route back: reverse-path filtering would drop them before UDP
        // (off is the kernel's default in a new namespace; said explicitly).
        for key in [
            "net.ipv4.conf.all.rp_filter",
            "net.ipv4.conf.default.rp_filter",
            "net.ipv4.conf.eth0.rp_filter",
        ] {
            rx.sysctl(key, "0").expect("sysctl");
        }
        // Resolve the receiver's MAC address first: while ARP is pending the kernel queues
        // three packets of a storm and frees the rest.
        tx.enter(|| {
            UdpSocket::bind("192.0.2.1:0")?.send_to(b"arp", "192.0.2.2:9")?;
            Ok(())
        })
        .expect("warm-up datagram");
        let deadline = Instant::now() + Duration::from_secs(5);
        while rx.snmp("Udp", "NoPorts").expect("snmp") == 0 {
            assert!(
                Instant::now() < deadline,
                "the warm-up datagram never arrived"
            );
            thread::sleep(Duration::from_millis(20));
        }
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

/// The `index`-th flow's source: address `index % SOURCES`, port 10000 + `index / SOURCES`.
fn source(index: u32) -> (Ipv4Addr, u16) {
    let host = index % SOURCES;
    let address = if host < 250 {
        Ipv4Addr::new(198, 51, 100, (host + 1) as u8)
    } else {
        Ipv4Addr::new(203, 0, 113, (host - 249) as u8)
    };
    let port = 10_000 + index / SOURCES;
    (
        address,
        u16::try_from(port).expect("at most 27 million flows"),
    )
}

/// One datagram of flow `index` to 192.0.2.2:`dport`. The kernel fills in the total length,
/// the identification and the header checksum for an `IPPROTO_RAW` socket (raw(7)); a zero
/// UDP checksum means none (RFC 768).
fn packet(index: u32, dport: u16) -> [u8; PACKET] {
    let (address, sport) = source(index);
    let mut packet = [0u8; PACKET];
    packet[0] = 0x45;
    packet[2..4].copy_from_slice(&(PACKET as u16).to_be_bytes());
    packet[8] = 64;
    packet[9] = libc::IPPROTO_UDP as u8;
    packet[12..16].copy_from_slice(&address.octets());
    packet[16..20].copy_from_slice(&RECEIVER);
    packet[20..22].copy_from_slice(&sport.to_be_bytes());
    packet[22..24].copy_from_slice(&dport.to_be_bytes());
    packet[24..26].copy_from_slice(&((PACKET - 20) as u16).to_be_bytes());
    packet
}

/// Sends one datagram for each flow of `flows` to 192.0.2.2:`dport` from a raw socket in
/// `tx`, at most `per_second` a second when given; returns how many the kernel accepted.
/// Bounded: fails after a minute.
fn send_flows(
    tx: &Netns,
    flows: Range<u32>,
    dport: u16,
    per_second: Option<u32>,
) -> thread::JoinHandle<anyhow::Result<u64>> {
    tx.spawn(move || {
        // SAFETY: plain socket(2); the descriptor is owned at once.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        anyhow::ensure!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        // SAFETY: a descriptor we just created and nobody else owns.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        let destination = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(RECEIVER),
            },
            sin_zero: [0; 8],
        };
        let started = Instant::now();
        let deadline = started + Duration::from_mins(1);
        let mut sent = 0u64;
        let mut next = flows.start;
        while next < flows.end {
            anyhow::ensure!(Instant::now() < deadline, "sending took over a minute");
            let count = (flows.end - next).min(BATCH as u32);
            let mut packets: Vec<[u8; PACKET]> = (next..next + count)
                .map(|index| packet(index, dport))
                .collect();
            let mut iovecs: Vec<libc::iovec> = packets
                .iter_mut()
                .map(|packet| libc::iovec {
                    iov_base: packet.as_mut_ptr().cast(),
                    iov_len: PACKET,
                })
                .collect();
            let mut headers: Vec<libc::mmsghdr> = iovecs
                .iter_mut()
                .map(|iov| {
                    // SAFETY: an all-zero mmsghdr is valid; the pointers are set below.
                    let mut header: libc::mmsghdr = unsafe { std::mem::zeroed() };
                    header.msg_hdr.msg_name = (&raw const destination).cast_mut().cast();
                    header.msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as u32;
                    header.msg_hdr.msg_iov = iov;
                    header.msg_hdr.msg_iovlen = 1;
                    header
                })
                .collect();
            let mut offset = 0;
            while offset < headers.len() {
                // SAFETY: the headers point at `destination`, `iovecs` and `packets`, alive
                // for the call.
                let done = unsafe {
                    libc::sendmmsg(
                        socket.as_raw_fd(),
                        headers[offset..].as_mut_ptr(),
                        (headers.len() - offset) as u32,
                        0,
                    )
                };
                if done < 0 {
                    let error = std::io::Error::last_os_error();
                    anyhow::ensure!(
                        error.raw_os_error() == Some(libc::ENOBUFS) && Instant::now() < deadline,
                        "sendmmsg: {error}"
                    );
                    thread::sleep(Duration::from_millis(1));
                    continue;
                }
                offset += done as usize;
            }
            sent += u64::from(count);
            next += count;
            if let Some(rate) = per_second {
                let due = started + Duration::from_secs_f64(sent as f64 / f64::from(rate));
                thread::sleep(due.saturating_duration_since(Instant::now()));
            }
        }
        Ok(sent)
    })
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
    // Each flow twice, in two passes: counts of a flow add up across generations too.
    let mut datagrams = 0;
    for _ in 0..2 {
        datagrams += sent(send_flows(&bed.tx, 0..100_000, 4000, None));
    }
    let no_ports = bed.settled_no_ports() - before;
    let exit = run.stop();
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
