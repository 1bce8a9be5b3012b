//! Asynchronous jobs: `POST /v1/jobs` (the body of `/v1/images/generations`) → 202 `{id, status,
//! queue_position}`; `GET /v1/jobs/{id}` (status, progress, and the images once done);
//! `DELETE /v1/jobs/{id}` (cancel: leaves the queue, or stops at the next step);
//! `GET /v1/jobs/{id}/events` (server-sent events: `queued`, `step`, then one of `done`, `error`,
//! `cancelled`). Finished jobs stay for `--job-retention` seconds, at most `--max-finished-jobs`.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use futures_util::stream::Stream;
use serde_json::{json, Value};

use crate::api::request::{body_params, read_body, to_request, Fields};
use crate::api::respond::OpenAiError;
use crate::state::AppState;
use crate::error::ApiError;
use crate::jobs::{Job, JobStatus};

/// A job as `GET /v1/jobs/{id}` shows it.
fn describe(job: &Job) -> Value {
    let status = job.status();
    let mut v = json!({"id": job.id, "object": "job", "model": job.model, "created": job.created, "status": status.name()});
    match status {
        JobStatus::Queued { position } => v["queue_position"] = json!(position),
        JobStatus::Running { step, total } => v["progress"] = json!({"step": step, "total": total}),
        _ => {}
    }
    match job.result() {
        Some(Ok(out)) => {
            let data: Vec<Value> = out.images.iter().map(|i| json!({"b64_json": base64::engine::general_purpose::STANDARD.encode(&i.png), "infotext": i.infotext})).collect();
            v["data"] = json!(data);
            v["seconds"] = json!(out.seconds);
        }
        Some(Err(e)) if !e.is_cancelled() => v["error"] = json!({"message": e.message, "type": e.kind, "param": e.param, "code": e.code}),
        _ => {}
    }
    v
}

fn find(state: &AppState, id: &str) -> Result<Arc<Job>, ApiError> {
    state.jobs.get(id).ok_or_else(|| ApiError::not_found(format!("no job {id}: it never existed or its results have expired (--job-retention)")).with_code("job_not_found"))
}

/// `POST /v1/jobs`.
pub async fn create(State(state): State<Arc<AppState>>, body: axum::body::Body) -> Result<Response, OpenAiError> {
    let body = read_body(body, state.config.max_body_bytes).await?;
    let f = Fields::parse(&body)?;
    let p = body_params(&state, &f)?;
    let job = state.submit(to_request(&state, p)?)?;
    let position = match job.status() {
        JobStatus::Queued { position } => position,
        _ => 0,
    };
    Ok((StatusCode::ACCEPTED, Json(json!({"id": job.id, "object": "job", "status": "queued", "queue_position": position}))).into_response())
}

/// `GET /v1/jobs/{id}`.
pub async fn get(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Result<Json<Value>, OpenAiError> {
    let job = find(&state, &id)?;
    Ok(Json(describe(&job)))
}

/// `DELETE /v1/jobs/{id}`: cancels it; a finished job is left as it is.
pub async fn cancel(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Result<Json<Value>, OpenAiError> {
    let job = find(&state, &id)?;
    if !job.status().is_finished() {
        job.cancel();
        if state.queue.remove(&job.id) {
            job.finish(Err(ApiError::cancelled(&job.id)));
        }
    }
    Ok(Json(describe(&job)))
}

/// `GET /v1/jobs/{id}/events`: one event per change of status, the last one `done` (with the
/// images), `error` or `cancelled`, then the stream ends.
pub async fn events(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, OpenAiError> {
    let job = find(&state, &id)?;
    let rx = job.subscribe();
    let stream = futures_util::stream::unfold((rx, job, false, true), |(mut rx, job, ended, first)| async move {
        if ended {
            return None;
        }
        // the current status first, then each change
        if !first && rx.changed().await.is_err() {
            return None;
        }
        let status = rx.borrow_and_update().clone();
        let event = match &status {
            JobStatus::Queued { position } => Event::default().event("queued").data(json!({"id": job.id, "queue_position": position}).to_string()),
            JobStatus::Running { step, total } => Event::default().event("step").data(json!({"id": job.id, "step": step, "total": total}).to_string()),
            JobStatus::Succeeded => Event::default().event("done").data(describe(&job).to_string()),
            JobStatus::Failed => Event::default().event("error").data(describe(&job).to_string()),
            JobStatus::Cancelled => Event::default().event("cancelled").data(json!({"id": job.id}).to_string()),
        };
        Some((Ok(event), (rx, job, status.is_finished(), false)))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
