//! The last step of every hook: selectors and filter, per-flow counting and sampling, then the
//! ring buffer, with every outcome counted in `COUNTERS` so that nothing is lost silently.
//! Filtering happens before anything reaches the ring buffer, so traffic nobody asked about
//! costs no ring space and no wake-up; a storm of traffic somebody asked about is counted per
//! flow in `FLOW_COUNTS` (drained by userspace every second) and written as a sample.
//!
//! Events are assembled in a per-CPU scratch slot, not on the stack: an `Event` plus the
//! parsing state of the inlined hooks exceeds the 512-byte BPF stack.

use core::{
    ffi::c_void,
    intrinsics::{AtomicOrdering, atomic_xadd},
    ptr::read_volatile,
};

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid,
        generated::{
            bpf_get_smp_processor_id, bpf_get_stackid, bpf_ktime_get_ns, bpf_probe_read_kernel,
        },
    },
    maps::HashMap,
};
use udptrace_common::event::{
    Captured, Counter, EVENT_VERSION, Event, EventHeader, EventKind, FLAG_CONNTRACK, FLAG_FRAGMENT,
    FLAG_STACK, FLAG_TRACKED, FlowCount, FlowCountKey, Fragment, IPPROTO_UDP, MAX_SNAPLEN,
    Mechanism, PacketHeader, SAMPLE_EVENTS_PER_SECOND, Tuple,
};
use udptrace_common::names::FEATURE_NARROW;

use crate::{
    CAPTURE, COUNTERS, ESCALATED, EVENTS, FEATURES, FILTER, FLOW_COUNTS, FLOW_OVERFLOW,
    FOLLOWING_SINCE, GENERATION, SCRATCH, SCRATCH_DEPTH, SELECTED_NETNS, SELECTORS, STACKS,
    TRACKED, debug,
    kernel::{self, Access, ReadError},
    mem,
};

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot; a BPF program is not preempted on its CPU while it runs.
        unsafe { *slot += 1 };
    }
}

/// Scratch events per CPU: one for each context that can interrupt another while it
/// assembles an event (process, softirq, hardirq, NMI).
pub const SCRATCH_SLOTS: u32 = 4;

/// A scratch event of this CPU, lent to one program until dropped. Hooks overwrite every field
/// they use; `submit` fills the header.
///
/// A program is not preempted, but it can be interrupted: a hardirq arriving while a
/// process-context hook (a send, a connect) runs may run pending softirqs on its way out, and
/// the receive path's hooks run there. With one slot per CPU, the interrupting hook would
/// overwrite the tuple the interrupted one had already matched against the filter, which then
/// writes another datagram's tuple under its own verdict (once on Linux 7.3 under emulation:
/// a `not port P` trace showed a datagram of port P). So each nesting level takes its own
/// slot, like a stack: `SCRATCH_DEPTH` counts the levels in use.
pub struct Scratch {
    slot: &'static mut Captured,
    depth: &'static mut u32,
    /// The depth this slot was taken at, restored when it is returned.
    level: u32,
}

impl core::ops::Deref for Scratch {
    type Target = Event;

    fn deref(&self) -> &Event {
        &self.slot.event
    }
}

impl core::ops::DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut Event {
        &mut self.slot.event
    }
}

impl Drop for Scratch {
    #[inline(always)]
    fn drop(&mut self) {
        *self.depth = self.level;
    }
}

/// Lends the scratch event of this CPU's current nesting level; `None` (counted as a read
/// error by the hook's caller) only when more levels nest than [`SCRATCH_SLOTS`].
#[inline(always)]
fn scratch() -> Option<Scratch> {
    // SAFETY: this CPU's counter; whatever interrupts us restores it before we resume.
    let depth = unsafe { &mut *SCRATCH_DEPTH.get_ptr_mut(0)? };
    let level = *depth;
    if level >= SCRATCH_SLOTS {
        return None;
    }
    // SAFETY: slot `level` of this CPU belongs to this program until the guard is dropped:
    // programs interrupting it take the next slots and give them back before it resumes.
    let slot = unsafe { &mut *SCRATCH.get_ptr_mut(level)? };
    *depth = level + 1;
    Some(Scratch { slot, depth, level })
}

