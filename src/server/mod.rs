//! The operator's HTTP surface: `/healthz`, `/readyz` and `/metrics`.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

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
}
