//! The CLIP tokenizer as transformers 5.24's `CLIPTokenizer` builds it
//! (`models/clip/tokenization_clip.py`), on the HF `tokenizers` library:
//!
//! - normalizer: NFC, `\s+` → `" "`, lowercase;
//! - pre-tokenizer: split on CLIP's pattern (`<|startoftext|>`, `<|endoftext|>`, contractions,
//!   letter runs, single digits, other non-space runs; the rest removed), then byte-level;
//! - model: BPE with `</w>` as end-of-word suffix, the folder's `unk_token`;
//! - post-processor: `RobertaProcessing` (bos … eos);
//! - the folder's special tokens added the way transformers adds them (see `special_tokens` below):
//!   which one is the pad token and whether a token like `!` is split out of the text depend on
//!   `tokenizer_config.json`, `special_tokens_map.json` and `tokenizer.json`.
//!
//! transformers rebuilds this pipeline even when the folder ships a `tokenizer.json`: it takes only
//! the vocabulary, the merges and the added tokens from that file, and so does kiln.
//!
//! Prompts are truncated to `model_max_length` (77) tokens including bos and eos, and padded to it
//! with the folder's pad token, as diffusers' `tokenizer(prompt, padding="max_length",
//! max_length=tokenizer.model_max_length, truncation=True)` does.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Map, Value};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::replace::ReplacePattern;
use tokenizers::normalizers::{Lowercase, NFC, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::{
    AddedToken, PaddingDirection, PaddingParams, PaddingStrategy, SplitDelimiterBehavior, Tokenizer, TruncationDirection,
    TruncationParams, TruncationStrategy,
};

use crate::error::TokenizerError;

/// CLIP's pre-tokenization pattern (`tokenization_clip.py`; OpenAI's `simple_tokenizer.py`).
pub const CLIP_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// The named special tokens, in transformers' `SPECIAL_TOKENS_ATTRIBUTES` order (the order they
/// are added in, which decides the flags of tokens that share their text).
const NAMED: [&str; 7] = ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"];

/// One prompt, tokenized.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenizedPrompt {
    /// `max_length` ids: bos, the prompt's tokens, eos, then padding.
    pub ids: Vec<u32>,
    /// How many ids are not padding (bos and eos included).
    pub len: usize,
    /// Tokens of the prompt that did not fit and were cut (0 when it fits).
    pub dropped_tokens: usize,
    /// The cut part decoded back to text, as diffusers prints it in its truncation warning.
    pub dropped_text: String,
}

/// The tokenizer of a diffusers `tokenizer*/` folder.
#[derive(Clone)]
pub struct ClipTokenizer {
    /// With truncation and padding to `max_length`.
    tokenizer: Tokenizer,
    /// Same pipeline, no truncation or padding (for the dropped-token count).
    untruncated: Tokenizer,
    max_length: usize,
    pad_token: String,
    pad_id: u32,
    bos_id: u32,
    eos_id: u32,
    /// Tokens added for textual-inversion embeddings ([`ClipTokenizer::add_tokens`]), in order.
    added: Vec<String>,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("max_length", &self.max_length)
            .field("pad_token", &self.pad_token)
            .field("pad_id", &self.pad_id)
            .field("bos_id", &self.bos_id)
            .field("eos_id", &self.eos_id)
            .finish()
    }
}

/// A special token as transformers holds it before adding it: a plain string, or an
/// `AddedToken` whose `normalized` flag may be unset (then it follows `special`).
#[derive(Clone, Debug)]
pub(crate) enum TokenValue {
    Str(String),
    Tok { content: String, single_word: bool, lstrip: bool, rstrip: bool, normalized: Option<bool>, special: bool },
}

impl TokenValue {
    pub(crate) fn content(&self) -> &str {
        match self {
            Self::Str(s) => s,
            Self::Tok { content, .. } => content,
        }
    }

