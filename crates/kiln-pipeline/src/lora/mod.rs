//! LoRAs: low-rank updates of the denoiser's (UNet, SD 3 / FLUX transformer) and text encoders'
//! linear and convolution weights, merged into the loaded model's weights
//! (`W + scale · alpha/rank · up @ down`) and taken out again exactly
//! ([`crate::StableDiffusion::load_lora`], `unload_loras`, `set_lora_scales`; the same methods on
//! [`crate::StableDiffusion3`] and [`crate::Flux`]).
//!
//! Formats, told apart by their keys:
//! * kohya / A1111 (`lora_unet_*`, `lora_te_*`, SDXL's `lora_te1_*`/`lora_te2_*`, with
//!   `.lora_down.weight`, `.lora_up.weight`, `.alpha`): a module named by its path with `_` for
//!   `.`, as diffusers' `_convert_non_diffusers_lora_to_diffusers` reads it — the UNet by
//!   diffusers' names (SD 1.x/2.x) or the original LDM names (SDXL's `input_blocks_4_1_…`,
//!   `_maybe_map_sgm_blocks_to_diffusers`); LoCon's convolution updates (3×3 down, 1×1 up) too;
//! * diffusers / PEFT (`unet.<module>.lora_A.weight` / `.lora_B.weight`, or `.lora.down.weight` /
//!   `.lora.up.weight`, `transformer.…` for SD 3 and FLUX, `text_encoder.…`, `text_encoder_2.…`,
//!   `text_encoder_3.…`), alpha from `.alpha` keys or from the `lora_adapter_metadata` diffusers'
//!   `save_lora_weights` writes into the safetensors header (each component's peft `lora_alpha`
//!   and `alpha_pattern`), else the rank;
//! * kohya's FLUX LoRAs (`lora_unet_double_blocks_{i}_img_attn_qkv`, `…single_blocks_{i}_linear1`:
//!   the original model's modules, fused ones split as diffusers splits them, `lora/kohya_flux.rs`) on a
//!   model with a transformer. kohya's SD 3 LoRAs are not read yet: an error says so.
//!
//! A LoRA is applied whole or not at all: a module the model does not have, an update whose shape
//! does not fit its weight, or a layer kind kiln does not apply (LoHa, LoKr, Tucker `lora_mid`,
//! full `diff` deltas) is an error naming the keys.

pub mod apply;
pub mod hash;
mod kohya_flux;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::{DType, Device, Tensor, TensorData};
use kiln_nn::{burn_dtype, Delta, Factor as NnFactor, LoadError, Originals, Update, WeightsFile};
use thiserror::Error;

/// Why a LoRA cannot be applied. Every variant names the file.
#[derive(Debug, Error)]
pub enum LoraError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("{path} is not a LoRA kiln reads: {message}")]
    Format { path: PathBuf, message: String },
    #[error("{path}: {} of its {total} modules match nothing in this model ({}); kiln applies a LoRA whole or not at all{hint}", keys.len(), list(keys))]
    Unmatched { path: PathBuf, keys: Vec<String>, total: usize, hint: String },
    #[error("{path}: {}", errors.join("; "))]
    Shape { path: PathBuf, errors: Vec<String> },
}

fn list(keys: &[String]) -> String {
    let mut s = keys.iter().take(8).cloned().collect::<Vec<_>>().join(", ");
    if keys.len() > 8 {
        s.push_str(&format!(", … ({} more)", keys.len() - 8));
    }
    s
}

/// The LoRAs a pipeline holds (each read once, its updates kept on the device, so that a new
/// scale or another LoRA merges again without reading the files), and its weights as they were
/// before them.
#[derive(Debug, Default)]
pub struct LoraState {
    pub(crate) loaded: Vec<LoadedLora>,
    pub(crate) originals: HashMap<&'static str, Originals>,
}

/// One loaded LoRA: what it is, its scale, and its updates matched to the model.
#[derive(Debug)]
pub(crate) struct LoadedLora {
    pub(crate) path: PathBuf,
    pub(crate) format: LoraFormat,
    pub(crate) modules: usize,
    pub(crate) hash: String,
    pub(crate) scale: f64,
    pub(crate) updates: Updates,
}

