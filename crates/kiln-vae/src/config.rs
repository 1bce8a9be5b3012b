//! `vae/config.json` as diffusers' `AutoencoderKL.__init__` reads it
//! (`models/autoencoders/autoencoder_kl.py`), with the same defaults.

use std::collections::BTreeMap;
use std::path::Path;

use kiln_nn::LoadError;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::ConfigError;

/// `sample_size`: an int, or (as some configs write it) a `[height, width]` list.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum SampleSize {
    Square(usize),
    List(Vec<usize>),
}

impl SampleSize {
    /// The size diffusers derives the latent tile from: the int, or the list's first element.
    pub fn first(&self) -> Option<usize> {
        match self {
            SampleSize::Square(s) => Some(*s),
            SampleSize::List(l) => l.first().copied(),
        }
    }
}

impl std::fmt::Display for SampleSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SampleSize::Square(s) => write!(f, "{s}"),
            SampleSize::List(l) => write!(f, "{l:?}"),
        }
    }
}

/// diffusers' `AutoencoderKL` config. Keys missing from the file take diffusers' defaults; keys
/// kiln does not know are kept in [`extra`](Self::extra) and logged at debug level.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoencoderKLConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub act_fn: String,
    pub latent_channels: usize,
    pub norm_num_groups: usize,
    pub sample_size: SampleSize,
    /// Latents are `scaling_factor * (z - shift_factor)` for the UNet (applied by the pipeline).
    pub scaling_factor: f64,
    pub shift_factor: Option<f64>,
    pub latents_mean: Option<Vec<f64>>,
    pub latents_std: Option<Vec<f64>>,
    /// The VAE overflows in f16 (SDXL): pipelines decode in f32 (read by the pipeline).
    pub force_upcast: bool,
    pub use_quant_conv: bool,
    pub use_post_quant_conv: bool,
    pub mid_block_add_attention: bool,
    /// Keys of the file that are not `AutoencoderKL` arguments (including `_class_name`,
    /// `_diffusers_version`, `_name_or_path`).
    pub extra: BTreeMap<String, Value>,
}

impl Default for AutoencoderKLConfig {
    /// diffusers' `AutoencoderKL()` defaults (a one-level VAE, not SD's).
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            down_block_types: vec!["DownEncoderBlock2D".into()],
            up_block_types: vec!["UpDecoderBlock2D".into()],
            block_out_channels: vec![64],
            layers_per_block: 1,
            act_fn: "silu".into(),
            latent_channels: 4,
            norm_num_groups: 32,
            sample_size: SampleSize::Square(32),
            scaling_factor: 0.18215,
            shift_factor: None,
            latents_mean: None,
            latents_std: None,
            force_upcast: true,
            use_quant_conv: true,
            use_post_quant_conv: true,
            mid_block_add_attention: true,
            extra: BTreeMap::new(),
        }
    }
}

fn field<T: DeserializeOwned>(key: &str, value: Value, expected: &str) -> Result<T, ConfigError> {
    serde_json::from_value(value.clone()).map_err(|_| ConfigError::new(key, value, format!("expected {expected}")))
}

impl AutoencoderKLConfig {
    /// Reads and validates a `config.json`; errors name the file and the key.
    pub fn from_file(path: &Path) -> Result<Self, LoadError> {
        let map: Map<String, Value> = kiln_nn::read_config(path)?;
        let config =
            Self::from_map(map).map_err(|e| LoadError::Unsupported { path: path.into(), message: e.to_string() })?;
        for key in config.extra.keys().filter(|k| !k.starts_with('_')) {
            log::debug!("{}: ignoring unknown AutoencoderKL config key {key:?}", path.display());
        }
        Ok(config)
    }

    /// Parses a config from JSON text (no file involved), validated.
    pub fn from_json_str(text: &str) -> Result<Self, ConfigError> {
        let map: Map<String, Value> = serde_json::from_str(text)
            .map_err(|e| ConfigError::new("config", "<json>", format!("not a JSON object: {e}")))?;
        Self::from_map(map)
    }

