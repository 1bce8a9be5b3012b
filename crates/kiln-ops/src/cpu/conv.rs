//! 2-D convolution on the CPU: kiln's own kernel for burn's flex backend (f32 activations, the
//! weight f32, f16 or bf16 (`cpu/weights.rs`), no autodiff, any stride the same along
//! both axes, no dilation, one group — every convolution of the SD UNets and VAEs).
//!
//! burn-flex 0.22 runs a convolution as im2col + gemm too, but per call it first copies the input
//! to NHWC and re-lays the weights, both on one core (docs/performance.md#cpu-figures-2026-11-27),
//! then builds im2col tiles of 512 pixels and scatters each
//! tile's freshly allocated result. Here:
//! - im2col reads the NCHW input directly, one tile of pixels at a time (several images' pixels in
//!   one tile where the images are small, so SD's 8×8 and 4×4 levels make one large product);
//! - the product puts the pixels on gemm's rows and the weights on its columns: `[Cout, Cin·kh·kw]`
//!   row-major *is* the right-hand side `[Cin·kh·kw, Cout]` with unit row stride, which gemm reads
//!   in place (no re-layout, no packing), so a weight is read once per tile;
//! - a 1×1 convolution without padding uses the input itself as the left-hand side;
//! - each tile's result goes to the NCHW output with the bias added, from a per-thread buffer.
//!
//! Same contract as `torch.nn.functional.conv2d(x, weight, bias, stride, padding, dilation=1,
//! groups=1)` with explicit (possibly asymmetric) zero padding.

use burn::nn::conv::Conv2d;
use burn::tensor::Tensor;
use rayon::prelude::*;

use crate::cpu::flex::{self, OutPtr};
use crate::cpu::with_scratch;
use crate::cpu::weights::{product_by_rows, with_widened, Dst, WeightRows, WIDEN_WHOLE_BYTES};

/// Upper bound on one tile's im2col buffer: a tile's pixels × `Cin·kh·kw` f32 values.
const COL_BYTES: usize = 8 << 20;
/// Up to this many output pixels (all images together) the convolution is one gemm call over every
/// pixel, with gemm's threads splitting the output channels: each thread then reads only its share
/// of the weights, which at SD's lowest resolutions cost more to read than to multiply.
const ONE_TILE: usize = 256;
/// gemm gets its own threads from this many multiply-adds on (burn-flex's threshold).
const GEMM_THREADS_FROM: usize = 192 * 192 * 192;

/// `conv.forward(x)` by kiln's kernel, or `None` where it does not apply (another device, autodiff,
/// activations other than f32, a weight dtype other than f32/f16/bf16, unequal strides, a dilation or group count other than 1, `Same` padding, shapes burn's op
/// would refuse): the caller then uses burn's op.
///
/// # Shapes
/// - x: `[batch, c_in, height, width]`, `conv.weight`: `[c_out, c_in, kh, kw]`
/// - output: `[batch, c_out, height + top + bottom - kh + 1, width + left + right - kw + 1]`
pub fn conv2d(conv: &Conv2d, x: &Tensor<4>) -> Option<Tensor<4>> {
    conv2d_upsampled(conv, x, 1)
}

/// `conv.forward(interpolate(x, scale_factor=up, mode="nearest"))` by kiln's kernel, without the
/// upsampled input ever being made: im2col reads input pixel `(y / up, x / up)` for upsampled
/// pixel `(y, x)` (diffusers' `Upsample2D`: ×2, then a 3×3 convolution; the upsampled input is
/// the largest tensor of a VAE decode). `None` where [`conv2d`] would be.
///
/// # Shapes
/// - x: `[batch, c_in, height, width]` → `[batch, c_out, oh, ow]` for the input `up` times larger
pub fn conv2d_upsampled(conv: &Conv2d, x: &Tensor<4>, up: usize) -> Option<Tensor<4>> {
    let ((top, left, bottom, right), stride) = crate::geometry::padding_and_stride(conv, x)?;
    let weight = conv.weight.val();
    let [batch, c_in, h, w] = x.dims();
    let [c_out, _, kh, kw] = weight.dims();
    let bias_ok = conv.bias.as_ref().is_none_or(|b| b.dims() == [c_out]);
    if !bias_ok || [batch, c_in, h, w, c_out, kh, kw, up].contains(&0) {
        return None;
    }
    let x = flex::f32_tensor(x)?;
    let weight = flex::weight_tensor(&weight)?;
    let bias = match &conv.bias {
        Some(b) => Some(flex::f32_tensor(&b.val())?),
        None => None,
    };
    let g = Geometry::upsampled([batch, c_in, h, w], [c_out, kh, kw], (top, left, bottom, right), stride, up)?;
    let out = conv2d_f32(flex::values(&x), WeightRows::of(&weight)?, bias.as_ref().map(flex::values), &g);
    Some(flex::tensor(out, [batch, c_out, g.oh, g.ow]))
}

