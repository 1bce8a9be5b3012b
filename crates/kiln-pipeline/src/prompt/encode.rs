//! The chunks of an A1111 prompt through the text encoders ([`cond`]), and
//! `StableDiffusion::encode_prompt` under `--prompt-syntax a1111`.

use burn::tensor::{Tensor, TensorData};
use kiln_text_encoder::{ClipTextModel, ClipTokenizer};
use kiln_unet::TextTimeCond;

use super::{tokenize_line, Chunk};
use crate::error::PipelineError;
use crate::model::PipelineKind;
use crate::options::GenerateOptions;
use crate::stable_diffusion::{conditioning, PromptEmbeds};
use crate::StableDiffusion;

/// `process_tokens`: one chunk through the encoder (the hidden state of [`conditioning`]),
/// weighted, its mean restored; and the pooled (projected) output where the encoder has one.
///
/// # Shapes
/// - returns `([1, 77, width], [1, projection_dim])`
fn process_tokens(sd: &StableDiffusion, tokenizer: &ClipTokenizer, encoder: &ClipTextModel, chunk: &Chunk, clip_skip: Option<usize>) -> Result<(Tensor<3>, Option<Tensor<2>>), PipelineError> {
    let mut tokens = chunk.tokens.clone();
    // SD 2's tokenizer pads with another token than its end token
    let (id_end, id_pad) = (tokenizer.eos_token_id(), tokenizer.pad_token_id());
    if id_end != id_pad {
        if let Some(i) = tokens.iter().position(|&t| t == id_end) {
            tokens[i + 1..].iter_mut().for_each(|t| *t = id_pad);
        }
    }
    let out = crate::in_worker(&sd.device, || encoder.encode(&[tokens], &sd.device))?;
    let pooled = out.text_embeds.clone();
    let z = conditioning(encoder, out, sd.kind == PipelineKind::StableDiffusionXL, clip_skip)?;
    // EmphasisOriginal: z · multipliers, then the original mean restored
    let device = z.device();
    let weights: Vec<f32> = chunk.multipliers.iter().map(|&w| w as f32).collect();
    let weights = Tensor::<1>::from_data(TensorData::new(weights, [chunk.multipliers.len()]), &device).reshape([1, chunk.multipliers.len(), 1]);
    let original_mean = z.clone().mean();
    let weighted = z * weights;
    let new_mean = weighted.clone().mean();
    let z = weighted * (original_mean / new_mean).reshape([1, 1, 1]);
    Ok((z, pooled))
}

/// A1111's conditioning of `line`: every encoder's chunks concatenated on the sequence, the
/// encoders' on the features, and the first chunk's pooled output.
///
/// # Shapes
/// - returns `([1, 77·chunks, width], [1, projection_dim])`
pub fn cond(sd: &StableDiffusion, line: &str, line_2: &str, clip_skip: Option<usize>) -> Result<(Tensor<3>, Option<Tensor<2>>), PipelineError> {
    let xl = sd.kind == PipelineKind::StableDiffusionXL;
    let mut encoders: Vec<(&ClipTokenizer, &ClipTextModel, &str)> = vec![(&sd.tokenizer, &sd.text_encoder, line)];
    if let (true, Some(t), Some(e)) = (xl, &sd.tokenizer_2, &sd.text_encoder_2) {
        encoders.push((t, e, line_2));
    }
    let mut parts = Vec::new();
    let mut pooled = None;
    let mut count = None;
    for (tokenizer, encoder, text) in encoders {
        let chunks = tokenize_line(text, tokenizer)?;
        if count.is_some_and(|c| c != chunks.len()) {
            return Err(PipelineError::Input {
                what: "the prompts of SDXL's two encoders",
                value: format!("{line:?} and {line_2:?}"),
                allowed: "the same number of 75-token chunks under --prompt-syntax a1111".into(),
            });
        }
        count = Some(chunks.len());
        let mut zs = Vec::with_capacity(chunks.len());
        for (i, chunk) in chunks.iter().enumerate() {
            let (z, p) = process_tokens(sd, tokenizer, encoder, chunk, clip_skip)?;
            zs.push(z);
            if i == 0 && p.is_some() {
                pooled = p;
            }
        }
        parts.push(Tensor::cat(zs, 1));
    }
    Ok((Tensor::cat(parts, 2), pooled))
}

/// Pads the shorter of `c` and `u` with `empty` (one chunk) to the same length.
fn pad_cond_uncond(mut c: Tensor<3>, mut u: Tensor<3>, empty: &Tensor<3>) -> (Tensor<3>, Tensor<3>) {
    while u.dims()[1] < c.dims()[1] {
        u = Tensor::cat(vec![u, empty.clone()], 1);
    }
    while c.dims()[1] < u.dims()[1] {
        c = Tensor::cat(vec![c, empty.clone()], 1);
    }
    (c, u)
}

impl StableDiffusion {
    /// [`StableDiffusion::encode_prompt`] under `--prompt-syntax a1111`.
    pub(crate) fn encode_prompt_a1111(&self, o: &GenerateOptions, do_cfg: bool, height: usize, width: usize) -> Result<PromptEmbeds, PipelineError> {
        let sd = self;
        let n = o.num_images_per_prompt;
        let or = |a: &Option<String>, b: &str| a.as_deref().filter(|s| !s.is_empty()).unwrap_or(b).to_string();
        let (c, pooled) = cond(sd, &o.prompt, &or(&o.prompt_2, &o.prompt), o.clip_skip)?;
        let xl = sd.kind == PipelineKind::StableDiffusionXL;
        let time_ids = match &pooled {
            Some(p) if xl => Some(sd.add_time_ids(o, height, width, p.dims()[1])?),
            _ => None,
        };
        let text_time = |pooled: Tensor<2>, copies: usize| time_ids.clone().map(|t| TextTimeCond { text_embeds: pooled, time_ids: vec![t; copies] });
        if !do_cfg {
            let tt = pooled.clone().and_then(|p| text_time(p.repeat_dim(0, n), n));
            return Ok(PromptEmbeds { prompt_embeds: c.repeat_dim(0, n), text_time: tt });
        }
        let (u, u_pooled) = if xl && o.negative_prompt.is_none() && sd.force_zeros_for_empty_prompt {
            (c.zeros_like(), pooled.as_ref().map(|p| p.zeros_like()))
        } else {
            let negative = o.negative_prompt.clone().unwrap_or_default();
            cond(sd, &negative, &or(&o.negative_prompt_2, &negative), o.clip_skip)?
        };
        let (c, u) = if c.dims()[1] != u.dims()[1] {
            let (empty, _) = cond(sd, "", "", o.clip_skip)?;
            pad_cond_uncond(c, u, &empty)
        } else {
            (c, u)
        };
        let tt = match (pooled, u_pooled) {
            (Some(p), Some(up)) => text_time(Tensor::cat(vec![up.repeat_dim(0, n), p.repeat_dim(0, n)], 0), 2 * n),
            _ => None,
        };
        Ok(PromptEmbeds { prompt_embeds: Tensor::cat(vec![u.repeat_dim(0, n), c.repeat_dim(0, n)], 0), text_time: tt })
    }
}