    /// Python's `==` between these values: strings by text, `AddedToken`s by every field, a
    /// string never equals an `AddedToken`.
    fn py_eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Str(a), Self::Str(b)) => a == b,
            (Self::Tok { .. }, Self::Tok { .. }) => self.to_added(false) == other.to_added(false),
            _ => false,
        }
    }

    /// The `tokenizers::AddedToken` this value becomes (`force_special`: transformers marks every
    /// named special token special before adding it).
    pub(crate) fn to_added(&self, force_special: bool) -> AddedToken {
        match self {
            // AddedToken(token, special=True): normalized = not special
            Self::Str(s) => AddedToken::from(s.clone(), true),
            Self::Tok { content, single_word, lstrip, rstrip, normalized, special } => {
                let special = *special || force_special;
                AddedToken::from(content.clone(), special)
                    .single_word(*single_word)
                    .lstrip(*lstrip)
                    .rstrip(*rstrip)
                    .normalized(normalized.unwrap_or(!special))
            }
        }
    }

    /// Parses a string or an `AddedToken` dict (`{"__type": "AddedToken", "content": ...}`).
    pub(crate) fn parse(value: &Value, default_special: bool) -> Option<Self> {
        match value {
            Value::String(s) => Some(Self::Str(s.clone())),
            Value::Object(m) => {
                let flag = |k: &str| m.get(k).and_then(Value::as_bool);
                Some(Self::Tok {
                    content: m.get("content")?.as_str()?.to_string(),
                    single_word: flag("single_word").unwrap_or(false),
                    lstrip: flag("lstrip").unwrap_or(false),
                    rstrip: flag("rstrip").unwrap_or(false),
                    normalized: flag("normalized"),
                    special: if default_special { true } else { flag("special").unwrap_or(false) },
                })
            }
            _ => None,
        }
    }
}

/// The largest tokenizer file kiln reads (CLIP's vocabulary is 1 MB).
const TOKENIZER_FILE_LIMIT: u64 = 64 << 20;

/// A tokenizer file's text: a regular file of at most [`TOKENIZER_FILE_LIMIT`] bytes.
fn read_text(path: &Path) -> Result<String, TokenizerError> {
    kiln_nn::read_text_file(path, TOKENIZER_FILE_LIMIT).map_err(|e| match e {
        kiln_nn::LoadError::Io { source, .. } => TokenizerError::Io { path: path.into(), source },
        other => TokenizerError::Format { path: path.into(), message: other.to_string() },
    })
}

pub(crate) fn read_json(path: &Path) -> Result<Value, TokenizerError> {
    let text = read_text(path)?;
    serde_json::from_str(&text).map_err(|e| TokenizerError::Format { path: path.into(), message: e.to_string() })
}

pub(crate) fn read_optional_json(path: &Path) -> Result<Option<Value>, TokenizerError> {
    if path.exists() { read_json(path).map(Some) } else { Ok(None) }
}

/// The special tokens of a folder and the list transformers adds to the backend tokenizer, in
/// order (transformers 5.24, `PreTrainedTokenizerBase.from_pretrained` + `TokenizersBackend.__init__`):
///
/// 1. `added_tokens_decoder` from `tokenizer_config.json`; without it (older folders) the named
///    tokens of `special_tokens_map.json` override `tokenizer_config.json` and the added tokens
///    come from `added_tokens.json` and `tokenizer.json`;
/// 2. a named token whose text is an added token becomes that added token;
/// 3. the added tokens (by id), then each named token whose text is not among them and that does
///    not equal one already listed; strings become special, unnormalized tokens.
///
/// Adding a token whose text is already there replaces its flags, so the order matters: SD 1.5's
/// `<|endoftext|>` ends up unnormalized (the string pad token comes last), SD 2.1's normalized.
struct SpecialTokens {
    named: BTreeMap<&'static str, TokenValue>,
    to_add: Vec<AddedToken>,
}

