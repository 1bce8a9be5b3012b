//! GEGLU on the CPU: kiln's own kernel for burn's flex backend (f32, no autodiff).
//!
//! diffusers' `GEGLU` splits its projection in two and returns `hidden * gelu(gate)`; with burn's
//! ops that is two strided views, a GELU whose erf is one scalar libm call per value, and a
//! product: three passes and two allocations (docs/performance.md#cpu-figures-2026-11-27).
//! Here it is one pass over the projection's rows, with PyTorch's vectorised erf
//! (`aten/src/ATen/cpu/vec/vec512/vec512_float.h`, `Vectorized<float>::erf`: Abramowitz & Stegun
//! 7.1.26, absolute error ≤ 1.5e-7 in exact arithmetic, 5.4e-7 in f32) and kiln's vectorised exp.

use std::mem::MaybeUninit;

use burn::tensor::Tensor;
use rayon::prelude::*;

use crate::cpu::attention::exp;
use crate::cpu::flex;

/// Rows per task: enough work to be worth a thread.
const ROWS: usize = 64;

/// `h[..., :d] * gelu(h[..., d:])` for the `[batch, seq, 2d]` projection `h`, or `None` where
/// this kernel does not apply (another device, autodiff, another dtype, an odd last dim).
///
/// # Shapes
/// - h: `[batch, seq, 2 * inner]` → `[batch, seq, inner]`
pub fn geglu(h: &Tensor<3>) -> Option<Tensor<3>> {
    let [b, s, two_d] = h.dims();
    if two_d % 2 != 0 || [b, s, two_d].contains(&0) {
        return None;
    }
    let input = flex::f32_tensor(h)?;
    let values = flex::values(&input);
    let d = two_d / 2;
    let mut out = Vec::with_capacity(b * s * d);
    out.spare_capacity_mut().par_chunks_mut(ROWS * d).zip(values.par_chunks(ROWS * two_d)).for_each(|(o, h)| {
        for (o, h) in o.chunks_exact_mut(d).zip(h.chunks_exact(two_d)) {
            geglu_row(h, o);
        }
    });
    // SAFETY: the chunks cover the capacity row for row and `geglu_row` writes every value.
    unsafe { out.set_len(b * s * d) };
    Some(flex::tensor(out, [b, s, d]))
}

simd_dispatch! {
    /// One row, with the widest vector instructions the CPU has.
    fn geglu_row(h: &[f32], out: &mut [MaybeUninit<f32>]) => geglu_row_portable
}

#[inline(always)]
fn geglu_row_portable(h: &[f32], out: &mut [MaybeUninit<f32>]) {
    let (hidden, gate) = h.split_at(out.len());
    for ((o, &x), &g) in out.iter_mut().zip(hidden).zip(gate) {
        o.write(x * gelu(g));
    }
}

/// The exact GELU, `x/2 · (1 + erf(x/√2))`.
#[inline(always)]
pub(crate) fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// erf by Abramowitz & Stegun 7.1.26 (PyTorch's vectorised erf): `1 − t·P(t)·e^(−x²)` with
/// `t = 1/(1 + p|x|)`, sign restored; branch-free, so it vectorises.
#[inline(always)]
fn erf(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A1: f32 = 0.254_829_6;
    const A2: f32 = -0.284_496_74;
    const A3: f32 = 1.421_413_7;
    const A4: f32 = -1.453_152;
    const A5: f32 = 1.061_405_4;
    let a = x.abs();
    let t = 1.0 / P.mul_add(a, 1.0);
    let poly = A5.mul_add(t, A4).mul_add(t, A3).mul_add(t, A2).mul_add(t, A1) * t;
    let r = 1.0 - poly * exp(-a * a);
    r.copysign(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::activation::gelu as burn_gelu;
    use burn::tensor::{DType, Device, Distribution};

    /// A&S's 1.5e-7 plus f32 rounding: measured 5.4e-7 over [-4, 4] (PyTorch's vectorised erf
    /// computes the same expression in f32).
    #[test]
    fn erf_within_1e6_of_the_series() {
        let worst = (-400_000..=400_000)
            .map(|i| i as f32 * 1e-5)
            .map(|x| (erf(x) as f64 - libm_erf(x as f64)).abs())
            .fold(0f64, f64::max);
        assert!(worst < 1e-6, "largest absolute error {worst}");
        assert_eq!(erf(10.0), 1.0);
        assert_eq!(erf(-10.0), -1.0);
    }

    /// erf in f64 by its Maclaurin series (|x| ≤ 4 needs ~100 terms) — a reference independent
    /// of the approximation under test.
    fn libm_erf(x: f64) -> f64 {
        let (mut term, mut sum) = (x, x);
        for n in 1..200 {
            term *= -x * x / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    /// The kernel against burn's `hidden * gelu(gate)` on a projection with rows that are not a
    /// multiple of the task size.
    #[test]
    fn matches_burns_geglu() {
        let device = Device::flex();
        let h = Tensor::<3>::random([2, 77, 2 * 24], Distribution::Normal(0.0, 3.0), &device);
        let got = geglu(&h).expect("flex, f32");
        let want = h.clone().narrow(2, 0, 24) * burn_gelu(h.clone().narrow(2, 24, 24));
        let err: f32 = (got - want).abs().max().into_scalar();
        assert!(err < 1e-5, "max error {err}");
        assert!(geglu(&h.cast(DType::F16)).is_none());
    }
}
