//! `kiln info PATH`: what a PNG, a model folder (or a Hub id in the cache), a component folder, a
//! safetensors file or a PyTorch checkpoint holds (a single-file checkpoint: its family, its
//! components, what is not used) — read from configs and headers only, never loading weights.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use clap::Args;
use serde::Serialize;
use serde_json::Value;
use thiserror::Error;

use kiln_pipeline::model::{cached_snapshot, HubConfig, HubId, ModelError, ModelFolder, PipelineKind, ResolveOptions};
use kiln_pipeline::png::{self, GenerationParams, PngError};
use kiln_pipeline::embeddings::EmbeddingFile;
use kiln_pipeline::lora::hash::lora_short_hash;
use kiln_pipeline::lora::LoraFile;
use kiln_pipeline::single_file::{SingleFile, SingleFileError};

/// Why `kiln info` could not describe its argument.
#[derive(Debug, Error)]
pub enum InfoError {
    #[error("no such file or folder: {0}")]
    NotFound(PathBuf),
    #[error("no such file or folder: {path}; as a Hub id: {hub}")]
    NotFoundAnywhere { path: PathBuf, hub: ModelError },
    #[error(transparent)]
    Png(#[from] PngError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{path} is not a valid safetensors file (corrupt or truncated?): {message}")]
    Safetensors { path: PathBuf, message: String },
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Checkpoint(kiln::nn::LoadError),
    #[error("{0} is not a PNG image, a safetensors file, a PyTorch checkpoint or a diffusers model folder")]
    Unrecognized(PathBuf),
    #[error("{0} is a folder without model_index.json or config.json: not a diffusers model or component folder")]
    NotAModelFolder(PathBuf),
    #[error("{0} is not a regular file or folder (a FIFO, socket or device is not read)")]
    NotAFile(PathBuf),
}

/// What `kiln info` found.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Info {
    /// A PNG with generation parameters.
    Png {
        path: PathBuf,
        /// The raw `parameters` text.
        parameters: String,
        /// The parsed fields; `None` when the text is not in A1111's layout (see `parse_error`).
        parsed: Option<GenerationParams>,
        parse_error: Option<String>,
    },
    Model(ModelSummary),
    Component(ComponentSummary),
    Safetensors(WeightsSummary),
    /// A PyTorch checkpoint (`torch.save`'s zip: `.ckpt`, `.pt`, `.bin`), read without running its
    /// pickle (`kiln_nn::read_torch_checkpoint`); `metadata` is empty.
    Checkpoint(WeightsSummary),
}

/// A model folder: its pipeline, components, and whether kiln can run it.
#[derive(Debug, Serialize)]
pub struct ModelSummary {
    pub path: PathBuf,
    /// The Hub id, for a model found in the Hub cache.
    pub hub_id: Option<String>,
    pub class_name: String,
    /// `None` for pipeline classes kiln does not run.
    pub kind: Option<PipelineKind>,
    /// SDXL's `force_zeros_for_empty_prompt` (as kiln will apply it).
    pub force_zeros_for_empty_prompt: Option<bool>,
    pub components: Vec<ComponentSummary>,
    /// Sum over the components' default weight files (the non-variant ones where both exist).
    pub parameters: u64,
    /// `None` when every component the pipeline needs is present, else the error `--model` would
    /// report.
    pub problem: Option<String>,
}

/// One component folder.
#[derive(Debug, Serialize)]
pub struct ComponentSummary {
    pub name: String,
    /// From `model_index.json` (`[library, class]`), else the config's `_class_name` /
    /// `architectures`.
    pub class_name: String,
    pub dir: PathBuf,
    /// Whether kiln's pipeline uses it (safety checker, feature extractor: no).
    pub used: bool,
    /// Key sizes from its config, in a fixed order.
    pub config: Vec<(String, Value)>,
    /// Every `*.safetensors` file in the folder.
    pub weights: Vec<WeightsSummary>,
    /// Other files (tokenizer files, pickle weights, ...).
    pub other_files: Vec<String>,
    /// Why the component could not be read (a broken config or weights header); the rest of
    /// the model is still listed.
    pub error: Option<String>,
}

