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

pub mod encode;
pub mod parser;

use kiln_text_encoder::ClipTokenizer;

use crate::error::PipelineError;

pub use encode::cond;

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
