//! Rolling-origin evaluation of the forecaster on a trace.
//!
//! At every bucket after the warm-up, the forecaster (fed everything up to that bucket and
//! nothing after) forecasts the bucket `horizon` ahead. Scores: MAPE over non-zero actuals;
//! MASE against a naive forecast on the same points; and how often the actual falls inside the
//! band. The naive forecast is the seasonal one (the same bucket one day earlier) on a trace of
//! two days or more, and the last value seen on a shorter one, which has no day to repeat.
//!
//! MAPE is also given without the trace's holes: buckets below a tenth of the median of the
//! day before them (of the trace so far, on a short one), where the logging failed rather than
//! demand. One such bucket with two requests in fifteen minutes adds an APE of tens of
//! thousands of percent, which outweighs thousands of ordinary points; what makes a bucket a
//! hole depends on the trace alone, never on the forecast.

use serde::Serialize;

use super::trace::Trace;
use crate::{
    api::scaling_policy::Seasonality,
    engine::forecast::{ForecastConfig, Forecaster},
};

/// Backtest settings.
#[derive(Clone, Copy, Debug)]
pub struct BacktestConfig {
    pub horizon_secs: f64,
    pub step_secs: f64,
    pub quantile: f64,
    /// History before scoring starts; `None` for a day on a trace of two days or more, else
    /// [`SHORT_WARMUP_SECS`].
    pub warmup_secs: Option<f64>,
    pub seasonality: Seasonality,
}

/// Warm-up on a trace shorter than two days: the trend model is useful after half an hour.
pub const SHORT_WARMUP_SECS: f64 = 1800.0;

/// Backtest scores.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct BacktestReport {
    /// Mean absolute percentage error over non-zero actuals, in percent.
    pub mape: f64,
    /// MAPE over the non-zero actuals that are not holes in the trace.
    pub mape_without_holes: f64,
    /// The oracle's MAPE on the same points as `mape_without_holes`: the bucket noise that
    /// figure is to be read against.
    pub noise_floor_without_holes: f64,
    /// Buckets scored that were holes: below [`HOLE_FRACTION`] of the median of the day before.
    pub holes: usize,
    /// Median absolute percentage error, in percent: MAPE without its tail of near-zero actuals.
    pub mdape: f64,
    /// MAPE, on the same points, of an oracle that sees the future: the mean of the buckets
    /// either side of the actual. It measures the bucket-to-bucket noise of the trace, which
    /// no forecaster removes; a MAPE near it is as good as this bucket width allows.
    pub noise_floor_mape: f64,
    /// Mean absolute scaled error against the naive forecast named in `baseline` (< 1 beats it).
    pub mase: f64,
    /// The naive forecast MASE is scaled by.
    pub baseline: Baseline,
    /// Fraction of actuals inside [lower, upper].
    pub coverage: f64,
    /// The band's nominal coverage, 2q − 1.
    pub nominal_coverage: f64,
    /// Fraction of actuals at or below the upper edge (nominally q).
    pub upper_coverage: f64,
    /// Points scored.
    pub points: usize,
    /// Points left out of MAPE because the actual was zero.
    pub zero_actuals: usize,
    pub horizon_secs: f64,
    pub step_secs: f64,
    /// How often each model made the scored forecast.
    pub models: Vec<(String, usize)>,
    /// The points with the largest percentage errors, worst first. A mean of percentages is
    /// ruled by a few actuals near zero (a logging outage, a maintenance window); these name
    /// them, so a reader can tell a poor forecaster from a trace with holes.
    pub worst: Vec<WorstPoint>,
    /// Percentage points of MAPE that the `worst` points account for.
    pub worst_share: f64,
}

/// The naive forecast MASE is measured against.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Baseline {
    /// The same bucket a day earlier, on a trace of two days or more.
    SeasonalNaive,
    /// The last bucket seen, on a trace shorter than two days.
    Naive,
}

impl Baseline {
    /// What the forecast is compared with, in words.
    pub fn describe(self) -> &'static str {
        match self {
            Baseline::SeasonalNaive => "the same bucket one day earlier",
            Baseline::Naive => "the last bucket seen: the trace is shorter than two days",
        }
    }
}

/// One scored point, for the list of the worst.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct WorstPoint {
    /// Start of the forecast bucket, seconds since the epoch.
    pub time: f64,
    /// Actual and forecast rate, per second.
    pub actual: f64,
    pub forecast: f64,
    /// Absolute percentage error, in percent.
    pub ape: f64,
}

