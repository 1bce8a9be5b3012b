//! The spatial transformer of SD-family UNets: diffusers' `Transformer2DModel` for continuous
//! input (`models/transformers/transformer_2d.py`), `BasicTransformerBlock` with
//! `norm_type = "layer_norm"` and `FeedForward` with the GEGLU activation
//! (`models/attention.py`, `models/activations.py`).
//!
//! Field names follow diffusers' state-dict keys, including the feed-forward's
//! `ModuleList([GEGLU, Dropout, Linear])` (`ff.net.0.proj.*`, `ff.net.2.*`), which is mirrored by
//! a tuple whose middle element holds no parameters, so checkpoints load without key remapping.

use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, GroupNormConfig, LayerNorm, LayerNormConfig};

use crate::linear::{Linear, LinearConfig};
use burn::prelude::*;

use kiln_ops::conv2d_forward;

use crate::{conv2d, Attention, AttentionConfig};

/// diffusers' `GEGLU`: `proj` to twice the inner width, then `hidden * gelu(gate)` with the exact
/// (erf) GELU.
#[derive(Module, Debug)]
pub struct Geglu {
    pub proj: Linear,
}

impl Geglu {
    /// # Shapes
    /// - x: `[batch, seq, dim]` → `[batch, seq, inner_dim]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        kiln_ops::geglu(self.proj.forward(x))
    }
}

/// The `nn.Dropout` between GEGLU and the output projection: no parameters, identity at
/// inference. It only keeps the tuple indices equal to diffusers' `ModuleList` indices.
#[derive(Module, Debug)]
pub struct InferenceDropout {
    pub p: f64,
}

#[derive(Config, Debug)]
pub struct FeedForwardConfig {
    pub dim: usize,
    /// `mult` in diffusers: the inner width is `dim * mult`.
    #[config(default = 4)]
    pub mult: usize,
}

impl FeedForwardConfig {
    pub fn init(&self, device: &Device) -> FeedForward {
        let inner = self.dim * self.mult;
        FeedForward {
            net: (
                Geglu { proj: LinearConfig::new(self.dim, 2 * inner).init(device) },
                InferenceDropout { p: 0.0 },
                LinearConfig::new(inner, self.dim).init(device),
            ),
        }
    }
}

/// diffusers' `FeedForward(dim, activation_fn="geglu")`: GEGLU → Dropout → Linear.
#[derive(Module, Debug)]
pub struct FeedForward {
    /// Keys `net.0.proj.*` and `net.2.*`, as in diffusers.
    pub net: (Geglu, InferenceDropout, Linear),
}

impl FeedForward {
    /// # Shapes
    /// - x: `[batch, seq, dim]` → `[batch, seq, dim]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.net.2.forward(self.net.0.forward(x))
    }
}

#[derive(Config, Debug)]
pub struct BasicTransformerBlockConfig {
    pub dim: usize,
    pub num_attention_heads: usize,
    pub attention_head_dim: usize,
    /// Width of the conditioning sequence of `attn2`; `None`: the block has no cross-attention
    /// (no `norm2`/`attn2`).
    pub cross_attention_dim: Option<usize>,
    #[config(default = false)]
    pub upcast_attention: bool,
    /// LayerNorm eps (`norm_eps`).
    #[config(default = 1e-5)]
    pub norm_eps: f64,
}

impl BasicTransformerBlockConfig {
    pub fn init(&self, device: &Device) -> BasicTransformerBlock {
        let attention = |cross: Option<usize>| {
            AttentionConfig::new(self.dim, self.num_attention_heads, self.attention_head_dim)
                .with_cross_attention_dim(cross)
                .with_upcast_attention(self.upcast_attention)
                .init(device)
        };
        let norm = || LayerNormConfig::new(self.dim).with_epsilon(self.norm_eps).init(device);
        BasicTransformerBlock {
            norm1: norm(),
            attn1: attention(None),
            norm2: self.cross_attention_dim.map(|_| norm()),
            attn2: self.cross_attention_dim.map(|c| attention(Some(c))),
            norm3: norm(),
            ff: FeedForwardConfig::new(self.dim).init(device),
        }
    }
}

