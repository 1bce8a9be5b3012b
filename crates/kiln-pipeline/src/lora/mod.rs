//! LoRAs: low-rank updates of the UNet's and text encoders' linear and convolution weights,
//! merged into the loaded model's weights (`W + scale · alpha/rank · up @ down`) and taken out
//! again exactly ([`crate::StableDiffusion::load_lora`], `unload_loras`, `set_lora_scales`).
//!
//! Formats, told apart by their keys:
//! * kohya / A1111 (`lora_unet_*`, `lora_te_*`, SDXL's `lora_te1_*`/`lora_te2_*`, with
//!   `.lora_down.weight`, `.lora_up.weight`, `.alpha`): a module named by its path with `_` for
//!   `.`, as diffusers' `_convert_non_diffusers_lora_to_diffusers` reads it — the UNet by
//!   diffusers' names (SD 1.x/2.x) or the original LDM names (SDXL's `input_blocks_4_1_…`,
//!   `_maybe_map_sgm_blocks_to_diffusers`); LoCon's convolution updates (3×3 down, 1×1 up) too;
//! * diffusers / PEFT (`unet.<module>.lora_A.weight` / `.lora_B.weight`, or `.lora.down.weight` /
//!   `.lora.up.weight`, `text_encoder.…`, `text_encoder_2.…`, optional `.alpha`).
//!
//! A LoRA is applied whole or not at all: a module the model does not have, an update whose shape
//! does not fit its weight, or a layer kind kiln does not apply (LoHa, LoKr, Tucker `lora_mid`,
//! full `diff` deltas) is an error naming the keys.

pub mod apply;
pub mod hash;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::{DType, Device, Tensor, TensorData};
use kiln_nn::{Delta, LoadError, WeightsFile};
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

/// One module's update as stored: the keys of its down and up matrices, and its alpha.
#[derive(Debug, Clone)]
struct StoredModule {
    component: &'static str,
    /// The module's name in the file, without the component prefix (kohya: `down_blocks_0_…`;
    /// PEFT: `down_blocks.0.…`).
    name: String,
    down: String,
    up: String,
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
    /// A1111's short hash ([`hash::lora_short_hash`]).
    pub hash: String,
}

/// What a LoRA did: the modules it updated of those it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraReport {
    pub path: PathBuf,
    pub scale: f64,
    pub format: LoraFormat,
    /// Modules in the file.
    pub modules: usize,
    /// Weights it updates, by component.
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
const PEFT_PREFIXES: [(&str, &str); 3] = [("unet.", "unet"), ("text_encoder_2.", "text_encoder_2"), ("text_encoder.", "text_encoder")];
/// Layer kinds of LyCORIS and full deltas, not applied yet.
const UNSUPPORTED: [&str; 8] = ["hada_w1", "hada_w2", "hada_t1", "lokr_w1", "lokr_w2", "lora_mid", ".diff", ".diff_b"];

impl LoraFile {
    /// Reads `path`'s keys (safetensors, or a PyTorch checkpoint without running its pickle).
    pub fn open(path: &Path) -> Result<Self, LoraError> {
        let file = WeightsFile::open(path)?;
        let bad = |message: String| LoraError::Format { path: path.into(), message };
        let names: Vec<&str> = file.tensors().iter().map(|t| t.name.as_str()).collect();
        let unsupported: Vec<String> = names.iter().filter(|n| UNSUPPORTED.iter().any(|u| n.contains(u))).map(|n| n.to_string()).collect();
        if !unsupported.is_empty() {
            return Err(bad(format!(
                "it holds LyCORIS (LoHa, LoKr, Tucker) or full-delta layers, which kiln does not apply yet: {}",
                list(&unsupported)
            )));
        }
        let mut modules = Vec::new();
        let mut format = None;
        for name in &names {
            let (stem, kind) = if let Some(stem) = name.strip_suffix(".lora_down.weight") {
                (stem, LoraFormat::Kohya)
            } else if let Some(stem) = name.strip_suffix(".lora_A.weight").or_else(|| name.strip_suffix(".lora.down.weight")) {
                (stem, LoraFormat::Peft)
            } else {
                continue;
            };
            let prefixes: &[(&str, &str)] = if kind == LoraFormat::Kohya { &KOHYA_PREFIXES } else { &PEFT_PREFIXES };
            let Some((component, module)) = prefixes.iter().find_map(|(p, c)| stem.strip_prefix(p).map(|m| (*c, m))) else {
                return Err(bad(format!("`{name}`: a LoRA module outside the UNet and text encoders ({})", prefixes.iter().map(|p| p.0).collect::<Vec<_>>().join(", "))));
            };
            let up = if kind == LoraFormat::Kohya {
                format!("{stem}.lora_up.weight")
            } else if name.ends_with(".lora_A.weight") {
                format!("{stem}.lora_B.weight")
            } else {
                format!("{stem}.lora.up.weight")
            };
            if file.get(&up).is_none() {
                return Err(bad(format!("`{name}` has no `{up}`")));
            }
            let alpha = format!("{stem}.alpha");
            let alpha = file.get(&alpha).map(|_| alpha);
            if format.is_some_and(|f| f != kind) {
                return Err(bad("it mixes kohya and PEFT key names".into()));
            }
            format = Some(kind);
            modules.push(StoredModule { component, name: module.to_string(), down: name.to_string(), up, alpha });
        }
        let Some(format) = format else {
            let first = names.first().map(|n| format!(" (e.g. `{n}`)")).unwrap_or_default();
            return Err(bad(format!("no `.lora_down.weight` / `.lora_A.weight` keys{first}")));
        };
        let hash = hash::lora_short_hash(path).map_err(|source| LoadError::Io { path: path.into(), source })?;
        Ok(Self { path: path.into(), format, file, modules, hash })
    }

