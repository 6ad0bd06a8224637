//! `levee edge`: the proxy plus what keeps it current — a watch of the pool's Mitigations and
//! TrafficGuard (a change is in force as soon as the watch event arrives), a report to the
//! operator every interval, and an admin server with `/healthz`, `/readyz` and `/metrics`.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use futures::{StreamExt, stream};
use kube::{
    Api, Client, ResourceExt,
    core::DeserializeGuard,
    runtime::{WatchStreamExt, reflector, watcher},
};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{
    metrics::EdgeMetrics,
    proxy::{self, EdgeState, ProxyConfig},
    report::{EdgeReport, REPORT_PATH},
    rules::RuleSet,
    settings::GuardSettings,
    source::PrefixTable,
};
use crate::{
    api::{Mitigation, TrafficGuard},
    server::{self, Health},
};

/// Settings of `levee edge`.
#[derive(Clone, Debug)]
pub struct EdgeConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub proxy: ProxyConfig,
    pub pool: String,
    /// Namespace of the pool's Mitigations and TrafficGuard.
    pub namespace: String,
    /// Serve without a cluster: no Mitigations, default settings.
    pub standalone: bool,
    pub operator_url: Option<String>,
    pub report_interval: Duration,
    pub prefix_table: Option<PathBuf>,
    /// Worker threads serving traffic; 0 for one per available core.
    pub workers: usize,
}

