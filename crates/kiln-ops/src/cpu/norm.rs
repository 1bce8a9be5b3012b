//! GroupNorm, optionally followed by SiLU, on the CPU: kiln's own kernel for burn's flex backend
//! (f32, no autodiff).
//!
//! burn 0.22 builds `GroupNorm` from tensor ops (mean, subtract, square, mean, divide, scale,
//! shift: seven passes over the activation, each allocating) and SiLU as `x · sigmoid(x)` with one
//! scalar `expf` call per value (docs/performance.md#cpu-figures-2026-11-27). Here one task per (image, group) reads its values twice for the
//! statistics (f64 sums) and once more to write `x · scale + shift` per channel — PyTorch's own CPU
//! formulation (`scale = γ / √(var + ε)`, `shift = β − mean · scale`, `group_norm_kernel.cpp`) —
//! with SiLU applied in the same pass through a vectorised exp.

use std::mem::MaybeUninit;

use burn::nn::GroupNorm;
use burn::tensor::{DType, Tensor};
use burn_flex::Flex;
use rayon::prelude::*;

use crate::cpu::attention::exp;
use crate::cpu::flex;

/// `norm.forward(x)`, then `silu` if asked, by kiln's kernel; `None` where it does not apply
/// (another device, autodiff, another dtype, a channel count that does not match `norm`): the
/// caller then uses burn's ops.
///
/// # Shapes
/// - x: `[batch, channels, ...]` (at least 3 dims) → the same shape
pub fn group_norm<const D: usize>(norm: &GroupNorm, x: &Tensor<D>, silu: bool) -> Option<Tensor<D>> {
    let dims = x.dims();
    let groups = Groups::of(norm, &dims, silu)?;
    let input = flex::f32_tensor(x)?;
    let values = flex::values(&input);
    let mut out = Vec::with_capacity(values.len());
    out.spare_capacity_mut().par_chunks_mut(groups.len).zip(values.par_chunks(groups.len)).enumerate().for_each(
        |(i, (o, x))| normalize(x, o, &groups.affine(i)),
    );
    // SAFETY: the chunks cover the whole capacity (values.len() is a multiple of groups.len) and
    // `normalize` writes every element of its chunk.
    unsafe { out.set_len(values.len()) };
    Some(flex::tensor(out, dims))
}

/// [`group_norm`] written over `x` itself when nothing else holds it (a convolution's output
/// going into the next block's norm: one activation-sized buffer less at the peak of a VAE
/// decode); `Err(x)` back, untouched, where it does not apply or `x` is shared.
///
/// # Shapes
/// - x: `[batch, channels, ...]` (at least 3 dims) → the same shape
pub fn group_norm_in_place<const D: usize>(norm: &GroupNorm, x: Tensor<D>, silu: bool) -> Result<Tensor<D>, Tensor<D>> {
    let dims = x.dims();
    let Some(groups) = Groups::of(norm, &dims, silu) else { return Err(x) };
    if !flex::on_flex(&x, &[DType::F32]) {
        return Err(x);
    }
    let Ok(mut input) = x.clone().try_into_primitive::<Flex>() else { return Err(x) };
    drop(x);
    let len = dims.iter().product::<usize>();
    let whole = input.is_contiguous() && input.layout().start_offset() == 0;
    match input.try_storage_mut::<f32>() {
        Some(values) if whole && values.len() >= len => {
            values[..len].par_chunks_mut(groups.len).enumerate().for_each(|(i, x)| normalize_in_place(x, &groups.affine(i)));
        }
        _ => return Err(Tensor::from_primitive::<Flex>(input)),
    }
    Ok(Tensor::from_primitive::<Flex>(input))
}

/// A GroupNorm over an input of some shape: its γ and β as f32 (ones and zeros without affine),
/// and how the input splits into groups.
struct Groups {
    gamma: Vec<f32>,
    beta: Vec<f32>,
    groups: usize,
    channels: usize,
    spatial: usize,
    /// Values a group (all images' groups one after another).
    len: usize,
    eps: f64,
    silu: bool,
}

