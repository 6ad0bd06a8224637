//! Helpers for integration tests against the local stack (`hack/test.sh` starts it).
#![allow(dead_code)] // each test binary uses a different subset

use std::{
    net::TcpListener,
    process::Stdio,
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::{apps::v1::Deployment, core::v1::Namespace},
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    apimachinery::pkg::apis::meta::v1::Condition,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DynamicObject, Patch, PatchParams, PostParams},
    core::GroupVersionKind,
    discovery::{ApiCapabilities, ApiResource, Scope},
    runtime::wait::{await_condition, conditions::is_crd_established},
};
use serde_json::json;
use tokio::process::{Child, Command};

/// The variable `hack/stack-up.sh` writes; its absence means the stack is not up.
pub fn require_stack() {
    assert!(
        std::env::var("LEVEE_TEST_STACK").is_ok(),
        "integration tests need the local stack: run `hack/test.sh` (or `hack/stack-up.sh` and source target/stack/env)"
    );
}

pub fn env(name: &str) -> String {
    require_stack();
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set; is target/stack/env sourced?"))
}

pub async fn client() -> Client {
    require_stack();
    Client::try_default().await.expect("KUBECONFIG from the test stack")
}

/// Installs (or updates) every levee CRD and waits until each is Established.
pub async fn install_crds(client: &Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in levee::api::crds() {
        let name = crd.metadata.name.clone().unwrap();
        api.patch(&name, &PatchParams::apply("levee-tests").force(), &Patch::Apply(&crd)).await.expect("apply CRD");
        tokio::time::timeout(Duration::from_secs(30), await_condition(api.clone(), &name, is_crd_established()))
            .await
            .unwrap_or_else(|_| panic!("CRD {name} not established within 30s"))
            .unwrap();
    }
}

/// A fresh namespace for one test.
pub struct TestNs {
    pub name: String,
    pub client: Client,
}

impl TestNs {
    pub async fn new(prefix: &str) -> Self {
        let client = client().await;
        install_crds(&client).await;
        let name = format!("{prefix}-{}", unique_suffix());
        let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
        Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.expect("create namespace");
        Self { name, client }
    }

    pub fn api<K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>>(&self) -> Api<K> {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// Creates the object described by `yaml` (any kind) in this namespace.
    pub async fn create_yaml(&self, yaml: &str) -> Result<DynamicObject, kube::Error> {
        let obj: DynamicObject = serde_saphyr::from_str(yaml).expect("test YAML parses");
        let api = self.dynamic_api(&obj).await;
        api.create(&PostParams::default(), &obj).await
    }

    /// Server-side applies `yaml` (any kind) in this namespace, optionally as a dry run.
    pub async fn apply_yaml(&self, yaml: &str, dry_run: bool) -> Result<DynamicObject, kube::Error> {
        let obj: DynamicObject = serde_saphyr::from_str(yaml).expect("test YAML parses");
        let api = self.dynamic_api(&obj).await;
        let mut pp = PatchParams::apply("levee-tests").force();
        pp.dry_run = dry_run;
        api.patch(&obj.name_any(), &pp, &Patch::Apply(&obj)).await
    }

    async fn dynamic_api(&self, obj: &DynamicObject) -> Api<DynamicObject> {
        let types = obj.types.as_ref().expect("apiVersion and kind");
        let gvk = GroupVersionKind::try_from(types).expect("valid apiVersion");
        let (ar, caps): (ApiResource, ApiCapabilities) =
            kube::discovery::pinned_kind(&self.client, &gvk).await.expect("kind is served");
        match caps.scope {
            Scope::Namespaced => Api::namespaced_with(self.client.clone(), &self.name, &ar),
            Scope::Cluster => Api::all_with(self.client.clone(), &ar),
        }
    }
}

/// Unique across the tests of one run and across runs against the same apiserver.
fn unique_suffix() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() % 1_000_000_000;
    format!("{t:x}-{}-{n}", std::process::id())
}

/// A free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The `levee run` binary, as a child process watching one namespace.
pub struct Operator {
    child: Child,
    pub port: u16,
}

impl Operator {
    pub async fn start(namespace: &str) -> Self {
        Self::start_with(namespace, &[]).await
    }

