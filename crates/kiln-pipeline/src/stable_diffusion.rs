//! The Stable Diffusion pipelines of diffusers, one loaded model and three tasks:
//! * `StableDiffusionPipeline` (`pipelines/stable_diffusion/pipeline_stable_diffusion.py`):
//!   text-to-image for SD 1.x / 2.x (ε and v-prediction);
//! * `StableDiffusionXLPipeline` (`pipelines/stable_diffusion_xl/pipeline_stable_diffusion_xl.py`):
//!   two text encoders (penultimate hidden states, concatenated), the pooled projection of the
//!   second and the micro-conditioning `time_ids`, zeros for an absent negative prompt
//!   (`force_zeros_for_empty_prompt`);
//! * `StableDiffusionImg2ImgPipeline` (`pipeline_stable_diffusion_img2img.py`) and, for SDXL base
//!   models, `StableDiffusionXLImg2ImgPipeline`: the init image's latents noised to the
//!   strength's first timestep;
//! * `StableDiffusionInpaintPipeline` (`pipeline_stable_diffusion_inpaint.py`): 9-channel
//!   inpainting UNets get the mask and the masked image's latents as extra input channels;
//!   ordinary 4-channel UNets get the known region blended back after each step.
//!
//! The stages are named as in diffusers: [`StableDiffusion::check_inputs`],
//! [`StableDiffusion::encode_prompt`], [`StableDiffusion::prepare_latents`],
//! [`StableDiffusion::denoise`], [`StableDiffusion::decode_latents`]. Random numbers come from one
//! [`TorchGenerator`] in diffusers' order (VAE posterior samples, initial noise, masked-image
//! posterior, then each stochastic step), so a seed gives diffusers' picture.

use std::path::{Path, PathBuf};

use burn::tensor::{DType, Device, Tensor, TensorData};
use image::{GrayImage, RgbImage};
use kiln_nn::LoadOptions;
use kiln_scheduler::{img2img_begin_index, SamplerChoice, Scheduler, SchedulerConfig, StepOptions};
use kiln_text_encoder::{ClipTextModel, ClipTextOutput, ClipTokenizer};
use kiln_unet::{PerBlock, TextTimeCond, UNet2DConditionModel};
use kiln_vae::AutoencoderKL;

use crate::error::PipelineError;
use crate::image_processor::{image_to_tensor, interpolate_nearest, mask_to_tensor, to_rgb_images};
use crate::model::{ModelFolder, PipelineKind, ResolveOptions};
use crate::options::{GenerateOptions, StepInfo, Task};
use crate::rng::TorchGenerator;

/// The text conditioning of one run, CFG halves concatenated (negative first).
///
/// # Shapes
/// - prompt_embeds: `[b, 77, cross_attention_dim]`, b = 2n with guidance, n without
/// - text_time: SDXL's pooled `[b, projection_dim]` and b rows of `time_ids`
pub struct PromptEmbeds {
    pub prompt_embeds: Tensor<3>,
    pub text_time: Option<TextTimeCond>,
}

/// The extra inputs of an inpainting run.
///
/// # Shapes
/// - mask: `[n, 1, h/8, w/8]` (1 = repaint); masked_image_latents, image_latents, noise:
///   `[n, 4, h/8, w/8]`
pub struct InpaintLatents {
    pub mask: Tensor<4>,
    pub masked_image_latents: Tensor<4>,
    /// 4-channel UNets only: the init image's latents and the initial noise, for the blend.
    pub image_latents: Option<Tensor<4>>,
    pub noise: Tensor<4>,
}

/// A loaded SD 1.x / 2.x, SDXL or inpainting model (`DiffusionPipeline.from_pretrained`).
pub struct StableDiffusion {
    pub kind: PipelineKind,
    pub tokenizer: ClipTokenizer,
    pub text_encoder: ClipTextModel,
    /// SDXL's second tokenizer and `CLIPTextModelWithProjection`.
    pub tokenizer_2: Option<ClipTokenizer>,
    pub text_encoder_2: Option<ClipTextModel>,
    pub unet: UNet2DConditionModel,
    pub vae: AutoencoderKL,
    pub scheduler_config: SchedulerConfig,
    /// SDXL `force_zeros_for_empty_prompt` (model_index.json).
    pub force_zeros_for_empty_prompt: bool,
    pub device: Device,
    /// The LoRAs merged into the weights ([`StableDiffusion::load_lora`]).
    pub loras: crate::lora::LoraState,
}

impl StableDiffusion {
    /// Loads a diffusers folder (or a single file) on `options.device`: the UNet in `options.dtype`, the text
    /// encoders and the VAE in f32 (diffusers' defaults keep the VAE in f32 too);
    /// `options.variant = Some("fp16")` takes the `.fp16.safetensors` files where they exist.
    ///
    /// A file is read as a single-file checkpoint ([`StableDiffusion::load_single_file`]) with its
    /// family's published configs (`options.variant` does not apply).
    pub fn load(dir: &Path, options: &LoadOptions) -> Result<Self, PipelineError> {
        if dir.is_file() {
            let file = crate::single_file::SingleFile::open(dir)?;
            let arch = crate::single_file::Architecture::for_file(&file)?;
            return Self::load_single_file(&file, &arch, None, &options.device, options.dtype);
        }
        let resolve = ResolveOptions { prefer_fp16: options.variant.as_deref() == Some("fp16"), vae: None };
        Self::load_folder(&ModelFolder::open(dir, &resolve)?, &options.device, options.dtype)
    }

