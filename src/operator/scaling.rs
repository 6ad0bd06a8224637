//! The ScalingPolicy loop: every tick, read the signals and the target, ask the engine for a
//! decision, act on it (unless `Shadow`), and say what was done in status and Events.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::events::{Event, EventType, Recorder, Reporter},
};
use serde_json::json;
use tokio::sync::{OnceCell, oneshot};
use tracing::{info, warn};

use super::{
    bootstrap::Claims,
    conditions::{Wanted, merge},
    forecast_history::{self, NoHistory},
    pager::{Pager, deliver, resolve_deleted},
    pause::PauseSwitch,
    shortfall::{self as shortfalls, Due, Shortfall, Spell},
};
use crate::{
    actuators::{
        ActuatorError, Size,
        ecs::EcsService,
        kubernetes::{self, Workload, WorkloadKind},
        rds::ReadReplicas,
    },
    api::{
        OpenPage, ScalingPolicy, SecretKeyRef,
        scaling_policy::{DecisionStatus, ForecastStatus, Signal, SignalRole},
    },
    engine::scaling::{DEFAULT_STEP_SECS, Decision, Planner, Reason, SignalReading, Tick},
    signals::{SignalError, postgres, prometheus::Prometheus, rabbitmq::RabbitMq, sqs},
};

/// The field manager of the scaler's status fields (the policy controller owns the rest).
pub const FIELD_MANAGER: &str = "levee-scaler";
/// A planner not ticked for this many ticks belongs to a policy that is gone or invalid.
const FORGET_AFTER_TICKS: f64 = 60.0;

/// Condition saying whether every signal could be read on the last tick.
pub const SIGNALS_AVAILABLE: &str = "SignalsAvailable";
/// Condition saying whether the target could be read and scaled on the last tick.
pub const TARGET_REACHABLE: &str = "TargetReachable";
/// Condition saying whether demand, when last seen, fit within `bounds.maxReplicas`.
pub const DEMAND_MET: &str = "DemandMet";

/// A planner being warmed from history in the background; `None` when there was none to read.
type Warming = oneshot::Receiver<Option<Planner>>;

/// Settings of the scaler.
#[derive(Clone, Debug)]
pub struct ScalerConfig {
    pub tick: Duration,
    /// Prometheus for signals that name no URL.
    pub prometheus_url: Option<String>,
    /// An AWS endpoint override (an emulator in tests).
    pub aws_endpoint: Option<String>,
}

/// Planners of every ScalingPolicy, kept across ticks.
pub struct Scaler {
    config: ScalerConfig,
    recorder: Recorder,
    /// Per policy: the generation planned for, when it last ticked, and its planner.
    planners: Mutex<HashMap<String, (i64, f64, Planner)>>,
    /// Per policy whose planner is new: when its warming began, and the planner being warmed
    /// from Prometheus history meanwhile, whose forecaster the policy's planner then takes if
    /// the forecast's inputs are still the same (`None` when there was no history to read).
    warming: Mutex<HashMap<String, (f64, Warming)>>,
    /// Per policy that is falling short: when it last ticked, and its spell.
    spells: Mutex<HashMap<String, (f64, Option<Spell>)>>,
    pager: Pager,
    aws: OnceCell<aws_config::SdkConfig>,
    started: tokio::time::Instant,
    /// Seconds since the epoch at `started`: planners run on a monotonic clock in the same
    /// time base as Prometheus, whose history warms them.
    epoch: f64,
    pause: PauseSwitch,
    /// Workloads a BootstrapPolicy is bringing up from zero.
    claims: Arc<Claims>,
}

#[derive(Debug, thiserror::Error)]
pub enum ScaleError {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Actuator(#[from] ActuatorError),
}

enum Target {
    Workload(Workload),
    Ecs(EcsService),
    Rds(ReadReplicas),
}

impl Target {
    async fn size(&self) -> Result<Size, ActuatorError> {
        match self {
            Target::Workload(w) => w.size().await,
            Target::Ecs(e) => e.size().await,
            Target::Rds(r) => r.size().await,
        }
    }

