//! diffusers' `FluxAttention` with `FluxAttnProcessor` (`models/transformers/transformer_flux.py`):
//! q/k/v with per-head RMS norms (eps 1e-6); in the double-stream blocks the text tokens' own
//! projections and norms, concatenated before the image tokens (text first, unlike SD 3); rotary
//! positions on the joint sequence; `softmax(q kᵀ / √d) v`; `to_out.0` for the image part and
//! `to_add_out` for the text part, or no output projection at all in the single-stream blocks
//! (`pre_only`).

use burn::prelude::*;
use kiln_nn::{Linear, LinearConfig};

use super::rope::apply_rope;
use crate::attention::heads;
use crate::norm::RmsNorm;

/// `FluxAttention(query_dim=dim, heads, dim_head, bias=True, eps=1e-6, added_kv_proj_dim, pre_only)`.
#[derive(Module, Debug)]
pub struct FluxAttention {
    pub to_q: Linear,
    pub to_k: Linear,
    pub to_v: Linear,
    pub norm_q: RmsNorm,
    pub norm_k: RmsNorm,
    pub add_q_proj: Option<Linear>,
    pub add_k_proj: Option<Linear>,
    pub add_v_proj: Option<Linear>,
    pub norm_added_q: Option<RmsNorm>,
    pub norm_added_k: Option<RmsNorm>,
    /// Key `to_out.0.*`; empty when `pre_only`.
    pub to_out: Vec<Linear>,
    pub to_add_out: Option<Linear>,
    #[module(skip)]
    pub heads: usize,
}

impl FluxAttention {
    /// `joint`: the double-stream blocks' attention (text projections, `to_add_out`); otherwise
    /// the single-stream blocks' (`pre_only`: no output projection).
    pub fn new(dim: usize, heads: usize, head_dim: usize, joint: bool, device: &Device) -> Self {
        let inner = heads * head_dim;
        let linear = |i, o| LinearConfig::new(i, o).init(device);
        let norm = || RmsNorm::new(head_dim, 1e-6, device);
        Self {
            to_q: linear(dim, inner),
            to_k: linear(dim, inner),
            to_v: linear(dim, inner),
            norm_q: norm(),
            norm_k: norm(),
            add_q_proj: joint.then(|| linear(dim, inner)),
            add_k_proj: joint.then(|| linear(dim, inner)),
            add_v_proj: joint.then(|| linear(dim, inner)),
            norm_added_q: joint.then(norm),
            norm_added_k: joint.then(norm),
            to_out: if joint { vec![linear(inner, dim)] } else { Vec::new() },
            to_add_out: joint.then(|| linear(inner, dim)),
            heads,
        }
    }

    /// Attention over `x` (the joint sequence in a single-stream block), or over text + image
    /// when `context` is given; `cos`/`sin` cover the whole joint sequence (text first). Returns
    /// the image output (the whole sequence's, unprojected, in a single-stream block) and the
    /// text output.
    ///
    /// # Shapes
    /// - x: `[batch, n, dim]`, context: `[batch, m, dim]`, cos/sin: `[m + n, head_dim]`
    pub fn forward(&self, x: Tensor<3>, context: Option<Tensor<3>>, cos: Tensor<2>, sin: Tensor<2>) -> (Tensor<3>, Option<Tensor<3>>) {
        let [b, n, _] = x.dims();
        let h = self.heads;
        let mut q = heads(self.to_q.forward(x.clone()), h, Some(&self.norm_q));
        let mut k = heads(self.to_k.forward(x.clone()), h, Some(&self.norm_k));
        let mut v = heads(self.to_v.forward(x), h, None);
        let mut m = 0;
        if let Some(c) = context {
            m = c.dims()[1];
            let proj = |p: &Option<Linear>| p.as_ref().expect("joint attention has the added projections").forward(c.clone());
            let cq = heads(proj(&self.add_q_proj), h, self.norm_added_q.as_ref());
            let ck = heads(proj(&self.add_k_proj), h, self.norm_added_k.as_ref());
            let cv = heads(proj(&self.add_v_proj), h, None);
            q = Tensor::cat(vec![cq, q], 2);
            k = Tensor::cat(vec![ck, k], 2);
            v = Tensor::cat(vec![cv, v], 2);
        }
        let q = apply_rope(q, cos.clone(), sin.clone());
        let k = apply_rope(k, cos, sin);
        let o = kiln_ops::scaled_dot_product_attention(q, k, v, false, false);
        let [_, _, total, d] = o.dims();
        let o = o.swap_dims(1, 2).reshape([b, total, h * d]);
        if m == 0 {
            return (o, None);
        }
        let text = o.clone().slice([0..b, 0..m]);
        let image = o.slice([0..b, m..m + n]);
        let image = self.to_out[0].forward(image);
        let text = self.to_add_out.as_ref().map(|p| p.forward(text));
        (image, text)
    }
}
