//! A layer's weight matrix as kiln's CPU kernels read it: f32, or f16/bf16 kept in the file's
//! dtype and widened to f32 — a block at a time into a buffer that stays in cache while the
//! product reads it ([`product_by_rows`]), or whole ([`WeightRows::widen_all`]) where the caller
//! has many rows for a small weight (docs/performance.md, "Half-precision weights on the CPU").
//! The product itself is f32 throughout, as PyTorch's CPU matmul accumulates.
//!
//! Used by the linear layers ([`crate::cpu::linear`]) and the convolutions' im2col tiles
//! ([`crate::cpu::conv`]).

use std::ops::Range;

use burn::tensor::{bf16, f16, DType};
use burn_flex::FlexTensor;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

use crate::cpu::flex::OutPtr;
use crate::cpu::with_scratch;

/// Up to this many bytes of widened f32 weights per block (half of one core's L2 cache).
const WIDE_BYTES: usize = 1 << 20;
/// Up to this many bytes of output per block of columns (kept in cache while the depth is walked).
const OUT_BYTES: usize = 256 << 10;

/// A row-major weight matrix `[rows, k]` (a linear layer's `[out, in]`, a convolution's
/// `[c_out, c_in·kh·kw]`) in the dtype it was loaded in.
#[derive(Clone, Copy)]
pub(crate) enum WeightRows<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    BF16(&'a [bf16]),
}

impl<'a> WeightRows<'a> {
    /// The values of `t` (contiguous, on flex), or `None` for a dtype other than f32/f16/bf16.
    pub(crate) fn of(t: &'a FlexTensor) -> Option<Self> {
        Some(match t.dtype() {
            DType::F32 => Self::F32(t.storage::<f32>()),
            DType::F16 => Self::F16(t.storage::<f16>()),
            DType::BF16 => Self::BF16(t.storage::<bf16>()),
            _ => return None,
        })
    }

    /// The block `rows × cols` of the `[_, k]` matrix as f32, row-major (`cols.len()` values a
    /// row), in `buf` (grown, never shrunk).
    fn widen_block<'b>(&self, rows: Range<usize>, cols: Range<usize>, k: usize, buf: &'b mut Vec<f32>) -> &'b [f32] {
        let width = cols.len();
        let len = rows.len() * width;
        if buf.len() < len {
            buf.resize(len, 0.0);
        }
        let out = &mut buf[..len];
        for (r, dst) in rows.zip(out.chunks_exact_mut(width)) {
            let src = r * k + cols.start..r * k + cols.end;
            match self {
                Self::F32(w) => dst.copy_from_slice(&w[src]),
                Self::F16(w) => widen_f16(&w[src], dst),
                Self::BF16(w) => widen_bf16(&w[src], dst),
            }
        }
        out
    }

    /// Every value as f32 in `buf` (grown, never shrunk), widened by all threads; an f32 matrix
    /// is returned as it is.
    pub(crate) fn widen_all<'b>(&'b self, buf: &'b mut Vec<f32>) -> &'b [f32] {
        let len = match *self {
            Self::F32(w) => return w,
            Self::F16(w) => w.len(),
            Self::BF16(w) => w.len(),
        };
        if buf.len() < len {
            buf.resize(len, 0.0);
        }
        const PART: usize = 1 << 16;
        buf[..len].par_chunks_mut(PART).enumerate().for_each(|(i, dst)| {
            let src = i * PART..i * PART + dst.len();
            match self {
                Self::F32(_) => unreachable!("returned above"),
                Self::F16(w) => widen_f16(&w[src], dst),
                Self::BF16(w) => widen_bf16(&w[src], dst),
            }
        });
        &buf[..len]
    }

}

