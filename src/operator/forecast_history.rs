//! A new planner's forecaster starts from the arrival rate's Prometheus history, not from
//! nothing. Without it, every operator restart (a deploy, a drained node) and every edit of a
//! policy would leave levee forecasting from the trend alone for the next day, and without
//! its weekly cycle for a week.
//!
//! The history is the policy's own arrival-rate queries, summed, evaluated over the window the
//! policy's seasonality needs, one day per range query (Prometheus refuses more than 11,000
//! points a query; a day at the forecaster's minute is 1,440).

use std::collections::BTreeMap;

use crate::{
    api::{
        ScalingPolicySpec,
        scaling_policy::{Seasonality, SignalRole},
    },
    signals::{SignalError, prometheus::Prometheus},
};

const DAY: i64 = 86_400;

/// Why no history was read.
#[derive(Debug, thiserror::Error)]
pub enum NoHistory {
    /// An arrival-rate signal is not a Prometheus query (a queue's publish rate has no
    /// history to ask for).
    #[error("arrival-rate signal {0} is not a Prometheus query")]
    NotPrometheus(String),
    #[error("the policy has no arrival-rate signal")]
    NoArrivalRate,
    #[error("arrival-rate signal {0}: no Prometheus URL (set prometheus.url or --prometheus-url)")]
    NoUrl(String),
    #[error(transparent)]
    Query(#[from] SignalError),
}

/// Seconds of history the forecaster's models need before they serve: the trend model half
/// an hour, the daily ones a day and more (the daily profile averages a week), the weekly one
/// a week and a day.
pub fn window_secs(seasonality: Seasonality) -> i64 {
    match seasonality {
        Seasonality::None => 2 * 3600,
        Seasonality::Daily => 7 * DAY,
        Seasonality::Weekly | Seasonality::Auto => 8 * DAY,
    }
}

/// The summed arrival rate over the window before `now` (seconds since the epoch), every
/// `step_secs`, oldest first: only the times at which every arrival-rate query has a value.
///
/// # Errors
/// An arrival-rate signal that is not a Prometheus query, or a query that fails (unreachable,
/// refused, more than one series).
pub async fn arrival_history(
    spec: &ScalingPolicySpec,
    default_url: Option<&str>,
    now: i64,
    step_secs: f64,
) -> Result<Vec<(f64, f64)>, NoHistory> {
    let arrivals: Vec<_> = spec.signals.iter().filter(|s| s.role == SignalRole::ArrivalRate).collect();
    if arrivals.is_empty() {
        return Err(NoHistory::NoArrivalRate);
    }
    let start = now - window_secs(spec.forecast.seasonality);
    // Per time (whole seconds): the sum so far and how many queries had a value.
    let mut sums: BTreeMap<i64, (f64, usize)> = BTreeMap::new();
    for s in &arrivals {
        let p = s.prometheus.as_ref().ok_or_else(|| NoHistory::NotPrometheus(s.name.clone()))?;
        let url = p.url.as_deref().or(default_url).ok_or_else(|| NoHistory::NoUrl(s.name.clone()))?;
        let prom = Prometheus::new(url)?;
        let mut from = start;
        while from < now {
            let to = (from + DAY).min(now);
            let samples = match prom.range(&p.query, from, to, step_secs).await {
                Ok(samples) => samples,
                // A query with no data that far back (a new service, a short retention) is
                // history that begins later, not a failure.
                Err(SignalError::NoData { .. }) => Vec::new(),
                Err(e) => return Err(e.into()),
            };
            for sample in samples.into_iter().filter(|x| x.value.is_finite()) {
                let at = sample.timestamp.round() as i64;
                // Chunks share their edges: count each time once per query.
                if at == to && to != now {
                    continue;
                }
                let e = sums.entry(at).or_insert((0.0, 0));
                e.0 += sample.value;
                e.1 += 1;
            }
            from = to;
        }
    }
    let complete = sums.into_iter().filter(|(_, (_, n))| *n == arrivals.len());
    Ok(complete.map(|(t, (v, _))| (t as f64, v)).collect())
}
