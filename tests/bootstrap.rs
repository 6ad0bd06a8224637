//! BootstrapPolicies against a real kube-apiserver: a cold fleet brought up stage by stage, in
//! waves, with a ScalingPolicy on the same Deployment held off until it is done. The test
//! plays the kubelet, so it decides when pods are ready.

mod common;

use std::time::Duration;

use common::{Operator, TestNs, api_wanting_eight, deployment, eventually, kubelet, replicas, routing, set_ready};
use k8s_openapi::api::events::v1::Event;
use kube::api::ListParams;
use levee::api::{BootstrapPolicy, BootstrapPolicyStatus, Mitigation, ScalingPolicy, mitigation::MitigationAction};

const BOOTSTRAP: &str = r#"
apiVersion: levee.dev/v1alpha1
kind: BootstrapPolicy
metadata: { name: registry }
spec:
  stages:
    - name: database
      targets: [{ kind: Deployment, name: pgbouncer, replicas: 2 }]
      wavePercent: 100
    - name: api
      dependsOn: [database]
      targets: [{ kind: Deployment, name: api, replicas: 6 }]
      wavePercent: 50
      waveInterval: 1s
"#;

async fn status(ns: &TestNs) -> BootstrapPolicyStatus {
    let p: BootstrapPolicy = ns.api().get("registry").await.unwrap();
    p.status.unwrap_or_default()
}

fn bootstrapping(s: &BootstrapPolicyStatus) -> bool {
    s.phase.as_deref() == Some("Bootstrapping")
}

/// A cold fleet (pgbouncer ×2 and api ×6 asked for, none ready), an operator, and the
/// BootstrapPolicy `yaml` for it.
async fn cold_fleet(prefix: &str, yaml: &str) -> (TestNs, Operator) {
    cold_fleet_in(TestNs::new(prefix).await, yaml).await
}

/// [`cold_fleet`] in `ns`.
async fn cold_fleet_in(ns: TestNs, yaml: &str) -> (TestNs, Operator) {
    deployment(&ns, "pgbouncer", 2).await;
    deployment(&ns, "api", 6).await;
    let op = Operator::start_with(&ns.name, &["--tick", "1s", "--control-namespace", &ns.name]).await;
    ns.create_yaml(yaml).await.unwrap();
    (ns, op)
}

