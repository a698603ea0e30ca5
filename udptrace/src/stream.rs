//! The kernel → userspace transport: the `EVENTS` ring buffer, drained on tokio readiness, the
//! per-CPU `COUNTERS` that account for every event (submitted, lost, filtered), and the
//! per-flow totals of `FLOW_COUNTS`, drained every tick.

use std::os::fd::{AsFd as _, AsRawFd as _};

use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf,
    maps::{Array, Map, MapData, MapError, PerCpuArray, RingBuf},
};
use tokio::io::unix::AsyncFd;
use udptrace_common::{
    event::{COUNTER_COUNT, Counter, FlowCount, FlowCountKey},
    names::{COUNTERS_MAP, EVENTS_MAP, FLOW_COUNTS_MAP, FLOW_OVERFLOW_MAP, GENERATION_MAP},
};

/// Takes map `name` out of the loaded object as the map type `M` (`what` names it in errors).
fn take<M>(ebpf: &mut Ebpf, name: &str, what: &str) -> anyhow::Result<M>
where
    M: TryFrom<Map, Error = MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the embedded object"))?;
    M::try_from(map).with_context(|| format!("opening the {what}"))
}

/// The ring buffer, registered with tokio.
pub struct EventRing {
    ring: AsyncFd<RingBuf<MapData>>,
}

impl EventRing {
    pub fn take(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        let ring: RingBuf<MapData> = take(ebpf, EVENTS_MAP, "events ring buffer")?;
        let fd = ring.as_raw_fd();
        // SAFETY: the RingBuf owns its fd and moves into the AsyncFd, which drops it: the fd
        // stays open for as long as it is registered.
        let ring = unsafe { AsyncFd::register(ring) }
            .map_err(|error| anyhow!("registering ring buffer fd {fd} with tokio: {error}"))?;
        Ok(Self { ring })
    }

    /// Waits until the kernel signals new records.
    pub async fn readable(&mut self) -> anyhow::Result<()> {
        let mut guard = self
            .ring
            .readable_mut()
            .await
            .context("waiting on the ring buffer")?;
        guard.clear_ready();
        Ok(())
    }

    /// Hands every record currently in the ring to `handle`, oldest first; returns how many.
    pub fn drain(&mut self, mut handle: impl FnMut(&[u8])) -> usize {
        let ring = self.ring.get_mut();
        let mut drained = 0;
        while let Some(record) = ring.next() {
            handle(&record);
            drained += 1;
        }
        drained
    }
}

/// Sums of the per-CPU counters, indexed by [`Counter`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CounterValues([u64; COUNTER_COUNT as usize]);

impl CounterValues {
    pub fn get(&self, counter: Counter) -> u64 {
        self.0[counter as usize]
    }
}

pub struct Counters {
    array: PerCpuArray<MapData, u64>,
}

impl Counters {
    pub fn take(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        Ok(Self {
            array: take(ebpf, COUNTERS_MAP, "counters map")?,
        })
    }

    pub fn read(&self) -> anyhow::Result<CounterValues> {
        let mut values = CounterValues::default();
        for counter in Counter::ALL {
            let per_cpu = self
                .array
                .get(&(counter as u32), 0)
                .with_context(|| format!("reading counter {counter:?}"))?;
            values.0[counter as usize] = per_cpu.iter().sum();
        }
        Ok(values)
    }
}

/// Every per-datagram event that passed the filter, per flow, as the kernel counted it (a
/// storm's events are sampled; these counts are not): `FLOW_COUNTS`, and `FLOW_OVERFLOW` for
/// events whose flow found it full, in two generations (`GENERATION`).
///
/// Every tick, userspace reads and deletes the keys of the generation the programs stopped
/// counting in a tick ago (a program runs for microseconds: none can still be adding to them),
/// then flips the generation, so the map holds about two ticks of keys whatever the number of
/// flows, and the counts add up in userspace.
pub struct FlowCounts {
    flows: MapData,
    overflow: MapData,
    generation: Array<MapData, u32>,
    current: u32,
}

/// Counts read from the kernel: per flow, and without a flow (`FLOW_OVERFLOW`).
#[derive(Debug, Default)]
pub struct KernelCounts {
    pub flows: Vec<(FlowCountKey, u64)>,
    pub overflow: Vec<(FlowCountKey, u64)>,
}

