//! kiln-train's losses differentiated by burn's autodiff through kiln's models (the code inference
//! uses) give PyTorch autograd's gradients for the same weights and batch
//! (`scripts/fixtures/train_grads.py`), so kiln-train trains what PyTorch would train: the VAE
//! stage (AutoencoderKL) and the second stage (CLIP text encoder + UNet2DConditionModel on the
//! ε-loss, gradients reaching both models).
//!
//! burn keys gradients by parameter id; to compare them by diffusers' names, one SGD step with
//! learning rate 1 turns them into `w0 − w1`, saved with the same PyTorch-layout writer that
//! writes the shipped model.

use std::collections::HashMap;
use std::path::PathBuf;

use burn::module::Module;
use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::{DType, Device, Tensor, TensorData};
use kiln_text_encoder::{ClipTextConfig, ClipTextModel};
use kiln_train::train::{save_safetensors, unet_loss, vae_loss};
use kiln_unet::UNet2DConditionConfig;
use kiln_vae::AutoencoderKLConfig;
use safetensors::SafeTensors;

fn fixtures() -> PathBuf {
    PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into())).join("../../assets/fixtures/train")
}

fn dir() -> PathBuf {
    fixtures().join("vae_grads")
}

/// The largest error of `w0 − w1` against PyTorch's gradient over every tensor, as a fraction of
/// what is allowed: 1e-3 of that tensor's largest gradient, plus the rounding of `w0 − w1`
/// (4 ulp of |w0|: a LayerNorm weight near 1 with gradients near 1e-5 would fail otherwise).
/// `(name, fraction)`; at most 1 passes.
fn worst_gradient(
    torch: &HashMap<String, (Vec<usize>, Vec<f32>)>,
    before: &HashMap<String, (Vec<usize>, Vec<f32>)>,
    after: &HashMap<String, (Vec<usize>, Vec<f32>)>,
    name_in_torch: impl Fn(&str) -> String,
) -> (String, f32) {
    assert_eq!(after.len(), before.len());
    let mut worst = (String::new(), 0f32);
    for (name, (s1, w1)) in after {
        let (shape, g) = torch.get(&name_in_torch(name)).unwrap_or_else(|| panic!("no PyTorch gradient for {name}"));
        let (_, w0) = &before[name];
        assert_eq!(shape, s1, "{name}");
        let scale = g.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        let err = g
            .iter()
            .zip(w0.iter().zip(w1))
            .map(|(g, (a, b))| ((a - b) - g).abs() / (1e-3 * scale + 4.0 * f32::EPSILON * a.abs()))
            .fold(0f32, f32::max);
        if err > worst.1 {
            worst = (name.clone(), err);
        }
    }
    worst
}

/// Saves `module` (PyTorch layout) and reads it back by name.
fn saved<M: Module>(module: &M, tag: &str) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    let tmp = std::env::temp_dir().join(format!("kiln-grads-{tag}-{}.safetensors", std::process::id()));
    save_safetensors(module, &tmp).unwrap();
    let out = read(&tmp);
    std::fs::remove_file(&tmp).ok();
    out
}

fn read(path: &PathBuf) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, t)| {
            let v = t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            (name, (t.shape().to_vec(), v))
        })
        .collect()
}

#[test]
fn vae_gradients_match_pytorch_autograd() {
    let device = Device::flex();
    let ad = device.clone().autodiff();
    let config = AutoencoderKLConfig::from_json_str(&std::fs::read_to_string(dir().join("config.json")).unwrap()).unwrap();
    let vae = kiln_nn::load_safetensors(config.init(&ad).unwrap(), &dir().join("weights.safetensors"), DType::F32, &[], &[]).unwrap();
    let mut input = read(&dir().join("input.safetensors"));
    let mut tensor = |name: &str| {
        let (shape, v) = input.remove(name).unwrap();
        Tensor::<4>::from_data(TensorData::new(v, [shape[0], shape[1], shape[2], shape[3]]), &ad)
    };
    let (x, weight) = (tensor("x"), tensor("w"));
    let loss = vae_loss(&vae, x, weight).unwrap();
    let value = loss.clone().into_scalar::<f32>() as f64;
    let expected: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir().join("loss.json")).unwrap()).unwrap();
    let torch_loss = expected["loss"].as_f64().unwrap();
    assert!((value - torch_loss).abs() <= 1e-5 * torch_loss, "loss {value} vs PyTorch {torch_loss}");

    let grads = GradientsParams::from_grads(loss.backward(), &vae);
    let stepped = SgdConfig::new().init().step(1.0, vae, grads).valid();
    let torch = read(&dir().join("grads.safetensors"));
    assert_eq!(torch.len(), 132, "every parameter has a gradient");
    let worst = worst_gradient(&torch, &read(&dir().join("weights.safetensors")), &saved(&stepped, "vae"), |n| n.to_string());
    println!("loss {value:.6} (PyTorch {torch_loss:.6}); worst gradient {} at {:.3} of the tolerance", worst.0, worst.1);
    assert!(worst.1 <= 1.0, "{worst:?}");
}

