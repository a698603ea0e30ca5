//! `cargo xtask dist`: the one file an engineer copies to the broken host. udptrace built for
//! `x86_64-unknown-linux-musl` (the eBPF object embedded, C library linked in: no dynamic
//! library, no interpreter, so it runs on Debian 11, RHEL 8 or an empty container image
//! whatever glibc they have), with its manual page, shell completions and SHA256SUMS, in
//! `dist/`. `check` is what the test command runs on it.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use crate::{
    dockerd::{Network, PrivateDocker},
    process::{output, run},
};
use anyhow::{Context as _, bail, ensure};
use object::{
    Endianness,
    elf::{DT_NEEDED, PT_DYNAMIC, PT_INTERP},
    read::elf::{Dyn as _, ElfFile64, ProgramHeader as _},
};

pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

/// What `dist/` holds, besides the binary and SHA256SUMS: (file, udptrace arguments that print
/// it).
const GENERATED: &[(&str, &[&str])] = &[
    ("udptrace.8", &["man"]),
    ("completions/udptrace.bash", &["completions", "bash"]),
    ("completions/_udptrace", &["completions", "zsh"]),
    ("completions/udptrace.fish", &["completions", "fish"]),
];

/// Builds the static binary and writes `dist/`; returns the binary's path there.
pub fn dist(root: &Path, target: &Path, mut cargo: Command) -> anyhow::Result<PathBuf> {
    run(cargo.args([
        "build",
        "--profile",
        "dist",
        "--package",
        "udptrace",
        "--target",
        MUSL_TARGET,
    ]))?;
    let built = target.join(MUSL_TARGET).join("dist").join("udptrace");
    let linking = static_linking(&fs::read(&built).with_context(|| built.display().to_string())?)?;
    if let Linking::Dynamic(why) = linking {
        bail!("{}: not a static binary: {why}", built.display());
    }
    let dist = root.join("dist");
    if dist.exists() {
        fs::remove_dir_all(&dist)
            .with_context(|| format!("removing the old {}", dist.display()))?;
    }
    fs::create_dir_all(dist.join("completions"))?;
    let binary = dist.join("udptrace");
    fs::copy(&built, &binary).with_context(|| format!("copying to {}", binary.display()))?;
    for (file, args) in GENERATED {
        let text = output(Command::new(&binary).args(*args))?;
        fs::write(dist.join(file), text).with_context(|| format!("writing dist/{file}"))?;
    }
    let mut files = vec!["udptrace"];
    files.extend(GENERATED.iter().map(|(file, _)| *file));
    let sums = output(Command::new("sha256sum").args(&files).current_dir(&dist))?;
    fs::write(dist.join("SHA256SUMS"), sums).context("writing dist/SHA256SUMS")?;
    let size = fs::metadata(&binary)?.len();
    println!(
        "dist: {} ({:.1} MiB, static, {MUSL_TARGET}), udptrace.8, completions/, SHA256SUMS",
        binary.display(),
        size as f64 / f64::from(1 << 20)
    );
    Ok(binary)
}

/// The test command's check of the dist binary, as a user would run it: static (no
/// interpreter: `ldd` agrees), `doctor` ready, and one lab incident diagnosed.
pub fn check(binary: &Path) -> anyhow::Result<()> {
    let ldd = Command::new("ldd").arg(binary).output()?;
    let said =
        String::from_utf8_lossy(&ldd.stdout).into_owned() + &String::from_utf8_lossy(&ldd.stderr);
    // glibc's ldd: "not a dynamic executable" (exit 1), or "statically linked" for static-pie.
    ensure!(
        said.contains("not a dynamic executable") || said.contains("statically linked"),
        "ldd {}: {said}",
        binary.display()
    );
    let doctor = Command::new(binary).args(["doctor", "--json"]).output()?;
    let report: serde_json::Value = serde_json::from_slice(&doctor.stdout).with_context(|| {
        format!(
            "doctor --json printed {}",
            String::from_utf8_lossy(&doctor.stdout)
        )
    })?;
    ensure!(
        doctor.status.success() && report["ok"] == true,
        "the static binary's doctor is not ready ({}): {report}",
        doctor.status
    );
    let lab = Command::new(binary)
        .args(["lab", "run", "closed-port", "--trace", "--json"])
        .output()?;
    ensure!(
        lab.status.success(),
        "lab run closed-port: {}: {}",
        lab.status,
        String::from_utf8_lossy(&lab.stderr)
    );
    let codes: Vec<String> = String::from_utf8_lossy(&lab.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|record| record["type"] == "verdict" && record["final"] == true)
        .filter_map(|record| record["code"].as_str().map(str::to_owned))
        .collect();
    ensure!(
        codes == ["port_unreachable"],
        "lab run closed-port with the static binary gave verdicts {codes:?}, expected port_unreachable"
    );
    println!("dist: static, doctor ready, closed-port diagnosed port_unreachable");
    doctor_in_an_empty_image(binary)
}

