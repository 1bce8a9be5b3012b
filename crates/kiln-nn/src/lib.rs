//! # kiln-nn
//!
//! Building blocks shared by kiln's UNet, VAE and text encoders, written after diffusers'
//! `models/` modules with struct fields named like diffusers' state-dict keys, so checkpoints load
//! without remapping: [`ResnetBlock2D`], [`Attention`], [`Downsample2D`], [`Upsample2D`],
//! [`timestep_embedding`] + [`TimestepEmbedding`], the spatial transformer
//! ([`Transformer2DModel`], [`BasicTransformerBlock`], [`FeedForward`] with GEGLU), and [`load`] (safetensors through burn-store,
//! with missing and unused tensors reported by name).
//!
//! The layers call their convolutions, linear layers ([`Linear`], PyTorch's weight layout),
//! GroupNorms, attention and GEGLU through kiln-ops
//! ([`kiln_ops::conv2d_forward`], [`kiln_ops::group_norm`], ...), which picks the kernel for the
//! device; nothing here knows about devices.

pub mod attention;
pub mod embeddings;
pub mod error;
pub mod linear;
pub mod load;
pub mod merge;
pub mod resnet;
pub mod safetensors;
pub mod sampling;
pub mod torch_checkpoint;
pub mod transformer;
pub mod weights;

pub use attention::{Attention, AttentionConfig};
pub use embeddings::{timestep_embedding, TimestepEmbedding, TimestepEmbeddingConfig};
pub use error::LoadError;
pub use linear::{Linear, LinearConfig};
pub use merge::{merge_deltas, param_names, restore, Delta, Factor, Originals, Update};
pub use load::{load_safetensors, pickle_file_name, read_config, read_text_file, sharded_index_name, weights_file_name, weights_path, LoadOptions, CONFIG_LIMIT};
pub use safetensors::{dtype_size, header_bytes, read_safetensors_header, SafetensorsHeader, TensorEntry};
pub use resnet::{ResnetBlock2D, ResnetBlock2DConfig};
pub use sampling::{Downsample2D, Downsample2DConfig, Upsample2D, Upsample2DConfig};
pub use torch_checkpoint::{is_zip, read_torch_checkpoint, TorchCheckpoint, TorchTensor};
pub use weights::{burn_dtype, StoredTensor, Transform, Weight, Weights, WeightsFile};
pub use transformer::{
    BasicTransformerBlock, BasicTransformerBlockConfig, FeedForward, FeedForwardConfig, Geglu, InferenceDropout, Projection,
    Transformer2DModel, Transformer2DModelConfig,
};

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::PaddingConfig2d;
use burn::tensor::{DType, Device};

/// A `nn.Conv2d(c_in, c_out, kernel_size=k, stride=s, padding=p)` as PyTorch builds it.
pub fn conv2d(c_in: usize, c_out: usize, kernel: usize, stride: usize, padding: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([c_in, c_out], [kernel, kernel])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(padding, padding, padding, padding))
        .init(device)
}

/// The dtype a model computes in, read from one of its convolutions: the bias's (on the CPU a
/// half-precision file's weights stay f16/bf16 while biases take the compute dtype,
/// [`weights::LoadCast`]), the weight's where there is no bias.
pub fn compute_dtype(conv: &Conv2d) -> DType {
    match &conv.bias {
        Some(b) => b.val().dtype(),
        None => conv.weight.val().dtype(),
    }
}

/// Re-exported: the models cast their parameters with it.
pub use kiln_ops::cast_module;