/// A safetensors file, from its header.
#[derive(Debug, Clone, Serialize)]
pub struct WeightsSummary {
    pub path: PathBuf,
    pub file_bytes: u64,
    pub tensors: usize,
    pub parameters: u64,
    /// Parameter count per dtype (`F16`, `F32`, ...).
    pub dtypes: BTreeMap<String, u64>,
    /// `__metadata__` (e.g. `{"format": "pt"}`).
    pub metadata: BTreeMap<String, String>,
    /// A single-file checkpoint: its family and components (files with a UNet under
    /// `model.diffusion_model.`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<CheckpointSummary>,
    /// What a file that is not a whole model looks like (a LoRA, an embedding, a VAE alone, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub looks_like: Option<String>,
    /// A LoRA: its format and modules by component and kind (`--lora`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraSummary>,
    /// A textual-inversion embedding: its token and each text encoder's vectors (`--embedding`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedding: Option<EmbeddingSummary>,
}

/// A LoRA file, as `--lora` reads it.
#[derive(Debug, Clone, Serialize)]
pub struct LoraSummary {
    /// `Kohya` or `Peft`.
    pub format: String,
    /// (component, layer kind, modules).
    pub modules: Vec<(String, String, usize)>,
    /// A1111's short hash (`Lora hashes`).
    pub hash: String,
}

/// An embedding file, as `--embedding` reads it.
#[derive(Debug, Clone, Serialize)]
pub struct EmbeddingSummary {
    pub token: String,
    /// (text encoder, vectors, width).
    pub vectors: Vec<(String, usize, usize)>,
}

/// A single-file checkpoint's family (kiln_pipeline::single_file).
#[derive(Debug, Clone, Serialize)]
pub struct CheckpointSummary {
    /// `SD 1.x`, `SDXL base`, ...
    pub family: String,
    /// diffusers' `infer_diffusers_model_type` name (`v1`, `v2`, `xl_base`, `inpainting`, ...).
    pub diffusers_type: String,
    /// The keys that decided it.
    pub evidence: String,
    /// Whether the layout is a published model's (its family's configs fit without `--config`).
    pub published: bool,
    /// `.ckpt` files: the prefix every key has (`state_dict.`).
    pub root: String,
    /// (component, prefix, tensors, parameters).
    pub components: Vec<(String, String, usize, u64)>,
    pub ema_tensors: usize,
    /// Keys outside every component, not loaded (schedule buffers, EMA, training state).
    pub unused_keys: Vec<String>,
}

/// Describes `arg`: a PNG, a safetensors file, a model or component folder, or a Hub id found in
/// `hub.cache_dir` (never downloads).
pub fn inspect(arg: &str, hub: &HubConfig) -> Result<Info, InfoError> {
    let path = Path::new(arg);
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(_) => {
            return match HubId::parse(arg) {
                Some(id) if !arg.starts_with(['.', '/', '~']) => {
                    let snapshot = cached_snapshot(&hub.cache_dir, &id, false)
                        .map_err(|hub| InfoError::NotFoundAnywhere { path: path.into(), hub })?;
                    let mut summary = summarize_model(&snapshot)?;
                    summary.hub_id = Some(id.to_string());
                    Ok(Info::Model(summary))
                }
                _ => Err(InfoError::NotFound(path.into())),
            };
        }
    };
    if meta.is_dir() {
        if path.join("model_index.json").is_file() {
            return Ok(Info::Model(summarize_model(path)?));
        }
        if path.join("config.json").is_file() || path.join("scheduler_config.json").is_file() {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            return Ok(Info::Component(summarize_component(path, &name, None, true)?));
        }
        return Err(InfoError::NotAModelFolder(path.into()));
    }
    if !meta.is_file() {
        return Err(InfoError::NotAFile(path.into()));
    }
    if png::is_png(path)? {
        let parameters = png::read_parameters(path)?.ok_or_else(|| PngError::NoParameters(path.into()))?;
        let (parsed, parse_error) = match GenerationParams::parse(&parameters) {
            Ok(p) => (Some(p), None),
            Err(e) => (None, Some(e.to_string())),
        };
        return Ok(Info::Png { path: path.into(), parameters, parsed, parse_error });
    }
    let torch_name = path.extension().is_some_and(|e| ["ckpt", "pt", "pth", "bin"].iter().any(|t| e.eq_ignore_ascii_case(t)));
    if torch_name || kiln::nn::is_zip(path) {
        return Ok(Info::Checkpoint(with_family(read_checkpoint_summary(path)?)));
    }
    let is_safetensors_name = path.extension().is_some_and(|e| e == "safetensors");
    match read_weights_summary(path) {
        Ok(w) => Ok(Info::Safetensors(with_family(w))),
        Err(e) if is_safetensors_name => Err(e),
        Err(_) if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")) => Err(PngError::NotPng(path.into()).into()),
        Err(_) => Err(InfoError::Unrecognized(path.into())),
    }
}

