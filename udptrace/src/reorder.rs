//! Decoded events back in kernel-time order before the rules see them.
//!
//! The ring buffer hands records over in the order they were reserved, but every hook reads
//! the clock (`bpf_ktime_get_ns`) before it reserves (udptrace-ebpf/src/emit.rs `submit`).
//! Two CPUs can therefore reserve in the opposite order of their timestamps: a CPU that
//! takes an interrupt, or a virtual CPU that its host deschedules (QEMU's emulation does so
//! for milliseconds), between the two steps lets another CPU's later event in first. The
//! verdict rules read causes before effects (the reply's first hop before the client's drop
//! of it); fed in ring order they would, now and then, explain the same drop twice. So events
//! wait here until no earlier one can still arrive: an event is released once the kernel
//! clock has passed its timestamp by [`REORDER_WINDOW`], and released events come out sorted
//! by timestamp (ties in arrival order).

use std::{
    cmp::{Ordering, Reverse},
    collections::BinaryHeap,
    time::Duration,
};

/// How long an event waits for earlier ones that a slower CPU has yet to write. Far above the
/// microseconds between a hook's clock read and its ring write on a healthy host, and above
/// the few milliseconds an emulated CPU can stall between them.
pub const REORDER_WINDOW: Duration = Duration::from_millis(100);

/// Events held at most; past this, the oldest go out early (the window only costs memory in a
/// storm, where the kernel already samples: at most a few thousand events a second per flow).
const MAX_HELD: usize = 65_536;

/// Events waiting for their turn, keyed by kernel time.
pub struct Reorder<T> {
    held: BinaryHeap<Reverse<Held<T>>>,
    arrivals: u64,
}

struct Held<T> {
    ts_ns: u64,
    arrival: u64,
    item: T,
}

impl<T> Ord for Held<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.ts_ns, self.arrival).cmp(&(other.ts_ns, other.arrival))
    }
}

impl<T> PartialOrd for Held<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> PartialEq for Held<T> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl<T> Eq for Held<T> {}

impl<T> Default for Reorder<T> {
    fn default() -> Self {
        Self {
            held: BinaryHeap::new(),
            arrivals: 0,
        }
    }
}

impl<T> Reorder<T> {
    /// Holds `item`, which happened at kernel time `ts_ns`.
    pub fn push(&mut self, ts_ns: u64, item: T) {
        self.held.push(Reverse(Held {
            ts_ns,
            arrival: self.arrivals,
            item,
        }));
        self.arrivals += 1;
    }

    /// Takes out, oldest first, every event that happened at or before `now_ns` minus the
    /// window (`now_ns` on the kernel's clock, CLOCK_MONOTONIC), and the oldest beyond
    /// [`MAX_HELD`].
    pub fn release(&mut self, now_ns: u64) -> Vec<T> {
        self.release_until(now_ns.saturating_sub(REORDER_WINDOW.as_nanos() as u64))
    }

    /// Takes out every event, oldest first: the run is over, nothing earlier can come.
    pub fn release_all(&mut self) -> Vec<T> {
        self.release_until(u64::MAX)
    }

    fn release_until(&mut self, watermark_ns: u64) -> Vec<T> {
        let mut released = Vec::new();
        while let Some(Reverse(oldest)) = self.held.peek() {
            if oldest.ts_ns > watermark_ns && self.held.len() <= MAX_HELD {
                break;
            }
            if let Some(Reverse(held)) = self.held.pop() {
                released.push(held.item);
            }
        }
        released
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: u64 = REORDER_WINDOW.as_nanos() as u64;

    #[test]
    fn holds_events_for_the_window_then_sorts_them() {
        let mut reorder = Reorder::default();
        reorder.push(2_000, "second");
        reorder.push(1_000, "first");
        reorder.push(5_000, "late");
        assert!(
            reorder.release(1_000 + WINDOW - 1).is_empty(),
            "an earlier event may still come"
        );
        assert_eq!(reorder.release(2_000 + WINDOW), ["first", "second"]);
        assert_eq!(reorder.release_all(), ["late"]);
        assert!(reorder.release_all().is_empty());
    }

    #[test]
    fn equal_times_keep_their_arrival_order() {
        let mut reorder = Reorder::default();
        for name in ["a", "b", "c"] {
            reorder.push(7, name);
        }
        assert_eq!(reorder.release_all(), ["a", "b", "c"]);
    }

    #[test]
    fn a_flood_goes_out_early_instead_of_growing_without_bound() {
        let mut reorder = Reorder::default();
        for ts in 0..(MAX_HELD as u64 + 10) {
            reorder.push(u64::MAX - ts, ts);
        }
        let released = reorder.release(0);
        assert_eq!(released.len(), 10);
        assert!(
            released.windows(2).all(|pair| pair[0] > pair[1]),
            "the oldest (largest arrival number here) first"
        );
    }
}
