//! Attention on the CPU: kiln's own kernel for burn's flex backend (f32, no autodiff).
//!
//! burn-flex 0.22's attention computes each softmax with one scalar `expf` call and a branch per
//! score and runs one task per (batch, head): that softmax was the largest share of the tiny SD1
//! pipeline's CPU time, and the VAE's single-head mid-block attention ran on one core
//! (docs/performance.md#cpu-figures-2026-11-27). Here the work is split into blocks of query rows over every
//! (batch, head) (rayon), `q kᵀ` and `p v` are gemm calls (the `gemm` crate burn-flex uses, so
//! AVX-512 where the CPU has it), and the softmax uses an exp that vectorises (Cephes' `expf`
//! polynomial, about 1 ulp), compiled for AVX-512 and AVX2 and picked at run time.
//!
//! Same contract as `torch.nn.functional.scaled_dot_product_attention` with the default scale
//! `1/√head_dim` and `is_causal` (a query attends to keys at its own index or before).

use burn::tensor::Tensor;
use rayon::prelude::*;

use crate::cpu::flex::{self, OutPtr};

/// Query rows per task: large enough for gemm, small enough to spread one head over the cores.
const ROWS: usize = 32;

/// `softmax(q kᵀ / √d [+ causal mask]) v` on the CPU, or `None` where this kernel does not apply
/// (another device, autodiff, another dtype): the caller then uses burn's fused op.
///
/// # Shapes
/// - q: `[batch, heads, seq_q, head_dim]`, k: `[batch, heads, seq_k, head_dim]`,
///   v: `[batch, heads, seq_k, v_dim]` → `[batch, heads, seq_q, v_dim]`
pub fn attention(q: &Tensor<4>, k: &Tensor<4>, v: &Tensor<4>, causal: bool) -> Option<Tensor<4>> {
    let [b, h, sq, d] = q.dims();
    let [_, _, skv, dv] = v.dims();
    if [b, h, sq, d, skv, dv].contains(&0) || k.dims() != [b, h, skv, d] || v.dims()[..2] != [b, h] {
        return None; // nothing to split into blocks, or shapes burn's op broadcasts or refuses
    }
    let (q, k, v) = (flex::f32_tensor(q)?, flex::f32_tensor(k)?, flex::f32_tensor(v)?);
    // [b, h, s, x] contiguous: a head after the other
    let heads_major = |s: usize, x: usize| Strides { batch: h * s * x, head: s * x, row: x };
    let shape = Shape { b, h, sq, skv, d, dv };
    let layouts = [heads_major(sq, d), heads_major(skv, d), heads_major(skv, dv), heads_major(sq, dv)];
    let out = attend([flex::values(&q), flex::values(&k), flex::values(&v)], layouts, shape, causal);
    Some(flex::tensor(out, [b, h, sq, dv]))
}

/// [`attention`] on token sequences with the heads side by side in the last dim, as the
/// projections produce them and the output projection takes them: no copies to split and merge
/// the heads. `causal` as in [`attention`] (CLIP's text encoders).
///
/// # Shapes
/// - q: `[batch, seq_q, heads · head_dim]`, k: `[batch, seq_k, heads · head_dim]`,
///   v: `[batch, seq_k, heads · v_dim]` → `[batch, seq_q, heads · v_dim]`
pub fn attention_tokens(q: &Tensor<3>, k: &Tensor<3>, v: &Tensor<3>, heads: usize, causal: bool) -> Option<Tensor<3>> {
    let [b, sq, hd] = q.dims();
    let [_, skv, hdv] = v.dims();
    if heads == 0 || hd % heads != 0 || hdv % heads != 0 || [b, sq, hd, skv, hdv].contains(&0) || k.dims() != [b, skv, hd] || v.dims()[0] != b {
        return None;
    }
    let (h, d, dv) = (heads, hd / heads, hdv / heads);
    let (q, k, v) = (flex::f32_tensor(q)?, flex::f32_tensor(k)?, flex::f32_tensor(v)?);
    // [b, s, h, x] contiguous: a token after the other
    let tokens_major = |s: usize, x: usize| Strides { batch: s * h * x, head: x, row: h * x };
    let shape = Shape { b, h, sq, skv, d, dv };
    let layouts = [tokens_major(sq, d), tokens_major(skv, d), tokens_major(skv, dv), tokens_major(sq, dv)];
    let out = attend([flex::values(&q), flex::values(&k), flex::values(&v)], layouts, shape, causal);
    Some(flex::tensor(out, [b, sq, h * dv]))
}

