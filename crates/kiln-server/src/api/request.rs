//! What the APIs' request bodies have in common, checked once: sizes, steps, counts, samplers,
//! LoRAs, images in base64 — each refused with a 400 naming the field, the value and what is
//! allowed, before anything is queued.

use std::path::PathBuf;

use base64::Engine as _;
use image::{GrayImage, RgbImage};
use kiln::scheduler::SamplerName;
use kiln_pipeline::image_processor::{decode_image_bytes, image_size_of, pil_grayscale};
use kiln_pipeline::{GenerateOptions, PromptSyntax};

use crate::state::{AppState, ServedModel};
use crate::work::GenRequest;
use crate::error::ApiError;

/// A generation as the routes read it from their bodies.
#[derive(Debug, Clone)]
pub struct Params {
    pub model: ServedModel,
    pub prompt: String,
    pub negative_prompt: Option<String>,
    pub n: usize,
    /// `(width, height)`; `None` = the init image's, else the model's default.
    pub size: Option<(usize, usize)>,
    pub steps: usize,
    pub guidance_scale: f64,
    pub seed: u64,
    pub sampler: Option<(SamplerName, bool)>,
    pub clip_skip: Option<usize>,
    pub eta: f64,
    pub syntax: PromptSyntax,
    /// LoRA names in `--lora-dir` with their scales.
    pub loras: Vec<(String, f64)>,
    pub init_image: Option<RgbImage>,
    pub mask: Option<GrayImage>,
    pub strength: Option<f64>,
    /// SD 3 / FLUX: T5's `max_sequence_length` (`None`: the family's default).
    pub max_sequence_length: Option<usize>,
    /// SD 3: `prompt_3` and `negative_prompt_3` (T5's prompts); FLUX: `true_cfg_scale`.
    pub prompt_3: Option<String>,
    pub negative_prompt_3: Option<String>,
    pub true_cfg_scale: f64,
}

impl Params {
    /// kiln generate's defaults for `model` (its family's steps and guidance).
    pub fn new(model: ServedModel, prompt: String) -> Self {
        let (steps, guidance_scale) = kiln_pipeline::infotext::default_steps_and_guidance(model.kind);
        Params {
            model,
            prompt,
            negative_prompt: None,
            n: 1,
            size: None,
            steps,
            guidance_scale,
            seed: 0,
            sampler: None,
            clip_skip: None,
            eta: 0.0,
            syntax: PromptSyntax::Diffusers,
            loras: Vec::new(),
            init_image: None,
            mask: None,
            strength: None,
            max_sequence_length: None,
            prompt_3: None,
            negative_prompt_3: None,
            true_cfg_scale: 1.0,
        }
    }
}

/// `"WxH"` → `(width, height)`, each a positive multiple of 8 of at most `max`.
pub fn parse_size(param: &str, v: &str, max: usize) -> Result<(usize, usize), ApiError> {
    let bad = || ApiError::invalid(param, format!("{param} must be \"WIDTHxHEIGHT\" (e.g. \"512x512\"), got {v:?}")).with_code("invalid_size");
    let (w, h) = v.split_once(['x', 'X']).ok_or_else(bad)?;
    let (w, h): (usize, usize) = (w.trim().parse().map_err(|_| bad())?, h.trim().parse().map_err(|_| bad())?);
    check_side(param, "width", w, max)?;
    check_side(param, "height", h, max)?;
    Ok((w, h))
}

/// One side of an image: a positive multiple of 8, at most `max` (`--max-size`).
pub fn check_side(param: &str, what: &str, v: usize, max: usize) -> Result<(), ApiError> {
    if v == 0 || v % 8 != 0 || v > max {
        return Err(ApiError::invalid(param, format!("the {what} must be a positive multiple of 8 of at most {max} (--max-size), got {v}")).with_code("invalid_size"));
    }
    Ok(())
}

/// An integer field in `1..=max`.
pub fn check_count(param: &str, v: i64, max: usize, flag: &str) -> Result<usize, ApiError> {
    match usize::try_from(v) {
        Ok(n) if n >= 1 && n <= max => Ok(n),
        _ => Err(ApiError::invalid(param, format!("{param} must be between 1 and {max} ({flag}), got {v}"))),
    }
}

