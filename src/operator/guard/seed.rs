//! Baselines from Prometheus: a TrafficGuard's `baseline.prometheusQuery` evaluated over the
//! last `baseline.window`, each series assigned to a dimension by its label (`ip`, `prefix`,
//! `asn`, `country` or `api_key`); series with none of them are summed into the pool's total.

use std::collections::BTreeMap;

use ipnet::IpNet;

use crate::{
    api::traffic_guard::AggregationKey as Dimension,
    engine::guard::History,
    signals::{
        SignalError,
        prometheus::{Prometheus, Series},
    },
};

/// Label naming the source of a series, and the dimension it counts in.
pub const LABELS: [(&str, Dimension); 5] = [
    ("ip", Dimension::Ip),
    ("prefix", Dimension::Prefix),
    ("asn", Dimension::Asn),
    ("country", Dimension::Country),
    ("api_key", Dimension::ApiKey),
];

/// Points asked for per series, up to the coarsest step; the step grows with the window.
const MAX_POINTS: f64 = 500.0;
/// Finest step asked for: Prometheus rarely scrapes more often.
const MIN_STEP_SECS: f64 = 15.0;
/// Coarsest step asked for: a daily shape needs a point in (nearly) every quarter hour of the
/// day, and a step that divides the day evenly (20 minutes) would visit the same times every
/// day. A week is then 1,008 points a series, well within Prometheus' 11,000.
const MAX_STEP_SECS: f64 = 600.0;

/// A label value as the edge names the same key, or `None` when it cannot be one.
fn key_name(dim: Dimension, value: &str) -> Option<String> {
    let v = value.trim();
    match dim {
        Dimension::Ip => v.parse::<std::net::IpAddr>().ok().map(|ip| ip.to_canonical().to_string()),
        Dimension::Prefix => v.parse::<IpNet>().ok().map(|n| n.trunc().to_string()),
        Dimension::Asn => {
            let digits = v.strip_prefix("AS").or_else(|| v.strip_prefix("as")).unwrap_or(v);
            digits.parse::<u32>().ok().map(|n| n.to_string())
        }
        Dimension::Country => {
            (v.len() == 2 && v.bytes().all(|b| b.is_ascii_alphabetic())).then(|| v.to_ascii_uppercase())
        }
        Dimension::ApiKey => (!v.is_empty()).then(|| v.to_owned()),
    }
}

/// Turns a range query's series into history; also says what it found, in one sentence.
pub fn to_history(series: Vec<Series>) -> (History, String) {
    let mut h = History::default();
    // Unlabelled series summed by timestamp (milliseconds, so equal steps line up).
    let mut total: BTreeMap<i64, f64> = BTreeMap::new();
    let mut per_dim: BTreeMap<Dimension, usize> = BTreeMap::new();
    let mut skipped = 0;
    for (labels, samples) in series {
        let values = || samples.iter().map(|s| s.value).collect::<Vec<f64>>();
        let named: Vec<(Dimension, &String)> =
            LABELS.iter().filter_map(|(l, d)| labels.get(*l).map(|v| (*d, v))).collect();
        match named.as_slice() {
            [] => {
                for s in &samples {
                    *total.entry((s.timestamp * 1000.0).round() as i64).or_default() += s.value;
                }
            }
            [(dim, value)] => match key_name(*dim, value) {
                Some(key) => {
                    *per_dim.entry(*dim).or_default() += 1;
                    h.keys.push((*dim, key, values()));
                }
                None => skipped += 1,
            },
            _ => skipped += 1,
        }
    }
    h.total_at = total.keys().map(|ms| *ms as f64 / 1000.0).collect();
    h.total = total.into_values().collect();
    let mut found: Vec<String> = Vec::new();
    if !h.total.is_empty() {
        found.push("the total".into());
    }
    found.extend(per_dim.iter().map(|(d, n)| format!("{n} {d:?} keys")));
    let mut summary = if found.is_empty() { "no series".to_owned() } else { found.join(", ") };
    summary.push_str(&format!(" over {} points", h.points()));
    if skipped > 0 {
        summary.push_str(&format!(
            "; {skipped} series skipped (more than one source label, or a value that is not a valid key)"
        ));
    }
    (h, summary)
}

/// Evaluates `query` over the `window_secs` before `now` (seconds since the epoch).
///
/// # Errors
/// Prometheus unreachable, timing out, or refusing the query (its message is kept).
pub async fn history(
    prom: &Prometheus,
    query: &str,
    window_secs: f64,
    now: i64,
) -> Result<(History, String), SignalError> {
    let window = window_secs.max(60.0);
    let step = (window / MAX_POINTS).clamp(MIN_STEP_SECS, MAX_STEP_SECS);
    Ok(to_history(prom.range_series(query, now - window as i64, now, step).await?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signals::prometheus::Sample;

    fn series(labels: &[(&str, &str)], values: &[f64]) -> Series {
        let labels = labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        let at = |i: usize, v: f64| Sample { timestamp: 1000.0 + 15.0 * i as f64, value: v };
        (labels, values.iter().enumerate().map(|(i, v)| at(i, *v)).collect())
    }

    #[test]
    fn series_are_assigned_by_label_and_named_as_the_edge_names_keys() {
        let (h, summary) = to_history(vec![
            series(&[("ip", "::ffff:203.0.113.9"), ("job", "edge")], &[100.0, 120.0]),
            series(&[("prefix", "198.51.100.77/24")], &[10.0]),
            series(&[("asn", "AS64500")], &[10.0]),
            series(&[("country", "de")], &[5.0]),
            series(&[("job", "edge"), ("instance", "a")], &[1.0, 2.0, 3.0]),
            series(&[("job", "edge"), ("instance", "b")], &[10.0, 20.0, 30.0]),
            series(&[("ip", "not an address")], &[1.0]),
            series(&[("ip", "192.0.2.1"), ("country", "DE")], &[1.0]),
        ]);
        let keys: Vec<(Dimension, &str)> = h.keys.iter().map(|(d, k, _)| (*d, k.as_str())).collect();
        assert_eq!(
            keys,
            vec![
                (Dimension::Ip, "203.0.113.9"),
                (Dimension::Prefix, "198.51.100.0/24"),
                (Dimension::Asn, "64500"),
                (Dimension::Country, "DE"),
            ]
        );
        assert_eq!(h.total, vec![11.0, 22.0, 33.0], "unlabelled series are summed step by step");
        assert_eq!(h.total_at, vec![1000.0, 1015.0, 1030.0], "with the time of each step");
        assert!(summary.contains("the total") && summary.contains("1 Ip keys"), "{summary}");
        assert!(summary.contains("2 series skipped"), "{summary}");
    }

    #[test]
    fn nothing_found_says_so() {
        let (h, summary) = to_history(Vec::new());
        assert_eq!(h, History::default());
        assert_eq!(summary, "no series over 0 points");
    }
}