    /// Loads a resolved model folder (as [`crate::resolve`] returns it, `--vae` included).
    pub fn load_folder(folder: &ModelFolder, device: &Device, unet_dtype: DType) -> Result<Self, PipelineError> {
        if folder.kind.is_flow_matching() {
            return Err(PipelineError::Unsupported(format!(
                "{} is a {} model: load it with kiln_pipeline::Pipeline (or StableDiffusion3 / Flux), which `kiln generate` does",
                folder.root.display(),
                folder.kind
            )));
        }
        let dir = |name: &str| crate::components::dir(folder, name);
        let options = |name: &str| crate::components::options(folder, name, device);
        let tokenizer = ClipTokenizer::from_dir(dir("tokenizer")?)?;
        let text_encoder = ClipTextModel::load(&dir("text_encoder")?, &options("text_encoder"))?;
        let (tokenizer_2, text_encoder_2) = if folder.kind == PipelineKind::StableDiffusionXL {
            let te2 = ClipTextModel::load(&dir("text_encoder_2")?, &options("text_encoder_2"))?;
            (Some(ClipTokenizer::from_dir(dir("tokenizer_2")?)?), Some(te2))
        } else {
            (None, None)
        };
        let unet = UNet2DConditionModel::load(&dir("unet")?, &options("unet").with_dtype(unet_dtype))?;
        let vae = AutoencoderKL::load(&dir("vae")?, &options("vae"))?;
        let scheduler_config = SchedulerConfig::from_file(dir("scheduler")?.join("scheduler_config.json"))?;
        Ok(Self {
            kind: folder.kind,
            tokenizer,
            text_encoder,
            tokenizer_2,
            text_encoder_2,
            unet,
            vae,
            scheduler_config,
            force_zeros_for_empty_prompt: folder.force_zeros_for_empty_prompt,
            device: device.clone(),
            loras: Default::default(),
        })
    }

    /// `vae_scale_factor`: 2^(VAE levels − 1), 8 for every SD model.
    pub fn vae_scale_factor(&self) -> usize {
        self.vae.downsample_factor()
    }

    /// diffusers' default output size `(height, width)`: the UNet's `sample_size` × the VAE factor.
    pub fn default_size(&self) -> (usize, usize) {
        // (the UNet config bounds sample_size, the VAE config its levels; saturating all the same)
        let f = self.vae_scale_factor();
        match &self.unet.config().sample_size {
            Some(PerBlock::One(s)) => (s.saturating_mul(f), s.saturating_mul(f)),
            Some(PerBlock::List(l)) if l.len() == 2 => (l[0].saturating_mul(f), l[1].saturating_mul(f)),
            _ => (64 * f, 64 * f),
        }
    }

    /// The output size `(height, width)` of a run: the options', else the init image's, else
    /// [`default_size`](Self::default_size).
    pub fn output_size(&self, o: &GenerateOptions, task: &Task) -> (usize, usize) {
        let (dh, dw) = match task.image() {
            Some(img) => (img.height() as usize, img.width() as usize),
            None => self.default_size(),
        };
        (o.height.unwrap_or(dh), o.width.unwrap_or(dw))
    }

    fn is_inpainting_unet(&self) -> bool {
        self.unet.config().in_channels == 9
    }