/// A finite number in `[lo, hi]`.
pub fn check_range(param: &str, v: f64, lo: f64, hi: f64) -> Result<f64, ApiError> {
    if !v.is_finite() || v < lo || v > hi {
        return Err(ApiError::invalid(param, format!("{param} must be a number in [{lo}, {hi}], got {v}")));
    }
    Ok(v)
}

/// The bytes of a base64 image (a `data:image/…;base64,` prefix allowed).
pub fn decode_base64(param: &str, v: &str) -> Result<Vec<u8>, ApiError> {
    let body = match v.split_once(";base64,") {
        Some((head, body)) if head.starts_with("data:") => body,
        _ => v,
    };
    let body: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body.as_bytes())
        .map_err(|e| ApiError::invalid(param, format!("{param} is not valid base64: {e}")).with_code("invalid_image"))
}

/// An uploaded image, checked from its header (at most `max` a side, and `want` when given)
/// before it is decoded: a small file declaring a huge picture is refused unread.
pub fn read_image(param: &str, bytes: &[u8], want: Option<(usize, usize)>, max: usize) -> Result<image::DynamicImage, ApiError> {
    let invalid = |m: String| ApiError::invalid(param, m).with_code("invalid_image");
    let (w, h) = image_size_of(bytes, param).map_err(|e| invalid(e.to_string()))?;
    if w > max || h > max {
        return Err(invalid(format!("{param} is {w}x{h}; images may be at most {max} pixels a side (--max-size)")));
    }
    if let Some((ww, wh)) = want {
        if (w, h) != (ww, wh) {
            return Err(invalid(format!("{param} is {w}x{h}, the output is {ww}x{wh}; kiln does not resize: send an image of the output size")));
        }
    }
    decode_image_bytes(bytes, param).map_err(|e| invalid(e.to_string()))
}

/// An init image and its mask (grey, white repaints, as `kiln generate --mask` reads it).
pub fn read_init(state: &AppState, image: &[u8], mask: Option<&[u8]>, size: Option<(usize, usize)>, image_param: &str, mask_param: &str) -> Result<(RgbImage, Option<GrayImage>), ApiError> {
    let max = state.config.max_size;
    let image = read_image(image_param, image, size, max)?.to_rgb8();
    let dims = (image.width() as usize, image.height() as usize);
    let mask = mask.map(|m| read_image(mask_param, m, Some(dims), max).map(|m| pil_grayscale(&m))).transpose()?;
    Ok((image, mask))
}

/// `<lora:NAME:W>` names and `loras` fields → files in `--lora-dir`.
pub fn lora_path(state: &AppState, name: &str) -> Result<PathBuf, ApiError> {
    let dir = state.config.lora_dir.as_ref().ok_or_else(|| ApiError::invalid("loras", format!("LoRA {name:?}: this server takes no LoRAs (start it with --lora-dir DIR)")))?;
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        return Err(ApiError::invalid("loras", format!("LoRA {name:?}: a LoRA is named by its file name in --lora-dir, without a folder")));
    }
    kiln_pipeline::lora::find_in_dir(dir, name).ok_or_else(|| ApiError::invalid("loras", format!("LoRA {name:?}: no {name}.safetensors, .pt or .ckpt in --lora-dir")))
}

