//! # kiln-unet
//!
//! diffusers' `UNet2DConditionModel` on burn, configured from `unet/config.json`: the SD 1.x
//! (conv projections, one head count), SD 2.x (linear projections, per-block head counts,
//! `upcast_attention`), SDXL (`transformer_layers_per_block` lists, `text_time` added
//! conditioning) and 9-channel inpainting layouts.
//!
//! Supported config values: `CrossAttnDownBlock2D` / `DownBlock2D` / `UNetMidBlock2DCrossAttn` /
//! `UpBlock2D` / `CrossAttnUpBlock2D`; `attention_head_dim` (the head count, diffusers' legacy
//! meaning) or `num_attention_heads`, each an int or a per-block list; `layers_per_block`,
//! `transformer_layers_per_block` and `cross_attention_dim` (equal entries) as int or list;
//! `use_linear_projection`; `upcast_attention`; `addition_embed_type = "text_time"`;
//! `in_channels` / `out_channels`; `flip_sin_to_cos`; `freq_shift`; `center_input_sample`;
//! `time_embedding_dim`; `conv_in_kernel` / `conv_out_kernel`; `downsample_padding`;
//! `mid_block_scale_factor`; `norm_num_groups`; `norm_eps`; `resnet_time_scale_shift = "default"`.
//! Anything else (class embeddings, `time_cond_proj_dim`, `encoder_hid_dim`, other block types,
//! `scale_shift` resnets, gated attention, ...) is a [`ConfigError::Unsupported`] naming the key
//! and value. Latents of any size work (sizes that are not a multiple of `2^num_upsamplers`
//! upsample to the skip connection's size, like diffusers' `forward_upsample_size`).
//!
//! Tested against diffusers 0.42.1 on tiny random UNets (`assets/fixtures/models/*/unet`,
//! `assets/fixtures/unet/*`): max abs error ≈ 2e-7 in f32, ≤ 6.4e-4 in f16 on flex.
//!
//! ```no_run
//! # use burn::prelude::*;
//! # use kiln_unet::LoadOptions;
//! # fn main() -> Result<(), kiln_unet::UNetError> {
//! let device = Device::flex();
//! let unet = kiln_unet::UNet2DConditionModel::load("sd15/unet".as_ref(), &LoadOptions::new(&device))?;
//! let latents = Tensor::<4>::zeros([2, 4, 64, 64], &device);
//! let context = Tensor::<3>::zeros([2, 77, 768], &device);
//! let noise_pred = unet.forward(latents, &[999.0], context, None)?;
//! # Ok(()) }
//! ```

pub mod blocks;
pub mod config;
pub mod unet;

pub use blocks::{DownBlock, MidBlock, UpBlock};
pub use config::{ConfigError, PerBlock, UNet2DConditionConfig};
pub use kiln_nn::LoadOptions;
pub use unet::{TextTimeCond, UNet2DConditionModel, UNetError};
