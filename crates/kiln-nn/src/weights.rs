//! Weights files read one tensor at a time, and what a module loads from one.
//!
//! [`WeightsFile`] opens a safetensors file or a PyTorch checkpoint (read without running its
//! pickle, [`crate::torch_checkpoint`]) and reads a tensor's bytes when they are asked for,
//! never the whole file. [`Weights`] is one module's share of a file: each of the module's tensor
//! names (diffusers' keys) with the file key it comes from and how its bytes are reshaped on the
//! way ([`Transform`]: the slices of a fused `in_proj`, a transposed projection, a 1×1
//! convolution read as a linear layer). A diffusers folder's file is loaded as it is
//! ([`Weights::all`]); a single-file checkpoint is loaded through the plan its key map builds
//! (kiln-pipeline's `single_file`). Loading goes through burn-store's applier with kiln's adapter
//! ([`TorchNames`]: burn's norms call PyTorch's `weight/bias` `gamma/beta`; kiln's [`crate::Linear`]
//! keeps PyTorch's layout, so nothing is transposed) and [`LoadCast`] (the dtype chosen at load;
//! on the CPU a half-precision file's linear and convolution weights stay as they are, read
//! straight into their tensors without a conversion pass), and both tensors the module expects
//! but the plan lacks and tensors the plan has but the module does not use are errors listing the
//! names: a silently half-loaded model draws garbage.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::module::Module;
use burn::store::burn_pack::{Error as PackError, Tensor as PackTensor};
use burn::store::{bridge, FloatCastAdapter, ModuleAdapter, ModuleContext, ModuleSnapshot};
use burn::tensor::{Bytes, DType, Device, TensorData};

use crate::error::LoadError;
use crate::safetensors::{dtype_size, read_safetensors_header};
use crate::torch_checkpoint::{is_zip, read_torch_checkpoint, TorchCheckpoint};

/// One tensor of a weights file, as the file stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredTensor {
    pub name: String,
    /// safetensors' dtype name (`F32`, `F16`, `BF16`, ...).
    pub dtype: String,
    pub shape: Vec<u64>,
}

/// One open safetensors file and where its data section starts.
struct Shard {
    path: PathBuf,
    file: std::fs::File,
    data_start: u64,
}

enum Source {
    /// The open file, or the shards of a sharded checkpoint; each tensor's shard and
    /// `(start, end)` in its data section.
    Safetensors { shards: Vec<Shard>, place: Vec<(usize, (u64, u64))> },
    Torch(TorchCheckpoint),
}

/// The largest `*.safetensors.index.json` kiln reads (FLUX's transformer's is ~120 KB).
const INDEX_LIMIT: u64 = 64 << 20;

/// A safetensors file or a PyTorch checkpoint, its tensors listed, their data read on demand.
pub struct WeightsFile {
    path: PathBuf,
    tensors: Vec<StoredTensor>,
    index: HashMap<String, usize>,
    source: Source,
}

impl std::fmt::Debug for WeightsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightsFile").field("path", &self.path).field("tensors", &self.tensors.len()).finish()
    }
}

impl WeightsFile {
    /// Opens `path`: a zip archive as a PyTorch checkpoint (`.ckpt`, `.pt`, `.pth`, `.bin`), a
    /// sharded checkpoint's index (`*.safetensors.index.json`, [`WeightsFile::open_sharded`]),
    /// else a safetensors file; its header (or pickle) is read and checked against the file, no
    /// data.
    pub fn open(path: &Path) -> Result<Arc<Self>, LoadError> {
        if path.file_name().is_some_and(|n| n.to_string_lossy().ends_with(".json")) {
            return Self::open_sharded(path);
        }
        let (tensors, source): (Vec<StoredTensor>, Source) = if is_zip(path) || path.extension().is_some_and(|e| ["bin", "ckpt", "pt", "pth"].iter().any(|x| e == *x)) {
            let checkpoint = read_torch_checkpoint(path)?;
            let tensors = checkpoint
                .tensors
                .iter()
                .map(|t| StoredTensor { name: t.name.clone(), dtype: t.dtype.to_string(), shape: t.shape.clone() })
                .collect();
            (tensors, Source::Torch(checkpoint))
        } else {
            let header = read_safetensors_header(path)?;
            let file = std::fs::File::open(path).map_err(|source| LoadError::Io { path: path.into(), source })?;
            let place = header.tensors.iter().map(|t| (0, t.offsets)).collect();
            let tensors = header.tensors.into_iter().map(|t| StoredTensor { name: t.name, dtype: t.dtype, shape: t.shape }).collect();
            (tensors, Source::Safetensors { shards: vec![Shard { path: path.into(), file, data_start: header.data_start }], place })
        };
        let index = tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        Ok(Arc::new(Self { path: path.into(), tensors, index, source }))
    }

