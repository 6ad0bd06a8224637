//! Per-interval traffic counting at the edge, in memory fixed at start-up: a count-min sketch
//! and a heavy-hitter list per dimension, plus a two-generation Bloom filter that tells new
//! client IPs from returning ones.

use std::{
    collections::{BTreeMap, HashMap},
    hash::BuildHasher,
    net::IpAddr,
};

use super::{
    report::Dimension,
    sketch::{CountMin, HeavyHitters, hash_key},
    source::{Source, ip_key},
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
    /// One source in this many (by hash, a power of two) is looked up in the Bloom filter,
    /// and the new-source count is scaled up by it.
    pub seen_sample: u32,
}

impl Default for CounterConfig {
    fn default() -> Self {
        // The filter is the counter's one structure too big for a core's cache: a lookup is a
        // miss to L3 or memory, which alone cost more than all other guard work together.
        // Sampling one source in eight (always the same ones) leaves 7 of 8 requests without
        // it, and the estimate of the new-source ratio unbiased: with the thousands of sources
        // a distributed surge brings, its error is a few percent. 2 × 1 MiB of bits then keep
        // the false "seen" rate near 5% at ten million sources a generation; the sketch is
        // 1 MiB.
        Self {
            top_keys: 1024,
            sketch_width: 1 << 16,
            seen_bits: 1 << 23,
            seen_generation_intervals: 300,
            seen_sample: 8,
        }
    }
}

/// Remembers which keys were seen recently, in fixed memory. May say "seen" of a key that was
/// not (a false positive), never the opposite within a generation.
#[derive(Clone, Debug)]
pub struct SeenFilter {
    /// Each word of the two generations side by side: a lookup reads both from one cache line,
    /// one miss instead of two.
    words: Vec<[u64; 2]>,
    /// Which of each pair is the current generation.
    current: usize,
    mask: u64,
}

impl SeenFilter {
    pub fn new(bits: usize) -> Self {
        let words = (bits.max(64) / 64).next_power_of_two();
        Self { words: vec![[0; 2]; words], current: 0, mask: words as u64 - 1 }
    }

    /// Records `hash` and says whether it had been seen in this or the previous generation.
    ///
    /// Blocked: the three bits of a key share one 64-bit word, so a lookup is one cache miss.
    /// Uses bits 0–57 of `hash`.
    pub fn check_and_insert(&mut self, hash: u64) -> bool {
        let pair = &mut self.words[(hash & self.mask) as usize];
        let bits = (1u64 << ((hash >> 40) & 63)) | (1u64 << ((hash >> 46) & 63)) | (1u64 << ((hash >> 52) & 63));
        let seen = pair[0] & bits == bits || pair[1] & bits == bits;
        pair[self.current] |= bits;
        seen
    }

    /// Starts a new generation; the oldest is forgotten.
    pub fn rotate(&mut self) {
        self.current ^= 1;
        for pair in &mut self.words {
            pair[self.current] = 0;
        }
    }

    pub fn memory_bytes(&self) -> usize {
        self.words.len() * 16
    }
}

/// One untracked request in this many is counted by the sketches (see
/// [`DimensionCounter::count`]).
const SKETCH_SAMPLE: u32 = 8;

/// Sampled requests a key needs in an interval before the sketch lets it into a full
/// heavy-hitter list (see [`DimensionCounter::count`]).
const ADMISSION_SAMPLES: u32 = 2;

/// Distinct keys an aggregate dimension with few possible keys (ASNs, countries) counts
/// exactly; more (a table with more ASNs than exist) go to the sketch, so memory stays bounded.
const EXACT_KEYS: usize = 200_000;

/// Exact counts, for dimensions with a bounded number of keys: cheaper than a sketch and a heap.
enum Exact {
    /// A few tens of thousands of ASNs are announced: a map.
    Asn(HashMap<u32, u64, foldhash::fast::FixedState>),
    /// A slot per pair of letters: an increment, no hashing.
    Country(Box<[u64; 26 * 26]>),
}

