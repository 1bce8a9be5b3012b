//! The tokenizer against transformers 5.24's CLIPTokenizer (assets/fixtures/tokenizer/clip_ids.json,
//! written by scripts/fixtures/tokenizer.py): 222 prompts × 7 tokenizer folders, padded and
//! truncated as diffusers calls it, plus the truncation counts and warning texts.

mod common;

use common::*;
use kiln_text_encoder::{ClipTokenizer, TokenizerError};
use serde_json::Value;

#[test]
fn ids_match_transformers() {
    let text = std::fs::read_to_string(root().join("assets/fixtures/tokenizer/clip_ids.json")).unwrap();
    let fixture: Value = serde_json::from_str(&text).unwrap();
    let prompts: Vec<&str> = fixture["prompts"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    assert!(prompts.len() >= 200);
    let sequences: Vec<Vec<u32>> = fixture["sequences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as u32).collect())
        .collect();
    let mut failures = Vec::new();
    for t in fixture["tokenizers"].as_array().unwrap() {
        let folder = t["folder"].as_str().unwrap();
        let tok = ClipTokenizer::from_dir(root().join(folder)).unwrap();
        let max_length = t["max_length"].as_u64().unwrap() as usize;
        assert_eq!(tok.max_length(), max_length, "{folder}");
        assert_eq!(tok.pad_token(), t["pad_token"].as_str().unwrap(), "{folder}: pad token");
        assert_eq!(tok.pad_token_id() as u64, t["pad_token_id"].as_u64().unwrap(), "{folder}: pad id");
        assert_eq!(tok.bos_token_id() as u64, t["bos_token_id"].as_u64().unwrap(), "{folder}: bos id");
        assert_eq!(tok.eos_token_id() as u64, t["eos_token_id"].as_u64().unwrap(), "{folder}: eos id");
        for (i, prompt) in prompts.iter().enumerate() {
            let got = tok.encode(prompt).unwrap();
            let mut want = sequences[t["ids"][i].as_u64().unwrap() as usize].clone();
            let len = want.len();
            want.resize(max_length, tok.pad_token_id());
            let untruncated = t["untruncated_len"][i].as_u64().unwrap() as usize;
            let dropped = untruncated.saturating_sub(max_length);
            if got.ids != want || got.len != len || got.dropped_tokens != dropped {
                failures.push(format!(
                    "{folder} prompt {i} {prompt:?}:\n  got  {:?} (len {}, dropped {})\n  want {:?} (len {len}, dropped {dropped})",
                    got.ids, got.len, got.dropped_tokens, want
                ));
            }
            if let Some(text) = t["dropped_text"].get(i.to_string()) {
                if got.dropped_text != text.as_str().unwrap() {
                    failures.push(format!("{folder} prompt {i}: dropped text {:?}, want {text}", got.dropped_text));
                }
            } else if dropped == 0 && !got.dropped_text.is_empty() {
                failures.push(format!("{folder} prompt {i}: dropped text {:?} but nothing was dropped", got.dropped_text));
            }
        }
    }
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.iter().take(10).cloned().collect::<Vec<_>>().join("\n"));
}

/// The pad token decides how a run of `!` is split: a special token is matched before BPE.
#[test]
fn pad_token_changes_exclamation_marks() {
    let sd1 = ClipTokenizer::from_dir(fixture("sd1").join("tokenizer")).unwrap();
    let sd2 = ClipTokenizer::from_dir(fixture("sd2").join("tokenizer")).unwrap();
    assert_eq!(&sd1.encode("wow!!!").unwrap().ids[..4], &[49406, 2781, 995, 49407]);
    assert_eq!(&sd2.encode("wow!!!").unwrap().ids[..6], &[49406, 2781, 0, 0, 0, 49407]);
    assert_eq!(sd1.decode(&[2781, 995]).unwrap(), "wow !!!");
}

#[test]
fn loading_errors_name_the_file() {
    let err = |dir: &std::path::Path| ClipTokenizer::from_dir(dir).unwrap_err();
    let show = |e: &TokenizerError| e.to_string();

    // missing folder / missing merges.txt
    let dir = temp_dir("tok-missing");
    let e = err(&dir.join("nope"));
    assert!(show(&e).contains("vocab.json"), "{e}");
    std::fs::copy(root().join("assets/tokenizers/clip/vocab.json"), dir.join("vocab.json")).unwrap();
    let e = err(&dir);
    assert!(show(&e).contains("merges.txt"), "{e}");

    // malformed tokenizer_config.json
    std::fs::copy(root().join("assets/tokenizers/clip/merges.txt"), dir.join("merges.txt")).unwrap();
    std::fs::write(dir.join("tokenizer_config.json"), "{\"pad_token\": ").unwrap();
    let e = err(&dir);
    assert!(matches!(e, TokenizerError::Format { .. }) && show(&e).contains("tokenizer_config.json"), "{e}");

    // another tokenizer class, another padding side, a null pad token
    for (config, key) in [
        (r#"{"tokenizer_class": "T5Tokenizer"}"#, "T5Tokenizer"),
        (r#"{"padding_side": "left"}"#, "padding_side"),
        (r#"{"pad_token": null}"#, "pad_token"),
        (r#"{"model_max_length": 1000000000000000019884624838656}"#, "model_max_length"),
    ] {
        std::fs::write(dir.join("tokenizer_config.json"), config).unwrap();
        let e = err(&dir);
        assert!(matches!(e, TokenizerError::Unsupported { .. }) && show(&e).contains(key), "{config}: {e}");
    }

    // a corrupt vocabulary
    std::fs::write(dir.join("tokenizer_config.json"), "{}").unwrap();
    std::fs::write(dir.join("vocab.json"), "[1, 2]").unwrap();
    let e = err(&dir);
    assert!(show(&e).contains("vocab.json"), "{e}");

    // a truncated tokenizer.json
    let json = std::fs::read(fixture("sdxl").join("tokenizer_2/tokenizer.json")).unwrap();
    std::fs::write(dir.join("tokenizer.json"), &json[..json.len() / 2]).unwrap();
    let e = err(&dir);
    assert!(show(&e).contains("tokenizer.json"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