    /// Opens a sharded safetensors checkpoint from its index (`{"weight_map": {tensor: shard
    /// file}}`, as `save_pretrained(max_shard_size=…)` writes it): every shard named there is
    /// opened from the index's folder and its header read; a tensor the index places in a shard
    /// that lacks it, a shard outside the folder, or a tensor in two shards is an error naming it.
    pub fn open_sharded(index_path: &Path) -> Result<Arc<Self>, LoadError> {
        let format = |message: String| LoadError::Format { path: index_path.into(), message };
        let (mut file, len) = crate::safetensors::open_regular_file(index_path)?;
        if len > INDEX_LIMIT {
            return Err(format(format!("{len} bytes; an index is at most {INDEX_LIMIT}")));
        }
        let mut text = String::new();
        std::io::Read::read_to_string(&mut file, &mut text).map_err(|source| LoadError::Io { path: index_path.into(), source })?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| format(format!("not JSON: {e}")))?;
        let map = json.get("weight_map").and_then(serde_json::Value::as_object).ok_or_else(|| format("no `weight_map` object".into()))?;
        let dir = index_path.parent().unwrap_or(Path::new("."));
        let mut shard_names: Vec<&str> = Vec::new();
        for (name, file) in map {
            let file = file.as_str().ok_or_else(|| format(format!("`{name}` maps to {file}, not a file name")))?;
            // a shard is a file beside the index: no `/`, no `..`
            let mut parts = Path::new(file).components();
            if !matches!((parts.next(), parts.next()), (Some(std::path::Component::Normal(_)), None)) {
                return Err(format(format!("shard {file:?} (of `{name}`) is not a file name in the index's folder")));
            }
            if !shard_names.contains(&file) {
                shard_names.push(file);
            }
        }
        shard_names.sort_unstable();
        let mut shards = Vec::with_capacity(shard_names.len());
        let mut tensors = Vec::new();
        let mut place = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        for (s, shard_name) in shard_names.iter().enumerate() {
            let path = dir.join(shard_name);
            let header = read_safetensors_header(&path)?;
            let file = std::fs::File::open(&path).map_err(|source| LoadError::Io { path: path.clone(), source })?;
            for t in header.tensors {
                match map.get(&t.name).and_then(serde_json::Value::as_str) {
                    Some(f) if f == *shard_name => {}
                    // a tensor the index does not place here: diffusers reads only what the index lists
                    _ => continue,
                }
                if index.insert(t.name.clone(), tensors.len()).is_some() {
                    return Err(format(format!("tensor `{}` is in two shards", t.name)));
                }
                place.push((s, t.offsets));
                tensors.push(StoredTensor { name: t.name, dtype: t.dtype, shape: t.shape });
            }
            shards.push(Shard { path, file, data_start: header.data_start });
        }
        if let Some((name, file)) = map.iter().find(|(name, _)| !index.contains_key(name.as_str())) {
            return Err(format(format!("the index places `{name}` in {file}, which has no such tensor")));
        }
        Ok(Arc::new(Self { path: index_path.into(), tensors, index, source: Source::Safetensors { shards, place } }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every tensor, in the file's order.
    pub fn tensors(&self) -> &[StoredTensor] {
        &self.tensors
    }

    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Option<&StoredTensor> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    /// The elements of `name`, row-major, little-endian (a checkpoint's strided view gathered).
    pub fn read(&self, name: &str) -> Result<Vec<u8>, LoadError> {
        let missing = || LoadError::Missing { path: self.path.clone(), names: vec![name.to_string()] };
        let &i = self.index.get(name).ok_or_else(missing)?;
        match &self.source {
            Source::Safetensors { shards, place } => {
                let (s, offsets) = place[i];
                let shard = &shards[s];
                let (at, len) = self.span(name, shard.data_start, offsets)?;
                let mut out = vec![0u8; len];
                shard.file.read_exact_at(&mut out, at).map_err(|source| LoadError::Io { path: shard.path.clone(), source })?;
                Ok(out)
            }
            Source::Torch(checkpoint) => checkpoint.tensor_bytes(&checkpoint.tensors[i]),
        }
    }

    /// Where safetensors tensor `name` (its `(begin, end)` offsets in the data section) lies in
    /// the file, and its length in bytes.
    fn span(&self, name: &str, data_start: u64, (begin, end): (u64, u64)) -> Result<(u64, usize), LoadError> {
        let len = usize::try_from(end - begin).map_err(|_| LoadError::Format { path: self.path.clone(), message: format!("tensor `{name}` does not fit in memory") })?;
        Ok((data_start + begin, len))
    }

    /// The safetensors tensor `name` read straight into an allocation aligned for its elements
    /// (`shape` and `dtype` as stored): no byte vector copied again to align it. `None` for a
    /// PyTorch checkpoint or a dtype without a fixed element size.
    fn read_aligned(&self, name: &str, shape: &[usize], dtype: DType) -> Result<Option<TensorData>, LoadError> {
        let (Source::Safetensors { shards, place }, Some(&i)) = (&self.source, self.index.get(name)) else { return Ok(None) };
        let (s, offsets) = place[i];
        let Shard { path, file, data_start } = &shards[s];
        let (at, len) = self.span(name, *data_start, offsets)?;
        let io = |source| LoadError::Io { path: path.clone(), source };
        /// `len` bytes at `at` as elements of `E`: zero-filled by the allocator (fresh pages, no
        /// pass over them), then the file's bytes read over them.
        fn read<E: Copy + Default + bytemuck_free::Pod>(file: &std::fs::File, at: u64, len: usize) -> std::io::Result<Vec<E>> {
            let mut out = vec![E::default(); len / std::mem::size_of::<E>()];
            // SAFETY: `E` is a plain integer type: any bytes are a valid value, and the slice
            // covers exactly the vector's initialised elements.
            let bytes = unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<u8>(), out.len() * std::mem::size_of::<E>()) };
            file.read_exact_at(bytes, at)?;
            Ok(out)
        }
        let bytes = match dtype.size() {
            _ if len % dtype.size().max(1) != 0 => return Ok(None),
            2 => Bytes::from_elems(read::<u16>(file, at, len).map_err(io)?),
            4 => Bytes::from_elems(read::<u32>(file, at, len).map_err(io)?),
            8 => Bytes::from_elems(read::<u64>(file, at, len).map_err(io)?),
            _ => return Ok(None),
        };
        TensorData::try_from_bytes(bytes, shape.to_vec(), dtype)
            .map(Some)
            .map_err(|e| LoadError::Mismatch { path: self.path.clone(), errors: vec![format!("tensor `{name}`: {e}")] })
    }
}

