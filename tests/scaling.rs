//! The ScalingPolicy loop against real components: a Deployment on the apiserver (the test
//! plays the kubelet), RabbitMQ, PostgreSQL replica lag driving RDS replicas on moto, an ECS
//! service on moto, and a Prometheus that dies during a peak.

mod common;

use std::{process::Stdio, time::Duration};

use common::{
    Operator, TestNs, aws, create_db_instance, deployment, edge::PageReceiver, env, eventually, free_port, kubelet,
    kubelet_of, policy, prom_signal, replicas, workload,
};
use k8s_openapi::{api::core::v1::Event, apimachinery::pkg::apis::meta::v1::Condition};
use kube::{
    Api,
    api::{DeleteParams, ListParams, Patch, PatchParams},
};
use levee::api::{OpenPage, ScalingPolicy, scaling_policy::DecisionStatus};
use serde_json::json;

const TICK: &[&str] = &["--tick", "1s"];

/// The last decision of policy `api`, once its status desires `replicas`.
async fn decided(ns: &TestNs, replicas: i32, within: Duration) -> DecisionStatus {
    let api: Api<ScalingPolicy> = ns.api();
    let desired = |p: &Result<ScalingPolicy, kube::Error>| {
        p.as_ref().ok().and_then(|p| p.status.as_ref()).and_then(|s| s.desired_replicas)
    };
    let p = eventually(
        within,
        &format!("status desiredReplicas {replicas}"),
        || api.get("api"),
        |p| desired(p) == Some(replicas),
    )
    .await
    .unwrap();
    p.status.and_then(|s| s.last_decision).expect("a decision with the desired replicas")
}

async fn set_query(ns: &TestNs, name: &str, query: &str) {
    let patch = json!({"spec": {"signals": [{"name": "load", "role": "ArrivalRate", "prometheus": {"query": query}}]}});
    ns.api::<ScalingPolicy>().patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
}

/// A Deployment `api` at one replica, its kubelet, an operator with `args`, and a policy for
/// it whose Prometheus signal is `query`, at 50 per replica, in a new namespace.
async fn api_under_policy(
    prefix: &str,
    args: &[&str],
    query: &str,
    bounds: &str,
    extra: &str,
) -> (TestNs, Operator, tokio::task::JoinHandle<()>) {
    let ns = TestNs::new(prefix).await;
    let (op, kubelet) = api_policy_in(&ns, args, query, bounds, extra).await;
    (ns, op, kubelet)
}

/// [`api_under_policy`] in a namespace the caller has prepared.
async fn api_policy_in(
    ns: &TestNs,
    args: &[&str],
    query: &str,
    bounds: &str,
    extra: &str,
) -> (Operator, tokio::task::JoinHandle<()>) {
    deployment(ns, "api", 1).await;
    let kubelet = kubelet(ns, "api");
    let op = Operator::start_with(&ns.name, args).await;
    ns.create_yaml(&policy(
        "api",
        "{ deployment: { name: api } }",
        &prom_signal(query),
        "{ unitsPerReplica: 50, targetUtilization: 1.0 }",
        bounds,
        extra,
    ))
    .await
    .unwrap();
    (op, kubelet)
}

#[tokio::test]
async fn a_policy_scales_a_real_deployment_up_and_down() {
    let bounds = "{ minReplicas: 1, maxReplicas: 20, scaleDownStabilization: 0s }";
    let (ns, op, _kubelet) = api_under_policy("scale-deploy", TICK, "vector(400)", bounds, "").await;
    // 400/s at 50 per replica is 8.
    eventually(Duration::from_secs(15), "8 replicas", || replicas(&ns, "api"), |r| *r == 8).await;
    // The status is written right after the scale.
    let last = decided(&ns, 8, Duration::from_secs(5)).await;
    assert_eq!((last.from, last.to, last.reason.as_str()), (1, 8, "ScaleUp"));
    assert!(last.message.contains("now 400.0/s needs 8"), "{}", last.message);
    let events: Api<Event> = ns.api();
    let evs = events.list(&ListParams::default()).await.unwrap();
    assert!(evs.items.iter().any(|e| e.reason.as_deref() == Some("ScaleUp")), "an Event per scaling action");

    set_query(&ns, "api", "vector(100)").await;
    eventually(Duration::from_secs(15), "2 replicas", || replicas(&ns, "api"), |r| *r == 2).await;
    assert!(op.stop().await);
}

