//! Attention, `softmax(q kᵀ / √d) v`: kiln's CPU kernel on flex ([`crate::cpu::attention`]), on
//! GPUs burn's op along the route [`gpu_route`] measured fastest for the shape.

use burn::prelude::*;
use burn::tensor::module::attention;
use burn::tensor::ops::{AttentionModuleOptions, PadMode};
use burn::tensor::{DType, FloatDType};

use crate::gpu::route::GpuOp;

/// `softmax(q kᵀ / √d) v` through burn's fused op (scale left at its default so the flash kernels
/// are eligible), optionally in f32; on the CPU (flex, f32, no autodiff) through kiln's own
/// kernel, [`crate::cpu::attention`]; on GPUs by the route [`gpu_route`] picks for the shape.
///
/// # Shapes
/// - q: `[batch, heads, seq_q, head_dim]`, k/v: `[batch, heads, seq_k, head_dim]` → like q
pub fn scaled_dot_product_attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, upcast: bool, causal: bool) -> Tensor<4> {
    if let Some(o) = crate::cpu::attention::attention(&q, &k, &v, causal) {
        return o;
    }
    let dtype = q.dtype();
    let upcast = upcast && dtype != DType::F32;
    let (q, k, v) = if upcast {
        let f32 = FloatDType::F32;
        (q.cast(f32), k.cast(f32), v.cast(f32))
    } else {
        (q, k, v)
    };
    let o = attention_by(gpu_route(&q, &k, &v, causal), q, k, v, causal);
    if upcast { o.cast(dtype) } else { o }
}

/// How [`scaled_dot_product_attention`] runs burn's `attention` op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GpuAttentionRoute {
    /// burn's op as it is: its autotuned flash kernels, which on tensor cores need a head dim
    /// that is a multiple of 16; other head dims (SD 1.x's 40) get burn's unit flash kernel or its
    /// materialising fallback.
    Burn,
    /// The head dims zero-padded to the next multiple of 16 (40 → 48), so burn's tensor-core
    /// flash kernel is eligible: the zero columns add nothing to `q kᵀ`, q is scaled by
    /// `√(padded / d)` so burn's default scale `1/√padded` gives `1/√d`, and the output's zero
    /// columns are sliced off. 20 % more FLOPs at 40 → 48, plus three pad copies.
    PaddedHeadDim,
    /// burn's tensor-core flash kernel with kiln's tile sizes ([`crate::gpu::flash`]), on head dims
    /// padded as in `PaddedHeadDim` where they are not multiples of 16.
    Flash(crate::gpu::flash::FlashKernel),
}

