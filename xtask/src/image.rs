//! `cargo xtask image`: a container image holding nothing but the static binary, built offline
//! (`docker import` of a tar of that one file, under a private dockerd: no registry, no base
//! image, no Dockerfile build), saved as `dist/udptrace-image.tar` for `docker load`,
//! `podman load`, `ctr images import` or `skopeo copy docker-archive:...` to a registry.
//! `check` runs it as deploy/kubernetes/udptrace.yaml does (that file's command line: `watch
//! --metrics ...`) and scrapes its metrics.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use crate::dockerd::{Network, PrivateDocker};
use anyhow::{Context as _, bail, ensure};

use crate::process::output;

/// The DaemonSet `check` runs the image as: its container's `command` and `args`, so that the
/// check runs what the manifest ships (`watch --metrics ...`) and cannot drift from it.
const MANIFEST: &str = include_str!("../../deploy/kubernetes/udptrace.yaml");
const MANIFEST_PATH: &str = "deploy/kubernetes/udptrace.yaml";

/// What `check` expands the manifest's `$(NODE_IP)` to: the kubelet gives the pod's address
/// (`status.podIP`, the node's under hostNetwork); the check's host network is this host's, and
/// its loopback keeps the metrics off the machine's other interfaces.
const NODE_IP: &str = "127.0.0.1";

/// A port nothing listens on (this task's range): `check` sends `CHECK_DROPS` datagrams to it
/// on the host's loopback and the image's metrics must count exactly those drops.
const CLOSED_PORT: u16 = 47_210;
const CHECK_DROPS: u64 = 3;
/// The kernel's per-flow counts reach the metrics when udptrace drains them, every second.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// The capabilities the DaemonSet adds (deploy/kubernetes/udptrace.yaml says why each), but
/// SYS_RESOURCE, which a container cannot be given when its daemon lacks it, as sandboxes like
/// this development machine do (it only raises RLIMIT_MEMLOCK, which kernels from 5.11 ignore
/// for BPF). xtask's deploy tests hold the two lists together.
pub const CAPABILITIES: &[&str] = &[
    "NET_ADMIN",
    "SYS_ADMIN",
    "SYS_PTRACE",
    "DAC_READ_SEARCH",
    "SYSLOG",
];

/// Load, verification and attach take under a second here; a loaded machine, more.
const READY_TIMEOUT: Duration = Duration::from_mins(1);

/// The image's name: `udptrace:VERSION`, the version the binary reports.
fn tag(binary: &Path) -> anyhow::Result<String> {
    let version = output(Command::new(binary).arg("--version"))?;
    let version = version
        .split_whitespace()
        .nth(1)
        .with_context(|| format!("{} --version printed {version:?}", binary.display()))?;
    Ok(format!("udptrace:{version}"))
}

fn scratch(what: &str) -> PathBuf {
    std::env::temp_dir().join(format!("udptrace-image-{what}-{}", std::process::id()))
}

/// Imports `binary` as `/udptrace` into an image of its own and saves it next to it
/// (`dist/udptrace-image.tar`); returns the archive's path.
pub fn image(binary: &Path) -> anyhow::Result<PathBuf> {
    let tag = tag(binary)?;
    let docker = PrivateDocker::start(&scratch("build"), &Network::None)?;
    docker.import_with(
        &tag,
        &[("udptrace", binary)],
        &[
            r#"ENTRYPOINT ["/udptrace"]"#,
            // The manifest and the unit give their own arguments (`watch --metrics ...`).
            r#"CMD ["doctor"]"#,
            "LABEL org.opencontainers.image.title=udptrace",
            "LABEL org.opencontainers.image.description=\"Live tracer for the kernel's UDP path\"",
        ],
    )?;
    let archive = binary.with_file_name("udptrace-image.tar");
    docker.run(&["save", "--output", &archive.to_string_lossy(), &tag])?;
    let size = std::fs::metadata(&archive)?.len();
    println!(
        "image: {tag} ({:.1} MiB, the binary alone) in {}",
        size as f64 / f64::from(1 << 20),
        archive.display()
    );
    Ok(archive)
}

