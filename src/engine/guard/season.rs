//! A pool's daily shape, from Prometheus history of a day or more or from a day of watching
//! ([`ShapeLearner`]): how busy each time of day is against the day's mean. With it, every
//! baseline of a guard is kept in time-of-day-adjusted units, so the morning rise is expected
//! rather than judged against the night, a burst at 03:00 is judged against 03:00, and the
//! spread the baselines learn is that of the traffic around its daily cycle, not the cycle
//! itself.

const DAY: f64 = 86_400.0;
/// Bins of a quarter of an hour: finer than web traffic's daily shape changes, coarse enough
/// that history at the seeding query's step (at most 10 minutes) puts points in each.
pub const BINS: usize = 96;
const BIN_SECS: f64 = DAY / BINS as f64;
/// History must span nearly a day, and fill this share of the bins, to give a shape.
const MIN_SPAN_SECS: f64 = 23.0 * 3600.0;
const MIN_FILLED: f64 = 0.8;
/// Factors are kept within these bounds: an idle night would otherwise make every request at
/// 03:00 look like a multitude, and a dead bin divide by zero.
const MIN_FACTOR: f64 = 0.05;
const MAX_FACTOR: f64 = 20.0;

/// How busy each quarter hour of the day (UTC) is, as a multiple of the day's mean.
#[derive(Clone, Debug, PartialEq)]
pub struct DailyShape {
    factors: Vec<f64>,
}

impl DailyShape {
    /// The shape of `points` (seconds since the epoch, requests/s), or `None` when they span
    /// less than a day or leave too many times of day without a value.
    pub fn from_history(points: &[(f64, f64)]) -> Option<Self> {
        let finite: Vec<(f64, f64)> =
            points.iter().copied().filter(|(t, v)| t.is_finite() && v.is_finite() && *v >= 0.0).collect();
        let (first, last) = (finite.first()?.0, finite.last()?.0);
        if last - first < MIN_SPAN_SECS {
            return None;
        }
        let mut bins: Vec<Vec<f64>> = vec![Vec::new(); BINS];
        for (t, v) in finite {
            bins[bin_of(t)].push(v);
        }
        let filled = bins.iter().filter(|b| !b.is_empty()).count();
        if (filled as f64) < MIN_FILLED * BINS as f64 {
            return None;
        }
        // The median of each bin over the days: one odd day (an outage, a launch) does not
        // become the shape.
        let medians: Vec<Option<f64>> = bins
            .iter_mut()
            .map(|b| {
                (!b.is_empty()).then(|| {
                    b.sort_by(f64::total_cmp);
                    b[b.len() / 2]
                })
            })
            .collect();
        let filled_in: Vec<f64> = (0..BINS).map(|i| medians[i].unwrap_or_else(|| interpolate(&medians, i))).collect();
        // Each bin with its neighbours: the shape, not a quarter hour's noise.
        let smooth: Vec<f64> = (0..BINS)
            .map(|i| (filled_in[(i + BINS - 1) % BINS] + filled_in[i] + filled_in[(i + 1) % BINS]) / 3.0)
            .collect();
        let mean = smooth.iter().sum::<f64>() / BINS as f64;
        if mean <= 0.0 {
            return None;
        }
        Some(Self { factors: smooth.iter().map(|v| (v / mean).clamp(MIN_FACTOR, MAX_FACTOR)).collect() })
    }

    /// The factor of each quarter hour, from 00:00 UTC.
    pub fn factors(&self) -> &[f64] {
        &self.factors
    }

    /// A shape from its factors, as [`DailyShape::factors`] gives them; `None` unless there
    /// is one finite, positive factor per quarter hour.
    pub fn from_factors(factors: &[f64]) -> Option<Self> {
        (factors.len() == BINS && factors.iter().all(|f| f.is_finite() && *f > 0.0))
            .then(|| Self { factors: factors.iter().map(|f| f.clamp(MIN_FACTOR, MAX_FACTOR)).collect() })
    }

