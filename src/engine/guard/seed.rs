//! Seeding a guard's baselines from history recorded before it started (Prometheus), so a
//! restarted operator or a new guard judges sources against what they usually send from its
//! first sample, instead of flagging every heavy but normal source as new.

use super::{Dimension, GuardDetector, KeyState, season::DailyShape};

/// Request rates (requests/s) from before the detector started, oldest first, one value per
/// history step. Values that are not finite are skipped.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct History {
    /// The pool's total.
    pub total: Vec<f64>,
    /// When each value of `total` was taken (seconds since the epoch), if known. History of a
    /// day or more gives the guard a daily shape ([`super::season`]).
    pub total_at: Vec<f64>,
    /// Per source or aggregate.
    pub keys: Vec<(Dimension, String, Vec<f64>)>,
}

impl History {
    /// The total's values with their times, when the times are known.
    fn timed_total(&self) -> Vec<(f64, f64)> {
        if self.total_at.len() == self.total.len() {
            self.total_at.iter().copied().zip(self.total.iter().copied()).collect()
        } else {
            Vec::new()
        }
    }

    /// The daily shape of the total, when it spans a day or more ([`DailyShape::from_history`]).
    pub fn daily_shape(&self) -> Option<DailyShape> {
        DailyShape::from_history(&self.timed_total())
    }

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
    ///
    /// History with times that spans a day or more also gives the daily shape, and is learnt
    /// adjusted by it, as live samples then are. A key's history is its mean over the window,
    /// adjusted by the shape's mean over the same window.
    pub fn seed(&mut self, h: &History) {
        let timed = h.timed_total();
        self.season = DailyShape::from_history(&timed);
        self.season_from_history = self.season.is_some();
        let factor = |t: f64| self.season.as_ref().map_or(1.0, |s| s.factor(t));
        let mean_factor = match timed.len() {
            0 => 1.0,
            n => timed.iter().map(|&(t, _)| factor(t)).sum::<f64>() / n as f64,
        };
        let adjusted: Vec<f64> = match timed.len() {
            0 => h.total.clone(),
            _ => timed.iter().map(|&(t, v)| v / factor(t)).collect(),
        };
        for r in adjusted.into_iter().filter(|r| r.is_finite() && *r >= 0.0) {
            self.total.observe(r);
        }
        self.step += h.points() as u64;
        let mut by_dim: std::collections::BTreeMap<Dimension, Vec<(&str, f64, u32)>> = Default::default();
        for (dim, key, values) in &h.keys {
            if let Some(rate) = mean(values).map(|r| r / mean_factor) {
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
            ..History::default()
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
            ..History::default()
        });
        assert_eq!(d.keys.len(), 0);
        let obs = d.observe(&sample(&[("192.0.2.1", 5)]));
        assert!(obs.findings.is_empty());
    }

    /// Two days of history every 5 minutes from midnight UTC: the pool's total from 20 req/s
    /// at 03:00 to 180 at 15:00, shared by four usual sources.
    fn diurnal_history(timed: bool) -> History {
        let start = 1_700_006_400.0;
        let at: Vec<f64> = (0..576).map(|i| start + 300.0 * f64::from(i)).collect();
        let total: Vec<f64> = at
            .iter()
            .map(|t| 100.0 - 80.0 * ((t.rem_euclid(86_400.0) / 86_400.0 - 0.125) * std::f64::consts::TAU).cos())
            .collect();
        let keys = (1..=4)
            .map(|i| (Dimension::Ip, format!("198.51.100.{i}"), total.iter().map(|t| t / 4.0).collect()))
            .collect();
        History { total_at: if timed { at } else { Vec::new() }, total, keys }
    }

    /// One second ending at `at`: the four usual sources at `usual` req/s each, and `crowd`
    /// new sources at 2 req/s each.
    fn timed_sample(at: f64, usual: u64, crowd: u32) -> Sample {
        let mut top: Vec<(String, u64)> = (1..=4).map(|i| (format!("198.51.100.{i}"), usual)).collect();
        top.extend((0..crowd).map(|i| (format!("203.0.{}.{}", i / 200, i % 200 + 1), 2)));
        Sample {
            secs: 1.0,
            requests: top.iter().map(|(_, n)| *n as f64).sum(),
            new_source_requests: 2.0 * f64::from(crowd),
            top: [(Dimension::Ip, top)].into(),
            at: Some(at),
            ..Sample::default()
        }
    }

    #[test]
    fn a_day_of_history_makes_baselines_follow_the_time_of_day() {
        let day3 = 1_700_006_400.0 + 2.0 * 86_400.0;
        let mut seasonal = detector();
        seasonal.seed(&diurnal_history(true));
        let shape = seasonal.season().expect("two days of timed history give a daily shape");
        assert!(shape.describe().contains("busiest at 15:00 UTC"), "{}", shape.describe());

        // 15:00, the usual sources at their afternoon rate (45 req/s each, 180 in all, nine
        // times the night): what this time of day always brings.
        for s in 0..10 {
            let obs = seasonal.observe(&timed_sample(day3 + 15.0 * 3600.0 + f64::from(s), 45, 0));
            assert!(!obs.surge && !obs.demand_rise && obs.findings.is_empty(), "{}", obs.summary());
            assert!((obs.total_baseline - 180.0).abs() < 20.0, "the baseline is the afternoon's: {}", obs.summary());
            assert!(obs.summary().contains("this time of day is usually 1.8"), "{}", obs.summary());
        }

        // 03:00, the usual sources at their night rate (5 each) and 40 new sources bringing
        // the total to 100 req/s: the day's mean, but five times what 03:00 brings.
        let mut without = detector();
        without.seed(&diurnal_history(false));
        assert!(without.season().is_none(), "history without times has no shape");
        let night = day3 + 3.0 * 3600.0;
        let (mut caught, mut missed) = (false, true);
        for s in 0..5 {
            let t = night + f64::from(s);
            let obs = seasonal.observe(&timed_sample(t, 5, 40));
            caught |= obs.surge;
            let plain = without.observe(&timed_sample(t, 5, 40));
            missed &= !plain.surge;
            assert!(obs.findings.iter().all(|f| !f.key.starts_with("198.51.100.")), "{}", obs.summary());
        }
        assert!(caught, "with the daily shape the night surge is one");
        assert!(missed, "the control: against a baseline of the whole day, 100 req/s is ordinary");
    }

    #[test]
    fn a_shape_read_again_replaces_the_old_one() {
        let mut d = detector();
        d.seed(&diurnal_history(true));
        assert!(d.season().unwrap().describe().contains("busiest at 15:00 UTC"));
        // Summer time ended: the users' day is the same, an hour later in UTC.
        let mut later = diurnal_history(true);
        for t in &mut later.total_at {
            *t += 3600.0;
        }
        let shape = later.daily_shape().expect("a shape");
        d.set_season(shape, 1_700_006_400.0 + 3.0 * 86_400.0);
        assert!(d.season().unwrap().describe().contains("busiest at 16:00 UTC"), "{}", d.season().unwrap().describe());
        assert!(diurnal_history(false).daily_shape().is_none(), "no times, no shape");
    }
}
