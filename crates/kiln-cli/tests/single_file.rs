//! `kiln generate` and `kiln info` on a single-file checkpoint: the tiny SD1 model as a `.ckpt`
//! torch.save wrote (f16, `state_dict` with EMA bookkeeping; scripts/fixtures/single_file.py)
//! draws diffusers' `from_single_file` picture with `--config`, and `kiln info` names its family
//! and parts.

use std::path::PathBuf;

mod common;
use common::{assert_usage_error, kiln, pixels, TempDir};

fn root() -> PathBuf {
    PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into())).join("../..")
}

#[test]
fn generate_from_a_ckpt_with_its_config_draws_diffusers_picture() {
    let ckpt = root().join("assets/fixtures/single_file/sd1.ckpt");
    let config = root().join("assets/fixtures/models/sd1");
    let tmp = TempDir::new("single-file");
    let out = tmp.0.join("circle.png");
    let o = kiln(&[
        "generate", "--model", ckpt.to_str().unwrap(), "--config", config.to_str().unwrap(),
        "--prompt", "a red circle on a blue background", "--steps", "5", "--guidance-scale", "7.5", "--seed", "0",
        "--width", "64", "--height", "48", "--output", out.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("SD 1.x checkpoint"), "{stderr}");
    let want = pixels(&root().join("assets/fixtures/single_file/sd1-ckpt.png"));
    let got = pixels(&out);
    let worst = got.iter().zip(&want).map(|(a, b)| (*a as i32 - *b as i32).abs()).max().unwrap();
    assert!(worst <= 1, "{worst} levels from diffusers' from_single_file picture");
    // A1111 names the checkpoint by its file name
    let info = kiln(&["info", out.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&info.stdout).contains("Model: sd1"), "{}", String::from_utf8_lossy(&info.stdout));
}

#[test]
fn info_names_the_family_components_and_unused_keys() {
    let ckpt = root().join("assets/fixtures/single_file/sd1.ckpt");
    let o = kiln(&["info", ckpt.to_str().unwrap()]);
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    for needle in [
        "single-file checkpoint: SD 1.x (diffusers: v1)",
        "layout: not a published model's",
        "keys under: state_dict.",
        "unet            model.diffusion_model.",
        "vae             first_stage_model.",
        "text_encoder    cond_stage_model.transformer.",
        "EMA: 2 tensors",
        "not used (2 keys): model_ema.decay, model_ema.num_updates",
    ] {
        assert!(text.contains(needle), "{needle:?} not in:\n{text}");
    }
    let json = kiln(&["info", "--json", ckpt.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["checkpoint"]["diffusers_type"], "v1");
    assert_eq!(v["checkpoint"]["components"].as_array().unwrap().len(), 3);
}

#[test]
fn single_file_flags_need_a_single_file() {
    let ckpt = root().join("assets/fixtures/single_file/sd1.ckpt");
    let sd1 = root().join("assets/fixtures/models/sd1");
    let tmp = TempDir::new("single-file-flags");
    let out = tmp.0.join("x.png");
    let base = ["generate", "--prompt", "p", "--steps", "2", "--output", out.to_str().unwrap()];
    fn with<'a>(base: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
        base.iter().chain(extra).copied().collect()
    }
    assert_usage_error(&with(&base, &["--model", sd1.to_str().unwrap(), "--config", sd1.to_str().unwrap()]), &["--config", "single-file checkpoint"]);
    assert_usage_error(&with(&base, &["--model", ckpt.to_str().unwrap(), "--fp16-variant"]), &["--fp16-variant", "single-file checkpoint"]);
    assert_usage_error(&with(&base, &["--model", ckpt.to_str().unwrap(), "--prediction-type", "sample"]), &["sample", "epsilon", "v_prediction"]);
    assert!(!out.exists());
}

#[test]
fn convert_writes_a_folder_kiln_generates_from_and_never_replaces_one() {
    let ckpt = root().join("assets/fixtures/single_file/sd1.ckpt");
    let config = root().join("assets/fixtures/models/sd1");
    let tmp = TempDir::new("convert");
    let out = tmp.0.join("sd1");
    let o = kiln(&["convert", ckpt.to_str().unwrap(), out.to_str().unwrap(), "--config", config.to_str().unwrap(), "--fp16-variant"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.join("unet/diffusion_pytorch_model.fp16.safetensors").is_file() && out.join("model_index.json").is_file());
    // a second run does not touch the folder
    let before = std::fs::metadata(out.join("model_index.json")).unwrap().modified().unwrap();
    assert_usage_error(&["convert", ckpt.to_str().unwrap(), out.to_str().unwrap(), "--config", config.to_str().unwrap()], &["already exists", "never replaces"]);
    assert_eq!(std::fs::metadata(out.join("model_index.json")).unwrap().modified().unwrap(), before);
    // the folder draws what diffusers drew from the checkpoint
    let png = tmp.0.join("x.png");
    let g = kiln(&[
        "generate", "--model", out.to_str().unwrap(), "--fp16-variant", "--prompt", "a red circle on a blue background",
        "--steps", "5", "--seed", "0", "--width", "64", "--height", "48", "--output", png.to_str().unwrap(),
    ]);
    assert!(g.status.success(), "{}", String::from_utf8_lossy(&g.stderr));
    let want = pixels(&root().join("assets/fixtures/single_file/sd1-ckpt.png"));
    let worst = pixels(&png).iter().zip(&want).map(|(a, b)| (*a as i32 - *b as i32).abs()).max().unwrap();
    assert!(worst <= 1, "{worst} levels");
    assert_usage_error(&["convert", ckpt.to_str().unwrap(), tmp.0.join("y").to_str().unwrap(), "--fp16-variant", "--dtype", "f32"], &["--fp16-variant", "--dtype f32"]);
}