/// `summary` with what the file is as a model: a single-file checkpoint's family and
/// components, or what it looks like instead.
fn with_family(mut summary: WeightsSummary) -> WeightsSummary {
    match SingleFile::open(&summary.path) {
        Ok(file) => {
            summary.checkpoint = Some(CheckpointSummary {
                family: file.detection.family.name().into(),
                diffusers_type: file.detection.family.diffusers_type().into(),
                evidence: file.detection.evidence.clone(),
                published: file.detection.published,
                root: file.root.clone(),
                components: file.components().into_iter().map(|(c, p, n, params)| (c.into(), p.into(), n, params)).collect(),
                ema_tensors: file.ema_tensors,
                unused_keys: file.other_keys.clone(),
            })
        }
        Err(SingleFileError::NotACheckpoint { looks_like, .. }) => {
            summary.looks_like = Some(looks_like);
            if let (Ok(lora), Ok(hash)) = (LoraFile::open(&summary.path), lora_short_hash(&summary.path)) {
                summary.lora = Some(LoraSummary {
                    format: format!("{:?}", lora.format),
                    modules: lora.summary().into_iter().map(|((c, k), n)| (c, k.to_string(), n)).collect(),
                    hash,
                });
            } else if let Ok(e) = EmbeddingFile::open(&summary.path, None) {
                summary.embedding = Some(EmbeddingSummary {
                    token: e.token.clone(),
                    vectors: e.vectors.iter().map(|(c, d)| (c.to_string(), d.shape()[0], d.shape()[1])).collect(),
                });
            }
        }
        Err(_) => {}
    }
    summary
}

fn read_json(path: &Path) -> Result<Value, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io { path: path.into(), source })?;
    serde_json::from_str(&text).map_err(|source| ModelError::Json { path: path.into(), source })
}