/// Runs the binary's `doctor` in a container whose image holds that one file (no shell, no C
/// library), under a private dockerd: what "copy one file" means on a host whose userland is
/// nothing like this one. With a tracer's privileges (BPF, tracefs, /sys/kernel/btf).
fn doctor_in_an_empty_image(binary: &Path) -> anyhow::Result<()> {
    let scratch = std::env::temp_dir().join(format!("udptrace-dist-docker-{}", std::process::id()));
    let docker = PrivateDocker::start(&scratch, &Network::None)?;
    docker.import("udptrace-static:check", &[("udptrace", binary)])?;
    let run = docker
        .docker()
        .args([
            "run",
            "--rm",
            // What `--privileged` gives, but for CAP_SYS_RESOURCE: a container cannot be
            // given a capability its daemon lacks, and sandboxes like this development machine
            // drop that one (kernels from 5.11 account BPF memory without RLIMIT_MEMLOCK).
            "--cap-add",
            "ALL",
            "--cap-drop",
            "SYS_RESOURCE",
            "--security-opt",
            "seccomp=unconfined",
            "--security-opt",
            "apparmor=unconfined",
            "--security-opt",
            "systempaths=unconfined",
            "--network",
            "none",
            "udptrace-static:check",
            "/udptrace",
            "doctor",
            "--json",
        ])
        .output()?;
    let report: serde_json::Value = serde_json::from_slice(&run.stdout).with_context(|| {
        format!(
            "doctor --json in the empty image: {}: {}{}",
            run.status,
            String::from_utf8_lossy(&run.stdout),
            String::from_utf8_lossy(&run.stderr)
        )
    })?;
    ensure!(
        run.status.success() && report["ok"] == true,
        "doctor in the empty image is not ready ({}): {report}",
        run.status
    );
    println!("dist: doctor ready inside an image holding only the binary (private dockerd)");
    Ok(())
}

#[derive(Debug, PartialEq, Eq)]
enum Linking {
    Static,
    /// Why not: the interpreter, or the libraries it needs.
    Dynamic(String),
}

/// Whether an ELF file runs without a dynamic loader: no `PT_INTERP` segment and no
/// `DT_NEEDED` entry (a static-pie binary has a dynamic section for its own relocations, which
/// its start-up code applies, but needs no library).
fn static_linking(data: &[u8]) -> anyhow::Result<Linking> {
    let elf = ElfFile64::<Endianness>::parse(data).context("not a 64-bit ELF file")?;
    let endian = elf.endian();
    let mut needed = 0;
    for segment in elf.elf_program_headers() {
        match segment.p_type(endian) {
            PT_INTERP => {
                let interpreter = segment
                    .interpreter(endian, data)
                    .ok()
                    .flatten()
                    .map_or_else(String::new, |name| {
                        String::from_utf8_lossy(name).into_owned()
                    });
                return Ok(Linking::Dynamic(format!("interpreter {interpreter}")));
            }
            PT_DYNAMIC => {
                let entries = segment
                    .dynamic(endian, data)
                    .context("reading the dynamic section")?
                    .unwrap_or_default();
                needed += entries
                    .iter()
                    .filter(|entry| entry.d_tag(endian) == DT_NEEDED)
                    .count();
            }
            _ => {}
        }
    }
    Ok(if needed == 0 {
        Linking::Static
    } else {
        Linking::Dynamic(format!("{needed} libraries needed"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_glibc_binary_is_dynamic() {
        // The binary running this test is built for the host's glibc.
        let me = fs::read(std::env::current_exe().unwrap()).unwrap();
        let Linking::Dynamic(why) = static_linking(&me).unwrap() else {
            panic!("the test binary looks static");
        };
        assert!(why.starts_with("interpreter /lib"), "{why}");
    }

    #[test]
    fn non_elf_files_are_an_error() {
        assert!(static_linking(b"#!/bin/sh\n").is_err());
    }
}
