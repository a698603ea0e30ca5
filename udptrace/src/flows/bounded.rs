//! A hash map with a capacity that evicts its least recently active entries: what keeps
//! per-flow state bounded when anyone who can send UDP to the traced host can make up flows.
//!
//! Eviction works in batches: a map at capacity about to take a new key gives up the eighth
//! of its entries that were least recently touched, found with a selection (linear) instead of
//! an ordered structure beside the map (which would store every key twice). Each insert thus
//! costs amortised O(1), and an entry costs its key, its value and one `u64`.

use std::{collections::HashMap, hash::Hash};

pub struct Bounded<K, V> {
    map: HashMap<K, Entry<V>>,
    capacity: usize,
    /// Bumped by every touch: an entry's `last` orders entries by recency.
    clock: u64,
}

struct Entry<V> {
    last: u64,
    value: V,
}

impl<K: Hash + Eq + Clone, V> Bounded<K, V> {
    /// A map holding at most `capacity` entries (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            map: HashMap::new(),
            capacity: capacity.max(1),
            clock: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The value of `key`, without counting as activity.
    pub fn get(&self, key: &K) -> Option<&V> {
        self.map.get(key).map(|entry| &entry.value)
    }

    /// The value of `key`, marked as just active.
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.clock += 1;
        let clock = self.clock;
        self.map.get_mut(key).map(|entry| {
            entry.last = clock;
            &mut entry.value
        })
    }

    /// The value of `key`, made with `make` if absent, marked as just active. Making room
    /// first hands the evicted entries to `evicted`.
    pub fn get_or_insert_with(
        &mut self,
        key: K,
        make: impl FnOnce() -> V,
        evicted: impl FnMut(K, V),
    ) -> &mut V {
        self.make_room(&key, evicted);
        self.clock += 1;
        let clock = self.clock;
        let entry = self.map.entry(key).or_insert_with(|| Entry {
            last: clock,
            value: make(),
        });
        entry.last = clock;
        &mut entry.value
    }

    /// Inserts or replaces `key`'s value (marked as just active); evicted entries are dropped.
    pub fn insert(&mut self, key: K, value: V) {
        self.make_room(&key, |_, _| {});
        self.clock += 1;
        self.map.insert(
            key,
            Entry {
                last: self.clock,
                value,
            },
        );
    }

    /// Takes `key`'s value out.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        self.map.remove(key).map(|entry| entry.value)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.map.iter().map(|(key, entry)| (key, &entry.value))
    }

    /// Evicts when the map is full and `key` would be a new entry.
    fn make_room(&mut self, key: &K, evicted: impl FnMut(K, V)) {
        if self.map.len() >= self.capacity && !self.map.contains_key(key) {
            self.evict(evicted);
        }
    }

    /// Removes the least recently active eighth of the entries (at least one).
    fn evict(&mut self, mut evicted: impl FnMut(K, V)) {
        let count = (self.capacity / 8).max(1).min(self.map.len());
        let mut ages: Vec<(u64, &K)> = self
            .map
            .iter()
            .map(|(key, entry)| (entry.last, key))
            .collect();
        ages.select_nth_unstable_by_key(count - 1, |(last, _)| *last);
        let oldest: Vec<K> = ages[..count]
            .iter()
            .map(|(_, key)| (*key).clone())
            .collect();
        for key in oldest {
            if let Some(entry) = self.map.remove(&key) {
                evicted(key, entry.value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_the_least_recently_active() {
        let mut map = Bounded::new(8);
        for key in 0..8 {
            map.insert(key, key * 10);
        }
        // 0 is the oldest insert but was just used: 1 goes first.
        assert_eq!(map.get_mut(&0), Some(&mut 0));
        let mut evicted = Vec::new();
        *map.get_or_insert_with(8, || 0, |key, value| evicted.push((key, value))) += 80;
        assert_eq!(evicted, [(1, 10)]);
        assert_eq!(map.len(), 8);
        assert_eq!(map.get(&8), Some(&80));
        // An existing key never evicts.
        map.get_or_insert_with(0, || 0, |_, _| panic!("nothing to evict"));
        assert_eq!(map.len(), 8);
    }

    #[test]
    fn stays_within_capacity_and_evicts_in_batches() {
        let mut map = Bounded::new(1_000);
        let mut evicted = 0;
        for key in 0..10_000u32 {
            map.get_or_insert_with(key, || (), |_, ()| evicted += 1);
            assert!(map.len() <= 1_000);
        }
        assert_eq!(evicted + map.len(), 10_000);
        // The most recent keys survive.
        assert!(map.get(&9_999).is_some());
        assert!(map.get(&0).is_none());
        // Batches of an eighth: the map never fell below seven eighths once full.
        assert!(map.len() >= 875, "{}", map.len());
    }
}
