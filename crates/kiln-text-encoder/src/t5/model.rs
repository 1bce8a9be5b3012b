//! `T5EncoderModel` as transformers 5.25 implements it (`models/t5/modeling_t5.py`): the token
//! embedding (`shared`), pre-norm blocks of bias-free self-attention with T5's relative position
//! bias (computed by the first block, shared by all) and a feed-forward layer (gated in T5 v1.1),
//! RMS norms (`T5LayerNorm`), the final norm. SD 3 (`text_encoder_3`) and FLUX.1 (`text_encoder_2`)
//! condition on its last hidden state.
//!
//! Half precision as transformers runs it: the `wo` projections stay float32
//! (`_keep_in_fp32_modules = ["wo"]`), so from the first feed-forward layer on the residual stream
//! is float32; each norm computes in float32 and rounds to the weight's dtype; a float16 stream is
//! clamped to ±(65504 [− 1000 if it holds an inf]) after each layer.

use std::path::Path;

use burn::module::Param;
use burn::nn::{Embedding, EmbeddingConfig};
use burn::prelude::*;
use burn::tensor::activation::{gelu, gelu_approximate, relu, silu, softmax};
use burn::tensor::DType;
use kiln_nn::{weights_path, Linear, LinearConfig, LoadOptions, Weights, WeightsFile};

use super::config::{ResolvedT5Config, T5Activation, T5Config};
use crate::error::TextEncoderError;

/// `T5LayerNorm`: `weight · x / √(mean(x²) + ε)`, no mean, no bias (RMSNorm).
#[derive(Module, Debug)]
pub struct T5LayerNorm {
    pub weight: Param<Tensor<1>>,
    #[module(skip)]
    pub eps: f64,
}

impl T5LayerNorm {
    fn new(d: usize, eps: f64, device: &Device) -> Self {
        Self { weight: Param::from_tensor(Tensor::ones([d], device)), eps }
    }

    /// The variance in float32; the normalised values rounded to the weight's dtype when that is
    /// half precision (as transformers does), then scaled.
    ///
    /// # Shapes
    /// - x: `[batch, seq, d_model]` → same shape, in the weight's dtype
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let weight = self.weight.val();
        let x = x.cast(DType::F32);
        let variance = x.clone().powi_scalar(2).mean_dim(2);
        let x = x * variance.add_scalar(self.eps).sqrt().recip();
        let x = if weight.dtype() == DType::F32 { x } else { x.cast(weight.dtype()) };
        x * weight.unsqueeze::<3>()
    }
}

/// `T5Attention` of an encoder (bidirectional, no scaling of `q kᵀ`), with the relative position
/// bias table on the first block only.
#[derive(Module, Debug)]
pub struct T5Attention {
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    /// `[num_buckets, num_heads]`, first block only.
    pub relative_attention_bias: Option<Embedding>,
    #[module(skip)]
    pub num_heads: usize,
    #[module(skip)]
    pub d_kv: usize,
}

impl T5Attention {
    /// `softmax(q kᵀ + position_bias + mask) v`, then `o`.
    ///
    /// # Shapes
    /// - x: `[batch, seq, d_model]`; bias: `[1 or batch, heads, seq, seq]` → `[batch, seq, d_model]`
    pub fn forward(&self, x: Tensor<3>, bias: Tensor<4>) -> Tensor<3> {
        let [b, s, _] = x.dims();
        let (h, d) = (self.num_heads, self.d_kv);
        let split = |t: Tensor<3>| t.reshape([b, s, h, d]).swap_dims(1, 2);
        let q = split(self.q.forward(x.clone()));
        let k = split(self.k.forward(x.clone()));
        let v = split(self.v.forward(x));
        let scores = q.matmul(k.swap_dims(2, 3));
        let bias = if bias.dtype() == scores.dtype() { bias } else { bias.cast(scores.dtype()) };
        let weights = softmax(scores + bias, 3);
        let o = weights.matmul(v).swap_dims(1, 2).reshape([b, s, h * d]);
        self.o.forward(o)
    }

    /// `compute_bias(seq, seq)` of an encoder: the bucket of every (query, key) pair looked up in
    /// the table, `[1, heads, seq, seq]`.
    fn position_bias(&self, seq: usize, config: &Buckets, device: &Device) -> Option<Tensor<4>> {
        let table = self.relative_attention_bias.as_ref()?;
        let buckets: Vec<i32> = (0..seq)
            .flat_map(|q| (0..seq).map(move |k| relative_position_bucket(k as i64 - q as i64, config) as i32))
            .collect();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(buckets, [seq, seq]), device);
        Some(table.forward(ids).permute([2, 0, 1]).unsqueeze::<4>())
    }
}

/// `relative_attention_num_buckets` and `relative_attention_max_distance`.
#[derive(Clone, Copy, Debug)]
struct Buckets {
    num_buckets: usize,
    max_distance: usize,
}