/// Sizes of one convolution: input `[batch, c_in, h, w]`, kernel `kh × kw`, zero padding
/// `top`/`left` (bottom and right are implied by the output size `oh × ow`), `stride` along both
/// axes, and the input read nearest-upsampled `up` times (1: as it is).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Geometry {
    pub batch: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub top: usize,
    pub left: usize,
    pub oh: usize,
    pub ow: usize,
    pub stride: usize,
    pub up: usize,
}

impl Geometry {
    /// The geometry of input `[batch, c_in, h, w]`, weight `[c_out, _, kh, kw]`, padding
    /// `(top, left, bottom, right)` and `stride` (the padded input at least the kernel's size).
    #[cfg(test)]
    pub(crate) fn new(x: [usize; 4], w: [usize; 3], padding: (usize, usize, usize, usize), stride: usize) -> Self {
        Self::upsampled(x, w, padding, stride, 1).expect("sizes that fit")
    }

    /// [`Geometry::new`] over the input nearest-upsampled `up` times (`None` when a size
    /// overflows or the padded, upsampled input is smaller than the kernel).
    pub(crate) fn upsampled([batch, c_in, h, w]: [usize; 4], [c_out, kh, kw]: [usize; 3], (top, left, bottom, right): (usize, usize, usize, usize), stride: usize, up: usize) -> Option<Self> {
        let vh = h.checked_mul(up)?.checked_add(top + bottom)?.checked_sub(kh)?;
        let vw = w.checked_mul(up)?.checked_add(left + right)?.checked_sub(kw)?;
        let (oh, ow) = (vh / stride + 1, vw / stride + 1);
        Some(Self { batch, c_in, h, w, c_out, kh, kw, top, left, oh, ow, stride, up })
    }

    fn plane(&self) -> usize {
        self.oh * self.ow
    }

    fn k(&self) -> usize {
        self.c_in * self.kh * self.kw
    }

    /// A 1×1 kernel without padding: the input is already the im2col matrix.
    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.up == 1 && self.oh == self.h && self.ow == self.w
    }
}

