//! Loading a `vae/` folder: variants, and every way the folder can be broken gives an error that
//! names the file and the tensor or key.

mod common;

use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::DType;
use common::fixture;
use kiln_vae::{AutoencoderKL, LoadError};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use kiln_vae::LoadOptions;

const WEIGHTS: &str = "diffusion_pytorch_model.safetensors";

/// A fresh folder under the system temp dir holding the fixture's config.json.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-vae-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(fixture("sd1").join("vae/config.json"), dir.join("config.json")).unwrap();
    dir
}

fn fixture_weights() -> Vec<u8> {
    std::fs::read(fixture("sd1").join("vae").join(WEIGHTS)).unwrap()
}

/// Rewrites the fixture weights: `edit` gets the (name, dtype, shape, bytes) list.
fn write_edited(dir: &Path, edit: impl FnOnce(&mut Vec<(String, Dtype, Vec<usize>, Vec<u8>)>)) {
    let bytes = fixture_weights();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> =
        st.tensors().into_iter().map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec())).collect();
    edit(&mut tensors);
    let views: Vec<(String, TensorView)> =
        tensors.iter().map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
    std::fs::write(dir.join(WEIGHTS), safetensors::serialize(views, None).unwrap()).unwrap();
}

fn load_err(dir: &Path, variant: Option<&str>) -> (LoadError, String) {
    let err = match AutoencoderKL::load(dir, &LoadOptions::new(&Device::flex()).with_variant(variant)).expect_err("load must fail") {
        kiln_vae::VaeError::Load(e) => e,
        other => panic!("expected a load error, got {other}"),
    };
    let msg = err.to_string();
    eprintln!("{msg}");
    (err, msg)
}

