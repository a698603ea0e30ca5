//! `cargo xtask setup`: what a fresh machine of this kind lacks, installed idempotently.
//! See ../shared/notes/environment.md for why each step is needed.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail};

/// Debian packages: iproute2 (lab namespaces), nftables (firewall scenario), netcat-openbsd
/// and python3 (the tests reproduce the incidents with real tools too).
const PACKAGES: &[&str] = &["iproute2", "nftables", "netcat-openbsd", "python3"];

pub fn setup() -> anyhow::Result<()> {
    rust_src()?;
    bpf_linker()?;
    packages()?;
    tracefs()
}

fn output(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(program)
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {program} {}", args.join(" ")))?;
    if !output.status.success() {
        bail!("`{program} {}` failed ({})", args.join(" "), output.status);
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn status(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("running {program} {}", args.join(" ")))?;
    if !status.success() {
        bail!("`{program} {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

/// The eBPF crate is built with `-Z build-std=core`, which needs the nightly's rust-src.
fn rust_src() -> anyhow::Result<()> {
    let installed = output(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )
    .context(
        "the nightly toolchain is required for the eBPF crate (rustup toolchain install nightly)",
    )?;
    if installed.lines().any(|line| line.starts_with("rust-src")) {
        println!("setup: rust-src (nightly): present");
        return Ok(());
    }
    status(
        "rustup",
        &["component", "add", "rust-src", "--toolchain", "nightly"],
    )?;
    println!("setup: rust-src (nightly): installed");
    Ok(())
}

/// bpf-linker must link against the nightly's own LLVM; `rustup run nightly` puts that
/// library on the loader path, as aya-build does.
fn bpf_linker() -> anyhow::Result<()> {
    let works = Command::new("rustup")
        .args(["run", "nightly", "bpf-linker", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if works {
        println!("setup: bpf-linker: present");
        return Ok(());
    }
    let started = Instant::now();
    let sysroot = PathBuf::from(output("rustc", &["+nightly", "--print", "sysroot"])?.trim());
    let library = std::fs::read_dir(sysroot.join("lib"))?
        .flatten()
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so.") && n.contains("nightly"))
        })
        .context("the nightly toolchain ships no libLLVM.so.*-nightly")?;
    // bpf-linker's build looks for <LLVM_PREFIX>/lib/libLLVM.so.
    let prefix = std::env::temp_dir().join("udptrace-llvm-prefix");
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib)?;
    let link = lib.join("libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&library, &link)
        .with_context(|| format!("linking {}", link.display()))?;
    let status = Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--version",
            "^0.13",
            "--no-default-features",
            "--features",
            "llvm-22",
        ])
        .env("LLVM_PREFIX", &prefix)
        .status()
        .context("running cargo install bpf-linker")?;
    if !status.success() {
        bail!("installing bpf-linker failed ({status})");
    }
    println!(
        "setup: bpf-linker: installed ({} s)",
        started.elapsed().as_secs()
    );
    Ok(())
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("install ok installed"))
}

fn packages() -> anyhow::Result<()> {
    install(PACKAGES)
}

/// The alternatives the benchmark compares udptrace with.
pub fn bench_packages() -> anyhow::Result<()> {
    install(&["bpftrace", "tcpdump"])
}

fn install(packages: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        println!("setup: packages ({}): present", packages.join(", "));
        return Ok(());
    }
    if !Path::new("/usr/bin/apt-get").exists() {
        bail!("missing packages {missing:?} and no apt-get to install them");
    }
    status("apt-get", &["update", "-qq"])?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(&missing);
    status("apt-get", &args)?;
    println!("setup: packages: installed {}", missing.join(", "));
    Ok(())
}

/// Classic tracepoints and the route hooks need tracefs.
fn tracefs() -> anyhow::Result<()> {
    if Path::new("/sys/kernel/tracing/events").is_dir() {
        println!("setup: tracefs: mounted");
        return Ok(());
    }
    status("mount", &["-t", "tracefs", "nodev", "/sys/kernel/tracing"])?;
    println!("setup: tracefs: mounted now");
    Ok(())
}
