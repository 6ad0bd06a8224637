//! The TrafficGuard loop: every second, the pool's merged edge reports go through the
//! guard's detector; findings become `Mitigation`s with a TTL that grows for repeat
//! offenders; an open upstream breaker sheds the lowest-priority traffic class; expired
//! mitigations are deleted after a retention period (their offence count is the memory of
//! repeat offences).

pub mod hub;
mod seed;

use std::{
    collections::HashMap,
    hash::{Hash, Hasher},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{OwnerReference, Time},
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams},
    runtime::events::{Event, EventType, Recorder, Reporter},
};
use serde_json::json;
use tracing::{info, warn};

use crate::{
    api::{
        Mitigation, MitigationSpec, Mode, OpenPage, TrafficGuard,
        common::unix_now,
        mitigation::{Evidence, MatchSpec, MitigationAction, RateLimit},
        traffic_guard::{AggregationKey as Dimension, BaselineSource, GuardAction, PageWhen},
    },
    engine::guard::{Finding, GuardDetector, Kind as FindingKind, Observation, Tuning, mitigation_limit, renews},
    operator::{
        pager::{Action, Page, Pager, Severity, deliver, resolve_deleted},
        pause::PauseSwitch,
    },
};
use hub::{PoolExtras, ReportHub};

/// Field manager of Mitigations and TrafficGuard status written by the guard loop.
pub const FIELD_MANAGER: &str = "levee-guard";
/// Label naming the TrafficGuard that created a Mitigation.
pub const GUARD_LABEL: &str = "levee.dev/guard";
/// How often each TrafficGuard looks at its pool.
pub const TICK: Duration = Duration::from_secs(1);
/// Expired mitigations are kept this long: they remember repeat offenders.
const RETAIN_SECS: i64 = 24 * 3600;
/// A pool with no report for this long is reported as silent.
const SILENT_AFTER: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error(transparent)]
    Kube(#[from] kube::Error),
}

struct GuardState {
    generation: i64,
    detector: GuardDetector,
    /// When to (try to) seed baselines from Prometheus; `None` once seeded or when the guard
    /// learns from edge reports only.
    seed_due: Option<Instant>,
    /// When to read the daily shape again, for a guard seeded with a day of history or more.
    shape_due: Option<Instant>,
    /// The daily shape status last said.
    last_shape: Option<Vec<f64>>,
    last_summary: Option<String>,
    last_active: Option<i32>,
    last_edges: Option<i32>,
    /// The incident paged about, if the guard has mitigations in force since.
    incident: Option<Incident>,
    /// When a sample last showed a crowd: its Event is told when one begins, not each sample.
    last_crowd: Option<Instant>,
}

/// An incident: from the first mitigation a guard creates while none of its own is in force,
/// until none is. Its pages share a dedup key; its end resolves them.
struct Incident {
    dedup_key: String,
    began: Instant,
    last_page: Instant,
    /// What its first page said.
    summary: String,
}

impl Incident {
    /// The page it holds open, as status keeps it.
    fn open_page(&self, now: Instant, wall: Timestamp) -> OpenPage {
        let age = SignedDuration::try_from(now.duration_since(self.began)).unwrap_or_default();
        OpenPage {
            dedup_key: self.dedup_key.clone(),
            reason: "Incident".into(),
            since: Time(wall.checked_sub(age).unwrap_or(wall)),
            summary: self.summary.clone(),
        }
    }

    /// The incident whose page status kept open, after a restart lost the one in memory. It
    /// counts as just paged: the new operator does not page again at once for what the last
    /// one paged about.
    fn restore(open: &OpenPage, now: Instant, wall: Timestamp) -> Self {
        let age = wall.duration_since(open.since.0).unsigned_abs();
        Self {
            dedup_key: open.dedup_key.clone(),
            began: now.checked_sub(age).unwrap_or(now),
            last_page: now,
            summary: open.summary.clone(),
        }
    }
}

/// What a guard's tick calls for on the pager: the end of the incident that was (its dedup
/// key, how long it lasted), a page under this key, or both when a new incident begins as the
/// last one ends.
#[derive(Debug, Default, PartialEq)]
struct PagesDue {
    resolve: Option<(String, Duration)>,
    trigger: Option<String>,
}

/// Within one incident, new mitigations page again only this long after the last page: the
/// on-call hears of an escalating attack without a page every second.
const REPAGE_AFTER: Duration = Duration::from_secs(300);

/// Detectors of every TrafficGuard, and the reports they read.
pub struct Guards {
    pub hub: Arc<ReportHub>,
    recorder: Recorder,
    states: Mutex<HashMap<String, GuardState>>,
    /// Where `baseline.source: Prometheus` guards read their history.
    prometheus_url: Option<String>,
    pager: Pager,
    pause: PauseSwitch,
}

/// A crowd seen again within this long of its last sample is the same crowd.
const CROWD_QUIET: Duration = Duration::from_secs(300);

/// A failed seeding is retried after this long; meanwhile baselines come from edge reports.
const SEED_RETRY: Duration = Duration::from_secs(60);

/// The daily shape is read again this often: traffic's shape drifts, and a change of daylight
/// saving time moves it an hour against the UTC clock it is kept by.
const SHAPE_REFRESH: Duration = Duration::from_secs(24 * 3600);

