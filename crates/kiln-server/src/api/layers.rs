//! The layers around the routes: request logs and metrics by matched route ([`observe`]), the
//! API key ([`require_key`]), and the 404 of unknown paths.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower_http::request_id::RequestId;

use crate::api::respond::{error_for_path, OpenAiError};
use crate::error::ApiError;
use crate::metrics::{RequestLabels, RouteLabels};
use crate::state::AppState;

pub async fn not_found(request: Request) -> Response {
    let path = request.uri().path().to_string();
    OpenAiError(ApiError::not_found(format!("no route {path}; `kiln serve --help` lists the routes"))).into_response()
}

/// Logs each request with its id, and counts it in the metrics by its matched route.
pub async fn observe(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_else(|| "unmatched".into());
    let method = request.method().to_string();
    let id = request.extensions().get::<RequestId>().and_then(|id| id.header_value().to_str().ok()).unwrap_or("-").to_string();
    let start = Instant::now();
    let span = tracing::info_span!("request", id = %id, method = %method, route = %route);
    let response = {
        let _enter = span.enter();
        tracing::debug!(path = %request.uri().path(), "received");
        drop(_enter);
        next.run(request).await
    };
    let status = response.status().as_u16();
    let seconds = start.elapsed().as_secs_f64();
    state.metrics.requests.get_or_create(&RequestLabels { method: method.clone(), route: route.clone(), status }).inc();
    state.metrics.request_seconds.get_or_create(&RouteLabels { route: route.clone() }).observe(seconds);
    tracing::info!(parent: &span, status, seconds = format!("{seconds:.3}"), "answered");
    response
}

/// The optional API key (`--api-key`, `KILN_API_KEY`): `Authorization: Bearer KEY`, compared in
/// constant time (SHA-256 of both sides, then every byte). A wrong or missing key: 401.
pub async fn require_key(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    if let Some(key) = &state.config.api_key {
        let given = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("");
        if !constant_time_eq(given.trim().as_bytes(), key.as_bytes()) {
            let mut response = error_for_path(request.uri().path(), ApiError::unauthorized());
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return response;
        }
    }
    next.run(request).await
}

/// Whether `a == b`, in a time that depends on neither (the digests have one length).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let digest = |x: &[u8]| {
        let mut h = kiln_pipeline::lora::hash::Sha256::default();
        h.update(x);
        h.hex()
    };
    let (da, db) = (digest(a), digest(b));
    da.bytes().zip(db.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