impl LoadedLora {
    /// What it does at its scale.
    pub(crate) fn report(&self) -> LoraReport {
        let applied = self.updates.1.iter().map(|(c, n)| (c.to_string(), *n)).collect();
        LoraReport { path: self.path.clone(), scale: self.scale, format: self.format, modules: self.modules, applied, hash: self.hash.clone() }
    }
}

/// How a module's update scales with its LoRA's scale: kohya's `scale · alpha / rank` (alpha
/// defaulting to the rank), or A1111's `calc_scale` ratio.
#[derive(Debug, Clone, Copy)]
enum Scaling {
    AlphaOverRank { alpha: f64, rank: f64 },
    Times(f64),
}

impl Scaling {
    fn at(self, scale: f64) -> f64 {
        match self {
            Scaling::AlphaOverRank { alpha, rank } => scale * alpha / rank,
            Scaling::Times(ratio) => scale * ratio,
        }
    }
}

/// A LoRA's updates matched to a model: for each component, each parameter's updates with how
/// they scale.
#[derive(Debug, Default)]
pub(crate) struct Updates(HashMap<&'static str, HashMap<String, Vec<(Update, Scaling)>>>, HashMap<&'static str, usize>);

impl Updates {
    /// The deltas at `scale`, added to `all` (by component and parameter, in order).
    pub(crate) fn add_to(&self, scale: f64, all: &mut HashMap<&'static str, HashMap<String, Vec<Delta>>>) {
        for (component, params) in &self.0 {
            let target = all.entry(component).or_default();
            for (name, updates) in params {
                target.entry(name.clone()).or_default().extend(updates.iter().map(|(u, s)| Delta { update: u.clone(), scale: s.at(scale) }));
            }
        }
    }
}

/// How one module's update is stored: the keys of its tensors.
#[derive(Debug, Clone)]
enum StoredKind {
    /// `lora_down`/`lora_up` (kohya), `lora_A`/`lora_B` or `lora.down`/`lora.up` (PEFT); LoCon's
    /// Tucker core `lora_mid`.
    LowRank { down: String, up: String, mid: Option<String> },
    /// LyCORIS LoHa: `hada_w1_a`, `hada_w1_b`, `hada_w2_a`, `hada_w2_b`, Tucker cores `hada_t1`,
    /// `hada_t2`.
    Hada { w1a: String, w1b: String, t1: Option<String>, w2a: String, w2b: String, t2: Option<String> },
    /// LyCORIS LoKr: `lokr_w1` or `lokr_w1_a`/`_b`, `lokr_w2` or `lokr_w2_a`/`_b` (Tucker core
    /// `lokr_t2`).
    Lokr { w1: Factor, w2: Factor, t2: Option<String> },
    /// A full delta: `diff` (and `diff_b` for the bias).
    Full { diff: String, diff_b: Option<String> },
}

/// A LoKr factor: one matrix, or the product of two.
#[derive(Debug, Clone)]
enum Factor {
    Whole(String),
    Product(String, String),
}

/// One module's update as stored, and its alpha.
#[derive(Debug, Clone)]
struct StoredModule {
    component: &'static str,
    /// The module's name in the file, without the component prefix (kohya: `down_blocks_0_…`;
    /// PEFT: `down_blocks.0.…`).
    name: String,
    /// The key the module is reported by.
    key: String,
    kind: StoredKind,
    alpha: Option<String>,
}

/// The layout a LoRA file uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoraFormat {
    Kohya,
    Peft,
}

/// A LoRA file, read: its modules (by component), not yet matched to a model.
#[derive(Debug)]
pub struct LoraFile {
    pub path: PathBuf,
    pub format: LoraFormat,
    file: Arc<WeightsFile>,
    modules: Vec<StoredModule>,
    /// diffusers' `lora_adapter_metadata`: each component's peft alphas.
    peft_alphas: HashMap<String, PeftAlphas>,
}

/// A component's alphas in diffusers' `lora_adapter_metadata` (peft's `LoraConfig`).
#[derive(Debug, Default)]
struct PeftAlphas {
    lora_alpha: Option<f64>,
    /// `alpha_pattern`: module name (or its last parts) → alpha.
    alpha_pattern: Vec<(String, f64)>,
    /// `use_rslora`: alpha / √rank in place of alpha / rank.
    rslora: bool,
}