    async fn scale(&self, n: i64) -> Result<(), ActuatorError> {
        match self {
            Target::Workload(w) => w.scale(n).await,
            Target::Ecs(e) => e.scale(n).await,
            Target::Rds(r) => r.scale(n).await,
        }
    }
}

impl Scaler {
    pub fn new(client: Client, config: ScalerConfig, pager: Pager, pause: PauseSwitch, claims: Arc<Claims>) -> Self {
        let reporter = Reporter { controller: "levee".into(), instance: std::env::var("POD_NAME").ok() };
        Self {
            config,
            recorder: Recorder::new(client, reporter),
            planners: Mutex::new(HashMap::new()),
            warming: Mutex::new(HashMap::new()),
            spells: Mutex::new(HashMap::new()),
            pager,
            aws: OnceCell::new(),
            started: tokio::time::Instant::now(),
            epoch: crate::api::common::unix_now(),
            pause,
            claims,
        }
    }

    /// Why this tick only records what it would do: `"shadow"` for a policy in Shadow mode,
    /// `"paused"` while levee is paused, `"bootstrapping"` while a BootstrapPolicy brings its
    /// workload up from zero in waves; `None` when it acts.
    fn held_back(&self, policy: &ScalingPolicy) -> Option<&'static str> {
        let ns = policy.namespace().unwrap_or_default();
        let claimed =
            workload_of(policy).is_some_and(|(kind, name)| self.claims.holds(&kubernetes::label(kind, &ns, name)));
        self.pause.held_back(policy.spec.mode).or_else(|| claimed.then_some("bootstrapping"))
    }

    pub fn tick_interval(&self) -> Duration {
        self.config.tick
    }

    async fn aws(&self, region: Option<&str>) -> aws_config::SdkConfig {
        let base = self
            .aws
            .get_or_init(|| async {
                let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
                if let Some(url) = &self.config.aws_endpoint {
                    loader = loader.endpoint_url(url);
                }
                loader.load().await
            })
            .await
            .clone();
        match region {
            Some(r) => base.into_builder().region(aws_config::Region::new(r.to_owned())).build(),
            None => base,
        }
    }

    async fn target(&self, client: &Client, policy: &ScalingPolicy, ns: &str) -> Result<Target, ActuatorError> {
        let t = &policy.spec.target;
        Ok(if let Some((kind, name)) = workload_of(policy) {
            Target::Workload(Workload::new(client.clone(), kind, ns, name))
        } else if let Some(e) = &t.ecs_service {
            Target::Ecs(EcsService::new(
                aws_sdk_ecs::Client::new(&self.aws(e.region.as_deref()).await),
                &e.cluster,
                &e.service,
            ))
        } else if let Some(r) = &t.rds_read_replicas {
            let owner = format!("{ns}/{}", policy.name_any());
            let client = aws_sdk_rds::Client::new(&self.aws(r.region.as_deref()).await);
            Target::Rds(ReadReplicas::new(client, &r.source_instance, &r.instance_class, &r.replica_prefix, &owner))
        } else {
            // The schema's CEL rule makes this unreachable for objects the apiserver admitted.
            return Err(ActuatorError::NotFound { target: "spec.target (no target kind set)".into() });
        })
    }