/// `T5Attention._relative_position_bucket(relative_position, bidirectional=True, ...)`: half the
/// buckets for keys after the query; within each half, distances below a quarter of the buckets
/// get one bucket each, larger ones logarithmic buckets up to `max_distance`. The logarithm is
/// computed as torch does, in float32 (the position as float32 over `max_exact`, `torch.log`, over
/// the float32 of `math.log(max_distance / max_exact)`), then truncated.
fn relative_position_bucket(relative_position: i64, c: &Buckets) -> usize {
    let half = c.num_buckets / 2;
    let mut bucket = if relative_position > 0 { half } else { 0 };
    let n = relative_position.unsigned_abs() as usize;
    let max_exact = half / 2;
    if n < max_exact {
        return bucket + n;
    }
    let ratio = (n as f32 / max_exact as f32) as f64;
    let log = ratio.ln() as f32;
    let scale = (c.max_distance as f64 / max_exact as f64).ln() as f32;
    let large = max_exact + (log / scale * (half - max_exact) as f32) as usize;
    bucket += large.min(half - 1);
    bucket
}

/// `T5DenseGatedActDense` (`wi_0`, `wi_1`) or `T5DenseActDense` (`wi`), then `wo`.
#[derive(Module, Debug)]
pub struct T5DenseReluDense {
    pub wi: Option<Linear>,
    pub wi_0: Option<Linear>,
    pub wi_1: Option<Linear>,
    pub wo: Linear,
    #[module(skip)]
    pub activation: T5Activation,
}

impl T5DenseReluDense {
    /// `wo(act(wi_0 x) · wi_1 x)` (or `wo(act(wi x))`), the hidden values cast to `wo`'s dtype
    /// first (float32 when the model computes in half precision).
    ///
    /// # Shapes
    /// - x: `[batch, seq, d_model]` → same shape, in `wo`'s dtype
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let act = |t: Tensor<3>| match self.activation {
            T5Activation::Relu => relu(t),
            T5Activation::Gelu => gelu(t),
            T5Activation::GeluNew => gelu_approximate(t),
            T5Activation::Silu => silu(t),
        };
        let h = match (&self.wi, &self.wi_0, &self.wi_1) {
            (Some(wi), _, _) => act(wi.forward(x)),
            (None, Some(wi_0), Some(wi_1)) => act(wi_0.forward(x.clone())) * wi_1.forward(x),
            _ => unreachable!("T5DenseReluDense is built with wi or wi_0 + wi_1"),
        };
        let wo_dtype = self.wo.weight.val().dtype();
        // a kept half-precision weight on the CPU computes in f32 like the rest of the model
        let h = if wo_dtype == DType::F32 && h.dtype() != DType::F32 { h.cast(DType::F32) } else { h };
        self.wo.forward(h)
    }
}

/// `T5LayerSelfAttention`: `x + attention(norm(x))`.
#[derive(Module, Debug)]
pub struct T5LayerSelfAttention {
    /// `SelfAttention` in transformers' keys.
    pub self_attention: T5Attention,
    pub layer_norm: T5LayerNorm,
}

/// `T5LayerFF`: `x + ff(norm(x))`.
#[derive(Module, Debug)]
pub struct T5LayerFF {
    /// `DenseReluDense` in transformers' keys.
    pub dense_relu_dense: T5DenseReluDense,
    pub layer_norm: T5LayerNorm,
}

/// `T5Block` of an encoder: `layer.0` self-attention, `layer.1` feed-forward.
#[derive(Module, Debug)]
pub struct T5Block {
    pub layer: (T5LayerSelfAttention, T5LayerFF),
}

/// `a + b` as torch adds a float16 and a float32 tensor: in float32.
fn add_promoted(a: Tensor<3>, b: Tensor<3>) -> Tensor<3> {
    if a.dtype() == b.dtype() {
        a + b
    } else {
        a.cast(DType::F32) + b.cast(DType::F32)
    }
}

/// `T5Block`'s clamp of a float16 stream: ±(65504 − 1000) if it holds an inf, else ±65504.
fn clamp_f16(x: Tensor<3>) -> Tensor<3> {
    if x.dtype() != DType::F16 {
        return x;
    }
    let max = 65504.0f32;
    let has_inf = x.clone().is_inf().any().into_scalar::<bool>();
    let limit = if has_inf { max - 1000.0 } else { max };
    x.clamp(-limit, limit)
}

impl T5Block {
    /// # Shapes
    /// - x: `[batch, seq, d_model]`; bias: `[1 or batch, heads, seq, seq]` → `[batch, seq, d_model]`
    pub fn forward(&self, x: Tensor<3>, bias: Tensor<4>) -> Tensor<3> {
        let (attn, ff) = &self.layer;
        let h = attn.self_attention.forward(attn.layer_norm.forward(x.clone()), bias);
        let x = clamp_f16(add_promoted(x, h));
        let h = ff.dense_relu_dense.forward(ff.layer_norm.forward(x.clone()));
        clamp_f16(add_promoted(x, h))
    }
}