/// The convolution on row-major slices: x `[batch, c_in, h, w]`, weight `[c_out, c_in, kh, kw]`,
/// bias `[c_out]` → `[batch, c_out, oh, ow]`.
pub(crate) fn conv2d_f32(x: &[f32], weight: WeightRows<'_>, bias: Option<&[f32]>, g: &Geometry) -> Vec<f32> {
    if g.kh * g.kw > 1 && g.c_out <= TAPS_UP_TO_C_OUT && g.stride == 1 && g.up == 1 {
        // at most 64 output channels: the whole weight widened once is small
        return with_widened(weight, |weight| conv2d_taps(x, weight, bias, g));
    }
    let total = g.batch * g.plane();
    if total > ONE_TILE && !matches!(weight, WeightRows::F32(_)) && g.c_out * g.k() * 4 <= WIDEN_WHOLE_BYTES {
        // several tiles each read the whole weight: a half-precision one that is not too large
        // (SD's 320- and 640-channel convolutions, the VAE's) is widened once for all of them
        return with_widened(weight, |weight| conv2d_f32(x, WeightRows::F32(weight), bias, g));
    }
    let len = g.batch * g.c_out * g.plane();
    let mut out = Vec::with_capacity(len);
    let dst = OutPtr(out.as_mut_ptr());
    if total <= ONE_TILE {
        let par = if total * g.c_out * g.k() >= GEMM_THREADS_FROM {
            gemm::Parallelism::Rayon(0)
        } else {
            gemm::Parallelism::None
        };
        // SAFETY: one tile covers every output pixel; `out` has room for them all.
        with_buffers(|bufs| unsafe { tile(x, weight, bias, g, dst, 0..total, bufs, par) });
        // SAFETY: the tile wrote every output value.
        unsafe { out.set_len(len) };
        return out;
    }
    // Tiles of whole multiples of 16 pixels (gemm's row block), as many as fit COL_BYTES, their
    // count a multiple of the thread count so no core idles at the end.
    let threads = rayon::current_num_threads().max(1);
    let max_rows = (COL_BYTES / (4 * g.k())).clamp(16, 1024);
    let tiles = total.div_ceil(max_rows).next_multiple_of(threads);
    let rows = total.div_ceil(tiles).next_multiple_of(16);
    (0..total.div_ceil(rows)).into_par_iter().for_each(|t| {
        let pixels = t * rows..((t + 1) * rows).min(total);
        // SAFETY: tiles cover disjoint pixel ranges, so their writes to `out` do not overlap.
        with_buffers(|bufs| unsafe { tile(x, weight, bias, g, dst, pixels, bufs, gemm::Parallelism::None) });
    });
    // SAFETY: the tiles cover every pixel and write every output value.
    unsafe { out.set_len(len) };
    out
}

/// Up to this many output channels a k×k convolution sums one product per kernel tap
/// ([`conv2d_taps`]) instead of building im2col: im2col copies `Cin·kh·kw` values per pixel for
/// `2·Cin·kh·kw·Cout` flops, which with few output channels costs as much as the product (the tiny
/// models' 32- and 64-channel levels, the VAE's 3-channel `conv_out`).
const TAPS_UP_TO_C_OUT: usize = 64;
/// Output pixels (padded rows) per task of [`conv2d_taps`].
const TAP_TILE: usize = 1024;

