//! `cargo xtask image`: a container image holding nothing but the static binary, built offline
//! (`docker import` of a tar of that one file, under a private dockerd: no registry, no base
//! image, no Dockerfile build), saved as `dist/udptrace-image.tar` for `docker load`,
//! `podman load`, `ctr images import` or `skopeo copy docker-archive:...` to a registry.
//! `check` runs it as deploy/kubernetes/udptrace.yaml does and scrapes its metrics.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use private_dockerd::{Network, PrivateDocker};

use crate::process::output;

/// Where `check` has the image serve its metrics (host network: the host's loopback).
const METRICS: &str = "127.0.0.1:9463";
/// What `check` has it trace: a port nothing uses, so the run stays quiet.
const PORT: &str = "5703";
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
    // The interactive tracer with a filter nothing matches: the check is of the image, its
    // privileges and mounts, and of the metrics endpoint.
    run.extend([&*tag, "--metrics", METRICS, "port", PORT]);
    docker.run(&run)?;
    let started = Instant::now();
    let exposition = loop {
        match scrape() {
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
    println!(
        "image: {tag} runs as the DaemonSet does (host network and pid, its capabilities and \
         mounts, read-only root) and answers at http://{METRICS}/metrics"
    );
    Ok(())
}

/// `GET /metrics` from `METRICS`: the body of a 200 answer.
fn scrape() -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(METRICS)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {METRICS}\r\n\r\n")?;
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
