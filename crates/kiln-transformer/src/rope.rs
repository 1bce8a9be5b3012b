//! FLUX's rotary position embedding (diffusers `FluxPosEmbed`, `get_1d_rotary_pos_embed` with
//! `use_real=True, repeat_interleave_real=True`, and `apply_rotary_emb` with
//! `use_real_unbind_dim=-1`): each token's position ids (for images: 0, row, column; for text:
//! zeros) rotate pairs of channels, one block of channels per axis.

use burn::prelude::*;

/// The cosine and sine tables, `[seq, Σ axes_dim]` each, row-major: for axis a of width d_a,
/// frequencies `1 / θ^(2i / d_a)` (float64), angles `position · frequency` with the position a
/// float32 id, each value repeated twice (interleaved), then float32.
pub fn rope_tables(ids: &[[f32; 3]], axes_dim: &[usize; 3], theta: f64) -> (Vec<f32>, Vec<f32>) {
    let width: usize = axes_dim.iter().sum();
    let mut cos = Vec::with_capacity(ids.len() * width);
    let mut sin = Vec::with_capacity(ids.len() * width);
    let freqs: Vec<Vec<f64>> = axes_dim
        .iter()
        .map(|&d| (0..d).step_by(2).map(|i| 1.0 / theta.powf(i as f64 / d as f64)).collect())
        .collect();
    for id in ids {
        for (axis, f) in freqs.iter().enumerate() {
            let pos = f64::from(id[axis]);
            for &w in f {
                let angle = pos * w;
                let (s, c) = (angle.sin() as f32, angle.cos() as f32);
                cos.extend([c, c]);
                sin.extend([s, s]);
            }
        }
    }
    (cos, sin)
}

/// `x · cos + rotate(x) · sin` with `rotate` taking each channel pair (x₀, x₁) to (−x₁, x₀).
///
/// # Shapes
/// - x: `[batch, heads, seq, d]`, cos/sin: `[seq, d]` → like x
pub fn apply_rope(x: Tensor<4>, cos: Tensor<2>, sin: Tensor<2>) -> Tensor<4> {
    let [b, h, s, d] = x.dims();
    let pairs = x.clone().reshape([b, h, s, d / 2, 2]);
    let real = pairs.clone().slice([0..b, 0..h, 0..s, 0..d / 2, 0..1]);
    let imag = pairs.slice([0..b, 0..h, 0..s, 0..d / 2, 1..2]);
    let rotated = Tensor::cat(vec![imag.neg(), real], 4).reshape([b, h, s, d]);
    let dtype = x.dtype();
    let (cos, sin) = if cos.dtype() == dtype { (cos, sin) } else { (cos.cast(dtype), sin.cast(dtype)) };
    x * cos.unsqueeze::<4>() + rotated * sin.unsqueeze::<4>()
}
