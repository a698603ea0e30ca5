//! Issue 15, the runtimes besides Docker, each real and private (its own state, socket and
//! logs in a scratch directory, removed afterwards): Podman (Debian's podman 4.3, its
//! Docker-compatible API served by `podman system service`) and containerd (Debian's 1.6,
//! containers made with `ctr run`). Containers come from an empty root file system with the
//! host's binaries bind-mounted read-only (no registry is reachable) and join network
//! namespaces this test makes (`--network ns:PATH`, `--with-ns network:PATH`): no bridge, no
//! CNI, no firewall rule. netcat in each container talks to an IP_PKTINFO echo server in
//! another namespace, over veth pairs in documentation ranges.

use std::{
    fs,
    net::{Ipv4Addr, SocketAddr},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use udptrace::lab::{
    docker::HOST_BINARIES,
    dockerd::{stop_daemon, unmount_under},
    netns::{Netns, veth},
    peers::{Server, ServerMode},
};

use crate::common::{Trace, require_root};

/// The echo server's port (this task's range, 47100-47199).
const PORT: u16 = 47100;
const PODMAN: &str = "/usr/bin/podman";
const CONTAINERD: &str = "/usr/bin/containerd";
const CTR: &str = "/usr/bin/ctr";
/// A daemon is ready in a second or two here; under load, give it more.
const READY_TIMEOUT: Duration = Duration::from_mins(1);
/// The containers idle until the test makes them talk; bounded.
const IDLE: &str = "exec sleep 120";
/// The kubelet's labels, as `podman run --label` or CRI's annotations carry them.
const POD: [(&str, &str); 3] = [
    ("io.kubernetes.pod.namespace", "shop"),
    ("io.kubernetes.pod.name", "web"),
    ("io.kubernetes.container.name", "nginx"),
];

/// Two client namespaces `a` (192.0.2.1) and `b` (198.51.100.1), each joined by a veth pair to
/// `server` (192.0.2.2, 198.51.100.2), where an IP_PKTINFO echo server answers on PORT. Field
/// order is drop order: the server first.
struct Topology {
    _server: Server,
    a: Netns,
    b: Netns,
    server_ns: Netns,
}

/// Where each client writes.
const A_PEER: &str = "192.0.2.2";
const B_PEER: &str = "198.51.100.2";

fn topology() -> Topology {
    let server_ns = Netns::create("rtserver").expect("server namespace");
    let a = Netns::create("rta").expect("namespace a");
    let b = Netns::create("rtb").expect("namespace b");
    veth(&a, "eth0", &server_ns, "eth0").expect("veth a");
    veth(&b, "eth0", &server_ns, "eth1").expect("veth b");
    a.addr("eth0", "192.0.2.1/24").unwrap();
    server_ns.addr("eth0", &format!("{A_PEER}/24")).unwrap();
    b.addr("eth0", "198.51.100.1/24").unwrap();
    server_ns.addr("eth1", &format!("{B_PEER}/24")).unwrap();
    let server = Server::start(
        &server_ns,
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, PORT)),
        ServerMode::EchoPktinfo,
        Duration::from_mins(2),
    )
    .expect("echo server");
    Topology {
        _server: server,
        a,
        b,
        server_ns,
    }
}

/// netcat's script: ten lines to `peer`, 50 ms apart, on one connected socket (as in the
/// seeds); it prints the replies.
fn talk_script(name: &str, peer: &str) -> String {
    format!("for i in $(seq 10); do echo {name}-$i; sleep 0.05; done | nc -u -q 1 {peer} {PORT}")
}