/// diffusers' `BasicTransformerBlock` (`norm_type = "layer_norm"`): pre-norm self-attention,
/// cross-attention and GEGLU feed-forward, each added back to the residual stream.
#[derive(Module, Debug)]
pub struct BasicTransformerBlock {
    pub norm1: LayerNorm,
    pub attn1: Attention,
    pub norm2: Option<LayerNorm>,
    pub attn2: Option<Attention>,
    pub norm3: LayerNorm,
    pub ff: FeedForward,
}

impl BasicTransformerBlock {
    /// # Shapes
    /// - x: `[batch, seq, dim]`
    /// - context: `[batch, seq_k, cross_attention_dim]` (ignored when the block has no `attn2`;
    ///   `None` makes `attn2` a self-attention, as in diffusers)
    /// - returns `[batch, seq, dim]`
    pub fn forward(&self, x: Tensor<3>, context: Option<Tensor<3>>) -> Tensor<3> {
        let x = self.attn1.forward(self.norm1.forward(x.clone()), None) + x;
        let x = match (&self.norm2, &self.attn2) {
            (Some(norm), Some(attn)) => attn.forward(norm.forward(x.clone()), context) + x,
            _ => x,
        };
        self.ff.forward(self.norm3.forward(x.clone())) + x
    }
}

/// `proj_in` / `proj_out` of [`Transformer2DModel`]: a `Linear` when `use_linear_projection`
/// (SD2.x, SDXL), a 1×1 `Conv2d` otherwise (SD1.x). Both are stored under the same key
/// (`proj_in.weight`); the loader skips enum variant names.
#[derive(Module, Debug)]
pub enum Projection {
    Linear(Linear),
    Conv(Conv2d),
}

impl Projection {
    fn new(c_in: usize, c_out: usize, linear: bool, device: &Device) -> Self {
        if linear {
            Projection::Linear(LinearConfig::new(c_in, c_out).init(device))
        } else {
            Projection::Conv(conv2d(c_in, c_out, 1, 1, 0, device))
        }
    }
}

#[derive(Config, Debug)]
pub struct Transformer2DModelConfig {
    pub num_attention_heads: usize,
    pub attention_head_dim: usize,
    pub in_channels: usize,
    /// Number of `BasicTransformerBlock`s (`num_layers`, the UNet's `transformer_layers_per_block`).
    #[config(default = 1)]
    pub num_layers: usize,
    #[config(default = 32)]
    pub norm_num_groups: usize,
    pub cross_attention_dim: Option<usize>,
    #[config(default = false)]
    pub use_linear_projection: bool,
    #[config(default = false)]
    pub upcast_attention: bool,
    /// eps of the blocks' LayerNorms (`norm_eps`); the input GroupNorm always uses 1e-6.
    #[config(default = 1e-5)]
    pub norm_eps: f64,
}

impl Transformer2DModelConfig {
    pub fn init(&self, device: &Device) -> Transformer2DModel {
        let inner = self.num_attention_heads * self.attention_head_dim;
        let block = BasicTransformerBlockConfig::new(inner, self.num_attention_heads, self.attention_head_dim)
            .with_cross_attention_dim(self.cross_attention_dim)
            .with_upcast_attention(self.upcast_attention)
            .with_norm_eps(self.norm_eps);
        Transformer2DModel {
            norm: GroupNormConfig::new(self.norm_num_groups, self.in_channels).with_epsilon(1e-6).init(device),
            proj_in: Projection::new(self.in_channels, inner, self.use_linear_projection, device),
            transformer_blocks: (0..self.num_layers).map(|_| block.init(device)).collect(),
            proj_out: Projection::new(inner, self.in_channels, self.use_linear_projection, device),
        }
    }
}

