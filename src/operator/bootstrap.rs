//! The BootstrapPolicy loop: every few seconds, read each stage's workloads, plan with
//! [`crate::engine::bootstrap`], scale (unless in Shadow mode or paused), and say what is going
//! on in status and Events.
//!
//! While a cold start is in progress its workloads are claimed: a ScalingPolicy on one of
//! them decides and records but does not scale, so it does not undo the waves (raising the
//! API to its demand at once is the stampede the waves prevent).

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
    time::{Duration, Instant},
};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::events::{Event, EventType, Recorder, Reporter},
};
use serde_json::json;
use tracing::{info, warn};

use super::{
    conditions::{Wanted, merge},
    pause::PauseSwitch,
    scaling::target_reachable,
};
use crate::{
    actuators::{
        ActuatorError,
        kubernetes::{Workload, WorkloadKind},
    },
    api::{
        BootstrapPolicy,
        bootstrap_policy::{StageStatus, StageTargetKind},
    },
    engine::bootstrap::{self, Phase, Progress, Stage, StageProgress, Step},
};

/// Field manager of the status fields this loop writes.
pub const FIELD_MANAGER: &str = "levee-bootstrap";
/// How often each BootstrapPolicy is looked at.
pub const TICK: Duration = Duration::from_secs(5);
/// Condition: every started stage is within its `readyWithin`.
pub const STAGES_ON_SCHEDULE: &str = "StagesOnSchedule";
/// A claim not refreshed for this long has lapsed (its policy was deleted or stopped).
const CLAIM_LAPSES: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Actuator(#[from] ActuatorError),
}

/// Workloads under a cold start in progress, by the policy bringing them up.
#[derive(Default)]
pub struct Claims(Mutex<HashMap<String, (Instant, Vec<String>)>>);

impl Claims {
    /// The key of a workload in claims: `Deployment shop/api`.
    pub fn workload(kind: WorkloadKind, namespace: &str, name: &str) -> String {
        format!("{kind:?} {namespace}/{name}")
    }

    fn set(&self, policy: &str, workloads: Vec<String>) {
        let mut claims = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if workloads.is_empty() {
            claims.remove(policy);
        } else {
            claims.insert(policy.to_owned(), (Instant::now(), workloads));
        }
    }

    /// The BootstrapPolicy bringing `workload` up, if a cold start is in progress for it.
    pub fn holder(&self, workload: &str) -> Option<String> {
        let claims = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        claims
            .iter()
            .find(|(_, (at, ws))| at.elapsed() < CLAIM_LAPSES && ws.iter().any(|w| w == workload))
            .map(|(policy, _)| policy.clone())
    }
}

/// Bootstraps of every BootstrapPolicy.
pub struct Bootstrapper {
    recorder: Recorder,
    pause: PauseSwitch,
    pub claims: std::sync::Arc<Claims>,
    /// Per policy: its progress as last planned (status may not show the last write yet),
    /// and the steps that plan called for.
    progress: Mutex<HashMap<String, (Progress, Vec<Step>)>>,
}

impl Bootstrapper {
    pub fn new(client: Client, pause: PauseSwitch, claims: std::sync::Arc<Claims>) -> Self {
        let reporter = Reporter { controller: "levee".into(), instance: std::env::var("POD_NAME").ok() };
        Self { recorder: Recorder::new(client, reporter), pause, claims, progress: Mutex::new(HashMap::new()) }
    }

