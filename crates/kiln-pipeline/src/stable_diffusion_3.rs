//! diffusers' SD 3 pipelines (`pipelines/stable_diffusion_3/`): `StableDiffusion3Pipeline`
//! (text-to-image), `StableDiffusion3Img2ImgPipeline` and `StableDiffusion3InpaintPipeline` (for
//! 16-channel transformers: the known region blended back after each step), one loaded model.
//! Inpainting decodes `latents / scaling_factor + shift_factor` as the other SD 3 pipelines do;
//! diffusers 0.42.1's inpaint pipeline leaves out the `+ shift_factor` (huggingface/diffusers
//! issue 13611, PR 14671), which scripts/fixtures/flow_pipelines.py corrects in its reference.
//!
//! The conditioning (`encode_prompt`): each CLIP encoder's `hidden_states[-(clip_skip + 2)]`
//! concatenated on the feature axis and zero-padded to T5's width, then T5's sequence after it
//! (`[77 + max_sequence_length, 4096]` for SD 3.5); the pooled embedding is both CLIP encoders'
//! projections side by side. Without `text_encoder_3` (model_index.json `[null, null]`) T5's part
//! is zeros. Classifier-free guidance batches the negative conditioning first; SD 3.5's
//! skip-layer guidance adds a pass with some blocks skipped. Flow matching: the transformer
//! predicts a velocity, FlowMatchEuler (or Heun) steps σ from 1 to 0; latents are
//! `(z − shift_factor) · scaling_factor`.

use std::path::Path;

use burn::tensor::{DType, Device, Tensor};
use image::RgbImage;
use kiln_nn::LoadOptions;
use kiln_scheduler::{Scheduler, SchedulerConfig};
use kiln_text_encoder::{ClipTextModel, ClipTokenizer, T5EncoderModel, T5Tokenizer};
use kiln_transformer::Sd3Transformer2DModel;
use kiln_vae::AutoencoderKL;

use crate::components;
use crate::error::PipelineError;
use crate::flow::{self, FlowInpaint};
use crate::model::{ModelFolder, ResolveOptions};
use crate::options::{GenerateOptions, StepInfo, Task};
use crate::rng::TorchGenerator;

/// SD 3's default T5 length (`max_sequence_length=256`).
pub const SD3_MAX_SEQUENCE_LENGTH: usize = 256;

/// A loaded SD 3 / 3.5 model (`StableDiffusion3Pipeline.from_pretrained`).
pub struct StableDiffusion3 {
    pub tokenizer: ClipTokenizer,
    pub text_encoder: ClipTextModel,
    pub tokenizer_2: ClipTokenizer,
    pub text_encoder_2: ClipTextModel,
    /// `tokenizer_3` and `text_encoder_3` (T5); `None` when the folder leaves them out.
    pub t5: Option<(T5Tokenizer, T5EncoderModel)>,
    pub transformer: Sd3Transformer2DModel,
    pub vae: AutoencoderKL,
    pub scheduler_config: SchedulerConfig,
    pub device: Device,
    /// The LoRAs merged into the weights ([`Self::load_lora`]).
    pub loras: crate::lora::LoraState,
}

/// The conditioning of one run, CFG halves concatenated (negative first).
///
/// # Shapes
/// - prompt_embeds: `[b, 77 + max_sequence_length, joint_attention_dim]`, pooled: `[b, pooled_dim]`;
///   b = 2n with guidance, n without
pub struct Sd3PromptEmbeds {
    pub prompt_embeds: Tensor<3>,
    pub pooled: Tensor<2>,
    /// The positive half alone, for skip-layer guidance's pass.
    pub positive: Option<(Tensor<3>, Tensor<2>)>,
}

