//! GroupNorm (+ SiLU), the op entry points: kiln's CPU kernel ([`crate::cpu::norm`]), on GPUs
//! the measured route ([`crate::gpu::norm`]), burn's module elsewhere.

use burn::nn::GroupNorm;
use burn::tensor::Tensor;

use crate::{cpu, gpu, profile};

/// `norm.forward(x)` (diffusers' `GroupNorm`), by kiln's CPU kernel where it applies
/// ([`cpu::norm`]: flex, f32), on GPUs by burn's module or a fused formulation, whichever is faster
/// there ([`gpu::norm`]), and by burn's ops everywhere else.
///
/// # Shapes
/// - x: `[batch, channels, ...]` → the same shape
pub fn group_norm<const D: usize>(norm: &GroupNorm, x: Tensor<D>) -> Tensor<D> {
    norm_forward(norm, x, false)
}

/// `silu(norm.forward(x))`, diffusers' `nonlinearity(norm(x))` before a ResNet block's
/// convolutions and the models' `conv_out`, in one pass on the CPU ([`cpu::norm`]), on GPUs as
/// [`group_norm`].
///
/// # Shapes
/// - x: `[batch, channels, ...]` → the same shape
pub fn group_norm_silu<const D: usize>(norm: &GroupNorm, x: Tensor<D>) -> Tensor<D> {
    norm_forward(norm, x, true)
}

/// [`group_norm`], then SiLU when `with_silu`: kiln's CPU kernel, else the GPU routes.
fn norm_forward<const D: usize>(norm: &GroupNorm, x: Tensor<D>, with_silu: bool) -> Tensor<D> {
    profile::scope("group_norm", profile::device_of(&x), || {
        // in place when nothing else holds `x`, else into a new tensor, else the GPU routes
        match cpu::norm::group_norm_in_place(norm, x, with_silu) {
            Ok(y) => y,
            Err(x) => cpu::norm::group_norm(norm, &x, with_silu).unwrap_or_else(|| gpu::norm::group_norm(norm, x, with_silu)),
        }
    })
}
