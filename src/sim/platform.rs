//! The simulated platform: arrivals, API instances with start-up delay and health checks, a
//! queue of background records drained by workers into a primary database, and read replicas
//! whose lag grows when the primary is saturated.
//!
//! A fluid model at one step per `scenario.step`: queues hold fractional requests; arrivals
//! are Poisson around the scenario's rate, from a seeded generator.

use rand::{SeedableRng, rngs::StdRng};
use rand_distr::{Distribution, Poisson};

use super::{pool::Pool, scenario::Scenario};
use crate::replay::trace::Trace;

/// Time every request spends being served, before any queueing (seconds).
const BASE_LATENCY: f64 = 0.05;
/// A database read with idle replicas (seconds).
const BASE_READ: f64 = 0.005;

/// What one step did: the raw material of metrics and of what controllers observe.
#[derive(Clone, Debug, Default)]
pub struct Step {
    pub t: f64,
    pub dt: f64,
    /// Requests that reached the platform.
    pub arrivals: f64,
    /// Legitimate requests a TrafficGuard refused at the edge (they never reached it).
    pub refused: f64,
    pub served: f64,
    pub failed: f64,
    pub latency: f64,
    pub api_ready: i64,
    pub api_total: i64,
    pub request_queue: f64,
    pub work_queue: f64,
    pub workers_ready: i64,
    pub workers_total: i64,
    /// Write demand over primary capacity; above 1 the primary is saturated.
    pub primary_pressure: f64,
    pub replicas_ready: i64,
    pub replicas_total: i64,
    pub replica_lag: f64,
    pub reads: f64,
    pub writes: f64,
    /// API throughput available this step (requests/s), for utilisation.
    pub api_capacity: f64,
    /// Read capacity of the replicas (reads/s).
    pub read_capacity: f64,
}

/// Protections levee's BootstrapPolicy adds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Protections {
    /// Instances booting while none is live boot anyway (staged cold start).
    pub staged_cold_start: bool,
    /// Health checks failing on every instance at once do not recycle them.
    pub death_spiral_protection: bool,
}

pub struct Platform<'a> {
    sc: &'a Scenario,
    trace: Option<Trace>,
    rng: StdRng,
    protections: Protections,
    pub api: Pool,
    pub workers: Option<Pool>,
    pub replicas: Option<Pool>,
    request_queue: f64,
    work_queue: f64,
    replica_lag: f64,
    latency: f64,
    failed_checks: u32,
    next_check: f64,
    pressure: f64,
    /// Health checks that would have recycled the fleet but were held back.
    pub spirals_prevented: u32,
    /// What a TrafficGuard admits, per second: (legitimate, surge) fractions.
    admission: Option<Vec<(f64, f64)>>,
}

impl<'a> Platform<'a> {
    pub fn new(sc: &'a Scenario, trace: Option<Trace>, protections: Protections) -> Self {
        Self {
            sc,
            trace,
            rng: StdRng::seed_from_u64(sc.seed),
            protections,
            api: Pool::new(sc.api.initial_replicas),
            workers: sc.workers.as_ref().map(|w| Pool::new(w.initial_replicas)),
            replicas: sc.database.as_ref().map(|d| Pool::new(d.initial_replicas)),
            request_queue: 0.0,
            work_queue: 0.0,
            replica_lag: 0.0,
            latency: BASE_LATENCY,
            failed_checks: 0,
            next_check: 0.0,
            pressure: 0.0,
            spirals_prevented: 0,
            admission: None,
        }
    }

    /// Puts a TrafficGuard in front: second `i` admits `admission[i]` of the legitimate and
    /// of the surge traffic (seconds past the end admit everything).
    pub fn with_admission(mut self, admission: Vec<(f64, f64)>) -> Self {
        self.admission = Some(admission);
        self
    }

    /// The scenario's arrival rate at `t`, split into baseline and surge (requests/s), before
    /// noise and any guard.
    fn rate(&self, t: f64) -> (f64, f64) {
        let a = &self.sc.arrivals;
        let base = match &self.trace {
            Some(tr) => tr.rate_at(t) * a.trace_scale,
            None => {
                a.base
                    * (1.0
                        + a.daily_amplitude
                            * (t * std::f64::consts::TAU / 86_400.0 - std::f64::consts::FRAC_PI_2).sin())
            }
        };
        let surge: f64 = a.surges.iter().map(|s| s.extra(t)).sum();
        (base, base * surge)
    }

    /// Seconds a database replica takes to provision now: slower when the primary is hot.
    pub fn replica_provision_secs(&self) -> f64 {
        self.sc.database.as_ref().map_or(0.0, |d| {
            d.replica_provision.as_secs_f64() * (1.0 + d.hot_primary_slowdown * self.pressure.min(1.0))
        })
    }

