//! The global pause switch: while the ConfigMap `levee-pause` in the operator's control
//! namespace says so, levee changes nothing. Every policy is planned and judged as in Shadow
//! mode: ScalingPolicies decide and record without scaling, TrafficGuards create only Shadow
//! Mitigations and renew none, and nothing new is paged. Mitigations already in force stay
//! until their TTL (delete them to lift them at once); edges keep enforcing them.
//!
//! The switch lives in the cluster, so it survives an operator restart, and any replica reads
//! the same. `levee pause --reason ... [--for 2h]` and `levee resume` write and delete it; so
//! can `kubectl`. A pause with `until` ends by itself, so a forgotten one does not leave
//! levee off for good.

use std::sync::{
    Arc,
    atomic::{AtomicU8, Ordering},
};

use futures::StreamExt as _;
use k8s_openapi::{api::core::v1::ConfigMap, jiff::Timestamp};
use kube::{
    Api, Client,
    runtime::{WatchStreamExt as _, reflector, reflector::Store, watcher},
};
use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::api::Mode;

/// The name of the pause ConfigMap.
pub const CONFIGMAP: &str = "levee-pause";

/// A pause in force.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Paused {
    /// Why, as whoever paused wrote it.
    pub reason: String,
    /// When it was paused, if the ConfigMap says.
    pub since: Option<Timestamp>,
    /// When it resumes by itself; never when none.
    pub until: Option<Timestamp>,
}

impl Paused {
    /// What a pause ConfigMap says at `now`. It pauses unless `paused` is `"false"` or its
    /// `until` has passed: a ConfigMap someone wrote to pause levee is read in favour of
    /// pausing, so a value this version cannot read pauses (and says so in the reason) rather
    /// than leaving levee acting against the on-call's wish.
    pub fn read(cm: &ConfigMap, now: Timestamp) -> Option<Self> {
        let data = cm.data.clone().unwrap_or_default();
        let field = |k: &str| data.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
        if field("paused").is_some_and(|v| v.eq_ignore_ascii_case("false")) {
            return None;
        }
        let mut reason = field("reason").unwrap_or("no reason given").to_owned();
        let mut time = |k: &str| match field(k).map(str::parse::<Timestamp>) {
            None => None,
            Some(Ok(t)) => Some(t),
            Some(Err(e)) => {
                reason.push_str(&format!(" ({k} {:?} is not an RFC 3339 time: {e})", field(k).unwrap_or("")));
                None
            }
        };
        let (since, until) = (time("since"), time("until"));
        if until.is_some_and(|u| u <= now) {
            return None;
        }
        Some(Self { reason, since, until })
    }

    /// The ConfigMap that says this pause, in `namespace`.
    pub fn to_configmap(&self, namespace: &str) -> ConfigMap {
        let mut data = std::collections::BTreeMap::from([
            ("paused".to_owned(), "true".to_owned()),
            ("reason".to_owned(), self.reason.clone()),
        ]);
        if let Some(s) = self.since {
            data.insert("since".into(), s.to_string());
        }
        if let Some(u) = self.until {
            data.insert("until".into(), u.to_string());
        }
        ConfigMap {
            metadata: kube::api::ObjectMeta {
                name: Some(CONFIGMAP.into()),
                namespace: Some(namespace.into()),
                ..Default::default()
            },
            data: Some(data),
            ..Default::default()
        }
    }

    /// One line for logs and the status API.
    pub fn sentence(&self) -> String {
        let mut s = format!("levee is paused: {}", self.reason);
        if let Some(u) = self.until {
            s.push_str(&format!("; resumes by itself at {u}"));
        }
        s
    }
}

/// The operator's view of the switch: the ConfigMap as its watch last saw it.
#[derive(Clone)]
pub struct PauseSwitch {
    store: Option<Store<ConfigMap>>,
    /// What the last look found (0 not looked, 1 running, 2 paused), so a change is logged once.
    last: Arc<AtomicU8>,
    gauge: Gauge,
}

impl PauseSwitch {
    /// A switch that is never on, for an operator started without one.
    pub fn off() -> Self {
        Self { store: None, last: Arc::default(), gauge: Gauge::default() }
    }

