//! Private network namespaces for the lab and the tests: created with iproute2, always
//! deleted (on drop, on panic unwinding, and by `cleanup_all` from the CLI's Ctrl-C task),
//! named `udpt-<pid>-<n>-<role>` (pid + a per-process counter, so that parallel tests never
//! collide) so that `cleanup_stale` can find leftovers of dead processes.
//!
//! Configuration goes through `ip -n NAME ...` and, for nftables, `ip netns exec NAME nft -f -`
//! (a child process: the remounted /sys it gets does not matter for loading rules). Everything
//! the tracer or a peer needs happens on a thread of this process that `setns()` into the
//! namespace (`spawn`/`enter`): a socket stays in the namespace it was created in, and
//! /proc/sys/net and /proc/thread-self/net follow the calling thread's namespace, so sysctls
//! and SNMP counters need no child process either.

use std::{
    fs::File,
    io::{Read as _, Write as _},
    os::{
        fd::AsRawFd as _,
        unix::{fs::MetadataExt as _, process::CommandExt as _},
    },
    path::{Path, PathBuf},
    process::{ChildStdin, Command, Stdio},
    sync::{
        Mutex, OnceLock,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
};

use anyhow::{Context as _, bail};
use serde::Serialize;

use crate::{host::snmp_counter, render::note};

const PREFIX: &str = "udpt-";
const NETNS_DIR: &str = "/run/netns";

/// Names of namespaces alive in this process, for `cleanup_all`.
static LIVE: Mutex<Vec<String>> = Mutex::new(Vec::new());
static COUNTER: AtomicU32 = AtomicU32::new(0);
/// Bumped by `cleanup_all`: peers started before it stop at their next tick instead of
/// running to their deadlines (labs started afterwards are unaffected).
static EPOCH: AtomicU64 = AtomicU64::new(0);

/// The current cleanup epoch (see `EPOCH`).
pub fn epoch() -> u64 {
    EPOCH.load(Ordering::Relaxed)
}

/// Runs a command, failing with its command line and stderr.
pub fn run(program: &str, args: &[&str], stdin: Option<&str>) -> anyhow::Result<()> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {program} (is it installed? `cargo xtask setup`)"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())?;
    }
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// What identifies a namespace in the tracer's output: its name and `net->ns.inum`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NetnsInfo {
    pub role: String,
    pub name: String,
    /// The inode of /run/netns/NAME: what the kernel reports as `net->ns.inum`.
    pub inode: u32,
}

/// A network namespace owned by this process; deleted on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
    pub role: String,
    pub path: PathBuf,
    pub inode: u32,
}