impl FlowCounts {
    pub fn take(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        let hash = |ebpf: &mut Ebpf, name: &str, what: &str| -> anyhow::Result<MapData> {
            match ebpf.take_map(name) {
                Some(Map::HashMap(data)) => Ok(data),
                Some(_) => Err(anyhow!("the {what} ({name}) is not a hash map")),
                None => Err(anyhow!("map {name} missing from the embedded object")),
            }
        };
        let flows = hash(ebpf, FLOW_COUNTS_MAP, "flow counts map")?;
        let overflow = hash(ebpf, FLOW_OVERFLOW_MAP, "other-flows counts map")?;
        let mut generation: Array<MapData, u32> = take(ebpf, GENERATION_MAP, "generation map")?;
        generation
            .set(0, 0, 0)
            .context("writing the generation map")?;
        Ok(Self {
            flows,
            overflow,
            generation,
            current: 0,
        })
    }

    /// Reads and deletes the keys of the generation that ended a tick ago, then flips.
    pub fn drain(&mut self) -> anyhow::Result<KernelCounts> {
        let old = self.current ^ 1;
        let counts = KernelCounts {
            flows: batch_read(&self.flows, Some(old)).context("draining the flow counts")?,
            overflow: batch_read(&self.overflow, Some(old))
                .context("draining the other-flows counts")?,
        };
        self.generation
            .set(0, old, 0)
            .context("flipping the generation")?;
        self.current = old;
        Ok(counts)
    }

    /// At exit: every key left, of both generations, read without deleting (the programs are
    /// still attached and may be counting).
    pub fn read_rest(&self) -> anyhow::Result<KernelCounts> {
        Ok(KernelCounts {
            flows: batch_read(&self.flows, None).context("reading the flow counts")?,
            overflow: batch_read(&self.overflow, None).context("reading the other-flows counts")?,
        })
    }
}

/// `enum bpf_cmd` (include/uapi/linux/bpf.h).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
/// Keys asked for per batch call. A hash map's batch stops at bucket boundaries and fails with
/// ENOSPC only if a single bucket holds more keys than this.
const BATCH_KEYS: usize = 4_096;

/// `union bpf_attr`'s `batch` member (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn bpf_batch(command: libc::c_long, attr: &mut BatchAttr) -> std::io::Result<()> {
    // SAFETY: `attr` is a valid `bpf_attr` batch member whose pointers reference live buffers
    // of the sizes its `count` promises.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            std::ptr::from_mut(attr),
            size_of::<BatchAttr>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The keys of `map` with their counts, a few thousand per system call: every key, or with
/// `delete: Some(generation)` only that generation's, each deleted once read.
fn batch_read(map: &MapData, delete: Option<u32>) -> anyhow::Result<Vec<(FlowCountKey, u64)>> {
    let fd = map.fd().as_fd().as_raw_fd() as u32;
    let mut keys = vec![FlowCountKey::default(); BATCH_KEYS];
    let mut values = vec![FlowCount::default(); BATCH_KEYS];
    // The position tokens: a bucket index for hash maps; room for a key to be safe.
    let mut position = [FlowCountKey::default(); 2];
    let mut counts = Vec::new();
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                std::ptr::from_ref(&position[0]) as u64
            },
            out_batch: std::ptr::from_mut(&mut position[1]) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: BATCH_KEYS as u32,
            map_fd: fd,
            ..BatchAttr::default()
        };
        let result = bpf_batch(BPF_MAP_LOOKUP_BATCH, &mut attr);
        // ENOENT: the last batch (its `count` keys are valid); any other error fails.
        let done = match result {
            Ok(()) => false,
            Err(error) if error.raw_os_error() == Some(libc::ENOENT) => true,
            Err(error) => return Err(anyhow!("BPF_MAP_LOOKUP_BATCH: {error}")),
        };
        let read = (attr.count as usize).min(BATCH_KEYS);
        let mut stale = Vec::new();
        for (key, value) in keys[..read].iter().zip(&values[..read]) {
            match delete {
                Some(generation) if u32::from(key.generation) != generation => {}
                Some(_) => {
                    stale.push(*key);
                    counts.push((*key, value.count));
                }
                None => counts.push((*key, value.count)),
            }
        }
        if !stale.is_empty() {
            // Keys of buckets the batch has passed: deleting them does not disturb it.
            let mut attr = BatchAttr {
                keys: stale.as_mut_ptr() as u64,
                count: stale.len() as u32,
                map_fd: fd,
                ..BatchAttr::default()
            };
            bpf_batch(BPF_MAP_DELETE_BATCH, &mut attr)
                .map_err(|error| anyhow!("BPF_MAP_DELETE_BATCH: {error}"))?;
        }
        if done {
            return Ok(counts);
        }
        position[0] = position[1];
        first = false;
    }
}
