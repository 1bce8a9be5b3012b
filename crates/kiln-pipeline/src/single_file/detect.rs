//! Which family a single-file checkpoint is, from its keys, as diffusers'
//! `loaders/single_file_utils.py::infer_diffusers_model_type` decides it (the Stable Diffusion
//! branches, with its `CHECKPOINT_KEY_NAMES`), and what a file that is not one looks like.

use std::collections::HashMap;

/// The Stable Diffusion families a single file can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Sd1,
    /// SD 2.x (768 v-prediction, or 512 ε): an OpenCLIP ViT-H text encoder, 1024-wide context.
    Sd2,
    SdxlBase,
    SdxlRefiner,
    Sd1Inpaint,
    Sd2Inpaint,
    SdxlInpaint,
}

impl Family {
    /// How `kiln info` names it.
    pub fn name(self) -> &'static str {
        match self {
            Family::Sd1 => "SD 1.x",
            Family::Sd2 => "SD 2.x",
            Family::SdxlBase => "SDXL base",
            Family::SdxlRefiner => "SDXL refiner",
            Family::Sd1Inpaint => "SD 1.x inpainting",
            Family::Sd2Inpaint => "SD 2.x inpainting",
            Family::SdxlInpaint => "SDXL inpainting",
        }
    }

    /// diffusers' name for it (`infer_diffusers_model_type`).
    pub fn diffusers_type(self) -> &'static str {
        match self {
            Family::Sd1 => "v1",
            Family::Sd2 => "v2",
            Family::SdxlBase => "xl_base",
            Family::SdxlRefiner => "xl_refiner",
            Family::Sd1Inpaint => "inpainting",
            Family::Sd2Inpaint => "inpainting_v2",
            Family::SdxlInpaint => "xl_inpaint",
        }
    }
}

/// The family, the keys that decided it, and whether the file has the published model's layout
/// (the keys diffusers looks for exist), so that the family's published configs fit it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detection {
    pub family: Family,
    pub evidence: String,
    pub published: bool,
}

// diffusers' CHECKPOINT_KEY_NAMES
const V1: &str = "model.diffusion_model.output_blocks.11.0.skip_connection.weight";
const V2: &str = "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight";
const XL_BASE: &str = "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias";
const XL_REFINER: &str = "conditioner.embedders.0.model.transformer.resblocks.9.mlp.c_proj.bias";
const INPAINTING: &str = "model.diffusion_model.input_blocks.0.0.weight";
const UPSCALE: &str = "model.diffusion_model.input_blocks.10.0.skip_connection.bias";
const PLAYGROUND: &str = "edm_mean";

/// The family of a checkpoint whose keys (a `.ckpt`'s `state_dict.` removed) and shapes are
/// `keys`; or what the file looks like instead.
pub fn detect(keys: &HashMap<&str, &[u64]>) -> Result<Detection, String> {
    if !keys.keys().any(|k| k.starts_with(super::unet::PREFIX)) {
        return Err(describe(keys));
    }
    let shape = |k: &str| keys.get(k).copied();
    let show = |k: &str| format!("`{k}` {:?}", shape(k).unwrap_or_default());
    let v2 = shape(V2).is_some_and(|s| s.last() == Some(&1024));
    let found = |family, evidence: String| Ok(Detection { family, evidence, published: true });
    if shape(INPAINTING).is_some_and(|s| s.get(1) == Some(&9)) {
        let why = format!("{} takes 9 input channels", show(INPAINTING));
        if v2 {
            return found(Family::Sd2Inpaint, format!("{why}; {} has a 1024-wide context", show(V2)));
        }
        if keys.contains_key(XL_BASE) {
            return found(Family::SdxlInpaint, format!("{why}; `{XL_BASE}` is present"));
        }
        if keys.contains_key(V1) {
            return found(Family::Sd1Inpaint, format!("{why}; `{V1}` is present"));
        }
        let family = guess(keys, true);
        return Ok(Detection { family, evidence: format!("{why}; {}", unpublished(keys)), published: false });
    }
    if v2 {
        return found(Family::Sd2, format!("{} has a 1024-wide context", show(V2)));
    }
    if keys.contains_key(PLAYGROUND) {
        return Err("a Playground v2.5 checkpoint (`edm_mean`: EDM sampling), which kiln does not run".into());
    }
    if keys.contains_key(XL_BASE) {
        return found(Family::SdxlBase, format!("`{XL_BASE}` is present"));
    }
    if keys.contains_key(XL_REFINER) {
        return found(Family::SdxlRefiner, format!("`{XL_REFINER}` is present"));
    }
    if keys.contains_key(UPSCALE) {
        return Err(format!("the SD x4 upscaler (`{UPSCALE}`), which kiln does not run"));
    }
    if keys.contains_key(V1) {
        return found(Family::Sd1, format!("`{V1}` is present and no key of another family"));
    }
    Ok(Detection { family: guess(keys, false), evidence: unpublished(keys), published: false })
}

