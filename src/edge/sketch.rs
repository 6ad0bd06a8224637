//! Per-source request counting in fixed memory: a count-min sketch estimates any key's count,
//! and a space-saving list keeps the heaviest keys.
//!
//! Keys are 128-bit integers (an address, a network, an ASN, a hash), so counting a request
//! formats and allocates nothing; names are made only when a report is written.
//!
//! # Guarantees
//! Memory is fixed at construction, whatever the number of distinct keys. Sketch estimates
//! never undercount; a row overcounts by `total / width` on average (rows share a cache line,
//! so the bound is looser than an unblocked sketch's `total / width` with high probability). The
//! heavy-hitter list does one lookup for a tracked key, and O(log capacity) work only when a
//! newcomer may displace one.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap},
    hash::BuildHasher,
};

/// Hashes a key for the sketch and the filters (fast, fixed seed: the hash never leaves the
/// process).
pub fn hash_key(key: u128) -> u64 {
    foldhash::fast::FixedState::with_seed(0x6c65_7665_6520_6564).hash_one(key)
}

/// Counters per block: one 64-byte cache line.
const BLOCK: usize = 16;

/// A count-min sketch of `depth` rows of `width` counters, blocked: a key's counters in every
/// row lie in one cache line (each row owns a slice of the line), so counting it costs one
/// cache miss, not one per row. Rows in a shared line are less independent than rows spread
/// over the whole array, which the list it gates can afford: it only decides who gets in.
#[derive(Clone, Debug)]
pub struct CountMin {
    depth: usize,
    /// Counters each row owns in a block.
    per_row: usize,
    block_mask: usize,
    counters: Vec<u32>,
}

impl CountMin {
    /// `width` is rounded up to a power of two, `depth` to 1–8.
    pub fn new(width: usize, depth: usize) -> Self {
        let depth = depth.clamp(1, 8);
        let total = (width.max(BLOCK).next_power_of_two() * depth).next_power_of_two();
        let per_row = BLOCK / depth.next_power_of_two();
        Self { depth, per_row, block_mask: total / BLOCK - 1, counters: vec![0; total] }
    }

    fn slots(&self, h: u64) -> impl Iterator<Item = usize> + use<> {
        // The block from the low bits, each row's slot in it from four bits of the high half.
        let base = (h as usize & self.block_mask) * BLOCK;
        let (per_row, high) = (self.per_row, h >> 32);
        (0..self.depth).map(move |i| base + i * per_row + ((high >> (4 * i)) as usize & (per_row - 1)))
    }

    /// Counts one occurrence of the key hashed to `h` and returns its estimated count.
    pub fn add(&mut self, h: u64) -> u32 {
        self.add_weighted(h, 1)
    }

    /// Counts `weight` occurrences of the key hashed to `h` (one sampled occurrence standing
    /// for `weight`) and returns its estimated count.
    pub fn add_weighted(&mut self, h: u64, weight: u32) -> u32 {
        let mut estimate = u32::MAX;
        for idx in self.slots(h) {
            let c = &mut self.counters[idx];
            *c = c.saturating_add(weight);
            estimate = estimate.min(*c);
        }
        estimate
    }

    /// The estimated count of the key hashed to `h`.
    pub fn estimate(&self, h: u64) -> u32 {
        self.slots(h).map(|i| self.counters[i]).min().unwrap_or(0)
    }

    /// Halves every counter: old traffic fades, so counts follow the recent rate.
    pub fn decay(&mut self) {
        for c in &mut self.counters {
            *c >>= 1;
        }
    }

    /// Forgets everything counted.
    pub fn clear(&mut self) {
        self.counters.fill(0);
    }

    /// Bytes of counters held.
    pub fn memory_bytes(&self) -> usize {
        self.counters.len() * std::mem::size_of::<u32>()
    }
}

/// The heaviest keys (space-saving): at most `capacity` keys, each with a count that
/// overestimates its true count by at most the count it inherited.
///
/// Counts live in a map, so counting a tracked key is one lookup. The lightest key is found
/// through a lazy min-heap holding one entry per key whose count is a lower bound of the
/// key's (it is not updated when the key is counted): an entry is refreshed only when it
/// reaches the top, so the heap is touched only when a newcomer may displace someone.
#[derive(Clone, Debug)]
pub struct HeavyHitters {
    capacity: usize,
    counts: HashMap<u128, u64, foldhash::fast::FixedState>,
    heap: BinaryHeap<Reverse<(u64, u128)>>,
    /// How many tracked keys hash to each slot (saturating; a full slot is never decremented):
    /// zero says a key is certainly not tracked. Most keys a busy edge sees are not, and this
    /// array is small enough to stay in the core's cache where the map is not, so the common
    /// answer costs no cache miss.
    present: Vec<u8>,
}

