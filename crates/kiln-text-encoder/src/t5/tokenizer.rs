//! The T5 tokenizer as transformers 5.25's `T5TokenizerFast` builds it
//! (`models/t5/tokenization_t5.py`), on the HF `tokenizers` library:
//!
//! - model: Unigram over the folder's `tokenizer.json` vocabulary (pieces and scores), `<unk>` at
//!   id 2, no byte fallback;
//! - normalizer: SentencePiece's precompiled character map from `tokenizer.json` (nmt_nfkc for T5),
//!   when the file has one;
//! - pre-tokenizer: split on whitespace, then Metaspace (`▁`, prepended to every word);
//! - post-processor: the prompt's tokens then `</s>`;
//! - the added tokens (`<pad>`, `</s>`, `<unk>`, `<extra_id_N>`) matched in the text before
//!   normalisation, as special tokens.
//!
//! Like transformers, kiln rebuilds this pipeline rather than running the file's: folders written
//! by older transformers (SD 3's `tokenizer_3`, FLUX's `tokenizer_2`) describe a different one
//! (a `Replace(" {2,}", " ")` normaliser, Metaspace alone) that transformers 5 no longer runs,
//! which tokenizes trailing spaces differently.
//!
//! Prompts are truncated to `max_length` tokens including `</s>` and padded with `<pad>`, as the
//! SD 3 and FLUX pipelines call it: `tokenizer(prompt, padding="max_length",
//! max_length=max_sequence_length, truncation=True, add_special_tokens=True)`.

use std::path::Path;

use serde_json::Value;
use tokenizers::decoders::metaspace::Metaspace as MetaspaceDecoder;
use tokenizers::models::unigram::Unigram;
use tokenizers::normalizers::Precompiled;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{NormalizerWrapper, Tokenizer};

use crate::error::TokenizerError;
use crate::tokenizer::{read_json, read_optional_json, TokenValue, TokenizedPrompt};

/// The longest sequence kiln pads to (T5's `model_max_length` is 512; FLUX.1-dev uses all of it).
pub const T5_MAX_LENGTH_LIMIT: usize = 4096;

/// The tokenizer of a T5 `tokenizer_*/` folder.
#[derive(Clone)]
pub struct T5Tokenizer {
    tokenizer: Tokenizer,
    model_max_length: usize,
    pad_id: u32,
    eos_id: u32,
}

impl std::fmt::Debug for T5Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("T5Tokenizer")
            .field("model_max_length", &self.model_max_length)
            .field("pad_id", &self.pad_id)
            .field("eos_id", &self.eos_id)
            .finish()
    }
}

/// `tokenizer_config.json`'s value of a named special token, or T5's default.
fn named(config: &serde_json::Map<String, Value>, key: &str, default: &str) -> TokenValue {
    config.get(key).and_then(|v| TokenValue::parse(v, false)).unwrap_or_else(|| TokenValue::Str(default.to_string()))
}

impl T5Tokenizer {
    /// Loads a folder's `tokenizer.json` (required: kiln reads no `spiece.model`) and
    /// `tokenizer_config.json`.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self, TokenizerError> {
        let dir = dir.as_ref();
        let json_path = dir.join("tokenizer.json");
        let json = read_json(&json_path)?;
        let config_path = dir.join("tokenizer_config.json");
        let config = match read_optional_json(&config_path)? {
            Some(Value::Object(m)) => m,
            Some(_) => return Err(TokenizerError::Format { path: config_path, message: "not a JSON object".into() }),
            None => serde_json::Map::new(),
        };
        let bad = |message: String| TokenizerError::Format { path: json_path.clone(), message };
        let unsupported = |message: String| TokenizerError::Unsupported { path: config_path.clone(), message };
        if let Some(class) = config.get("tokenizer_class")
            && !matches!(class.as_str(), Some("T5Tokenizer" | "T5TokenizerFast"))
        {
            return Err(unsupported(format!("tokenizer_class = {class}: kiln implements T5Tokenizer here")));
        }
        for key in ["padding_side", "truncation_side"] {
            if let Some(side) = config.get(key)
                && side.as_str() != Some("right")
            {
                return Err(unsupported(format!("{key} = {side}: only \"right\" is supported")));
            }
        }
        let model_max_length = match config.get("model_max_length") {
            None => 512,
            Some(v) => match v.as_u64() {
                Some(n) if n >= 1 => (n as usize).min(T5_MAX_LENGTH_LIMIT),
                // transformers writes 1e30 ("no limit") for some tokenizers
                _ if v.as_f64().is_some_and(|f| f >= 1.0) => T5_MAX_LENGTH_LIMIT,
                _ => return Err(unsupported(format!("model_max_length = {v}: expected a positive length"))),
            },
        };