#[tokio::test]
async fn a_policy_scales_a_real_statefulset() {
    use k8s_openapi::api::apps::v1::StatefulSet;
    let ns = TestNs::new("scale-sts").await;
    workload(&ns, "StatefulSet", "readers", 1).await;
    let sets: Api<StatefulSet> = ns.api();
    let size = || async { sets.get("readers").await.unwrap().spec.and_then(|s| s.replicas).unwrap_or(0) };
    let kubelet = kubelet_of(&ns, "StatefulSet", "readers");
    let op = Operator::start_with(&ns.name, TICK).await;
    ns.create_yaml(&policy(
        "readers",
        "{ statefulSet: { name: readers } }",
        &prom_signal("vector(150)"),
        "{ unitsPerReplica: 50, targetUtilization: 1.0 }",
        "{ minReplicas: 1, maxReplicas: 10, scaleDownStabilization: 0s }",
        "",
    ))
    .await
    .unwrap();
    // 150/s at 50 per replica is 3.
    eventually(Duration::from_secs(15), "3 replicas", size, |r| *r == 3).await;
    let policies: Api<ScalingPolicy> = ns.api();
    let status = eventually(
        Duration::from_secs(10),
        "status: 3 desired, 3 current",
        || async { policies.get("readers").await.ok().and_then(|p| p.status) },
        |s| s.as_ref().is_some_and(|s| s.desired_replicas == Some(3) && s.current_replicas == Some(3)),
    )
    .await
    .unwrap();
    let last = status.last_decision.expect("a decision");
    assert_eq!((last.from, last.to), (1, 3), "{last:?}");
    set_query(&ns, "readers", "vector(50)").await;
    eventually(Duration::from_secs(15), "1 replica", size, |r| *r == 1).await;
    kubelet.abort();
    assert!(op.stop().await);
}

#[tokio::test]
async fn shadow_mode_records_without_acting() {
    // 400/s needs 8, above the bound of 5: an Enforce policy would page after 1s.
    let (ns, pager, op, _kubelet) = capped_at_five_paging("scale-shadow", "vector(400)", "1s", "  mode: Shadow").await;
    let last = decided(&ns, 5, Duration::from_secs(15)).await;
    assert!(last.message.starts_with("shadow:"), "{}", last.message);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(replicas(&ns, "api").await, 1, "shadow never scales");
    assert!(pager.pages.lock().unwrap().is_empty(), "shadow never pages");
    assert!(op.stop().await);
}

/// Runs the `levee` binary with the stack's kubeconfig; its stdout, failing on an error.
async fn levee_cli(args: &[&str]) -> String {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_levee"))
        .args(args)
        .env("KUBECONFIG", env("KUBECONFIG"))
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "levee {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn a_paused_levee_records_without_acting_and_acts_once_resumed() {
    let ns = TestNs::new("scale-pause").await;
    // Paused before the operator starts: the switch is read from the cluster, not memory.
    let control = ["--control-namespace", ns.name.as_str()];
    let said = levee_cli(&[&["pause", "--reason", "failover drill", "--for", "1h"][..], &control].concat()).await;
    assert!(said.starts_with("levee is paused: failover drill; resumes by itself at "), "{said}");
    let args = [TICK, &control].concat();
    let bounds = "{ minReplicas: 1, maxReplicas: 20 }";
    let (op, _kubelet) = api_policy_in(&ns, &args, "vector(400)", bounds, "").await;
    let message = decided(&ns, 8, Duration::from_secs(15)).await.message;
    assert!(message.starts_with("paused: "), "{message}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(replicas(&ns, "api").await, 1, "paused, levee scales nothing");
    let status: serde_json::Value = reqwest::get(op.url("/status")).await.unwrap().json().await.unwrap();
    assert_eq!(status["paused"]["reason"], "failover drill", "{status:#}");
    let metrics = reqwest::get(op.url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.lines().any(|l| l == "levee_paused 1"), "{metrics}");

    let said = levee_cli(&[&["resume"][..], &control].concat()).await;
    assert!(said.starts_with("resumed: deleted ConfigMap"), "{said}");
    eventually(Duration::from_secs(15), "8 replicas once resumed", || replicas(&ns, "api"), |r| *r == 8).await;
    let said = levee_cli(&[&["resume"][..], &control].concat()).await;
    assert!(said.starts_with("levee was not paused"), "{said}");
    let metrics = reqwest::get(op.url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.lines().any(|l| l == "levee_paused 0"), "{metrics}");
    assert!(op.stop().await);
}

/// [`api_under_policy`] with `maxReplicas: 5` and a `page` due `after`, to a pager webhook
/// on loopback (through the Secret `pager`).
async fn capped_at_five_paging(
    prefix: &str,
    query: &str,
    after: &str,
    extra: &str,
) -> (TestNs, PageReceiver, Operator, tokio::task::JoinHandle<()>) {
    let ns = TestNs::new(prefix).await;
    let pager = PageReceiver::start().await;
    ns.create_yaml(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: pager}}\nstringData: {{route: '{}'}}\n",
        pager.url()
    ))
    .await
    .unwrap();
    let bounds = "{ minReplicas: 1, maxReplicas: 5 }";
    let extra = format!("{extra}\n  page: {{ after: {after}, routeSecretRef: {{ name: pager, key: route }} }}");
    let (op, kubelet) = api_policy_in(&ns, TICK, query, bounds, &extra).await;
    (ns, pager, op, kubelet)
}

