//! `CLIPTextModel` and `CLIPTextModelWithProjection` as transformers 5.24 implements them
//! (`models/clip/modeling_clip.py`): token + position embeddings, pre-LN encoder layers with causal
//! self-attention, the final layer norm, the pooled output at the first end-of-text token and the
//! optional bias-free `text_projection`.

use std::path::Path;

use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig};
use kiln_nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::activation::{gelu, gelu_approximate, relu, sigmoid};
use kiln_nn::{weights_path, LoadOptions, Weights, WeightsFile};
use kiln_ops::multi_head_attention;

use crate::config::{Activation, ClipArchitecture, ClipTextConfig, ResolvedClipConfig};
use crate::error::TextEncoderError;

/// `CLIPTextEmbeddings`: `token_embedding(ids) + position_embedding(0..seq)`.
#[derive(Module, Debug)]
pub struct ClipTextEmbeddings {
    pub token_embedding: Embedding,
    pub position_embedding: Embedding,
}

impl ClipTextEmbeddings {
    /// In `dtype` (the model's: on the CPU a half-precision file's tables stay f16 and only the
    /// rows looked up are widened).
    ///
    /// # Shapes
    /// - input_ids: `[batch, seq]` (seq ≤ max_position_embeddings) → `[batch, seq, hidden]`
    pub fn forward(&self, input_ids: Tensor<2, Int>, dtype: DType) -> Tensor<3> {
        let [_, seq] = input_ids.dims();
        let cast = |t: Tensor<3>| if t.dtype() == dtype { t } else { t.cast(dtype) };
        let tokens = cast(self.token_embedding.forward(input_ids));
        // position_ids = arange(seq): the first `seq` rows of the table, broadcast over the batch
        let positions = cast(self.position_embedding.weight.val().slice(0..seq).unsqueeze::<3>());
        tokens + positions
    }
}

/// `CLIPAttention` (q/k/v/out projections with bias), causal as `CLIPTextModel` calls it.
#[derive(Module, Debug)]
pub struct ClipAttention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub out_proj: Linear,
    pub num_heads: usize,
}

impl ClipAttention {
    /// `softmax(q kᵀ · head_dim^-0.5 + causal mask) v` ([`multi_head_attention`]: kiln's CPU
    /// kernel on flex, burn's fused attention op elsewhere).
    ///
    /// # Shapes
    /// - x: `[batch, seq, hidden]` → same shape
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let q = self.q_proj.forward(x.clone());
        let k = self.k_proj.forward(x.clone());
        let v = self.v_proj.forward(x);
        let o = multi_head_attention(q, k, v, self.num_heads, false, true);
        self.out_proj.forward(o)
    }
}

/// `CLIPMLP`: fc1 → activation → fc2.
#[derive(Module, Debug)]
pub struct ClipMlp {
    pub fc1: Linear,
    pub fc2: Linear,
    #[module(skip)]
    pub activation: Activation,
}

impl ClipMlp {
    /// # Shapes
    /// - x: `[batch, seq, hidden]` → same shape
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let x = self.fc1.forward(x);
        let x = match self.activation {
            // transformers `QuickGELUActivation`: x * sigmoid(1.702 * x)
            Activation::QuickGelu => x.clone() * sigmoid(x.mul_scalar(1.702)),
            Activation::Gelu => gelu(x),
            Activation::GeluTanh => gelu_approximate(x),
            Activation::Relu => relu(x),
        };
        self.fc2.forward(x)
    }
}

/// `CLIPEncoderLayer`: pre-LN residual blocks.
#[derive(Module, Debug)]
pub struct ClipEncoderLayer {
    pub self_attn: ClipAttention,
    pub layer_norm1: LayerNorm,
    pub mlp: ClipMlp,
    pub layer_norm2: LayerNorm,
}

impl ClipEncoderLayer {
    /// `x + attn(ln1(x))`, then `x + mlp(ln2(x))`.
    ///
    /// # Shapes
    /// - x: `[batch, seq, hidden]` → same shape
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let x = x.clone() + self.self_attn.forward(self.layer_norm1.forward(x));
        x.clone() + self.mlp.forward(self.layer_norm2.forward(x))
    }
}

