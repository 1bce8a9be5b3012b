//! GroupNorm (+ SiLU) on GPUs: burn's `GroupNorm` module, or the same normalisation written for
//! burn's fusion, whichever [`crate::gpu::route::choose`] measured to be faster on the device.
//!
//! burn 0.22.1's `GroupNorm` on f16 casts the input to f32 (a full f32 copy that two reductions and
//! the normalisation then read) and back: dtype casts inside the UNet step. The fused form reads
//! the input in its own dtype three times — two reductions that each cast as they read, and one
//! element-wise pass that casts, normalises with a per-channel scale and shift, applies SiLU and
//! casts back — so nothing wider than the input is written except the per-group statistics.

use burn::nn::GroupNorm;
use burn::tensor::activation::silu;
use burn::tensor::{DType, FloatDType, Tensor};

use crate::gpu::route::GpuOp;

/// How [`group_norm`] runs on a GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GpuNormRoute {
    /// burn's `GroupNorm::forward` (then burn's `silu`).
    Burn,
    /// PyTorch's formulation (`ComputeFusedParams` in `aten/src/ATen/native/cpu/group_norm_kernel.cpp`
    /// and its CUDA twin: `y = x·scale + shift` with `scale = rstd·γ`, `shift = β − mean·scale` per
    /// channel), statistics in f32 from shifted
    /// sums (the group's first element subtracted before summing, so a mean far from zero does not
    /// cancel the variance away), written as burn tensor ops that fuse into two reductions and one
    /// element-wise kernel.
    Fused,
}

/// `norm.forward(x)`, then SiLU when `with_silu`, on a GPU by the route `GpuOp::GroupNorm`'s
/// [`RoutePolicy`](crate::gpu::route::RoutePolicy) gives (measured once per device, dtype and shape
/// under `Auto`); burn's module on flex and under autodiff.
///
/// # Shapes
/// - x: `[batch, channels, ...]` → the same shape
pub fn group_norm<const D: usize>(norm: &GroupNorm, x: Tensor<D>, with_silu: bool) -> Tensor<D> {
    if D < 3 {
        return group_norm_by(GpuNormRoute::Burn, norm, x, with_silu);
    }
    let burn = || group_norm_by(GpuNormRoute::Burn, norm, x.clone(), with_silu);
    let fused = || group_norm_by(GpuNormRoute::Fused, norm, x.clone(), with_silu);
    let shape = || format!("x {:?} groups {}{}", x.dims(), norm.num_groups, if with_silu { " + silu" } else { "" });
    let route = if crate::gpu::route::use_alternative(GpuOp::GroupNorm, &x.device(), x.dtype(), shape, &burn, &fused) {
        GpuNormRoute::Fused
    } else {
        GpuNormRoute::Burn
    };
    group_norm_by(route, norm, x, with_silu)
}

/// `norm.forward(x)` (then SiLU when `with_silu`) along `route`.
///
/// # Shapes
/// - x: `[batch, channels, ...]` (rank ≥ 3) → the same shape
pub fn group_norm_by<const D: usize>(route: GpuNormRoute, norm: &GroupNorm, x: Tensor<D>, with_silu: bool) -> Tensor<D> {
    match route {
        GpuNormRoute::Burn => {
            let y = norm.forward(x);
            if with_silu { silu(y) } else { y }
        }
        GpuNormRoute::Fused => fused(norm, x, with_silu),
    }
}