        // the Unigram vocabulary: [[piece, score], ...]
        let model = json.get("model").ok_or_else(|| bad("no \"model\"".into()))?;
        if model.get("type").and_then(Value::as_str) != Some("Unigram") {
            return Err(TokenizerError::Unsupported {
                path: json_path.clone(),
                message: format!("model type {}: a T5 tokenizer is a Unigram model", model.get("type").unwrap_or(&Value::Null)),
            });
        }
        let mut vocab = Vec::new();
        for entry in model.get("vocab").and_then(Value::as_array).ok_or_else(|| bad("model.vocab is not a list".into()))? {
            let piece = entry.get(0).and_then(Value::as_str);
            let score = entry.get(1).and_then(Value::as_f64);
            match (piece, score) {
                (Some(p), Some(s)) if s.is_finite() => vocab.push((p.to_string(), s)),
                _ => return Err(bad(format!("malformed vocabulary entry {entry}"))),
            }
        }
        // T5TokenizerFast builds Unigram(vocab, unk_id=2, byte_fallback=False)
        if vocab.len() < 3 {
            return Err(bad(format!("{} vocabulary entries: T5's has <pad>, </s>, <unk> first", vocab.len())));
        }
        let unigram = Unigram::from(vocab, Some(2), false).map_err(|e| bad(format!("cannot build the Unigram model: {e}")))?;
        let mut tokenizer = Tokenizer::new(unigram);

        // the precompiled character map, alone or inside a Sequence
        let normalizers: Vec<&Value> = match json.get("normalizer") {
            Some(n) if n.get("type").and_then(Value::as_str) == Some("Sequence") => {
                n.get("normalizers").and_then(Value::as_array).map(|a| a.iter().collect()).unwrap_or_default()
            }
            Some(Value::Null) | None => Vec::new(),
            Some(n) => vec![n],
        };
        if let Some(precompiled) = normalizers.into_iter().find(|n| n.get("type").and_then(Value::as_str) == Some("Precompiled")) {
            let map = precompiled
                .get("precompiled_charsmap")
                .and_then(Value::as_str)
                .and_then(super::charsmap::decode_base64)
                .ok_or_else(|| bad("the precompiled character map is not base64".into()))?;
            super::charsmap::check(&map).map_err(|e| bad(format!("the precompiled character map is malformed: {e}")))?;
            let normalizer = Precompiled::from(&map).map_err(|e| bad(format!("the precompiled character map does not load: {e}")))?;
            tokenizer.with_normalizer(Some(NormalizerWrapper::Precompiled(normalizer))).map_err(|e| bad(e.to_string()))?;
        }
        let metaspace = Metaspace::new('▁', PrependScheme::Always, true);
        tokenizer.with_pre_tokenizer(Some(PreTokenizerSequence::new(vec![WhitespaceSplit.into(), metaspace.into()])));
        tokenizer.with_decoder(Some(MetaspaceDecoder::new('▁', PrependScheme::Always, true)));