#[tokio::test]
async fn a_policy_that_cannot_keep_up_pages_once_per_spell_and_resolves_it_when_it_ends() {
    // 1,000/s at 50 per replica needs 20; the bound is 5.
    let (ns, pager, op, _kubelet) = capped_at_five_paging("scale-page", "vector(1000)", "3s", "").await;
    let pages = || async { pager.bodies() };
    let first = eventually(Duration::from_secs(20), "a page", pages, |p| !p.is_empty()).await;
    assert_eq!(replicas(&ns, "api").await, 5, "scaled to the bound first");
    let summary = first[0]["summary"].as_str().unwrap();
    assert!(summary.contains("cannot keep up for 3s: demand needs 20 replicas, above maxReplicas 5"), "{summary}");
    assert_eq!(first[0]["severity"], "critical");
    let conds = common::conditions::<ScalingPolicy>(&ns, "api").await;
    let met = common::condition(&conds, "DemandMet").expect("a DemandMet condition");
    assert_eq!((met.status.as_str(), met.reason.as_str()), ("False", "AboveMaxReplicas"));
    assert_eq!(met.message, "demand needs 20 replicas, above maxReplicas 5");
    // The spell goes on, and has paged: no second page for it.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(pages().await.len(), 1, "one page per spell");

    // A query that returns nothing: the signal is lost. The first spell is over, so its page
    // is resolved; the new spell pages.
    set_query(&ns, "api", "vector(1) > 2").await;
    let three = eventually(Duration::from_secs(20), "a resolve and a second page", pages, |p| p.len() >= 3).await;
    assert_eq!(three[1]["event"], "levee.resolve");
    assert_eq!(three[1]["dedup_key"], first[0]["dedup_key"]);
    let summary = three[2]["summary"].as_str().unwrap();
    assert!(summary.contains("signals lost, holding blind"), "{summary}");
    assert_eq!(three[2]["severity"], "warning");
    let conds = common::conditions::<ScalingPolicy>(&ns, "api").await;
    assert_eq!(common::condition(&conds, "DemandMet").unwrap().status, "False", "kept while demand is unseen");

    // The operator restarts mid-spell. Status keeps the open page, so the new operator
    // neither pages again for the same spell nor forgets to resolve it.
    let kept = eventually(Duration::from_secs(10), "the open page in status", || open_page(&ns), Option::is_some).await;
    assert_eq!(kept.map(|o| o.dedup_key).as_deref(), three[2]["dedup_key"].as_str());
    assert!(op.stop().await);
    let op = Operator::start_with(&ns.name, TICK).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(pages().await.len(), 3, "the restarted operator does not page again for the same spell");

    // Demand within bounds again (100/s needs 2): the policy keeps up; the second page is
    // resolved, and nothing more is sent.
    set_query(&ns, "api", "vector(100)").await;
    let four = eventually(Duration::from_secs(20), "the second page resolved", pages, |p| p.len() >= 4).await;
    assert_eq!(four[3]["event"], "levee.resolve");
    assert_eq!(four[3]["dedup_key"], three[2]["dedup_key"]);
    let events: Api<Event> = ns.api();
    let paged = || events_with_reason(&events, "Paged");
    eventually(Duration::from_secs(10), "a Paged Event for each page", paged, |n| *n == 2).await;
    let resolved = || events_with_reason(&events, "PageResolved");
    eventually(Duration::from_secs(10), "a PageResolved Event for each", resolved, |n| *n == 2).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(pages().await.len(), 4, "nothing more once the policy keeps up");
    assert_eq!(open_page(&ns).await, None, "no page left open in status");
    assert!(op.stop().await);
}

