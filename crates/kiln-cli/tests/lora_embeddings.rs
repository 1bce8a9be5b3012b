//! `kiln generate --lora PATH[:SCALE]` and `--embedding`/`--embeddings-dir`: two LoRAs on the tiny SD1 model draw diffusers'
//! `load_lora_weights` + `set_adapters` picture (scripts/fixtures/loras.py), the PNG records
//! `Lora hashes` as A1111 does, and a LoRA that does not fit the model exits 2 before anything is
//! written.

use std::path::PathBuf;

mod common;
use common::{assert_usage_error, kiln, pixels, TempDir};

fn root() -> PathBuf {
    PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into())).join("../..")
}

#[test]
fn two_loras_draw_diffusers_picture_and_are_recorded() {
    let loras = root().join("assets/fixtures/loras");
    let model = root().join("assets/fixtures/models/sd1");
    let tmp = TempDir::new("lora");
    let out = tmp.0.join("lora.png");
    let kohya = format!("{}:0.7", loras.join("sd1-kohya.safetensors").display());
    let peft = format!("{}:-0.4", loras.join("sd1-peft.safetensors").display());
    let o = kiln(&[
        "generate", "--model", model.to_str().unwrap(), "--prompt", "a red circle on a blue background", "--steps", "5",
        "--seed", "0", "--width", "64", "--height", "48", "--lora", &kohya, "--lora", &peft, "--output", out.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("126 of its 126 modules applied") && stderr.contains("102 of its 102 modules applied"), "{stderr}");
    let want = pixels(&loras.join("sd1.png"));
    let worst = pixels(&out).iter().zip(&want).map(|(a, b)| (*a as i32 - *b as i32).abs()).max().unwrap();
    assert!(worst <= 2, "{worst} levels from diffusers' picture");
    // A1111's short hashes (sd-scripts' addnet hash), as the fixture script computed them
    let hashes: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(loras.join("hashes.json")).unwrap()).unwrap();
    let info = String::from_utf8_lossy(&kiln(&["info", out.to_str().unwrap()]).stdout).into_owned();
    let line = format!(
        "Lora hashes: \"sd1-kohya: {}, sd1-peft: {}\"",
        hashes["sd1-kohya.safetensors"].as_str().unwrap(),
        hashes["sd1-peft.safetensors"].as_str().unwrap()
    );
    assert!(info.contains(&line), "{line} not in {info}");
}

#[test]
fn a_lora_that_does_not_fit_exits_2_before_writing() {
    let loras = root().join("assets/fixtures/loras");
    let model = root().join("assets/fixtures/models/sd1");
    let tmp = TempDir::new("lora-bad");
    let out = tmp.0.join("x.png");
    let base = ["generate", "--model", model.to_str().unwrap(), "--prompt", "p", "--steps", "2", "--output", out.to_str().unwrap()];
    let with = |lora: &str| -> Vec<String> { base.iter().map(|s| s.to_string()).chain(["--lora".to_string(), lora.to_string()]).collect() };
    let args = with(loras.join("sdxl-kohya.safetensors").to_str().unwrap());
    assert_usage_error(&args.iter().map(String::as_str).collect::<Vec<_>>(), &["--lora", "sdxl-kohya.safetensors", "SDXL LoRA on an SD 1.x/2.x model"]);
    let args = with(model.join("unet/diffusion_pytorch_model.safetensors").to_str().unwrap());
    assert_usage_error(&args.iter().map(String::as_str).collect::<Vec<_>>(), &["--lora", "is not a LoRA kiln reads"]);
    let args = with(&format!("{}:nan", loras.join("sd1-kohya.safetensors").display()));
    assert_usage_error(&args.iter().map(String::as_str).collect::<Vec<_>>(), &["--lora", "finite"]);
    assert!(!out.exists());
}

