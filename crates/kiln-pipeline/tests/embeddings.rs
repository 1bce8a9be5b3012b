//! Textual-inversion embeddings against diffusers 0.42.1 (scripts/fixtures/embeddings.py): an
//! A1111 `.pt` (two vectors, a token with capitals), an A1111 `.safetensors` (three vectors) and a
//! diffusers `learned_embeds` file on the tiny SD1 model, an SDXL `clip_l`/`clip_g` file on SDXL,
//! give diffusers' token ids and pictures; a wrong width or a token already in the vocabulary is
//! an error naming it.

use std::path::PathBuf;

use burn::tensor::Device;
use kiln_pipeline::{GenerateOptions, LoadOptions, StableDiffusion, Task};
use serde_json::Value;

mod common;
use common::{case_inputs, max_levels, read_png, write_safetensors, TempDir};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixtures() -> PathBuf {
    root().join("assets/fixtures/embeddings")
}

fn load(family: &str) -> StableDiffusion {
    StableDiffusion::load(&root().join("assets/fixtures/models").join(family), &LoadOptions::new(&Device::flex())).unwrap()
}

/// The pipeline case's options with another prompt and negative prompt.
fn options(first_image: &str, prompt: &str, negative: Option<&str>) -> GenerateOptions {
    let cases: Value = serde_json::from_str(&std::fs::read_to_string(root().join("assets/fixtures/pipelines/cases.json")).unwrap()).unwrap();
    let case = cases["cases"].as_array().unwrap().iter().find(|c| c["images"][0] == first_image).unwrap();
    let (o, ..) = case_inputs(case, &root().join("assets/fixtures/pipelines"));
    GenerateOptions { prompt: prompt.into(), negative_prompt: negative.map(String::from), ..o }
}

#[test]
fn embeddings_give_diffusers_tokens_and_pictures() {
    let mut pipe = load("sd1");
    assert_eq!(pipe.load_textual_inversion(&fixtures().join("KilnCat.pt"), None).unwrap(), ["KilnCat", "KilnCat_1"]);
    assert_eq!(pipe.load_textual_inversion(&fixtures().join("kilndog.safetensors"), None).unwrap(), ["kilndog", "kilndog_1", "kilndog_2"]);
    assert_eq!(pipe.load_textual_inversion(&fixtures().join("learned_embeds.safetensors"), None).unwrap(), ["<kiln-fox>"]);
    let prompt = "a photo of KilnCat with kilndog and <kiln-fox>";
    // diffusers' ids (the script prints them): KilnCat matches but keeps one vector, kilndog expands
    let ids = pipe.tokenizer.encode(prompt).unwrap().ids;
    assert_eq!(ids[..12], [49406, 320, 1125, 539, 49408, 593, 49410, 49411, 49412, 537, 49413, 49407]);
    let image = pipe.generate(&options("case00-0.png", prompt, Some("kilndog")), Task::Txt2Img, &mut |_, _| true).unwrap().remove(0);
    let (_, _, want) = read_png(&fixtures().join("sd1-embeddings.png"));
    let worst = max_levels(image.as_raw(), &want);
    println!("sd1: {worst} levels from diffusers' picture with three embeddings");
    assert!(worst <= 2, "{worst} levels");

    let mut pipe = load("sdxl");
    assert_eq!(pipe.load_textual_inversion(&fixtures().join("kilnxl.safetensors"), None).unwrap(), ["kilnxl", "kilnxl_1"]);
    let image = pipe.generate(&options("case11-0.png", "kilnxl on a table", None), Task::Txt2Img, &mut |_, _| true).unwrap().remove(0);
    let (_, _, want) = read_png(&fixtures().join("sdxl-embeddings.png"));
    let worst = max_levels(image.as_raw(), &want);
    println!("sdxl: {worst} levels from diffusers' picture with a clip_l/clip_g embedding");
    assert!(worst <= 2, "{worst} levels");
}

#[test]
fn embeddings_that_do_not_fit_say_why() {
    let tmp = TempDir::new("embeddings-bad");
    let mut pipe = load("sd1");
    // an SD 1.5-wide embedding on a 32-wide model
    let wide = tmp.0.join("wide.safetensors");
    write_safetensors(&wide, &[("emb_params".into(), "F32", vec![1, 768], Some(vec![0; 768 * 4]))]);
    let err = pipe.load_textual_inversion(&wide, None).unwrap_err().to_string();
    assert!(err.contains("wide.safetensors") && err.contains("width 768") && err.contains("text_encoder 32"), "{err}");
    // a token already in the vocabulary, or added before
    let err = pipe.load_textual_inversion(&fixtures().join("learned_embeds.safetensors"), Some("cat")).unwrap_err().to_string();
    assert!(err.contains("\"cat\"") && err.contains("already"), "{err}");
    pipe.load_textual_inversion(&fixtures().join("learned_embeds.safetensors"), None).unwrap();
    assert!(pipe.load_textual_inversion(&fixtures().join("learned_embeds.safetensors"), None).is_err());
    // not an embedding
    let err = pipe.load_textual_inversion(&root().join("assets/fixtures/loras/sd1-peft.safetensors"), None).unwrap_err().to_string();
    assert!(err.contains("is not a textual-inversion embedding"), "{err}");
}
