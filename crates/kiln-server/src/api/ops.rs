//! Operations: `GET /healthz` (the process answers), `GET /readyz` (every model loaded and warm,
//! not draining: 200, else 503), `GET /metrics` (Prometheus text format).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::state::AppState;
use crate::jobs::lock;

/// `GET /healthz`: alive (200) while the process serves HTTP.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`: 200 `{"status": "ready", "models": […], "queue_depth", "queue_capacity"}` when
/// requests are taken; 503 with `loading`, `draining` or `failed` otherwise.
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let failed = lock(&state.failed).clone();
    let (status, code) = if let Some(why) = failed {
        (json!({"status": "failed", "error": why}), StatusCode::SERVICE_UNAVAILABLE)
    } else if state.draining.load(Ordering::SeqCst) {
        (json!({"status": "draining"}), StatusCode::SERVICE_UNAVAILABLE)
    } else if !state.ready.load(Ordering::SeqCst) {
        (json!({"status": "loading"}), StatusCode::SERVICE_UNAVAILABLE)
    } else {
        let models: Vec<String> = state.models().into_iter().map(|m| m.name).collect();
        (json!({"status": "ready", "models": models, "queue_depth": state.queue.depth(), "queue_capacity": state.queue.capacity()}), StatusCode::OK)
    };
    (code, Json(status)).into_response()
}

/// `GET /metrics`.
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    state.metrics.queue_depth.set(state.queue.depth() as i64);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics.encode()).into_response()
}
