//! Timestep embeddings (diffusers `models/embeddings.py`).

use crate::linear::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::silu;
use burn::tensor::{DType, TensorData};

/// `get_timestep_embedding(timesteps, dim, flip_sin_to_cos, downscale_freq_shift)`: sinusoidal
/// embeddings, computed on the host in float32 exactly like torch does on the CPU, then uploaded
/// in `dtype`.
///
/// # Shapes
/// - returns `[timesteps.len(), dim]`
pub fn timestep_embedding(
    timesteps: &[f64],
    dim: usize,
    flip_sin_to_cos: bool,
    downscale_freq_shift: f64,
    device: &Device,
    dtype: DType,
) -> Tensor<2> {
    let half = dim / 2;
    let neg_log = -(10000f64.ln()) as f32;
    let div = (half as f64 - downscale_freq_shift) as f32;
    let freqs: Vec<f32> = (0..half).map(|i| ((neg_log * i as f32) / div).exp()).collect();
    let mut data = Vec::with_capacity(timesteps.len() * dim);
    for &t in timesteps {
        let args: Vec<f32> = freqs.iter().map(|f| t as f32 * f).collect();
        let (sin, cos): (Vec<f32>, Vec<f32>) = args.iter().map(|a| (a.sin(), a.cos())).unzip();
        let (first, second) = if flip_sin_to_cos { (cos, sin) } else { (sin, cos) };
        data.extend(first);
        data.extend(second);
        if dim % 2 == 1 {
            data.push(0.0);
        }
    }
    Tensor::from_data(TensorData::new(data, [timesteps.len(), dim]), (device, dtype))
}

#[derive(Config, Debug)]
pub struct TimestepEmbeddingConfig {
    pub in_channels: usize,
    pub time_embed_dim: usize,
}

impl TimestepEmbeddingConfig {
    pub fn init(&self, device: &Device) -> TimestepEmbedding {
        TimestepEmbedding {
            linear_1: LinearConfig::new(self.in_channels, self.time_embed_dim).init(device),
            linear_2: LinearConfig::new(self.time_embed_dim, self.time_embed_dim).init(device),
        }
    }
}

/// `TimestepEmbedding` with SiLU: linear_1 → silu → linear_2.
#[derive(Module, Debug)]
pub struct TimestepEmbedding {
    pub linear_1: Linear,
    pub linear_2: Linear,
}

impl TimestepEmbedding {
    /// # Shapes
    /// - x: `[batch, in_channels]` → `[batch, time_embed_dim]`
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.linear_2.forward(silu(self.linear_1.forward(x)))
    }
}
