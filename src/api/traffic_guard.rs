//! `TrafficGuard`: detect anomalous traffic at an edge pool and mitigate it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Duration, Mode, OpenPage, SecretKeyRef, impl_policy_status};

/// Watch the traffic of an edge pool, flag sources far above their baseline (alone or as a
/// distributed surge), and create TTL-bound `Mitigation`s that every edge enforces.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "levee.dev",
    version = "v1alpha1",
    kind = "TrafficGuard",
    namespaced,
    doc = "Detect anomalous traffic at an edge pool and mitigate it with TTL-bound Mitigations.",
    status = "TrafficGuardStatus",
    shortname = "ltg",
    category = "levee",
    printcolumn = r#"{"name":"Pool","type":"string","jsonPath":".spec.edgePool"}"#,
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#,
    printcolumn = r#"{"name":"Edges","type":"integer","jsonPath":".status.edgesReporting"}"#,
    printcolumn = r#"{"name":"Active","type":"integer","jsonPath":".status.activeMitigations"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!self.aggregationKeys.exists(k, k == 'ApiKey') || has(self.apiKeyHeader)").message("spec.apiKeyHeader is required when aggregationKeys contains ApiKey"))]
#[x_kube(validation = Rule::new("self.baseline.source != 'Prometheus' || has(self.baseline.prometheusQuery)").message("spec.baseline.prometheusQuery is required when baseline.source is Prometheus"))]
pub struct TrafficGuardSpec {
    /// Name of the edge pool (the `--pool` of `levee edge`) this guard watches.
    #[schemars(length(min = 1, max = 63))]
    pub edge_pool: String,
    /// Keys traffic is counted and limited by.
    #[schemars(length(min = 1, max = 5))]
    pub aggregation_keys: Vec<AggregationKey>,
    /// Header carrying the API key, when `ApiKey` is an aggregation key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub api_key_header: Option<String>,
    /// Where normal traffic levels come from.
    #[serde(default)]
    pub baseline: Baseline,
    /// How far from baseline is anomalous.
    #[serde(default)]
    pub sensitivity: Sensitivity,
    /// What happens to a flagged source.
    #[serde(default)]
    pub mitigation: MitigationPolicy,
    /// Circuit breakers, one per upstream.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub circuit_breakers: Vec<CircuitBreaker>,
    /// Priority shedding: which traffic classes are limited first under pressure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shedding: Option<Shedding>,
    /// Sources that are never limited or blocked: CIDRs such as `10.0.0.0/8`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub allowlist: Vec<String>,
    /// When and where to page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page: Option<PagePolicy>,
    /// `Enforce` creates Mitigations; `Shadow` counts what would have been limited.
    #[serde(default)]
    pub mode: Mode,
}

/// A key traffic is aggregated by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
pub enum AggregationKey {
    /// The client IP address.
    Ip,
    /// The client's /24 (IPv4) or /64 (IPv6) prefix.
    Prefix,
    /// The client's autonomous system, from the edge's prefix table.
    Asn,
    /// The client's country, from the edge's prefix table.
    Country,
    /// The value of `apiKeyHeader`.
    ApiKey,
}

/// Where baselines come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum BaselineSource {
    /// Learned online from edge reports (robust EWMA and MAD); useful within minutes.
    #[default]
    Edge,
    /// Seeded from Prometheus history over `window` (when the guard starts or changes; retried
    /// every minute while Prometheus fails), then kept up to date from edge reports. History
    /// of a day or more also gives the pool's daily shape: baselines then follow the time of
    /// day.
    Prometheus,
}

