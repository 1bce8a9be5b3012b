//! Textual-inversion embeddings: new tokens whose input vectors come from a file, as diffusers'
//! `TextualInversionLoaderMixin.load_textual_inversion` loads them
//! ([`StableDiffusion::load_textual_inversion`]).
//!
//! Formats, by their keys: A1111's `.pt` (`string_to_param.*`, read without running its pickle) and
//! `.safetensors` (`emb_params`), diffusers' `learned_embeds` (`{token: vector}`), SDXL's
//! (`clip_l` for the first text encoder, `clip_g` for the second). An embedding of n vectors adds
//! the tokens `TOKEN`, `TOKEN_1`, …, `TOKEN_{n-1}`, and a prompt's `TOKEN` is expanded to all of
//! them (`_maybe_convert_prompt`).

use std::path::{Path, PathBuf};

use burn::tensor::{DType, Tensor, TensorData};
use kiln_nn::{LoadError, WeightsFile};
use thiserror::Error;

use crate::error::PipelineError;
use crate::StableDiffusion;

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
            let dtype = match t.dtype.as_str() {
                "F32" => DType::F32,
                "F16" => DType::F16,
                "BF16" => DType::BF16,
                d => return Err(bad(format!("`{name}` is {d}; embeddings are f32, f16 or bf16"))),
            };
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

impl StableDiffusion {
    /// Adds the embedding at `path` under `token` (default: the token the file names, else its
    /// file stem, as A1111 does): the tokenizers gain `token` (and `token_1`, … for several
    /// vectors), the text encoders the rows. SDXL files (`clip_l`, `clip_g`) go to both
    /// encoders; a one-encoder file on SDXL goes to the encoder of its width. A width that fits no
    /// encoder is an error naming both widths. Returns the tokens added.
    pub fn load_textual_inversion(&mut self, path: &Path, token: Option<&str>) -> Result<Vec<String>, PipelineError> {
        let file = EmbeddingFile::open(path, token).map_err(PipelineError::Embedding)?;
        let mismatch = |message: String| PipelineError::Embedding(EmbeddingError::Mismatch { path: path.into(), message });
        let width = |c: &str| match c {
            "text_encoder_2" => self.text_encoder_2.as_ref().map(|t| t.text_model.embeddings.token_embedding.weight.dims()[1]),
            _ => Some(self.text_encoder.text_model.embeddings.token_embedding.weight.dims()[1]),
        };
        // which encoder each set of vectors goes to (a one-encoder file: the encoder of its width)
        let mut plan = Vec::new();
        for (component, data) in &file.vectors {
            let w = data.shape()[1];
            let target = if file.vectors.len() == 1 {
                ["text_encoder", "text_encoder_2"].into_iter().find(|c| width(c) == Some(w))
            } else {
                Some(*component).filter(|c| width(c) == Some(w))
            };
            let Some(target) = target else {
                let widths: Vec<String> = ["text_encoder", "text_encoder_2"].iter().filter_map(|c| width(c).map(|w| format!("{c} {w}"))).collect();
                return Err(mismatch(format!("vectors of width {w} ({component}), but this model's text encoders are {}: an embedding for another model family?", widths.join(", "))));
            };
            plan.push((target, data.clone()));
        }
        let n = plan[0].1.shape()[0];
        if plan.iter().any(|(_, d)| d.shape()[0] != n) {
            return Err(mismatch("`clip_l` and `clip_g` hold different numbers of vectors".into()));
        }
        let tokens: Vec<String> = (0..n).map(|i| if i == 0 { file.token.clone() } else { format!("{}_{i}", file.token) }).collect();
        for (target, data) in plan {
            let (tokenizer, encoder) = match target {
                "text_encoder_2" => (self.tokenizer_2.as_mut().expect("an SDXL model"), self.text_encoder_2.as_mut().expect("an SDXL model")),
                _ => (&mut self.tokenizer, &mut self.text_encoder),
            };
            let ids = tokenizer.add_tokens(&tokens).map_err(PipelineError::Tokenizer)?;
            let first = encoder.vocab_size() as u32;
            if ids.iter().enumerate().any(|(i, &id)| id != first + i as u32) {
                return Err(mismatch(format!("the tokenizer gave the new tokens ids {ids:?}, the embedding table has {first} rows")));
            }
            encoder.add_token_embeddings(Tensor::<2>::from_data(data, &self.device)).map_err(PipelineError::TextEncoder)?;
        }
        Ok(tokens)
    }
}