    /// How busy the time of day of `unix_secs` is against the day's mean, interpolated
    /// between the centres of the bins either side.
    pub fn factor(&self, unix_secs: f64) -> f64 {
        let pos = unix_secs.rem_euclid(DAY) / BIN_SECS - 0.5;
        let lo = pos.floor();
        let w = pos - lo;
        let i = (lo as i64).rem_euclid(BINS as i64) as usize;
        self.factors[i] * (1.0 - w) + self.factors[(i + 1) % BINS] * w
    }

    /// The shape in a few words: its busiest and quietest quarter hours (UTC).
    pub fn describe(&self) -> String {
        let by = |better: fn(f64, f64) -> bool| {
            (0..BINS).fold(0, |best, i| if better(self.factors[i], self.factors[best]) { i } else { best })
        };
        let (hi, lo) = (by(|a, b| a > b), by(|a, b| a < b));
        let clock = |i: usize| format!("{:02}:{:02}", i / 4, (i % 4) * 15);
        format!(
            "a daily shape, busiest at {} UTC ({:.1}x the day's mean), quietest at {} ({:.2}x)",
            clock(hi),
            self.factors[hi],
            clock(lo),
            self.factors[lo]
        )
    }
}

/// Days of closed quarter hours a [`ShapeLearner`] keeps.
const LEARN_DAYS: usize = 7;

/// Learns the daily shape from what a guard sees, for a guard without Prometheus history: the
/// mean rate of each quarter hour it has watched, over the last week.
#[derive(Clone, Debug, Default)]
pub struct ShapeLearner {
    /// The quarter hour being filled (its number since the epoch), its sum and count.
    open: Option<(i64, f64, u32)>,
    /// Closed quarter hours: their middle (seconds since the epoch) and mean rate, oldest first.
    closed: std::collections::VecDeque<(f64, f64)>,
}

impl ShapeLearner {
    /// Adds the pool's rate at `at`; true when that closed a quarter hour.
    pub fn add(&mut self, at: f64, rate: f64) -> bool {
        if !(at.is_finite() && rate.is_finite() && rate >= 0.0) {
            return false;
        }
        let idx = (at / BIN_SECS).floor() as i64;
        match &mut self.open {
            Some((open, sum, n)) if *open == idx => {
                *sum += rate;
                *n += 1;
                false
            }
            // Time went back (a clock step): the quarter hour being filled goes on.
            Some((open, _, _)) if idx < *open => false,
            _ => {
                let closed = self.open.take().map(|(open, sum, n)| {
                    if self.closed.len() == LEARN_DAYS * BINS {
                        self.closed.pop_front();
                    }
                    self.closed.push_back(((open as f64 + 0.5) * BIN_SECS, sum / f64::from(n)));
                });
                self.open = Some((idx, rate, 1));
                closed.is_some()
            }
        }
    }

    /// The shape of what was watched, once it spans a day ([`DailyShape::from_history`]).
    pub fn shape(&self) -> Option<DailyShape> {
        DailyShape::from_history(&self.closed.iter().copied().collect::<Vec<_>>())
    }
}

fn bin_of(unix_secs: f64) -> usize {
    ((unix_secs.rem_euclid(DAY) / BIN_SECS) as usize).min(BINS - 1)
}

