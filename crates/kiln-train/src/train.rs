//! Training kiln's demo model with burn's autodiff, on the same model code as inference:
//! 1. a tiny [`AutoencoderKL`] (SD's layout, smaller: 3 levels, so factor 4 and 16×16×4 latents
//!    for the 64×64 pictures; 16–32 channels; no mid-block attention) as a deterministic
//!    autoencoder on its posterior mean (MSE + L1), with a small KL term;
//! 2. the dataset's latents (posterior means) cached once, `scaling_factor` = 1 / their std, as
//!    the SD authors chose theirs;
//! 3. a tiny CLIP text encoder (the real CLIP tokenizer) and UNet2DConditionModel trained jointly
//!    on DDPM's loss with v-prediction and SD's schedule (scaled_linear 0.00085–0.012, 1000
//!    steps) rescaled to zero terminal SNR, 10 % of captions dropped to "" for classifier-free
//!    guidance.
//!
//! Why zero terminal SNR ("Common Diffusion Noise Schedules and Sample Steps are Flawed", Lin et
//! al. 2024; diffusers' `rescale_betas_zero_snr`): on 16×16 latents SD's schedule leaves the
//! image's mean colour readable through the noise even at t = 999 (√ᾱ = 0.068 against a noise
//! mean of std 1/16), so a model trained on it takes the background colour from the noise and
//! ignores the prompt's; the first model kiln shipped drew the captioned background in 3 of 48
//! pictures. With ᾱ_999 = 0 the model must take it from the text, and v-prediction (the
//! paper's pairing) keeps the target finite there. The sampler starts at t = 999
//! (`timestep_spacing` "trailing").
//!
//! The result is written as a diffusers folder (`model_index.json`, configs, safetensors in
//! PyTorch layout) that diffusers' `StableDiffusionPipeline.from_pretrained` loads.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::store::{ModuleSnapshot, SafetensorsStore};
use kiln_nn::weights::TorchNames;
use burn::tensor::{DType, Device, Tensor, TensorData};
use kiln_pipeline::image_processor::image_to_tensor;
use kiln_scheduler::ddpm::DdpmScheduler;
use kiln_scheduler::{SchedulerConfig, StepOptions};
use kiln_text_encoder::{ClipTextConfig, ClipTextModel, ClipTokenizer};
use kiln_unet::{UNet2DConditionConfig, UNet2DConditionModel};
use kiln_vae::{AutoencoderKL, AutoencoderKLConfig};

use crate::dataset::{samples, Scene, SplitMix64, COLORS};