/// Runs the edge until SIGTERM or SIGINT.
///
/// # Errors
/// A prefix table that does not load, an address that cannot be bound, or (unless standalone)
/// no Kubernetes configuration.
pub async fn run(cfg: EdgeConfig) -> anyhow::Result<()> {
    if cfg.report_interval < Duration::from_millis(100) {
        anyhow::bail!("--report-interval must be at least 100ms, got {:?}", cfg.report_interval);
    }
    if cfg.proxy.header_timeout < Duration::from_millis(100) {
        anyhow::bail!("--header-timeout must be at least 100ms, got {:?}", cfg.proxy.header_timeout);
    }
    let table = match &cfg.prefix_table {
        Some(p) => {
            let t = PrefixTable::load(p)?;
            info!(ranges = t.len(), path = %p.display(), "prefix table loaded");
            t
        }
        None => PrefixTable::default(),
    };
    let mut registry = Registry::with_prefix("levee");
    let metrics = EdgeMetrics::register(&mut registry);
    let state = Arc::new(EdgeState::new(cfg.proxy.clone(), table, metrics)?);
    let client = if cfg.standalone {
        None
    } else {
        Some(Client::try_default().await.context("no Kubernetes configuration: set KUBECONFIG, or pass --standalone")?)
    };

    let shutdown = CancellationToken::new();
    tokio::spawn(crate::operator::cancel_on_signal(shutdown.clone()));
    let health = Health::default();
    let admin = tokio::net::TcpListener::bind(cfg.admin_listen)
        .await
        .with_context(|| format!("cannot listen on {} (--admin-listen)", cfg.admin_listen))?;
    let workers = match cfg.workers {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    let listeners = proxy::bind(cfg.listen, workers).with_context(|| format!("cannot listen on {}", cfg.listen))?;
    info!(
        addr = %listeners[0].local_addr()?, admin = %admin.local_addr()?, upstream = %cfg.proxy.upstream,
        pool = %cfg.pool, namespace = %cfg.namespace, standalone = cfg.standalone, workers, "edge serving"
    );
    let admin_task =
        tokio::spawn(server::serve(admin, server::router(Arc::new(registry), health.clone()), shutdown.clone()));
    if let Some(client) = client {
        tokio::spawn(follow_cluster(client, cfg.clone(), state.clone(), health.clone(), shutdown.clone()));
    } else {
        health.set_ready(true);
    }
    if let Some(url) = cfg.operator_url.clone() {
        tokio::spawn(report_loop(url, cfg.clone(), state.clone(), shutdown.clone()));
    }
    proxy::serve(listeners, state, shutdown.clone()).await;
    health.set_ready(false);
    admin_task.await.context("admin server panicked")?.context("admin server failed")?;
    info!("edge shut down cleanly");
    Ok(())
}

/// Watches the pool's Mitigations and TrafficGuards and rebuilds the rules on every change.
/// Ready once both lists have been read.
async fn follow_cluster(
    client: Client,
    cfg: EdgeConfig,
    state: Arc<EdgeState>,
    health: Health,
    stop: CancellationToken,
) {
    let mitigations: Api<DeserializeGuard<Mitigation>> = Api::namespaced(client.clone(), &cfg.namespace);
    let guards: Api<DeserializeGuard<TrafficGuard>> = Api::namespaced(client, &cfg.namespace);
    let (m_reader, m_writer) = reflector::store();
    let (g_reader, g_writer) = reflector::store();
    let m_events = watcher(mitigations, watcher::Config::default())
        .default_backoff()
        .reflect(m_writer)
        .map(|e| (0, e.map(|e| matches!(e, watcher::Event::InitDone))));
    let g_events = watcher(guards, watcher::Config::default())
        .default_backoff()
        .reflect(g_writer)
        .map(|e| (1, e.map(|e| matches!(e, watcher::Event::InitDone))));
    let mut events = std::pin::pin!(stream::select(m_events, g_events));
    let mut synced = [false, false];
    loop {
        let (which, event) = tokio::select! {
            e = events.next() => match e { Some(e) => e, None => break },
            () = stop.cancelled() => break,
        };
        match event {
            Err(e) => {
                warn!(error = %e, "watch failed; retrying");
                continue;
            }
            Ok(init_done) => synced[which] |= init_done,
        }
        // Until both lists are read, a partial view would drop rules that are in force.
        if !synced[0] || !synced[1] {
            continue;
        }
        let pool = cfg.pool.as_str();
        let guard = g_reader
            .state()
            .iter()
            .filter_map(|g| g.0.as_ref().ok())
            .filter(|g| g.spec.edge_pool == pool)
            .min_by_key(|g| g.name_any())
            .map(|g| {
                GuardSettings::from_spec(format!("{}/{}", cfg.namespace, g.name_any()), &g.spec, &state.upstream_name())
            });
        let settings = guard.unwrap_or_default();
        let objects = m_reader.state();
        let specs = objects
            .iter()
            .filter_map(|m| m.0.as_ref().ok())
            .filter(|m| m.spec.edge_pool == pool)
            .map(|m| (format!("{}/{}", cfg.namespace, m.name_any()), &m.spec));
        let (rules, skipped) = RuleSet::build(specs, settings.allowlist.clone(), &state.rules.load());
        for s in &skipped {
            warn!(mitigation = %s.name, why = %s.why, "cannot enforce mitigation");
        }
        state.metrics.rules.set(rules.len() as i64);
        state.metrics.rules_skipped.set(skipped.len() as i64);
        let n = rules.len();
        state.rules.store(Arc::new(rules));
        state.set_settings(settings);
        if !health.is_ready() {
            info!(rules = n, "mitigations and guard settings loaded");
            health.set_ready(true);
        }
    }
}

/// Sends the interval's counts to the operator. A report that cannot be delivered is dropped
/// (the next one carries the next interval); the failure is logged once a minute at most.
async fn report_loop(url: String, cfg: EdgeConfig, state: Arc<EdgeState>, stop: CancellationToken) {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().unwrap_or_default();
    let target = format!("{}{REPORT_PATH}", url.trim_end_matches('/'));
    let edge = format!("{}-{}", std::env::var("POD_NAME").unwrap_or_else(|_| "edge".to_owned()), std::process::id());
    let mut tick = tokio::time::interval(cfg.report_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut last = tokio::time::Instant::now();
    let mut last_warning: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let now = tokio::time::Instant::now();
        let (counts, refusals, upstream) = state.take_interval();
        let report = EdgeReport {
            namespace: cfg.namespace.clone(),
            pool: cfg.pool.clone(),
            edge: edge.clone(),
            interval_secs: (now - last).as_secs_f64(),
            requests: counts.requests,
            new_source_requests: counts.new_source_requests,
            top: counts.top,
            classes: counts.classes,
            prefix_asns: counts.prefix_asns,
            limited: refusals.limited,
            shadow_limited: refusals.shadow_limited,
            allowlisted_requests: refusals.allowlisted,
            refused_by_rule: refusals.by_rule.into_iter().map(|(r, n)| (r.to_string(), n)).collect(),
            upstreams: vec![upstream],
        };
        last = now;
        let result = http.post(&target).json(&report).send().await.and_then(reqwest::Response::error_for_status);
        match result {
            Ok(_) => {
                state.metrics.reports_sent.inc();
            }
            Err(e) => {
                state.metrics.reports_failed.inc();
                if last_warning.is_none_or(|t| now - t > Duration::from_secs(60)) {
                    warn!(error = %e, url = %target, "cannot report to the operator; will keep trying");
                    last_warning = Some(now);
                }
            }
        }
    }
}
