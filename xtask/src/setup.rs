//! `cargo xtask setup`: installs what a fresh machine of this kind lacks, idempotently, and
//! takes a second or so when nothing does. One line per step. See
//! ../shared/notes/environment.md for why each step is needed.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail};

use crate::process::{self, Privilege, output, run};

/// Debian packages the lab and the tests use: iproute2 (`ip netns`, veth), nftables (the
/// firewall scenarios; udptrace's firewall verdicts read the ruleset with `nft`),
/// netcat-openbsd and python3 (the tests reproduce incidents with real peers too), tshark
/// (the tests read `-w` files with it; installed non-interactively, its debconf question
/// about non-root capture keeps its default, no), tcpdump (the filter language is tested
/// against libpcap's, `pcap_differential::`; `cargo xtask bench` compares with it too), prometheus (the `--metrics` test scrapes
/// udptrace with a real server, started by the test with its own configuration and data
/// directory; the package's own service is not started where no systemd runs),
/// python3-kubernetes and systemd (deploy/: the DaemonSet manifest is checked against the
/// Kubernetes API's models, the unit by `systemd-analyze verify`), podman and containerd
/// (udptrace names their containers: the tests run a private `podman system service` and a
/// private containerd with `ctr`, each with its own state in a scratch directory).
pub const PACKAGES: &[&str] = &[
    "iproute2",
    "nftables",
    "netcat-openbsd",
    "python3",
    "tshark",
    "tcpdump",
    "prometheus",
    "python3-kubernetes",
    "systemd",
    "podman",
    // Podman's OCI runtime for the tests: crun (which podman pulls in when nothing else
    // satisfies its dependency) refuses hosts with cgroup v1 hierarchies beside a v2 one that
    // holds a controller ("cgroups in hybrid mode not supported"), as these machines have.
    "runc",
    "containerd",
];

/// What `cargo xtask dist --check` (and the test command) runs the static binary under: a
/// private dockerd, with an image holding only the binary; the Docker integration tests
/// (docker-proxy, netcat containers) use it too.
pub const DIST_PACKAGES: &[&str] = &["docker.io"];

/// What `cargo xtask bench` compares udptrace with, besides tcpdump (in `PACKAGES`).
pub const BENCH_PACKAGES: &[&str] = &["bpftrace"];

/// bpf-linker is built against the nightly's own LLVM, of this major version...
const LLVM_MAJOR: &str = "22";
/// ...with this bpf-linker feature.
const LLVM_FEATURE: &str = "llvm-22";
/// Semver requirement for bpf-linker and the version prefix `--version` must print.
const BPF_LINKER_REQ: &str = "^0.13";
const BPF_LINKER_VERSION_PREFIX: &str = "bpf-linker 0.13.";

const TRACEFS: &str = "/sys/kernel/tracing";

/// Runs every step; `packages` are the Debian packages to ensure; `target` is cargo's target
/// directory (bpf-linker's build uses a scratch directory there).
pub fn setup(target: &Path, packages: &[&str]) -> anyhow::Result<()> {
    let started = Instant::now();
    rust_src()?;
    musl_target()?;
    bpf_linker(target)?;
    debian_packages(packages)?;
    tracefs()?;
    println!("setup: done ({})", seconds(started));
    Ok(())
}

fn seconds(since: Instant) -> String {
    let elapsed = since.elapsed().as_secs_f64();
    if elapsed < 10.0 {
        format!("{elapsed:.1} s")
    } else {
        format!("{elapsed:.0} s")
    }
}

fn rustup() -> Command {
    Command::new("rustup")
}

