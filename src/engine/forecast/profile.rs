//! A local level over a smoothed daily profile.
//!
//! The profile is the mean of the last few days at each time of day, smoothed over the
//! neighbouring buckets: one day's bucket is mostly noise, the average of a week of them,
//! spread over an hour, is the shape of the day. The level is an exponentially weighted mean
//! of what arrives less that shape, so a day busier or quieter than the profile's days shifts
//! the whole forecast within a few buckets, and the shape says where it goes next.
//!
//! Holt-Winters learns the same shape one noisy bucket at a time; this model forecasts a
//! bursty series better and needs no seasonal smoothing constant, at the cost of a few days'
//! history kept in memory (a week of buckets).

use std::collections::VecDeque;

/// One daily-profile model.
#[derive(Clone, Debug)]
pub struct DailyProfile {
    /// Buckets in a day.
    period: usize,
    /// Days of history the profile averages.
    days: usize,
    /// Buckets either side of a time of day that its profile value is averaged over.
    spread: usize,
    /// Weight of the newest bucket in the level.
    alpha: f64,
    /// The last `days × period` buckets, oldest first.
    history: VecDeque<f64>,
    /// Per time of day, the sum of the values in `history`, and how many there are.
    sums: Vec<(f64, u32)>,
    /// Per time of day, the mean of `sums` over the `spread` either side: the profile. Kept up
    /// to date as buckets arrive, so that a forecast costs one lookup.
    smooth: Vec<f64>,
    level: Option<f64>,
    /// Buckets seen.
    seen: usize,
}

impl DailyProfile {
    /// `period` buckets a day, a profile over `days` days spread over `spread` buckets either
    /// side, and a level that forgets half its weight every `half_life` buckets.
    pub fn new(period: usize, days: usize, spread: usize, half_life: f64) -> Self {
        let days = days.max(1);
        Self {
            period,
            days,
            spread: spread.min(period / 2),
            alpha: 1.0 - 0.5f64.powf(1.0 / half_life.max(f64::MIN_POSITIVE)),
            history: VecDeque::with_capacity(days * period),
            sums: vec![(0.0, 0); period],
            smooth: vec![0.0; period],
            level: None,
            seen: 0,
        }
    }

    pub fn period(&self) -> usize {
        self.period
    }

    /// A full day is needed before the profile has a value at every time of day.
    pub fn ready(&self) -> bool {
        self.period > 0 && self.seen > self.period
    }

    /// The profile at bucket number `idx` (its time of day is `idx mod period`).
    fn shape(&self, idx: usize) -> f64 {
        self.smooth[idx % self.period]
    }

    /// Adds `delta` to the sum at `slot` (one value in or out of the history) and carries the
    /// change of that slot's mean into the profile around it.
    fn add(&mut self, slot: usize, delta: f64, count: i32) {
        let p = self.period;
        let (s, c) = &mut self.sums[slot];
        let before = if *c == 0 { 0.0 } else { *s / f64::from(*c) };
        *s += delta;
        *c = c.saturating_add_signed(count);
        let after = if *c == 0 { 0.0 } else { *s / f64::from(*c) };
        // Before every slot has a value (the first day) the profile is not used; from then on
        // each entry is the plain mean of the 2·spread + 1 slot means around it.
        let share = (after - before) / (2 * self.spread + 1) as f64;
        for k in (p + slot - self.spread)..=(p + slot + self.spread) {
            self.smooth[k % p] += share;
        }
    }

    /// Feeds the value of the bucket just closed.
    pub fn update(&mut self, y: f64) {
        if self.period == 0 {
            return;
        }
        let idx = self.seen;
        self.seen += 1;
        let slot = idx % self.period;
        if self.history.len() == self.days * self.period
            && let Some(old) = self.history.pop_front()
        {
            // The value leaving is from the same time of day as the one arriving.
            self.add(slot, -old, -1);
        }
        // The level is measured against the profile before this bucket joins it.
        if idx >= self.period {
            let deseasoned = y - self.shape(idx);
            self.level = Some(match self.level {
                None => deseasoned,
                Some(l) => l + self.alpha * (deseasoned - l),
            });
        }
        self.history.push_back(y);
        self.add(slot, y, 1);
    }

    /// Forecast for the bucket `h` buckets after the last one fed (h ≥ 1).
    pub fn forecast(&self, h: usize) -> f64 {
        self.level.unwrap_or(0.0) + self.shape(self.seen - 1 + h)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// The profile kept up to date bucket by bucket equals the one computed from scratch
        /// from the history: the mean over the spread of each time of day's mean.
        #[test]
        fn incremental_profile_matches_a_recomputation(
            ys in prop::collection::vec(0.0f64..10.0, 1..200),
            period in 2usize..12,
            days in 1usize..4,
            spread in 0usize..4,
        ) {
            let mut m = DailyProfile::new(period, days, spread, 3.0);
            for &y in &ys {
                m.update(y);
            }
            if ys.len() < period {
                return Ok(());
            }
            let kept = &ys[ys.len().saturating_sub(days * period)..];
            let first = ys.len() - kept.len();
            let mean_at = |slot: usize| {
                let v: Vec<f64> = kept.iter().enumerate().filter(|(i, _)| (first + i) % period == slot).map(|(_, y)| *y).collect();
                v.iter().sum::<f64>() / v.len() as f64
            };
            let spread = m.spread;
            for slot in 0..period {
                let want = (period + slot - spread..=period + slot + spread).map(|k| mean_at(k % period)).sum::<f64>()
                    / (2 * spread + 1) as f64;
                prop_assert!((m.smooth[slot] - want).abs() < 1e-9, "slot {}: {} vs {}", slot, m.smooth[slot], want);
            }
        }
    }

    fn wave(i: usize, period: usize) -> f64 {
        10.0 + 3.0 * (i as f64 * std::f64::consts::TAU / period as f64).sin()
    }

    #[test]
    fn learns_a_cycle_and_follows_a_shift_in_level() {
        let period = 48;
        let mut m = DailyProfile::new(period, 7, 1, 2.0);
        for i in 0..period * 3 {
            m.update(wave(i, period));
        }
        assert!(m.ready());
        let n = period * 3;
        for h in 1..=period {
            // Averaging three buckets flattens a sine a little: within 0.1 of 3.
            assert!((m.forecast(h) - wave(n - 1 + h, period)).abs() < 0.1, "h={h}");
        }
        // A day twice as busy, in log terms a constant step up: the level takes it.
        for i in n..n + 12 {
            m.update(wave(i, period) + 1.0);
        }
        let want = wave(n + 12, period) + 1.0;
        assert!((m.forecast(1) - want).abs() < 0.1, "{} vs {want}", m.forecast(1));
    }

    #[test]
    fn not_ready_before_one_day_and_forgets_old_days() {
        let mut m = DailyProfile::new(4, 2, 0, 1.0);
        for _ in 0..4 {
            m.update(1.0);
        }
        assert!(!m.ready());
        for _ in 0..8 {
            m.update(5.0);
        }
        // Two days of 5 have pushed the day of 1 out of the profile entirely.
        assert_eq!(m.sums.iter().map(|&(s, c)| s / f64::from(c)).collect::<Vec<_>>(), [5.0; 4]);
        assert_eq!(m.smooth, [5.0; 4]);
        // The level measured the step up against the old profile; it fades as the profile
        // now explains the 5s by itself.
        for _ in 0..40 {
            m.update(5.0);
        }
        assert!((m.forecast(1) - 5.0).abs() < 1e-9, "{}", m.forecast(1));
    }
}
