//! A BootstrapPolicy's death-spiral protection: each tick, the stage targets' ready replicas
//! (with their pods, where they can be listed) are judged by [`crate::engine::spiral`]; while
//! a spiral is suspected, the policy's
//! Services route to every instance (`publishNotReadyAddresses`), and are restored when it
//! is over. A Service levee changed carries [`ANNOTATION`], so a restarted operator knows the
//! protection is in force and restores only what it changed.

use std::{collections::HashMap, sync::Mutex};

use k8s_openapi::{api::core::v1::Service, jiff::Timestamp};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
    runtime::events::EventType,
};
use serde_json::json;
use tracing::{debug, warn};

use super::conditions::Wanted;
use crate::{
    actuators::{
        Size,
        kubernetes::{Observed, Workload},
    },
    api::BootstrapPolicy,
    engine::spiral::{Judgement, SpiralWatch, judged_ready},
};

/// Marks a Service whose `publishNotReadyAddresses` levee turned on; its value is when.
pub const ANNOTATION: &str = "levee.dev/death-spiral-since";
/// Condition: no death spiral is suspected.
pub const NO_DEATH_SPIRAL: &str = "NoDeathSpiral";

/// What one tick found: Events to publish (type, reason, note) and the condition.
pub struct Findings {
    pub events: Vec<(EventType, &'static str, String)>,
    pub condition: Wanted,
}

/// What is remembered of each policy.
struct Memory {
    /// One watch per stage target, in spec order.
    watches: Vec<SpiralWatch>,
    /// The Services the spec named at the last tick: one dropped from the list since is
    /// restored if levee changed it.
    services: Vec<String>,
}

/// The watches of every policy.
#[derive(Default)]
pub struct Spirals(Mutex<HashMap<String, Memory>>);

impl Spirals {
    /// Judges the stage targets (`targets`, with their sizes) of `policy` at `now` and acts on its
    /// Services unless `held` (paused or shadow) says only to record. `cold`: a cold start
    /// is in progress, when instances are not ready because they are being started.
    pub async fn tick(
        &self,
        client: &Client,
        policy: &BootstrapPolicy,
        targets: &[(&Workload, &Observed)],
        cold: bool,
        held: Option<&str>,
        now: f64,
    ) -> Findings {
        let protection = &policy.spec.death_spiral_protection;
        let ns = policy.namespace().unwrap_or_default();
        let key = &format!("{ns}/{}", policy.name_any());
        let services: Api<Service> = Api::namespaced(client.clone(), &ns);
        let memory = self.lock().remove(key);
        // Services levee may have changed that the spec no longer has it protect: every one
        // once the protection is disabled, those dropped from the list otherwise.
        let named: &[String] = if protection.enabled { &[] } else { &protection.services };
        let mut dropped: Vec<String> = memory
            .iter()
            .flat_map(|m| &m.services)
            .chain(named)
            .filter(|s| !protection.enabled || !protection.services.contains(s))
            .cloned()
            .collect();
        dropped.sort();
        dropped.dedup();
        let mut failures = if held.is_none() { restore(&services, key, &dropped).await } else { Vec::new() };
        if !protection.enabled {
            return Findings { events: Vec::new(), condition: condition(true, "Disabled", &failures.join("; ")) };
        }
        let mut watches = memory.map(|m| m.watches).filter(|w| w.len() == targets.len());
        if watches.is_none() {
            // First look since start (or since the targets changed): a Service still marked
            // means a spiral was suspected when the last operator stopped.
            let in_force = marked(&services, &protection.services).await;
            let fresh =
                |size: Size| if in_force { SpiralWatch::suspected(size.desired) } else { SpiralWatch::default() };
            watches = Some(targets.iter().map(|(_, o)| fresh(o.size)).collect());
        }
        let mut watches = watches.unwrap_or_default();
        let (mut suspected, mut cleared, mut blind) = (Vec::new(), Vec::new(), Vec::new());
        // Not judged during a cold start: its instances are not ready because they are starting.
        for ((w, Observed { size, selector }), watch) in targets.iter().zip(&mut watches).filter(|_| !cold) {
            let name = format!("{:?} {}", w.kind, w.name);
            // Pods matter only to a target short of ready ones. Pods that cannot be listed (no
            // RBAC for them, say): judged on status alone, and status says so, since a drain
            // may then pass for a spiral.
            let pods = match selector {
                Some(selector) if size.ready < size.desired => match w.pods(selector).await {
                    Ok(pods) => Some(pods),
                    Err(e) => {
                        debug!(policy = %key, error = %e, "judged without pods");
                        blind.push(format!("{name} judged on ready replicas alone: {e}"));
                        None
                    }
                },
                _ => None,
            };
            let ready = judged_ready(size.desired, size.ready, pods.as_deref());
            match watch.observe(now, size.desired, ready, protection.max_unhealthy_fraction) {
                Judgement::Suspected { before, ready } => {
                    suspected.push(format!("{name}: ready fell from {before} to {ready} within a minute"));
                }
                Judgement::Cleared { before, ready } => {
                    cleared.push(format!("{name}: {ready} of {before} ready again"))
                }
                Judgement::Steady => {}
            }
        }
        let in_spiral = watches.iter().any(SpiralWatch::is_suspected);
        self.lock().insert(key.clone(), Memory { watches, services: protection.services.clone() });

        let names = protection.services.join(", ");
        let mut events = Vec::new();
        if held.is_none() {
            for name in &protection.services {
                if let Err(e) = route_to_all(&services, name, in_spiral).await {
                    warn!(policy = %key, service = %name, error = %e, "death-spiral protection");
                    failures.push(format!("Service {name}: {e}"));
                }
            }
        }
        let act = |on: bool| match (names.is_empty(), held, on) {
            (true, _, _) => "no services are named to route to every instance".to_owned(),
            (false, Some(held), true) => {
                format!("{held} (not applied): Services {names} would route to every instance")
            }
            (false, Some(held), false) => format!("{held} (not applied): Services {names} would route as before"),
            (false, None, true) => format!("Services {names} route to every instance (publishNotReadyAddresses)"),
            (false, None, false) => format!("Services {names} route to ready instances only again"),
        };
        if !suspected.is_empty() {
            let note = format!(
                "{}: more than maxUnhealthyFraction {} failing at once, taken as a shared cause; {}",
                suspected.join("; "),
                protection.max_unhealthy_fraction,
                act(true)
            );
            warn!(policy = %key, "{note}");
            events.push((EventType::Warning, "DeathSpiralSuspected", note));
        }
        if !cleared.is_empty() && !in_spiral {
            events.push((EventType::Normal, "DeathSpiralCleared", format!("{}; {}", cleared.join("; "), act(false))));
        }
        let message = match (in_spiral, failures.is_empty()) {
            (true, true) => format!("a death spiral is suspected; {}", act(true)),
            (true, false) => format!("a death spiral is suspected; {}", failures.join("; ")),
            (false, true) => String::new(),
            (false, false) => failures.join("; "),
        };
        let message = [message, blind.join("; ")].into_iter().filter(|m| !m.is_empty()).collect::<Vec<_>>().join("; ");
        let reason = if in_spiral { "SharedFailure" } else { "Healthy" };
        Findings { events, condition: condition(!in_spiral, reason, &message) }
    }