fn special_tokens(
    config: &Map<String, Value>,
    config_path: &Path,
    special_map: Option<(&Value, &Path)>,
    added_tokens_file: Option<(&Value, &Path)>,
    tokenizer_json_added: &[(u32, TokenValue)],
) -> Result<SpecialTokens, TokenizerError> {
    // CLIPTokenizer.__init__ defaults
    let defaults = [("unk_token", "<|endoftext|>"), ("bos_token", "<|startoftext|>"), ("eos_token", "<|endoftext|>"), ("pad_token", "<|endoftext|>")];
    let mut named: BTreeMap<&'static str, TokenValue> = BTreeMap::new();
    for key in NAMED {
        match config.get(key) {
            None => {
                if let Some((_, d)) = defaults.iter().find(|(k, _)| *k == key) {
                    named.insert(key, TokenValue::Str(d.to_string()));
                }
            }
            Some(Value::Null) => {
                if defaults.iter().any(|(k, _)| *k == key) {
                    return Err(TokenizerError::Unsupported {
                        path: config_path.into(),
                        message: format!("{key} = null: a CLIP tokenizer needs one"),
                    });
                }
            }
            Some(v) => {
                let value = TokenValue::parse(v, false).ok_or_else(|| TokenizerError::Format {
                    path: config_path.into(),
                    message: format!("{key} is neither a string nor an AddedToken: {v}"),
                })?;
                named.insert(key, value);
            }
        }
    }
    let mut extra: Vec<TokenValue> = Vec::new();
    for key in ["additional_special_tokens", "extra_special_tokens"] {
        if let Some(Value::Array(list)) = config.get(key) {
            extra.extend(list.iter().filter_map(|v| TokenValue::parse(v, false)));
        }
    }

    let mut decoder: BTreeMap<u32, TokenValue> = BTreeMap::new();
    if let Some(Value::Object(entries)) = config.get("added_tokens_decoder") {
        for (id, v) in entries {
            let id: u32 = id.parse().map_err(|_| TokenizerError::Format {
                path: config_path.into(),
                message: format!("added_tokens_decoder key {id:?} is not a token id"),
            })?;
            let token = TokenValue::parse(v, false).ok_or_else(|| TokenizerError::Format {
                path: config_path.into(),
                message: format!("added_tokens_decoder[{id}] is not an AddedToken: {v}"),
            })?;
            decoder.insert(id, token);
        }
    } else {
        if let Some((map, path)) = special_map {
            let map = map.as_object().ok_or_else(|| TokenizerError::Format {
                path: path.into(),
                message: "not a JSON object".into(),
            })?;
            for (key, v) in map {
                if let Some(name) = NAMED.iter().find(|k| *k == key) {
                    let value = TokenValue::parse(v, true).ok_or_else(|| TokenizerError::Format {
                        path: path.into(),
                        message: format!("{key} is neither a string nor an AddedToken: {v}"),
                    })?;
                    named.insert(name, value);
                } else if key == "additional_special_tokens" || key == "extra_special_tokens" {
                    for v in v.as_array().into_iter().flatten() {
                        if let Some(t) = TokenValue::parse(v, true)
                            && !extra.iter().any(|e| e.py_eq(&t))
                        {
                            extra.push(t);
                        }
                    }
                }
            }
        }
        if let Some((map, path)) = added_tokens_file {
            let map = map.as_object().ok_or_else(|| TokenizerError::Format { path: path.into(), message: "not a JSON object".into() })?;
            let specials: Vec<&str> = named.values().map(TokenValue::content).chain(extra.iter().map(TokenValue::content)).collect();
            for (content, id) in map {
                let id = id.as_u64().ok_or_else(|| TokenizerError::Format {
                    path: path.into(),
                    message: format!("{content:?} has no integer id"),
                })? as u32;
                let is_special = specials.contains(&content.as_str());
                decoder.insert(id, TokenValue::Tok {
                    content: content.clone(),
                    single_word: false,
                    lstrip: false,
                    rstrip: false,
                    normalized: Some(!is_special),
                    special: is_special,
                });
            }
        }
        for (id, token) in tokenizer_json_added {
            decoder.insert(*id, token.clone());
        }
    }
    // named tokens that are added tokens take the added token's flags (the last one with that text)
    for value in named.values_mut() {
        if let Some(t) = decoder.values().rev().find(|t| t.content() == value.content()) {
            *value = t.clone();
        }
    }

    let mut list: Vec<TokenValue> = decoder.values().cloned().collect();
    let known: Vec<String> = list.iter().map(|t| t.content().to_string()).collect();
    let ordered: Vec<TokenValue> = NAMED.iter().filter_map(|k| named.get(k).cloned()).chain(extra).collect();
    for value in ordered {
        if !known.iter().any(|k| k == value.content()) && !list.iter().any(|t| t.py_eq(&value)) {
            list.push(value);
        }
    }
    let named_contents: Vec<String> = named.values().map(|v| v.content().to_string()).collect();
    let to_add = list
        .iter()
        .map(|t| t.to_added(named_contents.iter().any(|c| c == t.content())))
        .collect();
    Ok(SpecialTokens { named, to_add })
}