/// `CLIPEncoder`: the stack of layers (`encoder.layers.N`).
#[derive(Module, Debug)]
pub struct ClipEncoder {
    pub layers: Vec<ClipEncoderLayer>,
}

/// transformers' `CLIPTextModel` body (the keys under `text_model.`).
#[derive(Module, Debug)]
pub struct ClipTextTransformer {
    pub embeddings: ClipTextEmbeddings,
    pub encoder: ClipEncoder,
    pub final_layer_norm: LayerNorm,
    /// `config.eos_token_id`; 2 selects the legacy pooling (argmax of the ids).
    pub eos_token_id: i64,
}

/// What the text encoder returns (transformers' `BaseModelOutputWithPooling` /
/// `CLIPTextModelOutput` with `output_hidden_states=True`).
#[derive(Debug, Clone)]
pub struct ClipTextOutput {
    /// `num_hidden_layers + 1` tensors `[batch, seq, hidden]`: the embeddings, then the output of
    /// each encoder layer (before the final layer norm). `hidden_states[len - 2]` is the
    /// penultimate layer SDXL conditions on; clip_skip N uses `hidden_states[len - 1 - N]` (then
    /// the final layer norm, see [`ClipTextModel::final_layer_norm`]).
    pub hidden_states: Vec<Tensor<3>>,
    /// `final_layer_norm(hidden_states.last())`: `[batch, seq, hidden]`.
    pub last_hidden_state: Tensor<3>,
    /// `last_hidden_state` at the first end-of-text token: `[batch, hidden]`.
    pub pooler_output: Tensor<2>,
    /// `text_projection(pooler_output)` (`CLIPTextModelWithProjection` only): `[batch, projection_dim]`.
    pub text_embeds: Option<Tensor<2>>,
}

/// `CLIPTextModel`, or `CLIPTextModelWithProjection` when `text_projection` is present.
///
/// Fields follow the `CLIPTextModelWithProjection` key layout (`text_model.*`,
/// `text_projection.weight`); checkpoints of a bare `CLIPTextModel` saved by transformers ≥ 5
/// (keys without the `text_model.` prefix) are remapped on load.
#[derive(Module, Debug)]
pub struct ClipTextModel {
    pub text_model: ClipTextTransformer,
    pub text_projection: Option<Linear>,
}

impl ClipTextModel {
    /// Builds the model for `config` with lazily initialised random weights (nothing is allocated
    /// until a parameter is used or loaded).
    pub fn new(config: &ResolvedClipConfig, device: &Device) -> Self {
        let d = config.hidden_size;
        let norm = || LayerNormConfig::new(d).with_epsilon(config.layer_norm_eps).init(device);
        let layer = || ClipEncoderLayer {
            self_attn: ClipAttention {
                q_proj: LinearConfig::new(d, d).init(device),
                k_proj: LinearConfig::new(d, d).init(device),
                v_proj: LinearConfig::new(d, d).init(device),
                out_proj: LinearConfig::new(d, d).init(device),
                num_heads: config.num_attention_heads,
            },
            layer_norm1: norm(),
            mlp: ClipMlp {
                fc1: LinearConfig::new(d, config.intermediate_size).init(device),
                fc2: LinearConfig::new(config.intermediate_size, d).init(device),
                activation: config.activation,
            },
            layer_norm2: norm(),
        };
        Self {
            text_model: ClipTextTransformer {
                embeddings: ClipTextEmbeddings {
                    token_embedding: EmbeddingConfig::new(config.vocab_size, d).init(device),
                    position_embedding: EmbeddingConfig::new(config.max_position_embeddings, d).init(device),
                },
                encoder: ClipEncoder { layers: (0..config.num_hidden_layers).map(|_| layer()).collect() },
                final_layer_norm: norm(),
                eos_token_id: config.eos_token_id,
            },
            text_projection: (config.architecture == ClipArchitecture::WithProjection)
                .then(|| LinearConfig::new(d, config.projection_dim).with_bias(false).init(device)),
        }
    }

    /// The stem of a `text_encoder*/` folder's weights file: `model[.<variant>].safetensors`.
    pub const WEIGHTS: &'static str = "model";