/// The demo model's configs (diffusers / transformers JSON), written into the folder.
///
/// Sizes were chosen with a PyTorch prototype of the same recipe (diffusers' classes, 6× faster
/// to iterate on this CPU): a factor-8 VAE (8×8 latents) still drew wrong colours and blobs after
/// 1000 steps (50 levels mean error), factor 4 without mid-block attention reached 6–7 levels
/// at lr 1e-3 (2e-3 was unstable from run to run); the UNet runs at 16×16 with cross-attention
/// at its 8×8 level and in the mid block only (the 16×16 self-attention doubled its step time).
///
/// GroupNorm keeps 4–8 channels per group (SD: 4 in the VAE, 10 in the UNet): with one channel
/// per group it is an instance norm, which erases each image's per-channel mean — the last norm
/// before `conv_out` then leaves the decoder no way to say what colour the background is.
pub mod configs {
    pub const VAE: &str = r#"{
  "_class_name": "AutoencoderKL",
  "_diffusers_version": "0.42.1",
  "act_fn": "silu",
  "block_out_channels": [16, 32, 32],
  "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
  "force_upcast": true,
  "in_channels": 3,
  "latent_channels": 4,
  "latents_mean": null,
  "latents_std": null,
  "layers_per_block": 1,
  "mid_block_add_attention": false,
  "norm_num_groups": 4,
  "out_channels": 3,
  "sample_size": 64,
  "scaling_factor": SCALING_FACTOR,
  "shift_factor": null,
  "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
  "use_post_quant_conv": true,
  "use_quant_conv": true
}
"#;

    /// The VAE's config.json with `scaling_factor` filled in.
    pub fn vae(scaling_factor: f64) -> String {
        VAE.replace("SCALING_FACTOR", &format!("{scaling_factor:.5}"))
    }

    pub const UNET: &str = r#"{
  "_class_name": "UNet2DConditionModel",
  "_diffusers_version": "0.42.1",
  "act_fn": "silu",
  "attention_head_dim": 4,
  "block_out_channels": [32, 64],
  "center_input_sample": false,
  "cross_attention_dim": 64,
  "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
  "downsample_padding": 1,
  "flip_sin_to_cos": true,
  "freq_shift": 0,
  "in_channels": 4,
  "layers_per_block": 1,
  "mid_block_scale_factor": 1,
  "mid_block_type": "UNetMidBlock2DCrossAttn",
  "norm_eps": 1e-05,
  "norm_num_groups": 8,
  "out_channels": 4,
  "sample_size": 16,
  "transformer_layers_per_block": 1,
  "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
  "upcast_attention": false,
  "use_linear_projection": false
}
"#;

    /// Prompts are padded to 16 tokens (the text encoder's `max_position_embeddings`, the
    /// tokenizer's `model_max_length`) rather than CLIP's 77: the longest caption is 14 tokens
    /// with BOS and EOS, and with 77 the cross-attention starts out averaging over 60-odd padding
    /// tokens, which slowed learning what the words say.
    pub const MAX_LENGTH: usize = 16;

    /// The text encoder's config.json with `max_position_embeddings` = [`MAX_LENGTH`].
    pub fn text_encoder() -> String {
        TEXT_ENCODER.replace("MAX_LENGTH", &MAX_LENGTH.to_string())
    }

    const TEXT_ENCODER: &str = r#"{
  "architectures": ["CLIPTextModel"],
  "attention_dropout": 0.0,
  "bos_token_id": 49406,
  "eos_token_id": 49407,
  "hidden_act": "quick_gelu",
  "hidden_size": 64,
  "initializer_factor": 1.0,
  "initializer_range": 0.02,
  "intermediate_size": 256,
  "layer_norm_eps": 1e-05,
  "max_position_embeddings": MAX_LENGTH,
  "model_type": "clip_text_model",
  "num_attention_heads": 4,
  "num_hidden_layers": 3,
  "pad_token_id": 1,
  "projection_dim": 64,
  "torch_dtype": "float32",
  "vocab_size": 49408
}
"#;

    pub const SCHEDULER: &str = r#"{
  "_class_name": "DPMSolverMultistepScheduler",
  "_diffusers_version": "0.42.1",
  "algorithm_type": "dpmsolver++",
  "beta_end": 0.012,
  "beta_schedule": "scaled_linear",
  "beta_start": 0.00085,
  "num_train_timesteps": 1000,
  "prediction_type": "v_prediction",
  "rescale_betas_zero_snr": true,
  "set_alpha_to_one": false,
  "solver_order": 2,
  "steps_offset": 1,
  "timestep_spacing": "trailing",
  "trained_betas": null
}
"#;

    pub const MODEL_INDEX: &str = r#"{
  "_class_name": "StableDiffusionPipeline",
  "_diffusers_version": "0.42.1",
  "feature_extractor": [null, null],
  "image_encoder": [null, null],
  "requires_safety_checker": false,
  "safety_checker": [null, null],
  "scheduler": ["diffusers", "DPMSolverMultistepScheduler"],
  "text_encoder": ["transformers", "CLIPTextModel"],
  "tokenizer": ["transformers", "CLIPTokenizer"],
  "unet": ["diffusers", "UNet2DConditionModel"],
  "vae": ["diffusers", "AutoencoderKL"]
}
"#;
}

/// `kiln-train` options.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// The diffusers folder to write (and `checkpoints/` inside it).
    pub out: PathBuf,
    /// The CLIP tokenizer files (`vocab.json`, `merges.txt`) and SD 1.5's tokenizer configs.
    pub tokenizer_files: PathBuf,
    pub tokenizer_configs: PathBuf,
    pub seed: u64,
    pub vae_steps: usize,
    pub vae_batch: usize,
    pub vae_lr: f64,
    /// Steps of the decoder-only stage after the VAE stage (same batch and lr); 0 skips it.
    pub vae_decoder_steps: usize,
    pub unet_steps: usize,
    /// Stop the UNet stage after this step (checkpointed, the folder written), keeping the
    /// learning-rate schedule of `unet_steps`; `--resume` continues it. `None`: run to the end.
    pub unet_stop_after: Option<usize>,
    pub unet_batch: usize,
    pub unet_lr: f64,
    /// Size of the cached training set (scenes rendered once, encoded once).
    pub dataset_size: usize,
    pub checkpoint_every: usize,
    /// Continue from `out/checkpoints` where a stage stopped.
    pub resume: bool,
}

pub type Error = Box<dyn std::error::Error>;

/// Reports progress: (stage, step, total, loss, seconds per step).
pub type Progress<'a> = &'a mut dyn FnMut(&str, usize, usize, f64, f64);

fn tensor4(values: Vec<f32>, shape: [usize; 4], device: &Device) -> Tensor<4> {
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// The optimizer of both stages: PyTorch's `torch.optim.AdamW` defaults (β = 0.9, 0.999,
/// ε = 1e-8) without weight decay. burn's `AdamWConfig` defaults to ε = 1e-5, which is larger
/// than √v̂ of most weights' gradients once the losses are small: it shrank their steps up to
/// tenfold, and a VAE trained with it for 1500 steps still drew red, yellow and white as orange.
pub fn adamw() -> AdamWConfig {
    AdamWConfig::new().with_beta_1(0.9).with_beta_2(0.999).with_epsilon(1e-8).with_weight_decay(0.0)
}

/// Seeds the device's random generator before a stage initialises fresh weights, so that
/// `--seed` fixes them: unseeded, burn draws initial weights from the OS's entropy (every run
/// started from different weights). Each stage seeds its own, so a stage's initial weights
/// do not depend on whether the stages before it ran in the same process.
fn seed_init(device: &Device, seed: u64) {
    device.seed(seed);
}

/// What `--seed` is mixed with for the VAE stage's initial weights and batches, and for the
/// UNet stage's (text encoder and UNet) — the stages draw from different streams.
const VAE_SALT: u64 = 0x5641_45;
const UNET_SALT: u64 = 0x554e_4554;

/// Host-side N(0, 1) from splitmix64 + Box–Muller, so runs are reproducible on any device.
fn normal(rng: &mut SplitMix64, n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1 = (rng.unit() as f64).max(1e-12);
        let u2 = rng.unit() as f64;
        let r = (-2.0 * u1.ln()).sqrt();
        out.push((r * (std::f64::consts::TAU * u2).cos()) as f32);
        out.push((r * (std::f64::consts::TAU * u2).sin()) as f32);
    }
    out.truncate(n);
    out
}