#[tokio::test]
async fn a_cold_fleet_comes_up_stage_by_stage_in_waves() {
    // Both asked for, nothing ready: the API would crash-loop against a pool that is down.
    let (ns, op) = cold_fleet("bootstrap", BOOTSTRAP).await;

    eventually(Duration::from_secs(15), "the API held at zero", || replicas(&ns, "api"), |r| *r == 0).await;
    // Status is written right after the scale.
    let s = eventually(Duration::from_secs(5), "Bootstrapping", || status(&ns), bootstrapping).await;
    assert_eq!(s.current_stage.as_deref(), Some("database"));
    assert_eq!(replicas(&ns, "pgbouncer").await, 2, "the first stage in one wave");
    assert_eq!(s.message.as_deref(), Some("cold start: database starting (0/2 ready); api waits for database"));
    // The on-call sees it first thing: once the operator's watch has brought it the status it
    // wrote (the apiserver had it first, and under load the watch event can come later).
    let oncall = || async { reqwest::get(op.url("/status")).await.unwrap().json::<serde_json::Value>().await.unwrap() };
    let cold_start = |doc: &serde_json::Value| {
        doc["attention"].as_array().is_some_and(|a| {
            a.iter().any(|a| {
                a["kind"] == "BootstrapPolicy" && a["why"].as_str().is_some_and(|w| w.starts_with("cold start: "))
            })
        })
    };
    eventually(Duration::from_secs(5), "the cold start among what needs a human", oncall, cold_start).await;

    // A ScalingPolicy on the API that wants 8 replicas: it must not undo the waves.
    ns.create_yaml(&api_wanting_eight()).await.unwrap();
    // The database's pods come up: the API's first wave is half its replicas.
    let _db = kubelet(&ns, "pgbouncer");
    eventually(Duration::from_secs(15), "the API's first wave", || replicas(&ns, "api"), |r| *r == 3).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(replicas(&ns, "api").await, 3, "no second wave before the first is ready");
    let held: ScalingPolicy = ns.api().get("api").await.unwrap();
    let message = held.status.and_then(|s| s.last_decision).map(|d| d.message).unwrap_or_default();
    assert!(message.starts_with("bootstrapping: "), "the ScalingPolicy records, and waits: {message}");

    // The API's pods come up: the second wave, then the bootstrap is complete and the
    // ScalingPolicy takes over (400/s at 50 per replica is 8).
    let _api = kubelet(&ns, "api");
    let complete = || async { status(&ns).await.phase };
    eventually(Duration::from_secs(20), "complete", complete, |p| p.as_deref() == Some("Complete")).await;
    eventually(Duration::from_secs(20), "the ScalingPolicy takes over", || replicas(&ns, "api"), |r| *r == 8).await;

    let events = ns.api::<Event>().list(&ListParams::default()).await.unwrap();
    let reasons: Vec<&str> = events.items.iter().filter_map(|e| e.reason.as_deref()).collect();
    assert!(reasons.contains(&"ColdStart") && reasons.contains(&"BootstrapComplete"), "{reasons:?}");
    // Events alike but for their note are one Event with a series count: the first wave's
    // note, and a count of every wave (api to 0, to 3, to 6).
    let waves = events.items.iter().find(|e| e.reason.as_deref() == Some("Wave")).expect("a Wave Event");
    assert_eq!(waves.note.as_deref(), Some("stage api: Deployment api 6 -> 0"));
    let count = waves.series.as_ref().map_or(1, |s| s.count);
    assert!(count >= 3, "{waves:#?}");
    assert!(op.stop().await);
}

#[tokio::test]
async fn a_shadow_bootstrap_records_the_waves_once_and_scales_nothing() {
    let (ns, op) = cold_fleet("bootstrap-shadow", &format!("{BOOTSTRAP}  mode: Shadow\n")).await;
    eventually(Duration::from_secs(15), "Bootstrapping", || status(&ns), bootstrapping).await;
    // Several ticks (one every 5 s) that would each hold the API at zero.
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(replicas(&ns, "api").await, 6, "shadow scales nothing");
    let events = ns.api::<Event>().list(&ListParams::default()).await.unwrap();
    let waves: Vec<&Event> = events.items.iter().filter(|e| e.reason.as_deref() == Some("Wave")).collect();
    assert_eq!(waves.len(), 1, "{waves:#?}");
    assert_eq!(waves[0].note.as_deref(), Some("shadow (not applied): stage api: Deployment api 6 -> 0"));
    assert_eq!(waves[0].series.as_ref().map_or(1, |s| s.count), 1, "told once, not every tick: {waves:#?}");
    assert!(op.stop().await);
}

#[tokio::test]
async fn a_target_that_cannot_be_read_keeps_the_progress_in_status() {
    let (ns, op) = cold_fleet("bootstrap-gone", BOOTSTRAP).await;
    let started = |s: &BootstrapPolicyStatus| bootstrapping(s) && !s.stages.is_empty();
    eventually(Duration::from_secs(15), "the first stage started", || status(&ns), started).await;
    ns.api::<k8s_openapi::api::apps::v1::Deployment>().delete("api", &Default::default()).await.unwrap();
    let unreachable =
        |s: &BootstrapPolicyStatus| s.conditions.iter().any(|c| c.type_ == "TargetReachable" && c.status == "False");
    let s = eventually(Duration::from_secs(15), "TargetReachable=False", || status(&ns), unreachable).await;
    assert!(bootstrapping(&s), "{s:?}");
    let names: Vec<&str> = s.stages.iter().map(|st| st.name.as_str()).collect();
    assert_eq!(names, vec!["database"], "the progress a restart would resume from is kept");
    assert!(s.message.as_deref().is_some_and(|m| m.contains("not found")), "{s:?}");
    assert!(op.stop().await);
}

