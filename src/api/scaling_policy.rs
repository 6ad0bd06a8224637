//! `ScalingPolicy`: scale one target ahead of demand from declared signals.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Duration, Mode, OpenPage, SecretKeyRef, impl_policy_status};

/// Scale one target (a Deployment, StatefulSet, ECS service or set of RDS read replicas)
/// from traffic, backlog and lag signals, ahead of demand.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "levee.dev",
    version = "v1alpha1",
    kind = "ScalingPolicy",
    namespaced,
    doc = "Scale one target ahead of demand from traffic, backlog and lag signals.",
    status = "ScalingPolicyStatus",
    shortname = "lsp",
    category = "levee",
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#,
    printcolumn = r#"{"name":"Current","type":"integer","jsonPath":".status.currentReplicas"}"#,
    printcolumn = r#"{"name":"Desired","type":"integer","jsonPath":".status.desiredReplicas"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.lastDecision.reason","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ScalingPolicySpec {
    /// What to scale. Exactly one target kind must be set.
    pub target: ScaleTarget,
    /// Signals that measure demand on the target. At least one is required.
    #[schemars(length(min = 1, max = 16))]
    #[x_kube(validation = Rule::new("self.all(s, self.exists_one(t, t.name == s.name))").message("spec.signals: signal names must be unique"))]
    pub signals: Vec<Signal>,
    /// How much work one replica does, turning demand into a replica count.
    pub capacity: CapacityModel,
    /// Forecasting: how far ahead to look and how cautious to be.
    #[serde(default)]
    pub forecast: ForecastSpec,
    /// Replica bounds and anti-flapping controls.
    pub bounds: Bounds,
    /// What to do when a signal is missing, NaN or stale. Missing data is never zero load.
    #[serde(default)]
    pub on_signal_loss: SignalLoss,
    /// `Enforce` scales the target; `Shadow` only records what it would do.
    #[serde(default)]
    pub mode: Mode,
    /// Page the on-call when the policy cannot keep up: demand needs more replicas than
    /// `bounds.maxReplicas`, or a signal is lost. Without it, Events and status only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page: Option<ScalingPage>,
}

/// When and where a ScalingPolicy pages.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScalingPage {
    /// How long the policy must be unable to keep up, without a break, before it pages: a
    /// peak that the bounds cut for a minute is not worth waking anyone.
    #[serde(default = "default_page_after")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s') && duration(self) <= duration('24h')").message("spec.page.after must be between 1s and 24h"))]
    pub after: Duration,
    /// Secret key holding the pager route (a PagerDuty routing key or a webhook URL).
    pub route_secret_ref: SecretKeyRef,
}

fn default_page_after() -> Duration {
    Duration::from_secs(300)
}

/// The workload levee scales. Exactly one field is set.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.deployment), has(self.statefulSet), has(self.ecsService), has(self.rdsReadReplicas)].exists_one(x, x)").message("spec.target: exactly one of deployment, statefulSet, ecsService, rdsReadReplicas must be set"))]
pub struct ScaleTarget {
    /// A Deployment in the policy's namespace, scaled through its scale subresource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<WorkloadRef>,
    /// A StatefulSet in the policy's namespace, scaled through its scale subresource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stateful_set: Option<WorkloadRef>,
    /// An AWS ECS service, scaled through `UpdateService` desiredCount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecs_service: Option<EcsServiceRef>,
    /// AWS RDS read replicas of a source instance, added with
    /// `CreateDBInstanceReadReplica` and removed only if levee created them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rds_read_replicas: Option<RdsReplicasRef>,
}

impl std::fmt::Display for ScaleTarget {
    /// `Deployment/api`, `StatefulSet/db`, `ECS shop/api`, `RDS replicas of orders`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self { deployment: Some(d), .. } => write!(f, "Deployment/{}", d.name),
            Self { stateful_set: Some(s), .. } => write!(f, "StatefulSet/{}", s.name),
            Self { ecs_service: Some(e), .. } => write!(f, "ECS {}/{}", e.cluster, e.service),
            Self { rds_read_replicas: Some(r), .. } => write!(f, "RDS replicas of {}", r.source_instance),
            _ => f.write_str("no target"),
        }
    }
}

/// A namespaced workload by name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WorkloadRef {
    /// Name of the workload in the policy's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// An ECS service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EcsServiceRef {
    /// ECS cluster name or ARN.
    #[schemars(length(min = 1, max = 2048))]
    pub cluster: String,
    /// ECS service name or ARN.
    #[schemars(length(min = 1, max = 2048))]
    pub service: String,
    /// AWS region; the operator's default region when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

/// Read replicas of an RDS instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RdsReplicasRef {
    /// Identifier of the source (primary) DB instance.
    #[schemars(length(min = 1, max = 63))]
    pub source_instance: String,
    /// Instance class for replicas levee creates, e.g. `db.r6g.large`.
    #[schemars(length(min = 1, max = 64))]
    pub instance_class: String,
    /// Prefix of the identifiers of replicas levee creates; a counter is appended.
    #[schemars(length(min = 1, max = 40))]
    pub replica_prefix: String,
    /// AWS region; the operator's default region when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

