//! The error of every loader in kiln-nn: a weights file, a checkpoint or a config that could not
//! be read, named.

use std::path::PathBuf;

use thiserror::Error;

/// Why a model file or config could not be loaded. Every variant names the file.
#[derive(Debug, Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid safetensors file (corrupt or truncated?): {message}")]
    Format { path: PathBuf, message: String },
    #[error("{path} lacks {} tensor(s) the model needs: {}", names.len(), list(names))]
    Missing { path: PathBuf, names: Vec<String> },
    #[error("{path} holds {} tensor(s) the model does not use: {}", names.len(), list(names))]
    Unused { path: PathBuf, names: Vec<String> },
    #[error("{path}: {}", errors.join("; "))]
    Mismatch { path: PathBuf, errors: Vec<String> },
    #[error("malformed config {path}: {source}")]
    Config { path: PathBuf, source: serde_json::Error },
    #[error("unsupported value in {path}: {message}")]
    Unsupported { path: PathBuf, message: String },
    #[error("{dir} has no weights for variant '{variant}': {file} does not exist (weight files present: {present})")]
    MissingVariant { dir: PathBuf, variant: String, file: String, present: String },
    #[error("{dir} has no {file}{hint}")]
    MissingWeights { dir: PathBuf, file: String, hint: String },
    #[error("{path} is not a PyTorch checkpoint kiln can read: {message}")]
    Checkpoint { path: PathBuf, message: String },
    #[error("{path}: refused: its pickle calls `{global}`, which is not part of a tensor state dict (kiln never runs a checkpoint's code; convert it to safetensors if you trust it)")]
    UnsafePickle { path: PathBuf, global: String },
}

fn list(names: &[String]) -> String {
    const SHOWN: usize = 20;
    let mut s = names.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > SHOWN {
        s.push_str(&format!(", … ({} more)", names.len() - SHOWN));
    }
    s
}