/// Where (batch, head, row, 0) of q, k, v or the output lies: `batch·b + head·h + row·r`.
#[derive(Clone, Copy)]
struct Strides {
    batch: usize,
    head: usize,
    row: usize,
}

impl Strides {
    fn at(&self, batch: usize, head: usize, row: usize) -> usize {
        batch * self.batch + head * self.head + row * self.row
    }
}

#[derive(Clone, Copy)]
struct Shape {
    b: usize,
    h: usize,
    sq: usize,
    skv: usize,
    d: usize,
    dv: usize,
}

/// The attention of every (batch, head) over q, k, v laid out as `layouts` (q, k, v, output),
/// in tasks of up to `ROWS` query rows over rayon.
fn attend([q, k, v]: [&[f32]; 3], layouts: [Strides; 4], s: Shape, causal: bool) -> Vec<f32> {
    let [qs, ks, vs, os] = layouts;
    let len = s.b * s.h * s.sq * s.dv;
    let mut out = Vec::with_capacity(len);
    let dst = OutPtr(out.as_mut_ptr());
    let blocks = s.sq.div_ceil(ROWS);
    let scale = 1.0 / (s.d as f32).sqrt();
    (0..s.b * s.h * blocks).into_par_iter().for_each_init(Vec::new, |scores, task| {
        let (bh, block) = (task / blocks, task % blocks);
        let (batch, head) = (bh / s.h, bh % s.h);
        let (row0, rows) = (block * ROWS, ROWS.min(s.sq - block * ROWS));
        scores.resize(rows * s.skv, 0.0);
        let q = &q[qs.at(batch, head, row0)..];
        let (k, v) = (&k[ks.at(batch, head, 0)..], &v[vs.at(batch, head, 0)..]);
        // SAFETY: the rows × dv values at row stride os.row from here are this task's alone and
        // inside `out`'s capacity; q, k, v hold rows × d, skv × d and skv × dv values at their
        // row strides from their starts (the layouts describe the checked shapes).
        unsafe {
            let o = dst.get().add(os.at(batch, head, row0));
            block_attention(q, k, v, o, scores, (row0, rows), [qs.row, ks.row, vs.row, os.row], s, scale, causal);
        }
    });
    // SAFETY: the tasks cover every (batch, head, row) and gemm wrote every value.
    unsafe { out.set_len(len) };
    out
}

/// One block of query rows: `scores = q kᵀ · scale`, the masked softmax per row, `o = scores v`.
///
/// # Safety
/// `q`, `k`, `v` hold `rows × d`, `skv × d`, `skv × dv` values at row strides `q_row`, `k_row`,
/// `v_row`; `o` points at `rows × dv` writable values at row stride `o_row`, aliasing nothing.
#[allow(clippy::too_many_arguments)]
unsafe fn block_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    o: *mut f32,
    scores: &mut [f32],
    (row0, rows): (usize, usize),
    [q_row, k_row, v_row, o_row]: [usize; 4],
    s: Shape,
    scale: f32,
    causal: bool,
) {
    let (skv, d, dv) = (s.skv, s.d, s.dv);
    // SAFETY: as the caller guarantees; `scores` is rows × skv and aliases nothing.
    unsafe {
        gemm::gemm(
            rows, skv, d,
            scores.as_mut_ptr(), 1, skv as isize, false,
            q.as_ptr(), 1, q_row as isize,
            k.as_ptr(), k_row as isize, 1,
            0.0, scale, false, false, false, gemm::Parallelism::None,
        );
    }
    // The softmax's division is left for the output rows (dv values each, not skv).
    let mut inv_sums = [0f32; ROWS];
    for ((r, row), inv) in scores.chunks_exact_mut(skv).enumerate().zip(&mut inv_sums) {
        // causal: keys after the query's own index are masked out (PyTorch's `is_causal`)
        let visible = if causal { (row0 + r + 1).min(skv) } else { skv };
        let sum = exp_shifted(&mut row[..visible]);
        row[visible..].fill(0.0);
        *inv = if sum > 0.0 { 1.0 / sum } else { 0.0 };
    }
    // SAFETY: as above.
    unsafe {
        gemm::gemm(
            rows, dv, skv,
            o, 1, o_row as isize, false,
            scores.as_ptr(), 1, skv as isize,
            v.as_ptr(), 1, v_row as isize,
            0.0, 1.0, false, false, false, gemm::Parallelism::None,
        );
    }
    for (r, &inv) in inv_sums[..rows].iter().enumerate() {
        // SAFETY: row r of the output, dv values from o + r·o_row (the caller's guarantee).
        let row = unsafe { std::slice::from_raw_parts_mut(o.add(r * o_row), dv) };
        for x in row {
            *x *= inv;
        }
    }
}

