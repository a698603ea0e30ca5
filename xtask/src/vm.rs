//! `cargo xtask vm-test`: the root integration tests on stock Debian kernels under QEMU.
//!
//! For each kernel of [`KERNELS`]: fetch its packages once into a cache (`apt-get download`,
//! `dpkg -x`, `depmod`), build an initramfs holding busybox, the release `udptrace`, the
//! integration test binary, the tools the tests use (ip, nft, nc, python3, modprobe) at
//! their host paths with their libraries, and the kernel's networking modules; boot it (KVM
//! where it really works, else TCG: the machines here are PVM guests, which hang stock kernels,
//! ../shared/notes/vm-matrix.md); run `udptrace doctor --json` and the test binary inside; and
//! print kernel × hook × mechanism × tests as a Markdown table (also written to
//! docs/kernel-matrix.md).

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader, Write as _},
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    EBPF_CRATE, dist,
    process::{describe, find_in_path, output, run},
};

/// Packages vm-test needs on the host besides the test packages.
pub const VM_PACKAGES: &[&str] = &["qemu-system-x86", "busybox-static", "kmod"];

/// Where a kernel comes from.
struct KernelSource {
    /// Short name (`--kernel`, table rows, cache directory).
    name: &'static str,
    /// Extended regular expression for `apt-cache search --names-only`; the newest match is
    /// used, or the newest that downloads (for split images, of `linux-binary-*`, whose
    /// `linux-modules-*` twin comes too).
    pattern: &'static str,
    /// Extra apt sources (a private apt configuration; the host's sources stay untouched).
    sources: Option<&'static str>,
}

/// Debian's cloud kernels: Debian 11's (bullseye-security 5.10: kfree_skb without drop
/// reasons, the oldest udptrace supports), the oldest stable line still shipped
/// (bookworm-security 6.1), the current one (bookworm-security 6.12) and the newest in
/// trixie-backports.
const KERNELS: &[KernelSource] = &[
    KernelSource {
        name: "debian-5.10",
        pattern: r"^linux-image-5\.10\.0-[0-9]+-cloud-amd64-unsigned$",
        sources: Some(
            "deb http://deb.debian.org/debian bullseye main\n\
             deb http://deb.debian.org/debian-security bullseye-security main\n",
        ),
    },
    KernelSource {
        name: "debian-6.1",
        pattern: r"^linux-image-6\.1\.0-[0-9]+-cloud-amd64-unsigned$",
        sources: None,
    },
    KernelSource {
        name: "debian-6.12",
        pattern: r"^linux-image-6\.12\.[0-9]+\+deb12-cloud-amd64-unsigned$",
        sources: None,
    },
    KernelSource {
        name: "trixie-backports",
        pattern: r"^linux-binary-[0-9.]+\+deb13-cloud-amd64$",
        sources: Some(
            "deb http://deb.debian.org/debian trixie main\n\
             deb http://deb.debian.org/debian trixie-backports main\n",
        ),
    },
];

/// A guest that has not reported by then is killed (TCG is 10-30x slower than the host).
const VM_TIMEOUT: Duration = Duration::from_mins(25);

/// Markers the guest's /init prints around what the host parses.
const DOCTOR_BEGIN: &str = "@@udptrace-doctor@@";
const TESTS_EXIT: &str = "@@udptrace-tests-exit=";

/// Networking modules the tests load (veth, ifb, bridge, nftables, conntrack and their
/// dependencies); everything else autoloads from these directories through modprobe.
const MODULE_DIRS: &[&str] = &[
    "kernel/net",
    "kernel/lib",
    "kernel/crypto",
    "kernel/drivers/net/veth.ko",
    "kernel/drivers/net/veth.ko.xz",
    "kernel/drivers/net/veth.ko.zst",
    // The no-reply-from-peer scenario sends out of an ifb device (it drops what it is given
    // without a drop event, like a wire that nobody answers on).
    "kernel/drivers/net/ifb.ko",
    "kernel/drivers/net/ifb.ko.xz",
    "kernel/drivers/net/ifb.ko.zst",
];

/// Host programs the tests and the lab run, copied with their libraries.
/// `tc` shapes the client's device in the tx-queue scenarios (sch_tbf autoloads from kernel/net),
/// and udptrace reads the qdisc a `tx_drop` names with it.
const TOOLS: &[&str] = &["ip", "tc", "nft", "nc", "python3", "kmod"];

struct KernelImage {
    name: String,
    vmlinuz: PathBuf,
    /// `<root>/usr/lib/modules/<release>` (or `lib/modules`).
    modules: PathBuf,
    release: String,
}

/// One kernel's run.
pub struct KernelResult {
    name: String,
    release: String,
    /// (hook, mechanism or None).
    hooks: Vec<(String, Option<String>)>,
    /// The drop reasons udptrace infers there (empty: the kernel's own reasons).
    inferred_reasons: Vec<String>,
    passed: Vec<String>,
    failed: Vec<String>,
    /// A test whose outcome has not been printed yet.
    pending: Option<String>,
    status: Result<(), String>,
    seconds: f64,
    /// The guest kernel's own crash report (`Oops:`/`Kernel panic` line), if it crashed.
    crash: Option<String>,
    /// The crash of an earlier boot of this kernel that was retried.
    retried_after: Option<String>,
}

pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("UDPTRACE_VM_CACHE") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache"),
        PathBuf::from,
    );
    base.join("udptrace").join("vm")
}