/// `[n, 3, 64, 64]` in [-1, 1] from images, as the pipelines feed the VAE.
fn images_to_tensor(images: &[&image::RgbImage], device: &Device) -> Tensor<4> {
    Tensor::cat(images.iter().map(|img| image_to_tensor(img, device)).collect(), 0)
}

/// Saves a module as PyTorch-layout safetensors (what diffusers/transformers read).
pub fn save_safetensors<M: Module>(module: &M, path: &Path) -> Result<(), Error> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("safetensors.tmp");
    let mut store =
        SafetensorsStore::from_file(&tmp).with_to_adapter(TorchNames::ToTorch).skip_enum_variants(true).overwrite(true);
    module.save_into(&mut store).map_err(|e| format!("saving {}: {e}", path.display()))?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Parameter ids by module path. burn keys an optimizer's state by parameter id, and draws the
/// ids at random whenever a module is built: a module read back from safetensors at `--resume`
/// has new ones, in which AdamW finds none of its saved moments (until 2026-11-27 they restarted
/// from zero at every resume, and the state file grew by a set per resume). So the ids are saved
/// beside the optimizer state ([`save_param_ids`]) and put back on the loaded module
/// ([`restore_param_ids`]).
#[derive(Default)]
struct ParamIds {
    path: Vec<String>,
    ids: std::collections::BTreeMap<String, u64>,
}

impl ModuleVisitor for ParamIds {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.ids.insert(self.path.join("."), param.id.val());
    }
}

impl ModuleMapper for ParamIds {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, mut param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if let Some(&id) = self.ids.get(&self.path.join(".")) {
            param.id = ParamId::from(id);
        }
        param
    }
}

/// Where the parameter ids of the optimizer state at `optim` are kept.
fn ids_path(optim: &Path) -> PathBuf {
    PathBuf::from(format!("{}.ids.json", optim.display()))
}

/// Saves `module`'s parameter ids by path next to its optimizer state at `optim`.
fn save_param_ids<M: Module>(module: &M, optim: &Path) -> Result<(), Error> {
    let mut ids = ParamIds::default();
    module.visit(&mut ids);
    std::fs::write(ids_path(optim), serde_json::to_string(&ids.ids)?)?;
    Ok(())
}

/// Gives `module` (just loaded from safetensors) the parameter ids its optimizer state at `optim`
/// was saved with, so that the state applies to it. A checkpoint from before the ids were saved
/// has none: its optimizer state cannot be matched, and AdamW starts afresh (said on stderr).
fn restore_param_ids<M: Module>(module: M, optim: &Path) -> Result<M, Error> {
    let path = ids_path(optim);
    if !path.exists() {
        eprintln!("warning: {} is missing (a checkpoint from before 2026-11-27): AdamW's moments start from zero", path.display());
        return Ok(module);
    }
    let ids = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    Ok(module.map(&mut ParamIds { path: Vec::new(), ids }))
}

/// The training schedule, ᾱ_t for t = 0..999: a DDPMScheduler built from
/// [`configs::SCHEDULER`] (the sampler's config, so training and inference share one source), as
/// diffusers' training scripts take their `noise_scheduler` from the model's scheduler config:
/// SD's scaled_linear betas 0.00085–0.012, rescaled to zero terminal SNR (diffusers'
/// `rescale_zero_terminal_snr`), so ᾱ_999 = 0.
pub fn alphas_cumprod() -> Vec<f64> {
    let config = SchedulerConfig::from_json_str(configs::SCHEDULER, "configs::SCHEDULER").expect("configs::SCHEDULER is JSON");
    DdpmScheduler::new(&config, 1, &StepOptions::default()).expect("configs::SCHEDULER builds a DDPMScheduler").alphas_cumprod().to_vec()
}

/// The v-prediction target (diffusers' `DDPMScheduler.get_velocity`):
/// v = √ᾱ_t · ε − √(1 − ᾱ_t) · x₀.
pub fn velocity(alpha_cumprod: f64, x0: f32, eps: f32) -> f32 {
    alpha_cumprod.sqrt() as f32 * eps - (1.0 - alpha_cumprod).sqrt() as f32 * x0
}

