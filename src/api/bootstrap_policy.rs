//! `BootstrapPolicy`: bring a service up from zero live instances, in dependency order.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Duration, Mode, OpenPage, SecretKeyRef, impl_policy_status};

/// Cold-start stages in dependency order (database → API → workers), brought up in waves
/// behind an edge admission gate, with protection against health-check death spirals.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "levee.dev",
    version = "v1alpha1",
    kind = "BootstrapPolicy",
    namespaced,
    doc = "Bring a service up from zero live instances, in dependency order.",
    status = "BootstrapPolicyStatus",
    shortname = "lbp",
    category = "levee",
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.admissionGate) || !has(self.admissionGate.opensAfter) || self.admissionGate.opensAfter.all(n, self.stages.exists(s, s.name == n))").message("spec.admissionGate.opensAfter must name stages of this policy"))]
pub struct BootstrapPolicySpec {
    /// Stages, each started once the stages it depends on are ready.
    #[schemars(length(min = 1, max = 16))]
    #[x_kube(validation = Rule::new("self.all(s, self.exists_one(t, t.name == s.name))").message("spec.stages: stage names must be unique"))]
    #[x_kube(validation = Rule::new("self.all(s, s.dependsOn.all(d, self.exists(t, t.name == d)))").message("spec.stages[].dependsOn must name stages of this policy"))]
    pub stages: Vec<Stage>,
    /// Gate at the edge that admits clients gradually while the service warms up: a
    /// Mitigation (`match.all`, action `Admit`) the pool's edges enforce. During a cold start
    /// it admits no one (503 at once, instead of a timeout); once the stages clients need are
    /// ready (`opensAfter`; every stage by default) it admits `initialPercent` of clients,
    /// rising to all of them over `rampUp`, and is then deleted. It lapses a minute after the
    /// operator last renewed it.
    #[serde(default)]
    pub admission_gate: AdmissionGate,
    /// Stop health checks from killing every instance when a shared dependency is slow.
    #[serde(default)]
    pub death_spiral_protection: DeathSpiralProtection,
    /// `Enforce` acts; `Shadow` records what it would do.
    #[serde(default)]
    pub mode: Mode,
    /// Where to page the on-call: when a cold start begins, and when a death spiral is
    /// suspected; the page is resolved when the fleet is up and no spiral is suspected. A
    /// policy without `page` never pages; one in Shadow mode or paused pages nothing new.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page: Option<BootstrapPage>,
}

/// Where a BootstrapPolicy pages.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BootstrapPage {
    /// Secret key holding the pager route (a PagerDuty routing key or a webhook URL).
    pub route_secret_ref: SecretKeyRef,
}

/// One stage of a cold start.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.wavePercent > 0 && self.wavePercent <= 100").message("spec.stages[].wavePercent must be in 1..100"))]
pub struct Stage {
    /// Stage name, unique within the policy.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// Workloads started in this stage.
    #[schemars(length(min = 1, max = 32))]
    pub targets: Vec<StageTarget>,
    /// Stages that must be ready first.
    #[serde(default)]
    #[schemars(length(max = 16))]
    pub depends_on: Vec<String>,
    /// Percent of the stage's replicas started per wave.
    #[serde(default = "default_wave_percent")]
    pub wave_percent: i32,
    /// Time between waves.
    #[serde(default = "default_wave_interval")]
    #[x_kube(validation = Rule::new("duration(self) <= duration('30m')").message("spec.stages[].waveInterval must be at most 30m"))]
    pub wave_interval: Duration,
    /// A stage not ready within this time is reported: the `StagesOnSchedule` condition turns
    /// False (reason `Late`) and a Warning Event `StageLate` names it.
    #[serde(default = "default_ready_within")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('10s') && duration(self) <= duration('2h')").message("spec.stages[].readyWithin must be between 10s and 2h"))]
    pub ready_within: Duration,
}

fn default_wave_percent() -> i32 {
    25
}
fn default_wave_interval() -> Duration {
    Duration::from_secs(30)
}
fn default_ready_within() -> Duration {
    Duration::from_secs(600)
}

/// Kinds of workload a stage can start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum StageTargetKind {
    Deployment,
    StatefulSet,
}

