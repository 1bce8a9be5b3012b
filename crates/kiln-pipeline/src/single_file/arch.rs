//! The architecture a single file's weights go into: each component's config, the tokenizers,
//! the scheduler and the pipeline kind. Either a family's published configs, compiled in
//! (`configs/` through [`crate::presets`]: what diffusers' `from_single_file` fetches from the
//! family's Hub repo, `DIFFUSERS_DEFAULT_PIPELINE_PATHS`), or a diffusers folder given with
//! `--config` (diffusers' `config=`), of which only the configs and tokenizers are read.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{Family, SingleFileError};
use crate::model::{check_model_index, PipelineKind};
use crate::presets::{preset, Preset};

/// A config's text and what names it in errors.
#[derive(Debug, Clone)]
pub struct ConfigText {
    pub label: PathBuf,
    pub text: String,
}

/// Where a tokenizer comes from.
#[derive(Debug, Clone)]
pub enum TokenizerSource {
    /// A folder's `tokenizer*/`.
    Dir(PathBuf),
    /// A published tokenizer, compiled in: `tokenizer_config.json`, `special_tokens_map.json`.
    Compiled { label: PathBuf, config: &'static str, special_tokens_map: &'static str },
}

/// Everything but the weights.
#[derive(Debug, Clone)]
pub struct Architecture {
    pub kind: PipelineKind,
    /// What the configs are (`published SD 1.5 configs`, or the folder).
    pub origin: String,
    pub unet: ConfigText,
    pub vae: ConfigText,
    pub text_encoder: ConfigText,
    pub text_encoder_2: Option<ConfigText>,
    pub scheduler: ConfigText,
    pub tokenizer: TokenizerSource,
    pub tokenizer_2: Option<TokenizerSource>,
    pub force_zeros_for_empty_prompt: bool,
}

/// What `--prediction-type` accepts.
pub const PREDICTION_TYPES: [&str; 2] = ["epsilon", "v_prediction"];

/// `text` with `key` set to `value`; text that is not a JSON object is left for its parser to
/// report.
fn with_key(text: &str, key: &str, value: Value) -> String {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(mut map)) => {
            map.insert(key.into(), value);
            serde_json::to_string_pretty(&map).expect("JSON serializes")
        }
        _ => text.to_string(),
    }
}

impl Architecture {
    /// The published architecture of `family` (`path`: the checkpoint, for errors).
    ///
    /// SD 1.x and SDXL base take their Hub repos' configs; SD 2.x takes SD 2.1's (768,
    /// v-prediction), as diffusers' `from_single_file` does (its scheduler comes from the SD 2.1
    /// repo; only its legacy `prediction_type=` path reads a `.ckpt`'s `global_step`; SD 2.x base,
    /// ε: pass `--prediction-type epsilon`); the inpainting families take their base family's with
    /// the UNet's 9 input channels (SD 2 inpainting: 512, ε, as
    /// `stabilityai/stable-diffusion-2-inpainting`).
    pub fn published(family: Family, path: &Path) -> Result<Self, SingleFileError> {
        let unsupported = |what: &str| SingleFileError::Unsupported {
            path: path.into(),
            message: format!("{} checkpoints are detected but {what}", family.name()),
        };
        let (name, kind) = match family {
            Family::Sd1 => ("sd15", PipelineKind::StableDiffusion),
            Family::Sd2 => ("sd21", PipelineKind::StableDiffusion),
            Family::SdxlBase => ("sdxl", PipelineKind::StableDiffusionXL),
            Family::Sd1Inpaint => ("sd15", PipelineKind::StableDiffusionInpaint),
            Family::Sd2Inpaint => ("sd21", PipelineKind::StableDiffusionInpaint),
            Family::SdxlRefiner => return Err(unsupported("kiln does not run the SDXL refiner pipeline yet")),
            Family::SdxlInpaint => return Err(unsupported("kiln does not run SDXL inpainting yet")),
        };
        let p: &Preset = preset(name).expect("the presets include sd15, sd21 and sdxl");
        let label = |component: &str, file: &str| PathBuf::from(format!("<published {name} configs>/{component}/{file}"));
        let config = |component: &str| {
            p.config(component).map(|text| ConfigText {
                label: label(component, if component == "scheduler" { "scheduler_config.json" } else { "config.json" }),
                text: text.to_string(),
            })
        };
        let tokenizer = |component: &str| {
            p.tokenizers.iter().find(|(c, ..)| *c == component).map(|&(c, config, special_tokens_map)| TokenizerSource::Compiled {
                label: label(c, ""),
                config,
                special_tokens_map,
            })
        };
        let mut arch = Self {
            kind,
            origin: format!("the published {} configs (compiled in)", family.name()),
            unet: config("unet").expect("every preset has a UNet"),
            vae: config("vae").expect("every preset has a VAE"),
            text_encoder: config("text_encoder").expect("every preset has a text encoder"),
            text_encoder_2: config("text_encoder_2"),
            scheduler: config("scheduler").expect("every preset has a scheduler"),
            tokenizer: tokenizer("tokenizer").expect("every preset has a tokenizer"),
            tokenizer_2: tokenizer("tokenizer_2"),
            force_zeros_for_empty_prompt: kind == PipelineKind::StableDiffusionXL,
        };
        if kind == PipelineKind::StableDiffusionInpaint {
            arch.unet.text = with_key(&arch.unet.text, "in_channels", 9.into());
        }
        if family == Family::Sd2Inpaint {
            arch.unet.text = with_key(&arch.unet.text, "sample_size", 64.into());
            arch = arch.with_prediction_type("epsilon");
        }
        Ok(arch)
    }

