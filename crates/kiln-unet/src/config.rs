//! `unet/config.json` as diffusers reads it (`UNet2DConditionModel.__init__` in
//! `models/unets/unet_2d_condition.py`).
//!
//! Keys the file lacks take diffusers' defaults; `null` in a boolean key means `False`, as it does
//! in Python (SDXL ships `"upcast_attention": null`). Keys that select something kiln does not
//! implement (other block types, class embeddings, `scale_shift` resnets, ...) are rejected with a
//! [`ConfigError`] naming the key and its value. Keys that have no effect on the supported blocks
//! (`dropout`, `resnet_skip_time_act`, `resnet_out_scale_factor`, `cross_attention_norm`,
//! `mid_block_only_cross_attention`, `addition_embed_type_num_heads`) are accepted; unknown keys
//! are ignored with a `log::debug!`.

use serde::Deserialize;
use serde_json::{Map, Value};
use thiserror::Error;

/// A config value kiln cannot run, or a config diffusers itself would reject.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("unsupported value in the UNet config: {key} = {value} ({reason})")]
    Unsupported { key: String, value: String, reason: String },
    #[error("invalid UNet config: {key} = {value} ({reason})")]
    Invalid { key: String, value: String, reason: String },
    #[error("malformed UNet config: {0}")]
    Json(#[from] serde_json::Error),
}

/// The largest channel count a config may give (SDXL's largest is 1280).
const MAX_CHANNELS: usize = 1 << 16;
/// The largest layer count per block (SDXL's largest is 10).
const MAX_LAYERS: usize = 256;
/// The most down (and up) blocks (published UNets have 3 or 4).
const MAX_BLOCKS: usize = 64;
/// The most resnets and transformer blocks in all (SDXL's UNet has 17 resnets and 70
/// transformer blocks). Each is built (with its weights left lazy) before a weight is read, so
/// the per-block bounds alone let a config of a few bytes ask for ~40000 transformer blocks and
/// most of a GiB of module structure (found by kiln-fuzz).
const MAX_TOTAL_LAYERS: usize = 4096;
/// The largest `sample_size`, in latent pixels (SDXL's is 128; 16384 latent pixels are 131072
/// image pixels).
pub const MAX_SAMPLE_SIZE: usize = 1 << 14;

fn unsupported(key: &str, value: impl serde::Serialize, reason: impl Into<String>) -> ConfigError {
    ConfigError::Unsupported { key: key.into(), value: show(value), reason: reason.into() }
}

fn invalid(key: &str, value: impl serde::Serialize, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), value: show(value), reason: reason.into() }
}

fn show(value: impl serde::Serialize) -> String {
    serde_json::to_string(&value).unwrap_or_else(|_| "?".into())
}

/// An integer (or bool) given once for every block, or a list with one entry per block.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(untagged)]
pub enum PerBlock<T> {
    One(T),
    List(Vec<T>),
}

impl<T: Clone + serde::Serialize> PerBlock<T> {
    /// Expands to `n` entries; a list must have exactly `n`.
    fn expand(&self, key: &str, n: usize) -> Result<Vec<T>, ConfigError> {
        match self {
            PerBlock::One(v) => Ok(vec![v.clone(); n]),
            PerBlock::List(list) if list.len() == n => Ok(list.clone()),
            PerBlock::List(list) => Err(invalid(
                key,
                list,
                format!("needs one entry per block: {} entries for {n} down blocks", list.len()),
            )),
        }
    }
}

fn null_is_false<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(d)?.unwrap_or(false))
}

