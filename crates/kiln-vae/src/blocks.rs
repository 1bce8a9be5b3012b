//! The VAE's blocks from diffusers' `models/unets/unet_2d_blocks.py`: `DownEncoderBlock2D`,
//! `UpDecoderBlock2D` and `UNetMidBlock2D`, in the configuration `Encoder`/`Decoder` build them
//! (`resnet_time_scale_shift = "default"`, no time embedding, eps 1e-6, output scale 1).

use burn::prelude::*;
use kiln_nn::{
    Attention, AttentionConfig, Downsample2D, Downsample2DConfig, ResnetBlock2D, ResnetBlock2DConfig, Upsample2D,
    Upsample2DConfig,
};

/// diffusers' VAE blocks all use `resnet_eps = 1e-6`.
pub const VAE_EPS: f64 = 1e-6;

fn resnet(in_channels: usize, out_channels: usize, groups: usize, device: &Device) -> ResnetBlock2D {
    ResnetBlock2DConfig::new(in_channels, out_channels).with_groups(groups).with_eps(VAE_EPS).init(device)
}

/// `num_layers` resnets then, except on the last level, a stride-2 conv with diffusers'
/// `downsample_padding = 0` (asymmetric (0, 1, 0, 1) zero pad first).
#[derive(Module, Debug)]
pub struct DownEncoderBlock2D {
    pub resnets: Vec<ResnetBlock2D>,
    /// `downsamplers.0.conv`; empty on the last level.
    pub downsamplers: Vec<Downsample2D>,
}

impl DownEncoderBlock2D {
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        num_layers: usize,
        groups: usize,
        add_downsample: bool,
        device: &Device,
    ) -> Self {
        let resnets = (0..num_layers)
            .map(|i| resnet(if i == 0 { in_channels } else { out_channels }, out_channels, groups, device))
            .collect();
        let downsamplers = if add_downsample {
            vec![Downsample2DConfig::new(out_channels, out_channels).with_padding(0).init(device)]
        } else {
            vec![]
        };
        Self { resnets, downsamplers }
    }

    /// # Shapes
    /// - x: `[batch, in_channels, h, w]` → `[batch, out_channels, floor(h/2), floor(w/2)]` with a
    ///   downsampler (h, w ≥ 2), `[batch, out_channels, h, w]` without.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = self.resnets.iter().fold(x, |x, r| r.forward(x, None));
        self.downsamplers.iter().fold(x, |x, d| d.forward(x))
    }
}

/// `num_layers` resnets then, except on the last level, nearest ×2 upsampling + conv.
#[derive(Module, Debug)]
pub struct UpDecoderBlock2D {
    pub resnets: Vec<ResnetBlock2D>,
    /// `upsamplers.0.conv`; empty on the last level.
    pub upsamplers: Vec<Upsample2D>,
}

impl UpDecoderBlock2D {
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        num_layers: usize,
        groups: usize,
        add_upsample: bool,
        device: &Device,
    ) -> Self {
        let resnets = (0..num_layers)
            .map(|i| resnet(if i == 0 { in_channels } else { out_channels }, out_channels, groups, device))
            .collect();
        let upsamplers =
            if add_upsample { vec![Upsample2DConfig::new(out_channels, out_channels).init(device)] } else { vec![] };
        Self { resnets, upsamplers }
    }

    /// # Shapes
    /// - x: `[batch, in_channels, h, w]` → `[batch, out_channels, 2h, 2w]` with an upsampler,
    ///   `[batch, out_channels, h, w]` without.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = self.resnets.iter().fold(x, |x, r| r.forward(x, None));
        self.upsamplers.iter().fold(x, |x, u| u.forward(x, None))
    }
}

/// resnet → (attention → resnet) with one layer: diffusers' `UNetMidBlock2D` as the VAE builds
/// it (`attention_head_dim = channels`, so a single head; the attention has its own GroupNorm,
/// q/k/v biases and a residual connection; `add_attention = false` leaves it out).
#[derive(Module, Debug)]
pub struct UNetMidBlock2D {
    pub resnets: Vec<ResnetBlock2D>,
    /// `attentions.0.{group_norm, to_q, to_k, to_v, to_out.0}`; empty when
    /// `mid_block_add_attention` is false.
    pub attentions: Vec<Attention>,
}

impl UNetMidBlock2D {
    pub fn new(channels: usize, groups: usize, add_attention: bool, device: &Device) -> Self {
        let attentions = if add_attention {
            vec![
                AttentionConfig::new(channels, 1, channels)
                    .with_qkv_bias(true)
                    .with_norm_num_groups(Some(groups))
                    .with_eps(VAE_EPS)
                    .with_residual_connection(true)
                    .init(device),
            ]
        } else {
            vec![]
        };
        Self {
            resnets: vec![resnet(channels, channels, groups, device), resnet(channels, channels, groups, device)],
            attentions,
        }
    }

    /// # Shapes
    /// - x: `[batch, channels, h, w]` → same shape
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut x = self.resnets[0].forward(x, None);
        for (i, resnet) in self.resnets.iter().enumerate().skip(1) {
            if let Some(attn) = self.attentions.get(i - 1) {
                x = attn.forward_spatial(x);
            }
            x = resnet.forward(x, None);
        }
        x
    }
}
