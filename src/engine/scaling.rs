//! The scaling planner: one pure decision per tick from the policy, the signals and history.
//!
//! desired = max(reactive, predictive, lag): a forecast can only add capacity. Then bounds,
//! a scale-down stabilisation window, step limits and a reversal budget. On a lost signal it
//! holds (or goes to the declared fallback) and never scales down.

use std::collections::VecDeque;

use serde::Serialize;

use super::{
    capacity::replicas_for,
    forecast::{Forecast, ForecastConfig, Forecaster},
    lead_time::LeadTime,
};
use crate::api::scaling_policy::{CapacityModel, ScalingPolicySpec, SignalLossAction, SignalRole};

/// One reading of one signal, as the shell saw it.
#[derive(Clone, Debug, PartialEq)]
pub struct SignalReading {
    pub name: String,
    pub role: SignalRole,
    /// `None` when the read failed.
    pub value: Option<f64>,
    /// Seconds since the sample was taken.
    pub age_secs: f64,
}

/// What the planner is told each tick.
#[derive(Clone, Debug, PartialEq)]
pub struct Tick {
    /// Seconds on any fixed clock; only differences matter.
    pub now: f64,
    /// Replicas the target is asked to run.
    pub current: i64,
    /// Replicas ready to serve.
    pub ready: i64,
    pub signals: Vec<SignalReading>,
}

/// Machine-readable reason of a decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Reason {
    /// Current load needs more replicas.
    ScaleUp,
    /// The forecast at the lead time needs more replicas than current load does.
    ForecastScaleUp,
    /// Replica lag is above the policy's maximum.
    LagScaleUp,
    /// Load fell and the stabilisation window agrees.
    ScaleDown,
    /// Nothing to change.
    Steady,
    /// Load fell, but the stabilisation window still holds a higher recommendation.
    StabilizationHold,
    /// A scale-down would exceed the reversal budget.
    ReversalBudgetHold,
    /// A signal is missing, NaN or stale: holding.
    SignalLossHold,
    /// A signal is missing, NaN or stale: going to the fallback replicas.
    SignalLossFallback,
}

impl Decision {
    /// The replicas needed, when more than `max` (the policy's upper bound): demand it cannot
    /// meet.
    pub fn needed_above(&self, max: i32) -> Option<i64> {
        self.needed.filter(|&n| n > i64::from(max))
    }
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ScaleUp => "ScaleUp",
            Reason::ForecastScaleUp => "ForecastScaleUp",
            Reason::LagScaleUp => "LagScaleUp",
            Reason::ScaleDown => "ScaleDown",
            Reason::Steady => "Steady",
            Reason::StabilizationHold => "StabilizationHold",
            Reason::ReversalBudgetHold => "ReversalBudgetHold",
            Reason::SignalLossHold => "SignalLossHold",
            Reason::SignalLossFallback => "SignalLossFallback",
        }
    }
}

/// One decision with the numbers behind it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Decision {
    pub at: f64,
    pub from: i64,
    pub to: i64,
    pub reason: Reason,
    /// One sentence for people.
    pub message: String,
    pub arrival_rate: Option<f64>,
    pub backlog: Option<f64>,
    pub lag_secs: Option<f64>,
    /// Replicas current load needs.
    pub reactive: Option<i64>,
    /// Replicas the forecast needs.
    pub predictive: Option<i64>,
    /// Replicas all signals together need, before bounds: above `bounds.maxReplicas`, the
    /// policy cannot keep up.
    pub needed: Option<i64>,
    #[serde(skip)]
    pub forecast: Option<Forecast>,
    pub lead_time_secs: f64,
}

/// Plans one ScalingPolicy, tick after tick.
pub struct Planner {
    spec: ScalingPolicySpec,
    forecaster: Forecaster,
    lead: LeadTime,
    /// Recent raw recommendations, for scale-down stabilisation.
    recommendations: VecDeque<(f64, i64)>,
    last_direction: i8,
    reversals: VecDeque<f64>,
}

/// Default forecasting bucket: fine enough for minute-scale lead times, coarse enough that a
/// day of history is 1,440 values.
pub const DEFAULT_STEP_SECS: f64 = 60.0;

