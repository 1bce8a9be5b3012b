//! The worker: one thread that owns the loaded models and runs the queue's jobs one at a time,
//! as `kiln generate` runs one command line, so a served picture is `kiln generate`'s picture —
//! the same PNG bytes, the same parameters text.
//!
//! On the CPU one run already uses every core (burn-flex hands each op to rayon's pool), so a
//! second worker would only split them; on a GPU one run at a time keeps memory bounded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use burn::tensor::{DType, Device};
use kiln_pipeline::infotext::{generation_params, RunRecord};
use kiln_pipeline::png::{encode_png, PARAMETERS_KEY};
use kiln_pipeline::{resolve, GenerateOptions, HubConfig, LoadOptions, Pipeline, PipelineError, PipelineKind, ResolveOptions, StableDiffusion, Task};

use crate::error::ApiError;
use crate::jobs::{Job, JobStatus, Latents, Queue};
use crate::metrics::Metrics;
use crate::work::{GenImage, GenOutput};

/// One served model: `--model [NAME=]PATH|HUB_ID`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// The name clients use (`model`, `sd_model_checkpoint`): NAME, else the file's stem or the
    /// folder's name / Hub id.
    pub name: String,
    pub source: String,
}

impl ModelSpec {
    /// `[NAME=]PATH|HUB_ID`.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let (name, source) = match spec.split_once('=') {
            Some((name, source)) if !name.is_empty() && !name.contains('/') && !Path::new(spec).exists() => (Some(name), source),
            _ => (None, spec),
        };
        if source.is_empty() {
            return Err(format!("--model {spec:?}: give a model folder, a single-file checkpoint or a Hub id"));
        }
        let name = match name {
            Some(n) => n.to_string(),
            None => {
                let path = Path::new(source);
                if path.is_file() {
                    path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| source.to_string())
                } else if path.is_dir() {
                    path.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| source.to_string())
                } else {
                    source.to_string()
                }
            }
        };
        Ok(ModelSpec { name, source: source.to_string() })
    }
}

/// A model loaded on the worker, with the LoRAs merged into it now.
struct Loaded {
    spec: ModelSpec,
    /// Its name in the parameters text: a single file's stem, a folder's name (as `kiln generate`).
    record_name: String,
    pipe: Pipeline,
    loras: Vec<(PathBuf, f64)>,
    lora_hashes: Vec<String>,
}

/// Loads `spec` as `kiln generate --model` does (a single file with its family's published
/// configs, a folder of any family, a Hub id through the cache).
fn load(spec: &ModelSpec, device: &Device, dtype: DType, vae_dtype: DType) -> Result<(Pipeline, String), PipelineError> {
    let path = Path::new(&spec.source);
    let (mut pipe, name) = if path.is_file() {
        // a single file with its family's published configs
        let pipe = StableDiffusion::load(path, &LoadOptions::new(device).with_dtype(dtype))?;
        (Pipeline::StableDiffusion(Box::new(pipe)), path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| spec.source.clone()))
    } else {
        let folder = resolve(&spec.source, &ResolveOptions::default(), &HubConfig::from_env())?;
        (Pipeline::load_folder(&folder, device, dtype)?, folder.name.clone())
    };
    // (the flow families' VAE stays f32, as in kiln generate)
    if let (Pipeline::StableDiffusion(sd), true) = (&mut pipe, vae_dtype != DType::F32) {
        sd.set_vae_dtype(vae_dtype);
    }
    Ok((pipe, name))
}

/// What the worker tells the server while it starts.
pub enum Startup {
    /// A model loaded and warmed up, in `seconds`: its pipeline, its default `(height, width)`,
    /// whether its text encoders take A1111's 77-token chunks.
    Loaded { name: String, seconds: f64, kind: PipelineKind, default_size: (usize, usize), a1111_chunks: bool },
    Ready,
    Failed(String),
}