    /// One tick of one policy.
    pub async fn tick(&self, client: &Client, policy: &ScalingPolicy) -> Result<(), ScaleError> {
        let ns = policy.namespace().unwrap_or_default();
        let name = policy.name_any();
        let key = format!("{ns}/{name}");
        let held = self.held_back(policy);
        let target = match self.target(client, policy, &ns).await {
            Ok(t) => t,
            Err(e) => {
                let why = e.to_string();
                let shortfall = Some(Shortfall::TargetError { detail: why.clone() });
                let open = self.watch(client, policy, &key, shortfall, None, held);
                let seen = Seen { target_error: Some(&why), open_page: open, held, ..Seen::default() };
                self.write_status(client, policy, seen).await?;
                return Ok(());
            }
        };
        let size = target.size().await;
        let readings = futures::future::join_all(policy.spec.signals.iter().map(|s| self.read(client, &ns, s))).await;
        let lost: Vec<String> = readings.iter().filter_map(|(_, e)| e.as_ref().map(ToString::to_string)).collect();
        let signals: Vec<SignalReading> = readings.into_iter().map(|(r, _)| r).collect();

        let size = match size {
            Ok(s) => s,
            Err(e) => {
                warn!(policy = %key, error = %e, "cannot read the target; holding");
                let why = format!("cannot read the target: {e}");
                let shortfall = Some(Shortfall::TargetError { detail: why.clone() });
                let open = self.watch(client, policy, &key, shortfall, None, held);
                let seen = Seen { lost: &lost, target_error: Some(&why), open_page: open, held, ..Seen::default() };
                self.write_status(client, policy, seen).await?;
                return Ok(());
            }
        };
        let now = self.epoch + self.started.elapsed().as_secs_f64();
        let generation = policy.metadata.generation.unwrap_or(0);
        // A new spec gets a new planner (bounds, capacity and forecast settings changed), as
        // does a policy this operator has not planned yet; either starts from history.
        // (Compared only on a new generation: most ticks plan the spec they planned before.)
        let (known, same_forecast) = match self.lock_planners().get(&key) {
            Some((g, _, _)) if *g == generation => (true, false),
            Some((_, _, p)) => (false, p.same_forecast_as(&policy.spec)),
            None => (false, false),
        };
        // A spec change that leaves the forecast alone keeps the forecaster (below), so it
        // reads no history. Otherwise the history is read in the background: a slow
        // Prometheus must not hold up decisions, which meanwhile use live data alone.
        let fresh = match (known, same_forecast) {
            (true, _) => None,
            (false, true) => Some(Planner::new(&policy.spec)),
            (false, false) => {
                self.start_warming(policy, &key, now);
                Some(Planner::new(&policy.spec))
            }
        };
        let warmed = self.take_warmed(&key);
        let (decision, learned) = {
            let mut planners = self.lock_planners();
            // Planners of policies that stopped ticking (deleted, or invalid) are dropped.
            let stale = FORGET_AFTER_TICKS * self.config.tick.as_secs_f64();
            planners.retain(|_, (_, last, _)| now - *last < stale);
            if let Some(mut planner) = fresh {
                // What was learned outlives the planner: the lead time and (when the forecast
                // is unchanged) the forecaster from the one before a spec change, the lead
                // time from status after a restart.
                let status = policy.status.as_ref();
                match planners.get_mut(&key) {
                    Some((_, _, earlier)) => {
                        planner.carry_over(earlier);
                    }
                    None if status.and_then(|s| s.observed_generation) == Some(generation) => {
                        if let Some(learned) = status.and_then(|s| s.learned_lead_time_seconds) {
                            planner.resume_lead_time(learned);
                        }
                    }
                    None => {}
                }
                planners.insert(key.clone(), (generation, now, planner));
            }
            let entry = planners.entry(key.clone()).or_insert_with(|| (generation, now, Planner::new(&policy.spec)));
            entry.1 = now;
            if let Some(mut warmed) = warmed {
                entry.2.adopt_forecaster(&mut warmed);
            }
            let d = entry.2.plan(&Tick { now, current: size.desired, ready: size.ready, signals });
            (d, entry.2.learned_lead_time())
        };
        if decision.to != decision.from {
            if let Some(held) = held {
                info!(policy = %key, from = decision.from, to = decision.to, "{held}: {}", decision.message);
            } else {
                if let Err(e) = target.scale(decision.to).await {
                    let why = format!("cannot scale to {}: {e}", decision.to);
                    let shortfall = Shortfall::TargetError { detail: why.clone() };
                    let open = self.watch(client, policy, &key, Some(shortfall), Some(&decision), held);
                    let seen =
                        Seen { decision: None, learned, lost: &lost, target_error: Some(&why), open_page: open, held };
                    self.write_status(client, policy, seen).await?;
                    return Err(e.into());
                }
                info!(policy = %key, from = decision.from, to = decision.to, reason = decision.reason.as_str(), "{}", decision.message);
            }
            self.event(policy, &decision, held).await;
        }
        let shortfall = Shortfall::of(&decision, policy.spec.bounds.max_replicas, &lost);
        let open = self.watch(client, policy, &key, shortfall, Some(&decision), held);
        let seen = Seen { decision: Some(&decision), learned, lost: &lost, target_error: None, open_page: open, held };
        self.write_status(client, policy, seen).await?;
        Ok(())
    }

