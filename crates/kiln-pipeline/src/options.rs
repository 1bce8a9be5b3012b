//! What one run is asked to do: [`GenerateOptions`] (diffusers' pipeline arguments), the
//! [`Task`] (txt2img, img2img, inpainting) and the [`StepInfo`] progress reports.

use image::{GrayImage, RgbImage};
use kiln_scheduler::SamplerName;

/// The arguments of `pipe(...)` that kiln takes, for every task.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub prompt: String,
    /// SDXL: the second text encoder's prompt (`prompt_2`); `None` or empty = `prompt`.
    pub prompt_2: Option<String>,
    /// `None` = diffusers' default: an empty negative prompt under classifier-free guidance, or
    /// zeros for SDXL models with `force_zeros_for_empty_prompt`.
    pub negative_prompt: Option<String>,
    /// SDXL: `negative_prompt_2`; `None` or empty = `negative_prompt`.
    pub negative_prompt_2: Option<String>,
    pub num_inference_steps: usize,
    pub guidance_scale: f64,
    /// `guidance_rescale` (arXiv 2305.08891 §3.4), 0 = off.
    pub guidance_rescale: f64,
    /// `None` = the init image's width for img2img/inpainting, else the UNet's
    /// `sample_size × 8` (diffusers' default).
    pub width: Option<usize>,
    pub height: Option<usize>,
    pub seed: u64,
    pub num_images_per_prompt: usize,
    /// `None` = the model's own scheduler_config.json class.
    pub scheduler: Option<SamplerName>,
    /// `use_karras_sigmas` on top of the scheduler config.
    pub karras: bool,
    /// `clip_skip`: use the hidden state this many layers before the last (SD: then the final
    /// layer norm; SDXL: counted from the penultimate layer it already uses).
    pub clip_skip: Option<usize>,
    /// The pipeline's `eta` (DDIM η, TCD γ).
    pub eta: f64,
    /// SDXL micro-conditioning `(height, width)`; `None` = the output size.
    pub original_size: Option<(usize, usize)>,
    /// SDXL `crops_coords_top_left` `(top, left)`.
    pub crops_coords_top_left: (usize, usize),
    /// SDXL `target_size` `(height, width)`; `None` = the output size.
    pub target_size: Option<(usize, usize)>,
    /// How prompts are read: diffusers' (plain text, cut at 77 tokens) or A1111's (weights,
    /// `BREAK`, any length in 75-token chunks; [`crate::prompt`]).
    pub prompt_syntax: PromptSyntax,
    /// The arguments only the flow-matching pipelines (SD 3, FLUX) take.
    pub flow: FlowOptions,
}

/// Arguments of `StableDiffusion3Pipeline` and `FluxPipeline` that the SD pipelines do not have.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowOptions {
    /// SD 3: T5's prompt (`prompt_3`); `None` or empty = `prompt`.
    pub prompt_3: Option<String>,
    /// SD 3: `negative_prompt_3`; `None` or empty = `negative_prompt`.
    pub negative_prompt_3: Option<String>,
    /// T5's sequence length (`max_sequence_length`), at most 512; `None` = the pipeline's
    /// default (SD 3: 256, FLUX: 512).
    pub max_sequence_length: Option<usize>,
    /// FLUX: `true_cfg_scale`; above 1 with a negative prompt, a second transformer pass on the
    /// negative prompt and `neg + scale · (pos − neg)`.
    pub true_cfg_scale: f64,
    /// SD 3.5: skip-layer guidance (`skip_guidance_layers` …); `None` = off.
    pub skip_layer_guidance: Option<SkipLayerGuidance>,
}

impl Default for FlowOptions {
    fn default() -> Self {
        Self { prompt_3: None, negative_prompt_3: None, max_sequence_length: None, true_cfg_scale: 1.0, skip_layer_guidance: None }
    }
}

/// `StableDiffusion3Pipeline`'s skip-layer guidance: while `start · steps < i < stop · steps`,
/// an extra transformer pass on the prompt with `layers` skipped, and
/// `noise += (text − skipped) · scale`.
#[derive(Debug, Clone, PartialEq)]
pub struct SkipLayerGuidance {
    /// `skip_guidance_layers`, e.g. `[7, 8, 9]` for SD 3.5 Medium.
    pub layers: Vec<usize>,
    /// `skip_layer_guidance_scale` (diffusers' default 2.8).
    pub scale: f64,
    /// `skip_layer_guidance_start` (0.01).
    pub start: f64,
    /// `skip_layer_guidance_stop` (0.2).
    pub stop: f64,
}

/// How a prompt's text is read ([`GenerateOptions::prompt_syntax`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PromptSyntax {
    /// diffusers': the text as it is, truncated at the tokenizer's 77 tokens.
    #[default]
    Diffusers,
    /// AUTOMATIC1111's: `(text)`, `[text]`, `(text:1.3)`, `\(` escapes, `BREAK`, prompts of any
    /// length in chunks of 75 tokens.
    A1111,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            prompt_2: None,
            negative_prompt: None,
            negative_prompt_2: None,
            num_inference_steps: 50,
            guidance_scale: 7.5,
            guidance_rescale: 0.0,
            width: None,
            height: None,
            seed: 0,
            num_images_per_prompt: 1,
            scheduler: None,
            karras: false,
            clip_skip: None,
            eta: 0.0,
            original_size: None,
            crops_coords_top_left: (0, 0),
            target_size: None,
            prompt_syntax: PromptSyntax::Diffusers,
            flow: FlowOptions::default(),
        }
    }
}

/// What to generate from: text alone, an init image, or an init image and a mask.
#[derive(Debug, Clone, Copy)]
pub enum Task<'a> {
    Txt2Img,
    /// `strength` in [0, 1]: how much of the schedule runs (1 = from pure noise).
    Img2Img { image: &'a RgbImage, strength: f64 },
    /// `mask`: white (≥ 128) = repaint, black = keep. diffusers' default strength is 1.
    Inpaint { image: &'a RgbImage, mask: &'a GrayImage, strength: f64 },
}

impl Task<'_> {
    pub(crate) fn image(&self) -> Option<&RgbImage> {
        match self {
            Task::Txt2Img => None,
            Task::Img2Img { image, .. } | Task::Inpaint { image, .. } => Some(image),
        }
    }

    /// The run's strength (1 for txt2img).
    pub fn strength(&self) -> f64 {
        match self {
            Task::Txt2Img => 1.0,
            Task::Img2Img { strength, .. } | Task::Inpaint { strength, .. } => *strength,
        }
    }
}

/// Progress reported after each denoising step; return `false` from the callback to cancel.
#[derive(Debug, Clone, Copy)]
pub struct StepInfo {
    /// 0-based index of the step just taken, counted from the first step this run takes.
    pub step: usize,
    /// Number of model calls in this run (fewer than the schedule's for img2img).
    pub total: usize,
    pub timestep: f64,
}
