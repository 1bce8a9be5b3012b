//! `model_index.json`: which pipeline a folder holds ([`PipelineKind`], from `_class_name`) and
//! which components it lists, checked against the files of a folder or a Hub listing.

use std::fmt;
use std::path::Path;

use serde_json::{Map, Value};

use super::layout::{pick_weights, require, shards, tokenizer_layout, FileSet, Planned, PlannedFiles};
use super::ModelError;

/// The pipelines kiln runs, decided by `model_index.json`'s `_class_name`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum PipelineKind {
    /// SD 1.x / 2.x: one CLIP text encoder, 4-channel UNet (txt2img and img2img).
    StableDiffusion,
    /// SDXL: two text encoders (the second with projection), pooled embeddings and time ids.
    StableDiffusionXL,
    /// SD 1.x / 2.x inpainting: the UNet takes 9 channels (latents, mask, masked-image latents).
    StableDiffusionInpaint,
    /// SD 3 / 3.5: two CLIP encoders with projection and T5 (optional), the MMDiT transformer,
    /// the 16-channel VAE, flow matching.
    StableDiffusion3,
    /// FLUX.1 (dev, schnell): CLIP's pooled output and T5, FLUX's transformer on packed 2×2
    /// latents, the 16-channel VAE, flow matching.
    Flux,
}

/// `_class_name` values kiln accepts, and the pipeline each one runs as. The img2img classes (and
/// SD 3's and FLUX's inpaint classes) share their txt2img sibling's folder layout; img2img itself
/// is chosen by `--init-image`, inpainting by `--mask`.
pub const SUPPORTED_PIPELINES: &[(&str, PipelineKind)] = &[
    ("StableDiffusionPipeline", PipelineKind::StableDiffusion),
    ("StableDiffusionImg2ImgPipeline", PipelineKind::StableDiffusion),
    ("StableDiffusionInpaintPipeline", PipelineKind::StableDiffusionInpaint),
    ("StableDiffusionXLPipeline", PipelineKind::StableDiffusionXL),
    ("StableDiffusionXLImg2ImgPipeline", PipelineKind::StableDiffusionXL),
    ("StableDiffusion3Pipeline", PipelineKind::StableDiffusion3),
    ("StableDiffusion3Img2ImgPipeline", PipelineKind::StableDiffusion3),
    ("StableDiffusion3InpaintPipeline", PipelineKind::StableDiffusion3),
    ("FluxPipeline", PipelineKind::Flux),
    ("FluxImg2ImgPipeline", PipelineKind::Flux),
    ("FluxInpaintPipeline", PipelineKind::Flux),
];

impl PipelineKind {
    /// The kind for a `model_index.json` `_class_name`; `None` if kiln does not run it.
    pub fn from_class_name(name: &str) -> Option<Self> {
        SUPPORTED_PIPELINES.iter().find(|(n, _)| *n == name).map(|(_, k)| *k)
    }

    /// The components (model_index keys = subfolders) the pipeline needs.
    pub fn required_components(self) -> &'static [&'static str] {
        match self {
            PipelineKind::StableDiffusion | PipelineKind::StableDiffusionInpaint => {
                &["scheduler", "text_encoder", "tokenizer", "unet", "vae"]
            }
            PipelineKind::StableDiffusionXL => {
                &["scheduler", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet", "vae"]
            }
            PipelineKind::StableDiffusion3 | PipelineKind::Flux => {
                &["scheduler", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "transformer", "vae"]
            }
        }
    }

    /// Components the pipeline uses when `model_index.json` lists them and runs without when it
    /// says `[null, null]` (SD 3's T5: diffusers conditions on zeros in its place).
    pub fn optional_components(self) -> &'static [&'static str] {
        match self {
            PipelineKind::StableDiffusion3 => &["text_encoder_3", "tokenizer_3"],
            _ => &[],
        }
    }

    /// Whether this is a flow-matching family (SD 3, FLUX): a transformer denoiser, not a UNet.
    pub fn is_flow_matching(self) -> bool {
        matches!(self, PipelineKind::StableDiffusion3 | PipelineKind::Flux)
    }
}

impl fmt::Display for PipelineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PipelineKind::StableDiffusion => "Stable Diffusion",
            PipelineKind::StableDiffusionXL => "Stable Diffusion XL",
            PipelineKind::StableDiffusionInpaint => "Stable Diffusion inpainting",
            PipelineKind::StableDiffusion3 => "Stable Diffusion 3",
            PipelineKind::Flux => "FLUX.1",
        })
    }
}

pub(crate) struct ModelIndex {
    pub(crate) path: String,
    pub(crate) class_name: String,
    pub(crate) kind: PipelineKind,
    pub(crate) force_zeros_for_empty_prompt: bool,
    /// `(name, library, class)` of every non-null component entry.
    entries: Vec<(String, String, String)>,
}

impl ModelIndex {
    pub(crate) fn read(path: &Path) -> Result<Self, ModelError> {
        let text = kiln_nn::read_text_file(path, kiln_nn::CONFIG_LIMIT).map_err(|e| match e {
            kiln_nn::LoadError::Io { source, .. } => ModelError::Io { path: path.into(), source },
            other => ModelError::BadIndex { path: path.display().to_string(), message: other.to_string() },
        })?;
        let value: Value = serde_json::from_str(&text).map_err(|source| ModelError::Json { path: path.into(), source })?;
        Self::parse(&value, &path.display().to_string())
    }

