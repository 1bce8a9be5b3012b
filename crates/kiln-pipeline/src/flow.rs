//! What the flow-matching pipelines (SD 3, FLUX) share: the resolution-dependent shift μ
//! (`calculate_shift`), the input checks common to both, the 16-channel VAE's latent scaling with
//! `shift_factor` in and out, the CLIP and T5 text encoders as both pipelines call them, the
//! flow scheduler built from a run's options, and inpainting's blend of the known region.

use burn::tensor::{Device, Tensor, TensorData};
use image::RgbImage;
use kiln_scheduler::{flow_img2img_begin_index, SamplerChoice, Scheduler, SchedulerConfig, StepOptions};
use kiln_text_encoder::{ClipTextModel, ClipTextOutput, ClipTokenizer, T5EncoderModel, T5Tokenizer};
use kiln_vae::AutoencoderKL;

use crate::error::PipelineError;
use crate::image_processor::{image_to_tensor, interpolate_nearest, to_rgb_images};
use crate::options::{GenerateOptions, Task};
use crate::rng::TorchGenerator;

/// The longest T5 sequence the SD 3 and FLUX pipelines accept (`max_sequence_length`).
pub const MAX_SEQUENCE_LENGTH: usize = 512;

/// `calculate_shift(image_seq_len, base_seq_len, max_seq_len, base_shift, max_shift)`
/// (`pipeline_flux.py`): μ linear in the image's token count, read from the scheduler config
/// with the pipeline's defaults (FLUX 1.15, SD 3 1.16 for `max_shift`).
pub fn calculate_shift(image_seq_len: usize, config: &SchedulerConfig, default_max_shift: f64) -> f64 {
    let get = |key: &str, default: f64| config.values.get(key).and_then(serde_json::Value::as_f64).unwrap_or(default);
    let base_seq_len = get("base_image_seq_len", 256.0);
    let max_seq_len = get("max_image_seq_len", 4096.0);
    let base_shift = get("base_shift", 0.5);
    let max_shift = get("max_shift", default_max_shift);
    let m = (max_shift - base_shift) / (max_seq_len - base_seq_len);
    let b = base_shift - m * base_seq_len;
    image_seq_len as f64 * m + b
}

/// Whether the scheduler config asks for dynamic shifting (`use_dynamic_shifting`).
pub fn uses_dynamic_shifting(config: &SchedulerConfig) -> bool {
    config.values.get("use_dynamic_shifting").and_then(serde_json::Value::as_bool).unwrap_or(false)
}

/// The checks both pipelines make on a run's numbers: at least one step and one image, a finite
/// guidance ≥ 0, a T5 length in 1..=512, img2img's strength leaving a step, and an init image of
/// the output size (kiln does not resize).
pub(crate) fn check_common(o: &GenerateOptions, task: &Task, width: usize, height: usize) -> Result<(), PipelineError> {
    if o.num_inference_steps == 0 {
        return Err(PipelineError::Input { what: "steps", value: "0".into(), allowed: "at least 1".into() });
    }
    if !(o.guidance_scale >= 0.0 && o.guidance_scale.is_finite()) {
        return Err(PipelineError::Input { what: "guidance scale", value: o.guidance_scale.to_string(), allowed: "a finite number >= 0".into() });
    }
    if o.num_images_per_prompt == 0 {
        return Err(PipelineError::Input { what: "number of images", value: "0".into(), allowed: "at least 1".into() });
    }
    if let Some(len) = o.flow.max_sequence_length
        && !(1..=MAX_SEQUENCE_LENGTH).contains(&len)
    {
        return Err(PipelineError::Input { what: "max_sequence_length", value: len.to_string(), allowed: format!("1 to {MAX_SEQUENCE_LENGTH}") });
    }
    // what only the SD family's pipelines take
    let unsupported = |what: &str| Err(PipelineError::Unsupported(format!("{what} is an option of the SD-family pipelines; SD 3 and FLUX pipelines do not take it")));
    if o.prompt_syntax != crate::options::PromptSyntax::Diffusers {
        return unsupported("the a1111 prompt syntax");
    }
    if o.guidance_rescale != 0.0 {
        return unsupported("guidance_rescale");
    }
    if o.eta != 0.0 {
        return unsupported("eta");
    }
    if o.original_size.is_some() || o.target_size.is_some() || o.crops_coords_top_left != (0, 0) {
        return unsupported("SDXL's micro-conditioning (original size, target size, crops)");
    }
    if !(o.flow.true_cfg_scale >= 0.0 && o.flow.true_cfg_scale.is_finite()) {
        return Err(PipelineError::Input { what: "true_cfg_scale", value: o.flow.true_cfg_scale.to_string(), allowed: "a finite number >= 0".into() });
    }
    match task {
        Task::Txt2Img => {}
        Task::Img2Img { image, strength } | Task::Inpaint { image, strength, .. } => {
            flow_img2img_begin_index(o.num_inference_steps, *strength, 1).map_err(|e| PipelineError::Input {
                what: "strength",
                value: strength.to_string(),
                allowed: format!("in [0, 1] and leaving a denoising step ({e})"),
            })?;
            let mut sizes = vec![("init image size", image.width(), image.height())];
            if let Task::Inpaint { mask, .. } = task {
                sizes.push(("mask size", mask.width(), mask.height()));
            }
            for (what, w, h) in sizes {
                if (w as usize, h as usize) != (width, height) {
                    return Err(PipelineError::Input {
                        what,
                        value: format!("{w}x{h}"),
                        allowed: format!("the output size {width}x{height} (kiln does not resize; resize the image or pass its size)"),
                    });
                }
            }
        }
    }
    Ok(())
}