    /// `check_inputs`: sizes a positive multiple of 8 (and of the VAE's factor), at least one
    /// step, guidance ≥ 0, strength in [0, 1] leaving at least one step, init image and mask of
    /// the output size, a task this model runs, and a peak memory estimate within what the CPU
    /// has available.
    pub fn check_inputs(&self, o: &GenerateOptions, task: &Task) -> Result<(), PipelineError> {
        let (height, width) = self.output_size(o, task);
        let f = self.vae_scale_factor().max(8);
        for (what, v) in [("width", width), ("height", height)] {
            if v == 0 || v % 8 != 0 || v % f != 0 {
                return Err(PipelineError::Input { what, value: v.to_string(), allowed: format!("a positive multiple of {f}") });
            }
        }
        if o.num_inference_steps == 0 {
            return Err(PipelineError::Input { what: "steps", value: "0".into(), allowed: "at least 1".into() });
        }
        if !(o.guidance_scale >= 0.0) || !o.guidance_scale.is_finite() {
            return Err(PipelineError::Input { what: "guidance scale", value: o.guidance_scale.to_string(), allowed: "a finite number >= 0".into() });
        }
        if !(0.0..=1.0).contains(&o.guidance_rescale) {
            return Err(PipelineError::Input { what: "guidance rescale", value: o.guidance_rescale.to_string(), allowed: "in [0, 1]".into() });
        }
        if o.num_images_per_prompt == 0 {
            return Err(PipelineError::Input { what: "number of images", value: "0".into(), allowed: "at least 1".into() });
        }
        if let Some(skip) = o.clip_skip {
            // SD: hidden_states[-(clip_skip + 1)]; SDXL: hidden_states[-(clip_skip + 2)], of the
            // num_layers + 1 hidden states each encoder returns
            let extra = usize::from(self.kind == PipelineKind::StableDiffusionXL);
            let encoders = [Some(&self.text_encoder), self.text_encoder_2.as_ref()];
            let layers = encoders.into_iter().flatten().map(ClipTextModel::num_layers).min().unwrap_or(0);
            match layers.checked_sub(1 + extra) {
                Some(max) if skip <= max => {}
                Some(max) => return Err(PipelineError::Input { what: "clip_skip", value: skip.to_string(), allowed: format!("at most {max} for this model's text encoder ({layers} layers)") }),
                None => return Err(PipelineError::Input { what: "clip_skip", value: skip.to_string(), allowed: format!("unset: this model's text encoder has {layers} layers, none to skip") }),
            }
        }
        if !o.eta.is_finite() || o.eta < 0.0 {
            return Err(PipelineError::Input { what: "eta", value: o.eta.to_string(), allowed: "a finite number >= 0".into() });
        }
        match (self.kind, task) {
            (PipelineKind::StableDiffusionXL, Task::Txt2Img | Task::Img2Img { .. }) => {}
            (PipelineKind::StableDiffusionXL, Task::Inpaint { .. }) => {
                return Err(PipelineError::Unsupported(
                    "inpainting with SDXL models is not supported yet (text-to-image and img2img are)".into(),
                ))
            }
            (_, Task::Inpaint { .. }) => {}
            _ if self.is_inpainting_unet() => {
                return Err(PipelineError::Unsupported(format!(
                    "this is an inpainting model (its UNet takes {} channels): give an init image and a mask",
                    self.unet.config().in_channels
                )))
            }
            _ => {}
        }
        if let Task::Img2Img { strength, .. } | Task::Inpaint { strength, .. } = *task {
            if !(0.0..=1.0).contains(&strength) {
                return Err(PipelineError::Input { what: "strength", value: strength.to_string(), allowed: "in [0, 1]".into() });
            }
            // get_timesteps: int(steps * strength) steps run; diffusers refuses zero
            let steps = o.num_inference_steps;
            if ((steps as f64 * strength) as usize).min(steps) == 0 {
                return Err(PipelineError::Input {
                    what: "strength",
                    value: strength.to_string(),
                    allowed: format!(
                        "at least {} with {steps} steps (int(steps × strength) = 0 leaves no denoising step)",
                        1.0 / steps as f64
                    ),
                });
            }
        }
        let size_of = |img: (u32, u32)| format!("{}x{}", img.0, img.1);
        if let Some(img) = task.image() {
            if (img.width() as usize, img.height() as usize) != (width, height) {
                return Err(PipelineError::Input {
                    what: "init image size",
                    value: size_of(img.dimensions()),
                    allowed: format!("the output size {width}x{height} (kiln does not resize; resize the image or pass its size)"),
                });
            }
        }
        if let Task::Inpaint { mask, .. } = task {
            if (mask.width() as usize, mask.height() as usize) != (width, height) {
                return Err(PipelineError::Input {
                    what: "mask size",
                    value: size_of(mask.dimensions()),
                    allowed: format!("the init image's size {width}x{height}"),
                });
            }
        }
        self.check_memory(o, width, height)
    }

    /// A rough peak-memory estimate: the largest of the UNet's attention scores at its first
    /// attention level (`batch × heads × L² × 4` bytes) and the VAE decoder's full-resolution
    /// activations (a few `[n, c₀, H, W]` f32 tensors). Checked against `MemAvailable` on the CPU
    /// only (GPU adapters do not report free memory to kiln).
    fn check_memory(&self, o: &GenerateOptions, width: usize, height: usize) -> Result<(), PipelineError> {
        let Some(available) = (self.device == Device::flex()).then(available_memory).flatten() else {
            return Ok(());
        };
        let c = self.unet.config();
        let f = self.vae_scale_factor() as f64;
        let n = o.num_images_per_prompt as f64;
        let batch = if o.guidance_scale > 1.0 { 2.0 * n } else { n };
        let level = c.down_block_types.iter().position(|t| t.contains("Attn")).unwrap_or(0);
        let per_block = |p: &PerBlock<usize>| match p {
            PerBlock::One(v) => *v,
            PerBlock::List(l) => l.get(level).copied().unwrap_or(8),
        };
        let heads = c.num_attention_heads.as_ref().map(per_block).unwrap_or_else(|| per_block(&c.attention_head_dim)) as f64;
        let tokens = (height as f64 / f / 2f64.powi(level as i32)) * (width as f64 / f / 2f64.powi(level as i32));
        let attention = batch * heads * tokens * tokens * 4.0;
        let c0 = self.vae.config.block_out_channels.first().copied().unwrap_or(128) as f64;
        let vae = 4.0 * n * c0 * height as f64 * width as f64 * 4.0;
        let needed = attention.max(vae);
        if needed > available {
            let gib = |b: f64| b / (1u64 << 30) as f64;
            return Err(PipelineError::TooLarge {
                width,
                height,
                batch: batch as usize,
                needed_gib: gib(needed),
                available_gib: gib(available),
            });
        }
        Ok(())
    }

