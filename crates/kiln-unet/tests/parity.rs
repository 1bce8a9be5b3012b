//! Parity with diffusers 0.42.1 on the tiny fixture UNets (assets/fixtures/models/*/unet, written
//! by scripts/fixtures/models.py: weights stored f16, references computed in f32 from the same
//! values).

mod common;

use burn::prelude::*;
use burn::tensor::DType;
use common::*;
use kiln_unet::UNet2DConditionModel;
use kiln_unet::LoadOptions;

fn f32_parity(family: &str) {
    let device = Device::flex();
    let unet = UNet2DConditionModel::load(&fixture_dir(family).join("unet"), &LoadOptions::new(&device)).unwrap();
    let refs = Refs::family(family);
    for (case, err, scale) in run_cases(&unet, &refs, &device) {
        eprintln!("{family} f32 {case}: max err {err:.3e}, max |ref| {scale:.3}");
        // f32 against f32: only summation order differs (im2col/gemm vs oneDNN, fused attention),
        // a few ulps of the largest activations.
        let tol = 1e-4 * scale.max(1.0);
        assert!(err <= tol, "{family} {case}: max err {err} > {tol}");
    }
}

#[test]
fn sd1_f32() {
    f32_parity("sd1");
}

#[test]
fn sd2_f32() {
    f32_parity("sd2");
}

#[test]
fn sdxl_f32() {
    f32_parity("sdxl");
}

#[test]
fn inpaint_f32() {
    f32_parity("inpaint");
}

fn f16_run(family: &str) {
    let device = Device::flex();
    let unet = UNet2DConditionModel::load(&fixture_dir(family).join("unet"), &LoadOptions::new(&device).with_dtype(DType::F16)).unwrap();
    assert_eq!(unet.dtype(), DType::F16);
    let refs = Refs::family(family);
    for (case, err, scale) in run_cases(&unet, &refs, &device) {
        eprintln!("{family} f16 {case}: max err {err:.3e}, max |ref| {scale:.3}");
        // The weights are f16-exact (the fixtures store f16), so the error is the f16 rounding of
        // the activations (relative 2^-11 ≈ 4.9e-4) accumulated over ~40 layers; GroupNorm and
        // LayerNorm statistics are f32. Measured on flex: ≤ 6.4e-4 for every family and case;
        // the bound leaves ~6× headroom.
        let tol = 4e-3 * scale.max(1.0);
        assert!(err <= tol, "{family} {case} (f16): max err {err} > {tol}");
    }
}

#[test]
fn sd1_f16() {
    f16_run("sd1");
}

#[test]
fn sd2_f16() {
    f16_run("sd2");
}

#[test]
fn sdxl_f16() {
    f16_run("sdxl");
}

#[test]
fn inpaint_f16() {
    f16_run("inpaint");
}
