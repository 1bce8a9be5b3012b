//! # kiln-vae
//!
//! diffusers' `AutoencoderKL` (`models/autoencoders/autoencoder_kl.py`), the VAE of Stable
//! Diffusion 1.x, 2.x and XL, read from a diffusers `vae/` folder (`config.json` +
//! `diffusion_pytorch_model[.<variant>].safetensors`):
//!
//! - [`AutoencoderKL::encode`]: image `[B, in_channels, H, W]` in [-1, 1] → a
//!   [`DiagonalGaussianDistribution`] over latents `[B, latent_channels, H/f, W/f]`
//!   (`f = 2^(len(block_out_channels) - 1)`, 8 for SD); sample it with noise you supply
//!   ([`DiagonalGaussianDistribution::sample`]) or take its mode.
//! - [`AutoencoderKL::decode`]: latents → image `[B, out_channels, H·f, W·f]`, nominally in [-1, 1].
//! - Tiled encode/decode exactly as diffusers' `_tiled_encode` / `tiled_decode`, used automatically
//!   above one tile when [`AutoencoderKL::enable_tiling`] is on, or called explicitly.
//!
//! As in diffusers, `scaling_factor` / `shift_factor` are exposed but not applied: the pipeline
//! multiplies encoded latents by `scaling_factor` and divides before decoding.

pub mod autoencoder_kl;
pub mod blocks;
pub mod config;
pub mod error;
pub mod vae;

pub use autoencoder_kl::AutoencoderKL;
pub use blocks::{DownEncoderBlock2D, UNetMidBlock2D, UpDecoderBlock2D};
pub use config::{AutoencoderKLConfig, SampleSize};
pub use error::{ConfigError, VaeError};
pub use kiln_nn::{LoadError, LoadOptions};
pub use vae::{Decoder, DiagonalGaussianDistribution, Encoder};
