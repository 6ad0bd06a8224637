//! A BootstrapPolicy's admission gate, as a Mitigation the edges of its pool enforce like any
//! other (`match.all`, action `Admit`): while a cold start is in progress it admits no one
//! (no instance can serve; a 503 at once spares clients their timeouts), and once the stages
//! clients need are ready (`opensAfter`, every stage by default) it admits `initialPercent` of
//! clients, rising evenly to all of them over `rampUp`, and is then deleted, so the instances
//! just started are not met by the whole backlog of traffic at once.
//!
//! Each tick renews it for a minute: a gate whose operator stopped lapses and lets everyone
//! in. When its ramp began is an annotation on the Mitigation, so a restarted operator carries
//! the ramp on instead of starting it again.

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
};
use serde_json::json;

use crate::api::{BootstrapPolicy, Mitigation, common::time_at, mitigation::AdmitRamp};

/// When the gate's ramp began (unix seconds), on the gate's Mitigation.
pub const RAMP_ANNOTATION: &str = "levee.dev/admission-ramp-since";
/// The BootstrapPolicy a gate belongs to, on the gate's Mitigation.
pub const POLICY_LABEL: &str = "levee.dev/bootstrap-policy";
/// Field manager of the gate Mitigations.
const FIELD_MANAGER: &str = "levee-bootstrap-gate";
/// How long a gate lasts past its last renewal.
const LAPSES_AFTER_SECS: i64 = 60;

/// The ramp of a gate that began at `since` (unix seconds).
fn ramp(policy: &BootstrapPolicy, since: f64) -> AdmitRamp {
    let gate = &policy.spec.admission_gate;
    AdmitRamp { from_percent: gate.initial_percent, since: time_at(since), over: gate.ramp_up }
}

/// The gate's Mitigation name for `policy`.
pub fn gate_name(policy: &str) -> String {
    format!("{policy}-admission-gate")
}

/// What the gate waits for, as the subject of "... ready".
fn awaited(policy: &BootstrapPolicy) -> String {
    match policy.spec.admission_gate.opens_after.as_slice() {
        [] => "every stage is".to_owned(),
        [one] => format!("stage {one} is"),
        many => format!("stages {} are", many.join(", ")),
    }
}

/// Puts the gate of `policy` where it should be at `now` (unix seconds); `closed`: a cold start
/// is in progress and the stages clients need are not all ready. Returns the reason and note
/// of an Event when the gate changed course: `AdmissionGateClosed`, `AdmissionGateOpening`,
/// `AdmissionGateLifted`.
pub async fn tick(
    client: &Client,
    policy: &BootstrapPolicy,
    closed: bool,
    now: f64,
) -> Result<Option<(&'static str, String)>, kube::Error> {
    let gate = &policy.spec.admission_gate;
    let api: Api<Mitigation> = Api::namespaced(client.clone(), &policy.namespace().unwrap_or_default());
    let name = gate_name(&policy.name_any());
    let existing = api.get_opt(&name).await?;
    let since =
        existing.as_ref().and_then(|m| m.annotations().get(RAMP_ANNOTATION)).and_then(|s| s.parse::<f64>().ok());
    let pool = &gate.edge_pool;
    if !gate.enabled {
        if existing.is_some() {
            api.delete(&name, &Default::default()).await?;
            let note = format!("admission gate disabled: edge pool {pool} admits every client again");
            return Ok(Some(("AdmissionGateLifted", note)));
        }
        return Ok(None);
    }
    if closed {
        apply(&api, policy, &name, 0, None, now).await?;
        let changed = existing.is_none() || since.is_some();
        let note = format!("cold start: edge pool {pool} admits no client (503) until {} ready", awaited(policy));
        return Ok(changed.then_some(("AdmissionGateClosed", note)));
    }
    if existing.is_none() {
        return Ok(None);
    }
    let begun = since.unwrap_or(now);
    match ramp(policy, begun).percent_at(now) {
        Some(percent) => {
            apply(&api, policy, &name, percent, Some(begun), now).await?;
            Ok(since.is_none().then(|| {
                let note = format!(
                    "{} ready: edge pool {pool} admits {percent}% of clients, rising to all of them over {}",
                    awaited(policy),
                    gate.ramp_up
                );
                ("AdmissionGateOpening", note)
            }))
        }
        None => {
            api.delete(&name, &Default::default()).await?;
            Ok(Some(("AdmissionGateLifted", format!("admission gate lifted: edge pool {pool} admits every client"))))
        }
    }
}