#[tokio::test]
async fn a_stage_not_ready_within_its_time_is_reported() {
    // The database's pods never come up: its stage is late after ten seconds.
    let late = BOOTSTRAP.replace("      wavePercent: 100\n", "      wavePercent: 100\n      readyWithin: 10s\n");
    let (ns, _op) = cold_fleet("bootstrap-late", &late).await;
    let s = eventually(
        Duration::from_secs(25),
        "StagesOnSchedule False",
        || status(&ns),
        |s| s.conditions.iter().any(|c| c.type_ == "StagesOnSchedule" && c.status == "False"),
    )
    .await;
    let c = s.conditions.iter().find(|c| c.type_ == "StagesOnSchedule").unwrap();
    assert_eq!(c.reason, "Late");
    assert!(c.message.starts_with("stage database not ready 1"), "{}", c.message);
    // Some ticks later, one Event for it. (The operator tells it once, judged by the
    // condition it wrote, so that a restarted operator does not tell it again; the Event
    // recorder also folds repeats of one note into one Event.)
    tokio::time::sleep(Duration::from_secs(3)).await;
    let notes = common::event_notes(&ns, "StageLate").await;
    assert_eq!(notes.len(), 1, "{notes:#?}");
    assert!(notes[0].contains("stage database not ready") && notes[0].contains("past its readyWithin"), "{notes:#?}");
}

/// The Service `api`, an operator, and a BootstrapPolicy of one stage (Deployment `api` ×4)
/// whose death-spiral protection routes that Service, with `extra` spec lines.
async fn protected_api(ns: &TestNs, extra: &str) -> Operator {
    ns.create_yaml(
        "apiVersion: v1\nkind: Service\nmetadata: { name: api }\nspec: { selector: { app: api }, ports: [{ port: 80 }] }\n",
    )
    .await
    .unwrap();
    let op = Operator::start_with(&ns.name, &["--tick", "1s", "--control-namespace", &ns.name]).await;
    let policy = format!(
        r#"
apiVersion: levee.dev/v1alpha1
kind: BootstrapPolicy
metadata: {{ name: registry }}
spec:
  stages: [{{ name: api, targets: [{{ kind: Deployment, name: api, replicas: 4 }}] }}]
  deathSpiralProtection: {{ maxUnhealthyFraction: 0.5, services: [api] }}
{extra}"#
    );
    ns.create_yaml(&policy).await.unwrap();
    op
}