/// A mitigation the guard wants in force.
struct Wanted {
    name: String,
    spec: MitigationSpec,
}

/// A mitigation created this tick, as a page tells of it.
struct PagedMitigation {
    name: String,
    ttl: Duration,
    spec: MitigationSpec,
}

impl PagedMitigation {
    /// A distributed surge (the incident's shape) rather than one source or a shed class.
    fn critical(&self) -> bool {
        self.spec.evidence.as_ref().is_some_and(|e| e.detector == FindingKind::DistributedSurge.as_str())
    }
}

impl Guards {
    pub fn new(
        client: Client,
        hub: Arc<ReportHub>,
        prometheus_url: Option<String>,
        pager: Pager,
        pause: PauseSwitch,
    ) -> Self {
        let reporter = Reporter { controller: "levee".into(), instance: std::env::var("POD_NAME").ok() };
        Self {
            hub,
            recorder: Recorder::new(client, reporter),
            states: Mutex::new(HashMap::new()),
            prometheus_url,
            pager,
            pause,
        }
    }

    /// The guard's `baseline.prometheusQuery` over its `baseline.window`, read now.
    async fn read_history(&self, guard: &TrafficGuard) -> Result<(crate::engine::guard::History, String), String> {
        let baseline = &guard.spec.baseline;
        let query = baseline.prometheus_query.as_deref().unwrap_or_default();
        let Some(url) = &self.prometheus_url else {
            return Err("baseline.source is Prometheus but the operator runs without --prometheus-url".to_owned());
        };
        let prom = crate::signals::prometheus::Prometheus::new(url).map_err(|e| e.to_string())?;
        seed::history(&prom, query, baseline.window.as_secs_f64(), Timestamp::now().as_second())
            .await
            .map_err(|e| e.to_string())
    }

    /// Seeds the guard's baselines from Prometheus when that is configured and due, and reads
    /// its daily shape again when that is due. A failure is an Event and a retry later, never a
    /// stop: edge reports keep baselines learning, and the shape in use stays.
    async fn seed_if_due(&self, guard: &TrafficGuard, key: &str) {
        let now = Instant::now();
        let (seed, shape) = {
            let states = self.states.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let due = |t: Option<Instant>| t.is_some_and(|t| t <= now);
            states.get(key).map_or((false, false), |s| (due(s.seed_due), due(s.shape_due)))
        };
        if !seed && !shape {
            return;
        }
        let window = guard.spec.baseline.window;
        let result = self.read_history(guard).await;
        let (event, action, note) = {
            let mut states = self.states.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let Some(st) = states.get_mut(key) else { return };
            match result {
                Ok((history, summary)) if seed => {
                    st.detector.seed(&history);
                    st.seed_due = None;
                    let shape = match st.detector.season() {
                        Some(shape) => {
                            st.shape_due = Some(now + SHAPE_REFRESH);
                            format!("; {}: baselines follow the time of day", shape.describe())
                        }
                        None => "; no daily shape (that takes a baseline.window of a day or more)".to_owned(),
                    };
                    let note = format!("baselines seeded from Prometheus over the last {window}: {summary}{shape}");
                    ((EventType::Normal, "BaselineSeeded"), "SeedBaseline", note)
                }
                Ok((history, _)) => {
                    st.shape_due = Some(now + SHAPE_REFRESH);
                    match history.daily_shape() {
                        Some(shape) => {
                            let note = format!("daily shape read again over the last {window}: {}", shape.describe());
                            st.detector.set_season(shape, unix_now());
                            ((EventType::Normal, "DailyShapeRefreshed"), "RefreshShape", note)
                        }
                        None => {
                            let note =
                                format!("the last {window} of history gives no daily shape; the one read before stays");
                            ((EventType::Warning, "DailyShapeKept"), "RefreshShape", note)
                        }
                    }
                }
                Err(e) => {
                    let retry = Some(now + SEED_RETRY);
                    if seed {
                        st.seed_due = retry
                    } else {
                        st.shape_due = retry
                    }
                    let what = if seed { "seed baselines" } else { "read the daily shape again" };
                    let note = format!(
                        "cannot {what} from Prometheus: {e}; retrying in {}s, learning from edge reports meanwhile",
                        SEED_RETRY.as_secs()
                    );
                    let reason = if seed { "BaselineSeedFailed" } else { "DailyShapeRefreshFailed" };
                    ((EventType::Warning, reason), if seed { "SeedBaseline" } else { "RefreshShape" }, note)
                }
            }
        };
        info!(guard = %key, "{note}");
        self.event(guard, event.0, event.1, action, note).await;
    }