/// Whose context the hook runs in. Receive-side hooks run in softirq on whatever task the CPU
/// interrupted, so they must not claim a process; `Process` hooks found running in an
/// interrupt are taken as `Softirq` (see `submit`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Context {
    Process,
    Softirq,
}

/// Where an event happened, read only once it passed the filter (unless a `--netns`/`-i`
/// selector needs it first): most events on a busy host are filtered out.
#[derive(Clone, Copy)]
pub enum Place {
    /// The skb's device and its namespace (the skb is also the event's `skb`).
    Skb(u64, Access),
    /// A socket's namespace (sockets have no device).
    Sock(u64, Access),
    /// The current task's namespace (process-context events without skb or socket).
    Task,
    /// A `struct net`'s namespace (function arguments that name it).
    Net(u64),
    /// Unknown (input route lookups: softirq, the tracepoint names no namespace).
    Unknown,
}

impl Place {
    /// Fills the header's namespace and device for an event seen in `context`.
    #[inline(always)]
    fn fill(self, header: &mut EventHeader, context: Context) {
        match self {
            Self::Skb(skb, access) => kernel::skb_place(skb, access, header),
            Self::Sock(sk, access) => kernel::sock_place(sk, access, header),
            Self::Task if context == Context::Process => kernel::task_place(header),
            Self::Net(net) => {
                header.netns = kernel::net_inum(net, Access::Probe);
                header.ifindex = 0;
                header.ifname = [0; 16];
            }
            Self::Task | Self::Unknown => {
                header.netns = 0;
                header.ifindex = 0;
                header.ifname = [0; 16];
            }
        }
    }

    /// Whether the event's namespace is unknown in `context`: the current task's is not the
    /// event's when a process-context hook ran in an interrupt.
    #[inline(always)]
    fn unknown(self, context: Context) -> bool {
        match self {
            Self::Unknown => true,
            Self::Task => context != Context::Process,
            _ => false,
        }
    }

    /// How the event's skb may be read: as its place says when that is the skb.
    #[inline(always)]
    fn skb_access(self) -> Access {
        match self {
            Self::Skb(_, access) => access,
            _ => Access::Probe,
        }
    }
}

/// Where a [`Report`]'s tuple comes from. An enum rather than a closure: closures passed to
/// `#[inline(always)]` functions are still outlined by LLVM, and became BPF subprograms on
/// the per-packet path.
enum Source<'a> {
    /// The UDP datagram an skb carries.
    Datagram(u64, Access),
    /// The packet at an IP header; its next protocol is stored in the `u8`.
    Packet(&'a kernel::Network, &'a mut u8),
    /// A UDP socket's own addresses.
    Socket(u64, Access),
}

/// The event a hook is assembling: the scratch slot leased for it (see [`Scratch`]) and what
/// `submit` needs besides the kind. Every hook starts with one of the constructors, which
/// lease the slot, parse the tuple the hook is about (a datagram's headers or a socket's
/// addresses, the early exit for anything not UDP) and zero the detail; then it writes only
/// its own detail fields and calls [`Report::submit`]. `None`: nothing to report (not UDP, or
/// more nesting levels than scratch slots).
pub struct Report {
    lease: Scratch,
    mechanism: Mechanism,
    /// The skb the event is about (0 for socket events): followed across hops.
    skb: u64,
    place: Place,
    /// The socket whose inode the event names (0: none).
    sock: u64,
    /// The program's context when the event may carry the kernel stack (`--stack`), else
    /// null.
    stack_ctx: *mut c_void,
}

impl Report {
    /// Leases a scratch event for a hook of `mechanism`; the tuple and detail are left as the
    /// last user of the slot wrote them, for the constructors to overwrite.
    #[inline(always)]
    fn lease(mechanism: Mechanism, skb: u64, place: Place) -> Option<Self> {
        Some(Self {
            lease: scratch()?,
            mechanism,
            skb,
            place,
            sock: 0,
            stack_ctx: core::ptr::null_mut(),
        })
    }

