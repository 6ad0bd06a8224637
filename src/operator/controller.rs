//! The policy controller: `fetch → validate → build conditions → apply status` for every kind.
//!
//! One generic reconcile serves all four kinds. It never acts on a policy; it judges it and
//! says so in `status.conditions`, where `kubectl get` and `kubectl describe` show it.

use std::{sync::Arc, time::Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::{
    api::core::v1::Secret,
    apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta},
    jiff::Timestamp,
};
use kube::{
    Api, Client, ResourceExt,
    api::{ApiResource, DynamicObject, Patch, PatchParams},
    core::DeserializeGuard,
    runtime::{
        Controller, WatchStreamExt,
        controller::Action,
        predicates,
        reflector::{Store, store::Writer},
        watcher,
    },
};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{info, instrument, warn};

use super::{
    conditions::{Wanted, merge},
    metrics::{FailureLabels, ReconcileMetrics},
    policy::Policy,
};
use crate::api::{common::condition, validate::summarize};

/// The field manager of every write the policy controller makes.
pub const FIELD_MANAGER: &str = "levee";

/// How often a valid policy is looked at again without a change (catches Secrets deleted later).
const RESYNC: std::time::Duration = std::time::Duration::from_secs(300);
/// How soon a policy waiting for a Secret is looked at again.
const SECRET_RETRY: std::time::Duration = std::time::Duration::from_secs(5);
/// Back-off after a failed reconcile (an apiserver error; the spec is not at fault).
const ERROR_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub metrics: ReconcileMetrics,
    pub scaler: super::scaling::Scaler,
    pub guards: super::guard::Guards,
    pub bootstrapper: super::bootstrap::Bootstrapper,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
    #[error("object has no namespace")]
    NoNamespace,
    #[error("scaling: {0}")]
    Scale(#[from] super::scaling::ScaleError),
    #[error("traffic guard: {0}")]
    Guard(#[from] super::guard::GuardError),
    #[error("bootstrap: {0}")]
    Bootstrap(#[from] super::bootstrap::BootstrapError),
}

impl Error {
    fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::NoNamespace => "no_namespace",
            Error::Scale(_) => "scale",
            Error::Guard(_) => "guard",
            Error::Bootstrap(_) => "bootstrap",
        }
    }
}

/// What the controller concluded about a policy.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Valid,
    /// `reason` is CamelCase for machines; `message` names each offending field.
    Invalid {
        reason: &'static str,
        message: String,
        retry: bool,
    },
}

impl Verdict {
    fn conditions(&self) -> Vec<Wanted> {
        match self {
            Verdict::Valid => vec![
                Wanted {
                    type_: condition::READY,
                    status: true,
                    reason: "Valid".into(),
                    message: "policy is valid".into(),
                },
                Wanted { type_: condition::INVALID, status: false, reason: "Valid".into(), message: String::new() },
            ],
            Verdict::Invalid { reason, message, .. } => vec![
                Wanted { type_: condition::READY, status: false, reason: (*reason).into(), message: message.clone() },
                Wanted { type_: condition::INVALID, status: true, reason: (*reason).into(), message: message.clone() },
            ],
        }
    }

    fn next(&self) -> Action {
        match self {
            Verdict::Valid => Action::requeue(RESYNC),
            Verdict::Invalid { retry: true, .. } => Action::requeue(SECRET_RETRY),
            // Only an edit can fix the spec, and the watch brings edits.
            Verdict::Invalid { retry: false, .. } => Action::await_change(),
        }
    }
}

/// Judges a well-formed policy: semantic checks first, then the Secrets it refers to.
async fn judge<K: Policy>(obj: &K, client: &Client, ns: &str) -> Result<Verdict, Error> {
    let errors = obj.validate_spec();
    if !errors.is_empty() {
        return Ok(Verdict::Invalid { reason: "InvalidSpec", message: summarize(&errors), retry: false });
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let mut missing = Vec::new();
    for (field, r) in obj.secret_refs() {
        match secrets.get_opt(&r.name).await? {
            None => missing.push(format!("{field}: Secret {:?} not found in namespace {ns:?}", r.name)),
            Some(s) => {
                let has_key = s.data.as_ref().is_some_and(|d| d.contains_key(&r.key))
                    || s.string_data.as_ref().is_some_and(|d| d.contains_key(&r.key));
                if !has_key {
                    missing.push(format!("{field}: Secret {:?} has no key {:?}", r.name, r.key));
                }
            }
        }
    }
    if missing.is_empty() {
        Ok(Verdict::Valid)
    } else {
        Ok(Verdict::Invalid { reason: "SecretNotFound", message: missing.join("; "), retry: true })
    }
}

/// Conditions currently on an object that failed to deserialize, read untyped.
async fn raw_conditions<K: Policy>(client: &Client, ns: &str, name: &str) -> Result<Vec<Condition>, Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ApiResource::erase::<K>(&()));
    let obj = api.get_status(name).await?;
    Ok(obj.data.pointer("/status/conditions").and_then(|c| serde_json::from_value(c.clone()).ok()).unwrap_or_default())
}