/// f16 → f32: 16 values an instruction with AVX-512F's `vcvtph2ps`, 8 with F16C, else `half`'s
/// conversion (checked at run time, like [`simd_dispatch!`]'s kernels).
fn widen_f16(src: &[f16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len());
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        #[target_feature(enable = "avx512f")]
        unsafe fn avx512(src: &[f16], dst: &mut [f32]) -> usize {
            let n = src.len() / 16 * 16;
            for i in (0..n).step_by(16) {
                // SAFETY: i + 16 <= n <= len of both slices; unaligned loads and stores.
                unsafe {
                    let h = _mm256_loadu_si256(src.as_ptr().add(i).cast::<__m256i>());
                    _mm512_storeu_ps(dst.as_mut_ptr().add(i), _mm512_cvtph_ps(h));
                }
            }
            n
        }
        #[target_feature(enable = "avx,f16c")]
        unsafe fn f16c(src: &[f16], dst: &mut [f32]) -> usize {
            let n = src.len() / 8 * 8;
            for i in (0..n).step_by(8) {
                // SAFETY: i + 8 <= n <= len of both slices; unaligned loads and stores.
                unsafe {
                    let h = _mm_loadu_si128(src.as_ptr().add(i).cast::<__m128i>());
                    _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
                }
            }
            n
        }
        let done = if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked above).
            unsafe { avx512(src, dst) }
        } else if std::arch::is_x86_feature_detected!("avx") && std::arch::is_x86_feature_detected!("f16c") {
            // SAFETY: the CPU has AVX and F16C (checked above).
            unsafe { f16c(src, dst) }
        } else {
            0
        };
        src[done..].convert_to_f32_slice(&mut dst[done..]);
    }
    #[cfg(not(target_arch = "x86_64"))]
    src.convert_to_f32_slice(dst);
}

#[inline(always)]
fn widen_bf16_portable(src: &[bf16], dst: &mut [f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        // bf16 is the top half of an f32
        *d = f32::from_bits(u32::from(s.to_bits()) << 16);
    }
}

simd_dispatch! {
    /// bf16 → f32, with the widest vector instructions the CPU has.
    fn widen_bf16(src: &[bf16], dst: &mut [f32]) => widen_bf16_portable
}

thread_local! {
    /// The widened rows of the block this thread multiplies.
    static WIDE: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The whole widened weight of the layer this thread is running ([`with_widened`]).
    static WIDE_WEIGHT: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Up to this many bytes as f32, a half-precision weight that many rows share is widened whole,
/// once per call ([`with_widened`]), rather than a block at a time in each tile.
pub(crate) const WIDEN_WHOLE_BYTES: usize = 16 << 20;

/// Runs `f` on `weight`'s values as f32: as they are, or widened whole into this thread's buffer
/// ([`with_scratch`]).
pub(crate) fn with_widened<R>(weight: WeightRows<'_>, f: impl FnOnce(&[f32]) -> R) -> R {
    with_scratch(&WIDE_WEIGHT, |buf| f(weight.widen_all(buf)))
}

/// Where a product's `m × n` result goes: column `j` of row `i` at `ptr + i·rs + j·cs`.
#[derive(Clone, Copy)]
pub(crate) struct Dst {
    pub ptr: OutPtr,
    pub rs: usize,
    pub cs: usize,
}

/// `dst (+)= lhs · weightᵀ`: `lhs` is `m × k` (element `(i, kk)` at `lhs + i·lhs_rs + kk·lhs_cs`),
/// `weight` is `n × k` row-major, `dst` is `m × n`, added to when `accumulate`. f32 weights are one
/// gemm call with `parallelism`; half-precision ones a block at a time, each widened once into
/// this thread's buffer, the columns split across threads when `parallelism` is Rayon.
///
/// # Safety
/// `lhs` holds the `m × k` values its strides reach; `dst` has room for the `m × n` values its
/// strides reach, aliases neither input, and no other thread writes them.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn product_by_rows(
    m: usize,
    n: usize,
    k: usize,
    lhs: *const f32,
    lhs_rs: usize,
    lhs_cs: usize,
    weight: WeightRows<'_>,
    dst: Dst,
    accumulate: bool,
    parallelism: gemm::Parallelism,
) {
    let lhs = Lhs(lhs);
    if let WeightRows::F32(w) = weight {
        // SAFETY: the caller's lhs and dst contracts; rhs is the `n × k` row-major weight read as
        // `k × n` (unit row stride, column stride k).
        unsafe {
            gemm::gemm(
                m, n, k,
                dst.ptr.get(), dst.cs as isize, dst.rs as isize, accumulate,
                lhs.get(), lhs_cs as isize, lhs_rs as isize,
                w.as_ptr(), k as isize, 1,
                1.0, 1.0, false, false, false, parallelism,
            );
        }
        return;
    }
    // Half precision: each thread takes a share of the output columns (weight rows) and walks
    // the depth in blocks, widening `cols × depth` weights into a buffer that stays in cache while
    // gemm reads it, and accumulating each block's product into the output (which for a share
    // of columns stays in cache too). The left-hand side is read once per thread.
    let parallel = matches!(parallelism, gemm::Parallelism::Rayon(_));
    let threads = if parallel { rayon::current_num_threads().max(1) } else { 1 };
    let share = n.div_ceil(threads).next_multiple_of(16).min(n).max(1);
    // within a share, chunks of columns whose output block (m × chunk) stays in cache across the
    // depth blocks
    let chunk = (OUT_BYTES / (4 * m.max(1))).max(256).next_multiple_of(16);
    let columns = |part: usize| {
        let share = part * share..((part + 1) * share).min(n);
        with_scratch(&WIDE, |buf| {
            // equal chunks, so no narrow remainder makes a slow product
            let chunk = share.len().div_ceil(share.len().div_ceil(chunk)).next_multiple_of(16);
            for c0 in share.clone().step_by(chunk) {
                let cols = c0..(c0 + chunk).min(share.end);
                let depth = (WIDE_BYTES / (4 * cols.len())).max(16).min(k.max(1));
                let depth = k.div_ceil(k.div_ceil(depth));
                for k0 in (0..k).step_by(depth) {
                    let kl = depth.min(k - k0);
                    let rhs = weight.widen_block(cols.clone(), k0..k0 + kl, k, buf);
                    // SAFETY: the caller's lhs and dst contracts (columns k0.. of lhs, columns
                    // `cols` of dst, which no other part writes); rhs is `cols × kl` row-major
                    // read as `kl × cols`.
                    unsafe {
                        gemm::gemm(
                            m, cols.len(), kl,
                            dst.ptr.get().add(cols.start * dst.cs), dst.cs as isize, dst.rs as isize, accumulate || k0 > 0,
                            lhs.get().add(k0 * lhs_cs), lhs_cs as isize, lhs_rs as isize,
                            rhs.as_ptr(), kl as isize, 1,
                            1.0, 1.0, false, false, false, gemm::Parallelism::None,
                        );
                    }
                }
            }
        });
    };
    let parts = n.div_ceil(share);
    if parts > 1 {
        (0..parts).into_par_iter().for_each(columns);
    } else {
        columns(0);
    }
}