    /// Leases a scratch event and fills its tuple from `source`; zeroes the detail when the
    /// source is one to report (UDP).
    #[inline(always)]
    fn parsed(
        mechanism: Mechanism,
        skb: u64,
        place: Place,
        source: Source<'_>,
    ) -> Result<Option<Self>, ReadError> {
        let Some(mut report) = Self::lease(mechanism, skb, place) else {
            return Ok(None);
        };
        let mut fragment = Fragment::default();
        let udp = match source {
            Source::Datagram(skb, access) => {
                kernel::udp_datagram(skb, access, &mut report.tuple, &mut fragment)?
            }
            Source::Packet(net, protocol) => {
                *protocol = kernel::ip_udp(net, &mut report.tuple, &mut fragment)?;
                *protocol == IPPROTO_UDP
            }
            Source::Socket(sk, access) => kernel::udp_sock_tuple(sk, access, &mut report.tuple)?,
        };
        if !udp {
            return Ok(None);
        }
        mem::zero(&mut report.detail);
        if fragment.is_fragment() {
            report.detail.fragment = fragment;
            report.detail.flags = FLAG_FRAGMENT;
        }
        Ok(Some(report))
    }

    /// The UDP datagram `skb` carries (an argument of `mechanism`'s programs, read
    /// accordingly), at the skb's device.
    #[inline(always)]
    pub fn datagram(skb: u64, mechanism: Mechanism) -> Result<Option<Self>, ReadError> {
        let access = Access::of_arguments(mechanism);
        let place = Place::Skb(skb, access);
        Self::parsed(mechanism, skb, place, Source::Datagram(skb, access))
    }

    /// The packet of `skb` whose IP header is `net`: its next protocol, and the report when it
    /// is UDP (the slot is given back otherwise, for the caller's other uses).
    #[inline(always)]
    pub fn packet(
        skb: u64,
        net: &kernel::Network,
        mechanism: Mechanism,
    ) -> Result<(u8, Option<Self>), ReadError> {
        let mut protocol = 0;
        let place = Place::Skb(skb, Access::of_arguments(mechanism));
        let report = Self::parsed(mechanism, skb, place, Source::Packet(net, &mut protocol))?;
        Ok((protocol, report))
    }

    /// A UDP socket `sk` (an argument of `mechanism`'s programs): its own addresses as the
    /// tuple, in its namespace.
    #[inline(always)]
    pub fn socket(sk: u64, mechanism: Mechanism) -> Result<Option<Self>, ReadError> {
        let access = Access::of_arguments(mechanism);
        Self::parsed(
            mechanism,
            0,
            Place::Sock(sk, access),
            Source::Socket(sk, access),
        )
    }

    /// An event whose tuple the hook fills itself (from a tracepoint record or function
    /// arguments): tuple and detail zeroed.
    #[inline(always)]
    pub fn blank(mechanism: Mechanism, place: Place) -> Option<Self> {
        let mut report = Self::lease(mechanism, 0, place)?;
        mem::zero(&mut report.tuple);
        mem::zero(&mut report.detail);
        Some(report)
    }

    /// Placed by the current task: for an skb whose device field no longer names one (UDP
    /// reuses `skb->dev` as `dev_scratch` once a datagram is queued to a socket).
    #[inline(always)]
    pub fn at_task(mut self) -> Self {
        self.place = Place::Task;
        self
    }

    /// About `skb` too (followed across hops) though its place is not the skb's.
    #[inline(always)]
    pub fn about_skb(mut self, skb: u64) -> Self {
        self.skb = skb;
        self
    }

    /// Names socket `sk`: its inode is read for events that pass (process attribution).
    #[inline(always)]
    pub fn naming(mut self, sk: u64) -> Self {
        self.sock = sk;
        self
    }

    /// With `--stack`, the kernel call stack at the hook (`ctx`: the program's context, which
    /// `bpf_get_stackid` walks from) is collected once the event passed the filter.
    #[inline(always)]
    pub fn with_stack(mut self, ctx: *mut c_void) -> Self {
        self.stack_ctx = ctx;
        self
    }

