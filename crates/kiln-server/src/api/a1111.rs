//! AUTOMATIC1111's web UI API (`modules/api/api.py`, shapes from `modules/api/models.py`):
//! `POST /sdapi/v1/txt2img`, `POST /sdapi/v1/img2img`, `GET /sdapi/v1/sd-models`,
//! `GET /sdapi/v1/samplers`, `GET /sdapi/v1/schedulers`, `GET|POST /sdapi/v1/options`,
//! `GET /sdapi/v1/progress`, `POST /sdapi/v1/interrupt`.
//!
//! Requests are read as A1111 reads them: its defaults (50 steps, CFG 7, 512×512, `Euler` when no
//! sampler is named, seed -1 = random), its prompt syntax (weights, `BREAK`, `<lora:NAME:W>` from
//! `--lora-dir`), one seed per image (`seed + i`). The fields kiln does not act on — hires fix,
//! face restoration, scripts, `alwayson_scripts`, … — are accepted, as clients send them by
//! default, and when set to anything but A1111's default each is named in `info`'s `warnings`.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::api::request::{check_count, check_range, decode_base64, read_body, read_init, to_request, Fields, Params};
use crate::api::respond::A1111Error;
use crate::state::{AppState, ServedModel};
use crate::work::{GenOutput, GenRequest};
use crate::error::ApiError;
use crate::jobs::{lock, JobStatus};
use crate::samplers::{resolve, A1111_SAMPLERS, A1111_SCHEDULERS};

/// The request fields txt2img and img2img share, with A1111's defaults: `StableDiffusionProcessing`'s
/// dataclass fields minus `API_NOT_ALLOWED` (`modules/processing.py`; `denoising_strength` as both
/// subclasses override it) and the `additional_fields` both API models add
/// (`modules/api/models.py`).
const COMMON_FIELDS: &[(&str, &str)] = &[
    ("prompt", "\"\""), ("negative_prompt", "\"\""), ("styles", "null"), ("seed", "-1"), ("subseed", "-1"),
    ("subseed_strength", "0"), ("seed_resize_from_h", "-1"), ("seed_resize_from_w", "-1"), ("sampler_name", "null"),
    ("scheduler", "null"), ("batch_size", "1"), ("n_iter", "1"), ("steps", "50"), ("cfg_scale", "7.0"), ("width", "512"),
    ("height", "512"), ("restore_faces", "null"), ("tiling", "null"), ("do_not_save_samples", "false"),
    ("do_not_save_grid", "false"), ("eta", "null"), ("denoising_strength", "0.75"), ("s_min_uncond", "null"),
    ("s_churn", "null"), ("s_tmax", "null"), ("s_tmin", "null"), ("s_noise", "null"), ("override_settings", "null"),
    ("override_settings_restore_afterwards", "true"), ("refiner_checkpoint", "null"), ("refiner_switch_at", "null"),
    ("disable_extra_networks", "false"), ("comments", "null"), ("sampler_index", "\"Euler\""), ("script_name", "null"),
    ("script_args", "[]"), ("send_images", "true"), ("save_images", "false"), ("alwayson_scripts", "{}"),
    ("force_task_id", "null"), ("infotext", "null"),
];

/// `StableDiffusionProcessingTxt2Img`'s own fields (the hires fix).
const TXT2IMG_FIELDS: &[(&str, &str)] = &[
    ("enable_hr", "false"), ("firstphase_width", "0"), ("firstphase_height", "0"), ("hr_scale", "2.0"),
    ("hr_upscaler", "null"), ("hr_second_pass_steps", "0"), ("hr_resize_x", "0"), ("hr_resize_y", "0"),
    ("hr_checkpoint_name", "null"), ("hr_sampler_name", "null"), ("hr_prompt", "\"\""), ("hr_negative_prompt", "\"\""),
];

/// `StableDiffusionProcessingImg2Img`'s own fields, and the API's `include_init_images`.
const IMG2IMG_FIELDS: &[(&str, &str)] = &[
    ("init_images", "null"), ("resize_mode", "0"), ("image_cfg_scale", "null"), ("mask", "null"), ("mask_blur_x", "4"),
    ("mask_blur_y", "4"), ("mask_blur", "null"), ("inpainting_fill", "0"), ("inpaint_full_res", "true"),
    ("inpaint_full_res_padding", "0"), ("inpainting_mask_invert", "0"), ("initial_noise_multiplier", "null"),
    ("latent_mask", "null"), ("include_init_images", "false"),
];

