//! # kiln-ops
//!
//! The ops kiln's models spend their time in, each with one entry point that picks the fastest
//! correct way to run it on the tensor's device:
//! [`conv2d_forward`], [`linear()`], [`group_norm`] / [`group_norm_silu`], [`attention::scaled_dot_product_attention`]
//! / [`attention::multi_head_attention`] and [`geglu`].
//!
//! - On the CPU (burn's flex backend, f32 activations, inference) they run kiln's own kernels where
//!   burn's ops were slow: [`cpu`] (attention, convolution, linear layers, GroupNorm + SiLU,
//!   GEGLU); linear and convolution weights may stay in the f16/bf16 they were stored in.
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

pub mod activation;
pub mod attention;
pub mod conv;
pub mod cpu;
pub mod device;
mod geometry;
pub mod gpu;
pub mod linear;
pub mod norm;
pub mod profile;
pub mod testing;

pub use activation::geglu;
pub use attention::{multi_head_attention, scaled_dot_product_attention};
pub use conv::{conv2d_forward, upsample_nearest_conv2d};
pub use linear::linear;
pub use norm::{group_norm, group_norm_silu};
/// Re-exported for [`lane_test!`].
pub use burn;

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
