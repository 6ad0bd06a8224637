//! Decision latency: from a signal change to the Deployment's new replica count, through the
//! real loop (Prometheus instant query, the operator at its default 5 s tick, the scale
//! subresource on the apiserver).
//!
//! Each policy's signal is a square wave computed by Prometheus itself from `time()`, so the
//! moment it changes is known exactly without pushing anything: a backlog of 1 for ten
//! seconds, then 8 for ten seconds, and so on, each policy at its own phase. A backlog signal
//! is not forecast, so every scale is a reaction to the change being measured. A watch on the
//! Deployments timestamps each new replica count; latency is that time minus the change.
//!
//! Needs the local stack: `hack/stack-up.sh && source target/stack/env`, then
//! `cargo bench --bench decision`. Bounded: 10 policies for 4 minutes.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Operator, TestNs, policy};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use kube::{
    ResourceExt,
    runtime::{WatchStreamExt, watcher},
};

const POLICIES: u32 = 10;
const HALF_PERIOD: f64 = 10.0;
const RUN: Duration = Duration::from_secs(240);
/// Low and high backlog; at one unit per replica drained within 1 s these are the replicas.
const LOW: i32 = 1;
const HIGH: i32 = 8;

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// Policy `i`'s phase offset in seconds.
fn offset(i: u32) -> f64 {
    f64::from(i) * 2.0 * HALF_PERIOD / f64::from(POLICIES)
}

/// The level policy `i`'s signal has at time `t`, and when it last changed.
fn level_at(i: u32, t: f64) -> (i32, f64) {
    let phase = (t + offset(i)).rem_euclid(2.0 * HALF_PERIOD);
    let level = if phase >= HALF_PERIOD { HIGH } else { LOW };
    (level, t - phase.rem_euclid(HALF_PERIOD))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

#[tokio::main]
async fn main() {
    if std::env::var("LEVEE_TEST_STACK").is_err() {
        eprintln!("decision bench skipped: the local stack is not up (hack/stack-up.sh && source target/stack/env)");
        return;
    }
    let ns = TestNs::new("bench-decision").await;
    for i in 0..POLICIES {
        let name = format!("api-{i}");
        ns.create_yaml(&format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{ name: {name} }}\nspec:\n  replicas: {LOW}\n  \
             selector: {{ matchLabels: {{ app: {name} }} }}\n  template:\n    metadata: {{ labels: {{ app: {name} }} }}\n    \
             spec: {{ containers: [{{ name: app, image: registry.example/app:1 }}] }}\n"
        ))
        .await
        .expect("create Deployment");
        let query = format!(
            "vector({LOW} + {} * ((time() + {}) % {} >= bool {HALF_PERIOD}))",
            HIGH - LOW,
            offset(i),
            2.0 * HALF_PERIOD
        );
        let signal = format!("    - {{ name: backlog, role: Backlog, prometheus: {{ query: '{query}' }} }}");
        ns.create_yaml(&policy(
            &name,
            &format!("{{ deployment: {{ name: {name} }} }}"),
            &signal,
            "{ unitsPerReplica: 1, targetUtilization: 1.0, drainWithin: 1s }",
            "{ minReplicas: 1, maxReplicas: 20, scaleDownStabilization: 0s, maxReversals: 100, reversalWindow: 1m }",
            "",
        ))
        .await
        .expect("create ScalingPolicy");
    }
    // The default tick: what is measured is what a user gets.
    let op = Operator::start_with(&ns.name, &[]).await;
    eprintln!("measuring {POLICIES} policies for {}s …", RUN.as_secs());

    let mut latencies = Vec::new();
    let mut late = 0;
    let stream = watcher(ns.api::<Deployment>(), watcher::Config::default()).applied_objects();
    let mut stream = std::pin::pin!(stream);
    let mut last: std::collections::HashMap<String, i32> = std::collections::HashMap::new();
    let deadline = tokio::time::Instant::now() + RUN;
    let warmup_until = now() + 2.0 * HALF_PERIOD;
    while let Ok(Some(Ok(d))) = tokio::time::timeout_at(deadline, stream.next()).await {
        let t = now();
        let name = d.name_any();
        let replicas = d.spec.and_then(|s| s.replicas).unwrap_or(0);
        let Some(i) = name.strip_prefix("api-").and_then(|s| s.parse::<u32>().ok()) else { continue };
        if last.insert(name, replicas) == Some(replicas) || t < warmup_until {
            continue;
        }
        let (level, changed) = level_at(i, t);
        if replicas == level {
            latencies.push(t - changed);
        } else {
            // A reaction to the change before the last one: over a half period late.
            late += 1;
        }
    }
    assert!(op.stop().await, "operator exits cleanly");
    latencies.sort_by(f64::total_cmp);
    if latencies.is_empty() {
        eprintln!("no decisions observed");
        std::process::exit(1);
    }
    println!(
        "decision latency over {} signal changes ({} reactions more than {HALF_PERIOD}s late): \
         p50 {:.2}s  p95 {:.2}s  p99 {:.2}s  max {:.2}s",
        latencies.len(),
        late,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.95),
        percentile(&latencies, 0.99),
        latencies[latencies.len() - 1],
    );
}