/// Baseline configuration.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Baseline {
    /// `Edge` or `Prometheus`.
    #[serde(default)]
    pub source: BaselineSource,
    /// PromQL returning request rates (req/s) when source is `Prometheus`. A series labelled
    /// `ip`, `prefix`, `asn`, `country` or `api_key` is that source's rate (for example
    /// `sum by (country) (rate(http_requests_total[1m]))`); series with none of these labels
    /// are summed into the pool's total. The operator's `--prometheus-url` is queried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub prometheus_query: Option<String>,
    /// Time constant of the baseline's moving average, and the history read from Prometheus.
    /// With `source: Prometheus`, a window of 24h or more gives baselines that follow the
    /// time of day (the pool's total over the window, quarter hour by quarter hour).
    #[serde(default = "default_baseline_window")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1m') && duration(self) <= duration('168h')").message("spec.baseline.window must be between 1m and 168h"))]
    pub window: Duration,
}

impl Default for Baseline {
    fn default() -> Self {
        Self { source: BaselineSource::Edge, prometheus_query: None, window: default_baseline_window() }
    }
}

fn default_baseline_window() -> Duration {
    Duration::from_secs(3600)
}

/// Detection sensitivity: a lower threshold flags sooner and more often.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Sensitivity {
    /// Only gross anomalies.
    Low,
    /// The default.
    #[default]
    Medium,
    /// Flags early; expect more mitigations.
    High,
}

/// What a mitigation does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum GuardAction {
    /// Limit the source to a multiple of its baseline.
    #[default]
    RateLimit,
    /// Refuse the source outright.
    Block,
}

/// Mitigation settings.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.rateLimitMultiple >= 1.0 && self.rateLimitMultiple <= 1000.0").message("spec.mitigation.rateLimitMultiple must be between 1 and 1000"))]
pub struct MitigationPolicy {
    /// `RateLimit` or `Block`.
    #[serde(default)]
    pub action: GuardAction,
    /// A rate-limited source may send this multiple of its baseline.
    #[serde(default = "default_multiple")]
    pub rate_limit_multiple: f64,
    /// Lifetime of a first mitigation.
    #[serde(default = "default_ttl")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('10s') && duration(self) <= duration('24h')").message("spec.mitigation.ttl must be between 10s and 24h"))]
    pub ttl: Duration,
    /// Lifetimes for repeat offenders, in order (e.g. 15m, 60m); the last one repeats.
    #[serde(default = "default_escalation")]
    #[schemars(length(max = 8))]
    #[x_kube(validation = Rule::new("self.all(d, duration(d) >= duration('10s') && duration(d) <= duration('24h'))").message("spec.mitigation.escalation: every TTL must be between 10s and 24h"))]
    pub escalation: Vec<Duration>,
    /// Most mitigations this guard keeps active at once.
    #[serde(default = "default_max_active")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_active: i32,
}

impl Default for MitigationPolicy {
    fn default() -> Self {
        Self {
            action: GuardAction::RateLimit,
            rate_limit_multiple: default_multiple(),
            ttl: default_ttl(),
            escalation: default_escalation(),
            max_active: default_max_active(),
        }
    }
}

fn default_multiple() -> f64 {
    2.0
}
fn default_ttl() -> Duration {
    Duration::from_secs(300)
}
fn default_escalation() -> Vec<Duration> {
    vec![Duration::from_secs(900), Duration::from_secs(3600)]
}
fn default_max_active() -> i32 {
    1000
}

