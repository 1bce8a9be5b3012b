//! [`Pipeline`]: any model kiln runs, chosen by `model_index.json` — the SD family's
//! [`StableDiffusion`] or the flow-matching families' [`StableDiffusion3`] and [`Flux`] — with the
//! one `generate` they share.

use std::path::Path;

use burn::tensor::{DType, Device, Tensor};
use image::RgbImage;
use kiln_nn::LoadOptions;
use kiln_scheduler::SchedulerConfig;

use crate::error::PipelineError;
use crate::flux::Flux;
use crate::lora::LoraReport;
use crate::model::{ModelFolder, PipelineKind, ResolveOptions};
use crate::options::{GenerateOptions, StepInfo, Task};
use crate::stable_diffusion::StableDiffusion;
use crate::stable_diffusion_3::StableDiffusion3;

/// A loaded model of any family kiln runs.
pub enum Pipeline {
    StableDiffusion(Box<StableDiffusion>),
    StableDiffusion3(Box<StableDiffusion3>),
    Flux(Box<Flux>),
}

impl Pipeline {
    /// Loads a diffusers folder (or an SD-family single file) as its `model_index.json` says.
    pub fn load(dir: &Path, options: &LoadOptions) -> Result<Self, PipelineError> {
        if dir.is_file() {
            return Ok(Self::StableDiffusion(Box::new(StableDiffusion::load(dir, options)?)));
        }
        let resolve = ResolveOptions { prefer_fp16: options.variant.as_deref() == Some("fp16"), vae: None };
        Self::load_folder(&ModelFolder::open(dir, &resolve)?, &options.device, options.dtype)
    }

    /// Loads a resolved model folder: the denoiser in `dtype`, the text encoders and the VAE in f32.
    pub fn load_folder(folder: &ModelFolder, device: &Device, dtype: DType) -> Result<Self, PipelineError> {
        Ok(match folder.kind {
            PipelineKind::StableDiffusion3 => Self::StableDiffusion3(Box::new(StableDiffusion3::load_folder(folder, device, dtype)?)),
            PipelineKind::Flux => Self::Flux(Box::new(Flux::load_folder(folder, device, dtype)?)),
            _ => Self::StableDiffusion(Box::new(StableDiffusion::load_folder(folder, device, dtype)?)),
        })
    }

    /// The pipeline family.
    pub fn kind(&self) -> PipelineKind {
        match self {
            Self::StableDiffusion(p) => p.kind,
            Self::StableDiffusion3(_) => PipelineKind::StableDiffusion3,
            Self::Flux(_) => PipelineKind::Flux,
        }
    }

    /// diffusers' default `(height, width)` of the family's model.
    pub fn default_size(&self) -> (usize, usize) {
        match self {
            Self::StableDiffusion(p) => p.default_size(),
            Self::StableDiffusion3(p) => p.default_size(),
            Self::Flux(p) => p.default_size(),
        }
    }

    /// The VAE's downsampling factor (8 for every published model).
    pub fn vae_scale_factor(&self) -> usize {
        match self {
            Self::StableDiffusion(p) => p.vae_scale_factor(),
            Self::StableDiffusion3(p) => p.vae_scale_factor(),
            Self::Flux(p) => p.vae_scale_factor(),
        }
    }

    /// The model's `scheduler_config.json`.
    pub fn scheduler_config(&self) -> &SchedulerConfig {
        match self {
            Self::StableDiffusion(p) => &p.scheduler_config,
            Self::StableDiffusion3(p) => &p.scheduler_config,
            Self::Flux(p) => &p.scheduler_config,
        }
    }

    /// Loads a LoRA into any family's pipeline (`StableDiffusion::load_lora` and its siblings).
    pub fn load_lora(&mut self, path: &Path, scale: f64) -> Result<LoraReport, PipelineError> {
        match self {
            Self::StableDiffusion(p) => p.load_lora(path, scale),
            Self::StableDiffusion3(p) => p.load_lora(path, scale),
            Self::Flux(p) => p.load_lora(path, scale),
        }
    }

    /// Takes every LoRA out again.
    pub fn unload_loras(&mut self) {
        match self {
            Self::StableDiffusion(p) => p.unload_loras(),
            Self::StableDiffusion3(p) => p.unload_loras(),
            Self::Flux(p) => p.unload_loras(),
        }
    }

    /// `pipe(prompt, ...)` for any [`Task`] the family runs. `callback` sees each step and may cancel.
    pub fn generate(&self, o: &GenerateOptions, task: Task, callback: &mut dyn FnMut(StepInfo, &Tensor<4>) -> bool) -> Result<Vec<RgbImage>, PipelineError> {
        match self {
            Self::StableDiffusion(p) => p.generate(o, task, callback),
            Self::StableDiffusion3(p) => p.generate(o, task, callback),
            Self::Flux(p) => p.generate(o, task, callback),
        }
    }
}
