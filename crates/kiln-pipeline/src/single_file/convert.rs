//! `kiln convert`: a single-file checkpoint written as a diffusers folder (`model_index.json`,
//! each component's config and weights, the tokenizers, the scheduler), which diffusers'
//! `from_pretrained` and kiln load as they load any folder. What diffusers'
//! `from_single_file(...).save_pretrained(dir)` writes, without loading the model: tensors are
//! read, renamed, transformed and (with a dtype) cast one at a time.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use burn::tensor::{DType, TensorData};
use kiln_nn::{burn_dtype, header_bytes, LoadError, Weights};
use serde_json::{json, Value};

use super::arch::{ConfigText, TokenizerSource};
use super::{Architecture, ClipShape, SingleFile, SingleFileError};
use crate::model::PipelineKind;
use crate::presets::{CLIP_MERGES, CLIP_VOCAB};

/// How `kiln convert` writes the weights.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConvertOptions {
    /// Cast every float tensor to this (`F16` or `F32`); `None`: keep the file's dtypes.
    pub dtype: Option<DType>,
    /// Name the weights `….fp16.safetensors` (diffusers' `variant="fp16"`); implies F16.
    pub fp16_variant: bool,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> SingleFileError + '_ {
    move |source| LoadError::Io { path: path.into(), source }.into()
}

fn safetensors_dtype(dtype: DType) -> &'static str {
    match dtype {
        DType::F16 => "F16",
        DType::BF16 => "BF16",
        _ => "F32",
    }
}

/// Writes `weights` as the safetensors file `path`, renamed to their diffusers names (minus
/// `skip`ped ones), each float tensor cast to `dtype`; one tensor in memory at a time.
fn write_weights(path: &Path, weights: &Weights, dtype: Option<DType>, skip: &dyn Fn(&str) -> bool, keep_going: &dyn Fn() -> bool) -> Result<(), SingleFileError> {
    let file_dtype = |d: &str| burn_dtype(d).filter(DType::is_float);
    let mut plan = Vec::new();
    for w in weights.weights.iter().filter(|w| !skip(&w.name)) {
        let stored = weights.file.get(&w.key).ok_or_else(|| LoadError::Missing { path: weights.file.path().into(), names: vec![w.key.clone()] })?;
        let shape = w.transform.shape(&stored.shape).map_err(|m| LoadError::Mismatch { path: weights.file.path().into(), errors: vec![m] })?;
        let out_dtype = match (dtype, file_dtype(&stored.dtype)) {
            (Some(to), Some(_)) => safetensors_dtype(to).to_string(),
            _ => stored.dtype.clone(),
        };
        plan.push((w, shape, out_dtype));
    }
    plan.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut offset = 0u64;
    for (w, shape, out_dtype) in &plan {
        let bytes = shape.iter().try_fold(kiln_nn::dtype_size(out_dtype).unwrap_or(1), |a, &d| a.checked_mul(d));
        let bytes = bytes.ok_or_else(|| LoadError::Mismatch { path: weights.file.path().into(), errors: vec![format!("`{}` {shape:?}: too large", w.key)] })?;
        header.insert(w.name.clone(), json!({"dtype": out_dtype, "shape": shape, "data_offsets": [offset, offset + bytes]}));
        offset += bytes;
    }
    let mut out = std::io::BufWriter::new(fs::File::create_new(path).map_err(io(path))?);
    out.write_all(&header_bytes(&header)).map_err(io(path))?;
    for (w, shape, out_dtype) in &plan {
        if !keep_going() {
            return Err(SingleFileError::Cancelled);
        }
        let (bytes, stored_dtype, _) = weights.read(w)?;
        let bytes = match (file_dtype(&stored_dtype), file_dtype(out_dtype)) {
            (Some(from), Some(to)) if from != to => {
                let dims: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
                TensorData::from_bytes_vec(bytes, dims, from).convert_dtype(to).as_bytes().to_vec()
            }
            _ => bytes,
        };
        out.write_all(&bytes).map_err(io(path))?;
    }
    out.into_inner().map_err(|e| io(path)(e.into_error()))?.sync_all().map_err(io(path))
}

