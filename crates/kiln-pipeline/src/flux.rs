//! diffusers' FLUX.1 pipelines (`pipelines/flux/`): `FluxPipeline` (text-to-image),
//! `FluxImg2ImgPipeline` and `FluxInpaintPipeline`, one loaded model.
//!
//! The conditioning: CLIP-L's pooled output and T5's sequence (`max_sequence_length`, 512 by
//! default), text ids all zero. The latents (16 channels at 1/8 of the image, sizes rounded down
//! to even) are packed into 2×2 patches, a sequence of 64-channel tokens with image ids (0, row,
//! column). FLUX.1-dev embeds the guidance scale (guidance distillation: one transformer pass);
//! `true_cfg_scale` > 1 with a negative prompt adds a pass on the negative prompt. The schedule:
//! custom sigmas `linspace(1, 1/steps, steps)` with μ from the token count
//! (`calculate_shift`), which FLUX.1-dev's config shifts dynamically and schnell's ignores.

use std::path::Path;

use burn::tensor::{DType, Device, Tensor};
use image::RgbImage;
use kiln_nn::LoadOptions;
use kiln_scheduler::{Scheduler, SchedulerConfig};
use kiln_text_encoder::{ClipTextModel, ClipTokenizer, T5EncoderModel, T5Tokenizer};
use kiln_transformer::FluxTransformer2DModel;
use kiln_vae::AutoencoderKL;

use crate::components;
use crate::error::PipelineError;
use crate::flow::{self, FlowInpaint};
use crate::model::{ModelFolder, ResolveOptions};
use crate::options::{GenerateOptions, StepInfo, Task};
use crate::rng::TorchGenerator;

/// FLUX's default T5 length (`max_sequence_length=512`).
pub const FLUX_MAX_SEQUENCE_LENGTH: usize = 512;
/// FLUX's default latent size (`default_sample_size = 128`: 1024 px at factor 8).
pub const FLUX_DEFAULT_SAMPLE_SIZE: usize = 128;

/// A loaded FLUX.1 model (`FluxPipeline.from_pretrained`).
pub struct Flux {
    pub tokenizer: ClipTokenizer,
    pub text_encoder: ClipTextModel,
    pub tokenizer_2: T5Tokenizer,
    pub text_encoder_2: T5EncoderModel,
    pub transformer: FluxTransformer2DModel,
    pub vae: AutoencoderKL,
    pub scheduler_config: SchedulerConfig,
    pub device: Device,
    /// The LoRAs merged into the weights ([`Self::load_lora`]).
    pub loras: crate::lora::LoraState,
}

/// One prompt's conditioning, repeated for the images of the run.
///
/// # Shapes
/// - prompt_embeds: `[n, max_sequence_length, d_model]`, pooled: `[n, clip_hidden]`
pub struct FluxPromptEmbeds {
    pub prompt_embeds: Tensor<3>,
    pub pooled: Tensor<2>,
}

/// `_pack_latents`: `[b, c, h, w]` → `[b, (h/2)(w/2), 4c]`, each token a 2×2 patch
/// (channel-major: c, then the patch row, then the column).
pub fn pack_latents(latents: Tensor<4>) -> Tensor<3> {
    let [b, c, h, w] = latents.dims();
    latents.reshape([b, c, h / 2, 2, w / 2, 2]).permute([0, 2, 4, 1, 3, 5]).reshape([b, (h / 2) * (w / 2), c * 4])
}

/// `_unpack_latents`: the inverse of [`pack_latents`] for latents of `h × w`.
pub fn unpack_latents(latents: Tensor<3>, h: usize, w: usize) -> Tensor<4> {
    let [b, _, channels] = latents.dims();
    latents.reshape([b, h / 2, w / 2, channels / 4, 2, 2]).permute([0, 3, 1, 4, 2, 5]).reshape([b, channels / 4, h, w])
}