/// The API fields of txt2img or img2img with their defaults.
pub fn request_fields(img2img: bool) -> Vec<(&'static str, &'static str)> {
    let own = if img2img { IMG2IMG_FIELDS } else { TXT2IMG_FIELDS };
    COMMON_FIELDS.iter().chain(own).copied().collect()
}

/// The fields kiln reads; the others are accepted and, when not at their default, warned about.
const USED: &[&str] = &[
    "prompt", "negative_prompt", "seed", "sampler_name", "sampler_index", "scheduler", "batch_size", "n_iter", "steps",
    "cfg_scale", "width", "height", "eta", "denoising_strength", "override_settings", "send_images", "init_images", "mask",
    "inpainting_mask_invert", "override_settings_restore_afterwards", "do_not_save_samples", "do_not_save_grid",
    "include_init_images",
];

/// The request merged over the defaults (what A1111 echoes as `parameters`), and the warnings.
fn merge(fields: &[(&'static str, &'static str)], body: &Map<String, Value>) -> (Map<String, Value>, Vec<String>) {
    let mut merged = Map::new();
    let mut warnings = Vec::new();
    for (key, default) in fields {
        let default: Value = serde_json::from_str(default).unwrap_or(Value::Null);
        let value = body.get(*key).cloned().unwrap_or_else(|| default.clone());
        if !USED.contains(key) && value != default && !(value.is_null() || value == json!(false) && default.is_null()) {
            warnings.push(format!("{key} is not supported by kiln and was ignored"));
        }
        merged.insert(key.to_string(), value);
    }
    for (key, value) in body {
        if !fields.iter().any(|(k, _)| k == key) {
            warnings.push(format!("unknown field {key} was ignored"));
            merged.insert(key.clone(), value.clone());
        }
    }
    (merged, warnings)
}

/// The request's model: `override_settings.sd_model_checkpoint`, else the current one.
fn model_for(state: &AppState, f: &Fields) -> Result<(ServedModel, Option<usize>), ApiError> {
    let overrides = f.get("override_settings").and_then(Value::as_object);
    let checkpoint = overrides.and_then(|o| o.get("sd_model_checkpoint")).and_then(Value::as_str).map(strip_title);
    let model = state.pick_model(checkpoint)?;
    // A1111's "Clip skip" counts the last layer as 1; diffusers' clip_skip counts the layers skipped
    let clip_skip = match overrides.and_then(|o| o.get("CLIP_stop_at_last_layers")) {
        None | Some(Value::Null) => None,
        Some(v) => {
            let n = v.as_u64().filter(|n| (1..=12).contains(n)).ok_or_else(|| ApiError::invalid("override_settings", format!("CLIP_stop_at_last_layers must be an integer from 1 to 12, got {v}")))?;
            Some(n as usize - 1).filter(|&c| c > 0)
        }
    };
    Ok((model, clip_skip))
}

/// A1111's titles are `name [hash]`: the name.
fn strip_title(title: &str) -> &str {
    match title.rsplit_once(" [") {
        Some((name, rest)) if rest.ends_with(']') => name,
        _ => title,
    }
}

