//! `levee run`: the operator. Watches every policy kind, judges each policy and reports in
//! status, and serves health, metrics and the on-call status API.

pub mod bootstrap;
pub mod bootstrap_page;
pub mod conditions;
pub mod controller;
pub mod forecast_history;
pub mod gate;
pub mod guard;
pub mod metrics;
pub mod oncall;
pub mod pager;
pub mod pause;
pub mod policy;
pub mod scaling;
pub mod secrets;
pub mod shortfall;
pub mod spiral;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, Client,
    core::DeserializeGuard,
    runtime::{
        reflector::store,
        wait::{await_condition, conditions::is_crd_established},
    },
};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    api::{self, BootstrapPolicy, Mitigation, ScalingPolicy, TrafficGuard},
    server::{self, Health},
};
use controller::Context;
use policy::Policy;

/// Settings of `levee run`.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Where `/healthz`, `/readyz`, `/metrics` and `/status` are served.
    pub listen: SocketAddr,
    /// Watch only this namespace; all namespaces when unset.
    pub namespace: Option<String>,
    pub scaler: scaling::ScalerConfig,
    /// Where pages to a PagerDuty routing key go.
    pub pagerduty_url: String,
    /// The namespace of the pause ConfigMap ([`pause::CONFIGMAP`]).
    pub control_namespace: String,
}

/// Runs the operator until SIGTERM or SIGINT.
///
/// # Errors
/// When no Kubernetes configuration can be found or the listen address cannot be bound.
/// Apiserver errors after start-up are retried, never fatal.
pub async fn run(config: RunConfig) -> anyhow::Result<()> {
    let pager = pager::Pager::new(&config.pagerduty_url)?;
    let client =
        Client::try_default().await.context("no Kubernetes configuration: set KUBECONFIG, or run in a cluster")?;
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));

    let mut registry = Registry::with_prefix("levee");
    let metrics = metrics::ReconcileMetrics::register(&mut registry);
    let paused_gauge = metrics::ReconcileMetrics::register_paused(&mut registry);
    let (pause, watch_pause) = pause::PauseSwitch::watch(client.clone(), &config.control_namespace, paused_gauge);
    let health = Health::default();
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    info!(addr = %listener.local_addr()?, "serving /healthz, /readyz, /metrics, /status and edge reports");
    let hub = Arc::new(guard::hub::ReportHub::default());
    let (scaling_cache, guard_cache, mitigation_cache, bootstrap_cache) = (store(), store(), store(), store());
    let stores = oncall::Stores {
        scaling: scaling_cache.0.clone(),
        guards: guard_cache.0.clone(),
        mitigations: mitigation_cache.0.clone(),
        bootstrap: bootstrap_cache.0.clone(),
        pause: pause.clone(),
    };
    let app = server::router(Arc::new(registry), health.clone())
        .merge(guard::reports_router(hub.clone()))
        .merge(server::status_router(stores, health.clone()));
    let server = tokio::spawn(server::serve(listener, app, shutdown.clone()));
    let pause_watch = tokio::spawn(watch_pause);

    tokio::select! {
        () = wait_for_crds(client.clone()) => {}
        () = shutdown.cancelled() => return within_grace(finish(server), &shutdown, SHUTDOWN_GRACE).await,
    }
    let claims = Arc::new(bootstrap::Claims::default());
    let bootstrapper = bootstrap::Bootstrapper::new(client.clone(), pager.clone(), pause.clone(), claims.clone());
    let scaler = scaling::Scaler::new(client.clone(), config.scaler.clone(), pager.clone(), pause.clone(), claims);
    let guards = guard::Guards::new(client.clone(), hub, config.scaler.prometheus_url.clone(), pager, pause);
    let ctx = Arc::new(Context { client: client.clone(), metrics, scaler, guards, bootstrapper });
    health.set_ready(true);
    info!(
        namespace = config.namespace.as_deref().unwrap_or("<all>"),
        "watching ScalingPolicy, TrafficGuard, Mitigation, BootstrapPolicy"
    );
    let ns = config.namespace.as_deref();
    let work = async {
        tokio::join!(
            controller::run(guarded_api::<ScalingPolicy>(&client, ns), scaling_cache, ctx.clone(), shutdown.clone()),
            controller::run(guarded_api::<TrafficGuard>(&client, ns), guard_cache, ctx.clone(), shutdown.clone()),
            controller::run(guarded_api::<Mitigation>(&client, ns), mitigation_cache, ctx.clone(), shutdown.clone()),
            controller::run(
                guarded_api::<BootstrapPolicy>(&client, ns),
                bootstrap_cache,
                ctx.clone(),
                shutdown.clone()
            ),
        );
        health.set_ready(false);
        pause_watch.abort();
        finish(server).await
    };
    within_grace(work, &shutdown, SHUTDOWN_GRACE).await
}