    /// Forgets a deleted policy, and restores the Services it had levee change: no tick will.
    /// Apart from the caller, which is not async.
    pub fn deleted(&self, client: &Client, policy: &BootstrapPolicy) {
        let key = super::key_of(policy);
        let mut names = policy.spec.death_spiral_protection.services.clone();
        if let Some(m) = self.lock().remove(&key) {
            names.extend(m.services);
            names.sort();
            names.dedup();
        }
        let services: Api<Service> = Api::namespaced(client.clone(), &policy.namespace().unwrap_or_default());
        tokio::spawn(async move {
            restore(&services, &key, &names).await;
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Memory>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn condition(status: bool, reason: &str, message: &str) -> Wanted {
    Wanted { type_: NO_DEATH_SPIRAL, status, reason: reason.into(), message: message.into() }
}

/// Restores those of `names` levee changed; returns what could not be, for status (and says
/// it in the log).
async fn restore(services: &Api<Service>, key: &str, names: &[String]) -> Vec<String> {
    let mut failures = Vec::new();
    for name in names {
        match route_to_all(services, name, false).await {
            Ok(()) => {}
            // A Service deleted meanwhile has nothing to restore.
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                warn!(policy = %key, service = %name, error = %e, "cannot restore the Service's routing");
                failures.push(format!("Service {name}: {e}"));
            }
        }
    }
    failures
}

/// Whether any of the named Services carries [`ANNOTATION`]. One that cannot be read counts
/// as unmarked: its routing is then put right by the first tick that acts on it.
async fn marked(services: &Api<Service>, names: &[String]) -> bool {
    for name in names {
        if let Ok(Some(s)) = services.get_opt(name).await
            && s.annotations().contains_key(ANNOTATION)
        {
            return true;
        }
    }
    false
}

/// Has Service `name` route to every instance (`on`), or restores it if levee changed it. A
/// Service that already routes to every instance of its own accord is left alone, and so
/// never restored.
async fn route_to_all(services: &Api<Service>, name: &str, on: bool) -> Result<(), kube::Error> {
    let svc = services.get(name).await?;
    let ours = svc.annotations().contains_key(ANNOTATION);
    let publishes = svc.spec.as_ref().and_then(|s| s.publish_not_ready_addresses).unwrap_or(false);
    let patch = match (on, ours, publishes) {
        (true, false, false) => json!({
            "metadata": { "annotations": { ANNOTATION: Timestamp::now().to_string() } },
            "spec": { "publishNotReadyAddresses": true },
        }),
        (false, true, _) => json!({
            "metadata": { "annotations": { ANNOTATION: null } },
            "spec": { "publishNotReadyAddresses": false },
        }),
        _ => return Ok(()),
    };
    services.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}