    fn run_text_encoder(
        &self,
        tokenizer: &ClipTokenizer,
        encoder: &ClipTextModel,
        text: &str,
    ) -> Result<kiln_text_encoder::ClipTextOutput, PipelineError> {
        run_clip(tokenizer, encoder, text, &self.device)
    }

    /// SD 1.x / 2.x: the last hidden state, or with `clip_skip` the hidden state that many layers
    /// earlier through the final layer norm (`pipeline_stable_diffusion.py::encode_prompt`).
    ///
    /// # Shapes
    /// - returns `[1, 77, hidden]`
    fn encode_text_sd(&self, text: &str, clip_skip: Option<usize>) -> Result<Tensor<3>, PipelineError> {
        let out = self.run_text_encoder(&self.tokenizer, &self.text_encoder, text)?;
        conditioning(&self.text_encoder, out, false, clip_skip)
    }

    /// SDXL: both encoders' `hidden_states[-(clip_skip + 2)]` (no final layer norm) concatenated
    /// on the feature axis, and the second encoder's projected pooled output
    /// (`pipeline_stable_diffusion_xl.py::encode_prompt`).
    ///
    /// # Shapes
    /// - returns `([1, 77, hidden_1 + hidden_2], [1, projection_dim])`
    fn encode_text_sdxl(&self, text: &str, text_2: &str, clip_skip: Option<usize>) -> Result<(Tensor<3>, Tensor<2>), PipelineError> {
        let (Some(tok2), Some(te2)) = (&self.tokenizer_2, &self.text_encoder_2) else {
            return Err(PipelineError::MissingComponent { path: PathBuf::new(), component: "text_encoder_2".into() });
        };
        let mut parts = Vec::with_capacity(2);
        let mut pooled = None;
        for (tok, te, text) in [(&self.tokenizer, &self.text_encoder, text), (tok2, te2, text_2)] {
            let out = self.run_text_encoder(tok, te, text)?;
            // diffusers keeps `prompt_embeds[0]` when it is 2-D: the projection of the encoder
            // with projection (the second)
            if out.text_embeds.is_some() {
                pooled = out.text_embeds.clone();
            }
            parts.push(conditioning(te, out, true, clip_skip)?);
        }
        let pooled = pooled.ok_or_else(|| {
            PipelineError::Unsupported("SDXL needs text_encoder_2 to be a CLIPTextModelWithProjection (no text_projection found)".into())
        })?;
        Ok((Tensor::cat(parts, 2), pooled))
    }

    /// `encode_prompt`: the prompt embeddings, negative first when classifier-free guidance is
    /// on (one batched UNet call for both), each repeated for `num_images_per_prompt`; for SDXL
    /// also the pooled embeddings and `time_ids` (`_get_add_time_ids`).
    pub fn encode_prompt(&self, o: &GenerateOptions, do_cfg: bool, height: usize, width: usize) -> Result<PromptEmbeds, PipelineError> {
        if o.prompt_syntax == crate::options::PromptSyntax::A1111 {
            return self.encode_prompt_a1111(o, do_cfg, height, width);
        }
        let n = o.num_images_per_prompt;
        let rep3 = |t: Tensor<3>| t.repeat_dim(0, n);
        let rep2 = |t: Tensor<2>| t.repeat_dim(0, n);
        if self.kind != PipelineKind::StableDiffusionXL {
            let cond = rep3(self.encode_text_sd(&o.prompt, o.clip_skip)?);
            if !do_cfg {
                return Ok(PromptEmbeds { prompt_embeds: cond, text_time: None });
            }
            // diffusers encodes the negative prompt without clip_skip
            let uncond = rep3(self.encode_text_sd(o.negative_prompt.as_deref().unwrap_or(""), None)?);
            return Ok(PromptEmbeds { prompt_embeds: Tensor::cat(vec![uncond, cond], 0), text_time: None });
        }
        // `prompt_2 = prompt_2 or prompt`
        let or = |a: &Option<String>, b: &str| a.as_deref().filter(|s| !s.is_empty()).unwrap_or(b).to_string();
        let (embeds, pooled) = self.encode_text_sdxl(&o.prompt, &or(&o.prompt_2, &o.prompt), o.clip_skip)?;
        let time_ids = self.add_time_ids(o, height, width, pooled.dims()[1])?;
        if !do_cfg {
            let text_time = TextTimeCond { text_embeds: rep2(pooled), time_ids: vec![time_ids; n] };
            return Ok(PromptEmbeds { prompt_embeds: rep3(embeds), text_time: Some(text_time) });
        }
        let (neg, neg_pooled) = if o.negative_prompt.is_none() && self.force_zeros_for_empty_prompt {
            (embeds.zeros_like(), pooled.zeros_like())
        } else {
            let negative = o.negative_prompt.clone().unwrap_or_default();
            // the negative prompt always uses the penultimate layer
            self.encode_text_sdxl(&negative, &or(&o.negative_prompt_2, &negative), None)?
        };
        Ok(PromptEmbeds {
            prompt_embeds: Tensor::cat(vec![rep3(neg), rep3(embeds)], 0),
            text_time: Some(TextTimeCond {
                text_embeds: Tensor::cat(vec![rep2(neg_pooled), rep2(pooled)], 0),
                time_ids: vec![time_ids; 2 * n],
            }),
        })
    }

