//! Arrival-rate forecasting: a set of online models fed one bucket at a time, the one with the
//! lowest recent error at the planning horizon chosen per series, and a band drawn from that
//! model's own recent errors.
//!
//! Models work on ln(1 + y/s), with s fixed from the first bucket: web traffic varies by
//! multiples between night and day, and on that scale errors are relative, the daily cycle
//! is closer to additive, and a band's width follows the level.
//!
//! A trend model is useful after a few buckets; the daily seasonal models (Holt-Winters and a
//! smoothed daily profile) once a day of history exists, a weekly one after a week. Nothing
//! here reads a clock: time is what callers pass.

mod errors;
pub mod holt_winters;
pub mod profile;

use errors::ErrorTracker;
use holt_winters::{HoltWinters, Params};
use profile::DailyProfile;

use crate::api::scaling_policy::Seasonality;

const DAY: f64 = 86_400.0;
/// The daily profile averages this many days, each time of day over this long either side of
/// it. Its level forgets half its weight in the planning horizon: a level slower than the
/// horizon misses the start of a burst the capacity must be ready for, a faster one chases
/// bucket noise.
const PROFILE_DAYS: usize = 7;
const PROFILE_SPREAD_SECS: f64 = 3600.0;
/// A model needs this many scored forecasts before it can be chosen over the trend model.
const MIN_SCORED: usize = 12;

/// A forecast for one future moment.
#[derive(Clone, Debug, PartialEq)]
pub struct Forecast {
    /// Point forecast (units/s).
    pub value: f64,
    /// The (1 − q) quantile.
    pub lower: f64,
    /// The q quantile: what the planner provisions for.
    pub upper: f64,
    /// Seconds ahead of the last observation.
    pub horizon_secs: f64,
    /// Which model made it.
    pub model: &'static str,
}

/// The models a forecaster chooses among.
enum Model {
    HoltWinters(HoltWinters),
    Profile(DailyProfile),
}

impl Model {
    fn period(&self) -> usize {
        match self {
            Model::HoltWinters(m) => m.period(),
            Model::Profile(m) => m.period(),
        }
    }

    fn ready(&self) -> bool {
        match self {
            Model::HoltWinters(m) => m.ready(),
            Model::Profile(m) => m.ready(),
        }
    }

    fn update(&mut self, z: f64) {
        match self {
            Model::HoltWinters(m) => m.update(z),
            Model::Profile(m) => m.update(z),
        }
    }

    fn forecast(&self, h: usize) -> f64 {
        match self {
            Model::HoltWinters(m) => m.forecast(h),
            Model::Profile(m) => m.forecast(h),
        }
    }
}

struct Candidate {
    name: &'static str,
    model: Model,
    errors: ErrorTracker,
}

impl Candidate {
    fn new(name: &'static str, model: Model) -> Self {
        Self { name, model, errors: ErrorTracker::default() }
    }
}

/// Settings of a [`Forecaster`].
#[derive(Clone, Copy, Debug)]
pub struct ForecastConfig {
    /// Bucket width in seconds; observations are averaged per bucket.
    pub step_secs: f64,
    /// The horizon errors are tracked at (the planning lead time), in seconds.
    pub horizon_secs: f64,
    /// Band quantile in (0, 1).
    pub quantile: f64,
    pub seasonality: Seasonality,
}

/// Online forecaster for one series.
pub struct Forecaster {
    cfg: ForecastConfig,
    horizon: usize,
    candidates: Vec<Candidate>,
    /// Index of the bucket being filled, and its running sum and count.
    open: Option<(i64, f64, u32)>,
    /// Index of the last bucket the models consumed.
    last_closed: Option<i64>,
    /// The last closed bucket's value, carried into buckets with no observation.
    last_value: Option<f64>,
    /// The scale s of the log transform, set by the first bucket.
    scale: Option<f64>,
}

