//! Parity on the extra fixtures of scripts/fixtures/unet_extra.py: odd latent sizes through three
//! levels, and the less common config values (loaded from an fp16 variant file).

mod common;

use std::path::PathBuf;

use burn::prelude::*;
use common::*;
use kiln_unet::{UNet2DConditionModel, UNetError};
use kiln_unet::LoadOptions;

fn extra_dir(name: &str) -> PathBuf {
    repo_root().join("assets/fixtures/unet").join(name)
}

fn check(name: &str, variant: Option<&str>) {
    let device = Device::flex();
    let dir = extra_dir(name);
    let unet = UNet2DConditionModel::load(&dir, &LoadOptions::new(&device).with_variant(variant)).unwrap();
    let refs = Refs::open(&dir.join("reference.safetensors"));
    let mut case = 0;
    while refs.has(&format!("case{case}.out")) {
        let p = |k: &str| format!("case{case}.{k}");
        let sample: Tensor<4> = refs.tensor(&p("sample"), &device);
        let context: Tensor<3> = refs.tensor(&p("encoder_hidden_states"), &device);
        let timesteps: Vec<f64> = refs.host(&p("timesteps")).0.iter().map(|&t| t as f64).collect();
        let out = unet.forward(sample.clone(), &timesteps, context, None).unwrap();
        let (err, scale) = max_errors(out, refs.tensor(&p("out"), &device));
        eprintln!("{name} case{case} {:?} t={timesteps:?}: max err {err:.3e}, max |ref| {scale:.3}", sample.dims());
        // f32 against f32: summation order only (see parity.rs).
        let tol = 1e-4 * scale.max(1.0);
        assert!(err <= tol, "{name} case{case}: max err {err} > {tol}");
        case += 1;
    }
    assert!(case >= 2, "{name}: no reference cases");
}

/// 5×7, 6×9 and 8×8 latents through a UNet with two upsamplers: the first two are not multiples
/// of 4, so both upsamplers interpolate to the skip connection's size (forward_upsample_size).
#[test]
fn odd_latent_sizes() {
    check("odd", None);
}

/// center_input_sample, flip_sin_to_cos = false, freq_shift 1, time_embedding_dim, 1×1 conv_in,
/// 5×5 conv_out, asymmetric downsample padding, mid_block_scale_factor, per-block lists, linear
/// projections with upcast_attention, 5 in / 3 out channels.
#[test]
fn less_common_options() {
    check("options", Some("fp16"));
}

/// The `options` fixture ships only `diffusion_pytorch_model.fp16.safetensors`: without the
/// variant the loader says which files exist; `odd` has no fp16 variant.
#[test]
fn variant_selection_errors() {
    let device = Device::flex();
    let err = UNet2DConditionModel::load(&extra_dir("options"), &LoadOptions::new(&device)).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, UNetError::Load(kiln_nn::LoadError::MissingWeights { .. })), "{msg}");
    assert!(
        msg.contains("diffusion_pytorch_model.safetensors") && msg.contains("diffusion_pytorch_model.fp16.safetensors"),
        "{msg}"
    );

    let err = UNet2DConditionModel::load(&extra_dir("odd"), &LoadOptions::new(&device).with_variant(Some("fp16"))).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, UNetError::Load(kiln_nn::LoadError::MissingVariant { .. })), "{msg}");
    assert!(msg.contains("'fp16'") && msg.contains("diffusion_pytorch_model.fp16.safetensors"), "{msg}");
    assert!(msg.contains("present: diffusion_pytorch_model.safetensors"), "{msg}");
}

/// `num_attention_heads`, when given, is the head count and `attention_head_dim` is not used for
/// it (diffusers 0.42 refuses a non-null value in this class; kiln takes the meaning it has in
/// the rest of diffusers). The sd1 fixture (8 heads) with the head count moved to
/// `num_attention_heads` must give the same outputs.
#[test]
fn num_attention_heads_is_the_head_count() {
    let dir = scratch_dir("num-heads");
    let src = fixture_dir("sd1").join("unet");
    std::fs::copy(src.join("diffusion_pytorch_model.safetensors"), dir.join("diffusion_pytorch_model.safetensors"))
        .unwrap();
    let config = std::fs::read_to_string(src.join("config.json")).unwrap();
    let config = config
        .replace("\"attention_head_dim\": 8", "\"attention_head_dim\": 4")
        .replace("\"num_attention_heads\": null", "\"num_attention_heads\": 8");
    std::fs::write(dir.join("config.json"), config).unwrap();
    let device = Device::flex();
    let unet = UNet2DConditionModel::load(&dir, &LoadOptions::new(&device)).unwrap();
    let refs = Refs::family("sd1");
    for (case, err, scale) in run_cases(&unet, &refs, &device) {
        // f32 against f32, as in parity.rs
        let tol = 1e-4 * scale.max(1.0);
        assert!(err <= tol, "{case}: max err {err} > {tol}");
    }
}
