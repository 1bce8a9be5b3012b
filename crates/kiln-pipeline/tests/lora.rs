//! LoRAs against diffusers 0.42.1 (scripts/fixtures/loras.py): on the tiny SD1 and SDXL
//! families a kohya-format LoRA (LoCon convolutions, alpha ≠ rank; SDXL's UNet by its LDM names)
//! at 0.7 and a PEFT-format one at −0.4 draw diffusers' `load_lora_weights` + `set_adapters`
//! picture; unloading restores every weight bit for bit; LyCORIS LoHa/LoKr layers and full deltas
//! merge A1111's formulas (scripts/fixtures/lycoris.py); a LoRA that does not fit the model is
//! refused whole, naming the keys, and leaves the model as it was.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::store::ModuleSnapshot;
use burn::tensor::Device;
use kiln_pipeline::{LoadOptions, PipelineError, StableDiffusion};
use serde_json::Value;

mod common;
use common::{case_inputs, case_task, max_levels, read_png, write_safetensors, TempDir};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn loras() -> PathBuf {
    root().join("assets/fixtures/loras")
}

fn load(family: &str) -> StableDiffusion {
    StableDiffusion::load(&root().join("assets/fixtures/models").join(family), &LoadOptions::new(&Device::flex())).unwrap()
}

fn draw(pipe: &StableDiffusion, first_image: &str) -> image::RgbImage {
    let cases: Value = serde_json::from_str(&std::fs::read_to_string(root().join("assets/fixtures/pipelines/cases.json")).unwrap()).unwrap();
    let case = cases["cases"].as_array().unwrap().iter().find(|c| c["images"][0] == first_image).unwrap();
    let (o, init, mask, strength) = case_inputs(case, &root().join("assets/fixtures/pipelines"));
    pipe.generate(&o, case_task(case, &init, &mask, strength), &mut |_, _| true).unwrap().remove(0)
}

/// Every parameter's bytes, by name, of the UNet and text encoders.
fn weights(pipe: &StableDiffusion) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut add = |prefix: &str, tensors: Vec<burn::store::burn_pack::Tensor>| {
        for t in tensors {
            out.insert(format!("{prefix}.{}", t.name), t.to_bytes().unwrap().to_vec());
        }
    };
    add("unet", pipe.unet.collect(None, None, true));
    add("text_encoder", pipe.text_encoder.collect(None, None, true));
    if let Some(te) = &pipe.text_encoder_2 {
        add("text_encoder_2", te.collect(None, None, true));
    }
    out
}

#[test]
fn two_loras_draw_what_diffusers_draws_and_unload_exactly() {
    for (family, case) in [("sd1", "case00-0.png"), ("sdxl", "case11-0.png")] {
        let mut pipe = load(family);
        let base = weights(&pipe);
        let kohya = pipe.load_lora(&loras().join(format!("{family}-kohya.safetensors")), 0.7).unwrap();
        let peft = pipe.load_lora(&loras().join(format!("{family}-peft.safetensors")), -0.4).unwrap();
        for r in [&kohya, &peft] {
            println!("{r}");
            assert_eq!(r.applied.values().sum::<usize>(), r.modules, "{family}: every module applied");
        }
        assert!(kohya.applied.contains_key("unet") && kohya.applied.contains_key("text_encoder"));
        if family == "sdxl" {
            assert!(kohya.applied.contains_key("text_encoder_2") && peft.applied.contains_key("text_encoder_2"));
        }
        let (_, _, want) = read_png(&loras().join(format!("{family}.png")));
        let worst = max_levels(draw(&pipe, case).as_raw(), &want);
        println!("{family}: {worst} levels from diffusers' picture with both LoRAs");
        assert!(worst <= 2, "{family}: {worst} levels");
        // scales change without reloading; unloading gives back the model's own weights, bit for bit
        pipe.set_lora_scales(&[0.0, 1.0]).unwrap();
        assert_ne!(weights(&pipe), base);
        pipe.unload_loras();
        assert!(weights(&pipe) == base, "{family}: unload_loras restores every weight");
        assert!(pipe.loras().is_empty());
    }
}

/// A copy of `from`'s tensors with `rename` applied to the names.
fn rewrite(from: &Path, to: &Path, rename: &dyn Fn(&str) -> String) {
    let file = kiln_nn::WeightsFile::open(from).unwrap();
    let tensors: Vec<(String, &str, Vec<u64>, Option<Vec<u8>>)> = file
        .tensors()
        .iter()
        .map(|t| (rename(&t.name), "F32", t.shape.clone(), Some(file.read(&t.name).unwrap())))
        .collect();
    write_safetensors(to, &tensors);
}

