//! AutoencoderKL against diffusers 0.42.1 on the tiny fixture VAE (block_out_channels (32, 64),
//! sample_size 32): `vae.*` keys of assets/fixtures/models/sd1/reference.safetensors, written by
//! scripts/fixtures/models.py (`vae_refs`).

mod common;

use burn::prelude::*;
use burn::tensor::DType;
use common::{Reference, assert_f32_parity, fixture, max_errors};
use kiln_vae::AutoencoderKL;
use kiln_vae::LoadOptions;

fn load(family: &str, dtype: DType) -> AutoencoderKL {
    AutoencoderKL::load(&fixture(family).join("vae"), &LoadOptions::new(&Device::flex()).with_dtype(dtype)).expect("fixture VAE loads")
}

#[test]
fn encode_sample_decode_match_diffusers() {
    let device = Device::flex();
    let r = Reference::open("sd1");
    let vae = load("sd1", DType::F32);
    assert_eq!(vae.dtype(), DType::F32);

    let posterior = vae.encode(r.tensor("vae.image", &device)).unwrap();
    assert_f32_parity("mean", posterior.mean.clone(), r.tensor("vae.mean", &device));
    assert_f32_parity("logvar", posterior.logvar.clone(), r.tensor("vae.logvar", &device));
    let sample = posterior.sample(r.tensor("vae.noise", &device)).unwrap();
    assert_f32_parity("sample (mean + std * noise)", sample, r.tensor("vae.sample", &device));
    assert_f32_parity("mode", posterior.mode(), r.tensor("vae.mean", &device));

    let decoded = vae.decode(r.tensor("vae.latents", &device)).unwrap();
    assert_eq!(decoded.dims(), [1, 3, 16, 12]); // two levels: factor 2
    assert_f32_parity("decoded", decoded, r.tensor("vae.decoded", &device));
}

/// diffusers' `enable_tiling()` path: a 72×56 image (tiles of 32 px every 24) and 20×24 latents
/// (tiles of 16 every 12), blended and cropped as `_tiled_encode` / `tiled_decode` do.
#[test]
fn tiled_encode_decode_match_diffusers() {
    let device = Device::flex();
    let r = Reference::open("sd1");
    let mut vae = load("sd1", DType::F32);
    let image = r.tensor("vae.tiled.image", &device);
    let latents = r.tensor("vae.tiled.latents", &device);

    // explicit calls, tiling flag off
    assert!(!vae.encode_is_tiled(72, 56));
    let mean = vae.tiled_encode(image.clone()).unwrap().mean;
    assert_f32_parity("tiled_encode mean", mean, r.tensor("vae.tiled.mean", &device));
    let decoded = vae.tiled_decode(latents.clone()).unwrap();
    assert_f32_parity("tiled_decode", decoded, r.tensor("vae.tiled.decoded", &device));

    // automatic, like diffusers with use_tiling
    vae.enable_tiling();
    assert!(vae.encode_is_tiled(72, 56) && vae.decode_is_tiled(20, 24));
    let mean = vae.encode(image).unwrap().mean;
    assert_f32_parity("encode (tiling on) mean", mean, r.tensor("vae.tiled.mean", &device));
    let decoded = vae.decode(latents).unwrap();
    assert_eq!(decoded.dims(), [1, 3, 40, 48]);
    assert_f32_parity("decode (tiling on)", decoded, r.tensor("vae.tiled.decoded", &device));

    // at or below one tile, tiling on changes nothing (diffusers compares with `>`)
    assert!(!vae.encode_is_tiled(32, 24) && !vae.decode_is_tiled(16, 16) && vae.decode_is_tiled(17, 16));
    let posterior = vae.encode(r.tensor("vae.image", &device)).unwrap();
    assert_f32_parity("encode (tiling on, one tile)", posterior.mean, r.tensor("vae.mean", &device));
    let decoded = vae.decode(r.tensor("vae.latents", &device)).unwrap();
    assert_f32_parity("decode (tiling on, one tile)", decoded, r.tensor("vae.decoded", &device));
}

/// `use_slicing` runs a batch sample by sample; the result equals the batched run.
#[test]
fn slicing_matches_batched() {
    let device = Device::flex();
    let r = Reference::open("sd1");
    let mut vae = load("sd1", DType::F32);
    let latents = r.tensor("vae.latents", &device);
    let batch = Tensor::cat(vec![latents.clone(), latents.clone().neg()], 0);
    let whole = vae.decode(batch.clone()).unwrap();
    vae.enable_slicing();
    let sliced = vae.decode(batch).unwrap();
    assert_f32_parity("sliced decode [0]", sliced.clone().slice(s![0..1]), r.tensor("vae.decoded", &device));
    let (err, _) = max_errors(sliced, whole);
    assert!(err <= 1e-4, "sliced vs batched decode: {err}");
}