/// A workload in a stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StageTarget {
    /// `Deployment` or `StatefulSet`.
    pub kind: StageTargetKind,
    /// Name, in the policy's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Replicas to reach in this stage.
    #[schemars(range(min = 1))]
    pub replicas: i32,
}

/// Admit traffic gradually while the service warms up.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.initialPercent > 0 && self.initialPercent <= 100").message("spec.admissionGate.initialPercent must be in 1..100"))]
pub struct AdmissionGate {
    /// Use the gate.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Percent of clients admitted once the stages of `opensAfter` are ready.
    #[serde(default = "default_initial_percent")]
    pub initial_percent: i32,
    /// Time to ramp from `initialPercent` to 100%.
    #[serde(default = "default_ramp")]
    #[x_kube(validation = Rule::new("duration(self) <= duration('1h')").message("spec.admissionGate.rampUp must be at most 1h"))]
    pub ramp_up: Duration,
    /// The edge pool in front of the fleet, whose edges enforce the gate.
    #[serde(default = "default_edge_pool")]
    #[schemars(length(min = 1, max = 63))]
    pub edge_pool: String,
    /// The stages clients need: the gate begins to open once these, and the stages they depend
    /// on, are ready, while later stages (batch workers, say) may still be starting. Empty (the
    /// default): every stage. Without it, one stage that never comes up keeps every client
    /// out, however many instances could serve them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub opens_after: Vec<String>,
}

impl Default for AdmissionGate {
    fn default() -> Self {
        Self {
            enabled: true,
            initial_percent: default_initial_percent(),
            ramp_up: default_ramp(),
            edge_pool: default_edge_pool(),
            opens_after: Vec::new(),
        }
    }
}

fn default_edge_pool() -> String {
    "public".to_owned()
}

fn yes() -> bool {
    true
}
fn default_initial_percent() -> i32 {
    10
}
fn default_ramp() -> Duration {
    Duration::from_secs(300)
}

/// Death-spiral protection.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.maxUnhealthyFraction > 0.0 && self.maxUnhealthyFraction <= 1.0").message("spec.deathSpiralProtection.maxUnhealthyFraction must be in (0, 1]"))]
pub struct DeathSpiralProtection {
    /// Use the protection.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// When more than this fraction of a stage target's instances that were ready within the
    /// last minute fail their readiness checks (at least two were ready), the cause is taken
    /// to be shared (a slow dependency): a Warning Event `DeathSpiralSuspected` says so, the
    /// `NoDeathSpiral` condition turns False, and the `services` route to every instance
    /// until all but half this fraction of them are ready again (`DeathSpiralCleared`). Not
    /// judged during a cold start.
    #[serde(default = "default_unhealthy_fraction")]
    pub max_unhealthy_fraction: f64,
    /// Services, in the policy's namespace, that keep sending traffic to every instance while
    /// a spiral is suspected (`publishNotReadyAddresses`, like a load balancer's panic
    /// threshold), instead of to the few still passing, which would fail next. levee marks
    /// a Service it changed with the annotation `levee.dev/death-spiral-since` and restores
    /// only those. (The kubelet's liveness restarts are not levee's to stop: a liveness probe
    /// that does not depend on shared dependencies avoids them.)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
}

impl Default for DeathSpiralProtection {
    fn default() -> Self {
        Self { enabled: true, max_unhealthy_fraction: default_unhealthy_fraction(), services: Vec::new() }
    }
}

fn default_unhealthy_fraction() -> f64 {
    0.5
}

/// Progress of a bootstrap.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BootstrapPolicyStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Standard conditions: `Ready`, `Invalid` (and `SignalsAvailable` on ScalingPolicy).
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// `Idle`, `Bootstrapping` or `Complete`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// The stages being started, comma-separated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_stage: Option<String>,
    /// When the cold start being brought up began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
    /// The stages started in this cold start: when each began and last raised a wave.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<StageStatus>,
    /// What is going on, in one line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The page sent and not yet resolved, so a restarted operator neither pages again for
    /// the same trouble nor leaves its page open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_page: Option<OpenPage>,
}

/// A stage of a cold start in progress.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StageStatus {
    pub name: String,
    pub started_at: Time,
    pub last_wave_at: Time,
}

impl_policy_status!(BootstrapPolicyStatus);