/// The keys of `unet/config.json`, with diffusers' defaults.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(default)]
pub struct UNet2DConditionConfig {
    /// Default latent size (`int` or `[h, w]`); informational.
    pub sample_size: Option<PerBlock<usize>>,
    pub in_channels: usize,
    pub out_channels: usize,
    #[serde(deserialize_with = "null_is_false")]
    pub center_input_sample: bool,
    #[serde(deserialize_with = "null_is_false")]
    pub flip_sin_to_cos: bool,
    pub freq_shift: f64,
    pub down_block_types: Vec<String>,
    pub mid_block_type: Option<String>,
    pub up_block_types: Vec<String>,
    pub only_cross_attention: PerBlock<bool>,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: PerBlock<usize>,
    pub downsample_padding: usize,
    pub mid_block_scale_factor: f64,
    pub dropout: f64,
    pub act_fn: String,
    pub norm_num_groups: Option<usize>,
    pub norm_eps: f64,
    pub cross_attention_dim: PerBlock<usize>,
    /// An int or a per-block list (SDXL `[1, 2, 10]`); lists of lists (asymmetric UNets) are not
    /// supported.
    pub transformer_layers_per_block: Value,
    pub reverse_transformer_layers_per_block: Option<Value>,
    pub encoder_hid_dim: Option<usize>,
    pub encoder_hid_dim_type: Option<String>,
    /// diffusers' legacy meaning: the number of attention heads when `num_attention_heads` is
    /// absent (diffusers issue #2011).
    pub attention_head_dim: PerBlock<usize>,
    pub num_attention_heads: Option<PerBlock<usize>>,
    #[serde(deserialize_with = "null_is_false")]
    pub dual_cross_attention: bool,
    #[serde(deserialize_with = "null_is_false")]
    pub use_linear_projection: bool,
    pub class_embed_type: Option<String>,
    pub addition_embed_type: Option<String>,
    pub addition_time_embed_dim: Option<usize>,
    pub num_class_embeds: Option<usize>,
    #[serde(deserialize_with = "null_is_false")]
    pub upcast_attention: bool,
    pub resnet_time_scale_shift: String,
    #[serde(deserialize_with = "null_is_false")]
    pub resnet_skip_time_act: bool,
    pub resnet_out_scale_factor: f64,
    pub time_embedding_type: String,
    pub time_embedding_dim: Option<usize>,
    pub time_embedding_act_fn: Option<String>,
    pub timestep_post_act: Option<String>,
    pub time_cond_proj_dim: Option<usize>,
    pub conv_in_kernel: usize,
    pub conv_out_kernel: usize,
    pub projection_class_embeddings_input_dim: Option<usize>,
    pub attention_type: String,
    #[serde(deserialize_with = "null_is_false")]
    pub class_embeddings_concat: bool,
    pub mid_block_only_cross_attention: Option<bool>,
    pub cross_attention_norm: Option<String>,
    pub addition_embed_type_num_heads: usize,
}