/// Runs `command`; its stdout, trimmed; panics with its stderr when it fails.
fn output(command: &mut Command) -> String {
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn scratch(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("udptrace-{what}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// Waits (bounded) until `socket` accepts connections; `log` says why not.
fn wait_for_socket(socket: &Path, log: &Path) {
    let started = Instant::now();
    while UnixStream::connect(socket).is_err() {
        assert!(
            started.elapsed() < READY_TIMEOUT,
            "{} did not answer within {READY_TIMEOUT:?}; its log:\n{}",
            socket.display(),
            fs::read_to_string(log).unwrap_or_default()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// A running container, as udptrace's output can be checked against.
struct Running {
    name: String,
    id: String,
    pid: u32,
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// A private Podman: its storage (vfs), run root and tmp dir under a scratch directory, the
/// cgroupfs manager (no systemd here), events in a file; `podman system service` serves its
/// API on a socket there. Dropping it removes the containers, stops the service and removes
/// the state.
struct PrivatePodman {
    dir: PathBuf,
    service: Child,
}

impl PrivatePodman {
    fn start() -> Self {
        let dir = scratch("podman");
        let log = fs::File::create(dir.join("service.log")).unwrap();
        let mut command = Self::global(&dir);
        let service = command
            .args(["system", "service", "--time=0"])
            .arg(format!("unix://{}", dir.join("sock").display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("podman system service");
        let podman = Self { dir, service };
        wait_for_socket(&podman.socket(), &podman.dir.join("service.log"));
        // An empty image: the containers bind-mount the host's binaries.
        let layer = podman.dir.join("layer");
        fs::create_dir_all(&layer).unwrap();
        let tarball = podman.dir.join("layer.tar");
        output(
            Command::new("tar")
                .arg("-C")
                .arg(&layer)
                .arg("-cf")
                .arg(&tarball)
                .arg("."),
        );
        output(
            podman
                .podman()
                .arg("import")
                .arg(&tarball)
                .arg("udptrace-lab:empty"),
        );
        podman
    }

    /// podman with this instance's global options.
    fn global(dir: &Path) -> Command {
        let mut command = Command::new(PODMAN);
        command
            .arg("--root")
            .arg(dir.join("root"))
            .arg("--runroot")
            .arg(dir.join("run"))
            .arg("--tmpdir")
            .arg(dir.join("tmp"))
            .args([
                "--storage-driver",
                "vfs",
                // Not crun, which refuses this host's hybrid cgroup mounts (xtask/src/setup.rs).
                "--runtime",
                "runc",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "file",
            ]);
        command
    }

    fn podman(&self) -> Command {
        Self::global(&self.dir)
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("sock")
    }

    /// `podman run -d` of an idle shell in namespace `netns`, with `labels`.
    fn run(&self, name: &str, netns: &Netns, labels: &[(&str, &str)]) -> Running {
        let mut command = self.podman();
        command
            .args(["run", "-d", "--name", name])
            .arg(format!("--network=ns:{}", netns.path.display()))
            // Podman raises a container's open-file and process limits unless told (to the
            // maximum, as rootful); root here lacks CAP_SYS_RESOURCE (not in its bounding
            // set), so runc's setrlimit fails with EPERM. Lower limits need no capability.
            .args([
                "--ulimit",
                "nofile=1024:1024",
                "--ulimit",
                "nproc=1024:1024",
            ]);
        for dir in HOST_BINARIES {
            command.args(["-v", &format!("{dir}:{dir}:ro")]);
        }
        for (key, value) in labels {
            command.args(["--label", &format!("{key}={value}")]);
        }
        let id = output(command.args(["udptrace-lab:empty", "/bin/sh", "-c", IDLE]));
        let pid = output(self.podman().args(["inspect", "-f", "{{.State.Pid}}", &id]))
            .parse()
            .expect("container pid");
        Running {
            name: name.to_owned(),
            id,
            pid,
        }
    }

    fn exec(&self, container: &Running, script: &str) -> String {
        output(
            self.podman()
                .args(["exec", &container.id, "/bin/sh", "-c", script]),
        )
    }
}

impl Drop for PrivatePodman {
    fn drop(&mut self) {
        let _ = self
            .podman()
            .args(["rm", "-a", "-f", "-t", "0"])
            .stdin(Stdio::null())
            .output();
        stop_daemon(&mut self.service);
        unmount_under(&self.dir);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Both containers talk at once, each to its peer; the replies each got.
fn both_talk(
    talk: impl Fn(&Running, &str) -> String + Sync,
    (a, a_peer): (&Running, &str),
    (b, b_peer): (&Running, &str),
) {
    let (from_a, from_b) = thread::scope(|scope| {
        let from_b = scope.spawn(|| talk(b, b_peer));
        (talk(a, a_peer), from_b.join().expect("b's talk"))
    });
    assert!(
        !from_a.is_empty() && !from_b.is_empty(),
        "both got replies: {from_a:?} {from_b:?}"
    );
}

/// udptrace with `args` and `env`, which must fail at start with one line on stderr: that line.
fn refused(args: &[&str], env: &[(&str, &str)]) -> String {
    let refused = Command::new(env!("CARGO_BIN_EXE_udptrace"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("udptrace");
    let stderr = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(!refused.status.success(), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    stderr
}

/// Every event is in one of namespaces `inodes`.
fn only_in(records: &[Value], inodes: &[u32]) {
    for event in records.iter().filter(|r| r["type"] == "event") {
        let inode = event["netns"].as_u64().and_then(|n| u32::try_from(n).ok());
        assert!(
            inode.is_some_and(|inode| inodes.contains(&inode)),
            "only {inodes:?}'s: {event:#}"
        );
    }
}

/// The events in namespace `inode`, at least one.
fn events_in(records: &[Value], inode: u32) -> Vec<&Value> {
    let inside: Vec<&Value> = records
        .iter()
        .filter(|r| r["type"] == "event" && r["netns"] == inode)
        .collect();
    assert!(
        !inside.is_empty(),
        "no event in namespace {inode}: {records:#?}"
    );
    inside
}

/// Every event in namespace `inode` reads `label` as its namespace's name and carries a
/// `container` object with the `expected` fields and `pod`.
fn assert_named(
    records: &[Value],
    inode: u32,
    label: &str,
    expected: &[(&str, &str)],
    pod: Option<&Value>,
) {
    for event in events_in(records, inode) {
        assert_eq!(event["netns_name"], label, "{event:#}");
        let object = &event["container"];
        for (key, value) in expected {
            assert_eq!(object[key], *value, "{key}: {event:#}");
        }
        assert_eq!(object.get("pod"), pod, "{event:#}");
    }
}

fn pod_object() -> Value {
    serde_json::json!({"namespace": "shop", "name": "web", "container": "nginx"})
}

/// A private Podman: its containers' events carry runtime podman, name, image and the pod
/// labels from Podman's API (their cgroup, `/libpod_parent/libpod-ID`, gives runtime and id);
/// `--container NAME` asks the same API and shows only that container's namespace while both
/// talk. Nothing is left afterwards.
#[test]
fn podman_containers_named_and_selected_through_podmans_api() {
    require_root();
    assert!(
        Path::new(PODMAN).exists(),
        "the Podman test needs podman (`cargo xtask setup` installs it)"
    );
    let net = topology();
    let podman = PrivatePodman::start();
    let service = podman.service.id();
    let state = podman.dir.clone();
    let mut pids = Vec::new();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let a = podman.run("rt-podman-a", &net.a, &POD);
        let b = podman.run("rt-podman-b", &net.b, &[]);
        pids.extend([a.pid, b.pid]);
        // Podman's cgroupfs layout here, which `container_in_cgroup` reads.
        let cgroup = fs::read_to_string(format!("/proc/{}/cgroup", a.pid)).unwrap();
        assert!(
            cgroup.contains(&format!("/libpod-{}", a.id)),
            "podman's cgroup: {cgroup}"
        );
        let env = [
            (
                "CONTAINER_HOST",
                format!("unix://{}", podman.socket().display()),
            ),
            ("DOCKER_HOST", "unix:///nonexistent/docker.sock".to_owned()),
        ];
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let talk = |container: &Running, peer: &str| {
            podman.exec(container, &talk_script(&container.name, peer))
        };
        let port = PORT.to_string();

        let trace = Trace::start_with(&["port", &port], &env);
        both_talk(talk, (&a, A_PEER), (&b, B_PEER));
        let records = trace.stop();
        let image = "localhost/udptrace-lab:empty";
        assert_named(
            &records,
            net.a.inode,
            &format!("pod shop/web nginx (podman {})", &a.id[..12]),
            &[
                ("runtime", "podman"),
                ("id", a.id.as_str()),
                ("name", a.name.as_str()),
                ("image", image),
            ],
            Some(&pod_object()),
        );
        assert_named(
            &records,
            net.b.inode,
            &format!("ctr rt-podman-b (podman {})", &b.id[..12]),
            &[
                ("runtime", "podman"),
                ("id", b.id.as_str()),
                ("name", b.name.as_str()),
                ("image", image),
            ],
            None,
        );

        // An unknown name: Podman's answer, before anything is loaded.
        let stderr = refused(&["--container", "rt-podman-none", "port", &port], &env);
        assert!(
            stderr.contains(
                "--container rt-podman-none: Podman knows no container by that name or id \
                 (`podman ps -a` lists them)"
            ),
            "{stderr}"
        );

        // --container by name, asked of Podman's API: b's namespace only.
        let trace = Trace::start_with(&["--container", "rt-podman-b", "port", &port], &env);
        both_talk(talk, (&a, A_PEER), (&b, B_PEER));
        let records = trace.stop();
        events_in(&records, net.b.inode);
        only_in(&records, &[net.b.inode]);
    }));
    drop(podman);
    drop(net);
    assert!(
        !alive(service),
        "podman system service {service} still runs"
    );
    for pid in pids {
        assert!(!alive(pid), "container process {pid} left");
    }
    assert!(!state.exists(), "podman's state {} left", state.display());
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// A private containerd: own root, state, socket and configuration (no CRI plugin), its
/// containers in containerd namespace `rt`, made with `ctr run --rootfs` on an empty
/// directory. Dropping it kills and deletes the containers (their shims exit), stops the
/// daemon and removes the state.
struct PrivateContainerd {
    dir: PathBuf,
    daemon: Child,
    containers: Vec<String>,
}

/// The containerd namespace of the test's containers.
const CTR_NAMESPACE: &str = "rt";

impl PrivateContainerd {
    fn start() -> Self {
        let dir = scratch("containerd");
        let config = dir.join("config.toml");
        fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{root}/root\"\nstate = \"{root}/state\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{root}/sock\"\n",
                root = dir.display()
            ),
        )
        .unwrap();
        fs::create_dir_all(dir.join("rootfs")).unwrap();
        let log = fs::File::create(dir.join("containerd.log")).unwrap();
        let daemon = Command::new(CONTAINERD)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("containerd");
        let containerd = Self {
            dir,
            daemon,
            containers: Vec::new(),
        };
        wait_for_socket(
            &containerd.dir.join("sock"),
            &containerd.dir.join("containerd.log"),
        );
        containerd
    }

    fn ctr(&self) -> Command {
        let mut command = Command::new(CTR);
        command
            .arg("--address")
            .arg(self.dir.join("sock"))
            .args(["--namespace", CTR_NAMESPACE]);
        command
    }

    /// `ctr run -d` of an idle shell named `name` in namespace `netns`, with OCI
    /// `annotations` in its bundle.
    fn run(&mut self, name: &str, netns: &Netns, annotations: &[(&str, &str)]) -> Running {
        let pid_file = self.dir.join(format!("{name}.pid"));
        let mut command = self.ctr();
        command
            .args(["run", "-d", "--null-io", "--rootfs"])
            .arg("--pid-file")
            .arg(&pid_file)
            // runc's state here too, not in /run/containerd/runc (the shim's socket still is
            // in /run/containerd/s: containerd 1.6 does not let it be elsewhere).
            .arg("--runc-root")
            .arg(self.dir.join("runc"))
            .arg(format!("--with-ns=network:{}", netns.path.display()));
        for dir in HOST_BINARIES {
            command.args([
                "--mount",
                &format!("type=bind,src={dir},dst={dir},options=rbind:ro"),
            ]);
        }
        for (key, value) in annotations {
            command.args(["--annotation", &format!("{key}={value}")]);
        }
        if !self.containers.iter().any(|known| known == name) {
            self.containers.push(name.to_owned());
        }
        output(
            command
                .arg(self.dir.join("rootfs"))
                .args([name, "/bin/sh", "-c", IDLE]),
        );
        let pid = fs::read_to_string(&pid_file)
            .expect("the task's pid file")
            .trim()
            .parse()
            .expect("a pid");
        Running {
            name: name.to_owned(),
            id: name.to_owned(),
            pid,
        }
    }

    /// Kills container `name` and deletes it (its shim exits); quiet when it is gone already.
    fn remove(&self, name: &str) {
        let quiet = |args: &[&str]| {
            let _ = self.ctr().args(args).stdin(Stdio::null()).output();
        };
        quiet(&["task", "kill", "--signal", "SIGKILL", name]);
        // `task delete -f` waits for the killed task, then its shim exits.
        quiet(&["task", "delete", "--force", name]);
        quiet(&["container", "delete", name]);
    }

    /// Each container talks to `peer` (netcat, `talk_script`); the replies.
    fn talk(&self) -> impl Fn(&Running, &str) -> String + Sync + '_ {
        |container, peer| self.exec(container, &talk_script(&container.name, peer))
    }

    fn exec(&self, container: &Running, script: &str) -> String {
        let fifos = self.dir.join("fifo");
        output(
            self.ctr()
                .args(["task", "exec", "--fifo-dir"])
                .arg(&fifos)
                .args(["--exec-id", &format!("talk-{}", std::process::id())])
                .args([&container.id, "/bin/sh", "-c", script]),
        )
    }
}

impl Drop for PrivateContainerd {
    fn drop(&mut self) {
        for name in &self.containers {
            self.remove(name);
        }
        stop_daemon(&mut self.daemon);
        unmount_under(&self.dir);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A private containerd: a `ctr run` container's events carry runtime containerd and its id
/// as its name (its cgroup `/rt/ID` under a shim of namespace `rt`); another one, carrying in
/// its bundle the annotations containerd's CRI writes for a pod's container (given here with
/// `--annotation`: no kubelet runs), is named by its pod. Both read from the bundle's
/// config.json, found through the shim. Without a Docker or Podman API, `--container ID` and
/// `--pod NS/NAME` find them in /proc and show only their namespace while both talk, and the
/// pod's container deleted and made again in a new namespace is followed there. Nothing is
/// left afterwards.
#[test]
fn containerd_containers_named_and_selected_from_their_bundles() {
    require_root();
    assert!(
        Path::new(CONTAINERD).exists() && Path::new(CTR).exists(),
        "the containerd test needs containerd and ctr (`cargo xtask setup` installs them)"
    );
    let net = topology();
    let mut containerd = PrivateContainerd::start();
    let daemon = containerd.daemon.id();
    let state = containerd.dir.clone();
    let mut pids = Vec::new();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let a = containerd.run("rt-ctr-plain", &net.a, &[]);
        let cri = [
            ("io.kubernetes.cri.sandbox-namespace", "shop"),
            ("io.kubernetes.cri.sandbox-name", "web"),
            ("io.kubernetes.cri.container-name", "nginx"),
            (
                "io.kubernetes.cri.image-name",
                "docker.io/library/nginx:1.25",
            ),
        ];
        let b = containerd.run("rt-ctr-cri", &net.b, &cri);
        pids.extend([a.pid, b.pid]);
        let cgroup = fs::read_to_string(format!("/proc/{}/cgroup", a.pid)).unwrap();
        assert!(
            cgroup.contains(&format!("/{CTR_NAMESPACE}/{}", a.id)),
            "ctr's cgroup: {cgroup}"
        );
        let env = [
            ("CONTAINER_HOST", "unix:///nonexistent/podman.sock"),
            ("DOCKER_HOST", "unix:///nonexistent/docker.sock"),
        ];
        let port = PORT.to_string();
        let trace = Trace::start_with(&["port", &port], &env);
        both_talk(containerd.talk(), (&a, A_PEER), (&b, B_PEER));
        let records = trace.stop();
        assert_named(
            &records,
            net.a.inode,
            "ctr rt-ctr-plain (containerd rt-ctr-plain)",
            &[
                ("runtime", "containerd"),
                ("id", "rt-ctr-plain"),
                ("name", "rt-ctr-plain"),
            ],
            None,
        );
        for event in events_in(&records, net.a.inode) {
            assert!(event["container"].get("image").is_none(), "{event:#}");
        }
        assert_named(
            &records,
            net.b.inode,
            "pod shop/web nginx (containerd rt-ctr-cri)",
            &[
                ("runtime", "containerd"),
                ("id", "rt-ctr-cri"),
                ("name", "nginx"),
                ("image", "docker.io/library/nginx:1.25"),
            ],
            Some(&pod_object()),
        );

        // No Docker or Podman API: an unknown name is one line saying what was searched.
        let stderr = refused(&["--container", "rt-ctr-none", "port", &port], &env);
        assert!(
            stderr.contains(
                "--container rt-ctr-none: no Docker or Podman API to ask: \
                 /nonexistent/docker.sock does not exist"
            ) && stderr.contains(
                "--container rt-ctr-none: no running containerd or CRI-O container has that \
                 name or id (looked for in /proc;"
            ),
            "{stderr}"
        );

        // --container ID (a `ctr run` container's id), found in /proc: a's namespace only.
        let trace = Trace::start_with(&["--container", &a.id, "port", &port], &env);
        both_talk(containerd.talk(), (&a, A_PEER), (&b, B_PEER));
        let records = trace.stop();
        events_in(&records, net.a.inode);
        only_in(&records, &[net.a.inode]);

        // --pod by CRI's annotations: b's namespace only; b is then deleted and made again
        // under its name and annotations in a namespace of its own (203.0.113.1), where the
        // filter follows it.
        let trace = Trace::start_with(&["--pod", "shop/web", "port", &port], &env);
        both_talk(containerd.talk(), (&a, A_PEER), (&b, B_PEER));
        containerd.remove(&b.name);
        let c = Netns::create("rtc").expect("namespace c");
        veth(&c, "eth0", &net.server_ns, "eth2").expect("veth c");
        c.addr("eth0", "203.0.113.1/24").unwrap();
        net.server_ns.addr("eth2", "203.0.113.2/24").unwrap();
        let again = containerd.run("rt-ctr-cri", &c, &cri);
        pids.push(again.pid);
        // udptrace looks for containerd's containers again every PROC_RESCAN (no event API
        // to wait on): three periods leave two whole scans after the container runs.
        thread::sleep(udptrace::container_filter::PROC_RESCAN * 3);
        both_talk(containerd.talk(), (&a, A_PEER), (&again, "203.0.113.2"));
        let records = trace.stop();
        events_in(&records, net.b.inode);
        events_in(&records, c.inode);
        only_in(&records, &[net.b.inode, c.inode]);
    }));
    drop(containerd);
    drop(net);
    assert!(!alive(daemon), "containerd {daemon} still runs");
    for pid in pids {
        assert!(!alive(pid), "container process {pid} left");
    }
    assert!(
        !state.exists(),
        "containerd's state {} left",
        state.display()
    );
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
