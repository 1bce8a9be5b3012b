//! `kiln generate --prompt-syntax a1111`: a weighted, 3-chunk SDXL prompt draws what diffusers
//! drew from the conditioning of A1111's functions (scripts/fixtures/prompt_syntax.py), and
//! `<lora:NAME:W>` in a prompt loads NAME from `--lora-dir` (the SDXL picture of the two LoRAs,
//! scripts/fixtures/loras.py).

use std::path::PathBuf;

mod common;
use common::{assert_usage_error, kiln, pixels, TempDir};

fn root() -> PathBuf {
    PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into())).join("../..")
}

fn worst(a: &[u8], b: &[u8]) -> i32 {
    a.iter().zip(b).map(|(x, y)| (*x as i32 - *y as i32).abs()).max().unwrap()
}

#[test]
fn a1111_prompts_and_lora_tags_draw_the_reference_pictures() {
    let record: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(root().join("assets/fixtures/prompt_syntax/cases.json")).unwrap()).unwrap();
    let prompts: Vec<&str> = record["prompts"].as_array().unwrap().iter().chain(record["negatives"].as_array().unwrap()).map(|v| v.as_str().unwrap()).collect();
    let pair = &record["families"]["sdxl"]["pictures"][0];
    let (p, n) = (pair[0].as_u64().unwrap() as usize, pair[1].as_u64().unwrap() as usize);
    let tmp = TempDir::new("a1111");
    let out = tmp.0.join("a1111.png");
    let sdxl = root().join("assets/fixtures/models/sdxl");
    let o = kiln(&[
        "generate", "--model", sdxl.to_str().unwrap(), "--prompt-syntax", "a1111", "--prompt", prompts[p], "--negative-prompt", prompts[n],
        "--steps", "4", "--guidance-scale", "5", "--seed", "1", "--width", "64", "--height", "64", "--output", out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let w = worst(&pixels(&out), &pixels(&root().join("assets/fixtures/prompt_syntax/sdxl-0.png")));
    assert!(w <= 2, "{w} levels");
    // <lora:…> from --lora-dir, taken out of the prompt; the PNG keeps the prompt as written
    let loras = root().join("assets/fixtures/loras");
    let sd1 = root().join("assets/fixtures/models/sd1");
    let out = tmp.0.join("lora-tags.png");
    // (SDXL: the tiny SD1 encoder's outputs average ~1e-6, too close to 0 for A1111's mean restoration)
    let prompt = "a red circle <lora:sdxl-kohya:0.7> <lora:sdxl-peft:-0.4>";
    let o = kiln(&[
        "generate", "--model", sdxl.to_str().unwrap(), "--prompt-syntax", "a1111", "--lora-dir", loras.to_str().unwrap(), "--prompt", prompt,
        "--steps", "4", "--guidance-scale", "5", "--seed", "1", "--width", "64", "--height", "64", "--output", out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let w = worst(&pixels(&out), &pixels(&loras.join("sdxl.png")));
    assert!(w <= 2, "{w} levels");
    let info = String::from_utf8_lossy(&kiln(&["info", out.to_str().unwrap()]).stdout).into_owned();
    assert!(info.starts_with(prompt) && info.contains("Lora hashes"), "{info}");
    // a tag without --lora-dir, a name the folder lacks, a weight that is not a number
    let out = tmp.0.join("never.png");
    let base = ["generate", "--model", sd1.to_str().unwrap(), "--prompt-syntax", "a1111", "--steps", "2", "--output", out.to_str().unwrap()];
    fn with<'a>(base: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
        base.iter().chain(extra).copied().collect()
    }
    assert_usage_error(&with(&base, &["--prompt", "a <lora:x:1>"]), &["<lora:x>", "--lora-dir"]);
    assert_usage_error(&with(&base, &["--prompt", "a <lora:missing:1>", "--lora-dir", loras.to_str().unwrap()]), &["missing.safetensors"]);
    assert_usage_error(&with(&base, &["--prompt", "a <lora:sd1-kohya:lots>", "--lora-dir", loras.to_str().unwrap()]), &["<lora:sd1-kohya:lots>"]);
    assert_usage_error(&with(&base, &["--prompt", "a (cat:1.2.3)"]), &["1.2.3", "not a number"]);
    assert!(!out.exists());
}
