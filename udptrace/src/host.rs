//! Facts about the host udptrace runs on that are not kernel layouts: privileges, devices,
//! namespaces.

use std::{
    ffi::CString,
    fs::File,
    os::{
        fd::AsRawFd as _,
        unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    },
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow, bail};

use crate::{cli::NetnsSpec, procs::Processes, sanitize::sanitize_kernel_string};

/// Capability bits (include/uapi/linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Effective capabilities of this process (`CapEff` in /proc/self/status).
pub fn effective_capabilities() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// Capabilities tracing needs that `caps` lacks, by name.
pub fn missing_capabilities(caps: u64) -> Vec<&'static str> {
    let has = |bit: u32| caps & (1 << bit) != 0;
    if has(CAP_SYS_ADMIN) {
        return Vec::new();
    }
    let mut missing = Vec::new();
    if !has(CAP_BPF) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) {
        missing.push("CAP_PERFMON");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    missing
}

/// Fails with one line naming what is missing when this process cannot load tracing programs.
pub fn preflight() -> anyhow::Result<()> {
    let missing = missing_capabilities(effective_capabilities());
    if !missing.is_empty() {
        bail!(
            "udptrace needs root, or the capabilities {}: run it with sudo",
            missing.join(", ")
        );
    }
    raise_memlock_limit();
    Ok(())
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; newer ones use memcg and ignore it.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: valid pointer to an rlimit; failure leaves the old limit, which new kernels ignore.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raw const unlimited) };
}

/// Index of device `name` in the network namespace at `netns` (udptrace's own when `None`).
pub fn ifindex_in(netns: Option<&Path>, name: &str) -> anyhow::Result<u32> {
    let name_c = CString::new(name).with_context(|| format!("-i {name:?}: invalid name"))?;
    let lookup = move || -> anyhow::Result<u32> {
        // SAFETY: valid NUL-terminated string.
        let index = unsafe { libc::if_nametoindex(name_c.as_ptr()) };
        if index == 0 {
            bail!("-i {}: no such device", name_c.to_string_lossy());
        }
        Ok(index)
    };
    match netns {
        None => lookup(),
        Some(path) => {
            let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
            in_netns(&file, lookup).context("entering the network namespace")?
        }
    }
}

/// The standard output of `program ARGS`, run inside the network namespace `netns` refers to
/// (a child forked by a thread inherits that thread's network namespace).
pub fn output_in(netns: &File, program: &str, args: &[&str]) -> std::io::Result<String> {
    let mut command = std::process::Command::new(program);
    command.args(args);
    in_netns(netns, move || {
        let output = command.output()?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    })?
}

/// Runs `work` on a short-lived thread that entered the network namespace `netns` refers to
/// (setns affects only the calling thread) and waits for it. Whatever `work` opens under
/// /proc/thread-self/net or /proc/sys/net, and any socket or child process it creates, belongs
/// to that namespace.
pub fn in_netns<T: Send + 'static>(
    netns: &File,
    work: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<T> {
    let netns = netns.try_clone()?;
    std::thread::spawn(move || -> std::io::Result<T> {
        // SAFETY: a valid fd of a network namespace file; affects only this thread, which
        // ends with `work`.
        if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        drop(netns);
        Ok(work())
    })
    .join()
    .map_err(|_| std::io::Error::other("a thread in another network namespace panicked"))?
}

/// `NS_GET_NSTYPE`: `_IO(NSIO, 0x3)` with `NSIO` 0xb7 (include/uapi/linux/nsfs.h, Linux 4.11):
/// returns the `CLONE_NEW*` type of a namespace file.
const NS_GET_NSTYPE: libc::Ioctl = (0xb7 << 8) | 0x3;
/// `NSFS_MAGIC` (include/uapi/linux/magic.h): the filesystem of /proc/PID/ns/* and of their
/// bind mounts in /run/netns.
const NSFS_MAGIC: u64 = 0x6e73_6673;

/// A network namespace named by `--netns`: a file that enters it, and its inode (the kernel's
/// `net->ns.inum`, what the programs compare).
#[derive(Debug)]
pub struct NetnsFile {
    pub path: PathBuf,
    pub inode: u32,
}

/// Resolves `--netns TEXT` and checks that it names a network namespace: a file on nsfs whose
/// namespace type is `CLONE_NEWNET`. An inode number is looked for among the namespaces of
/// every process and /run/netns, so that it is checked (and `-i` can enter it) like a path.
pub fn open_netns(text: &str, known: &Processes) -> anyhow::Result<NetnsFile> {
    let shown = sanitize_kernel_string(text.as_bytes());
    let path = match NetnsSpec::parse(text).map_err(|e| anyhow!(e))? {
        NetnsSpec::Path(path) => path,
        NetnsSpec::Inode(inode) => known.netns_path(inode).ok_or_else(|| {
            anyhow!(
                "--netns {inode}: no process and no /run/netns entry is in a network namespace \
                 with inode {inode} (see `lsns -t net`)"
            )
        })?,
    };
    // statfs first: a path that is not on nsfs is never opened (a FIFO would block open(), a
    // device file could act on it).
    let path_c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| anyhow!("--netns {shown}: a path cannot contain NUL"))?;
    // SAFETY: valid NUL-terminated path and a zeroed out-parameter of the right type.
    let fs_type = unsafe {
        let mut stat: libc::statfs = std::mem::zeroed();
        if libc::statfs(path_c.as_ptr(), &raw mut stat) != 0 {
            let error = std::io::Error::last_os_error();
            let path = sanitize_kernel_string(path.as_os_str().as_bytes());
            bail!("--netns {shown}: {path}: {error}");
        }
        // `__fsword_t` (i64) on glibc, `c_ulong` on musl: the magic is a small positive number.
        u64::try_from(stat.f_type).unwrap_or(0)
    };
    if fs_type != NSFS_MAGIC {
        bail!(
            "--netns {shown}: not a namespace file (give a name from /run/netns, \
             /proc/PID/ns/net or a bind mount of it, a PID, or an inode number)"
        );
    }
    let file = File::open(&path).with_context(|| format!("--netns {shown}: opening it"))?;
    // SAFETY: an open fd; NS_GET_NSTYPE takes no argument.
    let nstype = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE) };
    if nstype != libc::CLONE_NEWNET {
        bail!(
            "--netns {shown}: {}, not a network namespace",
            namespace_kind(nstype)
        );
    }
    let inode = file
        .metadata()
        .with_context(|| format!("--netns {shown}: stat"))?
        .ino();
    Ok(NetnsFile {
        path,
        // nsfs inode numbers are `unsigned int` (`ns_common.inum`).
        inode: u32::try_from(inode).map_err(|_| anyhow!("--netns {shown}: inode {inode}"))?,
    })
}

