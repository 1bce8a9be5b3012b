//! SD3Transformer2DModel against diffusers 0.42.1 on tiny random models
//! (assets/fixtures/models/flow/transformer_sd3 and transformer_sd35, written by
//! scripts/fixtures/flow_models.py): SD 3.0's layout and SD 3.5's (qk RMS norms, dual attention in
//! layers 0 and 1), on non-square (4 × 6 patches) and odd (3 × 5 patches) latents, batch 2 at two
//! fractional timesteps, with and without skip-layer guidance's skipped block.

mod common;

use burn::prelude::*;
use burn::tensor::DType;
use common::{flow, refs, tensor};
use kiln_transformer::embeddings::sincos_pos_embed_2d;
use kiln_transformer::{LoadOptions, Sd3Transformer2DModel, Sd3TransformerConfig};

fn load(name: &str, dtype: DType) -> Sd3Transformer2DModel {
    Sd3Transformer2DModel::load(&flow().join(format!("transformer_{name}")), &LoadOptions::new(&Device::flex()).with_dtype(dtype)).unwrap()
}

/// Max |kiln − diffusers| over max |diffusers|.
fn relative(got: Tensor<4>, want: &(Vec<usize>, Vec<f32>)) -> f32 {
    assert_eq!(got.dims().to_vec(), want.0);
    let got: Vec<f32> = got.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
    let err = got.iter().zip(&want.1).fold(0f32, |m, (a, b)| if (a - b).is_nan() { f32::NAN } else { m.max((a - b).abs()) });
    err / want.1.iter().fold(0f32, |m, v| m.max(v.abs()))
}

#[test]
fn sd3_and_sd35_match_diffusers() {
    let refs = refs();
    let device = Device::flex();
    for name in ["sd3", "sd35"] {
        let model = load(name, DType::F32);
        for case in ["a", "b"] {
            let r = |k: &str| &refs[&format!("{name}.{case}.{k}")];
            let timesteps: Vec<f64> = r("timestep").1.iter().map(|&t| t as f64).collect();
            for (skip, key) in [(vec![], "out"), (vec![1], "out_skip1")] {
                let out = model
                    .forward(tensor(r("x"), &device), tensor(r("context"), &device), tensor(r("pooled"), &device), &timesteps, &skip)
                    .unwrap();
                let err = relative(out, r(key));
                println!("{name} case {case} skip {skip:?}: max relative error {err:.2e}");
                assert!(err <= 1e-4, "{name} {case} {key}: relative error {err:e} > 1e-4");
            }
        }
    }
}

/// Structure read from the configs: the last block is context_pre_only, SD 3.5's layers 0 and 1
/// carry attn2, qk norms only where the config asks.
#[test]
fn config_shapes_the_blocks() {
    let sd3 = load("sd3", DType::F32);
    let sd35 = load("sd35", DType::F32);
    let last = sd3.transformer_blocks.last().unwrap();
    assert!(last.ff_context.is_none() && last.attn.to_add_out.is_none());
    assert!(sd3.transformer_blocks.iter().all(|b| b.attn2.is_none() && b.attn.norm_q.is_none()));
    let dual: Vec<bool> = sd35.transformer_blocks.iter().map(|b| b.attn2.is_some()).collect();
    assert_eq!(dual, [true, true, false]);
    assert!(sd35.transformer_blocks.iter().all(|b| b.attn.norm_added_k.is_some()));
}

/// The position table diffusers computes in `__init__` (`get_2d_sincos_pos_embed(32, 12,
/// base_size=16)`), which kiln builds for a model without weights, equals the saved buffer (stored
/// in float16: within its rounding).
#[test]
fn computed_position_table_matches_the_saved_one() {
    let model = load("sd3", DType::F32);
    let saved: Vec<f32> = model.pos_embed.pos_embed.val().into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
    let computed = sincos_pos_embed_2d(32, 12, 16);
    assert_eq!(saved.len(), computed.len());
    let err = saved.iter().zip(&computed).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(err <= 5e-4, "sin-cos table differs by {err}");
    // and a model built without weights computes it
    let config = Sd3TransformerConfig::from_file(&flow().join("transformer_sd3/config.json")).unwrap();
    let fresh = Sd3Transformer2DModel::new(&config, &Device::flex());
    let fresh: Vec<f32> = fresh.pos_embed.pos_embed.val().into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
    assert_eq!(fresh, computed);
}

#[test]
fn bad_inputs_and_configs_are_errors() {
    let model = load("sd3", DType::F32);
    let device = Device::flex();
    // 14 × 2 patches: more than the 12 × 12 position table
    let err = model
        .forward(Tensor::zeros([1, 16, 28, 4], &device), Tensor::zeros([1, 3, 32], &device), Tensor::zeros([1, 64], &device), &[1.0], &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("14×2 patches") && err.contains("pos_embed_max_size"), "{err}");
    let err = model
        .forward(Tensor::zeros([2, 16, 8, 8], &device), Tensor::zeros([2, 3, 32], &device), Tensor::zeros([2, 64], &device), &[1.0], &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("timesteps 1"), "{err}");
    let dir = std::env::temp_dir().join(format!("kiln-transformer-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (json, needle) in [
        (r#"{"qk_norm": "l2"}"#, "qk_norm"),
        (r#"{"num_layers": 2, "dual_attention_layers": [0, 5]}"#, "layer 5"),
        (r#"{"caption_projection_dim": 1000}"#, "caption_projection_dim = 1000"),
        (r#"{"patch_size": 0}"#, "patch_size = 0"),
        (r#"{"_class_name": "FluxTransformer2DModel"}"#, "FluxTransformer2DModel"),
    ] {
        let path = dir.join("config.json");
        std::fs::write(&path, json).unwrap();
        let err = Sd3TransformerConfig::from_file(&path).unwrap_err().to_string();
        assert!(err.contains(needle), "{json}: {err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