/// `_prepare_latent_image_ids(h/2, w/2)`: (0, row, column) of each packed token, row-major.
pub fn latent_image_ids(rows: usize, cols: usize) -> Vec<[f32; 3]> {
    (0..rows).flat_map(|r| (0..cols).map(move |c| [0.0, r as f32, c as f32])).collect()
}

impl Flux {
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
        Ok(Self {
            tokenizer: ClipTokenizer::from_dir(dir("tokenizer")?)?,
            text_encoder: ClipTextModel::load(&dir("text_encoder")?, &options("text_encoder"))?,
            tokenizer_2: T5Tokenizer::from_dir(dir("tokenizer_2")?)?,
            text_encoder_2: T5EncoderModel::load(&dir("text_encoder_2")?, &options("text_encoder_2"))?,
            transformer: FluxTransformer2DModel::load(&dir("transformer")?, &options("transformer").with_dtype(dtype))?,
            vae: AutoencoderKL::load(&dir("vae")?, &options("vae"))?,
            scheduler_config: SchedulerConfig::from_file(dir("scheduler")?.join("scheduler_config.json"))?,
            device: device.clone(),
            loras: Default::default(),
        })
    }

    /// `vae_scale_factor`: 2^(VAE levels − 1), 8 for FLUX.
    pub fn vae_scale_factor(&self) -> usize {
        self.vae.downsample_factor()
    }

    /// diffusers' default size, 128 × the VAE factor (1024).
    pub fn default_size(&self) -> (usize, usize) {
        let s = FLUX_DEFAULT_SAMPLE_SIZE * self.vae_scale_factor();
        (s, s)
    }

    /// The requested size `(height, width)`: the options', else the init image's, else the default.
    pub fn requested_size(&self, o: &GenerateOptions, task: &Task) -> (usize, usize) {
        let (dh, dw) = match task.image() {
            Some(img) => (img.height() as usize, img.width() as usize),
            None => self.default_size(),
        };
        (o.height.unwrap_or(dh), o.width.unwrap_or(dw))
    }

    /// The latent size `(h, w)` diffusers uses: `2 · (size // (f · 2))`, so the image comes out at
    /// the size rounded down to a multiple of 2f (a warning says so, as in diffusers).
    pub fn latent_size(&self, height: usize, width: usize) -> (usize, usize) {
        let m = 2 * self.vae_scale_factor();
        (2 * (height / m), 2 * (width / m))
    }

    /// `check_inputs` and the checks both flow pipelines make; sizes not a multiple of 2f are
    /// rounded down (txt2img) or refused (img2img and inpainting, whose init image kiln does not
    /// resize).
    pub fn check_inputs(&self, o: &GenerateOptions, task: &Task) -> Result<(), PipelineError> {
        let (height, width) = self.requested_size(o, task);
        let m = 2 * self.vae_scale_factor();
        for (what, v) in [("width", width), ("height", height)] {
            if v < m || v > 1 << 16 {
                return Err(PipelineError::Input { what, value: v.to_string(), allowed: format!("{m} to 65536 (FLUX packs 2×2 latents of 1/{} the image)", self.vae_scale_factor()) });
            }
            if v % m != 0 && !matches!(task, Task::Txt2Img) {
                return Err(PipelineError::Input { what, value: v.to_string(), allowed: format!("a multiple of {m} for img2img and inpainting (kiln does not resize the init image)") });
            }
        }
        let (packed, latent_channels) = (self.transformer.x_embedder.weight.dims()[1], self.vae.config.latent_channels);
        if packed != 4 * latent_channels {
            return Err(PipelineError::Unsupported(format!(
                "a FLUX transformer with {packed} input channels over a VAE with {latent_channels} latent channels (kiln runs transformers that take the packed latents alone, {}; FLUX Fill and Control models are not supported yet)",
                4 * latent_channels
            )));
        }
        if o.clip_skip.is_some() {
            return Err(PipelineError::Unsupported("clip_skip: FLUX conditions on CLIP's pooled output, which clip_skip does not change (diffusers' FluxPipeline has no clip_skip)".into()));
        }
        if o.num_inference_steps > kiln_scheduler::MAX_FLOW_STEPS {
            return Err(PipelineError::Input { what: "steps", value: o.num_inference_steps.to_string(), allowed: format!("at most {}", kiln_scheduler::MAX_FLOW_STEPS) });
        }
        flow::check_common(o, task, width, height)
    }

    /// `encode_prompt`: CLIP's pooled output on `prompt`, T5's sequence on `prompt_2` (or `prompt`).
    pub fn encode_prompt(&self, prompt: &str, prompt_2: &str, o: &GenerateOptions) -> Result<FluxPromptEmbeds, PipelineError> {
        let n = o.num_images_per_prompt;
        let max_length = o.flow.max_sequence_length.unwrap_or(FLUX_MAX_SEQUENCE_LENGTH);
        let pooled = flow::clip(&self.tokenizer, &self.text_encoder, prompt, &self.device)?.pooler_output;
        let embeds = flow::t5(&self.tokenizer_2, &self.text_encoder_2, prompt_2, max_length, &self.device)?;
        Ok(FluxPromptEmbeds { prompt_embeds: embeds.repeat_dim(0, n), pooled: pooled.repeat_dim(0, n) })
    }

    /// The scheduler of a run: FLUX's sigmas `linspace(1, 1/steps, steps)` (unless the config sets
    /// `use_flow_sigmas`) and μ for `image_seq_len` packed tokens.
    pub fn build_scheduler(&self, o: &GenerateOptions, image_seq_len: usize) -> Result<Box<dyn Scheduler>, PipelineError> {
        let steps = o.num_inference_steps;
        let flow_sigmas = self.scheduler_config.values.get("use_flow_sigmas").and_then(serde_json::Value::as_bool).unwrap_or(false);
        let sigmas = (!flow_sigmas).then(|| kiln_scheduler::float::np_linspace(1.0, 1.0 / steps as f64, steps));
        let mu = flow::calculate_shift(image_seq_len, &self.scheduler_config, 1.15);
        flow::build_scheduler(o, &self.scheduler_config, Some(mu), sigmas)
    }

    /// `pipe(prompt, ...)` for txt2img, img2img or inpainting (`FluxInpaintPipeline`: the known
    /// region blended back after each step, on the unpacked latents). `callback` sees each step
    /// and may cancel.
    pub fn generate(&self, o: &GenerateOptions, task: Task, callback: &mut dyn FnMut(StepInfo, &Tensor<4>) -> bool) -> Result<Vec<RgbImage>, PipelineError> {
        self.check_inputs(o, &task)?;
        let (height, width) = self.requested_size(o, &task);
        let (lh, lw) = self.latent_size(height, width);
        let f = self.vae_scale_factor();
        if (lh * f, lw * f) != (height, width) {
            log::warn!("height and width have to be divisible by {} but are {height} and {width}; the image is {}x{}", 2 * f, lw * f, lh * f);
        }
        let n = o.num_images_per_prompt;
        let prompt = o.prompt.as_str();
        let cond = self.encode_prompt(prompt, flow::or(&o.prompt_2, prompt), o)?;
        let true_cfg = o.flow.true_cfg_scale > 1.0 && o.negative_prompt.is_some();
        let negative = match (&o.negative_prompt, true_cfg) {
            (Some(neg), true) => Some(self.encode_prompt(neg, flow::or(&o.negative_prompt_2, neg), o)?),
            _ => None,
        };
        let c = self.transformer.x_embedder.weight.dims()[1] / 4;
        let img_ids = latent_image_ids(lh / 2, lw / 2);
        let seq = img_ids.len();
        let mut scheduler = self.build_scheduler(o, seq)?;
        let begin = flow::begin_index(o, &task, scheduler.as_ref())?;
        let mut generator = TorchGenerator::new(o.seed);
        let mut inpaint = None;
        let mut latents = match task {
            Task::Img2Img { image, .. } => {
                let init = flow::encode_image(&self.vae, image, &mut generator, &self.device)?.repeat_dim(0, n);
                let noise = flow::randn(&mut generator, [n, c, lh, lw], &self.device);
                pack_latents(scheduler.add_noise(init, noise, begin))
            }
            Task::Inpaint { image, mask, strength } => {
                let (latents, blend) = FlowInpaint::prepare(&self.vae, image, mask, strength, n, scheduler.as_ref(), begin, &mut generator, &self.device)?;
                inpaint = Some(blend);
                pack_latents(latents)
            }
            Task::Txt2Img => pack_latents(flow::randn(&mut generator, [n, c, lh, lw], &self.device)),
        };
        let txt_ids = vec![[0.0f32; 3]; cond.prompt_embeds.dims()[1]];
        let guidance = self.transformer.has_guidance_embeds().then(|| vec![f64::from(o.guidance_scale as f32); n]);
        let timesteps = scheduler.timesteps().to_vec();
        let total = timesteps.len() - begin;
        for (k, i) in (begin..timesteps.len()).enumerate() {
            let t = timesteps[i];
            // `timestep = t.expand(b).to(latents.dtype) / 1000`
            let sigma = vec![f64::from(t as f32 / 1000.0); n];
            let run = |c: &FluxPromptEmbeds| {
                crate::in_worker(&self.device, || {
                    self.transformer.forward(latents.clone(), c.prompt_embeds.clone(), c.pooled.clone(), &sigma, &img_ids, &txt_ids, guidance.as_deref())
                })
                .map(|t| t.cast(DType::F32))
            };
            let mut pred = run(&cond)?;
            if let Some(neg) = &negative {
                let neg_pred = run(neg)?;
                pred = neg_pred.clone() + (pred - neg_pred).mul_scalar(o.flow.true_cfg_scale);
            }
            // the scheduler steps 4-D samples: the packed latents as [n, seq, channels, 1]
            let [b, s, ch] = latents.dims();
            let stepped = scheduler.step(pred.reshape([b, s, ch, 1]), i, latents.clone().reshape([b, s, ch, 1]), &mut generator);
            latents = stepped.reshape([b, s, ch]);
            if let Some(blend) = &inpaint {
                latents = pack_latents(blend.blend(unpack_latents(latents, lh, lw), scheduler.as_ref(), i, timesteps.len()));
            }
            let view = unpack_latents(latents.clone(), lh, lw);
            if !callback(StepInfo { step: k, total, timestep: t }, &view) {
                return Err(PipelineError::Cancelled(k));
            }
        }
        if !latents.clone().is_finite().all().into_scalar::<bool>() {
            return Err(PipelineError::NonFinite { component: "the transformer or the scheduler's step", detail: String::new() });
        }
        flow::decode(&self.vae, unpack_latents(latents, lh, lw), &self.device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    /// `_pack_latents` / `_unpack_latents` on a 1×2×4×6 ramp: token 0 holds channel 0's top-left
    /// 2×2 patch then channel 1's; unpacking gives the latents back.
    #[test]
    fn pack_and_unpack_follow_diffusers() {
        let device = Device::flex();
        let values: Vec<f32> = (0..48).map(|v| v as f32).collect();
        let latents = Tensor::<4>::from_data(TensorData::new(values.clone(), [1, 2, 4, 6]), &device);
        let packed = pack_latents(latents);
        assert_eq!(packed.dims(), [1, 6, 8]);
        let got: Vec<f32> = packed.clone().into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(&got[0..8], &[0.0, 1.0, 6.0, 7.0, 24.0, 25.0, 30.0, 31.0]);
        let back: Vec<f32> = unpack_latents(packed, 4, 6).into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(back, values);
        assert_eq!(latent_image_ids(2, 3)[4], [0.0, 1.0, 1.0]);
    }
}
