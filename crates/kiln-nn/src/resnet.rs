//! `ResnetBlock2D` (diffusers `models/resnet.py`), the `time_embedding_norm = "default"` variant
//! that SD1.x/2.x/SDXL UNets and the SD VAE use.

use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, GroupNormConfig};

use crate::linear::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::silu;

use kiln_ops::{conv2d_forward, group_norm_silu};

use crate::conv2d;

#[derive(Config, Debug)]
pub struct ResnetBlock2DConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    /// Width of the time embedding; `None` for the VAE (no `time_emb_proj`).
    pub temb_channels: Option<usize>,
    #[config(default = 32)]
    pub groups: usize,
    /// 1e-5 in UNet resnets (`resnet_eps`), 1e-6 in the VAE.
    #[config(default = 1e-6)]
    pub eps: f64,
    #[config(default = 1.0)]
    pub output_scale_factor: f64,
}

impl ResnetBlock2DConfig {
    pub fn init(&self, device: &Device) -> ResnetBlock2D {
        let (i, o) = (self.in_channels, self.out_channels);
        ResnetBlock2D {
            norm1: GroupNormConfig::new(self.groups, i).with_epsilon(self.eps).init(device),
            conv1: conv2d(i, o, 3, 1, 1, device),
            time_emb_proj: self.temb_channels.map(|t| LinearConfig::new(t, o).init(device)),
            norm2: GroupNormConfig::new(self.groups, o).with_epsilon(self.eps).init(device),
            conv2: conv2d(o, o, 3, 1, 1, device),
            conv_shortcut: (i != o).then(|| conv2d(i, o, 1, 1, 0, device)),
            output_scale_factor: self.output_scale_factor,
        }
    }
}

#[derive(Module, Debug)]
pub struct ResnetBlock2D {
    pub norm1: GroupNorm,
    pub conv1: Conv2d,
    pub time_emb_proj: Option<Linear>,
    pub norm2: GroupNorm,
    pub conv2: Conv2d,
    pub conv_shortcut: Option<Conv2d>,
    pub output_scale_factor: f64,
}

impl ResnetBlock2D {
    /// # Shapes
    /// - x: `[batch, in_channels, height, width]`
    /// - temb: `[batch, temb_channels]` (ignored when the block has no `time_emb_proj`)
    /// - returns `[batch, out_channels, height, width]`
    pub fn forward(&self, x: Tensor<4>, temb: Option<Tensor<2>>) -> Tensor<4> {
        // the shortcut first where there is one, so `x` is not held while norm1 runs (which can
        // then write over it: one activation less at a VAE decode's peak)
        let (skip, h) = match &self.conv_shortcut {
            Some(c) => (conv2d_forward(c, x.clone()), group_norm_silu(&self.norm1, x)),
            None => (x.clone(), group_norm_silu(&self.norm1, x)),
        };
        let h = conv2d_forward(&self.conv1, h);
        let h = match (&self.time_emb_proj, temb) {
            (Some(proj), Some(t)) => h + proj.forward(silu(t)).unsqueeze_dims::<4>(&[2, 3]),
            _ => h,
        };
        let h = conv2d_forward(&self.conv2, group_norm_silu(&self.norm2, h));
        let out = skip + h;
        if self.output_scale_factor == 1.0 { out } else { out.div_scalar(self.output_scale_factor) }
    }
}