/// The slot of a country key (its two upper-case letters, as [`Source`] holds them).
fn country_slot(key: u128) -> Option<usize> {
    match (key as u16).to_be_bytes() {
        [a @ b'A'..=b'Z', b @ b'A'..=b'Z'] => Some(usize::from(a - b'A') * 26 + usize::from(b - b'A')),
        _ => None,
    }
}

impl Exact {
    /// Counts `key`; false if it has no room for it.
    fn count(&mut self, key: u128) -> bool {
        match self {
            Exact::Country(slots) => country_slot(key).map(|i| slots[i] += 1).is_some(),
            Exact::Asn(map) => {
                let Ok(asn) = u32::try_from(key) else { return false };
                if let Some(n) = map.get_mut(&asn) {
                    *n += 1;
                } else if map.len() < EXACT_KEYS {
                    map.insert(asn, 1);
                } else {
                    return false;
                }
                true
            }
        }
    }

    /// The counted keys, which are forgotten.
    fn drain(&mut self) -> Vec<(u128, u64)> {
        match self {
            Exact::Asn(map) => map.drain().map(|(k, n)| (u128::from(k), n)).collect(),
            Exact::Country(slots) => {
                let mut keys = Vec::new();
                for (i, n) in slots.iter_mut().enumerate().filter(|(_, n)| **n > 0) {
                    let letters = [b'A' + (i / 26) as u8, b'A' + (i % 26) as u8];
                    keys.push((u128::from(u16::from_be_bytes(letters)), std::mem::take(n)));
                }
                keys
            }
        }
    }

    fn memory_bytes(&self) -> usize {
        match self {
            Exact::Asn(map) => map.capacity() * (std::mem::size_of::<(u32, u64)>() + 1),
            Exact::Country(slots) => std::mem::size_of_val(&**slots),
        }
    }
}

struct DimensionCounter {
    dimension: Dimension,
    exact: Option<Exact>,
    sketch: CountMin,
    top: HeavyHitters,
    /// Names of the API keys in `top` (other dimensions' keys name themselves).
    names: HashMap<u128, Box<str>>,
}

impl DimensionCounter {
    /// Counts `key`, whose [`hash_key`] is `hash` when the caller has made it already;
    /// returns the key it displaced from the heavy hitters, if any, and whether it was a heavy
    /// hitter already. `sampled` says whether this request is one of the
    /// one-in-[`SKETCH_SAMPLE`] that the sketch counts.
    fn count(&mut self, key: u128, hash: Option<u64>, sampled: bool) -> (Option<u128>, bool) {
        if let Some(exact) = &mut self.exact
            && exact.count(key)
        {
            return (None, true);
        }
        let hash = hash.unwrap_or_else(|| hash_key(key));
        // A heavy hitter's own count is the one reported: the sketch only decides who gets in,
        // so it is spared the cache misses for the keys already there.
        if self.top.increment_hashed(key, hash) {
            return (None, true);
        }
        if !self.top.is_full() {
            return (self.top.admit(key, 1), false);
        }
        // Once the list is full, the sketch decides who displaces whom, and it counts a sample
        // of the untracked requests, each standing for SKETCH_SAMPLE: its counters are the
        // counter's largest structure, two cache misses a request that the long tail of
        // one-off sources would otherwise pay. A heavy source is sampled within a few of its
        // requests and from then on counted exactly; the estimate stays unbiased.
        if !sampled {
            return (None, false);
        }
        let estimate = self.sketch.add_weighted(hash, SKETCH_SAMPLE);
        // A key must be sampled twice in the interval before it may displace anyone: a
        // displacement costs a heap repair and two map updates, and without this bar every
        // sampled request of the long tail pays them, one light source displacing another
        // (with a few thousand sources each sending a few requests an interval, that
        // churn costs more than all other counting). A heavy source clears it within a few
        // tens of requests.
        if estimate < ADMISSION_SAMPLES * SKETCH_SAMPLE {
            return (None, false);
        }
        (self.top.admit(key, u64::from(estimate)), false)
    }

