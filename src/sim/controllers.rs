//! The autoscalers compared in a simulation: none, the Kubernetes HPA algorithm, a KEDA-style
//! scaler, and levee's planner. Each sees only what it would see in production, averaged over
//! its own sync period.

use std::collections::VecDeque;

use serde::Serialize;

use super::{platform::Step, scenario::Scenario};
use crate::{
    api::{ScalingPolicySpec, scaling_policy::SignalRole},
    engine::{
        forecast::Forecast,
        scaling::{Decision, Planner, SignalReading, Tick},
    },
};

/// Which autoscaler drives a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Replicas stay at their initial counts.
    None,
    /// Kubernetes HPA on CPU: 15 s sync, 10% tolerance, 300 s scale-down stabilisation,
    /// scale-up at most max(100%, 4 pods) per 15 s.
    Hpa,
    /// KEDA: 30 s polling of request rate and queue length, through the HPA's behaviour.
    Keda,
    /// levee's planner with the scenario's policies, 5 s ticks.
    Levee,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::None => "none",
            Kind::Hpa => "hpa",
            Kind::Keda => "keda",
            Kind::Levee => "levee",
        }
    }

    fn period(self) -> f64 {
        match self {
            Kind::None => f64::INFINITY,
            Kind::Hpa => 15.0,
            Kind::Keda => 30.0,
            Kind::Levee => 5.0,
        }
    }
}

/// The scaled targets of a scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Api,
    Workers,
    Replicas,
}

/// What a controller asks for this sync.
#[derive(Clone, Copy, Debug, Default)]
pub struct Desired {
    pub api: Option<i64>,
    pub workers: Option<i64>,
    pub replicas: Option<i64>,
}

/// Step values averaged over a sync period.
#[derive(Clone, Debug, Default)]
struct Window {
    secs: f64,
    arrivals: f64,
    served: f64,
    api_capacity: f64,
    writes: f64,
    published: f64,
    reads: f64,
    read_capacity: f64,
    worker_capacity: f64,
}

impl Window {
    fn add(&mut self, s: &Step, records_per_request: f64, worker_capacity: f64) {
        self.secs += s.dt;
        self.arrivals += s.arrivals;
        self.served += s.served;
        self.api_capacity += s.api_capacity.min(1e12) * s.dt;
        self.writes += s.writes * s.dt;
        self.published += s.served * records_per_request;
        self.reads += s.reads * s.dt;
        self.read_capacity += s.read_capacity.min(1e12) * s.dt;
        self.worker_capacity += worker_capacity * s.dt;
    }

    fn rate(&self, x: f64) -> f64 {
        if self.secs > 0.0 { x / self.secs } else { 0.0 }
    }
}

/// The HPA's algorithm for one target, with its documented defaults.
#[derive(Clone, Debug, Default)]
struct HpaState {
    recommendations: VecDeque<(f64, i64)>,
}

/// HPA tolerance: ratios within 10% of 1 do not scale.
const HPA_TOLERANCE: f64 = 0.1;
const HPA_STABILIZATION: f64 = 300.0;

impl HpaState {
    /// `ratio` is metric / target (utilisation over target, or value over target value).
    fn desired(&mut self, now: f64, current: i64, ready: i64, ratio: f64, min: i64, max: i64) -> i64 {
        let mut rec = if (ratio - 1.0).abs() <= HPA_TOLERANCE || !ratio.is_finite() {
            current
        } else {
            (ready.max(1) as f64 * ratio).ceil() as i64
        };
        // Scale-up policy: the larger of +100% and +4 pods per 15 s period.
        rec = rec.min((current * 2).max(current + 4)).clamp(min, max);
        self.recommendations.push_back((now, rec));
        while self.recommendations.front().is_some_and(|&(t, _)| t < now - HPA_STABILIZATION) {
            self.recommendations.pop_front();
        }
        if rec < current { self.recommendations.iter().map(|&(_, r)| r).max().unwrap_or(rec).min(current) } else { rec }
    }
}

/// One planner per levee policy, and what it decided.
struct LeveeTargets {
    api: Planner,
    workers: Option<Planner>,
    replicas: Option<Planner>,
}

/// A decision levee made, for the timeline.
#[derive(Clone, Debug, Serialize)]
pub struct TimedDecision {
    pub target: Target,
    #[serde(flatten)]
    pub decision: Decision,
}

/// One autoscaler driving one run.
pub struct Controller {
    pub kind: Kind,
    next: f64,
    window: Window,
    hpa: [HpaState; 3],
    levee: Option<LeveeTargets>,
    /// Windows of the last minute, for levee's `rate(...[1m])`-style signals.
    minute: VecDeque<Window>,
    pub decisions: Vec<TimedDecision>,
    /// (time, forecast) of levee's API arrival rate at the lead time.
    pub forecasts: Vec<(f64, Forecast)>,
}

fn bounds(p: &ScalingPolicySpec) -> (i64, i64) {
    (i64::from(p.bounds.min_replicas), i64::from(p.bounds.max_replicas))
}

impl Controller {
    pub fn new(kind: Kind, sc: &Scenario) -> Self {
        let levee = (kind == Kind::Levee).then(|| LeveeTargets {
            api: Planner::new(&sc.policies.api),
            workers: sc.policies.workers.as_ref().map(Planner::new),
            replicas: sc.policies.replicas.as_ref().map(Planner::new),
        });
        Self {
            kind,
            next: kind.period(),
            window: Window::default(),
            hpa: Default::default(),
            levee,
            minute: VecDeque::new(),
            decisions: Vec::new(),
            forecasts: Vec::new(),
        }
    }

