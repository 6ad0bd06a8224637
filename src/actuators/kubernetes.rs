//! Deployments and StatefulSets, through the scale subresource.

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, StatefulSet},
        core::v1::Pod,
    },
    apimachinery::pkg::apis::meta::v1::LabelSelector,
};
use kube::{
    Api, Client,
    api::{ListParams, Patch, PatchParams},
    core::Selector,
};
use serde_json::json;

use super::{ActuatorError, Size};
use crate::engine::spiral::PodView;

/// A workload as read at one moment.
pub struct Observed {
    pub size: Size,
    /// Its pod selector (none only on an object without a spec).
    pub selector: Option<LabelSelector>,
}

/// What [`Workload::observe`] reads of a Deployment or a StatefulSet: the same three fields,
/// which their two types each declare.
trait Replicated:
    kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
{
    /// `spec.replicas`, `status.readyReplicas` and `spec.selector`.
    fn observed(self) -> (Option<i32>, Option<i32>, Option<LabelSelector>);
}

// The two types declare the same fields separately: one body serves both.
macro_rules! replicated {
    ($($kind:ty),*) => {$(
        impl Replicated for $kind {
            fn observed(self) -> (Option<i32>, Option<i32>, Option<LabelSelector>) {
                let (spec, status) = (self.spec, self.status);
                (spec.as_ref().and_then(|s| s.replicas), status.and_then(|s| s.ready_replicas), spec.map(|s| s.selector))
            }
        }
    )*};
}
replicated!(Deployment, StatefulSet);

/// Which workload kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
}

/// A Deployment or StatefulSet in a namespace.
#[derive(Clone)]
pub struct Workload {
    client: Client,
    pub kind: WorkloadKind,
    pub namespace: String,
    pub name: String,
}

fn api_error(target: &str, e: kube::Error) -> ActuatorError {
    match e {
        kube::Error::Api(s) if s.code == 404 => ActuatorError::NotFound { target: target.to_owned() },
        // The apiserver's own sentence, not the whole Status structure.
        kube::Error::Api(s) => {
            ActuatorError::Api { target: target.to_owned(), detail: format!("{} ({})", s.message, s.code) }
        }
        other => ActuatorError::Api { target: target.to_owned(), detail: other.to_string() },
    }
}

/// `Deployment shop/api`, for a workload not built as a [`Workload`].
pub fn label(kind: WorkloadKind, namespace: &str, name: &str) -> String {
    format!("{kind:?} {namespace}/{name}")
}

impl Workload {
    pub fn new(client: Client, kind: WorkloadKind, namespace: &str, name: &str) -> Self {
        Self { client, kind, namespace: namespace.to_owned(), name: name.to_owned() }
    }

    /// `Deployment shop/api`: how errors, logs and bootstrap claims name it.
    pub fn label(&self) -> String {
        label(self.kind, &self.namespace, &self.name)
    }

    /// The workload as read now: its size and its pod selector.
    pub async fn observe(&self) -> Result<Observed, ActuatorError> {
        match self.kind {
            WorkloadKind::Deployment => self.read::<Deployment>().await,
            WorkloadKind::StatefulSet => self.read::<StatefulSet>().await,
        }
    }

    async fn read<K: Replicated>(&self) -> Result<Observed, ActuatorError> {
        let object = Api::<K>::namespaced(self.client.clone(), &self.namespace)
            .get(&self.name)
            .await
            .map_err(|e| api_error(&self.label(), e))?;
        let (replicas, ready, selector) = object.observed();
        // An unset spec.replicas means one, as the apiserver defaults it.
        let desired = replicas.unwrap_or(1);
        Ok(Observed { size: Size { desired: i64::from(desired), ready: i64::from(ready.unwrap_or(0)) }, selector })
    }

    /// Desired replicas (spec) and ready replicas (status).
    pub async fn size(&self) -> Result<Size, ActuatorError> {
        Ok(self.observe().await?.size)
    }

    /// The pods `selector` (the workload's, as [`Workload::observe`] read it) matches, as the
    /// death-spiral watch needs them.
    pub async fn pods(&self, selector: &LabelSelector) -> Result<Vec<PodView>, ActuatorError> {
        let target = self.label();
        let selector = Selector::try_from(selector.clone())
            .map_err(|e| ActuatorError::Api { target: target.clone(), detail: format!("its selector: {e}") })?;
        let pods = Api::<Pod>::namespaced(self.client.clone(), &self.namespace)
            .list(&ListParams::default().labels_from(&selector))
            .await
            .map_err(|e| api_error(&format!("the pods of {target}"), e))?;
        Ok(pods.items.iter().map(pod_view).collect())
    }

    /// Sets `spec.replicas` through the scale subresource (a merge patch of one field).
    pub async fn scale(&self, replicas: i64) -> Result<(), ActuatorError> {
        let target = self.label();
        let replicas = i32::try_from(replicas).map_err(|_| ActuatorError::Api {
            target: target.clone(),
            detail: format!("{replicas} replicas is out of range"),
        })?;
        let patch = Patch::Merge(json!({ "spec": { "replicas": replicas } }));
        let pp = PatchParams::default();
        let res = match self.kind {
            WorkloadKind::Deployment => {
                Api::<Deployment>::namespaced(self.client.clone(), &self.namespace)
                    .patch_scale(&self.name, &pp, &patch)
                    .await
            }
            WorkloadKind::StatefulSet => {
                Api::<StatefulSet>::namespaced(self.client.clone(), &self.namespace)
                    .patch_scale(&self.name, &pp, &patch)
                    .await
            }
        };
        res.map(|_| ()).map_err(|e| api_error(&target, e))
    }
}

/// What the death-spiral watch needs of `pod`.
fn pod_view(pod: &Pod) -> PodView {
    let secs = |t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time| t.0.as_second() as f64;
    let status = pod.status.as_ref();
    let ready = status
        .and_then(|s| s.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready"))
        .and_then(|c| Some((c.status == "True", secs(c.last_transition_time.as_ref()?))));
    PodView {
        deleting: pod.metadata.deletion_timestamp.is_some(),
        ready,
        started_at: status.and_then(|s| s.start_time.as_ref()).map(secs),
    }
}