    /// `_get_add_time_ids`: `original_size + crops_coords_top_left + target_size`, checked against
    /// the UNet's `add_embedding` input width.
    pub(crate) fn add_time_ids(&self, o: &GenerateOptions, height: usize, width: usize, projection_dim: usize) -> Result<Vec<f64>, PipelineError> {
        let (oh, ow) = o.original_size.unwrap_or((height, width));
        let (ct, cl) = o.crops_coords_top_left;
        let (th, tw) = o.target_size.unwrap_or((height, width));
        let ids: Vec<f64> = [oh, ow, ct, cl, th, tw].iter().map(|&v| v as f64).collect();
        let c = self.unet.config();
        let passed = c.addition_time_embed_dim.unwrap_or(0) * ids.len() + projection_dim;
        if let Some(expected) = c.projection_class_embeddings_input_dim {
            if expected != passed {
                return Err(PipelineError::Unsupported(format!(
                    "the UNet expects an added time embedding vector of length {expected}, but a vector of {passed} was created \
                     (addition_time_embed_dim × 6 + text_encoder_2 projection_dim); the model's configs do not match"
                )));
            }
        }
        Ok(ids)
    }

    /// Builds the scheduler of a run: `o.scheduler` and `o.karras` on top of the model's config,
    /// through [`kiln_scheduler::SamplerChoice`] (the one place a sampler is chosen; `kiln
    /// schedule` goes through it too).
    pub fn build_scheduler(&self, o: &GenerateOptions) -> Result<Box<dyn Scheduler>, PipelineError> {
        let options = StepOptions { eta: o.eta, ..StepOptions::default() };
        let choice = SamplerChoice { sampler: o.scheduler, karras: o.karras };
        Ok(choice.build(&self.scheduler_config, o.num_inference_steps, &options)?)
    }

    fn randn(&self, generator: &mut TorchGenerator, shape: [usize; 4]) -> Tensor<4> {
        Tensor::<4>::from_data(TensorData::new(generator.randn(&shape), shape), &self.device)
    }

    /// `_encode_vae_image`: `scaling_factor × vae.encode(image).latent_dist.sample(generator)`.
    ///
    /// # Shapes
    /// - image: `[1, 3, h, w]` in [-1, 1]; returns `[1, latent_channels, h / 8, w / 8]`
    ///
    /// SDXL (`pipeline_stable_diffusion_xl_img2img.py::prepare_latents`) normalises with the VAE's
    /// `latents_mean` / `latents_std` when its config has both: `(z − mean) × scaling_factor / std`.
    fn encode_vae_image(&self, image: Tensor<4>, generator: &mut TorchGenerator) -> Result<Tensor<4>, PipelineError> {
        let dist = crate::in_worker(&self.device, || self.vae.encode(image))?;
        let noise = self.randn(generator, dist.mean.dims());
        let z = dist.sample(noise)?;
        let sf = self.vae.scaling_factor();
        match self.latents_mean_std(z.dims()) {
            Some((mean, std)) if self.kind == PipelineKind::StableDiffusionXL => Ok(((z - mean) / std).mul_scalar(sf)),
            _ => Ok(z.mul_scalar(sf)),
        }
    }

    /// The VAE config's `latents_mean` and `latents_std` broadcast to `dims`, when it has both
    /// with one value per latent channel.
    fn latents_mean_std(&self, dims: [usize; 4]) -> Option<(Tensor<4>, Tensor<4>)> {
        let cfg = &self.vae.config;
        let (mean, std) = (cfg.latents_mean.as_ref()?, cfg.latents_std.as_ref()?);
        if mean.len() != dims[1] || std.len() != dims[1] {
            return None;
        }
        let column = |v: &[f64]| {
            let v: Vec<f32> = v.iter().map(|&x| x as f32).collect();
            Tensor::<4>::from_data(TensorData::new(v, [1, dims[1], 1, 1]), &self.device).expand(dims)
        };
        Some((column(mean), column(std)))
    }

