//! 2-D convolution, the op entry point: kiln's CPU kernel ([`crate::cpu::conv`]), on GPUs the
//! measured route ([`crate::gpu::conv`]), burn's op elsewhere.

use burn::nn::conv::Conv2d;
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