/// Summarises a folder with `model_index.json`, listing every component it names (also broken or
/// unused ones) and checking it as `--model` would.
pub fn summarize_model(root: &Path) -> Result<ModelSummary, InfoError> {
    let index_path = root.join("model_index.json");
    let index = read_json(&index_path)?;
    let map = index.as_object().ok_or_else(|| ModelError::BadIndex {
        path: index_path.display().to_string(),
        message: "not a JSON object".into(),
    })?;
    let class_name = map.get("_class_name").and_then(Value::as_str).unwrap_or("?").to_string();
    let kind = PipelineKind::from_class_name(&class_name);
    let required = kind.map(PipelineKind::required_components).unwrap_or(&[]);
    let optional = kind.map(PipelineKind::optional_components).unwrap_or(&[]);
    let mut components = Vec::new();
    for (name, v) in map {
        if let Some([Value::String(_lib), Value::String(class)]) = v.as_array().map(Vec::as_slice) {
            let used = required.contains(&name.as_str()) || optional.contains(&name.as_str());
            // a component is a subfolder: `/etc` or `../x` would read outside the model
            let Some(dir) = component_dir(root, name) else {
                components.push(ComponentSummary::failed(name, class, root, used, "not a subfolder name: a component name is one path component".into()));
                continue;
            };
            components.push(summarize_component(&dir, name, Some(class), used).unwrap_or_else(|e| ComponentSummary::failed(name, class, &dir, used, e.to_string())));
        }
    }
    let check = ModelFolder::open(root, &ResolveOptions::default());
    let force_zeros = check.as_ref().ok().filter(|m| m.kind == PipelineKind::StableDiffusionXL).map(|m| m.force_zeros_for_empty_prompt);
    let parameters = components
        .iter()
        .filter(|c| c.used)
        .map(|c| {
            // a sharded checkpoint's shards add up; otherwise one file (not also its fp16 variant)
            let shards: Vec<_> = c.weights.iter().filter(|w| w.path.to_string_lossy().contains("-of-") && !is_variant(&w.path)).collect();
            if shards.is_empty() {
                c.weights.iter().find(|w| !is_variant(&w.path)).or(c.weights.first()).map_or(0, |w| w.parameters)
            } else {
                shards.iter().map(|w| w.parameters).fold(0u64, u64::saturating_add)
            }
        })
        .fold(0u64, u64::saturating_add);
    // what --model would report, else the first component kiln needs that could not be read
    let problem = check.as_ref().err().map(|e| e.to_string()).or_else(|| {
        components.iter().find(|c| c.used && c.error.is_some()).map(|c| format!("component `{}`: {}", c.name, c.error.clone().unwrap_or_default()))
    });
    Ok(ModelSummary {
        path: root.into(),
        hub_id: None,
        class_name,
        kind,
        force_zeros_for_empty_prompt: force_zeros,
        components,
        parameters,
        problem,
    })
}

/// `root/name` when `name` is a single ordinary path component (not `/etc`, `..`, `a/b`).
fn component_dir(root: &Path, name: &str) -> Option<PathBuf> {
    let mut parts = Path::new(name).components();
    match (parts.next(), parts.next()) {
        (Some(std::path::Component::Normal(_)), None) => Some(root.join(name)),
        _ => None,
    }
}

impl ComponentSummary {
    fn failed(name: &str, class: &str, dir: &Path, used: bool, error: String) -> Self {
        ComponentSummary {
            name: name.into(),
            class_name: class.into(),
            dir: dir.into(),
            used,
            config: Vec::new(),
            weights: Vec::new(),
            other_files: Vec::new(),
            error: Some(error),
        }
    }
}

fn is_variant(path: &Path) -> bool {
    path.file_name().is_some_and(|n| n.to_string_lossy().matches('.').count() > 1)
}

/// The config keys worth showing, by component class.
fn summary_keys(class: &str) -> &'static [&'static str] {
    match class {
        c if c.starts_with("UNet") => &[
            "sample_size",
            "in_channels",
            "out_channels",
            "block_out_channels",
            "layers_per_block",
            "cross_attention_dim",
            "attention_head_dim",
            "transformer_layers_per_block",
            "use_linear_projection",
            "upcast_attention",
            "addition_embed_type",
            "projection_class_embeddings_input_dim",
        ],
        "SD3Transformer2DModel" => &[
            "sample_size",
            "patch_size",
            "in_channels",
            "num_layers",
            "attention_head_dim",
            "num_attention_heads",
            "joint_attention_dim",
            "pooled_projection_dim",
            "pos_embed_max_size",
            "dual_attention_layers",
            "qk_norm",
        ],
        "FluxTransformer2DModel" => &[
            "in_channels",
            "num_layers",
            "num_single_layers",
            "attention_head_dim",
            "num_attention_heads",
            "joint_attention_dim",
            "pooled_projection_dim",
            "guidance_embeds",
            "axes_dims_rope",
        ],
        "T5EncoderModel" => &["d_model", "num_layers", "num_heads", "d_kv", "d_ff", "feed_forward_proj", "vocab_size"],
        c if c.starts_with("Autoencoder") => {
            &["sample_size", "in_channels", "latent_channels", "block_out_channels", "layers_per_block", "scaling_factor", "shift_factor", "force_upcast"]
        }
        c if c.contains("Projection") => &[
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "hidden_act",
            "max_position_embeddings",
            "vocab_size",
            "projection_dim",
        ],
        c if c.starts_with("CLIPText") => &[
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "hidden_act",
            "max_position_embeddings",
            "vocab_size",
        ],
        c if c.contains("Tokenizer") => &["model_max_length", "pad_token", "tokenizer_class"],
        c if c.ends_with("Scheduler") => &[
            "num_train_timesteps",
            "beta_schedule",
            "beta_start",
            "beta_end",
            "prediction_type",
            "timestep_spacing",
            "steps_offset",
            "shift",
            "use_dynamic_shifting",
        ],
        _ => &[],
    }
}