impl PeftAlphas {
    /// The alpha of module `name`: the first pattern `name` ends with (as peft's
    /// `get_pattern_key` matches `(.*\.)?pattern$`), else `lora_alpha`.
    fn alpha(&self, name: &str) -> Option<f64> {
        self.alpha_pattern.iter().find(|(p, _)| name == p || name.ends_with(&format!(".{p}"))).map(|(_, a)| *a).or(self.lora_alpha)
    }
}

/// Reads diffusers' `lora_adapter_metadata` (a JSON object of `component.field` keys) from a
/// safetensors header; empty where there is none.
fn peft_metadata(path: &Path) -> Result<HashMap<String, PeftAlphas>, String> {
    let Ok(header) = kiln_nn::read_safetensors_header(path) else { return Ok(HashMap::new()) };
    let Some(text) = header.metadata.get("lora_adapter_metadata") else { return Ok(HashMap::new()) };
    let json: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text).map_err(|e| format!("its lora_adapter_metadata is not a JSON object: {e}"))?;
    let mut out: HashMap<String, PeftAlphas> = HashMap::new();
    let number = |key: &str, v: &serde_json::Value| v.as_f64().filter(|a| a.is_finite()).ok_or_else(|| format!("lora_adapter_metadata `{key}`: {v} is not a finite number"));
    for (key, value) in &json {
        let Some((component, field)) = key.split_once('.') else { continue };
        let entry = out.entry(component.to_string()).or_default();
        match field {
            "lora_alpha" => entry.lora_alpha = Some(number(key, value)?),
            "alpha_pattern" => {
                for (pattern, alpha) in value.as_object().into_iter().flatten() {
                    entry.alpha_pattern.push((pattern.clone(), number(&format!("{key}.{pattern}"), alpha)?));
                }
            }
            "use_rslora" => entry.rslora = value.as_bool().unwrap_or(false),
            "use_dora" if value.as_bool() == Some(true) => return Err("it is a DoRA (use_dora), which kiln does not apply yet".into()),
            _ => {}
        }
    }
    Ok(out)
}

/// What a LoRA did: the modules it updated of those it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraReport {
    pub path: PathBuf,
    pub scale: f64,
    pub format: LoraFormat,
    /// Modules in the file.
    pub modules: usize,
    /// Modules applied, by component (a fused kohya FLUX module or a full delta with a bias
    /// updates several weights).
    pub applied: BTreeMap<String, usize>,
    /// A1111's short hash of the file (`Lora hashes`).
    pub hash: String,
}

impl std::fmt::Display for LoraReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let applied: usize = self.applied.values().sum();
        let parts = self.applied.iter().map(|(c, n)| format!("{c} {n}")).collect::<Vec<_>>().join(", ");
        write!(f, "{}: {:?} LoRA at {}: {applied} of its {} modules applied ({parts})", self.path.display(), self.format, self.scale, self.modules)
    }
}

const KOHYA_PREFIXES: [(&str, &str); 4] = [("lora_unet_", "unet"), ("lora_te1_", "text_encoder"), ("lora_te2_", "text_encoder_2"), ("lora_te_", "text_encoder")];
const PEFT_PREFIXES: [(&str, &str); 5] =
    [("unet.", "unet"), ("transformer.", "transformer"), ("text_encoder_2.", "text_encoder_2"), ("text_encoder_3.", "text_encoder_3"), ("text_encoder.", "text_encoder")];
/// Layer kinds not applied yet: LoKr's `lokr_t1` (A1111 has none either), and the kinds A1111
/// has besides (IA³, GLoRA, OFT, norms).
const UNSUPPORTED: [&str; 6] = [".lokr_t1", ".on_input", ".a1.weight", ".oft_blocks", ".oft_diag", ".w_norm"];