impl Planner {
    pub fn new(spec: &ScalingPolicySpec) -> Self {
        Self::with_step(spec, DEFAULT_STEP_SECS)
    }

    pub fn with_step(spec: &ScalingPolicySpec, step_secs: f64) -> Self {
        let lead = spec.forecast.lead_time.as_secs_f64();
        Self {
            spec: spec.clone(),
            forecaster: Forecaster::new(ForecastConfig {
                step_secs,
                horizon_secs: lead.max(step_secs),
                quantile: spec.forecast.quantile,
                seasonality: spec.forecast.seasonality,
            }),
            lead: LeadTime::new(lead, spec.forecast.learn_lead_time),
            recommendations: VecDeque::new(),
            last_direction: 0,
            reversals: VecDeque::new(),
        }
    }

    /// Feeds the forecaster a history of the summed arrival rate, `(time, rate)` oldest first,
    /// in the time base of the ticks to come: a planner made after a restart forecasts from its
    /// first tick. Returns the seconds of history taken.
    pub fn warm(&mut self, history: &[(f64, f64)]) -> f64 {
        for &(t, rate) in history {
            self.forecaster.observe(t, rate);
        }
        match (history.first(), history.last()) {
            (Some(first), Some(last)) => last.0 - first.0,
            _ => 0.0,
        }
    }

    /// Takes over what `earlier` (the planner of the spec before a change) learned and still
    /// holds: its lead time, when it planned the same target (the target's start-up time is
    /// what it was), and its forecaster, when the forecast's inputs and settings are unchanged
    /// (a bounds or capacity edit). Returns whether the forecaster was taken.
    pub fn carry_over(&mut self, earlier: &mut Planner) -> bool {
        if earlier.spec.target == self.spec.target {
            self.lead.carry_over(&earlier.lead);
        }
        let taken = self.same_forecast_as(&earlier.spec);
        if taken {
            std::mem::swap(&mut self.forecaster, &mut earlier.forecaster);
        }
        taken
    }

    /// Takes the forecaster of `warmed`, a planner for the same forecast warmed from history
    /// while this one planned from live data alone: a week of history outweighs the few ticks
    /// this one has seen. Everything else this one learned (lead time, recent
    /// recommendations, reversals) stays. Returns whether it was taken.
    pub fn adopt_forecaster(&mut self, warmed: &mut Planner) -> bool {
        let same = self.same_forecast_as(&warmed.spec);
        if same {
            std::mem::swap(&mut self.forecaster, &mut warmed.forecaster);
        }
        same
    }

    /// Whether a planner for `other` forecasts the same series the same way: the same
    /// arrival-rate signals and forecast settings.
    pub fn same_forecast_as(&self, other: &ScalingPolicySpec) -> bool {
        fn arrivals(s: &ScalingPolicySpec) -> impl Iterator<Item = &crate::api::scaling_policy::Signal> {
            s.signals.iter().filter(|x| x.role == SignalRole::ArrivalRate)
        }
        self.spec.forecast == other.forecast && arrivals(&self.spec).eq(arrivals(other))
    }

    /// Starts from a lead time learned before a restart (the policy's status keeps it).
    pub fn resume_lead_time(&mut self, learned_secs: f64) {
        self.lead.resume(learned_secs);
    }

    /// The lead time learned so far, in seconds.
    pub fn learned_lead_time(&self) -> Option<f64> {
        self.lead.learned()
    }

    pub fn spec(&self) -> &ScalingPolicySpec {
        &self.spec
    }