    /// Builds a config from the keys of a parsed `config.json` (diffusers' defaults for the keys
    /// it lacks), validated. A value of the wrong type is an error naming its key.
    pub fn from_map(map: Map<String, Value>) -> Result<Self, ConfigError> {
        let mut c = Self::default();
        for (key, v) in map {
            let k = key.as_str();
            match k {
                "in_channels" => c.in_channels = field(k, v, "a non-negative integer")?,
                "out_channels" => c.out_channels = field(k, v, "a non-negative integer")?,
                "down_block_types" => c.down_block_types = field(k, v, "a list of strings")?,
                "up_block_types" => c.up_block_types = field(k, v, "a list of strings")?,
                "block_out_channels" => c.block_out_channels = field(k, v, "a list of non-negative integers")?,
                "layers_per_block" => c.layers_per_block = field(k, v, "a non-negative integer")?,
                "act_fn" => c.act_fn = field(k, v, "a string")?,
                "latent_channels" => c.latent_channels = field(k, v, "a non-negative integer")?,
                "norm_num_groups" => c.norm_num_groups = field(k, v, "a non-negative integer")?,
                "sample_size" => c.sample_size = field(k, v, "an integer or a list of integers")?,
                "scaling_factor" => c.scaling_factor = field(k, v, "a number")?,
                "shift_factor" => c.shift_factor = field(k, v, "a number or null")?,
                "latents_mean" => c.latents_mean = field(k, v, "a list of numbers or null")?,
                "latents_std" => c.latents_std = field(k, v, "a list of numbers or null")?,
                "force_upcast" => c.force_upcast = field(k, v, "true or false")?,
                "use_quant_conv" => c.use_quant_conv = field(k, v, "true or false")?,
                "use_post_quant_conv" => c.use_post_quant_conv = field(k, v, "true or false")?,
                "mid_block_add_attention" => c.mid_block_add_attention = field(k, v, "true or false")?,
                _ => {
                    c.extra.insert(key, v);
                }
            }
        }
        c.validate()?;
        Ok(c)
    }

    /// Spatial factor between image and latents: `2^(len(block_out_channels) - 1)` (8 for SD).
    pub fn downsample_factor(&self) -> usize {
        1 << self.block_out_channels.len().saturating_sub(1)
    }

    /// diffusers' `tile_sample_min_size` (`sample_size`; with a list, its first element).
    pub fn tile_sample_min_size(&self) -> usize {
        self.sample_size.first().unwrap_or(0)
    }

    /// diffusers' `tile_latent_min_size = int(sample_size / 2^(len(block_out_channels) - 1))`.
    pub fn tile_latent_min_size(&self) -> usize {
        self.tile_sample_min_size() / self.downsample_factor()
    }

