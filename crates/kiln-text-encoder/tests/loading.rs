//! Loading: key layouts (transformers 4 prefix, the position_ids buffer, variants), errors for bad
//! files and configs, the published SD 1.5 / 2.1 / SDXL configs, pooling rules.

mod common;

use std::path::{Path, PathBuf};

use burn::prelude::*;
use common::*;
use kiln_text_encoder::{ClipTextConfig, ClipTextModel, TextEncoderError};
use safetensors::Dtype;
use kiln_text_encoder::LoadOptions;

const IDS: [[u32; 6]; 2] = [[49406, 320, 1215, 49407, 49407, 49407], [49406, 49407, 0, 0, 0, 0]];

fn ids() -> Vec<Vec<u32>> {
    IDS.iter().map(|r| r.to_vec()).collect()
}

/// A copy of the sd1 text encoder folder whose weights file is rewritten by `edit`.
fn edited(name: &str, edit: impl FnOnce(&mut Vec<(String, Dtype, Vec<usize>, Vec<u8>)>)) -> PathBuf {
    let src = fixture("sd1").join("text_encoder");
    let dir = temp_dir(name);
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let mut tensors = read_tensors(&src.join("model.safetensors"));
    edit(&mut tensors);
    write_tensors(&dir.join("model.safetensors"), &tensors);
    dir
}

fn load(dir: &Path) -> Result<ClipTextModel, TextEncoderError> {
    ClipTextModel::load(&dir, &LoadOptions::new(&Device::flex()))
}

fn outputs_equal(a: &ClipTextModel, b: &ClipTextModel) {
    let device = Device::flex();
    let (x, y) = (a.encode(&ids(), &device).unwrap(), b.encode(&ids(), &device).unwrap());
    let diff: f32 = (x.last_hidden_state - y.last_hidden_state).abs().max().into_scalar();
    assert_eq!(diff, 0.0);
    let diff: f32 = (x.pooler_output - y.pooler_output).abs().max().into_scalar();
    assert_eq!(diff, 0.0);
}