/// The element types [`WeightsFile::read_aligned`] reads into: plain integers, every bit pattern
/// a valid value.
mod bytemuck_free {
    pub trait Pod {}
    impl Pod for u16 {}
    impl Pod for u32 {}
    impl Pod for u64 {}
}

/// How a file's tensor becomes a module's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    /// As stored.
    None,
    /// The `index`-th of `parts` equal slices along the first axis (OpenCLIP's fused `in_proj`
    /// → q, k, v).
    Rows { index: usize, parts: usize },
    /// A 2-D tensor transposed (OpenCLIP's `text_projection`, stored `x @ W`).
    Transpose,
    /// Trailing axes of size 1 dropped (a 1×1 convolution's weight read as a linear layer's).
    Squeeze,
}

impl Transform {
    /// The shape `shape` becomes, or why it cannot.
    pub fn shape(self, shape: &[u64]) -> Result<Vec<u64>, String> {
        match self {
            Transform::None => Ok(shape.to_vec()),
            Transform::Rows { index, parts } => match shape.first() {
                Some(&rows) if parts > 0 && index < parts && rows % parts as u64 == 0 => {
                    let mut out = shape.to_vec();
                    out[0] = rows / parts as u64;
                    Ok(out)
                }
                _ => Err(format!("shape {shape:?} does not split into {parts} equal parts along its first axis")),
            },
            Transform::Transpose => match shape {
                [a, b] => Ok(vec![*b, *a]),
                _ => Err(format!("shape {shape:?} is not 2-D, so it cannot be transposed")),
            },
            Transform::Squeeze => {
                let mut out = shape.to_vec();
                while out.len() > 2 && out.last() == Some(&1) {
                    out.pop();
                }
                Ok(out)
            }
        }
    }