/// `T5Stack` of an encoder (the keys under `encoder.`; its `embed_tokens` is `shared`, tied).
#[derive(Module, Debug)]
pub struct T5Stack {
    pub block: Vec<T5Block>,
    pub final_layer_norm: T5LayerNorm,
}

/// `T5EncoderModel`.
#[derive(Module, Debug)]
pub struct T5EncoderModel {
    pub shared: Embedding,
    pub encoder: T5Stack,
    #[module(skip)]
    buckets: (usize, usize),
}

impl T5EncoderModel {
    /// The model for `config`, with lazily initialised random weights.
    pub fn new(config: &ResolvedT5Config, device: &Device) -> Self {
        let (d, inner) = (config.d_model, config.num_heads * config.d_kv);
        let linear = |i, o| LinearConfig::new(i, o).with_bias(false).init(device);
        let norm = || T5LayerNorm::new(d, config.layer_norm_epsilon, device);
        let block = |i: usize| T5Block {
            layer: (
                T5LayerSelfAttention {
                    self_attention: T5Attention {
                        q: linear(d, inner),
                        k: linear(d, inner),
                        v: linear(d, inner),
                        o: linear(inner, d),
                        relative_attention_bias: (i == 0).then(|| {
                            EmbeddingConfig::new(config.relative_attention_num_buckets, config.num_heads).init(device)
                        }),
                        num_heads: config.num_heads,
                        d_kv: config.d_kv,
                    },
                    layer_norm: norm(),
                },
                T5LayerFF {
                    dense_relu_dense: T5DenseReluDense {
                        wi: (!config.gated).then(|| linear(d, config.d_ff)),
                        wi_0: config.gated.then(|| linear(d, config.d_ff)),
                        wi_1: config.gated.then(|| linear(d, config.d_ff)),
                        wo: linear(config.d_ff, d),
                        activation: config.activation,
                    },
                    layer_norm: norm(),
                },
            ),
        };
        Self {
            shared: EmbeddingConfig::new(config.vocab_size, d).init(device),
            encoder: T5Stack { block: (0..config.num_layers).map(block).collect(), final_layer_norm: norm() },
            buckets: (config.relative_attention_num_buckets, config.relative_attention_max_distance),
        }
    }

    /// The stem of a `text_encoder_*/` folder's weights file: `model[.<variant>].safetensors`.
    pub const WEIGHTS: &'static str = "model";

    /// Loads `dir/config.json` and `dir/model[.variant].safetensors` on `options.device` in
    /// `options.dtype` (the `wo` projections stay float32 when that is half precision).
    pub fn load(dir: &Path, options: &LoadOptions) -> Result<Self, TextEncoderError> {
        let config = T5Config::from_file(&dir.join("config.json"))?;
        let path = weights_path(dir, Self::WEIGHTS, options.variant.as_deref())?;
        Self::load_weights(&config, Weights::all(WeightsFile::open(&path)?), &options.device, options.dtype)
    }

    /// Loads `weights` (transformers' names) into a model built for `config`. The token table is
    /// `shared.weight`, or `encoder.embed_tokens.weight` (its tied copy) where a file has only
    /// that; the decoder of a whole `T5ForConditionalGeneration` file is left alone.
    pub fn load_weights(config: &ResolvedT5Config, weights: Weights, device: &Device, dtype: DType) -> Result<Self, TextEncoderError> {
        let has = |name: &str| weights.weights.iter().any(|w| w.name == name);
        let mut remap = vec![(r"\.SelfAttention\.", ".self_attention."), (r"\.DenseReluDense\.", ".dense_relu_dense.")];
        if !has("shared.weight") && has("encoder.embed_tokens.weight") {
            remap.push((r"^encoder\.embed_tokens\.weight$", "shared.weight"));
        }
        let ignore = [r"^encoder\.embed_tokens\.weight$", r"^decoder\.", r"^lm_head\."];
        let mut model: Self = weights.rename(&remap).load_into(Self::new(config, device), dtype, &ignore)?;
        if dtype != DType::F32 {
            // `_keep_in_fp32_modules = ["wo"]`
            for block in &mut model.encoder.block {
                let wo = &mut block.layer.1.dense_relu_dense.wo.weight;
                *wo = Param::from_tensor(wo.val().cast(DType::F32));
            }
        }
        Ok(model)
    }

    /// The dtype the model computes in (the norms'; on the CPU a half-precision file's matrices
    /// stay f16 and compute in this dtype).
    pub fn dtype(&self) -> DType {
        self.encoder.final_layer_norm.weight.val().dtype()
    }