        // added tokens: tokenizer_config.json's added_tokens_decoder, else tokenizer.json's, then
        // the named and extra special tokens not among them
        let mut added: Vec<(u32, TokenValue)> = Vec::new();
        let from_config = config.get("added_tokens_decoder").and_then(Value::as_object);
        if let Some(entries) = from_config {
            for (id, v) in entries {
                let id = id.parse().map_err(|_| unsupported(format!("added_tokens_decoder key {id:?} is not a token id")))?;
                added.push((id, TokenValue::parse(v, false).ok_or_else(|| unsupported(format!("added token {v}")))?));
            }
        } else {
            for t in json.get("added_tokens").and_then(Value::as_array).into_iter().flatten() {
                let id = t.get("id").and_then(Value::as_u64).ok_or_else(|| bad(format!("added token without id: {t}")))?;
                added.push((id as u32, TokenValue::parse(t, false).ok_or_else(|| bad(format!("malformed added token {t}")))?));
            }
        }
        added.sort_by_key(|(id, _)| *id);
        let eos = named(&config, "eos_token", "</s>");
        let unk = named(&config, "unk_token", "<unk>");
        let pad = named(&config, "pad_token", "<pad>");
        let mut specials = vec![eos.clone(), unk, pad.clone()];
        for key in ["additional_special_tokens", "extra_special_tokens"] {
            if let Some(Value::Array(list)) = config.get(key) {
                specials.extend(list.iter().filter_map(|v| TokenValue::parse(v, false)));
            }
        }
        let mut to_add: Vec<tokenizers::AddedToken> = added.iter().map(|(_, t)| t.to_added(specials.iter().any(|s| s.content() == t.content()))).collect();
        for s in &specials {
            if !added.iter().any(|(_, t)| t.content() == s.content()) && !to_add.iter().any(|t| t.content == s.content()) {
                to_add.push(s.to_added(true));
            }
        }
        tokenizer.add_tokens(to_add).map_err(|e| bad(format!("cannot add the special tokens: {e}")))?;
        let id_of = |t: &TokenValue, key: &str| {
            tokenizer.token_to_id(t.content()).ok_or_else(|| unsupported(format!("{key} {:?} is not in the vocabulary", t.content())))
        };
        let eos_id = id_of(&eos, "eos_token")?;
        let pad_id = id_of(&pad, "pad_token")?;
        let post = TemplateProcessing::builder()
            .try_single(format!("$A {}", eos.content()))
            .and_then(|b| b.try_pair(format!("$A {} $B {}", eos.content(), eos.content())))
            .map_err(|e| bad(format!("cannot build the post-processor: {e}")))?
            .special_tokens(vec![(eos.content().to_string(), eos_id)])
            .build()
            .map_err(|e| bad(format!("cannot build the post-processor: {e}")))?;
        tokenizer.with_post_processor(Some(post));
        Ok(Self { tokenizer, model_max_length, pad_id, eos_id })
    }

    /// Tokenizes a prompt: its tokens, `</s>`, padded with `<pad>` (or truncated, keeping
    /// `</s>`) to `max_length` ids, the pipelines' `max_sequence_length`.
    pub fn encode(&self, prompt: &str, max_length: usize) -> Result<TokenizedPrompt, TokenizerError> {
        if max_length == 0 || max_length > T5_MAX_LENGTH_LIMIT {
            return Err(TokenizerError::Encode {
                prompt: prompt.to_string(),
                message: format!("max_sequence_length {max_length}: expected 1..={T5_MAX_LENGTH_LIMIT}"),
            });
        }
        let err = |e: tokenizers::Error| TokenizerError::Encode { prompt: prompt.to_string(), message: e.to_string() };
        let full = self.tokenizer.encode(prompt, true).map_err(err)?.get_ids().to_vec();
        let dropped_tokens = full.len().saturating_sub(max_length);
        // truncation keeps the first max_length − 1 tokens, then the post-processor's </s>
        let mut ids: Vec<u32> = if dropped_tokens > 0 {
            let mut kept = full[..max_length - 1].to_vec();
            kept.push(self.eos_id);
            kept
        } else {
            full.clone()
        };
        let len = ids.len();
        ids.resize(max_length, self.pad_id);
        // diffusers: tokenizer.batch_decode(untruncated_ids[:, max_sequence_length - 1 : -1])
        let dropped_text = if dropped_tokens > 0 { self.decode(&full[max_length - 1..full.len() - 1])? } else { String::new() };
        Ok(TokenizedPrompt { ids, len, dropped_tokens, dropped_text })
    }

    /// Ids back to text (`T5TokenizerFast.decode`, special tokens kept).
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.tokenizer
            .decode(ids, false)
            .map_err(|e| TokenizerError::Encode { prompt: format!("<ids {ids:?}>"), message: e.to_string() })
    }

    /// `model_max_length` from `tokenizer_config.json` (512 for T5).
    pub fn model_max_length(&self) -> usize {
        self.model_max_length
    }

    pub fn pad_token_id(&self) -> u32 {
        self.pad_id
    }

    pub fn eos_token_id(&self) -> u32 {
        self.eos_id
    }

    /// The number of tokens (`len(tokenizer)`: the vocabulary and the added tokens).
    pub fn len(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
