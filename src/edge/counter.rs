//! Per-interval traffic counting at the edge, in memory fixed at start-up: a count-min sketch
//! and a heavy-hitter list per dimension, plus a two-generation Bloom filter that tells new
//! client IPs from returning ones.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    hash::{BuildHasher, Hasher},
};

use super::{
    report::Dimension,
    sketch::{CountMin, HeavyHitters},
    source::Source,
};

/// Sizes of the counting structures.
#[derive(Clone, Copy, Debug)]
pub struct CounterConfig {
    /// Keys kept by name per dimension and interval.
    pub top_keys: usize,
    /// Counters per sketch row.
    pub sketch_width: usize,
    /// Bits per Bloom generation (a power of two).
    pub seen_bits: usize,
    /// Intervals per Bloom generation: a source is "new" if not seen in the last one or two.
    pub seen_generation_intervals: u32,
}

impl Default for CounterConfig {
    fn default() -> Self {
        // 2 × 8 MiB of Bloom bits keeps the false "seen" rate near 5% at ten million sources
        // a generation; the sketch is 1 MiB.
        Self { top_keys: 1024, sketch_width: 1 << 16, seen_bits: 1 << 26, seen_generation_intervals: 300 }
    }
}

/// Remembers which keys were seen recently, in fixed memory. May say "seen" of a key that was
/// not (a false positive), never the opposite within a generation.
#[derive(Clone, Debug)]
pub struct SeenFilter {
    current: Vec<u64>,
    previous: Vec<u64>,
    mask: u64,
}

const SEEN_HASHES: u32 = 3;

impl SeenFilter {
    pub fn new(bits: usize) -> Self {
        let bits = bits.max(64).next_power_of_two();
        Self { current: vec![0; bits / 64], previous: vec![0; bits / 64], mask: bits as u64 - 1 }
    }

    /// Records `hash` and says whether it had been seen in this or the previous generation.
    pub fn check_and_insert(&mut self, hash: u64) -> bool {
        let (h1, h2) = (hash, hash.rotate_left(32) | 1);
        let mut in_current = true;
        let mut in_previous = true;
        for i in 0..u64::from(SEEN_HASHES) {
            let bit = h1.wrapping_add(i.wrapping_mul(h2)) & self.mask;
            let (word, m) = ((bit / 64) as usize, 1u64 << (bit % 64));
            in_current &= self.current[word] & m != 0;
            in_previous &= self.previous[word] & m != 0;
            self.current[word] |= m;
        }
        in_current || in_previous
    }

    /// Starts a new generation; the oldest is forgotten.
    pub fn rotate(&mut self) {
        std::mem::swap(&mut self.current, &mut self.previous);
        self.current.fill(0);
    }

    pub fn memory_bytes(&self) -> usize {
        (self.current.len() + self.previous.len()) * 8
    }
}

/// A key rendered into a stack buffer, so counting a request allocates nothing.
struct KeyBuf {
    buf: [u8; 64],
    len: usize,
}

impl KeyBuf {
    fn new() -> Self {
        Self { buf: [0; 64], len: 0 }
    }

