//! Loading errors: every one names the file and, where there is one, the tensor or config key.
//! The broken folders are built from the sd1 fixture UNet in the test target's tmp dir.

mod common;

use std::path::{Path, PathBuf};

use burn::prelude::*;
use common::*;
use kiln_nn::LoadError;
use kiln_unet::{TextTimeCond, UNet2DConditionModel, UNetError};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use kiln_unet::LoadOptions;

const WEIGHTS: &str = "diffusion_pytorch_model.safetensors";

fn sd1_unet() -> PathBuf {
    fixture_dir("sd1").join("unet")
}

/// A copy of the sd1 UNet folder whose weight file is rewritten by `edit` (name → tensor).
fn edited(name: &str, edit: impl FnOnce(&mut Vec<(String, TensorView<'_>)>)) -> PathBuf {
    let dir = scratch_dir(name);
    std::fs::copy(sd1_unet().join("config.json"), dir.join("config.json")).unwrap();
    let bytes = std::fs::read(sd1_unet().join(WEIGHTS)).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, TensorView<'_>)> = st.tensors();
    edit(&mut tensors);
    std::fs::write(dir.join(WEIGHTS), safetensors::serialize(tensors, None).unwrap()).unwrap();
    dir
}

fn load(dir: &Path) -> Result<UNet2DConditionModel, UNetError> {
    UNet2DConditionModel::load(dir, &LoadOptions::new(&Device::flex()))
}

const ZEROS: [u8; 4096] = [0; 4096];

#[test]
fn missing_tensor_is_named() {
    let key = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight";
    let dir = edited("missing", |t| t.retain(|(n, _)| n != key));
    let err = load(&dir).unwrap_err();
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(matches!(err, UNetError::Load(LoadError::Missing { .. })), "{msg}");
    assert!(msg.contains(key) && msg.contains(WEIGHTS), "{msg}");
}

#[test]
fn unused_tensor_is_named() {
    let key = "mid_block.attentions.0.extra.weight";
    let dir = edited("unused", |t| t.push((key.into(), TensorView::new(Dtype::F16, vec![4], &ZEROS[..8]).unwrap())));
    let err = load(&dir).unwrap_err();
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(matches!(err, UNetError::Load(LoadError::Unused { .. })), "{msg}");
    assert!(msg.contains(key) && msg.contains(WEIGHTS), "{msg}");
}

#[test]
fn shape_mismatch_is_named() {
    let key = "conv_in.weight";
    let dir = edited("shape", |t| {
        let entry = t.iter_mut().find(|(n, _)| n == key).unwrap();
        entry.1 = TensorView::new(Dtype::F16, vec![32, 4, 3, 2], &ZEROS[..32 * 4 * 3 * 2 * 2]).unwrap();
    });
    let err = load(&dir).unwrap_err();
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(matches!(err, UNetError::Load(LoadError::Mismatch { .. })), "{msg}");
    assert!(msg.contains(key) && msg.contains(WEIGHTS), "{msg}");
}

/// A config that disagrees with the weights (1×1 conv projections stored, Linear asked for).
#[test]
fn config_weight_disagreement_names_the_tensor() {
    let dir = scratch_dir("linear-proj");
    std::fs::copy(sd1_unet().join(WEIGHTS), dir.join(WEIGHTS)).unwrap();
    let config = std::fs::read_to_string(sd1_unet().join("config.json")).unwrap();
    let config = config.replace("\"use_linear_projection\": false", "\"use_linear_projection\": true");
    std::fs::write(dir.join("config.json"), config).unwrap();
    let msg = load(&dir).unwrap_err().to_string();
    eprintln!("{msg}");
    assert!(msg.contains("proj_in.weight") && msg.contains(WEIGHTS), "{msg}");
}

#[test]
fn truncated_file_is_reported() {
    let dir = scratch_dir("truncated");
    std::fs::copy(sd1_unet().join("config.json"), dir.join("config.json")).unwrap();
    let bytes = std::fs::read(sd1_unet().join(WEIGHTS)).unwrap();
    std::fs::write(dir.join(WEIGHTS), &bytes[..bytes.len() - 1000]).unwrap();
    let err = load(&dir).unwrap_err();
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(matches!(err, UNetError::Load(LoadError::Format { .. })), "{msg}");
    assert!(msg.contains("truncated") && msg.contains(WEIGHTS), "{msg}");
}

#[test]
fn corrupt_file_is_reported() {
    let dir = scratch_dir("corrupt");
    std::fs::copy(sd1_unet().join("config.json"), dir.join("config.json")).unwrap();
    std::fs::write(dir.join(WEIGHTS), b"<html>404 Not Found</html> and then some more bytes").unwrap();
    let err = load(&dir).unwrap_err();
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(matches!(err, UNetError::Load(LoadError::Format { .. })), "{msg}");
    assert!(msg.contains(WEIGHTS), "{msg}");
}

#[test]
fn missing_files_are_named() {
    let dir = scratch_dir("no-weights");
    std::fs::copy(sd1_unet().join("config.json"), dir.join("config.json")).unwrap();
    let err = load(&dir).unwrap_err();
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(matches!(err, UNetError::Load(kiln_nn::LoadError::MissingWeights { .. })), "{msg}");
    assert!(msg.contains(WEIGHTS), "{msg}");

    // a sharded checkpoint's index is read; one whose shards are missing names them
    std::fs::write(dir.join("diffusion_pytorch_model.safetensors.index.json"), r#"{"weight_map": {"conv_in.weight": "diffusion_pytorch_model-00001-of-00002.safetensors"}}"#).unwrap();
    let msg = load(&dir).unwrap_err().to_string();
    eprintln!("{msg}");
    assert!(msg.contains("diffusion_pytorch_model-00001-of-00002.safetensors"), "{msg}");

    let dir = scratch_dir("no-config");
    let err = load(&dir).unwrap_err();
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(matches!(err, UNetError::Load(LoadError::Io { .. })), "{msg}");
    assert!(msg.contains("config.json"), "{msg}");
}

#[test]
fn unsupported_config_value_names_file_key_and_value() {
    for (from, to, key, value) in [
        (
            "\"resnet_time_scale_shift\": \"default\"",
            "\"resnet_time_scale_shift\": \"scale_shift\"",
            "resnet_time_scale_shift",
            "\"scale_shift\"",
        ),
        ("\"time_cond_proj_dim\": null", "\"time_cond_proj_dim\": 256", "time_cond_proj_dim", "256"),
        ("\"class_embed_type\": null", "\"class_embed_type\": \"projection\"", "class_embed_type", "\"projection\""),
        ("\"attention_type\": \"default\"", "\"attention_type\": \"gated\"", "attention_type", "\"gated\""),
    ] {
        let dir = scratch_dir("bad-config");
        std::fs::copy(sd1_unet().join(WEIGHTS), dir.join(WEIGHTS)).unwrap();
        let config = std::fs::read_to_string(sd1_unet().join("config.json")).unwrap();
        assert!(config.contains(from), "{from}");
        std::fs::write(dir.join("config.json"), config.replace(from, to)).unwrap();
        let err = load(&dir).unwrap_err();
        let msg = err.to_string();
        eprintln!("{msg}");
        assert!(matches!(err, UNetError::ConfigFile { .. }), "{msg}");
        assert!(msg.contains("config.json") && msg.contains(key) && msg.contains(value), "{msg}");
    }
    let dir = scratch_dir("bad-json");
    std::fs::write(dir.join("config.json"), "{\"in_channels\": 4,").unwrap();
    let msg = load(&dir).unwrap_err().to_string();
    eprintln!("{msg}");
    assert!(msg.contains("config.json"), "{msg}");
}

/// Bad forward inputs are errors, not panics.
#[test]
fn bad_inputs_are_errors() {
    let device = Device::flex();
    let sd1 = load(&sd1_unet()).unwrap();
    let ctx = Tensor::<3>::zeros([1, 77, 32], &device);
    let x = Tensor::<4>::zeros([1, 4, 8, 8], &device);
    let cases = [
        sd1.forward(Tensor::zeros([1, 9, 8, 8], &device), &[1.0], ctx.clone(), None),
        sd1.forward(x.clone(), &[1.0], Tensor::zeros([1, 77, 64], &device), None),
        sd1.forward(x.clone(), &[1.0], Tensor::zeros([2, 77, 32], &device), None),
        sd1.forward(x.clone(), &[1.0, 2.0], ctx.clone(), None),
        sd1.forward(
            x.clone(),
            &[1.0],
            ctx,
            Some(&TextTimeCond { text_embeds: Tensor::zeros([1, 32], &device), time_ids: vec![vec![0.0; 6]] }),
        ),
    ];
    for (i, result) in cases.into_iter().enumerate() {
        let err = result.unwrap_err();
        assert!(matches!(err, UNetError::Input(_)), "case {i}: {err}");
    }

    let sdxl = load(&fixture_dir("sdxl").join("unet")).unwrap();
    let ctx = Tensor::<3>::zeros([1, 77, 64], &device);
    let msg = sdxl.forward(x.clone(), &[1.0], ctx.clone(), None).unwrap_err().to_string();
    eprintln!("{msg}");
    assert!(msg.contains("text_time"), "{msg}");
    let added = TextTimeCond { text_embeds: Tensor::zeros([1, 32], &device), time_ids: vec![vec![0.0; 5]] };
    let msg = sdxl.forward(x, &[1.0], ctx, Some(&added)).unwrap_err().to_string();
    eprintln!("{msg}");
    assert!(msg.contains("projection_class_embeddings_input_dim"), "{msg}");
}