    /// `vocab_size`.
    pub fn vocab_size(&self) -> usize {
        self.shared.weight.dims()[0]
    }

    /// `d_model`: the width of the hidden states.
    pub fn d_model(&self) -> usize {
        self.shared.weight.dims()[1]
    }

    /// The last hidden state, `T5EncoderModel(input_ids, attention_mask).last_hidden_state`. SD 3
    /// and FLUX pass no mask (the padding is attended to); `mask` (1 keep, 0 padding) adds
    /// `finfo(dtype).min` to the scores of masked keys, as transformers' bidirectional mask does.
    ///
    /// Panics (inside burn) on ids ≥ `vocab_size`; use [`T5EncoderModel::encode`] for ids from outside.
    ///
    /// # Shapes
    /// - input_ids, mask: `[batch, seq]` → `[batch, seq, d_model]`
    pub fn forward(&self, input_ids: Tensor<2, Int>, mask: Option<Tensor<2, Int>>) -> Tensor<3> {
        let [b, s] = input_ids.dims();
        let device = input_ids.device();
        let dtype = self.dtype();
        let x = self.shared.forward(input_ids);
        let mut x = if x.dtype() == dtype { x } else { x.cast(dtype) };
        let buckets = Buckets { num_buckets: self.buckets.0, max_distance: self.buckets.1 };
        let attention = &self.encoder.block[0].layer.0.self_attention;
        let mut bias = attention.position_bias(s, &buckets, &device).expect("the first block has the position bias table");
        if let Some(mask) = mask {
            let min = if bias.dtype() == DType::F16 { -65504.0 } else { f32::MIN };
            let masked = mask.equal_elem(0).reshape([b, 1, 1, s]);
            let add = Tensor::<4>::zeros([b, 1, 1, s], (&device, bias.dtype())).mask_fill(masked, min);
            bias = bias + add;
        }
        for block in &self.encoder.block {
            x = block.forward(x, bias.clone());
        }
        self.encoder.final_layer_norm.forward(x)
    }

    /// Validates host token ids (equal lengths, at least one, below `vocab_size`), uploads them
    /// and runs [`T5EncoderModel::forward`] without a mask, as the SD 3 and FLUX pipelines call it.
    pub fn encode(&self, ids: &[Vec<u32>], device: &Device) -> Result<Tensor<3>, TextEncoderError> {
        let seq = ids.first().map(Vec::len).unwrap_or(0);
        if ids.is_empty() || seq == 0 {
            return Err(TextEncoderError::Input("no token ids to encode".into()));
        }
        if let Some((i, row)) = ids.iter().enumerate().find(|(_, r)| r.len() != seq) {
            return Err(TextEncoderError::Input(format!("sequence {i} has {} ids, sequence 0 has {seq}", row.len())));
        }
        let vocab = self.vocab_size();
        if let Some(&bad) = ids.iter().flatten().find(|&&t| t as usize >= vocab) {
            return Err(TextEncoderError::Input(format!("token id {bad} is outside the vocabulary (vocab_size = {vocab})")));
        }
        let flat: Vec<i32> = ids.iter().flatten().map(|&t| t as i32).collect();
        let input = Tensor::<2, Int>::from_data(TensorData::new(flat, [ids.len(), seq]), device);
        Ok(self.forward(input, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `T5Attention._relative_position_bucket` with T5-XXL's 32 buckets / 128 and the fixture's
    /// 8 / 20, transformers 5.25 (bidirectional=True).
    #[test]
    fn buckets_match_transformers() {
        let xxl = Buckets { num_buckets: 32, max_distance: 128 };
        let got: Vec<usize> = [-140i64, -128, -64, -33, -32, -16, -9, -8, -7, -1, 0, 1, 7, 8, 9, 16, 31, 32, 64, 127, 128, 140]
            .iter()
            .map(|&r| relative_position_bucket(r, &xxl))
            .collect();
        assert_eq!(got, [15, 15, 14, 12, 12, 10, 8, 8, 7, 1, 0, 17, 23, 24, 24, 26, 27, 28, 30, 31, 31, 31]);
        // every position in −600..=600, folded into Σ (i + 1) · bucket[i]
        let checksum: usize = (-600i64..=600).enumerate().map(|(i, r)| (i + 1) * relative_position_bucket(r, &xxl)).sum();
        assert_eq!(checksum, 19105790);
        let tiny = Buckets { num_buckets: 8, max_distance: 20 };
        let got: Vec<usize> = (-25..=25).map(|r| relative_position_bucket(r, &tiny)).collect();
        let want = [
            3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 1, 0, 5, 6, 6, 6, 6, 6, 7, 7, 7, 7, 7,
            7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
        ];
        assert_eq!(got, want);
    }
}