    /// Loads `dir/config.json` and `dir/model[.variant].safetensors` (a diffusers
    /// `text_encoder*/` folder) on `options.device`, casting every weight to `options.dtype`.
    ///
    /// Missing, unused or mis-shaped tensors are errors naming the file and the tensors; the
    /// `position_ids` buffer older files carry is ignored.
    pub fn load(dir: &Path, options: &LoadOptions) -> Result<Self, TextEncoderError> {
        let config = ClipTextConfig::from_file(&dir.join("config.json"))?;
        let path = weights_path(dir, Self::WEIGHTS, options.variant.as_deref())?;
        Self::load_file(&config, &path, &options.device, options.dtype)
    }

    /// Loads the weights of `path` into a model built for `config`.
    pub fn load_file(config: &ResolvedClipConfig, path: &Path, device: &Device, dtype: DType) -> Result<Self, TextEncoderError> {
        Self::load_weights(config, Weights::all(WeightsFile::open(path)?), device, dtype)
    }

    /// Loads `weights` (transformers' names: a folder's file, or a single-file checkpoint's text
    /// encoder, renamed) into a model built for `config`.
    pub fn load_weights(config: &ResolvedClipConfig, weights: Weights, device: &Device, dtype: DType) -> Result<Self, TextEncoderError> {
        let model = Self::new(config, device);
        // transformers ≥ 5 saves a bare CLIPTextModel without the `text_model.` prefix
        let remap = [(r"^(embeddings|encoder|final_layer_norm)\.", "text_model.${1}.")];
        let ignore = [r"embeddings\.position_ids$"];
        Ok(weights.rename(&remap).load_into(model, dtype, &ignore)?)
    }

    /// Appends `rows` to the token embedding table (textual inversion: the new tokens' vectors,
    /// ids `vocab_size()..`), as transformers' `resize_token_embeddings` + assignment does.
    ///
    /// # Shapes
    /// - rows: `[n, hidden_size]`
    pub fn add_token_embeddings(&mut self, rows: Tensor<2>) -> Result<(), TextEncoderError> {
        let [_, d] = self.text_model.embeddings.token_embedding.weight.dims();
        let [_, width] = rows.dims();
        if width != d {
            return Err(TextEncoderError::Input(format!("an embedding of width {width} for a text encoder of width {d}")));
        }
        // in the model's dtype: a table kept in f16 on the CPU is widened first, so the new
        // vectors are not rounded (transformers' float32 model keeps them as they are)
        let dtype = self.dtype();
        let table = &mut self.text_model.embeddings.token_embedding.weight;
        let old = table.val();
        let old = if old.dtype() == dtype { old } else { old.cast(dtype) };
        let rows = rows.to_device(&old.device()).cast(dtype);
        *table = burn::module::Param::from_tensor(Tensor::cat(vec![old, rows], 0));
        Ok(())
    }

    /// The dtype the model computes in (what [`ClipTextModel::load`] cast the weights to; on the
    /// CPU a half-precision file's matrices and tables stay f16, the norms take this dtype).
    pub fn dtype(&self) -> DType {
        self.text_model.final_layer_norm.gamma.val().dtype()
    }

    /// `max_position_embeddings`: the longest sequence the model accepts.
    pub fn max_position_embeddings(&self) -> usize {
        self.text_model.embeddings.position_embedding.weight.dims()[0]
    }

    /// `vocab_size`.
    pub fn vocab_size(&self) -> usize {
        self.text_model.embeddings.token_embedding.weight.dims()[0]
    }

    /// The final layer norm, for callers that take an earlier hidden state (clip_skip).
    /// The number of transformer layers (`num_hidden_layers`); [`ClipTextOutput::hidden_states`]
    /// holds one more (the embeddings).
    pub fn num_layers(&self) -> usize {
        self.text_model.encoder.layers.len()
    }

    pub fn final_layer_norm(&self, x: Tensor<3>) -> Tensor<3> {
        self.text_model.final_layer_norm.forward(x)
    }