#[tokio::test]
async fn deleting_a_policy_with_its_page_open_resolves_the_page() {
    let (ns, pager, op, _kubelet) = capped_at_five_paging("scale-page-delete", "vector(1000)", "2s", "").await;
    let pages = || async { pager.bodies() };
    let first = eventually(Duration::from_secs(20), "a page", pages, |p| !p.is_empty()).await;
    // Deletion is judged from the last status, so wait until it holds the page.
    eventually(Duration::from_secs(10), "the open page in status", || open_page(&ns), Option::is_some).await;

    ns.api::<ScalingPolicy>().delete("api", &DeleteParams::default()).await.unwrap();
    let two = eventually(Duration::from_secs(15), "the page resolved", pages, |p| p.len() >= 2).await;
    assert_eq!(two[1]["event"], "levee.resolve", "{two:?}");
    assert_eq!(two[1]["dedup_key"], first[0]["dedup_key"]);
    let summary = two[1]["summary"].as_str().unwrap();
    assert!(summary.contains("ScalingPolicy") && summary.contains("was deleted with this page open"), "{summary}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(pages().await.len(), 2, "nothing more for a deleted policy");
    assert!(op.stop().await);
}

/// The page policy `api` has open, as its status keeps it.
async fn open_page(ns: &TestNs) -> Option<OpenPage> {
    ns.api::<ScalingPolicy>().get("api").await.unwrap().status.and_then(|s| s.open_page)
}

/// How many Events with `reason` there are (Events alike but for their note are one Event
/// with a series count).
async fn events_with_reason(events: &Api<Event>, reason: &str) -> i32 {
    let list = events.list(&ListParams::default()).await.map(|l| l.items).unwrap_or_default();
    let matching = list.into_iter().filter(|e| e.reason.as_deref() == Some(reason));
    matching.map(|e| e.series.and_then(|s| s.count).or(e.count).unwrap_or(1).max(1)).sum()
}

/// A one-worker Deployment under a policy whose only `signal` is a backlog of 300 messages:
/// drained within 10 s at 5 messages/s per worker, that is 6 workers, which it waits for.
async fn six_workers_for_300_messages(ns: &TestNs, signal: &str) -> (Operator, tokio::task::JoinHandle<()>) {
    deployment(ns, "worker", 1).await;
    let kubelet = kubelet(ns, "worker");
    let op = Operator::start_with(&ns.name, TICK).await;
    ns.create_yaml(&policy(
        "workers",
        "{ deployment: { name: worker } }",
        signal,
        "{ unitsPerReplica: 5, targetUtilization: 1.0, drainWithin: 10s }",
        "{ minReplicas: 1, maxReplicas: 10, scaleDownStabilization: 0s }",
        "",
    ))
    .await
    .unwrap();
    eventually(Duration::from_secs(30), "6 workers", || replicas(ns, "worker"), |r| *r == 6).await;
    (op, kubelet)
}

#[tokio::test]
async fn a_rabbitmq_backlog_scales_workers_up_and_its_drain_down() {
    let ns = TestNs::new("scale-rabbit").await;
    let base = env("LEVEE_RABBITMQ_URL");
    let (user, pass) = (env("LEVEE_RABBITMQ_USER"), env("LEVEE_RABBITMQ_PASSWORD"));
    let queue = ns.name.clone();
    let http = reqwest::Client::new();
    http.put(format!("{base}/api/queues/%2F/{queue}"))
        .basic_auth(&user, Some(&pass))
        .json(&json!({"durable": false}))
        .send()
        .await
        .unwrap();
    for i in 0..300 {
        http.post(format!("{base}/api/exchanges/%2F/amq.default/publish"))
            .basic_auth(&user, Some(&pass))
            .json(&json!({"properties": {}, "routing_key": queue, "payload": format!("task {i}"), "payload_encoding": "string"}))
            .send()
            .await
            .unwrap();
    }
    ns.create_yaml(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{ name: rmq }}\nstringData: {{ auth: '{user}:{pass}' }}\n"
    ))
    .await
    .unwrap();
    let signal = format!(
        "    - {{ name: backlog, role: Backlog, rabbitmq: {{ managementUrl: '{base}', queue: {queue}, credentialsSecretRef: {{ name: rmq, key: auth }} }} }}"
    );
    let (op, _kubelet) = six_workers_for_300_messages(&ns, &signal).await;
    http.delete(format!("{base}/api/queues/%2F/{queue}/contents")).basic_auth(&user, Some(&pass)).send().await.unwrap();
    eventually(Duration::from_secs(30), "back to 1 worker", || replicas(&ns, "worker"), |r| *r == 1).await;
    assert!(op.stop().await);
    http.delete(format!("{base}/api/queues/%2F/{queue}")).basic_auth(&user, Some(&pass)).send().await.unwrap();
}