/// The nightly toolchain, and its rust-src (the eBPF crate is built with `-Z build-std=core`).
fn rust_src() -> anyhow::Result<()> {
    let started = Instant::now();
    if process::find_in_path("rustup").is_none() {
        bail!(
            "rust-src: rustup is not on PATH: the eBPF crate needs a nightly toolchain with \
             rust-src, which this project installs through rustup (https://rustup.rs)"
        );
    }
    let toolchains = output(rustup().args(["toolchain", "list"]))?;
    // `nightly-x86_64-...` (what `--toolchain nightly` means), not a dated `nightly-2026-...`.
    let has_nightly = toolchains.lines().any(|line| {
        line.strip_prefix("nightly-")
            .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
    });
    if !has_nightly {
        println!(
            "nightly: not installed; trying `rustup toolchain install nightly --profile minimal`"
        );
        let attempt =
            run(rustup().args(["toolchain", "install", "nightly", "--profile", "minimal"]));
        if let Err(error) = attempt {
            bail!(
                "nightly: no nightly toolchain is installed and installing one failed: {error:#}. \
                 The eBPF crate (udptrace-ebpf, built by udptrace/build.rs) needs a nightly \
                 Rust with rust-src; on this kind of machine rustup is the only way to get one. \
                 Install it where rustup can reach its server (`rustup toolchain install nightly \
                 --profile minimal --component rust-src`), then run `cargo xtask setup` again"
            );
        }
        println!("nightly: installed ({})", seconds(started));
    }
    let installed =
        output(rustup().args(["component", "list", "--toolchain", "nightly", "--installed"]))?;
    let version = output(Command::new("rustc").args(["+nightly", "--version"])).map_or_else(
        |_| "nightly".to_owned(),
        |v| v.trim().trim_start_matches("rustc ").to_owned(),
    );
    if installed.lines().any(|line| line.trim() == "rust-src") {
        println!("rust-src: present ({version})");
        return Ok(());
    }
    run(rustup().args(["component", "add", "rust-src", "--toolchain", "nightly"]))
        .context("rust-src: installing the nightly's rust-src")?;
    println!("rust-src: installed ({version}, {})", seconds(started));
    Ok(())
}

/// The target of the static binary `cargo xtask dist` builds, for the toolchain that builds
/// userspace (rust-std only: Rust's musl target links its own C library, no musl-gcc needed).
fn musl_target() -> anyhow::Result<()> {
    let started = Instant::now();
    let installed = output(rustup().args(["target", "list", "--installed"]))?;
    if installed
        .lines()
        .any(|line| line.trim() == crate::dist::MUSL_TARGET)
    {
        println!("{}: present", crate::dist::MUSL_TARGET);
        return Ok(());
    }
    run(rustup().args(["target", "add", crate::dist::MUSL_TARGET])).with_context(|| {
        format!(
            "{}: installing the target (`cargo xtask dist` builds the static binary for it)",
            crate::dist::MUSL_TARGET
        )
    })?;
    println!(
        "{}: installed ({})",
        crate::dist::MUSL_TARGET,
        seconds(started)
    );
    Ok(())
}