    fn lock_planners(&self) -> std::sync::MutexGuard<'_, HashMap<String, (i64, f64, Planner)>> {
        self.planners.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts warming a planner for `policy` from the arrival rate's Prometheus history,
    /// forgetting one started for an earlier spec.
    fn start_warming(&self, policy: &ScalingPolicy, key: &str, now: f64) {
        let (tx, rx) = oneshot::channel();
        let mut warming = self.warming.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Policies that are gone leave nothing behind: this runs whenever a planner is new.
        // A warming just begun is kept though its planner is not in yet: another policy's tick
        // on another thread may run between the two.
        let stale = FORGET_AFTER_TICKS * self.config.tick.as_secs_f64();
        let planners = self.lock_planners();
        warming.retain(|k, (since, _)| planners.contains_key(k) || now - *since < stale);
        drop(planners);
        warming.insert(key.to_owned(), (now, rx));
        let task = warm_planner(
            policy.spec.clone(),
            self.config.prometheus_url.clone(),
            self.recorder.clone(),
            policy.object_ref(&()),
            key.to_owned(),
            now,
        );
        tokio::spawn(async move {
            // The receiver is gone when the spec changed again meanwhile: nothing to hand over.
            let _ = tx.send(task.await);
        });
    }

    /// The planner warmed for policy `key`, once it is ready. (A spec edited meanwhile may
    /// forecast differently; the planner taking it checks.)
    fn take_warmed(&self, key: &str) -> Option<Planner> {
        let mut warming = self.warming.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let ready = match warming.get_mut(key)?.1.try_recv() {
            Ok(p) => p,
            Err(oneshot::error::TryRecvError::Empty) => return None,
            Err(oneshot::error::TryRecvError::Closed) => None,
        };
        warming.remove(key);
        ready
    }

    /// Follows the policy's spell of falling short (`shortfall` is this tick's, none when it
    /// kept up), pages the on-call once the spell has lasted `spec.page.after`, and resolves
    /// that page when the spell ends. A policy without `page` never pages; one held back
    /// (`held`: in Shadow mode, or paused) pages nothing new, and a spell that paged before it
    /// was held back ends, so its page is resolved.
    /// Returns the page left open, which status keeps for the next operator should this one
    /// restart.
    fn watch(
        &self,
        client: &Client,
        policy: &ScalingPolicy,
        key: &str,
        shortfall: Option<Shortfall>,
        d: Option<&Decision>,
        held: Option<&str>,
    ) -> Option<OpenPage> {
        let page = policy.spec.page.as_ref()?;
        let shortfall = shortfall.filter(|_| held.is_none());
        let now = self.started.elapsed().as_secs_f64();
        let wall = Timestamp::now();
        let (due, open) = {
            let mut spells = self.spells.lock().unwrap_or_else(|p| p.into_inner());
            let stale = FORGET_AFTER_TICKS * self.config.tick.as_secs_f64();
            spells.retain(|_, (last, _)| now - *last < stale);
            let entry = spells.entry(key.to_owned()).or_insert_with(|| {
                // A restart forgets spells; status remembers the page one of them sent.
                let open = policy.status.as_ref().and_then(|s| s.open_page.as_ref());
                (now, open.map(|o| Spell::restore(o, now, wall)))
            });
            entry.0 = now;
            let new_key = |kind: &str| shortfalls::dedup_key(key, kind, wall.as_second());
            let due = shortfalls::pages(&mut entry.1, shortfall.as_ref(), now, page.after.as_secs_f64(), new_key);
            (due, entry.1.as_ref().and_then(|s| s.open_page(now, wall)))
        };
        let page_text = match (due, shortfall) {
            (Due::Trigger(dedup_key), Some(shortfall)) => {
                shortfalls::page(key, &shortfall, &page.after.to_string(), d, dedup_key)
            }
            (Due::Resolve { dedup_key, sentence, lasted }, _) => shortfalls::resolve(key, dedup_key, &sentence, lasted),
            _ => return open,
        };
        let ns = policy.namespace().unwrap_or_default();
        let secret = page.route_secret_ref.clone();
        deliver(client, &self.pager, &self.recorder, ns, policy.object_ref(&()), secret, page_text);
        open
    }