/// The convolution as `kh·kw` accumulated products, one per kernel tap, read straight from a
/// zero-padded copy of the input: with rows `wp = ow + kw − 1` values apart, tap (ky, kx) of
/// output pixel (y, x) is padded pixel `(y + ky)·wp + x + kx`, so each tap's left-hand side is the
/// padded plane shifted by `ky·wp + kx` (gemm reads it in place). The `kw − 1` extra columns per
/// row this computes are dropped when the product is written out.
fn conv2d_taps(x: &[f32], weight: &[f32], bias: Option<&[f32]>, g: &Geometry) -> Vec<f32> {
    let (hp, wp) = (g.oh + g.kh - 1, g.ow + g.kw - 1);
    // a padded plane, plus the kw − 1 values the last row's extra columns read past it
    let lp = hp * wp + g.kw - 1;
    let mut padded = vec![0f32; g.batch * g.c_in * lp];
    padded.par_chunks_mut(lp).zip(x.par_chunks(g.h * g.w)).for_each(|(dst, src)| {
        for (y, row) in src.chunks_exact(g.w).enumerate() {
            dst[(y + g.top) * wp + g.left..][..g.w].copy_from_slice(row);
        }
    });
    // tasks of whole output rows of one image, their count a multiple of the thread count
    let threads = rayon::current_num_threads().max(1);
    let blocks = g.oh.div_ceil((TAP_TILE / wp).max(1));
    let blocks = (g.batch * blocks).next_multiple_of(threads).div_ceil(g.batch).min(g.oh);
    let rows = g.oh.div_ceil(blocks);
    let blocks = g.oh.div_ceil(rows);
    let len = g.batch * g.c_out * g.plane();
    let mut out = Vec::with_capacity(len);
    let dst = OutPtr(out.as_mut_ptr());
    let taps = g.kh * g.kw;
    (0..g.batch * blocks).into_par_iter().for_each(|task| {
        let (image, y0) = (task / blocks, task % blocks * rows);
        let rows = rows.min(g.oh - y0);
        let m = rows * wp;
        with_buffers(|bufs| {
            let product = scratch(&mut bufs.product, m * g.c_out);
            let plane = &padded[image * g.c_in * lp..];
            for tap in 0..taps {
                let (ky, kx) = (tap / g.kw, tap % g.kw);
                let lhs = &plane[(y0 + ky) * wp + kx..];
                // product[co·m + t] (+)= Σ_c padded[c, shift + t] · weight[co, c, ky, kx]
                // SAFETY: lhs holds c_in columns of m values lp apart (the last read is
                // (c_in − 1)·lp + (oh + kh − 1)·wp + kw − 2 < c_in·lp from the plane's start);
                // weight is c_out × c_in × taps; product is m × c_out and aliases neither.
                unsafe {
                    gemm::gemm(
                        m, g.c_out, g.c_in,
                        product.as_mut_ptr(), m as isize, 1, tap > 0,
                        lhs.as_ptr(), lp as isize, 1,
                        weight[tap..].as_ptr(), (g.c_in * taps) as isize, taps as isize,
                        1.0, 1.0, false, false, false, gemm::Parallelism::None,
                    );
                }
            }
            for co in 0..g.c_out {
                let b = bias.map_or(0.0, |b| b[co]);
                for r in 0..rows {
                    // SAFETY: row y0 + r of channel co of `image` lies inside `out`'s capacity
                    // and belongs to this task alone.
                    unsafe {
                        write_biased(dst.get().add(((image * g.c_out + co) * g.oh + y0 + r) * g.ow), &product[co * m + r * wp..][..g.ow], b)
                    };
                }
            }
        });
    });
    // SAFETY: the tasks cover every (image, row) and write every value of it.
    unsafe { out.set_len(len) };
    out
}

/// Writes `src + bias` to the output values from `dst` on (written, never read: they may be
/// uninitialised).
///
/// # Safety
/// `dst` points at `src.len()` values of the output's capacity that no other thread writes.
unsafe fn write_biased(dst: *mut f32, src: &[f32], bias: f32) {
    for (i, s) in src.iter().enumerate() {
        // SAFETY: within the caller's `src.len()` values.
        unsafe { dst.add(i).write(s + bias) };
    }
}

/// Per-thread scratch: the tile's im2col matrix and its product. Kept between calls and only
/// grown, so a tile neither allocates nor clears memory it then overwrites.
#[derive(Default)]
struct Buffers {
    col: Vec<f32>,
    product: Vec<f32>,
}

thread_local! {
    static BUFFERS: std::cell::RefCell<Buffers> = std::cell::RefCell::default();
}

/// Runs `f` with this thread's scratch buffers ([`with_scratch`]).
fn with_buffers<R>(f: impl FnOnce(&mut Buffers) -> R) -> R {
    with_scratch(&BUFFERS, f)
}

/// The first `len` values of `buf`, grown (never shrunk) to hold them.
fn scratch(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    &mut buf[..len]
}