    /// Decides the replica count for this tick.
    pub fn plan(&mut self, tick: &Tick) -> Decision {
        let now = tick.now;
        let current = tick.current;
        self.lead.ready(now, tick.ready);
        let lead_secs = self.lead.secs();
        let stale_after = self.spec.on_signal_loss.stale_after.as_secs_f64();
        let lost: Vec<&str> = tick
            .signals
            .iter()
            .filter(|s| !s.value.is_some_and(f64::is_finite) || s.age_secs > stale_after)
            .map(|s| s.name.as_str())
            .collect();
        let mut d = Decision {
            at: now,
            from: current,
            to: current,
            reason: Reason::Steady,
            message: String::new(),
            arrival_rate: None,
            backlog: None,
            lag_secs: None,
            reactive: None,
            predictive: None,
            needed: None,
            forecast: None,
            lead_time_secs: lead_secs,
        };
        if !lost.is_empty() || tick.signals.is_empty() {
            return self.fail_static(d, &lost);
        }
        let sum = |role| {
            let v: Vec<f64> = tick.signals.iter().filter(|s| s.role == role).filter_map(|s| s.value).collect();
            (!v.is_empty()).then(|| v.iter().sum::<f64>())
        };
        d.arrival_rate = sum(SignalRole::ArrivalRate);
        d.backlog = sum(SignalRole::Backlog);
        d.lag_secs =
            tick.signals.iter().filter(|s| s.role == SignalRole::ReplicaLag).filter_map(|s| s.value).reduce(f64::max);

        let cap = &self.spec.capacity;
        if let Some(a) = d.arrival_rate {
            self.forecaster.observe(now, a);
        }
        let demand_signals = d.arrival_rate.is_some() || d.backlog.is_some();
        if demand_signals {
            d.reactive = Some(replicas_for(cap, d.arrival_rate.unwrap_or(0.0), d.backlog.unwrap_or(0.0)));
            d.forecast = self.forecaster.forecast(now, lead_secs);
            // The forecast's headroom is its band: demand at the band's upper edge has to fit
            // in raw capacity. The target utilisation is headroom for what current load cannot
            // see coming; applying it to the forecast as well pays twice for the same
            // uncertainty, and a band of the same cost then has to be narrower.
            let full = CapacityModel { target_utilization: 1.0, ..cap.clone() };
            let backlog = d.backlog.unwrap_or(0.0);
            d.predictive = d.forecast.as_ref().map(|f| replicas_for(&full, f.upper, backlog));
        }
        let lag_need = d.lag_secs.zip(cap.max_replica_lag).map(|(lag, max)| {
            let max = max.as_secs_f64();
            if lag > max {
                // One more replica than is ready, unless one is already on its way.
                if current > tick.ready { current } else { tick.ready + 1 }
            } else if lag < max / 2.0 && !demand_signals {
                current - 1
            } else {
                current
            }
        });
        let b = &self.spec.bounds;
        let (min, max) = (i64::from(b.min_replicas), i64::from(b.max_replicas));
        // Capacity asked for now is ready one lead time from now, so once there is a forecast
        // it decides how much to add; current load only keeps what is already there. Without
        // a forecast yet, current load decides.
        let demand = match (d.reactive, d.predictive) {
            (Some(r), Some(p)) => Some(p.max(r.min(current))),
            (r, p) => r.or(p),
        };
        d.needed = [demand, lag_need].into_iter().flatten().max();
        let raw = d.needed.unwrap_or(current).clamp(min, max);

        // Scale-down stabilisation: never below the highest recommendation in the window.
        let window = b.scale_down_stabilization.as_secs_f64();
        if self.recommendations.is_empty() && self.last_direction == 0 {
            // A planner that just started (or restarted) has no history: the current size
            // counts as a recommendation, so it waits a full window before scaling down.
            self.recommendations.push_back((now, current));
        }
        self.recommendations.push_back((now, raw));
        while self.recommendations.front().is_some_and(|&(t, _)| t < now - window) {
            self.recommendations.pop_front();
        }
        let mut to = if raw < current {
            self.recommendations.iter().map(|&(_, r)| r).max().unwrap_or(raw).min(current)
        } else {
            raw
        };
        if let Some(up) = b.max_step_up {
            to = to.min(current + i64::from(up));
        }
        if let Some(down) = b.max_step_down {
            to = to.max(current - i64::from(down));
        }
        to = to.clamp(min.min(current), max.max(current));
        if current < min {
            to = to.max(min);
        }

        // Reversal budget: a scale-down that reverses direction too often is held. Scale-ups
        // are never held: flapping costs money, missing capacity costs the service.
        let direction = (to - current).signum() as i8;
        let reversal_window = b.reversal_window.as_secs_f64();
        while self.reversals.front().is_some_and(|&t| t < now - reversal_window) {
            self.reversals.pop_front();
        }
        let mut budget_hold = false;
        if direction != 0 && self.last_direction != 0 && direction != self.last_direction {
            if direction < 0 && self.reversals.len() >= b.max_reversals.max(0) as usize {
                budget_hold = true;
                to = current;
            } else {
                self.reversals.push_back(now);
            }
        }
        if to != current {
            self.last_direction = (to - current).signum() as i8;
        }
        if to > current {
            self.lead.requested(now, to);
        } else if to < current {
            self.lead.cancel_above(to);
        }
        d.to = to;
        d.reason = if to > current {
            if lag_need.is_some_and(|l| l >= to) && d.reactive.is_none_or(|r| r < to) {
                Reason::LagScaleUp
            } else if d.predictive.is_some_and(|p| p > d.reactive.unwrap_or(0)) && d.reactive.is_none_or(|r| r < to) {
                Reason::ForecastScaleUp
            } else {
                Reason::ScaleUp
            }
        } else if to < current {
            Reason::ScaleDown
        } else if budget_hold {
            Reason::ReversalBudgetHold
        } else if raw < current {
            Reason::StabilizationHold
        } else {
            Reason::Steady
        };
        d.message = self.explain(&d);
        d
    }