/// The fields txt2img and img2img share → [`Params`]; the seed (random for -1).
fn a1111_params(state: &AppState, f: &Fields) -> Result<(Params, i64), ApiError> {
    let (model, clip_skip) = model_for(state, f)?;
    let a1111_chunks = model.a1111_chunks;
    let mut p = Params::new(model, f.str("prompt")?.unwrap_or_default().to_string());
    if a1111_chunks {
        p.syntax = kiln_pipeline::PromptSyntax::A1111;
    }
    p.negative_prompt = f.str("negative_prompt")?.filter(|s| !s.is_empty()).map(str::to_string);
    p.steps = check_count("steps", f.i64("steps")?.unwrap_or(50), state.config.max_steps, "--max-steps")?;
    p.guidance_scale = check_range("cfg_scale", f.f64("cfg_scale")?.unwrap_or(7.0), 0.0, 100.0)?;
    let batch = check_count("batch_size", f.i64("batch_size")?.unwrap_or(1), state.config.max_images, "--max-images")?;
    let iters = check_count("n_iter", f.i64("n_iter")?.unwrap_or(1), state.config.max_images, "--max-images")?;
    // (each is at most --max-images, itself any usize: the product is checked)
    p.n = batch.checked_mul(iters).filter(|&n| n <= state.config.max_images).ok_or_else(|| {
        ApiError::invalid("n_iter", format!("batch_size × n_iter must be at most {} (--max-images), got {batch} × {iters}", state.config.max_images))
    })?;
    let sampler = f.str("sampler_name")?.filter(|s| !s.is_empty()).or(f.str("sampler_index")?).unwrap_or("Euler");
    p.sampler = Some(resolve(sampler, f.str("scheduler")?).map_err(|m| ApiError::invalid("sampler_name", m))?);
    p.clip_skip = clip_skip;
    if let Some(eta) = f.f64("eta")? {
        p.eta = eta;
    }
    let seed = f.i64("seed")?.unwrap_or(-1);
    p.seed = match seed {
        // processing.py get_fixed_seed: random.randrange(4294967294)
        -1 => rand::random_range(0..4_294_967_294u64),
        s if s >= 0 => s as u64,
        s => return Err(ApiError::invalid("seed", format!("seed must be -1 (random) or a non-negative integer, got {s}"))),
    };
    let size = (f.i64("width")?.unwrap_or(512), f.i64("height")?.unwrap_or(512));
    let side = |param: &str, v: i64| usize::try_from(v).map_err(|_| ApiError::invalid(param, format!("{param} must be a positive multiple of 8, got {v}")));
    let (w, h) = (side("width", size.0)?, side("height", size.1)?);
    crate::api::request::check_side("width", "width", w, state.config.max_size)?;
    crate::api::request::check_side("height", "height", h, state.config.max_size)?;
    p.size = Some((w, h));
    Ok((p, seed))
}

/// `info`: `Processed.js()`'s fields, with `infotexts` the PNGs' parameters text, and kiln's
/// `warnings`.
fn info(p: &Params, fields: &Map<String, Value>, out: &GenOutput, seed: u64, warnings: &[String], strength: Option<f64>) -> String {
    let n = out.images.len();
    let seeds: Vec<u64> = (0..n as u64).map(|i| seed.wrapping_add(i)).collect();
    let sampler = fields.get("sampler_name").filter(|v| !v.is_null()).or(fields.get("sampler_index")).cloned().unwrap_or(Value::Null);
    json!({
        "prompt": p.prompt,
        "all_prompts": vec![p.prompt.clone(); n],
        "negative_prompt": p.negative_prompt.clone().unwrap_or_default(),
        "all_negative_prompts": vec![p.negative_prompt.clone().unwrap_or_default(); n],
        "seed": seed,
        "all_seeds": seeds,
        "subseed": -1,
        "all_subseeds": vec![-1; n],
        "subseed_strength": 0,
        "width": p.size.map(|s| s.0),
        "height": p.size.map(|s| s.1),
        "sampler_name": sampler,
        "cfg_scale": p.guidance_scale,
        "steps": p.steps,
        "batch_size": fields.get("batch_size").cloned().unwrap_or(json!(1)),
        "restore_faces": false,
        "face_restoration_model": null,
        "sd_model_name": out.model,
        "sd_model_hash": null,
        "sd_vae_name": null,
        "sd_vae_hash": null,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": strength,
        "extra_generation_params": {},
        "index_of_first_image": 0,
        "infotexts": out.images.iter().map(|i| i.infotext.clone()).collect::<Vec<_>>(),
        "styles": [],
        "job_timestamp": chrono_like_timestamp(),
        "clip_skip": p.clip_skip.map(|c| c + 1).unwrap_or(1),
        "is_using_inpainting_conditioning": p.mask.is_some(),
        "warnings": warnings,
    })
    .to_string()
}

