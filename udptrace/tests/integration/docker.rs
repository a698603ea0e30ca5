//! Issue 15: the Docker incidents with a real Docker (Debian's docker.io): one private dockerd
//! in a namespace of the test (docker0, its iptables rules and docker-proxy live there), netcat
//! containers from an empty imported image, every `docker-...` lab scenario traced, and
//! nothing left behind afterwards.

use std::{collections::BTreeSet, path::Path};

use serde_json::Value;
use udptrace::lab::{
    docker::{
        BRIDGE_ADDRESS, Container, DOCKER_SCENARIOS, DockerHost, DockerOutcome, HOST_ADDRESS,
        IMAGE, REQUESTS,
    },
    scenarios,
};

use crate::common::{Trace, events, require_root, verdicts};

/// What must be gone once the Docker host is dropped.
struct Leftovers {
    daemon: u32,
    netns: String,
    socket: std::path::PathBuf,
    containers: Vec<u32>,
    proxies: Vec<u32>,
}

impl Leftovers {
    fn assert_gone(&self) {
        let alive = |pid: &u32| Path::new(&format!("/proc/{pid}")).exists();
        assert!(!alive(&self.daemon), "dockerd {} still runs", self.daemon);
        let containers: Vec<&u32> = self.containers.iter().filter(|p| alive(p)).collect();
        assert!(
            containers.is_empty(),
            "container processes left: {containers:?}"
        );
        let proxies: Vec<&u32> = self.proxies.iter().filter(|p| alive(p)).collect();
        assert!(
            proxies.is_empty(),
            "docker-proxy processes left: {proxies:?}"
        );
        // docker0 and every iptables rule dockerd installed lived in this namespace only.
        assert!(
            !Path::new("/run/netns").join(&self.netns).exists(),
            "namespace {} (docker0, its iptables rules) left",
            self.netns
        );
        assert!(!self.socket.exists(), "the daemon's state is left");
    }
}

#[test]
fn docker_scenarios_with_a_real_dockerd() {
    require_root();
    if let Some(missing) = DockerHost::missing() {
        panic!("the Docker tests need Docker: {missing}");
    }
    let host = DockerHost::start().expect("a private dockerd");
    let mut leftovers = Leftovers {
        daemon: host.docker.pid(),
        netns: host.netns.name.clone(),
        socket: host.docker.socket(),
        containers: Vec::new(),
        proxies: Vec::new(),
    };
    // Drops the host (containers, daemon, namespace) whether the scenarios passed or not,
    // then checks that nothing is left, then reports the first failure.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // The tracer names containers by asking this daemon.
        let docker_host = format!("unix://{}", host.docker.socket().display());
        for scenario in DOCKER_SCENARIOS {
            let filter = scenario.filter();
            let trace = Trace::start_with(
                &filter.iter().map(String::as_str).collect::<Vec<_>>(),
                &[("DOCKER_HOST", &docker_host)],
            );
            let outcome = scenario.exercise(&host).expect("exercise");
            let records = trace.stop();
            leftovers.containers.push(outcome.client.pid);
            leftovers
                .containers
                .extend(outcome.server.iter().map(|s| s.pid));
            leftovers.proxies.extend(&outcome.proxies);
            check(scenario.name, scenario.expected, &outcome, &records);
        }
    }));
    drop(host);
    leftovers.assert_gone();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