/// Runs the matrix; `only` restricts it to kernels by name, `test_args` go to the guests' test
/// binary (a name filter). Writes `docs/kernel-matrix.md` when every kernel ran every test.
pub fn vm_test(
    root: &Path,
    target: &Path,
    cargo: impl Fn() -> Command,
    only: &[String],
    test_args: &[String],
) -> anyhow::Result<()> {
    for name in only {
        if !KERNELS.iter().any(|k| k.name == name) {
            let known: Vec<_> = KERNELS.iter().map(|k| k.name).collect();
            bail!("unknown kernel {name}: one of {}", known.join(", "));
        }
    }
    let started = Instant::now();
    // The binary a user copies to a host (static, musl) is the one the guests run: put where
    // the integration tests look for theirs (`CARGO_BIN_EXE_udptrace`, the release build).
    let udptrace = dist::dist(root, target, cargo())?;
    let tests = integration_test_binary(cargo())?;
    let tests_udptrace = target.join("release").join("udptrace");
    let work = target.join("vm-test");
    fs::create_dir_all(&work)?;
    let common = common_archive(&work, &udptrace, &tests_udptrace, &tests, test_args)?;
    let cache = cache_dir();
    let mut kernels = Vec::new();
    for source in KERNELS
        .iter()
        .filter(|k| only.is_empty() || only.iter().any(|n| n == k.name))
    {
        kernels.push(fetch(source, &cache)?);
    }
    // One guest at a time: under TCG a guest (-smp 2) keeps both CPUs of the 2-CPU machine
    // busy; two at once took about 1000 s each instead of 480 (no gain) and stretched the
    // timing tests (a filter's verification time, the exit after SIGINT) past their bounds.
    let results: Vec<_> = kernels
        .iter()
        .map(|kernel| test_kernel(kernel, &work, &common))
        .collect();
    let table = table(&results);
    println!("\n{table}");
    for result in results.iter().filter(|r| !r.failed.is_empty()) {
        print_failures(&work.join(format!("{}.log", result.name)), &result.name);
    }
    if only.is_empty() && test_args.is_empty() {
        let doc = format!(
            "# Kernel matrix\n\nWritten by `cargo xtask vm-test` ({:.0} s on a 2-vCPU PVM guest, QEMU TCG): \
             the root integration tests inside each stock Debian cloud kernel, and the attach mechanism \
             `udptrace doctor` chose for each hook there.\n\n{table}\n{}",
            started.elapsed().as_secs_f64(),
            host_only_note()
        );
        fs::write(root.join("docs").join("kernel-matrix.md"), doc)?;
    }
    let broken: Vec<_> = results
        .iter()
        .filter(|r| r.status.is_err() || !r.failed.is_empty())
        .map(|r| r.name.clone())
        .collect();
    if !broken.is_empty() {
        bail!("integration tests failed on {}", broken.join(", "));
    }
    Ok(())
}

/// Builds the integration tests (release) and returns their executable. The package selection
/// is the test command's (`--workspace --exclude udptrace-ebpf`): a narrower one (`--package
/// udptrace`) unifies dependency features differently and rebuilt everything, eBPF included,
/// after the host tests had built it (98 s of the CI run).
fn integration_test_binary(mut cargo: Command) -> anyhow::Result<PathBuf> {
    cargo.args([
        "test",
        "--release",
        "--workspace",
        "--exclude",
        EBPF_CRATE,
        "--test",
        "integration",
        "--no-run",
        "--message-format=json",
    ]);
    let text = output(&mut cargo)?;
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["target"]["name"] == "integration")
        .find_map(|message| message["executable"].as_str().map(PathBuf::from))
        .context("cargo did not name the integration test executable")
}

/// Copies `file` (following symlinks) to the same path under `root`.
fn copy_at_host_path(root: &Path, file: &Path) -> anyhow::Result<()> {
    let destination = root.join(file.strip_prefix("/").unwrap_or(file));
    if let Some(parent) = destination.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::copy(file, &destination)
        .with_context(|| format!("copying {} into the initramfs", file.display()))?;
    Ok(())
}

/// Shared libraries `file` needs, from `ldd`.
fn libraries(file: &Path) -> Vec<PathBuf> {
    // Not a dynamic executable (static, or a script): nothing to add.
    let text = output(Command::new("ldd").arg(file)).unwrap_or_default();
    text.split_whitespace()
        .filter(|word| word.starts_with('/'))
        .map(PathBuf::from)
        .collect()
}

