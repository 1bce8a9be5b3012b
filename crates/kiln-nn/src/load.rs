//! Loading diffusers / transformers safetensors files into burn modules.
//!
//! Weights go through burn-store's `SafetensorsStore` (memory-mapped, lazy per tensor) with
//! `PyTorchToBurnAdapter` (transposes `Linear` weights, renames norm `weight/bias` to
//! `gamma/beta`) and `FloatCastAdapter` (the dtype chosen at load). Unlike burn's default, both
//! tensors the module expects but the file lacks and tensors the file has but the module does not
//! use are errors listing the names: a silently half-loaded model draws garbage.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::store::{FloatCastAdapter, ModuleAdapter, ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore};
use burn::tensor::{DType, Device};
use serde::de::DeserializeOwned;
use thiserror::Error;

/// Why a model file or config could not be loaded. Every variant names the file.
#[derive(Debug, Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid safetensors file (corrupt or truncated?): {message}")]
    Format { path: PathBuf, message: String },
    #[error("{path} lacks {} tensor(s) the model needs: {}", names.len(), list(names))]
    Missing { path: PathBuf, names: Vec<String> },
    #[error("{path} holds {} tensor(s) the model does not use: {}", names.len(), list(names))]
    Unused { path: PathBuf, names: Vec<String> },
    #[error("{path}: {}", errors.join("; "))]
    Mismatch { path: PathBuf, errors: Vec<String> },
    #[error("malformed config {path}: {source}")]
    Config { path: PathBuf, source: serde_json::Error },
    #[error("unsupported value in {path}: {message}")]
    Unsupported { path: PathBuf, message: String },
    #[error("{dir} has no weights for variant '{variant}': {file} does not exist (weight files present: {present})")]
    MissingVariant { dir: PathBuf, variant: String, file: String, present: String },
    #[error("{dir} has no {file}{hint}")]
    MissingWeights { dir: PathBuf, file: String, hint: String },
    #[error("{path} is not a PyTorch checkpoint kiln can read: {message}")]
    Checkpoint { path: PathBuf, message: String },
    #[error("{path}: refused: its pickle calls `{global}`, which is not part of a tensor state dict (kiln never runs a checkpoint's code; convert it to safetensors if you trust it)")]
    UnsafePickle { path: PathBuf, global: String },
}

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

/// The weights file of the component folder `dir` (`stem`: `diffusion_pytorch_model` for
/// diffusers' models, `model` for transformers'), or an error that says which weight files the
/// folder has instead: the variant's file missing, sharded checkpoints, PyTorch pickles.
pub fn weights_path(dir: &Path, stem: &str, variant: Option<&str>) -> Result<PathBuf, LoadError> {
    let file = weights_file_name(stem, variant);
    let path = dir.join(&file);
    if path.is_file() {
        return Ok(path);
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
    let hint = if present.iter().any(|n| n.ends_with(".safetensors.index.json")) {
        " (sharded checkpoints are not supported; merge the shards into one file)".to_string()
    } else if present.iter().any(|n| n.ends_with(".bin")) {
        " (only safetensors weights are supported, not PyTorch .bin files)".to_string()
    } else if !present.is_empty() {
        format!(" (weight files present: {}; pass the variant, e.g. fp16)", present.join(", "))
    } else {
        String::new()
    };
    Err(LoadError::MissingWeights { dir: dir.into(), file, hint })
}

fn list(names: &[String]) -> String {
    const SHOWN: usize = 20;
    let mut s = names.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > SHOWN {
        s.push_str(&format!(", … ({} more)", names.len() - SHOWN));
    }
    s
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

/// Loads `path` into `module`, casting every float tensor to `dtype`.
///
/// `remap` holds `(regex, replacement)` pairs applied to the file's keys before matching (for the
/// few places where diffusers' key layout cannot be mirrored by field names, e.g. `ff.net.0.proj`);
/// `ignore` holds regexes of file keys that are known to be unused (e.g. CLIP's `position_ids`
/// buffer) and are not reported.
pub fn load_safetensors<M: Module>(
    mut module: M,
    path: &Path,
    dtype: DType,
    remap: &[(&str, &str)],
    ignore: &[&str],
) -> Result<M, LoadError> {
    // Check the file up front: burn-store opens it lazily, and its errors do not name the path.
    read_safetensors_header(path)?;

    let mut store = SafetensorsStore::from_file(path)
        .with_from_adapter(PyTorchToBurnAdapter.chain(FloatCastAdapter::to(dtype)))
        .allow_partial(true)
        // Modules that are one of several layer kinds under the same diffusers key (e.g.
        // Transformer2D's proj_in: Linear or 1×1 Conv2d) are enums; their variant names are not
        // part of the keys.
        .skip_enum_variants(true)
        // Shape/dtype errors are collected in `result.errors` and reported as `Mismatch` below;
        // with `validate(true)` burn-store returns them as an opaque `ValidationFailed` error.
        .validate(false);
    for (from, to) in remap {
        store = store.with_key_remapping(*from, *to);
    }
    let result = module.load_from(&mut store).map_err(|e| LoadError::Format { path: path.into(), message: e.to_string() })?;
    if !result.errors.is_empty() {
        return Err(LoadError::Mismatch { path: path.into(), errors: result.errors.iter().map(|e| e.to_string()).collect() });
    }
    if !result.missing.is_empty() {
        let mut names: Vec<String> = result.missing.iter().map(|(p, _)| p.clone()).collect();
        names.sort();
        return Err(LoadError::Missing { path: path.into(), names });
    }
    let ignore: Vec<regex_lite::Regex> = ignore.iter().map(|p| regex_lite::Regex::new(p).expect("valid ignore pattern")).collect();
    let mut unused: Vec<String> = result.unused.into_iter().filter(|k| !ignore.iter().any(|r| r.is_match(k))).collect();
    if !unused.is_empty() {
        unused.sort();
        return Err(LoadError::Unused { path: path.into(), names: unused });
    }
    Ok(module)
}

/// One tensor of a safetensors header.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorEntry {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<u64>,
    /// The element count (the shape's product, which [`read_safetensors_header`] checks fits).
    pub numel: u64,
    /// `data_offsets`: where the tensor's bytes start and end in the data section.
    pub offsets: (u64, u64),
}

/// A safetensors file's header, checked against the file: kiln's one reader of the format's
/// header (the loader checks files with it before burn-store maps them; `kiln info` lists them).
#[derive(Debug, Clone, PartialEq)]
pub struct SafetensorsHeader {
    pub file_bytes: u64,
    pub tensors: Vec<TensorEntry>,
    /// `__metadata__` (e.g. `{"format": "pt"}`).
    pub metadata: std::collections::BTreeMap<String, String>,
}

/// The file at `path`, opened, and its length; a FIFO, device or folder is refused (reading one
/// could block or never end).
pub(crate) fn open_regular_file(path: &Path) -> Result<(std::fs::File, u64), LoadError> {
    let io = |source| LoadError::Io { path: path.into(), source };
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_file() {
        return Err(io(std::io::Error::other("not a regular file")));
    }
    Ok((std::fs::File::open(path).map_err(io)?, meta.len()))
}

/// Bytes per element of the safetensors dtypes kiln knows.
pub fn dtype_size(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" => 1,
        "I16" | "U16" | "F16" | "BF16" => 2,
        "I32" | "U32" | "F32" => 4,
        "I64" | "U64" | "F64" => 8,
        _ => return None,
    })
}

