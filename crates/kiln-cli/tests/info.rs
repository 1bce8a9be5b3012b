//! `kiln info`: model folders (fixtures), a Hub id in a fake cache, component folders,
//! safetensors files and PNGs, and its bad-input behaviour (exit code 2, a message naming the
//! file and what is wrong).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::TempDir;
use serde_json::Value;

fn assets() -> PathBuf {
    Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string())).join("../../assets/fixtures").canonicalize().unwrap()
}

fn kiln_env(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
    cmd.args(args);
    for k in ["HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE"] {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run kiln")
}

fn kiln(args: &[&str]) -> Output {
    kiln_env(args, &[])
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "exit {:?}: {}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn json(args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    serde_json::from_str(&ok(&kiln(&args))).unwrap()
}

fn assert_usage_error(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "should exit 2; stderr: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "stderr lacks {n:?}: {stderr}");
    }
}

/// Parameter counts and tensor counts of the fixture weights, summed from their safetensors
/// headers with Python (`math.prod(shape)` over every tensor).
const SD1: [(&str, u64, u64); 3] =
    [("text_encoder", 84, 1_617_529), ("unet", 304, 1_427_012), ("vae", 124, 658_375)];

#[test]
fn model_folders() {
    let sd1 = assets().join("models/sd1");
    let text = ok(&kiln(&["info", sd1.to_str().unwrap()]));
    for needle in [
        "pipeline: StableDiffusionPipeline (Stable Diffusion)",
        "unet            UNet2DConditionModel",
        "diffusion_pytorch_model.safetensors: F16, 304 tensors, 1.43M parameters",
        "text_encoder    CLIPTextModel",
        "scheduler       PNDMScheduler",
        "tokenizer       CLIPTokenizer",
        "files: merges.txt, vocab.json",
        "parameters: 3.70M (3702916)",
        "check: ok",
    ] {
        assert!(text.contains(needle), "lacks {needle:?}:\n{text}");
    }
    let v = json(&["info", sd1.to_str().unwrap()]);
    assert_eq!((v["type"].as_str(), v["class_name"].as_str(), v["kind"].as_str()), (Some("model"), Some("StableDiffusionPipeline"), Some("StableDiffusion")));
    assert_eq!(v["parameters"], 3_702_916);
    assert!(v["problem"].is_null());
    for (name, tensors, params) in SD1 {
        let c = v["components"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap();
        let w = &c["weights"][0];
        assert_eq!((w["tensors"].as_u64(), w["parameters"].as_u64()), (Some(tensors), Some(params)), "{name}");
        assert_eq!(w["dtypes"]["F16"].as_u64(), Some(params), "{name}");
    }
    let unet = v["components"].as_array().unwrap().iter().find(|c| c["name"] == "unet").unwrap();
    let cfg: Vec<(String, Value)> = serde_json::from_value(unet["config"].clone()).unwrap();
    assert!(cfg.contains(&("block_out_channels".into(), serde_json::json!([32, 64]))), "{cfg:?}");
    assert!(cfg.contains(&("cross_attention_dim".into(), serde_json::json!(32))), "{cfg:?}");

    let v = json(&["info", assets().join("models/sdxl").to_str().unwrap()]);
    assert_eq!((v["kind"].as_str(), v["force_zeros_for_empty_prompt"].as_bool()), (Some("StableDiffusionXL"), Some(true)));
    assert_eq!(v["parameters"], 5_870_973);
    let te2 = v["components"].as_array().unwrap().iter().find(|c| c["name"] == "text_encoder_2").unwrap();
    assert_eq!(te2["class_name"], "CLIPTextModelWithProjection");
    assert!(te2["config"].as_array().unwrap().iter().any(|kv| kv[0] == "projection_dim"));
    let v = json(&["info", assets().join("models/inpaint").to_str().unwrap()]);
    assert_eq!((v["kind"].as_str(), v["parameters"].as_u64()), (Some("StableDiffusionInpaint"), Some(3_704_356)));
    let unet = v["components"].as_array().unwrap().iter().find(|c| c["name"] == "unet").unwrap();
    assert!(unet["config"].as_array().unwrap().iter().any(|kv| kv[0] == "in_channels" && kv[1] == 9));
    let v = json(&["info", assets().join("models/sd2").to_str().unwrap()]);
    assert_eq!(v["parameters"], 3_818_916);
}

#[test]
fn hub_id_from_the_cache() {
    let home = TempDir::new("hub");
    let sha = "89abcdef0123456789abcdef0123456789abcdef";
    let repo = home.0.join("hub/models--kiln-test--tiny-xl");
    fs::create_dir_all(repo.join("refs")).unwrap();
    fs::write(repo.join("refs/main"), sha).unwrap();
    fs::create_dir_all(repo.join("snapshots")).unwrap();
    // a snapshot whose entries are symlinks, as the Hub cache stores them (into blobs/)
    let snapshot = repo.join("snapshots").join(sha);
    fs::create_dir_all(&snapshot).unwrap();
    for entry in fs::read_dir(assets().join("models/sdxl")).unwrap() {
        let entry = entry.unwrap();
        std::os::unix::fs::symlink(entry.path().canonicalize().unwrap(), snapshot.join(entry.file_name())).unwrap();
    }
    let out = kiln_env(&["info", "kiln-test/tiny-xl"], &[("HF_HOME", &home.0)]);
    let text = ok(&out);
    assert!(text.starts_with(&format!("model: kiln-test/tiny-xl ({})", snapshot.display())), "{text}");
    assert!(text.contains("pipeline: StableDiffusionXLPipeline") && text.contains("check: ok"), "{text}");
    // HF_HUB_CACHE wins over HF_HOME
    let out = kiln_env(&["info", "kiln-test/tiny-xl"], &[("HF_HOME", Path::new("/nonexistent")), ("HF_HUB_CACHE", &home.0.join("hub"))]);
    assert!(ok(&out).contains("check: ok"));
    // not in the cache: the id and the cache folder are named
    let out = kiln_env(&["info", "kiln-test/other@v1"], &[("HF_HOME", &home.0)]);
    assert_usage_error(
        &out,
        &[&format!(
            "no such file or folder: kiln-test/other@v1; as a Hub id: Hub model kiln-test/other@v1 is not in the Hub cache {}: no models--kiln-test--other folder",
            home.0.join("hub").display()
        )],
    );
}

#[test]
fn components_and_safetensors_files() {
    let unet = assets().join("models/sd1/unet");
    let text = ok(&kiln(&["info", unet.to_str().unwrap()]));
    assert!(text.starts_with("unet            UNet2DConditionModel\n"), "{text}");
    assert!(text.contains("in_channels=4"), "{text}");
    let file = unet.join("diffusion_pytorch_model.safetensors");
    let text = ok(&kiln(&["info", file.to_str().unwrap()]));
    assert!(text.starts_with("diffusion_pytorch_model.safetensors: F16, 304 tensors, 1.43M parameters, "), "{text}");
    let v = json(&["info", file.to_str().unwrap()]);
    assert_eq!((v["type"].as_str(), v["parameters"].as_u64(), v["metadata"]["format"].as_str()), (Some("safetensors"), Some(1_427_012), Some("pt")));
}

#[test]
fn pytorch_checkpoints_without_running_their_pickle() {
    let dir = assets().join("checkpoints");
    let tiny = dir.join("tiny.ckpt");
    // 13 tensors (scripts/fixtures/torch_checkpoints.py): 12+6+5+6+3+1+0+4+24+6+24+2+1 elements
    let text = ok(&kiln(&["info", tiny.to_str().unwrap()]));
    assert!(text.starts_with("tiny.ckpt: BF16+BOOL+F16+F32+I64, 13 tensors, 94 parameters, "), "{text}");
    let v = json(&["info", tiny.to_str().unwrap()]);
    assert_eq!((v["type"].as_str(), v["dtypes"]["F16"].as_u64(), v["dtypes"]["I64"].as_u64()), (Some("checkpoint"), Some(6), Some(6)));
    let evil = dir.join("evil_os_system.ckpt");
    assert_usage_error(
        &kiln(&["info", evil.to_str().unwrap()]),
        &[&format!("{}: refused: its pickle calls `posix.system`", evil.display())],
    );
    assert!(!Path::new("/tmp/kiln-pickle-ran-code").exists(), "nothing ran");
    let legacy = dir.join("legacy.pt");
    assert_usage_error(&kiln(&["info", legacy.to_str().unwrap()]), &["legacy format (torch < 1.6)"]);
}

#[test]
fn png_parameters() {
    let png = assets().join("png/pil_latin1.png");
    let text = ok(&kiln(&["info", png.to_str().unwrap()]));
    assert_eq!(
        text,
        "a red fox, snow\nNegative prompt: blurry, ü\nSteps: 30, Sampler: Euler a, CFG scale: 7.5, Seed: 42, Size: 2x2, Model: org/name\n"
    );
    let v = json(&["info", png.to_str().unwrap()]);
    assert_eq!(v["type"], "png");
    assert_eq!((v["parsed"]["steps"].as_u64(), v["parsed"]["seed"].as_u64(), v["parsed"]["sampler"].as_str()), (Some(30), Some(42), Some("Euler a")));
    let v = json(&["info", assets().join("png/pil_unicode.png").to_str().unwrap()]);
    assert_eq!(v["parsed"]["prompt"], "宇宙飛行士 🚀");
}

#[test]
fn bad_inputs_exit_2_with_a_clear_message() {
    let tmp = TempDir::new("bad");
    let no_params = assets().join("png/pil_no_params.png");
    assert_usage_error(
        &kiln(&["info", no_params.to_str().unwrap()]),
        &[&format!("{} is a PNG without generation parameters (no `parameters` text chunk)", no_params.display())],
    );
    let fake = tmp.0.join("fake.png");
    fs::write(&fake, b"not a png").unwrap();
    assert_usage_error(&kiln(&["info", fake.to_str().unwrap()]), &[&format!("{} is not a PNG file (no PNG signature)", fake.display())]);
    let text = tmp.0.join("notes.txt");
    fs::write(&text, b"hello").unwrap();
    assert_usage_error(
        &kiln(&["info", text.to_str().unwrap()]),
        &[&format!("{} is not a PNG image, a safetensors file, a PyTorch checkpoint or a diffusers model folder", text.display())],
    );
    let missing = tmp.0.join("missing.png");
    assert_usage_error(&kiln(&["info", missing.to_str().unwrap()]), &[&format!("no such file or folder: {}", missing.display())]);
    assert_usage_error(&kiln(&["info", "no-such-thing"]), &["no such file or folder: no-such-thing"]);
    let empty_dir = tmp.0.join("empty");
    fs::create_dir(&empty_dir).unwrap();
    assert_usage_error(&kiln(&["info", empty_dir.to_str().unwrap()]), &["without model_index.json or config.json"]);
    // a truncated safetensors file: the file and the tensor are named
    let src = fs::read(assets().join("models/sd1/unet/diffusion_pytorch_model.safetensors")).unwrap();
    let cut = tmp.0.join("cut.safetensors");
    fs::write(&cut, &src[..src.len() - 100]).unwrap();
    assert_usage_error(
        &kiln(&["info", cut.to_str().unwrap()]),
        &[&format!("{} is not a valid safetensors file (corrupt or truncated?): tensor `", cut.display()), "lie outside the"],
    );
    let garbage = tmp.0.join("garbage.safetensors");
    fs::write(&garbage, [0xffu8; 64]).unwrap();
    assert_usage_error(&kiln(&["info", garbage.to_str().unwrap()]), &["garbage.safetensors is not a valid safetensors file", "header length"]);
    // a model folder kiln cannot run: the summary, then the reason
    let broken = tmp.0.join("broken");
    fs::create_dir_all(&broken).unwrap();
    for entry in fs::read_dir(assets().join("models/sd1")).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "vae" {
            std::os::unix::fs::symlink(entry.path().canonicalize().unwrap(), broken.join(entry.file_name())).unwrap();
        }
    }
    let out = kiln(&["info", broken.to_str().unwrap()]);
    assert_usage_error(&out, &[&format!("{}: the `vae` component folder is missing", broken.join("vae").display())]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("(folder missing)") && stdout.contains("check: FAILED"), "{stdout}");
}
