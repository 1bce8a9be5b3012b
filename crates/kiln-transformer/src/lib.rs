//! # kiln-transformer
//!
//! The denoisers of the flow-matching families, as diffusers 0.42.1 implements them: SD 3/3.5's
//! MMDiT ([`Sd3Transformer2DModel`], `models/transformers/transformer_sd3.py`) and FLUX.1's
//! transformer ([`FluxTransformer2DModel`], `models/transformers/transformer_flux.py`), configured from
//! `transformer/config.json` and loaded from `diffusion_pytorch_model[.variant].safetensors`.
//! The layers the families share live beside it: the adaptive norms ([`norm`]), the joint
//! attention ([`attention`]), the tanh-GELU feed-forward ([`feed_forward`]) and the patch, timestep
//! and text embeddings ([`embeddings`]).
//!
//! Tested against diffusers on tiny random models (`assets/fixtures/models/flow/transformer_*`,
//! written by `scripts/fixtures/flow_models.py`).
//!
//! ```no_run
//! # use burn::prelude::*;
//! # use kiln_transformer::LoadOptions;
//! # fn main() -> Result<(), kiln_transformer::TransformerError> {
//! let device = Device::flex();
//! let model = kiln_transformer::Sd3Transformer2DModel::load("sd35m/transformer".as_ref(), &LoadOptions::new(&device))?;
//! let latents = Tensor::<4>::zeros([1, 16, 128, 128], &device);
//! let context = Tensor::<3>::zeros([1, 333, 4096], &device);
//! let pooled = Tensor::<2>::zeros([1, 2048], &device);
//! let velocity = model.forward(latents, context, pooled, &[1000.0], &[])?;
//! # Ok(()) }
//! ```

pub mod attention;
pub mod embeddings;
pub mod error;
pub mod feed_forward;
pub mod flux;
pub mod norm;
pub mod rope;
pub mod sd3;

pub use error::TransformerError;
pub use flux::{FluxTransformer2DModel, FluxTransformerConfig};
pub use kiln_nn::LoadOptions;
pub use sd3::{Sd3Transformer2DModel, Sd3TransformerConfig};
