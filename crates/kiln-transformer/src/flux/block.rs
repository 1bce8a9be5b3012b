//! FLUX's blocks (diffusers `models/transformers/transformer_flux.py`): `FluxTransformerBlock`, the
//! double-stream block (image and text streams with their own weights, joint attention, adaLN-Zero
//! on both), and `FluxSingleTransformerBlock`, the single-stream block over the concatenated
//! sequence (attention and an MLP side by side, one output projection, one gate).

use burn::prelude::*;
use burn::tensor::activation::gelu_approximate;
use burn::tensor::DType;
use kiln_nn::{Linear, LinearConfig};

use crate::attention::{JointAttention, JointAttentionConfig, Layout};
use crate::feed_forward::FeedForward;
use crate::norm::{layer_norm, modulate, AdaLayerNormZero, AdaLayerNormZeroSingle};

/// `FluxAttention(query_dim=dim, heads, dim_head, bias=True, eps=1e-6)`: qk RMS norms always; in
/// the double-stream blocks (`joint`) the text tokens' projections and `to_add_out`, in the
/// single-stream ones no output projection (`pre_only`).
fn flux_attention(dim: usize, heads: usize, head_dim: usize, joint: bool, device: &Device) -> JointAttention {
    JointAttentionConfig { dim, heads, head_dim, qk_norm: true, joint, context_pre_only: false, pre_only: !joint }.init(device)
}

/// A float16 stream clipped to ±65504, as both blocks do.
fn clip_f16(x: Tensor<3>) -> Tensor<3> {
    if x.dtype() == DType::F16 { x.clamp(-65504.0, 65504.0) } else { x }
}

/// `FluxTransformerBlock(dim, heads, head_dim)`.
#[derive(Module, Debug)]
pub struct FluxTransformerBlock {
    pub norm1: AdaLayerNormZero,
    pub norm1_context: AdaLayerNormZero,
    pub attn: JointAttention,
    pub ff: FeedForward,
    pub ff_context: FeedForward,
}

impl FluxTransformerBlock {
    pub fn new(dim: usize, heads: usize, head_dim: usize, device: &Device) -> Self {
        Self {
            norm1: AdaLayerNormZero::new(dim, device),
            norm1_context: AdaLayerNormZero::new(dim, device),
            attn: flux_attention(dim, heads, head_dim, true, device),
            ff: FeedForward::new(dim, device),
            ff_context: FeedForward::new(dim, device),
        }
    }

    /// Returns the text stream and the image stream.
    ///
    /// # Shapes
    /// - hidden: `[batch, n, dim]`, context: `[batch, m, dim]`, temb: `[batch, dim]`,
    ///   cos/sin: `[m + n, head_dim]`
    pub fn forward(&self, hidden: Tensor<3>, context: Tensor<3>, temb: Tensor<2>, cos: Tensor<2>, sin: Tensor<2>) -> (Tensor<3>, Tensor<3>) {
        let (norm_hidden, m) = self.norm1.forward(hidden.clone(), temb.clone());
        let (norm_context, c) = self.norm1_context.forward(context.clone(), temb);
        let (attn, context_attn) = self.attn.forward_with(norm_hidden, Some(norm_context), &Layout::TextFirstRotary { cos, sin });
        let context_attn = context_attn.expect("the double-stream attention returns the text stream");
        let gate = |g: Tensor<2>| g.unsqueeze_dim::<3>(1);
        let hidden = hidden + gate(m.gate_msa) * attn;
        let norm_hidden = modulate(layer_norm(hidden.clone(), 1e-6), m.scale_mlp, m.shift_mlp);
        let hidden = hidden + gate(m.gate_mlp) * self.ff.forward(norm_hidden);
        let context = context + gate(c.gate_msa) * context_attn;
        let norm_context = modulate(layer_norm(context.clone(), 1e-6), c.scale_mlp, c.shift_mlp);
        let context = context + gate(c.gate_mlp) * self.ff_context.forward(norm_context);
        (clip_f16(context), hidden)
    }
}

/// `FluxSingleTransformerBlock(dim, heads, head_dim, mlp_ratio=4.0)`.
#[derive(Module, Debug)]
pub struct FluxSingleTransformerBlock {
    pub norm: AdaLayerNormZeroSingle,
    pub proj_mlp: Linear,
    pub attn: JointAttention,
    pub proj_out: Linear,
}

impl FluxSingleTransformerBlock {
    pub fn new(dim: usize, heads: usize, head_dim: usize, device: &Device) -> Self {
        let mlp = 4 * dim;
        Self {
            norm: AdaLayerNormZeroSingle::new(dim, device),
            proj_mlp: LinearConfig::new(dim, mlp).init(device),
            attn: flux_attention(dim, heads, head_dim, false, device),
            proj_out: LinearConfig::new(dim + mlp, dim).init(device),
        }
    }

    /// Concatenates text and image, runs the block, splits them again.
    ///
    /// # Shapes
    /// - hidden: `[batch, n, dim]`, context: `[batch, m, dim]`, temb: `[batch, dim]`,
    ///   cos/sin: `[m + n, head_dim]`
    pub fn forward(&self, hidden: Tensor<3>, context: Tensor<3>, temb: Tensor<2>, cos: Tensor<2>, sin: Tensor<2>) -> (Tensor<3>, Tensor<3>) {
        let [b, m, _] = context.dims();
        let n = hidden.dims()[1];
        let residual = Tensor::cat(vec![context, hidden], 1);
        let (normed, gate) = self.norm.forward(residual.clone(), temb);
        let mlp = gelu_approximate(self.proj_mlp.forward(normed.clone()));
        let (attn, _) = self.attn.forward_with(normed, None, &Layout::TextFirstRotary { cos, sin });
        let out = self.proj_out.forward(Tensor::cat(vec![attn, mlp], 2));
        let x = clip_f16(residual + gate.unsqueeze_dim::<3>(1) * out);
        (x.clone().slice([0..b, 0..m]), x.slice([0..b, m..m + n]))
    }
}