impl Netns {
    /// Creates `udpt-<pid>-<n>-<role>` with loopback up and IPv6 duplicate address detection
    /// off.
    pub fn create(role: &str) -> anyhow::Result<Self> {
        let name = format!(
            "{PREFIX}{}-{}-{role}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        run("ip", &["netns", "add", &name], None)?;
        // Registered before anything else can fail: from here on the guard (or `cleanup_all`)
        // owns the namespace.
        LIVE.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(name.clone());
        let path = PathBuf::from(NETNS_DIR).join(&name);
        let mut netns = Self {
            inode: 0,
            path,
            name,
            role: role.to_owned(),
        };
        netns.inode = std::fs::metadata(&netns.path)
            .with_context(|| format!("stat {}", netns.path.display()))?
            .ino() as u32;
        // A tentative (DAD) IPv6 address cannot be used as a source or a destination for about
        // a second: tests would race it. Off for every interface created from now on (the
        // `default` entry), and `addr` adds IPv6 addresses with `nodad` as well.
        if Path::new("/proc/sys/net/ipv6").exists() {
            netns.sysctl("net.ipv6.conf.all.accept_dad", "0")?;
            netns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
        }
        netns.link_up("lo")?;
        Ok(netns)
    }

    pub fn info(&self) -> NetnsInfo {
        NetnsInfo {
            role: self.role.clone(),
            name: self.name.clone(),
            inode: self.inode,
        }
    }

    /// `ip -n NAME ARGS...`
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all, None)
    }

    /// `tc -n NAME ARGS...`, e.g. a qdisc on one of its devices.
    pub fn tc(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("tc", &all, None)
    }

    pub fn link_up(&self, dev: &str) -> anyhow::Result<()> {
        self.ip(&["link", "set", dev, "up"])
    }

    /// Adds `cidr` (v4 or v6) to `dev`; IPv6 addresses are added `nodad` (usable at once).
    pub fn addr(&self, dev: &str, cidr: &str) -> anyhow::Result<()> {
        if cidr.contains(':') {
            self.ip(&["addr", "add", cidr, "dev", dev, "nodad"])
        } else {
            self.ip(&["addr", "add", cidr, "dev", dev])
        }
    }

    /// `ip route add ROUTE...`, e.g. `["default", "via", "192.0.2.1"]`.
    pub fn route(&self, route: &[&str]) -> anyhow::Result<()> {
        let mut args = vec!["route", "add"];
        args.extend_from_slice(route);
        self.ip(&args)
    }

    /// A bridge `name` in this namespace, up (STP off, so ports forward at once).
    pub fn bridge(&self, name: &str) -> anyhow::Result<()> {
        self.ip(&["link", "add", name, "type", "bridge", "stp_state", "0"])?;
        self.link_up(name)
    }

    /// Makes `dev` a port of `bridge`.
    pub fn attach(&self, dev: &str, bridge: &str) -> anyhow::Result<()> {
        self.ip(&["link", "set", dev, "master", bridge])
    }

    /// A stand-in uplink `name` (like a host's eth0): a veth whose peer `<name>-peer` stays
    /// unused in the same namespace. Its addresses only have to be local (the dummy driver
    /// would do, but it is a module some kernels lack).
    pub fn uplink(&self, name: &str) -> anyhow::Result<()> {
        let peer = format!("{name}-peer");
        self.ip(&["link", "add", name, "type", "veth", "peer", "name", &peer])?;
        self.link_up(name)?;
        self.link_up(&peer)
    }

    /// An ifb device `name`, up: what is routed out of it (no tc redirect brought it) is freed
    /// as transmitted, not dropped (`ifb_xmit`, drivers/net/ifb.c; it needs no ARP): gone as if
    /// sent beyond this host. (ifb rather than dummy, which the CI machines' kernel lacks.)
    pub fn ifb(&self, name: &str) -> anyhow::Result<()> {
        // Loaded by `ip link add`'s autoload, the module would also create its default
        // `numifbs` (2) devices in the host's own namespace (drivers/net/ifb.c, ifb_init_module):
        // load it first without them. Best effort: already loaded or built in, it cannot change.
        let _ = Command::new("modprobe")
            .args(["ifb", "numifbs=0"])
            .stderr(Stdio::null())
            .status();
        self.ip(&["link", "add", name, "type", "ifb"])?;
        self.link_up(name)
    }

    /// `sysctl -w KEY=VALUE` inside the namespace (e.g. `net.ipv4.ip_forward`,
    /// `net.ipv4.conf.all.rp_filter`): written from a thread inside it, since /proc/sys/net
    /// resolves to the writer's network namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        let path = sysctl_path(key);
        let value = value.to_owned();
        let name = self.name.clone();
        let shown = format!("sysctl -w {key}={value}");
        self.enter(move || {
            std::fs::write(&path, value.as_bytes())
                .with_context(|| format!("`{shown}` in namespace {name}"))
        })
    }

    /// Reads a sysctl inside the namespace.
    pub fn read_sysctl(&self, key: &str) -> anyhow::Result<String> {
        let path = sysctl_path(key);
        let shown = key.to_owned();
        self.enter(move || {
            Ok(std::fs::read_to_string(&path)
                .with_context(|| format!("reading sysctl {shown}"))?
                .trim()
                .to_owned())
        })
    }

    /// Loads an nftables ruleset inside the namespace.
    pub fn nft(&self, ruleset: &str) -> anyhow::Result<()> {
        run(
            "ip",
            &["netns", "exec", &self.name, "nft", "-f", "-"],
            Some(ruleset),
        )
        .with_context(|| format!("loading nftables ruleset:\n{ruleset}"))
    }

    /// Runs `work` on a thread that entered this namespace: sockets it creates live here.
    pub fn spawn<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<std::thread::JoinHandle<anyhow::Result<T>>> {
        let file =
            File::open(&self.path).with_context(|| format!("opening {}", self.path.display()))?;
        let name = self.name.clone();
        std::thread::Builder::new()
            .name(format!("lab-{}", self.role))
            .spawn(move || {
                // SAFETY: a valid namespace fd; setns(CLONE_NEWNET) changes only this thread,
                // which ends with `work`.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    bail!("setns({name}): {}", std::io::Error::last_os_error());
                }
                drop(file);
                work()
            })
            .context("spawning a lab thread")
    }

    /// Runs `work` in the namespace and waits for it.
    pub fn enter<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        self.spawn(work)?
            .join()
            .map_err(|_| anyhow::anyhow!("thread in namespace {} panicked", self.name))?
    }

    /// A counter of this namespace's `/proc/net/snmp` (`Udp`, `RcvbufErrors`) or
    /// `/proc/net/snmp6` (`Udp6`, `RcvbufErrors`). `peers::udp_counters` reads them all.
    pub fn snmp(&self, group: &'static str, counter: &'static str) -> anyhow::Result<u64> {
        self.enter(move || {
            let v6 = group.ends_with('6');
            // thread-self: /proc/net (= /proc/self/net) follows the thread group leader's
            // namespace, not this thread's.
            let text = std::fs::read_to_string(if v6 {
                "/proc/thread-self/net/snmp6"
            } else {
                "/proc/thread-self/net/snmp"
            })?;
            snmp_counter(&text, group, counter)
                .with_context(|| format!("no counter {group} {counter}"))
        })
    }
}