/// The checked request for the worker.
pub fn to_request(state: &AppState, p: Params) -> Result<GenRequest, ApiError> {
    let cfg = &state.config;
    if p.steps == 0 || p.steps > cfg.max_steps {
        return Err(ApiError::invalid("steps", format!("steps must be between 1 and {} (--max-steps), got {}", cfg.max_steps, p.steps)));
    }
    if p.n == 0 || p.n > cfg.max_images {
        return Err(ApiError::invalid("n", format!("the number of images must be between 1 and {} (--max-images), got {}", cfg.max_images, p.n)));
    }
    check_range("guidance_scale", p.guidance_scale, 0.0, 100.0)?;
    check_range("eta", p.eta, 0.0, 100.0)?;
    if let Some(s) = p.strength {
        check_range("strength", s, 0.0, 1.0)?;
    }
    if let Some((w, h)) = p.size {
        check_side("size", "width", w, cfg.max_size)?;
        check_side("size", "height", h, cfg.max_size)?;
    } else if p.init_image.is_none() {
        let (h, w) = p.model.default_size;
        if w > cfg.max_size || h > cfg.max_size {
            return Err(ApiError::invalid("size", format!("the model's default size {w}x{h} is larger than --max-size {}; give a size", cfg.max_size)));
        }
    }
    let mut prompt = p.prompt.clone();
    let mut loras: Vec<(PathBuf, f64)> = Vec::new();
    for (name, scale) in &p.loras {
        check_range("loras", *scale, -100.0, 100.0)?;
        loras.push((lora_path(state, name)?, *scale));
    }
    if p.syntax == PromptSyntax::A1111 {
        let (text, found) = kiln_pipeline::prompt::extract_extra_networks(&p.prompt).map_err(|e| ApiError::invalid("prompt", e.to_string()))?;
        prompt = text;
        for (kind, name, weight) in found {
            if kind != "lora" {
                return Err(ApiError::invalid("prompt", format!("<{kind}:{name}>: kiln applies LoRAs (<lora:NAME:W>), not {kind} networks")));
            }
            loras.push((lora_path(state, &name)?, weight));
        }
    }
    let strength = p.strength.unwrap_or(kiln_pipeline::infotext::default_strength(p.model.kind, p.mask.is_some()));
    let (sampler, karras) = match p.sampler {
        Some((s, k)) => (Some(s), k),
        None => (None, false),
    };
    let options = GenerateOptions {
        prompt,
        negative_prompt: p.negative_prompt.clone(),
        num_inference_steps: p.steps,
        guidance_scale: p.guidance_scale,
        width: p.size.map(|s| s.0),
        height: p.size.map(|s| s.1),
        seed: p.seed,
        num_images_per_prompt: p.n,
        scheduler: sampler,
        karras,
        clip_skip: p.clip_skip,
        eta: p.eta,
        prompt_syntax: p.syntax,
        flow: kiln_pipeline::FlowOptions {
            max_sequence_length: p.max_sequence_length,
            prompt_3: p.prompt_3.clone(),
            negative_prompt_3: p.negative_prompt_3.clone(),
            true_cfg_scale: p.true_cfg_scale,
            ..kiln_pipeline::FlowOptions::default()
        },
        ..GenerateOptions::default()
    };
    Ok(GenRequest { model: p.model.name.clone(), options, shown_prompt: p.prompt, init_image: p.init_image, mask: p.mask, strength, loras, seed_per_image: false })
}

/// A JSON object body, read field by field so that a wrong type names its field.
pub struct Fields {
    map: serde_json::Map<String, serde_json::Value>,
}

impl Fields {
    /// Parses `body` as a JSON object.
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")).with_code("invalid_json"))?;
        match value {
            serde_json::Value::Object(map) => Ok(Fields { map }),
            other => Err(ApiError::bad_request(format!("the body must be a JSON object, got {}", json_type(&other))).with_code("invalid_json")),
        }
    }

    pub fn from_map(map: serde_json::Map<String, serde_json::Value>) -> Self {
        Fields { map }
    }

    pub fn map(&self) -> &serde_json::Map<String, serde_json::Value> {
        &self.map
    }

    /// The field, `None` when absent or null.
    pub fn get(&self, key: &str) -> Option<&serde_json::Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub fn str(&self, key: &str) -> Result<Option<&str>, ApiError> {
        self.get(key).map(|v| v.as_str().ok_or_else(|| wrong(key, "a string", v))).transpose()
    }

    pub fn i64(&self, key: &str) -> Result<Option<i64>, ApiError> {
        self.get(key)
            .map(|v| match v {
                serde_json::Value::Number(n) => n.as_i64().or_else(|| n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15).map(|f| f as i64)).ok_or_else(|| wrong(key, "an integer", v)),
                _ => Err(wrong(key, "an integer", v)),
            })
            .transpose()
    }

    /// A seed: an integer in u64 (A1111's -1 = random is the caller's).
    pub fn u64(&self, key: &str) -> Result<Option<u64>, ApiError> {
        self.get(key).map(|v| v.as_u64().ok_or_else(|| wrong(key, "an integer from 0 to 2^64-1", v))).transpose()
    }

    pub fn f64(&self, key: &str) -> Result<Option<f64>, ApiError> {
        self.get(key).map(|v| v.as_f64().ok_or_else(|| wrong(key, "a number", v))).transpose()
    }

    pub fn bool(&self, key: &str) -> Result<Option<bool>, ApiError> {
        self.get(key).map(|v| v.as_bool().ok_or_else(|| wrong(key, "true or false", v))).transpose()
    }
}

fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

fn wrong(key: &str, want: &str, v: &serde_json::Value) -> ApiError {
    let shown: String = v.to_string().chars().take(60).collect();
    ApiError::invalid(key, format!("{key} must be {want}, got {} {shown}", json_type(v)))
}

/// kiln's own fields, shared by the OpenAI routes and `/v1/jobs`: `negative_prompt`, `steps`,
/// `guidance_scale`, `seed`, `scheduler` (A1111 or kiln names) with `karras`, `clip_skip`,
/// `strength`, `loras` (`[{"name", "scale"}]` or `{"NAME": SCALE}`), `prompt_syntax`,
/// `max_sequence_length` (SD 3 / FLUX: T5's length, 1 to 512), `prompt_3` and
/// `negative_prompt_3` (SD 3: T5's prompts), `true_cfg_scale` (FLUX, with a negative prompt).
pub fn kiln_fields(f: &Fields, p: &mut Params) -> Result<(), ApiError> {
    // an option of one family on a model of another is refused by name
    let (model, kind) = (p.model.name.clone(), p.model.kind);
    let family = |field: &str, ok: bool, family: &str| -> Result<(), ApiError> {
        if ok { Ok(()) } else { Err(ApiError::invalid(field, format!("{field} is {family} option; {model} is a {kind} model"))) }
    };
    if let Some(v) = f.i64("max_sequence_length")? {
        let bad = || ApiError::invalid("max_sequence_length", format!("max_sequence_length must be between 1 and {}, got {v}", kiln_pipeline::flow::MAX_SEQUENCE_LENGTH));
        let len = usize::try_from(v).ok().filter(|l| (1..=kiln_pipeline::flow::MAX_SEQUENCE_LENGTH).contains(l)).ok_or_else(bad)?;
        family("max_sequence_length", kind.is_flow_matching(), "an SD 3 / FLUX")?;
        p.max_sequence_length = Some(len);
    }
    let sd3 = kind == kiln_pipeline::PipelineKind::StableDiffusion3;
    if let Some(v) = f.str("prompt_3")? {
        family("prompt_3", sd3, "an SD 3")?;
        p.prompt_3 = Some(v.to_string());
    }
    if let Some(v) = f.str("negative_prompt_3")? {
        family("negative_prompt_3", sd3, "an SD 3")?;
        p.negative_prompt_3 = Some(v.to_string());
    }
    if let Some(v) = f.f64("true_cfg_scale")? {
        family("true_cfg_scale", kind == kiln_pipeline::PipelineKind::Flux, "a FLUX")?;
        p.true_cfg_scale = check_range("true_cfg_scale", v, 0.0, 100.0)?;
    }
    if let Some(v) = f.str("negative_prompt")? {
        p.negative_prompt = Some(v.to_string());
    }
    if let Some(v) = f.i64("steps")? {
        p.steps = usize::try_from(v).map_err(|_| ApiError::invalid("steps", format!("steps must be a positive integer, got {v}")))?;
    }
    if let Some(v) = f.f64("guidance_scale")? {
        p.guidance_scale = v;
    }
    if let Some(v) = f.u64("seed")? {
        p.seed = v;
    }
    let karras = f.bool("karras")?;
    if let Some(v) = f.str("scheduler")? {
        let (s, k) = crate::samplers::resolve(v, None).map_err(|m| ApiError::invalid("scheduler", m))?;
        p.sampler = Some((s, karras.unwrap_or(k)));
    } else if karras == Some(true) {
        return Err(ApiError::invalid("karras", "karras needs a scheduler (e.g. \"scheduler\": \"dpm++2m\")"));
    }
    if let Some(v) = f.i64("clip_skip")? {
        p.clip_skip = Some(usize::try_from(v).map_err(|_| ApiError::invalid("clip_skip", format!("clip_skip must be 0 or more, got {v}")))?).filter(|&c| c > 0);
    }
    if let Some(v) = f.f64("strength")? {
        p.strength = Some(v);
    }
    if let Some(v) = f.str("prompt_syntax")? {
        p.syntax = match v {
            "diffusers" => PromptSyntax::Diffusers,
            "a1111" => PromptSyntax::A1111,
            other => return Err(ApiError::invalid("prompt_syntax", format!("prompt_syntax must be \"diffusers\" or \"a1111\", got {other:?}"))),
        };
    }
    match f.get("loras") {
        None => {}
        Some(serde_json::Value::Array(items)) => {
            for item in items {
                let name = item.get("name").and_then(|v| v.as_str()).ok_or_else(|| ApiError::invalid("loras", "each LoRA is {\"name\": NAME, \"scale\": SCALE}"))?;
                let scale = match item.get("scale") {
                    None | Some(serde_json::Value::Null) => 1.0,
                    Some(v) => v.as_f64().ok_or_else(|| ApiError::invalid("loras", format!("LoRA {name:?}: scale must be a number")))?,
                };
                p.loras.push((name.to_string(), scale));
            }
        }
        Some(serde_json::Value::Object(map)) => {
            for (name, v) in map {
                let scale = v.as_f64().ok_or_else(|| ApiError::invalid("loras", format!("LoRA {name:?}: scale must be a number")))?;
                p.loras.push((name.clone(), scale));
            }
        }
        Some(v) => return Err(wrong("loras", "a list of {\"name\", \"scale\"} or an object NAME → SCALE", v)),
    }
    Ok(())
}

