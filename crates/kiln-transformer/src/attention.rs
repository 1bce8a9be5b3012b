//! diffusers' `Attention` as the MMDiT blocks configure it, with `JointAttnProcessor2_0`
//! (`models/attention_processor.py`): q/k/v projections of the image tokens and, for joint
//! attention, `add_{q,k,v}_proj` of the text tokens; optional per-head qk norms (`RMSNorm`, SD 3.5);
//! one `softmax(q kᵀ / √d) v` over the concatenated sequence (image first, then text); the image
//! part through `to_out.0`, the text part through `to_add_out` (absent in the last block,
//! `context_pre_only`, whose text output is not used).

use burn::prelude::*;
use kiln_nn::{Linear, LinearConfig};

use crate::norm::RmsNorm;

/// `Attention(query_dim=dim, heads, dim_head, bias=True, qk_norm, added_kv_proj_dim, context_pre_only)`.
#[derive(Module, Debug)]
pub struct JointAttention {
    pub to_q: Linear,
    pub to_k: Linear,
    pub to_v: Linear,
    pub norm_q: Option<RmsNorm>,
    pub norm_k: Option<RmsNorm>,
    pub add_q_proj: Option<Linear>,
    pub add_k_proj: Option<Linear>,
    pub add_v_proj: Option<Linear>,
    pub norm_added_q: Option<RmsNorm>,
    pub norm_added_k: Option<RmsNorm>,
    /// diffusers' `ModuleList([Linear, Dropout])`: key `to_out.0.*`.
    pub to_out: Vec<Linear>,
    pub to_add_out: Option<Linear>,
    #[module(skip)]
    pub heads: usize,
}

/// How a [`JointAttention`] is built.
#[derive(Clone, Copy, Debug)]
pub struct JointAttentionConfig {
    pub dim: usize,
    pub heads: usize,
    pub head_dim: usize,
    /// `qk_norm = "rms_norm"` (eps 1e-6).
    pub qk_norm: bool,
    /// `added_kv_proj_dim = dim`: the text stream's projections (joint attention).
    pub joint: bool,
    /// `context_pre_only`: no `to_add_out`.
    pub context_pre_only: bool,
}

impl JointAttentionConfig {
    pub fn init(&self, device: &Device) -> JointAttention {
        let (dim, inner) = (self.dim, self.heads * self.head_dim);
        let linear = |i, o| LinearConfig::new(i, o).init(device);
        let norm = |on: bool| on.then(|| RmsNorm::new(self.head_dim, 1e-6, device));
        JointAttention {
            to_q: linear(dim, inner),
            to_k: linear(dim, inner),
            to_v: linear(dim, inner),
            norm_q: norm(self.qk_norm),
            norm_k: norm(self.qk_norm),
            add_q_proj: self.joint.then(|| linear(dim, inner)),
            add_k_proj: self.joint.then(|| linear(dim, inner)),
            add_v_proj: self.joint.then(|| linear(dim, inner)),
            norm_added_q: norm(self.qk_norm && self.joint),
            norm_added_k: norm(self.qk_norm && self.joint),
            to_out: vec![linear(inner, dim)],
            to_add_out: (self.joint && !self.context_pre_only).then(|| linear(inner, dim)),
            heads: self.heads,
        }
    }
}

/// `[batch, seq, heads · d]` → `[batch, heads, seq, d]`, then the optional per-head norm.
pub(crate) fn heads(x: Tensor<3>, heads: usize, norm: Option<&RmsNorm>) -> Tensor<4> {
    let [b, s, inner] = x.dims();
    let x = x.reshape([b, s, heads, inner / heads]).swap_dims(1, 2);
    match norm {
        Some(n) => n.forward(x),
        None => x,
    }
}

impl JointAttention {
    /// Self-attention of the image tokens alone (`attn2` of the dual-attention blocks), or joint
    /// attention with the text tokens when `context` is given: returns the image tokens' output
    /// and, for joint attention, the text tokens' (`None` when `context_pre_only`).
    ///
    /// # Shapes
    /// - x: `[batch, n, dim]`, context: `[batch, m, dim]` → `[batch, n, dim]`, `[batch, m, dim]`
    pub fn forward(&self, x: Tensor<3>, context: Option<Tensor<3>>) -> (Tensor<3>, Option<Tensor<3>>) {
        let [b, n, _] = x.dims();
        let h = self.heads;
        let mut q = heads(self.to_q.forward(x.clone()), h, self.norm_q.as_ref());
        let mut k = heads(self.to_k.forward(x.clone()), h, self.norm_k.as_ref());
        let mut v = heads(self.to_v.forward(x), h, None);
        let joint = context.is_some();
        if let Some(c) = context {
            let proj = |p: &Option<Linear>| p.as_ref().expect("joint attention has the added projections").forward(c.clone());
            let cq = heads(proj(&self.add_q_proj), h, self.norm_added_q.as_ref());
            let ck = heads(proj(&self.add_k_proj), h, self.norm_added_k.as_ref());
            let cv = heads(proj(&self.add_v_proj), h, None);
            q = Tensor::cat(vec![q, cq], 2);
            k = Tensor::cat(vec![k, ck], 2);
            v = Tensor::cat(vec![v, cv], 2);
        }
        let o = kiln_ops::scaled_dot_product_attention(q, k, v, false, false);
        let [_, _, total, d] = o.dims();
        let o = o.swap_dims(1, 2).reshape([b, total, h * d]);
        let image = self.to_out[0].forward(o.clone().slice([0..b, 0..n]));
        if !joint {
            return (image, None);
        }
        let text = self.to_add_out.as_ref().map(|p| p.forward(o.slice([0..b, n..total])));
        (image, text)
    }
}