    /// One look at the guard's pool.
    pub async fn tick(&self, client: &Client, guard: &TrafficGuard) -> Result<(), GuardError> {
        // Paused, a guard runs as in Shadow mode: its Mitigations are counted, not enforced,
        // and it pages nothing new.
        let paused = self.pause.state(Timestamp::now()).is_some();
        let shadowed;
        let guard = if paused && guard.spec.mode != Mode::Shadow {
            let mut g = guard.clone();
            g.spec.mode = Mode::Shadow;
            shadowed = g;
            &shadowed
        } else {
            guard
        };
        let ns = guard.namespace().unwrap_or_default();
        let name = guard.name_any();
        let key = format!("{ns}/{name}");
        let spec = &guard.spec;
        let detector = || {
            let allowlist = spec.allowlist.iter().filter_map(|c| c.parse().ok()).collect();
            let mut d = GuardDetector::new(tuning(guard), allowlist);
            // A shape learnt from edge reports before a restart (or a change of spec) goes on;
            // one from Prometheus is read again with the seeding.
            let kept = guard
                .status
                .as_ref()
                .and_then(|s| crate::engine::guard::season::DailyShape::from_factors(&s.daily_shape));
            if let Some(shape) = kept.filter(|_| spec.baseline.source != BaselineSource::Prometheus) {
                d.resume_season(shape);
            }
            d
        };
        let seed_due = (spec.baseline.source == BaselineSource::Prometheus).then(Instant::now);
        {
            let mut states = self.states.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let generation = guard.metadata.generation.unwrap_or(0);
            let st = states.entry(key.clone()).or_insert_with(|| GuardState {
                generation,
                detector: detector(),
                seed_due,
                shape_due: None,
                last_shape: None,
                last_summary: None,
                last_active: None,
                last_edges: None,
                // A restart forgets incidents; status remembers the page one of them sent.
                incident: guard
                    .status
                    .as_ref()
                    .and_then(|s| s.open_page.as_ref())
                    .map(|o| Incident::restore(o, Instant::now(), Timestamp::now())),
                last_crowd: None,
            });
            if st.generation != generation {
                // Sensitivity, window, baseline or allowlist may have changed: the detector
                // starts afresh (seeded again, or relearnt within the warm-up).
                st.detector = detector();
                st.seed_due = seed_due;
                st.shape_due = None;
                st.generation = generation;
            }
        }
        self.seed_if_due(guard, &key).await;
        let taken = self.hub.take(&ns, &spec.edge_pool);
        let observation = {
            let mut states = self.states.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let st = states.get_mut(&key);
            taken.as_ref().and_then(|(sample, _)| st.map(|st| st.detector.observe(sample)))
        };
        if let Some(obs) = &observation
            && self.crowd_began(&key, obs.crowd)
        {
            // A crowd is let in: the on-call hears why a surge brought no mitigation, and that
            // the upstream must now carry it.
            let note = format!("a crowd of new users from the usual networks, let in as demand: {}", obs.summary());
            info!(guard = %key, "{note}");
            self.event(guard, EventType::Normal, "Crowd", "Detect", note).await;
        }

        let api: Api<Mitigation> = Api::namespaced(client.clone(), &ns);
        let existing = api.list(&ListParams::default().labels(&format!("{GUARD_LABEL}={name}"))).await?;
        let now = Timestamp::now();
        let mut active: HashMap<String, &Mitigation> = HashMap::new();
        let mut offences: HashMap<String, i32> = HashMap::new();
        for m in &existing {
            let mname = m.name_any();
            if m.spec.expires_at.0 > now {
                active.insert(mname.clone(), m);
            } else if m.spec.expires_at.0 + SignedDuration::from_secs(RETAIN_SECS) < now {
                info!(mitigation = %mname, "deleting mitigation expired more than a day ago");
                api.delete(&mname, &DeleteParams::default()).await.map(|_| ()).or_else(ignore_not_found)?;
                continue;
            }
            offences.insert(mname, m.spec.offence);
        }

        let mut wanted = Vec::new();
        if let (Some(obs), Some((_, extras))) = (&observation, &taken) {
            for f in &obs.findings {
                wanted.push(self.finding_mitigation(guard, f, obs));
            }
            if let Some(w) = shed(guard, extras, &active) {
                wanted.push(w);
            }
        }
        // Paused, nothing is renewed: levee extends no enforcement while it is told to stop.
        if let Some((_, extras)) = taken.as_ref().filter(|_| !paused) {
            for (mname, m) in &active {
                let Some(r) = renewal(guard, &ns, m, extras, now) else { continue };
                let renewed = owned(guard, &ns, mname, r.spec);
                api.patch(mname, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&renewed)).await?;
                let refuses = if renewed.spec.mode == Mode::Shadow { "would still refuse" } else { "still refuses" };
                let note = format!(
                    "{mname} renewed for {} (offence {}): its busiest edge {refuses} {:.1} req/s, at least what it \
                     lets through ({:.1} req/s); lapsing would let that in until it is detected again",
                    crate::api::Duration(r.ttl),
                    renewed.spec.offence + 1,
                    r.refused,
                    r.allowance
                );
                info!(guard = %key, "{note}");
                self.event(guard, EventType::Normal, "Renewed", "Mitigate", note).await;
            }
        }

