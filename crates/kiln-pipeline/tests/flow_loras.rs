//! LoRAs on SD 3 and FLUX.1 against diffusers 0.42.1 (scripts/fixtures/flow_loras.py): a
//! diffusers-format FLUX LoRA whose alphas live in the file's `lora_adapter_metadata` (transformer
//! alpha 8 over rank 4 with an `alpha_pattern`, CLIP alpha 2) at 0.8, and a plain PEFT SD 3 LoRA
//! on the transformer and both CLIP encoders at 0.6, draw diffusers' `load_lora_weights` +
//! `set_adapters` pictures; unloading gives the model's own picture back; kohya's SD 3 / FLUX
//! LoRAs and LoRAs of the other family are refused naming what they are.

use std::path::PathBuf;

use burn::tensor::Device;
use kiln_pipeline::{FlowOptions, GenerateOptions, LoadOptions, Pipeline, Task};
use serde_json::Value;

mod common;
use common::{max_levels, read_png, write_safetensors, TempDir};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The flow_pipelines case `index` (txt2img) as options.
fn case(index: usize) -> (GenerateOptions, String) {
    let dir = root().join("assets/fixtures/flow_pipelines");
    let cases: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let c = &cases["cases"][index];
    let a = &c["args"];
    let u = |k: &str| a.get(k).and_then(Value::as_u64).map(|v| v as usize);
    let o = GenerateOptions {
        prompt: a["prompt"].as_str().unwrap().into(),
        num_inference_steps: u("num_inference_steps").unwrap(),
        guidance_scale: a["guidance_scale"].as_f64().unwrap(),
        width: u("width"),
        height: u("height"),
        seed: c["seed"].as_u64().unwrap(),
        flow: FlowOptions { max_sequence_length: u("max_sequence_length"), ..FlowOptions::default() },
        ..GenerateOptions::default()
    };
    (o, dir.join(c["images"][0].as_str().unwrap()).to_string_lossy().into_owned())
}

fn draw(pipe: &Pipeline, o: &GenerateOptions) -> Vec<u8> {
    pipe.generate(o, Task::Txt2Img, &mut |_, _| true).unwrap().remove(0).into_raw()
}

#[test]
fn peft_loras_draw_what_diffusers_draws_and_unload() {
    let device = Device::flex();
    for (model, index, scale, components) in [("flux-dev", 8, 0.8, &["text_encoder", "transformer"][..]), ("sd3", 0, 0.6, &["text_encoder", "text_encoder_2", "transformer"][..])] {
        let mut pipe = Pipeline::load(&root().join("assets/fixtures/models").join(model), &LoadOptions::new(&device)).unwrap();
        let (o, base_png) = case(index);
        let report = pipe.load_lora(&root().join(format!("assets/fixtures/loras/{model}-peft.safetensors")), scale).unwrap();
        println!("{report}");
        assert_eq!(report.applied.values().sum::<usize>(), report.modules, "{model}: every module applied");
        assert_eq!(report.applied.keys().map(String::as_str).collect::<Vec<_>>(), components, "{model}");
        let (_, _, want) = read_png(&root().join(format!("assets/fixtures/loras/{model}.png")));
        let worst = max_levels(&draw(&pipe, &o), &want);
        println!("{model}: {worst} levels from diffusers' picture with the LoRA");
        assert!(worst <= 2, "{model}: {worst} levels");
        pipe.unload_loras();
        let (_, _, base) = read_png(std::path::Path::new(&base_png));
        let worst = max_levels(&draw(&pipe, &o), &base);
        assert!(worst <= 2, "{model}: {worst} levels from the base picture after unload_loras");
    }
}

#[test]
fn loras_of_another_layout_or_family_are_refused() {
    let device = Device::flex();
    let tmp = TempDir::new("flow-lora-bad");
    let models = root().join("assets/fixtures/models");
    let mut flux = Pipeline::load(&models.join("flux-dev"), &LoadOptions::new(&device)).unwrap();
    // kohya's FLUX layout: the original model's fused qkv
    let kohya = tmp.0.join("kohya-flux.safetensors");
    let t = |name: &str, shape: Vec<u64>| (name.to_string(), "F32", shape.clone(), Some(vec![0u8; 4 * shape.iter().product::<u64>() as usize]));
    write_safetensors(&kohya, &[t("lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight", vec![4, 32]), t("lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight", vec![96, 4])]);
    let e = flux.load_lora(&kohya, 1.0).unwrap_err().to_string();
    assert!(e.contains("lora_unet_double_blocks_0_img_attn_qkv") && e.contains("kohya"), "{e}");
    // an SD 1.x LoRA on FLUX, a FLUX LoRA on SD 1.x
    let e = flux.load_lora(&root().join("assets/fixtures/loras/sd1-peft.safetensors"), 1.0).unwrap_err().to_string();
    assert!(e.contains("SD-family LoRA on an SD 3 / FLUX model"), "{e}");
    let mut sd1 = Pipeline::load(&models.join("sd1"), &LoadOptions::new(&device)).unwrap();
    let e = sd1.load_lora(&root().join("assets/fixtures/loras/flux-dev-peft.safetensors"), 1.0).unwrap_err().to_string();
    assert!(e.contains("SD 3 / FLUX transformer, this model has a UNet"), "{e}");
}
