//! `text_encoder*/config.json`: transformers' `CLIPTextConfig` (`models/clip/configuration_clip.py`,
//! transformers 5.24), read with the same defaults.

use std::collections::BTreeMap;
use std::path::Path;

use kiln_nn::LoadError;
use serde::Deserialize;

/// The model class a config asks for (`architectures[0]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClipArchitecture {
    /// `CLIPTextModel`: hidden states and the pooled output (SD 1.x, SD 2.x, SDXL's first encoder).
    TextModel,
    /// `CLIPTextModelWithProjection`: adds `text_projection` (SDXL's second encoder).
    WithProjection,
}

/// The activation of the MLP (`hidden_act`, transformers' `ACT2FN`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `quick_gelu`: `x * sigmoid(1.702 x)` (OpenAI CLIP: SD 1.x, SDXL's first encoder).
    QuickGelu,
    /// `gelu`: exact, erf-based (OpenCLIP: SD 2.x, SDXL's bigG).
    Gelu,
    /// `gelu_new` / `gelu_pytorch_tanh`: the tanh approximation.
    GeluTanh,
    /// `relu`.
    Relu,
}

impl Activation {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "quick_gelu" => Self::QuickGelu,
            "gelu" => Self::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" => Self::GeluTanh,
            "relu" => Self::Relu,
            _ => return None,
        })
    }
}

/// `CLIPTextConfig` with transformers' defaults. Keys kiln does not use (dropout, initializer
/// ranges, dtype, version stamps) are accepted; unknown keys are logged at debug level.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct ClipTextConfig {
    pub architectures: Option<Vec<String>>,
    pub model_type: Option<String>,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub projection_dim: Option<usize>,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
    pub pad_token_id: Option<i64>,
    pub bos_token_id: Option<i64>,
    /// An integer in every CLIP text config; transformers also types it as a list, which its
    /// pooling cannot use (rejected by [`ClipTextConfig::validate`]).
    pub eos_token_id: serde_json::Value,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

impl Default for ClipTextConfig {
    fn default() -> Self {
        Self {
            architectures: None,
            model_type: None,
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            projection_dim: Some(512),
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
            pad_token_id: Some(1),
            bos_token_id: Some(49406),
            eos_token_id: serde_json::Value::from(49407),
            other: BTreeMap::new(),
        }
    }
}

/// Keys of a saved `CLIPTextConfig` that do not change inference.
const IGNORED_KEYS: &[&str] = &[
    "_name_or_path",
    "attention_dropout",
    "dropout",
    "dtype",
    "torch_dtype",
    "initializer_factor",
    "initializer_range",
    "transformers_version",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
    "use_cache",
    "id2label",
    "label2id",
];

/// A validated config: the values the model is built from.
#[derive(Clone, Debug)]
pub struct ResolvedClipConfig {
    pub architecture: ClipArchitecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub projection_dim: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub activation: Activation,
    pub layer_norm_eps: f64,
    pub eos_token_id: i64,
}

impl ClipTextConfig {
    /// Reads `config.json` (see [`kiln_nn::read_config`]) and validates it.
    pub fn from_file(path: &Path) -> Result<ResolvedClipConfig, LoadError> {
        let config: Self = kiln_nn::read_config(path)?;
        config.validate(path)
    }

    /// Parses `config.json`'s text (`label` names it in errors) and validates it.
    pub fn from_json_str(text: &str, label: &Path) -> Result<ResolvedClipConfig, LoadError> {
        let config: Self = serde_json::from_str(text).map_err(|source| LoadError::Config { path: label.into(), source })?;
        config.validate(label)
    }

    /// Checks every value kiln depends on; unsupported values are an error naming the key.
    pub fn validate(&self, path: &Path) -> Result<ResolvedClipConfig, LoadError> {
        let bad = |message: String| LoadError::Unsupported { path: path.into(), message };
        for key in self.other.keys() {
            if !IGNORED_KEYS.contains(&key.as_str()) {
                log::debug!("{}: ignoring unknown key {key:?}", path.display());
            }
        }
        if let Some(model_type) = &self.model_type
            && model_type != "clip_text_model"
        {
            return Err(bad(format!(
                "model_type = {model_type:?}: only a CLIP text model config (\"clip_text_model\") is supported"
            )));
        }
        let architecture = match self.architectures.as_deref().and_then(|a| a.first()).map(String::as_str) {
            None | Some("CLIPTextModel") => ClipArchitecture::TextModel,
            Some("CLIPTextModelWithProjection") => ClipArchitecture::WithProjection,
            Some(other) => {
                return Err(bad(format!(
                    "architectures = [{other:?}]: kiln supports CLIPTextModel and CLIPTextModelWithProjection"
                )));
            }
        };
        let activation = Activation::parse(&self.hidden_act).ok_or_else(|| {
            bad(format!(
                "hidden_act = {:?}: supported are quick_gelu, gelu, gelu_new, gelu_pytorch_tanh, relu",
                self.hidden_act
            ))
        })?;
        for (key, value) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_attention_heads", self.num_attention_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if value == 0 {
                return Err(bad(format!("{key} = 0")));
            }
        }
        // bounds far above any published CLIP (bigG: hidden 1280, 32 layers, 49408 tokens), so
        // the model built from them cannot ask for absurd sizes
        for (key, value, max) in [
            ("vocab_size", self.vocab_size, 1 << 22),
            ("hidden_size", self.hidden_size, 1 << 16),
            ("intermediate_size", self.intermediate_size, 1 << 18),
            ("num_attention_heads", self.num_attention_heads, 1 << 12),
            ("num_hidden_layers", self.num_hidden_layers, 256),
            ("max_position_embeddings", self.max_position_embeddings, 1 << 16),
            ("projection_dim", self.projection_dim.unwrap_or(0), 1 << 16),
        ] {
            if value > max {
                return Err(bad(format!("{key} = {value}: at most {max}")));
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(bad(format!(
                "hidden_size = {} is not a multiple of num_attention_heads = {}",
                self.hidden_size, self.num_attention_heads
            )));
        }
        let eos_token_id = self.eos_token_id.as_i64().ok_or_else(|| {
            bad(format!("eos_token_id = {}: the pooled output needs a single integer id", self.eos_token_id))
        })?;
        if !(self.layer_norm_eps > 0.0 && self.layer_norm_eps.is_finite()) {
            return Err(bad(format!("layer_norm_eps = {}", self.layer_norm_eps)));
        }
        let projection_dim = match (architecture, self.projection_dim) {
            (ClipArchitecture::WithProjection, None | Some(0)) => {
                return Err(bad("CLIPTextModelWithProjection needs projection_dim".into()));
            }
            (_, p) => p.unwrap_or(0),
        };
        Ok(ResolvedClipConfig {
            architecture,
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            projection_dim,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            max_position_embeddings: self.max_position_embeddings,
            activation,
            layer_norm_eps: self.layer_norm_eps,
            eos_token_id,
        })
    }
}
