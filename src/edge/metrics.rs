//! Edge metrics (`levee_edge_*` on the admin port's `/metrics`). Counters are created once and
//! cloned into the request path, so counting a request is an atomic add, not a map lookup.

use prometheus_client::{
    metrics::{counter::Counter, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};

#[derive(Clone)]
pub struct EdgeMetrics {
    pub forwarded: Counter,
    pub limited: Counter,
    pub blocked: Counter,
    pub gated: Counter,
    pub shadow_limited: Counter,
    pub breaker_refused: Counter,
    pub upstream_errors: Counter,
    pub upstream_seconds: Histogram,
    pub breaker_open: Gauge,
    pub rules: Gauge,
    pub rules_skipped: Gauge,
    pub reports_sent: Counter,
    pub reports_failed: Counter,
}

impl EdgeMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            forwarded: Counter::default(),
            limited: Counter::default(),
            blocked: Counter::default(),
            gated: Counter::default(),
            shadow_limited: Counter::default(),
            breaker_refused: Counter::default(),
            upstream_errors: Counter::default(),
            // 0.5 ms .. ~8 s.
            upstream_seconds: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.0005, 2.0, 15,
            )),
            breaker_open: Gauge::default(),
            rules: Gauge::default(),
            rules_skipped: Gauge::default(),
            reports_sent: Counter::default(),
            reports_failed: Counter::default(),
        };
        let r = registry;
        r.register("edge_forwarded", "Requests forwarded to the upstream", m.forwarded.clone());
        r.register("edge_limited", "Requests answered 429 by a rate-limit mitigation", m.limited.clone());
        r.register("edge_blocked", "Requests answered 403 by a block mitigation", m.blocked.clone());
        r.register("edge_gated", "Requests answered 503 by an admission gate (an Admit mitigation)", m.gated.clone());
        r.register("edge_shadow_limited", "Requests a shadow mitigation would have limited", m.shadow_limited.clone());
        r.register(
            "edge_breaker_refused",
            "Requests answered 503 because the breaker was open",
            m.breaker_refused.clone(),
        );
        r.register(
            "edge_upstream_errors",
            "Upstream calls that failed to connect or timed out",
            m.upstream_errors.clone(),
        );
        r.register_with_unit(
            "edge_upstream_duration",
            "Upstream response time (to headers)",
            Unit::Seconds,
            m.upstream_seconds.clone(),
        );
        r.register("edge_breaker_open", "1 while the upstream's circuit breaker is open", m.breaker_open.clone());
        r.register("edge_rules", "Mitigations in force on this edge", m.rules.clone());
        r.register("edge_rules_skipped", "Mitigations this edge cannot enforce (see its log)", m.rules_skipped.clone());
        r.register("edge_reports_sent", "Reports the operator accepted", m.reports_sent.clone());
        r.register("edge_reports_failed", "Reports that could not be delivered", m.reports_failed.clone());
        m
    }
}
