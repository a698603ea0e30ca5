//! Project tasks: `cargo xtask setup | run | test`. These names are a contract (README, CI).
//!
//! - `setup` installs what a fresh machine lacks, idempotently (seconds when nothing is).
//! - `run -- ARGS` builds udptrace and runs it as root (default: the lab demo).
//! - `bench` measures the overhead on a UDP load against the alternatives (bench/results.md).
//! - `test` runs every test: unit tests and the root integration tests, then clippy.

mod setup;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "udptrace project tasks")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the nightly rust-src, bpf-linker and the Debian packages the lab and tests use.
    Setup,
    /// Build udptrace (release) and run it as root; default arguments run the lab demo.
    Run {
        /// Arguments for udptrace.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Measure udptrace's overhead against no tracer, bpftrace and tcpdump; writes
    /// bench/results.md.
    Bench,
    /// Run every test (unit and root integration tests), then clippy.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let root = workspace_root();
    match cli.command {
        Task::Setup => setup::setup(),
        Task::Run { args } => {
            setup::setup()?;
            cargo(&root, &["build", "--release", "--package", "udptrace"])?;
            let args = if args.is_empty() {
                ["lab", "run", "wrong-source-reply", "--trace"]
                    .map(String::from)
                    .to_vec()
            } else {
                args
            };
            let binary = root.join("target/release/udptrace");
            let status = as_root(&binary, &args)?
                .status()
                .with_context(|| format!("running {}", binary.display()))?;
            if !status.success() {
                bail!("udptrace exited with {status}");
            }
            Ok(())
        }
        Task::Bench => {
            setup::setup()?;
            setup::bench_packages()?;
            cargo(&root, &["build", "--release", "--package", "udptrace"])?;
            let binary = root.join("target/release/udptrace-bench");
            let results = root.join("bench/results.md").display().to_string();
            let status = as_root(&binary, &[results])?
                .current_dir(&root)
                .status()
                .with_context(|| format!("running {}", binary.display()))?;
            if !status.success() {
                bail!("the benchmark failed ({status})");
            }
            Ok(())
        }
        Task::Test { args } => {
            setup::setup()?;
            require_root_for_tests()?;
            // The workspace's default members: every crate but the eBPF one, which only builds
            // for bpfel-unknown-none (through udptrace/build.rs).
            let mut test = vec!["test", "--release"];
            if !args.is_empty() {
                test.push("--");
                test.extend(args.iter().map(String::as_str));
            }
            cargo(&root, &test)?;
            cargo(
                &root,
                &[
                    "clippy",
                    "--workspace",
                    "--exclude",
                    "udptrace-ebpf",
                    "--release",
                    "--all-targets",
                    "--",
                    "-D",
                    "warnings",
                ],
            )
        }
    }
}

/// The directory holding the workspace Cargo.toml (xtask's parent).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn is_root() -> bool {
    // `id -u` avoids a libc dependency for one call.
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// Root integration tests must run: as root, else through sudo; never skipped.
fn require_root_for_tests() -> anyhow::Result<()> {
    if is_root() {
        return Ok(());
    }
    bail!(
        "the integration tests load BPF programs and create network namespaces: run `sudo -E cargo xtask test`{}",
        if std::env::var_os("CI").is_some() {
            " (CI=true: not skipping)"
        } else {
            ""
        }
    )
}

/// `binary args` as root: directly when root, else through `sudo -E`.
fn as_root(binary: &Path, args: &[String]) -> anyhow::Result<Command> {
    if is_root() {
        let mut command = Command::new(binary);
        command.args(args);
        return Ok(command);
    }
    if Command::new("sudo").arg("-n").arg("true").status().is_err() {
        bail!("udptrace needs root and sudo is not installed: run this as root");
    }
    let mut command = Command::new("sudo");
    command.arg("-E").arg(binary).args(args);
    Ok(command)
}

/// Runs cargo in the workspace, failing with the command line.
fn cargo(root: &Path, args: &[&str]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args(args)
        .current_dir(root)
        .env("RUST_BACKTRACE", "1")
        .status()
        .with_context(|| format!("running {cargo} {}", args.join(" ")))?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}