fn write_text(path: &Path, text: &str) -> Result<(), SingleFileError> {
    fs::write(path, text).map_err(io(path))
}

/// `model_index.json` for `arch` (what `save_pretrained` writes for the pipeline).
fn model_index(arch: &Architecture, scheduler_class: &str) -> Value {
    let class = match arch.kind {
        PipelineKind::StableDiffusion => "StableDiffusionPipeline",
        PipelineKind::StableDiffusionXL => "StableDiffusionXLPipeline",
        PipelineKind::StableDiffusionInpaint => "StableDiffusionInpaintPipeline",
        // single files of the flow-matching families are refused at detection
        PipelineKind::StableDiffusion3 => "StableDiffusion3Pipeline",
        PipelineKind::Flux => "FluxPipeline",
    };
    let mut index = json!({
        "_class_name": class,
        "_diffusers_version": "0.42.1",
        "scheduler": ["diffusers", scheduler_class],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    });
    if arch.kind == PipelineKind::StableDiffusionXL {
        index["text_encoder_2"] = json!(["transformers", "CLIPTextModelWithProjection"]);
        index["tokenizer_2"] = json!(["transformers", "CLIPTokenizer"]);
        index["force_zeros_for_empty_prompt"] = json!(arch.force_zeros_for_empty_prompt);
        index["feature_extractor"] = json!([null, null]);
        index["image_encoder"] = json!([null, null]);
    } else {
        index["safety_checker"] = json!([null, null]);
        index["feature_extractor"] = json!([null, null]);
        index["image_encoder"] = json!([null, null]);
        index["requires_safety_checker"] = json!(false);
    }
    index
}

fn write_tokenizer(dir: &Path, source: &TokenizerSource) -> Result<(), SingleFileError> {
    fs::create_dir(dir).map_err(io(dir))?;
    match source {
        TokenizerSource::Compiled { config, special_tokens_map, .. } => {
            for (name, text) in [("vocab.json", CLIP_VOCAB), ("merges.txt", CLIP_MERGES), ("tokenizer_config.json", config), ("special_tokens_map.json", special_tokens_map)] {
                write_text(&dir.join(name), text)?;
            }
        }
        TokenizerSource::Dir(from) => {
            for name in ["vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"] {
                let src = from.join(name);
                if src.is_file() {
                    fs::copy(&src, dir.join(name)).map_err(io(&src))?;
                }
            }
        }
    }
    Ok(())
}

/// Writes `file` with `arch` as the diffusers folder `out`, which must not exist: everything is
/// written into a temporary folder beside it, renamed to `out` at the end (an error or an
/// interrupted run leaves no half folder at `out`). `keep_going` is asked before each tensor;
/// `false` stops with [`SingleFileError::Cancelled`]. Returns the files written.
pub fn convert(file: &SingleFile, arch: &Architecture, out: &Path, options: ConvertOptions, keep_going: &dyn Fn() -> bool) -> Result<Vec<PathBuf>, SingleFileError> {
    if fs::symlink_metadata(out).is_ok() {
        return Err(SingleFileError::Unsupported { path: out.into(), message: "already exists; kiln convert writes a new folder and never replaces one".into() });
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = out.file_name().ok_or_else(|| SingleFileError::Unsupported { path: out.into(), message: "names no folder".into() })?;
    let tmp = parent.join(format!(".{}.kiln-convert-{}", name.to_string_lossy(), std::process::id()));
    fs::create_dir(&tmp).map_err(io(&tmp))?;
    let result = write_folder(file, arch, &tmp, options, keep_going);
    let result = result.and_then(|()| {
        // a folder that appeared meanwhile is not replaced
        if fs::symlink_metadata(out).is_ok() {
            return Err(SingleFileError::Unsupported { path: out.into(), message: "appeared while converting; not replaced".into() });
        }
        fs::rename(&tmp, out).map_err(io(out))
    });
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let mut files = Vec::new();
    let mut stack = vec![out.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).map_err(io(&dir))?.flatten() {
            let p = entry.path();
            if p.is_dir() { stack.push(p) } else { files.push(p) }
        }
    }
    files.sort();
    Ok(files)
}

