//! `levee run` against a real kube-apiserver: conditions, edits, restarts, malformed objects,
//! and its HTTP endpoints.

mod common;

use std::time::{Duration, Instant};

use common::{Operator, TestNs, condition, conditions, policy, prom_signal, wait_ready_status};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use levee::api::{BootstrapPolicy, ScalingPolicy, TrafficGuard};

fn scaling(name: &str, query: &str) -> String {
    policy(
        name,
        "{ deployment: { name: api } }",
        &prom_signal(query),
        "{ unitsPerReplica: 50 }",
        "{ minReplicas: 2, maxReplicas: 20 }",
        "",
    )
}

const GOOD_QUERY: &str = r#"sum(rate(http_requests_total{job="api"}[1m]))"#;
const BAD_QUERY: &str = "sum(rate(http_requests_total[1m]";

async fn set_query(ns: &TestNs, name: &str, query: &str) {
    let api: Api<ScalingPolicy> = ns.api();
    let patch = serde_json::json!({"spec": {"signals": [{"name": "load", "role": "ArrivalRate", "prometheus": {"query": query}}]}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.expect("edit policy");
}

#[tokio::test]
async fn valid_policy_is_ready_within_five_seconds() {
    let ns = TestNs::new("ready").await;
    let op = Operator::start(&ns.name).await;
    let created = Instant::now();
    ns.create_yaml(&scaling("api", GOOD_QUERY)).await.unwrap();
    let conds = wait_ready_status::<ScalingPolicy>(&ns, "api", "True", Duration::from_secs(5)).await;
    let took = created.elapsed();
    let invalid = condition(&conds, "Invalid").expect("Invalid condition written too");
    assert_eq!(invalid.status, "False");
    let policy: ScalingPolicy = ns.api().get("api").await.unwrap();
    assert_eq!(policy.status.unwrap().observed_generation, policy.metadata.generation);
    eprintln!("valid policy Ready after {took:?}");
    assert!(op.stop().await, "clean exit on SIGTERM");
}

#[tokio::test]
async fn editing_a_policy_invalid_and_back_flips_its_conditions() {
    let ns = TestNs::new("flip").await;
    let op = Operator::start(&ns.name).await;
    ns.create_yaml(&scaling("api", GOOD_QUERY)).await.unwrap();
    let ready = wait_ready_status::<ScalingPolicy>(&ns, "api", "True", Duration::from_secs(5)).await;
    let first_transition = condition(&ready, "Ready").unwrap().last_transition_time.clone();

    set_query(&ns, "api", BAD_QUERY).await;
    let invalid = wait_ready_status::<ScalingPolicy>(&ns, "api", "False", Duration::from_secs(5)).await;
    let inv = condition(&invalid, "Invalid").unwrap();
    assert_eq!(inv.status, "True");
    assert_eq!(inv.reason, "InvalidSpec");
    assert!(inv.message.contains("spec.signals[0].prometheus.query"), "{}", inv.message);
    assert_eq!(inv.observed_generation, Some(2));

    set_query(&ns, "api", GOOD_QUERY).await;
    let back = wait_ready_status::<ScalingPolicy>(&ns, "api", "True", Duration::from_secs(5)).await;
    assert_eq!(condition(&back, "Invalid").unwrap().status, "False");
    assert_eq!(condition(&back, "Ready").unwrap().observed_generation, Some(3));
    assert!(condition(&back, "Ready").unwrap().last_transition_time >= first_transition);
    assert!(op.stop().await);
}

#[tokio::test]
async fn operator_checks_what_the_schema_cannot() {
    let ns = TestNs::new("semantic").await;
    let op = Operator::start(&ns.name).await;
    // A TrafficGuard whose pager Secret does not exist yet, and whose allowlist holds a CIDR
    // the schema cannot check.
    ns.create_yaml(
        r#"
apiVersion: levee.dev/v1alpha1
kind: TrafficGuard
metadata: { name: edge }
spec:
  edgePool: public
  aggregationKeys: [Ip]
  page: { routeSecretRef: { name: pager, key: routingKey } }
"#,
    )
    .await
    .unwrap();
    let conds = wait_ready_status::<TrafficGuard>(&ns, "edge", "False", Duration::from_secs(5)).await;
    let inv = condition(&conds, "Invalid").unwrap();
    assert_eq!(inv.reason, "SecretNotFound");
    assert!(inv.message.contains("spec.page.routeSecretRef") && inv.message.contains("\"pager\""), "{}", inv.message);

    // Creating the Secret makes the guard Ready without any edit to it.
    let secret: Secret =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "pager"}, "stringData": {"routingKey": "k"}}))
            .unwrap();
    ns.api::<Secret>().create(&PostParams::default(), &secret).await.unwrap();
    wait_ready_status::<TrafficGuard>(&ns, "edge", "True", Duration::from_secs(20)).await;

    ns.create_yaml(
        r#"
apiVersion: levee.dev/v1alpha1
kind: TrafficGuard
metadata: { name: allow }
spec:
  edgePool: public
  aggregationKeys: [Ip]
  allowlist: ["10.0.0.0/33"]
"#,
    )
    .await
    .unwrap();
    let conds = wait_ready_status::<TrafficGuard>(&ns, "allow", "False", Duration::from_secs(5)).await;
    assert!(condition(&conds, "Invalid").unwrap().message.contains("spec.allowlist[0]"));

    // A dependency cycle between bootstrap stages.
    ns.create_yaml(
        r#"
apiVersion: levee.dev/v1alpha1
kind: BootstrapPolicy
metadata: { name: cycle }
spec:
  stages:
    - { name: a, dependsOn: [b], targets: [{ kind: Deployment, name: db, replicas: 1 }] }
    - { name: b, dependsOn: [a], targets: [{ kind: Deployment, name: web, replicas: 1 }] }
"#,
    )
    .await
    .unwrap();
    let conds = wait_ready_status::<BootstrapPolicy>(&ns, "cycle", "False", Duration::from_secs(5)).await;
    let msg = &condition(&conds, "Invalid").unwrap().message;
    assert!(msg.contains("spec.stages: dependency cycle: a -> b -> a"), "{msg}");
    assert!(op.stop().await);
}

