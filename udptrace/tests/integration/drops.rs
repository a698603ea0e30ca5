//! Issue 2's acceptance: drops with reasons and locations, ICMP errors, socket errors, over
//! IPv4 and IPv6, through each attach mechanism; loss accounting under a burst.

use serde_json::Value;
use udptrace::lab::scenarios::{self, Lab, Outcome};
use udptrace_common::event::SAMPLE_EVENTS_PER_SECOND;

use crate::common::{Trace, attached, events, function_probe, stats, tracepoint_exists};

/// Builds a scenario, traces it with `args` + `port <its port>`, returns lab, outcome, records.
pub fn traced(name: &str, args: &[&str]) -> (Lab, Outcome, Vec<Value>) {
    let scenario = scenarios::find(name).unwrap();
    let lab = scenario.setup().expect("lab setup");
    let port = scenario.port().to_string();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["port", &port]);
    let trace = Trace::start(&all);
    let outcome = scenario.exercise(&lab).expect("exercise");
    let records = trace.stop();
    (lab, outcome, records)
}

fn assert_closed_port(name: &str, args: &[&str], v6: bool) {
    let (lab, outcome, records) = traced(name, args);
    let client = outcome.client.local.unwrap();
    assert!(outcome.client.errors.contains(&libc::ECONNREFUSED));
    let drops = events(&records, "drop");
    let drop = drops
        .iter()
        .find(|d| d["reason"] == "NO_SOCKET")
        .unwrap_or_else(|| panic!("{name} {args:?}: no NO_SOCKET drop in {records:#?}"));
    // UDP's receive function; Linux 7.3 (Debian) inlines __udp{4,6}_lib_rcv into its caller.
    let functions = if v6 {
        ["__udp6_lib_rcv+", "udpv6_rcv+"]
    } else {
        ["__udp4_lib_rcv+", "udp_rcv+"]
    };
    let location = drop["location"].as_str().unwrap();
    assert!(functions.iter().any(|f| location.starts_with(f)), "{drop}");
    assert_eq!(drop["saddr"], client.ip().to_string());
    assert_eq!(drop["sport"], client.port());
    assert_eq!(drop["daddr"], lab.target.ip().to_string());
    assert_eq!(drop["dport"], lab.target.port());
    assert_eq!(
        drop["netns"], lab.server.inode,
        "dropped in the server's namespace"
    );
    assert_eq!(drop["ifname"], "eth0");
    let icmp = events(&records, "icmp");
    let icmp = icmp
        .first()
        .unwrap_or_else(|| panic!("{name} {args:?}: no icmp event"));
    let (icmp_type, code) = if v6 { (1, 4) } else { (3, 3) };
    assert_eq!(
        (icmp["icmp_type"].as_u64(), icmp["icmp_code"].as_u64()),
        (Some(icmp_type), Some(code))
    );
    assert_eq!(
        icmp["saddr"],
        client.ip().to_string(),
        "the ICMP error names the original datagram"
    );
    assert_eq!(icmp["dport"], lab.target.port());
    // One error per dropped datagram at most (rate limiting may suppress some): ICMPv6 errors
    // seen at icmp6_send must not be reported again at the device.
    let no_socket = drops.iter().filter(|d| d["reason"] == "NO_SOCKET").count();
    assert!(
        events(&records, "icmp").len() <= no_socket,
        "{name} {args:?}: more ICMP errors than drops: {records:#?}"
    );
    if v6 && function_probe(&records, "icmp6_error") {
        assert!(
            icmp["probe"] == "fentry" || icmp["probe"] == "kprobe",
            "{icmp}"
        );
    }
    if !args.contains(&"tracepoint") {
        // sock:inet_sk_error_report has no classic form udptrace can use (no socket pointer).
        let refused = events(&records, "sock_error");
        let refused = refused
            .first()
            .unwrap_or_else(|| panic!("{name}: no sock_error"));
        assert_eq!(refused["errno"], "ECONNREFUSED");
        assert_eq!(refused["saddr"], client.ip().to_string());
        assert_eq!(refused["daddr"], lab.target.ip().to_string());
        assert_eq!(refused["netns"], lab.client.inode);
    }
    let process_errors: Vec<_> = events(&records, "recv_error")
        .into_iter()
        .chain(events(&records, "send_error"))
        .collect();
    if !attached(&records, "recv_error") && !attached(&records, "send") {
        // Forced to tracepoints on a kernel without sock:sock_{send,recv}_length (before
        // 6.3): the process side is not observable, and the ready record says so.
        assert!(process_errors.is_empty());
        return;
    }
    assert!(
        process_errors
            .iter()
            .any(|e| e["errno"] == "ECONNREFUSED" && e["pid"] == std::process::id()),
        "the ECONNREFUSED reaches the client process: {process_errors:#?}"
    );
}

