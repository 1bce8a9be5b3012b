//! A linear layer on the CPU: kiln's kernel for burn's flex backend (f32 activations, no autodiff),
//! the weight in PyTorch's layout `[out, in]` and in the dtype it was loaded in (f32, or f16/bf16
//! widened a block at a time, `cpu/weights.rs`).
//!
//! Same contract as `torch.nn.functional.linear(x, weight, bias)`: `y = x · weightᵀ + bias`.

use burn::tensor::Tensor;

use crate::cpu::flex::{self, OutPtr};
use crate::cpu::weights::{product_by_rows, with_widened, Dst, WeightRows, WIDEN_WHOLE_BYTES};

/// From this many rows (tokens) a half-precision weight of up to `WIDEN_WHOLE_BYTES` as f32 is
/// widened once per call; otherwise a block at a time (`cpu/weights.rs`).
const WIDEN_WHOLE_FROM_ROWS: usize = 512;

/// gemm gets its own threads from this many multiply-adds on (burn-flex's threshold).
const THREADS_FROM: usize = 192 * 192 * 192;

/// `x · weightᵀ + bias` by kiln's kernel, or `None` where it does not apply (another device,
/// autodiff, activations other than f32, a weight dtype other than f32/f16/bf16, mismatched
/// sizes): the caller then uses burn's ops.
///
/// # Shapes
/// - x: `[..., in]`, weight: `[out, in]`, bias: `[out]`
/// - output: `[..., out]`
pub fn linear<const D: usize>(x: &Tensor<D>, weight: &Tensor<2>, bias: Option<&Tensor<1>>) -> Option<Tensor<D>> {
    let dims = x.dims();
    let [n, k] = weight.dims();
    if D == 0 || dims[D - 1] != k || bias.is_some_and(|b| b.dims() != [n]) {
        return None;
    }
    let m: usize = dims[..D - 1].iter().product();
    let x = flex::f32_tensor(x)?;
    let weight = flex::weight_tensor(weight)?;
    let bias = match bias {
        Some(b) => Some(flex::f32_tensor(b)?),
        None => None,
    };
    let out = linear_f32(flex::values(&x), WeightRows::of(&weight)?, bias.as_ref().map(flex::values), m, n, k);
    let mut shape = dims;
    shape[D - 1] = n;
    Some(flex::tensor(out, shape))
}

/// The product on row-major slices: x `[m, k]`, weight `[n, k]`, bias `[n]` → `[m, n]`.
pub(crate) fn linear_f32(x: &[f32], weight: WeightRows<'_>, bias: Option<&[f32]>, m: usize, n: usize, k: usize) -> Vec<f32> {
    let len = m * n;
    if m == 0 || n == 0 {
        return Vec::new();
    }
    let out = match bias {
        Some(b) => {
            let mut out = Vec::with_capacity(len);
            for _ in 0..m {
                out.extend_from_slice(b);
            }
            out
        }
        None if k == 0 => vec![0.0; len],
        None => Vec::with_capacity(len),
    };
    if k > 0 && m >= WIDEN_WHOLE_FROM_ROWS && !matches!(weight, WeightRows::F32(_)) && n * k * 4 <= WIDEN_WHOLE_BYTES {
        // many rows against a weight that is not too large: widened once, then one f32 product
        // (gemm's own blocking beats kiln's block-by-block widening there)
        return with_widened(weight, |weight| product(x, WeightRows::F32(weight), bias, m, n, k, out));
    }
    product(x, weight, bias, m, n, k, out)
}

/// `out` (the bias repeated, or room for the values) plus `x · weightᵀ`.
fn product(x: &[f32], weight: WeightRows<'_>, bias: Option<&[f32]>, m: usize, n: usize, k: usize, mut out: Vec<f32>) -> Vec<f32> {
    let len = m * n;
    if k > 0 {
        let par = if m * n * k >= THREADS_FROM { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
        let dst = Dst { ptr: OutPtr(out.as_mut_ptr()), rs: n, cs: 1 };
        // SAFETY: x is m × k row-major; out has capacity for m × n row-major values (initialised
        // with the bias when there is one, which the product then adds to).
        unsafe { product_by_rows(m, n, k, x.as_ptr(), k, 1, weight, dst, bias.is_some(), par) };
        // SAFETY: the product wrote every one of the m × n values.
        unsafe { out.set_len(len) };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{DType, Device, Distribution};

    /// Against burn's `x.matmul(wᵀ) + b` on flex, for each weight dtype (burn's side computing
    /// with the weight rounded to that dtype and widened back), batched and flat inputs, few rows
    /// (weights widened a block at a time) and many (widened whole); `None`
    /// for autodiff and for f16 activations.
    #[test]
    fn matches_burns_matmul_and_declines_the_rest() {
        let device = Device::flex();
        for (shape, n, k) in [([2usize, 5, 7], 3usize, 7usize), ([2, 300, 64], 200, 64), ([2, 77, 96], 384, 96)] {
            let x = Tensor::<3>::random(shape, Distribution::Normal(0.0, 1.0), &device);
            let w = Tensor::<2>::random([n, k], Distribution::Normal(0.0, 0.2), &device);
            let b = Tensor::<1>::random([n], Distribution::Normal(0.0, 1.0), &device);
            for dtype in [DType::F32, DType::F16, DType::BF16] {
                let stored = w.clone().cast(dtype);
                let widened = stored.clone().cast(DType::F32);
                let want = x.clone().matmul(widened.transpose().unsqueeze::<3>()) + b.clone().unsqueeze::<3>();
                let got = linear(&x, &stored, Some(&b)).expect("flex, f32 activations");
                let err: f32 = (got - want.clone()).abs().max().into_scalar();
                assert!(err < 1e-4, "{shape:?}x[{n},{k}] {dtype:?}: max error {err}");
                let flat = linear(&x.clone().reshape([shape[0] * shape[1], k]), &stored, None).unwrap();
                let err: f32 = (flat.reshape(shape_with(shape, n)) + b.clone().unsqueeze::<3>() - want).abs().max().into_scalar();
                assert!(err < 1e-4, "no bias {dtype:?}: max error {err}");
            }
        }
        let x = Tensor::<2>::zeros([2, 4], &device);
        let w = Tensor::<2>::zeros([3, 4], &device);
        assert!(linear(&x.clone().cast(DType::F16), &w, None).is_none(), "f16 activations");
        assert!(linear(&x, &Tensor::<2>::zeros([3, 5], &device), None).is_none(), "sizes");
        let autodiff = Device::flex().autodiff();
        let tracked = Tensor::<2>::zeros([2, 4], &autodiff).require_grad();
        assert!(linear(&tracked, &Tensor::<2>::zeros([3, 4], &autodiff), None).is_none(), "autodiff");
    }

    fn shape_with(shape: [usize; 3], n: usize) -> [usize; 3] {
        [shape[0], shape[1], n]
    }
}