impl LoraFile {
    /// Reads `path`'s keys (safetensors, or a PyTorch checkpoint without running its pickle).
    pub fn open(path: &Path) -> Result<Self, LoraError> {
        let file = WeightsFile::open(path)?;
        let bad = |message: String| LoraError::Format { path: path.into(), message };
        let names: Vec<&str> = file.tensors().iter().map(|t| t.name.as_str()).collect();
        let unsupported: Vec<String> = names.iter().filter(|n| UNSUPPORTED.iter().any(|u| n.contains(u))).map(|n| n.to_string()).collect();
        if !unsupported.is_empty() {
            return Err(bad(format!(
                "it holds layers kiln does not apply yet (IA³, GLoRA, OFT, norms, LoKr's lokr_t1): {}",
                list(&unsupported)
            )));
        }
        let mut modules = Vec::new();
        let mut format = None;
        let has = |k: &str| file.get(k).is_some();
        for name in &names {
            // a module is found by one key of its kind; its other keys must be there
            let optional = |k: String| has(&k).then_some(k);
            let (stem, fmt, kind) = if let Some(stem) = name.strip_suffix(".lora_down.weight") {
                let mid = optional(format!("{stem}.lora_mid.weight"));
                (stem, LoraFormat::Kohya, StoredKind::LowRank { down: name.to_string(), up: format!("{stem}.lora_up.weight"), mid })
            } else if let Some(stem) = name.strip_suffix(".lora_A.weight") {
                (stem, LoraFormat::Peft, StoredKind::LowRank { down: name.to_string(), up: format!("{stem}.lora_B.weight"), mid: None })
            } else if let Some(stem) = name.strip_suffix(".lora.down.weight") {
                (stem, LoraFormat::Peft, StoredKind::LowRank { down: name.to_string(), up: format!("{stem}.lora.up.weight"), mid: None })
            } else if let Some(stem) = name.strip_suffix(".hada_w1_a") {
                let k = |s: &str| format!("{stem}.{s}");
                let kind = StoredKind::Hada { w1a: k("hada_w1_a"), w1b: k("hada_w1_b"), t1: optional(k("hada_t1")), w2a: k("hada_w2_a"), w2b: k("hada_w2_b"), t2: optional(k("hada_t2")) };
                (stem, LoraFormat::Kohya, kind)
            } else if let Some(stem) = name.strip_suffix(".lokr_w1").or_else(|| name.strip_suffix(".lokr_w1_a")) {
                let k = |s: &str| format!("{stem}.{s}");
                let factor = |w: &str| if has(&k(w)) { Factor::Whole(k(w)) } else { Factor::Product(k(&format!("{w}_a")), k(&format!("{w}_b"))) };
                (stem, LoraFormat::Kohya, StoredKind::Lokr { w1: factor("lokr_w1"), w2: factor("lokr_w2"), t2: optional(k("lokr_t2")) })
            } else if let Some(stem) = name.strip_suffix(".diff") {
                let b = format!("{stem}.diff_b");
                (stem, LoraFormat::Kohya, StoredKind::Full { diff: name.to_string(), diff_b: has(&b).then_some(b) })
            } else {
                continue;
            };
            let needed: Vec<&String> = match &kind {
                StoredKind::LowRank { up, .. } => vec![up],
                StoredKind::Hada { w1b, w2a, w2b, .. } => vec![w1b, w2a, w2b],
                StoredKind::Lokr { w1, w2, .. } => [w1, w2]
                    .into_iter()
                    .flat_map(|f| match f {
                        Factor::Whole(k) => vec![k],
                        Factor::Product(a, b) => vec![a, b],
                    })
                    .collect(),
                StoredKind::Full { .. } => vec![],
            };
            if let Some(missing) = needed.into_iter().find(|k| !has(k)) {
                return Err(bad(format!("`{name}` has no `{missing}`")));
            }
            let prefixes: &[(&str, &str)] = if fmt == LoraFormat::Kohya { &KOHYA_PREFIXES } else { &PEFT_PREFIXES };
            let Some((component, module)) = prefixes.iter().find_map(|(p, c)| stem.strip_prefix(p).map(|m| (*c, m))) else {
                return Err(bad(format!("`{name}`: a LoRA module outside the denoiser and text encoders ({})", prefixes.iter().map(|p| p.0).collect::<Vec<_>>().join(", "))));
            };
            let alpha = format!("{stem}.alpha");
            let alpha = has(&alpha).then_some(alpha);
            if format.is_some_and(|f| f != fmt) {
                return Err(bad("it mixes kohya and PEFT key names".into()));
            }
            format = Some(fmt);
            modules.push(StoredModule { component, name: module.to_string(), key: stem.to_string(), kind, alpha });
        }
        let Some(format) = format else {
            let first = names.first().map(|n| format!(" (e.g. `{n}`)")).unwrap_or_default();
            return Err(bad(format!("no `.lora_down.weight`, `.lora_A.weight`, `.hada_w1_a`, `.lokr_w1` or `.diff` keys{first}")));
        };
        let peft_alphas = if format == LoraFormat::Peft { peft_metadata(path).map_err(bad)? } else { HashMap::new() };
        Ok(Self { path: path.into(), format, file, modules, peft_alphas })
    }

