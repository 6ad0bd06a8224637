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

use k8s_openapi::jiff::Timestamp;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::events::{Event, EventType, Recorder, Reporter},
};
use serde_json::json;
use tracing::{info, warn};

use super::{
    bootstrap_page::{Trouble, page_for},
    conditions::{Wanted, merge},
    pager::{Pager, deliver, resolve_deleted},
    pause::PauseSwitch,
    scaling::target_reachable,
    spiral::{NO_DEATH_SPIRAL, Spirals},
};
use crate::{
    actuators::{
        ActuatorError, Size,
        kubernetes::{Workload, WorkloadKind},
    },
    api::{
        BootstrapPolicy, OpenPage,
        bootstrap_policy::{StageStatus, StageTargetKind},
        common::{time_at, unix_now, unix_secs},
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
    /// Claims `workloads` (by [`Workload::label`]) for `policy`, or releases its claim.
    fn set(&self, policy: &str, workloads: Vec<String>) {
        let mut claims = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if workloads.is_empty() {
            claims.remove(policy);
        } else {
            claims.insert(policy.to_owned(), (Instant::now(), workloads));
        }
    }

    /// Whether a cold start in progress claims `workload` (a [`Workload::label`]).
    pub fn holds(&self, workload: &str) -> bool {
        let claims = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        claims.values().any(|(at, ws)| at.elapsed() < CLAIM_LAPSES && ws.iter().any(|w| w == workload))
    }
}

/// Bootstraps of every BootstrapPolicy.
pub struct Bootstrapper {
    recorder: Recorder,
    pause: PauseSwitch,
    claims: std::sync::Arc<Claims>,
    /// Per policy: its progress as last planned (status may not show the last write yet),
    /// and the steps that plan called for.
    progress: Mutex<HashMap<String, (Progress, Vec<Step>)>>,
    spirals: Spirals,
    pager: Pager,
    /// Per policy: the page it has open as last decided (status may not show it yet).
    pages: Mutex<HashMap<String, Option<OpenPage>>>,
}

impl Bootstrapper {
    pub fn new(client: Client, pager: Pager, pause: PauseSwitch, claims: std::sync::Arc<Claims>) -> Self {
        let reporter = Reporter { controller: "levee".into(), instance: std::env::var("POD_NAME").ok() };
        Self {
            recorder: Recorder::new(client, reporter),
            pause,
            claims,
            progress: Mutex::new(HashMap::new()),
            spirals: Spirals::default(),
            pager,
            pages: Mutex::new(HashMap::new()),
        }
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
        let before = self.progress_of(&key, policy);
        // Each target read once: its size for the plan, its selector for the spiral watch.
        let mut observed = Vec::new();
        for stage in &workloads {
            let mut stage_observed = Vec::new();
            for w in stage {
                match w.observe().await {
                    Ok(o) => stage_observed.push(o),
                    Err(e) => return Err(self.failed(client, policy, &before, e).await),
                }
            }
            observed.push(stage_observed);
        }
        let sizes: Vec<Vec<Size>> = observed.iter().map(|stage| stage.iter().map(|o| o.size).collect()).collect();
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
        let now = unix_now();
        let plan = bootstrap::plan(&stages, &sizes, &before, now);

        let held = self.pause.held_back(policy.spec.mode);
        let bootstrapping = plan.progress.phase == Phase::Bootstrapping;
        let claimed = if bootstrapping && held.is_none() {
            workloads.iter().flatten().map(Workload::label).collect()
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
                        // The plan is not remembered: the next tick plans again from `before`,
                        // and a wave whose first scale went through is asked for again, alike.
                        return Err(self.failed(client, policy, &before, e).await);
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
        let late: Vec<String> = plan
            .late
            .iter()
            .map(|(stage, secs)| {
                format!("stage {stage} not ready {} after it started", crate::api::Duration::from_secs(*secs as u64))
            })
            .collect();
        // Told once per stage as it goes late: the condition holds it from then on.
        let was = policy.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == STAGES_ON_SCHEDULE));
        for (line, (stage, _)) in late.iter().zip(&plan.late) {
            let named = format!("stage {stage} not ready");
            if !was.is_some_and(|c| c.status == "False" && c.message.contains(&named)) {
                warn!(policy = %key, "{line}");
                let note = format!("{line}, past its readyWithin: {}", plan.sentence);
                self.event(policy, EventType::Warning, "StageLate", note).await;
            }
        }
        let on_schedule = Wanted {
            type_: STAGES_ON_SCHEDULE,
            status: late.is_empty(),
            reason: if late.is_empty() { "OnSchedule".into() } else { "Late".into() },
            message: late.join("; "),
        };
        let targets: Vec<_> = workloads.iter().flatten().zip(observed.iter().flatten()).collect();
        let spiral = self.spirals.tick(client, policy, &targets, bootstrapping, held, now).await;
        for (type_, reason, note) in spiral.events {
            self.event(policy, type_, reason, note).await;
        }
        // Paused, the gate is not renewed, and lapses: levee paused lets every client in. In
        // Shadow mode it is a shadow Mitigation, which the edges only count.
        if held != Some("paused") {
            let needed = &policy.spec.admission_gate.opens_after;
            let closed = bootstrapping && !bootstrap::needed_ready(&stages, &sizes, needed);
            match super::gate::tick(client, policy, closed, now).await {
                Ok(Some((reason, note))) => {
                    info!(policy = %key, "{note}");
                    self.event(policy, EventType::Normal, reason, note).await;
                }
                Ok(None) => {}
                Err(e) => warn!(policy = %key, error = %e, "cannot set the admission gate"),
            }
        }
        // Held back (Shadow, paused), nothing is acted on, so nothing new pages, and a page
        // sent before is resolved.
        let trouble = match (held, bootstrapping, spiral.condition.status) {
            (Some(_), _, _) => None,
            (None, true, _) => {
                Some(Trouble { reason: "ColdStart", summary: format!("no instance is ready: {}", plan.sentence) })
            }
            (None, false, false) => Some(Trouble { reason: "DeathSpiral", summary: spiral.condition.message.clone() }),
            (None, false, true) => None,
        };
        self.page(client, policy, &key, trouble, &plan.sentence);
        let current = (!plan.running.is_empty()).then(|| plan.running.join(", "));
        let conditions = vec![on_schedule, target_reachable(None), spiral.condition];
        self.write_status(client, policy, &plan.progress, current.as_deref(), &plan.sentence, conditions).await?;
        let memory = (plan.progress, plan.steps);
        self.progress.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(key, memory);
        Ok(())
    }

    /// Pages the on-call for `trouble`, or resolves the page when it is over (`settled` says
    /// how the fleet is then), if the policy has a `page`; remembers the page left open.
    fn page(&self, client: &Client, policy: &BootstrapPolicy, key: &str, trouble: Option<Trouble>, settled: &str) {
        let Some(route) = &policy.spec.page else { return };
        let open = self.open_page(key, policy);
        let (page, open) = page_for(key, open.as_ref(), trouble, settled, Timestamp::now());
        self.pages.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(key.to_owned(), open);
        if let Some(page) = page {
            let ns = policy.namespace().unwrap_or_default();
            let secret = route.route_secret_ref.clone();
            deliver(client, &self.pager, &self.recorder, ns, policy.object_ref(&()), secret, page);
        }
    }

    /// The page last decided open, or after a restart what status kept of it.
    fn open_page(&self, key: &str, policy: &BootstrapPolicy) -> Option<OpenPage> {
        let pages = self.pages.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match pages.get(key) {
            Some(open) => open.clone(),
            None => policy.status.as_ref().and_then(|s| s.open_page.clone()),
        }
    }

    /// Forgets a deleted policy, and resolves the page it had open: no tick will.
    pub fn deleted(&self, client: &Client, policy: &BootstrapPolicy) {
        let key = super::key_of(policy);
        let open = self.open_page(&key, policy);
        self.pages.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&key);
        self.progress.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&key);
        self.spirals.deleted(client, policy);
        super::gate::deleted(client, policy);
        self.claims.set(&key, Vec::new());
        let route = policy.spec.page.as_ref().map(|p| &p.route_secret_ref);
        resolve_deleted(client, &self.pager, &self.recorder, policy.object_ref(&()), route, open.as_ref());
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
        Progress {
            phase: status.phase.as_deref().map_or(Phase::Idle, Phase::parse),
            since: status.since.as_ref().map(unix_secs),
            stages: status
                .stages
                .iter()
                .map(|s| {
                    (
                        s.name.clone(),
                        StageProgress {
                            started_at: unix_secs(&s.started_at),
                            last_wave_at: unix_secs(&s.last_wave_at),
                        },
                    )
                })
                .collect::<BTreeMap<_, _>>(),
        }
    }

    /// Says in status that a target could not be read or scaled, keeping the progress as it
    /// was (under server-side apply a field left out is a field deleted) and the schedule
    /// condition as the last tick judged it; returns the error for the controller to retry.
    async fn failed(
        &self,
        client: &Client,
        policy: &BootstrapPolicy,
        progress: &Progress,
        e: ActuatorError,
    ) -> BootstrapError {
        let old = policy.status.as_ref();
        let kept = [STAGES_ON_SCHEDULE, NO_DEATH_SPIRAL].into_iter().filter_map(|type_| {
            old.and_then(|s| s.conditions.iter().find(|c| c.type_ == type_)).map(|c| Wanted {
                type_,
                status: c.status == "True",
                reason: c.reason.clone(),
                message: c.message.clone(),
            })
        });
        let why = e.to_string();
        let conditions = kept.into_iter().chain([target_reachable(Some(&why))]).collect();
        let current = old.and_then(|s| s.current_stage.as_deref());
        match self.write_status(client, policy, progress, current, &why, conditions).await {
            Ok(()) => e.into(),
            Err(k) => k.into(),
        }
    }

    /// Writes the whole status this loop owns.
    async fn write_status(
        &self,
        client: &Client,
        policy: &BootstrapPolicy,
        progress: &Progress,
        current_stage: Option<&str>,
        message: &str,
        conditions: Vec<Wanted>,
    ) -> Result<(), kube::Error> {
        let stages: Vec<StageStatus> = progress
            .stages
            .iter()
            .map(|(name, p)| StageStatus {
                name: name.clone(),
                started_at: time_at(p.started_at),
                last_wave_at: time_at(p.last_wave_at),
            })
            .collect();
        let mut status = json!({ "phase": progress.phase.as_str(), "message": message, "stages": stages });
        if let Some(current) = current_stage {
            status["currentStage"] = json!(current);
        }
        if let Some(since) = progress.since {
            status["since"] = json!(time_at(since));
        }
        // Under server-side apply a field left out is a field deleted: the page goes in as
        // last decided (or as status had it).
        let key = super::key_of(policy);
        if let Some(open) = self.open_page(&key, policy).filter(|_| policy.spec.page.is_some()) {
            status["openPage"] = json!(open);
        }
        let existing = policy.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
        status["conditions"] = json!(merge(&existing, &conditions, policy.metadata.generation, Timestamp::now()));
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