    /// Watches `namespace`/[`CONFIGMAP`]; the returned future runs the watch. `gauge` is set
    /// to 1 while paused. A watch that fails (no such namespace, no RBAC) is retried with
    /// back-off and, until it succeeds, levee is not paused: the switch can only stop levee,
    /// so a broken one must not.
    pub fn watch(client: Client, namespace: &str, gauge: Gauge) -> (Self, impl Future<Output = ()> + use<>) {
        let api: Api<ConfigMap> = Api::namespaced(client, namespace);
        let (reader, writer) = reflector::store();
        let config = watcher::Config::default().fields(&format!("metadata.name={CONFIGMAP}"));
        let ns = namespace.to_owned();
        let run = async move {
            watcher(api, config)
                .default_backoff()
                .reflect(writer)
                .for_each(|event| {
                    if let Err(e) = event {
                        warn!(namespace = %ns, error = %e, "cannot watch the pause ConfigMap {CONFIGMAP}; retrying");
                    }
                    std::future::ready(())
                })
                .await;
        };
        (Self { store: Some(reader), last: Arc::default(), gauge }, run)
    }

    /// Why a policy in `mode` only records what it would do: `"paused"` while levee is
    /// paused, `"shadow"` in Shadow mode; `None` when it acts.
    pub fn held_back(&self, mode: Mode) -> Option<&'static str> {
        if self.state(Timestamp::now()).is_some() {
            Some("paused")
        } else if mode == Mode::Shadow {
            Some("shadow")
        } else {
            None
        }
    }

    /// The pause in force at `now`, if any.
    pub fn state(&self, now: Timestamp) -> Option<Paused> {
        let paused = self.store.as_ref().and_then(|s| s.state().first().and_then(|cm| Paused::read(cm, now)));
        let code = if paused.is_some() { 2 } else { 1 };
        if self.last.swap(code, Ordering::Relaxed) != code {
            self.gauge.set(i64::from(paused.is_some()));
            match &paused {
                Some(p) => warn!("{}; policies run as in Shadow mode", p.sentence()),
                None => info!("levee is not paused; policies act as their mode says"),
            }
        }
        paused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cm(pairs: &[(&str, &str)]) -> ConfigMap {
        ConfigMap {
            data: Some(pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()),
            ..Default::default()
        }
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn a_pause_configmap_pauses_until_it_says_otherwise() {
        let now = at("2026-11-27T10:00:00Z");
        let p = Paused::read(&cm(&[("paused", "true"), ("reason", "db failover drill")]), now).unwrap();
        assert_eq!((p.reason.as_str(), p.until), ("db failover drill", None));
        assert_eq!(Paused::read(&cm(&[]), now).unwrap().reason, "no reason given", "its presence is the switch");
        assert_eq!(Paused::read(&cm(&[("paused", "False")]), now), None);

        let until = [("reason", "drill"), ("until", "2026-11-27T11:00:00Z")];
        assert!(Paused::read(&cm(&until), now).is_some());
        assert_eq!(Paused::read(&cm(&until), at("2026-11-27T11:00:00Z")), None, "it resumes by itself");
    }

    #[test]
    fn an_unreadable_time_pauses_and_says_why() {
        let p = Paused::read(&cm(&[("reason", "drill"), ("until", "tomorrow")]), at("2026-11-27T10:00:00Z")).unwrap();
        assert_eq!(p.until, None);
        assert!(p.reason.starts_with("drill (until \"tomorrow\" is not an RFC 3339 time: "), "{}", p.reason);
    }

    #[test]
    fn what_levee_pause_writes_reads_back() {
        let p = Paused {
            reason: "migration".into(),
            since: Some(at("2026-11-27T10:00:00Z")),
            until: Some(at("2026-11-27T12:00:00Z")),
        };
        let written = p.to_configmap("levee");
        assert_eq!(written.metadata.name.as_deref(), Some(CONFIGMAP));
        assert_eq!(Paused::read(&written, at("2026-11-27T11:00:00Z")), Some(p.clone()));
        assert_eq!(p.sentence(), "levee is paused: migration; resumes by itself at 2026-11-27T12:00:00Z");
    }

    #[test]
    fn a_switch_that_was_never_set_up_is_off() {
        assert_eq!(PauseSwitch::off().state(Timestamp::now()), None);
    }
}