impl StableDiffusion3 {
    /// Loads a diffusers folder on `options.device`: the transformer in `options.dtype`, the
    /// text encoders and the VAE in f32.
    pub fn load(dir: &Path, options: &LoadOptions) -> Result<Self, PipelineError> {
        let resolve = ResolveOptions { prefer_fp16: options.variant.as_deref() == Some("fp16"), vae: None };
        Self::load_folder(&ModelFolder::open(dir, &resolve)?, &options.device, options.dtype)
    }

    /// Loads a resolved model folder.
    pub fn load_folder(folder: &ModelFolder, device: &Device, dtype: DType) -> Result<Self, PipelineError> {
        let dir = |name: &str| components::dir(folder, name);
        let options = |name: &str| components::options(folder, name, device);
        let t5 = match (folder.component("tokenizer_3"), folder.component("text_encoder_3")) {
            (Some(tok), Some(te)) => Some((T5Tokenizer::from_dir(&tok.dir)?, T5EncoderModel::load(&te.dir, &options("text_encoder_3"))?)),
            _ => None,
        };
        Ok(Self {
            tokenizer: ClipTokenizer::from_dir(dir("tokenizer")?)?,
            text_encoder: ClipTextModel::load(&dir("text_encoder")?, &options("text_encoder"))?,
            tokenizer_2: ClipTokenizer::from_dir(dir("tokenizer_2")?)?,
            text_encoder_2: ClipTextModel::load(&dir("text_encoder_2")?, &options("text_encoder_2"))?,
            t5,
            transformer: Sd3Transformer2DModel::load(&dir("transformer")?, &options("transformer").with_dtype(dtype))?,
            vae: AutoencoderKL::load(&dir("vae")?, &options("vae"))?,
            scheduler_config: SchedulerConfig::from_file(dir("scheduler")?.join("scheduler_config.json"))?,
            device: device.clone(),
            loras: Default::default(),
        })
    }

    /// `vae_scale_factor`: 2^(VAE levels − 1), 8 for SD 3.
    pub fn vae_scale_factor(&self) -> usize {
        self.vae.downsample_factor()
    }

    /// The transformer's `patch_size`.
    pub fn patch_size(&self) -> usize {
        self.transformer.pos_embed.patch_size
    }

    /// diffusers' default size: the transformer's `sample_size` × the VAE factor (1024 for SD 3).
    pub fn default_size(&self) -> (usize, usize) {
        let s = self.transformer.sample_size.saturating_mul(self.vae_scale_factor());
        (s, s)
    }

    /// The output size `(height, width)`: the options', else the init image's, else the default.
    pub fn output_size(&self, o: &GenerateOptions, task: &Task) -> (usize, usize) {
        let (dh, dw) = match task.image() {
            Some(img) => (img.height() as usize, img.width() as usize),
            None => self.default_size(),
        };
        (o.height.unwrap_or(dh), o.width.unwrap_or(dw))
    }