impl ClipTokenizer {
    /// Loads a tokenizer folder: `tokenizer.json` when present, else `vocab.json` + `merges.txt`;
    /// plus `tokenizer_config.json` and, in older folders, `special_tokens_map.json`.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self, TokenizerError> {
        let dir = dir.as_ref();
        let config_path = dir.join("tokenizer_config.json");
        let config = read_optional_json(&config_path)?;
        // vocabulary, merges and (tokenizer.json) added tokens
        let json_path = dir.join("tokenizer.json");
        let (vocab, merges, json_added) = if json_path.exists() {
            read_tokenizer_json(&json_path)?
        } else {
            let (vocab_path, merges_path) = (dir.join("vocab.json"), dir.join("merges.txt"));
            for p in [&vocab_path, &merges_path] {
                if !p.exists() {
                    return Err(TokenizerError::Io {
                        path: p.clone(),
                        source: std::io::Error::new(std::io::ErrorKind::NotFound, "no tokenizer.json, and vocab.json + merges.txt are incomplete"),
                    });
                }
            }
            // (what read_text checks, before tokenizers reads them: regular files, 64 MiB at most)
            for p in [&vocab_path, &merges_path] {
                let meta = std::fs::metadata(p).map_err(|source| TokenizerError::Io { path: p.clone(), source })?;
                if !meta.is_file() || meta.len() > TOKENIZER_FILE_LIMIT {
                    let why = if meta.is_file() { format!("{} bytes; at most {TOKENIZER_FILE_LIMIT}", meta.len()) } else { "not a regular file".into() };
                    return Err(TokenizerError::Io { path: p.clone(), source: std::io::Error::other(why) });
                }
            }
            let (vocab, merges) = BPE::read_file(&vocab_path.to_string_lossy(), &merges_path.to_string_lossy())
                .map_err(|e| TokenizerError::Format { path: dir.to_path_buf(), message: format!("vocab.json / merges.txt: {e}") })?;
            (vocab, merges, Vec::new())
        };
        let special_map_path = dir.join("special_tokens_map.json");
        let special_map = read_optional_json(&special_map_path)?;
        let added_path = dir.join("added_tokens.json");
        let added_file = read_optional_json(&added_path)?;
        Self::build(dir, config, (vocab, merges, json_added), special_map, added_file)
    }

    /// A tokenizer from the texts of `tokenizer_config.json`, `vocab.json`, `merges.txt` and
    /// `special_tokens_map.json` (the files a published model's `tokenizer/` holds, compiled in
    /// for single-file checkpoints); `label` names them in errors.
    pub fn from_texts(label: &Path, config: &str, vocab: &str, merges: &str, special_tokens_map: Option<&str>) -> Result<Self, TokenizerError> {
        let bad = |message: String| TokenizerError::Format { path: label.to_path_buf(), message };
        let json = |text: &str, what: &str| serde_json::from_str::<Value>(text).map_err(|e| bad(format!("{what}: {e}")));
        let mut vocab_map = Vocab::default();
        for (token, id) in json(vocab, "vocab.json")?.as_object().ok_or_else(|| bad("vocab.json is not an object".into()))? {
            let id = id.as_u64().and_then(|id| u32::try_from(id).ok()).ok_or_else(|| bad(format!("vocab.json: {token:?} has no integer id")))?;
            vocab_map.insert(token.clone(), id);
        }
        // tokenizers' `convert_merges_to_hashmap`: `#version` lines skipped, then "a b" per line
        let mut merges_list = Merges::new();
        for (rank, line) in merges.lines().filter(|l| !l.starts_with("#version")).enumerate() {
            let (a, b) = line.split_once(' ').filter(|(_, b)| !b.contains(' ')).ok_or_else(|| bad(format!("merges.txt: line {} is not two tokens", rank + 1)))?;
            merges_list.push((a.to_string(), b.to_string()));
        }
        let special_map = special_tokens_map.map(|t| json(t, "special_tokens_map.json")).transpose()?;
        Self::build(label, Some(json(config, "tokenizer_config.json")?), (vocab_map, merges_list, Vec::new()), special_map, None)
    }

    /// The tokenizer of a folder's (or the compiled-in) files, read: `config` is
    /// `tokenizer_config.json`, `bpe` the vocabulary, merges and `tokenizer.json`'s added tokens.
    fn build(dir: &Path, config: Option<Value>, bpe: TokenizerJson, special_map: Option<Value>, added_file: Option<Value>) -> Result<Self, TokenizerError> {
        let config_path = dir.join("tokenizer_config.json");
        let config = match config {
            Some(Value::Object(m)) => m,
            Some(_) => return Err(TokenizerError::Format { path: config_path, message: "not a JSON object".into() }),
            None => {
                log::warn!("{} not found: using CLIPTokenizer's defaults and 77 tokens", config_path.display());
                Map::new()
            }
        };
        let unsupported = |message: String| TokenizerError::Unsupported { path: config_path.clone(), message };
        if let Some(class) = config.get("tokenizer_class") {
            match class.as_str() {
                Some("CLIPTokenizer" | "CLIPTokenizerFast") => {}
                _ => return Err(unsupported(format!("tokenizer_class = {class}: kiln implements CLIPTokenizer"))),
            }
        }
        for key in ["padding_side", "truncation_side"] {
            if let Some(side) = config.get(key)
                && side.as_str() != Some("right")
            {
                return Err(unsupported(format!("{key} = {side}: only \"right\" is supported")));
            }
        }
        let max_length = match config.get("model_max_length") {
            None => 77,
            Some(v) => match v.as_u64() {
                Some(n) if (3..=4096).contains(&n) => n as usize,
                _ => return Err(unsupported(format!("model_max_length = {v}: expected the text encoder's length, e.g. 77"))),
            },
        };

        let (vocab, merges, json_added) = bpe;
        let special_map_path = dir.join("special_tokens_map.json");
        let added_path = dir.join("added_tokens.json");
        let specials = special_tokens(
            &config,
            &config_path,
            special_map.as_ref().map(|v| (v, special_map_path.as_path())),
            added_file.as_ref().map(|v| (v, added_path.as_path())),
            &json_added,
        )?;
        let name = |key: &str| specials.named.get(key).map(|v| v.content().to_string()).unwrap_or_default();

        let format = |message: String| TokenizerError::Format { path: dir.to_path_buf(), message };
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .continuing_subword_prefix(String::new())
            .end_of_word_suffix("</w>".into())
            .fuse_unk(false)
            .unk_token(name("unk_token"))
            // No word cache: tokenizers 0.23 keeps BPE's cache in a thread-local map keyed by a
            // per-instance id and never removes a dropped instance's entries
            // (`models/bpe/model.rs`, BPE_LOCAL_CACHE), so every tokenizer built and used on a
            // thread stayed in memory (about 1 KB each, and its cached words; found by kiln-fuzz,
            // test in crates/kiln-fuzz/tests/leaks.rs). A prompt is 77 tokens at most: merging
            // its words afresh costs microseconds, and the tokens are the same.
            .cache_capacity(0)
            .build()
            .map_err(|e| format(format!("cannot build the BPE model: {e}")))?;
        let mut tokenizer = Tokenizer::new(bpe);
        let normalizer = NormalizerSequence::new(vec![
            NFC.into(),
            Replace::new(ReplacePattern::Regex(r"\s+".into()), " ").map_err(|e| format(e.to_string()))?.into(),
            Lowercase.into(),
        ]);
        tokenizer.with_normalizer(Some(normalizer)).map_err(|e| format(e.to_string()))?;
        let split = Split::new(SplitPattern::Regex(CLIP_PATTERN.into()), SplitDelimiterBehavior::Removed, true)
            .map_err(|e| format(e.to_string()))?;
        tokenizer.with_pre_tokenizer(Some(PreTokenizerSequence::new(vec![split.into(), ByteLevel::new(false, true, true).into()])));
        tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
        tokenizer.add_tokens(specials.to_add.clone()).map_err(|e| format(format!("cannot add the special tokens: {e}")))?;

        let id_of = |key: &str| -> Result<(String, u32), TokenizerError> {
            let token = name(key);
            let id = tokenizer.token_to_id(&token).ok_or_else(|| format(format!("{key} {token:?} is not in the vocabulary")))?;
            Ok((token, id))
        };
        let (bos, bos_id) = id_of("bos_token")?;
        let (eos, eos_id) = id_of("eos_token")?;
        let (pad_token, pad_id) = id_of("pad_token")?;
        tokenizer.with_post_processor(Some(
            RobertaProcessing::new((eos, eos_id), (bos, bos_id)).trim_offsets(false).add_prefix_space(false),
        ));
        let untruncated = tokenizer.clone();
        tokenizer
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| format(e.to_string()))?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(max_length),
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id,
            pad_type_id: 0,
            pad_token: pad_token.clone(),
        }));
        Ok(Self { tokenizer, untruncated, max_length, pad_token, pad_id, bos_id, eos_id, added: Vec::new() })
    }

    /// Tokenizes a prompt: bos, tokens, eos, padded (or truncated) to [`ClipTokenizer::max_length`].
    /// Adds `tokens` as transformers' `tokenizer.add_tokens(tokens)` does (`AddedToken`s that are
    /// not special, matched on the normalized text) and returns their ids, in order; a token
    /// already known is refused.
    pub fn add_tokens(&mut self, tokens: &[String]) -> Result<Vec<u32>, TokenizerError> {
        let taken: Vec<&String> = tokens.iter().filter(|t| self.tokenizer.token_to_id(t).is_some()).collect();
        if let Some(t) = taken.first() {
            return Err(TokenizerError::Encode { prompt: t.to_string(), message: format!("the token {t:?} is already in the vocabulary; name the embedding's token differently") });
        }
        let added: Vec<AddedToken> = tokens.iter().map(|t| AddedToken::from(t.clone(), false)).collect();
        let format = |e: tokenizers::Error| TokenizerError::Encode { prompt: tokens.join(" "), message: format!("cannot add the tokens: {e}") };
        self.tokenizer.add_tokens(added.clone()).map_err(format)?;
        self.untruncated.add_tokens(added).map_err(format)?;
        self.added.extend(tokens.iter().cloned());
        tokens
            .iter()
            .map(|t| self.tokenizer.token_to_id(t).ok_or_else(|| TokenizerError::Encode { prompt: t.clone(), message: "was not added".into() }))
            .collect()
    }

    /// The ids of `text` without special tokens, truncation or padding (transformers'
    /// `tokenizer(text, truncation=False, add_special_tokens=False)`).
    pub fn ids(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let err = |e: tokenizers::Error| TokenizerError::Encode { prompt: text.to_string(), message: e.to_string() };
        Ok(self.untruncated.encode(text, false).map_err(err)?.get_ids().to_vec())
    }

    /// The id of `token` in the vocabulary (e.g. `",</w>"`).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// The tokens [`ClipTokenizer::add_tokens`] added.
    pub fn added_tokens(&self) -> &[String] {
        &self.added
    }

    /// diffusers' `TextualInversionLoaderMixin._maybe_convert_prompt`: for each token of the
    /// tokenized prompt that is an added token's name, when a multi-vector embedding added
    /// `token_1`, … too, the prompt's text `token` becomes `token token_1 … token_{n-1}` (a plain
    /// replace). As in diffusers, the token is compared as the tokenizer returns it, normalized
    /// (lowercased): an embedding named with capitals matches in prompts but expands to its first
    /// vector only.
    pub fn maybe_convert_prompt(&self, prompt: &str) -> Result<String, TokenizerError> {
        if self.added.is_empty() {
            return Ok(prompt.to_string());
        }
        let err = |e: tokenizers::Error| TokenizerError::Encode { prompt: prompt.to_string(), message: e.to_string() };
        let encoding = self.untruncated.encode(prompt, false).map_err(err)?;
        let mut out = prompt.to_string();
        let mut seen = std::collections::HashSet::new();
        for token in encoding.get_tokens() {
            if !seen.insert(token.clone()) || !self.added.contains(token) {
                continue;
            }
            let mut replacement = token.clone();
            let mut i = 1;
            while self.added.iter().any(|t| *t == format!("{token}_{i}")) {
                replacement.push_str(&format!(" {token}_{i}"));
                i += 1;
            }
            out = out.replace(token.as_str(), &replacement);
        }
        Ok(out)
    }

    pub fn encode(&self, prompt: &str) -> Result<TokenizedPrompt, TokenizerError> {
        let converted = self.maybe_convert_prompt(prompt)?;
        let prompt = converted.as_str();
        let err = |e: tokenizers::Error| TokenizerError::Encode { prompt: prompt.to_string(), message: e.to_string() };
        let encoding = self.tokenizer.encode(prompt, true).map_err(err)?;
        let full = self.untruncated.encode(prompt, true).map_err(err)?.get_ids().to_vec();
        let ids = encoding.get_ids().to_vec();
        let len = full.len().min(self.max_length);
        let dropped_tokens = full.len().saturating_sub(self.max_length);
        // diffusers: tokenizer.batch_decode(untruncated_ids[:, max_length - 1 : -1])
        let dropped_text = if dropped_tokens > 0 { self.decode(&full[self.max_length - 1..full.len() - 1])? } else { String::new() };
        Ok(TokenizedPrompt { ids, len, dropped_tokens, dropped_text })
    }

    /// [`ClipTokenizer::encode`] for several prompts.
    pub fn encode_batch<S: AsRef<str>>(&self, prompts: &[S]) -> Result<Vec<TokenizedPrompt>, TokenizerError> {
        prompts.iter().map(|p| self.encode(p.as_ref())).collect()
    }

    /// Ids back to text like `CLIPTokenizer.decode`: byte-level decoding, `</w>` → space, trimmed.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        let text = self.tokenizer.decode(ids, false).map_err(|e| TokenizerError::Encode {
            prompt: format!("<ids {ids:?}>"),
            message: e.to_string(),
        })?;
        Ok(text.replace("</w>", " ").trim().to_string())
    }

    /// The padded length (`model_max_length`, 77 for every SD text encoder).
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// The pad token's text (`<|endoftext|>` for SD 1.x, `!` for SD 2.x and SDXL's second tokenizer).
    pub fn pad_token(&self) -> &str {
        &self.pad_token
    }

    pub fn pad_token_id(&self) -> u32 {
        self.pad_id
    }

    pub fn bos_token_id(&self) -> u32 {
        self.bos_id
    }

    pub fn eos_token_id(&self) -> u32 {
        self.eos_id
    }
}

