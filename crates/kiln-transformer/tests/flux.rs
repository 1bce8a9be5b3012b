//! FluxTransformer2DModel against diffusers 0.42.1 on tiny random models
//! (assets/fixtures/models/flow/transformer_flux_dev and transformer_flux_schnell, written by
//! scripts/fixtures/flow_models.py): 2 double- and 2 single-stream blocks, 3 × 5 packed latent
//! tokens with the pipeline's image ids, 7 text tokens, batch 2 at σ = 1 and 0.4375, with the
//! guidance embedding (dev, guidance 3.5) and without (schnell).

mod common;

use burn::prelude::*;
use burn::tensor::DType;
use common::{flow, refs, tensor};
use kiln_transformer::rope::rope_tables;
use kiln_transformer::{FluxTransformer2DModel, FluxTransformerConfig, LoadOptions};

fn ids(r: &(Vec<usize>, Vec<f32>)) -> Vec<[f32; 3]> {
    r.1.chunks(3).map(|c| [c[0], c[1], c[2]]).collect()
}

fn load(name: &str) -> FluxTransformer2DModel {
    FluxTransformer2DModel::load(&flow().join(format!("transformer_{name}")), &LoadOptions::new(&Device::flex()).with_dtype(DType::F32)).unwrap()
}

#[test]
fn dev_and_schnell_match_diffusers() {
    let refs = refs();
    let device = Device::flex();
    for (name, guidance) in [("flux_dev", Some([3.5, 3.5])), ("flux_schnell", None)] {
        let model = load(name);
        assert_eq!(model.has_guidance_embeds(), guidance.is_some());
        let r = |k: &str| &refs[&format!("{name}.{k}")];
        let timesteps: Vec<f64> = r("timestep").1.iter().map(|&t| t as f64).collect();
        let out = model
            .forward(
                tensor(r("x"), &device),
                tensor(r("context"), &device),
                tensor(r("pooled"), &device),
                &timesteps,
                &ids(r("img_ids")),
                &ids(r("txt_ids")),
                guidance.as_ref().map(|g| g.as_slice()),
            )
            .unwrap();
        let want = r("out");
        assert_eq!(out.dims().to_vec(), want.0);
        let got: Vec<f32> = out.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
        let err = got.iter().zip(&want.1).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        let rel = err / want.1.iter().fold(0f32, |m, v| m.max(v.abs()));
        println!("{name}: max relative error {rel:.2e}");
        assert!(rel <= 1e-4, "{name}: relative error {rel:e} > 1e-4");
    }
}

/// The rotary tables of diffusers' `FluxPosEmbed(theta=10000, axes_dim=(4, 6, 6))` for ids
/// (0, 2, 3) and (0, 0, 0): the angles of axis 1 are 2·10000^(−i/3), of axis 2 3·10000^(−i/3).
#[test]
fn rope_tables_follow_the_formula() {
    let (cos, sin) = rope_tables(&[[0.0, 2.0, 3.0], [0.0, 0.0, 0.0]], &[4, 6, 6], 10000.0);
    assert_eq!(cos.len(), 32);
    // axis 0 (position 0): cos 1, sin 0, four channels
    assert_eq!(&cos[0..4], &[1.0; 4]);
    for i in 0..3 {
        let a1 = 2.0 * 10000f64.powf(-((2 * i) as f64) / 6.0);
        let a2 = 3.0 * 10000f64.powf(-((2 * i) as f64) / 6.0);
        let close = |got: f32, want: f64| (got as f64 - want).abs() <= 1e-7;
        assert!(close(cos[4 + 2 * i], a1.cos()) && close(cos[5 + 2 * i], a1.cos()), "axis 1, pair {i}");
        assert!(close(sin[10 + 2 * i], a2.sin()) && close(sin[11 + 2 * i], a2.sin()), "axis 2, pair {i}");
    }
    assert!(cos[16..].iter().all(|&c| c == 1.0) && sin[16..].iter().all(|&s| s == 0.0));
}

#[test]
fn bad_inputs_and_configs_are_errors() {
    let model = load("flux_dev");
    let device = Device::flex();
    let run = |guidance: Option<&[f64]>, n_ids: usize| {
        let img: Vec<[f32; 3]> = (0..n_ids).map(|i| [0.0, 0.0, i as f32]).collect();
        model
            .forward(Tensor::zeros([1, 4, 64], &device), Tensor::zeros([1, 2, 32], &device), Tensor::zeros([1, 32], &device), &[0.5], &img, &[[0.0; 3]; 2], guidance)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    assert!(run(None, 4).unwrap_err().contains("guidance"));
    assert!(run(Some(&[3.5]), 3).unwrap_err().contains("3 image ids for 4 latent tokens"));
    assert!(run(Some(&[3.5]), 4).is_ok());
    let schnell = load("flux_schnell");
    let err = schnell
        .forward(Tensor::zeros([1, 4, 64], &device), Tensor::zeros([1, 2, 32], &device), Tensor::zeros([1, 32], &device), &[0.5], &[[0.0; 3]; 4], &[[0.0; 3]; 2], Some(&[3.5]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("guidance_embeds = false"), "{err}");
    let dir = std::env::temp_dir().join(format!("kiln-flux-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (json, needle) in [
        (r#"{"axes_dims_rope": [16, 56, 50]}"#, "axes_dims_rope"),
        (r#"{"patch_size": 2}"#, "patch_size = 2"),
        (r#"{"num_attention_heads": 0}"#, "num_attention_heads = 0"),
    ] {
        let path = dir.join("config.json");
        std::fs::write(&path, json).unwrap();
        let err = FluxTransformerConfig::from_file(&path).unwrap_err().to_string();
        assert!(err.contains(needle), "{json}: {err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