/// How long reconciles in flight and open HTTP connections get to finish after SIGTERM.
/// Well inside Kubernetes' default 30 s termination grace, so the operator exits by itself
/// and is not killed: every step it takes can be cut between any two calls (a restart picks
/// up where it was), so nothing is lost by not waiting longer.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Runs `work` to its end, or until `grace` after `shutdown` is cancelled, whichever is first;
/// in the second case it says so and returns Ok: the signal asked for an exit, and got one.
async fn within_grace(
    work: impl Future<Output = anyhow::Result<()>>,
    shutdown: &CancellationToken,
    grace: Duration,
) -> anyhow::Result<()> {
    let expired = async {
        shutdown.cancelled().await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        result = work => result,
        () = expired => {
            warn!(grace = ?grace, "work still in flight after the shutdown grace (a reconcile or an HTTP connection); exiting without it");
            Ok(())
        }
    }
}

async fn finish(server: tokio::task::JoinHandle<std::io::Result<()>>) -> anyhow::Result<()> {
    server.await.context("server task panicked")?.context("server failed")?;
    info!("shut down cleanly");
    Ok(())
}

/// `namespace/name` of a namespaced object: how the loops key what they remember of a policy
/// and how logs and pages name it.
pub fn key_of(obj: &impl kube::ResourceExt) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

fn guarded_api<K: Policy>(client: &Client, ns: Option<&str>) -> Api<DeserializeGuard<K>> {
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Waits until every levee CRD is Established, saying which are missing while it waits.
async fn wait_for_crds(client: Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client);
    for crd in api::crds() {
        let name = crd.metadata.name.unwrap_or_default();
        loop {
            match tokio::time::timeout(
                Duration::from_secs(10),
                await_condition(crds.clone(), &name, is_crd_established()),
            )
            .await
            {
                Ok(Ok(_)) => break,
                Ok(Err(e)) => warn!(crd = %name, error = %e, "cannot watch CRD; retrying"),
                Err(_) => {
                    warn!(crd = %name, "CRD not established yet; install it with `levee crd --apply` or `kubectl apply -f crds/`")
                }
            }
        }
        info!(crd = %name, "CRD established");
    }
}

/// Cancels `token` on SIGTERM (what Kubernetes sends) or SIGINT (Ctrl-C).
pub async fn cancel_on_signal(token: CancellationToken) {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await
            }
        }
    };
    tokio::select! {
        () = term => info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT: shutting down"),
    }
    token.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn work_stuck_after_the_signal_is_left_after_the_grace() {
        let shutdown = CancellationToken::new();
        let started = tokio::time::Instant::now();
        let signal = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            signal.cancel();
        });
        let stuck = std::future::pending::<anyhow::Result<()>>();
        within_grace(stuck, &shutdown, Duration::from_secs(5)).await.unwrap();
        assert_eq!(started.elapsed().as_secs(), 8, "the grace counts from the signal, not from the start");
    }

    #[tokio::test(start_paused = true)]
    async fn work_that_ends_within_the_grace_gives_its_own_result() {
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let slow_failure = async {
            tokio::time::sleep(Duration::from_secs(4)).await;
            Err(anyhow::anyhow!("server failed"))
        };
        let err = within_grace(slow_failure, &shutdown, Duration::from_secs(5)).await.unwrap_err();
        assert_eq!(err.to_string(), "server failed");
        // Without a signal there is no deadline at all: the work runs to its own end (an
        // error here, so that it cannot pass for the grace's Ok).
        let quiet = CancellationToken::new();
        let long = async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Err(anyhow::anyhow!("ran to its end"))
        };
        let err = within_grace(long, &quiet, Duration::from_secs(5)).await.unwrap_err();
        assert_eq!(err.to_string(), "ran to its end");
    }
}