impl HeavyHitters {
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            capacity,
            // Room for twice the keys: displacing leaves tombstones, and with this much room
            // the map cleans them up in place instead of growing.
            counts: HashMap::with_capacity_and_hasher(2 * capacity, foldhash::fast::FixedState::with_seed(7)),
            heap: BinaryHeap::with_capacity(capacity),
            // Eight slots a key: a key not tracked finds its slot empty seven times in eight.
            present: vec![0; (8 * capacity).next_power_of_two()],
        }
    }

    /// The slot of `key` in `present`.
    fn slot(&self, key: u128) -> usize {
        self.slot_of(hash_key(key))
    }

    /// The slot in `present` of the key [`hash_key`] hashes to `h`.
    fn slot_of(&self, h: u64) -> usize {
        // From the sketch's hash (the map hashes with a seed of its own), above the bits that
        // pick the sketch's block, so that keys crowding one sketch block do not also crowd
        // one slot.
        (h >> 40) as usize & (self.present.len() - 1)
    }

    fn insert(&mut self, key: u128, count: u64) {
        let slot = self.slot(key);
        self.present[slot] = self.present[slot].saturating_add(1);
        self.counts.insert(key, count);
    }

    fn remove(&mut self, key: u128) {
        let slot = self.slot(key);
        if self.present[slot] != u8::MAX {
            self.present[slot] -= 1;
        }
        self.counts.remove(&key);
    }

    /// Counts one occurrence of `key`.
    pub fn add(&mut self, key: u128) -> Option<u128> {
        self.offer(key, u64::MAX)
    }

    /// Counts one occurrence of `key` if it is tracked; false if it is not.
    pub fn increment(&mut self, key: u128) -> bool {
        self.increment_hashed(key, hash_key(key))
    }

    /// [`HeavyHitters::increment`] for a key whose [`hash_key`] the caller has already made.
    pub fn increment_hashed(&mut self, key: u128, h: u64) -> bool {
        self.present[self.slot_of(h)] != 0 && self.counts.get_mut(&key).map(|c| *c += 1).is_some()
    }

    /// Counts one occurrence of `key`, whose count a sketch estimates at `estimate`. A key not
    /// yet tracked displaces the lightest one only if its estimate is higher, so the long tail
    /// of one-off sources costs a lookup and a comparison. Returns the key it displaced, if any.
    pub fn offer(&mut self, key: u128, estimate: u64) -> Option<u128> {
        if self.increment(key) {
            return None;
        }
        self.admit(key, estimate)
    }

    /// [`HeavyHitters::offer`] for a key the caller has just found untracked with
    /// [`HeavyHitters::increment`]: one map lookup fewer.
    pub fn admit(&mut self, key: u128, estimate: u64) -> Option<u128> {
        if self.counts.len() < self.capacity {
            self.insert(key, 1);
            self.heap.push(Reverse((1, key)));
            return None;
        }
        // The top is a lower bound of the lightest count: at or below it, no need to look.
        if self.heap.peek().is_none_or(|Reverse((bound, _))| estimate <= *bound) {
            return None;
        }
        let min = self.lightest();
        if estimate <= min {
            return None;
        }
        // Replace the lightest key, at the top after `lightest`; the newcomer inherits its
        // count (space-saving). In place: one sift down instead of a pop and a push.
        let mut top = self.heap.peek_mut()?;
        let Reverse((_, old)) = std::mem::replace(&mut *top, Reverse((min + 1, key)));
        drop(top);
        self.remove(old);
        self.insert(key, min + 1);
        Some(old)
    }

    /// The lightest tracked count, with its entry at the top of the heap, refreshing stale
    /// entries on the way.
    fn lightest(&mut self) -> u64 {
        while let Some(mut top) = self.heap.peek_mut() {
            let Reverse((bound, key)) = *top;
            let count = self.counts.get(&key).copied().unwrap_or(bound);
            if count == bound {
                return count;
            }
            *top = Reverse((count, key));
        }
        0
    }

    /// Keys by count, heaviest first.
    pub fn top(&self, n: usize) -> Vec<(u128, u64)> {
        let mut v: Vec<(u128, u64)> = self.counts.iter().map(|(&k, &c)| (k, c)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v.truncate(n);
        v
    }

    pub fn contains(&self, key: u128) -> bool {
        self.counts.contains_key(&key)
    }

    /// Bytes held by the map and the heap (their capacity, not their length).
    pub fn memory_bytes(&self) -> usize {
        self.heap.capacity() * std::mem::size_of::<(u64, u128)>()
            + self.counts.capacity() * (std::mem::size_of::<(u128, u64)>() + 1)
            + self.present.len()
    }

    pub fn len(&self) -> usize {
        self.counts.len()
    }

    /// Whether a newcomer must displace someone to get in.
    pub fn is_full(&self) -> bool {
        self.counts.len() >= self.capacity
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// Forgets every key, keeping the memory for the next interval.
    pub fn clear(&mut self) {
        self.heap.clear();
        self.counts.clear();
        self.present.fill(0);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn heavy_source_stands_out_among_many() {
        let mut cm = CountMin::new(4096, 4);
        let mut hh = HeavyHitters::new(64);
        for i in 0..100_000u128 {
            let key = if i % 10 == 0 { 7 } else { 1000 + (i % 7) * 10_000 + (i % 251) * 100 + i % 13 };
            let e = cm.add(hash_key(key));
            hh.offer(key, u64::from(e));
        }
        let est = cm.estimate(hash_key(7));
        assert!((10_000..10_000 + 100_000 / 4096 * 4).contains(&est), "{est}");
        assert_eq!(hh.top(1)[0].0, 7);
    }

    #[test]
    fn memory_is_fixed_whatever_the_number_of_keys() {
        let mut cm = CountMin::new(1 << 16, 4);
        let mut hh = HeavyHitters::new(1024);
        let before = cm.memory_bytes();
        for i in 0..200_000u128 {
            cm.add(hash_key(i));
            hh.add(i);
        }
        assert_eq!(cm.memory_bytes(), before);
        assert_eq!(hh.len(), 1024);
        assert_eq!(hh.heap.len(), 1024);
    }

    #[test]
    fn one_off_sources_do_not_displace_heavy_ones() {
        let mut hh = HeavyHitters::new(2);
        for _ in 0..5 {
            hh.offer(1, 0);
            hh.offer(2, 0);
        }
        for i in 0..1000 {
            assert_eq!(hh.offer(100 + i, 1), None);
        }
        let top: Vec<u128> = hh.top(2).into_iter().map(|(k, _)| k).collect();
        assert_eq!(top, vec![1, 2]);
        assert!(hh.offer(99, 9).is_some(), "a key the sketch counts higher gets in");
        assert_eq!(hh.top(1)[0].0, 99);
    }

    #[test]
    fn decay_halves() {
        let mut cm = CountMin::new(64, 2);
        for _ in 0..10 {
            cm.add(hash_key(1));
        }
        cm.decay();
        assert_eq!(cm.estimate(hash_key(1)), 5);
    }

    proptest! {
        #[test]
        fn never_undercounts(keys in prop::collection::vec(0u16..500, 1..2000)) {
            let mut cm = CountMin::new(64, 3);
            let mut truth: HashMap<u16, u32> = HashMap::new();
            for k in &keys {
                cm.add(hash_key(u128::from(*k)));
                *truth.entry(*k).or_default() += 1;
            }
            for (k, n) in truth {
                prop_assert!(cm.estimate(hash_key(u128::from(k))) >= n);
            }
        }

        /// Displacement by estimate, as the counter does it: the presence slots never deny a
        /// tracked key, so every count reaches it, and they forget every displaced one.
        #[test]
        fn presence_slots_follow_displacement(
            offers in prop::collection::vec((0u16..3000, 1u64..40), 1..3000),
            cap in 1usize..40,
        ) {
            let mut hh = HeavyHitters::new(cap);
            for (k, estimate) in offers {
                hh.offer(u128::from(k), estimate);
                for &key in hh.counts.keys() {
                    prop_assert!(hh.present[hh.slot(key)] > 0, "tracked key {} denied", key);
                }
                prop_assert_eq!(hh.present.iter().map(|&n| usize::from(n)).sum::<usize>(), hh.counts.len());
            }
        }

        /// With room for every key, the list counts exactly; the heap and index agree.
        #[test]
        fn exact_with_room_and_consistent(keys in prop::collection::vec(0u8..40, 1..500), cap in 1usize..60) {
            let mut hh = HeavyHitters::new(cap);
            let mut truth: HashMap<u128, u64> = HashMap::new();
            for k in &keys {
                hh.add(u128::from(*k));
                *truth.entry(u128::from(*k)).or_default() += 1;
            }
            // One heap entry per tracked key, each a lower bound of its count.
            prop_assert_eq!(hh.heap.len(), hh.counts.len());
            let mut keys: Vec<u128> = hh.heap.iter().map(|Reverse((_, k))| *k).collect();
            keys.sort_unstable();
            keys.dedup();
            prop_assert_eq!(keys.len(), hh.counts.len());
            // The presence slots count the tracked keys (nothing saturates at this size).
            prop_assert_eq!(hh.present.iter().map(|&n| usize::from(n)).sum::<usize>(), hh.counts.len());
            for Reverse((bound, k)) in hh.heap.iter() {
                prop_assert!(*bound <= hh.counts[k]);
            }
            if truth.len() <= cap {
                for (k, n) in hh.top(cap) {
                    prop_assert_eq!(truth[&k], n);
                }
            }
            // Space-saving: the true heaviest key is always held when it exceeds total/cap.
            let total: u64 = truth.values().sum();
            let (&heaviest, &n) = truth.iter().max_by_key(|(k, n)| (**n, std::cmp::Reverse(**k))).unwrap();
            if n > total / cap as u64 {
                prop_assert!(hh.contains(heaviest));
            }
        }
    }
}