    pub(crate) fn parse(value: &Value, path: &str) -> Result<Self, ModelError> {
        let bad = |message: String| ModelError::BadIndex { path: path.to_string(), message };
        let map: &Map<String, Value> = value.as_object().ok_or_else(|| bad("not a JSON object".into()))?;
        let class_name = match map.get("_class_name") {
            Some(Value::String(s)) => s.clone(),
            Some(v) => return Err(bad(format!("`_class_name` must be a string, not {v}"))),
            None => return Err(bad("no `_class_name` (the pipeline class)".into())),
        };
        let kind = PipelineKind::from_class_name(&class_name)
            .ok_or_else(|| ModelError::UnsupportedPipeline { path: path.to_string(), class: class_name.clone() })?;
        let force_zeros_for_empty_prompt = match (kind, map.get("force_zeros_for_empty_prompt")) {
            (PipelineKind::StableDiffusionXL, None) => true, // StableDiffusionXLPipeline.__init__ default
            (PipelineKind::StableDiffusionXL, Some(Value::Bool(b))) => *b,
            (PipelineKind::StableDiffusionXL, Some(v)) => {
                return Err(bad(format!("`force_zeros_for_empty_prompt` must be true or false, not {v}")));
            }
            _ => false,
        };
        // The SDXL refiner's conditioning (aesthetic scores in the time ids) is not implemented.
        if let Some(Value::Bool(true)) = map.get("requires_aesthetics_score") {
            return Err(bad("`requires_aesthetics_score: true` (SDXL refiner conditioning) is not supported".into()));
        }
        let mut entries = Vec::new();
        for (key, v) in map {
            if key.starts_with('_') {
                continue;
            }
            match v.as_array().map(Vec::as_slice) {
                Some([Value::String(lib), Value::String(class)]) => entries.push((key.clone(), lib.clone(), class.clone())),
                Some([Value::Null, Value::Null]) => {}
                _ if kind.required_components().contains(&key.as_str()) || kind.optional_components().contains(&key.as_str()) => {
                    return Err(bad(format!("`{key}` must be [library, class] or [null, null], not {v}")));
                }
                _ => log::debug!("{path}: ignoring `{key}`"),
            }
        }
        for (name, _, class) in &entries {
            if !kind.required_components().contains(&name.as_str()) && !kind.optional_components().contains(&name.as_str()) {
                log::debug!("{path}: ignoring component `{name}` ({class}), which kiln does not use");
            }
        }
        Ok(ModelIndex { path: path.to_string(), class_name, kind, force_zeros_for_empty_prompt, entries })
    }

    /// Checks every required component in `files`; `skip_vae` when `--vae` replaces it.
    pub(crate) fn layout(&self, files: &dyn FileSet, prefer_fp16: bool, skip_vae: bool) -> Result<Vec<Planned>, ModelError> {
        let mut out = Vec::new();
        let optional = self.kind.optional_components().iter().filter(|name| self.entries.iter().any(|(n, _, _)| n == *name));
        for &name in self.kind.required_components().iter().chain(optional) {
            if name == "vae" && skip_vae {
                continue;
            }
            let Some((_, library, class)) = self.entries.iter().find(|(n, _, _)| n == name) else {
                return Err(ModelError::ComponentNotListed {
                    model: self.path.clone(),
                    class: self.class_name.clone(),
                    component: name.to_string(),
                });
            };
            if !files.has_dir(name) {
                return Err(ModelError::MissingComponentDir { path: files.show(name), component: name.to_string() });
            }
            let role = role_of(name);
            let planned = match role {
                Role::Scheduler => {
                    let config = format!("{name}/scheduler_config.json");
                    require(files, &config, name, "scheduler config")?;
                    Planned::new(name, library, class, PlannedFiles::Scheduler { config })
                }
                Role::Tokenizer => tokenizer_layout(files, name, library, class)?,
                Role::Model => {
                    let config = format!("{name}/config.json");
                    require(files, &config, name, "config")?;
                    let stem = if library == "transformers" { "model" } else { "diffusion_pytorch_model" };
                    let (weights, variant) = pick_weights(files, name, stem, prefer_fp16)?;
                    let shards = shards(files, name, stem, &weights, variant.as_deref());
                    Planned::new(name, library, class, PlannedFiles::Model { config, weights, variant, shards })
                }
            };
            out.push(planned);
        }
        Ok(out)
    }
}

/// Checks a `model_index.json` text as [`super::resolve`] reads it: the pipeline it names, and
/// well-formed component entries (`path` names the file in errors).
pub fn check_model_index(text: &str, path: &str) -> Result<PipelineKind, ModelError> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| ModelError::BadIndex { path: path.into(), message: format!("not valid JSON: {e}") })?;
    Ok(ModelIndex::parse(&value, path)?.kind)
}

#[derive(Clone, Copy)]
enum Role {
    Scheduler,
    Tokenizer,
    Model,
}

fn role_of(name: &str) -> Role {
    if name == "scheduler" {
        Role::Scheduler
    } else if name.starts_with("tokenizer") {
        Role::Tokenizer
    } else {
        Role::Model
    }
}