    /// The published architecture of `file`'s family; a file whose layout is not a published one
    /// (a custom or tiny model) needs its configs named (`--config`, [`Architecture::from_folder`]).
    pub fn for_file(file: &super::SingleFile) -> Result<Self, SingleFileError> {
        let d = &file.detection;
        if !d.published {
            return Err(SingleFileError::Unsupported {
                path: file.path().into(),
                message: format!(
                    "an LDM checkpoint of the {} kind whose layout is not a published model's ({}); name its diffusers configs (kiln generate --config DIR|HUB_ID)",
                    d.family.name(),
                    d.evidence
                ),
            });
        }
        Self::published(d.family, file.path())
    }

    /// The architecture of the diffusers folder `dir` (diffusers' `config=`): `model_index.json`,
    /// each component's config and the tokenizers; its weights are not read.
    pub fn from_folder(dir: &Path) -> Result<Self, SingleFileError> {
        let read = |rel: &str| -> Result<ConfigText, SingleFileError> {
            let label = dir.join(rel);
            let text = kiln_nn::read_text_file(&label, kiln_nn::CONFIG_LIMIT)?;
            Ok(ConfigText { label, text })
        };
        let index = read("model_index.json")?;
        let kind = check_model_index(&index.text, &index.label.display().to_string())
            .map_err(|e| SingleFileError::Unsupported { path: dir.into(), message: e.to_string() })?;
        let xl = kind == PipelineKind::StableDiffusionXL;
        let force_zeros = serde_json::from_str::<Value>(&index.text).ok().and_then(|v| v["force_zeros_for_empty_prompt"].as_bool());
        Ok(Self {
            kind,
            origin: dir.display().to_string(),
            unet: read("unet/config.json")?,
            vae: read("vae/config.json")?,
            text_encoder: read("text_encoder/config.json")?,
            text_encoder_2: if xl { Some(read("text_encoder_2/config.json")?) } else { None },
            scheduler: read("scheduler/scheduler_config.json")?,
            tokenizer: TokenizerSource::Dir(dir.join("tokenizer")),
            tokenizer_2: xl.then(|| TokenizerSource::Dir(dir.join("tokenizer_2"))),
            force_zeros_for_empty_prompt: xl && force_zeros.unwrap_or(true),
        })
    }

    /// The scheduler's `prediction_type` set to `prediction_type` (`--prediction-type`).
    pub fn with_prediction_type(mut self, prediction_type: &str) -> Self {
        self.scheduler.text = with_key(&self.scheduler.text, "prediction_type", prediction_type.into());
        self
    }
}