/// What NS_GET_NSTYPE answered, for an error message.
fn namespace_kind(nstype: libc::c_int) -> String {
    let name = match nstype {
        libc::CLONE_NEWNS => "mnt",
        libc::CLONE_NEWUTS => "uts",
        libc::CLONE_NEWIPC => "ipc",
        libc::CLONE_NEWUSER => "user",
        libc::CLONE_NEWPID => "pid",
        libc::CLONE_NEWCGROUP => "cgroup",
        libc::CLONE_NEWTIME => "time",
        _ => return format!("a namespace file of unknown type ({nstype})"),
    };
    format!("a {name} namespace")
}

/// `--pid PID`: the process must exist, and be a process rather than one of its threads (the
/// programs compare the thread-group id, `bpf_get_current_pid_tgid() >> 32`).
pub fn check_pid(pid: u32) -> anyhow::Result<()> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|_| anyhow!("--pid {pid}: no such process"))?;
    match thread_group(&status) {
        Some(tgid) if tgid != pid => {
            bail!("--pid {pid}: a thread of process {tgid}, not a process: give --pid {tgid}")
        }
        _ => Ok(()),
    }
}

/// `Tgid:` of a /proc/PID/status text.
fn thread_group(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("Tgid:"))?
        .trim()
        .parse()
        .ok()
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
    fn capability_requirements() {
        assert!(missing_capabilities(1 << CAP_SYS_ADMIN).is_empty());
        assert!(
            missing_capabilities((1 << CAP_BPF) | (1 << CAP_PERFMON) | (1 << CAP_NET_ADMIN))
                .is_empty()
        );
        assert_eq!(
            missing_capabilities(1 << CAP_BPF),
            ["CAP_PERFMON", "CAP_NET_ADMIN"]
        );
        assert_eq!(
            missing_capabilities(0),
            ["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"]
        );
    }

    #[test]
    fn loopback_has_an_index() {
        assert_eq!(ifindex_in(None, "lo").unwrap(), 1);
        assert!(ifindex_in(None, "no-such-dev0").is_err());
    }

    #[test]
    fn netns_must_be_a_network_namespace() {
        let known = Processes::default();
        let own = open_netns("/proc/self/ns/net", &known).unwrap();
        let inode = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
        assert_eq!(u64::from(own.inode), inode);
        // The same namespace by inode number: found among the processes' namespaces.
        let by_inode = open_netns(&own.inode.to_string(), &known).unwrap();
        assert_eq!(by_inode.inode, own.inode);
        for (text, expected) in [
            ("/etc/passwd", "not a namespace file"),
            (
                "/proc/self/ns/mnt",
                "a mnt namespace, not a network namespace",
            ),
            ("/proc/self/ns/uts", "a uts namespace"),
            ("", "empty"),
            ("0", "--netns 0"),
            ("/no/such/file", "No such file"),
            ("no-such-netns-x", "/run/netns/no-such-netns-x"),
            // An inode no namespace has: below the first one the kernel hands out
            // (PROC_DYNAMIC_FIRST, 0xF0000000) and no PID (above pid_max's limit).
            ("4194305", "no process and no /run/netns entry"),
            ("evil\x1b[2J/x", "evil\\x1b[2J"),
        ] {
            let error = format!("{:#}", open_netns(text, &known).unwrap_err());
            assert!(error.contains(expected), "{text:?}: {error}");
            assert!(!error.contains('\x1b'), "{text:?}: {error}");
        }
    }

    #[test]
    fn pid_must_be_a_process() {
        check_pid(std::process::id()).unwrap();
        assert_eq!(thread_group("Name:\tx\nTgid:\t42\nPid:\t43\n"), Some(42));
        // One of this process's threads, alive while it is checked.
        let (sender, receiver) = std::sync::mpsc::channel();
        let (done, wait) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            sender.send(unsafe { libc::gettid() }).unwrap();
            let _ = wait.recv();
        });
        let live = u32::try_from(receiver.recv().unwrap()).unwrap();
        let error = check_pid(live).unwrap_err().to_string();
        assert!(
            error.contains(&format!("a thread of process {}", std::process::id())),
            "{error}"
        );
        drop(done);
        thread.join().unwrap();
    }
}
