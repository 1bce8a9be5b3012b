//! `transformer/config.json` of FLUX.1: diffusers' `FluxTransformer2DModel` config
//! (`models/transformers/transformer_flux.py`), with its defaults.

use std::collections::BTreeMap;
use std::path::Path;

use kiln_nn::LoadError;
use serde::Deserialize;

/// `FluxTransformer2DModel`'s `__init__` arguments.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct FluxTransformerConfig {
    #[serde(rename = "_class_name")]
    pub class_name: Option<String>,
    pub patch_size: usize,
    pub in_channels: usize,
    pub out_channels: Option<usize>,
    pub num_layers: usize,
    pub num_single_layers: usize,
    pub attention_head_dim: usize,
    pub num_attention_heads: usize,
    pub joint_attention_dim: usize,
    pub pooled_projection_dim: usize,
    pub guidance_embeds: bool,
    pub axes_dims_rope: Vec<usize>,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

impl Default for FluxTransformerConfig {
    fn default() -> Self {
        Self {
            class_name: None,
            patch_size: 1,
            in_channels: 64,
            out_channels: None,
            num_layers: 19,
            num_single_layers: 38,
            attention_head_dim: 128,
            num_attention_heads: 24,
            joint_attention_dim: 4096,
            pooled_projection_dim: 768,
            guidance_embeds: false,
            axes_dims_rope: vec![16, 56, 56],
            other: BTreeMap::new(),
        }
    }
}

impl FluxTransformerConfig {
    /// Reads `config.json` (see [`kiln_nn::read_config`]) and validates it.
    pub fn from_file(path: &Path) -> Result<Self, LoadError> {
        let config: Self = kiln_nn::read_config(path)?;
        config.validate(path)?;
        Ok(config)
    }

    /// `num_attention_heads · attention_head_dim`.
    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    /// `out_channels or in_channels`.
    pub fn out_channels(&self) -> usize {
        self.out_channels.filter(|&c| c > 0).unwrap_or(self.in_channels)
    }

    /// The three RoPE axes (id 0, row, column).
    pub fn axes(&self) -> [usize; 3] {
        [self.axes_dims_rope[0], self.axes_dims_rope[1], self.axes_dims_rope[2]]
    }

    /// Checks every value kiln depends on; unsupported values are an error naming the key.
    pub fn validate(&self, path: &Path) -> Result<(), LoadError> {
        let bad = |message: String| LoadError::Unsupported { path: path.into(), message };
        if let Some(class) = &self.class_name
            && class != "FluxTransformer2DModel"
        {
            return Err(bad(format!("_class_name = {class:?}: kiln's FLUX transformer is FluxTransformer2DModel")));
        }
        // bounds far above FLUX.1 (19 + 38 layers, 24 heads of 128)
        for (key, value, max) in [
            ("patch_size", self.patch_size, 64),
            ("in_channels", self.in_channels, 1 << 14),
            ("out_channels", self.out_channels(), 1 << 14),
            ("num_layers", self.num_layers, 512),
            ("num_single_layers", self.num_single_layers, 512),
            ("attention_head_dim", self.attention_head_dim, 1 << 12),
            ("num_attention_heads", self.num_attention_heads, 1 << 10),
            ("joint_attention_dim", self.joint_attention_dim, 1 << 16),
            ("pooled_projection_dim", self.pooled_projection_dim, 1 << 16),
        ] {
            if value > max || (value == 0 && key != "num_layers" && key != "num_single_layers") {
                return Err(bad(format!("{key} = {value}: expected 1..={max}")));
            }
        }
        if self.inner_dim() > 1 << 16 {
            return Err(bad(format!("num_attention_heads × attention_head_dim = {}: at most 65536", self.inner_dim())));
        }
        if self.axes_dims_rope.len() != 3
            || self.axes_dims_rope.iter().any(|d| d % 2 != 0)
            || self.axes_dims_rope.iter().sum::<usize>() != self.attention_head_dim
        {
            return Err(bad(format!(
                "axes_dims_rope = {:?}: expected three even widths adding up to attention_head_dim = {}",
                self.axes_dims_rope, self.attention_head_dim
            )));
        }
        if self.patch_size != 1 {
            return Err(bad(format!(
                "patch_size = {}: FLUX packs 2×2 latent patches in the pipeline and runs the transformer with patch_size 1",
                self.patch_size
            )));
        }
        Ok(())
    }
}