    /// Starts `levee run` with extra arguments (e.g. `--tick 1s`).
    pub async fn start_with(namespace: &str, extra: &[&str]) -> Self {
        Self::start_as(namespace, std::path::Path::new(&env("KUBECONFIG")), extra).await
    }

    /// Starts `levee run` with its own kubeconfig (another identity than the admin).
    pub async fn start_as(namespace: &str, kubeconfig: &std::path::Path, extra: &[&str]) -> Self {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_levee"))
            .args(["run", "--listen", &format!("127.0.0.1:{port}"), "--namespace", namespace])
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn levee run");
        let op = Self { child, port };
        op.wait_ready(Duration::from_secs(20)).await;
        op
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    async fn wait_ready(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(r) = reqwest::get(self.url("/readyz")).await
                && r.status().is_success()
            {
                return;
            }
            assert!(Instant::now() < deadline, "operator not ready within {within:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends SIGTERM and waits for the process to exit; returns whether it exited 0.
    pub async fn stop(mut self) -> bool {
        let pid = self.child.id().expect("running").to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().await.expect("kill");
        assert!(sent.success());
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .expect("operator exits within 10s of SIGTERM")
            .unwrap();
        status.success()
    }
}

/// Polls `get` until `pred` holds, or fails after `within` with the last value seen.
pub async fn eventually<T: std::fmt::Debug, F, Fut>(
    within: Duration,
    what: &str,
    mut get: F,
    pred: impl Fn(&T) -> bool,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
{
    let deadline = Instant::now() + within;
    loop {
        let v = get().await;
        if pred(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}; last seen: {v:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The conditions of a namespaced object of kind `K`, read untyped (works on malformed objects).
pub async fn conditions<K: Resource<DynamicType = ()>>(ns: &TestNs, name: &str) -> Vec<Condition> {
    let api: Api<DynamicObject> = Api::namespaced_with(ns.client.clone(), &ns.name, &ApiResource::erase::<K>(&()));
    match api.get_opt(name).await.expect("get") {
        Some(o) => o
            .data
            .pointer("/status/conditions")
            .and_then(|c| serde_json::from_value(c.clone()).ok())
            .unwrap_or_default(),
        None => Vec::new(),
    }
}

/// The notes of the namespace's Events with `reason`.
pub async fn event_notes(ns: &TestNs, reason: &str) -> Vec<String> {
    let events = ns.api::<k8s_openapi::api::events::v1::Event>().list(&Default::default()).await.expect("list Events");
    events.items.into_iter().filter(|e| e.reason.as_deref() == Some(reason)).filter_map(|e| e.note).collect()
}

/// The notes of the Events with `reason` in `ns`, once there is one (within `within`).
pub async fn notes_within(ns: &TestNs, reason: &str, within: Duration) -> Vec<String> {
    eventually(within, &format!("a {reason} Event"), || event_notes(ns, reason), |n| !n.is_empty()).await
}

pub fn condition<'a>(conds: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conds.iter().find(|c| c.type_ == type_)
}

/// Waits until the `Ready` condition of `name` has `status` ("True"/"False") and returns the conditions.
pub async fn wait_ready_status<K: Resource<DynamicType = ()>>(
    ns: &TestNs,
    name: &str,
    status: &str,
    within: Duration,
) -> Vec<Condition> {
    eventually(
        within,
        &format!("{name} Ready={status}"),
        || conditions::<K>(ns, name),
        |c| condition(c, "Ready").is_some_and(|r| r.status == status),
    )
    .await
}

/// The AWS SDK pointed at the stack's moto.
pub async fn aws() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest()).endpoint_url(env("LEVEE_AWS_ENDPOINT")).load().await
}

/// Creates a PostgreSQL RDS instance on moto.
pub async fn create_db_instance(rds: &aws_sdk_rds::Client, id: &str) {
    rds.create_db_instance()
        .db_instance_identifier(id)
        .db_instance_class("db.t3.micro")
        .engine("postgres")
        .master_username("levee")
        .master_user_password("levee-password")
        .allocated_storage(20)
        .send()
        .await
        .expect("CreateDBInstance");
}

/// A ScalingPolicy manifest; `signals` is YAML list items indented four spaces.
pub fn policy(name: &str, target: &str, signals: &str, capacity: &str, bounds: &str, extra: &str) -> String {
    format!(
        r#"
apiVersion: levee.dev/v1alpha1
kind: ScalingPolicy
metadata: {{ name: {name} }}
spec:
  target: {target}
  signals:
{signals}
  capacity: {capacity}
  bounds: {bounds}
  forecast: {{ leadTime: 10s, seasonality: None }}
{extra}
"#
    )
}

/// Policy `api` for Deployment `api` that wants 8 replicas: 400/s at 50 per replica, 1 to 20.
pub fn api_wanting_eight() -> String {
    policy(
        "api",
        "{ deployment: { name: api } }",
        &prom_signal("vector(400)"),
        "{ unitsPerReplica: 50, targetUtilization: 1.0 }",
        "{ minReplicas: 1, maxReplicas: 20 }",
        "",
    )
}

pub fn prom_signal(query: &str) -> String {
    format!("    - {{ name: load, role: ArrivalRate, prometheus: {{ query: '{query}' }} }}")
}
pub mod edge;

/// A Deployment `name` asking for `replicas`, none of them ready (no kubelet runs here).
pub async fn deployment(ns: &TestNs, name: &str, replicas: i32) {
    workload(ns, "Deployment", name, replicas).await;
}

/// A Deployment or StatefulSet (`kind`) `name` asking for `replicas`, none of them ready.
pub async fn workload(ns: &TestNs, kind: &str, name: &str, replicas: i32) {
    let service = if kind == "StatefulSet" { format!("\n  serviceName: {name}") } else { String::new() };
    ns.create_yaml(&format!(
        r#"
apiVersion: apps/v1
kind: {kind}
metadata: {{ name: {name} }}
spec:
  replicas: {replicas}{service}
  selector: {{ matchLabels: {{ app: {name} }} }}
  template:
    metadata: {{ labels: {{ app: {name} }} }}
    spec: {{ containers: [{{ name: app, image: registry.example/app:1 }}] }}
"#
    ))
    .await
    .unwrap_or_else(|e| panic!("create {kind} {name}: {e}"));
}

/// Plays the kubelet and the Deployment controller: every pod asked for is ready at once.
pub fn kubelet(ns: &TestNs, name: &str) -> tokio::task::JoinHandle<()> {
    kubelet_of(ns, "Deployment", name)
}

/// [`kubelet`] for a Deployment or StatefulSet (`kind`).
pub fn kubelet_of(ns: &TestNs, kind: &str, name: &str) -> tokio::task::JoinHandle<()> {
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk("apps", "v1", kind));
    let api: Api<DynamicObject> = Api::namespaced_with(ns.client.clone(), &ns.name, &resource);
    let name = name.to_owned();
    tokio::spawn(async move {
        loop {
            if let Ok(o) = api.get(&name).await {
                let want = o.data["spec"]["replicas"].as_i64().unwrap_or(0);
                let status = json!({"status": {"replicas": want, "readyReplicas": want, "availableReplicas": want}});
                let _ = api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status)).await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

/// Plays the kubelet for Deployment `name` once: `ready` of its `replicas` pods pass their
/// readiness checks.
pub async fn set_ready(ns: &TestNs, name: &str, replicas: i32, ready: i32) {
    let api: Api<Deployment> = ns.api();
    let status = json!({"status": {"replicas": replicas, "readyReplicas": ready, "availableReplicas": ready}});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await.expect("patch Deployment status");
}

/// The Service's `publishNotReadyAddresses`, and whether levee marked it for a death spiral.
pub async fn routing(ns: &TestNs, service: &str) -> (bool, bool) {
    let svc: k8s_openapi::api::core::v1::Service = ns.api().get(service).await.expect("get Service");
    let all = svc.spec.and_then(|s| s.publish_not_ready_addresses).unwrap_or(false);
    let marked = svc.metadata.annotations.unwrap_or_default().contains_key("levee.dev/death-spiral-since");
    (all, marked)
}

pub async fn replicas(ns: &TestNs, name: &str) -> i32 {
    ns.api::<Deployment>().get(name).await.unwrap().spec.unwrap().replicas.unwrap()
}