/// How much of an oversized body is still read (and thrown away) after the limit is passed, so
/// that the client, still sending, gets the 400 instead of a reset connection (nginx's "lingering
/// close"); past this the connection is closed on it.
pub const DRAIN_BYTES: usize = 256 << 20;

/// Reads a request body of at most `limit` bytes (`--max-body-mb`). A larger body is refused
/// naming the limit, once the rest of it has been drained (up to [`DRAIN_BYTES`] or 10 s).
pub async fn read_body(body: axum::body::Body, limit: usize) -> Result<axum::body::Bytes, ApiError> {
    use futures_util::StreamExt as _;
    let too_large = || ApiError::bad_request(format!("the request body is larger than {limit} bytes (--max-body-mb)")).with_code("body_too_large");
    let mut stream = body.into_data_stream();
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("the request body could not be read: {e}")))?;
        if out.len() + chunk.len() > limit {
            let mut drained = out.len() + chunk.len();
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
            while drained < DRAIN_BYTES {
                match tokio::time::timeout_at(deadline, stream.next()).await {
                    Ok(Some(Ok(c))) => drained += c.len(),
                    _ => break,
                }
            }
            return Err(too_large());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.into())
}

/// The body of `/v1/images/generations` (and `/v1/jobs`) as [`Params`]: OpenAI's `model`,
/// `prompt`, `n`, `size` (`"auto"` = the model's), `output_format` (`png` only), `user` (logged),
/// and [`kiln_fields`].
pub fn body_params(state: &AppState, f: &Fields) -> Result<Params, ApiError> {
    let prompt = f.str("prompt")?.ok_or_else(|| ApiError::invalid("prompt", "prompt is required"))?;
    let model = state.pick_model(f.str("model")?)?;
    let mut p = Params::new(model, prompt.to_string());
    if let Some(n) = f.i64("n")? {
        p.n = check_count("n", n, state.config.max_images, "--max-images")?;
    }
    match f.str("size")? {
        None | Some("auto") => {}
        Some(size) => p.size = Some(parse_size("size", size, state.config.max_size)?),
    }
    if let Some(format) = f.str("output_format")? {
        if format != "png" {
            return Err(ApiError::invalid("output_format", format!("kiln writes PNG: output_format must be \"png\", got {format:?}")));
        }
    }
    if let Some(user) = f.str("user")? {
        tracing::info!(user, "request from user");
    }
    kiln_fields(f, &mut p)?;
    Ok(p)
}