/// The sdxl fixture shares sd1's weights but has its own scaling_factor; nothing else changes.
#[test]
fn config_values_are_exposed() {
    let sd1 = load("sd1", DType::F32);
    let sdxl = load("sdxl", DType::F32);
    assert_eq!(sd1.scaling_factor(), 0.18215);
    assert_eq!(sdxl.scaling_factor(), 0.13025);
    assert_eq!(sd1.shift_factor(), None);
    assert!(sd1.force_upcast());
    assert_eq!(sd1.downsample_factor(), 2);
    assert_eq!((sd1.tile_sample_min_size, sd1.tile_latent_min_size, sd1.tile_overlap_factor), (32, 16, 0.25));
    assert!(sd1.quant_conv.is_some() && sd1.post_quant_conv.is_some());
}

/// The same model loaded in f16 (parameters cast at load, inputs cast to f16 inside, every op in
/// f16 on flex except GroupNorm statistics, which burn widens to f32).
#[test]
fn f16_run_stays_within_bound() {
    let device = Device::flex();
    let r = Reference::open("sd1");
    let vae = load("sd1", DType::F16);
    assert_eq!(vae.dtype(), DType::F16);
    let posterior = vae.encode(r.tensor("vae.image", &device)).unwrap();
    assert_eq!(posterior.mean.dtype(), DType::F16);
    let decoded = vae.decode(r.tensor("vae.latents", &device)).unwrap();
    assert_eq!(decoded.dtype(), DType::F16);
    let mut vae = vae;
    vae.enable_tiling();
    let tiled = vae.decode(r.tensor("vae.tiled.latents", &device)).unwrap();

    for (name, got, want) in [
        ("f16 mean", posterior.mean, "vae.mean"),
        ("f16 logvar", posterior.logvar, "vae.logvar"),
        ("f16 decoded", decoded, "vae.decoded"),
        ("f16 tiled decoded", tiled, "vae.tiled.decoded"),
    ] {
        let (err, scale) = max_errors(got, r.tensor(want, &device));
        let tol = F16_REL_BOUND * scale.max(1.0);
        eprintln!("{name}: max abs error {err:.3e} (bound {tol:.3e}, max |ref| {scale:.3})");
        assert!(err <= tol, "{name}: max abs error {err} > {tol}");
    }
}

/// f16 has a 2^-11 ≈ 4.9e-4 relative step; rounding every activation of ~20 layers (convs
/// accumulate in f32, their outputs are rounded) compounds to a few 1e-3 of the output range.
/// 1e-2 × max(1, max|ref|) bounds it with headroom while still catching a wrong-dtype tensor
/// (which gives garbage, errors of order 1).
const F16_REL_BOUND: f32 = 1e-2;

/// The 16-channel AutoencoderKL of SD 3 and FLUX.1 (no `quant_conv`/`post_quant_conv`,
/// `shift_factor`): assets/fixtures/models/flow/vae, written by scripts/fixtures/flow_models.py
/// with diffusers 0.42.1 (block_out_channels (32, 64), 16 latent channels, SD 3's factors).
#[test]
fn sixteen_channel_vae_matches_diffusers() {
    let device = Device::flex();
    let r = Reference::open("flow");
    let mut vae = load("flow", DType::F32);
    assert!(vae.quant_conv.is_none() && vae.post_quant_conv.is_none());
    assert_eq!((vae.scaling_factor(), vae.shift_factor()), (1.5305, Some(0.0609)));
    let posterior = vae.encode(r.tensor("vae.image", &device)).unwrap();
    assert_eq!(posterior.mean.dims(), [1, 16, 16, 12]);
    assert_f32_parity("mean", posterior.mean.clone(), r.tensor("vae.mean", &device));
    assert_f32_parity("logvar", posterior.logvar.clone(), r.tensor("vae.logvar", &device));
    let sample = posterior.sample(r.tensor("vae.noise", &device)).unwrap();
    assert_f32_parity("sample", sample, r.tensor("vae.sample", &device));
    let decoded = vae.decode(r.tensor("vae.latents", &device)).unwrap();
    assert_f32_parity("decoded", decoded, r.tensor("vae.decoded", &device));

    vae.enable_tiling();
    let mean = vae.encode(r.tensor("vae.tiled.image", &device)).unwrap().mean;
    assert_f32_parity("tiled mean", mean, r.tensor("vae.tiled.mean", &device));
    let decoded = vae.decode(r.tensor("vae.tiled.latents", &device)).unwrap();
    assert_f32_parity("tiled decoded", decoded, r.tensor("vae.tiled.decoded", &device));
}