        let max_active = usize::try_from(spec.mitigation.max_active).unwrap_or(1);
        let mut created = 0;
        let mut paged = Vec::new();
        for mut w in wanted {
            if active.contains_key(&w.name) {
                continue;
            }
            if active.len() + created >= max_active {
                warn!(guard = %key, max_active, "mitigation limit reached; not creating more");
                break;
            }
            let ttl = set_term(guard, &mut w.spec, offences.get(&w.name).map_or(0, |o| o + 1), now);
            let m = owned(guard, &ns, &w.name, w.spec);
            api.patch(&w.name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&m)).await?;
            created += 1;
            paged.push(PagedMitigation { name: w.name.clone(), ttl, spec: m.spec.clone() });
            let shadow = spec.mode == Mode::Shadow;
            let note = format!(
                "{}{} for {} (offence {}): {}",
                if shadow { "shadow (counted, not enforced): " } else { "" },
                w.name,
                crate::api::Duration(ttl),
                m.spec.offence + 1,
                m.spec.reason
            );
            info!(guard = %key, "{note}");
            self.event(guard, EventType::Warning, if shadow { "WouldMitigate" } else { "Mitigated" }, "Mitigate", note)
                .await;
        }
        self.page_if_due(client, guard, &key, observation.as_ref(), active.is_empty(), paged);
        let active_now = i32::try_from(active.len() + created).unwrap_or(i32::MAX);
        self.write_status(client, guard, observation.as_ref(), active_now, taken.map(|t| t.1)).await
    }

    fn finding_mitigation(&self, guard: &TrafficGuard, f: &Finding, obs: &Observation) -> Wanted {
        let m = &guard.spec.mitigation;
        let limit = mitigation_limit(f, m.rate_limit_multiple);
        let (action, rate_limit, what) = match m.action {
            GuardAction::Block => (MitigationAction::Block, None, "block".to_owned()),
            GuardAction::RateLimit => (
                MitigationAction::RateLimit,
                Some(RateLimit {
                    requests_per_second: round2(limit),
                    burst: (limit.ceil() as i32).clamp(1, 1_000_000),
                }),
                format!("limit to {limit:.1} req/s"),
            ),
        };
        let reason = format!("{}; {what}", f.describe());
        let spec = MitigationSpec {
            edge_pool: guard.spec.edge_pool.clone(),
            guard: Some(guard.name_any()),
            match_: MatchSpec { except_prefixes: f.except.clone(), ..match_for(f.dimension, &f.key) },
            action,
            rate_limit,
            admit_percent: None,
            admit_ramp: None,
            expires_at: Time(Timestamp::now()),
            reason,
            evidence: Some(Evidence {
                detector: f.kind.as_str().to_owned(),
                observed_rate: round2(f.rate),
                baseline_rate: round2(f.baseline),
                score: Some(round2(obs.total_score)),
                sample_sources: Vec::new(),
            }),
            offence: 0,
            mode: guard.spec.mode,
        };
        Wanted { name: mitigation_name(&guard.name_any(), f.dimension, &f.key), spec }
    }

    /// Pages the on-call about the mitigations just created, when the guard's `page` asks for
    /// it: once when an incident begins, again at most every [`REPAGE_AFTER`] while it grows;
    /// and resolves the incident's page once none of the guard's mitigations is in force.
    /// Shadow guards never page: nothing is being done that the on-call must know of.
    /// Delivery runs apart, so a slow pager never delays the next look at the pool; its outcome
    /// is an Event on the guard (`Paged`, `PageResolved` or `PageFailed`).
    fn page_if_due(
        &self,
        client: &Client,
        guard: &TrafficGuard,
        key: &str,
        obs: Option<&Observation>,
        none_active: bool,
        created: Vec<PagedMitigation>,
    ) {
        let (due, trigger, secret_ref) = {
            let mut states = self.states.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let Some(st) = states.get_mut(key) else { return };
            let offences: Vec<i32> = created.iter().map(|m| m.spec.offence).collect();
            let Some(policy) = &guard.spec.page else {
                if let Some(i) = st.incident.take() {
                    // The route went with the spec: there is nowhere to send the resolve.
                    warn!(guard = %key, dedup_key = %i.dedup_key, "spec.page was removed while its page is open: close that incident by hand");
                }
                return;
            };
            let shadow = guard.spec.mode == Mode::Shadow;
            let new_key = || format!("levee/{key}/{}", Timestamp::now().as_second());
            let mut due =
                page_due(&mut st.incident, policy.when, shadow, &offences, none_active, Instant::now(), new_key);
            let trigger = due.trigger.take().map(|dedup_key| page_for(guard, key, dedup_key, obs, &created));
            if let (Some(page), Some(incident)) = (&trigger, &mut st.incident)
                && incident.summary.is_empty()
            {
                incident.summary.clone_from(&page.summary);
            }
            (due, trigger, policy.route_secret_ref.clone())
        };
        let ns = guard.namespace().unwrap_or_default();
        let mut pages = Vec::new();
        if let Some((dedup_key, lasted)) = due.resolve {
            let lasted = crate::api::Duration(Duration::from_secs(lasted.as_secs()));
            let summary = format!("levee: TrafficGuard {key}: incident over after {lasted}, no mitigation in force");
            let details = json!({ "guard": key, "lasted": lasted.to_string() });
            pages.push(Page::resolve(dedup_key, format!("TrafficGuard/{key}"), summary, details));
        }
        pages.extend(trigger);
        for page in pages {
            deliver(client, &self.pager, &self.recorder, ns.clone(), guard.object_ref(&()), secret_ref.clone(), page);
        }
    }

    /// Forgets a deleted guard (its baselines and incident), and resolves the page it had open:
    /// no tick will.
    pub fn deleted(&self, client: &Client, guard: &TrafficGuard) {
        let key = format!("{}/{}", guard.namespace().unwrap_or_default(), guard.name_any());
        self.states.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&key);
        let route = guard.spec.page.as_ref().map(|p| &p.route_secret_ref);
        let open = guard.status.as_ref().and_then(|s| s.open_page.as_ref());
        resolve_deleted(client, &self.pager, &self.recorder, guard.object_ref(&()), route, open);
    }

    /// Records a sample's crowd verdict; true when a crowd begins, that is, none was seen for
    /// `CROWD_QUIET`. A crowd is learnt as it comes, so its samples stop showing it and show it
    /// again as it grows: one crowd, one Event.
    fn crowd_began(&self, key: &str, crowd: bool) -> bool {
        let now = Instant::now();
        let mut states = self.states.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(st) = states.get_mut(key).filter(|_| crowd) else { return false };
        let began = st.last_crowd.is_none_or(|t| now.duration_since(t) > CROWD_QUIET);
        st.last_crowd = Some(now);
        began
    }

    async fn event(&self, guard: &TrafficGuard, type_: EventType, reason: &str, action: &str, note: String) {
        let ev = Event { type_, reason: reason.into(), note: Some(note), action: action.into(), secondary: None };
        if let Err(e) = self.recorder.publish(&ev, &guard.object_ref(&())).await {
            warn!(error = %e, "cannot publish event");
        }
    }

    /// Writes status when something changed: the active count, a new detection, the number of
    /// edges reporting, or the page held open.
    async fn write_status(
        &self,
        client: &Client,
        guard: &TrafficGuard,
        obs: Option<&Observation>,
        active: i32,
        extras: Option<PoolExtras>,
    ) -> Result<(), GuardError> {
        let ns = guard.namespace().unwrap_or_default();
        let key = format!("{ns}/{}", guard.name_any());
        let detection = obs.filter(|o| !o.findings.is_empty() || o.surge || o.demand_rise).map(Observation::summary);
        let silent = self.hub.silence(&ns, &guard.spec.edge_pool, Instant::now()).is_none_or(|s| s > SILENT_AFTER);
        let edges = match (&extras, silent) {
            (_, true) => Some(0),
            (Some(e), false) => Some(i32::try_from(e.edges).unwrap_or(i32::MAX)),
            // Reporting, but nothing new this tick: keep what status says.
            (None, false) => None,
        };
        let old = guard.status.as_ref();
        let (open_page, shape) = {
            let mut states = self.states.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let Some(st) = states.get_mut(&key) else { return Ok(()) };
            let new_detection = detection.is_some() && detection != st.last_summary;
            let edges_changed = edges.is_some() && edges != st.last_edges;
            let open_page = st.incident.as_ref().map(|i| i.open_page(Instant::now(), Timestamp::now()));
            let kept = old.and_then(|s| s.open_page.as_ref()).map(|o| &o.dedup_key);
            let page_changed = open_page.as_ref().map(|o| &o.dedup_key) != kept;
            // Three decimals: a shape renewed each quarter hour rewrites status only when it moved.
            let shape =
                st.detector.season().map(|s| s.factors().iter().map(|f| (f * 1000.0).round() / 1000.0).collect());
            let shape_changed = shape != st.last_shape;
            if !new_detection && !edges_changed && !page_changed && !shape_changed && st.last_active == Some(active) {
                return Ok(());
            }
            st.last_shape.clone_from(&shape);
            if detection.is_some() {
                st.last_summary.clone_from(&detection);
            }
            if edges.is_some() {
                st.last_edges = edges;
            }
            st.last_active = Some(active);
            (open_page, shape)
        };
        let mut status = json!({ "activeMitigations": active });
        if let Some(summary) = detection {
            status["lastDetection"] = json!({ "time": Time(Timestamp::now()), "summary": summary });
        } else if let Some(d) = old.and_then(|s| s.last_detection.as_ref()) {
            status["lastDetection"] = serde_json::to_value(d).unwrap_or_default();
        }
        if let Some(n) = edges.or(old.and_then(|s| s.edges_reporting)) {
            status["edgesReporting"] = json!(n);
        }
        // Left out when none is open: under server-side apply that removes the one written before.
        if let Some(open) = open_page {
            status["openPage"] = serde_json::to_value(open).unwrap_or_default();
        }
        if let Some(shape) = shape {
            status["dailyShape"] = json!(shape);
        }
        let patch = json!({ "apiVersion": TrafficGuard::api_version(&()), "kind": "TrafficGuard", "status": status });
        let api: Api<TrafficGuard> = Api::namespaced(client.clone(), &ns);
        api.patch_status(&guard.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(patch)).await?;
        Ok(())
    }
}

