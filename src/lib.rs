//! # kiln
//!
//! Stable Diffusion-family image generation in Rust, on burn: the facade over kiln's crates.
//!
//! - [`pipeline`]: the SD 1.x/2.x, SDXL and inpainting pipelines (`StableDiffusion::load`, then `txt2img`, `img2img`, `inpaint`),
//!   the SD 3/3.5 and FLUX.1 pipelines (`StableDiffusion3`, `Flux`), `Pipeline` (any of them, as
//!   `model_index.json` says) and the torch-compatible seed generator;
//! - [`scheduler`]: diffusers' samplers;
//! - [`unet`], [`transformer`], [`vae`], [`text_encoder`], [`nn`]: the models and their layers;
//! - [`ops`]: the ops the layers run (kiln's CPU kernels, the measured GPU routes, device checks).
//!
//! ```no_run
//! use kiln::burn::tensor::{DType, Device};
//! use kiln::pipeline::{LoadOptions, StableDiffusion, GenerateOptions};
//!
//! let device = Device::flex();
//! let pipe = StableDiffusion::load("assets/fixtures/models/sd1".as_ref(), &LoadOptions::new(&device))?;
//! let options = GenerateOptions { prompt: "a red circle".into(), width: Some(64), height: Some(64), num_inference_steps: 10, ..Default::default() };
//! let images = pipe.txt2img(&options, &mut |_, _| true)?;
//! # Ok::<(), kiln::pipeline::PipelineError>(())
//! ```

pub use burn;
pub use kiln_nn as nn;
pub use kiln_ops as ops;
pub use kiln_pipeline as pipeline;
pub use kiln_scheduler as scheduler;
pub use kiln_text_encoder as text_encoder;
pub use kiln_transformer as transformer;
pub use kiln_unet as unet;
pub use kiln_vae as vae;