#[tokio::test]
async fn instances_failing_together_keep_their_service_routing_to_all_of_them() {
    let ns = TestNs::new("spiral").await;
    let pager = common::edge::PageReceiver::start().await;
    let secret =
        format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: pager}}\nstringData: {{route: '{}'}}\n", pager.url());
    ns.create_yaml(&secret).await.unwrap();
    deployment(&ns, "api", 4).await;
    set_ready(&ns, "api", 4, 4).await;
    let op = protected_api(&ns, "  page: { routeSecretRef: { name: pager, key: route } }\n").await;
    let no_spiral = |want: &'static str| {
        move |s: &BootstrapPolicyStatus| s.conditions.iter().any(|c| c.type_ == "NoDeathSpiral" && c.status == want)
    };
    eventually(Duration::from_secs(15), "NoDeathSpiral True", || status(&ns), no_spiral("True")).await;

    // Three of the four fail their checks together (a slow database, say).
    set_ready(&ns, "api", 4, 1).await;
    eventually(Duration::from_secs(10), "the Service routes to all", || routing(&ns, "api"), |r| *r == (true, true))
        .await;
    let s = eventually(Duration::from_secs(5), "NoDeathSpiral False", || status(&ns), no_spiral("False")).await;
    let c = s.conditions.iter().find(|c| c.type_ == "NoDeathSpiral").unwrap();
    assert_eq!(c.reason, "SharedFailure");
    let notes = common::event_notes(&ns, "DeathSpiralSuspected").await;
    assert!(
        notes.len() == 1 && notes[0].starts_with("Deployment api: ready fell from 4 to 1 within a minute"),
        "{notes:#?}"
    );

    // The on-call is paged, and sees it in the status API.
    let pages = || async { pager.bodies() };
    let first = eventually(Duration::from_secs(10), "a page", pages, |p| !p.is_empty()).await;
    let summary = first[0]["summary"].as_str().unwrap();
    assert!(
        summary.contains("/registry: a death spiral is suspected; Services api route to every instance"),
        "{summary}"
    );
    let open = || async { status(&ns).await.open_page };
    eventually(Duration::from_secs(10), "the open page in status", open, Option::is_some).await;
    let oncall: serde_json::Value = reqwest::get(op.url("/status")).await.unwrap().json().await.unwrap();
    let attention = oncall["attention"].as_array().unwrap();
    assert!(
        attention.iter().any(|a| a["kind"] == "BootstrapPolicy"
            && a["why"].as_str().unwrap().starts_with("NoDeathSpiral (SharedFailure): a death spiral is suspected")),
        "{oncall:#}"
    );

    // A new operator finds the Service marked: the spiral is still in force, not forgotten.
    assert!(op.stop().await);
    let op = Operator::start_with(&ns.name, &["--tick", "1s", "--control-namespace", &ns.name]).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(routing(&ns, "api").await, (true, true), "kept through a restart");

    // Back to three of four: the Service routes to ready instances only again.
    set_ready(&ns, "api", 4, 3).await;
    eventually(Duration::from_secs(10), "the Service restored", || routing(&ns, "api"), |r| *r == (false, false)).await;
    eventually(Duration::from_secs(5), "NoDeathSpiral True", || status(&ns), no_spiral("True")).await;
    let notes = common::event_notes(&ns, "DeathSpiralCleared").await;
    assert!(notes.len() == 1 && notes[0].starts_with("Deployment api: 3 of 4 ready again"), "{notes:#?}");
    // One page for the spiral, through the restart, and its resolve.
    let two = eventually(Duration::from_secs(10), "the page resolved", pages, |p| p.len() >= 2).await;
    assert_eq!((two.len(), two[1]["event"].as_str()), (2, Some("levee.resolve")), "{two:#?}");
    assert_eq!(two[1]["dedup_key"], first[0]["dedup_key"]);
    assert!(op.stop().await);
}

/// Plays the kubelet for pod `name` of Deployment `api`: running since `started` seconds ago,
/// its readiness `ready` since `since` seconds ago. Creates the pod if it is not there.
async fn api_pod(ns: &TestNs, name: &str, started: i64, ready: bool, since: i64) {
    use k8s_openapi::api::core::v1::Pod;
    let pods: kube::Api<Pod> = ns.api();
    if pods.get_opt(name).await.unwrap().is_none() {
        let pod = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{ name: {name}, labels: {{ app: api }} }}\nspec: {{ containers: [{{ name: app, image: registry.example/app:1 }}] }}\n"
        );
        ns.create_yaml(&pod).await.unwrap();
    }
    let at = |ago: i64| {
        let t = std::time::SystemTime::now() - Duration::from_secs(ago as u64);
        k8s_openapi::jiff::Timestamp::try_from(t).unwrap().to_string()
    };
    let status = serde_json::json!({ "status": {
        "phase": "Running",
        "startTime": at(started),
        "conditions": [{ "type": "Ready", "status": if ready { "True" } else { "False" }, "lastTransitionTime": at(since) }],
    }});
    let pp = kube::api::PatchParams::default();
    pods.patch_status(name, &pp, &kube::api::Patch::Merge(&status)).await.unwrap();
}