#[test]
fn fp16_variant_file_is_used() {
    let dir = scratch("variant");
    std::fs::write(dir.join("diffusion_pytorch_model.fp16.safetensors"), fixture_weights()).unwrap();
    let vae = AutoencoderKL::load(&dir, &LoadOptions::new(&Device::flex()).with_variant(Some("fp16"))).unwrap();
    assert_eq!(vae.dtype(), DType::F32);
    // without the variant, the plain file is looked for and is absent; the error names the
    // file present and the way to load it
    let (err, msg) = load_err(&dir, None);
    assert!(matches!(err, LoadError::MissingWeights { .. }) && msg.contains(WEIGHTS), "{msg}");
    assert!(msg.contains("diffusion_pytorch_model.fp16.safetensors") && msg.contains("pass the variant"), "{msg}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn missing_files_are_named() {
    let dir = scratch("missing-file");
    let (err, msg) = load_err(&dir, Some("fp16"));
    assert!(matches!(err, LoadError::MissingVariant { .. }) && msg.contains("diffusion_pytorch_model.fp16.safetensors"), "{msg}");
    std::fs::remove_file(dir.join("config.json")).unwrap();
    let (err, msg) = load_err(&dir, None);
    assert!(matches!(err, LoadError::Io { .. }) && msg.contains("config.json"), "{msg}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn missing_tensor_is_named() {
    let dir = scratch("missing-tensor");
    write_edited(&dir, |t| t.retain(|(n, ..)| n != "decoder.mid_block.attentions.0.to_k.bias"));
    let (err, msg) = load_err(&dir, None);
    assert!(matches!(err, LoadError::Missing { .. }), "{msg}");
    assert!(msg.contains(WEIGHTS) && msg.contains("decoder.mid_block.attentions.0.to_k.bias"), "{msg}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn unused_tensor_is_named() {
    let dir = scratch("unused-tensor");
    write_edited(&dir, |t| {
        t.push(("encoder.down_blocks.0.attentions.0.to_q.weight".into(), Dtype::F16, vec![2], vec![0; 4]))
    });
    let (err, msg) = load_err(&dir, None);
    assert!(matches!(err, LoadError::Unused { .. }), "{msg}");
    assert!(msg.contains(WEIGHTS) && msg.contains("encoder.down_blocks.0.attentions.0.to_q.weight"), "{msg}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn shape_mismatch_is_named() {
    let dir = scratch("shape");
    write_edited(&dir, |t| {
        let e = t.iter_mut().find(|(n, ..)| n == "post_quant_conv.weight").unwrap();
        e.2 = vec![4, 2, 1, 1];
        e.3.truncate(4 * 2 * 2);
    });
    let (err, msg) = load_err(&dir, None);
    assert!(matches!(err, LoadError::Mismatch { .. }), "{msg}");
    assert!(msg.contains(WEIGHTS) && msg.contains("post_quant_conv.weight"), "{msg}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn truncated_and_corrupt_files_are_reported() {
    let dir = scratch("truncated");
    let bytes = fixture_weights();
    std::fs::write(dir.join(WEIGHTS), &bytes[..bytes.len() - 1000]).unwrap();
    let (err, msg) = load_err(&dir, None);
    assert!(matches!(err, LoadError::Format { .. }) && msg.contains(WEIGHTS) && msg.contains("truncated"), "{msg}");

    std::fs::write(dir.join(WEIGHTS), b"<html>404 Not Found</html>").unwrap();
    let (err, msg) = load_err(&dir, None);
    assert!(matches!(err, LoadError::Format { .. }) && msg.contains(WEIGHTS), "{msg}");

    std::fs::write(dir.join(WEIGHTS), b"").unwrap();
    let (err, msg) = load_err(&dir, None);
    assert!(matches!(err, LoadError::Format { .. }) && msg.contains(WEIGHTS), "{msg}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bad_configs_are_named() {
    let dir = scratch("config");
    std::fs::write(dir.join(WEIGHTS), fixture_weights()).unwrap();
    let original = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let cases = [
        (original.replace("\"silu\"", "\"gelu\""), "act_fn"),
        (original.replacen("\"DownEncoderBlock2D\"", "\"AttnDownEncoderBlock2D\"", 1), "down_block_types"),
        (original.replace("\"norm_num_groups\": 32", "\"norm_num_groups\": 24"), "norm_num_groups"),
        (original.replace("\"latent_channels\": 4", "\"latent_channels\": \"four\""), "latent_channels"),
        (original[..original.len() / 2].to_string(), "config.json"),
    ];
    for (text, key) in cases {
        std::fs::write(dir.join("config.json"), text).unwrap();
        let (err, msg) = load_err(&dir, None);
        assert!(matches!(err, LoadError::Unsupported { .. } | LoadError::Config { .. }), "{msg}");
        assert!(msg.contains("config.json") && msg.contains(key), "{key}: {msg}");
    }
    // a config with a different architecture than the weights: the tensors are named
    std::fs::write(
        dir.join("config.json"),
        original.replace("\"mid_block_add_attention\": true", "\"mid_block_add_attention\": false"),
    )
    .unwrap();
    let (err, msg) = load_err(&dir, None);
    assert!(matches!(err, LoadError::Unused { .. }) && msg.contains("mid_block.attentions.0.to_q.weight"), "{msg}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let device = Device::flex();
    let vae = AutoencoderKL::load(&fixture("sd1").join("vae"), &LoadOptions::new(&device)).unwrap();
    let msg = vae.decode(Tensor::zeros([1, 3, 4, 4], &device)).unwrap_err().to_string();
    assert!(msg.contains("latents") && msg.contains("[1, 3, 4, 4]"), "{msg}");
    let msg = vae.encode(Tensor::zeros([1, 4, 8, 8], &device)).unwrap_err().to_string();
    assert!(msg.contains("image") && msg.contains("[1, 4, 8, 8]"), "{msg}");
    // one downsampler: the encoder needs 2 px
    let msg = vae.encode(Tensor::zeros([1, 3, 1, 8], &device)).unwrap_err().to_string();
    assert!(msg.contains("height >= 2"), "{msg}");
    // tiles every 24 px: width 49 leaves a 1 px edge tile
    let msg = vae.tiled_encode(Tensor::zeros([1, 3, 8, 49], &device)).unwrap_err().to_string();
    assert!(msg.contains("width 49") && msg.contains("edge tile of 1 px"), "{msg}");
    let posterior = vae.encode(Tensor::zeros([1, 3, 8, 8], &device)).unwrap();
    let msg = posterior.sample(Tensor::zeros([1, 4, 8, 8], &device)).unwrap_err().to_string();
    assert!(msg.contains("[1, 4, 8, 8]") && msg.contains("[1, 4, 4, 4]"), "{msg}");
}

#[test]
fn bad_tile_settings_are_errors() {
    let device = Device::flex();
    let mut vae = AutoencoderKL::load(&fixture("sd1").join("vae"), &LoadOptions::new(&device)).unwrap();
    vae.tile_overlap_factor = 1.5;
    let msg = vae.tiled_decode(Tensor::zeros([1, 4, 20, 20], &device)).unwrap_err().to_string();
    assert!(msg.contains("tile_overlap_factor 1.5"), "{msg}");
    vae.tile_overlap_factor = 0.25;
    vae.tile_latent_min_size = 0;
    let msg = vae.tiled_encode(Tensor::zeros([1, 3, 40, 40], &device)).unwrap_err().to_string();
    assert!(msg.contains("tile_latent_min_size 0"), "{msg}");
}
