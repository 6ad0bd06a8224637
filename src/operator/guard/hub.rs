//! Where edge reports land: merged per (namespace, pool) until the pool's TrafficGuard takes
//! them as one sample.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::{
    edge::report::{Dimension, EdgeReport},
    engine::guard::Sample,
};

/// Keys kept per dimension in one merged sample.
const MERGED_TOP: usize = 4096;

/// Reports of one pool since the last sample.
#[derive(Default)]
struct Window {
    requests: u64,
    new_source_requests: u64,
    /// Seconds each edge's reports covered, by edge.
    edges: HashMap<String, f64>,
    top: BTreeMap<Dimension, HashMap<String, u64>>,
    classes: BTreeMap<String, u64>,
    /// ASN of each reported prefix (the latest word on it).
    prefix_asns: HashMap<String, String>,
    /// Requests refused per mitigation (`namespace/name`) and edge.
    refused: HashMap<String, HashMap<String, u64>>,
    /// Latest breaker state per (edge, upstream).
    breakers: HashMap<(String, String), String>,
    last_report: Option<Instant>,
}

/// What a pool's edges said since the last sample, beyond the counts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PoolExtras {
    pub edges: usize,
    /// Upstreams with a breaker open on some edge.
    pub open_breakers: Vec<String>,
    /// Requests per traffic class per second.
    pub class_rates: BTreeMap<String, f64>,
    /// Requests each mitigation (`namespace/name`) refused per second on the edge that
    /// refused most: a mitigation's rate limit holds on each edge separately, and a source
    /// that reaches one edge of several must not look tamer by being averaged with the rest.
    pub refused_rates: BTreeMap<String, f64>,
}

/// A report the operator refuses, with the reason it answers 400 with.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BadReport {
    #[error("namespace and pool must be non-empty names of at most 253 characters")]
    Names,
    #[error("intervalSecs must be a positive number of at most 3600, got {0}")]
    Interval(f64),
}

/// Reports from every edge, merged per pool.
#[derive(Default)]
pub struct ReportHub {
    pools: Mutex<HashMap<(String, String), Window>>,
}

impl ReportHub {
    /// Adds one report.
    pub fn ingest(&self, r: EdgeReport, now: Instant) -> Result<(), BadReport> {
        let name_ok = |s: &str| !s.is_empty() && s.len() <= 253;
        if !name_ok(&r.namespace) || !name_ok(&r.pool) || r.edge.len() > 253 {
            return Err(BadReport::Names);
        }
        if !(r.interval_secs.is_finite() && r.interval_secs > 0.0 && r.interval_secs <= 3600.0) {
            return Err(BadReport::Interval(r.interval_secs));
        }
        let mut pools = self.pools.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let w = pools.entry((r.namespace, r.pool)).or_default();
        w.requests = w.requests.saturating_add(r.requests);
        w.new_source_requests = w.new_source_requests.saturating_add(r.new_source_requests);
        for (dim, keys) in r.top {
            let m = w.top.entry(dim).or_default();
            for (k, n) in keys.into_iter().take(MERGED_TOP) {
                *m.entry(k).or_default() += n;
            }
        }
        for (c, n) in r.classes {
            *w.classes.entry(c).or_default() += n;
        }
        // Bounded like the keys they describe: one per reported prefix.
        for (p, asn) in r.prefix_asns.into_iter().take(MERGED_TOP) {
            if w.prefix_asns.len() < 4 * MERGED_TOP || w.prefix_asns.contains_key(&p) {
                w.prefix_asns.insert(p, asn.to_string());
            }
        }
        // Bounded by the mitigations in force, which the guard's maxActive bounds.
        for (m, n) in r.refused_by_rule.into_iter().take(MERGED_TOP) {
            if w.refused.len() < MERGED_TOP || w.refused.contains_key(&m) {
                *w.refused.entry(m).or_default().entry(r.edge.clone()).or_default() += n;
            }
        }
        for u in r.upstreams {
            w.breakers.insert((r.edge.clone(), u.name), u.breaker);
        }
        *w.edges.entry(r.edge).or_default() += r.interval_secs;
        w.last_report = Some(now);
        Ok(())
    }

