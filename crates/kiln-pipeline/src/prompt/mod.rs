//! AUTOMATIC1111's prompts (`--prompt-syntax a1111`): attention weights, `BREAK`, and prompts of
//! any length, encoded as A1111 encodes them.
//!
//! A port of `modules/sd_hijack_clip.py` (`FrozenCLIPEmbedderWithCustomWordsBase`):
//! [`parser::parse_prompt_attention`] splits the prompt into weighted pieces, each tokenized on
//! its own; [`tokenize_line`] packs the tokens into chunks of 75 (a chunk that would cut the text
//! within 20 tokens after a comma moves that text to the next chunk, `comma_padding_backtrack`;
//! `BREAK` starts a chunk), each then `[BOS] tokens… [EOS] [EOS]…` of 77; every chunk goes through
//! the text encoder on its own (`process_tokens`, with SD 2's padding after the end token), the
//! weights multiply the hidden states and the chunk's mean is restored
//! (`sd_emphasis.EmphasisOriginal`), and the chunks are concatenated along the sequence. SDXL does
//! this for each encoder and takes the pooled output of the first chunk
//! (`sd_models_xl.get_learned_conditioning`). The shorter of the prompt and the negative prompt is
//! padded with the empty prompt's conditioning to the same number of chunks
//! (`sd_samplers_cfg_denoiser.pad_cond_uncond`).

pub mod parser;

use burn::tensor::{Tensor, TensorData};
use kiln_text_encoder::{ClipTextModel, ClipTokenizer};
use kiln_unet::TextTimeCond;

use crate::error::PipelineError;
use crate::model::PipelineKind;
use crate::options::GenerateOptions;
use crate::stable_diffusion::PromptEmbeds;
use crate::StableDiffusion;

/// Tokens a chunk holds besides its start and end tokens.
pub const CHUNK: usize = 75;
/// `opts.comma_padding_backtrack`: how far back a comma may be to move the rest to a new chunk.
pub const COMMA_BACKTRACK: usize = 20;
/// Chunks a prompt may take (4800 tokens; each is one text-encoder run).
pub const MAX_CHUNKS: usize = 64;

/// One chunk: 77 token ids and their weights.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    pub tokens: Vec<u32>,
    pub multipliers: Vec<f64>,
}

/// `tokenize_line`: the prompt's chunks for `tokenizer`.
pub fn tokenize_line(line: &str, tokenizer: &ClipTokenizer) -> Result<Vec<Chunk>, PipelineError> {
    let bad = |message: String| PipelineError::Input { what: "an A1111 prompt", value: line.to_string(), allowed: message };
    // embeddings of several vectors expand first (diffusers' `maybe_convert_prompt`)
    let line = tokenizer.maybe_convert_prompt(line)?;
    let parsed = parser::parse_prompt_attention(&line).map_err(bad)?;
    let (id_start, id_end) = (tokenizer.bos_token_id(), tokenizer.eos_token_id());
    let comma = tokenizer.token_id(",</w>");
    let mut chunks: Vec<Chunk> = Vec::new();
    let mut chunk = Chunk { tokens: Vec::new(), multipliers: Vec::new() };
    let mut last_comma: Option<usize> = None;
    let next_chunk = |chunk: &mut Chunk, chunks: &mut Vec<Chunk>, last_comma: &mut Option<usize>| {
        let mut done = std::mem::replace(chunk, Chunk { tokens: Vec::new(), multipliers: Vec::new() });
        let to_add = CHUNK.saturating_sub(done.tokens.len());
        done.tokens.extend(std::iter::repeat_n(id_end, to_add));
        done.multipliers.extend(std::iter::repeat_n(1.0, to_add));
        done.tokens.insert(0, id_start);
        done.tokens.push(id_end);
        done.multipliers.insert(0, 1.0);
        done.multipliers.push(1.0);
        *last_comma = None;
        chunks.push(done);
    };
    for (text, weight) in &parsed {
        if text == "BREAK" && *weight == parser::BREAK {
            next_chunk(&mut chunk, &mut chunks, &mut last_comma);
            continue;
        }
        for token in tokenizer.ids(text)? {
            if Some(token) == comma {
                last_comma = Some(chunk.tokens.len());
            } else if let Some(at) = last_comma.filter(|at| chunk.tokens.len() == CHUNK && chunk.tokens.len() - at <= COMMA_BACKTRACK) {
                // the text after the comma moves to the next chunk
                let reloc_tokens = chunk.tokens.split_off(at + 1);
                let reloc_mults = chunk.multipliers.split_off(at + 1);
                next_chunk(&mut chunk, &mut chunks, &mut last_comma);
                chunk = Chunk { tokens: reloc_tokens, multipliers: reloc_mults };
            }
            if chunk.tokens.len() == CHUNK {
                next_chunk(&mut chunk, &mut chunks, &mut last_comma);
            }
            chunk.tokens.push(token);
            chunk.multipliers.push(*weight);
        }
    }
    if !chunk.tokens.is_empty() || chunks.is_empty() {
        next_chunk(&mut chunk, &mut chunks, &mut last_comma);
    }
    if chunks.len() > MAX_CHUNKS {
        return Err(bad(format!("a prompt of at most {MAX_CHUNKS} chunks of 75 tokens; this one takes {}", chunks.len())));
    }
    Ok(chunks)
}