#[instrument(skip_all, fields(kind = %K::kind(&()), name = %guard.name_any(), namespace = guard.namespace().as_deref().unwrap_or("")))]
async fn reconcile<K: Policy>(guard: Arc<DeserializeGuard<K>>, ctx: Arc<Context>) -> Result<Action, Error> {
    let kind = K::kind(&()).to_string();
    let labels = ReconcileMetrics::kind(&kind);
    ctx.metrics.runs.get_or_create(&labels).inc();
    // The series exists from the first run's start, not from its end: a scrape while the first
    // reconciles are in flight sees the histogram (empty), as it sees the runs counter.
    let duration = ctx.metrics.duration.get_or_create(&labels).clone();
    let started = Instant::now();
    let result = reconcile_inner(&guard, &ctx).await;
    duration.observe(started.elapsed().as_secs_f64());
    result
}

async fn reconcile_inner<K: Policy>(guard: &DeserializeGuard<K>, ctx: &Context) -> Result<Action, Error> {
    let client = &ctx.client;
    // The observed generation of a malformed object cannot be read, so it is always rewritten
    // (which happens only when it changes: malformed objects wait for an edit).
    let (meta, verdict, existing, observed): (&ObjectMeta, Verdict, Vec<Condition>, Option<i64>) = match &guard.0 {
        Ok(obj) => {
            let ns = obj.namespace().ok_or(Error::NoNamespace)?;
            let verdict = judge(obj, client, &ns).await?;
            let status = obj.policy_status();
            let existing = status.map(|s| s.conditions().to_vec()).unwrap_or_default();
            (obj.meta(), verdict, existing, status.and_then(|s| s.observed_generation()))
        }
        Err(invalid) => {
            let ns = invalid.metadata.namespace.as_deref().ok_or(Error::NoNamespace)?;
            let name = invalid.metadata.name.as_deref().unwrap_or_default();
            let existing = raw_conditions::<K>(client, ns, name).await?;
            let message = format!("the object does not match the {} schema: {}", K::kind(&()), invalid.error);
            (&invalid.metadata, Verdict::Invalid { reason: "Malformed", message, retry: false }, existing, None)
        }
    };
    if matches!(verdict, Verdict::Invalid { .. }) {
        ctx.metrics.invalid.get_or_create(&ReconcileMetrics::kind(&K::kind(&()))).inc();
    }
    let generation = meta.generation;
    let wanted = verdict.conditions();
    let conditions = merge(&existing, &wanted, generation, Timestamp::now());
    // Skip the write when nothing would change: a resync must not touch the object.
    let mut current: Vec<_> = existing.into_iter().filter(|c| wanted.iter().any(|w| w.type_ == c.type_)).collect();
    current.sort_by(|a, b| a.type_.cmp(&b.type_));
    if conditions != current || observed != generation {
        let ns = meta.namespace.as_deref().ok_or(Error::NoNamespace)?;
        let name = meta.name.as_deref().unwrap_or_default();
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ApiResource::erase::<K>(&()));
        let patch = json!({
            "apiVersion": K::api_version(&()),
            "kind": K::kind(&()),
            "status": { "observedGeneration": generation, "conditions": conditions },
        });
        api.patch_status(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(patch)).await?;
        match &verdict {
            Verdict::Valid => info!("policy is valid"),
            Verdict::Invalid { reason, message, .. } => warn!(reason, message, "policy is invalid"),
        }
    }
    if let (Verdict::Valid, Ok(obj)) = (&verdict, &guard.0)
        && let Some(again) = obj.act(ctx).await?
    {
        return Ok(Action::requeue(again));
    }
    Ok(verdict.next())
}

fn error_policy<K: Policy>(guard: Arc<DeserializeGuard<K>>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(kind = %K::kind(&()), name = %guard.name_any(), %error, "reconcile failed; retrying");
    ctx.metrics
        .failures
        .get_or_create(&FailureLabels { kind: K::kind(&()).to_string(), error: error.metric_label().into() })
        .inc();
    Action::requeue(ERROR_RETRY)
}

/// Runs the controller for kind `K` until `shutdown` is cancelled.
///
/// A malformed object does not stop the watch: it is reconciled as `Malformed` and its
/// `Invalid` condition carries the deserialization error. `cache` is the store the watch
/// fills, which the status API reads too.
pub async fn run<K: Policy>(
    api: Api<DeserializeGuard<K>>,
    (reader, writer): (Store<DeserializeGuard<K>>, Writer<DeserializeGuard<K>>),
    ctx: Arc<Context>,
    shutdown: CancellationToken,
) {
    // Only spec changes (a new generation) trigger a reconcile: the operator's own status
    // writes must not, or every status write would start another tick at once.
    let on_delete = ctx.clone();
    let changes = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .inspect_ok(move |event| {
            // A deletion is seen here and nowhere else: the controller reconciles only
            // objects that exist. One deleted while the operator was down is not seen at all.
            if let watcher::Event::Delete(DeserializeGuard(Ok(policy))) = event {
                policy.deleted(&on_delete);
            }
        })
        .applied_objects()
        .predicate_filter(predicates::generation, Default::default());
    Controller::for_stream(changes, reader)
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile::<K>, error_policy::<K>, ctx)
        .for_each(|res| async move {
            match res {
                // A policy deleted while a look at it was scheduled: nothing is wrong.
                Err(kube::runtime::controller::Error::ObjectNotFound(obj)) => {
                    tracing::debug!(object = %obj, "scheduled look at a deleted policy skipped");
                }
                Err(e) => warn!(error = %e, "controller stream error"),
                Ok(_) => {}
            }
        })
        .await;
}
