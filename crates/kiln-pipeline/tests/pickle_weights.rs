//! A diffusers folder whose component has only PyTorch pickle weights (`diffusion_pytorch_model.bin`,
//! what `save_pretrained(safe_serialization=False)` writes and older Hub repos hold) loads as
//! diffusers loads it, without running the pickle: the tiny SD1 pipeline with its VAE as a `.bin`
//! written by torch.save (scripts/fixtures/torch_checkpoints.py) draws the same picture as with
//! the safetensors file, and diffusers' picture for that case within the parity tolerance. A
//! `.bin` that is not a torch checkpoint, or whose pickle calls code, fails naming the file.

use std::path::{Path, PathBuf};

mod common;
use common::read_png;
use kiln_pipeline::{GenerateOptions, LoadOptions, StableDiffusion};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A copy of the tiny SD1 folder whose VAE weights are `vae_bin` (a `.bin`) instead of safetensors.
fn sd1_with_vae_bin(name: &str, vae_bin: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-pickle-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    copy(&root().join("assets/fixtures/models/sd1"), &dir);
    std::fs::remove_file(dir.join("vae/diffusion_pytorch_model.safetensors")).unwrap();
    std::fs::write(dir.join("vae/diffusion_pytorch_model.bin"), vae_bin).unwrap();
    dir
}

fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// scripts/fixtures/pipelines.py's case 0.
fn case0() -> GenerateOptions {
    GenerateOptions {
        prompt: "a red circle on a blue background".into(),
        num_inference_steps: 5,
        guidance_scale: 7.5,
        width: Some(64),
        height: Some(48),
        seed: 0,
        ..Default::default()
    }
}

#[test]
fn a_component_with_pickle_weights_draws_what_safetensors_draw() {
    let device = burn::tensor::Device::flex();
    let bin = std::fs::read(root().join("assets/fixtures/checkpoints/sd1_vae.bin")).unwrap();
    let dir = sd1_with_vae_bin("ok", &bin);
    let from_bin = StableDiffusion::load(&dir, &LoadOptions::new(&device)).unwrap().txt2img(&case0(), &mut |_, _| true).unwrap();
    let from_safetensors = StableDiffusion::load(&root().join("assets/fixtures/models/sd1"), &LoadOptions::new(&device))
        .unwrap()
        .txt2img(&case0(), &mut |_, _| true)
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
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
        let dir = sd1_with_vae_bin(name, &bytes);
        let err = StableDiffusion::load(&dir, &LoadOptions::new(&device)).err().expect(name).to_string();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(err.contains("vae/diffusion_pytorch_model.bin") && err.contains(says), "{name}: {err}");
    }
}