/// What a signal measures, which decides how the capacity model uses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SignalRole {
    /// Units of work arriving per second (requests/s, messages/s). Forecast and planned for.
    ArrivalRate,
    /// Units of work waiting (queue ready + unacked). Drained within `capacity.drainWithin`.
    Backlog,
    /// Database replica lag in seconds. Kept under `capacity.maxReplicaLag`.
    ReplicaLag,
}

/// One demand signal. Exactly one source (`prometheus`, `rabbitmq`, `sqs`, `postgres`) is set.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.prometheus), has(self.rabbitmq), has(self.sqs), has(self.postgres)].exists_one(x, x)").message("spec.signals[]: exactly one of prometheus, rabbitmq, sqs, postgres must be set"))]
#[x_kube(validation = Rule::new("!has(self.postgres) || self.role == 'ReplicaLag'").message("spec.signals[].role: a postgres signal measures replica lag and must have role ReplicaLag"))]
#[x_kube(validation = Rule::new("!has(self.rabbitmq) || self.role != 'ReplicaLag'").message("spec.signals[].role: a rabbitmq signal measures ArrivalRate or Backlog"))]
#[x_kube(validation = Rule::new("!has(self.sqs) || self.role == 'Backlog'").message("spec.signals[].role: an sqs signal measures a queue's depth and must have role Backlog (SQS reports no arrival rate)"))]
pub struct Signal {
    /// Name of the signal, unique within the policy; used in status and decisions.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// What the signal measures.
    pub role: SignalRole,
    /// A PromQL instant query returning one series.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusSignal>,
    /// A RabbitMQ queue, read through the management API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rabbitmq: Option<RabbitMqSignal>,
    /// An Amazon SQS queue: its visible and in-flight messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sqs: Option<SqsSignal>,
    /// Replay lag of a PostgreSQL streaming replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresSignal>,
}

/// A PromQL query.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusSignal {
    /// PromQL expression evaluated as an instant query; it must return a single sample.
    #[schemars(length(min = 1, max = 4096))]
    pub query: String,
    /// Prometheus base URL; the operator's `--prometheus-url` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// A RabbitMQ queue (Celery uses one per routing key).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RabbitMqSignal {
    /// Management API base URL, e.g. `http://rabbitmq:15672`.
    #[schemars(length(min = 1, max = 2048))]
    pub management_url: String,
    /// Queue name.
    #[schemars(length(min = 1, max = 255))]
    pub queue: String,
    /// Virtual host of the queue.
    #[serde(default = "default_vhost")]
    pub vhost: String,
    /// Secret key holding `user:password` for the management API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretKeyRef>,
}

fn default_vhost() -> String {
    "/".into()
}

/// An Amazon SQS queue, read with the operator's AWS credentials (the SDK's default chain).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SqsSignal {
    /// Queue URL, as `GetQueueUrl` returns it.
    #[schemars(length(min = 1, max = 2048))]
    pub queue_url: String,
    /// AWS region; the operator's default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

/// A PostgreSQL streaming replica.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PostgresSignal {
    /// Secret key holding a libpq connection string to the replica.
    pub connection_secret_ref: SecretKeyRef,
}

/// Turns demand into replicas: replicas = (arrival × work + backlog / drainWithin) / (perReplica × utilisation).
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.targetUtilization > 0.0 && self.targetUtilization <= 1.0").message("spec.capacity.targetUtilization must be in (0, 1]"))]
#[x_kube(validation = Rule::new("self.unitsPerReplica > 0.0").message("spec.capacity.unitsPerReplica must be greater than 0"))]
pub struct CapacityModel {
    /// Units of work per second one replica completes at full utilisation.
    pub units_per_replica: f64,
    /// Fraction of a replica's capacity to plan for, in (0, 1].
    #[serde(default = "default_utilization")]
    pub target_utilization: f64,
    /// A backlog must be drained within this time.
    #[serde(default = "default_drain_within")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s') && duration(self) <= duration('24h')").message("spec.capacity.drainWithin must be between 1s and 24h"))]
    pub drain_within: Duration,
    /// Replica lag above which one more replica is wanted (ReplicaLag signals only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replica_lag: Option<Duration>,
}

fn default_utilization() -> f64 {
    0.7
}
fn default_drain_within() -> Duration {
    Duration::from_secs(300)
}

/// Seasonal patterns the forecaster looks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Seasonality {
    /// Trend only.
    None,
    /// A daily cycle.
    Daily,
    /// Daily and weekly cycles.
    Weekly,
    /// Whatever the history supports (daily after 24 h, weekly after 14 days).
    #[default]
    Auto,
}