    /// The number of modules the file updates.
    pub fn modules(&self) -> usize {
        self.modules.len()
    }

    /// The modules by component (`unet`, `text_encoder`, `text_encoder_2`) and layer kind
    /// (`LoRA`, `LoCon (Tucker)`, `LoHa`, `LoKr`, `full`).
    pub fn summary(&self) -> BTreeMap<(String, &'static str), usize> {
        let mut out = BTreeMap::new();
        for m in &self.modules {
            let kind = match &m.kind {
                StoredKind::LowRank { mid: None, .. } => "LoRA",
                StoredKind::LowRank { mid: Some(_), .. } => "LoCon (Tucker)",
                StoredKind::Hada { .. } => "LoHa",
                StoredKind::Lokr { .. } => "LoKr",
                StoredKind::Full { .. } => "full",
            };
            *out.entry((m.component.to_string(), kind)).or_default() += 1;
        }
        out
    }

    /// A one-element tensor of the file (an `alpha`) as a number.
    fn scalar(&self, key: &str) -> Result<f64, LoraError> {
        let stored = self.file.get(key).expect("listed keys exist");
        let bad = |message: String| LoraError::Format { path: self.path.clone(), message: format!("`{key}`: {message}") };
        let dtype = burn_dtype(&stored.dtype).filter(DType::is_float).ok_or_else(|| bad(format!("{}; an alpha is a float", stored.dtype)))?;
        if stored.shape.iter().product::<u64>() != 1 {
            return Err(bad(format!("shape {:?}; an alpha is one number", stored.shape)));
        }
        let v = TensorData::from_bytes_vec(self.file.read(key)?, vec![1], dtype).convert_dtype(DType::F64).try_to_vec::<f64>().map_err(|e| bad(format!("{e:?}")))?;
        Some(v[0]).filter(|a| a.is_finite()).ok_or_else(|| bad(format!("{}: not a finite number", v[0])))
    }

    /// A Tucker core `[a, b, kh, kw]` of the file as f32 `[a, b, kh·kw]`.
    fn core(&self, key: &str, device: &Device) -> Result<Tensor<3>, LoraError> {
        let shape = self.file.get(key).expect("listed keys exist").shape.clone();
        let [a, b, rest @ ..] = shape.as_slice() else {
            return Err(LoraError::Format { path: self.path.clone(), message: format!("`{key}` has shape {shape:?}; a Tucker core is [rank, rank, kh, kw]") });
        };
        let k: u64 = rest.iter().product();
        Ok(self.matrix(key, device)?.reshape([*a as usize, *b as usize, k as usize]))
    }

    /// One tensor of the file as f32 on `device`, reshaped to 2-D (`[rows, rest]`).
    fn matrix(&self, key: &str, device: &Device) -> Result<Tensor<2>, LoraError> {
        let stored = self.file.get(key).expect("listed keys exist");
        let dtype = burn_dtype(&stored.dtype)
            .filter(|d| matches!(d, DType::F32 | DType::F16 | DType::BF16))
            .ok_or_else(|| LoraError::Format { path: self.path.clone(), message: format!("`{key}` is {}; LoRA tensors are f32, f16 or bf16", stored.dtype) })?;
        let dims: Vec<usize> = stored.shape.iter().map(|&d| d as usize).collect();
        if dims.is_empty() || dims.len() > 4 {
            return Err(LoraError::Format { path: self.path.clone(), message: format!("`{key}` has shape {dims:?}") });
        }
        let rows = dims[0];
        let cols: usize = dims[1..].iter().product();
        let data = TensorData::from_bytes_vec(self.file.read(key)?, vec![rows, cols], dtype).convert_dtype(DType::F32);
        Ok(Tensor::<2>::from_data(data, device))
    }

