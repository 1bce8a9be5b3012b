//! `--prompt-syntax a1111` against a port of A1111's prompt functions over transformers' CLIP
//! (scripts/fixtures/prompt_syntax.py): the conditioning of 44 prompts (weights, nesting,
//! escapes, BREAK, 1 to 5 chunks, commas near a chunk's end) on the tiny SD1 and SDXL families,
//! and diffusers' pictures with some of them fed as `prompt_embeds`.

use std::path::PathBuf;

use burn::module::Param;
use burn::tensor::{Device, Tensor};
use kiln_nn::WeightsFile;
use kiln_pipeline::{GenerateOptions, LoadOptions, PromptSyntax, StableDiffusion, Task};
use serde_json::Value;

mod common;
use common::{case_inputs, max_levels, read_png};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixtures() -> PathBuf {
    root().join("assets/fixtures/prompt_syntax")
}

/// The tiny family's pipeline; SD1's final layer norm bias shifted by 0.5 as the fixture script
/// shifts it (its outputs otherwise average ~1e-6, which makes A1111's mean restoration
/// ill-conditioned).
fn load(family: &str) -> StableDiffusion {
    let mut pipe = StableDiffusion::load(&root().join("assets/fixtures/models").join(family), &LoadOptions::new(&Device::flex())).unwrap();
    if family == "sd1" {
        let norm = &mut pipe.text_encoder.text_model.final_layer_norm;
        let beta = norm.beta.as_ref().unwrap().val();
        norm.beta = Some(Param::from_tensor(beta + 0.5));
    }
    pipe
}

fn reference(file: &WeightsFile, key: &str) -> (Vec<f32>, Vec<u64>) {
    let t = file.get(key).unwrap_or_else(|| panic!("{key}"));
    let bytes = file.read(key).unwrap();
    (bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(), t.shape.clone())
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

#[test]
fn conditioning_and_pictures_match_a1111s_functions() {
    let record: Value = serde_json::from_str(&std::fs::read_to_string(fixtures().join("cases.json")).unwrap()).unwrap();
    let lines: Vec<String> = record["prompts"].as_array().unwrap().iter().chain(record["negatives"].as_array().unwrap()).map(|v| v.as_str().unwrap().to_string()).collect();
    let n_prompts = record["prompts"].as_array().unwrap().len();
    assert!(n_prompts >= 40);
    for (family, first) in [("sd1", "case00-0.png"), ("sdxl", "case11-0.png")] {
        let pipe = load(family);
        let file = WeightsFile::open(&fixtures().join(format!("{family}.safetensors"))).unwrap();
        let mut worst = 0f32;
        for (i, line) in lines.iter().enumerate() {
            let (z, pooled) = kiln_pipeline::prompt::cond(&pipe, line, line, None).unwrap();
            let (want, shape) = reference(&file, &i.to_string());
            assert_eq!(z.dims().iter().map(|&d| d as u64).collect::<Vec<_>>(), shape, "{family} prompt {i} {line:?}: shape");
            let got = values(z);
            let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
            let diff = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max) / scale;
            worst = worst.max(diff);
            assert!(diff <= 1e-5, "{family} prompt {i} {line:?}: {diff:e} relative");
            if family == "sdxl" {
                let (want, _) = reference(&file, &format!("{i}.pooled"));
                let got = values(pooled.unwrap());
                let d = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(d <= 1e-5, "{family} prompt {i}: pooled {d:e}");
            }
        }
        println!("{family}: {} prompts, conditioning within {worst:e} (relative to its largest value)", lines.len());
        // pictures: (prompt, negative) pairs fed to diffusers as prompt_embeds
        let cases: Value = serde_json::from_str(&std::fs::read_to_string(root().join("assets/fixtures/pipelines/cases.json")).unwrap()).unwrap();
        let case = cases["cases"].as_array().unwrap().iter().find(|c| c["images"][0] == first).unwrap();
        let (base, ..) = case_inputs(case, &root().join("assets/fixtures/pipelines"));
        for (j, pair) in record["families"][family]["pictures"].as_array().unwrap().iter().enumerate() {
            let (p, n) = (pair[0].as_u64().unwrap() as usize, pair[1].as_u64().unwrap() as usize);
            let o = GenerateOptions { prompt: lines[p].clone(), negative_prompt: Some(lines[n].clone()), prompt_syntax: PromptSyntax::A1111, ..base.clone() };
            let image = pipe.generate(&o, Task::Txt2Img, &mut |_, _| true).unwrap().remove(0);
            let (_, _, want) = read_png(&fixtures().join(format!("{family}-{j}.png")));
            let levels = max_levels(image.as_raw(), &want);
            println!("{family} picture {j} (prompt {p}, negative {n}): {levels} levels");
            assert!(levels <= 2, "{family} picture {j}: {levels} levels");
        }
    }
}

#[test]
fn chunks_follow_a1111() {
    let pipe = load("sd1");
    let tok = &pipe.tokenizer;
    let chunks = |s: &str| kiln_pipeline::prompt::tokenize_line(s, tok).unwrap();
    // "" is one chunk: start, then end tokens
    let empty = chunks("");
    assert_eq!(empty.len(), 1);
    assert_eq!(empty[0].tokens.len(), 77);
    assert_eq!((empty[0].tokens[0], empty[0].tokens[1]), (tok.bos_token_id(), tok.eos_token_id()));
    // BREAK starts a chunk; 80 words take two
    assert_eq!(chunks("a cat BREAK a dog").len(), 2);
    let long = (0..80).map(|i| format!("word{i}")).collect::<Vec<_>>().join(" ");
    assert!(chunks(&long).len() >= 2);
    // weights reach the multipliers
    let w = chunks("a (cat:1.5)");
    assert!(w[0].multipliers.contains(&1.5));
    // a weight that is not a number is an error naming it
    let err = kiln_pipeline::prompt::tokenize_line("a (cat:1.2.3)", tok).unwrap_err().to_string();
    assert!(err.contains("1.2.3"), "{err}");
}