/// Inpainting with a 16-channel transformer (diffusers' `StableDiffusion3InpaintPipeline` and
/// `FluxInpaintPipeline`): the transformer sees only the latents; after each step the region the
/// mask keeps is replaced by the init image's latents noised to the next step's σ.
///
/// # Shapes
/// - mask, image_latents, noise: `[n, latent_channels, h / f, w / f]` (the mask 0 or 1, repeated
///   over the channels)
pub(crate) struct FlowInpaint {
    pub mask: Tensor<4>,
    pub image_latents: Tensor<4>,
    pub noise: Tensor<4>,
}

impl FlowInpaint {
    /// `prepare_latents` (with `return_image_latents`) and the mask of `prepare_mask_latents`:
    /// the init image's latents (one posterior sample from the generator), repeated n times, then
    /// the noise; the first latents are the noise at strength 1, else the image latents
    /// `scale_noise`d to the first step. The mask is binarised at one half and resized to the
    /// latents by nearest neighbour (`F.interpolate`). diffusers then encodes the masked image
    /// too, drawing from the generator, but uses it only for 33-channel transformers, and nothing
    /// after it draws from that generator: kiln skips that encode.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn prepare(
        vae: &AutoencoderKL,
        image: &RgbImage,
        mask: &image::GrayImage,
        strength: f64,
        n: usize,
        scheduler: &dyn Scheduler,
        begin: usize,
        generator: &mut TorchGenerator,
        device: &Device,
    ) -> Result<(Tensor<4>, Self), PipelineError> {
        let image_latents = encode_image(vae, image, generator, device)?.repeat_dim(0, n);
        let noise = randn(generator, image_latents.dims(), device);
        let latents = if strength == 1.0 { noise.clone() } else { scheduler.add_noise(image_latents.clone(), noise.clone(), begin) };
        let [_, _, lh, lw] = image_latents.dims();
        let mask = interpolate_nearest(mask, lh, lw, device).repeat_dim(0, n).expand(image_latents.dims());
        Ok((latents, FlowInpaint { mask, image_latents, noise }))
    }

    /// After the scheduler's step `i` of `len`: `(1 − mask) · init_latents_proper + mask · latents`,
    /// `init_latents_proper` the image latents `scale_noise`d to step i + 1's σ (the clean image
    /// latents after the last step).
    pub(crate) fn blend(&self, latents: Tensor<4>, scheduler: &dyn Scheduler, i: usize, len: usize) -> Tensor<4> {
        let proper = if i + 1 < len { scheduler.add_noise(self.image_latents.clone(), self.noise.clone(), i + 1) } else { self.image_latents.clone() };
        self.mask.clone().neg().add_scalar(1.0) * proper + self.mask.clone() * latents
    }
}