fn fused<const D: usize>(norm: &GroupNorm, x: Tensor<D>, with_silu: bool) -> Tensor<D> {
    let dims = x.dims();
    let (n, c, g) = (dims[0], dims[1], norm.num_groups);
    let m = dims.iter().product::<usize>() / (n * g);
    let dtype = x.dtype();
    let f32 = FloatDType::F32;
    let wide = |t: Tensor<3>| if t.dtype() == DType::F32 { t } else { t.cast(f32) };
    let xg = x.clone().reshape([n, g, m]);
    // shifted sums: s1 = E[x − x₀], s2 = E[(x − x₀)²] over each group, x₀ its first element
    let x0 = wide(xg.clone().narrow(2, 0, 1));
    let s1 = (wide(xg.clone()) - x0.clone()).mean_dim(2);
    let s2 = (wide(xg) - x0.clone()).square().mean_dim(2);
    let var = (s2 - s1.clone().square()).clamp_min(0.0);
    let rstd = var.add_scalar(norm.epsilon).sqrt().recip(); // [n, g, 1]
    let mean = x0 + s1;
    // per channel: [n, g, 1] → [n, c]
    let per_channel = |t: Tensor<3>| t.expand([n, g, c / g]).reshape([n, c]);
    let (mean, rstd) = (per_channel(mean), per_channel(rstd));
    let (scale, shift) = match (&norm.gamma, &norm.beta) {
        (Some(gamma), Some(beta)) if norm.affine => {
            let gamma = gamma.val().cast(f32).unsqueeze_dim::<2>(0);
            let beta = beta.val().cast(f32).unsqueeze_dim::<2>(0);
            let scale = rstd * gamma;
            (scale.clone(), beta - mean * scale)
        }
        _ => (rstd.clone(), -(mean * rstd)),
    };
    let mut affine = [1; D];
    affine[0] = n;
    affine[1] = c;
    let x = if dtype == DType::F32 { x } else { x.cast(f32) };
    let y = x * scale.reshape(affine) + shift.reshape(affine);
    let y = if with_silu { silu(y) } else { y };
    if dtype == DType::F32 { y } else { y.cast(dtype) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;
    use burn::nn::GroupNormConfig;
    use burn::tensor::Distribution;

    fn max_abs<const D: usize>(t: Tensor<D>) -> f32 {
        t.abs().max().into_scalar()
    }

    /// The fused formulation against burn's GroupNorm (+ silu) on flex in f32: 3-D and 4-D
    /// inputs, affine and not, with and without SiLU, a mean far from zero (1000 ± 1, where
    /// unshifted f32 sums would lose the variance) and groups as long as a 512-pixel VAE's.
    #[test]
    fn fused_matches_burns_group_norm() {
        let device = Device::flex();
        // bounds: f32 rounding of the statistics; the long rows' sums (burn's and kiln's, in
        // different orders) each carry ~√524288 · 6e-8 ≈ 4e-5 relative error
        for (what, dims, groups, affine, with_silu, offset, bound) in [
            ("4-D affine silu", vec![2, 8, 5, 6], 4, true, true, 0.0, 2e-5),
            ("4-D not affine", vec![1, 6, 3, 3], 3, false, false, 0.0, 2e-5),
            ("3-D affine", vec![2, 12, 7], 2, true, false, 0.0, 2e-5),
            ("mean 1000", vec![1, 4, 16, 16], 2, true, true, 1000.0, 2e-3),
            // a VAE-sized group: rows of 8 · 256 · 256 = 524288 elements
            ("long rows", vec![1, 32, 256, 256], 4, true, true, 0.5, 3e-4),
        ] {
            let mut norm = GroupNormConfig::new(groups, dims[1]).with_affine(affine).with_epsilon(1e-6).init(&device);
            if affine {
                let c = dims[1];
                norm.gamma = Some(burn::module::Param::from_tensor(Tensor::random([c], Distribution::Normal(1.0, 0.5), &device)));
                norm.beta = Some(burn::module::Param::from_tensor(Tensor::random([c], Distribution::Normal(0.0, 0.5), &device)));
            }
            let diff = if dims.len() == 4 {
                let x = Tensor::<4>::random([dims[0], dims[1], dims[2], dims[3]], Distribution::Normal(offset, 1.0), &device);
                max_abs(group_norm_by(GpuNormRoute::Fused, &norm, x.clone(), with_silu) - group_norm_by(GpuNormRoute::Burn, &norm, x, with_silu))
            } else {
                let x = Tensor::<3>::random([dims[0], dims[1], dims[2]], Distribution::Normal(offset, 1.0), &device);
                max_abs(group_norm_by(GpuNormRoute::Fused, &norm, x.clone(), with_silu) - group_norm_by(GpuNormRoute::Burn, &norm, x, with_silu))
            };
            eprintln!("{what}: max diff {diff:.2e} (bound {bound:.0e})");
            assert!(diff < bound, "{what}: max diff {diff}");
        }
    }

    /// In f16 the fused form is as close to the f32 result as burn's own f16 GroupNorm is
    /// (both round the input and the output to f16; the fused form keeps f32 in between).
    #[test]
    fn fused_f16_is_as_accurate_as_burns() {
        let device = Device::flex();
        let norm = GroupNormConfig::new(4, 16).with_epsilon(1e-6).init(&device);
        let x = Tensor::<4>::random([2, 16, 8, 8], Distribution::Normal(0.5, 2.0), &device);
        let exact = group_norm_by(GpuNormRoute::Burn, &norm, x.clone(), true);
        let x16 = x.cast(FloatDType::F16);
        let norm16 = crate::cast_module(norm.clone(), DType::F16);
        let err = |route| max_abs(group_norm_by(route, &norm16, x16.clone(), true).cast(FloatDType::F32) - exact.clone());
        let (fused, burn) = (err(GpuNormRoute::Fused), err(GpuNormRoute::Burn));
        eprintln!("f16 max error against f32: fused {fused:.2e}, burn {burn:.2e}");
        assert!(fused <= burn.max(2e-3) * 1.5, "f16 error: fused {fused}, burn {burn}");
    }
}
