//! Single-file checkpoints: one `.safetensors` or `.ckpt` holding a whole SD 1.x / 2.x / SDXL
//! model in the original LDM key layout (what Civitai, A1111, ComfyUI and the original Stability
//! releases hold), read as diffusers' `from_single_file` reads it.
//!
//! * [`detect`]: the family from the keys (diffusers' `infer_diffusers_model_type`);
//! * [`unet`], [`vae`], [`clip`]: each component's LDM keys → diffusers' keys (diffusers'
//!   `convert_ldm_unet_checkpoint`, `convert_ldm_vae_checkpoint`, `convert_ldm_clip_checkpoint`,
//!   `convert_open_clip_checkpoint`), as plans of [`kiln_nn::Weights`]: the tensors are read from
//!   the file one at a time while the model loads, never the whole file;
//! * [`arch`]: the architecture the weights go into: a family's published configs and tokenizers,
//!   compiled in (`configs/`), or a diffusers folder (`--config`, diffusers' `config=`);
//! * [`load`]: [`crate::StableDiffusion::load_single_file`];
//! * [`convert`]: the file written as a diffusers folder (`kiln convert`).
//!
//! EMA weights (`model_ema.*`), the DDPM schedule buffers and anything else outside the
//! components' prefixes are left in the file (diffusers loads the non-EMA weights too).

pub mod arch;
pub mod clip;
pub mod convert;
pub mod detect;
pub mod load;
pub mod unet;
pub mod vae;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_nn::{LoadError, Transform, Weight, Weights, WeightsFile};
use thiserror::Error;

pub use arch::Architecture;
pub use clip::{ClipLayout, ClipShape};
pub use detect::{Detection, Family};

/// Why a single file cannot be loaded. Every variant names the file.
#[derive(Debug, Error)]
pub enum SingleFileError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("{path} is not a Stable Diffusion checkpoint: it looks like {looks_like}")]
    NotACheckpoint { path: PathBuf, looks_like: String },
    #[error("{path}: {message}")]
    Unsupported { path: PathBuf, message: String },
    #[error("{path} is half a checkpoint: it has no {what}{hint}")]
    Incomplete { path: PathBuf, what: String, hint: &'static str },
    #[error("conversion cancelled")]
    Cancelled,
}

/// A text encoder found in the file: the diffusers component, its prefix and how it is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredEncoder {
    pub component: &'static str,
    pub prefix: &'static str,
    pub layout: ClipLayout,
}

/// A single-file checkpoint, opened: its tensors listed, its family detected. Reads no weights.
#[derive(Debug)]
pub struct SingleFile {
    pub file: Arc<WeightsFile>,
    /// The prefix every model key has in the file (`state_dict.` in `.ckpt` files, removed as
    /// diffusers' `load_single_file_checkpoint` removes it); empty for safetensors.
    pub root: String,
    pub detection: Detection,
    /// Where the VAE is (`first_stage_model.` or `vae.`), if the file has one.
    pub vae_prefix: Option<&'static str>,
    pub text_encoders: Vec<StoredEncoder>,
    /// The number of EMA tensors (`model_ema.*`), not loaded.
    pub ema_tensors: usize,
    /// Keys outside every component (schedule buffers, EMA, training state), not loaded.
    pub other_keys: Vec<String>,
}