#[tokio::test]
async fn pods_drained_away_are_no_spiral_and_pods_failing_together_are() {
    let ns = TestNs::new("spiral-pods").await;
    deployment(&ns, "api", 4).await;
    set_ready(&ns, "api", 4, 4).await;
    for i in 0..4 {
        api_pod(&ns, &format!("api-{i}"), 3600, true, 3500).await;
    }
    let _op = protected_api(&ns, "").await;
    let no_spiral = |want: &'static str| {
        move |s: &BootstrapPolicyStatus| s.conditions.iter().any(|c| c.type_ == "NoDeathSpiral" && c.status == want)
    };
    eventually(Duration::from_secs(15), "NoDeathSpiral True", || status(&ns), no_spiral("True")).await;

    // A node is drained: three pods are gone, their replacements are starting, one is ready.
    // Judged on readyReplicas alone, that was a spiral.
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> = ns.api();
    for i in 1..4 {
        pods.delete(&format!("api-{i}"), &Default::default()).await.unwrap();
        api_pod(&ns, &format!("api-new-{i}"), 2, false, 1).await;
    }
    set_ready(&ns, "api", 4, 1).await;
    // The tick that saw one instance ready judged the spiral too, in the same status write.
    let seen = |n: &'static str| move |s: &BootstrapPolicyStatus| s.message.as_deref() == Some(n);
    let s = eventually(
        Duration::from_secs(15),
        "a tick after the drain",
        || status(&ns),
        seen("1 instance(s) ready: no cold start"),
    )
    .await;
    assert!(no_spiral("True")(&s), "{:?}", s.conditions);
    assert_eq!(routing(&ns, "api").await, (false, false));
    assert!(common::event_notes(&ns, "DeathSpiralSuspected").await.is_empty());

    // The replacements come up; then three of the four fail their checks together.
    for i in 1..4 {
        api_pod(&ns, &format!("api-new-{i}"), 60, true, 50).await;
    }
    set_ready(&ns, "api", 4, 4).await;
    eventually(
        Duration::from_secs(15),
        "a tick with all four up",
        || status(&ns),
        seen("4 instance(s) ready: no cold start"),
    )
    .await;
    for i in 1..4 {
        api_pod(&ns, &format!("api-new-{i}"), 60, false, 0).await;
    }
    set_ready(&ns, "api", 4, 1).await;
    eventually(Duration::from_secs(15), "the Service routes to all", || routing(&ns, "api"), |r| *r == (true, true))
        .await;
    let notes = common::event_notes(&ns, "DeathSpiralSuspected").await;
    assert!(
        notes.len() == 1 && notes[0].starts_with("Deployment api: ready fell from 4 to 1 within a minute"),
        "{notes:#?}"
    );
}

/// A cold fleet under [`BOOTSTRAP`] with a `page` to a webhook on loopback, and the first
/// page it sent, once status holds it.
async fn cold_fleet_paging(prefix: &str) -> (TestNs, Operator, common::edge::PageReceiver, serde_json::Value) {
    let pager = common::edge::PageReceiver::start().await;
    let ns = TestNs::new(prefix).await;
    let secret =
        format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: pager}}\nstringData: {{route: '{}'}}\n", pager.url());
    ns.create_yaml(&secret).await.unwrap();
    let yaml = format!("{BOOTSTRAP}  page: {{ routeSecretRef: {{ name: pager, key: route }} }}\n");
    let (ns, op) = cold_fleet_in(ns, &yaml).await;
    let pages = || async { pager.bodies() };
    let first = eventually(Duration::from_secs(20), "a page", pages, |p| !p.is_empty()).await;
    // Deletion and restarts are judged from the last status, so wait until it holds the page.
    let open = || async { status(&ns).await.open_page };
    let kept = eventually(Duration::from_secs(10), "the open page in status", open, Option::is_some).await.unwrap();
    assert_eq!((kept.dedup_key.as_str(), kept.reason.as_str()), (first[0]["dedup_key"].as_str().unwrap(), "ColdStart"));
    (ns, op, pager, first[0].clone())
}