/// Reads the header of the safetensors file at `path` (8-byte little-endian length, then JSON)
/// and checks every tensor against the file without reading the data: a header that fits the
/// file, a JSON object, each tensor with a dtype, a shape whose element count fits in 64 bits,
/// `data_offsets` inside the data section, and as many bytes as its dtype and shape need (a
/// dtype kiln does not know: at most 8 elements a byte). Errors name the file and the tensor;
/// truncated downloads are reported as such.
pub fn read_safetensors_header(path: &Path) -> Result<SafetensorsHeader, LoadError> {
    use std::io::Read;
    let format = |message: String| LoadError::Format { path: path.into(), message };
    let io = |source| LoadError::Io { path: path.into(), source };
    let (mut file, file_bytes) = open_regular_file(path)?;
    let mut n = [0u8; 8];
    if file_bytes < 8 {
        return Err(format(format!("{file_bytes} bytes, shorter than the 8-byte header length")));
    }
    file.read_exact(&mut n).map_err(io)?;
    let header_len = u64::from_le_bytes(n);
    // safetensors caps headers at 100 MB
    if header_len > file_bytes - 8 || header_len > 100_000_000 {
        return Err(format(format!("header length {header_len} does not fit the file ({file_bytes} bytes)")));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header).map_err(|e| format(e.to_string()))?;
    let header: serde_json::Value = serde_json::from_slice(&header).map_err(|e| format(format!("header is not valid JSON: {e}")))?;
    let obj = header.as_object().ok_or_else(|| format("header is not a JSON object".into()))?;
    let data_bytes = file_bytes - 8 - header_len;
    let mut out = SafetensorsHeader { file_bytes, tensors: Vec::new(), metadata: Default::default() };
    for (name, entry) in obj {
        if name == "__metadata__" {
            if let Some(m) = entry.as_object() {
                for (k, v) in m {
                    out.metadata.insert(k.clone(), v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()));
                }
            }
            continue;
        }
        let bad = |what: String| format(format!("tensor `{name}`: {what}"));
        let dtype = entry.get("dtype").and_then(|d| d.as_str()).ok_or_else(|| bad("no dtype".into()))?;
        let shape = entry
            .get("shape")
            .and_then(|s| s.as_array())
            .and_then(|s| s.iter().map(|d| d.as_u64()).collect::<Option<Vec<u64>>>())
            .ok_or_else(|| bad("no valid shape".into()))?;
        let offsets = entry
            .get("data_offsets")
            .and_then(|o| o.as_array())
            .and_then(|o| o.iter().map(|d| d.as_u64()).collect::<Option<Vec<u64>>>())
            .filter(|o| o.len() == 2)
            .ok_or_else(|| bad("no valid data_offsets".into()))?;
        let numel = shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d)).ok_or_else(|| bad(format!("shape {shape:?} has more than 2^64 elements")))?;
        let (begin, end) = (offsets[0], offsets[1]);
        if begin > end || end > data_bytes {
            return Err(bad(format!("data_offsets [{begin}, {end}] lie outside the {data_bytes} data bytes (truncated file?)")));
        }
        let bytes = (end - begin) as u128;
        match dtype_size(dtype) {
            Some(size) if numel as u128 * size as u128 != bytes => {
                return Err(bad(format!("{dtype} {shape:?} needs {} bytes, data_offsets give {bytes}", numel as u128 * size as u128)));
            }
            None if numel as u128 > bytes * 8 => {
                return Err(bad(format!("{dtype} {shape:?} has {numel} elements in {bytes} bytes")));
            }
            _ => {}
        }
        out.tensors.push(TensorEntry { name: name.clone(), dtype: dtype.to_string(), shape, numel, offsets: (begin, end) });
    }
    Ok(out)
}
