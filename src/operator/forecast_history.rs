//! A new planner's forecaster starts from the arrival rate's Prometheus history, not from
//! nothing. Without it, every operator restart (a deploy, a drained node) and every edit of a
//! policy would leave levee forecasting from the trend alone for the next day, and without
//! its weekly cycle for a week.
//!
//! The history is the policy's own arrival-rate queries, summed, evaluated over the window the
//! policy's seasonality needs, one day per range query (Prometheus refuses more than 11,000
//! points a query; a day at the forecaster's minute is 1,440).

use std::collections::BTreeMap;

use futures::{StreamExt as _, TryStreamExt as _};

use crate::{
    api::{
        ScalingPolicySpec,
        scaling_policy::{Seasonality, SignalRole},
    },
    signals::{
        SignalError,
        prometheus::{Prometheus, Sample},
    },
};

const DAY: i64 = 86_400;

/// Range queries in flight at once while a planner warms.
const CONCURRENT_QUERIES: usize = 4;

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
    // Every (query, day) to ask for. They are asked a few at a time: one after another, eight
    // days of a slow Prometheus held up the policy's first decision eight times as long.
    let mut chunks = Vec::new();
    for s in &arrivals {
        let p = s.prometheus.as_ref().ok_or_else(|| NoHistory::NotPrometheus(s.name.clone()))?;
        let url = p.url.as_deref().or(default_url).ok_or_else(|| NoHistory::NoUrl(s.name.clone()))?;
        let prom = Prometheus::new(url)?;
        let mut from = start;
        while from < now {
            let to = (from + DAY).min(now);
            chunks.push((prom.clone(), p.query.clone(), from, to));
            from = to;
        }
    }
    let days: Vec<(i64, Vec<Sample>)> = futures::stream::iter(chunks)
        .map(|(prom, query, from, to)| async move {
            match prom.range(&query, from, to, step_secs).await {
                Ok(samples) => Ok((to, samples)),
                // A query with no data that far back (a new service, a short retention) is
                // history that begins later, not a failure.
                Err(SignalError::NoData { .. }) => Ok((to, Vec::new())),
                Err(e) => Err(e),
            }
        })
        .buffer_unordered(CONCURRENT_QUERIES)
        .try_collect()
        .await?;
    // Per time (whole seconds): the sum so far and how many queries had a value.
    let mut sums: BTreeMap<i64, (f64, usize)> = BTreeMap::new();
    for (to, samples) in days {
        for sample in samples.into_iter().filter(|x| x.value.is_finite()) {
            let at = sample.timestamp.round() as i64;
            // Days share their edges: count each time once per query.
            if at == to && to != now {
                continue;
            }
            let e = sums.entry(at).or_insert((0.0, 0));
            e.0 += sample.value;
            e.1 += 1;
        }
    }
    let complete = sums.into_iter().filter(|(_, (_, n))| *n == arrivals.len());
    Ok(complete.map(|(t, (v, _))| (t as f64, v)).collect())
}

#[cfg(test)]
mod tests {
    use std::{
        collections::HashMap,
        sync::{
            Arc,
            atomic::{AtomicUsize, Ordering},
        },
        time::Duration,
    };

    use axum::{
        Json, Router,
        extract::{Query, State},
        routing::get,
    };

    use super::*;

    /// Range queries asked, and the most in flight at once.
    #[derive(Default)]
    struct Asked {
        in_flight: AtomicUsize,
        most: AtomicUsize,
        total: AtomicUsize,
    }

    /// Answers `query_range` as Prometheus does, slowly: the query `a` is 2 everywhere, any
    /// other 3.
    async fn query_range(
        State(asked): State<Arc<Asked>>,
        Query(q): Query<HashMap<String, String>>,
    ) -> Json<serde_json::Value> {
        let now = asked.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        asked.most.fetch_max(now, Ordering::SeqCst);
        asked.total.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let num = |k: &str| q[k].parse::<f64>().unwrap();
        let value = if q["query"] == "a" { "2" } else { "3" };
        let (start, end, step) = (num("start"), num("end"), num("step"));
        let values: Vec<serde_json::Value> = (0..)
            .map(|i| start + f64::from(i) * step)
            .take_while(|t| *t <= end)
            .map(|t| serde_json::json!([t, value]))
            .collect();
        asked.in_flight.fetch_sub(1, Ordering::SeqCst);
        Json(serde_json::json!({
            "status": "success",
            "data": { "resultType": "matrix", "result": [{ "metric": {}, "values": values }] }
        }))
    }

    #[tokio::test]
    async fn a_week_of_two_queries_is_read_a_few_days_at_a_time_and_summed_once_per_time() {
        let asked = Arc::new(Asked::default());
        let app = Router::new().route("/api/v1/query_range", get(query_range)).with_state(asked.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let spec: ScalingPolicySpec = serde_saphyr::from_str(
            r#"
target: { deployment: { name: api } }
signals:
  - { name: web, role: ArrivalRate, prometheus: { query: "a" } }
  - { name: api, role: ArrivalRate, prometheus: { query: "b" } }
capacity: { unitsPerReplica: 10 }
bounds: { minReplicas: 1, maxReplicas: 50 }
forecast: { seasonality: Daily }
"#,
        )
        .unwrap();
        let now = 1_800_000_000;
        let history = arrival_history(&spec, Some(&url), now, 60.0).await.unwrap();
        // Seven days of minutes, both ends included; each time once, with both queries summed.
        assert_eq!(history.len(), 7 * 1440 + 1);
        assert_eq!(history.first().unwrap().0, (now - 7 * DAY) as f64);
        assert_eq!(history.last().unwrap().0, now as f64);
        assert!(history.iter().all(|(_, v)| *v == 5.0), "{:?}", history.iter().find(|(_, v)| *v != 5.0));
        assert!(history.windows(2).all(|w| w[1].0 - w[0].0 == 60.0));
        // A day per query per signal, several in flight at once, never more than the bound.
        assert_eq!(asked.total.load(Ordering::SeqCst), 14);
        let most = asked.most.load(Ordering::SeqCst);
        assert!((2..=CONCURRENT_QUERIES).contains(&most), "{most} in flight at most");
    }
}
