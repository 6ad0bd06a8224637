//! The on-call status API: one document that says what levee is doing and what needs a
//! human, built from the operator's watch caches, so a request costs no apiserver round trip
//! and keeps answering while the apiserver is slow.
//!
//! Pages levee sent and has not resolved are listed with the dedup key they went under, so
//! the on-call can match them to the pager's incidents.
//!
//! `GET /status` serves it as JSON, `GET /status?format=text` as the table `levee status`
//! prints.

use std::{fmt::Write as _, sync::Arc};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Condition, jiff::Timestamp};
use kube::{ResourceExt, core::DeserializeGuard, runtime::reflector::Store};
use serde::{Deserialize, Serialize};

use super::pause::{PauseSwitch, Paused};
use crate::api::{
    BootstrapPolicy, Duration, Mitigation, Mode, OpenPage, PolicyStatus, ScalingPolicy, TrafficGuard,
    common::condition,
    mitigation::MitigationAction,
    scaling_policy::{DecisionStatus, ForecastStatus},
    traffic_guard::Detection,
};

/// Everything the on-call needs at a glance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// When the snapshot was taken (RFC 3339).
    pub time: Timestamp,
    /// The pause in force, if levee is paused: then it changes nothing.
    pub paused: Option<Paused>,
    /// What needs a human, most pressing kinds first. Empty when all is well.
    pub attention: Vec<Attention>,
    pub scaling_policies: Vec<ScalingRow>,
    pub traffic_guards: Vec<GuardRow>,
    /// Mitigations that have not expired.
    pub mitigations: Vec<MitigationRow>,
    pub bootstrap_policies: Vec<PolicyRow>,
}