    /// The file's updates matched to the model (read from the file once): for each component,
    /// its parameters' updates. `params`: each component's parameter names (PyTorch's,
    /// with their shapes,
    /// `…weight`). Every module must match.
    pub(crate) fn updates(&self, params: &HashMap<&str, Vec<(String, Vec<usize>)>>, ldm_name: &dyn Fn(&str) -> Option<String>, device: &Device) -> Result<Updates, LoraError> {
        // each component's modules by the names this format gives them
        let mut tables: HashMap<&str, HashMap<String, String>> = HashMap::new();
        for (component, names) in params {
            let table = tables.entry(component).or_default();
            for name in names.iter().filter_map(|(n, _)| n.strip_suffix(".weight")) {
                match self.format {
                    LoraFormat::Peft => {
                        table.insert(name.to_string(), name.to_string());
                        // transformers ≥ 5's bare CLIPTextModel names
                        if let Some(bare) = name.strip_prefix("text_model.") {
                            table.insert(bare.to_string(), name.to_string());
                        }
                    }
                    LoraFormat::Kohya => {
                        table.insert(name.replace('.', "_"), name.to_string());
                        if *component == "unet" {
                            if let Some(ldm) = ldm_name(name) {
                                table.insert(ldm.replace('.', "_"), name.to_string());
                            }
                        }
                    }
                }
            }
        }
        let mut out: HashMap<&'static str, HashMap<String, Vec<(Update, Scaling)>>> = HashMap::new();
        let mut unmatched = Vec::new();
        // modules matched, by component (a fused kohya FLUX module updates several weights)
        let mut applied: HashMap<&'static str, usize> = HashMap::new();
        // kohya's FLUX names (the original model's modules) on a model with a transformer
        let transformer_widths: HashMap<&str, usize> =
            params.get("transformer").into_iter().flatten().filter_map(|(n, shape)| Some((n.strip_suffix(".weight")?, *shape.first()?))).collect();
        for m in &self.modules {
            if let (LoraFormat::Kohya, "unet", false, StoredKind::LowRank { down, up, mid: None }) = (self.format, m.component, transformer_widths.is_empty(), &m.kind) {
                let rows = self.file.get(up).expect("listed keys exist").shape.first().copied().unwrap_or(0) as usize;
                if let Some(targets) = kohya_flux::targets(&m.name, rows, &|module| transformer_widths.get(module).copied()) {
                    let (down, up) = (self.matrix(down, device)?, self.matrix(up, device)?);
                    let rank = down.dims()[0];
                    let alpha = match &m.alpha {
                        Some(key) => self.scalar(key)?,
                        None => rank as f64,
                    };
                    let s = Scaling::AlphaOverRank { alpha, rank: rank as f64 };
                    let updates = out.entry("transformer").or_default();
                    for t in targets {
                        let mut part = match t.rows {
                            Some((start, n)) => up.clone().narrow(0, start, n),
                            None => up.clone(),
                        };
                        if t.swap_halves {
                            let h = part.dims()[0] / 2;
                            part = Tensor::cat(vec![part.clone().narrow(0, h, part.dims()[0] - h), part.narrow(0, 0, h)], 0);
                        }
                        updates.entry(format!("{}.weight", t.module)).or_default().push((Update::One(NnFactor::Product(part, down.clone())), s));
                    }
                    *applied.entry("transformer").or_default() += 1;
                    continue;
                }
            }
            let Some(target) = tables.get(m.component).and_then(|t| t.get(&m.name)) else {
                unmatched.push(m.key.clone());
                continue;
            };
            let alpha = match &m.alpha {
                Some(key) => Some(self.scalar(key)?),
                None => None,
            };
            *applied.entry(m.component).or_default() += 1;
            let targets = out.entry(m.component).or_default();
            // A1111's `calc_scale`: alpha / rank where the file has both, else 1
            let scaled = |rank: Option<usize>| {
                Scaling::Times(match (alpha, rank) {
                    (Some(a), Some(r)) if r > 0 => a / r as f64,
                    _ => 1.0,
                })
            };
            match &m.kind {
                StoredKind::LowRank { down, up, mid } => {
                    let (down, up) = (self.matrix(down, device)?, self.matrix(up, device)?);
                    let rank = down.dims()[0];
                    // an `.alpha` key, else diffusers' metadata; kohya and PEFT without either:
                    // alpha = rank
                    let peft = self.peft_alphas.get(m.component);
                    let alpha = alpha.or_else(|| peft.and_then(|p| p.alpha(&m.name)));
                    let rank_divisor = if peft.is_some_and(|p| p.rslora) { (rank as f64).sqrt() } else { rank as f64 };
                    let s = Scaling::AlphaOverRank { alpha: alpha.unwrap_or(rank_divisor), rank: rank_divisor };
                    let factor = match mid {
                        Some(mid) => NnFactor::Cp { left: up, core: self.core(mid, device)?, right: down },
                        None => NnFactor::Product(up, down),
                    };
                    targets.entry(format!("{target}.weight")).or_default().push((Update::One(factor), s));
                }
                StoredKind::Hada { w1a, w1b, t1, w2a, w2b, t2 } => {
                    // with a Tucker core, LyCORIS stores w_a transposed ([rank, out])
                    let hada = |wa: &String, wb: &String, t: &Option<String>| -> Result<(NnFactor, usize), LoraError> {
                        let (wa, wb) = (self.matrix(wa, device)?, self.matrix(wb, device)?);
                        let rank = wb.dims()[0];
                        Ok(match t {
                            Some(t) => (NnFactor::Cp { left: wa.transpose(), core: self.core(t, device)?, right: wb }, rank),
                            None => (NnFactor::Product(wa, wb), rank),
                        })
                    };
                    let (f1, rank) = hada(w1a, w1b, t1)?;
                    let (f2, _) = hada(w2a, w2b, t2)?;
                    targets.entry(format!("{target}.weight")).or_default().push((Update::Hadamard(f1, f2), scaled(Some(rank))));
                }
                StoredKind::Lokr { w1, w2, t2 } => {
                    // the rank is the factored matrices' (w1's first, as A1111 reads it)
                    let mut rank = None;
                    let mut factor = |f: &Factor, t: Option<&String>| -> Result<NnFactor, LoraError> {
                        Ok(match (f, t) {
                            (Factor::Whole(k), _) => NnFactor::Dense(self.matrix(k, device)?),
                            (Factor::Product(a, b), None) => {
                                let b = self.matrix(b, device)?;
                                rank = rank.or(Some(b.dims()[0]));
                                NnFactor::Product(self.matrix(a, device)?, b)
                            }
                            (Factor::Product(a, b), Some(t)) => {
                                let b = self.matrix(b, device)?;
                                rank = rank.or(Some(b.dims()[0]));
                                NnFactor::Cp { left: self.matrix(a, device)?.transpose(), core: self.core(t, device)?, right: b }
                            }
                        })
                    };
                    let (w1, w2) = (factor(w1, None)?, factor(w2, t2.as_ref())?);
                    targets.entry(format!("{target}.weight")).or_default().push((Update::Kronecker(w1, w2), scaled(rank)));
                }
                StoredKind::Full { diff, diff_b } => {
                    targets.entry(format!("{target}.weight")).or_default().push((Update::One(NnFactor::Dense(self.matrix(diff, device)?)), scaled(None)));
                    if let Some(b) = diff_b {
                        targets.entry(format!("{target}.bias")).or_default().push((Update::One(NnFactor::Dense(self.matrix(b, device)?)), scaled(None)));
                    }
                }
            }
        }
        if !unmatched.is_empty() {
            let has = |c: &str| self.modules.iter().any(|m| m.component == c);
            let family = if has("unet") && params.contains_key("transformer") {
                if self.format == LoraFormat::Kohya {
                    "; this SD 3 / FLUX model has a transformer: kiln reads diffusers/PEFT LoRAs (`transformer.…`) and kohya's FLUX names (`lora_unet_double_blocks_…`) for it, not yet kohya's SD 3 names or these"
                } else {
                    "; it updates a UNet, this model has a transformer: an SD-family LoRA on an SD 3 / FLUX model?"
                }
            } else if has("transformer") && params.contains_key("unet") {
                "; it updates an SD 3 / FLUX transformer, this model has a UNet"
            } else if has("text_encoder_2") && !params.contains_key("text_encoder_2") {
                "; it has SDXL's second text encoder (lora_te2_), this model has none: an SDXL LoRA on an SD 1.x/2.x model?"
            } else {
                ""
            };
            unmatched.sort();
            return Err(LoraError::Unmatched { path: self.path.clone(), keys: unmatched, total: self.modules.len(), hint: family.into() });
        }
        Ok(Updates(out, applied))
    }
}

/// The file of the LoRA `name` in `dir`, as A1111 looks one up for `<lora:NAME:W>`:
/// `NAME.safetensors`, `NAME.pt` or `NAME.ckpt`, the first that is a file.
pub fn find_in_dir(dir: &Path, name: &str) -> Option<PathBuf> {
    ["safetensors", "pt", "ckpt"].iter().map(|e| dir.join(format!("{name}.{e}"))).find(|p| p.is_file())
}
