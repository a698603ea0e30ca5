//! Private network namespaces for the lab and the tests: created with iproute2, always
//! deleted (on drop, on panic unwinding, and by `cleanup_all` from a signal handler), named
//! `udpt-<pid>-<n>-<role>` so that `cleanup_stale` can find leftovers of dead processes.

use std::{
    fs::File,
    io::Write as _,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::PathBuf,
    process::{Command, Stdio},
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
    },
};

use anyhow::{Context as _, bail};

const PREFIX: &str = "udpt-";

/// Names of namespaces alive in this process, for `cleanup_all`.
static LIVE: Mutex<Vec<String>> = Mutex::new(Vec::new());
static COUNTER: AtomicU32 = AtomicU32::new(0);

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

/// A network namespace owned by this process; deleted on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
    pub role: String,
    pub path: PathBuf,
    pub inode: u32,
}

impl Netns {
    /// Creates `udpt-<pid>-<n>-<role>` with loopback up.
    pub fn create(role: &str) -> anyhow::Result<Self> {
        let name = format!(
            "{PREFIX}{}-{}-{role}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        run("ip", &["netns", "add", &name], None)?;
        LIVE.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(name.clone());
        let path = PathBuf::from("/run/netns").join(&name);
        let netns = Self {
            inode: std::fs::metadata(&path)
                .with_context(|| format!("stat {}", path.display()))?
                .ino() as u32,
            path,
            name,
            role: role.to_owned(),
        };
        netns.ip(&["link", "set", "lo", "up"])?;
        Ok(netns)
    }

    /// `ip -n NAME ARGS...`
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all, None)
    }

    /// `sysctl -w KEY=VALUE` inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        run(
            "ip",
            &[
                "netns",
                "exec",
                &self.name,
                "sysctl",
                "-qw",
                &format!("{key}={value}"),
            ],
            None,
        )
    }

    /// Loads an nftables ruleset inside the namespace.
    pub fn nft(&self, ruleset: &str) -> anyhow::Result<()> {
        run(
            "ip",
            &["netns", "exec", &self.name, "nft", "-f", "-"],
            Some(ruleset),
        )
    }

    /// Runs `work` on a thread that entered this namespace: sockets it creates live here.
    pub fn spawn<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<std::thread::JoinHandle<anyhow::Result<T>>> {
        let file =
            File::open(&self.path).with_context(|| format!("opening {}", self.path.display()))?;
        Ok(std::thread::spawn(move || {
            // SAFETY: valid namespace fd; setns changes only this thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns: {}", std::io::Error::last_os_error());
            }
            work()
        }))
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
    /// `/proc/net/snmp6` (`Udp6RcvbufErrors`).
    pub fn snmp(&self, group: &'static str, counter: &'static str) -> anyhow::Result<u64> {
        self.enter(move || {
            let v6 = group.ends_with('6');
            // thread-self: /proc/net follows the thread group leader, not this thread.
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

/// Reads one counter from /proc/net/snmp (a header line and a value line per group) or
/// /proc/net/snmp6 (`NameCounter value` lines).
pub fn snmp_counter(text: &str, group: &str, counter: &str) -> Option<u64> {
    let lines: Vec<&str> = text.lines().collect();
    if let Some(line) = lines
        .iter()
        .find(|l| l.split_whitespace().next() == Some(&format!("{group}{counter}")))
    {
        return line.split_whitespace().nth(1)?.parse().ok();
    }
    let prefix = format!("{group}:");
    let mut rows = lines.iter().filter(|l| l.starts_with(&prefix));
    let names = rows.next()?;
    let values = rows.next()?;
    let index = names.split_whitespace().position(|name| name == counter)?;
    values.split_whitespace().nth(index)?.parse().ok()
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.name], None);
        LIVE.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|name| *name != self.name);
    }
}

/// Deletes every namespace this process created (from a signal handler's task: the guards'
/// drops may never run if the process is about to exit).
pub fn cleanup_all() {
    let names = std::mem::take(
        &mut *LIVE
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    for name in names {
        let _ = run("ip", &["netns", "del", &name], None);
    }
}

/// Deletes `udpt-<pid>-*` namespaces whose process no longer exists (a crash or SIGKILL).
pub fn cleanup_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run("ip", &["netns", "del", &name], None);
        }
    }
}

/// Connects `a` and `b` with a veth pair named `a_dev` (in `a`) and `b_dev` (in `b`).
pub fn veth(a: &Netns, a_dev: &str, b: &Netns, b_dev: &str) -> anyhow::Result<()> {
    // Created in `a` directly, the peer moved to `b`: names are per namespace, so parallel
    // labs never collide.
    a.ip(&[
        "link", "add", a_dev, "type", "veth", "peer", "name", b_dev, "netns", &b.name,
    ])?;
    a.ip(&["link", "set", a_dev, "up"])?;
    b.ip(&["link", "set", b_dev, "up"])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_snmp_counters() {
        let snmp = "Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n\
                    Udp: 10 2 3 4 5 6\nUdpLite: InDatagrams\nUdpLite: 0\n";
        assert_eq!(snmp_counter(snmp, "Udp", "RcvbufErrors"), Some(5));
        assert_eq!(snmp_counter(snmp, "Udp", "NoPorts"), Some(2));
        let snmp6 = "Udp6InDatagrams                 \t7\nUdp6RcvbufErrors                \t9\n";
        assert_eq!(snmp_counter(snmp6, "Udp6", "RcvbufErrors"), Some(9));
        assert_eq!(snmp_counter(snmp6, "Udp6", "Nope"), None);
    }

    #[test]
    fn namespaces_are_created_and_removed() {
        let name;
        {
            let netns = Netns::create("t").expect("root needed");
            name = netns.name.clone();
            assert!(netns.path.exists());
            let inode = netns
                .enter(|| Ok(std::fs::metadata("/proc/thread-self/ns/net")?.ino() as u32))
                .unwrap();
            assert_eq!(inode, netns.inode);
        }
        assert!(!PathBuf::from("/run/netns").join(&name).exists());
    }

    #[test]
    fn a_panic_still_cleans_up() {
        let name = std::sync::Arc::new(Mutex::new(String::new()));
        let seen = std::sync::Arc::clone(&name);
        let result = std::panic::catch_unwind(move || {
            let netns = Netns::create("panic").expect("root needed");
            *seen.lock().unwrap() = netns.name.clone();
            panic!("scenario failed");
        });
        assert!(result.is_err());
        let name = name.lock().unwrap().clone();
        assert!(!name.is_empty());
        assert!(
            !PathBuf::from("/run/netns").join(&name).exists(),
            "{name} left behind"
        );
    }
}