#[test]
fn closed_port_ipv4() {
    assert_closed_port("closed-port", &[], false);
}

#[test]
fn closed_port_ipv6() {
    assert_closed_port("closed-port-v6", &[], true);
}

#[test]
fn closed_port_through_raw_tracepoints() {
    assert_closed_port_forced("closed-port", "raw-tp", false);
}

#[test]
fn closed_port_through_classic_tracepoints() {
    assert_closed_port_forced("closed-port-v6", "tracepoint", true);
}

/// The closed port traced through tracepoints only. A kernel without `icmp:icmp_send` (5.10:
/// only `__icmp_send` function probes) has no tracepoint form of the core ICMP hook: there
/// udptrace must refuse in one line that names it.
fn assert_closed_port_forced(name: &str, mechanism: &str, v6: bool) {
    if tracepoint_exists("icmp", "icmp_send") {
        assert_closed_port(name, &["--probes", mechanism], v6);
        return;
    }
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_udptrace"))
        .args(["--json", "--probes", mechanism, "port", "9"])
        .output()
        .expect("running udptrace");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("cannot attach the icmp_error hook"),
        "{stderr}"
    );
}

#[test]
fn firewalled_port_is_a_netfilter_drop() {
    let (lab, _, records) = traced("firewalled-port", &[]);
    let drops = events(&records, "drop");
    assert!(!drops.is_empty());
    assert!(
        drops.iter().all(|d| d["reason"] == "NETFILTER_DROP"),
        "{drops:#?}"
    );
    assert!(drops.iter().all(|d| d["netns"] == lab.server.inode));
}

/// Drops of `reason` in the flow summaries: the kernel's per-flow totals.
fn flow_drops(records: &[Value], reason: &str) -> u64 {
    records
        .iter()
        .filter(|r| r["type"] == "flow")
        .filter_map(|r| r["drops"][reason].as_u64())
        .sum()
}

/// The `count`s of the `lost` or `sampled` records, added up.
fn reported_count(records: &[Value], kind: &str) -> u64 {
    records
        .iter()
        .filter(|r| r["type"] == kind)
        .map(|r| r["count"].as_u64().unwrap())
        .sum()
}

#[test]
fn receive_buffer_overflow_is_accounted_exactly() {
    // A one-page ring cannot hold the burst's events: what is not delivered is counted as
    // lost; delivered + lost + sampled-out drop events equal the kernel's own counter, and so
    // does the flow's drop count.
    let (_lab, outcome, records) = traced("rcvbuf-overflow", &["--ring-size", "4096"]);
    let kernel_drops = outcome.rcvbuf_errors.unwrap();
    assert!(kernel_drops > 0);
    let reported = events(&records, "drop")
        .iter()
        .filter(|d| d["reason"] == "SOCKET_RCVBUFF")
        .count() as u64;
    let stats = stats(&records);
    let lost = stats["lost"].as_u64().unwrap();
    assert!(lost > 0, "a 4 KiB ring cannot hold the burst: {stats}");
    assert_eq!(
        reported + stats["drops_lost"].as_u64().unwrap() + stats["drops_sampled"].as_u64().unwrap(),
        kernel_drops,
        "delivered + lost + sampled-out SOCKET_RCVBUFF drops == the namespace's RcvbufErrors ({stats})"
    );
    assert_eq!(
        flow_drops(&records, "SOCKET_RCVBUFF"),
        kernel_drops,
        "the flow's drop count is the kernel's, whatever the ring lost"
    );
    assert_eq!(
        reported_count(&records, "lost"),
        lost,
        "every loss is reported in `lost` records"
    );
}

#[test]
fn receive_buffer_overflow_is_sampled_and_counted_exactly() {
    // ~490 drops within a second from one flow: past SAMPLE_EVENTS_PER_SECOND per CPU, drop events
    // are sampled out, and the flow's drop count still equals the kernel's.
    let (_lab, outcome, records) = traced("rcvbuf-overflow", &["--ring-size", "4194304"]);
    let kernel_drops = outcome.rcvbuf_errors.unwrap();
    let reported = events(&records, "drop")
        .iter()
        .filter(|d| d["reason"] == "SOCKET_RCVBUFF")
        .count() as u64;
    let stats = stats(&records);
    assert_eq!(stats["lost"], 0, "a 4 MiB ring holds the burst");
    let sampled = stats["drops_sampled"].as_u64().unwrap();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    assert!(
        sampled > 0 && reported <= SAMPLE_EVENTS_PER_SECOND * cpus * 2,
        "{reported} drop events shown, {sampled} sampled out of {kernel_drops} ({stats})"
    );
    assert_eq!(
        reported + sampled,
        kernel_drops,
        "shown + sampled-out SOCKET_RCVBUFF drops == the namespace's RcvbufErrors"
    );
    assert_eq!(
        flow_drops(&records, "SOCKET_RCVBUFF"),
        kernel_drops,
        "the flow's drop count is the kernel's"
    );
    // The datagrams' device hops were sampled too, and the flow still counts every datagram.
    assert!(stats["sampled"].as_u64().unwrap() > sampled, "{stats}");
    assert_eq!(
        reported_count(&records, "sampled"),
        stats["sampled"],
        "every sampled-out event is reported in `sampled` records"
    );
    let datagrams: u64 = records
        .iter()
        .filter(|r| r["type"] == "flow")
        .map(|r| r["datagrams_a_to_b"].as_u64().unwrap() + r["datagrams_b_to_a"].as_u64().unwrap())
        .sum();
    assert_eq!(
        datagrams,
        scenarios::OVERFLOW_BURST as u64,
        "every datagram of the burst"
    );
}