type Vocab = tokenizers::models::bpe::Vocab;
type Merges = tokenizers::models::bpe::Merges;
/// What kiln takes from a `tokenizer.json`: vocabulary, merges, added tokens with their ids.
type TokenizerJson = (Vocab, Merges, Vec<(u32, TokenValue)>);

/// Vocabulary, merges and added tokens of a `tokenizer.json` (transformers uses nothing else of it
/// for a CLIPTokenizer).
fn read_tokenizer_json(path: &Path) -> Result<TokenizerJson, TokenizerError> {
    let json = read_json(path)?;
    let bad = |message: String| TokenizerError::Format { path: path.into(), message };
    let model = json.get("model").ok_or_else(|| bad("no \"model\"".into()))?;
    match model.get("type").and_then(Value::as_str) {
        None | Some("BPE") => {}
        Some(other) => {
            return Err(TokenizerError::Unsupported { path: path.into(), message: format!("model type {other:?}: CLIP uses BPE") });
        }
    }
    let mut vocab = Vocab::default();
    for (token, id) in model.get("vocab").and_then(Value::as_object).ok_or_else(|| bad("model.vocab is not an object".into()))? {
        let id = id.as_u64().ok_or_else(|| bad(format!("vocab entry {token:?} has no integer id")))?;
        vocab.insert(token.clone(), id as u32);
    }
    let mut merges = Merges::new();
    for m in model.get("merges").and_then(Value::as_array).ok_or_else(|| bad("model.merges is not a list".into()))? {
        let pair = match m {
            Value::String(s) => s.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())),
            Value::Array(p) if p.len() == 2 => match (p[0].as_str(), p[1].as_str()) {
                (Some(a), Some(b)) => Some((a.to_string(), b.to_string())),
                _ => None,
            },
            _ => None,
        };
        merges.push(pair.ok_or_else(|| bad(format!("malformed merge {m}")))?);
    }
    let mut added = Vec::new();
    for t in json.get("added_tokens").and_then(Value::as_array).into_iter().flatten() {
        let id = t.get("id").and_then(Value::as_u64).ok_or_else(|| bad(format!("added token without id: {t}")))?;
        let token = TokenValue::parse(t, false).ok_or_else(|| bad(format!("malformed added token {t}")))?;
        added.push((id as u32, token));
    }
    Ok((vocab, merges, added))
}