impl Forecaster {
    pub fn new(cfg: ForecastConfig) -> Self {
        let step = cfg.step_secs.max(1.0);
        let horizon = ((cfg.horizon_secs / step).ceil() as usize).max(1);
        let hw = |alpha, beta, gamma, period| {
            Model::HoltWinters(HoltWinters::new(Params { alpha, beta, gamma, phi: 0.9 }, period))
        };
        let mut candidates = vec![Candidate::new("trend", hw(0.5, 0.1, 0.0, 0))];
        let day = (DAY / step).round() as usize;
        if matches!(cfg.seasonality, Seasonality::Daily | Seasonality::Weekly | Seasonality::Auto) && day >= 2 {
            candidates.push(Candidate::new("holt-winters-daily", hw(0.2, 0.01, 0.15, day)));
            candidates.push(Candidate::new("holt-winters-daily-fast", hw(0.5, 0.01, 0.15, day)));
            let spread = (PROFILE_SPREAD_SECS / step).round() as usize;
            let half_life = horizon as f64;
            let profile = DailyProfile::new(day, PROFILE_DAYS, spread, half_life);
            candidates.push(Candidate::new("daily-profile", Model::Profile(profile)));
        }
        if matches!(cfg.seasonality, Seasonality::Weekly | Seasonality::Auto) && day >= 2 {
            candidates.push(Candidate::new("holt-winters-weekly", hw(0.2, 0.01, 0.3, day * 7)));
        }
        Self {
            cfg: ForecastConfig { step_secs: step, ..cfg },
            horizon,
            candidates,
            open: None,
            last_closed: None,
            last_value: None,
            scale: None,
        }
    }

    /// Feeds one observation of the rate at time `t` (seconds). Observations must not go
    /// back in time; one that does is ignored.
    pub fn observe(&mut self, t: f64, rate: f64) {
        if !rate.is_finite() {
            return;
        }
        let idx = (t / self.cfg.step_secs).floor() as i64;
        match self.open {
            Some((open, sum, n)) if idx == open => self.open = Some((open, sum + rate, n + 1)),
            Some((open, _, _)) if idx < open => {}
            _ if self.last_closed.is_some_and(|c| idx <= c) => {}
            _ => {
                self.flush();
                if let (Some(last), Some(y)) = (self.last_closed, self.last_value) {
                    // Buckets with no observation carry the last value forward, so that
                    // seasonal positions stay aligned with the clock.
                    let longest = self.candidates.iter().map(|c| c.model.period()).max().unwrap_or(0) as i64;
                    for i in (last + 1..idx).take(longest as usize) {
                        self.close(i, y);
                    }
                }
                self.open = Some((idx, rate, 1));
            }
        }
    }

    /// Closes the bucket being filled now, instead of when the next bucket's first
    /// observation arrives. For replays, where buckets arrive whole.
    pub fn flush(&mut self) {
        if let Some((idx, sum, n)) = self.open.take() {
            self.close(idx, sum / f64::from(n));
        }
    }

    fn close(&mut self, idx: i64, y: f64) {
        self.last_closed = Some(idx);
        self.last_value = Some(y);
        // 5% of the first level: small enough that the transform is logarithmic across the
        // range seen in practice, large enough that an idle bucket is not minus infinity.
        let s = *self.scale.get_or_insert((y * 0.05).max(1e-3));
        let z = (y.max(0.0) / s).ln_1p();
        for c in &mut self.candidates {
            c.model.update(z);
            let next = c.model.ready().then(|| c.model.forecast(self.horizon));
            c.errors.record(self.horizon, z, next);
        }
    }

    /// The model currently trusted most: the lowest recent error at the horizon among models
    /// with enough scored forecasts, else the trend model once it is ready.
    fn best(&self) -> Option<&Candidate> {
        let scored = self
            .candidates
            .iter()
            .filter(|c| c.model.ready() && c.errors.samples() >= MIN_SCORED)
            .min_by(|a, b| a.errors.mae().unwrap_or(f64::MAX).total_cmp(&b.errors.mae().unwrap_or(f64::MAX)));
        scored.or_else(|| self.candidates.iter().find(|c| c.model.ready()))
    }

