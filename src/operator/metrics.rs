//! Operator metrics: reconcile runs, failures and durations per kind.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub kind: String,
    pub error: String,
}

/// Reconcile metrics, registered once and shared by every controller.
#[derive(Clone)]
pub struct ReconcileMetrics {
    pub runs: Family<KindLabels, Counter>,
    pub failures: Family<FailureLabels, Counter>,
    pub duration: Family<KindLabels, Histogram>,
    /// Policies whose last reconcile found them invalid, per kind.
    pub invalid: Family<KindLabels, Counter>,
}

impl ReconcileMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            runs: Family::default(),
            failures: Family::default(),
            // 1 ms .. ~4 s: a reconcile is a few apiserver round trips.
            duration: Family::new_with_constructor(|| {
                Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 13))
            }),
            invalid: Family::default(),
        };
        registry.register("reconcile_runs", "Reconciles started", m.runs.clone());
        registry.register("reconcile_failures", "Reconciles that failed, by error", m.failures.clone());
        registry.register_with_unit(
            "reconcile_duration",
            "Time spent in one reconcile",
            prometheus_client::registry::Unit::Seconds,
            m.duration.clone(),
        );
        registry.register("policy_invalid", "Reconciles that found the policy invalid", m.invalid.clone());
        m
    }

    /// The `levee_paused` gauge: 1 while the pause switch stops levee from acting.
    pub fn register_paused(registry: &mut Registry) -> Gauge {
        let gauge = Gauge::default();
        registry.register("paused", "1 while the pause ConfigMap stops levee from acting", gauge.clone());
        gauge
    }

    pub fn kind(kind: &str) -> KindLabels {
        KindLabels { kind: kind.to_owned() }
    }
}