/// A circuit breaker protecting one upstream.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.errorRatio > 0.0 && self.errorRatio <= 1.0").message("spec.circuitBreakers[].errorRatio must be in (0, 1]"))]
#[x_kube(validation = Rule::new("self.slowCallRatio > 0.0 && self.slowCallRatio <= 1.0").message("spec.circuitBreakers[].slowCallRatio must be in (0, 1]"))]
pub struct CircuitBreaker {
    /// Upstream name, as configured on the edge.
    #[schemars(length(min = 1, max = 253))]
    pub upstream: String,
    /// Open after this many failures in a row.
    #[serde(default = "default_consecutive")]
    #[schemars(range(min = 1, max = 1000))]
    pub consecutive_failures: i32,
    /// Open when the failed fraction of calls in the window reaches this.
    #[serde(default = "default_error_ratio")]
    pub error_ratio: f64,
    /// Open when the fraction of calls slower than `slowCallThreshold` reaches this.
    #[serde(default = "default_slow_ratio")]
    pub slow_call_ratio: f64,
    /// A call slower than this counts as slow.
    #[serde(default = "default_slow_threshold")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1ms') && duration(self) <= duration('5m')").message("spec.circuitBreakers[].slowCallThreshold must be between 1ms and 5m"))]
    pub slow_call_threshold: Duration,
    /// The sliding window ratios are computed over.
    #[serde(default = "default_cb_window")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s') && duration(self) <= duration('10m')").message("spec.circuitBreakers[].window must be between 1s and 10m"))]
    pub window: Duration,
    /// Ratios are only judged once the window holds this many calls.
    #[serde(default = "default_min_calls")]
    #[schemars(range(min = 1, max = 10000))]
    pub min_calls: i32,
    /// How long the breaker stays open before half-open probes.
    #[serde(default = "default_open_for")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('100ms') && duration(self) <= duration('10m')").message("spec.circuitBreakers[].openFor must be between 100ms and 10m"))]
    pub open_for: Duration,
}

fn default_consecutive() -> i32 {
    5
}
fn default_error_ratio() -> f64 {
    0.5
}
fn default_slow_ratio() -> f64 {
    0.8
}
fn default_slow_threshold() -> Duration {
    Duration::from_secs(2)
}
fn default_cb_window() -> Duration {
    Duration::from_secs(10)
}
fn default_min_calls() -> i32 {
    5
}
fn default_open_for() -> Duration {
    Duration::from_secs(5)
}

/// Traffic classes, shed lowest priority first.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Shedding {
    /// Request header naming a request's class; routes are used when it is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub class_header: Option<String>,
    /// The classes. Names must be unique.
    #[schemars(length(min = 1, max = 16))]
    #[x_kube(validation = Rule::new("self.all(c, self.exists_one(d, d.name == c.name))").message("spec.shedding.classes: class names must be unique"))]
    pub classes: Vec<TrafficClass>,
}

/// One traffic class.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficClass {
    /// Class name (the value of `classHeader`).
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// Higher is more important; the highest class is shed last.
    #[schemars(range(min = 0, max = 1000))]
    pub priority: i32,
    /// Path prefixes that belong to this class.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub path_prefixes: Vec<String>,
}

/// When the guard pages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PageWhen {
    /// Never page; Events and status only.
    Never,
    /// Page when a mitigation is first created for an incident.
    #[default]
    Mitigation,
    /// Page only when a source is escalated.
    Escalation,
}

/// Paging configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PagePolicy {
    /// When to page.
    #[serde(default)]
    pub when: PageWhen,
    /// Secret key holding the pager route (e.g. a PagerDuty routing key or webhook URL).
    pub route_secret_ref: SecretKeyRef,
}

/// What the guard has seen and done.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficGuardStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Standard conditions: `Ready`, `Invalid` (and `SignalsAvailable` on ScalingPolicy).
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Mitigations of this guard that have not expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_mitigations: Option<i32>,
    /// The most recent detection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_detection: Option<Detection>,
    /// Edges of the pool that reported in the last few seconds (0: none is reporting, so
    /// nothing is being detected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edges_reporting: Option<i32>,
    /// The page sent and not yet resolved, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_page: Option<OpenPage>,
    /// The pool's daily shape in force: how busy each quarter hour of the day (UTC, from
    /// 00:00) is against the day's mean. Kept here so that a restarted operator resumes with
    /// the shape it learnt from edge reports instead of learning it for another day.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 96))]
    pub daily_shape: Vec<f64>,
}

/// One detection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Detection {
    /// When.
    pub time: Time,
    /// One sentence: what was seen and against which baseline.
    pub summary: String,
}

impl_policy_status!(TrafficGuardStatus);
