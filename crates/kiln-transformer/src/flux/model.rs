//! diffusers' `FluxTransformer2DModel` (`models/transformers/transformer_flux.py`): the FLUX.1
//! denoiser. Packed latent tokens (2×2 patches of the 16-channel latents, packed by the pipeline)
//! and T5 text tokens go through the double-stream blocks, then together through the
//! single-stream blocks, with rotary positions from their ids, conditioned on the timestep, the
//! pooled CLIP embedding and (FLUX.1-dev) the guidance scale.

use std::path::Path;

use burn::prelude::*;
use burn::tensor::DType;
use kiln_nn::{weights_path, Linear, LinearConfig, LoadOptions, Weights, WeightsFile};

use super::block::{FluxSingleTransformerBlock, FluxTransformerBlock};
use super::config::FluxTransformerConfig;
use crate::rope::rope_tables;
use crate::embeddings::CombinedTimestepTextProjEmbeddings;
use crate::error::TransformerError;
use crate::norm::AdaLayerNormContinuous;

/// `FluxTransformer2DModel`.
#[derive(Module, Debug)]
pub struct FluxTransformer2DModel {
    pub time_text_embed: CombinedTimestepTextProjEmbeddings,
    pub context_embedder: Linear,
    pub x_embedder: Linear,
    pub transformer_blocks: Vec<FluxTransformerBlock>,
    pub single_transformer_blocks: Vec<FluxSingleTransformerBlock>,
    pub norm_out: AdaLayerNormContinuous,
    pub proj_out: Linear,
    #[module(skip)]
    pub axes_dims_rope: [usize; 3],
}

impl FluxTransformer2DModel {
    /// The model for `config` (validated), with lazily initialised random weights.
    pub fn new(config: &FluxTransformerConfig, device: &Device) -> Self {
        let c = config;
        let dim = c.inner_dim();
        let (heads, head_dim) = (c.num_attention_heads, c.attention_head_dim);
        Self {
            time_text_embed: CombinedTimestepTextProjEmbeddings::new(dim, c.pooled_projection_dim, c.guidance_embeds, device),
            context_embedder: LinearConfig::new(c.joint_attention_dim, dim).init(device),
            x_embedder: LinearConfig::new(c.in_channels, dim).init(device),
            transformer_blocks: (0..c.num_layers).map(|_| FluxTransformerBlock::new(dim, heads, head_dim, device)).collect(),
            single_transformer_blocks: (0..c.num_single_layers)
                .map(|_| FluxSingleTransformerBlock::new(dim, heads, head_dim, device))
                .collect(),
            norm_out: AdaLayerNormContinuous::new(dim, dim, 1e-6, device),
            proj_out: LinearConfig::new(dim, c.patch_size * c.patch_size * c.out_channels()).init(device),
            axes_dims_rope: c.axes(),
        }
    }

    /// The stem of a `transformer/` folder's weights file.
    pub const WEIGHTS: &'static str = "diffusion_pytorch_model";

    /// Loads `dir/config.json` and the folder's weights on `options.device` in `options.dtype`.
    pub fn load(dir: &Path, options: &LoadOptions) -> Result<Self, TransformerError> {
        let config = FluxTransformerConfig::from_file(&dir.join("config.json"))?;
        let path = weights_path(dir, Self::WEIGHTS, options.variant.as_deref())?;
        Self::load_weights(&config, Weights::all(WeightsFile::open(&path)?), options)
    }

    /// Loads `weights` (diffusers' names) into a model built for `config`.
    pub fn load_weights(config: &FluxTransformerConfig, weights: Weights, options: &LoadOptions) -> Result<Self, TransformerError> {
        Ok(weights.load_into(Self::new(config, &options.device), options.dtype, &[])?)
    }