    /// `prepare_latents` of the three pipelines, drawing from `generator` in diffusers' order:
    /// * txt2img: `randn([n, c, h/8, w/8]) × init_noise_sigma`;
    /// * img2img: the init image's latents (one posterior sample), repeated n times, then
    ///   `add_noise(latents, randn, timesteps[begin])`;
    /// * inpainting: the init image's latents when needed (4-channel UNet, or strength < 1),
    ///   then the noise (pure noise × init_noise_sigma at strength 1), then the masked image's
    ///   latents (`prepare_mask_latents`).
    ///
    /// # Shapes
    /// - returns `[n, latent_channels, h / 8, w / 8]` and, for inpainting, [`InpaintLatents`]
    pub fn prepare_latents(
        &self,
        o: &GenerateOptions,
        task: &Task,
        height: usize,
        width: usize,
        scheduler: &dyn Scheduler,
        begin: usize,
        generator: &mut TorchGenerator,
    ) -> Result<(Tensor<4>, Option<InpaintLatents>), PipelineError> {
        let f = self.vae_scale_factor();
        let n = o.num_images_per_prompt;
        let (lh, lw) = (height / f, width / f);
        match *task {
            Task::Txt2Img => {
                let shape = [n, self.unet.config().in_channels, lh, lw];
                Ok((self.randn(generator, shape).mul_scalar(scheduler.init_noise_sigma()), None))
            }
            Task::Img2Img { image, .. } => {
                let init = self.encode_vae_image(image_to_tensor(image, &self.device), generator)?.repeat_dim(0, n);
                let noise = self.randn(generator, init.dims());
                Ok((scheduler.add_noise(init, noise, begin), None))
            }
            Task::Inpaint { image, mask, strength } => {
                let c = self.vae.config.latent_channels;
                let is_strength_max = strength == 1.0;
                let init_image = image_to_tensor(image, &self.device);
                let image_latents = if !self.is_inpainting_unet() || !is_strength_max {
                    Some(self.encode_vae_image(init_image.clone(), generator)?.repeat_dim(0, n))
                } else {
                    None
                };
                let noise = self.randn(generator, [n, c, lh, lw]);
                let latents = match (&image_latents, is_strength_max) {
                    (Some(init), false) => scheduler.add_noise(init.clone(), noise.clone(), begin),
                    _ => noise.clone().mul_scalar(scheduler.init_noise_sigma()),
                };
                // masked_image = init_image * (mask < 0.5)
                let keep = mask_to_tensor(mask, &self.device).neg().add_scalar(1.0);
                let masked_image = init_image * keep.expand([1, 3, height, width]);
                let masked_image_latents = self.encode_vae_image(masked_image, generator)?.repeat_dim(0, n);
                let mask = interpolate_nearest(mask, lh, lw, &self.device).repeat_dim(0, n);
                let image_latents = if self.is_inpainting_unet() { None } else { image_latents };
                Ok((latents, Some(InpaintLatents { mask, masked_image_latents, image_latents, noise })))
            }
        }
    }

