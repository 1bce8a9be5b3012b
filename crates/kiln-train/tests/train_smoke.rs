//! `kiln-train` end to end at toy sizes: the VAE stage (stopped and resumed mid-way), the cached
//! latents, the joint CLIP + UNet stage with checkpoints, resume from them, and a diffusers folder that kiln's pipeline loads
//! and generates from. (Quality is not asserted here: a few steps train nothing.)

use std::path::PathBuf;
use std::process::Command;

use burn::tensor::Device;
use kiln_pipeline::{LoadOptions, GenerateOptions, StableDiffusion};
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into())).join("../..")
}

fn train(out: &PathBuf, extra: &[&str]) -> String {
    let mut args = vec![
        "--out", out.to_str().unwrap(), "--vae-batch", "2", "--unet-batch", "4", "--dataset-size", "8",
        "--checkpoint-every", "1",
    ];
    args.extend(extra);
    if !extra.contains(&"--vae-steps") {
        args.extend(["--vae-steps", "2"]);
    }
    args.extend(["--vae-decoder-steps", "1"]);
    let tok = root().join("assets/tokenizers/clip");
    let cfg = root().join("crates/kiln-pipeline/configs/sd15/tokenizer");
    args.extend(["--tokenizer-files", tok.to_str().unwrap(), "--tokenizer-configs", cfg.to_str().unwrap()]);
    let o = Command::new(env!("CARGO_BIN_EXE_kiln-train")).args(&args).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{stderr}");
    stderr
}

/// `state` as the run wrote it (the guard's test removed `prediction_type`).
fn state_before_guard(state: &Value) -> String {
    let mut s = state.clone();
    s["prediction_type"] = "v_prediction".into();
    s.to_string()
}

