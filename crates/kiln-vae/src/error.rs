use kiln_nn::LoadError;
use thiserror::Error;

/// A config value kiln's `AutoencoderKL` cannot build, naming the key and the value.
#[derive(Debug, Clone, Error, PartialEq)]
#[error("{key} = {value}: {reason}")]
pub struct ConfigError {
    pub key: String,
    pub value: String,
    pub reason: String,
}

impl ConfigError {
    pub(crate) fn new(key: &str, value: impl std::fmt::Display, reason: impl Into<String>) -> Self {
        Self { key: key.into(), value: value.to_string(), reason: reason.into() }
    }
}

/// Everything that can go wrong building or running the VAE.
#[derive(Debug, Error)]
pub enum VaeError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("unsupported AutoencoderKL config: {0}")]
    Config(#[from] ConfigError),
    /// A tensor handed to encode/decode/sample that the model cannot take (wrong channel count,
    /// empty, too small to downsample).
    #[error("{0}")]
    Input(String),
}