#[test]
fn text_encoder_and_unet_gradients_match_pytorch_autograd() {
    let dir = fixtures().join("unet_grads");
    let ad = Device::flex().autodiff();
    let te_config: ClipTextConfig = serde_json::from_str(&std::fs::read_to_string(dir.join("text_encoder_config.json")).unwrap()).unwrap();
    let te_config = te_config.validate(&dir.join("text_encoder_config.json")).unwrap();
    let te = ClipTextModel::load_file(&te_config, &dir.join("text_encoder.safetensors"), &ad, DType::F32).unwrap();
    let unet_config = UNet2DConditionConfig::from_json_str(&std::fs::read_to_string(dir.join("unet_config.json")).unwrap()).unwrap();
    let unet = kiln_nn::load_safetensors(unet_config.init(&ad).unwrap(), &dir.join("unet.safetensors"), DType::F32, &[], &[]).unwrap();
    let mut input = read(&dir.join("input.safetensors"));
    let mut t4 = |name: &str| {
        let (s, v) = input.remove(name).unwrap();
        Tensor::<4>::from_data(TensorData::new(v, [s[0], s[1], s[2], s[3]]), &ad)
    };
    let (xt, eps) = (t4("xt"), t4("eps"));
    let (_, t) = input.remove("t").unwrap();
    let (s, ids) = input.remove("ids").unwrap();
    let ids: Vec<Vec<u32>> = ids.chunks(s[1]).map(|r| r.iter().map(|&v| v as u32).collect()).collect();
    let timesteps: Vec<f64> = t.iter().map(|&v| v as f64).collect();
    let loss = unet_loss(&te, &unet, &ids, xt, eps, &timesteps).unwrap();
    let value = loss.clone().into_scalar::<f32>() as f64;
    let expected: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("loss.json")).unwrap()).unwrap();
    let torch_loss = expected["loss"].as_f64().unwrap();
    assert!((value - torch_loss).abs() <= 1e-5 * torch_loss, "loss {value} vs PyTorch {torch_loss}");

    let (before_unet, before_te) = (saved(&unet.valid(), "unet0"), saved(&te.valid(), "te0"));
    let mut grads = loss.backward();
    let g_unet = GradientsParams::from_module(&mut grads, &unet);
    let g_te = GradientsParams::from_module(&mut grads, &te);
    let unet = SgdConfig::new().init().step(1.0, unet, g_unet).valid();
    let te = SgdConfig::new().init().step(1.0, te, g_te).valid();
    let torch = read(&dir.join("grads.safetensors"));
    let w_unet = worst_gradient(&torch, &before_unet, &saved(&unet, "unet1"), |n| format!("unet.{n}"));
    // kiln writes CLIP's keys under `text_model.` (CLIPTextModelWithProjection's layout);
    // transformers 5 names a bare CLIPTextModel's parameters without it
    let w_te = worst_gradient(&torch, &before_te, &saved(&te, "te1"), |n| format!("text_encoder.{}", n.trim_start_matches("text_model.")));
    println!("loss {value:.6} (PyTorch {torch_loss:.6}); worst UNet gradient {w_unet:?}, text encoder {w_te:?}");
    assert!(w_unet.1 <= 1.0 && w_te.1 <= 1.0, "{w_unet:?} {w_te:?}");
}