    /// One tick of one policy.
    pub async fn tick(&self, client: &Client, policy: &BootstrapPolicy) -> Result<(), BootstrapError> {
        let ns = policy.namespace().unwrap_or_default();
        let key = format!("{ns}/{}", policy.name_any());
        let workloads: Vec<Vec<Workload>> = policy
            .spec
            .stages
            .iter()
            .map(|s| s.targets.iter().map(|t| Workload::new(client.clone(), kind(t.kind), &ns, &t.name)).collect())
            .collect();
        let mut sizes = Vec::new();
        for stage in &workloads {
            let mut stage_sizes = Vec::new();
            for w in stage {
                match w.size().await {
                    Ok(s) => stage_sizes.push(s),
                    Err(e) => {
                        self.write_status(client, policy, None, Some(&e.to_string())).await?;
                        return Err(e.into());
                    }
                }
            }
            sizes.push(stage_sizes);
        }
        let stages: Vec<Stage> = policy
            .spec
            .stages
            .iter()
            .map(|s| Stage {
                name: s.name.clone(),
                depends_on: s.depends_on.clone(),
                goals: s.targets.iter().map(|t| i64::from(t.replicas)).collect(),
                wave_percent: i64::from(s.wave_percent),
                wave_interval: s.wave_interval.as_secs_f64(),
                ready_within: s.ready_within.as_secs_f64(),
            })
            .collect();
        let before = self.progress_of(&key, policy);
        let now = Timestamp::now().as_millisecond() as f64 / 1000.0;
        let plan = bootstrap::plan(&stages, &sizes, &before, now);

        let held = self.pause.held_back(policy.spec.mode);
        let bootstrapping = plan.progress.phase == Phase::Bootstrapping;
        let claimed = if bootstrapping && held.is_none() {
            workloads.iter().flatten().map(|w| Claims::workload(w.kind, &w.namespace, &w.name)).collect()
        } else {
            Vec::new()
        };
        self.claims.set(&key, claimed);

        if bootstrapping && before.phase != Phase::Bootstrapping {
            warn!(policy = %key, "{}", plan.sentence);
            self.event(policy, EventType::Warning, "ColdStart", format!("no instance is ready: {}", plan.sentence))
                .await;
        }
        let last_steps = self.last_steps(&key);
        for step in &plan.steps {
            // Held back, nothing changes, so the same steps come every tick: told once.
            if held.is_some() && last_steps.contains(step) {
                continue;
            }
            let w = &workloads[step.stage][step.target];
            let what =
                format!("stage {}: {:?} {} {} -> {}", stages[step.stage].name, w.kind, w.name, step.from, step.to);
            match held {
                Some(held) => info!(policy = %key, "{held}: {what}"),
                None => {
                    if let Err(e) = w.scale(step.to).await {
                        self.write_status(client, policy, Some(&plan.progress), Some(&e.to_string())).await?;
                        return Err(e.into());
                    }
                    info!(policy = %key, "{what}");
                }
            }
            let note = match held {
                Some(held) => format!("{held} (not applied): {what}"),
                None => what,
            };
            self.event(policy, EventType::Normal, "Wave", note).await;
        }
        if plan.progress.phase == Phase::Complete && before.phase == Phase::Bootstrapping {
            info!(policy = %key, "{}", plan.sentence);
            self.event(policy, EventType::Normal, "BootstrapComplete", plan.sentence.clone()).await;
        }
        let late = plan.late.iter().map(|(stage, secs)| {
            format!("stage {stage} not ready {} after it started", crate::api::Duration::from_secs(*secs as u64))
        });
        let late: Vec<String> = late.collect();
        self.write_status_of(client, policy, &plan.progress, &plan.running, &plan.sentence, &late).await?;
        let memory = (plan.progress, plan.steps);
        self.progress.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(key, memory);
        Ok(())
    }

    fn last_steps(&self, key: &str) -> Vec<Step> {
        let memory = self.progress.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        memory.get(key).map(|(_, steps)| steps.clone()).unwrap_or_default()
    }

    /// The progress last planned, or after a restart what status kept of it.
    fn progress_of(&self, key: &str, policy: &BootstrapPolicy) -> Progress {
        if let Some((p, _)) = self.progress.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(key) {
            return p.clone();
        }
        let Some(status) = &policy.status else { return Progress::default() };
        let secs = |t: &Time| t.0.as_millisecond() as f64 / 1000.0;
        Progress {
            phase: status.phase.as_deref().map_or(Phase::Idle, Phase::parse),
            since: status.since.as_ref().map(secs),
            stages: status
                .stages
                .iter()
                .map(|s| {
                    (
                        s.name.clone(),
                        StageProgress { started_at: secs(&s.started_at), last_wave_at: secs(&s.last_wave_at) },
                    )
                })
                .collect::<BTreeMap<_, _>>(),
        }
    }