    /// Applies the transform to `bytes` (the tensor of `shape`, `size` bytes an element).
    fn apply(self, bytes: Vec<u8>, shape: &[u64], size: usize) -> Vec<u8> {
        match self {
            Transform::None | Transform::Squeeze => bytes,
            Transform::Rows { index, parts } => {
                let part = bytes.len() / parts;
                bytes[index * part..(index + 1) * part].to_vec()
            }
            Transform::Transpose => {
                let (rows, cols) = (shape[0] as usize, shape[1] as usize);
                let mut out = vec![0u8; bytes.len()];
                for r in 0..rows {
                    for c in 0..cols {
                        let from = (r * cols + c) * size;
                        let to = (c * rows + r) * size;
                        out[to..to + size].copy_from_slice(&bytes[from..from + size]);
                    }
                }
                out
            }
        }
    }
}

/// One tensor a module loads: its name in the module (diffusers' key), the file's key it is read
/// from, and the transform on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Weight {
    pub name: String,
    pub key: String,
    pub transform: Transform,
}

impl Weight {
    pub fn new(name: impl Into<String>, key: impl Into<String>, transform: Transform) -> Self {
        Self { name: name.into(), key: key.into(), transform }
    }
}

/// What one module loads from a weights file.
#[derive(Debug, Clone)]
pub struct Weights {
    pub file: Arc<WeightsFile>,
    pub weights: Vec<Weight>,
}

/// burn's dtype of a safetensors dtype name (the float and integer dtypes weights files hold).
pub fn burn_dtype(dtype: &str) -> Option<DType> {
    Some(match dtype {
        "F64" => DType::F64,
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "I64" => DType::I64,
        "I32" => DType::I32,
        _ => return None,
    })
}

/// The file's tensor `key` with `transform` applied: its bytes, dtype (safetensors' name) and
/// shape.
fn read_transformed(file: &WeightsFile, key: &str, transform: Transform) -> Result<(Vec<u8>, String, Vec<u64>), LoadError> {
    let stored = file.get(key).ok_or_else(|| LoadError::Missing { path: file.path().into(), names: vec![key.to_string()] })?;
    let size = dtype_size(&stored.dtype).ok_or_else(|| LoadError::Mismatch { path: file.path().into(), errors: vec![format!("tensor `{key}`: dtype {} is not one kiln reads", stored.dtype)] })?;
    let shape = transform
        .shape(&stored.shape)
        .map_err(|m| LoadError::Mismatch { path: file.path().into(), errors: vec![format!("tensor `{key}`: {m}")] })?;
    Ok((transform.apply(file.read(key)?, &stored.shape, size as usize), stored.dtype.clone(), shape))
}

impl Weights {
    /// `w` as the module receives it: its bytes (read and transformed), its dtype (safetensors'
    /// name) and shape.
    pub fn read(&self, w: &Weight) -> Result<(Vec<u8>, String, Vec<u64>), LoadError> {
        read_transformed(&self.file, &w.key, w.transform)
    }

    /// Every tensor of `file` under its own name (a diffusers folder's weights file).
    pub fn all(file: Arc<WeightsFile>) -> Self {
        let weights = file.tensors().iter().map(|t| Weight::new(t.name.clone(), t.name.clone(), Transform::None)).collect();
        Self { file, weights }
    }