#[test]
fn a_lora_that_does_not_fit_is_refused_whole() {
    let tmp = TempDir::new("lora-bad");
    let mut pipe = load("sd1");
    let base = weights(&pipe);
    let kohya = loras().join("sd1-kohya.safetensors");
    // one renamed module: named in the error, nothing applied
    let renamed = tmp.0.join("renamed.safetensors");
    rewrite(&kohya, &renamed, &|n| n.replace("lora_unet_mid_block_attentions_0_proj_in", "lora_unet_mid_block_attentions_0_proj_xx"));
    let err = pipe.load_lora(&renamed, 1.0).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, PipelineError::Lora(_)) && msg.contains("lora_unet_mid_block_attentions_0_proj_xx") && msg.contains("1 of its"), "{msg}");
    assert!(weights(&pipe) == base);
    // an SDXL LoRA on SD 1.x: all foreign
    let err = pipe.load_lora(&loras().join("sdxl-kohya.safetensors"), 1.0).unwrap_err().to_string();
    assert!(err.contains("SDXL LoRA on an SD 1.x/2.x model"), "{err}");
    // a loaded LoRA stays when a second one is refused
    pipe.load_lora(&kohya, 0.5).unwrap();
    let with_one = weights(&pipe);
    assert!(pipe.load_lora(&renamed, 1.0).is_err());
    assert!(weights(&pipe) == with_one && pipe.loras().len() == 1);
    // IA³ layers (not applied yet), half a LoHa, not a LoRA at all, a bad scale
    let ia3 = tmp.0.join("ia3.safetensors");
    write_safetensors(&ia3, &[("lora_unet_mid_block_attentions_0_proj_in.on_input".into(), "F32", vec![4], Some(vec![0; 16]))]);
    let err = pipe.load_lora(&ia3, 1.0).unwrap_err().to_string();
    assert!(err.contains("IA³") && err.contains("on_input"), "{err}");
    let half = tmp.0.join("half-loha.safetensors");
    write_safetensors(&half, &[("lora_unet_mid_block_attentions_0_proj_in.hada_w1_a".into(), "F32", vec![4, 4], Some(vec![0; 64]))]);
    let err = pipe.load_lora(&half, 1.0).unwrap_err().to_string();
    assert!(err.contains("has no `lora_unet_mid_block_attentions_0_proj_in.hada_w1_b`"), "{err}");
    let unet = root().join("assets/fixtures/models/sd1/unet/diffusion_pytorch_model.safetensors");
    let err = pipe.load_lora(&unet, 1.0).unwrap_err().to_string();
    assert!(err.contains("is not a LoRA kiln reads"), "{err}");
    assert!(pipe.load_lora(&kohya, f64::NAN).is_err());
    assert!(weights(&pipe) == with_one);
}

/// A module's parameter in PyTorch's layout, as f32.
fn param(pipe: &StableDiffusion, name: &str) -> Vec<f32> {
    use kiln_nn::weights::TorchNames;
    let (component, rest) = name.split_once('.').unwrap();
    let tensors = match component {
        "unet" => pipe.unet.collect(None, Some(Box::new(TorchNames::ToTorch)), true),
        _ => pipe.text_encoder.collect(None, Some(Box::new(TorchNames::ToTorch)), true),
    };
    let t = tensors.into_iter().find(|t| t.name == rest).unwrap_or_else(|| panic!("{name}"));
    // f32 whatever it is stored in (a half-precision file's weights stay f16 on the CPU until a
    // LoRA is merged into them)
    burn::tensor::TensorData::from_bytes(t.to_bytes().unwrap(), t.shape.clone(), t.dtype).convert::<f32>().try_to_vec::<f32>().unwrap()
}

/// LyCORIS LoHa and LoKr layers, full deltas and Tucker cores (LoCon's `lora_mid`, LoHa's
/// `hada_t1/t2`, LoKr's `lokr_t2`) (scripts/fixtures/lycoris.py: A1111's `network_hada.py`,
/// `network_lokr.py`, `network_full.py`, `lyco_helpers.py` formulas) merge into the weights they
/// compute, within 1e-5 of the largest value; unloading restores the model.
#[test]
fn lycoris_layers_merge_the_published_formulas() {
    let dir = root().join("assets/fixtures/lycoris");
    let mut pipe = load("sd1");
    let base = weights(&pipe);
    let before = |name: &str| param(&load("sd1"), name);
    // (the full deltas: 4 modules, 3 of them with a bias delta too)
    for (kind, modules_applied) in [("loha", 4), ("lokr", 4), ("full", 4), ("tucker", 3)] {
        let report = pipe.load_lora(&dir.join(format!("{kind}.safetensors")), 0.8).unwrap();
        assert_eq!(report.applied.values().sum::<usize>(), modules_applied, "{kind}: {report}");
        let expected = kiln_nn::WeightsFile::open(&dir.join(format!("expected-{kind}.safetensors"))).unwrap();
        for t in expected.tensors() {
            let want: Vec<f32> = expected.read(&t.name).unwrap().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            let got = param(&pipe, &t.name);
            let moved = got.iter().zip(before(&t.name)).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(moved > 1e-3, "{kind} {}: the weight moved only {moved:e}", t.name);
            let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
            let diff = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max) / scale;
            println!("{kind} {}: {diff:e}", t.name);
            assert!(diff <= 1e-5, "{kind} {}: {diff:e}", t.name);
        }
        pipe.unload_loras();
        assert!(weights(&pipe) == base, "{kind}: unload");
    }
}