#[test]
fn transformers4_keys_and_position_ids_buffer_load() {
    // Hub files (transformers 4) prefix a bare CLIPTextModel's keys with `text_model.` and may
    // carry the int64 `position_ids` buffer
    let dir = edited("prefixed", |t| {
        for (name, ..) in t.iter_mut() {
            *name = format!("text_model.{name}");
        }
        let ids: Vec<u8> = (0..77i64).flat_map(|i| i.to_le_bytes()).collect();
        t.push(("text_model.embeddings.position_ids".into(), Dtype::I64, vec![1, 77], ids));
    });
    let reference = load(&fixture("sd1").join("text_encoder")).unwrap();
    outputs_equal(&load(&dir).unwrap(), &reference);

    // variant file names: model.fp16.safetensors
    std::fs::rename(dir.join("model.safetensors"), dir.join("model.fp16.safetensors")).unwrap();
    let e = load(&dir).unwrap_err().to_string();
    assert!(e.contains("model.safetensors"), "{e}");
    let m = ClipTextModel::load(&dir, &LoadOptions::new(&Device::flex()).with_variant(Some("fp16"))).unwrap();
    outputs_equal(&m, &reference);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn weight_errors_name_file_and_tensor() {
    let missing = edited("missing", |t| t.retain(|(n, ..)| n != "encoder.layers.3.mlp.fc1.bias"));
    let e = load(&missing).unwrap_err().to_string();
    assert!(e.contains("model.safetensors") && e.contains("encoder.layers.3.mlp.fc1.bias") && e.contains("lacks"), "{e}");

    let unused = edited("unused", |t| t.push(("text_projection.weight".into(), Dtype::F16, vec![32, 32], vec![0; 32 * 32 * 2])));
    let e = load(&unused).unwrap_err().to_string();
    assert!(e.contains("model.safetensors") && e.contains("text_projection.weight") && e.contains("does not use"), "{e}");

    let shape = edited("shape", |t| {
        let fc2 = t.iter_mut().find(|(n, ..)| n == "encoder.layers.0.mlp.fc2.weight").unwrap();
        fc2.2 = vec![37, 32]; // transposed: [out, in] is [32, 37]
    });
    let e = load(&shape).unwrap_err().to_string();
    assert!(e.contains("model.safetensors") && e.contains("encoder.layers.0.mlp.fc2"), "{e}");

    let truncated = edited("truncated", |_| {});
    let path = truncated.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 1000]).unwrap();
    let e = load(&truncated).unwrap_err().to_string();
    assert!(e.contains("model.safetensors") && e.contains("truncated"), "{e}");

    std::fs::write(&path, b"not a safetensors file at all").unwrap();
    let e = load(&truncated).unwrap_err().to_string();
    assert!(e.contains("model.safetensors") && e.contains("not a valid safetensors"), "{e}");

    std::fs::remove_file(&path).unwrap();
    let e = load(&truncated).unwrap_err().to_string();
    assert!(e.contains("has no model.safetensors"), "{e}");

    // a projection model needs text_projection.weight
    let config = std::fs::read_to_string(truncated.join("config.json")).unwrap();
    let dir = edited("no-projection", |_| {});
    std::fs::write(dir.join("config.json"), config.replace("\"CLIPTextModel\"", "\"CLIPTextModelWithProjection\"")).unwrap();
    let e = load(&dir).unwrap_err().to_string();
    assert!(e.contains("text_projection.weight") && e.contains("lacks"), "{e}");

    for d in [missing, unused, shape, truncated, dir] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn config_errors_name_key_and_value() {
    let dir = edited("config", |_| {});
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let cases = [
        (config.replace("\"quick_gelu\"", "\"swish\""), "hidden_act"),
        (config.replace("\"num_attention_heads\": 4", "\"num_attention_heads\": 5"), "num_attention_heads"),
        (config.replace("\"eos_token_id\": 49407", "\"eos_token_id\": [49407, 2]"), "eos_token_id"),
        (config.replace("\"CLIPTextModel\"", "\"CLIPVisionModel\""), "CLIPVisionModel"),
        (config.replace("\"clip_text_model\"", "\"clip\""), "model_type"),
        (config.replace("\"hidden_size\": 32", "\"hidden_size\": \"32\""), "malformed config"),
        (config[..config.len() / 2].to_string(), "malformed config"),
    ];
    for (text, key) in cases {
        std::fs::write(dir.join("config.json"), &text).unwrap();
        let e = load(&dir).unwrap_err().to_string();
        assert!(e.contains("config.json") && e.contains(key), "{key}: {e}");
    }
    std::fs::remove_file(dir.join("config.json")).unwrap();
    let e = load(&dir).unwrap_err().to_string();
    assert!(e.contains("cannot read") && e.contains("config.json"), "{e}");

    // bad ids are an error, not a panic
    std::fs::write(dir.join("config.json"), &config).unwrap();
    let m = load(&dir).unwrap();
    let device = Device::flex();
    for (ids, what) in [
        (vec![vec![49406, 49408]], "vocabulary"),
        (vec![vec![1; 78]], "max_position_embeddings"),
        (vec![vec![1, 2], vec![1]], "sequence 1"),
        (vec![], "no token ids"),
    ] {
        let e = m.encode(&ids, &device).unwrap_err().to_string();
        assert!(e.contains(what), "{what}: {e}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// transformers' pooling: the first eos; with the legacy `eos_token_id == 2` (SD 1.5's, SD 2.1's
/// and SDXL's published configs) the first position of the largest id, which for CLIP ids is the
/// first eos too, whatever the pad token.
#[test]
fn pooled_output_position() {
    let device = Device::flex();
    let dir = edited("pooling", |_| {});
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let modern = load(&dir).unwrap();
    std::fs::write(dir.join("config.json"), config.replace("\"eos_token_id\": 49407", "\"eos_token_id\": 2")).unwrap();
    let legacy = load(&dir).unwrap();
    outputs_equal(&modern, &legacy);

    // explicit positions: eos at 3 (then padding with eos), eos at 1 (then padding with `!` = 0);
    // a sequence without eos pools position 0 (torch's argmax of all-false); legacy: first maximum
    let rows = vec![
        vec![49406, 320, 1215, 49407, 49407, 49407],
        vec![49406, 49407, 0, 0, 0, 0],
        vec![49406, 320, 1215, 320, 5, 5],
        vec![7, 9, 3, 9, 1, 0],
    ];
    let pooled_at = |m: &ClipTextModel| -> Vec<usize> {
        let out = m.encode(&rows, &device).unwrap();
        let last: Vec<f32> = out.last_hidden_state.into_data().try_to_vec_as::<f32>().unwrap();
        let pooled: Vec<f32> = out.pooler_output.into_data().try_to_vec_as::<f32>().unwrap();
        (0..rows.len())
            .map(|b| {
                let p = &pooled[b * 32..(b + 1) * 32];
                (0..6).find(|&s| &last[(b * 6 + s) * 32..(b * 6 + s + 1) * 32] == p).unwrap()
            })
            .collect()
    };
    assert_eq!(pooled_at(&modern), vec![3, 1, 0, 0]);
    assert_eq!(pooled_at(&legacy), vec![3, 1, 0, 1]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The published text encoder configs parse and build with the published parameter counts
/// (transformers' `sum(p.numel())`).
#[test]
fn published_configs_instantiate() {
    let device = Device::flex();
    for (path, params, projection) in [
        ("sd15/text_encoder", 123_060_480usize, false),
        ("sd21/text_encoder", 340_387_840, false),
        ("sdxl/text_encoder", 123_060_480, false),
        ("sdxl/text_encoder_2", 694_659_840, true),
    ] {
        let config = ClipTextConfig::from_file(&root().join("crates/kiln-pipeline/configs").join(path).join("config.json")).unwrap();
        assert_eq!(config.eos_token_id, 2, "{path}: legacy pooling");
        let model = ClipTextModel::new(&config, &device);
        assert_eq!(model.num_params(), params, "{path}");
        assert_eq!(model.text_projection.is_some(), projection, "{path}");
    }
}

/// The random-weight forwards take 0.5-2.8 GB each (f32 weights); one at a time.
static BIG_MODEL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A random-weight encoder built from a published config, run on a full 77-token prompt from the
/// matching published tokenizer (measured on flex, 2 cores: SD 1.5 1.4 s, SD 2.1 4.8 s, SDXL bigG
/// 10.9 s, init included).
fn random_forward(model: &str, encoder: &str, tokenizer: &str, layers: usize, hidden: usize, projection: Option<usize>) {
    let _one_at_a_time = BIG_MODEL.lock().unwrap_or_else(|e| e.into_inner());
    let device = Device::flex();
    let configs = root().join("crates/kiln-pipeline/configs").join(model);
    let config = ClipTextConfig::from_file(&configs.join(encoder).join("config.json")).unwrap();
    let model = ClipTextModel::new(&config, &device);
    let tokenizer = kiln_text_encoder::ClipTokenizer::from_dir(configs.join(tokenizer)).unwrap();
    let prompt = tokenizer.encode("a photograph of an astronaut riding a horse").unwrap();
    let start = std::time::Instant::now();
    let out = model.encode(&[prompt.ids], &device).unwrap();
    assert_eq!(out.hidden_states.len(), layers + 1);
    assert_eq!(out.last_hidden_state.dims(), [1, 77, hidden]);
    assert_eq!(out.pooler_output.dims(), [1, hidden]);
    assert_eq!(out.text_embeds.as_ref().map(|t| t.dims()[1]), projection);
    let nan: bool = out.last_hidden_state.clone().is_nan().any().into_scalar();
    let inf: bool = out.last_hidden_state.is_inf().any().into_scalar();
    assert!(!nan && !inf);
    println!("{encoder}: init + forward {:.1} s", start.elapsed().as_secs_f64());
}

/// SD 1.5's CLIP ViT-L/14 (12 layers, 768 wide, quick_gelu).
#[test]
fn sd15_random_forward_77_tokens() {
    random_forward("sd15", "text_encoder", "tokenizer", 12, 768, None);
}

/// SD 2.1's OpenCLIP ViT-H (23 layers, 1024 wide, gelu).
#[test]
fn sd21_random_forward_77_tokens() {
    random_forward("sd21", "text_encoder", "tokenizer", 23, 1024, None);
}

/// SDXL's OpenCLIP bigG with projection (32 layers, 1280 wide).
#[test]
fn sdxl_bigg_random_forward_77_tokens() {
    random_forward("sdxl", "text_encoder_2", "tokenizer_2", 32, 1280, Some(1280));
}