fn sysctl_path(key: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(key.replace('.', "/"))
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace destroys its devices (veth pairs lose both ends, bridges go)
        // once the last reference (a peer thread, a socket) is gone; peers end on deadlines.
        let _ = run("ip", &["netns", "del", &self.name], None);
        LIVE.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|name| *name != self.name);
    }
}

/// Deletes every namespace this process created and returns their names. For the CLI's
/// Ctrl-C path: call it from the task or thread that handles the signal (it takes a lock and
/// runs `ip`, so it is not async-signal-safe), because the guards' drops may never run if the
/// process exits right after. The guards' later drops are harmless no-ops. Running peers stop
/// within a tick.
pub fn cleanup_all() -> Vec<String> {
    EPOCH.fetch_add(1, Ordering::Relaxed);
    let names = std::mem::take(
        &mut *LIVE
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    for name in &names {
        let _ = run("ip", &["netns", "del", name], None);
    }
    names
}

/// Names of the lab namespaces this process currently owns.
pub fn live() -> Vec<String> {
    LIVE.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

/// The pid in a lab namespace name `udpt-<pid>-...`.
fn owner_pid(name: &str) -> Option<u32> {
    name.strip_prefix(PREFIX)?.split('-').next()?.parse().ok()
}

/// Deletes `udpt-<pid>-*` namespaces whose process no longer exists (a crash or SIGKILL) and
/// returns their names.
pub fn cleanup_stale() -> Vec<String> {
    remove_owned_by(|pid| !Path::new(&format!("/proc/{pid}")).exists())
}

/// Deletes the lab namespaces whose owner pid satisfies `dead` and returns their names.
fn remove_owned_by(dead: impl Fn(u32) -> bool) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = owner_pid(&name) else {
            continue;
        };
        if dead(pid) && run("ip", &["netns", "del", &name], None).is_ok() {
            removed.push(name);
        }
    }
    removed
}

/// The write end of the guardian's pipe: held (never written) for the life of this process.
static GUARDIAN: OnceLock<ChildStdin> = OnceLock::new();

