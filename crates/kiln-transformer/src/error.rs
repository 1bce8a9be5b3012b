//! Errors of the transformer models.

use kiln_nn::LoadError;
use thiserror::Error;

/// Why a transformer could not be loaded or run.
#[derive(Debug, Error)]
pub enum TransformerError {
    /// Reading the config or the weights failed (every variant names the file).
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Inputs the model cannot take (shapes, sizes beyond the position table), named.
    #[error("invalid transformer input: {0}")]
    Input(String),
}
