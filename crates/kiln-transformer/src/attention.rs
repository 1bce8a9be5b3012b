//! diffusers' `Attention` as the MMDiT blocks configure it, with `JointAttnProcessor2_0`
//! (`models/attention_processor.py`), and FLUX's `FluxAttention` with `FluxAttnProcessor`
//! (`models/transformers/transformer_flux.py`), which has the same parameters: q/k/v projections
//! of the image tokens and, for joint attention, `add_{q,k,v}_proj` of the text tokens; optional
//! per-head qk norms (`RMSNorm`: SD 3.5, FLUX); one `softmax(q kᵀ / √d) v` over the concatenated
//! sequence — image then text for SD 3, text then image with rotary positions for FLUX; the image
//! part through `to_out.0` (none in FLUX's single-stream blocks, `pre_only`), the text part
//! through `to_add_out` (absent in SD 3's last block, `context_pre_only`, whose text output is
//! not used).

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
    /// `pre_only`: no `to_out` (FLUX's single-stream blocks project the attention themselves).
    pub pre_only: bool,
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
            to_out: if self.pre_only { Vec::new() } else { vec![linear(inner, dim)] },
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

/// How a joint sequence is laid out and positioned.
#[derive(Debug, Clone)]
pub enum Layout {
    /// SD 3: image tokens, then text tokens; no positions (the patches carry theirs).
    ImageFirst,
    /// FLUX: text tokens, then image tokens; rotary positions over the whole sequence
    /// (`cos`, `sin`: `[m + n, head_dim]`, [`crate::rope`]).
    TextFirstRotary { cos: Tensor<2>, sin: Tensor<2> },
}

impl JointAttention {
    /// SD 3's attention: self-attention of the image tokens alone (`attn2` of the
    /// dual-attention blocks), or joint attention with the text tokens when `context` is given.
    /// Returns the image tokens' output and, for joint attention, the text tokens' (`None` when
    /// `context_pre_only`).
    ///
    /// # Shapes
    /// - x: `[batch, n, dim]`, context: `[batch, m, dim]` → `[batch, n, dim]`, `[batch, m, dim]`
    pub fn forward(&self, x: Tensor<3>, context: Option<Tensor<3>>) -> (Tensor<3>, Option<Tensor<3>>) {
        self.forward_with(x, context, &Layout::ImageFirst)
    }

    /// The attention with `layout`'s order and positions. Without `to_out` (`pre_only`) the image
    /// output is the attention's own, unprojected.
    ///
    /// # Shapes
    /// - x: `[batch, n, dim]`, context: `[batch, m, dim]` → `[batch, n, dim]`, `[batch, m, dim]`
    pub fn forward_with(&self, x: Tensor<3>, context: Option<Tensor<3>>, layout: &Layout) -> (Tensor<3>, Option<Tensor<3>>) {
        let [b, n, _] = x.dims();
        let h = self.heads;
        let mut q = heads(self.to_q.forward(x.clone()), h, self.norm_q.as_ref());
        let mut k = heads(self.to_k.forward(x.clone()), h, self.norm_k.as_ref());
        let mut v = heads(self.to_v.forward(x), h, None);
        let text_first = matches!(layout, Layout::TextFirstRotary { .. });
        let mut m = 0;
        if let Some(c) = context {
            m = c.dims()[1];
            let proj = |p: &Option<Linear>| p.as_ref().expect("joint attention has the added projections").forward(c.clone());
            let cq = heads(proj(&self.add_q_proj), h, self.norm_added_q.as_ref());
            let ck = heads(proj(&self.add_k_proj), h, self.norm_added_k.as_ref());
            let cv = heads(proj(&self.add_v_proj), h, None);
            let join = |a: Tensor<4>, c: Tensor<4>| if text_first { Tensor::cat(vec![c, a], 2) } else { Tensor::cat(vec![a, c], 2) };
            q = join(q, cq);
            k = join(k, ck);
            v = join(v, cv);
        }
        if let Layout::TextFirstRotary { cos, sin } = layout {
            q = crate::rope::apply_rope(q, cos.clone(), sin.clone());
            k = crate::rope::apply_rope(k, cos.clone(), sin.clone());
        }
        let o = kiln_ops::scaled_dot_product_attention(q, k, v, false, false);
        let [_, _, total, d] = o.dims();
        let o = o.swap_dims(1, 2).reshape([b, total, h * d]);
        let (image, text) = if text_first { (m..m + n, 0..m) } else { (0..n, n..total) };
        let image_part = o.clone().slice([0..b, image]);
        let image_out = match self.to_out.first() {
            Some(out) => out.forward(image_part),
            None => image_part,
        };
        if m == 0 {
            return (image_out, None);
        }
        let text_out = self.to_add_out.as_ref().map(|p| p.forward(o.slice([0..b, text])));
        (image_out, text_out)
    }
}