/// One thing that needs a human.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Attention {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub why: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScalingRow {
    pub namespace: String,
    pub name: String,
    pub mode: Mode,
    /// `Deployment/api`, `ECS shop/api`, ...
    pub target: String,
    pub current_replicas: Option<i32>,
    pub desired_replicas: Option<i32>,
    pub min_replicas: i32,
    pub max_replicas: i32,
    pub forecast: Option<ForecastStatus>,
    pub learned_lead_time_seconds: Option<f64>,
    pub last_decision: Option<DecisionStatus>,
    /// The page sent about it and not yet resolved.
    pub open_page: Option<OpenPage>,
    /// Conditions that are not as they should be, one sentence each.
    pub problems: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GuardRow {
    pub namespace: String,
    pub name: String,
    pub mode: Mode,
    pub edge_pool: String,
    pub edges_reporting: Option<i32>,
    pub active_mitigations: Option<i32>,
    pub last_detection: Option<Detection>,
    pub open_page: Option<OpenPage>,
    pub problems: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MitigationRow {
    pub namespace: String,
    pub name: String,
    /// The TrafficGuard that created it; none for one applied by hand.
    pub guard: Option<String>,
    pub edge_pool: String,
    pub action: MitigationAction,
    /// `ip 203.0.113.7`, `asn 64500 except 2 prefixes`, ...
    #[serde(rename = "match")]
    pub match_: String,
    pub mode: Mode,
    pub expires_at: Timestamp,
    pub expires_in_seconds: i64,
    pub reason: String,
    /// How many times this source was mitigated before (0 on a first offence).
    pub offence: i32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PolicyRow {
    pub namespace: String,
    pub name: String,
    /// `Idle`, `Bootstrapping` or `Complete`.
    pub phase: Option<String>,
    /// What it is doing, in one line.
    pub message: Option<String>,
    pub problems: Vec<String>,
}

/// The operator's watch caches, one per kind.
#[derive(Clone)]
pub struct Stores {
    pub scaling: Store<DeserializeGuard<ScalingPolicy>>,
    pub guards: Store<DeserializeGuard<TrafficGuard>>,
    pub mitigations: Store<DeserializeGuard<Mitigation>>,
    pub bootstrap: Store<DeserializeGuard<BootstrapPolicy>>,
    pub pause: PauseSwitch,
}

impl Stores {
    /// Whether every watch has listed its kind at least once.
    pub fn loaded(&self) -> bool {
        use futures::FutureExt as _;
        [
            self.scaling.wait_until_ready().now_or_never(),
            self.guards.wait_until_ready().now_or_never(),
            self.mitigations.wait_until_ready().now_or_never(),
            self.bootstrap.wait_until_ready().now_or_never(),
        ]
        .iter()
        .all(|r| matches!(r, Some(Ok(()))))
    }

    pub fn snapshot(&self, now: Timestamp) -> Snapshot {
        Snapshot::build(
            &self.scaling.state(),
            &self.guards.state(),
            &self.mitigations.state(),
            &self.bootstrap.state(),
            self.pause.state(now),
            now,
        )
    }
}

type Cached<K> = Arc<DeserializeGuard<K>>;

impl Snapshot {
    pub fn build(
        scaling: &[Cached<ScalingPolicy>],
        guards: &[Cached<TrafficGuard>],
        mitigations: &[Cached<Mitigation>],
        bootstrap: &[Cached<BootstrapPolicy>],
        paused: Option<Paused>,
        now: Timestamp,
    ) -> Self {
        let mut attention = Vec::new();
        let scaling_policies: Vec<ScalingRow> = well_formed(scaling, &mut attention)
            .into_iter()
            .map(|p| {
                let status = p.status.as_ref();
                ScalingRow {
                    namespace: p.namespace().unwrap_or_default(),
                    name: p.name_any(),
                    mode: p.spec.mode,
                    target: p.spec.target.to_string(),
                    current_replicas: status.and_then(|s| s.current_replicas),
                    desired_replicas: status.and_then(|s| s.desired_replicas),
                    min_replicas: p.spec.bounds.min_replicas,
                    max_replicas: p.spec.bounds.max_replicas,
                    forecast: status.and_then(|s| s.forecast.clone()),
                    learned_lead_time_seconds: status.and_then(|s| s.learned_lead_time_seconds),
                    last_decision: status.and_then(|s| s.last_decision.clone()),
                    open_page: status.and_then(|s| s.open_page.clone()),
                    problems: problems(status.map(|s| s as &dyn PolicyStatus)),
                }
            })
            .collect();
        let traffic_guards: Vec<GuardRow> = well_formed(guards, &mut attention)
            .into_iter()
            .map(|g| {
                let status = g.status.as_ref();
                GuardRow {
                    namespace: g.namespace().unwrap_or_default(),
                    name: g.name_any(),
                    mode: g.spec.mode,
                    edge_pool: g.spec.edge_pool.clone(),
                    edges_reporting: status.and_then(|s| s.edges_reporting),
                    active_mitigations: status.and_then(|s| s.active_mitigations),
                    last_detection: status.and_then(|s| s.last_detection.clone()),
                    open_page: status.and_then(|s| s.open_page.clone()),
                    problems: problems(status.map(|s| s as &dyn PolicyStatus)),
                }
            })
            .collect();
        let mut in_force: Vec<MitigationRow> = well_formed(mitigations, &mut attention)
            .into_iter()
            .filter_map(|m| {
                let expires_at = m.spec.expires_at.0;
                let left = expires_at.as_second() - now.as_second();
                (left > 0).then(|| MitigationRow {
                    namespace: m.namespace().unwrap_or_default(),
                    name: m.name_any(),
                    guard: m.spec.guard.clone(),
                    edge_pool: m.spec.edge_pool.clone(),
                    action: m.spec.action,
                    match_: m.spec.match_.to_string(),
                    mode: m.spec.mode,
                    expires_at,
                    expires_in_seconds: left,
                    reason: m.spec.reason.clone(),
                    offence: m.spec.offence,
                })
            })
            .collect();
        // Soonest to lapse last: the ones that will still be in force are what matters.
        in_force.sort_by(|a, b| b.expires_at.cmp(&a.expires_at).then_with(|| a.name.cmp(&b.name)));
        let bootstrap_policies: Vec<PolicyRow> = well_formed(bootstrap, &mut attention)
            .into_iter()
            .map(|b| PolicyRow {
                namespace: b.namespace().unwrap_or_default(),
                name: b.name_any(),
                phase: b.status.as_ref().and_then(|s| s.phase.clone()),
                message: b.status.as_ref().and_then(|s| s.message.clone()),
                problems: problems(b.status.as_ref().map(|s| s as &dyn PolicyStatus)),
            })
            .collect();

        for p in &scaling_policies {
            flag(&mut attention, "ScalingPolicy", &p.namespace, &p.name, &p.problems);
        }
        for g in &traffic_guards {
            flag(&mut attention, "TrafficGuard", &g.namespace, &g.name, &g.problems);
            let enforcing = in_force
                .iter()
                .filter(|m| m.namespace == g.namespace && m.guard.as_deref() == Some(&g.name))
                .filter(|m| m.mode == Mode::Enforce)
                .count();
            if enforcing > 0 {
                let why = match &g.last_detection {
                    Some(d) => format!("{enforcing} mitigation(s) in force; last detection: {}", d.summary),
                    None => format!("{enforcing} mitigation(s) in force"),
                };
                attention.push(Attention {
                    kind: "TrafficGuard".into(),
                    namespace: g.namespace.clone(),
                    name: g.name.clone(),
                    why,
                });
            }
        }
        for b in &bootstrap_policies {
            flag(&mut attention, "BootstrapPolicy", &b.namespace, &b.name, &b.problems);
            if b.phase.as_deref() == Some("Bootstrapping") {
                let why = b.message.clone().unwrap_or_else(|| "cold start in progress".into());
                let (kind, namespace, name) = ("BootstrapPolicy".into(), b.namespace.clone(), b.name.clone());
                attention.push(Attention { kind, namespace, name, why });
            }
        }
        Snapshot {
            time: now,
            paused,
            attention,
            scaling_policies,
            traffic_guards,
            mitigations: in_force,
            bootstrap_policies,
        }
    }

    /// The snapshot as the table `levee status` prints.
    pub fn render(&self) -> String {
        let mut out = format!("levee status at {}\n\n", self.time.strftime("%Y-%m-%d %H:%M:%S UTC"));
        if let Some(p) = &self.paused {
            let _ = writeln!(
                out,
                "PAUSED. {}.\n  Nothing is scaled, no Mitigation is created or renewed, nothing new is paged; Mitigations in force stay until their TTL. `levee resume` resumes.\n",
                p.sentence()
            );
        }
        if self.attention.is_empty() {
            out.push_str("Nothing needs attention.\n");
        } else {
            let _ = writeln!(out, "Needs attention ({}):", self.attention.len());
            for a in &self.attention {
                let _ = writeln!(out, "  {} {}/{}: {}", a.kind, a.namespace, a.name, a.why);
            }
        }

        let ago = |t: Timestamp| age(self.time.as_second() - t.as_second());
        let open = self
            .scaling_policies
            .iter()
            .filter_map(|p| p.open_page.as_ref().map(|o| ("ScalingPolicy", &p.namespace, &p.name, o)))
            .chain(
                self.traffic_guards
                    .iter()
                    .filter_map(|g| g.open_page.as_ref().map(|o| ("TrafficGuard", &g.namespace, &g.name, o))),
            );
        let mut rows = vec![cells(["PAGED ABOUT", "SINCE", "DEDUP KEY", "SUMMARY"])];
        for (kind, ns, name, o) in open {
            rows.push(vec![format!("{kind} {ns}/{name}"), ago(o.since.0), o.dedup_key.clone(), o.summary.clone()]);
        }
        section(&mut out, "Pages open", rows);

        let mut rows =
            vec![cells(["POLICY", "MODE", "TARGET", "REPLICAS", "BOUNDS", "FORECAST", "LEAD", "LAST DECISION"])];
        for p in &self.scaling_policies {
            rows.push(vec![
                format!("{}/{}", p.namespace, p.name),
                format!("{:?}", p.mode),
                p.target.clone(),
                match (p.current_replicas, p.desired_replicas) {
                    (Some(c), Some(d)) if c != d => format!("{c} -> {d}"),
                    (Some(c), _) => c.to_string(),
                    _ => "-".into(),
                },
                format!("{}-{}", p.min_replicas, p.max_replicas),
                p.forecast.as_ref().map_or("-".into(), |f| {
                    format!("{:.0} ({:.0}-{:.0}) in {}", f.value, f.lower, f.upper, age(f.horizon_seconds as i64))
                }),
                p.learned_lead_time_seconds.map_or("-".into(), |s| age(s.round() as i64)),
                p.last_decision.as_ref().map_or("-".into(), |d| format!("{} ago: {}", ago(d.time.0), d.message)),
            ]);
        }
        section(&mut out, "Scaling policies", rows);

        let mut rows = vec![cells(["GUARD", "MODE", "POOL", "EDGES", "MITIGATIONS", "LAST DETECTION"])];
        for g in &self.traffic_guards {
            rows.push(vec![
                format!("{}/{}", g.namespace, g.name),
                format!("{:?}", g.mode),
                g.edge_pool.clone(),
                g.edges_reporting.map_or("-".into(), |n| n.to_string()),
                g.active_mitigations.map_or("-".into(), |n| n.to_string()),
                g.last_detection.as_ref().map_or("-".into(), |d| format!("{} ago: {}", ago(d.time.0), d.summary)),
            ]);
        }
        section(&mut out, "Traffic guards", rows);

        let mut rows = vec![cells(["MITIGATION", "ACTION", "MATCH", "MODE", "EXPIRES IN", "REASON"])];
        for m in &self.mitigations {
            rows.push(vec![
                format!("{}/{}", m.namespace, m.name),
                format!("{:?}", m.action),
                m.match_.clone(),
                format!("{:?}", m.mode),
                age(m.expires_in_seconds),
                m.reason.clone(),
            ]);
        }
        section(&mut out, "Mitigations in force", rows);

        let mut rows = vec![cells(["POLICY", "PHASE", "NOW"])];
        for b in &self.bootstrap_policies {
            let phase = b.phase.clone().unwrap_or_else(|| "-".into());
            rows.push(vec![
                format!("{}/{}", b.namespace, b.name),
                phase,
                b.message.clone().unwrap_or_else(|| "-".into()),
            ]);
        }
        section(&mut out, "Bootstrap policies", rows);
        out
    }
}

/// The objects of a kind that deserialized, by namespace and name; each malformed one is put
/// in `attention` with its error.
fn well_formed<'a, K: kube::Resource<DynamicType = ()>>(
    objs: &'a [Cached<K>],
    attention: &mut Vec<Attention>,
) -> Vec<&'a K> {
    let mut good = Vec::new();
    for obj in objs {
        match &obj.0 {
            Ok(k) => good.push(k),
            Err(invalid) => attention.push(Attention {
                kind: K::kind(&()).into_owned(),
                namespace: invalid.metadata.namespace.clone().unwrap_or_default(),
                name: invalid.metadata.name.clone().unwrap_or_default(),
                why: format!("malformed, so ignored: {}", invalid.error),
            }),
        }
    }
    good.sort_by_key(|k| (k.meta().namespace.clone(), k.meta().name.clone()));
    good
}