/// The worker thread's body: loads and warms up every model (reporting to `startup`), then runs
/// jobs from `queue` until it is closed and empty.
pub fn run_worker(
    specs: Vec<ModelSpec>,
    device: Device,
    dtypes: (DType, DType),
    queue: Arc<Queue>,
    metrics: Arc<Metrics>,
    startup: std::sync::mpsc::Sender<Startup>,
) {
    let mut models = BTreeMap::new();
    for spec in specs {
        let start = Instant::now();
        let loaded = load(&spec, &device, dtypes.0, dtypes.1).and_then(|(pipe, record_name)| {
            warm_up(&pipe)?;
            Ok(Loaded { spec: spec.clone(), record_name, pipe, loras: Vec::new(), lora_hashes: Vec::new() })
        });
        match loaded {
            Ok(model) => {
                let seconds = start.elapsed().as_secs_f64();
                metrics.model_load_seconds(&spec.name, seconds);
                // A1111's prompt syntax: SD-family text encoders of 77 tokens (not SD 3 / FLUX)
                let a1111_chunks = match &model.pipe {
                    Pipeline::StableDiffusion(pipe) => pipe.text_encoder.max_position_embeddings() >= 77 && pipe.text_encoder_2.as_ref().is_none_or(|t| t.max_position_embeddings() >= 77),
                    _ => false,
                };
                let _ = startup.send(Startup::Loaded { name: spec.name.clone(), seconds, kind: model.pipe.kind(), default_size: model.pipe.default_size(), a1111_chunks });
                models.insert(spec.name.clone(), model);
            }
            Err(e) => {
                let _ = startup.send(Startup::Failed(format!("--model {}: {e}", spec.source)));
                return;
            }
        }
    }
    let _ = startup.send(Startup::Ready);
    while let Some(job) = queue.pop() {
        metrics.in_flight.set(1);
        let result = run_job(&mut models, &job, &metrics).map(Arc::new);
        if let Err(e) = &result {
            tracing::warn!(job = %job.id, error = %e, "job did not finish");
        }
        job.finish(result);
        metrics.in_flight.set(0);
    }
}

/// One step, one image at a small size (8 latents a side, which every family takes): the first
/// run's one-time costs (kernel selection, allocator growth) are paid before the server says it
/// is ready.
fn warm_up(pipe: &Pipeline) -> Result<(), PipelineError> {
    let f = pipe.vae_scale_factor();
    let options = GenerateOptions {
        prompt: "warm-up".into(),
        num_inference_steps: 1,
        width: Some(f * 8),
        height: Some(f * 8),
        ..GenerateOptions::default()
    };
    pipe.generate(&options, Task::Txt2Img, &mut |_, _| true).map(|_| ())
}

fn run_job(models: &mut BTreeMap<String, Loaded>, job: &Job, metrics: &Metrics) -> Result<GenOutput, ApiError> {
    let request = job.take_request().ok_or_else(|| ApiError::internal(format!("job {} has no request", job.id)))?;
    if job.cancel_requested() {
        return Err(ApiError::cancelled(&job.id));
    }
    let model = models.get_mut(&request.model).ok_or_else(|| ApiError::invalid("model", format!("model {:?} is not served here", request.model)).with_code("unknown_model"))?;
    if model.loras != request.loras {
        model.pipe.unload_loras();
        model.loras.clear();
        model.lora_hashes.clear();
        for (path, scale) in &request.loras {
            let report = model.pipe.load_lora(path, *scale).map_err(|e| {
                model.pipe.unload_loras();
                ApiError::invalid("loras", e.to_string())
            })?;
            let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            model.lora_hashes.push(format!("{name}: {}", report.hash));
        }
        model.loras = request.loras.clone();
    }
    let task = match (&request.init_image, &request.mask) {
        (None, _) => Task::Txt2Img,
        (Some(image), None) => Task::Img2Img { image, strength: request.strength },
        (Some(image), Some(mask)) => Task::Inpaint { image, mask, strength: request.strength },
    };
    let start = Instant::now();
    let runs: Vec<GenerateOptions> = if request.seed_per_image {
        (0..request.options.num_images_per_prompt as u64)
            .map(|i| GenerateOptions { seed: request.options.seed.wrapping_add(i), num_images_per_prompt: 1, ..request.options.clone() })
            .collect()
    } else {
        vec![request.options.clone()]
    };
    let mut out = Vec::new();
    for options in &runs {
        let mut last = Instant::now();
        job.set_status(JobStatus::Running { step: 0, total: options.num_inference_steps });
        let images = model.pipe.generate(options, task, &mut |info, latents| {
            metrics.step_seconds.observe(last.elapsed().as_secs_f64());
            last = Instant::now();
            let dims = latents.dims();
            if let Ok(values) = latents.clone().into_data().try_into_vec_as::<f32>() {
                job.set_latents(Latents { shape: dims, values });
            }
            job.set_status(JobStatus::Running { step: info.step + 1, total: info.total });
            !job.cancel_requested()
        });
        let images = images.map_err(|e| ApiError::from_pipeline(&e, &job.id))?;
        let record = RunRecord { prompt: request.shown_prompt.clone(), model: model.record_name.clone(), ti_hashes: Vec::new(), lora_hashes: model.lora_hashes.clone() };
        let params = generation_params(model.pipe.scheduler_config(), options, &task, &record, &images);
        for (image, params) in images.iter().zip(params) {
            let infotext = params.to_infotext();
            let png = encode_png(image, &[(PARAMETERS_KEY, &infotext)]).map_err(|e| ApiError::internal(format!("PNG encoding failed: {e}")))?;
            out.push(GenImage { png, infotext });
        }
    }
    let images = out;
    metrics.images_generated.inc_by(images.len() as u64);
    Ok(GenOutput { images, model: model.spec.name.clone(), seconds: start.elapsed().as_secs_f64() })
}