    /// The number of modules the file updates.
    pub fn modules(&self) -> usize {
        self.modules.len()
    }

    /// One tensor of the file as f32 on `device`, reshaped to 2-D (`[rows, rest]`).
    fn matrix(&self, key: &str, device: &Device) -> Result<Tensor<2>, LoraError> {
        let stored = self.file.get(key).expect("listed keys exist");
        let dtype = match stored.dtype.as_str() {
            "F32" => DType::F32,
            "F16" => DType::F16,
            "BF16" => DType::BF16,
            d => return Err(LoraError::Format { path: self.path.clone(), message: format!("`{key}` is {d}; LoRA tensors are f32, f16 or bf16") }),
        };
        let dims: Vec<usize> = stored.shape.iter().map(|&d| d as usize).collect();
        if dims.is_empty() || dims.len() > 4 {
            return Err(LoraError::Format { path: self.path.clone(), message: format!("`{key}` has shape {dims:?}") });
        }
        let rows = dims[0];
        let cols: usize = dims[1..].iter().product();
        let data = TensorData::from_bytes_vec(self.file.read(key)?, vec![rows, cols], dtype).convert_dtype(DType::F32);
        Ok(Tensor::<2>::from_data(data, device))
    }

    /// The file's updates matched to the model: for each component, its parameters' deltas at
    /// `scale`. `params`: each component's parameter names (PyTorch's, `…weight`). Every module
    /// must match.
    pub fn deltas(
        &self,
        scale: f64,
        params: &HashMap<&str, Vec<String>>,
        ldm_name: &dyn Fn(&str) -> Option<String>,
        device: &Device,
    ) -> Result<HashMap<&'static str, HashMap<String, Vec<Delta>>>, LoraError> {
        // each component's modules by the names this format gives them
        let mut tables: HashMap<&str, HashMap<String, String>> = HashMap::new();
        for (component, names) in params {
            let table = tables.entry(component).or_default();
            for name in names.iter().filter_map(|n| n.strip_suffix(".weight")) {
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
        let mut out: HashMap<&'static str, HashMap<String, Vec<Delta>>> = HashMap::new();
        let mut unmatched = Vec::new();
        for m in &self.modules {
            let Some(target) = tables.get(m.component).and_then(|t| t.get(&m.name)) else {
                unmatched.push(m.down.trim_end_matches(".weight").trim_end_matches(".lora_down").to_string());
                continue;
            };
            let down = self.matrix(&m.down, device)?;
            let up = self.matrix(&m.up, device)?;
            let rank = down.dims()[0];
            let alpha = match &m.alpha {
                Some(key) => {
                    let a = self.file.read(key)?;
                    let d = self.file.get(key).expect("listed").dtype.clone();
                    let v = TensorData::from_bytes_vec(a, vec![1], match d.as_str() { "F16" => DType::F16, "BF16" => DType::BF16, "F64" => DType::F64, _ => DType::F32 })
                        .convert_dtype(DType::F32)
                        .try_to_vec::<f32>()
                        .map_err(|e| LoraError::Format { path: self.path.clone(), message: format!("`{key}`: {e:?}") })?;
                    v[0] as f64
                }
                None => rank as f64,
            };
            out.entry(m.component).or_default().entry(format!("{target}.weight")).or_default().push(Delta { up, down, scale: scale * alpha / rank as f64 });
        }
        if !unmatched.is_empty() {
            let family = if self.modules.iter().any(|m| m.component == "text_encoder_2") && !params.contains_key("text_encoder_2") {
                "; it has SDXL's second text encoder (lora_te2_), this model has none: an SDXL LoRA on an SD 1.x/2.x model?"
            } else {
                ""
            };
            unmatched.sort();
            return Err(LoraError::Unmatched { path: self.path.clone(), keys: unmatched, total: self.modules.len(), hint: family.into() });
        }
        Ok(out)
    }
}
