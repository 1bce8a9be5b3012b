//! `transformer/config.json` of SD 3/3.5: diffusers' `SD3Transformer2DModel` config
//! (`models/transformers/transformer_sd3.py`), with its defaults.

use std::collections::BTreeMap;
use std::path::Path;

use kiln_nn::LoadError;
use serde::Deserialize;

/// `SD3Transformer2DModel`'s `__init__` arguments. Keys kiln does not use (`_diffusers_version`,
/// `_name_or_path`, ...) are accepted and ignored.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct Sd3TransformerConfig {
    #[serde(rename = "_class_name")]
    pub class_name: Option<String>,
    pub sample_size: usize,
    pub patch_size: usize,
    pub in_channels: usize,
    pub num_layers: usize,
    pub attention_head_dim: usize,
    pub num_attention_heads: usize,
    pub joint_attention_dim: usize,
    pub caption_projection_dim: usize,
    pub pooled_projection_dim: usize,
    pub out_channels: Option<usize>,
    pub pos_embed_max_size: usize,
    pub dual_attention_layers: Vec<usize>,
    pub qk_norm: Option<String>,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

impl Default for Sd3TransformerConfig {
    fn default() -> Self {
        Self {
            class_name: None,
            sample_size: 128,
            patch_size: 2,
            in_channels: 16,
            num_layers: 18,
            attention_head_dim: 64,
            num_attention_heads: 18,
            joint_attention_dim: 4096,
            caption_projection_dim: 1152,
            pooled_projection_dim: 2048,
            out_channels: Some(16),
            pos_embed_max_size: 96,
            dual_attention_layers: Vec::new(),
            qk_norm: None,
            other: BTreeMap::new(),
        }
    }
}

impl Sd3TransformerConfig {
    /// Reads `config.json` (see [`kiln_nn::read_config`]) and validates it.
    pub fn from_file(path: &Path) -> Result<Self, LoadError> {
        let config: Self = kiln_nn::read_config(path)?;
        config.validate(path)?;
        Ok(config)
    }

    /// `num_attention_heads · attention_head_dim`: the width of the token streams.
    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    /// `out_channels`, or `in_channels` where the config says null.
    pub fn out_channels(&self) -> usize {
        self.out_channels.unwrap_or(self.in_channels)
    }

    /// `qk_norm = "rms_norm"` (SD 3.5) or none (SD 3.0).
    pub fn qk_rms_norm(&self) -> bool {
        self.qk_norm.as_deref() == Some("rms_norm")
    }

    /// Checks every value kiln depends on; unsupported values are an error naming the key.
    pub fn validate(&self, path: &Path) -> Result<(), LoadError> {
        let bad = |message: String| LoadError::Unsupported { path: path.into(), message };
        if let Some(class) = &self.class_name
            && class != "SD3Transformer2DModel"
        {
            return Err(bad(format!("_class_name = {class:?}: kiln's SD 3 transformer is SD3Transformer2DModel")));
        }
        // bounds far above SD 3.5 Large (38 layers, 38 heads of 64, position table 192)
        for (key, value, max) in [
            ("sample_size", self.sample_size, 1 << 14),
            ("patch_size", self.patch_size, 64),
            ("in_channels", self.in_channels, 1 << 12),
            ("num_layers", self.num_layers, 512),
            ("attention_head_dim", self.attention_head_dim, 1 << 12),
            ("num_attention_heads", self.num_attention_heads, 1 << 10),
            ("joint_attention_dim", self.joint_attention_dim, 1 << 16),
            ("caption_projection_dim", self.caption_projection_dim, 1 << 16),
            ("pooled_projection_dim", self.pooled_projection_dim, 1 << 16),
            ("out_channels", self.out_channels(), 1 << 12),
            ("pos_embed_max_size", self.pos_embed_max_size, 1 << 12),
        ] {
            if value == 0 || value > max {
                return Err(bad(format!("{key} = {value}: expected 1..={max}")));
            }
        }
        if self.inner_dim() > 1 << 16 || self.inner_dim() % 4 != 0 {
            return Err(bad(format!(
                "num_attention_heads × attention_head_dim = {}: expected a multiple of 4 (the 2-D sin-cos table) up to 65536",
                self.inner_dim()
            )));
        }
        // the text tokens join the image tokens' attention, so they must have its width
        if self.caption_projection_dim != self.inner_dim() {
            return Err(bad(format!(
                "caption_projection_dim = {} differs from num_attention_heads × attention_head_dim = {}",
                self.caption_projection_dim,
                self.inner_dim()
            )));
        }
        if let Some(&l) = self.dual_attention_layers.iter().find(|&&l| l >= self.num_layers) {
            return Err(bad(format!("dual_attention_layers names layer {l}; the model has {} layers", self.num_layers)));
        }
        match self.qk_norm.as_deref() {
            None | Some("rms_norm") => {}
            Some(other) => return Err(bad(format!("qk_norm = {other:?}: supported are null (SD 3.0) and \"rms_norm\" (SD 3.5)"))),
        }
        Ok(())
    }
}