    /// `check_inputs`: sizes a positive multiple of the VAE factor × the patch size and within the
    /// position table, clip_skip within the CLIP encoders' layers, and the checks both flow
    /// pipelines make.
    pub fn check_inputs(&self, o: &GenerateOptions, task: &Task) -> Result<(), PipelineError> {
        let (height, width) = self.output_size(o, task);
        let m = self.vae_scale_factor() * self.patch_size();
        let max = self.transformer.pos_embed.pos_embed_max_size * m;
        for (what, v) in [("width", width), ("height", height)] {
            if v == 0 || v % m != 0 || v > max {
                return Err(PipelineError::Input { what, value: v.to_string(), allowed: format!("a positive multiple of {m} up to {max} (the position table's size)") });
            }
        }
        if let Some(skip) = o.clip_skip {
            let layers = self.text_encoder.num_layers().min(self.text_encoder_2.num_layers());
            if skip + 2 > layers + 1 {
                return Err(PipelineError::Input { what: "clip_skip", value: skip.to_string(), allowed: format!("at most {} for this model's text encoders ({layers} layers)", layers.saturating_sub(1)) });
            }
        }
        let latent_channels = self.vae.config.latent_channels;
        if self.transformer.in_channels != latent_channels {
            return Err(PipelineError::Unsupported(format!(
                "an SD 3 transformer with {} input channels over a VAE with {latent_channels} latent channels (kiln runs transformers that take the latents alone; SD 3's 33-channel inpainting transformers are not supported yet)",
                self.transformer.in_channels
            )));
        }
        if let Some(slg) = &o.flow.skip_layer_guidance {
            if !matches!(task, Task::Txt2Img) {
                return Err(PipelineError::Unsupported("skip-layer guidance is a text-to-image option (diffusers' SD 3 img2img and inpaint pipelines have none)".into()));
            }
            let n = self.transformer.transformer_blocks.len();
            if let Some(l) = slg.layers.iter().find(|&&l| l >= n) {
                return Err(PipelineError::Input { what: "skip-layer guidance layer", value: l.to_string(), allowed: format!("below {n} (the transformer's blocks)") });
            }
            if !(slg.scale.is_finite() && slg.start.is_finite() && slg.stop.is_finite()) {
                return Err(PipelineError::Input { what: "skip-layer guidance", value: format!("{slg:?}"), allowed: "finite scale, start and stop".into() });
            }
        }
        flow::check_common(o, task, width, height)
    }

    /// `_get_clip_prompt_embeds` for one encoder: `hidden_states[-(clip_skip + 2)]` and the
    /// projected pooled output.
    fn clip_embeds(&self, second: bool, text: &str, clip_skip: Option<usize>) -> Result<(Tensor<3>, Tensor<2>), PipelineError> {
        let (tok, te) = if second { (&self.tokenizer_2, &self.text_encoder_2) } else { (&self.tokenizer, &self.text_encoder) };
        let out = flow::clip(tok, te, text, &self.device)?;
        let pooled = out.text_embeds.clone().ok_or_else(|| {
            PipelineError::Unsupported("SD 3's CLIP text encoders must be CLIPTextModelWithProjection (no text_projection found)".into())
        })?;
        Ok((crate::stable_diffusion::conditioning(te, out, true, clip_skip)?, pooled))
    }

    /// `encode_prompt` for one prompt triple: CLIP-L and CLIP-G side by side, padded (or, where
    /// T5 is narrower, cut) to T5's width, then T5's sequence; pooled CLIP-L ‖ CLIP-G.
    ///
    /// # Shapes
    /// - returns `[1, 77 + max_sequence_length, t5_width]`, `[1, pooled_dim]`
    fn encode_one(&self, texts: [&str; 3], clip_skip: Option<usize>, max_length: usize) -> Result<(Tensor<3>, Tensor<2>), PipelineError> {
        let (l, pooled_l) = self.clip_embeds(false, texts[0], clip_skip)?;
        let (g, pooled_g) = self.clip_embeds(true, texts[1], clip_skip)?;
        let t5 = match &self.t5 {
            Some((tok, te)) => flow::t5(tok, te, texts[2], max_length, &self.device)?,
            // `torch.zeros(batch, max_sequence_length, joint_attention_dim)`
            None => Tensor::zeros([1, max_length, self.transformer.context_embedder.weight.dims()[1]], &self.device),
        };
        let clip = Tensor::cat(vec![l, g], 2);
        let [_, seq, width] = clip.dims();
        let t5_width = t5.dims()[2];
        // F.pad(clip, (0, t5_width − width)): zeros on the right, or a cut where negative
        let clip = if t5_width >= width {
            Tensor::cat(vec![clip, Tensor::zeros([1, seq, t5_width - width], &self.device)], 2)
        } else {
            clip.narrow(2, 0, t5_width)
        };
        Ok((Tensor::cat(vec![clip, t5], 1), Tensor::cat(vec![pooled_l, pooled_g], 1)))
    }

