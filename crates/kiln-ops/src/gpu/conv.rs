//! Convolutions on GPUs: burn's conv kernels, or the same convolution as one matrix product over
//! an im2col matrix built from the kernel taps, whichever [`crate::gpu::route::choose`] measured to
//! be faster on the device.
//!
//! burn 0.22.1's f16 3×3 convolution on Vulkan ran at 47 TFLOP/s on an H100 where its 4096³ matrix
//! product ran at 125 (docs/performance.md#h100-2026-11-26); an im2col product pays one copy of the input per kernel tap
//! (memory-bound, ~3 TB/s there) to run the FLOPs at the matrix product's rate instead.

use burn::nn::conv::Conv2d;
use burn::tensor::ops::PadMode;
use burn::tensor::Tensor;

use crate::gpu::route::GpuOp;

/// How [`conv2d`] runs a convolution on a GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GpuConvRoute {
    /// burn's `conv2d` op (its autotuned implicit-GEMM and direct kernels).
    Burn,
    /// `out[b] = W · cols[b]`: `cols` stacks the zero-padded input shifted by each kernel tap
    /// (`[batch, kh·kw·c_in, oh·ow]`, tap-major; a 1×1 convolution without padding uses the input
    /// itself), `W` is the weight permuted to `[c_out, kh·kw·c_in]` in the same order; then the
    /// bias. Stride 1, dilation 1, one group; the batch, and if need be the output rows, are split
    /// so one `cols` stays within [`IM2COL_MAX_BYTES`].
    Im2col,
}

/// The largest im2col matrix one product builds: the batch, and where one image is larger (a VAE's
/// 512 px up-blocks would need 0.3–1.2 GB) its output rows, are split into chunks below it.
pub const IM2COL_MAX_BYTES: usize = 128 << 20;

/// How [`GpuConvRoute::Im2col`] splits a convolution so that one im2col matrix stays within
/// `max_bytes`: `images` images per product (the whole batch when it fits) and, where one image
/// does not fit, `rows` output rows per product (row bands). `None` when a single output row
/// exceeds `max_bytes`.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Chunks {
    images: usize,
    rows: usize,
}

fn chunks(conv: &Conv2d, x: &Tensor<4>, (top, left, bottom, right): (usize, usize, usize, usize), max_bytes: usize) -> Option<Chunks> {
    let [batch, c_in, h, w] = x.dims();
    let [_, _, kh, kw] = conv.weight.dims();
    let (oh, ow) = (h + top + bottom - kh + 1, w + left + right - kw + 1);
    let per_row = (kh * kw * c_in * ow * x.dtype().size()).max(1);
    let per_image = per_row * oh;
    if per_row > max_bytes {
        None
    } else if per_image <= max_bytes {
        Some(Chunks { images: (max_bytes / per_image).min(batch), rows: oh })
    } else {
        Some(Chunks { images: 1, rows: max_bytes / per_row })
    }
}

/// `conv.forward(x)` on a GPU by the route `GpuOp::Conv2d`'s
/// [`RoutePolicy`](crate::gpu::route::RoutePolicy) gives (measured once per device, dtype and shape
/// under `Auto`); burn's op on flex, under autodiff and where im2col does not apply.
///
/// # Shapes
/// - x: `[batch, c_in, height, width]` → `[batch, c_out, height_out, width_out]`
pub fn conv2d(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    let Some(padding) = crate::geometry::stride_1_padding(conv, &x) else { return conv.forward(x) };
    if chunks(conv, &x, padding, IM2COL_MAX_BYTES).is_none() {
        return conv.forward(x);
    }
    let burn = || conv.forward(x.clone());
    let im2col = || conv2d_by(GpuConvRoute::Im2col, conv, x.clone());
    let shape = || format!("x {:?} weight {:?} padding {padding:?}", x.dims(), conv.weight.dims());
    let route = if crate::gpu::route::use_alternative(GpuOp::Conv2d, &x.device(), x.dtype(), shape, &burn, &im2col) {
        GpuConvRoute::Im2col
    } else {
        GpuConvRoute::Burn
    };
    conv2d_by(route, conv, x)
}

/// `conv.forward(x)` along `route`; [`GpuConvRoute::Im2col`] falls back to burn's op where it
/// does not apply (see the route's docs).
///
/// # Shapes
/// - x: `[batch, c_in, height, width]` → `[batch, c_out, height_out, width_out]`
pub fn conv2d_by(route: GpuConvRoute, conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    match route {
        GpuConvRoute::Burn => conv.forward(x),
        GpuConvRoute::Im2col => im2col_conv(conv, x, IM2COL_MAX_BYTES),
    }
}

