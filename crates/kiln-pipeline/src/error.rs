//! [`PipelineError`]: why a pipeline could not be built or run.

use std::path::PathBuf;

use kiln_nn::LoadError;
use kiln_scheduler::SchedulerError;
use kiln_text_encoder::{TextEncoderError, TokenizerError};
use kiln_transformer::TransformerError;
use kiln_unet::UNetError;
use kiln_vae::VaeError;
use thiserror::Error;

use crate::model::ModelError;
use crate::single_file::SingleFileError;

/// Why a pipeline could not be built or run. Every variant names the value and what is allowed.
#[derive(Debug, Error)]
pub enum PipelineError {
    #[error("model folder {path} has no {component}/ (model_index.json lists it)")]
    MissingComponent { path: PathBuf, component: String },
    #[error("{0}")]
    Model(#[from] ModelError),
    #[error("{0}")]
    SingleFile(#[from] SingleFileError),
    #[error("{0}")]
    Lora(crate::lora::LoraError),
    #[error("{0}")]
    Embedding(crate::embeddings::EmbeddingError),
    #[error("{0}")]
    Load(#[from] LoadError),
    #[error("{0}")]
    TextEncoder(#[from] TextEncoderError),
    #[error("{0}")]
    Tokenizer(#[from] TokenizerError),
    #[error("{0}")]
    UNet(#[from] UNetError),
    #[error("{0}")]
    Transformer(#[from] TransformerError),
    #[error("{0}")]
    Vae(#[from] VaeError),
    #[error("{0}")]
    Scheduler(#[from] SchedulerError),
    #[error("{what} must be {allowed}, got {value}")]
    Input { what: &'static str, value: String, allowed: String },
    #[error("{0}")]
    Unsupported(String),
    #[error(
        "{width}x{height} (UNet batch {batch}) needs about {needed_gib:.1} GiB at its peak (rough estimate), \
         the device has {available_gib:.1} GiB available; use a smaller size or fewer images"
    )]
    TooLarge { width: usize, height: usize, batch: usize, needed_gib: f64, available_gib: f64 },
    #[error("{component} produced NaN or infinite values{detail}; no image was made (broken weights, or a schedule that diverges)")]
    NonFinite { component: &'static str, detail: String },
    /// An init image or mask that cannot be read, or is too large to decode.
    #[error("{0}")]
    Image(String),
    #[error("generation cancelled by the callback at step {0}")]
    Cancelled(usize),
}
