//! End to end with the Helm-rendered manifests: the chart's RBAC is enough for `levee run` to
//! judge policies, read Secrets, scale a Deployment, write status and publish Events, and for
//! `levee edge` to follow and enforce its pool's Mitigations.

mod common;

use std::time::Duration;

use common::{
    Operator, TestNs,
    edge::{Edge, Upstream},
    env, eventually,
};
use k8s_openapi::api::{
    apps::v1::Deployment,
    authentication::v1::{TokenRequest, TokenRequestSpec},
    core::v1::ServiceAccount,
    rbac::v1::{ClusterRole, PolicyRule},
};
use kube::{Api, api::PostParams, config::Kubeconfig};

/// The chart rendered for `ns`, one document per object.
fn render(ns: &str) -> Vec<String> {
    let out = std::process::Command::new(env("LEVEE_HELM"))
        .args(["template", ns, concat!(env!("CARGO_MANIFEST_DIR"), "/charts/levee"), "--namespace", ns])
        .args(["--set", &format!("watchNamespace={ns}"), "--set", "edge.enabled=true"])
        .args(["--set", "edge.upstream=http://127.0.0.1:1", "--set", "edge.trustedHops=1"])
        .output()
        .expect("run helm");
    assert!(out.status.success(), "helm template: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .split("\n---")
        .map(str::to_owned)
        .filter(|d| d.lines().any(|l| l.starts_with("kind:")))
        .collect()
}

/// A kubeconfig file for the ServiceAccount `name` of `ns`, with a fresh token.
async fn kubeconfig_of_service_account(ns: &TestNs, name: &str) -> std::path::PathBuf {
    let sa: Api<ServiceAccount> = ns.api();
    let request = TokenRequest {
        spec: Some(TokenRequestSpec { expiration_seconds: Some(3600), ..Default::default() }),
        ..Default::default()
    };
    let token = sa.create_token_request(name, &PostParams::default(), &request).await.unwrap();
    let token = token.status.and_then(|s| s.token).expect("token issued");
    let path = std::env::temp_dir().join(format!("levee-chart-{name}.kubeconfig"));
    kubeconfig_for(&token, &path);
    path
}

/// A kubeconfig for the stack's apiserver that authenticates as `token`.
fn kubeconfig_for(token: &str, path: &std::path::Path) {
    let admin = Kubeconfig::read_from(env("KUBECONFIG")).unwrap();
    let cluster = admin.clusters[0].cluster.as_ref().unwrap();
    let yaml = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: u\n  user:\n    token: {token}\ncontexts:\n- name: x\n  context: {{ cluster: c, user: u }}\ncurrent-context: x\n",
        cluster.server.as_deref().unwrap(),
        cluster.certificate_authority.as_deref().unwrap(),
    );
    std::fs::write(path, yaml).unwrap();
}