/// Starts `udptrace lab-guard <this pid>`, which removes this process's namespaces once it is
/// gone, SIGKILL included (the guards' drops and `cleanup_all` then never run). The guardian
/// waits for end-of-file on a pipe whose only write end is here: the kernel closes it when
/// this process dies, however it dies. Not PR_SET_PDEATHSIG: that fires when the *thread*
/// that forked exits, and the lab forks from tokio's threads. The guardian has its own
/// process group, so the terminal's Ctrl-C goes to this process only (which cleans up itself).
/// Call it before the first namespace is created; later calls do nothing.
pub fn spawn_guardian() -> anyhow::Result<()> {
    if GUARDIAN.get().is_some() {
        return Ok(());
    }
    // /proc/self/exe: this very binary, even if the file was replaced since it started.
    let mut child = Command::new("/proc/self/exe")
        .args([GUARD_COMMAND, &std::process::id().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()
        .context("starting the lab's guardian process")?;
    let pipe = child.stdin.take().context("the guardian's pipe")?;
    let _ = GUARDIAN.set(pipe);
    Ok(())
}

/// The guardian's command line: `udptrace lab-guard PARENT`.
const GUARD_COMMAND: &str = "lab-guard";

/// PARENT when the command line is exactly the guardian's.
pub fn guardian_parent(mut args: impl Iterator<Item = std::ffi::OsString>) -> Option<u32> {
    let _program = args.next()?;
    if args.next()? != GUARD_COMMAND {
        return None;
    }
    let parent = args.next()?.to_str()?.parse().ok()?;
    args.next().is_none().then_some(parent)
}

/// `udptrace lab-guard PARENT`: waits until the parent's end of stdin closes (the parent
/// exited or was killed), then deletes the namespaces named after PARENT. They are its own:
/// its pid is in their names and it was alive when it made them. A parent that exited
/// normally removed them already, leaving nothing to do.
pub fn guard(parent: u32) {
    let mut sink = [0_u8; 64];
    // Nothing is ever written: read returns 0 (EOF) when the parent is gone, or an error.
    while matches!(std::io::stdin().read(&mut sink), Ok(n) if n > 0) {}
    for name in remove_owned_by(|pid| pid == parent) {
        note(format_args!(
            "udptrace: removed lab namespace {name} left by process {parent}"
        ));
    }
}

/// Connects `a` and `b` with a veth pair named `a_dev` (in `a`) and `b_dev` (in `b`), both up.
pub fn veth(a: &Netns, a_dev: &str, b: &Netns, b_dev: &str) -> anyhow::Result<()> {
    // Created in `a` directly, the peer moved to `b`: device names are per namespace, so
    // parallel labs never collide and nothing ever appears in the host's namespace.
    a.ip(&[
        "link", "add", a_dev, "type", "veth", "peer", "name", b_dev, "netns", &b.name,
    ])?;
    a.link_up(a_dev)?;
    b.link_up(b_dev)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::root_or_skip;

    #[test]
    fn only_the_exact_guardian_command_line_is_the_guardian() {
        let line = |words: &[&str]| guardian_parent(words.iter().map(Into::into));
        assert_eq!(line(&["/proc/self/exe", "lab-guard", "42"]), Some(42));
        assert_eq!(line(&["udptrace", "lab-guard"]), None);
        assert_eq!(line(&["udptrace", "lab-guard", "x"]), None);
        assert_eq!(line(&["udptrace", "lab-guard", "42", "more"]), None);
        assert_eq!(line(&["udptrace", "port", "42"]), None);
        assert_eq!(line(&[]), None);
    }

    #[test]
    fn parses_owner_pids() {
        assert_eq!(owner_pid("udpt-123-4-client"), Some(123));
        assert_eq!(owner_pid("udpt-x-client"), None);
        assert_eq!(owner_pid("docker-123"), None);
    }

    #[test]
    fn namespaces_are_created_and_removed() {
        if !root_or_skip() {
            return;
        }
        let name;
        {
            let netns = Netns::create("t").unwrap();
            name = netns.name.clone();
            assert!(name.starts_with(&format!("udpt-{}-", std::process::id())));
            assert!(netns.path.exists());
            assert!(live().contains(&name));
            let inode = netns
                .enter(|| Ok(std::fs::metadata("/proc/thread-self/ns/net")?.ino() as u32))
                .unwrap();
            assert_eq!(inode, netns.inode);
            netns.sysctl("net.ipv4.ip_forward", "1").unwrap();
            assert_eq!(netns.read_sysctl("net.ipv4.ip_forward").unwrap(), "1");
            // A failing sysctl names itself.
            let error = netns
                .sysctl("net.ipv4.no_such_key", "1")
                .unwrap_err()
                .to_string();
            assert!(
                error.contains("sysctl -w net.ipv4.no_such_key=1"),
                "{error}"
            );
        }
        assert!(!PathBuf::from(NETNS_DIR).join(&name).exists());
        assert!(!live().contains(&name));
    }

    #[test]
    fn failing_commands_name_the_command_and_stderr() {
        if !root_or_skip() {
            return;
        }
        let netns = Netns::create("err").unwrap();
        let error = netns
            .ip(&["link", "set", "no-such-dev", "up"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("ip -n udpt-"), "{error}");
        assert!(error.contains("no-such-dev"), "{error}");
        let error = format!("{:#}", netns.nft("table bogus {").unwrap_err());
        assert!(error.contains("nft -f -"), "{error}");
    }

    #[test]
    fn a_panic_still_cleans_up() {
        if !root_or_skip() {
            return;
        }
        let name = std::sync::Arc::new(Mutex::new(String::new()));
        let seen = std::sync::Arc::clone(&name);
        let result = std::panic::catch_unwind(move || {
            let netns = Netns::create("panic").unwrap();
            *seen.lock().unwrap() = netns.name.clone();
            panic!("scenario failed");
        });
        assert!(result.is_err());
        let name = name.lock().unwrap().clone();
        assert!(!name.is_empty());
        assert!(
            !PathBuf::from(NETNS_DIR).join(&name).exists(),
            "{name} left behind"
        );
    }

    #[test]
    fn stale_namespaces_of_dead_processes_are_removed() {
        if !root_or_skip() {
            return;
        }
        // A pid above pid_max can never be alive: the namespace looks like a crashed run's.
        let pid_max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let dead = format!(
            "{PREFIX}{}-{}-stale",
            pid_max + 1,
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        run("ip", &["netns", "add", &dead], None).unwrap();
        let mine = Netns::create("alive").unwrap();
        let removed = cleanup_stale();
        assert!(removed.contains(&dead), "{removed:?}");
        assert!(!PathBuf::from(NETNS_DIR).join(&dead).exists());
        // This process is alive: its namespaces stay.
        assert!(mine.path.exists());
    }
}