impl Default for UNet2DConditionConfig {
    /// diffusers' defaults (the SD 1.x layout).
    fn default() -> Self {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        Self {
            sample_size: None,
            in_channels: 4,
            out_channels: 4,
            center_input_sample: false,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            down_block_types: s(&[
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "DownBlock2D",
            ]),
            mid_block_type: Some("UNetMidBlock2DCrossAttn".into()),
            up_block_types: s(&["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]),
            only_cross_attention: PerBlock::One(false),
            block_out_channels: vec![320, 640, 1280, 1280],
            layers_per_block: PerBlock::One(2),
            downsample_padding: 1,
            mid_block_scale_factor: 1.0,
            dropout: 0.0,
            act_fn: "silu".into(),
            norm_num_groups: Some(32),
            norm_eps: 1e-5,
            cross_attention_dim: PerBlock::One(1280),
            transformer_layers_per_block: Value::from(1),
            reverse_transformer_layers_per_block: None,
            encoder_hid_dim: None,
            encoder_hid_dim_type: None,
            attention_head_dim: PerBlock::One(8),
            num_attention_heads: None,
            dual_cross_attention: false,
            use_linear_projection: false,
            class_embed_type: None,
            addition_embed_type: None,
            addition_time_embed_dim: None,
            num_class_embeds: None,
            upcast_attention: false,
            resnet_time_scale_shift: "default".into(),
            resnet_skip_time_act: false,
            resnet_out_scale_factor: 1.0,
            time_embedding_type: "positional".into(),
            time_embedding_dim: None,
            time_embedding_act_fn: None,
            timestep_post_act: None,
            time_cond_proj_dim: None,
            conv_in_kernel: 3,
            conv_out_kernel: 3,
            projection_class_embeddings_input_dim: None,
            attention_type: "default".into(),
            class_embeddings_concat: false,
            mid_block_only_cross_attention: None,
            cross_attention_norm: None,
            addition_embed_type_num_heads: 64,
        }
    }
}

/// Keys diffusers' `UNet2DConditionModel.__init__` takes (and so may appear in a config).
const KNOWN_KEYS: &[&str] = &[
    "sample_size",
    "in_channels",
    "out_channels",
    "center_input_sample",
    "flip_sin_to_cos",
    "freq_shift",
    "down_block_types",
    "mid_block_type",
    "up_block_types",
    "only_cross_attention",
    "block_out_channels",
    "layers_per_block",
    "downsample_padding",
    "mid_block_scale_factor",
    "dropout",
    "act_fn",
    "norm_num_groups",
    "norm_eps",
    "cross_attention_dim",
    "transformer_layers_per_block",
    "reverse_transformer_layers_per_block",
    "encoder_hid_dim",
    "encoder_hid_dim_type",
    "attention_head_dim",
    "num_attention_heads",
    "dual_cross_attention",
    "use_linear_projection",
    "class_embed_type",
    "addition_embed_type",
    "addition_time_embed_dim",
    "num_class_embeds",
    "upcast_attention",
    "resnet_time_scale_shift",
    "resnet_skip_time_act",
    "resnet_out_scale_factor",
    "time_embedding_type",
    "time_embedding_dim",
    "time_embedding_act_fn",
    "timestep_post_act",
    "time_cond_proj_dim",
    "conv_in_kernel",
    "conv_out_kernel",
    "projection_class_embeddings_input_dim",
    "attention_type",
    "class_embeddings_concat",
    "mid_block_only_cross_attention",
    "cross_attention_norm",
    "addition_embed_type_num_heads",
];

/// One down or up block, resolved from the per-block config lists.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BlockPlan {
    /// CrossAttn{Down,Up}Block2D (true) or {Down,Up}Block2D (false).
    pub cross_attention: bool,
    pub in_channels: usize,
    pub out_channels: usize,
    /// Up blocks: channels coming from the block below.
    pub prev_output_channels: usize,
    /// Number of resnets.
    pub layers: usize,
    pub transformer_layers: usize,
    pub heads: usize,
    pub cross_attention_dim: usize,
    /// Ends with a Downsample2D / Upsample2D.
    pub resample: bool,
}

impl BlockPlan {
    /// Its resnets and transformer blocks, plus one (a mid block's second resnet, another
    /// block's resampler).
    fn layer_count(&self) -> usize {
        let transformers = if self.cross_attention { self.layers * self.transformer_layers } else { 0 };
        self.layers + 1 + transformers
    }
}

/// The config after validation: what the model is built from.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Plan {
    pub down: Vec<BlockPlan>,
    /// The mid block (in = out = last block's channels, `layers` = 1).
    pub mid: BlockPlan,
    pub up: Vec<BlockPlan>,
    pub groups: usize,
    pub time_embed_dim: usize,
    /// `text_time` added conditioning: (addition_time_embed_dim, projection_class_embeddings_input_dim).
    pub text_time: Option<(usize, usize)>,
}

fn block_kind(key: &str, name: &str, cross: &str, plain: &str) -> Result<bool, ConfigError> {
    // get_down_block / get_up_block strip a "UNetRes" prefix
    let stripped = name.strip_prefix("UNetRes").unwrap_or(name);
    if stripped == cross {
        Ok(true)
    } else if stripped == plain {
        Ok(false)
    } else {
        Err(unsupported(key, name, format!("kiln supports {cross} and {plain}")))
    }
}

