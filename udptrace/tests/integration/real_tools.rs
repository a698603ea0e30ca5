//! Issue 5: the same verdicts with real tools (netcat-openbsd, a Python server) on other ports
//! and addresses than the lab's, and with several incidents at once.

use std::{
    collections::BTreeSet,
    io::{BufRead as _, BufReader, Write as _},
    process::{Child, Command, Stdio},
    thread,
    time::Duration,
};

use serde_json::Value;
use udptrace::lab::{
    netns::{Netns, veth},
    scenarios,
};

use crate::common::{Trace, events, function_probe, verdicts};

const UPLINK: &str = "198.51.100.10";
const BRIDGE: &str = "203.0.113.1";
const CONTAINER: &str = "203.0.113.2";

/// A Docker-like host (bridge + uplink) with a container, on addresses the lab does not use.
fn docker_host() -> (Netns, Netns) {
    let host = Netns::create("rt-host").unwrap();
    let container = Netns::create("rt-ctr").unwrap();
    host.ip(&["link", "add", "docker0", "type", "bridge"])
        .unwrap();
    host.ip(&["link", "set", "docker0", "up"]).unwrap();
    host.ip(&[
        "link",
        "add",
        "eth0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0-peer",
    ])
    .unwrap();
    host.ip(&["link", "set", "eth0", "up"]).unwrap();
    veth(&host, "vethc", &container, "eth0").unwrap();
    host.ip(&["link", "set", "vethc", "master", "docker0"])
        .unwrap();
    host.ip(&["addr", "add", &format!("{BRIDGE}/24"), "dev", "docker0"])
        .unwrap();
    host.ip(&["addr", "add", &format!("{UPLINK}/24"), "dev", "eth0"])
        .unwrap();
    container
        .ip(&["addr", "add", &format!("{CONTAINER}/24"), "dev", "eth0"])
        .unwrap();
    container
        .ip(&["route", "add", "default", "via", BRIDGE])
        .unwrap();
    (host, container)
}

fn spawn_in(netns: &Netns, program: &str, args: &[&str]) -> Child {
    Command::new("ip")
        .args(["netns", "exec", &netns.name, program])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e} (cargo xtask setup installs it)"))
}