/// bpf-linker 0.13, linked against the nightly's own LLVM (so the bitcode rustc emits and the
/// linker's LLVM agree). It is run, as aya-build does, through `rustup run nightly`, which puts
/// the nightly's lib/ (holding that libLLVM) on the loader path and $CARGO_HOME/bin on PATH.
fn bpf_linker(target: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    let probe = Command::new("rustup")
        .args(["run", "nightly", "bpf-linker", "--version"])
        .output();
    let reason = match probe {
        Ok(out) if out.status.success() => {
            let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if version.starts_with(BPF_LINKER_VERSION_PREFIX) {
                println!("bpf-linker: present ({version})");
                return Ok(());
            }
            format!("{version} is not {BPF_LINKER_REQ}")
        }
        Ok(out) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let first = stderr.lines().next().unwrap_or("").trim();
            // e.g. the nightly was updated and its libLLVM file name changed with its version.
            format!("missing or not working ({first})")
        }
        Err(error) => format!("`rustup run nightly bpf-linker` could not start: {error}"),
    };
    println!("bpf-linker: {reason}; installing (about 70 s)");

    let sysroot = PathBuf::from(
        output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?.trim(),
    );
    let lib_dir = sysroot.join("lib");
    let names: Vec<String> = std::fs::read_dir(&lib_dir)
        .with_context(|| format!("bpf-linker: listing {}", lib_dir.display()))?
        .flatten()
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| name.starts_with("libLLVM"))
        .collect();
    // libLLVM.so.22.1-rust-1.97.0-nightly
    let wanted = format!("libLLVM.so.{LLVM_MAJOR}.");
    let Some(library) = names.iter().find(|name| {
        name.starts_with(&wanted) && name.contains("-rust-") && name.ends_with("-nightly")
    }) else {
        bail!(
            "bpf-linker: the nightly at {} ships no {wanted}*-rust-*-nightly (its libLLVM files: \
             {names:?}); bpf-linker is built here with the `{LLVM_FEATURE}` feature: if the \
             nightly moved to another LLVM, update LLVM_MAJOR and LLVM_FEATURE in \
             xtask/src/setup.rs",
            sysroot.display()
        );
    };
    let library = lib_dir.join(library);

    // bpf-linker's build looks for <LLVM_PREFIX>/lib/libLLVM.so: a prefix holding only a link to
    // the nightly's library. Needed only while building (the binary records the soname).
    let prefix = target.join("xtask-llvm-prefix");
    let link = prefix.join("lib").join("libLLVM.so");
    std::fs::create_dir_all(prefix.join("lib"))
        .with_context(|| format!("bpf-linker: creating {}", prefix.join("lib").display()))?;
    match std::fs::remove_file(&link) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            return Err(error).with_context(|| format!("bpf-linker: removing {}", link.display()));
        }
        _ => {}
    }
    std::os::unix::fs::symlink(&library, &link).with_context(|| {
        format!(
            "bpf-linker: linking {} to {}",
            link.display(),
            library.display()
        )
    })?;

    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    run(Command::new(cargo)
        .args(["install", "bpf-linker", "--version", BPF_LINKER_REQ])
        .args(["--no-default-features", "--features", LLVM_FEATURE])
        // Replace a binary linked against an older nightly's library.
        .arg("--force")
        .env("LLVM_PREFIX", &prefix))
    .with_context(|| format!("bpf-linker: building with LLVM_PREFIX={}", prefix.display()))?;

    let check = output(Command::new("rustup").args(["run", "nightly", "bpf-linker", "--version"]))
        .context(
            "bpf-linker: installed, but `rustup run nightly bpf-linker --version` still fails \
             (is $CARGO_HOME/bin the install root?)",
        )?;
    println!(
        "bpf-linker: installed ({}, {})",
        check.trim(),
        seconds(started)
    );
    Ok(())
}

fn dpkg_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|out| out.status.success() && out.stdout.ends_with(b" installed"))
}

fn debian_packages(packages: &[&str]) -> anyhow::Result<()> {
    let started = Instant::now();
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|package| !dpkg_installed(package))
        .collect();
    if missing.is_empty() {
        println!("packages: present ({})", packages.join(", "));
        return Ok(());
    }
    println!("packages: installing {}", missing.join(", "));
    if process::find_in_path("apt-get").is_none() {
        bail!(
            "packages: {} missing and there is no apt-get to install them (this project \
             expects Debian)",
            missing.join(", ")
        );
    }
    let privilege = Privilege::acquire(&format!("install {}", missing.join(", ")))?;
    run(privilege
        .command("apt-get")
        .args(["update", "-qq"])
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    run(privilege
        .command("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    println!(
        "packages: installed {} ({})",
        missing.join(", "),
        seconds(started)
    );
    Ok(())
}

fn tracefs_mounted() -> anyhow::Result<bool> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")
        .context("tracefs: reading /proc/self/mounts")?;
    Ok(mounts.lines().any(|line| {
        let mut fields = line.split_whitespace();
        let _source = fields.next();
        fields.next() == Some(TRACEFS) && fields.next() == Some("tracefs")
    }))
}

/// Classic tracepoints and their format files live in tracefs.
fn tracefs() -> anyhow::Result<()> {
    if tracefs_mounted()? {
        println!("tracefs: mounted at {TRACEFS}");
        return Ok(());
    }
    let privilege = Privilege::acquire(&format!("mount tracefs at {TRACEFS}"))?;
    run(privilege
        .command("mount")
        .args(["-t", "tracefs", "nodev", TRACEFS]))
    .context("tracefs: mounting")?;
    println!("tracefs: mounted now at {TRACEFS}");
    Ok(())
}