    /// Runs the encoder on token ids.
    ///
    /// Panics (inside burn) if `seq > max_position_embeddings` or an id is ≥ `vocab_size`; use
    /// [`ClipTextModel::encode`] for ids that come from outside.
    ///
    /// # Shapes
    /// - input_ids: `[batch, seq]`
    /// - returns hidden states `[batch, seq, hidden]`, pooled `[batch, hidden]`, text_embeds
    ///   `[batch, projection_dim]`
    pub fn forward(&self, input_ids: Tensor<2, Int>) -> ClipTextOutput {
        let tm = &self.text_model;
        let mut x = tm.embeddings.forward(input_ids.clone(), self.dtype());
        let mut hidden_states = Vec::with_capacity(tm.encoder.layers.len() + 1);
        hidden_states.push(x.clone());
        for layer in &tm.encoder.layers {
            x = layer.forward(x);
            hidden_states.push(x.clone());
        }
        let last_hidden_state = tm.final_layer_norm.forward(x);
        let [b, _, d] = last_hidden_state.dims();
        let index = pooling_index(input_ids, tm.eos_token_id).reshape([b, 1, 1]).expand([b, 1, d]);
        let pooler_output = last_hidden_state.clone().gather(1, index).reshape([b, d]);
        let text_embeds = self.text_projection.as_ref().map(|p| p.forward(pooler_output.clone()));
        ClipTextOutput { hidden_states, last_hidden_state, pooler_output, text_embeds }
    }

    /// Validates host token ids (equal lengths, at most `max_position_embeddings`, ids below
    /// `vocab_size`), uploads them and runs [`ClipTextModel::forward`].
    pub fn encode(&self, ids: &[Vec<u32>], device: &Device) -> Result<ClipTextOutput, TextEncoderError> {
        let seq = ids.first().map(Vec::len).unwrap_or(0);
        if ids.is_empty() || seq == 0 {
            return Err(TextEncoderError::Input("no token ids to encode".into()));
        }
        if let Some((i, row)) = ids.iter().enumerate().find(|(_, r)| r.len() != seq) {
            return Err(TextEncoderError::Input(format!("sequence {i} has {} ids, sequence 0 has {seq}", row.len())));
        }
        let max = self.max_position_embeddings();
        if seq > max {
            return Err(TextEncoderError::Input(format!("{seq} ids exceed max_position_embeddings = {max}")));
        }
        let vocab = self.vocab_size();
        if let Some(&bad) = ids.iter().flatten().find(|&&t| t as usize >= vocab) {
            return Err(TextEncoderError::Input(format!("token id {bad} is outside the vocabulary (vocab_size = {vocab})")));
        }
        let flat: Vec<i32> = ids.iter().flatten().map(|&t| t as i32).collect();
        let input = Tensor::<2, Int>::from_data(TensorData::new(flat, [ids.len(), seq]), device);
        Ok(self.forward(input))
    }
}

/// The position pooled per sequence, as `CLIPTextModel.forward` picks it: the first token equal
/// to `eos_token_id`, or (legacy configs with `eos_token_id == 2`, e.g. SD 1.5's) the first
/// position of the largest id. torch's `argmax` returns the first maximal index; burn does not
/// promise that on ties, so the scores below have a unique maximum.
///
/// # Shapes
/// - input_ids: `[batch, seq]` → `[batch]`
fn pooling_index(input_ids: Tensor<2, Int>, eos_token_id: i64) -> Tensor<1, Int> {
    let [b, s] = input_ids.dims();
    let device = input_ids.device();
    let positions = Tensor::<1, Int>::arange(0..s as i64, (&device, input_ids.dtype())).unsqueeze::<2>();
    let s = s as i64;
    let score = if eos_token_id == 2 {
        // id * seq + (seq - 1 - position): larger ids win, earlier positions break ties
        input_ids.mul_scalar(s) + positions.neg().add_scalar(s - 1)
    } else {
        // matches score 2·seq − position (first match wins); no match: position 0 (torch's
        // argmax of all zeros) with score 1, everything else 0
        let is_eos = input_ids.clone().equal_elem(eos_token_id);
        let first = positions.clone().equal_elem(0);
        let base = input_ids.zeros_like().mask_fill(first.expand([b, s as usize]), 1);
        base.mask_where(is_eos, positions.neg().add_scalar(2 * s).expand([b, s as usize]))
    };
    score.argmax(1).reshape([b])
}