/// How far ahead to forecast and how cautiously.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.quantile > 0.0 && self.quantile < 1.0").message("spec.forecast.quantile must be in (0, 1)"))]
pub struct ForecastSpec {
    /// Lead time to start with: the time from a scale request until new capacity is ready.
    #[serde(default = "default_lead_time")]
    #[x_kube(validation = Rule::new("duration(self) <= duration('2h')").message("spec.forecast.leadTime must be at most 2h"))]
    pub lead_time: Duration,
    /// Learn the lead time from observed scale-request-to-ready times (p90).
    #[serde(default = "yes")]
    pub learn_lead_time: bool,
    /// Seasonal cycles to model.
    #[serde(default)]
    pub seasonality: Seasonality,
    /// Forecast quantile planned for, in (0, 1); higher is more cautious.
    #[serde(default = "default_quantile")]
    pub quantile: f64,
}

impl Default for ForecastSpec {
    fn default() -> Self {
        Self {
            lead_time: default_lead_time(),
            learn_lead_time: true,
            seasonality: Seasonality::default(),
            quantile: default_quantile(),
        }
    }
}

fn default_lead_time() -> Duration {
    Duration::from_secs(120)
}
fn default_quantile() -> f64 {
    0.9
}
fn yes() -> bool {
    true
}

/// Replica bounds and controls against flapping.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("spec.bounds: minReplicas must be less than or equal to maxReplicas"))]
pub struct Bounds {
    /// Never fewer replicas than this.
    #[schemars(range(min = 0))]
    pub min_replicas: i32,
    /// Never more replicas than this.
    #[schemars(range(min = 1))]
    pub max_replicas: i32,
    /// Most replicas added in one decision; unlimited when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_step_up: Option<i32>,
    /// Most replicas removed in one decision; unlimited when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_step_down: Option<i32>,
    /// Scale down only to the highest recommendation seen in this window.
    #[serde(default = "default_stabilization")]
    #[x_kube(validation = Rule::new("duration(self) <= duration('1h')").message("spec.bounds.scaleDownStabilization must be at most 1h"))]
    pub scale_down_stabilization: Duration,
    /// Most direction changes (up then down or back) allowed per `reversalWindow`.
    #[serde(default = "default_reversals")]
    #[schemars(range(min = 0, max = 100))]
    pub max_reversals: i32,
    /// The window `maxReversals` counts over.
    #[serde(default = "default_reversal_window")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1m') && duration(self) <= duration('24h')").message("spec.bounds.reversalWindow must be between 1m and 24h"))]
    pub reversal_window: Duration,
}

fn default_stabilization() -> Duration {
    Duration::from_secs(300)
}
fn default_reversals() -> i32 {
    4
}
fn default_reversal_window() -> Duration {
    Duration::from_secs(3600)
}

/// Behaviour when a signal is missing, NaN or stale.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SignalLossAction {
    /// Keep the current replica count (never scale down on missing data).
    #[default]
    Hold,
    /// Go to `fallbackReplicas`, but never below the current count.
    Fallback,
}

/// What to do when signals are lost.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.action != 'Fallback' || has(self.fallbackReplicas)").message("spec.onSignalLoss.fallbackReplicas is required when action is Fallback"))]
pub struct SignalLoss {
    /// `Hold` or `Fallback`.
    #[serde(default)]
    pub action: SignalLossAction,
    /// Replicas to run while signals are lost, when action is `Fallback`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub fallback_replicas: Option<i32>,
    /// A sample older than this counts as lost.
    #[serde(default = "default_stale_after")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s') && duration(self) <= duration('1h')").message("spec.onSignalLoss.staleAfter must be between 1s and 1h"))]
    pub stale_after: Duration,
}

impl Default for SignalLoss {
    fn default() -> Self {
        Self { action: SignalLossAction::Hold, fallback_replicas: None, stale_after: default_stale_after() }
    }
}

fn default_stale_after() -> Duration {
    Duration::from_secs(60)
}

/// What the operator last saw and decided.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalingPolicyStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Standard conditions: `Ready`, `Invalid` (and `SignalsAvailable` on ScalingPolicy).
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Replicas the target runs now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_replicas: Option<i32>,
    /// Replicas levee wants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_replicas: Option<i32>,
    /// The latest arrival-rate forecast at the lead time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forecast: Option<ForecastStatus>,
    /// Lead time learned from observed scale-ups, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learned_lead_time_seconds: Option<f64>,
    /// The last scaling decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_decision: Option<DecisionStatus>,
    /// The page sent and not yet resolved, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_page: Option<OpenPage>,
}

/// A forecast with its band.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ForecastStatus {
    /// Point forecast (units/s).
    pub value: f64,
    /// Lower edge of the band.
    pub lower: f64,
    /// Upper edge of the band (the planned quantile).
    pub upper: f64,
    /// How far ahead, in seconds.
    pub horizon_seconds: f64,
    /// The model that produced it.
    pub model: String,
}

/// One scaling decision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DecisionStatus {
    /// When it was made.
    pub time: Time,
    /// Replicas before.
    pub from: i32,
    /// Replicas after.
    pub to: i32,
    /// Machine-readable reason, e.g. `ForecastScaleUp`, `SignalLossHold`.
    pub reason: String,
    /// One human sentence with the numbers behind it.
    pub message: String,
}

impl_policy_status!(ScalingPolicyStatus);
