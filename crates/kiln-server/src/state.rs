//! [`AppState`]: what every route shares — the config, the queue and jobs, the metrics, the
//! served models, readiness, and the pictures kept for `response_format: "url"`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::http::StatusCode;
use kiln_pipeline::PipelineKind;

use crate::config::ServeConfig;
use crate::error::ApiError;
use crate::jobs::{lock, Job, JobStore, PushError, Queue, KEPT_BYTES};
use crate::metrics::Metrics;
use crate::work::{GenOutput, GenRequest};

/// A served model as the routes list it.
#[derive(Debug, Clone)]
pub struct ServedModel {
    pub name: String,
    pub source: String,
    /// The pipeline (SDXL's previews use SDXL's latent factors; its default strength is 0.3).
    pub kind: PipelineKind,
    /// diffusers' default output size `(height, width)`.
    pub default_size: (usize, usize),
    /// Its text encoders take 77 tokens, as A1111's prompt chunks need (every SD model's do; the
    /// demo model's take 16, and its A1111 requests are read as plain text).
    pub a1111_chunks: bool,
}

/// What every route shares.
pub struct AppState {
    pub config: ServeConfig,
    pub queue: Arc<Queue>,
    pub jobs: JobStore,
    pub metrics: Arc<Metrics>,
    /// Filled when the worker has loaded and warmed up every model.
    pub models: Mutex<Vec<ServedModel>>,
    /// A1111's `sd_model_checkpoint`: the model of requests that name none.
    pub current_model: Mutex<String>,
    pub ready: AtomicBool,
    pub draining: AtomicBool,
    /// Why startup failed, if it did.
    pub failed: Mutex<Option<String>>,
    /// The pictures of `response_format: "url"`: name → (made, PNG).
    pub files: Mutex<HashMap<String, (Instant, Arc<Vec<u8>>)>>,
    /// A running mean of a job's seconds (f64 bits), for `Retry-After`.
    pub job_seconds: AtomicU64,
}

impl AppState {
    pub fn new(config: ServeConfig, queue: Arc<Queue>, metrics: Arc<Metrics>) -> Self {
        let current = config.models.first().map(|m| m.name.clone()).unwrap_or_default();
        AppState {
            jobs: JobStore::new(config.job_retention, config.max_finished_jobs),
            config,
            queue,
            metrics,
            models: Mutex::new(Vec::new()),
            current_model: Mutex::new(current),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            failed: Mutex::new(None),
            files: Mutex::new(HashMap::new()),
            job_seconds: AtomicU64::new(1.0f64.to_bits()),
        }
    }

    /// A state whose models are already loaded (`models`), ready: for reading requests without a
    /// worker (the fuzzer, tests).
    pub fn with_models(config: ServeConfig, models: Vec<ServedModel>) -> Self {
        let queue = Arc::new(Queue::new(config.queue_size));
        let metrics = Arc::new(Metrics::new(config.queue_size));
        let state = AppState::new(config, queue, metrics);
        if let Some(first) = models.first() {
            *lock(&state.current_model) = first.name.clone();
        }
        *lock(&state.models) = models;
        state.ready.store(true, Ordering::SeqCst);
        state
    }

    pub fn models(&self) -> Vec<ServedModel> {
        lock(&self.models).clone()
    }

    pub fn model(&self, name: &str) -> Option<ServedModel> {
        lock(&self.models).iter().find(|m| m.name == name).cloned()
    }

    /// A request's model: `name` if served, else (for `None`) the current one.
    pub fn pick_model(&self, name: Option<&str>) -> Result<ServedModel, ApiError> {
        let name = match name {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => lock(&self.current_model).clone(),
        };
        self.model(&name).ok_or_else(|| {
            let served: Vec<String> = self.models().into_iter().map(|m| m.name).collect();
            ApiError { status: StatusCode::NOT_FOUND, ..ApiError::invalid("model", format!("model {name:?} is not served here; served: {}", served.join(", "))).with_code("model_not_found") }
        })
    }