    fn as_str(&self) -> &str {
        // Only whole `&str`s are ever written, and a write that does not fit is refused whole.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl std::fmt::Write for KeyBuf {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        if end > self.buf.len() {
            return Err(std::fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

struct DimensionCounter {
    dimension: Dimension,
    sketch: CountMin,
    top: HeavyHitters,
}

impl DimensionCounter {
    fn count(&mut self, key: &str) {
        let estimate = self.sketch.add(key.as_bytes());
        self.top.offer(key, u64::from(estimate));
    }
}

/// Counts of one interval.
pub struct TrafficCounter {
    dims: Vec<DimensionCounter>,
    seen: SeenFilter,
    hasher: foldhash::fast::FixedState,
    intervals: u32,
    generation_intervals: u32,
    top_keys: usize,
    requests: u64,
    new_source_requests: u64,
    classes: BTreeMap<String, u64>,
}

/// The counts taken at the end of an interval.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counts {
    pub requests: u64,
    pub new_source_requests: u64,
    pub top: BTreeMap<Dimension, Vec<(String, u64)>>,
    pub classes: BTreeMap<String, u64>,
}

impl TrafficCounter {
    /// Counts the given dimensions (ApiKey only for requests that carry one).
    pub fn new(cfg: CounterConfig, dimensions: &[Dimension]) -> Self {
        let mut dims: Vec<Dimension> = dimensions.to_vec();
        dims.sort();
        dims.dedup();
        Self {
            dims: dims
                .into_iter()
                .map(|dimension| DimensionCounter {
                    dimension,
                    // Aggregates have far fewer keys than IPs; a narrower sketch serves them.
                    sketch: CountMin::new(
                        if dimension == Dimension::Ip { cfg.sketch_width } else { cfg.sketch_width / 8 },
                        4,
                    ),
                    top: HeavyHitters::new(cfg.top_keys),
                })
                .collect(),
            seen: SeenFilter::new(cfg.seen_bits),
            hasher: foldhash::fast::FixedState::with_seed(0x6c65_7665_6520_6564),
            intervals: 0,
            generation_intervals: cfg.seen_generation_intervals.max(1),
            top_keys: cfg.top_keys,
            requests: 0,
            new_source_requests: 0,
            classes: BTreeMap::new(),
        }
    }

    /// Counts one request.
    pub fn count(&mut self, src: &Source, class: Option<&str>) {
        self.requests += 1;
        let ip_hash = {
            let mut h = self.hasher.build_hasher();
            match src.ip {
                std::net::IpAddr::V4(v4) => h.write_u32(u32::from(v4)),
                std::net::IpAddr::V6(v6) => h.write_u128(u128::from(v6)),
            }
            h.finish()
        };
        if !self.seen.check_and_insert(ip_hash) {
            self.new_source_requests += 1;
        }
        if let Some(c) = class {
            // Classes are a short configured list: a lookup, and an allocation only the first
            // time a class is seen in an interval.
            match self.classes.get_mut(c) {
                Some(n) => *n += 1,
                None => {
                    self.classes.insert(c.to_owned(), 1);
                }
            }
        }
        for d in &mut self.dims {
            let mut key = KeyBuf::new();
            let written = match d.dimension {
                Dimension::Ip => write!(key, "{}", src.ip).is_ok(),
                Dimension::Prefix => write!(key, "{}", src.prefix).is_ok(),
                Dimension::Asn => src.asn.is_some_and(|a| write!(key, "{a}").is_ok()),
                Dimension::Country => src.country.is_some_and(|c| key.write_str(c.as_str()).is_ok()),
                Dimension::ApiKey => {
                    // Keys longer than the buffer are counted by a prefix; they still add up.
                    src.api_key.as_deref().is_some_and(|k| key.write_str(truncate(k, 64)).is_ok())
                }
            };
            if written {
                d.count(key.as_str());
            }
        }
    }

    /// Returns the interval's counts and starts the next interval.
    pub fn take(&mut self) -> Counts {
        let mut top = BTreeMap::new();
        for d in &mut self.dims {
            let keys: Vec<(String, u64)> =
                d.top.top(self.top_keys).into_iter().map(|(k, n)| (k.to_owned(), n)).collect();
            top.insert(d.dimension, keys);
            d.top.clear();
            d.sketch.clear();
        }
        self.intervals += 1;
        if self.intervals.is_multiple_of(self.generation_intervals) {
            self.seen.rotate();
        }
        Counts {
            requests: std::mem::take(&mut self.requests),
            new_source_requests: std::mem::take(&mut self.new_source_requests),
            top,
            classes: std::mem::take(&mut self.classes),
        }
    }

    /// Bytes held by the counting structures (not the keys' strings, bounded by `top_keys`).
    pub fn memory_bytes(&self) -> usize {
        self.seen.memory_bytes() + self.dims.iter().map(|d| d.sketch.memory_bytes()).sum::<usize>()
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::source::{Country, prefix_of};

    fn src(ip: &str, asn: u32) -> Source {
        let ip = ip.parse().unwrap();
        Source { ip, prefix: prefix_of(ip), asn: Some(asn), country: Country::parse("DE"), api_key: None }
    }

    fn small() -> CounterConfig {
        CounterConfig { top_keys: 16, sketch_width: 1024, seen_bits: 1 << 16, seen_generation_intervals: 2 }
    }

    #[test]
    fn counts_every_dimension_and_resets_each_interval() {
        let all = [Dimension::Ip, Dimension::Prefix, Dimension::Asn, Dimension::Country, Dimension::ApiKey];
        let mut c = TrafficCounter::new(small(), &all);
        for i in 0..100 {
            c.count(&src(&format!("198.51.100.{}", i % 4), 64500), Some("batch"));
        }
        for _ in 0..50 {
            c.count(&src("203.0.113.9", 64501), None);
        }
        let counts = c.take();
        assert_eq!(counts.requests, 150);
        assert_eq!(counts.new_source_requests, 5, "five distinct IPs, each new once");
        assert_eq!(counts.top[&Dimension::Ip][0], ("203.0.113.9".to_owned(), 50));
        assert_eq!(counts.top[&Dimension::Prefix][0], ("198.51.100.0/24".to_owned(), 100));
        assert_eq!(counts.top[&Dimension::Asn], vec![("64500".to_owned(), 100), ("64501".to_owned(), 50)]);
        assert_eq!(counts.top[&Dimension::Country], vec![("DE".to_owned(), 150)]);
        assert!(counts.top[&Dimension::ApiKey].is_empty());
        assert_eq!(counts.classes["batch"], 100);

        let next = c.take();
        assert_eq!(next.requests, 0);
        assert!(next.top[&Dimension::Ip].is_empty());
    }

    #[test]
    fn sources_stay_known_for_one_to_two_generations() {
        let mut c = TrafficCounter::new(small(), &[Dimension::Ip]);
        c.count(&src("192.0.2.1", 1), None);
        c.take();
        c.count(&src("192.0.2.1", 1), None);
        assert_eq!(c.take().new_source_requests, 0, "seen last interval");
        // Two rotations with no sign of it: forgotten.
        for _ in 0..4 {
            c.take();
        }
        c.count(&src("192.0.2.1", 1), None);
        assert_eq!(c.take().new_source_requests, 1);
    }

    #[test]
    fn memory_is_fixed_however_many_sources() {
        let mut c = TrafficCounter::new(small(), &[Dimension::Ip, Dimension::Prefix]);
        let before = c.memory_bytes();
        for i in 0..100_000u32 {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            c.count(&src(&ip.to_string(), 1), None);
        }
        assert_eq!(c.memory_bytes(), before);
        assert_eq!(c.take().top[&Dimension::Ip].len(), 16);
    }

    #[test]
    fn long_api_keys_are_cut_on_a_character_boundary() {
        let key = "é".repeat(40); // 80 bytes
        assert_eq!(truncate(&key, 64).len(), 64);
        assert_eq!(truncate(&key, 63).len(), 62);
        let mut c = TrafficCounter::new(small(), &[Dimension::ApiKey]);
        c.count(&Source { api_key: Some(key), ..src("192.0.2.1", 1) }, None);
        assert_eq!(c.take().top[&Dimension::ApiKey][0].1, 1);
    }
}