    /// Where the event happened, when the hook learns it only after parsing.
    #[inline(always)]
    pub fn at(&mut self, place: Place) {
        self.place = place;
    }

    /// Submits the event as `kind` seen in `context` (see [`submit`]); whether it passed.
    #[inline(always)]
    pub fn submit(self, kind: EventKind, context: Context) -> bool {
        let (mechanism, skb, place, sock) = (self.mechanism, self.skb, self.place, self.sock);
        let stack_ctx = self.stack_ctx;
        submit(
            &mut *self.lease.slot,
            kind,
            mechanism,
            context,
            skb,
            place,
            sock,
            stack_ctx,
        )
    }
}

impl core::ops::Deref for Report {
    type Target = Event;

    fn deref(&self) -> &Event {
        &self.lease
    }
}

impl core::ops::DerefMut for Report {
    fn deref_mut(&mut self) -> &mut Event {
        &mut self.lease
    }
}

/// `bpf_ringbuf_output` flags (include/uapi/linux/bpf.h).
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
/// `bpf_ringbuf_query` flags.
const BPF_RB_AVAIL_DATA: u64 = 0;
const BPF_RB_RING_SIZE: u64 = 1;

/// Completes `slot.event` (tuple and detail already filled by the hook), applies selectors and
/// filter, and writes it to the ring buffer, with the packet's bytes after it for a hop event
/// when `-w` asked for them (`capture`). `sock`, when not 0, is the socket whose inode the
/// event names (read only for events that pass). Returns whether the event passed: written,
/// sampled out (counted in `FLOW_COUNTS`, see `counted_and_shown`), or counted lost when the
/// ring was full.
///
/// Wake-ups are batched: userspace drains on a short timer, and is woken only when the ring
/// is an eighth full, so a busy flow does not cost a context switch per event.
///
/// Packet tracking: once a datagram's skb matched the filter at a hop, later events about the
/// same skb are reported even when its tuple no longer matches (NAT), flagged `FLAG_TRACKED`.
/// Tracking starts at hops (`Xmit`, `Recv`) and ends when the skb is freed (`Drop` here,
/// `consume_skb` in `hooks::path`) or delivered (`Deliver`: UDP frees delivered datagrams
/// with `__consume_stateless_skb`, which has no tracepoint). Three guards against following a
/// reused skb address: an entry older than `TRACK_STALE_NS` is ignored (a datagram crosses
/// the stack in micro- to milliseconds); an skb whose tuple changed since its last hop
/// without a conntrack entry on it (no NAT possible) is a new datagram; and the map is an
/// LRU, so entries a missed free left behind can never fill it.
#[inline(always)]
fn submit(
    slot: &mut Captured,
    kind: EventKind,
    mechanism: Mechanism,
    context: Context,
    skb: u64,
    place: Place,
    sock: u64,
    stack_ctx: *mut c_void,
) -> bool {
    count(Counter::Seen);
    let event = &mut slot.event;
    // SAFETY: reads of our own static; volatile defeats folding of the placeholder.
    let (want_netns, want_ifindex, want_pid, want_set) = unsafe {
        (
            read_volatile(&raw const SELECTORS.netns),
            read_volatile(&raw const SELECTORS.ifindex),
            read_volatile(&raw const SELECTORS.pid),
            read_volatile(&raw const SELECTORS.netns_set),
        )
    };
    let place_first = want_netns != 0 || want_set != 0 || want_ifindex != 0;
    // Whose context this is costs four helper calls (`kernel::in_interrupt`) and the task's
    // ids one more: paid before the filter only when a selector needs them, otherwise by the
    // events that pass (a send hook runs for every datagram any socket on the host sends).
    let context_first = place_first || want_pid != 0;
    let (mut context, mut pid_tgid) = (context, 0);
    if context_first {
        (context, pid_tgid) = whose(context);
    }
    let header = &mut event.header;
    header.pid = (pid_tgid >> 32) as u32;
    if place_first {
        place.fill(header, context);
    }
    // An event whose namespace could not be read (0) passes, as with `--netns`; one whose
    // place is unknown (a route lookup in softirq, whose record names no namespace) is not
    // claimed for it.
    let netns_unread = header.netns == 0 && !place.unknown(context);
    let selected = (want_netns == 0 || netns_unread || header.netns == want_netns)
        && (want_set == 0
            || netns_unread
            // SAFETY: a lookup in our own map; the value is not read.
            || unsafe { SELECTED_NETNS.get(&header.netns) }.is_some())
        && (want_ifindex == 0 || header.ifindex == 0 || header.ifindex == want_ifindex)
        && (want_pid == 0 || context == Context::Softirq || header.pid == want_pid);
    // Narrowing is judged only for what matched: traffic the filter ignores pays nothing.
    let matches = selected
        && FILTER.matches(&event.tuple, kind == EventKind::IcmpError)
        && !(kind.narrowed() && narrowed_out(&event.tuple));
    debug::tuple("parsed", kind, &event.tuple);
    // Whether the skb is followed costs a clock read and a hash lookup: paid only by datagrams
    // that match (to flag and refresh them) or once something was followed, not by the
    // traffic a filter is there to ignore; and the lookup only while something may be fresh.
    let since = following_since();
    if !matches && (!selected || skb == 0 || since == 0) {
        count(Counter::FilteredOut);
        debug::tuple(
            if selected {
                "skipped by the filter"
            } else {
                "skipped by --netns/-i/--pid/--container/--pod"
            },
            kind,
            &event.tuple,
        );
        return false;
    }
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let fingerprint = tuple_fingerprint(&event.tuple);
    let followed = if skb == 0 || now.wrapping_sub(since) >= TRACK_STALE_NS {
        None
    } else {
        followed_as(skb, now)
    };
    // A followed skb is the same datagram when it matches, when its tuple is the one it had at
    // its last hop, or when the tuple changed under a conntrack entry (NAT). Anything else is
    // a new datagram in a recycled skb whose last hop was never seen (freed without a
    // tracepoint): its stale entry goes, and it is judged by the filter alone.
    let tracked = followed.is_some_and(|last| {
        matches || last == fingerprint || kernel::has_conntrack(skb, place.skb_access())
    });
    if followed.is_some() && !tracked {
        let _ = TRACKED.remove(&map_key(skb));
    }
    if !(matches || tracked) {
        count(Counter::FilteredOut);
        debug::tuple(
            "skipped by the filter (its skb is no longer followed)",
            kind,
            &event.tuple,
        );
        return false;
    }
    match kind {
        // Start following, or note the tuple a NAT gave it. Otherwise a datagram already
        // followed keeps its entry, fresh for the second its crossing may take
        // (`TRACK_STALE_NS`): an LRU update takes a bucket lock.
        EventKind::Xmit | EventKind::Recv
            if !tracked || followed.is_some_and(|last| last != fingerprint) =>
        {
            // A full map evicts its least recently used entry: insertion cannot fail for lack
            // of room, and a failed insert only means later hops go unreported.
            let key = map_key(skb);
            let _ = TRACKED.insert(
                &key,
                &Followed {
                    seen_ns: now,
                    tuple: fingerprint,
                },
                0,
            );
            note_following(now);
        }
        EventKind::Drop | EventKind::Deliver if tracked => {
            let _ = TRACKED.remove(&map_key(skb));
        }
        _ => {}
    }
    if kind.sampled() && !counted_and_shown(event, kind, tracked) {
        count(Counter::Sampled);
        if kind == EventKind::Drop {
            count(Counter::DropsSampled);
        }
        return true;
    }
    if !context_first {
        (context, pid_tgid) = whose(context);
        event.header.pid = (pid_tgid >> 32) as u32;
    }
    if !place_first {
        place.fill(&mut event.header, context);
    }
    if sock != 0 {
        event.detail.sock_ino = kernel::sock_inode(sock);
    }
    if tracked {
        event.detail.flags |= FLAG_TRACKED;
    }
    // SAFETY: a read of our own static; volatile defeats folding of the placeholder.
    if !stack_ctx.is_null() && unsafe { read_volatile(&raw const CAPTURE.stack) } != 0 {
        // SAFETY: `stack_ctx` is the running program's context, `STACKS` a stack trace map
        // (a `StackTrace` is its map definition, `#[repr(transparent)]`).
        let id = unsafe {
            bpf_get_stackid(stack_ctx, core::ptr::from_ref(&STACKS).cast_mut().cast(), 0)
        };
        if id >= 0 {
            event.detail.stack_id = id as u32;
            event.detail.flags |= FLAG_STACK;
        }
    }
    if skb != 0
        && kernel::conntrack(
            skb,
            place.skb_access(),
            &mut event.detail.ct_original,
            &mut event.detail.ct_reply,
            &mut event.detail.ct_status,
        )
    {
        event.detail.flags |= FLAG_CONNTRACK;
    }
    let header = &mut event.header;
    header.kind = kind as u8;
    header.version = EVENT_VERSION;
    header.mechanism = mechanism as u8;
    header.skb = skb;
    header.tid = pid_tgid as u32;
    header.comm = if context == Context::Process {
        bpf_get_current_comm().unwrap_or([0; 16])
    } else {
        [0; 16]
    };
    header.ts_ns = now;
    // SAFETY: a plain helper without preconditions.
    header.cpu = unsafe { bpf_get_smp_processor_id() };
    let flags = if EVENTS.query(BPF_RB_AVAIL_DATA) > EVENTS.query(BPF_RB_RING_SIZE) / 8 {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    let size = size_of::<Event>() + capture(slot, kind, skb, place.skb_access());
    // SAFETY: `size` is at most the slot's size (`capture` bounds what it adds), as the
    // verifier checks again; the slot is plain bytes.
    let record =
        unsafe { core::slice::from_raw_parts(core::ptr::from_ref(slot).cast::<u8>(), size) };
    if EVENTS.output::<[u8]>(record, flags).is_ok() {
        count(Counter::Submitted);
    } else {
        count(Counter::Lost);
        if kind == EventKind::Drop {
            count(Counter::DropsLost);
        }
    }
    true
}

/// The context an event really happened in, and the current task's ids when that is a
/// process (0 otherwise). Hooks that run in a sender's system call (device transmit, output
/// route lookups) also run in softirqs and hardirqs, where the current task is not the
/// datagram's.
#[inline(always)]
fn whose(context: Context) -> (Context, u64) {
    if context == Context::Process && !kernel::in_interrupt() {
        (Context::Process, bpf_get_current_pid_tgid())
    } else {
        (Context::Softirq, 0)
    }
}

/// Copies the packet of a hop event into `slot` after its event when `-w` asked for packets
/// (`CAPTURE.snaplen` > 0): from `skb->head + skb->network_header`, so the bytes always start
/// at the IP header, whatever the hook (at `net_dev_queue`/`net_dev_start_xmit` `skb->data`
/// is at the link-layer header, at `netif_receive_skb` past it, at `kfree_skb` and
/// `sk_data_ready` anywhere up to the UDP payload). At most `snaplen` bytes, the IP packet's
/// length and the skb's linear data (`skb->tail`): paged data is not followed. Returns the
/// bytes the record grows by (0: nothing copied, the record is the bare event).
#[inline(always)]
fn capture(slot: &mut Captured, kind: EventKind, skb: u64, access: Access) -> usize {
    // SAFETY: a read of our own static; volatile defeats folding of the placeholder.
    let snaplen = unsafe { read_volatile(&raw const CAPTURE.snaplen) };
    if snaplen == 0
        || skb == 0
        || !matches!(
            kind,
            EventKind::Xmit
                | EventKind::Recv
                | EventKind::Drop
                | EventKind::IcmpError
                | EventKind::Deliver
        )
    {
        return 0;
    }
    let Ok(Some(net)) = kernel::network_header(skb, access) else {
        return 0;
    };
    let Ok(len) = kernel::ip_length(&net) else {
        return 0;
    };
    let Ok(linear) = kernel::linear_after(skb, access, &net) else {
        return 0;
    };
    let mut caplen = snaplen.min(len).min(linear);
    // The verifier needs the bound on this path, whatever the userspace check of --snaplen.
    if caplen > MAX_SNAPLEN {
        caplen = MAX_SNAPLEN;
    }
    // SAFETY: the destination is `caplen` bytes of the slot; bpf_probe_read_kernel validates
    // the source.
    let read = unsafe {
        bpf_probe_read_kernel(
            slot.data.as_mut_ptr().cast(),
            caplen,
            net.header as *const c_void,
        )
    };
    if read != 0 {
        count(Counter::ReadErrors);
        return 0;
    }
    slot.packet = PacketHeader { len, caplen };
    size_of::<PacketHeader>() + caplen as usize
}

/// Counts an event that passed the filter in `FLOW_COUNTS` (per flow, kind, first sighting,
/// drop reason and generation, shared by all CPUs) and says whether it is written: the first
/// `SAMPLE_EVENTS_PER_SECOND` of each key in each generation are. When `FLOW_COUNTS` is full
/// (a storm of new flows faster than userspace drains it), the event is counted without its
/// tuple in `FLOW_OVERFLOW`, the "other flows" bucket, and sampled there: nothing is evicted,
/// so per-flow counts plus the bucket are every event.
#[inline(always)]
fn counted_and_shown(event: &Event, kind: EventKind, tracked: bool) -> bool {
    let mut key = FlowCountKey {
        tuple: event.tuple,
        kind: kind as u8,
        first: u8::from(matches!(kind, EventKind::Xmit | EventKind::Recv) && !tracked),
        generation: GENERATION
            .get(0)
            .map_or(0, |generation| (*generation & 1) as u8),
        padding: 0,
        reason: if kind == EventKind::Drop {
            event.detail.reason
        } else {
            0
        },
    };
    if let Some(shown) = count_in(&FLOW_COUNTS, &key) {
        return shown;
    }
    mem::zero(&mut key.tuple);
    count_in(&FLOW_OVERFLOW, &key).unwrap_or_else(|| {
        count(Counter::Uncounted);
        true
    })
}

/// `-EEXIST` (include/uapi/asm-generic/errno-base.h): `BPF_NOEXIST` lost a race.
const EEXIST: i64 = 17;

/// Adds an event to `key` in `map`, creating the key; `None` when the map is full. Returns
/// whether the event is within its key's sample.
#[inline(always)]
fn count_in(map: &HashMap<FlowCountKey, FlowCount>, key: &FlowCountKey) -> Option<bool> {
    if let Some(value) = map.get_ptr_mut(key) {
        return Some(add_one(value));
    }
    let first = FlowCount { count: 1, shown: 1 };
    // A preallocated hash refuses a new key when full (-E2BIG, kernel/bpf/hashtab.c
    // alloc_htab_elem) instead of evicting one.
    match map.insert(key, &first, u64::from(BPF_NOEXIST)) {
        Ok(()) => Some(true),
        // Another CPU created the key between the lookup and the insert.
        Err(error) if i64::from(error) == -EEXIST => map.get_ptr_mut(key).map(add_one),
        Err(_) => None,
    }
}

/// Counts one event on a shared value; whether it is within the sample. The count is an atomic
/// add (BPF `lock xadd`: exact from every CPU at once; `core::sync::atomic` offers no
/// read-modify-write on the BPF target, the intrinsic lowers to the instruction); the sample
/// check reads before it adds, so CPUs racing on one key may each write one event more than
/// the allowance.
#[inline(always)]
fn add_one(value: *mut FlowCount) -> bool {
    // SAFETY: `value` points into map memory, 8-aligned, valid while the program runs (a key
    // of the current generation is never deleted under it: see `FlowCountKey::generation`).
    unsafe {
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*value).count, 1);
        let shown = &raw mut (*value).shown;
        if read_volatile(shown) >= SAMPLE_EVENTS_PER_SECOND {
            return false;
        }
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(shown, 1);
    }
    true
}