/// Loads the archive into a fresh private dockerd and runs it the way the DaemonSet does
/// (host network and pid, its capabilities and read-only mounts, a read-only root), then
/// scrapes its metrics.
pub fn check(binary: &Path, archive: &Path) -> anyhow::Result<()> {
    let tag = tag(binary)?;
    let command = manifest_command(MANIFEST)?;
    let metrics = metrics_address(&command)?;
    // Else the scrapes below could reach another udptrace (a watch service on this host).
    ensure!(
        TcpStream::connect(metrics).is_err(),
        "something already listens at {metrics}, where {MANIFEST_PATH} has udptrace serve its \
         metrics: stop it before the image check"
    );
    let docker = PrivateDocker::start(&scratch("check"), &Network::None)?;
    docker.run(&["load", "--input", &archive.to_string_lossy()])?;
    let mut run = vec![
        "run",
        "--detach",
        "--name",
        "udptrace-image-check",
        "--network",
        "host",
        "--pid",
        "host",
        "--read-only",
        "--security-opt",
        "no-new-privileges",
        "--cap-drop",
        "ALL",
    ];
    for capability in CAPABILITIES {
        run.extend(["--cap-add", capability]);
    }
    for mount in [
        "/sys/kernel/btf:/sys/kernel/btf:ro",
        "/sys/kernel/tracing:/sys/kernel/tracing:ro",
        "/sys/kernel/debug:/sys/kernel/debug:ro",
        "/run/netns:/run/netns:ro",
    ] {
        run.extend(["--volume", mount]);
    }
    // The manifest's command line: the entry point, then the image, then its arguments.
    let (entrypoint, args) = command.split_first().context("an empty command")?;
    run.extend(["--entrypoint", entrypoint, &tag]);
    run.extend(args.iter().map(String::as_str));
    docker.run(&run)?;
    let started = Instant::now();
    let exposition = loop {
        match scrape(metrics) {
            Ok(exposition) => break exposition,
            Err(error) if started.elapsed() > READY_TIMEOUT => {
                bail!(
                    "the image's metrics did not answer within {READY_TIMEOUT:?} ({error:#}); \
                     the container said: {}",
                    docker
                        .run(&["logs", "udptrace-image-check"])
                        .unwrap_or_else(|e| format!("{e:#}"))
                );
            }
            Err(_) => thread::sleep(Duration::from_millis(200)),
        }
    };
    for family in [
        "# TYPE udptrace_hooks_attached gauge",
        "# TYPE udptrace_cpu_seconds_total counter",
        "# TYPE udptrace_events_lost_total counter",
    ] {
        ensure!(
            exposition.contains(family),
            "the image's metrics lack {family:?}:\n{exposition}"
        );
    }
    let attached: Vec<&str> = exposition
        .lines()
        .filter(|line| line.starts_with("udptrace_hooks_attached{") && !line.contains("none"))
        .collect();
    ensure!(
        attached.iter().any(|line| !line.ends_with(" 0")),
        "the image attached no hook: {attached:?}"
    );
    // `watch` detaches its path hooks until an anomaly escalates a flow: it is watch that runs.
    ensure!(
        exposition.lines().any(|line| line
            .starts_with("udptrace_hooks_attached{mechanism=\"parked\"}")
            && !line.ends_with(" 0")),
        "the image's udptrace parked no path hook (is it `watch`?):\n{exposition}"
    );
    let dropped = closed_port_drops(metrics)?;
    println!(
        "image: {tag} runs `{}` as {MANIFEST_PATH} does (host network and pid, its capabilities \
         and mounts, read-only root), answers at http://{metrics}/metrics and counted the \
         {dropped} datagrams sent to closed port {CLOSED_PORT}",
        command.join(" ")
    );
    Ok(())
}

/// The DaemonSet container's `KEY:` list, written on one line as a YAML flow sequence of
/// quoted strings (`["watch", "--metrics", "$(NODE_IP):9464"]`, which is JSON too).
fn manifest_list(manifest: &str, key: &str) -> anyhow::Result<Vec<String>> {
    let prefix = format!("{key}:");
    let mut values = manifest
        .lines()
        .filter_map(|line| line.trim().strip_prefix(&prefix));
    let (Some(value), None) = (values.next(), values.next()) else {
        bail!("{MANIFEST_PATH}: expected exactly one `{key}:` line (the container's)");
    };
    serde_json::from_str(value.trim()).with_context(|| {
        format!(
            "{MANIFEST_PATH}: `{key}:{value}` is not a one-line list of quoted strings \
             ([\"a\", \"b\"]), which the image check reads"
        )
    })
}

/// The DaemonSet container's command line (`command` then `args`), its `$(NODE_IP)` expanded
/// as the kubelet expands the container's environment variables (to `NODE_IP`).
pub fn manifest_command(manifest: &str) -> anyhow::Result<Vec<String>> {
    let mut words = manifest_list(manifest, "command")?;
    words.extend(manifest_list(manifest, "args")?);
    words
        .into_iter()
        .map(|word| {
            let word = word.replace("$(NODE_IP)", NODE_IP);
            ensure!(
                !word.contains("$("),
                "{MANIFEST_PATH}: `{word}` refers to a variable the image check does not set"
            );
            Ok(word)
        })
        .collect()
}

/// Where the command serves its metrics: the value of its `--metrics`.
fn metrics_address(command: &[String]) -> anyhow::Result<&str> {
    command
        .iter()
        .skip_while(|word| *word != "--metrics")
        .nth(1)
        .map(String::as_str)
        .with_context(|| {
            format!("{MANIFEST_PATH}: its command serves no metrics (`--metrics ADDR`)")
        })
}

/// Sends `CHECK_DROPS` datagrams to `CLOSED_PORT` on the host's loopback (the container's
/// network is the host's) and waits for the image's `udptrace_drops_total` to count exactly
/// those, as NO_SOCKET drops of that port; returns the count.
fn closed_port_drops(metrics: &str) -> anyhow::Result<u64> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
    for _ in 0..CHECK_DROPS {
        socket.send_to(b"udptrace image check", ("127.0.0.1", CLOSED_PORT))?;
    }
    let series = format!("udptrace_drops_total{{reason=\"NO_SOCKET\",port=\"{CLOSED_PORT}\",");
    let started = Instant::now();
    loop {
        let exposition = scrape(metrics)?;
        let counted: u64 = exposition
            .lines()
            .filter(|line| line.starts_with(&series))
            .filter_map(|line| line.rsplit_once(' ')?.1.parse::<u64>().ok())
            .sum();
        ensure!(
            counted <= CHECK_DROPS,
            "the image counted {counted} NO_SOCKET drops on port {CLOSED_PORT}, {CHECK_DROPS} \
             were sent:\n{exposition}"
        );
        if counted == CHECK_DROPS {
            return Ok(counted);
        }
        if started.elapsed() > DRAIN_TIMEOUT {
            bail!(
                "the image counted {counted} of the {CHECK_DROPS} datagrams sent to closed port \
                 {CLOSED_PORT} within {DRAIN_TIMEOUT:?}:\n{exposition}"
            );
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// `GET /metrics` from `address`: the body of a 200 answer.
fn scrape(address: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {address}\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .with_context(|| format!("not an HTTP answer: {answer:?}"))?;
    ensure!(
        head.split_whitespace().nth(1) == Some("200"),
        "GET /metrics: {head}"
    );
    Ok(body.to_owned())
}
