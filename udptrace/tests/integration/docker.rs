//! Issue 15: the Docker incidents with a real Docker (Debian's docker.io): one private dockerd
//! in a namespace of the test (docker0, its iptables rules and docker-proxy live there), netcat
//! containers from an empty imported image, every `docker-...` lab scenario traced, and
//! nothing left behind afterwards.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    process::Command,
    time::Duration,
};

use serde_json::Value;
use udptrace::lab::{
    docker::{
        BRIDGE_ADDRESS, Container, DOCKER_SCENARIOS, DockerHost, DockerOutcome, HOST_ADDRESS,
        IMAGE, REQUESTS,
    },
    peers::{Server, ServerMode},
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

/// A private dockerd in a namespace of the test; the tests fail (never skip) without Docker.
fn docker_host() -> DockerHost {
    require_root();
    if let Some(missing) = DockerHost::missing() {
        panic!("the Docker tests need Docker: {missing}");
    }
    DockerHost::start().expect("a private dockerd")
}

#[test]
fn docker_scenarios_with_a_real_dockerd() {
    let host = docker_host();
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
    // The client is a container: the verdict names it, in words and as an object.
    let client = &outcome.client;
    assert!(
        summary.contains(&format!(
            " in container {} (docker {}) sent to {HOST_ADDRESS}:",
            client.name,
            &client.id[..12]
        )),
        "{summary}"
    );
    let facts = &verdict["facts"];
    assert_eq!(
        facts["client_container"]["id"],
        client.id.as_str(),
        "{facts:#}"
    );
    assert_eq!(
        facts["client_container"]["name"],
        client.name.as_str(),
        "{facts:#}"
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

/// Without an answering runtime, names are as before, nothing waits and nothing is said:
/// DOCKER_HOST and CONTAINER_HOST (Podman's) name sockets that do not exist (no runtime: no
/// thread is started), then sockets that accept connections but never answer (bollard's
/// requests time out on the background thread, after 5 s: containers.rs `API_TIMEOUT_SECS`).
/// Each time the lab's closed-port incident is traced as always: ready and its verdict shown
/// well within that timeout, the lab's own namespace names, no container, and udptrace
/// writes nothing to stderr.
#[test]
fn a_silent_runtime_changes_nothing() {
    require_root();
    let scratch = tempdir("silent-docker");
    let socket = scratch.join("sock");
    let podman_socket = scratch.join("podman.sock");
    traced_as_always("no runtime", &socket, &podman_socket);
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let _podman_listener = std::os::unix::net::UnixListener::bind(&podman_socket).unwrap();
    traced_as_always("a silent runtime", &socket, &podman_socket);
    let _ = std::fs::remove_dir_all(&scratch);
}

/// The closed-port incident traced with DOCKER_HOST and CONTAINER_HOST naming `socket` and
/// `podman_socket`: as without them (see `a_silent_runtime_changes_nothing`).
fn traced_as_always(case: &str, socket: &Path, podman_socket: &Path) {
    // Below the API client's 5 s timeout: anything that waited for the runtime exceeds it.
    let prompt = Duration::from_secs(3);
    let scenario = scenarios::find("closed-port").unwrap();
    let lab = scenario.setup().expect("lab setup");
    let (mut trace, stderr) = Trace::start_capturing_stderr(
        &["port", &scenario.port().to_string()],
        &[
            ("DOCKER_HOST", &format!("unix://{}", socket.display())),
            (
                "CONTAINER_HOST",
                &format!("unix://{}", podman_socket.display()),
            ),
        ],
    );
    assert!(
        trace.ready_after < prompt,
        "{case}: ready after {:?}",
        trace.ready_after
    );
    let outcome = scenario.exercise(&lab).expect("exercise");
    let shown = trace.wait_for(prompt, |r| r["type"] == "verdict");
    let records = trace.stop();
    assert!(
        shown,
        "{case}: no verdict within {prompt:?} of the incident: {records:#?}"
    );
    assert_eq!(stderr.join().unwrap(), "", "{case}: udptrace's stderr");
    let names: BTreeSet<&str> = lab.namespaces().iter().map(|n| n.name.as_str()).collect();
    let found = verdicts(&records);
    assert_eq!(
        found.len(),
        1,
        "{case}: {}: {records:#?}",
        outcome.describe()
    );
    assert_eq!(found[0]["code"], "port_unreachable", "{case}");
    let traced: Vec<&Value> = records.iter().filter(|r| r["type"] == "event").collect();
    assert!(!traced.is_empty(), "{case}");
    for event in traced {
        assert!(event.get("container").is_none(), "{case}: {event:#}");
        assert!(
            names.contains(event["netns_name"].as_str().unwrap_or_default()),
            "{case}: the lab's own namespace names: {event:#}"
        );
    }
}

fn tempdir(what: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("udptrace-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Port of the filter test (this task's range, 5600-5649).
const FILTER_PORT: u16 = 5600;
/// The kubelet's labels of pods shop/web and shop/db (Docker as a pod's runtime: dockershim,
/// cri-dockerd).
const POD_WEB: [&str; 4] = [
    "--label",
    "io.kubernetes.pod.namespace=shop",
    "--label",
    "io.kubernetes.pod.name=web",
];
const POD_DB: [&str; 4] = [
    "--label",
    "io.kubernetes.pod.namespace=shop",
    "--label",
    "io.kubernetes.pod.name=db",
];

/// `--container` and `--pod` with a real dockerd: two netcat containers talk to an
/// IP_PKTINFO echo server on the Docker host at the same time; each filter shows the events of
/// its container's network namespace only, and still does after that container restarts into a
/// new namespace. The errors (unknown container, host network, no runtime) are checked against
/// the same daemon.
#[test]
fn container_and_pod_filters_with_a_real_dockerd() {
    let host = docker_host();
    let daemon = host.docker.pid();
    let netns = host.netns.name.clone();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| filters(&host)));
    drop(host);
    assert!(
        !Path::new(&format!("/proc/{daemon}")).exists(),
        "dockerd left"
    );
    assert!(
        !Path::new("/run/netns").join(&netns).exists(),
        "namespace left"
    );
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

fn filters(host: &DockerHost) {
    let docker_host = format!("unix://{}", host.docker.socket().display());
    let env = [("DOCKER_HOST", docker_host.as_str())];
    // Idle until `docker exec` makes them talk.
    let a = host
        .run("filter-a", &POD_WEB, "exec sleep 300")
        .expect("container a");
    let b = host
        .run("filter-b", &POD_DB, "exec sleep 300")
        .expect("container b");
    let host_network = host
        .run("filter-host", &["--network", "host"], "exec sleep 300")
        .expect("host-network container");
    let port = FILTER_PORT.to_string();
    let server = Server::start(
        &host.netns,
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, FILTER_PORT)),
        ServerMode::EchoPktinfo,
        Duration::from_secs(30),
    )
    .expect("echo server");

    // Refused before anything is loaded, each with what is wrong.
    for (args, env, expected) in [
        (
            vec!["--container", "no-such-container"],
            &env[..],
            "--container no-such-container: Docker knows no container by that name or id",
        ),
        (
            vec!["--container", "filter-host"],
            &env[..],
            "runs with --network host: its network namespace is the host's",
        ),
        (
            vec!["--pod", "shop/nothing"],
            &env[..],
            "io.kubernetes.pod.name=nothing",
        ),
        (
            vec!["--container", "filter-a"],
            &[("DOCKER_HOST", "unix:///nonexistent/docker.sock")][..],
            "no Docker or Podman API to ask: /nonexistent/docker.sock does not exist",
        ),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_udptrace"))
            .args(&args)
            .args(["port", &port])
            .envs(env.iter().copied())
            .output()
            .expect("udptrace");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }

    // --container by name while both talk: a's namespace only.
    let trace = Trace::start_with(&["--container", "filter-a", "port", &port], &env);
    let (replies_a, replies_b) = both_talk(host, &a, &b);
    let records = trace.stop();
    assert!(
        !replies_a.is_empty() && !replies_b.is_empty(),
        "both talked: {replies_a:?} {replies_b:?}"
    );
    only_in(&records, &[a.netns_inode], "--container filter-a");

    // --pod: b carries shop/db's labels.
    let trace = Trace::start_with(&["--pod", "shop/db", "port", &port], &env);
    let (_, replies_b) = both_talk(host, &a, &b);
    let records = trace.stop();
    assert!(!replies_b.is_empty(), "b talked");
    only_in(&records, &[b.netns_inode], "--pod shop/db");

    // --container by id: a restarts into a new namespace, which the filter follows.
    let trace = Trace::start_with(&["--container", &a.id[..12], "port", &port], &env);
    both_talk(host, &a, &b);
    // The kernel numbers namespaces with the lowest free number (ns_alloc_inum, an IDA): held
    // open here, the old namespace outlives the restart, so the new one cannot take its
    // number and only a filter that follows the restart sees the new one.
    let old_namespace =
        std::fs::File::open(format!("/proc/{}/ns/net", a.pid)).expect("a's namespace");
    let restarted = host.restart(&a).expect("restart a");
    assert_ne!(restarted.netns_inode, a.netns_inode, "a new namespace");
    let (replies_a, _) = both_talk(host, &restarted, &b);
    let records = trace.stop();
    drop(old_namespace);
    assert!(!replies_a.is_empty(), "a talked after its restart");
    only_in(
        &records,
        &[a.netns_inode, restarted.netns_inode],
        "--container ID across a restart",
    );
    let in_restarted = records
        .iter()
        .filter(|r| r["type"] == "event" && r["netns"] == restarted.netns_inode)
        .count();
    assert!(
        in_restarted > 0,
        "no event in a's new namespace {}: {records:#?}",
        restarted.netns_inode
    );
    server.stop().expect("server");
    host.remove(&host_network)
        .expect("removing the host-network container");
}

/// Both containers send at the same time (netcat, a connected socket each, as in the seeds):
/// the lines each got back.
fn both_talk(host: &DockerHost, a: &Container, b: &Container) -> (Vec<String>, Vec<String>) {
    let talk = |container: &Container| {
        let script = format!(
            "for i in $(seq 10); do echo {}-$i; sleep 0.05; done | nc -u -q 1 {HOST_ADDRESS} {FILTER_PORT}",
            container.name
        );
        host.docker
            .run(&["exec", &container.id, "/bin/sh", "-c", &script])
            .expect("docker exec")
            .lines()
            .map(str::to_owned)
            .collect::<Vec<String>>()
    };
    std::thread::scope(|scope| {
        let from_b = scope.spawn(|| talk(b));
        let from_a = talk(a);
        (from_a, from_b.join().expect("b's talk"))
    })
}

/// Every event is in one of `inodes`, and some are in the first.
fn only_in(records: &[Value], inodes: &[u32], what: &str) {
    let traced: Vec<&Value> = records.iter().filter(|r| r["type"] == "event").collect();
    assert!(
        traced.iter().any(|e| e["netns"] == inodes[0]),
        "{what}: no event in namespace {}: {records:#?}",
        inodes[0]
    );
    for event in traced {
        assert!(
            inodes.iter().any(|inode| event["netns"] == *inode),
            "{what}: an event outside {inodes:?}: {event:#}"
        );
    }
}
