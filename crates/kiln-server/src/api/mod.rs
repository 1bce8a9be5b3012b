//! The routes, the state they share, and the layers around them (request ids and logs, metrics,
//! the API key, body limits).
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/images/generations`, `POST /v1/images/edits`, `GET /v1/models` | OpenAI's Images API ([`openai`]) |
//! | `GET /v1/images/files/{name}` | the pictures of `response_format: "url"`, for `--url-ttl` |
//! | `POST /sdapi/v1/txt2img`, `img2img`; `GET sd-models`, `samplers`, `schedulers`, `progress`; `GET\|POST options`; `POST interrupt` | AUTOMATIC1111's API ([`a1111`]) |
//! | `POST /v1/jobs`, `GET\|DELETE /v1/jobs/{id}`, `GET /v1/jobs/{id}/events` | asynchronous jobs, events over SSE ([`jobs`]) |
//! | `GET /healthz`, `GET /readyz`, `GET /metrics` | liveness, readiness, Prometheus ([`ops`]) |

pub mod a1111;
pub mod jobs;
pub mod layers;
pub mod openai;
pub mod ops;
pub mod request;
pub mod respond;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{get, post};
use axum::Router;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::RequestBodyTimeoutLayer;

use crate::api::layers::{not_found, observe, require_key};
use crate::state::AppState;

/// The whole router, with its layers.
pub fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/v1/images/generations", post(openai::generations))
        .route("/v1/images/edits", post(openai::edits))
        .route("/v1/models", get(openai::models))
        .route("/sdapi/v1/txt2img", post(a1111::txt2img))
        .route("/sdapi/v1/img2img", post(a1111::img2img))
        .route("/sdapi/v1/sd-models", get(a1111::sd_models))
        .route("/sdapi/v1/samplers", get(a1111::samplers))
        .route("/sdapi/v1/schedulers", get(a1111::schedulers))
        .route("/sdapi/v1/options", get(a1111::get_options).post(a1111::set_options))
        .route("/sdapi/v1/progress", get(a1111::progress))
        .route("/sdapi/v1/interrupt", post(a1111::interrupt))
        .route("/v1/jobs", post(jobs::create))
        .route("/v1/jobs/{id}", get(jobs::get).delete(jobs::cancel))
        .route("/v1/jobs/{id}/events", get(jobs::events))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key))
        .route_layer(middleware::from_fn_with_state(state.clone(), observe));
    let open = Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/v1/images/files/{name}", get(openai::file))
        .route_layer(middleware::from_fn_with_state(state.clone(), observe));
    let body_limit = state.config.max_body_bytes;
    Router::new()
        .merge(api)
        .merge(open)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        // a client that sends its body slowly is cut off (it would hold a connection forever)
        .layer(RequestBodyTimeoutLayer::new(Duration::from_secs(60)))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}

