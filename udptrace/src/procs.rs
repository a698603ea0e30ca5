//! Names for kernel numbers that only /proc and /run know: which process holds a socket
//! inode (as `ss -p` finds it), and which name a network namespace inode has. Scanning /proc
//! is expensive on a busy host (a readlink per open file of every process), so results are
//! cached and a miss rescans at most every `RESCAN_INTERVAL`, or every `RESCAN_COST_FACTOR`
//! times the last scan's duration when that is longer: a storm of lookups for unknown inodes
//! (new flows, sockets no process holds) then costs at most about a tenth of a CPU. A
//! container start Docker or Podman reported allows one scan at once: its new namespace's
//! first events are named like the rest.

use std::{
    cell::RefCell,
    collections::{HashMap, HashSet, hash_map::Entry},
    fs,
    os::unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::{
    containers::{Container, ContainerNames, container_of},
    model::Process,
    sanitize::sanitize_kernel_string,
};

const RESCAN_INTERVAL: Duration = Duration::from_millis(100);
const RESCAN_COST_FACTOR: u32 = 10;

#[derive(Default)]
struct Cache {
    sockets: HashMap<u64, Process>,
    netns: HashMap<u32, String>,
    /// A file that refers to each namespace, to enter it.
    netns_paths: HashMap<u32, PathBuf>,
    /// The container of each namespace whose first process runs in one, as /proc and the
    /// runtime's state on disk tell (runtime and id; containerd's and CRI-O's names).
    netns_containers: HashMap<u32, Container>,
    /// When each namespace's path was last seen to still refer to it (see `forget_if_reused`).
    netns_checked: HashMap<u32, Instant>,
    scanned: Option<Instant>,
    /// How long the last scan took.
    scan_took: Duration,
}

/// Socket owners, namespace names and containers, cached.
#[derive(Default)]
pub struct Processes {
    cache: RefCell<Cache>,
    containers: ContainerNames,
}

impl Processes {
    /// With container names from the runtimes `containers` follows (`Default`: none).
    pub fn with_containers(containers: ContainerNames) -> Self {
        Self {
            cache: RefCell::default(),
            containers,
        }
    }

    /// The process holding socket `inode` (the lowest pid when several share it).
    pub fn socket_owner(&self, inode: u64) -> Option<Process> {
        if inode == 0 {
            return None;
        }
        self.lookup(|cache| cache.sockets.get(&inode).cloned())
    }

    /// The name of network namespace `inode`: its /run/netns name, `init` for the namespace
    /// of PID 1, `host` for udptrace's own, `ctr NAME (RUNTIME SHORT-ID)` for a container's
    /// once its runtime named it, else `pid:COMM` of a process inside it (a container's
    /// namespace has no /run/netns entry).
    pub fn netns_name(&self, inode: u32) -> Option<String> {
        if inode == 0 {
            return None;
        }
        forget_if_reused(&mut self.cache.borrow_mut(), inode, Instant::now());
        let name = self.lookup(|cache| cache.netns.get(&inode).cloned())?;
        Some(
            self.container(inode)
                .and_then(|container| container.label())
                .unwrap_or(name),
        )
    }

    /// The container network namespace `inode` belongs to, as far as its runtime told.
    pub fn container(&self, inode: u32) -> Option<Container> {
        if inode == 0 {
            return None;
        }
        forget_if_reused(&mut self.cache.borrow_mut(), inode, Instant::now());
        // A namespace the last scan named has its container recorded (or none): only an
        // unknown namespace may rescan /proc, as for its name.
        let seen = self.lookup(|cache| {
            cache
                .netns
                .contains_key(&inode)
                .then(|| cache.netns_containers.get(&inode).cloned())
        })??;
        Some(self.containers.named(seen))
    }

    /// A path that opens network namespace `inode` (/run/netns/NAME or /proc/PID/ns/net).
    pub fn netns_path(&self, inode: u32) -> Option<PathBuf> {
        forget_if_reused(&mut self.cache.borrow_mut(), inode, Instant::now());
        self.lookup(|cache| cache.netns_paths.get(&inode).cloned())
    }

    fn lookup<T>(&self, get: impl Fn(&Cache) -> Option<T>) -> Option<T> {
        let mut cache = self.cache.borrow_mut();
        if let Some(found) = get(&cache) {
            return Some(found);
        }
        // A container that just started has a namespace no scan saw yet: its first events
        // may not wait for the interval (at most one extra scan per container start).
        if !may_rescan(cache.scanned, cache.scan_took, Instant::now())
            && !self.containers.take_started()
        {
            return None;
        }
        rescan(&mut cache, Path::new("/proc"), Path::new("/run/netns"));
        get(&cache)
    }
}

/// Forgets the name, path and container cached for namespace `inode` once the file that named
/// it (/run/netns/NAME, /proc/PID/ns/net) no longer refers to it, checked at most every
/// `RESCAN_INTERVAL` per namespace (a stat; names are asked for every event). A namespace
/// inode is reused once freed (fs/nsfs.c `ns_alloc_inum`, an IDA hands out the lowest free
/// number): without this, a pod's new namespace would carry its dead predecessor's name and
/// container for the rest of a long run, since a cached name never causes a rescan.
fn forget_if_reused(cache: &mut Cache, inode: u32, now: Instant) {
    let Some(path) = cache.netns_paths.get(&inode) else {
        return;
    };
    if cache
        .netns_checked
        .get(&inode)
        .is_some_and(|at| now.duration_since(*at) < RESCAN_INTERVAL)
    {
        return;
    }
    if fs::metadata(path).is_ok_and(|metadata| metadata.ino() as u32 == inode) {
        cache.netns_checked.insert(inode, now);
        return;
    }
    cache.netns.remove(&inode);
    cache.netns_paths.remove(&inode);
    cache.netns_containers.remove(&inode);
    cache.netns_checked.remove(&inode);
}

/// Whether a miss may scan /proc again at `now`, the last scan having started at `scanned` and
/// taken `took`.
fn may_rescan(scanned: Option<Instant>, took: Duration, now: Instant) -> bool {
    let interval = RESCAN_INTERVAL.max(took * RESCAN_COST_FACTOR);
    scanned.is_none_or(|at| now.duration_since(at) >= interval)
}

fn rescan(cache: &mut Cache, proc_root: &Path, netns_root: &Path) {
    let started = Instant::now();
    cache.scanned = Some(started);
    scan(cache, proc_root, netns_root);
    cache.scan_took = started.elapsed();
}

fn scan(cache: &mut Cache, proc_root: &Path, netns_root: &Path) {
    cache.sockets.clear();
    cache.netns.clear();
    cache.netns_paths.clear();
    cache.netns_containers.clear();
    cache.netns_checked.clear();
    if let Ok(entries) = fs::read_dir(netns_root) {
        for entry in entries.flatten() {
            if let Ok(metadata) = fs::metadata(entry.path()) {
                let inode = metadata.ino() as u32;
                // Whoever ran `ip netns add` chose the name: escaped like comm and ifname, in
                // the text and the JSON output alike.
                cache
                    .netns
                    .insert(inode, sanitize_kernel_string(entry.file_name().as_bytes()));
                cache.netns_paths.insert(inode, entry.path());
            }
        }
    }
    // PID 1's namespace link may be unreadable (sandboxes): udptrace's own, usually the
    // host's, is named `host`.
    let mut hosts = HashSet::new();
    for (link, name) in [("1/ns/net", "init"), ("self/ns/net", "host")] {
        if let Ok(metadata) = fs::metadata(proc_root.join(link)) {
            let inode = metadata.ino() as u32;
            hosts.insert(inode);
            cache.netns.entry(inode).or_insert_with(|| name.into());
        }
    }
    // Namespaces whose first process (the lowest pid) was looked at.
    let mut seen = HashSet::new();
    let Ok(processes) = fs::read_dir(proc_root) else {
        return;
    };
    let mut pids: Vec<u32> = processes
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    for pid in pids {
        let dir = proc_root.join(pid.to_string());
        let comm = fs::read(dir.join("comm"))
            .map(|bytes| sanitize_kernel_string(bytes.strip_suffix(b"\n").unwrap_or(&bytes)))
            .unwrap_or_default();
        if let Ok(metadata) = fs::metadata(dir.join("ns/net")) {
            let inode = metadata.ino() as u32;
            if let Entry::Vacant(unnamed) = cache.netns.entry(inode) {
                unnamed.insert(format!("{pid}:{comm}"));
            }
            // The namespace's first process tells its container: its cgroup's path
            // (kernel/cgroup/cgroup.c `proc_cgroup_show`) and parent. Namespaces named in
            // /run/netns too (Podman's netavark, CNI and `--network ns:PATH` put containers
            // there; a namespace a daemon runs in first is not a container's), but not the
            // host's: a `--network host` container is not the host.
            if seen.insert(inode)
                && !hosts.contains(&inode)
                && let Some(container) = container_of(proc_root, pid)
            {
                cache.netns_containers.insert(inode, container);
            }
            cache
                .netns_paths
                .entry(inode)
                .or_insert_with(|| dir.join("ns/net"));
        }
        let Ok(fds) = fs::read_dir(dir.join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = fs::read_link(fd.path()) else {
                continue;
            };
            if let Some(inode) = socket_inode(&target.to_string_lossy()) {
                cache.sockets.entry(inode).or_insert_with(|| Process {
                    pid,
                    comm: comm.clone(),
                });
            }
        }
    }
}

/// `socket:[12345]` → 12345.
fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use std::{net::UdpSocket, os::fd::AsRawFd as _};

    use super::*;

    #[test]
    fn rescans_at_most_every_interval_or_ten_scans_time() {
        let start = Instant::now();
        let ms = Duration::from_millis;
        assert!(may_rescan(None, Duration::ZERO, start));
        assert!(!may_rescan(Some(start), ms(1), start + ms(99)));
        assert!(may_rescan(Some(start), ms(1), start + ms(100)));
        // A 50 ms scan: the next one 500 ms later at the earliest.
        assert!(!may_rescan(Some(start), ms(50), start + ms(499)));
        assert!(may_rescan(Some(start), ms(50), start + ms(500)));
    }

    #[test]
    fn parses_socket_links() {
        assert_eq!(socket_inode("socket:[4026]"), Some(4026));
        assert_eq!(socket_inode("pipe:[4026]"), None);
        assert_eq!(socket_inode("socket:[x]"), None);
    }

    #[test]
    fn finds_the_owner_of_our_own_socket() {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let link = fs::read_link(format!("/proc/self/fd/{}", socket.as_raw_fd())).unwrap();
        let inode = socket_inode(&link.to_string_lossy()).unwrap();
        let processes = Processes::default();
        let owner = processes.socket_owner(inode).unwrap();
        assert_eq!(owner.pid, std::process::id());
        assert_eq!(processes.socket_owner(0), None);
    }

    #[test]
    fn names_our_own_namespace() {
        let inode = fs::metadata("/proc/self/ns/net").unwrap().ino() as u32;
        assert!(Processes::default().netns_name(inode).is_some());
    }

    /// A /proc and /run/netns stand-in: pid 1 in the host's namespace, pid 5 (a `--network
    /// host` container) there too, pid 7 first in /run/netns/podman-ns, then pid 9 (a
    /// container) in it; pid 20, a container, first in a namespace of its own.
    #[test]
    fn a_namespaces_first_process_tells_its_container_also_in_run_netns() {
        let id = |c: char| c.to_string().repeat(64);
        let root = std::env::temp_dir().join(format!("udptrace-first-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let (proc_root, netns_root) = (root.join("proc"), root.join("netns"));
        fs::create_dir_all(&netns_root).unwrap();
        let namespace = |path: PathBuf| {
            fs::write(&path, b"").unwrap();
            fs::metadata(&path).unwrap().ino() as u32
        };
        let host = namespace(root.join("host"));
        let named = namespace(netns_root.join("podman-ns"));
        let own = namespace(root.join("own"));
        let target = |inode: u32| {
            [
                root.join("host"),
                netns_root.join("podman-ns"),
                root.join("own"),
            ]
            .into_iter()
            .find(|path| fs::metadata(path).unwrap().ino() as u32 == inode)
            .unwrap()
        };
        for (pid, netns, cgroup) in [
            (1, host, "0::/\n".to_owned()),
            (5, host, format!("0::/libpod_parent/libpod-{}\n", id('a'))),
            (7, named, "0::/\n".to_owned()),
            (9, named, format!("0::/libpod_parent/libpod-{}\n", id('b'))),
            (20, own, format!("0::/libpod_parent/libpod-{}\n", id('c'))),
            (21, named, "0::/\n".to_owned()),
        ] {
            let dir = proc_root.join(pid.to_string());
            fs::create_dir_all(dir.join("ns")).unwrap();
            std::os::unix::fs::symlink(target(netns), dir.join("ns/net")).unwrap();
            fs::write(dir.join("cgroup"), cgroup).unwrap();
        }
        let mut cache = Cache::default();
        rescan(&mut cache, &proc_root, &netns_root);
        // Pid 7 came first in podman-ns: not a container's, though pid 9 is one.
        let before = cache.netns_containers.clone();
        // Without pid 7, pid 9 is podman-ns's first process.
        fs::remove_dir_all(proc_root.join("7")).unwrap();
        rescan(&mut cache, &proc_root, &netns_root);
        fs::remove_dir_all(&root).unwrap();
        assert_eq!(before.keys().copied().collect::<Vec<_>>(), [own]);
        assert_eq!(before[&own].id, id('c'));
        assert_eq!(
            cache.netns_containers.len(),
            2,
            "{:?}",
            cache.netns_containers
        );
        assert_eq!(cache.netns_containers[&named].id, id('b'));
        assert_eq!(cache.netns[&named], "podman-ns");
        assert!(
            !cache.netns_containers.contains_key(&host),
            "the host is no container"
        );
    }

    /// `ip netns del A; ip netns add B`, B given A's freed inode: A's name is not B's.
    #[test]
    fn a_reused_namespace_inode_loses_its_old_name() {
        let root = std::env::temp_dir().join(format!("udptrace-reuse-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let (proc_root, netns_root) = (root.join("proc"), root.join("netns"));
        fs::create_dir_all(&netns_root).unwrap();
        fs::create_dir_all(&proc_root).unwrap();
        let old = netns_root.join("lab-a");
        fs::write(&old, b"").unwrap();
        let inode = fs::metadata(&old).unwrap().ino() as u32;
        let mut cache = Cache::default();
        rescan(&mut cache, &proc_root, &netns_root);
        assert_eq!(cache.netns[&inode], "lab-a");
        let start = Instant::now();
        forget_if_reused(&mut cache, inode, start);
        assert_eq!(cache.netns[&inode], "lab-a", "still there: kept");
        // lab-a deleted; its inode number is given to lab-b, named elsewhere.
        fs::remove_file(&old).unwrap();
        forget_if_reused(&mut cache, inode, start + RESCAN_INTERVAL / 2);
        let within_interval = cache.netns.get(&inode).cloned();
        forget_if_reused(&mut cache, inode, start + RESCAN_INTERVAL);
        let after = cache.netns.get(&inode).cloned();
        fs::remove_dir_all(&root).unwrap();
        assert_eq!(
            within_interval.as_deref(),
            Some("lab-a"),
            "checked at most once an interval"
        );
        assert_eq!(after, None, "forgotten: the next lookup rescans");
        assert!(!cache.netns_paths.contains_key(&inode));
    }

    #[test]
    fn namespace_names_are_escaped() {
        // A /run/netns stand-in with a hostile name (rescan only stats the entries).
        let dir = std::env::temp_dir().join(format!("udptrace-netns-names-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let hostile = dir.join(std::ffi::OsStr::from_bytes(b"evil\x1b[2J\xff\\"));
        fs::write(&hostile, b"").unwrap();
        let inode = fs::metadata(&hostile).unwrap().ino() as u32;
        let mut cache = Cache::default();
        rescan(&mut cache, Path::new("/nonexistent-proc"), &dir);
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(cache.netns[&inode], "evil\\x1b[2J\\xff\\\\");
    }
}