    /// Renames the module-side names with `(regex, replacement)` pairs, in order (for the few
    /// places where a key layout cannot be mirrored by field names, e.g. transformers ≥ 5's bare
    /// `CLIPTextModel` without the `text_model.` prefix).
    pub fn rename(mut self, remap: &[(&str, &str)]) -> Self {
        for (from, to) in remap {
            let re = regex_lite::Regex::new(from).expect("valid remap pattern");
            for w in &mut self.weights {
                if re.is_match(&w.name) {
                    w.name = re.replace(&w.name, *to).into_owned();
                }
            }
        }
        self
    }

    /// Loads the weights into `module`, casting every float tensor to `dtype`. `ignore` holds
    /// regexes of names known to be unused (e.g. CLIP's `position_ids` buffer), not reported.
    /// Tensors are read from the file one at a time, as burn asks for them.
    pub fn load_into<M: Module>(self, mut module: M, dtype: DType, ignore: &[&str]) -> Result<M, LoadError> {
        let path = self.file.path().to_path_buf();
        let mut tensors = Vec::with_capacity(self.weights.len());
        for w in self.weights {
            let stored = self.file.get(&w.key).ok_or_else(|| LoadError::Missing { path: path.clone(), names: vec![w.key.clone()] })?;
            let bad = |message: String| LoadError::Mismatch { path: path.clone(), errors: vec![format!("tensor `{}` (for `{}`): {message}", w.key, w.name)] };
            let stored_dtype = burn_dtype(&stored.dtype).ok_or_else(|| bad(format!("dtype {} is not one kiln loads", stored.dtype)))?;
            let shape = w.transform.shape(&stored.shape).map_err(bad)?;
            let shape_usize: Vec<usize> = shape.iter().map(|&d| usize::try_from(d)).collect::<Result<_, _>>().map_err(|_| bad(format!("shape {shape:?} does not fit in memory")))?;
            let (file, key, transform) = (self.file.clone(), w.key.clone(), w.transform);
            let data_shape = shape_usize.clone();
            tensors.push(bridge::deferred(w.name, stored_dtype, shape_usize.into(), None, move || {
                let failed = |e: LoadError| PackError::ValidationError(e.to_string());
                // as stored (or only reshaped): straight into an aligned tensor
                if matches!(transform, Transform::None | Transform::Squeeze) {
                    if let Some(data) = file.read_aligned(&key, &data_shape, stored_dtype).map_err(failed)? {
                        return Ok(data);
                    }
                }
                let (bytes, ..) = read_transformed(&file, &key, transform).map_err(failed)?;
                Ok(TensorData::from_bytes_vec(bytes, data_shape.clone(), stored_dtype))
            }));
        }
        let cpu = {
            let devices = module.devices();
            !devices.is_empty() && devices.iter().all(|d| !d.is_autodiff() && *d == Device::flex())
        };
        let cast = LoadCast { dtype, keep_half_weights: cpu && dtype == DType::F32 };
        let adapter: Box<dyn ModuleAdapter> = Box::new(TorchNames::FromTorch.chain(cast));
        // Modules that are one of several layer kinds under the same diffusers key (e.g.
        // Transformer2D's proj_in: Linear or 1×1 Conv2d) are enums; their variant names are not
        // part of the keys.
        let result = module.apply(tensors, None, Some(adapter), true);
        if !result.errors.is_empty() {
            return Err(LoadError::Mismatch { path, errors: result.errors.iter().map(|e| e.to_string()).collect() });
        }
        if !result.missing.is_empty() {
            let mut names: Vec<String> = result.missing.iter().map(|(p, _)| p.clone()).collect();
            names.sort();
            return Err(LoadError::Missing { path, names });
        }
        let ignore: Vec<regex_lite::Regex> = ignore.iter().map(|p| regex_lite::Regex::new(p).expect("valid ignore pattern")).collect();
        let mut unused: Vec<String> = result.unused.into_iter().filter(|k| !ignore.iter().any(|r| r.is_match(k))).collect();
        if !unused.is_empty() {
            unused.sort();
            return Err(LoadError::Unused { path, names: unused });
        }
        Ok(module)
    }
}