impl SingleFile {
    /// Opens `path` (safetensors or a PyTorch checkpoint) and detects its family; a file that is
    /// not a Stable Diffusion checkpoint (a LoRA, an embedding, a VAE alone, SD3, ...) is an error
    /// that says what it looks like.
    pub fn open(path: &Path) -> Result<Self, SingleFileError> {
        let file = WeightsFile::open(path)?;
        let mut root = String::new();
        // `while "state_dict" in checkpoint: checkpoint = checkpoint["state_dict"]`
        while file.tensors().iter().any(|t| t.name.starts_with(&format!("{root}state_dict."))) {
            root.push_str("state_dict.");
        }
        let keys: HashMap<&str, &[u64]> = file
            .tensors()
            .iter()
            .filter_map(|t| t.name.strip_prefix(root.as_str()).map(|k| (k, t.shape.as_slice())))
            .collect();
        let detection = detect::detect(&keys).map_err(|looks_like| SingleFileError::NotACheckpoint { path: path.into(), looks_like })?;
        let has = |prefix: &str| keys.keys().any(|k| k.starts_with(prefix));
        let vae_prefix = vae::PREFIXES.iter().copied().find(|p| has(p));
        let text_encoders: Vec<StoredEncoder> = clip::PREFIXES
            .iter()
            .filter(|(prefix, ..)| has(prefix))
            .map(|&(prefix, layout, component)| StoredEncoder { component, prefix, layout })
            .collect();
        let mut prefixes: Vec<&str> = vec![unet::PREFIX];
        prefixes.extend(vae_prefix);
        prefixes.extend(text_encoders.iter().map(|e| e.prefix));
        let mut other_keys: Vec<String> = keys.keys().filter(|k| !prefixes.iter().any(|p| k.starts_with(p))).map(|k| k.to_string()).collect();
        other_keys.sort();
        let ema_tensors = other_keys.iter().filter(|k| k.starts_with("model_ema.")).count();
        Ok(Self { file, root, detection, vae_prefix, text_encoders, ema_tensors, other_keys })
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Each component the file holds: (diffusers component, its prefix, tensors, parameters).
    pub fn components(&self) -> Vec<(&'static str, &'static str, usize, u64)> {
        let mut parts: Vec<(&'static str, &'static str)> = vec![("unet", unet::PREFIX)];
        parts.extend(self.vae_prefix.map(|p| ("vae", p)));
        parts.extend(self.text_encoders.iter().map(|e| (e.component, e.prefix)));
        parts
            .into_iter()
            .map(|(component, prefix)| {
                let (tensors, parameters) = self.keys_under(prefix).fold((0usize, 0u64), |(n, p), (_, full)| {
                    let numel = self.file.get(full).map_or(0, |t| t.shape.iter().product::<u64>());
                    (n + 1, p.saturating_add(numel))
                });
                (component, prefix, tensors, parameters)
            })
            .collect()
    }

    /// The file's keys under `prefix` (the root removed), each with its full key.
    fn keys_under<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.file.tensors().iter().filter_map(move |t| {
            let key = t.name.strip_prefix(self.root.as_str())?.strip_prefix(prefix)?;
            Some((key, t.name.as_str()))
        })
    }

    /// The plan of the component under `prefix`: every key mapped by `map` (`Some(vec![])`:
    /// stored but deliberately not loaded); keys it cannot map are an error listing them.
    fn plan(&self, prefix: &str, map: impl Fn(&str) -> Option<Vec<(String, Transform)>>) -> Result<Weights, LoadError> {
        let mut weights = Vec::new();
        let mut unmapped = Vec::new();
        for (key, full) in self.keys_under(prefix) {
            match map(key) {
                Some(targets) => weights.extend(targets.into_iter().map(|(name, t)| Weight::new(name, full, t))),
                None => unmapped.push(full.to_string()),
            }
        }
        if !unmapped.is_empty() {
            unmapped.sort();
            return Err(LoadError::Unused { path: self.path().into(), names: unmapped });
        }
        Ok(Weights { file: self.file.clone(), weights })
    }

    /// The UNet's weights under diffusers' names, for a UNet with `layers_per_block`.
    pub fn unet(&self, layers_per_block: usize) -> Result<Weights, LoadError> {
        self.plan(unet::PREFIX, |k| unet::diffusers_key(k, layers_per_block).map(|n| vec![(n, Transform::None)]))
    }

    /// The VAE's weights under diffusers' names (`None`: the file has no VAE), for a VAE with
    /// `up_blocks` decoder levels.
    pub fn vae(&self, up_blocks: usize) -> Result<Option<Weights>, LoadError> {
        let Some(prefix) = self.vae_prefix else { return Ok(None) };
        self.plan(prefix, |k| vae::diffusers_key(k, up_blocks).map(|m| vec![m])).map(Some)
    }

    /// The text encoder `component`'s weights (`None`: the file has none for it), for a model of
    /// `shape`.
    pub fn text_encoder(&self, component: &str, shape: ClipShape) -> Result<Option<Weights>, LoadError> {
        let Some(stored) = self.text_encoders.iter().find(|e| e.component == component) else { return Ok(None) };
        self.plan(stored.prefix, |k| match clip::diffusers_keys(k, stored.layout, shape)? {
            clip::Mapped::To(targets) => Some(targets),
            clip::Mapped::Unused => Some(Vec::new()),
        })
        .map(Some)
    }
}
