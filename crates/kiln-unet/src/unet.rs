//! `UNet2DConditionModel` (diffusers `models/unets/unet_2d_condition.py`).

use std::path::{Path, PathBuf};

use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, GroupNormConfig};
use burn::prelude::*;
use burn::tensor::DType;
use kiln_nn::{conv2d, load_safetensors, timestep_embedding, weights_path, LoadError, LoadOptions, TimestepEmbedding, TimestepEmbeddingConfig, Weights};
use kiln_ops::{conv2d_forward, group_norm_silu};
use thiserror::Error;

use crate::blocks::{BlockSettings, DownBlock, MidBlock, UpBlock};
use crate::config::{ConfigError, UNet2DConditionConfig};

/// Why a UNet could not be loaded or run.
#[derive(Debug, Error)]
pub enum UNetError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("{path}: {source}")]
    ConfigFile { path: PathBuf, source: ConfigError },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("bad UNet input: {0}")]
    Input(String),
}

/// SDXL's added conditioning (`added_cond_kwargs` with `addition_embed_type = "text_time"`).
#[derive(Debug, Clone)]
pub struct TextTimeCond {
    /// The pooled, projected embedding of the second text encoder: `[batch, text_dim]`.
    pub text_embeds: Tensor<2>,
    /// One row per batch item: `original_size + crops_coords_top_left + target_size` for SDXL base
    /// (6 values), `original_size + crops + aesthetic_score` for the refiner (5 values).
    pub time_ids: Vec<Vec<f64>>,
}

/// Everything `forward` needs from the config besides the layers.
#[derive(Debug, Clone)]
struct Settings {
    in_channels: usize,
    context_dim: usize,
    center_input_sample: bool,
    flip_sin_to_cos: bool,
    freq_shift: f64,
    /// Width of the sinusoidal timestep embedding (`block_out_channels[0]`).
    time_proj_dim: usize,
    /// `text_time`: (addition_time_embed_dim, projection_class_embeddings_input_dim).
    text_time: Option<(usize, usize)>,
    num_upsamplers: usize,
}

/// diffusers' `UNet2DConditionModel` for SD 1.x / 2.x / SDXL layouts, with field names equal to
/// the checkpoint keys.
#[derive(Module, Debug)]
pub struct UNet2DConditionModel {
    pub conv_in: Conv2d,
    pub time_embedding: TimestepEmbedding,
    /// SDXL: `TimestepEmbedding(projection_class_embeddings_input_dim, time_embed_dim)` over the
    /// text embeds and the sinusoidal embedding of the time ids (`add_time_proj`).
    pub add_embedding: Option<TimestepEmbedding>,
    pub down_blocks: Vec<DownBlock>,
    pub mid_block: MidBlock,
    pub up_blocks: Vec<UpBlock>,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
    #[module(skip)]
    settings: Settings,
    #[module(skip)]
    config: UNet2DConditionConfig,
}

impl UNet2DConditionConfig {
    /// Builds the model with freshly initialised (random) weights; `load` replaces them.
    pub fn init(&self, device: &Device) -> Result<UNet2DConditionModel, ConfigError> {
        let plan = self.plan()?;
        let c0 = self.block_out_channels[0];
        let blocks = BlockSettings {
            temb_channels: plan.time_embed_dim,
            groups: plan.groups,
            eps: self.norm_eps,
            use_linear_projection: self.use_linear_projection,
            upcast_attention: self.upcast_attention,
            downsample_padding: self.downsample_padding,
        };
        Ok(UNet2DConditionModel {
            conv_in: conv2d(self.in_channels, c0, self.conv_in_kernel, 1, (self.conv_in_kernel - 1) / 2, device),
            time_embedding: TimestepEmbeddingConfig::new(c0, plan.time_embed_dim).init(device),
            add_embedding: plan
                .text_time
                .map(|(_, proj_dim)| TimestepEmbeddingConfig::new(proj_dim, plan.time_embed_dim).init(device)),
            down_blocks: plan.down.iter().map(|b| blocks.down_block(b, device)).collect(),
            mid_block: blocks.mid_block(&plan.mid, self.mid_block_scale_factor, device),
            up_blocks: plan.up.iter().map(|b| blocks.up_block(b, device)).collect(),
            conv_norm_out: GroupNormConfig::new(plan.groups, c0).with_epsilon(self.norm_eps).init(device),
            conv_out: conv2d(c0, self.out_channels, self.conv_out_kernel, 1, (self.conv_out_kernel - 1) / 2, device),
            settings: Settings {
                in_channels: self.in_channels,
                context_dim: self.context_dim(),
                center_input_sample: self.center_input_sample,
                flip_sin_to_cos: self.flip_sin_to_cos,
                freq_shift: self.freq_shift,
                time_proj_dim: c0,
                text_time: plan.text_time,
                num_upsamplers: self.num_upsamplers(),
            },
            config: self.clone(),
        })
    }
}