/// [`GpuConvRoute::Im2col`] with im2col matrices of at most `max_bytes` (split by images, then
/// by output rows); burn's op where the route does not apply or one output row exceeds the bound.
///
/// # Shapes
/// - x: `[batch, c_in, height, width]` → `[batch, c_out, height_out, width_out]`
pub fn im2col_conv(conv: &Conv2d, x: Tensor<4>, max_bytes: usize) -> Tensor<4> {
    let Some((top, left, bottom, right)) = crate::geometry::stride_1_padding(conv, &x) else { return conv.forward(x) };
    let Some(Chunks { images, rows }) = chunks(conv, &x, (top, left, bottom, right), max_bytes) else { return conv.forward(x) };
    let [batch, c_in, h, w] = x.dims();
    let weight = conv.weight.val();
    let [c_out, _, kh, kw] = weight.dims();
    let (oh, ow) = (h + top + bottom - kh + 1, w + left + right - kw + 1);
    let k = kh * kw * c_in;
    // [c_out, c_in, kh, kw] → [1, c_out, (ky·kw + kx)·c_in + ci]: the order `cols` stacks the taps in
    let wm = weight.permute([0, 2, 3, 1]).reshape([1, c_out, k]);
    let x = if top + left + bottom + right == 0 { x } else { x.pad([(top, bottom), (left, right)], PadMode::Constant(0.0)) };
    // output rows r0..r0 + n of images i0..i0 + b: padded input rows r0..r0 + n + kh − 1
    let product = |i0: usize, b: usize, r0: usize, n: usize| -> Tensor<4> {
        let cols = if kh == 1 && kw == 1 && b == batch && n == oh {
            x.clone().reshape([b, c_in, oh * ow])
        } else {
            let taps: Vec<Tensor<4>> = (0..kh * kw)
                .map(|t| {
                    let (ky, kx) = (t / kw, t % kw);
                    x.clone().slice([i0..i0 + b, 0..c_in, r0 + ky..r0 + ky + n, kx..kx + ow])
                })
                .collect();
            Tensor::cat(taps, 1).reshape([b, k, n * ow])
        };
        wm.clone().expand([b, c_out, k]).matmul(cols).reshape([b, c_out, n, ow])
    };
    let mut parts = Vec::new();
    for i0 in (0..batch).step_by(images) {
        let b = images.min(batch - i0);
        let bands: Vec<Tensor<4>> = (0..oh).step_by(rows).map(|r0| product(i0, b, r0, rows.min(oh - r0))).collect();
        parts.push(if bands.len() == 1 { bands.into_iter().next().unwrap() } else { Tensor::cat(bands, 2) });
    }
    let out = if parts.len() == 1 { parts.pop().unwrap() } else { Tensor::cat(parts, 0) };
    match &conv.bias {
        Some(bias) => out + bias.val().reshape([1, c_out, 1, 1]),
        None => out,
    }
}