    /// The name of a key, as reports and Mitigations write it.
    fn name(&self, key: u128) -> String {
        match self.dimension {
            Dimension::Ip => ip_of(key).to_string(),
            Dimension::Prefix => match ip_of(key) {
                ip @ IpAddr::V4(_) => format!("{ip}/24"),
                ip @ IpAddr::V6(_) => format!("{ip}/64"),
            },
            Dimension::Asn => key.to_string(),
            Dimension::Country => {
                let b = (key as u16).to_be_bytes();
                String::from_utf8_lossy(&b).into_owned()
            }
            Dimension::ApiKey => self.names.get(&key).map_or_else(|| format!("{key:032x}"), |n| n.to_string()),
        }
    }
}

fn ip_of(key: u128) -> IpAddr {
    std::net::Ipv6Addr::from(key).to_canonical()
}

/// Every dimension, in the order of [`TrafficCounter`]'s slots.
const DIMENSIONS: [Dimension; 5] =
    [Dimension::Ip, Dimension::Prefix, Dimension::Asn, Dimension::Country, Dimension::ApiKey];

/// Counts of one interval.
pub struct TrafficCounter {
    /// One slot per dimension, in the order of [`DIMENSIONS`]; `None` for a dimension not
    /// counted. A fixed slot per dimension lets a request's counting be straight-line code,
    /// without a loop and a match.
    dims: [Option<DimensionCounter>; 5],
    seen: SeenFilter,
    hasher: foldhash::fast::FixedState,
    intervals: u32,
    generation_intervals: u32,
    /// A source is in the filter's sample when its hash has none of these bits (the top
    /// log2(`seen_sample`) ones).
    sample_mask: u64,
    /// Sources each sampled one stands for.
    sample_weight: u64,
    top_keys: usize,
    /// State of the generator that draws the sketches' sample (xorshift): random, not every
    /// n-th request, so that no rotation of sources can stay out of it.
    sample_state: u64,
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
    /// The ASN of reported prefixes (filled in by the edge, which holds the prefix table).
    pub prefix_asns: BTreeMap<String, u32>,
}

impl TrafficCounter {
    /// Counts the given dimensions (ApiKey only for requests that carry one).
    pub fn new(cfg: CounterConfig, dimensions: &[Dimension]) -> Self {
        let sample_bits = cfg.seen_sample.max(1).next_power_of_two().trailing_zeros().min(6);
        let counter = |dimension: Dimension| DimensionCounter {
            dimension,
            // Aggregates have far fewer keys than IPs; a narrower sketch serves them. Two rows:
            // the sketch only gates entry to the heavy-hitter list, whose counts are the ones
            // reported.
            sketch: CountMin::new(if dimension == Dimension::Ip { cfg.sketch_width } else { cfg.sketch_width / 8 }, 2),
            top: HeavyHitters::new(cfg.top_keys),
            exact: match dimension {
                Dimension::Asn => Some(Exact::Asn(HashMap::with_hasher(foldhash::fast::FixedState::with_seed(3)))),
                Dimension::Country => Some(Exact::Country(Box::new([0; 26 * 26]))),
                _ => None,
            },
            names: HashMap::new(),
        };
        Self {
            dims: DIMENSIONS.map(|d| dimensions.contains(&d).then(|| counter(d))),
            seen: SeenFilter::new(cfg.seen_bits),
            hasher: foldhash::fast::FixedState::with_seed(0x6170_692d_6b65_7973),
            intervals: 0,
            generation_intervals: cfg.seen_generation_intervals.max(1),
            // The filter uses bits 0–57 of the hash; the sample is drawn from the six above.
            sample_mask: !(u64::MAX >> sample_bits),
            sample_weight: 1 << sample_bits,
            top_keys: cfg.top_keys,
            sample_state: 0x9e37_79b9_7f4a_7c15,
            requests: 0,
            new_source_requests: 0,
            classes: BTreeMap::new(),
        }
    }