/// `POST /v1/edge/reports`: edges deliver their counts here.
pub fn reports_router(hub: Arc<ReportHub>) -> axum::Router {
    use axum::{extract::State, http::StatusCode, routing::post};
    axum::Router::new()
        .route(
            crate::edge::report::REPORT_PATH,
            post(|State(hub): State<Arc<ReportHub>>, body: axum::Json<crate::edge::report::EdgeReport>| async move {
                match hub.ingest(body.0, Instant::now()) {
                    Ok(()) => (StatusCode::ACCEPTED, String::new()),
                    Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")),
                }
            }),
        )
        .layer(axum::extract::DefaultBodyLimit::max(crate::edge::report::MAX_REPORT_BYTES))
        .with_state(hub)
}

fn ignore_not_found(e: kube::Error) -> Result<(), kube::Error> {
    match e {
        kube::Error::Api(s) if s.code == 404 => Ok(()),
        e => Err(e),
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn tuning(guard: &TrafficGuard) -> Tuning {
    Tuning::new(guard.spec.sensitivity, guard.spec.baseline.window.as_secs_f64(), TICK.as_secs_f64())
}

/// The TTL of the `offence`-th mitigation of one key (0 = first): `ttl`, then each
/// `escalation` entry in turn, the last one repeating.
pub fn ttl_for(guard: &TrafficGuard, offence: i32) -> Duration {
    let m = &guard.spec.mitigation;
    match usize::try_from(offence).ok().and_then(|o| o.checked_sub(1)) {
        None => m.ttl.0,
        Some(i) => m.escalation.get(i).or(m.escalation.last()).map_or(m.ttl.0, |d| d.0),
    }
}

fn match_for(dim: Dimension, key: &str) -> MatchSpec {
    let mut m = MatchSpec::default();
    match dim {
        Dimension::Ip => m.ip = Some(key.to_owned()),
        Dimension::Prefix => m.prefix = Some(key.to_owned()),
        Dimension::Asn => m.asn = key.parse().ok(),
        Dimension::Country => m.country = Some(key.to_owned()),
        Dimension::ApiKey => m.api_key = Some(key.to_owned()),
    }
    m
}

/// `<guard>-<dimension>-<key as a DNS label>-<hash>`: stable, so the same key maps to the
/// same object (and its offence count), and valid whatever the key holds.
pub fn mitigation_name(guard: &str, dim: Dimension, key: &str) -> String {
    // FNV: the name must be the same in every build and release, which std's hasher is not.
    let mut h = fnv::FnvHasher::default();
    key.hash(&mut h);
    let slug: String =
        key.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).take(30).collect();
    let dim = format!("{dim:?}").to_ascii_lowercase();
    let guard: String = guard.chars().take(253 - 50).collect();
    format!("{guard}-{dim}-{}-{:08x}", slug.trim_matches('-'), h.finish() as u32)
}

/// Under pressure (an upstream's breaker open on some edge), shed the lowest-priority class
/// that is not already shed, never the highest: it is limited to a tenth of its current rate.
fn shed(guard: &TrafficGuard, extras: &PoolExtras, active: &HashMap<String, &Mitigation>) -> Option<Wanted> {
    let sh = guard.spec.shedding.as_ref()?;
    if extras.open_breakers.is_empty() || sh.classes.len() < 2 {
        return None;
    }
    let mut classes: Vec<_> = sh.classes.iter().collect();
    classes.sort_by_key(|c| c.priority);
    let top = classes.last()?.priority;
    let class = classes.into_iter().filter(|c| c.priority < top).find(|c| {
        let name = mitigation_name(&guard.name_any(), Dimension::Ip, &format!("class:{}", c.name));
        !active.contains_key(&name)
    })?;
    let rate = extras.class_rates.get(&class.name).copied().unwrap_or(0.0);
    let limit = round2((rate * 0.1).max(1.0));
    let reason = format!(
        "upstream {} failing (breaker open); shedding class {} (priority {}) from {rate:.1} to {limit} req/s",
        extras.open_breakers.join(", "),
        class.name,
        class.priority
    );
    let spec = MitigationSpec {
        edge_pool: guard.spec.edge_pool.clone(),
        guard: Some(guard.name_any()),
        match_: MatchSpec { traffic_class: Some(class.name.clone()), ..MatchSpec::default() },
        action: MitigationAction::RateLimit,
        rate_limit: Some(RateLimit { requests_per_second: limit, burst: (limit.ceil() as i32).max(1) }),
        admit_percent: None,
        admit_ramp: None,
        expires_at: Time(Timestamp::now()),
        reason,
        evidence: None,
        offence: 0,
        mode: guard.spec.mode,
    };
    Some(Wanted { name: mitigation_name(&guard.name_any(), Dimension::Ip, &format!("class:{}", class.name)), spec })
}

/// Whether the mitigations just created (their `offences`) page the on-call now, and under
/// which dedup key; and whether an incident that paged has ended. An incident ends when none
/// of the guard's mitigations is in force (`none_active`, before this tick's); within one,
/// pages come at most every [`REPAGE_AFTER`] and share the key `new_key` made for its first.
fn page_due(
    incident: &mut Option<Incident>,
    when: PageWhen,
    shadow: bool,
    offences: &[i32],
    none_active: bool,
    now: Instant,
    new_key: impl FnOnce() -> String,
) -> PagesDue {
    let mut due = PagesDue::default();
    if none_active {
        due.resolve = incident.take().map(|i| (i.dedup_key, now.duration_since(i.began)));
    }
    let wanted = match when {
        PageWhen::Never => false,
        PageWhen::Mitigation => !offences.is_empty(),
        PageWhen::Escalation => offences.iter().any(|&o| o > 0),
    };
    if !wanted || shadow {
        return due;
    }
    due.trigger = match incident {
        Some(i) if now.duration_since(i.last_page) < REPAGE_AFTER => None,
        Some(i) => {
            i.last_page = now;
            Some(i.dedup_key.clone())
        }
        None => {
            let dedup_key = new_key();
            *incident =
                Some(Incident { dedup_key: dedup_key.clone(), began: now, last_page: now, summary: String::new() });
            Some(dedup_key)
        }
    };
    due
}

/// The page for mitigations just created: a one-line summary the on-call reads first, and
/// every mitigation with its evidence, and where to look, in the details.
fn page_for(
    guard: &TrafficGuard,
    key: &str,
    dedup_key: String,
    obs: Option<&Observation>,
    created: &[PagedMitigation],
) -> Page {
    let first = created.first().map_or("", |m| m.spec.reason.as_str());
    let more = match created.len() {
        0 | 1 => String::new(),
        n => format!(" (+{} more)", n - 1),
    };
    let summary = format!("levee: TrafficGuard {key} (pool {}) mitigating: {first}{more}", guard.spec.edge_pool);
    let ns = guard.namespace().unwrap_or_default();
    let mitigations: Vec<serde_json::Value> = created
        .iter()
        .map(|m| {
            json!({
                "name": m.name,
                "match": m.spec.match_,
                "action": m.spec.action,
                "rateLimit": m.spec.rate_limit,
                "ttl": crate::api::Duration(m.ttl).to_string(),
                "offence": m.spec.offence + 1,
                "reason": m.spec.reason,
                "evidence": m.spec.evidence,
            })
        })
        .collect();
    Page {
        action: Action::Trigger,
        dedup_key,
        summary,
        severity: if created.iter().any(PagedMitigation::critical) { Severity::Critical } else { Severity::Warning },
        source: format!("TrafficGuard/{key}"),
        details: json!({
            "guard": key,
            "pool": guard.spec.edge_pool,
            "detection": obs.map(Observation::summary),
            "mitigations": mitigations,
            "inspect": format!("kubectl -n {ns} get mitigations -l {GUARD_LABEL}={}", guard.name_any()),
            "lift": format!("kubectl -n {ns} delete mitigation <name>  (the guard may re-create it while the traffic continues)"),
        }),
    }
}

/// A Mitigation of `guard`, as the guard writes it (server-side apply of the whole object).
fn owned(guard: &TrafficGuard, ns: &str, name: &str, spec: MitigationSpec) -> Mitigation {
    Mitigation {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(ns.to_owned()),
            labels: Some([(GUARD_LABEL.to_owned(), guard.name_any())].into()),
            owner_references: owner(guard).map(|o| vec![o]),
            ..Default::default()
        },
        spec,
        status: None,
    }
}