    /// Observes one step; returns what to scale to when a sync is due.
    pub fn observe(&mut self, sc: &Scenario, s: &Step) -> Option<Desired> {
        if self.kind == Kind::None {
            return None;
        }
        let (rpr, wcap) = sc.workers.as_ref().map_or((0.0, 0.0), |w| (w.records_per_request, w.capacity_per_replica));
        self.window.add(s, rpr, s.workers_ready as f64 * wcap);
        if s.t + s.dt < self.next {
            return None;
        }
        self.next += self.kind.period();
        let w = std::mem::take(&mut self.window);
        let now = s.t + s.dt;
        Some(match self.kind {
            Kind::None => Desired::default(),
            Kind::Hpa => self.hpa(sc, s, &w, now),
            Kind::Keda => self.keda(sc, s, &w, now),
            Kind::Levee => self.levee(s, &w, now),
        })
    }

    fn hpa(&mut self, sc: &Scenario, s: &Step, w: &Window, now: f64) -> Desired {
        // CPU utilisation of ready pods: work done over what they could do (never above 100%).
        let util = |done: f64, cap: f64| if cap > 0.0 { (done / cap).min(1.0) } else { 1.0 };
        let mut target = |i: usize, p: &ScalingPolicySpec, total: i64, ready: i64, util: f64| {
            let (min, max) = bounds(p);
            self.hpa[i].desired(now, total, ready, util / p.capacity.target_utilization, min, max)
        };
        let api = target(0, &sc.policies.api, s.api_total, s.api_ready, util(w.served, w.api_capacity));
        let workers = sc
            .policies
            .workers
            .as_ref()
            .map(|p| target(1, p, s.workers_total, s.workers_ready, util(w.writes, w.worker_capacity)));
        // RDS replicas by target tracking on replica CPU, the same algorithm.
        let replicas = sc
            .policies
            .replicas
            .as_ref()
            .map(|p| target(2, p, s.replicas_total, s.replicas_ready, util(w.reads, w.read_capacity)));
        Desired { api: Some(api), workers, replicas }
    }

    fn keda(&mut self, sc: &Scenario, s: &Step, w: &Window, now: f64) -> Desired {
        // AverageValue targets: request rate per replica, queue length per replica.
        let per_replica = |p: &ScalingPolicySpec| p.capacity.units_per_replica * p.capacity.target_utilization;
        let p = &sc.policies.api;
        let (min, max) = bounds(p);
        let api_ratio = w.rate(w.arrivals) / (per_replica(p) * s.api_total.max(1) as f64);
        let api = self.hpa[0].desired(now, s.api_total, s.api_total, api_ratio, min, max);
        let workers = sc.policies.workers.as_ref().map(|p| {
            let (min, max) = bounds(p);
            let target = per_replica(p) * p.capacity.drain_within.as_secs_f64();
            let ratio = s.work_queue / (target * s.workers_total.max(1) as f64);
            self.hpa[1].desired(now, s.workers_total, s.workers_total, ratio, min, max)
        });
        Desired { api: Some(api), workers, replicas: None }
    }

    fn levee(&mut self, s: &Step, w: &Window, now: f64) -> Desired {
        // Rates as Prometheus gives them with rate(...[1m]): a trailing one-minute mean.
        self.minute.push_back(w.clone());
        while self.minute.iter().map(|w| w.secs).sum::<f64>() > 60.0 + 1e-9 {
            self.minute.pop_front();
        }
        let w = &self.minute.iter().fold(Window::default(), |mut acc, x| {
            acc.secs += x.secs;
            acc.arrivals += x.arrivals;
            acc.published += x.published;
            acc.reads += x.reads;
            acc
        });
        let Some(l) = self.levee.as_mut() else { return Desired::default() };
        let reading = |p: &ScalingPolicySpec, target: Target| -> Vec<SignalReading> {
            p.signals
                .iter()
                .map(|sig| {
                    let value = match (target, sig.role) {
                        (Target::Api, SignalRole::ArrivalRate) => w.rate(w.arrivals),
                        (Target::Api, SignalRole::Backlog) => s.request_queue,
                        (Target::Workers, SignalRole::ArrivalRate) => w.rate(w.published),
                        (Target::Workers, SignalRole::Backlog) => s.work_queue,
                        (Target::Replicas, SignalRole::ArrivalRate) => w.rate(w.reads),
                        (Target::Replicas, SignalRole::Backlog) => 0.0,
                        (_, SignalRole::ReplicaLag) => s.replica_lag,
                    };
                    SignalReading { name: sig.name.clone(), role: sig.role, value: Some(value), age_secs: 0.0 }
                })
                .collect()
        };
        let plan =
            |planner: &mut Planner, target: Target, current: i64, ready: i64, decisions: &mut Vec<TimedDecision>| {
                let signals = reading(planner.spec(), target);
                let d = planner.plan(&Tick { now, current, ready, signals });
                let to = d.to;
                if d.to != d.from {
                    decisions.push(TimedDecision { target, decision: d.clone() });
                }
                (to, d)
            };
        let (api, d) = plan(&mut l.api, Target::Api, s.api_total, s.api_ready, &mut self.decisions);
        if let Some(f) = d.forecast {
            self.forecasts.push((now, f));
        }
        let workers = l
            .workers
            .as_mut()
            .map(|p| plan(p, Target::Workers, s.workers_total, s.workers_ready, &mut self.decisions).0);
        let replicas = l
            .replicas
            .as_mut()
            .map(|p| plan(p, Target::Replicas, s.replicas_total, s.replicas_ready, &mut self.decisions).0);
        Desired { api: Some(api), workers, replicas }
    }

    /// Lead time levee learned for the API, if any.
    pub fn learned_lead_time(&self) -> Option<f64> {
        self.levee.as_ref().and_then(|l| l.api.learned_lead_time())
    }
}
