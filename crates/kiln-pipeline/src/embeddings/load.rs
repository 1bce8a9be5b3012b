//! [`StableDiffusion::load_textual_inversion`] / [`StableDiffusion::add_embedding`]: an embedding's vectors added to the tokenizers
//! and text encoders.

use std::path::Path;

use burn::tensor::Tensor;

use super::{EmbeddingError, EmbeddingFile};
use crate::error::PipelineError;
use crate::StableDiffusion;

impl StableDiffusion {
    /// Adds the embedding at `path` under `token` (default: the token the file names, else its
    /// file stem, as A1111 does): the tokenizers gain `token` (and `token_1`, … for several
    /// vectors), the text encoders the rows. SDXL files (`clip_l`, `clip_g`) go to both
    /// encoders; a one-encoder file on SDXL goes to the encoder of its width. A width that fits no
    /// encoder is an error naming both widths. Returns the tokens added.
    pub fn load_textual_inversion(&mut self, path: &Path, token: Option<&str>) -> Result<Vec<String>, PipelineError> {
        let file = EmbeddingFile::open(path, token).map_err(PipelineError::Embedding)?;
        self.add_embedding(&file)
    }

    /// [`StableDiffusion::load_textual_inversion`] of an embedding file already read.
    pub fn add_embedding(&mut self, file: &EmbeddingFile) -> Result<Vec<String>, PipelineError> {
        let path = file.path.as_path();
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
