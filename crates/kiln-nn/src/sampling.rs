//! `Downsample2D` and `Upsample2D` (diffusers `models/downsampling.py`, `models/upsampling.py`),
//! the `use_conv = True` variants of SD's UNet and VAE.

use burn::nn::conv::Conv2d;
use burn::prelude::*;
use burn::tensor::ops::PadMode;

use kiln_ops::conv2d_forward;

use crate::conv2d;

#[derive(Config, Debug)]
pub struct Downsample2DConfig {
    pub channels: usize,
    pub out_channels: usize,
    /// 1 in the UNet; 0 in the VAE encoder, which then pads (0, 1, 0, 1) asymmetrically first.
    #[config(default = 1)]
    pub padding: usize,
}

impl Downsample2DConfig {
    pub fn init(&self, device: &Device) -> Downsample2D {
        Downsample2D {
            conv: conv2d(self.channels, self.out_channels, 3, 2, self.padding, device),
            asymmetric_pad: self.padding == 0,
        }
    }
}

/// A stride-2 3×3 convolution.
#[derive(Module, Debug)]
pub struct Downsample2D {
    pub conv: Conv2d,
    pub asymmetric_pad: bool,
}

impl Downsample2D {
    /// # Shapes
    /// - x: `[batch, channels, h, w]` → `[batch, out_channels, ceil(h/2), ceil(w/2)]` (padding 1)
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = if self.asymmetric_pad {
            // F.pad(x, (0, 1, 0, 1)): right and bottom only
            x.pad([(0, 1), (0, 1)], PadMode::Constant(0.0))
        } else {
            x
        };
        conv2d_forward(&self.conv, x)
    }
}

#[derive(Config, Debug)]
pub struct Upsample2DConfig {
    pub channels: usize,
    pub out_channels: usize,
}

impl Upsample2DConfig {
    pub fn init(&self, device: &Device) -> Upsample2D {
        Upsample2D { conv: conv2d(self.channels, self.out_channels, 3, 1, 1, device) }
    }
}

/// Nearest-neighbour ×2 upsampling (PyTorch's `mode="nearest"`, floor indexing) then a 3×3 conv.
#[derive(Module, Debug)]
pub struct Upsample2D {
    pub conv: Conv2d,
}

impl Upsample2D {
    /// # Shapes
    /// - x: `[batch, channels, h, w]` → `[batch, out_channels, 2h, 2w]`, or `output_size` when
    ///   given (the UNet passes the skip connection's size when the latent is not a multiple of
    ///   the downsampling factor).
    pub fn forward(&self, x: Tensor<4>, output_size: Option<[usize; 2]>) -> Tensor<4> {
        let [_, _, h, w] = x.dims();
        let size = output_size.unwrap_or([2 * h, 2 * w]);
        kiln_ops::upsample_nearest_conv2d(&self.conv, x, size)
    }
}
