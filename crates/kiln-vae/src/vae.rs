//! diffusers' `Encoder`, `Decoder` and `DiagonalGaussianDistribution`
//! (`models/autoencoders/vae.py`), in the `norm_type = "group"` form `AutoencoderKL` uses.

use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, GroupNormConfig};
use burn::prelude::*;
use kiln_nn::conv2d;
use kiln_ops::{conv2d_forward, group_norm_silu};

use crate::blocks::{DownEncoderBlock2D, UNetMidBlock2D, UpDecoderBlock2D, VAE_EPS};
use crate::config::AutoencoderKLConfig;
use crate::error::VaeError;

/// Image → moments (`double_z = True`: mean and log-variance stacked on channels).
#[derive(Module, Debug)]
pub struct Encoder {
    pub conv_in: Conv2d,
    pub down_blocks: Vec<DownEncoderBlock2D>,
    pub mid_block: UNetMidBlock2D,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
}

impl Encoder {
    pub fn new(c: &AutoencoderKLConfig, device: &Device) -> Self {
        let boc = &c.block_out_channels;
        let g = c.norm_num_groups;
        let last = *boc.last().expect("validated: block_out_channels is not empty");
        let mut output_channel = boc[0];
        let down_blocks = (0..boc.len())
            .map(|i| {
                let input_channel = output_channel;
                output_channel = boc[i];
                let is_final_block = i == boc.len() - 1;
                DownEncoderBlock2D::new(input_channel, output_channel, c.layers_per_block, g, !is_final_block, device)
            })
            .collect();
        Self {
            conv_in: conv2d(c.in_channels, boc[0], 3, 1, 1, device),
            down_blocks,
            mid_block: UNetMidBlock2D::new(last, g, c.mid_block_add_attention, device),
            conv_norm_out: GroupNormConfig::new(g, last).with_epsilon(VAE_EPS).init(device),
            conv_out: conv2d(last, 2 * c.latent_channels, 3, 1, 1, device),
        }
    }

    /// # Shapes
    /// - x: `[batch, in_channels, h, w]` → `[batch, 2 * latent_channels, h / f, w / f]`
    ///   (each of the `n - 1` downsamplers maps a size s ≥ 2 to floor(s / 2))
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = conv2d_forward(&self.conv_in, x);
        let x = self.down_blocks.iter().fold(x, |x, b| b.forward(x));
        let x = self.mid_block.forward(x);
        conv2d_forward(&self.conv_out, group_norm_silu(&self.conv_norm_out, x))
    }

    /// Smallest input height/width the encoder accepts: every downsampler needs at least 2 pixels.
    pub fn min_input_size(&self) -> usize {
        1 << self.down_blocks.iter().filter(|b| !b.downsamplers.is_empty()).count()
    }
}

/// Latents → image.
#[derive(Module, Debug)]
pub struct Decoder {
    pub conv_in: Conv2d,
    pub mid_block: UNetMidBlock2D,
    pub up_blocks: Vec<UpDecoderBlock2D>,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
}

impl Decoder {
    pub fn new(c: &AutoencoderKLConfig, device: &Device) -> Self {
        let g = c.norm_num_groups;
        let reversed: Vec<usize> = c.block_out_channels.iter().rev().copied().collect();
        let mut output_channel = reversed[0];
        let up_blocks = (0..reversed.len())
            .map(|i| {
                let prev_output_channel = output_channel;
                output_channel = reversed[i];
                let is_final_block = i == reversed.len() - 1;
                // Decoder builds its up blocks with layers_per_block + 1 resnets
                UpDecoderBlock2D::new(
                    prev_output_channel,
                    output_channel,
                    c.layers_per_block + 1,
                    g,
                    !is_final_block,
                    device,
                )
            })
            .collect();
        let first = c.block_out_channels[0];
        Self {
            conv_in: conv2d(c.latent_channels, reversed[0], 3, 1, 1, device),
            mid_block: UNetMidBlock2D::new(reversed[0], g, c.mid_block_add_attention, device),
            up_blocks,
            conv_norm_out: GroupNormConfig::new(g, first).with_epsilon(VAE_EPS).init(device),
            conv_out: conv2d(first, c.out_channels, 3, 1, 1, device),
        }
    }

    /// # Shapes
    /// - z: `[batch, latent_channels, h, w]` → `[batch, out_channels, h * f, w * f]`
    pub fn forward(&self, z: Tensor<4>) -> Tensor<4> {
        let x = conv2d_forward(&self.conv_in, z);
        let x = self.mid_block.forward(x);
        let x = self.up_blocks.iter().fold(x, |x, b| b.forward(x));
        conv2d_forward(&self.conv_out, group_norm_silu(&self.conv_norm_out, x))
    }
}

/// The encoder's posterior: a Gaussian per latent element. `logvar` is clamped to [-30, 20] as
/// in diffusers (`DiagonalGaussianDistribution.__init__`).
#[derive(Debug, Clone)]
pub struct DiagonalGaussianDistribution {
    /// `[batch, latent_channels, h, w]`
    pub mean: Tensor<4>,
    /// Clamped log-variance, like `mean`.
    pub logvar: Tensor<4>,
    /// `exp(0.5 * logvar)`
    pub std: Tensor<4>,
    /// `exp(logvar)`
    pub var: Tensor<4>,
}

impl DiagonalGaussianDistribution {
    /// Splits the moments `[batch, 2 * latent_channels, h, w]` into mean and log-variance.
    pub fn from_moments(moments: Tensor<4>) -> Self {
        let [mean, logvar]: [Tensor<4>; 2] = moments.chunk(2, 1).try_into().expect("chunk(2) of an even dim gives 2");
        let logvar = logvar.clamp(-30.0, 20.0);
        let std = logvar.clone().mul_scalar(0.5).exp();
        let var = logvar.clone().exp();
        Self { mean, logvar, std, var }
    }

    /// `mean + std * noise` with noise you draw (diffusers draws `randn_tensor(mean.shape,
    /// generator)`; kiln's pipeline draws it with its torch-compatible generator). The noise is
    /// cast to the distribution's dtype.
    ///
    /// # Shapes
    /// - noise: like `mean` → like `mean`
    pub fn sample(&self, noise: Tensor<4>) -> Result<Tensor<4>, VaeError> {
        if noise.dims() != self.mean.dims() {
            return Err(VaeError::Input(format!(
                "posterior noise has shape {:?}, the latents have {:?}",
                noise.dims(),
                self.mean.dims()
            )));
        }
        let noise = noise.cast(self.mean.dtype());
        Ok(self.mean.clone() + self.std.clone() * noise)
    }

    /// The most likely latents (`mean`).
    pub fn mode(&self) -> Tensor<4> {
        self.mean.clone()
    }
}
