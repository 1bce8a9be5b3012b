//! `StableDiffusionPipeline` (diffusers `pipelines/stable_diffusion/pipeline_stable_diffusion.py`):
//! text-to-image for SD 1.x / 2.x models (ε and v-prediction), with the stages named as in
//! diffusers: [`StableDiffusion::check_inputs`], [`StableDiffusion::encode_prompt`],
//! [`StableDiffusion::prepare_latents`], [`StableDiffusion::denoise`],
//! [`StableDiffusion::decode_latents`].

use std::path::{Path, PathBuf};

use burn::tensor::{DType, Device, Tensor, TensorData};
use image::RgbImage;
use kiln_nn::LoadError;
use kiln_scheduler::{SamplerName, SchedulerClass, SchedulerConfig, SchedulerError, StepOptions};
use kiln_text_encoder::{ClipTextModel, ClipTokenizer, TextEncoderError, TokenizerError};
use kiln_unet::{UNet2DConditionModel, UNetError};
use kiln_vae::{AutoencoderKL, VaeError};
use thiserror::Error;

use crate::rng::TorchGenerator;

/// Why a pipeline could not be built or run. Every variant names the value and what is allowed.
#[derive(Debug, Error)]
pub enum PipelineError {
    #[error("model folder {path} has no {component}/ (model_index.json lists it)")]
    MissingComponent { path: PathBuf, component: String },
    #[error("{0}")]
    Load(#[from] LoadError),
    #[error("{0}")]
    TextEncoder(#[from] TextEncoderError),
    #[error("{0}")]
    Tokenizer(#[from] TokenizerError),
    #[error("{0}")]
    UNet(#[from] UNetError),
    #[error("{0}")]
    Vae(#[from] VaeError),
    #[error("{0}")]
    Scheduler(#[from] SchedulerError),
    #[error("{what} must be {allowed}, got {value}")]
    Input { what: &'static str, value: String, allowed: String },
    #[error("generation cancelled by the callback at step {0}")]
    Cancelled(usize),
}

/// The arguments of `pipe(...)` that kiln's txt2img takes.
#[derive(Debug, Clone)]
pub struct Txt2ImgOptions {
    pub prompt: String,
    /// `None` = diffusers' default (an empty negative prompt under classifier-free guidance).
    pub negative_prompt: Option<String>,
    pub num_inference_steps: usize,
    pub guidance_scale: f64,
    /// `guidance_rescale` (arXiv 2305.08891 §3.4), 0 = off.
    pub guidance_rescale: f64,
    pub width: usize,
    pub height: usize,
    pub seed: u64,
    pub num_images_per_prompt: usize,
    /// `None` = the model's own scheduler_config.json class.
    pub scheduler: Option<SamplerName>,
    /// `use_karras_sigmas` on top of the scheduler config.
    pub karras: bool,
    /// `clip_skip`: use the hidden state this many layers before the last (then the final layer norm).
    pub clip_skip: Option<usize>,
    /// The pipeline's `eta` (DDIM η, TCD γ).
    pub eta: f64,
}

impl Default for Txt2ImgOptions {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            negative_prompt: None,
            num_inference_steps: 50,
            guidance_scale: 7.5,
            guidance_rescale: 0.0,
            width: 512,
            height: 512,
            seed: 0,
            num_images_per_prompt: 1,
            scheduler: None,
            karras: false,
            clip_skip: None,
            eta: 0.0,
        }
    }
}

/// Progress reported after each denoising step; return `false` from the callback to cancel.
#[derive(Debug, Clone, Copy)]
pub struct StepInfo {
    /// 0-based index of the step just taken.
    pub step: usize,
    /// Number of model calls in the whole loop.
    pub total: usize,
    pub timestep: f64,
}

/// A loaded SD 1.x / 2.x pipeline (`StableDiffusionPipeline.from_pretrained`).
pub struct StableDiffusion {
    pub tokenizer: ClipTokenizer,
    pub text_encoder: ClipTextModel,
    pub unet: UNet2DConditionModel,
    pub vae: AutoencoderKL,
    pub scheduler_config: SchedulerConfig,
    pub device: Device,
}

fn component(dir: &Path, name: &str) -> Result<PathBuf, PipelineError> {
    let p = dir.join(name);
    if p.is_dir() {
        Ok(p)
    } else {
        Err(PipelineError::MissingComponent { path: dir.to_path_buf(), component: name.to_string() })
    }
}

impl StableDiffusion {
    /// Loads a diffusers folder: CLIP and the VAE in f32, the UNet in `unet_dtype`.
    pub fn load(dir: &Path, device: &Device, unet_dtype: DType, variant: Option<&str>) -> Result<Self, PipelineError> {
        let tokenizer = ClipTokenizer::from_dir(component(dir, "tokenizer")?)?;
        let text_encoder = ClipTextModel::load(component(dir, "text_encoder")?, device, DType::F32, variant)?;
        let unet = UNet2DConditionModel::load(&component(dir, "unet")?, device, unet_dtype, variant)?;
        let vae = AutoencoderKL::load(&component(dir, "vae")?, DType::F32, variant, device)?;
        let scheduler_config = SchedulerConfig::from_model_dir(dir)?;
        Ok(Self { tokenizer, text_encoder, unet, vae, scheduler_config, device: device.clone() })
    }

    /// `check_inputs`: sizes a multiple of 8 (diffusers checks `% 8` whatever the VAE's factor)
    /// and of the VAE's factor, at least one step, guidance ≥ 0.
    pub fn check_inputs(&self, o: &Txt2ImgOptions) -> Result<(), PipelineError> {
        let f = self.vae.downsample_factor().max(8);
        for (what, v) in [("width", o.width), ("height", o.height)] {
            if v == 0 || v % 8 != 0 || v % f != 0 {
                return Err(PipelineError::Input { what, value: v.to_string(), allowed: format!("a positive multiple of {f}") });
            }
        }
        if o.num_inference_steps == 0 {
            return Err(PipelineError::Input { what: "steps", value: "0".into(), allowed: "at least 1".into() });
        }
        if !(o.guidance_scale >= 0.0) {
            return Err(PipelineError::Input { what: "guidance scale", value: o.guidance_scale.to_string(), allowed: ">= 0".into() });
        }
        if o.num_images_per_prompt == 0 {
            return Err(PipelineError::Input { what: "number of images", value: "0".into(), allowed: "at least 1".into() });
        }
        Ok(())
    }

    /// Tokenizes and encodes one prompt (diffusers' `encode_prompt` for one text), repeated for
    /// `num_images` images. Logs a warning naming what was cut when the prompt exceeds 77 tokens.
    ///
    /// # Shapes
    /// - returns `[num_images, 77, hidden]`
    fn encode_text(&self, text: &str, num_images: usize, clip_skip: Option<usize>) -> Result<Tensor<3>, PipelineError> {
        let tokens = self.tokenizer.encode(text)?;
        if tokens.dropped_tokens > 0 {
            log::warn!(
                "The following part of your input was truncated because CLIP can only handle sequences up to {} tokens ({} tokens dropped): {}",
                self.tokenizer.max_length(),
                tokens.dropped_tokens,
                tokens.dropped_text
            );
        }
        let out = self.text_encoder.encode(&[tokens.ids], &self.device)?;
        let embeds = match clip_skip {
            None => out.last_hidden_state,
            Some(skip) => {
                let n = out.hidden_states.len();
                if skip + 1 >= n {
                    return Err(PipelineError::Input {
                        what: "clip_skip",
                        value: skip.to_string(),
                        allowed: format!("at most {} for this text encoder", n - 2),
                    });
                }
                self.text_encoder.final_layer_norm(out.hidden_states[n - 1 - skip].clone())
            }
        };
        Ok(embeds.repeat_dim(0, num_images))
    }

    /// `encode_prompt`: the prompt embeddings, with the negative ones first when classifier-free
    /// guidance is on (one batched UNet call for both).
    ///
    /// # Shapes
    /// - returns `[2 * n, 77, hidden]` with guidance, `[n, 77, hidden]` without
    pub fn encode_prompt(&self, o: &Txt2ImgOptions, do_cfg: bool) -> Result<Tensor<3>, PipelineError> {
        let n = o.num_images_per_prompt;
        let cond = self.encode_text(&o.prompt, n, o.clip_skip)?;
        if !do_cfg {
            return Ok(cond);
        }
        // diffusers encodes the negative prompt without clip_skip
        let uncond = self.encode_text(o.negative_prompt.as_deref().unwrap_or(""), n, None)?;
        Ok(Tensor::cat(vec![uncond, cond], 0))
    }

    /// `prepare_latents`: `torch.randn(shape, generator)` drawn on the host (bit for bit), scaled
    /// by the scheduler's `init_noise_sigma`.
    ///
    /// # Shapes
    /// - returns `[n, latent_channels, height / 8, width / 8]`
    pub fn prepare_latents(&self, o: &Txt2ImgOptions, init_noise_sigma: f64, generator: &mut TorchGenerator) -> Tensor<4> {
        let f = self.vae.downsample_factor();
        let c = self.unet.config().in_channels;
        let shape = [o.num_images_per_prompt, c, o.height / f, o.width / f];
        let noise = generator.randn(&shape);
        Tensor::<4>::from_data(TensorData::new(noise, shape), &self.device).mul_scalar(init_noise_sigma)
    }

    /// The denoising loop: CFG in one batched UNet call, `guidance_rescale`, scheduler steps with
    /// the generator as the noise source of stochastic samplers.
    pub fn denoise(
        &self,
        o: &Txt2ImgOptions,
        prompt_embeds: Tensor<3>,
        mut latents: Tensor<4>,
        scheduler: &mut dyn kiln_scheduler::Scheduler,
        generator: &mut TorchGenerator,
        callback: &mut dyn FnMut(StepInfo, &Tensor<4>) -> bool,
    ) -> Result<Tensor<4>, PipelineError> {
        let do_cfg = o.guidance_scale > 1.0;
        let timesteps = scheduler.timesteps().to_vec();
        for (i, &t) in timesteps.iter().enumerate() {
            let model_input = if do_cfg { Tensor::cat(vec![latents.clone(), latents.clone()], 0) } else { latents.clone() };
            let model_input = scheduler.scale_model_input(model_input, i);
            let noise_pred = self.unet.forward(model_input, &[t], prompt_embeds.clone(), None)?;
            let noise_pred = if do_cfg {
                let n = o.num_images_per_prompt;
                let uncond = noise_pred.clone().narrow(0, 0, n);
                let text = noise_pred.narrow(0, n, n);
                // noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)
                let guided = uncond.clone() + (text.clone() - uncond).mul_scalar(o.guidance_scale);
                if o.guidance_rescale > 0.0 { rescale_noise_cfg(guided, text, o.guidance_rescale) } else { guided }
            } else {
                noise_pred
            };
            latents = scheduler.step(noise_pred, i, latents, generator);
            if !callback(StepInfo { step: i, total: timesteps.len(), timestep: t }, &latents) {
                return Err(PipelineError::Cancelled(i));
            }
        }
        Ok(latents)
    }

    /// `decode_latents` + `image_processor.postprocess(output_type="pil")`: VAE decode of
    /// `latents / scaling_factor`, then `(x / 2 + 0.5).clamp(0, 1)`, `(x * 255).round()` to u8.
    pub fn decode_latents(&self, latents: Tensor<4>) -> Result<Vec<RgbImage>, PipelineError> {
        let z = latents.div_scalar(self.vae.scaling_factor());
        let image = self.vae.decode(z)?;
        to_rgb_images(image)
    }

    /// `pipe(prompt, ...)`: the whole txt2img run. `callback` sees each step and may cancel.
    pub fn txt2img(
        &self,
        o: &Txt2ImgOptions,
        callback: &mut dyn FnMut(StepInfo, &Tensor<4>) -> bool,
    ) -> Result<Vec<RgbImage>, PipelineError> {
        self.check_inputs(o)?;
        let mut config = self.scheduler_config.clone();
        if o.karras {
            config = config.with("use_karras_sigmas", true);
        }
        let options = StepOptions { eta: o.eta, ..StepOptions::default() };
        let mut scheduler = match o.scheduler {
            Some(name) => name.build(&config, o.num_inference_steps, &options)?,
            None => {
                let class = config.class_name.clone().ok_or_else(|| PipelineError::Input {
                    what: "scheduler",
                    value: "(none: scheduler_config.json has no _class_name)".into(),
                    allowed: "a sampler name (--scheduler)".into(),
                })?;
                SchedulerClass::from_class_name(&class)?.build(&config, o.num_inference_steps, &options)?
            }
        };
        let do_cfg = o.guidance_scale > 1.0;
        let prompt_embeds = self.encode_prompt(o, do_cfg)?;
        let mut generator = TorchGenerator::new(o.seed);
        let latents = self.prepare_latents(o, scheduler.init_noise_sigma(), &mut generator);
        let latents = self.denoise(o, prompt_embeds, latents, scheduler.as_mut(), &mut generator, callback)?;
        self.decode_latents(latents)
    }
}

/// `rescale_noise_cfg` (diffusers, after arXiv 2305.08891 §3.4): rescale the guided prediction to
/// the per-sample standard deviation (unbiased) of the text prediction, then mix.
///
/// # Shapes
/// - noise_cfg, noise_pred_text: `[n, c, h, w]`
pub fn rescale_noise_cfg(noise_cfg: Tensor<4>, noise_pred_text: Tensor<4>, guidance_rescale: f64) -> Tensor<4> {
    let dims = noise_cfg.dims();
    let std = |t: Tensor<4>| -> Tensor<4> {
        let flat: Tensor<2> = t.reshape([dims[0], dims[1] * dims[2] * dims[3]]);
        flat.var(1).sqrt().reshape([dims[0], 1, 1, 1]).expand(dims)
    };
    let std_text = std(noise_pred_text);
    let std_cfg = std(noise_cfg.clone());
    let rescaled = noise_cfg.clone() * (std_text / std_cfg);
    rescaled.mul_scalar(guidance_rescale) + noise_cfg.mul_scalar(1.0 - guidance_rescale)
}

/// `[n, 3, h, w]` in [-1, 1] → RGB8 images, as diffusers' `VaeImageProcessor.postprocess` +
/// `numpy_to_pil` do it (`(x * 0.5 + 0.5).clamp(0, 1)`, `(x * 255).round()`).
pub fn to_rgb_images(image: Tensor<4>) -> Result<Vec<RgbImage>, PipelineError> {
    let [n, c, h, w] = image.dims();
    if c != 3 {
        return Err(PipelineError::Input { what: "decoded image channels", value: c.to_string(), allowed: "3".into() });
    }
    let image = image.mul_scalar(0.5).add_scalar(0.5).clamp(0.0, 1.0).permute([0, 2, 3, 1]);
    let values: Vec<f32> = image
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| PipelineError::Input { what: "decoded image", value: format!("{e:?}"), allowed: "f32 data".into() })?;
    Ok((0..n)
        .map(|i| {
            let bytes: Vec<u8> = values[i * h * w * 3..(i + 1) * h * w * 3]
                .iter()
                // numpy's round() is half-to-even
                .map(|&v| (v * 255.0).round_ties_even() as u8)
                .collect();
            RgbImage::from_raw(w as u32, h as u32, bytes).expect("buffer size matches")
        })
        .collect())
}