simd_dispatch! {
    /// `eˣ⁻ᵐᵃˣ` in place over one row of scores, returning their sum (the softmax without its
    /// division), with the widest vector instructions the CPU has. A row of `-inf` becomes zeros.
    fn exp_shifted(row: &mut [f32]) -> f32 => exp_shifted_portable
}

/// Lanes for the reductions: independent accumulators let the compiler vectorise max and sum
/// (a single float accumulator must be summed in order).
const LANES: usize = 16;

#[inline(always)]
fn exp_shifted_portable(row: &mut [f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for (m, &x) in lanes.iter_mut().zip(c) {
            *m = m.max(x);
        }
    }
    let max = chunks.remainder().iter().fold(lanes.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)), |a, &b| a.max(b));
    if max == f32::NEG_INFINITY {
        row.fill(0.0);
        return 0.0;
    }
    let mut sums = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for (s, x) in sums.iter_mut().zip(c) {
            *x = exp(*x - max);
            *s += *x;
        }
    }
    // the last partial chunk through a full one padded with -inf (its exp, ~1e-38, adds nothing
    // visible to a sum ≥ 1), so it takes the vector path too: rows of 77 keys (CLIP's context)
    // otherwise spend a fifth of their values in scalar code
    let rest = chunks.into_remainder();
    if !rest.is_empty() {
        let mut padded = [f32::NEG_INFINITY; LANES];
        padded[..rest.len()].copy_from_slice(rest);
        for (s, x) in sums.iter_mut().zip(&mut padded) {
            *x = exp(*x - max);
            *s += *x;
        }
        rest.copy_from_slice(&padded[..rest.len()]);
    }
    sums.iter().sum::<f32>()
}