    /// The denoising loop from step `begin`: CFG in one batched UNet call, `guidance_rescale`,
    /// scheduler steps with the generator as the noise source of stochastic samplers; for
    /// inpainting the mask channels (9-channel UNets) or the blend of the known region
    /// (4-channel UNets).
    #[allow(clippy::too_many_arguments)]
    pub fn denoise(
        &self,
        o: &GenerateOptions,
        cond: &PromptEmbeds,
        mut latents: Tensor<4>,
        scheduler: &mut dyn Scheduler,
        begin: usize,
        inpaint: Option<&InpaintLatents>,
        generator: &mut TorchGenerator,
        callback: &mut dyn FnMut(StepInfo, &Tensor<4>) -> bool,
    ) -> Result<Tensor<4>, PipelineError> {
        let do_cfg = o.guidance_scale > 1.0;
        let n = o.num_images_per_prompt;
        let double = |t: &Tensor<4>| if do_cfg { Tensor::cat(vec![t.clone(), t.clone()], 0) } else { t.clone() };
        // 9-channel UNets: [latents, mask, masked_image_latents] on the channel axis
        let extra_channels = inpaint
            .filter(|_| self.is_inpainting_unet())
            .map(|i| (double(&i.mask), double(&i.masked_image_latents)));
        // 4-channel UNets: the blend's weights, `(mask, 1 − mask)` at the latents' shape
        let blend = inpaint.and_then(|i| i.image_latents.as_ref().map(|l| (i, l))).map(|(i, image_latents)| {
            let mask = i.mask.clone().expand(image_latents.dims());
            (mask.clone().neg().add_scalar(1.0), mask, image_latents, &i.noise)
        });
        let timesteps = scheduler.timesteps().to_vec();
        let total = timesteps.len() - begin;
        // whether each step's UNet output and latents are finite: small device tensors, read once
        // after the loop (no sync per step) to name the first step that broke
        let mut finite = Vec::with_capacity(2 * total);
        for i in begin..timesteps.len() {
            let t = timesteps[i];
            let model_input = scheduler.scale_model_input(double(&latents), i);
            let model_input = match &extra_channels {
                Some((mask, masked)) => Tensor::cat(vec![model_input, mask.clone(), masked.clone()], 1),
                None => model_input,
            };
            let noise_pred = crate::in_worker(&self.device, || {
                self.unet.forward(model_input, &[t], cond.prompt_embeds.clone(), cond.text_time.as_ref())
            })?;
            let noise_pred = if do_cfg {
                let uncond = noise_pred.clone().narrow(0, 0, n);
                let text = noise_pred.narrow(0, n, n);
                // noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)
                let guided = uncond.clone() + (text.clone() - uncond).mul_scalar(o.guidance_scale);
                if o.guidance_rescale > 0.0 { rescale_noise_cfg(guided, text, o.guidance_rescale) } else { guided }
            } else {
                noise_pred
            };
            finite.push(noise_pred.clone().is_finite().all());
            latents = scheduler.step(noise_pred, i, latents, generator);
            if let Some((keep, mask, image_latents, noise)) = &blend {
                // the known region follows the init image, noised to the next timestep
                let proper = if i + 1 < timesteps.len() {
                    scheduler.add_noise((*image_latents).clone(), (*noise).clone(), i + 1)
                } else {
                    (*image_latents).clone()
                };
                latents = keep.clone() * proper + mask.clone() * latents;
            }
            finite.push(latents.clone().is_finite().all());
            if !callback(StepInfo { step: i - begin, total, timestep: t }, &latents) {
                return Err(PipelineError::Cancelled(i - begin));
            }
        }
        if !finite.is_empty() {
            let flags: Vec<bool> = Tensor::cat(finite, 0).into_data().try_to_vec::<bool>().unwrap_or_default();
            if let Some(k) = flags.iter().position(|ok| !ok) {
                let step = k / 2;
                let component = if k % 2 == 0 { "the UNet" } else { "the scheduler's step" };
                return Err(PipelineError::NonFinite {
                    component,
                    detail: format!(" at denoising step {} of {total} (timestep {})", step + 1, timesteps[begin + step]),
                });
            }
        }
        Ok(latents)
    }

    /// `decode_latents` + `image_processor.postprocess(output_type="pil")`: VAE decode of
    /// `latents / scaling_factor` (or `latents × latents_std / scaling_factor + latents_mean` when
    /// the VAE config has both), then `(x / 2 + 0.5).clamp(0, 1)`, `(x * 255).round()` to u8.
    pub fn decode_latents(&self, latents: Tensor<4>) -> Result<Vec<RgbImage>, PipelineError> {
        let sf = self.vae.scaling_factor();
        let z = match self.latents_mean_std(latents.dims()) {
            Some((mean, std)) => (latents * std).div_scalar(sf) + mean,
            None => latents.div_scalar(sf),
        };
        let (image, _) = self.decode_checked(z)?;
        // after the f16 → f32 fallback: what is still not finite is the VAE's (or the latents')
        if !image.clone().is_finite().all().into_scalar::<bool>() {
            return Err(PipelineError::NonFinite { component: "the VAE decoder", detail: String::new() });
        }
        to_rgb_images(image)
    }

    /// VAE decode that never returns a black image: a VAE running in f16 whose output holds NaN
    /// or ±inf (SD's VAE overflows f16 at large activations, hence diffusers' `force_upcast`) is
    /// decoded again with an f32 copy of its weights. Returns the image and whether it fell back.
    ///
    /// # Shapes
    /// - z: `[n, latent_channels, h, w]` (already divided by the scaling factor); returns
    ///   `[n, 3, h × f, w × f]`
    pub fn decode_checked(&self, z: Tensor<4>) -> Result<(Tensor<4>, bool), PipelineError> {
        crate::in_worker(&self.device, || self.decode_checked_here(z))
    }

    fn decode_checked_here(&self, z: Tensor<4>) -> Result<(Tensor<4>, bool), PipelineError> {
        if self.vae.dtype() == DType::F32 {
            return Ok((self.vae.decode(z)?, false));
        }
        let image = self.vae.decode(z.clone())?;
        let finite = image.clone().cast(DType::F32).is_finite().all().into_scalar::<bool>();
        if finite {
            return Ok((image, false));
        }
        log::warn!("the VAE's {:?} decode produced NaN or inf; decoding again in f32", self.vae.dtype());
        let vae32 = kiln_nn::cast_module(self.vae.clone(), DType::F32);
        Ok((vae32.decode(z.cast(DType::F32))?, true))
    }

    /// Runs the VAE in `dtype` from now on (the pipeline loads it in f32). With f16, a decode
    /// that overflows falls back to f32 ([`decode_checked`](Self::decode_checked)).
    pub fn set_vae_dtype(&mut self, dtype: DType) {
        self.vae = kiln_nn::cast_module(self.vae.clone(), dtype);
    }