#[tokio::test]
async fn one_malformed_object_does_not_stop_the_watch() {
    let ns = TestNs::new("guarded").await;
    let op = Operator::start(&ns.name).await;
    // maxReplicaLag has no CEL bound: the schema accepts this, the operator cannot parse it.
    let malformed = scaling("broken", GOOD_QUERY)
        .replace("unitsPerReplica: 50", "unitsPerReplica: 50, maxReplicaLag: 99999999999h");
    ns.create_yaml(&malformed).await.expect("schema accepts it");
    ns.create_yaml(&scaling("fine", GOOD_QUERY)).await.unwrap();
    wait_ready_status::<ScalingPolicy>(&ns, "fine", "True", Duration::from_secs(5)).await;
    let conds = wait_ready_status::<ScalingPolicy>(&ns, "broken", "False", Duration::from_secs(5)).await;
    let inv = condition(&conds, "Invalid").unwrap();
    assert_eq!(inv.reason, "Malformed");
    assert!(inv.message.contains("99999999999h"), "{}", inv.message);
    // The watch still delivers changes to other objects afterwards.
    set_query(&ns, "fine", BAD_QUERY).await;
    wait_ready_status::<ScalingPolicy>(&ns, "fine", "False", Duration::from_secs(5)).await;
    assert!(op.stop().await);
}