/// burn-store's adapter between PyTorch's state-dict names and kiln's modules: burn's norms
/// (`GroupNorm`, `LayerNorm`) call PyTorch's `weight`/`bias` `gamma`/`beta`. The only difference:
/// kiln's [`crate::Linear`] keeps PyTorch's `[out, in]` layout, so unlike burn's
/// `PyTorchToBurnAdapter`/`BurnToPyTorchAdapter` nothing is transposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TorchNames {
    /// Loading a PyTorch file into a module.
    FromTorch,
    /// Naming a module's tensors as PyTorch does (saving, listing).
    ToTorch,
}

const NORMS: [&str; 4] = ["Struct:GroupNorm", "Struct:LayerNorm", "Struct:BatchNorm", "Struct:RmsNorm"];

/// The last segment of the tensor's name (`weight` of `…conv_in.weight`).
fn param_name(tensor: &PackTensor) -> &str {
    tensor.name.rsplit('.').next().unwrap_or("")
}

/// The tensor with the last segment of its name replaced by `to`.
fn rename_last(mut tensor: PackTensor, to: &str) -> PackTensor {
    let keep = tensor.name.rfind('.').map_or(0, |i| i + 1);
    tensor.name.truncate(keep);
    tensor.name.push_str(to);
    tensor
}

impl TorchNames {
    /// `(torch, burn)` name pairs of a norm's parameters.
    const PAIRS: [(&'static str, &'static str); 2] = [("weight", "gamma"), ("bias", "beta")];

    /// The name `param` takes in the other convention (`from_torch`: PyTorch's to burn's).
    fn other(param: &str, from_torch: bool) -> Option<&'static str> {
        Self::PAIRS.iter().find_map(|&(torch, burn)| match from_torch {
            true if param == torch => Some(burn),
            false if param == burn => Some(torch),
            _ => None,
        })
    }
}

impl ModuleAdapter for TorchNames {
    fn adapt(&self, tensor: PackTensor, ctx: ModuleContext<'_>) -> PackTensor {
        if !ctx.module_type().is_some_and(|t| NORMS.contains(&t)) {
            return tensor;
        }
        match Self::other(param_name(&tensor), *self == TorchNames::FromTorch) {
            Some(to) => rename_last(tensor, to),
            None => tensor,
        }
    }

    fn get_alternative_param_name(&self, param_name: &str, container_type: &str) -> Option<String> {
        if !NORMS.contains(&container_type) {
            return None;
        }
        // the applier looks for the module's name and tries the file's
        Self::other(param_name, *self == TorchNames::ToTorch).map(str::to_string)
    }

    fn clone_box(&self) -> Box<dyn ModuleAdapter> {
        Box::new(*self)
    }
}

/// The modules whose `weight` stays in a half-precision file's dtype on the CPU: kiln's linear
/// layers and burn's convolutions (kiln-ops' CPU kernels read them as they are, `cpu/weights.rs`)
/// and embedding tables (the rows looked up are widened, kiln-text-encoder's `ClipTextEmbeddings`).
const KEPT: [&str; 3] = ["Struct:Linear", "Struct:Conv2d", "Struct:Embedding"];

/// The dtype chosen at load: every float tensor cast to `dtype`, except, when
/// `keep_half_weights` (f32 on the CPU), the f16/bf16 weights of linear layers, convolutions and
/// embedding tables (`KEPT`), which stay as stored: half the memory and no conversion pass.
#[derive(Debug, Clone, Copy)]
pub struct LoadCast {
    pub dtype: DType,
    pub keep_half_weights: bool,
}

impl ModuleAdapter for LoadCast {
    fn adapt(&self, tensor: PackTensor, ctx: ModuleContext<'_>) -> PackTensor {
        if !tensor.dtype.is_float() || tensor.dtype == self.dtype {
            return tensor;
        }
        let matrix = ctx.module_type().is_some_and(|t| KEPT.contains(&t)) && param_name(&tensor) == "weight";
        if self.keep_half_weights && matrix && matches!(tensor.dtype, DType::F16 | DType::BF16) {
            return tensor;
        }
        FloatCastAdapter::to(self.dtype).adapt(tensor, ctx)
    }

    fn clone_box(&self) -> Box<dyn ModuleAdapter> {
        Box::new(*self)
    }
}