/// Whether `udptrace watch` keeps this path event out: narrowing is on (`FEATURE_NARROW`) and
/// neither of its ports belongs to a flow being escalated (`ESCALATED`).
#[inline(always)]
fn narrowed_out(tuple: &Tuple) -> bool {
    let narrowing = FEATURES
        .get(0)
        .is_some_and(|features| features & FEATURE_NARROW != 0);
    if !narrowing {
        return false;
    }
    let (sport, dport) = (u32::from(tuple.sport), u32::from(tuple.dport));
    // SAFETY: presence only; the values are not read.
    unsafe { ESCALATED.get(&sport).is_none() && ESCALATED.get(&dport).is_none() }
}

/// A datagram older than this at a hop is not the one that was followed: the skb address
/// was reused.
const TRACK_STALE_NS: u64 = 1_000_000_000;

/// When an skb last started being followed (ktime ns, to the millisecond); 0 when none ever
/// was. More than `TRACK_STALE_NS` ago, no `TRACKED` entry can be fresh and no lookup is
/// needed.
#[inline(always)]
fn following_since() -> u64 {
    FOLLOWING_SINCE.get(0).copied().unwrap_or(0)
}

/// Whether any skb started being followed within `TRACK_STALE_NS`; read without a clock while
/// nothing was ever followed (the filter matched nothing yet).
#[inline(always)]
pub fn following_anything() -> bool {
    let since = following_since();
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    since != 0 && unsafe { bpf_ktime_get_ns() }.wrapping_sub(since) < TRACK_STALE_NS
}