#[test]
fn trains_checkpoints_resumes_and_writes_a_loadable_folder() {
    let out = std::env::temp_dir().join(format!("kiln-train-smoke-{}", std::process::id()));
    std::fs::remove_dir_all(&out).ok();
    // one VAE step, then `--resume` continues the stage to 2 (from the checkpoint, not from 0)
    let log = train(&out, &["--vae-steps", "1", "--unet-steps", "0"]);
    assert!(log.contains("vae step 1/1"), "{log}");
    // a second run into the same folder without --resume/--overwrite is refused, nothing touched
    let before = std::fs::read(out.join("checkpoints/vae.safetensors")).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_kiln-train")).args(["--out", out.to_str().unwrap(), "--vae-steps", "1"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--resume") && stderr.contains("--overwrite") && stderr.contains(out.to_str().unwrap()), "{stderr}");
    assert_eq!(std::fs::read(out.join("checkpoints/vae.safetensors")).unwrap(), before);
    // (kiln-train logs step 1 of every run it starts from scratch: "vae step 1/2" would mean a restart)
    // (AdamW's state applies to the resumed VAE: its file does not grow by a second set of moments,
    // as it did while the reloaded parameters had new ids)
    let size = |f: &str| std::fs::metadata(out.join("checkpoints").join(f)).unwrap().len();
    let optim_vae = size("optimizer.vae");
    let log = train(&out, &["--unet-steps", "2", "--resume"]);
    assert!(size("optimizer.vae") < optim_vae * 3 / 2, "{} after resume, {optim_vae} before", size("optimizer.vae"));
    assert!(log.contains("vae step 2/2") && !log.contains("vae step 1/2") && log.contains("unet step 2/2"), "{log}");
    // the decoder stage ran after the VAE stage (again, as the encoder changed) and left the
    // encoder as it was: the latents the UNet trains on are the VAE stage's
    assert!(log.contains("vae-decoder step 1/1"), "{log}");
    let read = |f: &str| std::fs::read(out.join("checkpoints").join(f)).unwrap();
    let (vae, tuned) = (read("vae.safetensors"), read("vae_decoder.safetensors"));
    let (vae, tuned) = (safetensors::SafeTensors::deserialize(&vae).unwrap(), safetensors::SafeTensors::deserialize(&tuned).unwrap());
    let mut names = vae.names();
    names.sort();
    assert_eq!(names.len(), tuned.names().len());
    for name in names {
        let same = vae.tensor(name).unwrap().data() == tuned.tensor(name).unwrap().data();
        if name.starts_with("encoder.") || name.starts_with("quant_conv.") {
            assert!(same, "{name} changed in the decoder stage");
        } else if name == "decoder.conv_out.weight" {
            assert!(!same, "{name} not trained in the decoder stage");
        }
    }
    let state = |out: &PathBuf| -> Value { serde_json::from_str(&std::fs::read_to_string(out.join("checkpoints/state.json")).unwrap()).unwrap() };
    assert_eq!(state(&out)["unet_step"], 2);
    assert!(state(&out)["scaling_factor"].as_f64().unwrap() > 0.0);
    // resume: the VAE is not trained again, the UNet continues at step 3 with AdamW's saved
    // moments (no second set of them in the state files)
    let (te, unet) = (size("optimizer.te"), size("optimizer.unet"));
    let log = train(&out, &["--unet-steps", "4", "--resume"]);
    assert!(!log.contains("vae step") && log.contains("unet step 4/4") && !log.contains("warning"), "{log}");
    assert!(size("optimizer.te") < te * 3 / 2 && size("optimizer.unet") < unet * 3 / 2, "state grew on resume");
    assert_eq!(state(&out)["unet_step"], 4);
    assert_eq!(state(&out)["prediction_type"], "v_prediction");
    // a UNet checkpoint of an ε-prediction run (written before v-prediction: no prediction_type)
    // is not continued with the v-prediction loss (refused before any stage runs)
    let mut old = state(&out);
    old.as_object_mut().unwrap().remove("prediction_type");
    std::fs::write(out.join("checkpoints/state.json"), old.to_string()).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_kiln-train"))
        .args(["--out", out.to_str().unwrap(), "--resume", "--vae-steps", "2", "--vae-decoder-steps", "1", "--unet-steps", "5"])
        .args(["--tokenizer-files", root().join("assets/tokenizers/clip").to_str().unwrap()])
        .args(["--tokenizer-configs", root().join("crates/kiln-pipeline/configs/sd15/tokenizer").to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("prediction_type epsilon") && stderr.contains("v_prediction") && !stderr.contains(" step "), "{stderr}");
    std::fs::write(out.join("checkpoints/state.json"), state_before_guard(&old)).unwrap();
    // a run in parts: --stop-after ends the stage at step 5 of a 6-step schedule (checkpointed),
    // and --resume takes it to 6 without repeating step 5
    let log = train(&out, &["--unet-steps", "6", "--stop-after", "5", "--resume"]);
    assert!(log.contains("unet step 5/6") && !log.contains("unet step 6/6"), "{log}");
    assert_eq!(state(&out)["unet_step"], 5);
    let log = train(&out, &["--unet-steps", "6", "--resume"]);
    assert!(log.contains("unet step 6/6") && !log.contains("unet step 5/6"), "{log}");
    assert_eq!(state(&out)["unet_step"], 6);
    // a stop past the schedule's end is refused
    let o = Command::new(env!("CARGO_BIN_EXE_kiln-train"))
        .args(["--out", out.to_str().unwrap(), "--resume", "--unet-steps", "6", "--stop-after", "7"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--stop-after") && stderr.contains("got 7"), "{stderr}");
    for f in [
        "model_index.json", "scheduler/scheduler_config.json", "tokenizer/vocab.json", "tokenizer/merges.txt",
        "text_encoder/config.json", "text_encoder/model.safetensors", "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors", "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let scheduler: Value = serde_json::from_str(&std::fs::read_to_string(out.join("scheduler/scheduler_config.json")).unwrap()).unwrap();
    assert_eq!((scheduler["prediction_type"].as_str(), scheduler["rescale_betas_zero_snr"].as_bool()), (Some("v_prediction"), Some(true)));
    // kiln's pipeline loads the folder strictly (every tensor named as diffusers names it) and draws
    let pipe = StableDiffusion::load(&out, &LoadOptions::new(&Device::flex())).unwrap();
    let o = GenerateOptions { prompt: "a red circle on a blue background".into(), num_inference_steps: 2, ..Default::default() };
    let img = &pipe.txt2img(&o, &mut |_, _| true).unwrap()[0];
    assert_eq!(img.dimensions(), (64, 64), "sample_size 16 × VAE factor 4");
    std::fs::remove_dir_all(&out).ok();
}

/// `--seed` fixes a run from its first weights: two runs from scratch with the same seed write
/// the same tensors into their checkpoints, also when the UNet stage starts in a second process
/// (each stage seeds its own initial weights); another seed gives other weights.
#[test]
fn the_seed_fixes_the_initial_weights() {
    let dir = |tag: &str| std::env::temp_dir().join(format!("kiln-train-seed-{tag}-{}", std::process::id()));
    let (a, b, c) = (dir("a"), dir("b"), dir("c"));
    for d in [&a, &b, &c] {
        std::fs::remove_dir_all(d).ok();
    }
    train(&a, &["--seed", "5", "--unet-steps", "1"]);
    train(&b, &["--seed", "5", "--unet-steps", "0"]);
    train(&b, &["--seed", "5", "--unet-steps", "1", "--resume"]);
    train(&c, &["--seed", "6", "--unet-steps", "1"]);
    // every tensor by name (the files' headers may list them in another order)
    let read = |d: &PathBuf, f: &str| -> std::collections::BTreeMap<String, Vec<u8>> {
        let bytes = std::fs::read(d.join("checkpoints").join(f)).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        st.tensors().into_iter().map(|(name, t)| (name, t.data().to_vec())).collect()
    };
    for f in ["vae.safetensors", "vae_decoder.safetensors", "text_encoder.safetensors", "unet.safetensors"] {
        assert!(read(&a, f) == read(&b, f), "{f}: same seed, different weights");
        assert!(read(&a, f) != read(&c, f), "{f}: another seed, the same weights");
    }
    for d in [&a, &b, &c] {
        std::fs::remove_dir_all(d).ok();
    }
}