impl Groups {
    /// `None` where kiln's kernel does not apply (a channel count that does not match `norm`,
    /// fewer than 3 dims, parameters not f32 on flex).
    fn of(norm: &GroupNorm, dims: &[usize], silu: bool) -> Option<Self> {
        let groups = norm.num_groups;
        if dims.len() < 3 || dims[1] != norm.num_channels || groups == 0 || dims[1] % groups != 0 || dims.contains(&0) {
            return None;
        }
        let channels = dims[1];
        let (gamma, beta) = match (&norm.gamma, &norm.beta, norm.affine) {
            (Some(g), Some(b), true) => (flex::values(&flex::f32_tensor(&g.val())?).to_vec(), flex::values(&flex::f32_tensor(&b.val())?).to_vec()),
            (_, _, false) => (vec![1f32; channels], vec![0f32; channels]),
            _ => return None, // burn's op reports the inconsistent module
        };
        let spatial: usize = dims[2..].iter().product();
        Some(Self { gamma, beta, groups, channels, spatial, len: channels / groups * spatial, eps: norm.epsilon, silu })
    }

    /// The `i`-th group's parameters (groups of all images counted in order).
    fn affine(&self, i: usize) -> Affine<'_> {
        let first = i % self.groups * (self.channels / self.groups);
        Affine { gamma: &self.gamma[first..], beta: &self.beta[first..], spatial: self.spatial, eps: self.eps, silu: self.silu }
    }
}

/// One group's channels: their γ and β from the group's first channel on, the values per
/// channel, ε, and whether SiLU follows.
struct Affine<'a> {
    gamma: &'a [f32],
    beta: &'a [f32],
    spatial: usize,
    eps: f64,
    silu: bool,
}

simd_dispatch! {
    /// Normalises one group `x` into `out`, with the widest vector instructions the CPU has.
    fn normalize(x: &[f32], out: &mut [MaybeUninit<f32>], a: &Affine) => normalize_portable
}

simd_dispatch! {
    /// Normalises one group in place, with the widest vector instructions the CPU has.
    fn normalize_in_place(x: &mut [f32], a: &Affine) => normalize_in_place_portable
}

/// Lanes for the sums: independent accumulators let the compiler vectorise them.
const LANES: usize = 8;

/// `Σ f(v)` over `x` in f64, in lanes.
#[inline(always)]
fn lane_sum(x: &[f32], f: impl Fn(f32) -> f64) -> f64 {
    let mut lanes = [0f64; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for (s, &v) in lanes.iter_mut().zip(c) {
            *s += f(v);
        }
    }
    chunks.remainder().iter().map(|&v| f(v)).sum::<f64>() + lanes.iter().sum::<f64>()
}