    /// `encode_prompt`: the conditioning, negative first under classifier-free guidance, each
    /// repeated for `num_images_per_prompt`.
    pub fn encode_prompt(&self, o: &GenerateOptions, do_cfg: bool) -> Result<Sd3PromptEmbeds, PipelineError> {
        let n = o.num_images_per_prompt;
        let max_length = o.flow.max_sequence_length.unwrap_or(SD3_MAX_SEQUENCE_LENGTH);
        let prompt = o.prompt.as_str();
        let texts = [prompt, flow::or(&o.prompt_2, prompt), flow::or(&o.flow.prompt_3, prompt)];
        let (embeds, pooled) = self.encode_one(texts, o.clip_skip, max_length)?;
        let (embeds, pooled) = (embeds.repeat_dim(0, n), pooled.repeat_dim(0, n));
        if !do_cfg {
            return Ok(Sd3PromptEmbeds { prompt_embeds: embeds, pooled, positive: None });
        }
        // `negative_prompt or ""`, the others `or negative_prompt`; no clip_skip
        let negative = o.negative_prompt.as_deref().unwrap_or("");
        let texts = [negative, flow::or(&o.negative_prompt_2, negative), flow::or(&o.flow.negative_prompt_3, negative)];
        let (neg, neg_pooled) = self.encode_one(texts, None, max_length)?;
        Ok(Sd3PromptEmbeds {
            prompt_embeds: Tensor::cat(vec![neg.repeat_dim(0, n), embeds.clone()], 0),
            pooled: Tensor::cat(vec![neg_pooled.repeat_dim(0, n), pooled.clone()], 0),
            positive: Some((embeds, pooled)),
        })
    }

    /// The scheduler of a run, with μ from the latent size where the config shifts dynamically.
    pub fn build_scheduler(&self, o: &GenerateOptions, height: usize, width: usize) -> Result<Box<dyn Scheduler>, PipelineError> {
        let mu = flow::uses_dynamic_shifting(&self.scheduler_config).then(|| {
            let (f, p) = (self.vae_scale_factor(), self.patch_size());
            flow::calculate_shift((height / f / p) * (width / f / p), &self.scheduler_config, 1.16)
        });
        flow::build_scheduler(o, &self.scheduler_config, mu, None)
    }

    /// `prepare_latents`: txt2img draws `randn([n, 16, h/8, w/8])`; img2img encodes the init
    /// image (one posterior sample), repeats it n times, draws the noise and `scale_noise`s it to
    /// the first timestep; inpainting as [`FlowInpaint::prepare`].
    #[allow(clippy::too_many_arguments)]
    fn prepare_latents(&self, o: &GenerateOptions, task: &Task, height: usize, width: usize, scheduler: &dyn Scheduler, begin: usize, generator: &mut TorchGenerator) -> Result<(Tensor<4>, Option<FlowInpaint>), PipelineError> {
        let f = self.vae_scale_factor();
        let n = o.num_images_per_prompt;
        let c = self.transformer.in_channels;
        match task {
            Task::Img2Img { image, .. } => {
                let init = flow::encode_image(&self.vae, image, generator, &self.device)?.repeat_dim(0, n);
                let noise = flow::randn(generator, init.dims(), &self.device);
                Ok((scheduler.add_noise(init, noise, begin), None))
            }
            Task::Inpaint { image, mask, strength } => {
                let (latents, inpaint) = FlowInpaint::prepare(&self.vae, image, mask, *strength, n, scheduler, begin, generator, &self.device)?;
                Ok((latents, Some(inpaint)))
            }
            Task::Txt2Img => Ok((flow::randn(generator, [n, c, height / f, width / f], &self.device), None)),
        }
    }