impl UNet2DConditionModel {
    /// The stem of a `unet/` folder's weights file: `diffusion_pytorch_model[.<variant>].safetensors`.
    pub const WEIGHTS: &'static str = "diffusion_pytorch_model";

    /// Loads a diffusers `unet/` folder: `config.json` and
    /// `diffusion_pytorch_model[.<variant>].safetensors` on `options.device`, every float tensor
    /// cast to `options.dtype`.
    pub fn load(dir: &Path, options: &LoadOptions) -> Result<Self, UNetError> {
        let config_path = dir.join("config.json");
        let text = kiln_nn::read_text_file(&config_path, kiln_nn::CONFIG_LIMIT)?;
        let config = UNet2DConditionConfig::from_json_str(&text)
            .map_err(|source| UNetError::ConfigFile { path: config_path.clone(), source })?;
        let weights = weights_path(dir, Self::WEIGHTS, options.variant.as_deref())?;
        let model = config.init(&options.device).map_err(|source| UNetError::ConfigFile { path: config_path, source })?;
        Ok(load_safetensors(model, &weights, options.dtype, &[], &[])?)
    }

    /// Builds the UNet of `config` on `options.device` and loads `weights` (diffusers' names; a
    /// single-file checkpoint's UNet, renamed) into it, cast to `options.dtype`.
    pub fn load_weights(config: &UNet2DConditionConfig, weights: Weights, options: &LoadOptions) -> Result<Self, UNetError> {
        let model = config.init(&options.device)?;
        Ok(weights.load_into(model, options.dtype, &[])?)
    }

    /// The config the model was built from.
    pub fn config(&self) -> &UNet2DConditionConfig {
        &self.config
    }

    /// The dtype `forward` computes in ([`kiln_nn::compute_dtype`]).
    pub fn dtype(&self) -> DType {
        kiln_nn::compute_dtype(&self.conv_in)
    }