/// The kernel-independent part of the initramfs as a newc cpio archive: busybox, /init, the
/// test binary and the tools at their host paths with their libraries, python's standard
/// library, and the static `udptrace` at `udptrace_at` (where the tests run it from).
fn common_archive(
    work: &Path,
    udptrace: &Path,
    udptrace_at: &Path,
    tests: &Path,
    test_args: &[String],
) -> anyhow::Result<PathBuf> {
    let root = work.join("common");
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    fs::create_dir_all(&root)?;
    // usrmerge, as on the host: /bin, /sbin, /lib, /lib64 point into /usr.
    for dir in ["usr/bin", "usr/sbin", "usr/lib", "usr/lib64", "opt/busybox"] {
        fs::create_dir_all(root.join(dir))?;
    }
    for (link, to) in [
        ("bin", "usr/bin"),
        ("sbin", "usr/sbin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ] {
        symlink(to, root.join(link))?;
    }
    for dir in ["proc", "sys", "dev", "tmp", "run", "var", "etc", "root"] {
        fs::create_dir_all(root.join(dir))?;
    }
    symlink("/run", root.join("var/run"))?;
    let busybox = find_in_path("busybox").context("busybox-static is not installed")?;
    fs::copy(&busybox, root.join("opt/busybox/busybox"))?;
    let mut files = BTreeSet::from([tests.to_path_buf()]);
    for tool in TOOLS {
        // The system's, not whatever PATH finds first (e.g. a pyenv shim).
        let path = ["/usr/sbin", "/usr/bin"]
            .iter()
            .map(|dir| Path::new(dir).join(tool))
            .find(|path| path.exists())
            .with_context(|| format!("{tool} is not installed in /usr/bin or /usr/sbin"))?;
        files.insert(fs::canonicalize(&path)?);
        // Tools are found by name through PATH: keep the name pointing at the real file.
        let real = fs::canonicalize(&path)?;
        if real.file_name() != path.file_name() {
            let link = root.join("usr/bin").join(tool);
            symlink(&real, link)?;
        }
    }
    symlink("/usr/bin/kmod", root.join("usr/sbin/modprobe"))?;
    let python_lib = Path::new("/usr/lib/python3.11");
    let mut python_modules = Vec::new();
    if python_lib.exists() {
        copy_tree(
            python_lib,
            &root.join("usr/lib/python3.11"),
            &mut python_modules,
        )?;
    }
    let mut libs = BTreeSet::new();
    for file in files.iter().chain(&python_modules) {
        libs.extend(libraries(file));
    }
    for file in files.iter().chain(&libs) {
        copy_at_host_path(&root, file)?;
    }
    for file in [
        "/etc/services",
        "/etc/protocols",
        "/etc/passwd",
        "/etc/group",
        "/etc/nsswitch.conf",
    ] {
        if Path::new(file).exists() {
            copy_at_host_path(&root, Path::new(file))?;
        }
    }
    // Static: no libraries to bring.
    let guest_udptrace = root.join(udptrace_at.strip_prefix("/").unwrap_or(udptrace_at));
    fs::create_dir_all(guest_udptrace.parent().unwrap_or(&root))?;
    fs::copy(udptrace, &guest_udptrace)
        .with_context(|| format!("copying {} into the initramfs", udptrace.display()))?;
    let init = root.join("init");
    fs::write(
        &init,
        INIT.replace("@UDPTRACE@", &udptrace_at.display().to_string())
            .replace("@TESTS@", &tests.display().to_string())
            .replace("@SKIP@", &host_only_skips())
            .replace("@ARGS@", &shell_words(test_args))
            .replace("@GUEST_ONLY@", &guest_only_filters(test_args)),
    )?;
    fs::set_permissions(&init, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    cpio(&root, &work.join("common.cpio"))
}

/// Copies a directory tree, skipping python's test suite and caches; lists the shared objects.
fn copy_tree(from: &Path, to: &Path, shared: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        if [
            "test",
            "__pycache__",
            "idlelib",
            "tkinter",
            "ensurepip",
            "lib2to3",
            "site-packages",
        ]
        .iter()
        .any(|skip| name == *skip)
        {
            continue;
        }
        let path = entry.path();
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_tree(&path, &to.join(&name), shared)?;
        } else if kind.is_file() || (kind.is_symlink() && path.exists()) {
            // Symlinks (sitecustomize.py into /etc) are copied as what they point to.
            fs::copy(&path, to.join(&name))?;
            if path.extension().is_some_and(|e| e == "so") {
                shared.push(path);
            }
        }
    }
    Ok(())
}

/// `find . | cpio -o -H newc` with busybox's cpio (the host may have no cpio).
fn cpio(root: &Path, archive: &Path) -> anyhow::Result<PathBuf> {
    let busybox = find_in_path("busybox").context("busybox-static is not installed")?;
    let out = fs::File::create(archive)?;
    let mut find = Command::new(&busybox)
        .args(["find", "."])
        .current_dir(root)
        .stdout(Stdio::piped())
        .spawn()?;
    let status = Command::new(&busybox)
        .args(["cpio", "-o", "-H", "newc"])
        .current_dir(root)
        .stdin(find.stdout.take().context("find's stdout")?)
        .stdout(out)
        .stderr(Stdio::null())
        .status()?;
    find.wait()?;
    if !status.success() {
        bail!("cpio of {} failed ({status})", root.display());
    }
    Ok(archive.to_path_buf())
}