    /// The denoising loop: CFG in one batched transformer call, skip-layer guidance's extra pass
    /// where it applies, scheduler steps, inpainting's blend after each.
    #[allow(clippy::too_many_arguments)]
    fn denoise(
        &self,
        o: &GenerateOptions,
        cond: &Sd3PromptEmbeds,
        mut latents: Tensor<4>,
        scheduler: &mut dyn Scheduler,
        begin: usize,
        inpaint: Option<&FlowInpaint>,
        generator: &mut TorchGenerator,
        callback: &mut dyn FnMut(StepInfo, &Tensor<4>) -> bool,
    ) -> Result<Tensor<4>, PipelineError> {
        let do_cfg = cond.positive.is_some();
        let n = o.num_images_per_prompt;
        let timesteps = scheduler.timesteps().to_vec();
        let total = timesteps.len() - begin;
        // img2img: diffusers' `num_inference_steps` is the steps left
        let steps = o.num_inference_steps - begin / scheduler.order();
        for (k, i) in (begin..timesteps.len()).enumerate() {
            let t = timesteps[i];
            let input = if do_cfg { Tensor::cat(vec![latents.clone(), latents.clone()], 0) } else { latents.clone() };
            let b = input.dims()[0];
            let pred = crate::in_worker(&self.device, || self.transformer.forward(input, cond.prompt_embeds.clone(), cond.pooled.clone(), &vec![t; b], &[]))?;
            let pred = pred.cast(DType::F32);
            let pred = match &cond.positive {
                Some((embeds, pooled)) => {
                    let uncond = pred.clone().narrow(0, 0, n);
                    let text = pred.narrow(0, n, n);
                    let mut guided = uncond.clone() + (text.clone() - uncond).mul_scalar(o.guidance_scale);
                    if let Some(slg) = &o.flow.skip_layer_guidance {
                        let (k, steps) = (k as f64, steps as f64);
                        if k > steps * slg.start && k < steps * slg.stop {
                            let skipped = crate::in_worker(&self.device, || {
                                self.transformer.forward(latents.clone(), embeds.clone(), pooled.clone(), &vec![t; n], &slg.layers)
                            })?;
                            guided = guided + (text - skipped.cast(DType::F32)).mul_scalar(slg.scale);
                        }
                    }
                    guided
                }
                None => pred,
            };
            latents = scheduler.step(pred, i, latents, generator);
            if let Some(inpaint) = inpaint {
                latents = inpaint.blend(latents, scheduler, i, timesteps.len());
            }
            if !callback(StepInfo { step: k, total, timestep: t }, &latents) {
                return Err(PipelineError::Cancelled(k));
            }
        }
        if !latents.clone().is_finite().all().into_scalar::<bool>() {
            return Err(PipelineError::NonFinite { component: "the transformer or the scheduler's step", detail: String::new() });
        }
        Ok(latents)
    }

    /// `pipe(prompt, ...)` for txt2img, img2img or inpainting. `callback` sees each step and may
    /// cancel.
    pub fn generate(&self, o: &GenerateOptions, task: Task, callback: &mut dyn FnMut(StepInfo, &Tensor<4>) -> bool) -> Result<Vec<RgbImage>, PipelineError> {
        self.check_inputs(o, &task)?;
        let (height, width) = self.output_size(o, &task);
        let do_cfg = o.guidance_scale > 1.0;
        let cond = self.encode_prompt(o, do_cfg)?;
        if !cond.prompt_embeds.clone().is_finite().all().into_scalar::<bool>() {
            return Err(PipelineError::NonFinite { component: "the text encoders", detail: String::new() });
        }
        let mut generator = TorchGenerator::new(o.seed);
        let mut scheduler = self.build_scheduler(o, height, width)?;
        let begin = flow::begin_index(o, &task, scheduler.as_ref())?;
        let (latents, inpaint) = self.prepare_latents(o, &task, height, width, scheduler.as_ref(), begin, &mut generator)?;
        let latents = self.denoise(o, &cond, latents, scheduler.as_mut(), begin, inpaint.as_ref(), &mut generator, callback)?;
        flow::decode(&self.vae, latents, &self.device)
    }
}
