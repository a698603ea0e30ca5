//! What verdicts need to know about a network namespace besides its events: its UDP sockets
//! (through sock_diag) and its nftables ruleset, read at most once per interval per namespace
//! and cached, so that a storm of new flows costs a few reads a second, not one per flow.
//!
//! Each namespace a verdict asks about is held open (its file and its sock_diag socket): this
//! pins it, so that its inode, the key of this cache, cannot be reused by a new namespace while
//! the cache answers for it (nsfs inodes come from an IDA, fs/nsfs.c `ns_alloc_inum`, and are
//! reused once freed). A namespace unused for `IDLE` is released, so that deleted namespaces do
//! not live on in udptrace.

use std::{
    collections::{HashMap, hash_map::Entry},
    fs::File,
    os::unix::fs::MetadataExt as _,
    rc::Rc,
    time::Duration,
};

use crate::{
    conntrack::{self, ConntrackStats},
    firewall::ruleset_in,
    host::in_netns,
    icmp_limits::{self, IcmpLimits},
    procs::Processes,
    qdiscs::qdiscs_in,
    sockets::{SockDiag, SocketList},
};

/// A namespace's sockets are dumped at most this often.
pub const SOCKETS_REFRESH: Duration = Duration::from_millis(200);
/// A namespace's ruleset is read (a subprocess: see `firewall`) at most this often.
pub const RULES_REFRESH: Duration = Duration::from_secs(5);
/// A namespace's ICMP rate limits and counters are read at most this often.
pub const ICMP_LIMITS_REFRESH: Duration = Duration::from_secs(1);
/// A device's qdiscs are read (a subprocess: see `qdiscs`) at most this often.
pub const QDISCS_REFRESH: Duration = Duration::from_secs(1);
/// A namespace nobody asked about for this long is released.
pub const IDLE: Duration = Duration::from_secs(10);

/// A value read at `taken` (CLOCK_MONOTONIC ns).
struct Snapshot<T> {
    taken: u64,
    value: T,
}

impl<T: Clone> Snapshot<T> {
    /// The value if it may answer for an event at `event` (kernel CLOCK_MONOTONIC ns) at time
    /// `now`: read after the event (it shows the state the event left, or later), or read
    /// less than `interval` ago (no new read is allowed yet).
    fn answer(this: Option<&Self>, event: u64, now: u64, interval: Duration) -> Option<T> {
        this.filter(|snapshot| {
            snapshot.taken >= event
                || u128::from(now.saturating_sub(snapshot.taken)) < interval.as_nanos()
        })
        .map(|snapshot| snapshot.value.clone())
    }

    /// `answer`, or else `read()` now, kept in `slot` for the next questions.
    fn cached(
        slot: &mut Option<Self>,
        event: u64,
        now: u64,
        interval: Duration,
        read: impl FnOnce() -> T,
    ) -> T {
        if let Some(value) = Self::answer(slot.as_ref(), event, now, interval) {
            return value;
        }
        let value = read();
        *slot = Some(Snapshot {
            taken: now,
            value: value.clone(),
        });
        value
    }
}

struct Namespace {
    /// Held to pin the namespace (see the module comment) and to enter it.
    file: File,
    diag: Option<SockDiag>,
    /// The last listing, or the failure to list (retried after the interval like a listing,
    /// not for every new flow).
    sockets: Option<Snapshot<Option<SocketList>>>,
    /// The last ruleset read, or the failure to read it.
    ruleset: Option<Snapshot<Option<Rc<str>>>>,
    /// The last read of its ICMP rate limits and counters (`icmp_limits`).
    icmp_limits: Option<Snapshot<Option<IcmpLimits>>>,
    /// The last conntrack counters read, or the failure to read them (`conntrack`).
    conntrack: Option<Snapshot<Option<ConntrackStats>>>,
    /// The last `tc -j qdisc show` of each device asked about, or the failure to run it.
    qdiscs: HashMap<String, Option<Snapshot<Option<Rc<str>>>>>,
    used: u64,
}

/// The namespaces verdicts asked about, by inode.
pub struct Namespaces {
    processes: Rc<Processes>,
    namespaces: HashMap<u32, Namespace>,
}