/// The family of a checkpoint without the published keys (another layout: a tiny or custom
/// model), from where its text encoders are stored.
fn guess(keys: &HashMap<&str, &[u64]>, inpaint: bool) -> Family {
    let has = |prefix: &str| keys.keys().any(|k| k.starts_with(prefix));
    match (has("conditioner.embedders.1.model."), has("conditioner.embedders.0.model."), has("cond_stage_model.model."), inpaint) {
        (true, _, _, false) => Family::SdxlBase,
        (true, _, _, true) => Family::SdxlInpaint,
        (false, true, _, _) => Family::SdxlRefiner,
        (_, _, true, false) => Family::Sd2,
        (_, _, true, true) => Family::Sd2Inpaint,
        (_, _, false, false) => Family::Sd1,
        (_, _, false, true) => Family::Sd1Inpaint,
    }
}

fn unpublished(keys: &HashMap<&str, &[u64]>) -> String {
    let encoders: Vec<&str> = super::clip::PREFIXES.iter().map(|(p, ..)| *p).filter(|p| keys.keys().any(|k| k.starts_with(p))).collect();
    format!(
        "none of the keys diffusers looks for in a published model (e.g. `{V1}`) is present, so its layout is not a published one; \
         text encoders under {}",
        if encoders.is_empty() { "no known prefix".to_string() } else { encoders.join(", ") }
    )
}

/// What a file without a UNet under `model.diffusion_model.` looks like.
pub fn describe(keys: &HashMap<&str, &[u64]>) -> String {
    let any = |f: &dyn Fn(&str) -> bool| keys.keys().any(|k| f(k));
    let n = keys.len();
    if n == 0 {
        return "a file with no tensors".into();
    }
    if any(&|k| k.contains("lora_down") || k.contains("lora_up") || k.contains(".lora_A.") || k.contains(".lora_B.") || k.starts_with("lora_")) {
        return format!("a LoRA ({n} tensors such as `{}`), not a model: apply it to one with --lora", first(keys, |k| k.contains("lora")));
    }
    if any(&|k| k == "emb_params" || k.starts_with("string_to_param") || k == "clip_l" || k == "clip_g") {
        return "a textual-inversion embedding, not a model: add it to one with --embedding".into();
    }
    if any(&|k| k.starts_with("control_model.") || k.starts_with("controlnet_cond_embedding.")) {
        return "a ControlNet, which kiln does not run".into();
    }
    if any(&|k| k.contains("joint_blocks.")) {
        return "an SD3 (MMDiT) checkpoint, which kiln does not run yet".into();
    }
    if any(&|k| k.contains("double_blocks.")) {
        return "a FLUX checkpoint, which kiln does not run yet".into();
    }
    if any(&|k| k.starts_with("encoder.down.") || k.starts_with("decoder.up.")) {
        return "a VAE alone (LDM layout), not a whole model".into();
    }
    if any(&|k| k.starts_with("down_blocks.") || k.starts_with("encoder.down_blocks.")) {
        return "one component of a diffusers folder (a UNet or VAE's weights alone), not a whole model".into();
    }
    if any(&|k| k.starts_with("text_model.") || k.starts_with("encoder.layers.")) {
        return "a text encoder's weights alone, not a whole model".into();
    }
    format!("{n} tensors, none under `model.diffusion_model.` (the first: `{}`)", first(keys, |_| true))
}

fn first(keys: &HashMap<&str, &[u64]>, f: impl Fn(&str) -> bool) -> String {
    keys.keys().filter(|k| f(k)).min().map(|k| k.to_string()).unwrap_or_default()
}