    /// Advances one step from `t`.
    pub fn step(&mut self, t: f64) -> Step {
        let sc = self.sc;
        let dt = sc.step.as_secs_f64();
        let (base, surge) = self.rate(t);
        let (legit_admitted, surge_admitted) =
            self.admission.as_ref().map_or((1.0, 1.0), |a| a.get(t.max(0.0) as usize).copied().unwrap_or((1.0, 1.0)));
        let refused = base * (1.0 - legit_admitted) * dt;
        let mean = (base * legit_admitted + surge * surge_admitted) * dt;
        let arrivals = if sc.arrivals.poisson && mean > 0.0 && mean < 1e7 {
            Poisson::new(mean).map(|p| p.sample(&mut self.rng)).unwrap_or(mean)
        } else {
            mean
        };

        // Instances finishing start-up. A fleet at zero cannot boot while the scenario's
        // cold start is broken, unless levee stages the boot.
        let broken_until = sc.api.cold_start_broken_until.map_or(0.0, |d| d.as_secs_f64());
        let staged = self.protections.staged_cold_start;
        let startup = sc.api.startup.as_secs_f64();
        self.api.advance(t, startup, |ready| ready > 0 || staged || t >= broken_until);
        if let Some(w) = self.workers.as_mut() {
            w.advance(t, 0.0, |_| true);
        }
        if let Some(r) = self.replicas.as_mut() {
            r.advance(t, 0.0, |_| true);
        }

        // Read capacity: replicas applying a write backlog serve reads at half speed.
        let (read_capacity, reads_per_request) = match (&self.replicas, &sc.database) {
            (Some(r), Some(d)) => {
                let slowed = if self.replica_lag > 1.0 || self.pressure >= 1.0 { 0.5 } else { 1.0 };
                (r.ready() as f64 * d.replica_read_capacity * slowed, d.reads_per_request)
            }
            _ => (f64::INFINITY, 0.0),
        };
        let api_capacity = self.api.ready() as f64 * sc.api.capacity_per_replica;
        let read_limit = if reads_per_request > 0.0 { read_capacity / reads_per_request } else { f64::INFINITY };
        let throughput = api_capacity.min(read_limit);

        // Requests: served up to throughput; those that would wait past the timeout fail.
        self.request_queue += arrivals;
        let (served, failed);
        if self.api.ready() == 0 || throughput <= 0.0 {
            // No live instance: the load balancer answers 502 at once.
            served = 0.0;
            failed = self.request_queue;
            self.request_queue = 0.0;
        } else {
            served = self.request_queue.min(throughput * dt);
            self.request_queue -= served;
            let max_queue = throughput * sc.api.request_timeout.as_secs_f64();
            failed = (self.request_queue - max_queue).max(0.0);
            self.request_queue -= failed;
        }
        let reads = served * reads_per_request / dt;
        let read_util = if read_capacity.is_finite() && read_capacity > 0.0 { reads / read_capacity } else { 0.0 };
        let wait = if throughput > 0.0 { self.request_queue / throughput } else { 0.0 };
        self.latency = BASE_LATENCY + BASE_READ / (1.0 - read_util.min(0.99)) + wait;

        // Background records: workers write them to the primary as fast as it allows.
        let mut writes = 0.0;
        if let (Some(w), Some(ws)) = (&self.workers, &sc.workers) {
            self.work_queue += served * ws.records_per_request;
            let attempted = (self.work_queue / dt).min(w.ready() as f64 * ws.capacity_per_replica);
            let write_capacity = sc.database.as_ref().map_or(f64::INFINITY, |d| d.primary_write_capacity);
            writes = attempted.min(write_capacity);
            self.work_queue -= writes * dt;
            self.pressure = if write_capacity.is_finite() { attempted / write_capacity } else { 0.0 };
        }
        // Replicas fall behind while the primary is saturated and catch up after.
        if self.pressure >= 1.0 {
            self.replica_lag += dt * (self.pressure - 0.9).min(1.0);
        } else {
            self.replica_lag = (self.replica_lag - dt * 0.5).max(0.0);
        }

        self.health_checks(t);
        Step {
            t,
            dt,
            arrivals,
            refused,
            served,
            failed,
            latency: self.latency,
            api_ready: self.api.ready(),
            api_total: self.api.total(),
            request_queue: self.request_queue,
            work_queue: self.work_queue,
            workers_ready: self.workers.as_ref().map_or(0, Pool::ready),
            workers_total: self.workers.as_ref().map_or(0, Pool::total),
            primary_pressure: self.pressure,
            replicas_ready: self.replicas.as_ref().map_or(0, Pool::ready),
            replicas_total: self.replicas.as_ref().map_or(0, Pool::total),
            replica_lag: self.replica_lag,
            reads,
            writes,
            api_capacity: throughput,
            read_capacity,
        }
    }

    /// Health checks see the same latency on every instance (it comes from a shared
    /// dependency), so when they fail, they fail everywhere at once.
    fn health_checks(&mut self, t: f64) {
        let Some(hc) = &self.sc.api.health_check else { return };
        if t < self.next_check {
            return;
        }
        self.next_check = t + hc.interval.as_secs_f64();
        if self.api.ready() == 0 || self.latency <= hc.timeout.as_secs_f64() {
            self.failed_checks = 0;
            return;
        }
        self.failed_checks += 1;
        if self.failed_checks < hc.failures {
            return;
        }
        self.failed_checks = 0;
        if self.protections.death_spiral_protection {
            // Every instance failing at once means a shared cause: replacing them cannot help.
            self.spirals_prevented += 1;
        } else {
            self.api.recycle_ready(t, self.sc.api.startup.as_secs_f64());
        }
    }
}