    /// Counts one request.
    pub fn count(&mut self, src: &Source, class: Option<&str>) {
        self.requests += 1;
        let ip = ip_key(src.ip);
        let mut x = self.sample_state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.sample_state = x;
        let sampled = x.is_multiple_of(u64::from(SKETCH_SAMPLE));
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
        // The address's hash serves its heavy-hitter slot, its sketch and the filter.
        let ip_hash = hash_key(ip);
        // The slots, in the order of DIMENSIONS.
        let [by_ip, by_prefix, by_asn, by_country, by_api_key] = &mut self.dims;
        let ip_tracked = by_ip.as_mut().is_some_and(|d| d.count(ip, Some(ip_hash), sampled).1);
        if let Some(d) = by_prefix {
            d.count(ip_key(src.prefix.network()), None, sampled);
        }
        if let (Some(d), Some(asn)) = (by_asn, src.asn) {
            d.count(u128::from(asn), None, sampled);
        }
        if let (Some(d), Some(c)) = (by_country, src.country) {
            d.count(u128::from(u16::from_be_bytes(c.bytes())), None, sampled);
        }
        if let (Some(d), Some(k)) = (by_api_key, src.api_key.as_deref()) {
            let lo = self.hasher.hash_one(k);
            let hi = foldhash::fast::FixedState::with_seed(lo).hash_one(k);
            let key = (u128::from(hi) << 64) | u128::from(lo);
            if let (Some(old), _) = d.count(key, None, sampled) {
                d.names.remove(&old);
            }
            if !d.names.contains_key(&key) && d.names.len() < self.top_keys {
                d.names.insert(key, crate::text::truncate(k, 256).into());
            }
        }
        // A heavy hitter of this interval has been seen: skip the filter's cache misses for it.
        if !ip_tracked && ip_hash & self.sample_mask == 0 && !self.seen.check_and_insert(ip_hash) {
            self.new_source_requests += self.sample_weight;
        }
    }

    /// Returns the interval's counts and starts the next interval.
    pub fn take(&mut self) -> Counts {
        let mut top = BTreeMap::new();
        for d in self.dims.iter_mut().flatten() {
            let mut keys = d.top.top(self.top_keys);
            if let Some(exact) = &mut d.exact {
                keys.extend(exact.drain());
                keys.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
                keys.truncate(self.top_keys);
            }
            let keys: Vec<(String, u64)> = keys.into_iter().map(|(k, n)| (d.name(k), n)).collect();
            top.insert(d.dimension, keys);
            d.top.clear();
            d.sketch.clear();
            d.names.clear();
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
            prefix_asns: BTreeMap::new(),
        }
    }

