//! # kiln-ops
//!
//! The ops kiln's models spend their time in, each with one entry point that picks the fastest
//! correct way to run it on the tensor's device:
//! [`conv2d_forward`], [`group_norm`] / [`group_norm_silu`], [`attention::scaled_dot_product_attention`]
//! / [`attention::multi_head_attention`] and [`geglu`].
//!
//! - On the CPU (burn's flex backend, f32, inference) they run kiln's own kernels where burn's
//!   ops were slow: [`cpu`] (attention, convolution, GroupNorm + SiLU, GEGLU).
//! - On GPUs (burn's CubeCL backends) they run burn's op or one of kiln's restructurings of it,
//!   whichever [`gpu::route`] measured faster at that shape (and checked against burn's output);
//!   [`gpu::store`] keeps the choices between processes.
//! - Everywhere else (autodiff, other dtypes) burn's ops, unchanged.
//!
//! Also: [`device`] (opening a wgpu device and refusing one that computes wrongly), [`profile`]
//! (per-op timing for `kiln bench --profile`) and [`testing`] (the wgpu test lane and its
//! watchdog). No model code lives here: the layers that call these ops are in kiln-nn.

/// `fn NAME(args) -> ret` that runs `PORTABLE(args)` (an `#[inline(always)]` function) compiled
/// for AVX-512F or AVX2 + FMA, whichever the CPU has (checked at run time; plain code elsewhere),
/// so its loops vectorise with the widest registers without building for one CPU. Used by the CPU
/// kernels' inner loops.
macro_rules! simd_dispatch {
    ($(#[$attr:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? => $portable:ident) => {
        $(#[$attr])*
        fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                    $portable($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $portable($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has AVX-512F (checked above).
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has AVX2 and FMA (checked above).
                    return unsafe { avx2($($arg),*) };
                }
            }
            $portable($($arg),*)
        }
    };
}

pub mod attention;
pub mod cpu;
pub mod device;
pub mod gpu;
pub mod profile;
pub mod testing;

pub use attention::{multi_head_attention, scaled_dot_product_attention};
/// Re-exported for [`lane_test!`].
pub use burn;

use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, PaddingConfig2d};
use burn::tensor::activation::gelu;
use burn::tensor::Tensor;

/// The zero padding `(top, left, bottom, right)` of a convolution kiln's own routes can run
/// (stride 1, dilation 1, one group, explicit or no padding, `x`'s channels matching the weight's, a
/// non-empty output: [`cpu_conv`] and [`gpu_conv`]'s im2col), else `None` (burn's op runs it).
pub(crate) fn stride_1_padding(conv: &Conv2d, x: &Tensor<4>) -> Option<(usize, usize, usize, usize)> {
    if conv.stride != [1, 1] || conv.dilation != [1, 1] || conv.groups != 1 {
        return None;
    }
    let (top, left, bottom, right) = match conv.padding {
        PaddingConfig2d::Explicit(top, left, bottom, right) => (top, left, bottom, right),
        PaddingConfig2d::Valid => (0, 0, 0, 0),
        PaddingConfig2d::Same => return None,
    };
    let [_, c_in, h, w] = x.dims();
    let [_, c_in_w, kh, kw] = conv.weight.dims();
    (c_in == c_in_w && h + top + bottom >= kh && w + left + right >= kw).then_some((top, left, bottom, right))
}

/// `conv.forward(x)`, by kiln's CPU kernel where it applies ([`cpu::conv`]: flex, f32, stride 1),
/// on GPUs by burn's op or an im2col product, whichever is faster there ([`gpu::conv`]), and by
/// burn's op everywhere else. kiln's models call their convolutions through this.
///
/// # Shapes
/// - x: `[batch, c_in, height, width]` → `[batch, c_out, height_out, width_out]`
pub fn conv2d_forward(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    profile::scope("conv2d", profile::device_of(&x), || cpu::conv::conv2d(conv, &x).unwrap_or_else(|| gpu::conv::conv2d(conv, x)))
}

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
        cpu::norm::group_norm(norm, &x, with_silu).unwrap_or_else(|| gpu::norm::group_norm(norm, x, with_silu))
    })
}

/// diffusers' GEGLU after its projection: `hidden * gelu(gate)` with the exact (erf) GELU, where
/// `h` holds `hidden` and `gate` side by side (`proj(x).chunk(2, dim=-1)`); by kiln's CPU kernel
/// where it applies ([`cpu::activation`]), else by burn's ops.
///
/// # Shapes
/// - h: `[batch, seq, 2 · inner]` → `[batch, seq, inner]`
pub fn geglu(h: Tensor<3>) -> Tensor<3> {
    if let Some(out) = cpu::activation::geglu(&h) {
        return out;
    }
    let inner = h.dims()[2] / 2;
    let hidden = h.clone().narrow(2, 0, inner);
    let gate = h.narrow(2, inner, inner);
    hidden * gelu(gate)
}

/// Casts every float parameter of `module` to `dtype` (e.g. a randomly initialised model to f16
/// for benchmarks; loading casts on its own).
pub fn cast_module<M: burn::module::Module>(module: M, dtype: burn::tensor::DType) -> M {
    struct Cast(burn::tensor::DType);
    impl burn::module::ModuleMapper for Cast {
        fn map_float<const D: usize>(
            &mut self,
            param: burn::module::Param<burn::tensor::Tensor<D>>,
        ) -> burn::module::Param<burn::tensor::Tensor<D>> {
            let dtype = self.0;
            param.map(|t| if t.dtype() == dtype { t } else { t.cast(dtype) })
        }
    }
    module.map(&mut Cast(dtype))
}