/// A bucket below this fraction of the median of the day before it is a hole in the trace.
pub const HOLE_FRACTION: f64 = 0.1;

/// How many of the worst points a report names.
const WORST: usize = 5;

/// Runs the backtest; `progress` is called with the fraction done now and then.
pub fn run(trace: &Trace, cfg: BacktestConfig, mut progress: impl FnMut(f64)) -> Option<BacktestReport> {
    let step = cfg.step_secs.max(trace.interval);
    let buckets = trace.buckets(step);
    let h = ((cfg.horizon_secs / step).round() as usize).max(1);
    let day = (86_400.0 / step).round() as usize;
    let seasonal = buckets.len() >= 2 * day;
    // The naive forecast for bucket `target` is bucket `target - lag`.
    let (lag, baseline, default_warmup) =
        if seasonal { (day, Baseline::SeasonalNaive, 86_400.0) } else { (h, Baseline::Naive, SHORT_WARMUP_SECS) };
    let warmup = (cfg.warmup_secs.unwrap_or(default_warmup) / step).ceil() as usize;
    let mut f = Forecaster::new(ForecastConfig {
        step_secs: step,
        horizon_secs: h as f64 * step,
        quantile: cfg.quantile,
        seasonality: cfg.seasonality,
    });
    let (mut ape, mut ae, mut ae_naive) = (Vec::new(), 0.0, 0.0);
    let (mut kept_ape_sum, mut holes, mut kept_floor_sum) = (0.0, 0usize, 0.0);
    let mut before: Vec<f64> = Vec::with_capacity(day);
    let mut worst: Vec<WorstPoint> = Vec::with_capacity(WORST + 1);
    let mut floor_ape = 0.0;
    let (mut inside, mut below, mut points, mut zeros) = (0usize, 0usize, 0usize, 0usize);
    let mut models: Vec<(String, usize)> = Vec::new();
    for i in 0..buckets.len() {
        let t = i as f64 * step;
        f.observe(t, buckets[i]);
        f.flush();
        if i % 512 == 0 {
            progress(i as f64 / buckets.len() as f64);
        }
        let target = i + h;
        if i < warmup || target >= buckets.len() || target < lag {
            continue;
        }
        let Some(fc) = f.forecast(t, h as f64 * step) else { continue };
        let y = buckets[target];
        points += 1;
        ae += (y - fc.value).abs();
        ae_naive += (y - buckets[target - lag]).abs();
        if y > 0.0 {
            let e = (y - fc.value).abs() / y;
            ape.push(e);
            before.clear();
            before.extend_from_slice(&buckets[target.saturating_sub(day)..target]);
            let mid = before.len() / 2;
            let (_, median, _) = before.select_nth_unstable_by(mid, f64::total_cmp);
            let hole = y < HOLE_FRACTION * *median;
            if hole {
                holes += 1;
            } else {
                kept_ape_sum += e;
            }
            if worst.len() < WORST || worst.last().is_some_and(|w| 100.0 * e > w.ape) {
                let time = trace.start + target as f64 * step;
                worst.push(WorstPoint { time, actual: y, forecast: fc.value, ape: 100.0 * e });
                worst.sort_by(|a, b| b.ape.total_cmp(&a.ape));
                worst.truncate(WORST);
            }
            let neighbours = buckets.get(target + 1).map_or(buckets[target - 1], |n| (buckets[target - 1] + n) / 2.0);
            let floor = (y - neighbours).abs() / y;
            floor_ape += floor;
            if !hole {
                kept_floor_sum += floor;
            }
        } else {
            zeros += 1;
        }
        inside += usize::from(fc.lower <= y && y <= fc.upper);
        below += usize::from(y <= fc.upper);
        match models.iter_mut().find(|(m, _)| m == fc.model) {
            Some((_, n)) => *n += 1,
            None => models.push((fc.model.to_owned(), 1)),
        }
    }
    progress(1.0);
    if points == 0 || ape.is_empty() {
        return None;
    }
    let mape = 100.0 * ape.iter().sum::<f64>() / ape.len() as f64;
    let worst_share = worst.iter().map(|w| w.ape).sum::<f64>() / ape.len() as f64;
    let noise_floor_mape = 100.0 * floor_ape / ape.len() as f64;
    ape.sort_by(f64::total_cmp);
    let kept = (ape.len() - holes).max(1) as f64;
    let mape_without_holes = 100.0 * kept_ape_sum / kept;
    let noise_floor_without_holes = 100.0 * kept_floor_sum / kept;
    Some(BacktestReport {
        mape,
        mape_without_holes,
        noise_floor_without_holes,
        holes,
        mdape: 100.0 * ape[ape.len() / 2],
        noise_floor_mape,
        mase: if ae_naive > 0.0 { ae / ae_naive } else { f64::INFINITY },
        baseline,
        coverage: inside as f64 / points as f64,
        nominal_coverage: 2.0 * cfg.quantile - 1.0,
        upper_coverage: below as f64 / points as f64,
        points,
        zero_actuals: zeros,
        horizon_secs: h as f64 * step,
        step_secs: step,
        models,
        worst,
        worst_share,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Four days of a daily sine, one row a minute; `outage` minutes log almost nothing.
    fn sine(outage: std::ops::Range<i64>) -> Trace {
        let rows: String = (0..(4 * 1440))
            .map(|m| {
                let t = m as f64 * 60.0;
                let v = if outage.contains(&m) {
                    1.0
                } else {
                    6000.0 + 3000.0 * (t * std::f64::consts::TAU / 86_400.0).sin()
                };
                format!("{},{v}\n", t as i64)
            })
            .collect();
        Trace::parse("sine", &rows).unwrap()
    }

    fn cfg() -> BacktestConfig {
        BacktestConfig {
            horizon_secs: 900.0,
            step_secs: 300.0,
            quantile: 0.9,
            warmup_secs: None,
            seasonality: Seasonality::Auto,
        }
    }

    #[test]
    fn a_logging_outage_is_named_among_the_worst_points() {
        // Minutes 4000..4010 of the third day: two 5-minute buckets at almost zero.
        let r = run(&sine(4000..4010), cfg(), |_| {}).unwrap();
        assert_eq!(r.worst.len(), WORST);
        let mut outage: Vec<f64> = r.worst[..2].iter().map(|w| w.time).collect();
        outage.sort_by(f64::total_cmp);
        assert_eq!(outage, [4000.0 * 60.0, 4005.0 * 60.0], "{:?}", r.worst);
        assert!(r.worst.windows(2).all(|w| w[0].ape >= w[1].ape));
        // Those two points carry most of the mean, and are the holes left out of the other.
        assert!(r.worst_share > 0.9 * r.mape && r.mdape < 2.0, "{r:?}");
        assert_eq!(r.holes, 2, "{r:?}");
        assert!(r.mape_without_holes < 2.0, "{r:?}");
        // The buckets beside the holes keep a hole as a neighbour, so the oracle is a little off there.
        assert!(r.noise_floor_without_holes < 1.0 && r.noise_floor_mape > 100.0, "{r:?}");
    }

    #[test]
    fn a_clean_daily_cycle_is_forecast_well() {
        let r = run(&sine(0..0), cfg(), |_| {}).unwrap();
        assert!(r.mape < 2.0, "{r:?}");
        assert_eq!((r.holes, r.mape_without_holes), (0, r.mape), "the night's low is no hole: {r:?}");
        assert!(r.noise_floor_mape < 0.1, "a smooth curve has almost no bucket-to-bucket noise: {r:?}");
        assert!(r.points > 500);
    }

    #[test]
    fn a_trace_shorter_than_two_days_is_scored_against_the_last_value() {
        // One hour, one row a minute, climbing steadily: the trend model should beat repeating
        // the last value, which lags the climb by the whole horizon.
        let rows: String = (0..60).map(|m| format!("{},{}\n", m * 60, 600 + 10 * m)).collect();
        let trace = Trace::parse("ramp", &rows).unwrap();
        let cfg = BacktestConfig { horizon_secs: 300.0, step_secs: 60.0, ..cfg() };
        let r = run(&trace, cfg, |_| {}).unwrap();
        assert_eq!(r.baseline, Baseline::Naive);
        // Scored from the end of the 30-minute warm-up to the last bucket with a target.
        assert_eq!(r.points, 60 - 30 - 5, "{r:?}");
        assert!(r.mase < 0.8 && r.mape < 5.0, "{r:?}");
        let long = run(&sine(0..0), cfg, |_| {}).unwrap();
        assert_eq!(long.baseline, Baseline::SeasonalNaive);
    }
}
