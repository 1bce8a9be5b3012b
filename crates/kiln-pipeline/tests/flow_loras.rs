//! LoRAs on SD 3 and FLUX.1 against diffusers 0.42.1 (scripts/fixtures/flow_loras.py): a
//! diffusers-format FLUX LoRA whose alphas live in the file's `lora_adapter_metadata` (transformer
//! alpha 8 over rank 4 with an `alpha_pattern`, CLIP alpha 2) at 0.8, a kohya-format FLUX LoRA
//! (the original model's fused qkv, alpha 2 over rank 4, CLIP's `lora_te1_`) at 0.9, and a plain
//! PEFT SD 3 LoRA on the transformer and both CLIP encoders at 0.6, draw diffusers'
//! `load_lora_weights` + `set_adapters` pictures; unloading gives the model's own picture back;
//! the kohya modules diffusers cannot load on a tiny model (a single block's `linear1`) or drops
//! (the input and final layers) merge the formula; kohya's SD 3 LoRAs and LoRAs of the other
//! family are refused naming what they are.

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
    let runs = [
        ("flux-dev-peft", "flux-dev", 8, 0.8, &["text_encoder", "transformer"][..]),
        ("flux-dev-kohya", "flux-dev", 8, 0.9, &["text_encoder", "transformer"][..]),
        ("sd3-peft", "sd3", 0, 0.6, &["text_encoder", "text_encoder_2", "transformer"][..]),
    ];
    for (stem, model, index, scale, components) in runs {
        let mut pipe = Pipeline::load(&root().join("assets/fixtures/models").join(model), &LoadOptions::new(&device)).unwrap();
        let (o, base_png) = case(index);
        let report = pipe.load_lora(&root().join(format!("assets/fixtures/loras/{stem}.safetensors")), scale).unwrap();
        println!("{report}");
        assert_eq!(report.applied.values().sum::<usize>(), report.modules, "{model}: every module applied");
        assert_eq!(report.applied.keys().map(String::as_str).collect::<Vec<_>>(), components, "{model}");
        let (_, _, want) = read_png(&root().join(format!("assets/fixtures/loras/{stem}.png")));
        let worst = max_levels(&draw(&pipe, &o), &want);
        println!("{stem}: {worst} levels from diffusers' picture with the LoRA");
        assert!(worst <= 2, "{stem}: {worst} levels");
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
    // kohya's SD 3 layout (`joint_blocks`), and a FLUX qkv whose rows do not split as the model's
    let kohya = tmp.0.join("kohya-sd3.safetensors");
    let t = |name: &str, shape: Vec<u64>| (name.to_string(), "F32", shape.clone(), Some(vec![0u8; 4 * shape.iter().product::<u64>() as usize]));
    write_safetensors(&kohya, &[t("lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight", vec![4, 32]), t("lora_unet_joint_blocks_0_x_block_attn_qkv.lora_up.weight", vec![96, 4])]);
    let e = flux.load_lora(&kohya, 1.0).unwrap_err().to_string();
    assert!(e.contains("lora_unet_joint_blocks_0_x_block_attn_qkv") && e.contains("kohya"), "{e}");
    let odd = tmp.0.join("kohya-flux-odd.safetensors");
    write_safetensors(&odd, &[t("lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight", vec![4, 32]), t("lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight", vec![95, 4])]);
    let e = flux.load_lora(&odd, 1.0).unwrap_err().to_string();
    assert!(e.contains("lora_unet_double_blocks_0_img_attn_qkv"), "{e}");
    // factors whose ranks disagree (up [32, 3], down [4, 32]): an error naming the weight, not a panic
    let ranks = tmp.0.join("ranks.safetensors");
    write_safetensors(&ranks, &[t("transformer.transformer_blocks.0.attn.to_q.lora_A.weight", vec![4, 32]), t("transformer.transformer_blocks.0.attn.to_q.lora_B.weight", vec![32, 3])]);
    let e = flux.load_lora(&ranks, 1.0).unwrap_err().to_string();
    assert!(e.contains("transformer_blocks.0.attn.to_q.weight") && e.contains("do not fit together"), "{e}");
    // an SD 1.x LoRA on FLUX, a FLUX LoRA on SD 1.x
    let e = flux.load_lora(&root().join("assets/fixtures/loras/sd1-peft.safetensors"), 1.0).unwrap_err().to_string();
    assert!(e.contains("SD-family LoRA on an SD 3 / FLUX model"), "{e}");
    let mut sd1 = Pipeline::load(&models.join("sd1"), &LoadOptions::new(&device)).unwrap();
    let e = sd1.load_lora(&root().join("assets/fixtures/loras/flux-dev-peft.safetensors"), 1.0).unwrap_err().to_string();
    assert!(e.contains("SD 3 / FLUX transformer, this model has a UNet"), "{e}");
}