/// A mitigation's renewal, and the figures behind it.
struct Renewal {
    spec: MitigationSpec,
    ttl: Duration,
    /// Requests refused per second on the edge that refused most.
    refused: f64,
    /// What it lets through, per second and edge.
    allowance: f64,
}

/// The renewal of the active mitigation `m` (in `ns`), when it is about to lapse while its
/// busiest edge still refuses at least what it lets through ([`renews`]). It counts as a repeat
/// offence, so its TTL escalates. Shedding of a traffic class is left out: it follows the
/// class's rate and the upstream's breaker, and is made again while they call for it.
fn renewal(guard: &TrafficGuard, ns: &str, m: &Mitigation, extras: &PoolExtras, now: Timestamp) -> Option<Renewal> {
    if m.spec.match_.traffic_class.is_some() {
        return None;
    }
    let refused = *extras.refused_rates.get(&format!("{ns}/{}", m.name_any()))?;
    let secs_left = now.duration_until(m.spec.expires_at.0).as_secs_f64();
    let allowance = match (&m.spec.action, &m.spec.rate_limit) {
        (MitigationAction::RateLimit, Some(rl)) => rl.requests_per_second,
        // A block lets nothing through: what a limit would have let through instead.
        _ => m.spec.evidence.as_ref().map_or(1.0, |e| e.baseline_rate * guard.spec.mitigation.rate_limit_multiple),
    };
    // The term levee gives this offence, or less for a mitigation written by hand with a
    // shorter expiry (its whole life is then shorter than that term).
    let life = m.metadata.creation_timestamp.as_ref().map(|c| c.0.duration_until(m.spec.expires_at.0).as_secs_f64());
    let term = life.map_or(f64::INFINITY, |l| l.max(0.0)).min(ttl_for(guard, m.spec.offence).as_secs_f64());
    if !renews(secs_left, term, allowance, refused) {
        return None;
    }
    let mut spec = m.spec.clone();
    let ttl = set_term(guard, &mut spec, m.spec.offence.saturating_add(1), now);
    Some(Renewal { spec, ttl, refused, allowance })
}