#[tokio::test]
async fn a_cold_start_pages_the_on_call_and_its_end_resolves_the_page() {
    let (ns, op, pager, first) = cold_fleet_paging("bootstrap-page").await;
    assert_eq!((first["event"].as_str(), first["severity"].as_str()), (Some("levee.page"), Some("critical")));
    let summary = first["summary"].as_str().unwrap();
    let expected = format!("levee: BootstrapPolicy {}/registry: no instance is ready: cold start: database", ns.name);
    assert!(summary.starts_with(&expected), "{summary}");

    // The fleet comes up: the page is resolved, once.
    let _db = kubelet(&ns, "pgbouncer");
    let _api = kubelet(&ns, "api");
    let pages = || async { pager.bodies() };
    let two = eventually(Duration::from_secs(40), "the page resolved", pages, |p| p.len() >= 2).await;
    assert_eq!((two[1]["event"].as_str(), &two[1]["dedup_key"]), (Some("levee.resolve"), &first["dedup_key"]));
    assert!(two[1]["summary"].as_str().unwrap().contains("/registry: over: "), "{}", two[1]["summary"]);
    let open = || async { status(&ns).await.open_page };
    eventually(Duration::from_secs(10), "no page open in status", open, Option::is_none).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(pages().await.len(), 2, "nothing more once the fleet is up");
    assert_eq!(status(&ns).await.phase.as_deref(), Some("Complete"));
    assert!(op.stop().await);
}

#[tokio::test]
async fn deleting_a_bootstrap_policy_with_its_page_open_resolves_the_page() {
    let (ns, op, pager, first) = cold_fleet_paging("bootstrap-page-delete").await;
    let gate = || async { ns.api::<Mitigation>().get_opt("registry-admission-gate").await.unwrap() };
    eventually(Duration::from_secs(10), "the admission gate closed", gate, Option::is_some).await;
    ns.api::<BootstrapPolicy>().delete("registry", &Default::default()).await.unwrap();
    // Its gate goes with it, rather than holding clients out until it lapses.
    eventually(Duration::from_secs(10), "the admission gate removed", gate, Option::is_none).await;
    let pages = || async { pager.bodies() };
    let two = eventually(Duration::from_secs(15), "the page resolved", pages, |p| p.len() >= 2).await;
    assert_eq!((two[1]["event"].as_str(), &two[1]["dedup_key"]), (Some("levee.resolve"), &first["dedup_key"]));
    let summary = two[1]["summary"].as_str().unwrap();
    assert!(summary.contains("BootstrapPolicy") && summary.contains("was deleted with this page open"), "{summary}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(pages().await.len(), 2, "nothing more for a deleted policy");
    assert!(op.stop().await);
}

#[tokio::test]
async fn a_service_levee_changed_is_restored_when_its_policy_lets_it_go() {
    let ns = TestNs::new("spiral-release").await;
    deployment(&ns, "api", 4).await;
    set_ready(&ns, "api", 4, 4).await;
    for name in ["api", "web"] {
        let svc = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{ name: {name} }}\nspec: {{ selector: {{ app: api }}, ports: [{{ port: 80 }}] }}\n"
        );
        ns.create_yaml(&svc).await.unwrap();
    }
    let _op = Operator::start_with(&ns.name, &["--tick", "1s", "--control-namespace", &ns.name]).await;
    let policy = |services: &str| {
        format!(
            "apiVersion: levee.dev/v1alpha1\nkind: BootstrapPolicy\nmetadata: {{ name: registry }}\nspec: {{ stages: [{{ name: api, targets: [{{ kind: Deployment, name: api, replicas: 4 }}] }}], deathSpiralProtection: {{ services: [{services}] }} }}\n"
        )
    };
    ns.apply_yaml(&policy("api, web"), false).await.unwrap();
    let judged = |s: &BootstrapPolicyStatus| s.conditions.iter().any(|c| c.type_ == "NoDeathSpiral");
    eventually(Duration::from_secs(15), "judged", || status(&ns), judged).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    set_ready(&ns, "api", 4, 1).await;
    let both = || async { (routing(&ns, "api").await, routing(&ns, "web").await) };
    let all = ((true, true), (true, true));
    eventually(Duration::from_secs(10), "both Services route to all", both, |r| *r == all).await;

    // Dropped from the list mid-spiral: that Service is given back; the other is kept.
    ns.apply_yaml(&policy("api"), false).await.unwrap();
    let web_back = ((true, true), (false, false));
    eventually(Duration::from_secs(10), "web restored, api kept", both, |r| *r == web_back).await;

    // The policy deleted mid-spiral: nothing would ever restore the Service, so it is now.
    ns.api::<BootstrapPolicy>().delete("registry", &Default::default()).await.unwrap();
    let restored = ((false, false), (false, false));
    eventually(Duration::from_secs(10), "api restored", both, |r| *r == restored).await;
}

