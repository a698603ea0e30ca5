//! The kernel → userspace transport: the `EVENTS` ring buffer, drained on tokio readiness, the
//! per-CPU `COUNTERS` that account for every event (submitted, lost, filtered), and the
//! per-flow drop totals of `DROP_COUNTS`.

use std::os::fd::AsRawFd as _;

use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray, PerCpuHashMap, RingBuf},
};
use tokio::io::unix::AsyncFd;
use udptrace_common::{
    event::{COUNTER_COUNT, Counter, DropCount, DropKey},
    names::{COUNTERS_MAP, DROP_COUNTS_MAP, EVENTS_MAP},
};

/// The ring buffer, registered with tokio.
pub struct EventRing {
    ring: AsyncFd<RingBuf<MapData>>,
}

impl EventRing {
    pub fn take(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        let map = ebpf
            .take_map(EVENTS_MAP)
            .ok_or_else(|| anyhow!("map {EVENTS_MAP} missing from the embedded object"))?;
        let ring = RingBuf::try_from(map).context("opening the events ring buffer")?;
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
        let map = ebpf
            .take_map(COUNTERS_MAP)
            .ok_or_else(|| anyhow!("map {COUNTERS_MAP} missing from the embedded object"))?;
        Ok(Self {
            array: PerCpuArray::try_from(map).context("opening the counters map")?,
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

/// Every drop that passed the filter, per flow and reason, as the kernel counted it (events
/// for a storm's drops are sampled; these counts are not).
pub struct DropCounts {
    map: PerCpuHashMap<MapData, DropKey, DropCount>,
}

impl DropCounts {
    pub fn take(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        let map = ebpf
            .take_map(DROP_COUNTS_MAP)
            .ok_or_else(|| anyhow!("map {DROP_COUNTS_MAP} missing from the embedded object"))?;
        Ok(Self {
            map: PerCpuHashMap::try_from(map).context("opening the drop counts map")?,
        })
    }

    /// Each flow and reason with its drops summed over the CPUs.
    pub fn read(&self) -> anyhow::Result<Vec<(DropKey, u64)>> {
        self.map
            .iter()
            .map(|entry| {
                let (key, per_cpu) = entry.context("reading the drop counts")?;
                Ok((key, per_cpu.iter().map(|value| value.count).sum()))
            })
            .collect()
    }
}
