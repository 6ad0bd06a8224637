//! Per-source request counting in fixed memory: a count-min sketch estimates any key's count,
//! and a space-saving list keeps the heaviest keys by name.
//!
//! # Guarantees
//! Memory is fixed at construction, whatever the number of distinct keys. Estimates never
//! undercount; they overcount by at most `total / width` with high probability. Counting an
//! already tracked key allocates nothing.

use std::{
    collections::HashMap,
    hash::{BuildHasher, Hasher},
};

/// A count-min sketch of `depth` rows of `width` counters.
#[derive(Clone, Debug)]
pub struct CountMin {
    width: usize,
    depth: usize,
    counters: Vec<u32>,
    hasher: foldhash::fast::RandomState,
}

impl CountMin {
    /// `width` is rounded up to a power of two.
    pub fn new(width: usize, depth: usize) -> Self {
        let width = width.max(16).next_power_of_two();
        let depth = depth.clamp(1, 8);
        Self { width, depth, counters: vec![0; width * depth], hasher: foldhash::fast::RandomState::default() }
    }

    fn hash(&self, key: &[u8]) -> u64 {
        let mut h = self.hasher.build_hasher();
        h.write(key);
        h.finish()
    }

    /// Counts one occurrence of `key` and returns its estimated count.
    pub fn add(&mut self, key: &[u8]) -> u32 {
        let h = self.hash(key);
        // Double hashing: row i uses h1 + i·h2, from one 64-bit hash.
        let (h1, h2) = (h as u32 as usize, ((h >> 32) as usize) | 1);
        let mask = self.width - 1;
        let mut estimate = u32::MAX;
        for i in 0..self.depth {
            let idx = i * self.width + (h1.wrapping_add(i.wrapping_mul(h2)) & mask);
            let c = &mut self.counters[idx];
            *c = c.saturating_add(1);
            estimate = estimate.min(*c);
        }
        estimate
    }

    /// The estimated count of `key`.
    pub fn estimate(&self, key: &[u8]) -> u32 {
        let h = self.hash(key);
        let (h1, h2) = (h as u32 as usize, ((h >> 32) as usize) | 1);
        let mask = self.width - 1;
        (0..self.depth)
            .map(|i| self.counters[i * self.width + (h1.wrapping_add(i.wrapping_mul(h2)) & mask)])
            .min()
            .unwrap_or(0)
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
#[derive(Clone, Debug)]
pub struct HeavyHitters {
    capacity: usize,
    keys: Vec<Box<str>>,
    counts: Vec<u64>,
    index: HashMap<Box<str>, usize, foldhash::fast::RandomState>,
    /// A lower bound of the smallest count, so most offers skip the scan for the minimum.
    min_hint: u64,
}

impl HeavyHitters {
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            capacity,
            keys: Vec::with_capacity(capacity),
            counts: Vec::with_capacity(capacity),
            index: HashMap::with_capacity_and_hasher(capacity, foldhash::fast::RandomState::default()),
            min_hint: 0,
        }
    }

    /// Counts one occurrence of `key`.
    pub fn add(&mut self, key: &str) {
        self.offer(key, u64::MAX);
    }

    /// Counts one occurrence of `key`, whose count a sketch estimates at `estimate`. A key not
    /// yet tracked displaces the lightest one only if its estimate is higher: the long tail of
    /// one-off sources then costs a lookup, not an allocation and a scan.
    pub fn offer(&mut self, key: &str, estimate: u64) {
        if let Some(&i) = self.index.get(key) {
            self.counts[i] += 1;
            return;
        }
        if self.keys.len() < self.capacity {
            self.index.insert(key.into(), self.keys.len());
            self.keys.push(key.into());
            self.counts.push(1);
            return;
        }
        // Counts only grow between decays, so the hint stays a lower bound of the minimum.
        if estimate <= self.min_hint {
            return;
        }
        let (i, &min) = self.counts.iter().enumerate().min_by_key(|(_, c)| **c).unwrap_or((0, &0));
        self.min_hint = min;
        if estimate <= min {
            return;
        }
        // Replace the lightest key; the newcomer inherits its count (space-saving).
        let old = std::mem::replace(&mut self.keys[i], key.into());
        self.index.remove(&old);
        self.index.insert(key.into(), i);
        self.counts[i] += 1;
    }

    /// Keys by count, heaviest first.
    pub fn top(&self, n: usize) -> Vec<(&str, u64)> {
        let mut v: Vec<(&str, u64)> = self.keys.iter().map(|k| &**k).zip(self.counts.iter().copied()).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        v.truncate(n);
        v
    }

    /// Forgets every key, keeping the memory for the next interval.
    pub fn clear(&mut self) {
        self.keys.clear();
        self.counts.clear();
        self.index.clear();
        self.min_hint = 0;
    }

    /// Halves every count, like [`CountMin::decay`].
    pub fn decay(&mut self) {
        for c in &mut self.counts {
            *c >>= 1;
        }
        self.min_hint >>= 1;
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
        for i in 0..100_000u32 {
            let key =
                if i % 10 == 0 { "203.0.113.7".to_owned() } else { format!("10.{}.{}.{}", i % 7, i % 251, i % 13) };
            cm.add(key.as_bytes());
            hh.add(&key);
        }
        let est = cm.estimate(b"203.0.113.7");
        assert!((10_000..10_000 + 100_000 / 4096 * 4).contains(&est), "{est}");
        assert_eq!(hh.top(1)[0].0, "203.0.113.7");
    }

    #[test]
    fn memory_is_fixed_whatever_the_number_of_keys() {
        let mut cm = CountMin::new(1 << 16, 4);
        let mut hh = HeavyHitters::new(1024);
        let before = cm.memory_bytes();
        for i in 0..200_000u32 {
            let k = i.to_string();
            cm.add(k.as_bytes());
            hh.add(&k);
        }
        assert_eq!(cm.memory_bytes(), before);
        assert_eq!(hh.keys.len(), 1024);
        assert_eq!(hh.index.len(), 1024);
    }

    #[test]
    fn one_off_sources_do_not_displace_heavy_ones() {
        let mut hh = HeavyHitters::new(2);
        for _ in 0..5 {
            hh.offer("a", 0);
            hh.offer("b", 0);
        }
        for i in 0..1000 {
            hh.offer(&format!("once-{i}"), 1);
        }
        let top: Vec<&str> = hh.top(2).into_iter().map(|(k, _)| k).collect();
        assert_eq!(top, vec!["a", "b"]);
        hh.offer("rising", 9);
        assert_eq!(hh.top(1)[0].0, "rising", "a key the sketch counts higher gets in");
    }

    #[test]
    fn decay_halves() {
        let mut cm = CountMin::new(64, 2);
        for _ in 0..10 {
            cm.add(b"k");
        }
        cm.decay();
        assert_eq!(cm.estimate(b"k"), 5);
    }

    proptest! {
        #[test]
        fn never_undercounts(keys in prop::collection::vec(0u16..500, 1..2000)) {
            let mut cm = CountMin::new(64, 3);
            let mut truth: HashMap<u16, u32> = HashMap::new();
            for k in &keys {
                cm.add(&k.to_le_bytes());
                *truth.entry(*k).or_default() += 1;
            }
            for (k, n) in truth {
                prop_assert!(cm.estimate(&k.to_le_bytes()) >= n);
            }
        }
    }
}