impl Namespaces {
    pub fn new(processes: Rc<Processes>) -> Self {
        Self {
            processes,
            namespaces: HashMap::new(),
        }
    }

    /// The UDP sockets of namespace `netns` for an event at `event` (CLOCK_MONOTONIC ns);
    /// `None` when the namespace cannot be found or read.
    pub fn sockets(&mut self, netns: u32, event: u64, now: u64) -> Option<SocketList> {
        let Namespace {
            file,
            diag,
            sockets,
            ..
        } = namespace(&mut self.namespaces, &self.processes, netns, now)?;
        Snapshot::cached(sockets, event, now, SOCKETS_REFRESH, || {
            list_sockets(diag, file, &self.processes)
        })
    }

    /// The nftables ruleset of namespace `netns` (`nft -a list ruleset`) for an event at
    /// `event`; `None` when it cannot be read.
    pub fn ruleset(&mut self, netns: u32, event: u64, now: u64) -> Option<Rc<str>> {
        let namespace = namespace(&mut self.namespaces, &self.processes, netns, now)?;
        let file = &namespace.file;
        Snapshot::cached(&mut namespace.ruleset, event, now, RULES_REFRESH, || {
            ruleset_in(file).ok().map(Rc::from)
        })
    }

    /// The ICMP rate limits and counters of namespace `netns` (`icmp_limits`) for an event at
    /// `event`; `None` when they cannot be read.
    pub fn icmp_limits(&mut self, netns: u32, event: u64, now: u64) -> Option<IcmpLimits> {
        let namespace = namespace(&mut self.namespaces, &self.processes, netns, now)?;
        let file = &namespace.file;
        Snapshot::cached(
            &mut namespace.icmp_limits,
            event,
            now,
            ICMP_LIMITS_REFRESH,
            || icmp_limits::read_in(file).ok(),
        )
    }

    /// The connection-tracking counters of namespace `netns` for a drop at `event`; `None`
    /// when the namespace cannot be entered or has no conntrack. Read again unless the last
    /// read came after the event: `conntrack_drop` matches the drops it judges to the growth
    /// of the `drop` counter, which must already show them (the rule asks only about
    /// netfilter drops on flows without a verdict, within its allowance).
    pub fn conntrack(&mut self, netns: u32, event: u64, now: u64) -> Option<ConntrackStats> {
        let namespace = namespace(&mut self.namespaces, &self.processes, netns, now)?;
        let file = &namespace.file;
        Snapshot::cached(&mut namespace.conntrack, event, now, Duration::ZERO, || {
            in_netns(file, conntrack::read_own_namespace)
                .ok()
                .and_then(Result::ok)
        })
    }

    /// The qdiscs of device `device` in namespace `netns` (`tc -s -j qdisc show`) for an event
    /// at `event`; `None` when they cannot be read.
    pub fn qdiscs(&mut self, netns: u32, device: &str, event: u64, now: u64) -> Option<Rc<str>> {
        let namespace = namespace(&mut self.namespaces, &self.processes, netns, now)?;
        let file = &namespace.file;
        let slot = namespace.qdiscs.entry(device.to_owned()).or_default();
        Snapshot::cached(slot, event, now, QDISCS_REFRESH, || {
            qdiscs_in(file, device).ok().map(Rc::from)
        })
    }

    /// Releases the namespaces nobody asked about for `IDLE`.
    pub fn release_idle(&mut self, now: u64) {
        self.namespaces.retain(|_, namespace| {
            u128::from(now.saturating_sub(namespace.used)) < IDLE.as_nanos()
        });
    }
}

/// The UDP sockets of the namespace `netns` refers to, through its sock_diag socket (opened on
/// first use), with their owners.
fn list_sockets(
    diag_slot: &mut Option<SockDiag>,
    netns: &File,
    processes: &Processes,
) -> Option<SocketList> {
    if diag_slot.is_none() {
        *diag_slot = Some(SockDiag::open_in(netns).ok()?);
    }
    let Ok(entries) = diag_slot.as_mut()?.udp_sockets() else {
        // The rest of a failed dump may still be coming: the next listing gets a new socket
        // (net/netlink/af_netlink.c `__netlink_dump_start` refuses a dump on a socket whose
        // previous dump still runs: EBUSY).
        *diag_slot = None;
        return None;
    };
    // Owners are resolved once per listing: a miss rescans /proc, itself rate-limited.
    Some(
        entries
            .into_iter()
            .map(|entry| {
                let owner = processes.socket_owner(entry.inode);
                (entry, owner)
            })
            .collect(),
    )
}

