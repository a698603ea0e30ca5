//! Project tasks: `cargo xtask setup | run | test | bench | dist | image | vm-test`. These names are a contract (README,
//! CI's .ci/run).
//!
//! - `setup` installs what a fresh machine lacks, idempotently (a second or so when nothing is).
//! - `run -- ARGS` builds udptrace (release) and runs it as root (default: the lab demo).
//! - `test -- ARGS` checks the formatting, runs every test (unit tests and the root integration
//!   tests), then clippy.
//! - `dist` builds the static binary with its manual page, completions and checksums (dist/).
//! - `image` puts that binary alone in a container image (dist/udptrace-image.tar).
//! - `bench` measures the overhead on a UDP load against the alternatives (bench/results.md).
//!
//! When not root, what needs root goes through `sudo -E`; without sudo they fail (nothing is
//! skipped).

#[cfg(test)]
mod deploy;
mod dist;
// The private dockerd of `dist --check`: udptrace's own module, compiled in here (xtask cannot
// depend on udptrace, whose build needs the eBPF toolchain `setup` installs).
#[path = "../../udptrace/src/lab/dockerd.rs"]
#[expect(
    dead_code,
    reason = "the lab's accessors (pid, socket) serve udptrace's Docker tests, not the dist check"
)]
mod dockerd;
mod image;
mod process;
mod setup;
mod vm;

