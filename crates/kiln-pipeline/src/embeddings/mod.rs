//! Textual-inversion embeddings: new tokens whose input vectors come from a file, as diffusers'
//! `TextualInversionLoaderMixin.load_textual_inversion` loads them
//! ([`crate::StableDiffusion::load_textual_inversion`], in [`load`]).
//!
//! Formats, by their keys: A1111's `.pt` (`string_to_param.*`, read without running its pickle) and
//! `.safetensors` (`emb_params`), diffusers' `learned_embeds` (`{token: vector}`), SDXL's
//! (`clip_l` for the first text encoder, `clip_g` for the second). An embedding of n vectors adds
//! the tokens `TOKEN`, `TOKEN_1`, …, `TOKEN_{n-1}`, and a prompt's `TOKEN` is expanded to all of
//! them (`_maybe_convert_prompt`).

pub mod load;

use std::path::{Path, PathBuf};

use burn::tensor::{DType, TensorData};
use kiln_nn::{burn_dtype, LoadError, WeightsFile};
use thiserror::Error;

/// Why an embedding cannot be loaded. Every variant names the file.
#[derive(Debug, Error)]
pub enum EmbeddingError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("{path} is not a textual-inversion embedding kiln reads: {message}")]
    Format { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Mismatch { path: PathBuf, message: String },
}

/// An embedding file, read: its vectors for each text encoder (`[n, width]`, f32), and the token
/// the file names (diffusers' format) or its file stem (A1111's).
#[derive(Debug, Clone)]
pub struct EmbeddingFile {
    pub path: PathBuf,
    pub token: String,
    /// (`text_encoder` or `text_encoder_2`, the vectors' data `[n, width]`).
    pub vectors: Vec<(&'static str, TensorData)>,
}

impl EmbeddingFile {
    /// Reads `path`. `token`: the token to add instead of the file's (`PATH:TOKEN`).
    pub fn open(path: &Path, token: Option<&str>) -> Result<Self, EmbeddingError> {
        let file = WeightsFile::open(path)?;
        let bad = |message: String| EmbeddingError::Format { path: path.into(), message };
        let read = |name: &str| -> Result<TensorData, EmbeddingError> {
            let t = file.get(name).expect("listed");
            let dtype = burn_dtype(&t.dtype)
                .filter(|d| matches!(d, DType::F32 | DType::F16 | DType::BF16))
                .ok_or_else(|| bad(format!("`{name}` is {}; embeddings are f32, f16 or bf16", t.dtype)))?;
            let dims: Vec<usize> = match t.shape.as_slice() {
                [d] => vec![1, *d as usize],
                [n, d] => vec![*n as usize, *d as usize],
                s => return Err(bad(format!("`{name}` has shape {s:?}; an embedding is [vectors, width]"))),
            };
            if dims[0] == 0 || dims[0] > 75 {
                return Err(bad(format!("`{name}` has {} vectors; a prompt holds at most 75", dims[0])));
            }
            Ok(TensorData::from_bytes_vec(file.read(name)?, dims, dtype).convert_dtype(DType::F32))
        };
        let names: Vec<&str> = file.tensors().iter().map(|t| t.name.as_str()).collect();
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let (file_token, vectors) = if names.contains(&"clip_l") || names.contains(&"clip_g") {
            let mut v = Vec::new();
            if names.contains(&"clip_l") {
                v.push(("text_encoder", read("clip_l")?));
            }
            if names.contains(&"clip_g") {
                v.push(("text_encoder_2", read("clip_g")?));
            }
            (stem, v)
        } else if names.contains(&"emb_params") {
            (stem, vec![("text_encoder", read("emb_params")?)])
        } else if let Some(name) = names.iter().find(|n| n.starts_with("string_to_param.")) {
            if names.iter().filter(|n| n.starts_with("string_to_param.")).count() > 1 {
                return Err(bad("more than one `string_to_param` entry".into()));
            }
            (stem, vec![("text_encoder", read(name)?)])
        } else if let [name] = names.as_slice() {
            // diffusers' learned_embeds: {token: vector}
            (name.to_string(), vec![("text_encoder", read(name)?)])
        } else {
            let first = names.iter().take(4).map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ");
            return Err(bad(format!("no `emb_params`, `string_to_param`, `clip_l`/`clip_g`, nor one `{{token: vector}}` entry ({} tensors: {first})", names.len())));
        };
        let token = token.map(str::to_string).unwrap_or(file_token);
        if token.is_empty() || token.chars().any(char::is_whitespace) {
            return Err(bad(format!("token {token:?}: a token is one word; name it with PATH:TOKEN")));
        }
        Ok(Self { path: path.into(), token, vectors })
    }
}