/// The group's mean and `1/√(var + ε)` (f64).
#[inline(always)]
fn statistics(x: &[f32], eps: f64) -> (f64, f64) {
    let n = x.len() as f64;
    let mean = lane_sum(x, |v| v as f64) / n;
    let var = lane_sum(x, |v| (v as f64 - mean) * (v as f64 - mean)) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// Channel `ch`'s `scale` and `shift` (`x · scale + shift`, PyTorch's formulation).
#[inline(always)]
fn scale_shift(a: &Affine, ch: usize, mean: f64, rstd: f64) -> (f32, f32) {
    let scale = (a.gamma[ch] as f64 * rstd) as f32;
    (scale, (a.beta[ch] as f64 - mean * scale as f64) as f32)
}

#[inline(always)]
fn normalize_in_place_portable(x: &mut [f32], a: &Affine) {
    let (mean, rstd) = statistics(x, a.eps);
    for (ch, x) in x.chunks_exact_mut(a.spatial).enumerate() {
        let (scale, shift) = scale_shift(a, ch, mean, rstd);
        if a.silu {
            for v in x.iter_mut() {
                let y = v.mul_add(scale, shift);
                *v = y / (1.0 + exp(-y));
            }
        } else {
            for v in x.iter_mut() {
                *v = v.mul_add(scale, shift);
            }
        }
    }
}

#[inline(always)]
fn normalize_portable(x: &[f32], out: &mut [MaybeUninit<f32>], a: &Affine) {
    let (mean, rstd) = statistics(x, a.eps);
    for (ch, (x, out)) in x.chunks_exact(a.spatial).zip(out.chunks_exact_mut(a.spatial)).enumerate() {
        let (scale, shift) = scale_shift(a, ch, mean, rstd);
        if a.silu {
            for (o, &v) in out.iter_mut().zip(x) {
                let y = v.mul_add(scale, shift);
                o.write(y / (1.0 + exp(-y)));
            }
        } else {
            for (o, &v) in out.iter_mut().zip(x) {
                o.write(v.mul_add(scale, shift));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::GroupNormConfig;
    use burn::tensor::activation::silu;
    use burn::tensor::{DType, Device, Distribution};

    /// The kernel against burn's GroupNorm (and SiLU), for a trained-looking affine (random γ, β),
    /// without affine, on 3-D and 4-D inputs, and with a mean far from zero (where `x · scale +
    /// shift` loses the most against `(x − mean) / σ`).
    #[test]
    fn matches_burns_group_norm_and_silu() {
        let device = Device::flex();
        for (dims, groups, affine, offset) in [
            ([2, 8, 5, 7], 4, true, 0.0),
            ([1, 6, 9, 1], 3, false, 0.0),
            ([2, 32, 16, 16], 32, true, 3.0),
        ] {
            let mut norm = GroupNormConfig::new(groups, dims[1]).with_epsilon(1e-5).with_affine(affine).init(&device);
            if affine {
                norm.gamma = norm.gamma.map(|g| g.map(|_| Tensor::random([dims[1]], Distribution::Normal(1.0, 0.5), &device)));
                norm.beta = norm.beta.map(|b| b.map(|_| Tensor::random([dims[1]], Distribution::Normal(0.0, 0.5), &device)));
            }
            let x = Tensor::<4>::random(dims, Distribution::Normal(offset, 2.0), &device);
            for with_silu in [false, true] {
                let got = group_norm(&norm, &x, with_silu).expect("flex, f32");
                let want = norm.forward(x.clone());
                let want = if with_silu { silu(want) } else { want };
                let err: f32 = (got - want).abs().max().into_scalar();
                assert!(err < 2e-5, "{dims:?} groups {groups} affine {affine} silu {with_silu}: max error {err}");
            }
            let x3 = x.clone().reshape([dims[0], dims[1], dims[2] * dims[3]]);
            let got = group_norm(&norm, &x3, true).expect("3-D");
            let err: f32 = (got - silu(norm.forward(x3))).abs().max().into_scalar();
            assert!(err < 2e-5, "3-D {dims:?}: max error {err}");
        }
    }

    /// In place: the same values as into a new tensor, and a tensor something else holds is
    /// given back untouched.
    #[test]
    fn in_place_matches_and_leaves_shared_tensors_alone() {
        let device = Device::flex();
        let mut norm = GroupNormConfig::new(4, 8).with_epsilon(1e-6).init(&device);
        norm.gamma = norm.gamma.map(|g| g.map(|_| Tensor::random([8], Distribution::Normal(1.0, 0.5), &device)));
        let x = Tensor::<4>::random([2, 8, 6, 5], Distribution::Normal(0.5, 2.0), &device);
        for silu in [false, true] {
            let want = group_norm(&norm, &x, silu).unwrap();
            let unique = Tensor::<4>::from_data(x.to_data(), &device);
            let got = group_norm_in_place(&norm, unique, silu).expect("nothing else holds it");
            let err: f32 = (got - want).abs().max().into_scalar();
            assert_eq!(err, 0.0, "silu {silu}");
            let held = x.clone();
            let back = group_norm_in_place(&norm, held, silu).expect_err("x holds it too");
            let err: f32 = (back - x.clone()).abs().max().into_scalar();
            assert_eq!(err, 0.0, "a shared tensor is given back as it was");
        }
    }

    #[test]
    fn other_dtypes_and_autodiff_use_burns_ops() {
        let device = Device::flex();
        let norm = GroupNormConfig::new(2, 4).init(&device);
        let x = Tensor::<4>::zeros([1, 4, 2, 2], &device);
        assert!(group_norm(&norm, &x.clone().cast(DType::F16), false).is_none());
        let wrong_channels = Tensor::<4>::zeros([1, 6, 2, 2], &device);
        assert!(group_norm(&norm, &wrong_channels, false).is_none());
        let autodiff = device.autodiff();
        let norm = GroupNormConfig::new(2, 4).init(&autodiff);
        assert!(group_norm(&norm, &Tensor::<4>::zeros([1, 4, 2, 2], &autodiff).require_grad(), true).is_none());
    }
}