/// diffusers' `Transformer2DModel` over a feature map: GroupNorm → proj_in → transformer blocks
/// over the `h·w` tokens → proj_out, plus the input.
#[derive(Module, Debug)]
pub struct Transformer2DModel {
    pub norm: GroupNorm,
    pub proj_in: Projection,
    pub transformer_blocks: Vec<BasicTransformerBlock>,
    pub proj_out: Projection,
}

impl Transformer2DModel {
    /// # Shapes
    /// - x: `[batch, in_channels, height, width]`
    /// - context: `[batch, seq_k, cross_attention_dim]`
    /// - returns `[batch, in_channels, height, width]`
    pub fn forward(&self, x: Tensor<4>, context: Option<Tensor<3>>) -> Tensor<4> {
        let [b, _, h, w] = x.dims();
        let residual = x.clone();
        let x = kiln_ops::group_norm(&self.norm, x);
        // [b, c, h, w] -> [b, h·w, c]
        let to_tokens = |t: Tensor<4>| {
            let c = t.dims()[1];
            t.permute([0, 2, 3, 1]).reshape([b, h * w, c])
        };
        let mut tokens = match &self.proj_in {
            Projection::Conv(conv) => to_tokens(conv2d_forward(conv, x)),
            Projection::Linear(linear) => linear.forward(to_tokens(x)),
        };
        for block in &self.transformer_blocks {
            tokens = block.forward(tokens, context.clone());
        }
        // [b, h·w, c] -> [b, c, h, w]
        let to_map = |t: Tensor<3>| {
            let c = t.dims()[2];
            t.reshape([b, h, w, c]).permute([0, 3, 1, 2])
        };
        let out = match &self.proj_out {
            Projection::Conv(conv) => conv2d_forward(conv, to_map(tokens)),
            Projection::Linear(linear) => to_map(linear.forward(tokens)),
        };
        out + residual
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::activation::gelu;
    use super::*;
    use burn::store::ModuleSnapshot;

    /// Parameter paths are diffusers' state-dict keys (norm `weight`/`bias` are burn's
    /// `gamma`/`beta`, renamed by the loader's adapter); the projection enum adds nothing.
    #[test]
    fn parameter_paths_are_diffusers_keys() {
        let device = Device::flex();
        for linear in [false, true] {
            let model = Transformer2DModelConfig::new(2, 8, 16)
                .with_cross_attention_dim(Some(12))
                .with_norm_num_groups(4)
                .with_use_linear_projection(linear)
                .init(&device);
            let mut paths: Vec<String> = model.collect(None, None, true).into_iter().map(|t| t.name).collect();
            paths.sort();
            for key in [
                "norm.gamma",
                "proj_in.weight",
                "proj_in.bias",
                "proj_out.weight",
                "transformer_blocks.0.norm1.gamma",
                "transformer_blocks.0.attn1.to_q.weight",
                "transformer_blocks.0.attn2.to_k.weight",
                "transformer_blocks.0.attn2.to_out.0.bias",
                "transformer_blocks.0.norm3.beta",
                "transformer_blocks.0.ff.net.0.proj.weight",
                "transformer_blocks.0.ff.net.2.weight",
                "transformer_blocks.0.ff.net.2.bias",
            ] {
                assert!(paths.iter().any(|p| p == key), "linear={linear}: no {key} in {paths:?}");
            }
            // GroupNorm (2) + proj_in/out (4) + norm1-3 (6) + attn1 (5) + attn2 (5) + ff (4)
            assert_eq!(paths.len(), 26, "{paths:?}");
        }
    }

    /// GEGLU: the first half of the projection times gelu of the second half.
    #[test]
    fn geglu_splits_hidden_and_gate() {
        let device = Device::flex();
        let geglu = Geglu { proj: LinearConfig::new(3, 4).init(&device) };
        let x = Tensor::<3>::random([2, 5, 3], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
        let h = geglu.proj.forward(x.clone());
        let want = h.clone().narrow(2, 0, 2) * gelu(h.narrow(2, 2, 2));
        let diff: f32 = (geglu.forward(x) - want).abs().max().into_scalar();
        assert!(diff < 1e-6, "{diff}");
    }
}