/// Integration tests that run on the host only, with why: the matrix is about what differs
/// between kernels.
const HOST_ONLY: &[(&str, &str)] = &[
    (
        "scale::",
        "userspace bounds at 100,000 to 1,000,000 flows (memory, exit time, flow accounting): the \
     same on every kernel, and minutes of traffic under emulation; the kernel-side counting they \
     rely on runs in every guest (drops::*_counted_exactly, \
     verdicts::a_storm_of_new_flows_starts_no_subprocess)",
    ),
    (
        "pcap::a_traced_incident_written_with_w_reads_in_tshark_as_its_json_events",
        "needs tshark, which the guests do not carry (Wireshark's libraries); the kernel side \
         of -w runs in every guest (pcap::w_writes_one_packet_per_hop_event)",
    ),
    (
        "pcap::w_dash_streams_the_packets_into_tshark_and_the_json_to_stderr",
        "needs tshark (as above)",
    ),
    (
        "pcap::a_full_disk_under_w_ends_the_run_saying_what_the_file_holds",
        "needs tshark (as above) to read the cut file",
    ),
    (
        "pcap_differential::",
        "needs tcpdump (libpcap's filter compiler is the oracle), which the guests do not carry; \
         the kernel-side filter it checks is the same program on every kernel, and runs in every \
         guest (filters::)",
    ),
    (
        "runtimes::",
        "needs a real Podman and containerd (Debian's podman, containerd and runc), which the \
         guests do not carry; what they exercise is userspace (/proc, the runtimes' APIs and \
         state), the same on every kernel",
    ),
    (
        "metrics::prometheus_scrapes",
        "needs a real Prometheus server (Debian's prometheus), which the guests do not carry; \
         the drop counts it reads are the kernel's per-flow counts, checked exactly in every \
         guest (drops::*_counted_exactly)",
    ),
    (
        "hardening::sigint_right_after_ready_always_gives_the_summary",
        "a race in udptrace's own signal handling (between `ready` and the wait for signals), \
         the same on every kernel; its ten starts beside two CPU hogs made it the slowest test \
         in a guest (55 s of 540 on Debian 6.12)",
    ),
    (
        "hardening::hostile_netns_values_are_rejected",
        "--netns argument checks in udptrace's userspace; the kernel side of --netns runs in \
         every guest (filters::netns_and_pid_selectors_apply_in_the_kernel)",
    ),
    (
        "hardening::full_disk_and_closed_stdout_are_errors",
        "udptrace's handling of its own output errors (a full tmpfs, a closed stdout), the \
         same on every kernel",
    ),
    (
        "hardening::bad_flags_are_usage_errors",
        "command-line checks before anything loads",
    ),
    (
        "hardening::lab_run_",
        "the lab's cleanup when it is interrupted or killed early: udptrace's own bookkeeping \
         of the namespaces, links and peers it made, the same on every kernel",
    ),
    (
        "hardening::head_ends_a_quiet_trace_within_a_second",
        "udptrace noticing a closed stdout pipe with nothing to print: userspace, the same on \
         every kernel; the busy case, where events from the kernel's ring race the pipe, runs \
         in every guest (hardening::head_ends_a_busy_trace_within_a_second)",
    ),
    (
        "hardening::head_ends_a_text_trace_with_stderr_in_the_pipe",
        "as the quiet case above, with stderr in the pipe",
    ),
    (
        "recordings::a_full_disk_under_o_ends_the_run_and_replay_refuses_the_cut_recording",
        "udptrace's handling of its own output errors (a full tmpfs under -o) and replay, a \
         file reader: the same on every kernel",
    ),
    (
        "recordings::recorded_runs_replay_to_the_verdicts_and_flows_they_showed",
        "replay is userspace reading a file; the live runs it records are lab scenarios whose \
         verdicts every guest checks (verdicts::every_scenario_yields_exactly_its_verdicts)",
    ),
    (
        "doctor::bad_filters_exit_2_with_a_caret",
        "filter-expression errors found by the parser before anything loads; every accepted \
         filter shape is compiled and verified in every guest (filters::)",
    ),
    (
        "docker::",
        "a real dockerd with runc, containerd and docker-proxy, which the guests do not carry; \
         the hooks and rules their verdicts come from run in every guest through the \
         Docker-like lab scenarios (wrong-source-reply, dind-*)",
    ),
];

/// Integration tests that run in the guests only, with why: they change a setting the whole
/// machine shares, which a test must never do to the host (a developer's machine, a CI
/// runner). Each is `#[ignore = "..."]`d, so that `cargo test` on the host lists it as
/// ignored with its reason (never a silent pass), also under CI=true, and the guests run it
/// in a second pass with `--ignored` (only these prefixes, or the test filter given to
/// vm-test): every guest of `cargo xtask vm-test` runs them. `#[ignore]` in the integration
/// tests is for these alone.
const GUEST_ONLY: &[(&str, &str)] = &[(
    "conntrack::a_full_conntrack_table_is_conntrack_drop",
    "lab conntrack-full lowers net.netfilter.nf_conntrack_max, one limit for every namespace \
     of the machine (read-only in child namespaces): a full table cannot be made in a \
     namespace alone. Its healthy control (conntrack::a_conntrack_table_with_room_drops_nothing) \
     runs on the host too",
)];

/// The filters of the guests' `--ignored` pass: vm-test's own, else [`GUEST_ONLY`].
fn guest_only_filters(test_args: &[String]) -> String {
    if test_args.is_empty() {
        let prefixes: Vec<String> = GUEST_ONLY
            .iter()
            .map(|(prefix, _)| (*prefix).to_owned())
            .collect();
        shell_words(&prefixes)
    } else {
        shell_words(test_args)
    }
}

/// What the matrix leaves to the host, and what only the guests run, for
/// docs/kernel-matrix.md.
fn host_only_note() -> String {
    let mut note = String::new();
    for (prefix, why) in HOST_ONLY {
        let _ = writeln!(note, "Host only, not in the guests: `{prefix}` ({why}).");
    }
    for (prefix, why) in GUEST_ONLY {
        let _ = writeln!(
            note,
            "Guests only, listed as ignored on the host: `{prefix}` ({why})."
        );
    }
    note
}

