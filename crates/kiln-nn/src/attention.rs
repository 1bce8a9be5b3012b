//! diffusers' `Attention` with `AttnProcessor2_0` (`models/attention_processor.py`): the
//! self/cross-attention of Transformer2D blocks and the VAE mid-block's spatial self-attention,
//! through burn's fused `attention` op (flash kernels on GPUs, tiled on flex).

use burn::nn::{GroupNorm, GroupNormConfig};

use crate::linear::{Linear, LinearConfig};
use burn::prelude::*;
use kiln_ops::multi_head_attention;

#[derive(Config, Debug)]
pub struct AttentionConfig {
    /// Width of the queries (`query_dim`).
    pub query_dim: usize,
    /// Width of the keys/values source; `None` = self-attention (`cross_attention_dim`).
    pub cross_attention_dim: Option<usize>,
    pub heads: usize,
    pub dim_head: usize,
    /// Bias on to_q/to_k/to_v (`bias`): false in the UNet, true in the VAE.
    #[config(default = false)]
    pub qkv_bias: bool,
    /// Compute attention in f32 when running in f16 (`upcast_attention`, SD2.1).
    #[config(default = false)]
    pub upcast_attention: bool,
    /// VAE mid-block: GroupNorm over channels before the projections (`norm_num_groups`).
    pub norm_num_groups: Option<usize>,
    #[config(default = 1e-6)]
    pub eps: f64,
    /// Add the input back (`residual_connection`).
    #[config(default = false)]
    pub residual_connection: bool,
    #[config(default = 1.0)]
    pub rescale_output_factor: f64,
}

impl AttentionConfig {
    pub fn init(&self, device: &Device) -> Attention {
        let inner = self.heads * self.dim_head;
        let kv = self.cross_attention_dim.unwrap_or(self.query_dim);
        Attention {
            group_norm: self
                .norm_num_groups
                .map(|g| GroupNormConfig::new(g, self.query_dim).with_epsilon(self.eps).init(device)),
            to_q: LinearConfig::new(self.query_dim, inner).with_bias(self.qkv_bias).init(device),
            to_k: LinearConfig::new(kv, inner).with_bias(self.qkv_bias).init(device),
            to_v: LinearConfig::new(kv, inner).with_bias(self.qkv_bias).init(device),
            to_out: vec![LinearConfig::new(inner, self.query_dim).init(device)],
            heads: self.heads,
            upcast_attention: self.upcast_attention,
            residual_connection: self.residual_connection,
            rescale_output_factor: self.rescale_output_factor,
        }
    }
}

#[derive(Module, Debug)]
pub struct Attention {
    pub group_norm: Option<GroupNorm>,
    pub to_q: Linear,
    pub to_k: Linear,
    pub to_v: Linear,
    /// diffusers' `ModuleList([Linear, Dropout])`: key `to_out.0.*`.
    pub to_out: Vec<Linear>,
    pub heads: usize,
    pub upcast_attention: bool,
    pub residual_connection: bool,
    pub rescale_output_factor: f64,
}

impl Attention {
    /// Attention over token sequences (Transformer2D's attn1/attn2).
    ///
    /// # Shapes
    /// - x: `[batch, seq, query_dim]`
    /// - context: `[batch, seq_k, cross_attention_dim]` (None: self-attention)
    /// - returns `[batch, seq, query_dim]`
    pub fn forward(&self, x: Tensor<3>, context: Option<Tensor<3>>) -> Tensor<3> {
        let residual = self.residual_connection.then(|| x.clone());
        let x = match &self.group_norm {
            Some(norm) => kiln_ops::group_norm(norm, x.swap_dims(1, 2)).swap_dims(1, 2),
            None => x,
        };
        let q = self.to_q.forward(x.clone());
        let ctx = context.unwrap_or(x);
        let k = self.to_k.forward(ctx.clone());
        let v = self.to_v.forward(ctx);
        let o = multi_head_attention(q, k, v, self.heads, self.upcast_attention, false);
        let o = self.to_out[0].forward(o);
        let o = match residual {
            Some(r) => o + r,
            None => o,
        };
        if self.rescale_output_factor == 1.0 { o } else { o.div_scalar(self.rescale_output_factor) }
    }

    /// Spatial self-attention over a feature map (the VAE mid-block).
    ///
    /// # Shapes
    /// - x: `[batch, channels, height, width]` → same shape
    pub fn forward_spatial(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let seq = x.reshape([b, c, h * w]).swap_dims(1, 2);
        self.forward(seq, None).swap_dims(1, 2).reshape([b, c, h, w])
    }
}
