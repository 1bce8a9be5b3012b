//! # kiln-pipeline
//!
//! The pieces of diffusers' pipelines that are not models or schedulers:
//! * [`TorchGenerator`], a host-side generator that draws bit for bit what
//!   `torch.Generator("cpu").manual_seed(seed)` draws (`torch.randn`, `torch.rand`), so that kiln
//!   runs reproduce diffusers runs seeded the same way. It is the [`kiln_scheduler::NoiseSource`]
//!   the stochastic samplers take.
//! * [`model`]: `--model` resolution — a diffusers folder or a Hub id through the Hub cache — and
//!   the checked [`ModelFolder`] (pipeline kind from `model_index.json`, component files).
//! * [`png`]: PNG output (atomic, no accidental overwrite) with A1111-style generation
//!   parameters, and reading them back.
//! * [`info`]: what `kiln info` prints about a PNG, a model, a component or a safetensors file.
//! * [`StableDiffusion`]: the SD 1.x/2.x, SDXL and inpainting pipelines — txt2img, img2img and
//!   inpainting ([`Task`]) with diffusers' stages; [`image_processor`] converts images and masks.

pub mod bench;
pub mod image_processor;
pub mod info;
pub mod model;
pub mod png;
pub mod rng;
pub mod stable_diffusion;

pub use model::{resolve, HubConfig, HubId, ModelError, ModelFolder, ModelSource, PipelineKind, ResolveOptions};
pub use png::{save_png, GenerationParams, PngError};
pub use rng::{NoiseDtype, NormalKernel, TorchGenerator};
pub use stable_diffusion::{GenerateOptions, InpaintLatents, PipelineError, PromptEmbeds, StableDiffusion, StepInfo, Task};