/// `eˣ` for x ≤ 0 (softmax's shifted scores) and beyond, as Cephes' `expf`: x = n ln2 + r with
/// |r| ≤ ln2/2, eʳ by its degree-7 polynomial, 2ⁿ by the exponent bits. Branch-free, so it
/// vectorises; below -87.3 it returns about 1e-38 (the true value underflows f32 anyway).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so that n·C1 is exact
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.3, 88.3);
    let n = (x * LOG2E + 0.5).floor();
    let r = x - n * C1 - n * C2;
    let p = 1.987_569_1e-4_f32;
    let p = p.mul_add(r, 1.398_199_9e-3);
    let p = p.mul_add(r, 8.333_452e-3);
    let p = p.mul_add(r, 4.166_579_6e-2);
    let p = p.mul_add(r, 1.666_666_5e-1);
    let p = p.mul_add(r, 5.000_000_1e-1);
    let e = p.mul_add(r * r, r) + 1.0;
    // 2ⁿ without a float-to-int conversion (Rust's saturating `as i32` kept the loop scalar):
    // n + 127 added to 1.5·2²³ lands in the low mantissa bits, exactly, as n is integral
    let biased = (n + (127.0 + 12_582_912.0)).to_bits().wrapping_sub(0x4B40_0000);
    e * f32::from_bits(biased << 23)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::tests::explicit_attention;
    use burn::tensor::{DType, Device, Distribution};

    #[test]
    fn exp_matches_std_within_two_ulps() {
        let mut worst = 0f32;
        for i in 0..=200_000 {
            let x = -87.0 + 175.0 * i as f32 / 200_000.0;
            let (got, want) = (exp(x), x.exp());
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 2.5e-7, "largest relative error {worst}");
        assert!(exp(-1000.0) < 1e-37 && exp(-1000.0) >= 0.0);
        assert_eq!(exp(0.0), 1.0);
    }

    /// The kernel against burn's explicit `softmax(q kᵀ / √d) v`, with and without the causal
    /// mask, for one head (the VAE's), several heads, rows that are not a multiple of the block,
    /// a value width unlike the key width, and cross-attention (seq_k ≠ seq_q).
    #[test]
    fn matches_explicit_softmax() {
        let device = Device::flex();
        for (b, h, sq, skv, d, dv, causal) in [
            (1, 1, 100, 100, 64, 64, false),
            (2, 8, 70, 70, 40, 40, true),
            (2, 5, 33, 77, 16, 24, false),
            (1, 2, 1, 9, 8, 8, false),
        ] {
            let q = Tensor::<4>::random([b, h, sq, d], Distribution::Normal(0.0, 1.0), &device);
            let k = Tensor::<4>::random([b, h, skv, d], Distribution::Normal(0.0, 1.0), &device);
            let v = Tensor::<4>::random([b, h, skv, dv], Distribution::Normal(0.0, 1.0), &device);
            let got = attention(&q, &k, &v, causal).expect("flex, f32");
            let want = explicit_attention(q, k, v, causal);
            let err: f32 = (got - want).abs().max().into_scalar();
            assert!(err < 1e-5, "{b}x{h}x{sq}x{skv}x{d}x{dv} causal {causal}: max error {err}");
        }
    }

    /// The token-layout entry against the explicit softmax on the same values split into heads:
    /// self-attention, causal self-attention (CLIP) and cross-attention with a value width unlike
    /// the key width.
    #[test]
    fn token_layout_matches_explicit_softmax() {
        let device = Device::flex();
        for (b, h, sq, skv, d, dv, causal) in [(2, 8, 70, 70, 8, 8, false), (2, 4, 77, 77, 16, 16, true), (1, 5, 33, 77, 16, 24, false)] {
            let q = Tensor::<3>::random([b, sq, h * d], Distribution::Normal(0.0, 1.0), &device);
            let k = Tensor::<3>::random([b, skv, h * d], Distribution::Normal(0.0, 1.0), &device);
            let v = Tensor::<3>::random([b, skv, h * dv], Distribution::Normal(0.0, 1.0), &device);
            let got = attention_tokens(&q, &k, &v, h, causal).expect("flex, f32");
            let split = |t: Tensor<3>, x: usize| {
                let [b, s, _] = t.dims();
                t.reshape([b, s, h, x]).swap_dims(1, 2)
            };
            let want = explicit_attention(split(q, d), split(k, d), split(v, dv), causal).swap_dims(1, 2).reshape([b, sq, h * dv]);
            let err: f32 = (got - want).abs().max().into_scalar();
            assert!(err < 1e-5, "{b}x{h}x{sq}x{skv}x{d}x{dv} causal {causal}: max error {err}");
        }
    }

    /// f16 goes to burn's op (autodiff too: `kiln-train`'s gradient test through the UNet's
    /// attention against PyTorch autograd fails if this kernel, which has no backward, ran there).
    #[test]
    fn other_dtypes_use_burns_op() {
        let t = Tensor::<4>::zeros([1, 1, 2, 4], &Device::flex());
        assert!(attention(&t, &t, &t, false).is_some());
        let f16 = t.cast(DType::F16);
        assert!(attention(&f16, &f16, &f16, false).is_none());
    }
}
