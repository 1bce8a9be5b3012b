//! The input embeddings of SD 3's MMDiT (diffusers `models/embeddings.py`): `PatchEmbed` (a
//! stride-p convolution into patches plus a sin-cos position table cropped to the latent's size)
//! and `CombinedTimestepTextProjEmbeddings` (the timestep's sinusoidal embedding through an MLP,
//! plus the pooled text embedding through `PixArtAlphaTextProjection`).

use burn::module::{Param, ParamId};
use burn::nn::conv::Conv2d;
use burn::prelude::*;
use kiln_nn::{conv2d, timestep_embedding, TimestepEmbedding, TimestepEmbeddingConfig};

use crate::error::TransformerError;

/// `get_2d_sincos_pos_embed(embed_dim, grid_size, base_size, interpolation_scale=1)` as diffusers
/// computes it: grid coordinates `arange(n) / (n / base_size)` in float32, frequencies
/// `1 / 10000^(2i / (embed_dim / 2))` and the sines and cosines in float64, then float32. Per
/// position (row i, column j; rows × columns flattened row-major) the first half of the channels
/// encode the column, the second half the row, each as sines then cosines.
///
/// # Shapes
/// - returns `grid_size² × embed_dim` values, row-major
pub fn sincos_pos_embed_2d(embed_dim: usize, grid_size: usize, base_size: usize) -> Vec<f32> {
    let quarter = embed_dim / 4;
    // get_1d_sincos_pos_embed_from_grid(D/2, pos): omega = 1 / 10000^(arange(D/4) / (D/4))
    let omega: Vec<f64> = (0..quarter).map(|i| 1.0 / 10000f64.powf(i as f64 / quarter as f64)).collect();
    let step = (grid_size as f64 / base_size as f64) as f32;
    let coord = |n: usize| ((n as f32) / step) as f64;
    let mut out = Vec::with_capacity(grid_size * grid_size * embed_dim);
    for i in 0..grid_size {
        for j in 0..grid_size {
            for pos in [coord(j), coord(i)] {
                out.extend(omega.iter().map(|w| (pos * w).sin() as f32));
                out.extend(omega.iter().map(|w| (pos * w).cos() as f32));
            }
        }
    }
    out
}

/// `PatchEmbed(..., pos_embed_max_size=M)` of SD 3: `proj` (a p×p convolution with stride p) and
/// the `M × M` position table `pos_embed` (a saved buffer; computed with
/// [`sincos_pos_embed_2d`] when a file lacks it).
#[derive(Module, Debug)]
pub struct PatchEmbed {
    pub proj: Conv2d,
    /// `[1, M², embed_dim]`.
    pub pos_embed: Param<Tensor<3>>,
    #[module(skip)]
    pub patch_size: usize,
    #[module(skip)]
    pub pos_embed_max_size: usize,
}

impl PatchEmbed {
    pub fn new(in_channels: usize, embed_dim: usize, patch_size: usize, max_size: usize, base_size: usize, device: &Device) -> Self {
        let shape = [1, max_size * max_size, embed_dim];
        let pos_embed = Param::uninitialized(
            ParamId::new(),
            move |device: &Device, _| {
                let values = sincos_pos_embed_2d(embed_dim, max_size, base_size);
                Tensor::from_data(TensorData::new(values, shape), device)
            },
            device.clone(),
            false,
            shape.into(),
        );
        Self { proj: conv2d(in_channels, embed_dim, patch_size, patch_size, 0, device), pos_embed, patch_size, pos_embed_max_size: max_size }
    }

    /// The patches with their positions: `proj(latent)` flattened to a sequence, plus the table's
    /// centre `h/p × w/p` crop (`cropped_pos_embed`).
    ///
    /// # Shapes
    /// - latent: `[batch, channels, h, w]` → `[batch, (h/p)·(w/p), embed_dim]`
    pub fn forward(&self, latent: Tensor<4>) -> Result<Tensor<3>, TransformerError> {
        let [_, _, h, w] = latent.dims();
        let (hp, wp, max) = (h / self.patch_size, w / self.patch_size, self.pos_embed_max_size);
        if hp > max || wp > max || hp == 0 || wp == 0 {
            return Err(TransformerError::Input(format!(
                "latents of {h}×{w} make {hp}×{wp} patches of {p}; the position table covers 1 to {max} per side \
                 (pos_embed_max_size), i.e. latents up to {m}×{m}",
                p = self.patch_size,
                m = max * self.patch_size
            )));
        }
        let x = kiln_ops::conv2d_forward(&self.proj, latent);
        let [b, d, _, _] = x.dims();
        let x = x.reshape([b, d, hp * wp]).swap_dims(1, 2);
        let (top, left) = ((max - hp) / 2, (max - wp) / 2);
        let table = self.pos_embed.val().reshape([max, max, d]).slice([top..top + hp, left..left + wp]).reshape([1, hp * wp, d]);
        let table = if table.dtype() == x.dtype() { table } else { table.cast(x.dtype()) };
        Ok(x + table)
    }
}

/// `CombinedTimestepTextProjEmbeddings(embedding_dim, pooled_projection_dim)`: the timestep's
/// 256-channel sinusoidal embedding (`flip_sin_to_cos=True`, shift 0) through `timestep_embedder`,
/// plus `text_embedder(pooled)` (`PixArtAlphaTextProjection` with SiLU: linear_1 → silu →
/// linear_2, the same layout as a `TimestepEmbedding`). With `guidance_embedder` it is
/// `CombinedTimestepGuidanceTextProjEmbeddings` (FLUX.1-dev): the guidance scale embedded like a
/// timestep is added too.
#[derive(Module, Debug)]
pub struct CombinedTimestepTextProjEmbeddings {
    pub timestep_embedder: TimestepEmbedding,
    pub guidance_embedder: Option<TimestepEmbedding>,
    pub text_embedder: TimestepEmbedding,
}

impl CombinedTimestepTextProjEmbeddings {
    pub fn new(embedding_dim: usize, pooled_projection_dim: usize, guidance: bool, device: &Device) -> Self {
        Self {
            timestep_embedder: TimestepEmbeddingConfig::new(256, embedding_dim).init(device),
            guidance_embedder: guidance.then(|| TimestepEmbeddingConfig::new(256, embedding_dim).init(device)),
            text_embedder: TimestepEmbeddingConfig::new(pooled_projection_dim, embedding_dim).init(device),
        }
    }

    /// `guidance` is required exactly when the model has a guidance embedder.
    ///
    /// # Shapes
    /// - timesteps, guidance: `batch` values, pooled: `[batch, pooled_projection_dim]` → `[batch, embedding_dim]`
    pub fn forward(&self, timesteps: &[f64], guidance: Option<&[f64]>, pooled: Tensor<2>) -> Result<Tensor<2>, TransformerError> {
        let sinusoid = |t: &[f64]| timestep_embedding(t, 256, true, 0.0, &pooled.device(), pooled.dtype());
        let mut emb = self.timestep_embedder.forward(sinusoid(timesteps));
        match (&self.guidance_embedder, guidance) {
            (Some(embedder), Some(g)) => emb = emb + embedder.forward(sinusoid(g)),
            (None, None) => {}
            (Some(_), None) => {
                return Err(TransformerError::Input("this model embeds the guidance scale (guidance_embeds): give one".into()))
            }
            (None, Some(_)) => {
                return Err(TransformerError::Input(
                    "this model has no guidance embedding (guidance_embeds = false): it takes no guidance scale".into(),
                ))
            }
        }
        Ok(emb + self.text_embedder.forward(pooled))
    }
}