    /// Queues `request` as a new job: 503 while loading or once the queue has closed (the end of
    /// a drain), 429 when the queue is full. During a drain's grace period requests are still
    /// taken (and answered before the server exits): only `/readyz` says it is leaving.
    pub fn submit(&self, request: GenRequest) -> Result<Arc<Job>, ApiError> {
        if !self.ready.load(Ordering::SeqCst) {
            return Err(ApiError::unavailable("the models are still loading; see GET /readyz"));
        }
        let job = Job::new(new_id("job"), request);
        self.jobs.insert(job.clone());
        match self.queue.push(job.clone()) {
            Ok(_) => Ok(job),
            Err(why) => {
                self.jobs.remove(&job.id);
                Err(match why {
                    PushError::Full { capacity } => ApiError::queue_full(capacity, self.retry_after()),
                    PushError::Closed => ApiError::unavailable("the server is shutting down; send the request to another replica"),
                })
            }
        }
    }

    /// Seconds until a place in the queue is likely free: a job's mean duration, at least 1.
    pub fn retry_after(&self) -> u64 {
        let mean = f64::from_bits(self.job_seconds.load(Ordering::Relaxed));
        mean.ceil().clamp(1.0, 3600.0) as u64
    }

    /// Waits for `job`; cancels it if the request is dropped first (the client went away) or
    /// `request_timeout` passes.
    pub async fn wait(&self, job: &Arc<Job>) -> Result<Arc<GenOutput>, ApiError> {
        let guard = CancelOnDrop { job: job.clone(), queue: self.queue.clone() };
        let result = match tokio::time::timeout(self.config.request_timeout, job.wait()).await {
            Ok(result) => result,
            Err(_) => Err(ApiError { status: StatusCode::GATEWAY_TIMEOUT, ..ApiError::internal(format!("job {} did not finish within --request-timeout ({} s)", job.id, self.config.request_timeout.as_secs())) }),
        };
        drop(guard);
        if let Ok(out) = &result {
            let old = f64::from_bits(self.job_seconds.load(Ordering::Relaxed));
            self.job_seconds.store((0.8 * old + 0.2 * out.seconds).to_bits(), Ordering::Relaxed);
        }
        result
    }

    /// Keeps `png` for `--url-ttl` under a new unguessable name; the URL path to it. At most
    /// `max_files` pictures and [`KEPT_BYTES`] are kept: the oldest go first.
    pub fn store_file(&self, png: Vec<u8>) -> String {
        let mut files = lock(&self.files);
        let ttl = self.config.url_ttl;
        files.retain(|_, (made, _)| made.elapsed() < ttl);
        let total = |files: &HashMap<String, (Instant, Arc<Vec<u8>>)>| files.values().map(|(_, p)| p.len()).sum::<usize>();
        while !files.is_empty() && (files.len() >= self.config.max_files || total(&files).saturating_add(png.len()) > KEPT_BYTES) {
            let Some(oldest) = files.iter().min_by_key(|(_, (t, _))| *t).map(|(k, _)| k.clone()) else { break };
            files.remove(&oldest);
        }
        let name = format!("{}.png", new_id("img"));
        files.insert(name.clone(), (Instant::now(), Arc::new(png)));
        format!("/v1/images/files/{name}")
    }
}

/// Cancels a job that is still waiting or running when the request waiting for it goes away.
struct CancelOnDrop {
    job: Arc<Job>,
    queue: Arc<Queue>,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.job.status().is_finished() {
            self.job.cancel();
            if self.queue.remove(&self.job.id) {
                self.job.finish(Err(ApiError::cancelled(&self.job.id)));
            }
        }
    }
}

/// `prefix-` and 128 random bits in hex: job ids and file names no one can guess.
pub fn new_id(prefix: &str) -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}-{hex}")
}