/// Output pixels `pixels` (indices over batch × oh × ow) of every output channel.
///
/// # Safety
/// `out` points at the `[batch, c_out, oh, ow]` output; no other thread writes these pixels.
#[allow(clippy::too_many_arguments)]
unsafe fn tile(
    x: &[f32],
    weight: WeightRows<'_>,
    bias: Option<&[f32]>,
    g: &Geometry,
    out: OutPtr,
    pixels: std::ops::Range<usize>,
    bufs: &mut Buffers,
    par: gemm::Parallelism,
) {
    let (plane, k, m) = (g.plane(), g.k(), pixels.len());
    let runs = runs(g, pixels.clone());
    // lhs: m pixels × k, column-major (a column per (c, ky, kx)).
    let (lhs, lhs_cs) = if g.pointwise() && runs.iter().all(|r| r.image == runs[0].image) {
        let first = pixels.start % plane;
        (x[runs[0].image * g.c_in * plane + first..].as_ptr(), plane)
    } else {
        let col = scratch(&mut bufs.col, k * m);
        im2col(x, g, &runs, m, col, matches!(par, gemm::Parallelism::Rayon(_)));
        (col.as_ptr(), m)
    };
    let product = scratch(&mut bufs.product, m * g.c_out);
    // product[co·m + t] = Σ_kk lhs[t, kk] · weight[co, kk]: dst column-major m × c_out, rhs the
    // row-major weight read as k × c_out with unit row stride (half-precision weights widened a
    // block of output channels at a time).
    // SAFETY: lhs holds m × k values at column stride lhs_cs (the input plane or the im2col
    // buffer), weight c_out × k, product m × c_out; product aliases neither.
    let dst = Dst { ptr: OutPtr(product.as_mut_ptr()), rs: 1, cs: m };
    unsafe { product_by_rows(m, g.c_out, k, lhs, 1, lhs_cs, weight, dst, false, par) };
    for run in &runs {
        let first = run.oy * g.ow + run.ox;
        for co in 0..g.c_out {
            let b = bias.map_or(0.0, |b| b[co]);
            // SAFETY: the run's pixels of image `run.image`, channel `co`, lie inside `out`'s
            // capacity and belong to this tile alone.
            unsafe { write_biased(out.get().add((run.image * g.c_out + co) * plane + first), &product[co * m + run.t..][..run.len], b) };
        }
    }
}

/// A stretch of a tile's pixels along one output row: tile offset `t`, `len` pixels from
/// (`oy`, `ox`) of image `image`.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Run {
    t: usize,
    image: usize,
    oy: usize,
    ox: usize,
    len: usize,
}

/// The output-row stretches that make up pixels `pixels` (indices over batch × oh × ow).
fn runs(g: &Geometry, pixels: std::ops::Range<usize>) -> Vec<Run> {
    let mut runs = Vec::new();
    let mut n = pixels.start;
    while n < pixels.end {
        let (image, p) = (n / g.plane(), n % g.plane());
        let (oy, ox) = (p / g.ow, p % g.ow);
        let len = (g.ow - ox).min(pixels.end - n);
        runs.push(Run { t: n - pixels.start, image, oy, ox, len });
        n += len;
    }
    runs
}

