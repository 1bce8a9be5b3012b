//! `kiln serve`: flags → [`ServeConfig`] → [`kiln_server::serve`].

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use kiln_server::{ModelSpec, ServeConfig, Served};

use crate::device::DeviceArgs;
use crate::CliError;

#[derive(Args)]
#[command(after_help = "\
Routes:
  OpenAI Images API
    POST /v1/images/generations    text to image (model, prompt, n, size \"WxH\", response_format url|b64_json;
                                   kiln's fields: negative_prompt, steps, guidance_scale, seed, scheduler,
                                   karras, clip_skip, loras, prompt_syntax)
    POST /v1/images/edits          multipart: image, optional mask (transparent = repaint): img2img / inpainting
    GET  /v1/models                the served models
    GET  /v1/images/files/NAME     the pictures of response_format \"url\", kept for --url-ttl
  AUTOMATIC1111 API
    POST /sdapi/v1/txt2img         A1111's request and response shapes, prompt syntax and sampler names
    POST /sdapi/v1/img2img         init_images, mask, denoising_strength
    GET  /sdapi/v1/sd-models       GET /sdapi/v1/samplers       GET /sdapi/v1/schedulers
    GET|POST /sdapi/v1/options     sd_model_checkpoint switches among the served models
    GET  /sdapi/v1/progress        progress, ETA, state and a preview of the running job's latents
    POST /sdapi/v1/interrupt       stops the running job at its next step
  Jobs
    POST /v1/jobs                  the body of /v1/images/generations -> 202 {id, queue_position}
    GET  /v1/jobs/ID               status, progress, the images when done
    DELETE /v1/jobs/ID             cancel (leaves the queue, or stops at the next step)
    GET  /v1/jobs/ID/events        server-sent events: queued, step, done | error | cancelled
  Operations
    GET  /healthz                  alive
    GET  /readyz                   200 when the models are loaded and warm; 503 while loading or draining
    GET  /metrics                  Prometheus: queue depth, in flight, requests, latencies, images, load times

A full queue answers 429 with Retry-After. SIGTERM/SIGINT: /readyz answers 503 while requests are still served for
--drain-grace, then the listener closes; queued and running requests finish, then kiln exits 0 (a second signal:
at once, 130). Logs: RUST_LOG (default info). docs/serving.md has the
details, and deploy/ a Dockerfile, Kubernetes manifests and an haproxy config.")]
pub struct ServeArgs {
    /// A model to serve: a diffusers folder, a single-file checkpoint or a Hub id, optionally
    /// named (NAME=…; default: the file's stem, the folder's name or the Hub id). Repeatable; all
    /// are loaded at start, the first is the default.
    #[arg(long, value_name = "[NAME=]PATH|HUB_ID", required = true)]
    model: Vec<String>,
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1")]
    host: String,
    /// 0 picks a free port (printed).
    #[arg(long, value_name = "PORT", default_value_t = 7860)]
    port: u16,
    #[command(flatten)]
    device: DeviceArgs,
    /// How many requests may wait for the worker (the running one not counted); more get 429.
    #[arg(long, value_name = "N", default_value_t = 16)]
    queue_size: usize,
    /// Require `Authorization: Bearer KEY` on the API routes; default: the KILN_API_KEY
    /// environment variable (which keeps the key out of the process list), else no key.
    #[arg(long, value_name = "KEY")]
    api_key: Option<String>,
    /// The largest width or height a request may ask for (pixels).
    #[arg(long, value_name = "PIXELS", default_value_t = 2048)]
    max_size: usize,
    #[arg(long, value_name = "N", default_value_t = 150)]
    max_steps: usize,
    /// Images per request.
    #[arg(long, value_name = "N", default_value_t = 8)]
    max_images: usize,
    /// The largest request body (JSON with base64 images, multipart uploads).
    #[arg(long, value_name = "MB", default_value_t = 32)]
    max_body_mb: usize,
    /// How long a synchronous request may wait for its image (queue and run), in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 600)]
    request_timeout: u64,
    /// How long the pictures of response_format "url" are kept, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 3600)]
    url_ttl: u64,
    /// How long finished /v1/jobs stay readable, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 600)]
    job_retention: u64,
    /// After SIGTERM/SIGINT, how long /readyz answers 503 while requests are still served, before
    /// the listener closes (what a load balancer's health check needs to see the replica leave),
    /// in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 5)]
    drain_grace: u64,
    /// After SIGTERM, how long the queued and running requests may take, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    drain_timeout: u64,
    /// Where `loras` and `<lora:NAME:W>` find NAME (.safetensors, .pt, .ckpt); none: no LoRAs.
    #[arg(long, value_name = "DIR")]
    lora_dir: Option<PathBuf>,
    /// The scheme and host of the URLs response_format "url" returns (default: http:// and the
    /// request's Host header), e.g. https://images.example.com behind a proxy.
    #[arg(long, value_name = "URL")]
    public_url: Option<String>,
}

