//! A diffusers folder whose component has only PyTorch pickle weights (`diffusion_pytorch_model.bin`,
//! what `save_pretrained(safe_serialization=False)` writes and older Hub repos hold) loads as
//! diffusers loads it, without running the pickle: the tiny SD1 pipeline with its VAE as a `.bin`
//! written by torch.save (scripts/fixtures/torch_checkpoints.py) draws the same picture as with
//! the safetensors file, and diffusers' picture for that case within the parity tolerance. A
//! `.bin` that is not a torch checkpoint, or whose pickle calls code, fails naming the file.

use std::path::PathBuf;

mod common;
use common::{mirror, read_png, sd1_case0, TempDir};
use kiln_pipeline::{LoadOptions, StableDiffusion};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The tiny SD1 folder (mirrored) with `vae_bin` as its VAE weights (a `.bin`) instead of safetensors.
fn sd1_with_vae_bin(tag: &str, vae_bin: &[u8]) -> TempDir {
    let tmp = TempDir::new(tag);
    mirror(&root().join("assets/fixtures/models/sd1"), &tmp.0, &|rel| rel == "vae/diffusion_pytorch_model.safetensors");
    std::fs::write(tmp.0.join("vae/diffusion_pytorch_model.bin"), vae_bin).unwrap();
    tmp
}

#[test]
fn a_component_with_pickle_weights_draws_what_safetensors_draw() {
    let device = burn::tensor::Device::flex();
    let bin = std::fs::read(root().join("assets/fixtures/checkpoints/sd1_vae.bin")).unwrap();
    let dir = sd1_with_vae_bin("pickle-ok", &bin);
    let from_bin = StableDiffusion::load(&dir.0, &LoadOptions::new(&device)).unwrap().txt2img(&sd1_case0(), &mut |_, _| true).unwrap();
    let from_safetensors = StableDiffusion::load(&root().join("assets/fixtures/models/sd1"), &LoadOptions::new(&device))
        .unwrap()
        .txt2img(&sd1_case0(), &mut |_, _| true)
        .unwrap();
    assert_eq!(from_bin[0].as_raw(), from_safetensors[0].as_raw(), "the same weights draw the same picture");
    let (_, _, want) = read_png(&root().join("assets/fixtures/pipelines/case00-0.png"));
    let worst = from_bin[0].as_raw().iter().zip(&want).map(|(a, b)| (*a as i32 - *b as i32).abs()).max().unwrap();
    assert!(worst <= 2, "{worst} levels from diffusers' picture");
}

#[test]
fn a_pickle_that_is_not_a_checkpoint_or_calls_code_fails_naming_the_file() {
    let device = burn::tensor::Device::flex();
    let evil = std::fs::read(root().join("assets/fixtures/checkpoints/evil_os_system.ckpt")).unwrap();
    for (name, bytes, says) in [
        ("garbage", b"pickle".to_vec(), "is not a PyTorch checkpoint kiln can read"),
        ("evil", evil, "refused: its pickle calls `posix.system`"),
    ] {
        let dir = sd1_with_vae_bin(&format!("pickle-{name}"), &bytes);
        let err = StableDiffusion::load(&dir.0, &LoadOptions::new(&device)).err().expect(name).to_string();
        assert!(err.contains("vae/diffusion_pytorch_model.bin") && err.contains(says), "{name}: {err}");
    }
}