/// The value of empty bin `i`: linear between the nearest filled bins either side, around the
/// clock.
fn interpolate(medians: &[Option<f64>], i: usize) -> f64 {
    let n = medians.len();
    let find = |step: usize| {
        (1..n).find_map(|d| {
            let j = (i + step * d) % n;
            medians[j].map(|v| (d, v))
        })
    };
    match (find(n - 1), find(1)) {
        (Some((db, vb)), Some((da, va))) => vb + (va - vb) * db as f64 / (db + da) as f64,
        _ => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A day from 20 req/s at 03:00 UTC to 180 at 15:00.
    fn daily(t: f64) -> f64 {
        100.0 - 80.0 * ((t.rem_euclid(DAY) / DAY - 0.125) * std::f64::consts::TAU).cos()
    }

    fn history(days: f64, step: f64) -> Vec<(f64, f64)> {
        let start = 1_700_006_400.0; // a midnight, UTC
        (0..(days * DAY / step) as usize).map(|i| start + i as f64 * step).map(|t| (t, daily(t))).collect()
    }

    #[test]
    fn two_days_give_the_shape_of_the_day() {
        let shape = DailyShape::from_history(&history(2.0, 300.0)).unwrap();
        // Peak and trough against the mean of 100; the three-bin smoothing shaves a little.
        for (t, want) in [(15.0 * 3600.0, 1.8), (3.0 * 3600.0, 0.2), (9.0 * 3600.0, 1.0), (21.0 * 3600.0, 1.0)] {
            let got = shape.factor(1_700_006_400.0 + 7.0 * DAY + t);
            assert!((got - want).abs() < 0.03, "at {}h: {got} against {want}", t / 3600.0);
        }
        assert!(shape.describe().contains("busiest at 15:00 UTC (1.8x"), "{}", shape.describe());
    }

    #[test]
    fn a_shape_survives_its_factors() {
        let shape = DailyShape::from_history(&history(2.0, 300.0)).unwrap();
        assert_eq!(DailyShape::from_factors(shape.factors()), Some(shape.clone()));
        assert!(DailyShape::from_factors(&shape.factors()[1..]).is_none(), "one short");
        let mut bad = shape.factors().to_vec();
        bad[7] = f64::NAN;
        assert!(DailyShape::from_factors(&bad).is_none());
        bad[7] = 0.0;
        assert!(DailyShape::from_factors(&bad).is_none());
    }

    #[test]
    fn too_little_history_gives_no_shape() {
        assert!(DailyShape::from_history(&history(0.9, 300.0)).is_none(), "less than a day");
        assert!(DailyShape::from_history(&[]).is_none());
        // A day and a half with most of every day missing: too few times of day.
        let sparse: Vec<(f64, f64)> = history(1.5, 300.0).into_iter().filter(|(t, _)| t % DAY < 0.5 * DAY).collect();
        assert!(DailyShape::from_history(&sparse).is_none());
        // Nothing but zeros.
        let idle: Vec<(f64, f64)> = history(2.0, 300.0).into_iter().map(|(t, _)| (t, 0.0)).collect();
        assert!(DailyShape::from_history(&idle).is_none());
    }

    #[test]
    fn a_learner_gives_the_shape_of_what_it_watched_once_it_spans_a_day() {
        let mut l = ShapeLearner::default();
        let start = 1_700_006_400.0;
        let mut closed = 0;
        // A sample a minute for 20 hours: no shape yet.
        let mut t = start;
        while t < start + 20.0 * 3600.0 {
            closed += usize::from(l.add(t, daily(t)));
            t += 60.0;
        }
        assert_eq!(closed, 79, "one quarter hour closes as the next begins");
        assert!(l.shape().is_none());
        // Garbage and a clock stepping back change nothing.
        assert!(!l.add(f64::NAN, 1.0) && !l.add(t, f64::INFINITY) && !l.add(start, 5.0));
        while t < start + 8.0 * DAY {
            l.add(t, daily(t));
            t += 60.0;
        }
        let shape = l.shape().expect("a shape after a day");
        assert!((shape.factor(start + 15.0 * 3600.0) - 1.8).abs() < 0.03, "{}", shape.describe());
        assert_eq!(l.closed.len(), LEARN_DAYS * BINS, "a week is kept");
    }

    #[test]
    fn gaps_are_bridged_and_the_factor_is_continuous() {
        // A week at a 10-minute step (the seeding query's for a 168h window) with an hour
        // missing every day.
        let h: Vec<(f64, f64)> = history(7.0, 600.0)
            .into_iter()
            .filter(|(t, _)| !(6.0..7.0).contains(&(t.rem_euclid(DAY) / 3600.0)))
            .collect();
        let shape = DailyShape::from_history(&h).unwrap();
        let at = |hours: f64| shape.factor(1_700_006_400.0 + hours * 3600.0);
        assert!((at(6.5) - daily(6.5 * 3600.0) / 100.0).abs() < 0.05, "{}", at(6.5));
        // No jump from one second to the next, midnight included.
        for s in (0..86_400).step_by(60) {
            let (a, b) = (at(f64::from(s) / 3600.0), at(f64::from(s + 60) / 3600.0));
            assert!((a - b).abs() < 0.01, "{s}: {a} -> {b}");
        }
    }
}