impl UNet2DConditionConfig {
    /// Parses `config.json` text.
    pub fn from_json_str(text: &str) -> Result<Self, ConfigError> {
        let value: Value = serde_json::from_str(text)?;
        let Value::Object(map) = value else {
            return Err(invalid("config", &value, "expected a JSON object"));
        };
        Self::from_map(map)
    }

    /// Builds a config from a parsed JSON object; unknown keys are logged and ignored.
    pub fn from_map(mut map: Map<String, Value>) -> Result<Self, ConfigError> {
        if let Some(class) = map.get("_class_name")
            && class.as_str() != Some("UNet2DConditionModel")
        {
            return Err(unsupported("_class_name", class, "kiln-unet implements UNet2DConditionModel"));
        }
        map.retain(|k, _| {
            let known = KNOWN_KEYS.contains(&k.as_str());
            if !known && !k.starts_with('_') {
                log::debug!("UNet config: ignoring unknown key {k}");
            }
            known
        });
        let config: Self = serde_json::from_value(Value::Object(map))?;
        config.plan()?;
        Ok(config)
    }

    /// Validates the config and resolves every per-block setting.
    pub(crate) fn plan(&self) -> Result<Plan, ConfigError> {
        let n = self.down_block_types.len();
        if n == 0 || n > MAX_BLOCKS {
            return Err(invalid("down_block_types", &self.down_block_types, format!("needs 1 to {MAX_BLOCKS} blocks")));
        }
        if self.up_block_types.len() != n {
            return Err(invalid(
                "up_block_types",
                &self.up_block_types,
                format!("needs as many entries as down_block_types ({n})"),
            ));
        }
        if self.block_out_channels.len() != n {
            return Err(invalid(
                "block_out_channels",
                &self.block_out_channels,
                format!("needs as many entries as down_block_types ({n})"),
            ));
        }
        let down_cross = self
            .down_block_types
            .iter()
            .map(|t| block_kind("down_block_types", t, "CrossAttnDownBlock2D", "DownBlock2D"))
            .collect::<Result<Vec<_>, _>>()?;
        let up_cross = self
            .up_block_types
            .iter()
            .map(|t| block_kind("up_block_types", t, "CrossAttnUpBlock2D", "UpBlock2D"))
            .collect::<Result<Vec<_>, _>>()?;
        match self.mid_block_type.as_deref() {
            Some("UNetMidBlock2DCrossAttn") => {}
            other => return Err(unsupported("mid_block_type", other, "kiln supports UNetMidBlock2DCrossAttn")),
        }

        // Things kiln does not implement.
        if self.only_cross_attention.expand("only_cross_attention", n)?.iter().any(|&b| b) {
            return Err(unsupported("only_cross_attention", &self.only_cross_attention, "kiln supports false"));
        }
        if !matches!(self.act_fn.as_str(), "silu" | "swish") {
            return Err(unsupported("act_fn", &self.act_fn, "kiln supports silu"));
        }
        if self.reverse_transformer_layers_per_block.is_some() {
            return Err(unsupported(
                "reverse_transformer_layers_per_block",
                &self.reverse_transformer_layers_per_block,
                "asymmetric UNets are not supported; kiln supports null",
            ));
        }
        if self.encoder_hid_dim.is_some() {
            return Err(unsupported("encoder_hid_dim", self.encoder_hid_dim, "kiln supports null"));
        }
        if self.encoder_hid_dim_type.is_some() {
            return Err(unsupported("encoder_hid_dim_type", &self.encoder_hid_dim_type, "kiln supports null"));
        }
        if self.dual_cross_attention {
            return Err(unsupported("dual_cross_attention", true, "kiln supports false"));
        }
        if self.class_embed_type.is_some() {
            return Err(unsupported(
                "class_embed_type",
                &self.class_embed_type,
                "class embeddings are not supported; kiln supports null",
            ));
        }
        if self.num_class_embeds.is_some() {
            return Err(unsupported(
                "num_class_embeds",
                self.num_class_embeds,
                "class embeddings are not supported; kiln supports null",
            ));
        }
        if self.class_embeddings_concat {
            return Err(unsupported("class_embeddings_concat", true, "kiln supports false"));
        }
        if self.resnet_time_scale_shift != "default" {
            return Err(unsupported(
                "resnet_time_scale_shift",
                &self.resnet_time_scale_shift,
                "kiln supports \"default\"",
            ));
        }
        if self.time_embedding_type != "positional" {
            return Err(unsupported("time_embedding_type", &self.time_embedding_type, "kiln supports \"positional\""));
        }
        if self.time_embedding_act_fn.is_some() {
            return Err(unsupported("time_embedding_act_fn", &self.time_embedding_act_fn, "kiln supports null"));
        }
        if self.timestep_post_act.is_some() {
            return Err(unsupported("timestep_post_act", &self.timestep_post_act, "kiln supports null"));
        }
        if self.time_cond_proj_dim.is_some() {
            return Err(unsupported(
                "time_cond_proj_dim",
                self.time_cond_proj_dim,
                "guidance-embedding (LCM-distilled) UNets are not supported; kiln supports null",
            ));
        }
        if self.attention_type != "default" {
            return Err(unsupported("attention_type", &self.attention_type, "kiln supports \"default\""));
        }
        for (key, k) in [("conv_in_kernel", self.conv_in_kernel), ("conv_out_kernel", self.conv_out_kernel)] {
            if k % 2 == 0 {
                return Err(unsupported(key, k, "kiln supports odd kernel sizes (same-size padding)"));
            }
        }
        if self.in_channels == 0 || self.out_channels == 0 {
            let key = if self.in_channels == 0 { "in_channels" } else { "out_channels" };
            return Err(invalid(key, 0, "must be at least 1"));
        }
        let Some(groups) = self.norm_num_groups else {
            return Err(unsupported("norm_num_groups", Value::Null, "kiln needs a group count"));
        };
        for &c in &self.block_out_channels {
            if groups == 0 || c == 0 || c % groups != 0 {
                return Err(invalid(
                    "block_out_channels",
                    &self.block_out_channels,
                    format!("every entry must be a positive multiple of norm_num_groups ({groups})"),
                ));
            }
        }
        let text_time = match self.addition_embed_type.as_deref() {
            None => None,
            Some("text_time") => {
                let Some(time_dim) = self.addition_time_embed_dim else {
                    return Err(invalid(
                        "addition_time_embed_dim",
                        Value::Null,
                        "addition_embed_type \"text_time\" needs it",
                    ));
                };
                let Some(proj_dim) = self.projection_class_embeddings_input_dim else {
                    return Err(invalid(
                        "projection_class_embeddings_input_dim",
                        Value::Null,
                        "addition_embed_type \"text_time\" needs it",
                    ));
                };
                Some((time_dim, proj_dim))
            }
            Some(other) => {
                return Err(unsupported("addition_embed_type", other, "kiln supports null and \"text_time\""));
            }
        };

        // Sizes from the file: bounded far above any published UNet, so arithmetic on them
        // (channel sums, the default output size, weight shapes) cannot overflow.
        let at_most = |key: &str, values: &[usize], max: usize| -> Result<(), ConfigError> {
            match values.iter().find(|&&v| v > max) {
                Some(_) => Err(invalid(key, values, format!("every value must be at most {max}"))),
                None => Ok(()),
            }
        };
        at_most("in_channels", &[self.in_channels], MAX_CHANNELS)?;
        at_most("out_channels", &[self.out_channels], MAX_CHANNELS)?;
        at_most("block_out_channels", &self.block_out_channels, MAX_CHANNELS)?;
        at_most("conv_in_kernel", &[self.conv_in_kernel], 15)?;
        at_most("conv_out_kernel", &[self.conv_out_kernel], 15)?;
        if let Some(sizes) = &self.sample_size {
            let sizes = match sizes {
                PerBlock::One(s) => vec![*s],
                PerBlock::List(l) => l.clone(),
            };
            at_most("sample_size", &sizes, MAX_SAMPLE_SIZE)?;
        }
        for (key, v) in [
            ("time_embedding_dim", self.time_embedding_dim),
            ("addition_time_embed_dim", self.addition_time_embed_dim),
            ("projection_class_embeddings_input_dim", self.projection_class_embeddings_input_dim),
        ] {
            at_most(key, v.as_slice(), MAX_CHANNELS * 4)?;
        }
        // Per-block lists.
        let layers = self.layers_per_block.expand("layers_per_block", n)?;
        at_most("layers_per_block", &layers, MAX_LAYERS)?;
        let cross_dims = self.cross_attention_dim.expand("cross_attention_dim", n)?;
        at_most("cross_attention_dim", &cross_dims, MAX_CHANNELS)?;
        if cross_dims.iter().any(|&d| d != cross_dims[0]) {
            return Err(unsupported(
                "cross_attention_dim",
                &self.cross_attention_dim,
                "kiln feeds one encoder_hidden_states to every block: per-block values must be equal",
            ));
        }
        let transformer_layers = {
            let key = "transformer_layers_per_block";
            let value = &self.transformer_layers_per_block;
            let not_int = || unsupported(key, value, "kiln supports an integer or a list of integers");
            let per_block = match value {
                Value::Array(items) => PerBlock::List(
                    items
                        .iter()
                        .map(|v| v.as_u64().map(|x| x as usize))
                        .collect::<Option<Vec<_>>>()
                        .ok_or_else(not_int)?,
                ),
                v => PerBlock::One(v.as_u64().map(|x| x as usize).ok_or_else(not_int)?),
            };
            per_block.expand(key, n)?
        };
        at_most("transformer_layers_per_block", &transformer_layers, MAX_LAYERS)?;
        // `num_attention_heads = num_attention_heads or attention_head_dim`. diffusers 0.42 itself
        // still refuses a non-null num_attention_heads in this class; kiln takes it as the head
        // count, the meaning it has everywhere else in diffusers.
        let (heads_key, heads) = match &self.num_attention_heads {
            Some(h) => ("num_attention_heads", h.expand("num_attention_heads", n)?),
            None => ("attention_head_dim", self.attention_head_dim.expand("attention_head_dim", n)?),
        };
        for (i, (&h, &c)) in heads.iter().zip(&self.block_out_channels).enumerate() {
            if h == 0 || h > c {
                return Err(invalid(
                    heads_key,
                    &heads,
                    format!("block {i} has {c} channels: the head count must be within 1..={c}"),
                ));
            }
        }

        let down: Vec<BlockPlan> = (0..n)
            .map(|i| BlockPlan {
                cross_attention: down_cross[i],
                in_channels: if i == 0 { self.block_out_channels[0] } else { self.block_out_channels[i - 1] },
                out_channels: self.block_out_channels[i],
                prev_output_channels: 0,
                layers: layers[i],
                transformer_layers: transformer_layers[i],
                heads: heads[i],
                cross_attention_dim: cross_dims[i],
                resample: i + 1 < n,
            })
            .collect();
        let last = n - 1;
        let mid = BlockPlan {
            cross_attention: true,
            in_channels: self.block_out_channels[last],
            out_channels: self.block_out_channels[last],
            prev_output_channels: 0,
            layers: 1,
            transformer_layers: transformer_layers[last],
            heads: heads[last],
            cross_attention_dim: cross_dims[last],
            resample: false,
        };
        let rev = |v: &[usize], i: usize| v[n - 1 - i];
        let up: Vec<BlockPlan> = (0..n)
            .map(|i| BlockPlan {
                cross_attention: up_cross[i],
                in_channels: rev(&self.block_out_channels, (i + 1).min(n - 1)),
                out_channels: rev(&self.block_out_channels, i),
                prev_output_channels: if i == 0 {
                    self.block_out_channels[last]
                } else {
                    rev(&self.block_out_channels, i - 1)
                },
                layers: rev(&layers, i) + 1,
                transformer_layers: rev(&transformer_layers, i),
                heads: rev(&heads, i),
                cross_attention_dim: rev(&cross_dims, i),
                resample: i + 1 < n,
            })
            .collect();
        let total: usize = [&mid].into_iter().chain(&down).chain(&up).map(BlockPlan::layer_count).sum();
        if total > MAX_TOTAL_LAYERS {
            return Err(invalid(
                "layers_per_block",
                (&layers, &transformer_layers),
                format!(
                    "with transformer_layers_per_block these make {total} resnets and transformer blocks; kiln builds at most {MAX_TOTAL_LAYERS}"
                ),
            ));
        }
        Ok(Plan {
            down,
            mid,
            up,
            groups,
            time_embed_dim: self.time_embedding_dim.unwrap_or(4 * self.block_out_channels[0]),
            text_time,
        })
    }