/// A transformer parameter of a FLUX pipeline as f32 values.
fn param(pipe: &Pipeline, name: &str) -> Vec<f32> {
    use burn::store::ModuleSnapshot;
    let Pipeline::Flux(flux) = pipe else { panic!("a FLUX pipeline") };
    let tensors = flux.transformer.collect(None, None, true);
    let t = tensors.iter().find(|t| t.name == name).unwrap_or_else(|| panic!("no {name} among {:?}", tensors.iter().map(|t| &t.name).take(8).collect::<Vec<_>>()));
    burn::store::bridge::to_data(t).unwrap().convert_dtype(burn::tensor::DType::F32).try_to_vec::<f32>().unwrap()
}

/// kohya FLUX modules diffusers cannot check on a tiny model merge
/// `W + scale · alpha/rank · up_rows @ down`: a single block's `linear1` split into q, k, v and the
/// MLP input at the model's widths (32, 32, 32, 128), the final adaLN's halves swapped, an input
/// layer whole. kiln's own linear layout is PyTorch's `[out, in]`.
#[test]
fn kohya_flux_modules_merge_the_formula() {
    let device = Device::flex();
    let tmp = TempDir::new("flow-lora-kohya");
    let mut pipe = Pipeline::load(&root().join("assets/fixtures/models/flux-dev"), &LoadOptions::new(&device)).unwrap();
    let (rank, alpha, scale) = (2usize, 3.0f32, 0.5f32);
    let s = scale * alpha / rank as f32;
    // (kohya module, in, out rows, [(diffusers weight, first up row, rows, swapped)])
    let modules: [(&str, usize, usize, Vec<(&str, usize, usize, bool)>); 3] = [
        ("single_blocks_1_linear1", 32, 224, vec![
            ("single_transformer_blocks.1.attn.to_q.weight", 0, 32, false),
            ("single_transformer_blocks.1.attn.to_k.weight", 32, 32, false),
            ("single_transformer_blocks.1.attn.to_v.weight", 64, 32, false),
            ("single_transformer_blocks.1.proj_mlp.weight", 96, 128, false),
        ]),
        ("final_layer_adaLN_modulation_1", 32, 64, vec![("norm_out.linear.weight", 0, 64, true)]),
        ("img_in", 64, 32, vec![("x_embedder.weight", 0, 32, false)]),
    ];
    let value = |k: usize| ((k * 37 % 23) as f32 - 11.0) / 40.0;
    let mut tensors = Vec::new();
    let mut factors = Vec::new();
    for (m, inp, out, _) in &modules {
        let down: Vec<f32> = (0..rank * inp).map(|k| value(k + 1)).collect();
        let up: Vec<f32> = (0..out * rank).map(|k| value(k + 7)).collect();
        let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        tensors.push((format!("lora_unet_{m}.lora_down.weight"), "F32", vec![rank as u64, *inp as u64], Some(bytes(&down))));
        tensors.push((format!("lora_unet_{m}.lora_up.weight"), "F32", vec![*out as u64, rank as u64], Some(bytes(&up))));
        tensors.push((format!("lora_unet_{m}.alpha"), "F32", vec![], Some(alpha.to_le_bytes().to_vec())));
        factors.push((down, up));
    }
    let path = tmp.0.join("kohya-flux.safetensors");
    write_safetensors(&path, &tensors);
    let names: Vec<&str> = modules.iter().flat_map(|(_, _, _, t)| t.iter().map(|t| t.0)).collect();
    let before: Vec<Vec<f32>> = names.iter().map(|n| param(&pipe, n)).collect();
    let report = pipe.load_lora(&path, scale as f64).unwrap();
    assert_eq!(report.applied.get("transformer"), Some(&3), "{report}");
    let mut k = 0;
    for ((_, inp, out, targets), (down, up)) in modules.iter().zip(&factors) {
        for &(name, first, rows, swapped) in targets {
            let after = param(&pipe, name);
            let mut worst = 0f32;
            for r in 0..rows {
                // the row of `up` this weight row takes (the two halves swapped for the adaLN)
                let src = if swapped { (r + rows / 2) % rows } else { r } + first;
                assert!(src < *out);
                for c in 0..*inp {
                    let delta: f32 = (0..rank).map(|j| up[src * rank + j] * down[j * inp + c]).sum::<f32>() * s;
                    worst = worst.max((after[r * inp + c] - before[k][r * inp + c] - delta).abs());
                }
            }
            assert!(worst < 1e-5, "{name}: {worst} off W + s·up@down");
            k += 1;
        }
    }
}