    fn fail_static(&mut self, mut d: Decision, lost: &[&str]) -> Decision {
        let what =
            if lost.is_empty() { "no signals configured".to_owned() } else { format!("lost {}", lost.join(", ")) };
        match (self.spec.on_signal_loss.action, self.spec.on_signal_loss.fallback_replicas) {
            (SignalLossAction::Fallback, Some(f)) if i64::from(f) > d.from => {
                d.to = i64::from(f);
                d.reason = Reason::SignalLossFallback;
                d.message = format!("scale {} → {}: {what}; going to the declared fallback", d.from, d.to);
                self.lead.requested(d.at, d.to);
            }
            _ => {
                d.reason = Reason::SignalLossHold;
                d.message = format!("hold at {}: {what}; missing data is never zero load", d.from);
            }
        }
        d
    }

    fn explain(&self, d: &Decision) -> String {
        let head = match d.to.cmp(&d.from) {
            std::cmp::Ordering::Greater | std::cmp::Ordering::Less => format!("scale {} → {}", d.from, d.to),
            std::cmp::Ordering::Equal => format!("hold at {}", d.from),
        };
        let mut parts = Vec::new();
        if let (Some(a), Some(r)) = (d.arrival_rate, d.reactive) {
            parts.push(format!(
                "now {a:.1}/s{} needs {r}",
                d.backlog.map(|b| format!(" + backlog {b:.0}")).unwrap_or_default()
            ));
        } else if let (Some(b), Some(r)) = (d.backlog, d.reactive) {
            parts.push(format!("backlog {b:.0} needs {r}"));
        }
        if let (Some(f), Some(p)) = (&d.forecast, d.predictive) {
            parts.push(format!(
                "forecast {:.1}/s (p{:.0} {:.1}/s, {}) in {:.0}s needs {p} at full use",
                f.value,
                self.spec.forecast.quantile * 100.0,
                f.upper,
                f.model,
                d.lead_time_secs
            ));
        }
        if let (Some(l), Some(max)) = (d.lag_secs, self.spec.capacity.max_replica_lag) {
            parts.push(format!("replica lag {l:.1}s (max {max})"));
        }
        if let Some(n) = d.needed_above(self.spec.bounds.max_replicas) {
            parts.push(format!("needs {n}, above maxReplicas {}", self.spec.bounds.max_replicas));
        }
        match d.reason {
            Reason::StabilizationHold => {
                parts.push(format!("holding: the last {} recommended more", self.spec.bounds.scale_down_stabilization))
            }
            Reason::ReversalBudgetHold => parts.push(format!(
                "holding: {} reversals already within {}",
                self.spec.bounds.max_reversals, self.spec.bounds.reversal_window
            )),
            _ => {}
        }
        let per = self.spec.capacity.units_per_replica;
        let util = self.spec.capacity.target_utilization * 100.0;
        format!("{head}: {} at {per}/replica × {util:.0}%", parts.join("; "))
    }
}

#[cfg(test)]
mod tests;