/// Summarises one component folder (which may be missing: then it lists nothing).
pub fn summarize_component(dir: &Path, name: &str, class: Option<&str>, used: bool) -> Result<ComponentSummary, InfoError> {
    let config_path = ["config.json", "scheduler_config.json", "tokenizer_config.json"].iter().map(|f| dir.join(f)).find(|p| p.is_file());
    let config = match &config_path {
        Some(p) => Some(read_json(p)?),
        None => None,
    };
    let class_name = class
        .map(str::to_string)
        .or_else(|| config.as_ref().and_then(|c| c.get("_class_name")).and_then(Value::as_str).map(str::to_string))
        .or_else(|| config.as_ref().and_then(|c| c.pointer("/architectures/0")).and_then(Value::as_str).map(str::to_string))
        .or_else(|| config.as_ref().and_then(|c| c.get("tokenizer_class")).and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| "?".into());
    let config_summary = match &config {
        Some(c) => summary_keys(&class_name)
            .iter()
            .filter_map(|k| c.get(*k).filter(|v| !v.is_null()).map(|v| (k.to_string(), v.clone())))
            .collect(),
        None => Vec::new(),
    };
    let mut weights = Vec::new();
    let mut other_files = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        let mut names: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.is_file()).collect();
        names.sort();
        for p in names {
            let file = p.file_name().unwrap_or_default().to_string_lossy().into_owned();
            if file.ends_with(".safetensors") {
                weights.push(read_weights_summary(&p)?);
            } else if Some(&p) != config_path.as_ref() {
                other_files.push(file);
            }
        }
    }
    Ok(ComponentSummary { name: name.into(), class_name, dir: dir.into(), used, config: config_summary, weights, other_files, error: None })
}

/// Summarises a safetensors file from its header (`kiln_nn::read_safetensors_header`, which
/// checks every tensor against the file), without reading the data.
pub fn read_weights_summary(path: &Path) -> Result<WeightsSummary, InfoError> {
    let header = kiln_nn_header(path)?;
    let tensors = header.tensors.iter().map(|t| (t.name.as_str(), t.dtype.as_str(), t.numel));
    WeightsSummary::count(path, header.file_bytes, header.metadata, tensors)
        .map_err(|message| InfoError::Safetensors { path: path.into(), message })
}

/// Summarises a PyTorch checkpoint from its pickle (every tensor checked against the file), without
/// running it or reading the data.
pub fn read_checkpoint_summary(path: &Path) -> Result<WeightsSummary, InfoError> {
    let ckpt = kiln::nn::read_torch_checkpoint(path).map_err(|e| match e {
        kiln::nn::LoadError::Io { path, source } => InfoError::Io { path, source },
        other => InfoError::Checkpoint(other),
    })?;
    let tensors = ckpt.tensors.iter().map(|t| (t.name.as_str(), t.dtype, t.numel));
    WeightsSummary::count(path, ckpt.file_bytes, BTreeMap::new(), tensors)
        .map_err(|message| InfoError::Checkpoint(kiln::nn::LoadError::Checkpoint { path: path.into(), message }))
}

