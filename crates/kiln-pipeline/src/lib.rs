//! # kiln-pipeline
//!
//! The pieces of diffusers' pipelines that are not models or schedulers. For now:
//! [`TorchGenerator`], a host-side generator that draws bit for bit what
//! `torch.Generator("cpu").manual_seed(seed)` draws (`torch.randn`, `torch.rand`), so that kiln
//! runs reproduce diffusers runs seeded the same way. It is the [`kiln_scheduler::NoiseSource`]
//! the stochastic samplers take.

pub mod rng;
pub mod stable_diffusion;

pub use rng::{NoiseDtype, NormalKernel, TorchGenerator};
pub use stable_diffusion::{PipelineError, StableDiffusion, StepInfo, Txt2ImgOptions};