/// Removes the gate of a deleted `policy`, apart from the caller (which is not async): no tick
/// will, and edges would otherwise hold clients out until it lapsed.
pub fn deleted(client: &Client, policy: &BootstrapPolicy) {
    let api: Api<Mitigation> = Api::namespaced(client.clone(), &policy.namespace().unwrap_or_default());
    let name = gate_name(&policy.name_any());
    tokio::spawn(async move {
        match api.delete(&name, &Default::default()).await {
            Ok(_) => tracing::info!(mitigation = %name, "admission gate removed with its BootstrapPolicy"),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                tracing::warn!(mitigation = %name, error = %e, "cannot remove the admission gate; it lapses within a minute")
            }
        }
    });
}

/// Writes the gate's Mitigation: `percent` of clients admitted, the ramp begun at `since`.
async fn apply(
    api: &Api<Mitigation>,
    policy: &BootstrapPolicy,
    name: &str,
    percent: i32,
    since: Option<f64>,
    now: f64,
) -> Result<(), kube::Error> {
    let expires = Timestamp::from_second(now as i64 + LAPSES_AFTER_SECS).unwrap_or_else(|_| Timestamp::now());
    let reason = match since {
        None => format!("BootstrapPolicy {}: cold start, closed until {} ready", policy.name_any(), awaited(policy)),
        Some(_) => format!("BootstrapPolicy {}: warming up, {percent}% of clients admitted", policy.name_any()),
    };
    let mut metadata = json!({
        "name": name,
        "labels": { POLICY_LABEL: policy.name_any() },
        "ownerReferences": policy.controller_owner_ref(&()).map(|o| vec![o]),
    });
    if let Some(since) = since {
        metadata["annotations"] = json!({ RAMP_ANNOTATION: format!("{since:.0}") });
    }
    // Edges follow the ramp between renewals, and tell each client left out when its turn
    // comes.
    let admit_ramp = since.map(|since| ramp(policy, since));
    let gate = &policy.spec.admission_gate;
    let patch = json!({
        "apiVersion": Mitigation::api_version(&()),
        "kind": "Mitigation",
        "metadata": metadata,
        "spec": {
            "edgePool": gate.edge_pool,
            "match": { "all": true },
            "action": "Admit",
            "admitPercent": percent,
            "admitRamp": admit_ramp,
            "expiresAt": Time(expires),
            "reason": reason,
            "mode": policy.spec.mode,
        },
    });
    api.patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(patch)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ramp_rises_evenly_to_everyone() {
        let ramp = |initial: i32, secs: u64| AdmitRamp {
            from_percent: initial,
            since: Time(Timestamp::from_second(1000).unwrap()),
            over: crate::api::Duration(std::time::Duration::from_secs(secs)),
        };
        assert_eq!(ramp(10, 300).percent_at(1000.0), Some(10));
        assert_eq!(ramp(10, 300).percent_at(1150.0), Some(55));
        assert_eq!(ramp(10, 300).percent_at(1299.0), Some(99));
        assert_eq!(ramp(10, 300).percent_at(1300.0), None);
        assert_eq!(ramp(10, 0).percent_at(1000.0), None, "no ramp: everyone at once");
        assert_eq!(ramp(10, 300).percent_at(900.0), Some(10), "a clock behind the ramp's start");
        // Each client's turn: bucket 9 is in from the start, bucket 10 as the percent passes
        // 10, bucket 54 as it reaches 55, bucket 99 at the end.
        assert_eq!(ramp(10, 300).admits_at(9), 1000.0);
        for bucket in [10u8, 54, 99] {
            let at = ramp(10, 300).admits_at(bucket);
            assert!(ramp(10, 300).percent_at(at - 0.01).unwrap_or(100) <= i32::from(bucket), "{bucket} before {at}");
            assert!(ramp(10, 300).percent_at(at + 0.01).unwrap_or(100) > i32::from(bucket), "{bucket} after {at}");
        }
    }
}