fn write_folder(file: &SingleFile, arch: &Architecture, dir: &Path, options: ConvertOptions, keep_going: &dyn Fn() -> bool) -> Result<(), SingleFileError> {
    let dtype = if options.fp16_variant { Some(DType::F16) } else { options.dtype };
    let variant = if options.fp16_variant { ".fp16" } else { "" };
    let config_of = |c: &ConfigText| -> Result<Value, SingleFileError> {
        serde_json::from_str(&c.text).map_err(|source| LoadError::Config { path: c.label.clone(), source }.into())
    };
    let component = |name: &str, config: &ConfigText, config_file: &str| -> Result<PathBuf, SingleFileError> {
        let d = dir.join(name);
        fs::create_dir(&d).map_err(io(&d))?;
        write_text(&d.join(config_file), &config.text)?;
        Ok(d)
    };
    let scheduler: Value = config_of(&arch.scheduler)?;
    let scheduler_class = scheduler["_class_name"].as_str().unwrap_or("PNDMScheduler").to_string();
    write_text(&dir.join("model_index.json"), &serde_json::to_string_pretty(&model_index(arch, &scheduler_class)).expect("JSON"))?;
    component("scheduler", &arch.scheduler, "scheduler_config.json")?;
    write_tokenizer(&dir.join("tokenizer"), &arch.tokenizer)?;
    if let Some(t) = arch.tokenizer_2.as_ref().filter(|_| arch.kind == PipelineKind::StableDiffusionXL) {
        write_tokenizer(&dir.join("tokenizer_2"), t)?;
    }
    // the UNet
    let unet = config_of(&arch.unet)?;
    let lpb = unet["layers_per_block"].as_u64().ok_or_else(|| SingleFileError::Unsupported { path: arch.unet.label.clone(), message: "layers_per_block is not one number".into() })?;
    let d = component("unet", &arch.unet, "config.json")?;
    write_weights(&d.join(format!("diffusion_pytorch_model{variant}.safetensors")), &file.unet(lpb as usize)?, dtype, &|_| false, keep_going)?;
    // the VAE
    let vae = config_of(&arch.vae)?;
    let up_blocks = vae["up_block_types"].as_array().map_or(0, Vec::len);
    let weights = file.vae(up_blocks)?.ok_or_else(|| SingleFileError::Incomplete { path: file.path().into(), what: "VAE (`first_stage_model.*`)".into(), hint: "" })?;
    let d = component("vae", &arch.vae, "config.json")?;
    write_weights(&d.join(format!("diffusion_pytorch_model{variant}.safetensors")), &weights, dtype, &|_| false, keep_going)?;
    // the text encoders (transformers' names; the position_ids buffer is not a weight)
    let mut encoders = vec![("text_encoder", &arch.text_encoder)];
    if let (Some(c), PipelineKind::StableDiffusionXL) = (&arch.text_encoder_2, arch.kind) {
        encoders.push(("text_encoder_2", c));
    }
    for (name, config) in encoders {
        let c = config_of(config)?;
        let shape = ClipShape {
            layers: c["num_hidden_layers"].as_u64().unwrap_or(0) as usize,
            projection: c["architectures"][0].as_str() == Some("CLIPTextModelWithProjection"),
        };
        let weights = file.text_encoder(name, shape)?.ok_or_else(|| SingleFileError::Incomplete { path: file.path().into(), what: format!("`{name}`"), hint: "" })?;
        let d = component(name, config, "config.json")?;
        write_weights(&d.join(format!("model{variant}.safetensors")), &weights, dtype, &|n| n.ends_with("position_ids"), keep_going)?;
    }
    Ok(())
}
