//! What the operator needs of every policy kind, so one controller handles them all.

use std::fmt::Debug;

use kube::{Resource, core::NamespaceResourceScope};
use serde::{Serialize, de::DeserializeOwned};

use std::time::Duration;

use super::controller::{Context, Error};
use crate::api::{
    BootstrapPolicy, Mitigation, PolicyStatus, ScalingPolicy, SecretKeyRef, TrafficGuard,
    validate::{FieldError, Validate},
};

/// A levee policy kind: a namespaced custom resource with a validated spec and a status
/// carrying standard conditions.
pub trait Policy:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Debug
    + DeserializeOwned
    + Serialize
    + Send
    + Sync
    + 'static
{
    /// The current status, if any has been written.
    fn policy_status(&self) -> Option<&dyn PolicyStatus>;
    /// Semantic checks of the spec (see [`crate::api::validate`]).
    fn validate_spec(&self) -> Vec<FieldError>;
    /// Secrets the spec refers to.
    fn secret_refs(&self) -> Vec<(String, &SecretKeyRef)>;
    /// Acts on a valid policy; returns how soon to act again. Most kinds are only judged.
    fn act(&self, _ctx: &Context) -> impl Future<Output = Result<Option<Duration>, Error>> + Send {
        async { Ok(None) }
    }
    /// Called once the policy is deleted, with its last state.
    fn deleted(&self, _ctx: &Context) {}
}

/// Implements [`Policy`] for a kind; a block after the kind adds or overrides methods.
macro_rules! impl_policy {
    ($($kind:ty $({ $($extra:item)* })?),*) => {$(
        impl Policy for $kind {
            fn policy_status(&self) -> Option<&dyn PolicyStatus> {
                self.status.as_ref().map(|s| s as &dyn PolicyStatus)
            }
            fn validate_spec(&self) -> Vec<FieldError> {
                self.spec.validate()
            }
            fn secret_refs(&self) -> Vec<(String, &SecretKeyRef)> {
                self.spec.secret_refs()
            }
            $($($extra)*)?
        }
    )*};
}

impl_policy!(Mitigation, BootstrapPolicy {
    /// A valid BootstrapPolicy watches for a cold start, and brings one up, every few seconds.
    async fn act(&self, ctx: &Context) -> Result<Option<Duration>, Error> {
        ctx.bootstrapper.tick(&ctx.client, self).await?;
        Ok(Some(super::bootstrap::TICK))
    }
    fn deleted(&self, ctx: &Context) {
        ctx.bootstrapper.deleted(&ctx.client, self);
    }
}, TrafficGuard {
    /// A valid TrafficGuard looks at its pool's edge reports every second.
    async fn act(&self, ctx: &Context) -> Result<Option<Duration>, Error> {
        ctx.guards.tick(&ctx.client, self).await?;
        Ok(Some(super::guard::TICK))
    }
    fn deleted(&self, ctx: &Context) {
        ctx.guards.deleted(&ctx.client, self);
    }
}, ScalingPolicy {
    /// A valid ScalingPolicy is planned, and acted on, every tick.
    async fn act(&self, ctx: &Context) -> Result<Option<Duration>, Error> {
        ctx.scaler.tick(&ctx.client, self).await?;
        Ok(Some(ctx.scaler.tick_interval()))
    }
    fn deleted(&self, ctx: &Context) {
        ctx.scaler.deleted(&ctx.client, self);
    }
});