/// Conditions that are not as a healthy policy's are, one sentence each: `Invalid` when true,
/// any other when false. `Ready` is left out when `Invalid` already says why it is false.
fn problems(status: Option<&dyn PolicyStatus>) -> Vec<String> {
    let Some(status) = status else {
        return vec!["not judged yet: the operator has written no status".into()];
    };
    let conds = status.conditions();
    let invalid = conds.iter().any(|c| c.type_ == condition::INVALID && c.status == "True");
    conds
        .iter()
        .filter(|c| match c.type_.as_str() {
            condition::INVALID => c.status == "True",
            condition::READY => c.status != "True" && !invalid,
            _ => c.status == "False",
        })
        .map(sentence)
        .collect()
}

fn sentence(c: &Condition) -> String {
    if c.message.is_empty() {
        format!("{} ({})", c.type_, c.reason)
    } else {
        format!("{} ({}): {}", c.type_, c.reason, c.message)
    }
}

fn flag(attention: &mut Vec<Attention>, kind: &str, namespace: &str, name: &str, problems: &[String]) {
    attention.extend(problems.iter().map(|why| Attention {
        kind: kind.into(),
        namespace: namespace.into(),
        name: name.into(),
        why: why.clone(),
    }));
}

/// `7m12s`; `0s` for anything not in the future's favour.
fn age(secs: i64) -> String {
    Duration::from_secs(secs.max(0) as u64).to_string()
}

