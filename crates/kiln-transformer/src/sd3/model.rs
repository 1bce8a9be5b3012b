//! diffusers' `SD3Transformer2DModel` (`models/transformers/transformer_sd3.py`): the MMDiT
//! denoiser of SD 3.0 and 3.5. Latent patches with cropped sin-cos positions and the projected
//! text sequence pass through the joint blocks, conditioned on the timestep and the pooled text
//! embedding; the final adaptive norm and `proj_out` give each patch's velocity, unpatchified.

use std::path::Path;

use burn::prelude::*;
use burn::tensor::DType;
use kiln_nn::{compute_dtype, weights_path, Linear, LinearConfig, LoadOptions, Weights, WeightsFile};

use super::block::JointTransformerBlock;
use super::config::Sd3TransformerConfig;
use crate::embeddings::{CombinedTimestepTextProjEmbeddings, PatchEmbed};
use crate::error::TransformerError;
use crate::norm::AdaLayerNormContinuous;

/// `SD3Transformer2DModel`.
#[derive(Module, Debug)]
pub struct Sd3Transformer2DModel {
    pub pos_embed: PatchEmbed,
    pub time_text_embed: CombinedTimestepTextProjEmbeddings,
    pub context_embedder: Linear,
    pub transformer_blocks: Vec<JointTransformerBlock>,
    pub norm_out: AdaLayerNormContinuous,
    pub proj_out: Linear,
    #[module(skip)]
    pub out_channels: usize,
    /// `in_channels` (16 for SD 3).
    #[module(skip)]
    pub in_channels: usize,
    /// `sample_size`: the latent size the model was trained at (128 for SD 3 at 1024 px).
    #[module(skip)]
    pub sample_size: usize,
}

impl Sd3Transformer2DModel {
    /// The model for `config` (validated), with lazily initialised random weights and the
    /// position table diffusers' `__init__` computes.
    pub fn new(config: &Sd3TransformerConfig, device: &Device) -> Self {
        let c = config;
        let dim = c.inner_dim();
        let p = c.patch_size;
        Self {
            pos_embed: PatchEmbed::new(c.in_channels, dim, p, c.pos_embed_max_size, c.sample_size / p, device),
            time_text_embed: CombinedTimestepTextProjEmbeddings::new(dim, c.pooled_projection_dim, false, device),
            context_embedder: LinearConfig::new(c.joint_attention_dim, c.caption_projection_dim).init(device),
            transformer_blocks: (0..c.num_layers)
                .map(|i| {
                    let last = i + 1 == c.num_layers;
                    let dual = c.dual_attention_layers.contains(&i);
                    JointTransformerBlock::new(dim, c.num_attention_heads, c.attention_head_dim, last, c.qk_rms_norm(), dual, device)
                })
                .collect(),
            norm_out: AdaLayerNormContinuous::new(dim, dim, 1e-6, device),
            proj_out: LinearConfig::new(dim, p * p * c.out_channels()).init(device),
            out_channels: c.out_channels(),
            in_channels: c.in_channels,
            sample_size: c.sample_size,
        }
    }

    /// The stem of a `transformer/` folder's weights file: `diffusion_pytorch_model[.variant].safetensors`.
    pub const WEIGHTS: &'static str = "diffusion_pytorch_model";

    /// Loads `dir/config.json` and the folder's weights on `options.device` in `options.dtype`.
    pub fn load(dir: &Path, options: &LoadOptions) -> Result<Self, TransformerError> {
        let config = Sd3TransformerConfig::from_file(&dir.join("config.json"))?;
        let path = weights_path(dir, Self::WEIGHTS, options.variant.as_deref())?;
        Self::load_weights(&config, Weights::all(WeightsFile::open(&path)?), options)
    }

    /// Loads `weights` (diffusers' names) into a model built for `config`.
    pub fn load_weights(config: &Sd3TransformerConfig, weights: Weights, options: &LoadOptions) -> Result<Self, TransformerError> {
        Ok(weights.load_into(Self::new(config, &options.device), options.dtype, &[])?)
    }

    /// The dtype the model computes in.
    pub fn dtype(&self) -> DType {
        compute_dtype(&self.pos_embed.proj)
    }

    /// The velocity for each latent: `transformer(hidden_states, encoder_hidden_states,
    /// pooled_projections, timestep, skip_layers=...).sample`. `skip_layers` are the blocks
    /// skip-layer guidance leaves out.
    ///
    /// # Shapes
    /// - latents: `[batch, in_channels, h, w]`, context: `[batch, m, joint_attention_dim]`,
    ///   pooled: `[batch, pooled_projection_dim]`, timesteps: `batch` values
    /// - returns `[batch, out_channels, h/p·p, w/p·p]`
    pub fn forward(
        &self,
        latents: Tensor<4>,
        context: Tensor<3>,
        pooled: Tensor<2>,
        timesteps: &[f64],
        skip_layers: &[usize],
    ) -> Result<Tensor<4>, TransformerError> {
        let [b, _, h, w] = latents.dims();
        if timesteps.len() != b || context.dims()[0] != b || pooled.dims()[0] != b {
            return Err(TransformerError::Input(format!(
                "batch sizes differ: latents {b}, context {}, pooled {}, timesteps {}",
                context.dims()[0],
                pooled.dims()[0],
                timesteps.len()
            )));
        }
        let dtype = self.dtype();
        let cast = |t: Tensor<3>| if t.dtype() == dtype { t } else { t.cast(dtype) };
        let latents = if latents.dtype() == dtype { latents } else { latents.cast(dtype) };
        let pooled = if pooled.dtype() == dtype { pooled } else { pooled.cast(dtype) };
        let mut hidden = self.pos_embed.forward(latents)?;
        let temb = self.time_text_embed.forward(timesteps, None, pooled)?;
        let mut context = self.context_embedder.forward(cast(context));
        for (i, block) in self.transformer_blocks.iter().enumerate() {
            if skip_layers.contains(&i) {
                continue;
            }
            let (c, x) = block.forward(hidden, context.clone(), temb.clone());
            hidden = x;
            if let Some(c) = c {
                context = c;
            }
        }
        let hidden = self.proj_out.forward(self.norm_out.forward(hidden, temb));
        // unpatchify: [b, hp·wp, p·p·c] → "nhwpqc -> nchpwq" → [b, c, hp·p, wp·p]
        let p = self.pos_embed.patch_size;
        let (hp, wp, c) = (h / p, w / p, self.out_channels);
        Ok(hidden.reshape([b, hp, wp, p, p, c]).permute([0, 5, 1, 3, 2, 4]).reshape([b, c, hp * p, wp * p]))
    }
}