    /// Forecast of the rate `ahead_secs` after time `now`, or `None` without enough history.
    pub fn forecast(&self, now: f64, ahead_secs: f64) -> Option<Forecast> {
        let best = self.best()?;
        let last = self.last_closed?;
        // Buckets from the last closed one to the one containing now + ahead.
        let target = ((now + ahead_secs) / self.cfg.step_secs).floor() as i64;
        let h = (target - last).max(1) as usize;
        let s = self.scale?;
        let back = |z: f64| (s * z.exp_m1()).max(0.0);
        let z = best.model.forecast(h);
        // Errors were measured at the tracked horizon; widen or narrow like a random walk.
        let widen = (h as f64 / self.horizon as f64).sqrt();
        let q = self.cfg.quantile;
        let value = back(z);
        let upper = back(z + best.errors.quantile(q) * widen).max(value);
        let lower = back(z + best.errors.quantile(1.0 - q) * widen).min(value);
        Some(Forecast { value, lower, upper, horizon_secs: ahead_secs, model: best.name })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(seasonality: Seasonality) -> ForecastConfig {
        ForecastConfig { step_secs: 300.0, horizon_secs: 900.0, quantile: 0.9, seasonality }
    }

    fn daily(t: f64) -> f64 {
        100.0 + 60.0 * (t * std::f64::consts::TAU / DAY).sin()
    }

    #[test]
    fn no_forecast_without_history() {
        let f = Forecaster::new(cfg(Seasonality::Auto));
        assert!(f.forecast(0.0, 900.0).is_none());
    }

    #[test]
    fn trend_model_serves_early_then_seasonal_wins() {
        let mut f = Forecaster::new(cfg(Seasonality::Auto));
        let mut t = 0.0;
        while t < 3600.0 {
            f.observe(t, daily(t));
            t += 60.0;
        }
        assert_eq!(f.forecast(t, 900.0).unwrap().model, "trend");
        while t < 4.0 * DAY {
            f.observe(t, daily(t));
            t += 60.0;
        }
        let fc = f.forecast(t, 900.0).unwrap();
        assert!(fc.model.starts_with("holt-winters"), "{fc:?}");
        let want = daily(t + 900.0);
        assert!((fc.value - want).abs() / want < 0.05, "{fc:?} vs {want}");
        assert!(fc.lower <= fc.value && fc.value <= fc.upper);
    }

    #[test]
    fn on_a_noisy_daily_cycle_the_profile_errs_least() {
        // Eight days of the daily sine at 5-minute buckets, each bucket off by up to ±30% (a
        // seeded random sequence): one day's bucket says little about the next day's,
        // a week of them averaged over an hour says much.
        use rand::{SeedableRng, distr::Distribution, distr::StandardUniform, rngs::StdRng};
        let mut f = Forecaster::new(cfg(Seasonality::Daily));
        let mut rng = StdRng::seed_from_u64(7);
        for i in 0..8 * 288 {
            let u: f64 = StandardUniform.sample(&mut rng);
            let noise = 0.7 + 0.6 * u;
            let t = i as f64 * 300.0;
            f.observe(t, daily(t) * noise);
        }
        f.flush();
        let mae = |name: &str| f.candidates.iter().find(|c| c.name == name).and_then(|c| c.errors.mae()).unwrap();
        let profile = mae("daily-profile");
        for other in ["trend", "holt-winters-daily", "holt-winters-daily-fast"] {
            assert!(profile < mae(other), "daily-profile {profile} vs {other} {}", mae(other));
        }
        assert_eq!(f.forecast(8.0 * DAY, 900.0).unwrap().model, "daily-profile");
    }

    #[test]
    fn band_widens_with_noise() {
        let mut quiet = Forecaster::new(cfg(Seasonality::None));
        let mut noisy = Forecaster::new(cfg(Seasonality::None));
        for i in 0..500 {
            let t = i as f64 * 300.0;
            quiet.observe(t, 100.0);
            noisy.observe(t, if i % 2 == 0 { 70.0 } else { 130.0 });
        }
        let t = 500.0 * 300.0;
        let (q, n) = (quiet.forecast(t, 900.0).unwrap(), noisy.forecast(t, 900.0).unwrap());
        assert!(q.upper - q.lower < 1.0, "{q:?}");
        assert!(n.upper - n.lower > 20.0, "{n:?}");
    }
}
