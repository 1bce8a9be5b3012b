//! Loading a diffusers / transformers component folder: its options ([`LoadOptions`]), its weights
//! file (safetensors, or the PyTorch pickle (`.bin`) older folders hold, read without running it),
//! its configs. The tensors themselves go through [`crate::weights`].

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::{DType, Device};
use serde::de::DeserializeOwned;

pub use crate::error::LoadError;
use crate::weights::{Weights, WeightsFile};

/// How a model component is loaded from its diffusers folder: the device, the dtype every float
/// weight is cast to, and the weights variant (`Some("fp16")`: `<stem>.fp16.safetensors`, what
/// diffusers' `variant="fp16"` reads).
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    pub dtype: DType,
    pub variant: Option<String>,
}

impl LoadOptions {
    /// f32 weights on `device`, no variant.
    pub fn new(device: &Device) -> Self {
        Self { device: device.clone(), dtype: DType::F32, variant: None }
    }

    pub fn with_dtype(self, dtype: DType) -> Self {
        Self { dtype, ..self }
    }

    pub fn with_variant(self, variant: Option<&str>) -> Self {
        Self { variant: variant.map(str::to_string), ..self }
    }
}

/// A component's weights file name: `<stem>.safetensors`, or `<stem>.<variant>.safetensors`.
pub fn weights_file_name(stem: &str, variant: Option<&str>) -> String {
    match variant {
        Some(v) => format!("{stem}.{v}.safetensors"),
        None => format!("{stem}.safetensors"),
    }
}

/// A component's PyTorch pickle weights file name, as diffusers and transformers save it:
/// `diffusion_pytorch_model.bin`, `pytorch_model.bin` (transformers' stem `model`), with the
/// variant `….fp16.bin`.
pub fn pickle_file_name(stem: &str, variant: Option<&str>) -> String {
    let stem = if stem == "model" { "pytorch_model" } else { stem };
    match variant {
        Some(v) => format!("{stem}.{v}.bin"),
        None => format!("{stem}.bin"),
    }
}

/// The index of a sharded safetensors checkpoint: `{stem}.safetensors.index.json`, with a variant
/// `{stem}.safetensors.index.{variant}.json` (diffusers' and transformers' `_add_variant`).
pub fn sharded_index_name(stem: &str, variant: Option<&str>) -> String {
    match variant {
        Some(v) => format!("{stem}.safetensors.index.{v}.json"),
        None => format!("{stem}.safetensors.index.json"),
    }
}

/// The weights file of the component folder `dir` (`stem`: `diffusion_pytorch_model` for
/// diffusers' models, `model` for transformers'): the safetensors file, else the PyTorch pickle
/// diffusers and transformers fall back to (`diffusion_pytorch_model.bin`, `pytorch_model.bin`,
/// with the variant: `….fp16.bin`), read without running it ([`load_safetensors`]), or a sharded
/// checkpoint's index ([`sharded_index_name`]; [`crate::WeightsFile::open`] reads its shards); or
/// an error that says which weight files the folder has instead.
pub fn weights_path(dir: &Path, stem: &str, variant: Option<&str>) -> Result<PathBuf, LoadError> {
    let file = weights_file_name(stem, variant);
    let path = dir.join(&file);
    if path.is_file() {
        return Ok(path);
    }
    // a sharded checkpoint: its index (`_add_variant("….safetensors.index.json", variant)`)
    let index = dir.join(sharded_index_name(stem, variant));
    if index.is_file() {
        return Ok(index);
    }
    let pickle = dir.join(pickle_file_name(stem, variant));
    if pickle.is_file() {
        return Ok(pickle);
    }
    let mut present: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(stem) || n.starts_with("pytorch_model"))
                .collect()
        })
        .unwrap_or_default();
    present.sort();
    if let Some(variant) = variant {
        let present = if present.is_empty() { "none".into() } else { present.join(", ") };
        return Err(LoadError::MissingVariant { dir: dir.into(), variant: variant.into(), file, present });
    }
    let hint = if !present.is_empty() {
        format!(" (weight files present: {}; pass the variant, e.g. fp16)", present.join(", "))
    } else {
        String::new()
    };
    Err(LoadError::MissingWeights { dir: dir.into(), file, hint })
}


/// The largest config file kiln reads (published configs are a few KB).
pub const CONFIG_LIMIT: u64 = 16 << 20;

/// The text of a regular file of at most `limit` bytes: a FIFO or device would block or never
/// end, and a file that large is not what kiln expects there.
pub fn read_text_file(path: &Path, limit: u64) -> Result<String, LoadError> {
    let io = |source| LoadError::Io { path: path.into(), source };
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_file() {
        return Err(io(std::io::Error::other("not a regular file")));
    }
    if meta.len() > limit {
        return Err(io(std::io::Error::other(format!("{} bytes; kiln reads at most {limit} here", meta.len()))));
    }
    std::fs::read_to_string(path).map_err(io)
}

/// Reads and parses a JSON config file (`config.json`, `model_index.json`, ...).
pub fn read_config<T: DeserializeOwned>(path: &Path) -> Result<T, LoadError> {
    let text = read_text_file(path, CONFIG_LIMIT)?;
    serde_json::from_str(&text).map_err(|source| LoadError::Config { path: path.into(), source })
}

/// Loads `path` (a safetensors file, or a PyTorch checkpoint read without running it) into
/// `module`, casting every float tensor to `dtype`, one tensor at a time ([`Weights::load_into`]).
///
/// `remap` holds `(regex, replacement)` pairs applied to the file's keys before matching (for the
/// few places where diffusers' key layout cannot be mirrored by field names, e.g. `ff.net.0.proj`);
/// `ignore` holds regexes of file keys that are known to be unused (e.g. CLIP's `position_ids`
/// buffer) and are not reported.
pub fn load_safetensors<M: Module>(module: M, path: &Path, dtype: DType, remap: &[(&str, &str)], ignore: &[&str]) -> Result<M, LoadError> {
    Weights::all(WeightsFile::open(path)?).rename(remap).load_into(module, dtype, ignore)
}
