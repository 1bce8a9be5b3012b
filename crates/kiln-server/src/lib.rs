//! # kiln-server
//!
//! `kiln serve`: kiln's pipelines over HTTP, for apps, bots, front-ends and orchestrators.
//!
//! * [`engine`]: the worker thread that owns the loaded models and runs one job at a time —
//!   the same code path as `kiln generate`, so a served PNG is byte for byte the file `kiln
//!   generate` writes for the same request.
//! * [`jobs`]: jobs, the bounded queue in front of the worker (429 when full), finished jobs kept
//!   for a while.
//! * [`api`]: the routes — OpenAI's Images API, AUTOMATIC1111's `/sdapi/v1/*`, asynchronous jobs
//!   with server-sent events, health, readiness and Prometheus metrics — and their layers
//!   (request ids and logs, the API key, body limits).
//! * [`metrics`], [`preview`] (latent previews for `/sdapi/v1/progress`), [`samplers`] (A1111's
//!   sampler names), [`error`].
//! * [`serve`]: binds, loads and warms up the models (`/readyz` says 503 until then), serves, and
//!   on SIGTERM/SIGINT turns `/readyz` to 503, stops taking requests after a grace period,
//!   finishes those queued and running, and returns.
//!
//! Deployment (Docker, Kubernetes, haproxy in front of replicas) is in `deploy/` and
//! docs/serving.md.

pub mod api;
pub mod config;
pub mod engine;
pub mod error;
pub mod jobs;
pub mod metrics;
pub mod preview;
pub mod samplers;
mod server;
pub mod state;
pub mod work;

pub use config::ServeConfig;
pub use engine::ModelSpec;
pub use error::ApiError;
pub use server::{serve, Served};

/// Structured logs on stderr through `tracing` (level from `RUST_LOG`, default `info`; the
/// pipeline's `log` records included), each request's lines tagged with its id.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).try_init();
}
