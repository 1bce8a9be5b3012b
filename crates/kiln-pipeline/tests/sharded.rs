//! Sharded safetensors checkpoints (`*.safetensors.index.json` + `*-0000N-of-0000M.safetensors`,
//! what `save_pretrained(max_shard_size=…)` writes and the Hub ships for T5 and FLUX's
//! transformer): assets/fixtures/models/flux-dev-sharded holds flux-dev's transformer and T5 in
//! three shards each (scripts/fixtures/flow_pipelines.py). The shards hold exactly the single
//! file's tensors, and the sharded model draws diffusers' picture.

use std::path::PathBuf;

use burn::tensor::Device;
mod common;
use common::read_png;
use kiln_nn::WeightsFile;
use kiln_pipeline::{FlowOptions, GenerateOptions, LoadOptions, Pipeline, ResolveOptions, Task};

fn models() -> PathBuf {
    PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into())).join("../../assets/fixtures/models")
}

#[test]
fn shards_hold_the_single_files_tensors() {
    for (component, stem) in [("transformer", "diffusion_pytorch_model"), ("text_encoder_2", "model")] {
        let dir = models().join("flux-dev-sharded").join(component);
        let shards = std::fs::read_dir(&dir).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().contains("-of-")).count();
        assert!(shards >= 2, "{component}: {shards} shards");
        let sharded = WeightsFile::open(&dir.join(format!("{stem}.safetensors.index.json"))).unwrap();
        let single = WeightsFile::open(&models().join("flux-dev").join(component).join(format!("{stem}.safetensors"))).unwrap();
        let mut a: Vec<_> = sharded.tensors().to_vec();
        let mut b: Vec<_> = single.tensors().to_vec();
        a.sort_by(|x, y| x.name.cmp(&y.name));
        b.sort_by(|x, y| x.name.cmp(&y.name));
        assert_eq!(a, b, "{component}: the same tensors");
        for t in &b {
            assert_eq!(sharded.read(&t.name).unwrap(), single.read(&t.name).unwrap(), "{component}: {}", t.name);
        }
    }
}

#[test]
fn a_sharded_model_draws_diffusers_picture() {
    let root = models().join("flux-dev-sharded");
    let folder = kiln_pipeline::ModelFolder::open(&root, &ResolveOptions::default()).unwrap();
    let weights = folder.component("transformer").unwrap().weights().unwrap().path.clone();
    assert!(weights.ends_with("diffusion_pytorch_model.safetensors.index.json"), "{}", weights.display());
    let pipe = Pipeline::load(&root, &LoadOptions::new(&Device::flex())).unwrap();
    // case 8 of scripts/fixtures/flow_pipelines.py (flux-dev, 40×24, guidance 3.5)
    let o = GenerateOptions {
        prompt: "a photograph of an astronaut riding a horse".into(),
        num_inference_steps: 4,
        guidance_scale: 3.5,
        width: Some(40),
        height: Some(24),
        seed: 1,
        flow: FlowOptions { max_sequence_length: Some(48), ..FlowOptions::default() },
        ..GenerateOptions::default()
    };
    let images = pipe.generate(&o, Task::Txt2Img, &mut |_, _| true).unwrap();
    let (w, h, want) = read_png(&models().join("../flow_pipelines/case08-0.png"));
    assert_eq!((images[0].width(), images[0].height()), (w, h));
    let worst = images[0].as_raw().iter().zip(&want).map(|(a, b)| (*a as i32 - *b as i32).abs()).max().unwrap();
    assert!(worst <= 2, "{worst} levels from diffusers");
}

/// A broken index names what is wrong: a shard that is missing, a tensor the index places in a
/// shard that lacks it, a shard path leaving the folder.
#[test]
fn broken_indexes_are_named() {
    let tmp = common::TempDir::new("shards");
    let src = models().join("flux-dev-sharded/text_encoder_2");
    for f in ["model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors"] {
        std::fs::copy(src.join(f), tmp.0.join(f)).unwrap();
    }
    let index: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(src.join("model.safetensors.index.json")).unwrap()).unwrap();
    let write = |v: &serde_json::Value| {
        let p = tmp.0.join("model.safetensors.index.json");
        std::fs::write(&p, v.to_string()).unwrap();
        WeightsFile::open(&p).err().map(|e| e.to_string()).unwrap_or_default()
    };
    assert!(write(&index).is_empty(), "the copied index opens");
    let mut v = index.clone();
    v["weight_map"]["shared.weight"] = "model-00009-of-00009.safetensors".into();
    assert!(write(&v).contains("model-00009-of-00009.safetensors"));
    let mut v = index.clone();
    v["weight_map"]["encoder.nonexistent.weight"] = "model-00001-of-00003.safetensors".into();
    let e = write(&v);
    assert!(e.contains("encoder.nonexistent.weight") && e.contains("has no such tensor"), "{e}");
    let mut v = index.clone();
    v["weight_map"]["shared.weight"] = "../model-00001-of-00003.safetensors".into();
    assert!(write(&v).contains("not a file name in the index's folder"));
    assert!(write(&serde_json::json!({"metadata": {}})).contains("weight_map"));
}