/// Records that an skb is followed as of `now`. Shared by all CPUs, so written only when the
/// stored time is over a millisecond old: a busy matching flow does not bounce the cache line.
#[inline(always)]
fn note_following(now: u64) {
    if let Some(last) = FOLLOWING_SINCE.get_ptr_mut(0) {
        // SAFETY: map memory; a racing writer stores an equally recent time.
        unsafe {
            if now.wrapping_sub(*last) > 1_000_000 {
                *last = now;
            }
        }
    }
}

/// An skb address as a map key, in a stack slot of its own. Map helpers take keys by stack
/// address; were that the slot of a BTF-typed skb pointer itself, verifiers before Linux 7.x
/// would see the pointer as an unknown scalar once a helper read it, and reject the typed
/// loads after it ("R2 invalid mem access 'scalar'", Debian 6.1 and 6.12). Volatile, so the
/// compiler cannot fold the copy back into the pointer's slot.
#[inline(always)]
fn map_key(skb: u64) -> u64 {
    // SAFETY: a read of a local.
    unsafe { read_volatile(&raw const skb) }
}

/// A followed skb (`TRACKED` value): when it started being followed, and the fingerprint of
/// its tuple at its last reported hop.
#[repr(C)]
pub struct Followed {
    pub seen_ns: u64,
    pub tuple: u64,
}

/// The fingerprint of `skb`'s tuple at its last hop, if it is followed (and seen recently).
#[inline(always)]
fn followed_as(skb: u64, now: u64) -> Option<u64> {
    // SAFETY: the pointer is into map memory, read once.
    let followed = unsafe { TRACKED.get(&map_key(skb)) }?;
    (now.wrapping_sub(followed.seen_ns) < TRACK_STALE_NS).then_some(followed.tuple)
}

/// The five words of a tuple folded into one: equal tuples give equal fingerprints.
#[inline(always)]
fn tuple_fingerprint(tuple: &Tuple) -> u64 {
    let words = core::ptr::from_ref(tuple).cast::<u64>();
    let mut fingerprint = 0u64;
    let mut index = 0;
    while index < size_of::<Tuple>() / 8 {
        // SAFETY: `Tuple` is 8-aligned and 40 bytes long.
        let word = unsafe { read_volatile(words.add(index)) };
        fingerprint = fingerprint.rotate_left(13) ^ word;
        index += 1;
    }
    fingerprint
}