    /// Checks every value kiln needs to build the model; the error names the key and value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(class) = self.extra.get("_class_name")
            && class.as_str() != Some("AutoencoderKL")
        {
            return Err(ConfigError::new("_class_name", class, "kiln-vae builds AutoencoderKL only"));
        }
        for (key, v) in [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("latent_channels", self.latent_channels),
            ("layers_per_block", self.layers_per_block),
            ("norm_num_groups", self.norm_num_groups),
        ] {
            if v == 0 {
                return Err(ConfigError::new(key, v, "must be at least 1"));
            }
        }
        // diffusers' get_activation: "swish" and "silu" are both nn.SiLU; the shared ResnetBlock2D
        // implements SiLU only.
        if !matches!(self.act_fn.as_str(), "silu" | "swish") {
            return Err(ConfigError::new("act_fn", format!("{:?}", self.act_fn), "supported: \"silu\", \"swish\""));
        }
        let n = self.block_out_channels.len();
        if n == 0 || self.block_out_channels.contains(&0) {
            return Err(ConfigError::new(
                "block_out_channels",
                format!("{:?}", self.block_out_channels),
                "needs at least one level, each with at least 1 channel",
            ));
        }
        if n > 16 {
            return Err(ConfigError::new(
                "block_out_channels",
                format!("{:?}", self.block_out_channels),
                "too many levels",
            ));
        }
        for (key, types, want) in [
            ("down_block_types", &self.down_block_types, "DownEncoderBlock2D"),
            ("up_block_types", &self.up_block_types, "UpDecoderBlock2D"),
        ] {
            if let Some(t) = types.iter().find(|t| t.as_str() != want) {
                return Err(ConfigError::new(
                    key,
                    format!("{types:?}"),
                    format!("block type {t:?} is not supported (only {want})"),
                ));
            }
            if types.len() != n {
                return Err(ConfigError::new(
                    key,
                    format!("{types:?}"),
                    format!("has {} entries but block_out_channels has {n}", types.len()),
                ));
            }
        }
        // bounds far above any published VAE, so sizes computed from them cannot overflow
        for (key, values, max) in [
            ("in_channels", vec![self.in_channels], 1 << 16),
            ("out_channels", vec![self.out_channels], 1 << 16),
            ("latent_channels", vec![self.latent_channels], 1 << 16),
            ("block_out_channels", self.block_out_channels.clone(), 1 << 16),
            ("layers_per_block", vec![self.layers_per_block], 256),
        ] {
            if values.iter().any(|&v| v > max) {
                return Err(ConfigError::new(key, format!("{values:?}"), format!("every value must be at most {max}")));
            }
        }
        let g = self.norm_num_groups;
        for (key, c) in self.block_out_channels.iter().map(|c| ("block_out_channels", *c)) {
            if c % g != 0 {
                return Err(ConfigError::new(
                    "norm_num_groups",
                    g,
                    format!("does not divide {key} entry {c} (GroupNorm needs channels divisible by groups)"),
                ));
            }
        }
        match &self.sample_size {
            SampleSize::Square(s) if (1..=1 << 17).contains(s) => {}
            SampleSize::List(l) if !l.is_empty() && l.iter().all(|s| (1..=1 << 17).contains(s)) => {}
            other => {
                return Err(ConfigError::new("sample_size", other, "must be a positive int or list of positive ints, at most 131072"));
            }
        }
        if self.tile_latent_min_size() == 0 {
            return Err(ConfigError::new(
                "sample_size",
                &self.sample_size,
                format!("is smaller than the downsampling factor {}", self.downsample_factor()),
            ));
        }
        if !self.scaling_factor.is_finite() || self.scaling_factor == 0.0 {
            return Err(ConfigError::new("scaling_factor", self.scaling_factor, "must be finite and non-zero"));
        }
        if let Some(s) = self.shift_factor
            && !s.is_finite()
        {
            return Err(ConfigError::new("shift_factor", s, "must be finite"));
        }
        for (key, list) in [("latents_mean", &self.latents_mean), ("latents_std", &self.latents_std)] {
            if let Some(l) = list
                && l.len() != self.latent_channels
            {
                return Err(ConfigError::new(
                    key,
                    format!("{l:?}"),
                    format!("needs one value per latent channel ({})", self.latent_channels),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_diffusers() {
        let c = AutoencoderKLConfig::from_json_str("{}").unwrap();
        assert_eq!(c, AutoencoderKLConfig::default());
        assert_eq!(c.tile_sample_min_size(), 32);
        assert_eq!(c.tile_latent_min_size(), 32);
        c.validate().unwrap();
    }

    #[test]
    fn unsupported_values_are_named() {
        let cases = [
            (r#"{"act_fn": "gelu"}"#, "act_fn"),
            (r#"{"down_block_types": ["AttnDownEncoderBlock2D"]}"#, "down_block_types"),
            (r#"{"up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"]}"#, "up_block_types"),
            (r#"{"norm_num_groups": 7}"#, "norm_num_groups"),
            (r#"{"block_out_channels": []}"#, "block_out_channels"),
            (r#"{"sample_size": 0}"#, "sample_size"),
            (r#"{"latent_channels": 0}"#, "latent_channels"),
            (r#"{"latents_mean": [0.1, 0.2]}"#, "latents_mean"),
            (r#"{"_class_name": "AutoencoderTiny"}"#, "_class_name"),
            (r#"{"layers_per_block": "two"}"#, "layers_per_block"),
            (r#"{"scaling_factor": null}"#, "scaling_factor"),
            (r#"[1, 2]"#, "JSON object"),
        ];
        for (json, key) in cases {
            let err = AutoencoderKLConfig::from_json_str(json).unwrap_err().to_string();
            assert!(err.contains(key), "{json}: {err}");
        }
    }

    #[test]
    fn sample_size_list_and_unknown_keys() {
        let c = AutoencoderKLConfig::from_json_str(
            r#"{"sample_size": [256, 192], "block_out_channels": [32, 64], "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
                "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"], "some_new_key": 1, "shift_factor": 0.0609, "_class_name": "AutoencoderKL"}"#,
        )
        .unwrap();
        assert_eq!(c.tile_sample_min_size(), 256);
        assert_eq!(c.tile_latent_min_size(), 128);
        assert_eq!(c.shift_factor, Some(0.0609));
        assert!(c.extra.contains_key("some_new_key"));
    }
}