    /// Forgets a deleted policy, and resolves the page it had open: no tick will.
    pub fn deleted(&self, client: &Client, policy: &ScalingPolicy) {
        let key = super::key_of(policy);
        self.spells.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
        let route = policy.spec.page.as_ref().map(|p| &p.route_secret_ref);
        let open = policy.status.as_ref().and_then(|s| s.open_page.as_ref());
        resolve_deleted(client, &self.pager, &self.recorder, policy.object_ref(&()), route, open);
    }

    async fn event(&self, policy: &ScalingPolicy, d: &Decision, held: Option<&str>) {
        let ev = Event {
            type_: if matches!(d.reason, Reason::SignalLossFallback) { EventType::Warning } else { EventType::Normal },
            reason: d.reason.as_str().into(),
            note: Some(match held {
                Some(held) => format!("{held} (not applied): {}", d.message),
                None => d.message.clone(),
            }),
            action: if held.is_some() { "WouldScale".into() } else { "Scale".into() },
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &policy.object_ref(&())).await {
            warn!(error = %e, "cannot publish event");
        }
    }

    async fn secret(&self, client: &Client, ns: &str, r: &SecretKeyRef) -> Result<String, SignalError> {
        super::secrets::read(client, ns, r).await.map_err(|e| match e {
            super::secrets::SecretError::NotFound { name, key } => SignalError::NotFound {
                source_name: "kubernetes".into(),
                what: format!("key {key:?} of Secret {name:?}"),
            },
            e => SignalError::BadResponse { source_name: "kubernetes".into(), detail: e.to_string() },
        })
    }

    /// Reads one signal; a failure is a reading with no value, never a zero.
    async fn read(&self, client: &Client, ns: &str, s: &Signal) -> (SignalReading, Option<SignalError>) {
        let value = async {
            if let Some(p) = &s.prometheus {
                let url = p.url.as_deref().or(self.config.prometheus_url.as_deref()).ok_or_else(|| {
                    SignalError::BadResponse {
                        source_name: "prometheus".into(),
                        detail: "no URL: set the signal's prometheus.url or run the operator with --prometheus-url"
                            .into(),
                    }
                })?;
                return Ok(Prometheus::new(url)?.instant(&p.query).await?.value);
            }
            if let Some(r) = &s.rabbitmq {
                let auth = match &r.credentials_secret_ref {
                    Some(sr) => self.secret(client, ns, sr).await?,
                    None => "guest:guest".into(),
                };
                let (user, pass) = auth.split_once(':').unwrap_or((auth.as_str(), ""));
                let q = RabbitMq::new(&r.management_url, user, pass)?.queue(&r.vhost, &r.queue).await?;
                return Ok(match s.role {
                    SignalRole::ArrivalRate => q.publish_rate,
                    _ => q.backlog() as f64,
                });
            }
            if let Some(q) = &s.sqs {
                let client = aws_sdk_sqs::Client::new(&self.aws(q.region.as_deref()).await);
                return Ok(sqs::queue_depth(&client, &q.queue_url).await?.backlog() as f64);
            }
            if let Some(p) = &s.postgres {
                let conninfo = self.secret(client, ns, &p.connection_secret_ref).await?;
                return Ok(postgres::replica_lag(&conninfo).await?.seconds);
            }
            Err(SignalError::NoData { source_name: "levee".into(), what: format!("signal {} has no source", s.name) })
        }
        .await;
        let (value, err) = match value {
            Ok(v) => (Some(v), None),
            Err(e) => (None, Some(e)),
        };
        (SignalReading { name: s.name.clone(), role: s.role, value, age_secs: 0.0 }, err)
    }

