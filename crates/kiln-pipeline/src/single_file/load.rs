//! [`StableDiffusion::load_single_file`]: a single-file checkpoint's weights into an
//! architecture ([`Architecture`]), component by component, as diffusers'
//! `FromSingleFileMixin.from_single_file` builds a pipeline.

use std::path::Path;

use burn::tensor::{DType, Device};
use kiln_nn::{LoadError, LoadOptions};
use kiln_scheduler::SchedulerConfig;
use kiln_text_encoder::{ClipArchitecture, ClipTextConfig, ClipTextModel, ClipTokenizer};
use kiln_unet::{PerBlock, UNet2DConditionConfig, UNet2DConditionModel};
use kiln_vae::{AutoencoderKL, AutoencoderKLConfig};

use super::arch::{ConfigText, TokenizerSource};
use super::{Architecture, ClipShape, SingleFile, SingleFileError};
use crate::error::PipelineError;
use crate::model::PipelineKind;
use crate::presets::{CLIP_MERGES, CLIP_VOCAB};
use crate::StableDiffusion;

fn tokenizer(source: &TokenizerSource) -> Result<ClipTokenizer, PipelineError> {
    Ok(match source {
        TokenizerSource::Dir(dir) => ClipTokenizer::from_dir(dir)?,
        TokenizerSource::Compiled { label, config, special_tokens_map } => {
            ClipTokenizer::from_texts(label, config, CLIP_VOCAB, CLIP_MERGES, Some(special_tokens_map))?
        }
    })
}

fn config_error(config: &ConfigText, e: impl std::fmt::Display) -> PipelineError {
    LoadError::Unsupported { path: config.label.clone(), message: e.to_string() }.into()
}

impl StableDiffusion {
    /// Loads the single-file checkpoint `file` into `arch` on `device`: the UNet in `unet_dtype`,
    /// the text encoders and the VAE in f32 (as [`StableDiffusion::load_folder`]). `vae`: a
    /// diffusers `vae/` folder to use instead of the file's VAE (`--vae`; required when the file
    /// has none).
    pub fn load_single_file(file: &SingleFile, arch: &Architecture, vae: Option<&Path>, device: &Device, unet_dtype: DType) -> Result<Self, PipelineError> {
        let path = file.path();
        let f32 = LoadOptions::new(device);
        let incomplete = |what: String, hint| PipelineError::from(SingleFileError::Incomplete { path: path.into(), what, hint });
        // the text encoders
        let encoder = |component: &str, config: &ConfigText| -> Result<ClipTextModel, PipelineError> {
            let resolved = ClipTextConfig::from_json_str(&config.text, &config.label)?;
            let shape = ClipShape { layers: resolved.num_hidden_layers, projection: resolved.architecture == ClipArchitecture::WithProjection };
            let weights = file
                .text_encoder(component, shape)?
                .ok_or_else(|| incomplete(format!("`{component}` (a text encoder under one of {})", super::clip::PREFIXES.iter().filter(|p| p.2 == component).map(|p| format!("`{}*`", p.0)).collect::<Vec<_>>().join(", ")), ""))?;
            Ok(ClipTextModel::load_weights(&resolved, weights, device, DType::F32)?)
        };
        let tokenizer_1 = tokenizer(&arch.tokenizer)?;
        let text_encoder = encoder("text_encoder", &arch.text_encoder)?;
        let (tokenizer_2, text_encoder_2) = match (&arch.tokenizer_2, &arch.text_encoder_2) {
            (Some(t), Some(c)) if arch.kind == PipelineKind::StableDiffusionXL => (Some(tokenizer(t)?), Some(encoder("text_encoder_2", c)?)),
            _ => (None, None),
        };
        // the UNet
        let unet_config = UNet2DConditionConfig::from_json_str(&arch.unet.text).map_err(|e| config_error(&arch.unet, e))?;
        // diffusers' converter reads `layers_per_block` as one number
        let layers_per_block = match &unet_config.layers_per_block {
            PerBlock::One(n) => *n,
            PerBlock::List(l) if !l.is_empty() && l.iter().all(|n| *n == l[0]) => l[0],
            PerBlock::List(l) => return Err(config_error(&arch.unet, format!("layers_per_block = {l:?}: a single-file checkpoint's UNet has one number of layers a level"))),
        };
        let unet = UNet2DConditionModel::load_weights(&unet_config, file.unet(layers_per_block)?, &f32.clone().with_dtype(unet_dtype))?;
        // the VAE
        let vae = match vae {
            Some(dir) => AutoencoderKL::load(dir, &f32)?,
            None => {
                let config = AutoencoderKLConfig::from_json_str(&arch.vae.text).map_err(|e| config_error(&arch.vae, e))?;
                let weights = file
                    .vae(config.up_block_types.len())?
                    .ok_or_else(|| incomplete("VAE (`first_stage_model.*`)".into(), "; pass a VAE folder with --vae"))?;
                AutoencoderKL::load_weights(&config, weights, &f32)?
            }
        };
        let scheduler_config = SchedulerConfig::from_json_str(&arch.scheduler.text, &arch.scheduler.label.display().to_string())?;
        Ok(Self {
            kind: arch.kind,
            tokenizer: tokenizer_1,
            text_encoder,
            tokenizer_2,
            text_encoder_2,
            unet,
            vae,
            scheduler_config,
            force_zeros_for_empty_prompt: arch.force_zeros_for_empty_prompt,
            device: device.clone(),
            loras: Default::default(),
        })
    }
}