/// Fills `col` (column-major, `m` rows, one column per (c, ky, kx)) with the input values under
/// each kernel tap for the tile's pixels, zero where the tap falls on padding.
fn im2col(x: &[f32], g: &Geometry, runs: &[Run], m: usize, col: &mut [f32], parallel: bool) {
    let per_channel = g.kh * g.kw * m;
    let fill = |(c, cols): (usize, &mut [f32])| {
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let column = &mut cols[(ky * g.kw + kx) * m..][..m];
                for r in runs {
                    let dst = &mut column[r.t..r.t + r.len];
                    // the input row under this tap, in unpadded coordinates
                    // in the (upsampled) input's coordinates
                    let iy = (r.oy * g.stride + ky).wrapping_sub(g.top);
                    if iy >= g.h * g.up {
                        dst.fill(0.0);
                        continue;
                    }
                    let row = &x[((r.image * g.c_in + c) * g.h + iy / g.up) * g.w..][..g.w];
                    // output columns ox with 0 <= ox·stride + kx - left < w·up read the row; the rest pad
                    let s = g.stride;
                    let lo = g.left.saturating_sub(kx).div_ceil(s).clamp(r.ox, r.ox + r.len);
                    let hi = (g.left + g.w * g.up).saturating_sub(kx).div_ceil(s).clamp(lo, r.ox + r.len);
                    let (pad_lo, rest) = dst.split_at_mut(lo - r.ox);
                    let (inside, pad_hi) = rest.split_at_mut(hi - lo);
                    pad_lo.fill(0.0);
                    let first = lo * s + kx - g.left;
                    match (s, g.up) {
                        (1, 1) => inside.copy_from_slice(&row[first..first + inside.len()]),
                        // Upsample2D's ×2: each input value twice (a shift, not a division)
                        (1, 2) => {
                            for (i, v) in inside.iter_mut().enumerate() {
                                *v = row[(first + i) >> 1];
                            }
                        }
                        _ => {
                            for (i, v) in inside.iter_mut().enumerate() {
                                *v = row[(first + i * s) / g.up];
                            }
                        }
                    }
                    pad_hi.fill(0.0);
                }
            }
        }
    };
    if parallel {
        col.par_chunks_mut(per_channel).enumerate().for_each(fill);
    } else {
        col.chunks_mut(per_channel).enumerate().for_each(fill);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The convolution by its definition, one output value at a time (f64 accumulation).
    fn naive(x: &[f32], weight: &[f32], bias: Option<&[f32]>, g: &Geometry) -> Vec<f32> {
        let mut out = vec![0f32; g.batch * g.c_out * g.plane()];
        for b in 0..g.batch {
            for co in 0..g.c_out {
                for oy in 0..g.oh {
                    for ox in 0..g.ow {
                        let mut acc = bias.map_or(0.0, |b| b[co] as f64);
                        for c in 0..g.c_in {
                            for ky in 0..g.kh {
                                for kx in 0..g.kw {
                                    let (iy, ix) = ((oy * g.stride + ky) as isize - g.top as isize, (ox * g.stride + kx) as isize - g.left as isize);
                                    if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                        continue;
                                    }
                                    let xv = x[((b * g.c_in + c) * g.h + iy as usize) * g.w + ix as usize];
                                    let wv = weight[((co * g.c_in + c) * g.kh + ky) * g.kw + kx];
                                    acc += xv as f64 * wv as f64;
                                }
                            }
                        }
                        out[((b * g.c_out + co) * g.oh + oy) * g.ow + ox] = acc as f32;
                    }
                }
            }
        }
        out
    }

    use crate::cpu::test_values as values;

    /// kiln's kernel against the definition: every path (one tile over all images, tiles that
    /// split images and rows, the pointwise shortcut), asymmetric and zero padding, strides, bias
    /// or not.
    #[test]
    fn matches_the_definition() {
        // (batch, c_in, h, w, c_out, kh, kw, top, left, bottom, right, stride, bias)
        let cases = [
            (2, 3, 5, 4, 4, 3, 3, 1, 1, 1, 1, 1, true),      // one tile, 2 images
            (1, 2, 6, 7, 3, 3, 3, 0, 0, 0, 0, 1, false),     // no padding
            (2, 3, 4, 5, 2, 3, 3, 0, 1, 2, 0, 1, true),      // asymmetric padding
            (2, 5, 23, 19, 6, 3, 3, 1, 1, 1, 1, 1, true),    // 874 pixels: tiles split rows and images
            (3, 4, 17, 13, 5, 1, 1, 0, 0, 0, 0, 1, true),    // pointwise, tiled
            (2, 4, 3, 3, 5, 1, 1, 0, 0, 0, 0, 1, false),     // pointwise, one tile over 2 images
            (1, 2, 9, 31, 3, 1, 3, 0, 1, 0, 1, 1, true),     // 1×3 kernel
            (2, 8, 40, 40, 8, 3, 3, 1, 1, 1, 1, 1, true),    // 3200 pixels
            (1, 3, 5, 6, 70, 3, 3, 1, 1, 1, 1, 1, true),     // im2col (c_out > 64), one tile
            (2, 5, 23, 19, 66, 3, 3, 1, 0, 1, 2, 1, true),   // im2col, tiles, asymmetric padding
            (1, 3, 200, 20, 5, 3, 3, 1, 1, 1, 1, 1, true),   // per-tap sums over several row blocks
            (1, 2, 5, 5, 3, 5, 5, 2, 2, 2, 2, 1, false),     // 5×5 kernel
            (2, 3, 9, 8, 70, 3, 3, 1, 1, 1, 1, 2, true),      // stride 2 (SD's downsamplers: padding 1)
            (2, 5, 23, 19, 66, 3, 3, 0, 0, 1, 1, 2, true),    // stride 2, tiles, asymmetric padding
            (1, 4, 11, 10, 5, 3, 3, 1, 1, 1, 1, 2, false),    // stride 2, few channels (no per-tap sums)
            (2, 4, 13, 12, 6, 1, 1, 0, 0, 0, 0, 3, true),     // 1×1, stride 3 (not the pointwise shortcut)
        ];
        for (i, &(batch, c_in, h, w, c_out, kh, kw, top, left, bottom, right, stride, with_bias)) in cases.iter().enumerate() {
            let g = Geometry::new([batch, c_in, h, w], [c_out, kh, kw], (top, left, bottom, right), stride);
            let x = values(batch * c_in * h * w, 3 * i as u32 + 1);
            let weight = values(c_out * c_in * kh * kw, 3 * i as u32 + 2);
            let bias = with_bias.then(|| values(c_out, 3 * i as u32 + 3));
            let got = conv2d_f32(&x, WeightRows::F32(&weight), bias.as_deref(), &g);
            let halves: Vec<burn::tensor::f16> = weight.iter().map(|&v| burn::tensor::f16::from_f32(v)).collect();
            let widened: Vec<f32> = halves.iter().map(|v| v.to_f32()).collect();
            let got_half = conv2d_f32(&x, WeightRows::F16(&halves), bias.as_deref(), &g);
            let want_half = naive(&x, &widened, bias.as_deref(), &g);
            let err = got_half.iter().zip(&want_half).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(err < 1e-5, "case {i} {g:?} f16 weights: max error {err}");
            let want = naive(&x, &weight, bias.as_deref(), &g);
            assert_eq!(got.len(), want.len());
            let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(err < 1e-5, "case {i} {g:?}: max error {err}");
        }
    }

    /// Through burn's module: the kernel against burn-flex's own convolution on a `Conv2d` as
    /// kiln builds them (3×3 with padding 1, 1×1, stride 2), and `None` (burn's op) for what it
    /// does not cover: dilation, f16 activations, autodiff.
    /// `nn.Conv2d(c_in, c_out, kernel, stride, padding)`.
    fn conv_layer(c_in: usize, c_out: usize, kernel: usize, stride: usize, padding: usize, device: &burn::tensor::Device) -> Conv2d {
        use burn::nn::conv::Conv2dConfig;
        use burn::nn::PaddingConfig2d;
        Conv2dConfig::new([c_in, c_out], [kernel, kernel])
            .with_stride([stride, stride])
            .with_padding(PaddingConfig2d::Explicit(padding, padding, padding, padding))
            .init(device)
    }

    #[test]
    fn matches_burns_op_and_declines_the_rest() {
        use burn::tensor::{DType, Device, Distribution};
        let device = Device::flex();
        for (c_in, c_out, kernel, padding, size) in [(4, 6, 3, 1, 9), (6, 3, 1, 0, 7), (3, 5, 3, 1, 20)] {
            let conv = conv_layer(c_in, c_out, kernel, 1, padding, &device);
            let x = Tensor::<4>::random([2, c_in, size, size + 1], Distribution::Normal(0.0, 1.0), &device);
            let got = conv2d(&conv, &x).expect("flex, f32, stride 1");
            let want = conv.forward(x);
            assert_eq!(got.dims(), want.dims());
            let err: f32 = (got - want).abs().max().into_scalar();
            assert!(err < 1e-5, "{c_in}->{c_out} k{kernel}: max error {err}");
        }
        // the weight kept in f16 (as loading keeps a half-precision file's), the bias f32
        let conv = conv_layer(5, 70, 3, 1, 1, &device);
        let mut half = conv.clone();
        half.weight = half.weight.map(|w| w.cast(DType::F16));
        let widened = {
            let mut c = conv.clone();
            c.weight = half.weight.clone().map(|w| w.cast(DType::F32));
            c
        };
        let x = Tensor::<4>::random([2, 5, 11, 9], Distribution::Normal(0.0, 1.0), &device);
        let err: f32 = (conv2d(&half, &x).expect("f16 weight") - widened.forward(x)).abs().max().into_scalar();
        assert!(err < 1e-4, "f16 weight: max error {err}");
        // stride 2 (the downsamplers), odd and even sizes
        for size in [8, 9] {
            let conv = conv_layer(6, 70, 3, 2, 1, &device);
            let x = Tensor::<4>::random([2, 6, size, size + 3], Distribution::Normal(0.0, 1.0), &device);
            let got = conv2d(&conv, &x).expect("stride 2");
            let want = conv.forward(x);
            assert_eq!(got.dims(), want.dims());
            let err: f32 = (got - want).abs().max().into_scalar();
            assert!(err < 1e-5, "stride 2, {size}: max error {err}");
        }
        let x = Tensor::<4>::zeros([1, 4, 8, 8], &device);
        let mut dilated = conv_layer(4, 4, 3, 1, 1, &device);
        dilated.dilation = [2, 2];
        assert!(conv2d(&dilated, &x).is_none(), "dilation 2");
        let conv = conv_layer(4, 4, 3, 1, 1, &device);
        assert!(conv2d(&crate::cast_module(conv.clone(), DType::F16), &x.clone().cast(DType::F16)).is_none(), "f16");
        let autodiff = Device::flex().autodiff();
        let tracked = Tensor::<4>::zeros([1, 4, 8, 8], &autodiff).require_grad();
        assert!(conv2d(&conv_layer(4, 4, 3, 1, 1, &autodiff), &tracked).is_none(), "autodiff");
    }

    /// Reading the input nearest-upsampled ×2 / ×3 is the convolution of the upsampled input
    /// (made here by repeating pixels, as `interpolate(mode="nearest")` does), every path.
    #[test]
    fn upsampled_input_matches_the_definition() {
        // (batch, c_in, h, w, c_out, kh, kw, padding, stride, up)
        let cases = [(2, 3, 4, 5, 70, 3, 3, 1, 1, 2), (1, 4, 9, 7, 66, 3, 3, 1, 1, 2), (2, 2, 3, 3, 5, 3, 3, 1, 1, 2), (1, 3, 5, 4, 70, 3, 3, 0, 2, 3), (2, 5, 30, 17, 80, 3, 3, 1, 1, 2)];
        for (i, &(batch, c_in, h, w, c_out, kh, kw, p, stride, up)) in cases.iter().enumerate() {
            let x = values(batch * c_in * h * w, 5 * i as u32 + 1);
            let weight = values(c_out * c_in * kh * kw, 5 * i as u32 + 2);
            let bias = values(c_out, 5 * i as u32 + 3);
            let (uh, uw) = (h * up, w * up);
            let mut big = vec![0f32; batch * c_in * uh * uw];
            for (plane, src) in big.chunks_mut(uh * uw).zip(x.chunks(h * w)) {
                for y in 0..uh {
                    for xx in 0..uw {
                        plane[y * uw + xx] = src[(y / up) * w + xx / up];
                    }
                }
            }
            let g = Geometry::upsampled([batch, c_in, h, w], [c_out, kh, kw], (p, p, p, p), stride, up).unwrap();
            let g_big = Geometry::new([batch, c_in, uh, uw], [c_out, kh, kw], (p, p, p, p), stride);
            assert_eq!((g.oh, g.ow), (g_big.oh, g_big.ow), "case {i}");
            let got = conv2d_f32(&x, WeightRows::F32(&weight), Some(&bias), &g);
            let want = naive(&big, &weight, Some(&bias), &g_big);
            let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(err < 1e-5, "case {i} {g:?}: max error {err}");
        }
    }

    /// The runs of a tile that starts mid-row and crosses into the next image.
    #[test]
    fn runs_follow_rows_and_images() {
        let g = Geometry::new([2, 1, 3, 4], [1, 1, 1], (0, 0, 0, 0), 1);
        let r = runs(&g, 6..15);
        let want = [
            Run { t: 0, image: 0, oy: 1, ox: 2, len: 2 },
            Run { t: 2, image: 0, oy: 2, ox: 0, len: 4 },
            Run { t: 6, image: 1, oy: 0, ox: 0, len: 3 },
        ];
        assert_eq!(r, want);
    }
}