/// Whether [`GpuConvRoute::Im2col`] runs this convolution itself (rather than falling back to
/// burn's op): stride 1, dilation 1, one group, explicit padding, and one output row's im2col
/// matrix within [`IM2COL_MAX_BYTES`].
pub fn im2col_applies(conv: &Conv2d, x: &Tensor<4>) -> bool {
    crate::geometry::stride_1_padding(conv, x).is_some_and(|p| chunks(conv, x, p, IM2COL_MAX_BYTES).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;
    use burn::nn::conv::Conv2dConfig;
    use burn::nn::PaddingConfig2d;
    use burn::tensor::Distribution;

    /// The im2col product against burn's convolution on flex: 3×3 with SD's padding 1, 1×1,
    /// asymmetric padding, a 1×3 kernel, no bias; whole batches, chunks of images, and row bands
    /// (bounds of one image, of 2 rows, of 1 row, of 3 rows that leave a shorter last band).
    #[test]
    fn im2col_matches_burns_convolution() {
        let device = Device::flex();
        // bound: None = IM2COL_MAX_BYTES, Some(r) = r output rows of one image
        for (what, [b, c_in, h, w], c_out, [kh, kw], (top, left, bottom, right), bias, rows) in [
            ("3x3 pad 1", [2, 5, 7, 6], 4, [3, 3], (1, 1, 1, 1), true, None),
            ("1x1", [2, 6, 5, 5], 3, [1, 1], (0, 0, 0, 0), true, None),
            ("3x3 asymmetric, no bias", [1, 3, 6, 9], 2, [3, 3], (0, 2, 1, 0), false, None),
            ("1x3, one image per chunk", [3, 4, 4, 5], 5, [1, 3], (0, 1, 0, 1), true, Some(4)),
            ("3x3, one image per chunk", [3, 4, 5, 5], 6, [3, 3], (1, 1, 1, 1), true, Some(5)),
            ("3x3, bands of 2 rows", [2, 4, 7, 5], 6, [3, 3], (1, 1, 1, 1), true, Some(2)),
            ("3x3, bands of 1 row", [1, 3, 4, 6], 2, [3, 3], (1, 1, 1, 1), false, Some(1)),
            ("3x3 asymmetric, bands of 3 rows", [2, 3, 8, 5], 4, [3, 3], (2, 0, 0, 1), true, Some(3)),
            ("1x1, bands of 2 rows", [2, 6, 5, 4], 3, [1, 1], (0, 0, 0, 0), true, Some(2)),
        ] {
            let conv = Conv2dConfig::new([c_in, c_out], [kh, kw])
                .with_padding(PaddingConfig2d::Explicit(top, left, bottom, right))
                .with_bias(bias)
                .init(&device);
            let x = Tensor::<4>::random([b, c_in, h, w], Distribution::Normal(0.0, 1.0), &device);
            let want = conv.forward(x.clone());
            let got = match rows {
                Some(r) => im2col_conv(&conv, x, kh * kw * c_in * want.dims()[3] * 4 * r),
                None => conv2d_by(GpuConvRoute::Im2col, &conv, x),
            };
            assert_eq!(got.dims(), want.dims(), "{what}");
            let diff: f32 = (got - want).abs().max().into_scalar();
            assert!(diff < 1e-4, "{what}: max diff {diff}");
        }
    }

    /// How the bound splits a convolution: the whole batch, images, row bands, or not at all.
    #[test]
    fn chunks_follow_the_bound() {
        let device = Device::flex();
        let conv = Conv2dConfig::new([4, 2], [3, 3]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)).init(&device);
        let x = Tensor::<4>::zeros([3, 4, 6, 5], &device);
        let row = 3 * 3 * 4 * 5 * 4; // one output row's im2col bytes (f32)
        let p = (1, 1, 1, 1);
        assert_eq!(chunks(&conv, &x, p, 100 * 6 * row), Some(Chunks { images: 3, rows: 6 }));
        assert_eq!(chunks(&conv, &x, p, 2 * 6 * row + 1), Some(Chunks { images: 2, rows: 6 }));
        assert_eq!(chunks(&conv, &x, p, 4 * row), Some(Chunks { images: 1, rows: 4 }));
        assert_eq!(chunks(&conv, &x, p, row - 1), None);
    }

    /// The im2col route in f16: as close to the f32 convolution as burn's f16 convolution is.
    #[test]
    fn im2col_in_f16() {
        use burn::tensor::{DType, FloatDType};
        let device = Device::flex();
        let conv = Conv2dConfig::new([16, 8], [3, 3]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)).init(&device);
        let x = Tensor::<4>::random([2, 16, 9, 9], Distribution::Normal(0.0, 1.0), &device);
        let want = conv.forward(x.clone());
        let conv16 = crate::cast_module(conv, DType::F16);
        let x16 = x.cast(FloatDType::F16);
        let err = |route| -> f32 {
            let got = conv2d_by(route, &conv16, x16.clone());
            assert_eq!(got.dtype(), DType::F16);
            (got.cast(FloatDType::F32) - want.clone()).abs().max().into_scalar()
        };
        let (burn, im2col) = (err(GpuConvRoute::Burn), err(GpuConvRoute::Im2col));
        eprintln!("f16 conv max error: burn {burn:.2e}, im2col {im2col:.2e}");
        assert!(im2col <= 2.0 * burn.max(1e-3), "burn {burn}, im2col {im2col}");
    }

    /// Where the route does not apply it is burn's op: stride 2, and a convolution whose single
    /// output row's im2col matrix would exceed the bound.
    #[test]
    fn im2col_declines_stride_2_and_oversized_images() {
        let device = Device::flex();
        let x = Tensor::<4>::random([1, 3, 8, 8], Distribution::Normal(0.0, 1.0), &device);
        let strided = Conv2dConfig::new([3, 2], [3, 3]).with_stride([2, 2]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)).init(&device);
        assert!(!im2col_applies(&strided, &x));
        let got = conv2d_by(GpuConvRoute::Im2col, &strided, x.clone());
        let diff: f32 = (got - strided.forward(x.clone())).abs().max().into_scalar();
        assert_eq!(diff, 0.0);
        let conv = Conv2dConfig::new([3, 2], [3, 3]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)).init(&device);
        assert!(im2col_applies(&conv, &x));
        let got = im2col_conv(&conv, x.clone(), 100);
        let diff: f32 = (got - conv.forward(x)).abs().max().into_scalar();
        assert_eq!(diff, 0.0, "over the bound: burn's op itself");
    }
}