use std::{
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::Instant,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

use crate::process::{Privilege, describe, run};

#[derive(Parser)]
#[command(name = "xtask", about = "udptrace project tasks")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what this machine lacks: the nightly's rust-src, bpf-linker (against the
    /// nightly's LLVM), the Debian packages of the lab, tests and benchmark; mount tracefs.
    Setup,
    /// Set up, build udptrace (release) and run it as root with ARGS (default: the lab demo,
    /// `lab run wrong-source-reply --trace`). Exits with udptrace's status.
    Run {
        /// Arguments for udptrace.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Check the formatting (`cargo fmt --check`, first: it takes a second), set up, run every
    /// test (unit and root integration tests, release build), then clippy.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter, or `-- --nocapture`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build the static binary (x86_64-unknown-linux-musl, no dynamic libraries) with its
    /// manual page, shell completions and SHA256SUMS into dist/.
    Dist {
        /// Then check it as the test command does: static, `doctor` ready (also inside an
        /// image holding only the binary, under a private dockerd), a lab incident diagnosed.
        #[arg(long)]
        check: bool,
    },
    /// Build the static binary (as dist does), then a container image holding only it,
    /// offline (`docker import` under a private dockerd), saved as dist/udptrace-image.tar
    /// (`docker load -i`); deploy/kubernetes/udptrace.yaml runs it.
    Image {
        /// Then run the image as the DaemonSet does (host network and pid, its capabilities
        /// and mounts) under a private dockerd, and scrape its metrics.
        #[arg(long)]
        check: bool,
    },
    /// Record every lab scenario, traced, into udptrace/tests/recordings/ (the golden tests'
    /// fixtures: `udptrace replay` must rebuild each run's verdicts and flows from them).
    Recordings,
    /// Measure udptrace's overhead against no tracer, bpftrace and tcpdump; writes
    /// bench/results.md.
    Bench,
    /// Run the root integration tests on stock Debian kernels under QEMU (fetched once into
    /// ~/.cache/udptrace/vm); prints the kernel × hook × mechanism table and writes
    /// docs/kernel-matrix.md.
    VmTest {
        /// Only this kernel (repeatable): debian-6.1, debian-6.12, trixie-backports.
        #[arg(long)]
        kernel: Vec<String>,
        /// Extra arguments for the guests' test binary (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// `cargo xtask run` without arguments: the README's first-run demo.
const DEMO: &[&str] = &["lab", "run", "wrong-source-reply", "--trace"];

/// The eBPF crate builds only for bpfel-unknown-none (through udptrace/build.rs), never for the
/// host: `--workspace` must leave it out.
pub const EBPF_CRATE: &str = "udptrace-ebpf";

/// Makes udptrace/build.rs embed an empty eBPF object; run, test and bench need the real one.
const SKIP_EBPF: &str = "UDPTRACE_SKIP_EBPF";

/// Why run, test and bench need root.
const ROOT_REASON: &str = "load BPF programs and create network namespaces";

fn main() -> ExitCode {
    match dispatch(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let root = workspace_root();
    match cli.command {
        Task::Setup => setup::setup(&target_dir(&root), &all_packages()),
        Task::Run { args } => run_udptrace(&root, args),
        Task::Test { args } => test(&root, &args),
        Task::Bench => bench(&root),
        Task::Recordings => recordings(&root),
        Task::Dist { check } => {
            if check {
                Privilege::acquire(ROOT_REASON)?;
            }
            setup::setup(&target_dir(&root), setup::DIST_PACKAGES)?;
            let binary = dist::dist(&root, &target_dir(&root), cargo(&root))?;
            if check {
                dist::check(&binary)?;
            }
            Ok(())
        }
        Task::Image { check } => {
            if check {
                Privilege::acquire(ROOT_REASON)?;
            }
            setup::setup(&target_dir(&root), setup::DIST_PACKAGES)?;
            let binary = dist::dist(&root, &target_dir(&root), cargo(&root))?;
            let archive = image::image(&binary)?;
            if check {
                image::check(&binary, &archive)?;
            }
            Ok(())
        }
        Task::VmTest { kernel, args } => {
            Privilege::acquire(ROOT_REASON)?;
            setup::setup(&target_dir(&root), &vm_packages())?;
            vm::vm_test(&root, &target_dir(&root), || cargo(&root), &kernel, &args)
        }
    }
}

fn all_packages() -> Vec<&'static str> {
    [setup::PACKAGES, setup::BENCH_PACKAGES].concat()
}

fn vm_packages() -> Vec<&'static str> {
    [setup::PACKAGES, vm::VM_PACKAGES].concat()
}

/// Set to 1 to leave the kernel matrix out of `cargo xtask test` (quick local runs).
const SKIP_VM_TEST: &str = "UDPTRACE_SKIP_VM_TEST";

fn vm_matrix_wanted() -> bool {
    std::env::var_os(SKIP_VM_TEST).is_none_or(|value| value.is_empty() || value == "0")
}

/// Builds, then replaces this process with `udptrace ARGS` (through `sudo -E` when not root), so
/// its exit status, signals and terminal are udptrace's own.
fn run_udptrace(root: &Path, args: Vec<String>) -> anyhow::Result<()> {
    let privilege = Privilege::acquire(ROOT_REASON)?;
    setup::setup(&target_dir(root), setup::PACKAGES)?;
    build_release(root)?;
    let args = if args.is_empty() {
        DEMO.iter().map(|&arg| arg.to_owned()).collect()
    } else {
        args
    };
    let binary = target_dir(root).join("release").join("udptrace");
    let mut command = privilege.command(&binary);
    command.args(&args);
    exec(command)
}

fn test(root: &Path, args: &[String]) -> anyhow::Result<()> {
    // Before anything slow (and before asking for sudo): a formatting slip should cost a
    // second, not the twenty minutes of the tests that would come first.
    let mut format = cargo(root);
    format.args(["fmt", "--all", "--check"]);
    println!("test: formatting: {}", describe(&format));
    run(&mut format).context("formatting differs from rustfmt's: run `cargo fmt --all`")?;
    println!("test: formatting: passed");
    let privilege = Privilege::acquire(&format!("run the integration tests (they {ROOT_REASON})"))?;
    let matrix = vm_matrix_wanted() && args.is_empty();
    let mut packages = if matrix {
        vm_packages()
    } else {
        setup::PACKAGES.to_vec()
    };
    packages.extend(setup::DIST_PACKAGES);
    setup::setup(&target_dir(root), &packages)?;

    let mut test = cargo(root);
    test.args(["test", "--release"]);
    if !selects_packages(args) {
        test.args(["--workspace", "--exclude", EBPF_CRATE]);
    }
    run_as_root(&mut test, privilege);
    test.args(args).env("RUST_BACKTRACE", "1");

    let mut clippy = cargo(root);
    // --release: shares udptrace/build.rs's output (the eBPF object) with the test build.
    clippy.args([
        "clippy",
        "--workspace",
        "--exclude",
        EBPF_CRATE,
        "--release",
        "--all-targets",
    ]);
    clippy.args(["--", "-D", "warnings"]);

    let mut failures = Vec::new();
    for (name, command) in [("tests", &mut test), ("clippy", &mut clippy)] {
        stage(name, &describe(command), &mut failures, || run(command));
    }
    if args.is_empty() {
        stage(
            "static binary",
            "cargo xtask dist, then its doctor and the closed-port lab incident; cargo xtask \
             image --check",
            &mut failures,
            || {
                let binary = dist::dist(root, &target_dir(root), cargo(root))?;
                dist::check(&binary)?;
                image::check(&binary, &image::image(&binary)?)
            },
        );
    }
    if matrix {
        let what = format!("cargo xtask vm-test (set {SKIP_VM_TEST}=1 to skip)");
        stage("kernel matrix", &what, &mut failures, || {
            vm::vm_test(root, &target_dir(root), || cargo(root), &[], &[])
        });
    } else {
        println!("test: kernel matrix: skipped ({SKIP_VM_TEST} set, or a test selection given)");
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }
    Ok(())
}

/// Runs one stage of `test`, timed; a failure is recorded and the next stage still runs.
fn stage(
    name: &str,
    what: &str,
    failures: &mut Vec<String>,
    work: impl FnOnce() -> anyhow::Result<()>,
) {
    let started = Instant::now();
    println!("test: {name}: {what}");
    let result = work();
    let seconds = started.elapsed().as_secs_f64();
    match result {
        Ok(()) => println!("test: {name}: passed ({seconds:.0} s)"),
        Err(error) => {
            println!("test: {name}: FAILED ({seconds:.0} s)");
            failures.push(format!("{name}: {error:#}"));
        }
    }
}

/// The extra arguments choose packages themselves (`-p`, `--package`), which `--workspace`
/// would override.
fn selects_packages(args: &[String]) -> bool {
    args.iter()
        .take_while(|arg| *arg != "--")
        .any(|arg| arg.starts_with("-p") || arg.starts_with("--package"))
}

/// `cargo bench` of udptrace/benches/udptrace-bench.rs (the `bench` profile: release
/// settings), which writes bench/results.md.
fn bench(root: &Path) -> anyhow::Result<()> {
    let privilege = Privilege::acquire(ROOT_REASON)?;
    setup::setup(&target_dir(root), &all_packages())?;
    let mut command = cargo(root);
    command.args([
        "bench",
        "--package",
        "udptrace",
        "--bench",
        "udptrace-bench",
    ]);
    run_as_root(&mut command, privilege);
    command.arg("--").arg(root.join("bench").join("results.md"));
    exec(command)
}

/// Makes cargo run the binaries it builds (tests, benches) as root: through `sudo -E` when
/// this process is not root. Only they run as root; the build stays the user's (no root-owned
/// files in target/).
fn run_as_root(cargo: &mut Command, privilege: Privilege) {
    if privilege == Privilege::Sudo {
        cargo.args(["--config", r#"target."cfg(all())".runner = "sudo -E""#]);
    }
}

/// Where `cargo xtask recordings` writes and the golden tests (udptrace/src/replay.rs) read.
const RECORDINGS: &str = "udptrace/tests/recordings";

fn recordings(root: &Path) -> anyhow::Result<()> {
    let privilege = Privilege::acquire(ROOT_REASON)?;
    setup::setup(&target_dir(root), setup::PACKAGES)?;
    build_release(root)?;
    let binary = target_dir(root).join("release").join("udptrace");
    let list = process::output(Command::new(&binary).args(["lab", "list"]))?;
    // `lab list`: a scenario's name starts each unindented line; an indented `global:` line
    // under it marks a scenario that changes a machine-wide setting, which runs (and is
    // recorded) only in a test guest: `cargo xtask vm-test --kernel K -- conntrack:: --nocapture`
    // prints its recording (udptrace/tests/integration/conntrack.rs).
    let mut names: Vec<&str> = Vec::new();
    for line in list.lines() {
        if !line.starts_with(' ') {
            names.extend(line.split_whitespace().next());
        } else if line.trim_start().starts_with("global:")
            && let Some(name) = names.pop()
        {
            println!("recordings: {name} changes a machine-wide setting: recorded in a test guest");
        }
    }
    let directory = root.join(RECORDINGS);
    std::fs::create_dir_all(&directory)?;
    for name in names {
        let file = directory.join(format!("{name}.ndjson"));
        let mut command = privilege.command(&binary);
        command
            .args(["lab", "run", name, "--trace", "--json", "-o"])
            .arg(&file)
            .stdout(std::process::Stdio::null());
        run(&mut command)?;
        println!("recordings: {}", file.display());
    }
    Ok(())
}

fn build_release(root: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    run(cargo(root).args(["build", "--release", "--package", "udptrace"]))?;
    println!("build: done ({:.0} s)", started.elapsed().as_secs_f64());
    Ok(())
}

/// Replaces this process with `command`; returns only if that fails.
fn exec(mut command: Command) -> anyhow::Result<()> {
    let line = describe(&command);
    println!("exec: {line}");
    let error = command.exec();
    Err(error).with_context(|| format!("could not start `{line}`"))
}

/// Cargo (the one running xtask) in the workspace root, without the variable that would build
/// udptrace without its eBPF object.
fn cargo(root: &Path) -> Command {
    if std::env::var_os(SKIP_EBPF).is_some() {
        eprintln!("xtask: ignoring {SKIP_EBPF}: this task needs the real eBPF object");
    }
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.current_dir(root).env_remove(SKIP_EBPF);
    command
}

/// The directory holding the workspace Cargo.toml (xtask's parent).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Cargo's target directory for the workspace ($CARGO_TARGET_DIR, else target/).
fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), |dir| root.join(dir))
}