    /// Bytes held by the counting structures: filter, sketches, heavy hitters and exact maps
    /// (not the API keys' names, at most `top_keys` of them).
    pub fn memory_bytes(&self) -> usize {
        self.seen.memory_bytes()
            + self
                .dims
                .iter()
                .flatten()
                .map(|d| {
                    d.sketch.memory_bytes() + d.top.memory_bytes() + d.exact.as_ref().map_or(0, Exact::memory_bytes)
                })
                .sum::<usize>()
    }
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
        CounterConfig {
            top_keys: 16,
            sketch_width: 1024,
            seen_bits: 1 << 16,
            seen_generation_intervals: 2,
            seen_sample: 1,
        }
    }

    #[test]
    fn a_sampled_filter_estimates_new_sources() {
        let cfg = CounterConfig { seen_bits: 1 << 20, seen_sample: 8, ..small() };
        let mut c = TrafficCounter::new(cfg, &[Dimension::Ip]);
        let ip = |i: u32| std::net::Ipv4Addr::from(0x0a00_0000 + i * 7).to_string();
        for i in 0..20_000 {
            c.count(&src(&ip(i), 1), None);
        }
        let first = c.take().new_source_requests;
        assert!((18_000..=22_000).contains(&first), "20,000 new sources estimated at {first}");
        // The same sources again, and a thousand new ones: the sampled ones are remembered.
        for i in 0..21_000 {
            c.count(&src(&ip(i), 1), None);
        }
        let second = c.take().new_source_requests;
        assert!((400..=1_800).contains(&second), "1,000 new sources estimated at {second}");
        assert_eq!(second % 8, 0, "each sampled source stands for eight");
    }

    #[test]
    fn heavy_sources_reach_the_list_through_the_sampled_sketch() {
        // The list holds 16 keys; 20,000 one-off sources fill it at once, so the three heavy
        // sources get in only through the sketch, which sees one untracked request in eight.
        let mut c = TrafficCounter::new(small(), &[Dimension::Ip]);
        for i in 0..20_000u32 {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string();
            c.count(&src(&ip, 64500), None);
            if i >= 100 && i % 20 == 0 {
                for heavy in ["203.0.113.7", "203.0.113.8", "203.0.113.9"] {
                    c.count(&src(heavy, 64501), None);
                }
            }
        }
        let top = &c.take().top[&Dimension::Ip];
        for heavy in ["203.0.113.7", "203.0.113.8", "203.0.113.9"] {
            let n = top.iter().find(|(k, _)| k == heavy).map(|(_, n)| *n);
            // Each sent 995; space-saving's inherited count may add, a late admission takes
            // off the few requests before the sample caught it.
            assert!(n.is_some_and(|n| (950..=1_050).contains(&n)), "{heavy}: {n:?} in {top:?}");
        }
        assert_eq!(top[..3].iter().filter(|(k, _)| k.starts_with("203.0.113.")).count(), 3, "{top:?}");
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
    fn ipv6_sources_are_named_as_such() {
        let mut c = TrafficCounter::new(small(), &[Dimension::Ip, Dimension::Prefix, Dimension::Country]);
        c.count(&src("2001:db8:1:2::7", 1), None);
        c.count(&src("192.0.2.1", 1), None);
        let counts = c.take();
        let ips: Vec<&str> = counts.top[&Dimension::Ip].iter().map(|(k, _)| k.as_str()).collect();
        assert!(ips.contains(&"2001:db8:1:2::7") && ips.contains(&"192.0.2.1"), "{ips:?}");
        let prefixes: Vec<&str> = counts.top[&Dimension::Prefix].iter().map(|(k, _)| k.as_str()).collect();
        assert!(prefixes.contains(&"2001:db8:1:2::/64") && prefixes.contains(&"192.0.2.0/24"), "{prefixes:?}");
        assert_eq!(counts.top[&Dimension::Country], vec![("DE".to_owned(), 2)]);
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
        let mut c = TrafficCounter::new(small(), &[Dimension::Ip, Dimension::Prefix, Dimension::Country]);
        let count = |c: &mut TrafficCounter, range: std::ops::Range<u32>| {
            for i in range {
                let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
                c.count(&src(&ip.to_string(), 1), None);
            }
        };
        count(&mut c, 0..50_000);
        let after_50k = c.memory_bytes();
        count(&mut c, 50_000..200_000);
        assert_eq!(c.memory_bytes(), after_50k, "four times the sources, no more memory");
        assert_eq!(c.take().top[&Dimension::Ip].len(), 16);
    }

    #[test]
    fn api_keys_are_named_and_long_ones_cut_on_a_character_boundary() {
        let key = "é".repeat(40); // 80 bytes
        let mut c = TrafficCounter::new(small(), &[Dimension::ApiKey]);
        c.count(&Source { api_key: Some(key.clone()), ..src("192.0.2.1", 1) }, None);
        c.count(&Source { api_key: Some("k2".into()), ..src("192.0.2.1", 1) }, None);
        c.count(&Source { api_key: Some("k2".into()), ..src("192.0.2.1", 1) }, None);
        let top = &c.take().top[&Dimension::ApiKey];
        assert_eq!(top[0], ("k2".to_owned(), 2));
        assert_eq!(top[1], (key, 1));
    }
}