pub fn serve(a: ServeArgs) -> Result<(), CliError> {
    let models = a.model.iter().map(|s| ModelSpec::parse(s)).collect::<Result<Vec<_>, _>>()?;
    for (i, m) in models.iter().enumerate() {
        if models[..i].iter().any(|o| o.name == m.name) {
            return Err(format!("--model: two models are named {:?}; name them with NAME=PATH", m.name).into());
        }
    }
    let positive = |flag: &str, v: usize| if v == 0 { Err(format!("{flag} must be at least 1")) } else { Ok(v) };
    positive("--queue-size", a.queue_size)?;
    positive("--max-steps", a.max_steps)?;
    positive("--max-images", a.max_images)?;
    positive("--max-body-mb", a.max_body_mb)?;
    if a.max_size < 8 {
        return Err(format!("--max-size must be at least 8 pixels, got {}", a.max_size).into());
    }
    let max_body_bytes = a.max_body_mb.checked_mul(1 << 20).ok_or_else(|| format!("--max-body-mb {} is too large", a.max_body_mb))?;
    if let Some(dir) = &a.lora_dir {
        if !dir.is_dir() {
            return Err(format!("--lora-dir {}: not a folder", dir.display()).into());
        }
    }
    let api_key = a.api_key.clone().or_else(|| std::env::var("KILN_API_KEY").ok());
    if api_key.as_deref().is_some_and(|k| k.trim().is_empty()) {
        return Err("--api-key / KILN_API_KEY is empty; give a key or leave it unset".into());
    }
    let (device, dtype, vae_dtype) = a.device.resolve()?;
    let config = ServeConfig {
        models,
        host: a.host,
        port: a.port,
        queue_size: a.queue_size,
        api_key,
        max_size: a.max_size,
        max_steps: a.max_steps,
        max_images: a.max_images,
        max_body_bytes,
        request_timeout: Duration::from_secs(a.request_timeout),
        url_ttl: Duration::from_secs(a.url_ttl),
        job_retention: Duration::from_secs(a.job_retention),
        drain_grace: Duration::from_secs(a.drain_grace),
        drain_timeout: Duration::from_secs(a.drain_timeout),
        lora_dir: a.lora_dir,
        public_url: a.public_url,
        ..ServeConfig::default()
    };
    crate::interrupt::hand_over();
    kiln_server::init_logging();
    kiln_server::serve(config, device, (dtype, vae_dtype), |event| match event {
        Served::Listening(addr) => eprintln!("listening on http://{addr} (loading the models; /readyz says when they are ready)"),
        Served::Loaded { name, seconds } => eprintln!("loaded {name} in {seconds:.1} s (with a warm-up run)"),
        Served::Ready => eprintln!("ready"),
        Served::Draining => eprintln!("draining: finishing the queued and running requests"),
    })?;
    eprintln!("stopped");
    Ok(())
}