#[tokio::test]
async fn the_charts_rbac_is_enough_to_run_the_operator() {
    let ns = TestNs::new("chart").await;
    let docs = render(&ns.name);
    assert!(docs.len() >= 10, "operator and edge: ServiceAccount, roles, bindings, Deployment, Service");
    for doc in &docs {
        ns.apply_yaml(doc, false).await.unwrap_or_else(|e| panic!("{e}\n{doc}"));
    }

    // Run the operator as the chart's ServiceAccount.
    let kubeconfig = kubeconfig_of_service_account(&ns, &ns.name).await;

    common::deployment(&ns, "api", 1).await;
    ns.create_yaml("apiVersion: v1\nkind: Secret\nmetadata: { name: rmq }\nstringData: { auth: 'guest:guest' }\n")
        .await
        .unwrap();
    // The chart sets LEVEE_CONTROL_NAMESPACE to the release namespace.
    let op = Operator::start_as(&ns.name, &kubeconfig, &["--tick", "1s", "--control-namespace", &ns.name]).await;
    ns.create_yaml(
        r#"
apiVersion: levee.dev/v1alpha1
kind: ScalingPolicy
metadata: { name: api }
spec:
  target: { deployment: { name: api } }
  signals:
    - { name: load, role: ArrivalRate, prometheus: { query: 'vector(200)' } }
    - { name: queue, role: Backlog, rabbitmq: { managementUrl: 'http://127.0.0.1:1', queue: q, credentialsSecretRef: { name: rmq, key: auth } } }
  capacity: { unitsPerReplica: 50, targetUtilization: 1.0 }
  bounds: { minReplicas: 1, maxReplicas: 10 }
  onSignalLoss: { action: Fallback, fallbackReplicas: 4 }
"#,
    )
    .await
    .unwrap();
    // The RabbitMQ signal is unreachable on purpose: the fallback (4) applies, which needs
    // the Secret read, the scale patch, the status write and an Event, all as the chart's
    // ServiceAccount.
    let deployments: Api<Deployment> = ns.api();
    eventually(
        Duration::from_secs(20),
        "scaled to the fallback",
        || deployments.get("api"),
        |d| d.as_ref().ok().and_then(|d| d.spec.as_ref()).and_then(|s| s.replicas) == Some(4),
    )
    .await
    .unwrap();
    common::wait_ready_status::<levee::api::ScalingPolicy>(&ns, "api", "True", Duration::from_secs(5)).await;
    // The scaler writes its status after the scale patch, so the condition may trail the
    // replicas by a moment.
    let conds = eventually(
        Duration::from_secs(5),
        "SignalsAvailable=False",
        || common::conditions::<levee::api::ScalingPolicy>(&ns, "api"),
        |c| common::condition(c, "SignalsAvailable").is_some_and(|s| s.status == "False"),
    )
    .await;
    let signals = common::condition(&conds, "SignalsAvailable").expect("waited for above");
    assert!(signals.message.contains("rabbitmq"), "{}", signals.message);
    // The pause switch in the release namespace is readable as the ServiceAccount.
    let pause = levee::operator::pause::Paused { reason: "chart".into(), since: None, until: None };
    let cm = pause.to_configmap(&ns.name);
    ns.api::<k8s_openapi::api::core::v1::ConfigMap>().create(&Default::default(), &cm).await.unwrap();
    let status = || async { reqwest::get(op.url("/status")).await.unwrap().json::<serde_json::Value>().await.unwrap() };
    eventually(Duration::from_secs(10), "paused, as /status says", status, |s| s["paused"]["reason"] == "chart").await;
    ns.api::<k8s_openapi::api::core::v1::ConfigMap>()
        .delete(&cm.metadata.name.unwrap(), &Default::default())
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "resumed", status, |s| s["paused"].is_null()).await;

    // Death-spiral protection reads and patches a Service.
    common::deployment(&ns, "web", 4).await;
    common::set_ready(&ns, "web", 4, 4).await;
    ns.create_yaml("apiVersion: v1\nkind: Service\nmetadata: { name: web }\nspec: { selector: { app: web }, ports: [{ port: 80 }] }\n")
        .await
        .unwrap();
    ns.create_yaml(
        "apiVersion: levee.dev/v1alpha1\nkind: BootstrapPolicy\nmetadata: { name: web }\nspec: { stages: [{ name: web, targets: [{ kind: Deployment, name: web, replicas: 4 }] }], deathSpiralProtection: { services: [web] } }\n",
    )
    .await
    .unwrap();
    common::wait_ready_status::<levee::api::BootstrapPolicy>(&ns, "web", "True", Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    common::set_ready(&ns, "web", 4, 1).await;
    let routing = || common::routing(&ns, "web");
    eventually(Duration::from_secs(10), "the Service routes to all", routing, |r| *r == (true, true)).await;
    // Without leave to list pods (a chart from before it asked, say), the judgement falls back
    // to ready replicas, with which a drain can pass for a spiral: status says so.
    let roles: Api<ClusterRole> = Api::all(common::client().await);
    let mut role = roles.get(&ns.name).await.unwrap();
    let lists_pods = |r: &PolicyRule| r.resources.as_ref().is_some_and(|rs| rs.iter().any(|x| x == "pods"));
    role.rules.as_mut().unwrap().retain(|r| !lists_pods(r));
    roles.replace(&ns.name, &PostParams::default(), &role).await.unwrap();
    let conds = eventually(
        Duration::from_secs(10),
        "NoDeathSpiral says pods cannot be listed",
        || common::conditions::<levee::api::BootstrapPolicy>(&ns, "web"),
        |c| common::condition(c, "NoDeathSpiral").is_some_and(|s| s.message.contains("ready replicas alone")),
    )
    .await;
    let spiral = common::condition(&conds, "NoDeathSpiral").expect("waited for above");
    assert!(spiral.message.contains("Deployment web judged on ready replicas alone"), "{}", spiral.message);
    assert!(spiral.message.contains("forbidden") && spiral.message.contains("(403)"), "{}", spiral.message);
    assert_eq!(spiral.status, "False", "still judged a spiral on ready replicas: {}", spiral.message);
    assert!(op.stop().await);
    std::fs::remove_file(kubeconfig).ok();

    // The edge, as the chart's edge ServiceAccount: it lists and watches its pool's
    // Mitigations and enforces them.
    let up = Upstream::start().await;
    let edge_kubeconfig = kubeconfig_of_service_account(&ns, &format!("{}-edge", ns.name)).await;
    let edge = Edge::start_as(
        &up.url(),
        Some(&edge_kubeconfig),
        &["--namespace", &ns.name, "--pool", "public", "--trusted-hops", "1"],
    )
    .await;
    let expires =
        (chrono::Utc::now() + chrono::Duration::minutes(5)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    ns.create_yaml(&format!(
        "apiVersion: levee.dev/v1alpha1\nkind: Mitigation\nmetadata: {{ name: b }}\nspec: {{ edgePool: public, match: {{ ip: 192.0.2.9 }}, action: Block, expiresAt: '{expires}', reason: test }}\n"
    ))
    .await
    .unwrap();
    let client = reqwest::Client::new();
    eventually(
        Duration::from_secs(5),
        "the edge enforces the Mitigation",
        || async {
            client
                .get(edge.url("/"))
                .header("x-forwarded-for", "192.0.2.9")
                .send()
                .await
                .map(|r| r.status().as_u16())
                .ok()
        },
        |s| *s == Some(403),
    )
    .await;
    std::fs::remove_file(edge_kubeconfig).ok();
    // The ClusterRole and binding are cluster-wide: remove them.
    for kind in ["ClusterRoleBinding", "ClusterRole"] {
        let ar = kube::discovery::ApiResource::from_gvk(&kube::core::GroupVersionKind::gvk(
            "rbac.authorization.k8s.io",
            "v1",
            kind,
        ));
        let api: Api<kube::api::DynamicObject> = Api::all_with(ns.client.clone(), &ar);
        api.delete(&ns.name, &Default::default()).await.ok();
    }
}
