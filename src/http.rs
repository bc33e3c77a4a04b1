//! The small HTTP server: `GET /metrics` (Prometheus text), `/healthz`
//! (alive: 503 once a stage failed) and `/readyz` (ready to carry commands, with the failing checks).
//!
//! Read-only: it reports state owned elsewhere and changes nothing. With
//! `[ui] enabled` it also serves the web console under `/ui/` (see `ui`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::ha::AuthGate;
use crate::metrics::{Health, Metrics};
use crate::queue::Slots;

#[derive(Clone)]
pub struct HttpState {
    pub metrics: Metrics,
    pub health: Arc<Health>,
    pub slots: Arc<Slots>,
    /// Closed after HA refused the token, until it changes or a probe passes.
    pub gate: AuthGate,
    /// The web console, when `[ui] enabled`.
    pub ui: Option<crate::ui::Console>,
}

/// The readiness checks, each true when fine.
pub fn readiness(state: &HttpState) -> (bool, serde_json::Value) {
    let checks = [
        ("mqtt_connected", Health::get(&state.health.mqtt_connected)),
        ("ha_reachable", Health::get(&state.health.ha_reachable)),
        ("ha_token_accepted", Health::get(&state.health.ha_token_ok) && state.gate.is_open()),
        ("queue_not_saturated", !state.slots.is_full()),
    ];
    let ready = checks.iter().all(|(_, ok)| *ok);
    let failing: Vec<&str> = checks.iter().filter(|(_, ok)| !ok).map(|(name, _)| *name).collect();
    let body = json!({
        "ready": ready,
        "checks": checks.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "failing": failing,
    });
    (ready, body)
}

async fn metrics(State(s): State<HttpState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], s.metrics.render())
}

/// Alive unless a stage failed (the process is then stopping, to be restarted).
pub fn liveness(health: &Health) -> (bool, serde_json::Value) {
    match health.failed.get() {
        None => (true, json!({"alive": true})),
        Some(stage) => (false, json!({"alive": false, "failed_stage": stage})),
    }
}

async fn healthz(State(s): State<HttpState>) -> impl IntoResponse {
    let (alive, body) = liveness(&s.health);
    let status = if alive { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(body))
}

async fn readyz(State(s): State<HttpState>) -> impl IntoResponse {
    let (ready, body) = readiness(&s);
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(body))
}

pub fn router(state: HttpState) -> Router {
    let console = state.ui.clone();
    let router =
        Router::new().route("/metrics", get(metrics)).route("/healthz", get(healthz)).route("/readyz", get(readyz));
    let router = router.with_state(state);
    match console {
        Some(console) => router.merge(crate::ui::router(console)),
        None => router,
    }
}

/// Serves until `shutdown`.
pub async fn serve(listener: TcpListener, state: HttpState, shutdown: CancellationToken) {
    let result =
        axum::serve(listener, router(state)).with_graceful_shutdown(async move { shutdown.cancelled().await }).await;
    if let Err(e) = result {
        tracing::error!(error = %e, "metrics server failed");
    }
}