fn write_configs(o: &TrainOptions, scaling_factor: f64) -> Result<(), Error> {
    let out = &o.out;
    for (dir, name, text) in [
        ("", "model_index.json", configs::MODEL_INDEX.to_string()),
        ("scheduler", "scheduler_config.json", configs::SCHEDULER.to_string()),
        ("text_encoder", "config.json", configs::text_encoder()),
        ("unet", "config.json", configs::UNET.to_string()),
        ("vae", "config.json", configs::vae(scaling_factor)),
    ] {
        std::fs::create_dir_all(out.join(dir))?;
        std::fs::write(out.join(dir).join(name), text)?;
    }
    std::fs::create_dir_all(out.join("tokenizer"))?;
    for (src, name) in [
        (&o.tokenizer_files, "vocab.json"),
        (&o.tokenizer_files, "merges.txt"),
        (&o.tokenizer_configs, "special_tokens_map.json"),
    ] {
        std::fs::copy(src.join(name), out.join("tokenizer").join(name))?;
    }
    // SD 1.5's tokenizer config with this model's length (see `configs::MAX_LENGTH`)
    let mut tok: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(o.tokenizer_configs.join("tokenizer_config.json"))?)?;
    tok["model_max_length"] = configs::MAX_LENGTH.into();
    std::fs::write(out.join("tokenizer").join("tokenizer_config.json"), serde_json::to_string_pretty(&tok)?)?;
    Ok(())
}

#[derive(serde::Serialize, serde::Deserialize, Default)]
struct State {
    /// VAE steps done (the stage resumes here; it is complete at `--vae-steps`).
    #[serde(default)]
    vae_step: usize,
    /// Steps of the decoder stage done.
    #[serde(default)]
    vae_decoder_step: usize,
    scaling_factor: Option<f64>,
    unet_step: usize,
    /// What the UNet checkpoint was trained to predict (`configs::SCHEDULER`'s
    /// `prediction_type`; runs before v-prediction wrote none and predicted ε).
    #[serde(default)]
    prediction_type: Option<String>,
}

/// `configs::SCHEDULER`'s `prediction_type`.
fn prediction_type() -> String {
    let c: serde_json::Value = serde_json::from_str(configs::SCHEDULER).expect("configs::SCHEDULER is JSON");
    c["prediction_type"].as_str().expect("prediction_type").to_string()
}

fn read_state(dir: &Path) -> State {
    std::fs::read_to_string(dir.join("state.json")).ok().and_then(|s| serde_json::from_str(&s).ok()).unwrap_or_default()
}

fn write_state(dir: &Path, s: &State) -> Result<(), Error> {
    std::fs::write(dir.join("state.json"), serde_json::to_string_pretty(s)?)?;
    Ok(())
}

/// The VAE stage's loss on a batch `x` (`[n, 3, h, w]` in [-1, 1]): the VAE is trained as a
/// deterministic autoencoder on its posterior mean (what the UNet's training latents are;
/// sampling std-1 noise from the start drowns the small initial means and leaves a blurry
/// decoder after the few steps a CPU affords), MSE + L1 (L1 keeps flat colours and edges sharp),
/// plus KL(q ‖ N(0, 1)) per latent element weighted 1e-6 (lightly, as SD's VAE was). `weight`
/// (`[n, 1, h, w]`, see [`foreground_weights`]) weighs each pixel's error.
pub fn vae_loss(vae: &AutoencoderKL, x: Tensor<4>, weight: Tensor<4>) -> Result<Tensor<1>, Error> {
    let dist = vae.encode(x.clone())?;
    let rec = reconstruction_loss(vae.decode(dist.mean.clone())?, x, weight);
    let kl = (dist.mean.clone().powi_scalar(2) + dist.logvar.clone().exp() - dist.logvar - 1.0).mean().mul_scalar(0.5);
    Ok(rec + kl.mul_scalar(1e-6))
}

/// The decoder stage's loss: the same reconstruction loss through the decoder alone — the
/// latents are constants, so the encoder (and with it the UNet's training latents) stays as the
/// VAE stage left it, as Stability fine-tuned SD's decoder for `sd-vae-ft-mse`. The encoder runs
/// without autodiff (`valid()`): a detached branch of the autodiff graph is never consumed by
/// `backward` and kept its memory, about 45 MB a step.
pub fn vae_decoder_loss(vae: &AutoencoderKL, x: Tensor<4>, weight: Tensor<4>) -> Result<Tensor<1>, Error> {
    let mean = vae.valid().encode(x.clone().inner())?.mean.autodiff();
    Ok(reconstruction_loss(vae.decode(mean)?, x, weight))
}

/// Weighted MSE + L1 between a reconstruction and its picture: mean(w·d²) + mean(w·|d|) over
/// every value, `w` broadcast over the channels.
///
/// # Shapes
/// - recon, x: `[n, 3, h, w]`; weight: `[n, 1, h, w]`
fn reconstruction_loss(recon: Tensor<4>, x: Tensor<4>, weight: Tensor<4>) -> Tensor<1> {
    let diff = recon - x;
    (diff.clone().powi_scalar(2) * weight.clone()).mean() + (diff.abs() * weight).mean()
}