fn codes(records: &[Value]) -> BTreeSet<String> {
    verdicts(records)
        .iter()
        .map(|v| v["code"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn netcat_on_both_ends() {
    let (host, container) = docker_host();
    let trace = Trace::start(&["port", "6200"]);
    let mut server = spawn_in(&host, "nc", &["-u", "-l", "6200"]);
    thread::sleep(Duration::from_millis(300));
    let mut client = spawn_in(&container, "nc", &["-u", UPLINK, "6200"]);
    let say = |child: &mut Child, text: &str| {
        let _ = child.stdin.as_mut().unwrap().write_all(text.as_bytes());
        let _ = child.stdin.as_mut().unwrap().flush();
        thread::sleep(Duration::from_millis(400));
    };
    // Seed 001's order: the first datagram makes the server connect() to the client (from
    // the bridge address); the second, to the uplink address, finds no matching socket; the
    // server's reply leaves from the bridge address. (Replying first would make the client's
    // ICMP error end the server nc, and the second datagram would meet a closed port.)
    say(&mut client, "first\n");
    say(&mut client, "second\n");
    say(&mut server, "reply\n");
    let _ = server.kill();
    let _ = client.kill();
    let _ = server.wait();
    let _ = client.wait();
    let records = trace.stop();
    assert_eq!(
        codes(&records),
        BTreeSet::from([
            "connected_socket_mismatch".to_owned(),
            "reply_source_mismatch".to_owned()
        ]),
        "{records:#?}"
    );
    let mismatch = verdicts(&records)
        .into_iter()
        .find(|v| v["code"] == "reply_source_mismatch")
        .unwrap();
    let summary = mismatch["summary"].as_str().unwrap();
    assert!(
        summary.contains(&format!("sent to {UPLINK}:6200")),
        "{summary}"
    );
    assert!(
        summary.contains(&format!("came from {BRIDGE}:6200")),
        "{summary}"
    );
    assert!(
        summary.contains("nc["),
        "names the server process: {summary}"
    );
    // Where the kernel allows function probes, the verdicts also say how the sockets were
    // used (the kernel matrix runs this with them; this machine without).
    if function_probe(&records, "send") {
        assert!(
            summary.contains("replying with send() without IP_PKTINFO"),
            "{summary}"
        );
    }
    let pinned = verdicts(&records)
        .into_iter()
        .find(|v| v["code"] == "connected_socket_mismatch")
        .unwrap();
    let pinned = pinned["summary"].as_str().unwrap();
    if function_probe(&records, "connect") {
        assert!(
            pinned.contains(&format!(
                "pinned it to local address {BRIDGE}:6200 and peer {CONTAINER}:"
            )),
            "{pinned}"
        );
    }
    if function_probe(&records, "lookup") {
        // The second datagram's lookup found no socket; the first found the server's.
        let lookups = events(&records, "lookup");
        assert!(
            lookups
                .iter()
                .any(|e| e["daddr"] == UPLINK && e["socket"].is_null()),
            "{lookups:#?}"
        );
        assert!(
            lookups
                .iter()
                .any(|e| e["socket"]["local"] == "0.0.0.0:6200"),
            "{lookups:#?}"
        );
    } else {
        assert!(events(&records, "lookup").is_empty());
    }
}

#[test]
fn python_server_bound_to_the_wildcard() {
    let (host, container) = docker_host();
    let trace = Trace::start(&["port", "6201"]);
    let server = r"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(('0.0.0.0', 6201))
print('ready', flush=True)
s.settimeout(3)
for _ in range(2):
    data, peer = s.recvfrom(100)
    s.sendto(data, peer)
";
    let client = format!(
        r"
import socket, time
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
c.connect(('{UPLINK}', 6201))
c.settimeout(0.3)
for _ in range(2):
    c.send(b'ping')
    try:
        c.recv(100)
    except OSError:
        pass
"
    );
    let mut server = spawn_in(&host, "python3", &["-c", server]);
    // Python starts in seconds under emulation (the kernel matrix): wait for the bind.
    let mut ready = String::new();
    BufReader::new(server.stdout.as_mut().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready.trim(), "ready");
    let mut client = spawn_in(&container, "python3", &["-c", &client]);
    assert!(client.wait().unwrap().success());
    let _ = server.wait();
    let records = trace.stop();
    assert_eq!(
        codes(&records),
        BTreeSet::from(["reply_source_mismatch".to_owned()]),
        "{records:#?}"
    );
    let verdict = &verdicts(&records)[0];
    assert_eq!(verdict["count"], 2);
    assert!(verdict["summary"].as_str().unwrap().contains("python3["));
}

#[test]
fn several_incidents_at_once_keep_their_verdicts() {
    let names = [
        "closed-port",
        "wrong-source-reply",
        "rcvbuf-overflow",
        "firewalled-port",
        "bound-server",
    ];
    let labs: Vec<_> = names
        .iter()
        .map(|name| {
            let scenario = scenarios::find(name).unwrap();
            (scenario, scenario.setup().unwrap())
        })
        .collect();
    // No filter: every UDP event of the host, the five incidents interleaved.
    let trace = Trace::start(&[]);
    thread::scope(|scope| {
        for (scenario, lab) in &labs {
            scope.spawn(move || scenario.exercise(lab).unwrap());
        }
    });
    let records = trace.stop();
    for (scenario, lab) in &labs {
        let port = lab.target.port().to_string();
        let own: BTreeSet<&str> = verdicts(&records)
            .iter()
            .filter(|v| {
                // Exactly this port at either end (not an ephemeral port that starts with it).
                v["flow"]
                    .as_str()
                    .unwrap()
                    .split(" <> ")
                    .flat_map(|end| end.split(" > "))
                    .any(|end| end.ends_with(&format!(":{port}")))
            })
            .map(|v| v["code"].as_str().unwrap())
            .collect();
        let expected: BTreeSet<&str> = scenario.expected.iter().copied().collect();
        assert_eq!(own, expected, "{}", scenario.name);
    }
}