fn cells<const N: usize>(header: [&str; N]) -> Vec<String> {
    header.iter().map(|s| (*s).to_owned()).collect()
}

/// A titled table with aligned columns; a title with a count of none when only the header is.
fn section(out: &mut String, title: &str, rows: Vec<Vec<String>>) {
    let _ = write!(out, "\n{title} ({}):\n", rows.len() - 1);
    if rows.len() == 1 {
        return;
    }
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| rows.iter().filter_map(|r| r.get(i)).map(|c| c.chars().count()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let mut line = String::from("  ");
        for (i, cell) in row.iter().enumerate() {
            // The last column is not padded: no trailing blanks.
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ", width = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::{DeserializeGuard, ObjectMeta, error_boundary::InvalidObject};
    use serde::de::DeserializeOwned;

    fn cached<K: DeserializeOwned>(yaml: &str) -> Cached<K> {
        Arc::new(DeserializeGuard(Ok(serde_saphyr::from_str(yaml).unwrap())))
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    const POLICY: &str = "
apiVersion: levee.dev/v1alpha1
kind: ScalingPolicy
metadata: {name: api, namespace: shop}
spec:
  target: {deployment: {name: api}}
  signals: [{name: rps, role: ArrivalRate, prometheus: {query: 'sum(rate(x[1m]))'}}]
  capacity: {unitsPerReplica: 100}
  bounds: {minReplicas: 2, maxReplicas: 5}
status:
  observedGeneration: 1
  currentReplicas: 5
  desiredReplicas: 5
  conditions:
    - {type: Ready, status: 'True', reason: Valid, message: policy is valid, lastTransitionTime: '2026-11-27T10:00:00Z'}
    - {type: Invalid, status: 'False', reason: Valid, message: '', lastTransitionTime: '2026-11-27T10:00:00Z'}
    - {type: DemandMet, status: 'False', reason: AboveMaxReplicas, message: 'demand needs 20 replicas, above maxReplicas 5', lastTransitionTime: '2026-11-27T10:00:00Z'}
  lastDecision: {time: '2026-11-27T10:04:00Z', from: 4, to: 5, reason: ScaleUp, message: scale up 4 -> 5 for 480 req/s}
  openPage: {dedupKey: levee/ScalingPolicy/shop/api/AboveMax/1795860000, reason: AboveMax, since: '2026-11-27T09:58:00Z', summary: 'demand needs 20 replicas, above maxReplicas 5'}
";

    const GUARD: &str = "
apiVersion: levee.dev/v1alpha1
kind: TrafficGuard
metadata: {name: edge, namespace: shop}
spec: {edgePool: public, aggregationKeys: [Ip]}
status:
  observedGeneration: 1
  conditions:
    - {type: Ready, status: 'True', reason: Valid, message: policy is valid, lastTransitionTime: '2026-11-27T10:00:00Z'}
  activeMitigations: 1
  edgesReporting: 2
  lastDetection: {time: '2026-11-27T10:03:00Z', summary: 'ip 203.0.113.7 at 900 req/s, 90x its baseline'}
";

    fn mitigation(name: &str, expires: &str, mode: &str) -> String {
        format!(
            "
apiVersion: levee.dev/v1alpha1
kind: Mitigation
metadata: {{name: {name}, namespace: shop}}
spec:
  edgePool: public
  guard: edge
  match: {{asn: 64500, exceptPrefixes: [198.51.100.0/24, 192.0.2.0/24]}}
  action: RateLimit
  rateLimit: {{requestsPerSecond: 10}}
  expiresAt: '{expires}'
  reason: surge from asn 64500
  mode: {mode}
"
        )
    }

    #[test]
    fn a_policy_falling_short_and_a_guard_mitigating_need_attention() {
        let now = at("2026-11-27T10:05:00Z");
        let snap = Snapshot::build(
            &[cached(POLICY)],
            &[cached(GUARD)],
            &[
                cached(&mitigation("in-force", "2026-11-27T10:10:00Z", "Enforce")),
                cached(&mitigation("lapsed", "2026-11-27T10:04:59Z", "Enforce")),
                cached(&mitigation("shadow", "2026-11-27T10:20:00Z", "Shadow")),
            ],
            &[],
            None,
            now,
        );
        let whys: Vec<(&str, &str)> = snap.attention.iter().map(|a| (a.kind.as_str(), a.why.as_str())).collect();
        assert_eq!(
            whys,
            vec![
                ("ScalingPolicy", "DemandMet (AboveMaxReplicas): demand needs 20 replicas, above maxReplicas 5"),
                (
                    "TrafficGuard",
                    "1 mitigation(s) in force; last detection: ip 203.0.113.7 at 900 req/s, 90x its baseline"
                ),
            ],
            "a Shadow mitigation enforces nothing, a lapsed one is not in force"
        );
        let names: Vec<&str> = snap.mitigations.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, vec!["shadow", "in-force"], "latest to lapse first; the lapsed one left out");
        assert_eq!(snap.mitigations[1].expires_in_seconds, 300);
        assert_eq!(snap.mitigations[1].match_, "asn 64500 except 2 prefixes");
        assert_eq!(snap.scaling_policies[0].target, "Deployment/api");
        assert_eq!(snap.scaling_policies[0].current_replicas, Some(5));

        let text = snap.render();
        assert!(text.contains("Needs attention (2):"), "{text}");
        assert!(text.contains("  shop/api  Enforce  Deployment/api  5 "), "{text}");
        assert!(text.contains("1m ago: scale up 4 -> 5 for 480 req/s"), "{text}");
        assert!(text.contains("  shop/in-force  RateLimit  asn 64500 except 2 prefixes  Enforce  5m "), "{text}");
        assert!(text.contains("Bootstrap policies (0):"), "{text}");
        assert!(
            text.contains("Pages open (1):\n  PAGED ABOUT             SINCE  DEDUP KEY  ")
                && text.contains("  ScalingPolicy shop/api  7m     levee/ScalingPolicy/shop/api/AboveMax/1795860000  demand needs 20 replicas, above maxReplicas 5\n"),
            "{text}"
        );
        assert!(text.lines().all(|l| l == l.trim_end()), "no trailing blanks:\n{text}");
    }

    #[test]
    fn the_document_survives_its_own_wire_format() {
        let snap = Snapshot::build(
            &[cached(POLICY)],
            &[cached(GUARD)],
            &[cached(&mitigation("m", "2026-11-27T10:10:00Z", "Enforce"))],
            &[],
            Some(Paused { reason: "drill".into(), since: None, until: None }),
            at("2026-11-27T10:05:00Z"),
        );
        assert!(
            snap.render().starts_with("levee status at 2026-11-27 10:05:00 UTC\n\nPAUSED. levee is paused: drill.\n")
        );
        let json = serde_json::to_value(&snap).unwrap();
        assert_eq!(json["mitigations"][0]["match"], "asn 64500 except 2 prefixes");
        assert_eq!(json["scalingPolicies"][0]["desiredReplicas"], 5);
        assert_eq!(json["time"], "2026-11-27T10:05:00Z");
        let back: Snapshot = serde_json::from_value(json).unwrap();
        assert_eq!(back, snap, "levee status reads what the operator serves");
    }

    #[test]
    fn invalid_malformed_and_unjudged_policies_say_why() {
        let invalid = POLICY.replace(
            "    - {type: Invalid, status: 'False', reason: Valid, message: '', lastTransitionTime: '2026-11-27T10:00:00Z'}",
            "    - {type: Invalid, status: 'True', reason: InvalidSpec, message: 'spec.signals[0].prometheus.query: does not parse', lastTransitionTime: '2026-11-27T10:00:00Z'}",
        ).replace("status: 'True', reason: Valid, message: policy is valid", "status: 'False', reason: InvalidSpec, message: same");
        let unjudged = "apiVersion: levee.dev/v1alpha1\nkind: BootstrapPolicy\nmetadata: {name: boot, namespace: shop}\nspec: {stages: [{name: api, targets: [{kind: Deployment, name: api, replicas: 2}]}]}\n";
        let malformed: Cached<TrafficGuard> = Arc::new(DeserializeGuard(Err(InvalidObject {
            metadata: ObjectMeta { name: Some("broken".into()), namespace: Some("shop".into()), ..Default::default() },
            error: "spec.edgePool: invalid type: integer `3`, expected a string".into(),
        })));
        let snap = Snapshot::build(
            &[cached(&invalid)],
            &[malformed],
            &[],
            &[cached(unjudged)],
            None,
            at("2026-11-27T10:05:00Z"),
        );
        let whys: Vec<String> = snap.attention.iter().map(|a| format!("{} {}: {}", a.kind, a.name, a.why)).collect();
        assert_eq!(
            whys,
            vec![
                "TrafficGuard broken: malformed, so ignored: spec.edgePool: invalid type: integer `3`, expected a string",
                "ScalingPolicy api: Invalid (InvalidSpec): spec.signals[0].prometheus.query: does not parse",
                "ScalingPolicy api: DemandMet (AboveMaxReplicas): demand needs 20 replicas, above maxReplicas 5",
                "BootstrapPolicy boot: not judged yet: the operator has written no status",
            ],
            "Ready is not repeated when Invalid says why"
        );
    }

    #[test]
    fn an_api_key_match_is_not_shown_whole() {
        let m = crate::api::mitigation::MatchSpec { api_key: Some("sk_live_0123456789".into()), ..Default::default() };
        assert_eq!(m.to_string(), "apiKey sk_l…");
    }
}