/// Namespace `netns`, opened on first use through a path /proc or /run/netns gives it.
fn namespace<'a>(
    namespaces: &'a mut HashMap<u32, Namespace>,
    processes: &Processes,
    netns: u32,
    now: u64,
) -> Option<&'a mut Namespace> {
    let namespace = match namespaces.entry(netns) {
        Entry::Occupied(entry) => entry.into_mut(),
        Entry::Vacant(entry) => {
            let file = File::open(processes.netns_path(netns)?).ok()?;
            // The path was found by an earlier /proc scan: make sure it still leads there.
            if file.metadata().ok()?.ino() != u64::from(netns) {
                return None;
            }
            entry.insert(Namespace {
                file,
                diag: None,
                sockets: None,
                ruleset: None,
                icmp_limits: None,
                conntrack: None,
                qdiscs: HashMap::new(),
                used: now,
            })
        }
    };
    namespace.used = now;
    Some(namespace)
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;

    use super::*;
    use crate::clock::monotonic_ns;

    const MS: u64 = 1_000_000;

    /// The inode of the test's own network namespace.
    fn own_namespace() -> u32 {
        std::fs::metadata("/proc/self/ns/net").unwrap().ino() as u32
    }

    #[test]
    fn a_snapshot_answers_for_earlier_events_and_within_its_interval() {
        let snapshot = Some(Snapshot {
            taken: 1_000 * MS,
            value: 7,
        });
        let interval = Duration::from_millis(200);
        // Read after the event: good whatever its age.
        assert_eq!(
            Snapshot::answer(snapshot.as_ref(), 900 * MS, 5_000 * MS, interval),
            Some(7)
        );
        // Event after the read, read less than the interval ago: reused (rate limit).
        assert_eq!(
            Snapshot::answer(snapshot.as_ref(), 1_100 * MS, 1_150 * MS, interval),
            Some(7)
        );
        // Event after the read, interval passed: read again.
        assert_eq!(
            Snapshot::answer(snapshot.as_ref(), 1_100 * MS, 1_200 * MS, interval),
            None
        );
        assert_eq!(Snapshot::<u8>::answer(None, 0, 0, interval), None);
    }

    #[test]
    fn lists_each_namespace_once_per_interval_and_releases_idle_ones() {
        let netns = own_namespace();
        // Bound before the first listing, whose owner lookup scans /proc.
        let owned = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut namespaces = Namespaces::new(Rc::default());
        let now = monotonic_ns();
        let first = namespaces.sockets(netns, now, now).unwrap();
        let (_, owner) = first
            .iter()
            .find(|(entry, _)| entry.local == owned.local_addr().unwrap())
            .expect("the socket is listed");
        assert_eq!(
            owner.as_ref().map(|owner| owner.pid),
            Some(std::process::id()),
            "{owner:?}"
        );
        // A socket bound after the listing is not in the cached list within the interval...
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = socket.local_addr().unwrap().port();
        let later = now + 100 * MS;
        let cached = namespaces.sockets(netns, later, later).unwrap();
        assert!(
            Rc::ptr_eq(&first, &cached),
            "listed again within the interval"
        );
        assert!(!cached.iter().any(|(entry, _)| entry.local.port() == port));
        // ...nor for an event older than the listing (no new read needed)...
        let old_event = namespaces.sockets(netns, now - MS, now + 300 * MS).unwrap();
        assert!(Rc::ptr_eq(&first, &old_event));
        // ...but is once the interval has passed.
        let after = now + 300 * MS;
        let fresh = namespaces.sockets(netns, after, after).unwrap();
        assert!(
            fresh.iter().any(|(entry, _)| entry.local.port() == port),
            "a new listing shows the new socket"
        );
        assert_eq!(namespaces.namespaces.len(), 1);
        namespaces.release_idle(after + IDLE.as_nanos() as u64 - 1);
        assert_eq!(namespaces.namespaces.len(), 1, "still in use");
        namespaces.release_idle(after + IDLE.as_nanos() as u64);
        assert!(namespaces.namespaces.is_empty(), "released once idle");
        // An inode no namespace has.
        assert!(namespaces.sockets(1, after, after).is_none());
    }

    /// Root, with nf_conntrack loaded (the lab's conntrack scenarios and nftables `ct` rules
    /// load it): the counters of udptrace's own namespace, read again for a later event.
    #[test]
    fn reads_conntrack_counters_that_show_the_event() {
        if !std::path::Path::new("/proc/sys/net/netfilter/nf_conntrack_max").exists() {
            // The module: loaded by any `ct` expression, e.g. the lab's conntrack-fits.
            let _ = std::process::Command::new("modprobe")
                .arg("nf_conntrack")
                .status();
        }
        let netns = own_namespace();
        let mut namespaces = Namespaces::new(Rc::default());
        let now = monotonic_ns();
        let stats = namespaces
            .conntrack(netns, now, now)
            .expect("the conntrack counters were read");
        assert!(stats.max > 0, "{stats:?}");
        let taken = |namespaces: &Namespaces| {
            namespaces.namespaces[&netns]
                .conntrack
                .as_ref()
                .unwrap()
                .taken
        };
        let first = taken(&namespaces);
        // An event before the read: answered by it.
        namespaces.conntrack(netns, now - MS, now + MS);
        assert_eq!(taken(&namespaces), first);
        // An event after it: read again, whatever the interval.
        namespaces.conntrack(netns, now + MS, now + 2 * MS);
        assert_eq!(taken(&namespaces), now + 2 * MS);
    }

    /// Runs `tc` (iproute2 installed, root): the qdisc of the loopback device of udptrace's own
    /// namespace (`noqueue`, as every namespace's `lo` has), once per device and interval.
    #[test]
    fn reads_a_device_s_qdiscs_once_per_interval() {
        let netns = std::fs::metadata("/proc/self/ns/net").unwrap().ino() as u32;
        let mut namespaces = Namespaces::new(Rc::default());
        let now = monotonic_ns();
        let first = namespaces
            .qdiscs(netns, "lo", now, now)
            .expect("tc qdisc show ran");
        let qdiscs = crate::qdiscs::parse_qdiscs(&first);
        assert_eq!(qdiscs.len(), 1, "{first}");
        assert_eq!(
            (qdiscs[0].kind.as_str(), qdiscs[0].parent.as_deref()),
            ("noqueue", None),
            "{first}"
        );
        let soon = now + QDISCS_REFRESH.as_nanos() as u64 - 1;
        let again = namespaces.qdiscs(netns, "lo", soon, soon).unwrap();
        assert!(
            Rc::ptr_eq(&first, &again),
            "tc ran again within the interval"
        );
        let later = now + QDISCS_REFRESH.as_nanos() as u64;
        let fresh = namespaces.qdiscs(netns, "lo", later, later).unwrap();
        assert!(
            !Rc::ptr_eq(&first, &fresh),
            "tc did not run after the interval"
        );
        // A device the namespace lacks: tc prints no JSON, so no qdisc.
        let missing = namespaces
            .qdiscs(netns, "udpt-none0", later, later)
            .unwrap();
        assert!(
            crate::qdiscs::parse_qdiscs(&missing).is_empty(),
            "{missing}"
        );
    }

    /// Runs `nft` (nftables installed, root: the ruleset of udptrace's own namespace).
    #[test]
    fn reads_a_ruleset_once_per_interval() {
        let netns = own_namespace();
        let mut namespaces = Namespaces::new(Rc::default());
        let now = monotonic_ns();
        let first = namespaces
            .ruleset(netns, now, now)
            .expect("nft -a list ruleset ran");
        let soon = now + RULES_REFRESH.as_nanos() as u64 - 1;
        let again = namespaces.ruleset(netns, soon, soon).unwrap();
        assert!(
            Rc::ptr_eq(&first, &again),
            "nft ran again within the interval"
        );
        let later = now + RULES_REFRESH.as_nanos() as u64;
        let fresh = namespaces.ruleset(netns, later, later).unwrap();
        assert!(
            !Rc::ptr_eq(&first, &fresh),
            "nft did not run after the interval"
        );
    }
}