    /// Predicts the noise (or v / x0, per the scheduler's `prediction_type`) for `sample` at
    /// `timesteps`.
    ///
    /// Inputs in another float dtype than the weights are cast to the weights' dtype (so an f16
    /// UNet takes f32 latents); the result comes back in `sample`'s dtype.
    ///
    /// # Shapes
    /// - sample: `[batch, in_channels, h, w]` (any h, w; sizes that are not a multiple of
    ///   `2^num_upsamplers` take diffusers' `forward_upsample_size` path)
    /// - timesteps: one value for the whole batch, or one per batch item
    /// - encoder_hidden_states: `[batch, seq, cross_attention_dim]`
    /// - added: required when `addition_embed_type = "text_time"` (SDXL), `text_embeds`
    ///   `[batch, text_dim]`
    /// - returns `[batch, out_channels, h, w]`
    pub fn forward(
        &self,
        sample: Tensor<4>,
        timesteps: &[f64],
        encoder_hidden_states: Tensor<3>,
        added: Option<&TextTimeCond>,
    ) -> Result<Tensor<4>, UNetError> {
        let s = &self.settings;
        let out_dtype = sample.dtype();
        let dtype = self.dtype();
        let device = sample.device();
        let [b, c, h, w] = sample.dims();
        let [cb, _, cd] = encoder_hidden_states.dims();
        if c != s.in_channels {
            return Err(UNetError::Input(format!("sample has {c} channels, the UNet takes {}", s.in_channels)));
        }
        if cb != b || cd != s.context_dim {
            return Err(UNetError::Input(format!(
                "encoder_hidden_states is [{cb}, _, {cd}], the UNet needs [{b}, _, {}]",
                s.context_dim
            )));
        }
        let timesteps: Vec<f64> = match timesteps.len() {
            1 => vec![timesteps[0]; b],
            n if n == b => timesteps.to_vec(),
            n => return Err(UNetError::Input(format!("{n} timesteps for a batch of {b}: give 1 or {b}"))),
        };
        let cast = |t: Tensor<4>| if t.dtype() == dtype { t } else { t.cast(dtype) };
        let sample = cast(sample);
        let context = if encoder_hidden_states.dtype() == dtype {
            encoder_hidden_states
        } else {
            encoder_hidden_states.cast(dtype)
        };

        // Time embedding: the sinusoid in f32, then cast to the model dtype (get_time_embed).
        let t_emb = timestep_embedding(&timesteps, s.time_proj_dim, s.flip_sin_to_cos, s.freq_shift, &device, dtype);
        let mut emb = self.time_embedding.forward(t_emb);
        match (&self.add_embedding, s.text_time, added) {
            (Some(add_embedding), Some((time_dim, proj_dim)), Some(added)) => {
                emb = emb + add_embedding.forward(self.text_time_embeds(added, b, time_dim, proj_dim, dtype)?);
            }
            (Some(_), _, None) => {
                return Err(UNetError::Input(
                    "this UNet has addition_embed_type \"text_time\" (SDXL): text_embeds and time_ids are required"
                        .into(),
                ));
            }
            (None, _, Some(_)) => {
                return Err(UNetError::Input(
                    "text_embeds/time_ids given to a UNet without addition_embed_type".into(),
                ));
            }
            _ => {}
        }

        // forward_upsample_size: the latent is not a multiple of the overall up factor.
        let factor = 1usize << s.num_upsamplers;
        let forward_upsample_size = h % factor != 0 || w % factor != 0;

        let sample = if s.center_input_sample { sample.mul_scalar(2.0).sub_scalar(1.0) } else { sample };
        let mut x = conv2d_forward(&self.conv_in, sample);
        let mut skips = vec![x.clone()];
        for block in &self.down_blocks {
            let (out, states) = block.forward(x, &emb, &context);
            x = out;
            skips.extend(states);
        }
        x = self.mid_block.forward(x, &emb, &context);
        let last = self.up_blocks.len() - 1;
        for (i, block) in self.up_blocks.iter().enumerate() {
            let block_skips = skips.split_off(skips.len() - block.resnets.len());
            let upsample_size = (i != last && forward_upsample_size).then(|| {
                let [_, _, sh, sw] = skips[skips.len() - 1].dims();
                [sh, sw]
            });
            x = block.forward(x, block_skips, &emb, &context, upsample_size);
        }
        let x = conv2d_forward(&self.conv_out, group_norm_silu(&self.conv_norm_out, x));
        Ok(if out_dtype == dtype { x } else { x.cast(out_dtype) })
    }

    /// `get_aug_embed` for `text_time`: `concat(text_embeds, add_time_proj(time_ids).reshape(b, -1))`.
    fn text_time_embeds(
        &self,
        added: &TextTimeCond,
        batch: usize,
        time_dim: usize,
        proj_dim: usize,
        dtype: DType,
    ) -> Result<Tensor<2>, UNetError> {
        let s = &self.settings;
        let [tb, text_dim] = added.text_embeds.dims();
        let per_row = added.time_ids.first().map_or(0, Vec::len);
        if tb != batch || added.time_ids.len() != batch || added.time_ids.iter().any(|r| r.len() != per_row) {
            return Err(UNetError::Input(format!(
                "text_embeds has {tb} rows and time_ids {} rows (of lengths {:?}); the batch is {batch}",
                added.time_ids.len(),
                added.time_ids.iter().map(Vec::len).collect::<Vec<_>>()
            )));
        }
        if text_dim + per_row * time_dim != proj_dim {
            return Err(UNetError::Input(format!(
                "text_embeds width {text_dim} + {per_row} time ids × {time_dim} != projection_class_embeddings_input_dim {proj_dim}"
            )));
        }
        let device = added.text_embeds.device();
        let flat: Vec<f64> = added.time_ids.iter().flatten().copied().collect();
        let time_embeds = timestep_embedding(&flat, time_dim, s.flip_sin_to_cos, s.freq_shift, &device, dtype)
            .reshape([batch, per_row * time_dim]);
        let text = if added.text_embeds.dtype() == dtype {
            added.text_embeds.clone()
        } else {
            added.text_embeds.clone().cast(dtype)
        };
        Ok(Tensor::cat(vec![text, time_embeds], 1))
    }
}