/// Makes `spec` the key's `offence`-th mitigation (0 = first), in force from `now` for that
/// offence's TTL, which it returns.
fn set_term(guard: &TrafficGuard, spec: &mut MitigationSpec, offence: i32, now: Timestamp) -> Duration {
    let ttl = ttl_for(guard, offence);
    spec.offence = offence;
    spec.expires_at = Time(now + SignedDuration::from_secs_f64(ttl.as_secs_f64()));
    ttl
}

fn owner(guard: &TrafficGuard) -> Option<OwnerReference> {
    guard.controller_owner_ref(&()).map(|mut o| {
        o.controller = Some(false);
        o
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(yaml: &str) -> TrafficGuard {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn ttl_escalates_and_the_last_step_repeats() {
        let g = guard(
            "apiVersion: levee.dev/v1alpha1\nkind: TrafficGuard\nmetadata: {name: g}\nspec:\n  edgePool: public\n  aggregationKeys: [Ip]\n  mitigation: {ttl: 5m, escalation: [15m, 60m]}\n",
        );
        let secs: Vec<u64> = (0..5).map(|o| ttl_for(&g, o).as_secs()).collect();
        assert_eq!(secs, vec![300, 900, 3600, 3600, 3600]);
    }

    #[test]
    fn an_incident_restored_from_status_is_resolved_under_its_key_and_not_paged_again_at_once() {
        let wall: Timestamp = "2026-11-27T10:10:00Z".parse().unwrap();
        let t0 = Instant::now();
        let open = OpenPage {
            dedup_key: "levee/shop/edge/1795860000".into(),
            reason: "Incident".into(),
            since: Time("2026-11-27T10:00:00Z".parse().unwrap()),
            summary: "levee: TrafficGuard shop/edge: rate-limited 203.0.113.9".into(),
        };
        let restored = Incident::restore(&open, t0, wall);
        assert_eq!(restored.open_page(t0, wall), open, "status gets back what it kept");
        let mut incident = Some(restored);
        let m = PageWhen::Mitigation;
        let one_minute = t0 + Duration::from_secs(60);
        let due = page_due(&mut incident, m, false, &[0], false, one_minute, || "new".into());
        assert_eq!(due, PagesDue::default(), "counts as just paged");
        let due = page_due(&mut incident, m, false, &[], true, one_minute, || "new".into());
        assert_eq!(due.resolve, Some((open.dedup_key.clone(), Duration::from_secs(660))), "whole length, same key");
    }

    #[test]
    fn an_incident_pages_once_then_at_most_every_five_minutes_and_a_new_one_pages_afresh() {
        let t0 = Instant::now();
        let mut incident = None;
        let mut due = |when, shadow, offences: &[i32], none_active, secs: u64, key: &str| {
            let now = t0 + Duration::from_secs(secs);
            page_due(&mut incident, when, shadow, offences, none_active, now, || key.to_owned())
        };
        let trigger = |key: &str| PagesDue { resolve: None, trigger: Some(key.into()) };
        let m = PageWhen::Mitigation;
        assert_eq!(due(m, false, &[], true, 0, "a"), PagesDue::default(), "nothing created");
        assert_eq!(due(m, false, &[0], true, 0, "a"), trigger("a"), "the incident begins");
        assert_eq!(due(m, false, &[0, 0], false, 60, "b"), PagesDue::default(), "within five minutes of the last page");
        assert_eq!(due(m, false, &[0], false, 301, "b"), trigger("a"), "again, same incident");
        assert_eq!(
            due(m, false, &[0], true, 400, "c"),
            PagesDue { resolve: Some(("a".into(), Duration::from_secs(400))), trigger: Some("c".into()) },
            "the last incident ends as a new one begins"
        );
        assert_eq!(
            due(m, false, &[], true, 500, "d"),
            PagesDue { resolve: Some(("c".into(), Duration::from_secs(100))), trigger: None },
            "an incident ends when none of its mitigations is in force"
        );
        assert_eq!(due(m, false, &[], true, 600, "d"), PagesDue::default(), "and is resolved once");

        let mut incident = None;
        let mut due = |when, shadow, offences: &[i32]| {
            page_due(&mut incident, when, shadow, offences, true, t0, || "k".into()).trigger
        };
        assert_eq!(due(PageWhen::Never, false, &[0]), None);
        assert_eq!(due(PageWhen::Mitigation, true, &[0]), None, "shadow guards never page");
        assert_eq!(due(PageWhen::Escalation, false, &[0]), None, "a first offence");
        assert_eq!(due(PageWhen::Escalation, false, &[0, 2]).as_deref(), Some("k"), "a repeat offender");
    }

    #[test]
    fn names_are_stable_dns_labels() {
        let a = mitigation_name("edge", Dimension::Ip, "2001:db8::1");
        assert_eq!(a, mitigation_name("edge", Dimension::Ip, "2001:db8::1"));
        assert_ne!(a, mitigation_name("edge", Dimension::Ip, "2001:db8::2"));
        assert!(a.starts_with("edge-ip-2001-db8--1-"), "{a}");
        let weird = mitigation_name("edge", Dimension::ApiKey, "K€Y with spaces/../../and more than thirty characters");
        assert!(weird.len() <= 253);
        assert!(weird.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'), "{weird}");
    }
}