/// How much more a shape's pixel counts in the VAE's reconstruction loss than a background
/// pixel. The shapes cover a few percent of a picture, so with equal weights the cheapest
/// error is a blurred outline: a PyTorch prototype of the VAE stage (1500 steps, same recipe)
/// read the round trip's squares back as squares 25 times of 45 with equal weights, 42 with
/// this weight (and triangles 21 → 30 of 34).
pub const FOREGROUND_WEIGHT: f32 = 10.0;

/// Per-pixel loss weights for `scenes`' pictures: [`FOREGROUND_WEIGHT`] where a pixel differs
/// from its scene's background colour (by 3 levels or more, summed over the channels: the
/// shapes and their anti-aliased edges), 1 elsewhere.
///
/// # Shapes
/// - returns `[n, 1, h, w]`
pub fn foreground_weights(scenes: &[(Scene, image::RgbImage)], device: &Device) -> Tensor<4> {
    let (w, h) = scenes.first().map_or((0, 0), |(_, img)| img.dimensions());
    let mut out = Vec::with_capacity(scenes.len() * (w * h) as usize);
    for (scene, img) in scenes {
        let bg = COLORS[scene.background].1;
        out.extend(img.pixels().map(|p| {
            let d: u32 = (0..3).map(|c| (p[c] as i32 - bg[c] as i32).unsigned_abs()).sum();
            if d >= 3 { FOREGROUND_WEIGHT } else { 1.0 }
        }));
    }
    tensor4(out, [scenes.len(), 1, h as usize, w as usize], device)
}

/// The two stages that train the VAE: the whole autoencoder, then its decoder alone.
#[derive(Debug, Clone, Copy, PartialEq)]
enum VaeStage {
    Autoencoder,
    Decoder,
}

impl VaeStage {
    fn name(self) -> &'static str {
        match self {
            VaeStage::Autoencoder => "vae",
            VaeStage::Decoder => "vae-decoder",
        }
    }

    /// The stage's weights and optimizer state in the checkpoint folder.
    fn files(self, ckpt: &Path) -> (PathBuf, PathBuf) {
        match self {
            VaeStage::Autoencoder => (ckpt.join("vae.safetensors"), ckpt.join("optimizer.vae")),
            VaeStage::Decoder => (ckpt.join("vae_decoder.safetensors"), ckpt.join("optimizer.vae_decoder")),
        }
    }

    fn steps(self, o: &TrainOptions) -> usize {
        match self {
            VaeStage::Autoencoder => o.vae_steps,
            VaeStage::Decoder => o.vae_decoder_steps,
        }
    }

    /// Steps done, as the checkpoint's state records them.
    fn done(self, state: &mut State) -> &mut usize {
        match self {
            VaeStage::Autoencoder => &mut state.vae_step,
            VaeStage::Decoder => &mut state.vae_decoder_step,
        }
    }
}

/// The demo VAE's f32 checkpoint at `path`, on `device`.
fn load_vae(path: &Path, device: &Device) -> Result<AutoencoderKL, Error> {
    let config = AutoencoderKLConfig::from_json_str(&configs::vae(1.0))?;
    Ok(kiln_nn::load_safetensors(config.init(device)?, path, DType::F32, &[], &[])?)
}

/// Trains a VAE stage from its recorded step (resuming from `ckpt` when it is above 0; the
/// decoder stage starts from the autoencoder stage's weights), saving weights, optimizer state
/// and progress every `checkpoint_every` steps; returns the VAE (inference device).
fn train_vae(o: &TrainOptions, device: &Device, ckpt: &Path, state: &mut State, stage: VaeStage, progress: Progress) -> Result<AutoencoderKL, Error> {
    let ad = device.clone().autodiff();
    let mut optim = adamw().init();
    let (vae_path, optim_path) = stage.files(ckpt);
    let total = stage.steps(o);
    let (mut vae, first) = if *stage.done(state) > 0 && vae_path.exists() && optim_path.exists() {
        optim = optim.load(&optim_path)?;
        (restore_param_ids(load_vae(&vae_path, &ad)?, &optim_path)?, *stage.done(state))
    } else if stage == VaeStage::Decoder {
        (load_vae(&VaeStage::Autoencoder.files(ckpt).0, &ad)?, 0)
    } else {
        seed_init(&ad, o.seed ^ VAE_SALT);
        (AutoencoderKLConfig::from_json_str(&configs::vae(1.0))?.init(&ad)?, 0)
    };
    let salt = if stage == VaeStage::Decoder { 0x4445_43 } else { VAE_SALT };
    let mut rng = SplitMix64(o.seed ^ salt ^ (first as u64).wrapping_mul(0x9E37_79B9));
    let start = Instant::now();
    for step in first..total {
        let batch: Vec<(Scene, image::RgbImage)> =
            (0..o.vae_batch).map(|_| {
                let s = Scene::random(&mut rng, false);
                let img = s.render(&mut rng);
                (s, img)
            }).collect();
        let refs: Vec<&image::RgbImage> = batch.iter().map(|(_, i)| i).collect();
        let x = images_to_tensor(&refs, &ad);
        let weight = foreground_weights(&batch, &ad);
        let loss = match stage {
            VaeStage::Autoencoder => vae_loss(&vae, x, weight)?,
            VaeStage::Decoder => vae_decoder_loss(&vae, x, weight)?,
        };
        let value = loss.clone().into_scalar::<f32>() as f64;
        let grads = GradientsParams::from_grads(loss.backward(), &vae);
        let decay = 0.55 + 0.45 * (std::f64::consts::PI * step as f64 / total as f64).cos();
        let lr = o.vae_lr * ((step + 1) as f64 / 50.0).min(1.0) * decay;
        vae = optim.step(lr, vae, grads);
        progress(stage.name(), step + 1, total, value, start.elapsed().as_secs_f64() / (step + 1 - first) as f64);
        if (step + 1) % o.checkpoint_every == 0 || step + 1 == total {
            save_safetensors(&vae.valid(), &vae_path)?;
            optim.save(&optim_path)?;
            save_param_ids(&vae, &optim_path)?;
            *stage.done(state) = step + 1;
            write_state(ckpt, state)?;
        }
    }
    Ok(vae.valid())
}