#[tokio::test]
async fn a_cold_start_closes_the_edge_and_opens_it_gradually_once_the_fleet_is_up() {
    let gated = BOOTSTRAP.replace(
        "      waveInterval: 1s\n",
        "      waveInterval: 1s\n  admissionGate: { initialPercent: 30, rampUp: 40s, edgePool: public }\n",
    );
    let (ns, _op) = cold_fleet("bootstrap-gate", &gated).await;
    let up = common::edge::Upstream::start().await;
    let edge =
        common::edge::Edge::start(&up.url(), &["--namespace", &ns.name, "--pool", "public", "--trusted-hops", "1"])
            .await;
    let client = reqwest::Client::new();
    // The answers to 100 clients, each from its own address.
    let answers = || {
        let (client, url) = (client.clone(), edge.url("/"));
        async move {
            let mut codes = Vec::new();
            for i in 0..100 {
                let ip = format!("198.51.{}.{}", i / 50, i % 50 + 1);
                let r = client.get(&url).header("x-forwarded-for", ip).send().await.unwrap();
                let retry = r.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
                codes.push((r.status().as_u16(), retry));
            }
            codes
        }
    };
    // No instance is ready: every client is told at once to come back shortly.
    let closed =
        eventually(Duration::from_secs(15), "the edge closed", answers, |c| c.iter().all(|a| a.0 == 503)).await;
    // Nobody knows when the fleet will be up: a short, fixed wait.
    assert!(closed.iter().all(|a| a.1 == Some(5)), "503 with Retry-After 5: {closed:?}");
    let gate: Mitigation = ns.api().get("registry-admission-gate").await.unwrap();
    assert_eq!((gate.spec.action, gate.spec.admit_percent), (MitigationAction::Admit, Some(0)));

    // The fleet comes up: some clients are let in, then all of them, and the gate is gone.
    let _db = kubelet(&ns, "pgbouncer");
    let _api = kubelet(&ns, "api");
    let ramp = || async {
        let gate = ns.api::<Mitigation>().get_opt("registry-admission-gate").await.unwrap();
        gate.and_then(|g| g.spec.admit_ramp)
    };
    eventually(Duration::from_secs(30), "the gate ramping up", ramp, Option::is_some).await;
    let ramping = answers().await;
    let ok = ramping.iter().filter(|a| a.0 == 200).count();
    assert!((1..90).contains(&ok) && ramping.iter().all(|a| a.0 == 200 || a.0 == 503), "{ramping:?}");
    // Each client left out is told when its turn comes on the 40 s ramp: not all the same
    // moment, so they do not all come back at once.
    let waits: std::collections::BTreeSet<u64> =
        ramping.iter().filter(|a| a.0 == 503).map(|a| a.1.expect("503 with Retry-After")).collect();
    assert!(waits.iter().all(|w| (1..=40).contains(w)), "{waits:?}");
    assert!(waits.len() >= 3, "turns spread over the ramp: {waits:?}");
    eventually(Duration::from_secs(60), "every client let in", answers, |c| c.iter().all(|a| a.0 == 200)).await;
    let gone = || async { ns.api::<Mitigation>().get_opt("registry-admission-gate").await.unwrap() };
    eventually(Duration::from_secs(10), "the gate deleted", gone, Option::is_none).await;
    let notes = |reason| common::event_notes(&ns, reason);
    let closed = notes("AdmissionGateClosed").await;
    assert!(closed.len() == 1 && closed[0].contains("edge pool public admits no client (503)"), "{closed:#?}");
    let opening = notes("AdmissionGateOpening").await;
    assert!(
        opening.len() == 1 && opening[0].contains("admits 30% of clients, rising to all of them over 40s"),
        "{opening:#?}"
    );
    let lifted = notes("AdmissionGateLifted").await;
    assert!(lifted.len() == 1 && lifted[0].starts_with("admission gate lifted"), "{lifted:#?}");
}