/// The flow scheduler of a run: `o.scheduler` (euler, heun) and `o.karras` on the model's config,
/// with the pipeline's `set_timesteps` keywords (μ, custom sigmas).
pub(crate) fn build_scheduler(o: &GenerateOptions, config: &SchedulerConfig, mu: Option<f64>, sigmas: Option<Vec<f64>>) -> Result<Box<dyn Scheduler>, PipelineError> {
    let options = StepOptions { mu, sigmas, ..StepOptions::default() };
    Ok(SamplerChoice { sampler: o.scheduler, karras: o.karras }.build(config, o.num_inference_steps, &options)?)
}

/// The scheduler's first step for a task: 0, or img2img's `t_start · order`.
pub(crate) fn begin_index(o: &GenerateOptions, task: &Task, scheduler: &dyn Scheduler) -> Result<usize, PipelineError> {
    Ok(match task {
        Task::Txt2Img => 0,
        _ => flow_img2img_begin_index(o.num_inference_steps, task.strength(), scheduler.order())?,
    })
}

/// Host noise from the run's generator (`randn_tensor(shape, generator)`).
pub(crate) fn randn<const D: usize>(generator: &mut TorchGenerator, shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(generator.randn(&shape), shape), device)
}

/// `retrieve_latents(vae.encode(image), generator)` then `(z − shift_factor) · scaling_factor`:
/// the init image's latents in the flow pipelines' scale.
///
/// # Shapes
/// - returns `[1, latent_channels, h / f, w / f]`
pub(crate) fn encode_image(vae: &AutoencoderKL, image: &RgbImage, generator: &mut TorchGenerator, device: &Device) -> Result<Tensor<4>, PipelineError> {
    let dist = crate::in_worker(device, || vae.encode(image_to_tensor(image, device)))?;
    let noise = randn(generator, dist.mean.dims(), device);
    let z = dist.sample(noise)?;
    Ok(z.sub_scalar(vae.shift_factor().unwrap_or(0.0)).mul_scalar(vae.scaling_factor()))
}

/// `latents / scaling_factor + shift_factor`, the VAE decode and `postprocess` to RGB8; an output
/// with NaN or inf is an error, never a black picture.
pub(crate) fn decode(vae: &AutoencoderKL, latents: Tensor<4>, device: &Device) -> Result<Vec<RgbImage>, PipelineError> {
    let z = latents.div_scalar(vae.scaling_factor()).add_scalar(vae.shift_factor().unwrap_or(0.0));
    let image = crate::in_worker(device, || vae.decode(z))?;
    if !image.clone().is_finite().all().into_scalar::<bool>() {
        return Err(PipelineError::NonFinite { component: "the VAE decoder", detail: String::new() });
    }
    to_rgb_images(image)
}

/// A CLIP encoder on one prompt padded to 77 tokens, with diffusers' truncation warning.
pub(crate) fn clip(tokenizer: &ClipTokenizer, encoder: &ClipTextModel, text: &str, device: &Device) -> Result<ClipTextOutput, PipelineError> {
    crate::stable_diffusion::run_clip(tokenizer, encoder, text, device)
}

/// `_get_t5_prompt_embeds`: T5's last hidden state on the prompt padded (or truncated) to
/// `max_length` tokens, no attention mask, with diffusers' truncation warning.
///
/// # Shapes
/// - returns `[1, max_length, d_model]`
pub(crate) fn t5(tokenizer: &T5Tokenizer, encoder: &T5EncoderModel, text: &str, max_length: usize, device: &Device) -> Result<Tensor<3>, PipelineError> {
    let tokens = tokenizer.encode(text, max_length)?;
    if tokens.dropped_tokens > 0 {
        log::warn!(
            "The following part of your input was truncated because `max_sequence_length` is set to {max_length} tokens ({} tokens dropped): {}",
            tokens.dropped_tokens,
            tokens.dropped_text
        );
    }
    Ok(crate::in_worker(device, || encoder.encode(&[tokens.ids], device))?)
}

/// `text or fallback` as Python's `or` reads it: `None` and `""` take the fallback.
pub(crate) fn or<'a>(text: &'a Option<String>, fallback: &'a str) -> &'a str {
    text.as_deref().filter(|s| !s.is_empty()).unwrap_or(fallback)
}
