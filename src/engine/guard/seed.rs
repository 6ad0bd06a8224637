//! Seeding a guard's baselines from history recorded before it started (Prometheus), so a
//! restarted operator or a new guard judges sources against what they usually send from its
//! first sample, instead of flagging every heavy but normal source as new.

use super::{Dimension, GuardDetector, KeyState};

/// Request rates (requests/s) from before the detector started, oldest first, one value per
/// history step. Values that are not finite are skipped.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct History {
    /// The pool's total.
    pub total: Vec<f64>,
    /// Per source or aggregate.
    pub keys: Vec<(Dimension, String, Vec<f64>)>,
}

impl History {
    /// Points of history: the longest series.
    pub fn points(&self) -> usize {
        self.keys.iter().map(|(_, _, v)| v.len()).chain([self.total.len()]).max().unwrap_or(0)
    }
}

fn mean(values: &[f64]) -> Option<f64> {
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite() && *v >= 0.0).collect();
    (!finite.is_empty()).then(|| finite.iter().sum::<f64>() / finite.len() as f64)
}

impl GuardDetector {
    /// Learns `h` as if it had been observed before the first sample: the total's baseline,
    /// each key's own baseline (trusted once it has enough points) and usual share of its
    /// dimension, and a typical heavy key per dimension. Seeded keys count as old: an
    /// aggregate known from history is never taken for part of a new surge.
    pub fn seed(&mut self, h: &History) {
        for &r in h.total.iter().filter(|r| r.is_finite() && **r >= 0.0) {
            self.total.observe(r);
        }
        self.step += h.points() as u64;
        let mut by_dim: std::collections::BTreeMap<Dimension, Vec<(&str, f64, u32)>> = Default::default();
        for (dim, key, values) in &h.keys {
            if let Some(rate) = mean(values) {
                let n = u32::try_from(values.iter().filter(|v| v.is_finite()).count()).unwrap_or(u32::MAX);
                by_dim.entry(*dim).or_default().push((key, rate, n));
            }
        }
        for (dim, mut keys) in by_dim {
            let dim_total: f64 = keys.iter().map(|k| k.1).sum::<f64>().max(1e-9);
            for &(key, rate, samples) in &keys {
                self.keys.insert(
                    dim,
                    key,
                    KeyState {
                        rate,
                        samples,
                        share: rate / dim_total,
                        born: 0,
                        last_step: self.step,
                        hot: 0,
                        parent: None,
                        surge_born: false,
                    },
                );
            }
            // The same typical key as learning picks: the tenth heaviest, or the lightest of fewer.
            keys.sort_by(|a, b| b.1.total_cmp(&a.1));
            if let Some(k) = keys.get(keys.len().min(10).saturating_sub(1)) {
                self.reference.insert(dim, k.1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{api::traffic_guard::Sensitivity, engine::guard::Sample};

    fn sample(pairs: &[(&str, u64)]) -> Sample {
        Sample {
            secs: 1.0,
            requests: pairs.iter().map(|p| p.1 as f64).sum(),
            new_source_requests: 0.0,
            top: [(Dimension::Ip, pairs.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect())].into(),
            ..Sample::default()
        }
    }

    fn detector() -> GuardDetector {
        GuardDetector::new(super::super::Tuning::new(Sensitivity::Medium, 600.0, 1.0), Vec::new())
    }

    #[test]
    fn a_source_heavy_in_history_is_not_a_flooder_from_the_first_sample() {
        let regular = [("198.51.100.1", 10), ("198.51.100.2", 10), ("198.51.100.3", 10)];
        let heavy = [("203.0.113.9", 150), ("198.51.100.1", 10), ("198.51.100.2", 10), ("198.51.100.3", 10)];

        // Without history, a source at 150 req/s against a typical 10 is a flood.
        let mut fresh = detector();
        for _ in 0..12 {
            fresh.observe(&sample(&regular));
        }
        let flagged = (0..3).any(|_| fresh.observe(&sample(&heavy)).findings.iter().any(|f| f.key == "203.0.113.9"));
        assert!(flagged, "the control: unseeded, the heavy source is flagged");

        // With history saying it always sends about that much, it is judged against itself.
        let mut seeded = detector();
        let h = History {
            total: vec![180.0; 40],
            keys: vec![
                (Dimension::Ip, "203.0.113.9".into(), vec![140.0; 40]),
                (Dimension::Ip, "198.51.100.1".into(), vec![10.0; 40]),
            ],
        };
        assert_eq!(h.points(), 40);
        seeded.seed(&h);
        for _ in 0..20 {
            let obs = seeded.observe(&sample(&heavy));
            assert!(obs.findings.is_empty(), "{:?}", obs.findings);
            assert!(!obs.surge, "the total is as history says: {}", obs.summary());
        }
        // It is still a flood at many times what history says.
        let flood = [("203.0.113.9", 1500), ("198.51.100.1", 10)];
        let flagged = (0..3).any(|_| seeded.observe(&sample(&flood)).findings.iter().any(|f| f.key == "203.0.113.9"));
        assert!(flagged);
    }

    #[test]
    fn garbage_in_history_is_skipped() {
        let mut d = detector();
        d.seed(&History {
            total: vec![f64::NAN, -1.0, f64::INFINITY],
            keys: vec![(Dimension::Ip, "192.0.2.1".into(), vec![f64::NAN])],
        });
        assert_eq!(d.keys.len(), 0);
        let obs = d.observe(&sample(&[("192.0.2.1", 5)]));
        assert!(obs.findings.is_empty());
    }
}