/// A1111's extra-network references in a prompt (`modules/extra_networks.py`: `re_extra_net =
/// <(\w+):([^>]+)>`, arguments split on `:`): the prompt with them removed, and each
/// `(kind, name, multiplier)` (`<lora:NAME>` is 1.0; `<lora:NAME:W>` W).
pub fn extract_extra_networks(prompt: &str) -> Result<(String, Vec<(String, String, f64)>), PipelineError> {
    let mut text = String::with_capacity(prompt.len());
    let mut found = Vec::new();
    let mut rest = prompt;
    while let Some(start) = rest.find('<') {
        let after = &rest[start + 1..];
        let kind_len = after.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(after.len());
        let parsed = (kind_len > 0 && after[kind_len..].starts_with(':'))
            .then(|| {
                let args = &after[kind_len + 1..];
                let end = args.find('>')?;
                (end > 0 && !args[..end].contains('>')).then_some((&after[..kind_len], &args[..end], start + 1 + kind_len + 1 + end + 1))
            })
            .flatten();
        let Some((kind, args, len)) = parsed else {
            text.push_str(&rest[..start + 1]);
            rest = &rest[start + 1..];
            continue;
        };
        let mut parts = args.split(':');
        let name = parts.next().unwrap_or_default().to_string();
        let multiplier = match parts.next() {
            Some(w) => w.trim().parse::<f64>().ok().filter(|w| w.is_finite()).ok_or_else(|| PipelineError::Input {
                what: "an extra network's weight",
                value: format!("<{kind}:{args}>"),
                allowed: "a finite number, as in <lora:name:0.8>".into(),
            })?,
            None => 1.0,
        };
        text.push_str(&rest[..start]);
        found.push((kind.to_string(), name, multiplier));
        rest = &rest[len..];
    }
    text.push_str(rest);
    Ok((text, found))
}

/// Which hidden state a chunk's conditioning is.
#[derive(Debug, Clone, Copy)]
enum Layer {
    /// SD 1.x / 2.x: the last hidden state, or `clip_skip` layers earlier through the final norm.
    Sd { clip_skip: Option<usize> },
    /// SDXL: `hidden_states[-(clip_skip + 2)]`, no final norm.
    Xl { clip_skip: Option<usize> },
}

/// `process_tokens`: one chunk through the encoder, weighted, its mean restored; and the pooled
/// (projected) output where the encoder has one.
///
/// # Shapes
/// - returns `([1, 77, width], [1, projection_dim])`
fn process_tokens(sd: &StableDiffusion, tokenizer: &ClipTokenizer, encoder: &ClipTextModel, chunk: &Chunk, layer: Layer) -> Result<(Tensor<3>, Option<Tensor<2>>), PipelineError> {
    let mut tokens = chunk.tokens.clone();
    // SD 2's tokenizer pads with another token than its end token
    let (id_end, id_pad) = (tokenizer.eos_token_id(), tokenizer.pad_token_id());
    if id_end != id_pad {
        if let Some(i) = tokens.iter().position(|&t| t == id_end) {
            tokens[i + 1..].iter_mut().for_each(|t| *t = id_pad);
        }
    }
    let out = crate::in_worker(&sd.device, || encoder.encode(&[tokens], &sd.device))?;
    let hidden = out.hidden_states.len();
    let skip_error = |skip: usize| PipelineError::Input { what: "clip skip", value: skip.to_string(), allowed: format!("less than {} for this text encoder", hidden) };
    let z = match layer {
        Layer::Sd { clip_skip: None } => out.last_hidden_state,
        Layer::Sd { clip_skip: Some(skip) } => {
            let at = hidden.checked_sub(skip.saturating_add(1)).ok_or_else(|| skip_error(skip))?;
            encoder.final_layer_norm(out.hidden_states[at].clone())
        }
        Layer::Xl { clip_skip } => {
            let skip = clip_skip.unwrap_or(0);
            let at = hidden.checked_sub(skip.saturating_add(2)).ok_or_else(|| skip_error(skip))?;
            out.hidden_states[at].clone()
        }
    };
    // EmphasisOriginal: z · multipliers, then the original mean restored
    let device = z.device();
    let weights: Vec<f32> = chunk.multipliers.iter().map(|&w| w as f32).collect();
    let weights = Tensor::<1>::from_data(TensorData::new(weights, [chunk.multipliers.len()]), &device).reshape([1, chunk.multipliers.len(), 1]);
    let original_mean = z.clone().mean();
    let weighted = z * weights;
    let new_mean = weighted.clone().mean();
    let z = weighted * (original_mean / new_mean).reshape([1, 1, 1]);
    Ok((z, out.text_embeds))
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
    let layer = if xl { Layer::Xl { clip_skip } } else { Layer::Sd { clip_skip } };
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
            let (z, p) = process_tokens(sd, tokenizer, encoder, chunk, layer)?;
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

/// [`StableDiffusion::encode_prompt`] under `--prompt-syntax a1111`.
pub(crate) fn encode_prompt_a1111(sd: &StableDiffusion, o: &GenerateOptions, do_cfg: bool, height: usize, width: usize) -> Result<PromptEmbeds, PipelineError> {
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

#[cfg(test)]
mod tests {
    #[test]
    fn extra_networks_are_taken_out_of_the_prompt() {
        let (text, found) = super::extract_extra_networks("a cat <lora:detail:0.7>, <lora:style> on a mat <notatag").unwrap();
        assert_eq!(text, "a cat ,  on a mat <notatag");
        assert_eq!(found, [("lora".to_string(), "detail".to_string(), 0.7), ("lora".to_string(), "style".to_string(), 1.0)]);
        assert!(super::extract_extra_networks("<lora:x:nan>").is_err());
    }
}