    /// `pipe(prompt, ...)` for any [`Task`]. `callback` sees each step and may cancel.
    pub fn generate(
        &self,
        o: &GenerateOptions,
        task: Task,
        callback: &mut dyn FnMut(StepInfo, &Tensor<4>) -> bool,
    ) -> Result<Vec<RgbImage>, PipelineError> {
        self.check_inputs(o, &task)?;
        let (height, width) = self.output_size(o, &task);
        let mut scheduler = self.build_scheduler(o)?;
        let begin = match task {
            Task::Txt2Img => 0,
            _ => img2img_begin_index(o.num_inference_steps, task.strength(), scheduler.order())?,
        };
        let do_cfg = o.guidance_scale > 1.0;
        let cond = self.encode_prompt(o, do_cfg, height, width)?;
        let pooled_ok = cond.text_time.as_ref().is_none_or(|t| t.text_embeds.clone().is_finite().all().into_scalar::<bool>());
        if !(pooled_ok && cond.prompt_embeds.clone().is_finite().all().into_scalar::<bool>()) {
            return Err(PipelineError::NonFinite { component: "the text encoder", detail: String::new() });
        }
        let mut generator = TorchGenerator::new(o.seed);
        let (latents, inpaint) = self.prepare_latents(o, &task, height, width, scheduler.as_ref(), begin, &mut generator)?;
        let latents =
            self.denoise(o, &cond, latents, scheduler.as_mut(), begin, inpaint.as_ref(), &mut generator, callback)?;
        self.decode_latents(latents)
    }

    /// Text to image.
    pub fn txt2img(&self, o: &GenerateOptions, callback: &mut dyn FnMut(StepInfo, &Tensor<4>) -> bool) -> Result<Vec<RgbImage>, PipelineError> {
        self.generate(o, Task::Txt2Img, callback)
    }

    /// Image to image with `strength` in [0, 1] (diffusers' default 0.8).
    pub fn img2img(
        &self,
        o: &GenerateOptions,
        image: &RgbImage,
        strength: f64,
        callback: &mut dyn FnMut(StepInfo, &Tensor<4>) -> bool,
    ) -> Result<Vec<RgbImage>, PipelineError> {
        self.generate(o, Task::Img2Img { image, strength }, callback)
    }

    /// Inpainting: repaint where `mask` is white (diffusers' default strength 1).
    pub fn inpaint(
        &self,
        o: &GenerateOptions,
        image: &RgbImage,
        mask: &GrayImage,
        strength: f64,
        callback: &mut dyn FnMut(StepInfo, &Tensor<4>) -> bool,
    ) -> Result<Vec<RgbImage>, PipelineError> {
        self.generate(o, Task::Inpaint { image, mask, strength }, callback)
    }
}

/// Tokenizes `text` with `tokenizer` and runs `encoder`, warning (with the number of dropped
/// tokens) when the prompt exceeds the tokenizer's 77 tokens, as diffusers does.
pub(crate) fn run_clip(tokenizer: &ClipTokenizer, encoder: &ClipTextModel, text: &str, device: &Device) -> Result<ClipTextOutput, PipelineError> {
    let tokens = tokenizer.encode(text)?;
    if tokens.dropped_tokens > 0 {
        log::warn!(
            "The following part of your input was truncated because CLIP can only handle sequences up to {} tokens ({} tokens dropped): {}",
            tokenizer.max_length(),
            tokens.dropped_tokens,
            tokens.dropped_text
        );
    }
    Ok(crate::in_worker(device, || encoder.encode(&[tokens.ids], device))?)
}

/// `MemAvailable` of /proc/meminfo in bytes (Linux); `None` elsewhere.
fn available_memory() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024.0)
}

/// The hidden state of a text encoder's output that conditions the UNet (diffusers'
/// `encode_prompt`s): SD 1.x / 2.x the last one, or with `clip_skip` the one that many layers
/// earlier through the final layer norm; SDXL (`xl`) `hidden_states[-(clip_skip + 2)]`, without it.
/// `check_inputs` bounds `clip_skip` by the layer count; past it is an error.
///
/// # Shapes
/// - returns `[batch, seq, hidden]`
pub(crate) fn conditioning(encoder: &ClipTextModel, out: ClipTextOutput, xl: bool, clip_skip: Option<usize>) -> Result<Tensor<3>, PipelineError> {
    let hidden = out.hidden_states.len();
    let (back, limit) = match (xl, clip_skip) {
        (false, None) => return Ok(out.last_hidden_state),
        (false, Some(skip)) => (skip.saturating_add(1), hidden),
        (true, skip) => (skip.unwrap_or(0).saturating_add(2), hidden.saturating_sub(1)),
    };
    let at = hidden.checked_sub(back).ok_or_else(|| PipelineError::Input {
        what: "clip skip",
        value: clip_skip.unwrap_or(0).to_string(),
        allowed: format!("less than {limit} for this text encoder"),
    })?;
    let state = out.hidden_states[at].clone();
    Ok(if xl { state } else { encoder.final_layer_norm(state) })
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

