//! # kiln-pipeline
//!
//! The pieces of diffusers' pipelines that are not models or schedulers:
//! * [`StableDiffusion`] ([`stable_diffusion`]): the SD 1.x/2.x, SDXL and inpainting pipelines —
//!   txt2img, img2img and inpainting ([`Task`]) with diffusers' stages, run with
//!   [`GenerateOptions`] ([`options`]); [`PipelineError`] ([`error`]) says why a run could not be
//!   built or run; [`image_processor`] converts images and masks.
//! * [`StableDiffusion3`] ([`stable_diffusion_3`]) and [`Flux`] ([`flux`]), the flow-matching
//!   families, with what they share in [`flow`]: txt2img, img2img and inpainting; [`Pipeline`]
//!   ([`pipeline`]) holds any family, as `model_index.json` says.
//! * [`TorchGenerator`] ([`rng`]), a host-side generator that draws bit for bit what
//!   `torch.Generator("cpu").manual_seed(seed)` draws (`torch.randn`, `torch.rand`), so that kiln
//!   runs reproduce diffusers runs seeded the same way. It is the [`kiln_scheduler::NoiseSource`]
//!   the stochastic samplers take.
//! * [`model`]: `--model` resolution — a diffusers folder or a Hub id through the Hub cache
//!   (downloads behind the `hub` cargo feature, on by default) — and the checked [`ModelFolder`]
//!   (pipeline kind from `model_index.json`, component files).
//! * [`single_file`]: single-file checkpoints in the original LDM layout (`.safetensors`,
//!   `.ckpt`): the family detected from the keys, the keys mapped to diffusers', the weights read
//!   one tensor at a time ([`StableDiffusion::load_single_file`]).
//! * [`presets`]: the published SD 1.5 / 2.1 / SDXL configs and tokenizers, compiled in.
//! * [`png`]: PNG output (atomic, no accidental overwrite) with A1111-style generation
//!   parameters, and reading them back.

pub mod embeddings;
pub(crate) mod components;
pub mod error;
pub mod flow;
pub mod flux;
pub mod image_processor;
pub mod infotext;
pub mod lora;
pub mod model;
pub mod options;
pub mod pipeline;
pub mod png;
pub mod presets;
pub mod prompt;
pub mod rng;
pub mod single_file;
pub mod stable_diffusion;
pub mod stable_diffusion_3;

/// Runs `f` on one of rayon's worker threads when `device` is the CPU (right here when this
/// already is one); on other devices simply runs `f`.
///
/// On the CPU, burn-flex and kiln's kernels hand each parallel op to rayon's global pool. From a
/// thread outside the pool (a program's main thread) every hand-off parks the caller until a
/// worker has finished and woken it: a futex round trip per op, a measurable share of a small
/// model's step (docs/performance.md#cpu-figures-2026-11-27). From inside the pool the caller works on the op itself. The
/// pipeline runs each model call through this. GPU backends keep
/// the calling thread: cubecl gives each thread its own stream, and moving calls between threads
/// could add synchronisation between streams (not measurable here: no GPU).
pub fn in_worker<R: Send>(device: &burn::tensor::Device, f: impl FnOnce() -> R + Send) -> R {
    if *device == burn::tensor::Device::flex() { rayon::scope(|_| f()) } else { f() }
}

pub use model::{resolve, resolve_config, resolve_vae, HubConfig, HubId, ModelError, ModelFolder, ModelSource, PipelineKind, ResolveOptions};
pub use png::{save_png, GenerationParams, PngError};
pub use rng::{NoiseDtype, NormalKernel, TorchGenerator};
pub use error::PipelineError;
pub use kiln_nn::LoadOptions;
pub use flux::Flux;
pub use options::{FlowOptions, GenerateOptions, PromptSyntax, SkipLayerGuidance, StepInfo, Task};
pub use pipeline::Pipeline;
pub use single_file::{Architecture, Family, SingleFile, SingleFileError};
pub use stable_diffusion::{InpaintLatents, PromptEmbeds, StableDiffusion};
pub use stable_diffusion_3::StableDiffusion3;
