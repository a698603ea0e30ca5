//! The kernel → userspace transport: the `EVENTS` ring buffer, drained on tokio readiness, the
//! per-CPU `COUNTERS` that account for every event (submitted, lost, filtered), and the
//! per-flow totals of `FLOW_COUNTS`.

use std::os::fd::AsRawFd as _;

use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf,
    maps::{Map, MapData, MapError, PerCpuArray, PerCpuHashMap, RingBuf},
};
use tokio::io::unix::AsyncFd;
use udptrace_common::{
    event::{COUNTER_COUNT, Counter, FlowCount, FlowCountKey},
    names::{COUNTERS_MAP, EVENTS_MAP, FLOW_COUNTS_MAP},
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
/// storm's events are sampled; these counts are not).
pub struct FlowCounts {
    map: PerCpuHashMap<MapData, FlowCountKey, FlowCount>,
}

impl FlowCounts {
    pub fn take(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        Ok(Self {
            map: take(ebpf, FLOW_COUNTS_MAP, "flow counts map")?,
        })
    }

    /// Each key with its count summed over the CPUs.
    pub fn read(&self) -> anyhow::Result<Vec<(FlowCountKey, u64)>> {
        self.map
            .iter()
            .map(|entry| {
                let (key, per_cpu) = entry.context("reading the flow counts")?;
                Ok((key, per_cpu.iter().map(|value| value.count).sum()))
            })
            .collect()
    }
}
