//! What a run is judged by.

use serde::Serialize;

use super::{platform::Step, scenario::Slo};

/// Summary of one run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub controller: String,
    /// Minutes whose failed fraction or mean latency broke the SLO.
    pub slo_violation_minutes: f64,
    /// API instance-minutes paid for (ready or starting).
    pub replica_minutes: f64,
    pub worker_minutes: f64,
    pub db_replica_minutes: f64,
    /// Requests that succeeded, as a fraction of all arrivals.
    pub success_rate: f64,
    /// Largest backlog of background records (or of waiting requests, without workers).
    pub peak_backlog: f64,
    /// From the peak backlog until it fell below 1% of the peak; `None` if it never did.
    pub time_to_drain_secs: Option<f64>,
    /// Direction changes of the API replica count.
    pub reversals: u32,
    /// Seconds with no live API instance.
    pub zero_live_secs: f64,
    /// Seconds the primary ran at (or was asked for more than) its full write capacity.
    pub primary_over_capacity_secs: f64,
    /// Longest unbroken stretch of that.
    pub primary_over_capacity_longest_secs: f64,
    pub peak_replica_lag_secs: f64,
    pub min_live_instances: i64,
    /// Health-check recycles held back by death-spiral protection.
    pub spirals_prevented: u32,
}

/// One minute of a run, for charts.
#[derive(Clone, Copy, Debug, Default)]
pub struct MinutePoint {
    pub minute: f64,
    pub arrival_rate: f64,
    pub ready: i64,
    pub total: i64,
    pub failed_fraction: f64,
}

/// Accumulates a [`Summary`] step by step, and per-minute series for charts.
pub struct Recorder {
    slo: Slo,
    s: Summary,
    minute: (f64, f64, f64, f64), // arrivals, failed, latency × served, served
    minute_index: i64,
    arrivals: f64,
    failed: f64,
    peak_at: f64,
    drained_at: Option<f64>,
    last_total: i64,
    last_direction: i64,
    over_run: f64,
    pub series: Vec<MinutePoint>,
}

impl Recorder {
    pub fn new(controller: &str, slo: Slo, initial_api: i64) -> Self {
        Self {
            slo,
            s: Summary { controller: controller.to_owned(), min_live_instances: i64::MAX, ..Summary::default() },
            minute: (0.0, 0.0, 0.0, 0.0),
            minute_index: 0,
            arrivals: 0.0,
            failed: 0.0,
            peak_at: 0.0,
            drained_at: None,
            last_total: initial_api,
            last_direction: 0,
            over_run: 0.0,
            series: Vec::new(),
        }
    }

    pub fn record(&mut self, st: &Step, has_workers: bool) {
        let m = (st.t / 60.0).floor() as i64;
        if m != self.minute_index {
            self.close_minute(st.api_ready, st.api_total);
            self.minute_index = m;
        }
        // Legitimate requests refused at the edge failed, as far as their users can tell.
        self.minute.0 += st.arrivals + st.refused;
        self.minute.1 += st.failed + st.refused;
        self.minute.2 += st.latency * st.served;
        self.minute.3 += st.served;
        self.arrivals += st.arrivals + st.refused;
        self.failed += st.failed + st.refused;
        let s = &mut self.s;
        s.replica_minutes += st.api_total as f64 * st.dt / 60.0;
        s.worker_minutes += st.workers_total as f64 * st.dt / 60.0;
        s.db_replica_minutes += st.replicas_total as f64 * st.dt / 60.0;
        s.min_live_instances = s.min_live_instances.min(st.api_ready);
        if st.api_ready == 0 {
            s.zero_live_secs += st.dt;
        }
        if st.primary_pressure >= 1.0 {
            s.primary_over_capacity_secs += st.dt;
            self.over_run += st.dt;
            s.primary_over_capacity_longest_secs = s.primary_over_capacity_longest_secs.max(self.over_run);
        } else {
            self.over_run = 0.0;
        }
        s.peak_replica_lag_secs = s.peak_replica_lag_secs.max(st.replica_lag);
        let backlog = if has_workers { st.work_queue } else { st.request_queue };
        if backlog > s.peak_backlog {
            s.peak_backlog = backlog;
            self.peak_at = st.t;
            self.drained_at = None;
        } else if self.drained_at.is_none() && s.peak_backlog > 0.0 && backlog <= 0.01 * s.peak_backlog {
            self.drained_at = Some(st.t);
        }
        let direction = (st.api_total - self.last_total).signum();
        if direction != 0 {
            if self.last_direction != 0 && direction != self.last_direction {
                s.reversals += 1;
            }
            self.last_direction = direction;
        }
        self.last_total = st.api_total;
    }

    fn close_minute(&mut self, ready: i64, total: i64) {
        let (arrivals, failed, latency_sum, served) = std::mem::take(&mut self.minute);
        if arrivals <= 0.0 {
            return;
        }
        let failed_fraction = failed / arrivals;
        let latency = if served > 0.0 { latency_sum / served } else { f64::INFINITY };
        if failed_fraction > self.slo.error_ratio || latency > self.slo.latency.as_secs_f64() {
            self.s.slo_violation_minutes += 1.0;
        }
        self.series.push(MinutePoint {
            minute: self.minute_index as f64,
            arrival_rate: arrivals / 60.0,
            ready,
            total,
            failed_fraction,
        });
    }

    pub fn finish(mut self, last: &Step, spirals_prevented: u32) -> (Summary, Vec<MinutePoint>) {
        self.close_minute(last.api_ready, last.api_total);
        let s = &mut self.s;
        s.success_rate = if self.arrivals > 0.0 { 1.0 - self.failed / self.arrivals } else { 1.0 };
        s.time_to_drain_secs = self.drained_at.map(|t| t - self.peak_at);
        s.spirals_prevented = spirals_prevented;
        if s.min_live_instances == i64::MAX {
            s.min_live_instances = 0;
        }
        (self.s, self.series)
    }
}