/// A1111's `job_timestamp`: `%Y%m%d%H%M%S` (UTC here).
fn chrono_like_timestamp() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = (secs / 86400, secs % 86400);
    // civil from days (Howard Hinnant's algorithm)
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}{m:02}{d:02}{:02}{:02}{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// An A1111 request, read and checked: the job's request, and what its answer echoes.
pub struct A1111Request {
    pub request: GenRequest,
    pub params: Params,
    /// The request over A1111's defaults (`parameters`).
    pub merged: Map<String, Value>,
    pub warnings: Vec<String>,
    pub strength: Option<f64>,
    pub send_images: bool,
}

/// Reads a txt2img (or img2img) body as the route does, up to the job it would queue.
pub fn parse_request(state: &AppState, body: &[u8], img2img: bool) -> Result<A1111Request, ApiError> {
    let f = Fields::parse(body)?;
    let (merged, mut warnings) = merge(&request_fields(img2img), f.map());
    let (mut p, _) = a1111_params(state, &f)?;
    if p.model.kind.is_flow_matching() {
        warnings.push(format!("{} is a {} model: the prompt was read as plain text, not with A1111's syntax", p.model.name, p.model.kind));
    } else if !p.model.a1111_chunks {
        warnings.push(format!("{}'s text encoder takes fewer than 77 tokens: the prompt was read as plain text, not with A1111's syntax", p.model.name));
    }
    let mut strength = None;
    if img2img {
        let images = match f.get("init_images") {
            Some(Value::Array(images)) if !images.is_empty() => images,
            _ => return Err(ApiError::invalid("init_images", "init_images must be a list of one or more base64 images")),
        };
        if images.len() > 1 {
            warnings.push(format!("init_images holds {} images; kiln uses the first", images.len()));
        }
        let first = images[0].as_str().ok_or_else(|| ApiError::invalid("init_images", "init_images must hold base64 strings"))?;
        let image = decode_base64("init_images", first)?;
        let mask = f.str("mask")?.map(|m| decode_base64("mask", m)).transpose()?;
        let (init, mut grey) = read_init(state, &image, mask.as_deref(), p.size, "init_images", "mask")?;
        if f.i64("inpainting_mask_invert")?.unwrap_or(0) == 1 {
            if let Some(m) = grey.as_mut() {
                image::imageops::invert(m);
            }
        }
        p.init_image = Some(init);
        p.mask = grey;
        let s = check_range("denoising_strength", f.f64("denoising_strength")?.unwrap_or(0.75), 0.0, 1.0)?;
        p.strength = Some(s);
        strength = Some(s);
    }
    let send_images = f.bool("send_images")?.unwrap_or(true);
    let mut request = to_request(state, p.clone())?;
    request.seed_per_image = true;
    Ok(A1111Request { request, params: p, merged, warnings, strength, send_images })
}

async fn generate(state: &Arc<AppState>, body: axum::body::Body, img2img: bool) -> Result<Response, A1111Error> {
    let body = read_body(body, state.config.max_body_bytes).await?;
    let A1111Request { request, params, merged, mut warnings, strength, send_images } = parse_request(state, &body, img2img)?;
    let seed = params.seed;
    for w in &warnings {
        tracing::warn!(warning = %w, "A1111 request field");
    }
    let job = state.submit(request)?;
    let out = match state.wait(&job).await {
        Ok(out) => out,
        // /sdapi/v1/interrupt: A1111 answers the interrupted request normally
        Err(e) if e.is_cancelled() => {
            warnings.push("interrupted: no image was finished".into());
            let empty = GenOutput { images: Vec::new(), model: params.model.name.clone(), seconds: 0.0 };
            let info = info(&params, &merged, &empty, seed, &warnings, strength);
            return Ok(Json(json!({"images": [], "parameters": merged, "info": info})).into_response());
        }
        Err(e) => return Err(e.into()),
    };
    let images: Vec<String> = if send_images { out.images.iter().map(|i| base64::engine::general_purpose::STANDARD.encode(&i.png)).collect() } else { Vec::new() };
    let info = info(&params, &merged, &out, seed, &warnings, strength);
    Ok(Json(json!({"images": images, "parameters": merged, "info": info})).into_response())
}

/// `POST /sdapi/v1/txt2img`.
pub async fn txt2img(State(state): State<Arc<AppState>>, body: axum::body::Body) -> Result<Response, A1111Error> {
    generate(&state, body, false).await
}

/// `POST /sdapi/v1/img2img`: `init_images` (base64; the output size is theirs and must equal
/// `width`×`height`), optional `mask` (white repaints; `inpainting_mask_invert: 1` flips it),
/// `denoising_strength`.
pub async fn img2img(State(state): State<Arc<AppState>>, body: axum::body::Body) -> Result<Response, A1111Error> {
    generate(&state, body, true).await
}

/// `GET /sdapi/v1/sd-models`: `SDModelItem`s.
pub async fn sd_models(State(state): State<Arc<AppState>>) -> Json<Value> {
    let items: Vec<Value> = state.models().iter().map(|m| json!({"title": m.name, "model_name": m.name, "hash": null, "sha256": null, "filename": m.source, "config": null})).collect();
    Json(Value::Array(items))
}

/// `GET /sdapi/v1/samplers`: `SamplerItem`s.
pub async fn samplers() -> Json<Value> {
    let items: Vec<Value> = A1111_SAMPLERS
        .iter()
        .map(|s| {
            let mut options = Map::new();
            if s.karras_by_default {
                options.insert("scheduler".into(), json!("karras"));
            }
            json!({"name": s.name, "aliases": s.aliases, "options": options})
        })
        .collect();
    Json(Value::Array(items))
}

/// `GET /sdapi/v1/schedulers`: `SchedulerItem`s.
pub async fn schedulers() -> Json<Value> {
    let items: Vec<Value> = A1111_SCHEDULERS.iter().map(|(name, label)| json!({"name": name, "label": label, "aliases": null, "default_rho": -1.0, "need_inner_model": false})).collect();
    Json(Value::Array(items))
}

/// `GET /sdapi/v1/options`: the options kiln has.
pub async fn get_options(State(state): State<Arc<AppState>>) -> Json<Value> {
    let current = lock(&state.current_model).clone();
    Json(json!({"sd_model_checkpoint": current, "CLIP_stop_at_last_layers": 1, "samples_format": "png", "sd_vae": "Automatic"}))
}

/// `POST /sdapi/v1/options`: `sd_model_checkpoint` switches the model of the requests that name
/// none (among the served models: kiln loads them all at start); other options are ignored.
pub async fn set_options(State(state): State<Arc<AppState>>, body: axum::body::Body) -> Result<Json<Value>, A1111Error> {
    let body = read_body(body, state.config.max_body_bytes).await?;
    let f = Fields::parse(&body)?;
    if let Some(name) = f.str("sd_model_checkpoint")? {
        let model = state.pick_model(Some(strip_title(name)))?;
        *lock(&state.current_model) = model.name;
    }
    for key in f.map().keys().filter(|k| *k != "sd_model_checkpoint") {
        tracing::warn!(option = %key, "A1111 option ignored");
    }
    Ok(Json(Value::Null))
}

#[derive(Deserialize)]
pub struct ProgressQuery {
    #[serde(default)]
    skip_current_image: bool,
}

/// `GET /sdapi/v1/progress`: `ProgressResponse` — the running job's progress, ETA, state and a
/// preview of its latents (A1111's cheap approximation).
pub async fn progress(State(state): State<Arc<AppState>>, Query(q): Query<ProgressQuery>) -> Json<Value> {
    let running = state.queue.running();
    let depth = state.queue.depth();
    let (mut progress, mut eta, mut step, mut steps, mut image) = (0.0, 0.0, 0, 0, None);
    let mut interrupted = false;
    if let Some(job) = &running {
        if let JobStatus::Running { step: s, total } = job.status() {
            step = s;
            steps = total;
            progress = if total > 0 { s as f64 / total as f64 } else { 0.0 };
            let elapsed = job.started_at().map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0);
            if progress > 0.0 {
                eta = elapsed / progress - elapsed;
            }
        }
        interrupted = job.cancel_requested();
        if !q.skip_current_image {
            let kind = state.model(&job.model).map_or(kiln_pipeline::PipelineKind::StableDiffusion, |m| m.kind);
            image = job.latents().and_then(|l| crate::preview::latents_to_rgb(&l, kind)).and_then(|img| {
                kiln_pipeline::png::encode_png(&img, &[]).ok().map(|png| base64::engine::general_purpose::STANDARD.encode(png))
            });
        }
    }
    let job_count = depth + usize::from(running.is_some());
    Json(json!({
        "progress": progress,
        "eta_relative": eta,
        "state": {
            "skipped": false,
            "interrupted": interrupted,
            "stopping_generation": false,
            "job": running.as_ref().map(|j| j.id.clone()).unwrap_or_default(),
            "job_count": job_count,
            "job_timestamp": "0",
            "job_no": 0,
            "sampling_step": step,
            "sampling_steps": steps,
        },
        "current_image": image,
        "textinfo": null,
    }))
}

/// `POST /sdapi/v1/interrupt`: stops the running job at its next step.
pub async fn interrupt(State(state): State<Arc<AppState>>) -> Json<Value> {
    if let Some(job) = state.queue.running() {
        job.cancel();
    }
    Json(json!({}))
}
