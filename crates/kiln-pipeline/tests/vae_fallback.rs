//! An f16 VAE whose decode overflows falls back to f32 instead of returning NaN (a black image);
//! one that does not overflow stays in f16 and agrees with f32.

use std::path::PathBuf;

use burn::tensor::{DType, Device, Tensor, TensorData};
use kiln_pipeline::{LoadOptions, StableDiffusion, TorchGenerator};

fn sd1() -> StableDiffusion {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into())).join("../../assets/fixtures/models/sd1");
    StableDiffusion::load(&dir, &LoadOptions::new(&Device::flex())).unwrap()
}

fn latents(scale: f64) -> Tensor<4> {
    let shape = [1, 4, 16, 16];
    Tensor::from_data(TensorData::new(TorchGenerator::new(3).randn(&shape), shape), &Device::flex()).mul_scalar(scale)
}

fn max_abs_diff(a: Tensor<4>, b: Tensor<4>) -> f32 {
    (a.cast(DType::F32) - b.cast(DType::F32)).abs().max().into_scalar::<f32>()
}

#[test]
fn an_overflowing_f16_decode_is_redone_in_f32() {
    let mut pipe = sd1();
    // latents far outside the VAE's range: activations pass f16's 65504 and become inf/NaN
    let z = latents(3.0e4);
    let (want, fell_back) = pipe.decode_checked(z.clone()).unwrap();
    assert!(!fell_back, "f32 never falls back");
    pipe.set_vae_dtype(DType::F16);
    let raw = pipe.vae.decode(z.clone()).unwrap().cast(DType::F32);
    assert!(!raw.is_finite().all().into_scalar::<bool>(), "the test needs an f16 decode that overflows");
    let (got, fell_back) = pipe.decode_checked(z).unwrap();
    assert!(fell_back, "the NaN/inf decode must fall back to f32");
    assert_eq!(got.dtype(), DType::F32);
    assert!(max_abs_diff(got, want) < 1e-4, "the fallback is the f32 decode");
}

#[test]
fn a_finite_f16_decode_stays_f16() {
    let mut pipe = sd1();
    let z = latents(1.0);
    let (want, _) = pipe.decode_checked(z.clone()).unwrap();
    pipe.set_vae_dtype(DType::F16);
    let (got, fell_back) = pipe.decode_checked(z).unwrap();
    assert!(!fell_back);
    assert_eq!(got.dtype(), DType::F16);
    let err = max_abs_diff(got, want);
    assert!(err < 2e-2, "f16 decode within f16 rounding of f32: {err}");
}