impl WeightsSummary {
    /// The summary of a weights file's `tensors` (name, dtype, elements): their count, and the
    /// parameters in all and per dtype; `Err` names the tensor where the count passes 2^64.
    fn count<'a>(path: &Path, file_bytes: u64, metadata: BTreeMap<String, String>, tensors: impl ExactSizeIterator<Item = (&'a str, &'a str, u64)>) -> Result<Self, String> {
        let mut summary = WeightsSummary { path: path.into(), file_bytes, tensors: tensors.len(), parameters: 0, dtypes: BTreeMap::new(), metadata, checkpoint: None, looks_like: None, lora: None, embedding: None };
        for (name, dtype, numel) in tensors {
            let overflow = || format!("tensor `{name}`: the file's parameter count passes 2^64");
            summary.parameters = summary.parameters.checked_add(numel).ok_or_else(overflow)?;
            let per_dtype = summary.dtypes.entry(dtype.to_string()).or_default();
            *per_dtype = per_dtype.checked_add(numel).ok_or_else(overflow)?;
        }
        Ok(summary)
    }
}

fn kiln_nn_header(path: &Path) -> Result<kiln::nn::SafetensorsHeader, InfoError> {
    kiln::nn::read_safetensors_header(path).map_err(|e| match e {
        kiln::nn::LoadError::Io { path, source } => InfoError::Io { path, source },
        kiln::nn::LoadError::Format { path, message } => InfoError::Safetensors { path, message },
        other => InfoError::Safetensors { path: path.into(), message: other.to_string() },
    })
}

// ---- text output -------------------------------------------------------------------------------

/// `1234567` → `1.23M`.
pub fn human_count(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2}B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.2}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}K", n as f64 / 1e3),
        n => n.to_string(),
    }
}

/// `3_500_000` → `3.3 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[unit]) }
}

impl fmt::Display for WeightsSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dtypes = self.dtypes.keys().cloned().collect::<Vec<_>>().join("+");
        let dtypes = if dtypes.is_empty() { "empty".to_string() } else { dtypes };
        let name = self.path.file_name().unwrap_or_default().to_string_lossy();
        write!(f, "{name}: {dtypes}, {} tensors, {} parameters, {}", self.tensors, human_count(self.parameters), human_bytes(self.file_bytes))
    }
}

fn write_component(f: &mut fmt::Formatter<'_>, c: &ComponentSummary, indent: &str) -> fmt::Result {
    let unused = if c.used { "" } else { "  (not used by kiln)" };
    writeln!(f, "{indent}{:<15} {}{unused}", c.name, c.class_name)?;
    if !c.config.is_empty() {
        let cfg = c.config.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ");
        writeln!(f, "{indent}    {cfg}")?;
    }
    for w in &c.weights {
        writeln!(f, "{indent}    {w}")?;
    }
    if !c.other_files.is_empty() {
        writeln!(f, "{indent}    files: {}", c.other_files.join(", "))?;
    }
    if let Some(e) = &c.error {
        writeln!(f, "{indent}    FAILED: {e}")?;
    } else if !c.dir.is_dir() {
        writeln!(f, "{indent}    (folder missing)")?;
    }
    Ok(())
}