/// The left-hand side's base pointer, read by the blocks' parallel tasks.
#[derive(Clone, Copy)]
struct Lhs(*const f32);
// SAFETY: the tasks only read through it, within the caller's contract.
unsafe impl Send for Lhs {}
unsafe impl Sync for Lhs {}

impl Lhs {
    /// The pointer (a method, so closures capture the `Sync` wrapper rather than its field).
    fn get(self) -> *const f32 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::cpu::test_values as values;

    /// Every dtype, blocked or not, row-major and column-major destinations, accumulating or not,
    /// against the product written out (f64), the weights rounded to their dtype first.
    #[test]
    fn blocked_product_matches_the_definition() {
        for (m, n, k) in [(3, 5, 7), (17, 100, 300), (40, 1000, 600), (1, 33, 2)] {
            let x = values(m * k, 1);
            let w = values(n * k, 2);
            let w16: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
            let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
            let rounded: [(WeightRows, Vec<f32>); 3] = [
                (WeightRows::F32(&w), w.clone()),
                (WeightRows::F16(&w16), w16.iter().map(|v| v.to_f32()).collect()),
                (WeightRows::BF16(&wb), wb.iter().map(|v| v.to_f32()).collect()),
            ];
            for (weight, exact) in &rounded {
                for (row_major, accumulate, par) in [(true, false, gemm::Parallelism::None), (false, true, gemm::Parallelism::Rayon(0))] {
                    let start = values(m * n, 3);
                    let mut out = if accumulate { start.clone() } else { vec![f32::NAN; m * n] };
                    let (rs, cs) = if row_major { (n, 1) } else { (1, m) };
                    let dst = Dst { ptr: OutPtr(out.as_mut_ptr()), rs, cs };
                    // SAFETY: x is m × k row-major, out m × n at (rs, cs).
                    unsafe { product_by_rows(m, n, k, x.as_ptr(), k, 1, *weight, dst, accumulate, par) };
                    for i in 0..m {
                        for j in 0..n {
                            let mut want: f64 = (0..k).map(|kk| x[i * k + kk] as f64 * exact[j * k + kk] as f64).sum();
                            if accumulate {
                                want += start[i * rs + j * cs] as f64;
                            }
                            let got = out[i * rs + j * cs] as f64;
                            assert!((got - want).abs() < 1e-4 * (1.0 + want.abs()), "{m}x{n}x{k} ({i}, {j}): {got} vs {want}");
                        }
                    }
                }
            }
        }
    }
}