/// The second stage's loss: the UNet, conditioned on the text encoder's last hidden state of
/// `ids`, predicts `target` for the noisy latents `xt` at `timesteps`; the mean squared error
/// (DDPM's simplified objective). The demo model's target is the velocity ([`velocity`], as
/// SD 2's 768 models were trained); for an ε-prediction model it is the noise.
///
/// # Shapes
/// - ids: `batch` rows of token ids; xt, target: `[batch, c, h, w]`; timesteps: `batch`
pub fn unet_loss(
    text_encoder: &ClipTextModel,
    unet: &UNet2DConditionModel,
    ids: &[Vec<u32>],
    xt: Tensor<4>,
    target: Tensor<4>,
    timesteps: &[f64],
) -> Result<Tensor<1>, Error> {
    let ctx = text_encoder.encode(ids, &xt.device())?.last_hidden_state;
    let pred = unet.forward(xt, timesteps, ctx, None)?;
    Ok((pred - target).powi_scalar(2).mean())
}

/// Trains everything and writes the folder.
pub fn train(o: &TrainOptions, device: &Device, progress: Progress) -> Result<(), Error> {
    let ckpt = o.out.join("checkpoints");
    std::fs::create_dir_all(&ckpt)?;
    let mut state = if o.resume { read_state(&ckpt) } else { State::default() };
    if state.unet_step > 0 {
        let trained = state.prediction_type.clone().unwrap_or_else(|| "epsilon".into());
        if trained != prediction_type() {
            return Err(format!(
                "{} holds a UNet trained for prediction_type {trained}; this kiln-train trains {} \
                 (pass --overwrite, or another --out, to start the UNet stage over)",
                ckpt.display(),
                prediction_type()
            )
            .into());
        }
    }
    // 1. VAE, then its decoder alone. A stage is done when its checkpoint has its `--…-steps`
    // steps; a larger count with `--resume` trains it further. A changed encoder changes the
    // latents, so the decoder and UNet stages start over; the decoder stage changes neither.
    let mut vae = None;
    for stage in [VaeStage::Autoencoder, VaeStage::Decoder] {
        let path = stage.files(&ckpt).0;
        if stage == VaeStage::Decoder && o.vae_decoder_steps == 0 {
            break;
        }
        vae = Some(if *stage.done(&mut state) >= stage.steps(o) && path.exists() {
            load_vae(&path, device)?
        } else {
            if stage == VaeStage::Autoencoder {
                state.vae_decoder_step = 0;
                state.unet_step = 0;
                state.scaling_factor = None;
            }
            train_vae(o, device, &ckpt, &mut state, stage, progress)?
        });
    }
    let vae = vae.expect("the autoencoder stage always runs");
    // 2. the cached latents (posterior means) of the training set
    let data = samples(o.seed, o.dataset_size, false);
    let mut means = Vec::with_capacity(data.len());
    for chunk in data.chunks(64) {
        let refs: Vec<&image::RgbImage> = chunk.iter().map(|(_, i)| i).collect();
        means.push(vae.encode(images_to_tensor(&refs, device))?.mean);
    }
    let latents = Tensor::cat(means, 0);
    let std = latents.clone().var(0).mean().sqrt().into_scalar::<f32>() as f64;
    let scaling_factor = state.scaling_factor.unwrap_or(1.0 / std);
    state.scaling_factor = Some(scaling_factor);
    write_configs(o, scaling_factor)?;
    let latents = latents.mul_scalar(scaling_factor);
    let [n, c, lh, lw] = latents.dims();
    let latents: Vec<f32> = latents.into_data().convert::<f32>().try_into_vec::<f32>().map_err(|e| format!("{e:?}"))?;
    // 3. text encoder + UNet
    let ad = device.clone().autodiff();
    let tokenizer = ClipTokenizer::from_dir(o.out.join("tokenizer"))?;
    let te_config: ClipTextConfig = serde_json::from_str(&configs::text_encoder())?;
    let te_config = te_config.validate(Path::new("text_encoder/config.json"))?;
    let unet_config = UNet2DConditionConfig::from_json_str(configs::UNET)?;
    let (te_path, unet_path) = (ckpt.join("text_encoder.safetensors"), ckpt.join("unet.safetensors"));
    let optim_path = ckpt.join("optimizer");
    seed_init(&ad, o.seed ^ UNET_SALT);
    let mut text_encoder = ClipTextModel::new(&te_config, &ad);
    let mut unet = unet_config.init(&ad)?;
    let mut optim_te = adamw().init();
    let mut optim_unet = adamw().init();
    let mut first = 0;
    if o.resume && state.unet_step > 0 && te_path.exists() && unet_path.exists() {
        text_encoder = kiln_nn::load_safetensors(text_encoder, &te_path, DType::F32, &[], &[])?;
        text_encoder = restore_param_ids(text_encoder, &optim_path.with_extension("te"))?;
        unet = kiln_nn::load_safetensors(unet, &unet_path, DType::F32, &[], &[])?;
        unet = restore_param_ids(unet, &optim_path.with_extension("unet"))?;
        optim_te = optim_te.load(optim_path.with_extension("te"))?;
        optim_unet = optim_unet.load(optim_path.with_extension("unet"))?;
        first = state.unet_step;
    }
    let ac = alphas_cumprod();
    let mut rng = SplitMix64(o.seed ^ UNET_SALT ^ (first as u64).wrapping_mul(0x9E37_79B9));
    let start = Instant::now();
    let per = c * lh * lw;
    let end = o.unet_stop_after.map_or(o.unet_steps, |s| s.min(o.unet_steps));
    for step in first..end {
        let b = o.unet_batch;
        let idx: Vec<usize> = (0..b).map(|_| rng.below(n)).collect();
        let mut x0 = Vec::with_capacity(b * per);
        let mut ids = Vec::with_capacity(b);
        for &i in &idx {
            x0.extend_from_slice(&latents[i * per..(i + 1) * per]);
            let scene = &data[i].0;
            let caption = if rng.below(10) == 0 { String::new() } else { scene.caption_with(rng.below(2) == 0, rng.below(2) == 0) };
            ids.push(tokenizer.encode(&caption)?.ids);
        }
        let t: Vec<usize> = (0..b).map(|_| rng.below(1000)).collect();
        let eps = normal(&mut rng, b * per);
        let (mut xt, mut v) = (vec![0f32; b * per], vec![0f32; b * per]);
        for k in 0..b {
            let (sa, sb) = (ac[t[k]].sqrt() as f32, (1.0 - ac[t[k]]).sqrt() as f32);
            for j in 0..per {
                let i = k * per + j;
                xt[i] = sa * x0[i] + sb * eps[i];
                v[i] = velocity(ac[t[k]], x0[i], eps[i]);
            }
        }
        let xt = tensor4(xt, [b, c, lh, lw], &ad);
        let v = tensor4(v, [b, c, lh, lw], &ad);
        let timesteps: Vec<f64> = t.iter().map(|&t| t as f64).collect();
        let loss = unet_loss(&text_encoder, &unet, &ids, xt, v, &timesteps)?;
        let value = loss.clone().into_scalar::<f32>() as f64;
        let mut grads = loss.backward();
        let g_unet = GradientsParams::from_module(&mut grads, &unet);
        let g_te = GradientsParams::from_module(&mut grads, &text_encoder);
        let warm = ((step + 1) as f64 / 200.0).min(1.0);
        // cosine decay to 10 % over the run
        let decay = 0.55 + 0.45 * (std::f64::consts::PI * step as f64 / o.unet_steps as f64).cos();
        unet = optim_unet.step(o.unet_lr * warm * decay, unet, g_unet);
        text_encoder = optim_te.step(o.unet_lr * warm * decay, text_encoder, g_te);
        progress("unet", step + 1, o.unet_steps, value, start.elapsed().as_secs_f64() / (step + 1 - first) as f64);
        if (step + 1) % o.checkpoint_every == 0 || step + 1 == end {
            save_safetensors(&text_encoder.valid(), &te_path)?;
            save_safetensors(&unet.valid(), &unet_path)?;
            optim_te.save(optim_path.with_extension("te"))?;
            optim_unet.save(optim_path.with_extension("unet"))?;
            save_param_ids(&text_encoder, &optim_path.with_extension("te"))?;
            save_param_ids(&unet, &optim_path.with_extension("unet"))?;
            state.unet_step = step + 1;
            state.prediction_type = Some(prediction_type());
            write_state(&ckpt, &state)?;
        }
    }
    // the shipped weights are f16 (half the size; both kiln and diffusers compute in f32 from them)
    save_safetensors(&kiln_nn::cast_module(text_encoder.valid(), DType::F16), &o.out.join("text_encoder/model.safetensors"))?;
    save_safetensors(&kiln_nn::cast_module(unet.valid(), DType::F16), &o.out.join("unet/diffusion_pytorch_model.safetensors"))?;
    save_safetensors(&kiln_nn::cast_module(vae, DType::F16), &o.out.join("vae/diffusion_pytorch_model.safetensors"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Param;

    #[derive(Module, Debug)]
    struct Weights {
        w: Param<Tensor<1>>,
    }

    /// A pixel weighs FOREGROUND_WEIGHT when it differs from the scene's background by 3 levels
    /// or more (summed over the channels), 1 otherwise; the loss is mean(w·d²) + mean(w·|d|).
    #[test]
    fn foreground_weights_and_weighted_loss() {
        let device = Device::flex();
        let scene = Scene::random(&mut SplitMix64(3), false);
        let bg = COLORS[scene.background].1;
        let mut img = image::RgbImage::from_pixel(2, 2, image::Rgb(bg));
        img.put_pixel(1, 0, image::Rgb([bg[0] ^ 1, bg[1] ^ 1, bg[2]])); // 2 levels: background
        img.put_pixel(0, 1, image::Rgb([bg[0] ^ 1, bg[1] ^ 1, bg[2] ^ 1])); // 3 levels: foreground
        img.put_pixel(1, 1, image::Rgb(COLORS[scene.color].1));
        let w = foreground_weights(&[(scene, img)], &device);
        assert_eq!(w.dims(), [1, 1, 2, 2]);
        let w: Vec<f32> = w.into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(w, vec![1.0, 1.0, FOREGROUND_WEIGHT, FOREGROUND_WEIGHT]);

        let recon = tensor4(vec![0.5, 0.0, -0.5, 0.25], [1, 1, 2, 2], &device);
        let x = tensor4(vec![0.0; 4], [1, 1, 2, 2], &device);
        let weight = tensor4(vec![1.0, 1.0, 10.0, 10.0], [1, 1, 2, 2], &device);
        let loss = reconstruction_loss(recon, x, weight).into_scalar::<f32>();
        let expected = (0.25 + 0.0 + 2.5 + 0.625) / 4.0 + (0.5 + 0.0 + 5.0 + 2.5) / 4.0;
        assert!((loss - expected).abs() < 1e-6, "{loss} vs {expected}");
    }

    /// One AdamW step from zero moments moves each weight by lr · g / (|g| + ε) (bias correction
    /// makes m̂ = g, v̂ = g²): with PyTorch's ε = 1e-8 a gradient of 1e-6 still moves it by
    /// 0.99 lr, where burn's default ε = 1e-5 would move it by 0.09 lr.
    #[test]
    fn adamw_is_pytorchs() {
        let device = Device::flex().autodiff();
        let grads_of = [1e-6f32, -1e-4, 0.5];
        let m = Weights { w: Param::from_tensor(Tensor::<1>::zeros([3], &device)) };
        let loss = (m.w.val() * Tensor::<1>::from_floats(grads_of, &device)).sum();
        let grads = GradientsParams::from_grads(loss.backward(), &m);
        let m = adamw().init().step(1e-3, m, grads);
        let w: Vec<f32> = m.w.val().into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
        for (w, g) in w.iter().zip(grads_of) {
            let torch = -1e-3 * g / (g.abs() + 1e-8);
            assert!((w - torch).abs() < 1e-8, "step {w} for gradient {g}; torch.optim.AdamW takes {torch}");
        }
    }

    /// The training schedule is the sampler's (`configs::SCHEDULER`, zero terminal SNR): diffusers'
    /// values, and the sampler built from the same config starts at t = 999, where the model was
    /// trained on pure noise.
    #[test]
    fn schedule_and_velocity() {
        let ac = alphas_cumprod();
        assert_eq!(ac.len(), 1000);
        // diffusers 0.42.1: DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
        // beta_end=0.012, rescale_betas_zero_snr=True).alphas_cumprod[[0, 500, 900, 999]]
        for (t, want) in [(0, 0.9991499781608582), (500, 0.24101854860782623), (900, 0.002960391342639923)] {
            assert!((ac[t] - want).abs() < 1e-6 * want.max(1e-3), "ᾱ_{t} = {}, diffusers {want}", ac[t]);
        }
        assert_eq!(ac[999], 0.0);
        assert!(ac.windows(2).all(|w| w[1] < w[0]));
        // at zero SNR the velocity is −x₀; at t = 0 it is nearly ε
        assert_eq!(velocity(ac[999], 0.7, -1.3), -0.7);
        assert!((velocity(ac[0], 0.7, -1.3) - (ac[0].sqrt() * -1.3 - (1.0 - ac[0]).sqrt() * 0.7) as f32).abs() < 1e-6);
        let config = kiln_scheduler::SchedulerConfig::from_json_str(configs::SCHEDULER, "configs::SCHEDULER").unwrap();
        let sampler = kiln_scheduler::SchedulerClass::DpmSolverMultistep
            .build(&config, 20, &kiln_scheduler::StepOptions::default())
            .unwrap();
        assert_eq!(sampler.timesteps()[0], 999.0);
    }
}