#[tokio::test]
async fn a_restarted_operator_picks_up_where_it_was() {
    let ns = TestNs::new("restart").await;
    let op = Operator::start(&ns.name).await;
    ns.create_yaml(&scaling("steady", GOOD_QUERY)).await.unwrap();
    ns.create_yaml(&scaling("edited", GOOD_QUERY)).await.unwrap();
    let steady_before = wait_ready_status::<ScalingPolicy>(&ns, "steady", "True", Duration::from_secs(5)).await;
    wait_ready_status::<ScalingPolicy>(&ns, "edited", "True", Duration::from_secs(5)).await;
    assert!(op.stop().await, "clean exit on SIGTERM");

    // While the operator is down: one policy is broken, one is added.
    set_query(&ns, "edited", BAD_QUERY).await;
    ns.create_yaml(&scaling("added", GOOD_QUERY)).await.unwrap();
    assert!(conditions::<ScalingPolicy>(&ns, "added").await.is_empty(), "nobody judged it yet");

    let op = Operator::start(&ns.name).await;
    wait_ready_status::<ScalingPolicy>(&ns, "edited", "False", Duration::from_secs(5)).await;
    wait_ready_status::<ScalingPolicy>(&ns, "added", "True", Duration::from_secs(5)).await;
    // The unchanged policy's judgement is neither rewritten nor given a new transition time.
    let judged = |c: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>| {
        c.into_iter().filter(|c| c.type_ == "Ready" || c.type_ == "Invalid").collect::<Vec<_>>()
    };
    let steady_after = conditions::<ScalingPolicy>(&ns, "steady").await;
    assert_eq!(judged(steady_before), judged(steady_after));

    // The metrics saw the work of this run.
    let metrics = reqwest::get(op.url("/metrics")).await.unwrap().text().await.unwrap();
    let runs: f64 = metrics
        .lines()
        .find(|l| l.starts_with("levee_reconcile_runs_total{kind=\"ScalingPolicy\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .expect("runs counter present");
    assert!(runs >= 3.0, "{metrics}");
    assert!(metrics.contains("levee_reconcile_duration_seconds_bucket"));
    assert_eq!(reqwest::get(op.url("/healthz")).await.unwrap().status(), 200);
    assert!(op.stop().await);
}

#[tokio::test]
async fn the_status_api_says_what_needs_a_human() {
    let ns = TestNs::new("oncall").await;
    let op = Operator::start(&ns.name).await;
    ns.create_yaml(&scaling("broken", BAD_QUERY)).await.unwrap();
    let expires = k8s_openapi::jiff::Timestamp::now() + std::time::Duration::from_secs(600);
    ns.create_yaml(&format!(
        "apiVersion: levee.dev/v1alpha1\nkind: Mitigation\nmetadata: {{name: by-hand}}\nspec:\n  edgePool: public\n  match: {{prefix: 203.0.113.0/24}}\n  action: Block\n  expiresAt: '{expires}'\n  reason: blocked by the on-call\n"
    ))
    .await
    .unwrap();
    wait_ready_status::<ScalingPolicy>(&ns, "broken", "False", Duration::from_secs(5)).await;

    let doc = common::eventually(
        Duration::from_secs(10),
        "the status document lists the broken policy and the Mitigation",
        || async { reqwest::get(op.url("/status")).await.unwrap().json::<serde_json::Value>().await.unwrap() },
        |d| d["mitigations"].as_array().is_some_and(|m| m.len() == 1),
    )
    .await;
    let attention = doc["attention"].as_array().unwrap();
    assert_eq!(attention.len(), 1, "{doc:#}");
    assert_eq!(attention[0]["name"], "broken");
    assert!(attention[0]["why"].as_str().unwrap().starts_with("Invalid (InvalidSpec): "), "{doc:#}");
    let m = &doc["mitigations"][0];
    assert_eq!((m["match"].as_str(), m["action"].as_str()), (Some("prefix 203.0.113.0/24"), Some("Block")));
    let left = m["expiresInSeconds"].as_i64().unwrap();
    assert!((590..=600).contains(&left), "{m:#}");

    // `levee status` prints the same as a table.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_levee"))
        .args(["status", "--operator", &op.url("")])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("{text}");
    assert!(
        text.contains(&format!("Needs attention (1):\n  ScalingPolicy {}/broken: Invalid (InvalidSpec): ", ns.name)),
        "{text}"
    );
    assert!(text.contains(&format!("  {}/by-hand  Block   prefix 203.0.113.0/24  Enforce", ns.name)), "{text}");
    assert!(op.stop().await);
}