    /// Takes the pool's merged sample, if any edge reported since the last one.
    ///
    /// Counts from several edges add up; the interval is the mean of theirs, so rates stay
    /// right whether one edge reported twice or three edges once each.
    pub fn take(&self, namespace: &str, pool: &str) -> Option<(Sample, PoolExtras)> {
        let mut pools = self.pools.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let w = pools.get_mut(&(namespace.to_owned(), pool.to_owned()))?;
        if w.edges.is_empty() {
            return None;
        }
        let secs = w.edges.values().sum::<f64>() / w.edges.len() as f64;
        let top = std::mem::take(&mut w.top)
            .into_iter()
            .map(|(d, m)| {
                let mut v: Vec<(String, u64)> = m.into_iter().collect();
                v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                v.truncate(MERGED_TOP);
                (d, v)
            })
            .collect();
        let mut open: Vec<String> =
            w.breakers.iter().filter(|(_, s)| s.as_str() == "Open").map(|((_, u), _)| u.clone()).collect();
        open.sort();
        open.dedup();
        let extras = PoolExtras {
            edges: w.edges.len(),
            open_breakers: open,
            class_rates: std::mem::take(&mut w.classes).into_iter().map(|(c, n)| (c, n as f64 / secs)).collect(),
            refused_rates: std::mem::take(&mut w.refused)
                .into_iter()
                .map(|(m, by_edge)| {
                    let busiest = by_edge
                        .iter()
                        .map(|(e, &n)| n as f64 / w.edges.get(e).copied().unwrap_or(secs))
                        .fold(0.0, f64::max);
                    (m, busiest)
                })
                .collect(),
        };
        let sample = Sample {
            secs,
            requests: std::mem::take(&mut w.requests) as f64,
            new_source_requests: std::mem::take(&mut w.new_source_requests) as f64,
            top,
            prefix_asns: std::mem::take(&mut w.prefix_asns),
            // Its time of day, for a guard with a daily shape.
            at: Some(super::unix_now()),
        };
        w.edges.clear();
        Some((sample, extras))
    }

    /// How long ago the pool last reported.
    pub fn silence(&self, namespace: &str, pool: &str, now: Instant) -> Option<Duration> {
        let pools = self.pools.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        pools.get(&(namespace.to_owned(), pool.to_owned())).and_then(|w| w.last_report).map(|t| now - t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::report::UpstreamReport;

    fn report(edge: &str, requests: u64, ip_count: u64) -> EdgeReport {
        EdgeReport {
            namespace: "shop".into(),
            pool: "public".into(),
            edge: edge.into(),
            interval_secs: 1.0,
            requests,
            top: BTreeMap::from([(Dimension::Ip, vec![("192.0.2.1".to_owned(), ip_count)])]),
            upstreams: vec![UpstreamReport { name: "api".into(), breaker: "Open".into(), ..UpstreamReport::default() }],
            ..EdgeReport::default()
        }
    }

    #[test]
    fn edges_add_up_and_rates_stay_per_second() {
        let hub = ReportHub::default();
        let now = Instant::now();
        let with_asn = EdgeReport {
            prefix_asns: [("192.0.2.0/24".to_owned(), 64500)].into(),
            refused_by_rule: [("shop/flood".to_owned(), 30)].into(),
            ..report("a", 100, 10)
        };
        hub.ingest(with_asn, now).unwrap();
        let b = EdgeReport { refused_by_rule: [("shop/flood".to_owned(), 10)].into(), ..report("b", 50, 5) };
        hub.ingest(b, now).unwrap();
        let (s, extras) = hub.take("shop", "public").unwrap();
        assert_eq!(s.prefix_asns.get("192.0.2.0/24").map(String::as_str), Some("64500"));
        assert_eq!((s.requests, s.secs), (150.0, 1.0));
        assert_eq!(s.top[&Dimension::Ip], vec![("192.0.2.1".to_owned(), 15)]);
        assert_eq!(extras.edges, 2);
        assert_eq!(extras.open_breakers, vec!["api".to_owned()]);
        assert_eq!(extras.refused_rates["shop/flood"], 30.0, "edge a refused 30 in its second, b 10");
        assert!(hub.take("shop", "public").is_none(), "nothing new");
        // One edge reporting twice before a take: two seconds of counts.
        hub.ingest(report("a", 100, 10), now).unwrap();
        hub.ingest(report("a", 100, 10), now).unwrap();
        let (s, _) = hub.take("shop", "public").unwrap();
        assert_eq!((s.requests, s.secs), (200.0, 2.0));
    }

    #[test]
    fn a_source_that_floods_one_edge_of_several_is_judged_on_that_edge() {
        let hub = ReportHub::default();
        let now = Instant::now();
        // Edge a reported twice (two seconds) and refused 80 in all; b and c refused nothing.
        for _ in 0..2 {
            let a = EdgeReport { refused_by_rule: [("shop/flood".to_owned(), 40)].into(), ..report("a", 100, 10) };
            hub.ingest(a, now).unwrap();
        }
        hub.ingest(report("b", 100, 0), now).unwrap();
        hub.ingest(report("c", 100, 0), now).unwrap();
        let (_, extras) = hub.take("shop", "public").unwrap();
        assert_eq!(extras.refused_rates["shop/flood"], 40.0, "40 a second where it lands, not 80/4 edge-reports");
        // The next window starts afresh.
        hub.ingest(report("b", 100, 0), now).unwrap();
        let (_, extras) = hub.take("shop", "public").unwrap();
        assert!(extras.refused_rates.is_empty());
    }

    #[test]
    fn bad_reports_are_refused() {
        let hub = ReportHub::default();
        let mut r = report("a", 1, 1);
        r.interval_secs = f64::NAN;
        assert!(matches!(hub.ingest(r, Instant::now()), Err(BadReport::Interval(_))));
        let mut r = report("a", 1, 1);
        r.pool = String::new();
        assert_eq!(hub.ingest(r, Instant::now()), Err(BadReport::Names));
        assert!(hub.take("shop", "public").is_none());
    }
}