/// The `SignalsAvailable` condition of policy `name`, once it is False.
async fn signal_lost(ns: &TestNs, name: &str) -> Condition {
    let conds = eventually(
        Duration::from_secs(15),
        "SignalsAvailable=False",
        || common::conditions::<ScalingPolicy>(ns, name),
        |c| common::condition(c, "SignalsAvailable").is_some_and(|c| c.status == "False"),
    )
    .await;
    common::condition(&conds, "SignalsAvailable").cloned().expect("the condition was just seen")
}

#[tokio::test]
async fn an_sqs_backlog_scales_workers_up_a_lost_queue_holds_and_an_empty_one_scales_down() {
    let ns = TestNs::new("scale-sqs").await;
    let sqs = aws_sdk_sqs::Client::new(&aws().await);
    let create = || sqs.create_queue().queue_name(&ns.name).send();
    let url = create().await.unwrap().queue_url().unwrap().to_owned();
    for batch in 0..30 {
        let entries = (0..10).map(|i| {
            aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                .id(format!("m{i}"))
                .message_body(format!("task {}", batch * 10 + i))
                .build()
                .unwrap()
        });
        sqs.send_message_batch().queue_url(&url).set_entries(Some(entries.collect())).send().await.unwrap();
    }
    let signal = format!("    - {{ name: backlog, role: Backlog, sqs: {{ queueUrl: '{url}' }} }}");
    let (op, _kubelet) = six_workers_for_300_messages(&ns, &signal).await;

    // A queue that is gone is no signal, not an empty queue: the size holds.
    sqs.delete_queue().queue_url(&url).send().await.unwrap();
    let message = signal_lost(&ns, "workers").await.message;
    assert!(message.contains("sqs") && message.contains("not found") && message.contains(&ns.name), "{message}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(replicas(&ns, "worker").await, 6, "scaled on a lost signal");

    // Back, and empty: drained, so down to the minimum.
    create().await.unwrap();
    eventually(Duration::from_secs(30), "back to 1 worker", || replicas(&ns, "worker"), |r| *r == 1).await;
    assert!(op.stop().await);
    sqs.delete_queue().queue_url(&url).send().await.unwrap();
}

async fn levee_replicas(rds: &aws_sdk_rds::Client, source: &str) -> Vec<String> {
    let out = rds.describe_db_instances().send().await.unwrap();
    out.db_instances()
        .iter()
        .filter(|i| {
            i.read_replica_source_db_instance_identifier() == Some(source) && i.db_instance_status() != Some("deleting")
        })
        .filter_map(|i| i.db_instance_identifier().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn replica_lag_adds_an_rds_replica_that_is_removed_when_lag_clears() {
    let ns = TestNs::new("scale-rds").await;
    let rds = aws_sdk_rds::Client::new(&aws().await);
    let source = format!("src-{}", std::process::id());
    create_db_instance(&rds, &source).await;
    let replica = env("LEVEE_PG_REPLICA");
    ns.create_yaml(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{ name: dsn }}\nstringData: {{ dsn: '{replica}' }}\n"
    ))
    .await
    .unwrap();
    let op = Operator::start_with(&ns.name, TICK).await;
    ns.create_yaml(&policy(
        "replicas",
        &format!("{{ rdsReadReplicas: {{ sourceInstance: {source}, instanceClass: db.t3.micro, replicaPrefix: {source}-levee }} }}"),
        "    - { name: lag, role: ReplicaLag, postgres: { connectionSecretRef: { name: dsn, key: dsn } } }",
        "{ unitsPerReplica: 1, maxReplicaLag: 2s }",
        "{ minReplicas: 0, maxReplicas: 3, maxStepUp: 1, scaleDownStabilization: 0s }",
        "",
    ))
    .await
    .unwrap();

    // Pause replay on the real replica and write on the primary: lag grows past 2 s.
    let (p, conn) = tokio_postgres::connect(&env("LEVEE_PG_PRIMARY"), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let (r, conn) = tokio_postgres::connect(&replica, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let table = format!("lag_{}", std::process::id());
    p.batch_execute(&format!("CREATE TABLE IF NOT EXISTS {table} (id serial)")).await.unwrap();
    r.batch_execute("SELECT pg_wal_replay_pause()").await.unwrap();
    let writer = {
        let table = table.clone();
        tokio::spawn(async move {
            for _ in 0..120 {
                if p.batch_execute(&format!("INSERT INTO {table} DEFAULT VALUES")).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            p
        })
    };
    let added =
        eventually(Duration::from_secs(30), "a levee replica", || levee_replicas(&rds, &source), |v| !v.is_empty())
            .await;
    assert_eq!(added, vec![format!("{source}-levee-1")]);
    let tags = rds.describe_db_instances().db_instance_identifier(&added[0]).send().await.unwrap();
    let tagged = tags.db_instances()[0].tag_list().iter().any(|t| t.key() == Some(levee::actuators::rds::OWNER_TAG));
    assert!(tagged, "levee's replicas carry its tag");

    r.batch_execute("SELECT pg_wal_replay_resume()").await.unwrap();
    writer.abort();
    eventually(Duration::from_secs(30), "replica removed", || levee_replicas(&rds, &source), Vec::is_empty).await;
    assert!(op.stop().await);
}

#[tokio::test]
async fn an_ecs_service_follows_its_policy() {
    let ns = TestNs::new("scale-ecs").await;
    let ecs = aws_sdk_ecs::Client::new(&aws().await);
    let cluster = ns.name.clone();
    ecs.create_cluster().cluster_name(&cluster).send().await.unwrap();
    let c = aws_sdk_ecs::types::ContainerDefinition::builder().name("web").image("nginx").memory(128).build();
    ecs.register_task_definition().family("web").container_definitions(c).send().await.unwrap();
    ecs.create_service()
        .cluster(&cluster)
        .service_name("web")
        .task_definition("web")
        .desired_count(1)
        .send()
        .await
        .unwrap();
    let op = Operator::start_with(&ns.name, TICK).await;
    ns.create_yaml(&policy(
        "web",
        &format!("{{ ecsService: {{ cluster: {cluster}, service: web }} }}"),
        &prom_signal("vector(300)"),
        "{ unitsPerReplica: 100, targetUtilization: 1.0 }",
        "{ minReplicas: 1, maxReplicas: 10, scaleDownStabilization: 0s }",
        "",
    ))
    .await
    .unwrap();
    let desired = || async {
        let out = ecs.describe_services().cluster(&cluster).services("web").send().await.unwrap();
        out.services()[0].desired_count()
    };
    eventually(Duration::from_secs(15), "desiredCount 3", desired, |d| *d == 3).await;
    set_query(&ns, "web", "vector(700)").await;
    eventually(Duration::from_secs(15), "desiredCount 7", desired, |d| *d == 7).await;
    assert!(op.stop().await);
}

/// A Prometheus of this test's own, so that stopping it disturbs no other test.
fn own_prometheus(port: u16) -> tokio::process::Child {
    let dir = std::env::temp_dir().join(format!("levee-prom-{port}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("prometheus.yml"), "global: { scrape_interval: 15s }\n").unwrap();
    tokio::process::Command::new("prometheus")
        .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("prometheus is installed by hack/install-deps.sh")
}

#[tokio::test]
async fn losing_prometheus_during_a_peak_holds_instead_of_scaling_down() {
    let port = free_port();
    let mut prom = own_prometheus(port);
    let url = format!("http://127.0.0.1:{port}");
    eventually(
        Duration::from_secs(30),
        "private Prometheus ready",
        || reqwest::get(format!("{url}/-/ready")),
        |r| r.as_ref().is_ok_and(|r| r.status().is_success()),
    )
    .await
    .unwrap();
    let bounds = "{ minReplicas: 1, maxReplicas: 20, scaleDownStabilization: 0s }";
    let args = ["--tick", "1s", "--prometheus-url", &url];
    let (ns, op, _kubelet) = api_under_policy("scale-loss", &args, "vector(500)", bounds, "").await;
    eventually(Duration::from_secs(15), "peak: 10 replicas", || replicas(&ns, "api"), |r| *r == 10).await;

    prom.kill().await.unwrap();
    let cond = signal_lost(&ns, "api").await;
    assert_eq!(cond.reason, "SignalLost");
    assert!(cond.message.contains("prometheus") && cond.message.contains("holding"), "{}", cond.message);
    // Several ticks later the size is unchanged: missing data is never zero load.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(replicas(&ns, "api").await, 10);
    assert!(op.stop().await);
}

#[tokio::test]
async fn a_missing_target_is_reported_in_status() {
    let ns = TestNs::new("scale-missing").await;
    let op = Operator::start_with(&ns.name, TICK).await;
    ns.create_yaml(&policy(
        "ghost",
        "{ deployment: { name: nowhere } }",
        &prom_signal("vector(100)"),
        "{ unitsPerReplica: 50 }",
        "{ minReplicas: 1, maxReplicas: 5 }",
        "",
    ))
    .await
    .unwrap();
    let conds = eventually(
        Duration::from_secs(10),
        "TargetReachable=False",
        || common::conditions::<ScalingPolicy>(&ns, "ghost"),
        |c| common::condition(c, "TargetReachable").is_some_and(|c| c.status == "False"),
    )
    .await;
    let c = common::condition(&conds, "TargetReachable").unwrap();
    assert!(c.message.contains("nowhere") && c.message.contains("not found"), "{}", c.message);
    assert_eq!(common::condition(&conds, "Ready").unwrap().status, "True", "the policy itself is valid");
    assert!(op.stop().await);
}

/// Deployment `api` with its kubelet, an operator, and a Daily policy for it at 50/s per
/// replica whose arrival rate is the Prometheus `signal`, in a new namespace.
async fn daily_api(prefix: &str, signal: &str) -> (TestNs, Operator, tokio::task::JoinHandle<()>) {
    let ns = TestNs::new(prefix).await;
    deployment(&ns, "api", 1).await;
    let kubelet = kubelet(&ns, "api");
    let op = Operator::start_with(&ns.name, TICK).await;
    ns.create_yaml(&daily_policy(signal)).await.unwrap();
    (ns, op, kubelet)
}

fn daily_policy(signal: &str) -> String {
    format!(
        r#"
apiVersion: levee.dev/v1alpha1
kind: ScalingPolicy
metadata: {{ name: api }}
spec:
  target: {{ deployment: {{ name: api }} }}
  signals:
    - {{ name: load, role: ArrivalRate, prometheus: {signal} }}
  capacity: {{ unitsPerReplica: 50, targetUtilization: 1.0 }}
  bounds: {{ minReplicas: 1, maxReplicas: 50 }}
  forecast: {{ leadTime: 30m, seasonality: Daily }}
"#
    )
}

/// The forecast in the status of policy `api`, once there is one (within `within`).
async fn forecast_in_status(ns: &TestNs, within: Duration) -> levee::api::scaling_policy::ForecastStatus {
    let api: Api<ScalingPolicy> = ns.api();
    let forecast = |p: &Result<ScalingPolicy, kube::Error>| {
        p.as_ref().ok().and_then(|p| p.status.as_ref()).and_then(|s| s.forecast.clone())
    };
    let p = eventually(within, "a forecast in status", || api.get("api"), |p| forecast(p).is_some()).await;
    forecast(&p).unwrap()
}

#[tokio::test]
async fn a_new_policy_forecasts_its_daily_cycle_from_prometheus_history_at_once() {
    // 100/s at midnight UTC, 500/s at noon, on any day: Prometheus computes the query's past
    // as readily as its present, so a week of history exists without a week of scraping.
    let query = "300 - 200 * cos(vector(2 * pi() * time() / 86400))";
    let (ns, op, _kubelet) = daily_api("scale-warm", &format!("{{ query: '{query}' }}")).await;
    let f = forecast_in_status(&ns, Duration::from_secs(20)).await;
    // From the first tick after its history is read: a cold planner would have no seasonal
    // forecast for a day.
    assert!(f.model != "trend", "a daily model serves at once: {f:?}");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let due = 300.0 - 200.0 * (std::f64::consts::TAU * (now + 1800.0) / 86_400.0).cos();
    assert!((f.value - due).abs() / due < 0.1, "forecast {f:?} for half an hour ahead, when the rate is {due:.1}");
    // A Daily policy reads the week its daily profile averages.
    let notes = common::event_notes(&ns, "ForecastWarmed").await;
    let hours: Vec<f64> =
        notes.iter().filter_map(|n| n.strip_prefix("forecast warmed from ")?.split(' ').next()?.parse().ok()).collect();
    assert!(hours.iter().any(|h| (167.0..=168.0).contains(h)), "{notes:?}");
    assert!(op.stop().await);
}

/// A Prometheus on loopback whose instant queries answer `rate` at once, and whose range
/// queries (a new planner's history) answer `rate` at every step only after `delay`.
async fn prometheus_slow_on_history(rate: f64, delay: Duration) -> String {
    use axum::{Json, Router, extract::Query, routing::get};
    use std::collections::HashMap;
    let instant = move || async move {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        Json(json!({
            "status": "success",
            "data": { "resultType": "vector", "result": [{ "metric": {}, "value": [now, rate.to_string()] }] }
        }))
    };
    let range = move |Query(q): Query<HashMap<String, String>>| async move {
        tokio::time::sleep(delay).await;
        let num = |k: &str| q[k].parse::<f64>().unwrap();
        let (start, end, step) = (num("start"), num("end"), num("step"));
        let values: Vec<serde_json::Value> = (0..)
            .map(|i| start + f64::from(i) * step)
            .take_while(|t| *t <= end)
            .map(|t| json!([t, rate.to_string()]))
            .collect();
        Json(
            json!({ "status": "success", "data": { "resultType": "matrix", "result": [{ "metric": {}, "values": values }] } }),
        )
    };
    let app = Router::new().route("/api/v1/query", get(instant).post(instant)).route("/api/v1/query_range", get(range));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test]
async fn a_slow_prometheus_history_does_not_hold_up_the_first_decisions() {
    // 400/s now (8 replicas at 50/s each), and eight seconds to read each day of history.
    let url = prometheus_slow_on_history(400.0, Duration::from_secs(8)).await;
    let created = std::time::Instant::now();
    let (ns, op, _kubelet) = daily_api("scale-slow-history", &format!("{{ query: 'load', url: '{url}' }}")).await;
    eventually(Duration::from_secs(5), "scaled for the load now", || replicas(&ns, "api"), |r| *r == 8).await;
    let first = created.elapsed();
    assert!(first < Duration::from_secs(8), "the first decision waited for the history: {first:?}");
    // The history is taken when it comes, and the forecast serves from then on.
    let notes = common::notes_within(&ns, "ForecastWarmed", Duration::from_secs(30)).await;
    assert!(["167", "168"].iter().any(|h| notes[0].starts_with(&format!("forecast warmed from {h}"))), "{notes:?}");
    let f = forecast_in_status(&ns, Duration::from_secs(10)).await;
    assert!((f.value - 400.0).abs() < 4.0, "{f:?}");
    assert!(created.elapsed() >= Duration::from_secs(8), "the forecast came from the history");
    assert!(op.stop().await);
}

#[tokio::test]
async fn a_policy_whose_history_cannot_be_read_says_why() {
    // The signal's Prometheus is down: no history, and the planner starts cold.
    let (ns, op, _kubelet) = daily_api("scale-cold", "{ query: 'vector(400)', url: 'http://127.0.0.1:1' }").await;
    let notes = common::notes_within(&ns, "ForecastCold", Duration::from_secs(20)).await;
    assert!(
        notes[0].contains("cannot read the arrival rate's history") && notes[0].contains("127.0.0.1:1"),
        "{notes:?}"
    );
    assert!(op.stop().await);
}

#[tokio::test]
async fn a_restarted_operator_resumes_the_lead_time_its_predecessor_learned() {
    let ns = TestNs::new("scale-resume").await;
    deployment(&ns, "api", 1).await;
    let _kubelet = kubelet(&ns, "api");
    ns.create_yaml(&common::api_wanting_eight().replace("leadTime: 10s,", "leadTime: 10s, learnLeadTime: true,"))
        .await
        .unwrap();
    // The status a predecessor left: the spec it planned for (written by the controller), and
    // the lead time it had learned (written by the scaler).
    let api: Api<ScalingPolicy> = ns.api();
    let generation = api.get("api").await.unwrap().metadata.generation.unwrap();
    for (manager, status) in [
        ("levee", json!({ "observedGeneration": generation })),
        ("levee-scaler", json!({ "learnedLeadTimeSeconds": 42.0 })),
    ] {
        let patch = json!({ "apiVersion": "levee.dev/v1alpha1", "kind": "ScalingPolicy", "status": status });
        api.patch_status("api", &PatchParams::apply(manager).force(), &Patch::Apply(patch)).await.unwrap();
    }
    let op = Operator::start_with(&ns.name, TICK).await;
    decided(&ns, 8, Duration::from_secs(15)).await;
    // A few more ticks, each of which writes the status afresh.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status = api.get("api").await.unwrap().status.unwrap();
    assert_eq!(status.learned_lead_time_seconds, Some(42.0), "{status:?}");
    assert!(op.stop().await);
}
