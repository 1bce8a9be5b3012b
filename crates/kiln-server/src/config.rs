//! [`ServeConfig`]: how `kiln serve` runs (its flags).

use std::path::PathBuf;
use std::time::Duration;

use crate::engine::ModelSpec;

/// How `kiln serve` runs (its flags).
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The served models; the first is the default (A1111's `sd_model_checkpoint`).
    pub models: Vec<ModelSpec>,
    pub host: String,
    pub port: u16,
    /// The most jobs that wait for the worker (the running one not counted).
    pub queue_size: usize,
    /// `Authorization: Bearer KEY` on every API route (not `/healthz`, `/readyz`, `/metrics`,
    /// nor the image files of `response_format: "url"`, whose names are unguessable).
    pub api_key: Option<String>,
    /// The largest width or height, in pixels.
    pub max_size: usize,
    pub max_steps: usize,
    /// Images per request.
    pub max_images: usize,
    pub max_body_bytes: usize,
    /// How long a synchronous request waits for its job (queue and run) before 504.
    pub request_timeout: Duration,
    /// How long the pictures of `response_format: "url"` stay, and how many.
    pub url_ttl: Duration,
    pub max_files: usize,
    /// How long finished `/v1/jobs` stay readable, and how many.
    pub job_retention: Duration,
    pub max_finished_jobs: usize,
    /// Where `loras` and `<lora:NAME:W>` find NAME.
    pub lora_dir: Option<PathBuf>,
    /// The scheme and host of the `url`s the OpenAI routes return (default: `http://` + the
    /// request's Host).
    pub public_url: Option<String>,
    /// After SIGTERM, how long `/readyz` answers 503 while requests are still served, before the
    /// listener closes: the time a load balancer needs to see the replica leave.
    pub drain_grace: Duration,
    /// After SIGTERM, how long queued and running work may take before the server gives up.
    pub drain_timeout: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            models: Vec::new(),
            host: "127.0.0.1".into(),
            port: 7860,
            queue_size: 16,
            api_key: None,
            max_size: 2048,
            max_steps: 150,
            max_images: 8,
            max_body_bytes: 32 << 20,
            request_timeout: Duration::from_secs(600),
            url_ttl: Duration::from_secs(3600),
            max_files: 1024,
            job_retention: Duration::from_secs(600),
            max_finished_jobs: 256,
            lora_dir: None,
            public_url: None,
            drain_grace: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(300),
        }
    }
}
