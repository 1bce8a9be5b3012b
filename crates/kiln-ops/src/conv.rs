//! 2-D convolution, the op entry point: kiln's CPU kernel ([`crate::cpu::conv`]), on GPUs the
//! measured route ([`crate::gpu::conv`]), burn's op elsewhere.

use burn::nn::conv::Conv2d;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::Tensor;

use crate::{cpu, gpu, profile};

/// `conv.forward(x)`, by kiln's CPU kernel where it applies ([`cpu::conv`]: flex, f32, stride 1),
/// on GPUs by burn's op or an im2col product, whichever is faster there ([`gpu::conv`]), and by
/// burn's op everywhere else. kiln's models call their convolutions through this.
///
/// # Shapes
/// - x: `[batch, c_in, height, width]` → `[batch, c_out, height_out, width_out]`
pub fn conv2d_forward(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    profile::scope("conv2d", profile::device_of(&x), || {
        cpu::conv::conv2d(conv, &x).unwrap_or_else(|| {
            if conv.weight.val().dtype() != x.dtype() {
                // a weight kept in its file's half precision on the CPU, where kiln's kernel does
                // not apply (the stride-2 downsamplers): burn's op on a widened copy
                return gpu::conv::conv2d(&crate::cast_module(conv.clone(), x.dtype()), x);
            }
            gpu::conv::conv2d(conv, x)
        })
    })
}

/// `conv.forward(interpolate(x, size, mode="nearest"))`: diffusers' `Upsample2D`. Where `size`
/// is a whole multiple of `x`'s (the usual ×2) kiln's CPU kernel reads the input as if upsampled
/// ([`cpu::conv::conv2d_upsampled`]), so the upsampled tensor — a VAE decode's largest — is never
/// made; everywhere else burn's nearest interpolation, then [`conv2d_forward`].
///
/// # Shapes
/// - x: `[batch, c_in, height, width]`, size `[h, w]` → `[batch, c_out, h_out, w_out]`
pub fn upsample_nearest_conv2d(conv: &Conv2d, x: Tensor<4>, size: [usize; 2]) -> Tensor<4> {
    let [_, _, h, w] = x.dims();
    let up = if h > 0 && w > 0 && size[0] % h == 0 && size[1] % w == 0 && size[0] / h == size[1] / w { size[0] / h } else { 0 };
    if up > 0 {
        let fused = profile::scope("conv2d", profile::device_of(&x), || cpu::conv::conv2d_upsampled(conv, &x, up));
        if let Some(y) = fused {
            return y;
        }
    }
    conv2d_forward(conv, interpolate(x, InterpolateOptions::new(InterpolateMode::Nearest).with_output_size(size)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::conv::Conv2dConfig;
    use burn::nn::PaddingConfig2d;
    use burn::tensor::{DType, Device, Distribution};

    /// The fused ×2 (the kernel) and an odd output size (burn's interpolation, then the
    /// convolution) against burn's interpolation + convolution, with the weight f32 and f16.
    #[test]
    fn upsampled_convolution_matches_interpolate_then_conv() {
        let device = Device::flex();
        let conv = Conv2dConfig::new([6, 70], [3, 3]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)).init(&device);
        let mut half = conv.clone();
        half.weight = half.weight.map(|w| w.cast(DType::F16));
        let widened = crate::cast_module(half.clone(), DType::F32);
        let x = Tensor::<4>::random([2, 6, 5, 7], Distribution::Normal(0.0, 1.0), &device);
        for size in [[10, 14], [9, 13]] {
            for (c, reference) in [(&conv, &conv), (&half, &widened)] {
                let got = upsample_nearest_conv2d(c, x.clone(), size);
                let want = reference.forward(interpolate(x.clone(), InterpolateOptions::new(InterpolateMode::Nearest).with_output_size(size)));
                assert_eq!(got.dims(), want.dims());
                let err: f32 = (got - want).abs().max().into_scalar();
                assert!(err < 1e-4, "{size:?}: max error {err}");
            }
        }
    }
}