fn check(name: &str, expected: &[&str], outcome: &DockerOutcome, records: &[Value]) {
    let context = || format!("{name}: {}\n{records:#?}", outcome.describe());
    let found: BTreeSet<&str> = verdicts(records)
        .iter()
        .map(|v| v["code"].as_str().unwrap())
        .collect();
    assert_eq!(found, expected.iter().copied().collect(), "{}", context());
    // Every request crossed the container's netns into the Docker host's: the trace saw
    // the client container's namespace by its inode.
    let in_client = records
        .iter()
        .filter(|r| r["type"] == "event" && r["netns"] == outcome.client.netns_inode)
        .count();
    assert!(
        in_client > 0,
        "no event in the client container's namespace: {}",
        context()
    );
    for container in std::iter::once(&outcome.client).chain(&outcome.server) {
        assert_named(records, container, &context);
    }
    if expected.is_empty() {
        assert_eq!(outcome.replies.len(), REQUESTS, "healthy: {}", context());
        assert!(events(records, "drop").is_empty(), "healthy: {}", context());
        return;
    }
    assert!(
        outcome.replies.is_empty(),
        "the replies were dropped: {}",
        context()
    );
    let verdict = verdicts(records)[0];
    let summary = verdict["summary"].as_str().unwrap();
    let fix = verdict["fix"].as_str().unwrap();
    assert!(
        summary.contains(&format!("sent to {HOST_ADDRESS}:")),
        "{summary}"
    );
    assert!(
        summary.contains(&format!("came from {BRIDGE_ADDRESS}:")),
        "{summary}"
    );
    assert!(
        summary.contains("goes out docker0 (Docker's default bridge network)"),
        "{summary}"
    );
    // Its replies died in the client container: NO_SOCKET drops in its namespace.
    assert!(
        events(records, "drop")
            .iter()
            .any(|d| d["reason"] == "NO_SOCKET" && d["netns"] == outcome.client.netns_inode),
        "{}",
        context()
    );
    if outcome.server.is_some() {
        let proxy = outcome.proxies.first().expect("a docker-proxy process");
        assert!(
            summary.contains(&format!(
                "owned by docker-proxy[{proxy}] (Docker's userland proxy for port {} published \
                 on every host address)",
                outcome.target.port()
            )),
            "{summary}"
        );
        assert!(
            fix.contains(&format!("docker run -p {}:PORT/udp", outcome.target)),
            "{fix}"
        );
        assert!(fix.contains("--userland-proxy=false"), "{fix}");
    } else {
        assert!(fix.contains("IP_PKTINFO"), "{fix}");
    }
}

/// Every event in a container's namespace carries its container (runtime and id from the
/// cgroup of a process in it; name and image from the daemon, which the tracer learns from
/// Docker's `start` event before the first datagram), and its namespace reads
/// `ctr NAME (docker SHORT-ID)`.
fn assert_named(records: &[Value], container: &Container, context: &dyn Fn() -> String) {
    let inside: Vec<&Value> = records
        .iter()
        .filter(|r| r["type"] == "event" && r["netns"] == container.netns_inode)
        .collect();
    assert!(
        !inside.is_empty(),
        "no event in {}: {}",
        container.name,
        context()
    );
    let label = format!("ctr {} (docker {})", container.name, &container.id[..12]);
    for event in inside {
        assert_eq!(event["netns_name"], label.as_str(), "{event:#}");
        let object = &event["container"];
        assert_eq!(object["runtime"], "docker", "{event:#}");
        assert_eq!(object["id"], container.id.as_str(), "{event:#}");
        assert_eq!(object["name"], container.name.as_str(), "{event:#}");
        assert_eq!(object["image"], IMAGE, "{event:#}");
    }
}

/// Without an answering runtime, names are as before and nothing waits: DOCKER_HOST names a
/// socket that accepts connections but never answers (bollard's requests time out on the
/// background thread), and the lab's closed-port incident is traced as always.
#[test]
fn a_silent_runtime_changes_nothing() {
    require_root();
    let scratch = tempdir("silent-docker");
    let socket = scratch.join("sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let scenario = scenarios::find("closed-port").unwrap();
    let lab = scenario.setup().expect("lab setup");
    let trace = Trace::start_with(
        &["port", &scenario.port().to_string()],
        &[("DOCKER_HOST", &format!("unix://{}", socket.display()))],
    );
    let outcome = scenario.exercise(&lab).expect("exercise");
    let records = trace.stop();
    let _ = std::fs::remove_dir_all(&scratch);
    let names: BTreeSet<&str> = lab.namespaces().iter().map(|n| n.name.as_str()).collect();
    let found = verdicts(&records);
    assert_eq!(found.len(), 1, "{}: {records:#?}", outcome.describe());
    assert_eq!(found[0]["code"], "port_unreachable");
    let traced: Vec<&Value> = records.iter().filter(|r| r["type"] == "event").collect();
    assert!(!traced.is_empty());
    for event in traced {
        assert!(event.get("container").is_none(), "{event:#}");
        assert!(
            names.contains(event["netns_name"].as_str().unwrap_or_default()),
            "the lab's own namespace names: {event:#}"
        );
    }
}

fn tempdir(what: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("udptrace-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