#[tokio::test]
async fn the_gate_opens_once_the_stages_clients_need_are_up_though_a_later_one_is_not() {
    // A third stage of batch workers after the API, whose pods never become ready; the gate
    // waits only for the API (and the database it depends on).
    let gated = BOOTSTRAP.replace(
        "      waveInterval: 1s\n",
        "      waveInterval: 1s\n    - name: batch\n      dependsOn: [api]\n      targets: [{ kind: Deployment, name: batch, replicas: 2 }]\n  admissionGate: { opensAfter: [api], rampUp: 10m }\n",
    );
    let ns = TestNs::new("bootstrap-opens-after").await;
    deployment(&ns, "batch", 2).await;
    let (ns, _op) = cold_fleet_in(ns, &gated).await;
    let gate = || async { ns.api::<Mitigation>().get_opt("registry-admission-gate").await.unwrap() };
    let closed = eventually(Duration::from_secs(15), "the gate closed", gate, Option::is_some).await.unwrap();
    assert_eq!((closed.spec.admit_percent, closed.spec.admit_ramp.is_some()), (Some(0), false));

    let _db = kubelet(&ns, "pgbouncer");
    let _api = kubelet(&ns, "api");
    let opening = eventually(Duration::from_secs(30), "the gate ramping up", gate, |g| {
        g.as_ref().is_some_and(|g| g.spec.admit_ramp.is_some())
    })
    .await
    .unwrap();
    assert_eq!(opening.spec.admit_percent, Some(10), "{:?}", opening.spec);
    // The batch stage is being started and is not ready: the cold start goes on meanwhile.
    // (The tick that opens the gate writes the Mitigation before its status: wait for both.)
    let s = eventually(
        Duration::from_secs(10),
        "status: batch starting",
        || status(&ns),
        |s| s.message.as_deref().is_some_and(|m| m.contains("batch starting (0/2 ready)")),
    )
    .await;
    assert!(bootstrapping(&s), "{s:?}");
    assert_eq!(replicas(&ns, "batch").await, 1, "its first wave");
    let notes = |reason| common::event_notes(&ns, reason);
    let closed = notes("AdmissionGateClosed").await;
    assert!(closed.len() == 1 && closed[0].ends_with("until stage api is ready"), "{closed:#?}");
    let opened = notes("AdmissionGateOpening").await;
    assert!(
        opened.len() == 1 && opened[0].starts_with("stage api is ready: edge pool public admits 10%"),
        "{opened:#?}"
    );
}
