//! Errors of the text encoder and the tokenizer.

use std::path::PathBuf;

use kiln_nn::LoadError;
use thiserror::Error;

/// Why a text encoder could not be loaded or run.
#[derive(Debug, Error)]
pub enum TextEncoderError {
    /// Reading the config or the weights failed (every variant names the file).
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Token ids handed to [`crate::ClipTextModel::encode`] that the model cannot take.
    #[error("invalid text encoder input: {0}")]
    Input(String),
}

/// Why a tokenizer folder could not be loaded or a prompt not tokenized.
#[derive(Debug, Error)]
pub enum TokenizerError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("malformed {path}: {message}")]
    Format { path: PathBuf, message: String },
    #[error("unsupported tokenizer in {path}: {message}")]
    Unsupported { path: PathBuf, message: String },
    #[error("tokenizing {prompt:?} failed: {message}")]
    Encode { prompt: String, message: String },
}
