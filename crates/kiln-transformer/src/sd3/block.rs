//! diffusers' `JointTransformerBlock` (`models/attention.py`): the MMDiT block. Image and text
//! tokens keep separate weights (norms, projections, MLPs) but attend jointly; adaLN-Zero
//! modulations from the timestep + pooled-text embedding gate every residual. The last block is
//! `context_pre_only` (its text stream stops after the attention); SD 3.5 Medium's first blocks
//! (`dual_attention_layers`) add a second, image-only attention (`attn2`, MMDiT-X).

use burn::prelude::*;

use crate::attention::{JointAttention, JointAttentionConfig};
use crate::feed_forward::FeedForward;
use crate::norm::{layer_norm, modulate, AdaLayerNormContinuous, AdaLayerNormZero, Sd35AdaLayerNormZeroX};

/// `norm1`: `AdaLayerNormZero`, or `SD35AdaLayerNormZeroX` in a dual-attention block.
#[derive(Module, Debug)]
pub enum ImageNorm {
    Zero(AdaLayerNormZero),
    ZeroX(Sd35AdaLayerNormZeroX),
}

/// `norm1_context`: `AdaLayerNormZero`, or `AdaLayerNormContinuous` in the last block.
#[derive(Module, Debug)]
pub enum ContextNorm {
    Zero(AdaLayerNormZero),
    Continuous(AdaLayerNormContinuous),
}

/// `JointTransformerBlock(dim, heads, head_dim, context_pre_only, qk_norm, use_dual_attention)`.
#[derive(Module, Debug)]
pub struct JointTransformerBlock {
    pub norm1: ImageNorm,
    pub norm1_context: ContextNorm,
    pub attn: JointAttention,
    pub attn2: Option<JointAttention>,
    pub ff: FeedForward,
    pub ff_context: Option<FeedForward>,
}

impl JointTransformerBlock {
    pub fn new(dim: usize, heads: usize, head_dim: usize, context_pre_only: bool, qk_norm: bool, dual: bool, device: &Device) -> Self {
        let attention = |joint| JointAttentionConfig { dim, heads, head_dim, qk_norm, joint, context_pre_only, pre_only: false }.init(device);
        Self {
            norm1: if dual { ImageNorm::ZeroX(Sd35AdaLayerNormZeroX::new(dim, device)) } else { ImageNorm::Zero(AdaLayerNormZero::new(dim, device)) },
            norm1_context: if context_pre_only {
                ContextNorm::Continuous(AdaLayerNormContinuous::new(dim, dim, 1e-6, device))
            } else {
                ContextNorm::Zero(AdaLayerNormZero::new(dim, device))
            },
            attn: attention(true),
            attn2: dual.then(|| attention(false)),
            ff: FeedForward::new(dim, device),
            ff_context: (!context_pre_only).then(|| FeedForward::new(dim, device)),
        }
    }

    /// Returns the text stream (`None` after a `context_pre_only` block) and the image stream.
    ///
    /// # Shapes
    /// - hidden: `[batch, n, dim]`, context: `[batch, m, dim]`, temb: `[batch, dim]`
    pub fn forward(&self, hidden: Tensor<3>, context: Tensor<3>, temb: Tensor<2>) -> (Option<Tensor<3>>, Tensor<3>) {
        let (norm_hidden, m, second) = match &self.norm1 {
            ImageNorm::Zero(n) => {
                let (x, m) = n.forward(hidden.clone(), temb.clone());
                (x, m, None)
            }
            ImageNorm::ZeroX(n) => {
                let (x, m, x2, gate2) = n.forward(hidden.clone(), temb.clone());
                (x, m, Some((x2, gate2)))
            }
        };
        let (norm_context, context_mod) = match &self.norm1_context {
            ContextNorm::Zero(n) => {
                let (c, m) = n.forward(context.clone(), temb.clone());
                (c, Some(m))
            }
            ContextNorm::Continuous(n) => (n.forward(context.clone(), temb), None),
        };
        let (attn_out, context_attn_out) = self.attn.forward(norm_hidden, Some(norm_context));
        let gate = |g: Tensor<2>| g.unsqueeze_dim::<3>(1);
        let mut hidden = hidden + gate(m.gate_msa) * attn_out;
        if let (Some(attn2), Some((x2, gate2))) = (&self.attn2, second) {
            let (out2, _) = attn2.forward(x2, None);
            hidden = hidden + gate(gate2) * out2;
        }
        let norm_hidden = modulate(layer_norm(hidden.clone(), 1e-6), m.scale_mlp, m.shift_mlp);
        let hidden = hidden + gate(m.gate_mlp) * self.ff.forward(norm_hidden);

        let context = match (context_mod, context_attn_out, &self.ff_context) {
            (Some(c), Some(attn), Some(ff)) => {
                let context = context + gate(c.gate_msa) * attn;
                let norm_context = modulate(layer_norm(context.clone(), 1e-6), c.scale_mlp, c.shift_mlp);
                Some(context + gate(c.gate_mlp) * ff.forward(norm_context))
            }
            _ => None,
        };
        (context, hidden)
    }
}