/// `--skip` arguments for [`HOST_ONLY`].
fn host_only_skips() -> String {
    HOST_ONLY
        .iter()
        .map(|(prefix, _)| format!("--skip {prefix}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Boots `kernel` and runs the tests in it; once more when the guest kernel crashed with no
/// test failed.
fn test_kernel(kernel: &KernelImage, work: &Path, common: &Path) -> KernelResult {
    println!("vm-test: {} ({}): booting", kernel.name, kernel.release);
    let mut result = boot_and_test(kernel, work, common);
    // QEMU's TCG has been seen to crash a guest kernel while it patches its own code
    // (an `int3` oops in a static key being flipped, Debian 6.12): the guest dies, no test
    // failed. One more boot tells such an emulation fault from a real one; both show.
    if let Some(crash) = result.crash.clone()
        && result.failed.is_empty()
    {
        println!(
            "vm-test: {}: the guest kernel crashed ({crash}) with no test failed; booting once more",
            kernel.name
        );
        result = boot_and_test(kernel, work, common);
        result.retried_after = Some(crash);
    }
    println!(
        "vm-test: {}: {} passed, {} failed, {:.0} s{}",
        result.name,
        result.passed.len(),
        result.failed.len(),
        result.seconds,
        result
            .status
            .as_ref()
            .err()
            .map_or_else(String::new, |e| format!(" ({e})"))
    );
    result
}

/// Each argument single-quoted for the guest's shell.
fn shell_words(words: &[String]) -> String {
    words
        .iter()
        .map(|word| format!("'{}'", word.replace('\'', r"'\''")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Prints libtest's `failures:` section of a guest's log (each failed test's output and panic
/// message), so that a CI log says why a test failed in a guest whose log is not kept.
fn print_failures(log: &Path, kernel: &str) {
    const MOST: usize = 200;
    let Ok(text) = fs::read_to_string(log) else {
        return;
    };
    let section: Vec<&str> = text
        .lines()
        .skip_while(|line| line.trim() != "failures:")
        .skip(1)
        .take_while(|line| line.trim() != "failures:")
        .collect();
    println!(
        "\nvm-test: {kernel}: output of the failed tests ({log}):",
        log = log.display()
    );
    for line in section.iter().take(MOST) {
        println!("    {line}");
    }
    if section.len() > MOST {
        println!("    ... {} more lines in the log", section.len() - MOST);
    }
}

/// The guest's /init (busybox sh): mounts, modules, doctor, the tests, power off.
const INIT: &str = r#"#!/opt/busybox/busybox sh
/opt/busybox/busybox --install -s /opt/busybox
export PATH=/usr/sbin:/usr/bin:/opt/busybox HOME=/root CI=true RUST_BACKTRACE=1
# This kernel is private to the tests: the lab may change machine-wide settings
# (udptrace::lab::TEST_GUEST_ENV).
export UDPTRACE_TEST_GUEST=1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# No tmpfs on /tmp: the binaries may live there (a CI clone); the initramfs is writable.
mount -t tmpfs tmpfs /run
mkdir -p /run/netns
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
mount -t bpf bpf /sys/fs/bpf
echo /usr/sbin/modprobe > /proc/sys/kernel/modprobe
# kmod's modprobe by path: busybox sh prefers its own applet, which cannot read .ko.xz. Load
# what the host has loaded (br_netfilter: the DinD scenario turns its sysctl off per
# namespace); the rest autoloads through /proc/sys/kernel/modprobe.
/usr/sbin/modprobe -a veth bridge br_netfilter nf_tables nf_conntrack nf_nat
ip link set lo up
cd /tmp
echo "@@udptrace-doctor@@$(@UDPTRACE@ doctor --json)"
@TESTS@ --test-threads=1 @SKIP@ @ARGS@ 2>&1
status=$?
# The guest-only tests (GUEST_ONLY: #[ignore]d, so that the host lists them as ignored).
@TESTS@ --test-threads=1 --ignored @GUEST_ONLY@ 2>&1 || status=$?
echo "@@udptrace-tests-exit=$status@@"
poweroff -f
"#;

/// Extracted kernel `source` from the cache, fetched on first use.
fn fetch(source: &KernelSource, cache: &Path) -> anyhow::Result<KernelImage> {
    let dir = cache.join(source.name);
    let ready = dir.join("ready");
    if !ready.exists() {
        let started = Instant::now();
        if dir.exists() {
            fs::remove_dir_all(&dir)?;
        }
        let debs = dir.join("debs");
        fs::create_dir_all(&debs)?;
        let apt = AptConfig::new(cache, source)?;
        // The newest the index lists may be missing from the mirror (bullseye-security has
        // listed kernels that answer 404): the newest that downloads.
        let mut packages = Vec::new();
        for package in apt.newest_first(source.pattern)? {
            packages = vec![package.clone()];
            if let Some(version) = package.strip_prefix("linux-binary-") {
                packages.push(format!("linux-modules-{version}"));
            }
            println!(
                "vm-test: {}: downloading {}",
                source.name,
                packages.join(", ")
            );
            let mut download = apt.command("apt-get");
            download.arg("download").args(&packages).current_dir(&debs);
            match run(&mut download) {
                Ok(()) => break,
                Err(error) => {
                    println!("vm-test: {}: {error:#}; trying an older one", source.name);
                    packages.clear();
                    for deb in fs::read_dir(&debs)? {
                        fs::remove_file(deb?.path())?;
                    }
                }
            }
        }
        if packages.is_empty() {
            bail!("no package matching {} downloads", source.pattern);
        }
        let extracted = dir.join("root");
        for deb in fs::read_dir(&debs)? {
            run(Command::new("dpkg")
                .arg("-x")
                .arg(deb?.path())
                .arg(&extracted))?;
        }
        let (_, release) = modules_dir(&extracted)?;
        if !extracted.join("lib").exists() {
            symlink("usr/lib", extracted.join("lib"))?;
        }
        run(Command::new("depmod")
            .arg("-b")
            .arg(&extracted)
            .arg(&release))?;
        fs::write(&ready, format!("{}\n", packages.join("\n")))?;
        println!(
            "vm-test: {}: cached {release} in {} ({:.0} s)",
            source.name,
            dir.display(),
            started.elapsed().as_secs_f64()
        );
    }
    let extracted = dir.join("root");
    let (modules, release) = modules_dir(&extracted)?;
    let vmlinuz = [
        extracted.join("boot").join(format!("vmlinuz-{release}")),
        modules.join("vmlinuz"),
    ]
    .into_iter()
    .find(|p| p.exists())
    .with_context(|| format!("no vmlinuz for {release} in {}", extracted.display()))?;
    Ok(KernelImage {
        name: source.name.to_owned(),
        vmlinuz,
        modules,
        release,
    })
}

/// `<root>/{usr/,}lib/modules/<release>`.
fn modules_dir(extracted: &Path) -> anyhow::Result<(PathBuf, String)> {
    for base in ["usr/lib/modules", "lib/modules"] {
        let base = extracted.join(base);
        if let Ok(entries) = fs::read_dir(&base) {
            for entry in entries {
                let entry = entry?;
                if entry.file_type()?.is_dir() {
                    let release = entry.file_name().to_string_lossy().into_owned();
                    return Ok((entry.path(), release));
                }
            }
        }
    }
    bail!("no modules directory in {}", extracted.display())
}

/// apt with the host's configuration, or a private one with extra sources.
struct AptConfig {
    options: Vec<String>,
}

impl AptConfig {
    fn new(cache: &Path, source: &KernelSource) -> anyhow::Result<Self> {
        let Some(sources) = source.sources else {
            return Ok(Self {
                options: Vec::new(),
            });
        };
        // One configuration per kernel source: their index lists must not mix.
        let dir = cache.join("apt").join(source.name);
        for sub in ["lists/partial", "cache/archives/partial"] {
            fs::create_dir_all(dir.join(sub))?;
        }
        let list = dir.join("sources.list");
        fs::write(&list, sources)?;
        let apt = Self {
            options: vec![
                format!("-oDir::Etc::sourcelist={}", list.display()),
                "-oDir::Etc::sourceparts=-".into(),
                format!("-oDir::State::Lists={}", dir.join("lists").display()),
                format!("-oDir::Cache={}", dir.join("cache").display()),
            ],
        };
        run(apt.command("apt-get").arg("update").arg("-qq"))?;
        Ok(apt)
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command.args(&self.options);
        command
    }

    /// The packages whose name matches `pattern`, newest first (versions compared
    /// numerically).
    fn newest_first(&self, pattern: &str) -> anyhow::Result<Vec<String>> {
        let text = output(
            self.command("apt-cache")
                .args(["search", "--names-only", pattern]),
        )?;
        let mut names: Vec<String> = text
            .lines()
            .filter_map(|line| line.split_whitespace().next())
            .map(str::to_owned)
            .collect();
        if names.is_empty() {
            bail!("no package matches {pattern} (is apt's index current?)");
        }
        names.sort_by_cached_key(|name| std::cmp::Reverse(version_key(name)));
        Ok(names)
    }
}

/// The numbers in a package name, for ordering `6.1.0-9` before `6.1.0-56`.
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter(|part| !part.is_empty())
        .filter_map(|part| part.parse().ok())
        .collect()
}

/// The kernel's networking modules with their index files, as a cpio archive appended to the
/// common one (the kernel unpacks concatenated archives in order).
fn modules_archive(kernel: &KernelImage, work: &Path) -> anyhow::Result<PathBuf> {
    let root = work.join(format!("modules-{}", kernel.name));
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    let target = root.join("usr/lib/modules").join(&kernel.release);
    fs::create_dir_all(&target)?;
    for entry in fs::read_dir(&kernel.modules)? {
        let entry = entry?;
        if entry.file_type()?.is_file()
            && entry.file_name().to_string_lossy().starts_with("modules.")
        {
            fs::copy(entry.path(), target.join(entry.file_name()))?;
        }
    }
    for dir in MODULE_DIRS {
        let from = kernel.modules.join(dir);
        if from.is_dir() {
            // Into an existing parent, else cp would make `from` the parent itself.
            let parent = target.join(dir).parent().unwrap_or(&target).to_path_buf();
            fs::create_dir_all(&parent)?;
            run(Command::new("cp").arg("-a").arg(&from).arg(&parent))?;
        } else if from.is_file() {
            let to = target.join(dir);
            fs::create_dir_all(to.parent().unwrap_or(&target))?;
            fs::copy(&from, &to)?;
        }
    }
    cpio(&root, &work.join(format!("modules-{}.cpio", kernel.name)))
}

/// KVM only where it is real: a PVM host (`kvm_pvm`) hangs stock kernels.
fn accelerator() -> &'static str {
    if Path::new("/dev/kvm").exists() && !Path::new("/sys/module/kvm_pvm").exists() {
        "kvm"
    } else {
        "tcg"
    }
}

fn boot_and_test(kernel: &KernelImage, work: &Path, common: &Path) -> KernelResult {
    let started = Instant::now();
    let mut result = KernelResult {
        name: kernel.name.clone(),
        release: kernel.release.clone(),
        hooks: Vec::new(),
        inferred_reasons: Vec::new(),
        passed: Vec::new(),
        failed: Vec::new(),
        pending: None,
        status: Ok(()),
        seconds: 0.0,
        crash: None,
        retried_after: None,
    };
    let outcome = (|| -> anyhow::Result<()> {
        let modules = modules_archive(kernel, work)?;
        let initrd = work.join(format!("initrd-{}.cpio", kernel.name));
        let mut joined = fs::read(common)?;
        joined.extend(fs::read(&modules)?);
        fs::write(&initrd, joined)?;
        let log_path = work.join(format!("{}.log", kernel.name));
        let mut log = fs::File::create(&log_path)?;
        let accel = accelerator();
        let mut qemu = Command::new("qemu-system-x86_64");
        qemu.args([
            "-accel",
            accel,
            "-cpu",
            if accel == "kvm" { "host" } else { "max" },
        ])
        .args([
            "-smp",
            "2",
            "-m",
            "2G",
            "-nographic",
            "-no-reboot",
            "-nodefaults",
        ])
        .args(["-serial", "stdio", "-kernel"])
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(&initrd)
        // mitigations=off: emulated, every page-table switch of Meltdown's isolation and every
        // speculation barrier costs real time; without them a guest ran the same tests 10-20%
        // faster (Debian 6.12, drops:: and filters::). Nothing the tests check depends on them:
        // root's BPF programs skip the verifier's Spectre sanitizing either way.
        .args(["-append", "console=ttyS0 panic=-1 quiet mitigations=off"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        println!("vm-test: {}: {}", kernel.name, describe(&qemu));
        let mut child = qemu.spawn().context("starting qemu-system-x86_64")?;
        let stdout = child.stdout.take().context("qemu stdout")?;
        let (lines, received) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if lines.send(line.replace('\r', "")).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + VM_TIMEOUT;
        let mut exit = None;
        loop {
            match received.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    writeln!(log, "{line}")?;
                    if let Some(json) = line.split_once(DOCTOR_BEGIN).map(|(_, j)| j) {
                        result.hooks = doctor_hooks(json);
                        result.inferred_reasons = doctor_inferred_reasons(json);
                    } else if let Some(code) = line.split_once(TESTS_EXIT).map(|(_, c)| c) {
                        exit = code.trim_end_matches('@').parse::<i32>().ok();
                    } else {
                        record_line(&line, &mut result);
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!(
                        "no result within {} s (log: {})",
                        VM_TIMEOUT.as_secs(),
                        log_path.display()
                    );
                }
            }
        }
        let status = child.wait()?;
        match exit {
            None => bail!(
                "the guest never reported the tests' status (qemu {status}; log: {})",
                log_path.display()
            ),
            Some(0) => Ok(()),
            Some(code) => bail!("tests exited {code} (log: {})", log_path.display()),
        }
    })();
    result.status = outcome.map_err(|e| format!("{e:#}"));
    result.seconds = started.elapsed().as_secs_f64();
    result
}

/// `test NAME ... ok|FAILED` from libtest's output. A test's own stderr may land between the
/// `...` and the outcome (`test a ... udptrace: 12 events lost\nok`): the name then waits in
/// `pending` for an `ok`/`FAILED` line. The guest kernel's first crash report is kept.
fn record_line(line: &str, result: &mut KernelResult) {
    if result.crash.is_none() && (line.contains("Oops:") || line.contains("Kernel panic")) {
        // "[   68.996951] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI", without the timestamp.
        let report = line.split_once("] ").map_or(line, |(_, text)| text);
        result.crash = Some(report.trim().to_owned());
    }
    let (name, outcome) = match line
        .strip_prefix("test ")
        .and_then(|rest| rest.split_once(" ... "))
    {
        Some((name, outcome)) => (name.to_owned(), outcome.trim()),
        None => match result.pending.take() {
            Some(name) => (name, line.trim()),
            None => return,
        },
    };
    match outcome {
        "ok" => result.passed.push(name),
        "FAILED" => result.failed.push(name),
        "ignored" => {}
        _ => result.pending = Some(name),
    }
}

/// (hook, mechanism) from `udptrace doctor --json`.
fn doctor_hooks(json: &str) -> Vec<(String, Option<String>)> {
    let Ok(report) = serde_json::from_str::<serde_json::Value>(json) else {
        return Vec::new();
    };
    report["probes"]
        .as_array()
        .map(|probes| {
            probes
                .iter()
                .map(|p| {
                    (
                        p["hook"].as_str().unwrap_or("?").to_owned(),
                        p["mechanism"].as_str().map(str::to_owned),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `inferred_reasons` from `udptrace doctor --json` (empty where the kernel gives reasons).
fn doctor_inferred_reasons(json: &str) -> Vec<String> {
    serde_json::from_str::<serde_json::Value>(json)
        .ok()
        .and_then(|report| {
            report["inferred_reasons"].as_array().map(|names| {
                names
                    .iter()
                    .filter_map(|name| name.as_str().map(str::to_owned))
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// kernel × hook (mechanism) × tests, in Markdown.
fn table(results: &[KernelResult]) -> String {
    let hooks: Vec<String> = results
        .iter()
        .find(|r| !r.hooks.is_empty())
        .map(|r| r.hooks.iter().map(|(h, _)| h.clone()).collect())
        .unwrap_or_default();
    let mut text = String::from("| kernel | tests passed | drop reasons |");
    for hook in &hooks {
        let _ = write!(text, " {hook} |");
    }
    text.push_str("\n|---|---|---|");
    for _ in &hooks {
        text.push_str("---|");
    }
    text.push('\n');
    for result in results {
        let total = result.passed.len() + result.failed.len();
        let mut tests = match &result.status {
            Ok(()) => format!("{}/{total}", result.passed.len()),
            Err(_) => format!("{}/{total} (did not complete)", result.passed.len()),
        };
        if result.retried_after.is_some() {
            tests.push_str(" (second boot)");
        }
        let reasons = if result.hooks.is_empty() {
            "–".to_owned()
        } else if result.inferred_reasons.is_empty() {
            "kernel's".to_owned()
        } else {
            format!("inferred: {}", result.inferred_reasons.join(", "))
        };
        let _ = write!(
            text,
            "| {} `{}` | {tests} | {reasons} |",
            result.name, result.release
        );
        for hook in &hooks {
            let mechanism = result
                .hooks
                .iter()
                .find(|(h, _)| h == hook)
                .and_then(|(_, m)| m.clone())
                .unwrap_or_else(|| "–".into());
            let _ = write!(text, " {mechanism} |");
        }
        text.push('\n');
    }
    for result in results {
        if !result.failed.is_empty() {
            let _ = writeln!(
                text,
                "\nFailed on {}: {}",
                result.name,
                result.failed.join(", ")
            );
        }
        if let Err(error) = &result.status {
            let _ = writeln!(text, "\n{}: {error}", result.name);
        }
        if let Some(crash) = &result.retried_after {
            let _ = writeln!(
                text,
                "\n{}: the first boot's guest kernel crashed with no test failed ({crash}); \
                 the row is the second boot's",
                result.name
            );
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_kernel_package_wins_numerically() {
        let names = [
            "linux-image-6.1.0-9-cloud-amd64-unsigned",
            "linux-image-6.1.0-56-cloud-amd64-unsigned",
            "linux-image-6.1.0-47-cloud-amd64-unsigned",
        ];
        assert_eq!(
            names.iter().max_by_key(|n| version_key(n)),
            Some(&"linux-image-6.1.0-56-cloud-amd64-unsigned")
        );
        assert!(
            version_key("linux-binary-7.3.4+deb13-cloud-amd64")
                > version_key("linux-binary-7.2.12+deb13-cloud-amd64")
        );
    }

    #[test]
    fn guests_run_the_guest_only_tests_in_an_ignored_pass() {
        assert!(INIT.contains("export UDPTRACE_TEST_GUEST=1"));
        assert!(INIT.contains("--ignored @GUEST_ONLY@"));
        // Without a filter, the pass runs exactly the guest-only tests; with one, the filter.
        let all = guest_only_filters(&[]);
        for (prefix, _) in GUEST_ONLY {
            assert!(all.contains(prefix), "{all}");
        }
        assert_eq!(guest_only_filters(&["conntrack::".into()]), "'conntrack::'");
        assert!(host_only_note().contains("Guests only"));
    }

    fn result(release: &str) -> KernelResult {
        KernelResult {
            name: "k".into(),
            release: release.into(),
            hooks: Vec::new(),
            inferred_reasons: Vec::new(),
            passed: Vec::new(),
            failed: Vec::new(),
            pending: None,
            status: Ok(()),
            seconds: 1.0,
            crash: None,
            retried_after: None,
        }
    }

    #[test]
    fn libtest_lines_and_doctor_reports_are_parsed() {
        let mut result = result("6.1");
        result.hooks = doctor_hooks(
            r#"{"probes":[{"hook":"send","mechanism":"fentry"},{"hook":"lookup","mechanism":null}]}"#,
        );
        record_line("test doctor::a ... ok", &mut result);
        record_line("test drops::b ... FAILED", &mut result);
        record_line("test drops::c ... udptrace: 3 events lost", &mut result);
        record_line("ok", &mut result);
        record_line("test result: FAILED. 2 passed; 1 failed", &mut result);
        assert_eq!(result.passed, ["doctor::a", "drops::c"]);
        assert_eq!(result.failed, ["drops::b"]);
        let table = table(&[result]);
        assert!(
            table.contains("| k `6.1` | 2/3 | kernel's | fentry | – |"),
            "{table}"
        );
        assert!(table.contains("Failed on k: drops::b"), "{table}");
        let mut old = self::result("5.10");
        let doctor = r#"{"inferred_reasons":["NO_SOCKET","SOCKET_RCVBUFF"],"probes":[{"hook":"drop","mechanism":"tp_btf"}]}"#;
        old.hooks = doctor_hooks(doctor);
        old.inferred_reasons = doctor_inferred_reasons(doctor);
        let table = super::table(&[old]);
        assert!(
            table.contains("| k `5.10` | 0/0 | inferred: NO_SOCKET, SOCKET_RCVBUFF | tp_btf |"),
            "{table}"
        );
    }

    #[test]
    fn a_guest_crash_is_kept_and_a_retried_boot_says_so() {
        let mut result = result("6.12");
        record_line(
            "test path::nat ... [   68.996951] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI",
            &mut result,
        );
        record_line(
            "[   69.001257] Kernel panic - not syncing: Fatal exception in interrupt",
            &mut result,
        );
        assert_eq!(
            result.crash.as_deref(),
            Some("Oops: int3: 0000 [#1] PREEMPT SMP NOPTI")
        );
        assert!(result.passed.is_empty() && result.failed.is_empty());
        result.retried_after = result.crash.take();
        result.passed.push("path::nat".into());
        let table = table(&[result]);
        assert!(
            table.contains("| k `6.12` | 1/1 (second boot) |"),
            "{table}"
        );
        assert!(
            table.contains("first boot's guest kernel crashed"),
            "{table}"
        );
    }
}