impl fmt::Display for Info {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Info::Png { parameters, parse_error, .. } => {
                writeln!(f, "{parameters}")?;
                if let Some(e) = parse_error {
                    writeln!(f, "(not in A1111's layout: {e})")?;
                }
                Ok(())
            }
            Info::Safetensors(w) | Info::Checkpoint(w) => {
                writeln!(f, "{w}")?;
                if let Some(c) = &w.checkpoint {
                    writeln!(f, "single-file checkpoint: {} (diffusers: {}), decided by {}", c.family, c.diffusers_type, c.evidence)?;
                    if !c.published {
                        writeln!(f, "layout: not a published model's: kiln generate needs --config DIR|HUB_ID with its diffusers configs")?;
                    }
                    if !c.root.is_empty() {
                        writeln!(f, "keys under: {}", c.root)?;
                    }
                    writeln!(f, "components:")?;
                    for (component, prefix, tensors, parameters) in &c.components {
                        writeln!(f, "  {component:<15} {prefix:<38} {tensors} tensors, {} parameters", human_count(*parameters))?;
                    }
                    if c.ema_tensors > 0 {
                        writeln!(f, "EMA: {} tensors (model_ema.*), not loaded", c.ema_tensors)?;
                    }
                    if !c.unused_keys.is_empty() {
                        let shown: Vec<&str> = c.unused_keys.iter().take(12).map(String::as_str).collect();
                        let more = c.unused_keys.len().saturating_sub(shown.len());
                        let more = if more > 0 { format!(", … ({more} more)") } else { String::new() };
                        writeln!(f, "not used ({} keys): {}{more}", c.unused_keys.len(), shown.join(", "))?;
                    }
                }
                if let Some(l) = &w.looks_like {
                    writeln!(f, "not a whole model: {l}")?;
                }
                if let Some(l) = &w.lora {
                    let parts = l.modules.iter().map(|(c, k, n)| format!("{c} {n} {k}")).collect::<Vec<_>>().join(", ");
                    writeln!(f, "LoRA ({} keys): {parts}; A1111 short hash {}", l.format, l.hash)?;
                }
                if let Some(e) = &w.embedding {
                    let parts = e.vectors.iter().map(|(c, n, d)| format!("{c}: {n} vector(s) of width {d}")).collect::<Vec<_>>().join(", ");
                    writeln!(f, "embedding `{}`: {parts}", e.token)?;
                }
                Ok(())
            }
            Info::Component(c) => write_component(f, c, ""),
            Info::Model(m) => {
                match &m.hub_id {
                    Some(id) => writeln!(f, "model: {id} ({})", m.path.display())?,
                    None => writeln!(f, "model: {}", m.path.display())?,
                }
                match m.kind {
                    Some(kind) => writeln!(f, "pipeline: {} ({kind})", m.class_name)?,
                    None => writeln!(f, "pipeline: {} (not supported by kiln)", m.class_name)?,
                }
                if let Some(z) = m.force_zeros_for_empty_prompt {
                    writeln!(f, "force_zeros_for_empty_prompt: {z}")?;
                }
                writeln!(f, "components:")?;
                for c in &m.components {
                    write_component(f, c, "  ")?;
                }
                writeln!(f, "parameters: {} ({})", human_count(m.parameters), m.parameters)?;
                match &m.problem {
                    None => writeln!(f, "check: ok"),
                    Some(e) => writeln!(f, "check: FAILED: {e}"),
                }
            }
        }
    }
}

#[derive(Args)]
pub struct InfoArgs {
    /// A PNG, a diffusers model folder, a Hub id (org/name or org/name@revision, from the Hub cache only),
    /// a component folder, a .safetensors file or a PyTorch checkpoint (.ckpt/.pt/.bin: its tensors,
    /// read without running its pickle); a single-file checkpoint's family (SD 1.x, 2.x, SDXL,
    /// inpainting), components, EMA and unused keys.
    #[arg(value_name = "PATH")]
    path: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn info(args: InfoArgs) -> Result<(), crate::CliError> {
    let info = inspect(&args.path, &kiln_pipeline::HubConfig::from_env()).map_err(|e| e.to_string())?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&info).map_err(|e| e.to_string())?);
    } else {
        let text = info.to_string();
        if text.ends_with('\n') {
            print!("{text}");
        } else {
            println!("{text}");
        }
    }
    match &info {
        // A model kiln cannot run: the summary above, then the reason, and a failure status.
        Info::Model(m) => m.problem.clone().map_or(Ok(()), |p| Err(p.into())),
        _ => Ok(()),
    }
}