    async fn write_status(&self, client: &Client, policy: &ScalingPolicy, seen: Seen<'_>) -> Result<(), kube::Error> {
        let Seen { decision: d, learned, lost, target_error, open_page, held } = seen;
        let existing = policy.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
        let mut wanted = vec![
            Wanted {
                type_: SIGNALS_AVAILABLE,
                status: lost.is_empty(),
                reason: if lost.is_empty() { "AllSignalsRead".into() } else { "SignalLost".into() },
                message: if lost.is_empty() {
                    String::new()
                } else {
                    format!("{}; holding, never scaling down on missing data", lost.join("; "))
                },
            },
            target_reachable(target_error),
        ];
        wanted.extend(demand_met(policy, d, &existing));
        let mine = merge(&existing, &wanted, policy.metadata.generation, Timestamp::now());
        let mut status = json!({ "conditions": mine });
        if let Some(d) = d {
            status["currentReplicas"] = json!(d.from);
            status["desiredReplicas"] = json!(d.to);
            if let Some(f) = &d.forecast {
                status["forecast"] = serde_json::to_value(ForecastStatus {
                    value: f.value,
                    lower: f.lower,
                    upper: f.upper,
                    horizon_seconds: f.horizon_secs,
                    model: f.model.into(),
                })
                .unwrap_or_default();
            }
            if let Some(l) = learned {
                status["learnedLeadTimeSeconds"] = json!(l);
            }
            // The last decision moves only when something was (or would have been) done.
            let last = policy.status.as_ref().and_then(|s| s.last_decision.clone());
            let decision = match last {
                Some(last) if d.to == d.from => last,
                _ => DecisionStatus {
                    time: Time(Timestamp::now()),
                    from: d.from as i32,
                    to: d.to as i32,
                    reason: d.reason.as_str().into(),
                    message: match held {
                        Some(held) => format!("{held}: {}", d.message),
                        None => d.message.clone(),
                    },
                },
            };
            status["lastDecision"] = serde_json::to_value(decision).unwrap_or_default();
        } else if let Some(s) = &policy.status {
            // Keep the fields this manager owns, so a failed read does not erase them.
            for (k, v) in
                [("currentReplicas", json!(s.current_replicas)), ("desiredReplicas", json!(s.desired_replicas))]
            {
                if !v.is_null() {
                    status[k] = v;
                }
            }
            if let Some(l) = &s.last_decision {
                status["lastDecision"] = serde_json::to_value(l).unwrap_or_default();
            }
        }
        // Left out when none is open: under server-side apply that removes the one written before.
        if let Some(open) = open_page {
            status["openPage"] = serde_json::to_value(open).unwrap_or_default();
        }
        let patch = json!({ "apiVersion": ScalingPolicy::api_version(&()), "kind": "ScalingPolicy", "status": status });
        let api: Api<ScalingPolicy> = Api::namespaced(client.clone(), &policy.namespace().unwrap_or_default());
        api.patch_status(&policy.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(patch)).await?;
        Ok(())
    }
}

/// The Kubernetes workload a policy scales, if its target is one.
fn workload_of(policy: &ScalingPolicy) -> Option<(WorkloadKind, &str)> {
    let t = &policy.spec.target;
    match (&t.deployment, &t.stateful_set) {
        (Some(d), _) => Some((WorkloadKind::Deployment, &d.name)),
        (None, Some(s)) => Some((WorkloadKind::StatefulSet, &s.name)),
        (None, None) => None,
    }
}