#[test]
fn stack_shows_the_receive_path_under_a_closed_port_drop() {
    let (_lab, _outcome, records) = traced("closed-port", &["--stack"]);
    let drops = events(&records, "drop");
    let drop = drops
        .iter()
        .find(|d| d["reason"] == "NO_SOCKET")
        .unwrap_or_else(|| panic!("no NO_SOCKET drop in {records:#?}"));
    let frames: Vec<&str> = drop["stack"]
        .as_array()
        .unwrap_or_else(|| panic!("no stack: {drop}"))
        .iter()
        .map(|frame| frame.as_str().unwrap())
        .collect();
    let at = |prefixes: &[&str]| {
        frames
            .iter()
            .position(|frame| prefixes.iter().any(|p| frame.starts_with(p)))
            .unwrap_or_else(|| panic!("none of {prefixes:?} in {frames:?}"))
    };
    // Innermost first: UDP's receive function (Linux 7.3 inlines it into udp_rcv), under the
    // IP delivery that called it.
    let udp = at(&["__udp4_lib_rcv+", "udp_rcv+"]);
    let ip = at(&["ip_local_deliver_finish+", "ip_protocol_deliver_rcu+"]);
    assert!(udp < ip, "{frames:?}");
    assert!(
        !frames[0].starts_with("bpf_"),
        "the program's own frames are left out: {frames:?}"
    );
    let icmp = events(&records, "icmp");
    assert!(
        icmp.iter().all(|e| e["stack"].is_array()),
        "ICMP errors carry their stack: {icmp:?}"
    );
    // Other kinds never do.
    assert!(
        records
            .iter()
            .filter(|r| r["type"] == "event" && r["kind"] != "drop" && r["kind"] != "icmp")
            .all(|r| r.get("stack").is_none()),
        "{records:#?}"
    );
}

#[test]
fn without_stack_no_event_carries_one() {
    let (_lab, _outcome, records) = traced("closed-port", &[]);
    assert!(!events(&records, "drop").is_empty());
    assert!(
        records.iter().all(|r| r.get("stack").is_none()),
        "{records:#?}"
    );
}

/// Issue 17: with a socket on the port, a datagram's checksum is checked only when its reader
/// copies it (`udp_recvmsg`, net/ipv4/udp.c `csum_copy_err:`), so it is dropped in the
/// receiving process's system call: the drop names that process and its namespace (the skb's
/// device field is UDP's `dev_scratch` by then).
#[test]
fn a_readers_checksum_drop_names_the_reader() {
    use std::time::Duration;
    use udptrace::lab::peers::{Server, ServerMode, send_with_bad_checksum};

    let scenario = scenarios::find("bad-checksum").unwrap();
    let lab = scenario.setup().expect("lab setup");
    let trace = Trace::start(&["port", &scenario.port().to_string()]);
    let reader = ServerMode::Sink {
        rcvbuf: 65_536,
        read: true,
    };
    let server = Server::start(&lab.server, lab.bind, reader, Duration::from_secs(2)).unwrap();
    let sent = send_with_bad_checksum(&lab.client, lab.target, 2, 200).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let server = server.stop().unwrap();
    let records = trace.stop();
    assert_eq!(server.received, 0, "no bad datagram reaches the reader");
    let drops = events(&records, "drop");
    assert_eq!(drops.len(), sent.sent, "{records:#?}");
    for drop in drops {
        let location = drop["location"].as_str().unwrap();
        assert!(location.starts_with("udp_recvmsg+"), "{drop:#}");
        assert_eq!(drop["pid"], std::process::id(), "the reader: {drop:#}");
        assert_eq!(drop["netns"], lab.server.inode, "{drop:#}");
        // Linux 6.1 frees it there without a reason (`kfree_skb`); 5.10's is inferred.
        assert!(
            ["UDP_CSUM", "NOT_SPECIFIED"].contains(&drop["reason"].as_str().unwrap()),
            "{drop:#}"
        );
    }
}
