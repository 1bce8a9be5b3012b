//! `text_encoder_3/config.json` (SD 3) or `text_encoder_2/config.json` (FLUX.1): transformers'
//! `T5Config` (`models/t5/configuration_t5.py`, transformers 5.25), read with the same defaults.

use std::collections::BTreeMap;
use std::path::Path;

use kiln_nn::LoadError;
use serde::Deserialize;

/// The feed-forward activation (`feed_forward_proj` → `dense_act_fn`, transformers' `ACT2FN`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum T5Activation {
    /// `relu` (the original T5).
    Relu,
    /// `gelu`: exact, erf-based.
    Gelu,
    /// `gelu_new`: the tanh approximation (`"gated-gelu"`, T5 v1.1: SD 3's and FLUX's encoders).
    GeluNew,
    /// `silu`.
    Silu,
}

/// `T5Config` with transformers' defaults. Keys that do not change the encoder (dropout, init,
/// decoder sizes, version stamps) are accepted and ignored.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct T5Config {
    pub architectures: Option<Vec<String>>,
    pub model_type: Option<String>,
    pub vocab_size: usize,
    pub d_model: usize,
    pub d_kv: usize,
    pub d_ff: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub relative_attention_num_buckets: usize,
    pub relative_attention_max_distance: usize,
    pub layer_norm_epsilon: f64,
    pub feed_forward_proj: String,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

impl Default for T5Config {
    fn default() -> Self {
        Self {
            architectures: None,
            model_type: None,
            vocab_size: 32128,
            d_model: 512,
            d_kv: 64,
            d_ff: 2048,
            num_layers: 6,
            num_heads: 8,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            layer_norm_epsilon: 1e-6,
            feed_forward_proj: "relu".into(),
            other: BTreeMap::new(),
        }
    }
}

/// A validated config: the values the encoder is built from.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedT5Config {
    pub vocab_size: usize,
    pub d_model: usize,
    pub d_kv: usize,
    pub d_ff: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub relative_attention_num_buckets: usize,
    pub relative_attention_max_distance: usize,
    pub layer_norm_epsilon: f64,
    pub activation: T5Activation,
    /// `is_gated_act`: `wi_0`/`wi_1` (gated) or a single `wi`.
    pub gated: bool,
}

impl T5Config {
    /// Reads `config.json` (see [`kiln_nn::read_config`]) and validates it.
    pub fn from_file(path: &Path) -> Result<ResolvedT5Config, LoadError> {
        let config: Self = kiln_nn::read_config(path)?;
        config.validate(path)
    }

    /// Checks every value kiln depends on; unsupported values are an error naming the key.
    pub fn validate(&self, path: &Path) -> Result<ResolvedT5Config, LoadError> {
        let bad = |message: String| LoadError::Unsupported { path: path.into(), message };
        if let Some(model_type) = &self.model_type
            && !matches!(model_type.as_str(), "t5" | "umt5")
        {
            return Err(bad(format!("model_type = {model_type:?}: a T5 encoder config (\"t5\") is expected")));
        }
        if let Some(arch) = self.architectures.as_deref().and_then(|a| a.first())
            && !matches!(arch.as_str(), "T5EncoderModel" | "T5ForConditionalGeneration" | "T5Model")
        {
            return Err(bad(format!("architectures = [{arch:?}]: kiln runs the encoder of a T5 model")));
        }
        // T5Config.__init__: "gated-gelu" is T5 v1.1's gelu_new; otherwise `[gated-]ACT`
        let parts: Vec<&str> = self.feed_forward_proj.split('-').collect();
        let gated = parts.len() == 2 && parts[0] == "gated";
        if parts.len() > 2 || (parts.len() == 2 && !gated) {
            return Err(bad(format!(
                "feed_forward_proj = {:?}: expected ACT or gated-ACT (e.g. relu, gated-gelu)",
                self.feed_forward_proj
            )));
        }
        let act = if self.feed_forward_proj == "gated-gelu" { "gelu_new" } else { parts[parts.len() - 1] };
        let activation = match act {
            "relu" => T5Activation::Relu,
            "gelu" => T5Activation::Gelu,
            "gelu_new" => T5Activation::GeluNew,
            "silu" | "swish" => T5Activation::Silu,
            other => return Err(bad(format!("feed_forward_proj activation {other:?}: supported are relu, gelu, gelu_new, silu"))),
        };
        // bounds far above T5-XXL (d_model 4096, d_ff 10240, 24 layers, 64 heads, 32128 tokens)
        for (key, value, max) in [
            ("vocab_size", self.vocab_size, 1 << 22),
            ("d_model", self.d_model, 1 << 16),
            ("d_kv", self.d_kv, 1 << 12),
            ("d_ff", self.d_ff, 1 << 18),
            ("num_layers", self.num_layers, 256),
            ("num_heads", self.num_heads, 1 << 10),
            ("relative_attention_num_buckets", self.relative_attention_num_buckets, 1 << 12),
            ("relative_attention_max_distance", self.relative_attention_max_distance, 1 << 20),
        ] {
            if value == 0 || value > max {
                return Err(bad(format!("{key} = {value}: expected 1..={max}")));
            }
        }
        // `_relative_position_bucket` halves the buckets (bidirectional), then halves again for
        // the exact range, and takes log(max_distance / max_exact)
        let max_exact = self.relative_attention_num_buckets / 4;
        if max_exact == 0 || self.relative_attention_max_distance <= max_exact {
            return Err(bad(format!(
                "relative_attention_num_buckets = {} with relative_attention_max_distance = {}: need at least 4 \
                 buckets and a max distance above a quarter of them",
                self.relative_attention_num_buckets, self.relative_attention_max_distance
            )));
        }
        if !(self.layer_norm_epsilon > 0.0 && self.layer_norm_epsilon.is_finite()) {
            return Err(bad(format!("layer_norm_epsilon = {}", self.layer_norm_epsilon)));
        }
        Ok(ResolvedT5Config {
            vocab_size: self.vocab_size,
            d_model: self.d_model,
            d_kv: self.d_kv,
            d_ff: self.d_ff,
            num_layers: self.num_layers,
            num_heads: self.num_heads,
            relative_attention_num_buckets: self.relative_attention_num_buckets,
            relative_attention_max_distance: self.relative_attention_max_distance,
            layer_norm_epsilon: self.layer_norm_epsilon,
            activation,
            gated,
        })
    }
}
