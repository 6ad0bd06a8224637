//! Tracks a model's errors at a fixed horizon: the forecast made `h` buckets ago for the
//! bucket just closed, against what arrived.

use std::collections::VecDeque;

/// How many recent errors the band is drawn from: about a day at 5-minute buckets.
const KEEP: usize = 288;
/// Weight of the newest error in the running mean absolute error used to pick a model.
const EWMA_WEIGHT: f64 = 0.03;

#[derive(Clone, Debug, Default)]
pub struct ErrorTracker {
    /// Forecasts waiting for their bucket to close, oldest first.
    pending: VecDeque<f64>,
    /// Recent signed errors (actual − forecast).
    recent: VecDeque<f64>,
    /// Running mean absolute error; `None` until the first error is known.
    mae: Option<f64>,
}

impl ErrorTracker {
    /// Records the bucket that just closed and the forecast now made for `h` buckets ahead.
    /// Call once per bucket, after the forecast for this bucket (made `h` buckets ago) is due.
    pub fn record(&mut self, h: usize, actual: f64, new_forecast: Option<f64>) {
        if self.pending.len() >= h
            && let Some(f) = self.pending.pop_front()
            && f.is_finite()
        {
            let e = actual - f;
            self.mae = Some(match self.mae {
                None => e.abs(),
                Some(m) => m + EWMA_WEIGHT * (e.abs() - m),
            });
            if self.recent.len() == KEEP {
                self.recent.pop_front();
            }
            self.recent.push_back(e);
        }
        self.pending.push_back(new_forecast.unwrap_or(f64::NAN));
    }

    pub fn mae(&self) -> Option<f64> {
        self.mae
    }

    pub fn samples(&self) -> usize {
        self.recent.len()
    }

    /// The `q` quantile of recent errors (0 with none yet).
    pub fn quantile(&self, q: f64) -> f64 {
        if self.recent.is_empty() {
            return 0.0;
        }
        let mut v: Vec<f64> = self.recent.iter().copied().collect();
        v.sort_by(f64::total_cmp);
        let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
        let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
        v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_forecasts_with_the_bucket_they_were_for() {
        let mut t = ErrorTracker::default();
        // h = 2: the forecast made at bucket 0 is for bucket 2.
        t.record(2, 0.0, Some(10.0));
        t.record(2, 0.0, Some(20.0));
        assert_eq!(t.mae(), None);
        t.record(2, 13.0, Some(0.0));
        assert_eq!(t.mae(), Some(3.0));
        t.record(2, 20.0, Some(0.0));
        assert_eq!(t.samples(), 2);
    }

    #[test]
    fn quantiles_interpolate() {
        let mut t = ErrorTracker::default();
        for i in 0..=10 {
            t.record(1, i as f64, Some(0.0));
        }
        // h = 1: bucket i is scored against the forecast of 0 made at bucket i - 1.
        assert_eq!(t.samples(), 10);
        assert_eq!(t.quantile(0.0), 1.0);
        assert_eq!(t.quantile(1.0), 10.0);
        assert!((t.quantile(0.5) - 5.5).abs() < 1e-9);
    }
}
