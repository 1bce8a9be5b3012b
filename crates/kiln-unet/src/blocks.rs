//! The UNet's down, mid and up blocks (diffusers `models/unets/unet_2d_blocks.py`).
//!
//! `CrossAttnDownBlock2D` and `DownBlock2D` are one struct, [`DownBlock`], whose `attentions` list
//! is empty for `DownBlock2D` (likewise [`UpBlock`]); their state-dict keys are identical apart
//! from the `attentions.*` entries.

use burn::prelude::*;
use kiln_nn::{
    Downsample2D, Downsample2DConfig, ResnetBlock2D, ResnetBlock2DConfig, Transformer2DModel, Transformer2DModelConfig,
    Upsample2D, Upsample2DConfig,
};

use crate::config::BlockPlan;

/// What every block shares: resnet and transformer settings from the UNet config.
pub(crate) struct BlockSettings {
    pub temb_channels: usize,
    pub groups: usize,
    pub eps: f64,
    pub use_linear_projection: bool,
    pub upcast_attention: bool,
    pub downsample_padding: usize,
}

impl BlockSettings {
    fn resnet(&self, c_in: usize, c_out: usize, output_scale_factor: f64, device: &Device) -> ResnetBlock2D {
        ResnetBlock2DConfig::new(c_in, c_out)
            .with_temb_channels(Some(self.temb_channels))
            .with_groups(self.groups)
            .with_eps(self.eps)
            .with_output_scale_factor(output_scale_factor)
            .init(device)
    }

    /// `Transformer2DModel(heads, channels // heads, in_channels=channels, ...)`, as the
    /// CrossAttn blocks build it.
    fn transformer(&self, plan: &BlockPlan, channels: usize, device: &Device) -> Transformer2DModel {
        Transformer2DModelConfig::new(plan.heads, channels / plan.heads, channels)
            .with_cross_attention_dim(Some(plan.cross_attention_dim))
            .with_num_layers(plan.transformer_layers)
            .with_norm_num_groups(self.groups)
            .with_use_linear_projection(self.use_linear_projection)
            .with_upcast_attention(self.upcast_attention)
            .init(device)
    }

    pub fn down_block(&self, plan: &BlockPlan, device: &Device) -> DownBlock {
        let c = plan.out_channels;
        DownBlock {
            resnets: (0..plan.layers)
                .map(|i| self.resnet(if i == 0 { plan.in_channels } else { c }, c, 1.0, device))
                .collect(),
            attentions: if plan.cross_attention {
                (0..plan.layers).map(|_| self.transformer(plan, c, device)).collect()
            } else {
                Vec::new()
            },
            downsamplers: if plan.resample {
                vec![Downsample2DConfig::new(c, c).with_padding(self.downsample_padding).init(device)]
            } else {
                Vec::new()
            },
        }
    }

    pub fn mid_block(&self, plan: &BlockPlan, output_scale_factor: f64, device: &Device) -> MidBlock {
        let c = plan.out_channels;
        MidBlock {
            resnets: (0..=plan.layers).map(|_| self.resnet(c, c, output_scale_factor, device)).collect(),
            attentions: (0..plan.layers).map(|_| self.transformer(plan, c, device)).collect(),
        }
    }

    pub fn up_block(&self, plan: &BlockPlan, device: &Device) -> UpBlock {
        let c = plan.out_channels;
        let n = plan.layers;
        UpBlock {
            resnets: (0..n)
                .map(|i| {
                    let skip = if i == n - 1 { plan.in_channels } else { c };
                    let from_below = if i == 0 { plan.prev_output_channels } else { c };
                    self.resnet(from_below + skip, c, 1.0, device)
                })
                .collect(),
            attentions: if plan.cross_attention {
                (0..n).map(|_| self.transformer(plan, c, device)).collect()
            } else {
                Vec::new()
            },
            upsamplers: if plan.resample { vec![Upsample2DConfig::new(c, c).init(device)] } else { Vec::new() },
        }
    }
}

/// `CrossAttnDownBlock2D` (with `attentions`) or `DownBlock2D` (without).
#[derive(Module, Debug)]
pub struct DownBlock {
    pub resnets: Vec<ResnetBlock2D>,
    /// One Transformer2DModel after each resnet; empty for `DownBlock2D`.
    pub attentions: Vec<Transformer2DModel>,
    /// diffusers' `ModuleList` of one Downsample2D; empty in the last block.
    pub downsamplers: Vec<Downsample2D>,
}

impl DownBlock {
    /// Returns the block's output and the states the up path concatenates (after every resnet
    /// (+ attention) and after the downsampler).
    ///
    /// # Shapes
    /// - x: `[batch, in_channels, h, w]`, temb: `[batch, temb_channels]`,
    ///   context: `[batch, seq, cross_attention_dim]`
    /// - returns `[batch, out_channels, ceil(h/2), ceil(w/2)]` (h, w without a downsampler)
    pub fn forward(&self, mut x: Tensor<4>, temb: &Tensor<2>, context: &Tensor<3>) -> (Tensor<4>, Vec<Tensor<4>>) {
        let mut states = Vec::with_capacity(self.resnets.len() + 1);
        for (i, resnet) in self.resnets.iter().enumerate() {
            x = resnet.forward(x, Some(temb.clone()));
            if let Some(attn) = self.attentions.get(i) {
                x = attn.forward(x, Some(context.clone()));
            }
            states.push(x.clone());
        }
        for down in &self.downsamplers {
            x = down.forward(x);
            states.push(x.clone());
        }
        (x, states)
    }
}

/// `UNetMidBlock2DCrossAttn`: resnet, then (transformer, resnet) pairs.
#[derive(Module, Debug)]
pub struct MidBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2DModel>,
}

impl MidBlock {
    /// # Shapes
    /// - x: `[batch, channels, h, w]` → same shape
    pub fn forward(&self, x: Tensor<4>, temb: &Tensor<2>, context: &Tensor<3>) -> Tensor<4> {
        let mut x = self.resnets[0].forward(x, Some(temb.clone()));
        for (attn, resnet) in self.attentions.iter().zip(&self.resnets[1..]) {
            x = attn.forward(x, Some(context.clone()));
            x = resnet.forward(x, Some(temb.clone()));
        }
        x
    }
}

/// `CrossAttnUpBlock2D` (with `attentions`) or `UpBlock2D` (without).
#[derive(Module, Debug)]
pub struct UpBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2DModel>,
    pub upsamplers: Vec<Upsample2D>,
}

impl UpBlock {
    /// `skips` holds this block's skip connections in the order the down path produced them; each
    /// resnet takes the last one left.
    ///
    /// # Shapes
    /// - x: `[batch, prev_output_channels, h, w]`; skips: `[batch, *, h, w]`
    /// - upsample_size: the size the upsampler produces instead of `2h × 2w` (odd latent sizes)
    /// - returns `[batch, out_channels, H, W]`
    pub fn forward(
        &self,
        mut x: Tensor<4>,
        mut skips: Vec<Tensor<4>>,
        temb: &Tensor<2>,
        context: &Tensor<3>,
        upsample_size: Option<[usize; 2]>,
    ) -> Tensor<4> {
        for (i, resnet) in self.resnets.iter().enumerate() {
            let skip = skips.pop().expect("the UNet passes one skip per resnet");
            x = resnet.forward(Tensor::cat(vec![x, skip], 1), Some(temb.clone()));
            if let Some(attn) = self.attentions.get(i) {
                x = attn.forward(x, Some(context.clone()));
            }
        }
        for up in &self.upsamplers {
            x = up.forward(x, upsample_size);
        }
        x
    }
}