    /// The width `encoder_hidden_states` must have.
    pub fn context_dim(&self) -> usize {
        match &self.cross_attention_dim {
            PerBlock::One(d) => *d,
            PerBlock::List(l) => l.first().copied().unwrap_or(0),
        }
    }

    /// How many times the UNet halves the latent: sizes that are not a multiple of
    /// `2^num_upsamplers` take the odd-size path (`forward_upsample_size`).
    pub fn num_upsamplers(&self) -> usize {
        self.block_out_channels.len().saturating_sub(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_sd1() {
        let c = UNet2DConditionConfig::from_json_str("{}").unwrap();
        let plan = c.plan().unwrap();
        assert_eq!(plan.down.len(), 4);
        assert_eq!(plan.time_embed_dim, 1280);
        assert_eq!(plan.mid.heads, 8);
        assert_eq!(plan.up[0].layers, 3);
        assert!(!plan.up[0].cross_attention && plan.up[1].cross_attention);
        // up block 1: prev 1280 (from up 0), out 1280, skip of the last resnet from block 1 (640)
        assert_eq!(
            (plan.up[2].prev_output_channels, plan.up[2].out_channels, plan.up[2].in_channels),
            (1280, 640, 320)
        );
    }

    #[test]
    fn null_booleans_are_false() {
        let c = UNet2DConditionConfig::from_json_str(r#"{"upcast_attention": null, "flip_sin_to_cos": null}"#).unwrap();
        assert!(!c.upcast_attention && !c.flip_sin_to_cos);
    }

    /// Found by kiln-fuzz: layers_per_block 77 with transformer_layers_per_block [1, 2, 255] on
    /// SDXL's blocks asked for ~40000 transformer blocks (723 MiB of module structure before a
    /// weight was read). The totals are bounded; SDXL's own config plans.
    #[test]
    fn the_total_number_of_layers_is_bounded() {
        let sdxl = r#"{"block_out_channels": [320, 640, 1280], "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], "attention_head_dim": [5, 10, 20], "cross_attention_dim": 2048"#;
        let plan = UNet2DConditionConfig::from_json_str(&format!(r#"{sdxl}, "layers_per_block": 2, "transformer_layers_per_block": [1, 2, 10]}}"#)).unwrap().plan().unwrap();
        let total: usize = [&plan.mid].into_iter().chain(&plan.down).chain(&plan.up).map(BlockPlan::layer_count).sum();
        assert!(total < 128, "SDXL: {total}");
        let err = UNet2DConditionConfig::from_json_str(&format!(r#"{sdxl}, "layers_per_block": 77, "transformer_layers_per_block": [1, 2, 255]}}"#)).err().expect("refused").to_string();
        assert!(err.contains("layers_per_block") && err.contains("4096"), "{err}");
        let blocks = vec!["\"DownBlock2D\""; MAX_BLOCKS + 1].join(", ");
        let json = format!(r#"{{"down_block_types": [{blocks}], "up_block_types": [{}], "block_out_channels": [{}]}}"#, blocks.replace("Down", "Up"), vec!["32"; MAX_BLOCKS + 1].join(", "));
        let err = UNet2DConditionConfig::from_json_str(&json).err().expect("refused").to_string();
        assert!(err.contains("down_block_types") && err.contains("1 to 64"), "{err}");
    }

    #[test]
    fn unsupported_values_name_key_and_value() {
        for (json, key, value) in [
            (r#"{"resnet_time_scale_shift": "scale_shift"}"#, "resnet_time_scale_shift", "\"scale_shift\""),
            (r#"{"attention_type": "gated"}"#, "attention_type", "\"gated\""),
            (r#"{"class_embed_type": "timestep"}"#, "class_embed_type", "\"timestep\""),
            (r#"{"num_class_embeds": 10}"#, "num_class_embeds", "10"),
            (r#"{"time_cond_proj_dim": 256}"#, "time_cond_proj_dim", "256"),
            (r#"{"addition_embed_type": "text"}"#, "addition_embed_type", "\"text\""),
            (
                r#"{"mid_block_type": "UNetMidBlock2DSimpleCrossAttn"}"#,
                "mid_block_type",
                "\"UNetMidBlock2DSimpleCrossAttn\"",
            ),
            (r#"{"mid_block_type": null}"#, "mid_block_type", "null"),
            (r#"{"only_cross_attention": true}"#, "only_cross_attention", "true"),
            (r#"{"dual_cross_attention": true}"#, "dual_cross_attention", "true"),
            (r#"{"act_fn": "gelu"}"#, "act_fn", "\"gelu\""),
            (r#"{"time_embedding_type": "fourier"}"#, "time_embedding_type", "\"fourier\""),
            (r#"{"encoder_hid_dim": 768}"#, "encoder_hid_dim", "768"),
            (r#"{"norm_num_groups": null}"#, "norm_num_groups", "null"),
            (r#"{"_class_name": "UNet2DModel"}"#, "_class_name", "\"UNet2DModel\""),
            (
                r#"{"down_block_types": ["AttnDownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D"]}"#,
                "down_block_types",
                "\"AttnDownBlock2D\"",
            ),
            (r#"{"transformer_layers_per_block": [[1, 1], 2, 2, 2]}"#, "transformer_layers_per_block", "[[1,1],2,2,2]"),
        ] {
            let err = UNet2DConditionConfig::from_json_str(json).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, ConfigError::Unsupported { .. }), "{json}: {msg}");
            assert!(msg.contains(key) && msg.contains(value), "{json}: {msg}");
        }
    }

    #[test]
    fn inconsistent_configs_are_errors() {
        for (json, key) in [
            (r#"{"attention_head_dim": [8, 8]}"#, "attention_head_dim"),
            (r#"{"block_out_channels": [320, 640]}"#, "block_out_channels"),
            (r#"{"block_out_channels": [320, 640, 1280, 1000]}"#, "block_out_channels"),
            (r#"{"addition_embed_type": "text_time"}"#, "addition_time_embed_dim"),
            (r#"{"attention_head_dim": 0}"#, "attention_head_dim"),
        ] {
            let err = UNet2DConditionConfig::from_json_str(json).unwrap_err();
            assert!(matches!(err, ConfigError::Invalid { .. }), "{json}: {err}");
            assert!(err.to_string().contains(key), "{json}: {err}");
        }
        assert!(matches!(
            UNet2DConditionConfig::from_json_str(r#"{"in_channels": "four"}"#),
            Err(ConfigError::Json(_))
        ));
    }
}
