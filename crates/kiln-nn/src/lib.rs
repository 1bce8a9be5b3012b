//! # kiln-nn
//!
//! Building blocks shared by kiln's UNet, VAE and text encoders, written after diffusers'
//! `models/` modules with struct fields named like diffusers' state-dict keys, so checkpoints load
//! without remapping: [`ResnetBlock2D`], [`Attention`], [`Downsample2D`], [`Upsample2D`],
//! [`timestep_embedding`] + [`TimestepEmbedding`], the spatial transformer
//! ([`Transformer2DModel`], [`BasicTransformerBlock`], [`FeedForward`] with GEGLU), and [`load`] (safetensors through burn-store,
//! with missing and unused tensors reported by name).
//!
//! On the CPU (burn's flex backend, f32, inference) the layers run kiln's own kernels where
//! burn's ops were slow: [`cpu_attention`], [`cpu_conv`] (through [`conv2d_forward`]),
//! [`cpu_norm`] (GroupNorm + SiLU: [`group_norm`], [`group_norm_silu`]) and [`cpu_activation`]
//! (GEGLU). Every other device, dtype and autodiff goes through burn's ops unchanged.

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
pub mod cpu_activation;
pub mod cpu_attention;
pub mod cpu_conv;
pub mod cpu_norm;
pub mod embeddings;
mod flex;
pub mod gpu_conv;
pub mod gpu_flash;
pub mod gpu_norm;
pub mod gpu_route;
pub mod load;
pub mod profile;
pub mod resnet;
pub mod sampling;
pub mod testing;
pub mod transformer;
pub mod wgpu_device;

pub use attention::{Attention, AttentionConfig};
pub use embeddings::{timestep_embedding, TimestepEmbedding, TimestepEmbeddingConfig};
pub use load::{load_safetensors, read_config, LoadError};
pub use resnet::{ResnetBlock2D, ResnetBlock2DConfig};
pub use sampling::{Downsample2D, Downsample2DConfig, Upsample2D, Upsample2DConfig};
pub use transformer::{
    BasicTransformerBlock, BasicTransformerBlockConfig, FeedForward, FeedForwardConfig, Geglu, Projection,
    Transformer2DModel, Transformer2DModelConfig,
};

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, PaddingConfig2d};
use burn::tensor::{Device, Tensor};

/// A `nn.Conv2d(c_in, c_out, kernel_size=k, stride=s, padding=p)` as PyTorch builds it.
pub fn conv2d(c_in: usize, c_out: usize, kernel: usize, stride: usize, padding: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([c_in, c_out], [kernel, kernel])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(padding, padding, padding, padding))
        .init(device)
}

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

/// `conv.forward(x)`, by kiln's CPU kernel where it applies ([`cpu_conv`]: flex, f32, stride 1),
/// on GPUs by burn's op or an im2col product, whichever is faster there ([`gpu_conv`]), and by
/// burn's op everywhere else. kiln's models call their convolutions through this.
///
/// # Shapes
/// - x: `[batch, c_in, height, width]` → `[batch, c_out, height_out, width_out]`
pub fn conv2d_forward(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    profile::scope("conv2d", profile::device_of(&x), || cpu_conv::conv2d(conv, &x).unwrap_or_else(|| gpu_conv::conv2d(conv, x)))
}

/// `norm.forward(x)` (diffusers' `GroupNorm`), by kiln's CPU kernel where it applies
/// ([`cpu_norm`]: flex, f32), on GPUs by burn's module or a fused formulation, whichever is faster
/// there ([`gpu_norm`]), and by burn's ops everywhere else.
///
/// # Shapes
/// - x: `[batch, channels, ...]` → the same shape
pub fn group_norm<const D: usize>(norm: &GroupNorm, x: Tensor<D>) -> Tensor<D> {
    norm_forward(norm, x, false)
}

/// `silu(norm.forward(x))`, diffusers' `nonlinearity(norm(x))` before a ResNet block's
/// convolutions and the models' `conv_out`, in one pass on the CPU ([`cpu_norm`]), on GPUs as
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
        cpu_norm::group_norm(norm, &x, with_silu).unwrap_or_else(|| gpu_norm::group_norm(norm, x, with_silu))
    })
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