/// `--embedding` and `--embeddings-dir` (scripts/fixtures/embeddings.py): the three SD1
/// embeddings, one named by its token in the prompt and found in the folder, draw diffusers'
/// picture; the PNG records `TI hashes`.
#[test]
fn embeddings_from_flags_and_a_folder_draw_diffusers_picture() {
    let fixtures = root().join("assets/fixtures/embeddings");
    let model = root().join("assets/fixtures/models/sd1");
    let tmp = TempDir::new("embeddings");
    // a folder with the A1111 files (and one the prompt does not name, which is not loaded)
    let dir = tmp.0.join("embeddings");
    std::fs::create_dir(&dir).unwrap();
    for f in ["KilnCat.pt", "kilndog.safetensors"] {
        std::fs::copy(fixtures.join(f), dir.join(f)).unwrap();
    }
    std::fs::write(dir.join("unused.safetensors"), b"not even a safetensors file").unwrap();
    let out = tmp.0.join("ti.png");
    let o = kiln(&[
        "generate", "--model", model.to_str().unwrap(), "--prompt", "a photo of KilnCat with kilndog and <kiln-fox>",
        "--negative-prompt", "kilndog", "--steps", "5", "--seed", "0", "--width", "64", "--height", "48",
        "--embeddings-dir", dir.to_str().unwrap(), "--embedding", fixtures.join("learned_embeds.safetensors").to_str().unwrap(),
        "--output", out.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("embedding kilndog kilndog_1 kilndog_2"), "{stderr}");
    let want = pixels(&fixtures.join("sd1-embeddings.png"));
    let worst = pixels(&out).iter().zip(&want).map(|(a, b)| (*a as i32 - *b as i32).abs()).max().unwrap();
    assert!(worst <= 2, "{worst} levels from diffusers' picture");
    let info = String::from_utf8_lossy(&kiln(&["info", out.to_str().unwrap()]).stdout).into_owned();
    assert!(info.contains("TI hashes: \"<kiln-fox>: ") && info.contains("KilnCat: ") && info.contains("kilndog: "), "{info}");
    // an embedding of another width exits 2 before writing
    let out2 = tmp.0.join("x.png");
    let lora = root().join("assets/fixtures/loras/sd1-peft.safetensors");
    assert_usage_error(
        &["generate", "--model", model.to_str().unwrap(), "--prompt", "p", "--steps", "2", "--embedding", lora.to_str().unwrap(), "--output", out2.to_str().unwrap()],
        &["--embedding", "sd1-peft.safetensors", "is not a textual-inversion embedding"],
    );
    assert!(!out2.exists());
}

/// `kiln info` on a LoRA and an embedding: what `--lora` / `--embedding` will read.
#[test]
fn info_describes_loras_and_embeddings() {
    let text = |path: PathBuf| String::from_utf8_lossy(&kiln(&["info", path.to_str().unwrap()]).stdout).into_owned();
    let hashes: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(root().join("assets/fixtures/loras/hashes.json")).unwrap()).unwrap();
    let lora = text(root().join("assets/fixtures/loras/sdxl-kohya.safetensors"));
    let want = format!("LoRA (Kohya keys): text_encoder 30 LoRA, text_encoder_2 30 LoRA, unet 156 LoRA; A1111 short hash {}", hashes["sdxl-kohya.safetensors"].as_str().unwrap());
    assert!(lora.contains(&want) && lora.contains("apply it to one with --lora"), "{lora}");
    let tucker = text(root().join("assets/fixtures/lycoris/tucker.safetensors"));
    assert!(tucker.contains("unet 1 LoCon (Tucker), unet 1 LoHa, unet 1 LoKr"), "{tucker}");
    let emb = text(root().join("assets/fixtures/embeddings/kilnxl.safetensors"));
    assert!(emb.contains("embedding `kilnxl`: text_encoder: 2 vector(s) of width 32, text_encoder_2: 2 vector(s) of width 32"), "{emb}");
}
