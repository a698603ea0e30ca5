//! udptrace's kernel programs. Entry points live in `hooks/`, one file per hook family, each
//! offering every attach mechanism for its hook side by side (fexit, tp_btf, raw tracepoint,
//! classic tracepoint); userspace (`udptrace/src/probes/`) picks the best one the running kernel
//! accepts. Everything below the entry points is shared: `kernel` reads kernel memory through
//! the offsets userspace resolved from BTF, `emit` applies the filter and writes the ring buffer.
#![no_std]
#![no_main]
// `atomic_xadd` for counters shared by all CPUs (see `emit::add_one`).
#![feature(core_intrinsics)]
#![expect(
    internal_features,
    reason = "core_intrinsics: the BPF target has no atomic RMW API"
)]

mod debug;
mod emit;
mod hooks;
mod kernel;
mod mem;

use aya_ebpf::macros::map;
use aya_ebpf::maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf, StackTrace};
use udptrace_common::{
    drops::{DropEvidence, DropSites},
    event::{
        COUNTER_COUNT, Capture, Captured, FLOW_COUNTS_ENTRIES, FLOW_OVERFLOW_ENTRIES,
        FirstFragment, FlowCount, FlowCountKey, FragmentKey, STACK_ENTRIES,
    },
    filter::{Filter, Selectors},
    names::ESCALATED_ENTRIES,
    names::SELECTED_NETNS_ENTRIES,
    offsets::KernelOffsets,
};

/// Resolved by userspace from BTF and tracefs before load (`names::OFFSETS_GLOBAL`).
#[unsafe(no_mangle)]
static OFFSETS: KernelOffsets = KernelOffsets::MISSING;

/// Code ranges of the functions whose drops are told apart on kernels without drop reasons,
/// and of the one whose frees are no drop on any kernel, from kallsyms
/// (`names::DROP_SITES_GLOBAL`; see `hooks::drop`).
#[unsafe(no_mangle)]
static DROP_SITES: DropSites = DropSites::EMPTY;

/// Compiled filter expression (`names::FILTER_GLOBAL`); the default matches everything.
#[unsafe(no_mangle)]
static FILTER: Filter = Filter::MATCH_ALL;

/// `--netns`, `-i`, `--pid`, `--container`/`--pod` (`names::SELECTORS_GLOBAL`); zero means any.
#[unsafe(no_mangle)]
static SELECTORS: Selectors = Selectors {
    netns: 0,
    ifindex: 0,
    pid: 0,
    netns_set: 0,
};

/// `--container`/`--pod`: the selected network namespaces (`names::SELECTED_NETNS_MAP`),
/// read only when `SELECTORS.netns_set` is 1.
#[map(name = "SELECTED_NETNS")]
static SELECTED_NETNS: HashMap<u32, u32> = HashMap::with_max_entries(SELECTED_NETNS_ENTRIES, 0);

/// `-w` (`names::CAPTURE_GLOBAL`): packet bytes to copy with hop events; none by default.
#[unsafe(no_mangle)]
static CAPTURE: Capture = Capture {
    snaplen: 0,
    stack: 0,
};

/// `--stack`: kernel call stacks of drops and ICMP errors, by `bpf_get_stackid` id.
#[map(name = "STACKS")]
static STACKS: StackTrace = StackTrace::with_max_entries(STACK_ENTRIES, 0);

/// Every event; userspace sizes it with `--ring-size` before load.
#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// Per-CPU counters indexed by `event::Counter`.
#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);

/// Per-CPU slot where hooks assemble an event and its packet bytes (see `emit`).
#[map(name = "SCRATCH")]
static SCRATCH: PerCpuArray<Captured> = PerCpuArray::with_max_entries(emit::SCRATCH_SLOTS, 0);

/// Per CPU: how many programs are assembling an event in `SCRATCH` right now (nested by
/// interrupts; see `emit::scratch`).
#[map(name = "SCRATCH_DEPTH")]
static SCRATCH_DEPTH: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// skbs of datagrams that matched the filter at some hop → when followed (ktime ns) and
/// their tuple's fingerprint at the last hop; followed until freed, delivered or stale (see
/// `emit`).
#[map(name = "TRACKED")]
static TRACKED: LruHashMap<u64, emit::Followed> = LruHashMap::with_max_entries(16_384, 0);

/// When the latest skb started being followed (ktime ns; 0: never), so that hooks skip
/// `TRACKED` lookups while nothing can be in it (see `emit`).
#[map(name = "FOLLOWING_SINCE")]
static FOLLOWING_SINCE: Array<u64> = Array::with_max_entries(1, 0);

/// Every per-datagram event that passed the filter, per flow (drops per reason, datagrams at
/// their first device) and generation, written or sampled out (see `emit::counted_and_shown`).
/// Not an LRU, which would evict counts silently, and not per CPU, whose values multiply by the
/// CPU count (64 CPUs: 64 values a key): one value shared by all CPUs, updated with atomic
/// adds. Userspace drains (reads and deletes) each generation a tick after it ends.
#[map(name = "FLOW_COUNTS")]
static FLOW_COUNTS: HashMap<FlowCountKey, FlowCount> =
    HashMap::with_max_entries(FLOW_COUNTS_ENTRIES, 0);

/// The "other flows" bucket: events whose flow found `FLOW_COUNTS` full, keyed without tuple.
#[map(name = "FLOW_OVERFLOW")]
static FLOW_OVERFLOW: HashMap<FlowCountKey, FlowCount> =
    HashMap::with_max_entries(FLOW_OVERFLOW_ENTRIES, 0);

/// The generation (0 or 1) events are counted in; userspace flips it every tick.
#[map(name = "GENERATION")]
static GENERATION: Array<u32> = Array::with_max_entries(1, 0);

/// Per CPU: the tracked skb being received right now, so that `sk_data_ready`, which names
/// only the socket, can say which datagram was delivered (see `hooks::path`).
#[map(name = "CURRENT_RX")]
static CURRENT_RX: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Fragmented datagrams → the ports (and UDP length) their first fragment showed, so that
/// later fragments, which carry no UDP header, are reported with their datagram's ports and
/// match a port filter (see `kernel::ip_udp`). An LRU: datagrams whose other fragments never
/// come age out.
#[map(name = "FRAGMENTS")]
static FRAGMENTS: LruHashMap<FragmentKey, FirstFragment> = LruHashMap::with_max_entries(4_096, 0);

/// `names::FEATURE_*` bits userspace sets once it knows which hooks attached.
#[map(name = "FEATURES")]
static FEATURES: Array<u32> = Array::with_max_entries(1, 0);

/// The ports of the flows `udptrace watch` escalates (`names::ESCALATED_MAP`): path events
/// pass only for them while `FEATURE_NARROW` is set.
#[map(name = "ESCALATED")]
static ESCALATED: HashMap<u32, u8> = HashMap::with_max_entries(ESCALATED_ENTRIES, 0);

/// Per CPU: what the kernel did to the skbs it is about to free (see `hooks::drop`).
#[map(name = "DROP_EVIDENCE")]
static DROP_EVIDENCE: PerCpuArray<DropEvidence> = PerCpuArray::with_max_entries(1, 0);

/// kprobe → kretprobe hand-off of a probed function's arguments (see `hooks::entry`). An LRU,
/// so entries of calls whose return was missed (kretprobe maxactive) age out.
#[map(name = "ENTRY_ARGS")]
static ENTRY_ARGS: LruHashMap<hooks::EntryKey, [u64; 4]> = LruHashMap::with_max_entries(8_192, 0);

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// Several helpers used here (probe_read_kernel, ringbuf) are GPL-only.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