    async fn write_status_of(
        &self,
        client: &Client,
        policy: &BootstrapPolicy,
        progress: &Progress,
        running: &[String],
        sentence: &str,
        late: &[String],
    ) -> Result<(), kube::Error> {
        let time =
            |secs: f64| Time(Timestamp::from_millisecond((secs * 1000.0) as i64).unwrap_or_else(|_| Timestamp::now()));
        let stages: Vec<StageStatus> = progress
            .stages
            .iter()
            .map(|(name, p)| StageStatus {
                name: name.clone(),
                started_at: time(p.started_at),
                last_wave_at: time(p.last_wave_at),
            })
            .collect();
        let mut status = json!({
            "phase": progress.phase.as_str(),
            "message": sentence,
            "stages": stages,
        });
        if !running.is_empty() {
            status["currentStage"] = json!(running.join(", "));
        }
        if let Some(since) = progress.since {
            status["since"] = json!(time(since));
        }
        let on_schedule = Wanted {
            type_: STAGES_ON_SCHEDULE,
            status: late.is_empty(),
            reason: if late.is_empty() { "OnSchedule".into() } else { "Late".into() },
            message: late.join("; "),
        };
        self.patch_status(client, policy, status, vec![on_schedule, target_reachable(None)]).await
    }

    /// Status after a target could not be read or scaled: the phase as it was, and why.
    async fn write_status(
        &self,
        client: &Client,
        policy: &BootstrapPolicy,
        progress: Option<&Progress>,
        error: Option<&str>,
    ) -> Result<(), kube::Error> {
        let old = policy.status.as_ref();
        let phase = progress.map(|p| p.phase.as_str()).or(old.and_then(|s| s.phase.as_deref())).unwrap_or("Idle");
        let status = json!({ "phase": phase, "message": error.unwrap_or_default() });
        let keep = old.and_then(|s| s.conditions.iter().find(|c| c.type_ == STAGES_ON_SCHEDULE)).map(|c| Wanted {
            type_: STAGES_ON_SCHEDULE,
            status: c.status == "True",
            reason: c.reason.clone(),
            message: c.message.clone(),
        });
        self.patch_status(client, policy, status, keep.into_iter().chain([target_reachable(error)]).collect()).await
    }

    async fn patch_status(
        &self,
        client: &Client,
        policy: &BootstrapPolicy,
        mut status: serde_json::Value,
        wanted: Vec<Wanted>,
    ) -> Result<(), kube::Error> {
        let existing = policy.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
        status["conditions"] = json!(merge(&existing, &wanted, policy.metadata.generation, Timestamp::now()));
        let patch =
            json!({ "apiVersion": BootstrapPolicy::api_version(&()), "kind": "BootstrapPolicy", "status": status });
        let api: Api<BootstrapPolicy> = Api::namespaced(client.clone(), &policy.namespace().unwrap_or_default());
        api.patch_status(&policy.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(patch)).await?;
        Ok(())
    }

    async fn event(&self, policy: &BootstrapPolicy, type_: EventType, reason: &str, note: String) {
        let ev = Event { type_, reason: reason.into(), note: Some(note), action: "Bootstrap".into(), secondary: None };
        if let Err(e) = self.recorder.publish(&ev, &policy.object_ref(&())).await {
            warn!(error = %e, "cannot publish event");
        }
    }
}

fn kind(k: StageTargetKind) -> WorkloadKind {
    match k {
        StageTargetKind::Deployment => WorkloadKind::Deployment,
        StageTargetKind::StatefulSet => WorkloadKind::StatefulSet,
    }
}