/// The `TargetReachable` condition, false with `error` when a target could not be read or
/// scaled.
pub fn target_reachable(error: Option<&str>) -> Wanted {
    Wanted {
        type_: TARGET_REACHABLE,
        status: error.is_none(),
        reason: if error.is_none() { "TargetReachable".into() } else { "TargetError".into() },
        message: error.unwrap_or_default().to_owned(),
    }
}

/// What a tick saw and did, for status.
#[derive(Default)]
struct Seen<'a> {
    /// None when the tick could not decide (the target could not be read).
    decision: Option<&'a Decision>,
    learned: Option<f64>,
    /// Each lost signal, in words.
    lost: &'a [String],
    target_error: Option<&'a str>,
    open_page: Option<OpenPage>,
    /// Why nothing was applied (`shadow`, `paused`), if so.
    held: Option<&'static str>,
}

/// The `DemandMet` condition for a tick's decision. A tick that did not see demand (a lost
/// signal, an unreadable target) keeps the last one: under server-side apply, leaving it out
/// would delete it.
fn demand_met(policy: &ScalingPolicy, d: Option<&Decision>, existing: &[Condition]) -> Option<Wanted> {
    let max = policy.spec.bounds.max_replicas;
    match d.filter(|d| d.needed.is_some()) {
        Some(d) => Some(match d.needed_above(max) {
            Some(needed) => Wanted {
                type_: DEMAND_MET,
                status: false,
                reason: "AboveMaxReplicas".into(),
                message: Shortfall::AboveMax { needed, max }.sentence(),
            },
            None => Wanted { type_: DEMAND_MET, status: true, reason: "WithinBounds".into(), message: String::new() },
        }),
        None => existing.iter().find(|c| c.type_ == DEMAND_MET).map(|c| Wanted {
            type_: DEMAND_MET,
            status: c.status == "True",
            reason: c.reason.clone(),
            message: c.message.clone(),
        }),
    }
}

/// A planner for `spec` whose forecaster has read the arrival rate's Prometheus history, ending
/// at `now`. Without history (a queue's publish rate, Prometheus unreachable) `None`: the
/// policy's planner forecasts from live data, and an Event on `object` says why and what that
/// means.
async fn warm_planner(
    spec: crate::api::ScalingPolicySpec,
    default_url: Option<String>,
    recorder: Recorder,
    object: k8s_openapi::api::core::v1::ObjectReference,
    key: String,
    now: f64,
) -> Option<Planner> {
    let mut planner = Planner::new(&spec);
    let history = forecast_history::arrival_history(&spec, default_url.as_deref(), now as i64, DEFAULT_STEP_SECS).await;
    let mut warmed = None;
    let (type_, reason, note) = match history {
        Ok(h) if !h.is_empty() => {
            let secs = planner.warm(&h);
            warmed = Some(planner);
            info!(policy = %key, hours = secs / 3600.0, points = h.len(), "forecast warmed from Prometheus history");
            let note = format!("forecast warmed from {:.1} h of the arrival rate's Prometheus history", secs / 3600.0);
            (EventType::Normal, "ForecastWarmed", note)
        }
        Ok(_) => {
            let note = "no Prometheus history of the arrival rate yet: forecasting from live data".to_owned();
            (EventType::Normal, "ForecastCold", note)
        }
        // Nothing to forecast, or nothing to ask: as configured, not a fault.
        Err(NoHistory::NoArrivalRate) => return None,
        Err(e @ NoHistory::NotPrometheus(_)) => {
            (EventType::Normal, "ForecastCold", format!("{e}: forecasting from live data"))
        }
        Err(e) => {
            warn!(policy = %key, error = %e, "forecast starts without history");
            let note = format!(
                "cannot read the arrival rate's history ({e}): forecasting from live data, the trend after \
                 30 minutes, daily seasons after a day"
            );
            (EventType::Warning, "ForecastCold", note)
        }
    };
    let event = Event { type_, reason: reason.into(), note: Some(note), action: "Forecast".into(), secondary: None };
    if let Err(e) = recorder.publish(&event, &object).await {
        warn!(policy = %key, error = %e, "cannot record event");
    }
    warmed
}