    /// The dtype the model computes in (the biases'; on the CPU a half-precision file's matrices
    /// stay f16).
    pub fn dtype(&self) -> DType {
        self.x_embedder.bias.as_ref().map_or_else(|| self.x_embedder.weight.val().dtype(), |b| b.val().dtype())
    }

    /// Whether the model embeds a guidance scale (FLUX.1-dev's guidance distillation).
    pub fn has_guidance_embeds(&self) -> bool {
        self.time_text_embed.guidance_embedder.is_some()
    }

    /// The packed velocity: `transformer(hidden_states, encoder_hidden_states, pooled_projections,
    /// timestep, img_ids, txt_ids, guidance).sample`. `timesteps` are diffusers' `timestep`
    /// argument (σ, in [0, 1]: the pipeline divides by 1000) and `guidance` the guidance scale per
    /// sample; both are multiplied by 1000 in float32 as the model does.
    ///
    /// # Shapes
    /// - hidden: `[batch, n, in_channels]`, context: `[batch, m, joint_attention_dim]`,
    ///   pooled: `[batch, pooled_projection_dim]`, img_ids: n, txt_ids: m
    /// - returns `[batch, n, out_channels]`
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        hidden: Tensor<3>,
        context: Tensor<3>,
        pooled: Tensor<2>,
        timesteps: &[f64],
        img_ids: &[[f32; 3]],
        txt_ids: &[[f32; 3]],
        guidance: Option<&[f64]>,
    ) -> Result<Tensor<3>, TransformerError> {
        let [b, n, _] = hidden.dims();
        let m = context.dims()[1];
        if timesteps.len() != b || context.dims()[0] != b || pooled.dims()[0] != b || guidance.is_some_and(|g| g.len() != b) {
            return Err(TransformerError::Input(format!(
                "batch sizes differ: latents {b}, context {}, pooled {}, timesteps {}, guidance {:?}",
                context.dims()[0],
                pooled.dims()[0],
                timesteps.len(),
                guidance.map(<[f64]>::len)
            )));
        }
        if img_ids.len() != n || txt_ids.len() != m {
            return Err(TransformerError::Input(format!(
                "{} image ids for {n} latent tokens, {} text ids for {m} text tokens",
                img_ids.len(),
                txt_ids.len()
            )));
        }
        let dtype = self.dtype();
        let cast3 = |t: Tensor<3>| if t.dtype() == dtype { t } else { t.cast(dtype) };
        let pooled = if pooled.dtype() == dtype { pooled } else { pooled.cast(dtype) };
        let device = hidden.device();
        let mut hidden = self.x_embedder.forward(cast3(hidden));
        // `timestep.to(dtype) * 1000`, `guidance.to(dtype) * 1000`
        let scale = |v: &[f64]| -> Vec<f64> { v.iter().map(|&t| f64::from(t as f32 * 1000.0)).collect() };
        let guidance = guidance.map(scale);
        let temb = self.time_text_embed.forward(&scale(timesteps), guidance.as_deref(), pooled)?;
        let mut context = self.context_embedder.forward(cast3(context));
        // the rotary tables of the joint sequence, text ids first
        let ids: Vec<[f32; 3]> = txt_ids.iter().chain(img_ids).copied().collect();
        let (cos, sin) = rope_tables(&ids, &self.axes_dims_rope, 10000.0);
        let d: usize = self.axes_dims_rope.iter().sum();
        let cos = Tensor::<2>::from_data(TensorData::new(cos, [m + n, d]), &device);
        let sin = Tensor::<2>::from_data(TensorData::new(sin, [m + n, d]), &device);
        for block in &self.transformer_blocks {
            (context, hidden) = block.forward(hidden, context, temb.clone(), cos.clone(), sin.clone());
        }
        for block in &self.single_transformer_blocks {
            (context, hidden) = block.forward(hidden, context, temb.clone(), cos.clone(), sin.clone());
        }
        Ok(self.proj_out.forward(self.norm_out.forward(hidden, temb)))
    }
}
