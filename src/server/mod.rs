//! The operator's HTTP surface: `/healthz`, `/readyz`, `/metrics` and the on-call status API
//! (`/status`).

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use axum::{
    Json, Router,
    extract::{Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use k8s_openapi::jiff::Timestamp;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::operator::oncall::Stores;

/// Liveness is the process answering; readiness is set once the operator is watching.
#[derive(Clone, Default)]
pub struct Health {
    ready: Arc<AtomicBool>,
}

impl Health {
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

#[derive(Clone)]
struct AppState {
    registry: Arc<Registry>,
    health: Health,
}

pub fn router(registry: Arc<Registry>, health: Health) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(AppState { registry, health })
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    if s.health.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: waiting for CRDs or shutting down")
    }
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &s.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode metrics: {e}")).into_response(),
    }
}

#[derive(Clone)]
struct StatusState {
    stores: Stores,
    health: Health,
}

/// `GET /status`: the on-call status document (see [`crate::operator::oncall`]).
pub fn status_router(stores: Stores, health: Health) -> Router {
    Router::new().route("/status", get(status)).with_state(StatusState { stores, health })
}

#[derive(Deserialize)]
struct StatusQuery {
    /// `json` (the default) or `text`.
    format: Option<String>,
}

async fn status(State(s): State<StatusState>, Query(q): Query<StatusQuery>) -> Response {
    let format = q.format.as_deref().unwrap_or("json");
    if !matches!(format, "json" | "text") {
        return (StatusCode::BAD_REQUEST, format!("format must be json or text, not {format:?}\n")).into_response();
    }
    // Before every watch has listed its kind once, the document would say "nothing needs
    // attention" of objects not yet seen: better no answer than a reassuring wrong one.
    if !s.health.is_ready() || !s.stores.loaded() {
        return (StatusCode::SERVICE_UNAVAILABLE, "not watching yet: waiting for CRDs or the first list\n")
            .into_response();
    }
    let snapshot = s.stores.snapshot(Timestamp::now());
    match format {
        "text" => ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], snapshot.render()).into_response(),
        _ => Json(snapshot).into_response(),
    }
}

/// Serves `app` on `listener` until `shutdown` is cancelled, then finishes open requests.
pub async fn serve(listener: tokio::net::TcpListener, app: Router, shutdown: CancellationToken) -> std::io::Result<()> {
    axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt;

    async fn get(app: Router, path: &str) -> (StatusCode, String) {
        let res = app.oneshot(axum::http::Request::get(path).body(Body::empty()).unwrap()).await.unwrap();
        let status = res.status();
        let body = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn readyz_follows_health() {
        let health = Health::default();
        let app = router(Arc::new(Registry::default()), health.clone());
        assert_eq!(get(app.clone(), "/readyz").await.0, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(get(app.clone(), "/healthz").await.0, StatusCode::OK);
        health.set_ready(true);
        assert_eq!(get(app, "/readyz").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn metrics_are_openmetrics_text() {
        let mut registry = Registry::with_prefix("levee");
        let m = crate::operator::metrics::ReconcileMetrics::register(&mut registry);
        m.runs.get_or_create(&crate::operator::metrics::ReconcileMetrics::kind("ScalingPolicy")).inc();
        let (status, body) = get(router(Arc::new(registry), Health::default()), "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.lines().any(|l| l == "levee_reconcile_runs_total{kind=\"ScalingPolicy\"} 1"), "{body}");
        assert!(body.ends_with("# EOF\n"));
    }

    fn stores() -> (Stores, impl FnMut()) {
        use kube::runtime::{reflector::store, watcher::Event};
        let (scaling, mut ws) = store();
        let (guards, mut wg) = store();
        let (mitigations, mut wm) = store();
        let (bootstrap, mut wb) = store();
        // What a watch's first (empty) list does to each store.
        let list_done = move || {
            ws.apply_watcher_event(&Event::InitDone);
            wg.apply_watcher_event(&Event::InitDone);
            wm.apply_watcher_event(&Event::InitDone);
            wb.apply_watcher_event(&Event::InitDone);
        };
        (
            Stores { scaling, guards, mitigations, bootstrap, pause: crate::operator::pause::PauseSwitch::off() },
            list_done,
        )
    }

    #[tokio::test]
    async fn status_answers_only_once_every_kind_is_listed() {
        let health = Health::default();
        health.set_ready(true);
        let (stores, mut list_done) = stores();
        let app = status_router(stores, health);
        let (code, body) = get(app.clone(), "/status").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        list_done();
        let (code, body) = get(app.clone(), "/status").await;
        assert_eq!(code, StatusCode::OK, "{body}");
        let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(doc["attention"], serde_json::json!([]));
        let (code, body) = get(app.clone(), "/status?format=text").await;
        assert_eq!(code, StatusCode::OK);
        assert!(body.contains("Nothing needs attention."), "{body}");
        let (code, body) = get(app, "/status?format=yaml").await;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        assert_eq!(body, "format must be json or text, not \"yaml\"\n");
    }
}