/// The route for these operands, among burn's op, [`GpuAttentionRoute::PaddedHeadDim`] where a
/// head dim is not a multiple of 16, and [`GpuAttentionRoute::Flash`] with each of
/// [`crate::gpu::flash::flash_tile_candidates`] (f16/bf16 on GPUs with f16 tensor cores): what
/// `GpuOp::Attention`'s [`RoutePolicy`](crate::gpu::route::RoutePolicy) says (`padded` forces the
/// padding where it applies; only `auto` tries the tile sizes), measured once per device, dtype
/// and shape under `Auto` ([`crate::gpu::route::pick`]). burn's op on flex and under autodiff.
pub fn gpu_route(q: &Tensor<4>, k: &Tensor<4>, v: &Tensor<4>, causal: bool) -> GpuAttentionRoute {
    let (d, dv) = (q.dims()[3], v.dims()[3]);
    let device = q.device();
    let mut routes = vec![("burn", GpuAttentionRoute::Burn)];
    if d % 16 != 0 || dv % 16 != 0 {
        routes.push((GpuOp::Attention.alternative(), GpuAttentionRoute::PaddedHeadDim));
    }
    let tiles = crate::gpu::flash::flash_tile_candidates(&device, q.dtype(), q.dims(), k.dims()[2]);
    routes.extend(tiles.into_iter().map(|(name, kernel)| (name, GpuAttentionRoute::Flash(kernel))));
    if routes.len() == 1 {
        return GpuAttentionRoute::Burn;
    }
    let calls: Vec<_> = routes.iter().map(|&(_, route)| move || attention_by(route, q.clone(), k.clone(), v.clone(), causal)).collect();
    let candidates: Vec<(&'static str, &dyn Fn() -> Tensor<4>)> = routes.iter().zip(&calls).map(|((name, _), call)| (*name, call as &dyn Fn() -> Tensor<4>)).collect();
    let shape = || format!("q {:?} k {:?} v {:?}{}", q.dims(), k.dims(), v.dims(), if causal { " causal" } else { "" });
    let name = crate::gpu::route::pick(GpuOp::Attention, &device, q.dtype(), shape, &candidates);
    routes.iter().find(|r| r.0 == name).map_or(GpuAttentionRoute::Burn, |r| r.1)
}

/// `softmax(q kᵀ / √d) v` by burn's `attention` op along `route` (no kiln CPU kernel, no upcast).
///
/// # Shapes
/// - q: `[batch, heads, seq_q, head_dim]`, k: `[batch, heads, seq_k, head_dim]`,
///   v: `[batch, heads, seq_k, value_dim]` → `[batch, heads, seq_q, value_dim]`
pub fn attention_by(route: GpuAttentionRoute, q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, causal: bool) -> Tensor<4> {
    let options = AttentionModuleOptions { is_causal: causal, ..Default::default() };
    let kernel = match route {
        GpuAttentionRoute::Burn => return attention(q, k, v, None, None, options),
        GpuAttentionRoute::PaddedHeadDim => None,
        GpuAttentionRoute::Flash(kernel) => Some(kernel),
    };
    let (d, dv) = (q.dims()[3], v.dims()[3]);
    let (dp, dvp) = (d.next_multiple_of(16), dv.next_multiple_of(16));
    let pad = |t: Tensor<4>, by: usize| if by == 0 { t } else { t.pad([(0, by)], PadMode::Constant(0.0)) };
    let q = if dp == d { q } else { q.mul_scalar((dp as f64 / d as f64).sqrt()) };
    let (q, k, v) = (pad(q, dp - d), pad(k, dp - d), pad(v, dvp - dv));
    let o = match kernel {
        None => attention(q, k, v, None, None, options),
        Some(kernel) => crate::gpu::flash::flash_attention(kernel, q, k, v, causal),
    };
    if dvp == dv { o } else { o.narrow(3, 0, dv) }
}

/// [`scaled_dot_product_attention`] on token sequences whose last dim holds `heads` heads side by
/// side (what the q/k/v projections produce and the output projection takes): kiln's CPU kernel
/// reads them in place ([`crate::cpu::attention::attention_tokens`]); elsewhere the heads are split
/// off, attended and merged back.
///
/// # Shapes
/// - q: `[batch, seq_q, heads · head_dim]`, k: `[batch, seq_k, heads · head_dim]`,
///   v: `[batch, seq_k, heads · v_dim]` → `[batch, seq_q, heads · v_dim]`
pub fn multi_head_attention(q: Tensor<3>, k: Tensor<3>, v: Tensor<3>, heads: usize, upcast: bool, causal: bool) -> Tensor<3> {
    crate::profile::scope("attention", crate::profile::device_of(&q), || multi_head_attention_here(q, k, v, heads, upcast, causal))
}

fn multi_head_attention_here(q: Tensor<3>, k: Tensor<3>, v: Tensor<3>, heads: usize, upcast: bool, causal: bool) -> Tensor<3> {
    if let Some(o) = crate::cpu::attention::attention_tokens(&q, &k, &v, heads, causal) {
        return o;
    }
    let split = |t: Tensor<3>| {
        let [b, s, inner] = t.dims();
        t.reshape([b, s, heads, inner / heads]).swap_dims(1, 2)
    };
    let o = scaled_dot_product_attention(split(q), split(k), split(v), upcast, causal);
    let [b, h, s, dv] = o.dims();
    o.swap_dims(1, 2).reshape([b, s, h * dv])
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use burn::tensor::activation::softmax;
    use burn::tensor::Distribution;

    /// The reference: `softmax(q kᵀ / √d [+ causal mask]) v` written out with burn's tensor ops.
    pub(crate) fn explicit_attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, causal: bool) -> Tensor<4> {
        let [b, h, sq, d] = q.dims();
        let skv = k.dims()[2];
        let mut scores = q.matmul(k.swap_dims(2, 3)).div_scalar((d as f64).sqrt());
        if causal {
            let mask = Tensor::<2, Bool>::tril_mask([sq, skv], 0, &scores.device()).unsqueeze_dims::<4>(&[0, 1]).expand([b, h, sq, skv]);
            scores = scores.mask_fill(mask, f32::NEG_INFINITY);
        }
        softmax(scores, 3).matmul(v)
    }

    /// `scaled_dot_product_attention` (on flex in f32: kiln's CPU kernel) against the explicit
    /// softmax, with and without a causal mask.
    #[test]
    fn fused_attention_matches_explicit_softmax() {
        let device = Device::flex();
        for (causal, [b, h, s, d]) in [(false, [2, 3, 7, 8]), (true, [1, 2, 5, 40]), (false, [1, 1, 600, 16])] {
            let q = Tensor::<4>::random([b, h, s, d], Distribution::Normal(0.0, 1.0), &device);
            let k = Tensor::<4>::random([b, h, s, d], Distribution::Normal(0.0, 1.0), &device);
            let v = Tensor::<4>::random([b, h, s, d], Distribution::Normal(0.0, 1.0), &device);
            let want = explicit_attention(q.clone(), k.clone(), v.clone(), causal);
            let got = scaled_dot_product_attention(q, k, v, false, causal);
            let got_nan: bool = got.clone().is_nan().any().into_scalar();
            let want_nan: bool = want.clone().is_nan().any().into_scalar();
            assert!(!got_nan && !want_nan, "NaN: fused {got_nan}, explicit {want_nan}");
            let diff: f32 = (got - want).abs().max().into_scalar();
            assert!(diff < 1e-5, "causal={causal} shape={:?}: max diff {diff}", [b, h, s, d]);
        }
    }

    /// The padded-head-dim route (burn's op on zero-padded operands with q rescaled) against the
    /// explicit softmax: head dims below, at and above a multiple of 16, padding wider than the
    /// head dim (4 → 16), a value dim that differs from the query's, causal and not.
    #[test]
    fn padded_head_dim_route_matches_explicit_softmax() {
        let device = Device::flex();
        let randn = |shape: [usize; 4]| Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
        for (causal, [b, h, sq, sk], d, dv) in [
            (false, [2, 3, 9, 7], 40, 40),
            (true, [1, 2, 6, 6], 4, 4),
            (false, [1, 2, 5, 11], 20, 40),
            (false, [1, 1, 5, 5], 32, 24),
            (true, [1, 2, 77, 77], 40, 40),
        ] {
            let (q, k, v) = (randn([b, h, sq, d]), randn([b, h, sk, d]), randn([b, h, sk, dv]));
            let want = explicit_attention(q.clone(), k.clone(), v.clone(), causal);
            let got = attention_by(GpuAttentionRoute::PaddedHeadDim, q, k, v, causal);
            assert_eq!(got.dims(), [b, h, sq, dv]);
            let diff: f32 = (got - want).abs().max().into_scalar();
            assert!(diff < 1e-5, "causal={causal} q={:?} d={d} dv={dv}: max diff {diff}", [b, h, sq]);
        }
    }

    /// Both routes in f16 (the dtype the padded route is for): as close to the f32 result as f16
    /// allows, the padded route no further off than burn's op as it is.
    #[test]
    fn padded_head_dim_route_in_f16() {
        let device = Device::flex();
        let randn = |shape: [usize; 4]| Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
        let (q, k, v) = (randn([2, 2, 33, 40]), randn([2, 2, 33, 40]), randn([2, 2, 33, 40]));
        let want = explicit_attention(q.clone(), k.clone(), v.clone(), false);
        let f16 = |t: &Tensor<4>| t.clone().cast(FloatDType::F16);
        let err = |route| -> f32 {
            let got = attention_by(route, f16(&q), f16(&k), f16(&v), false);
            assert_eq!(got.dtype(), DType::F16);
            (got.cast(FloatDType::F32) - want.clone()).abs().max().into_scalar()
        };
        let (burn, padded) = (err(GpuAttentionRoute::Burn), err(GpuAttentionRoute::PaddedHeadDim));
        eprintln!("f16 attention max error: burn {burn:.2e}, padded {padded:.2e}");
        assert!(padded < 1e-2 && padded <= 2.0 * burn.max(1e-3), "burn {burn}, padded {padded}");
    }

    /// Which route the policy gives: flex and multiples of 16 always burn's op as it is.
    #[test]
    fn gpu_route_leaves_flex_and_multiples_of_16_to_burn() {
        let device = Device::flex();
        let t = |d: usize| Tensor::<4>::zeros([1, 1, 4, d], &device);
        for d in [40, 64] {
            assert_eq!(gpu_route(&t(d), &t(d), &t(d), false), GpuAttentionRoute::Burn, "d={d}");
        }
        assert!(crate::gpu::route::route_choices().is_empty(), "flex measured nothing");
    }
}
