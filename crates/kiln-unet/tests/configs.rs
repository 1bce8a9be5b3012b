//! The UNet configs of SD 1.5, SD 2.1 and SDXL base as published on the Hub
//! (crates/kiln-pipeline/configs/*/unet/config.json) build the architecture diffusers builds (same tensor count
//! and parameter count, counted in diffusers 0.42.1 with `from_config`) and run a forward pass with
//! random weights at a tiny latent.

mod common;

use std::sync::Mutex;

use burn::prelude::*;
use burn::store::ModuleSnapshot;
use burn::tensor::Distribution;
use common::*;
use kiln_unet::{TextTimeCond, UNet2DConditionConfig};

/// One multi-GB random model at a time.
static HEAVY: Mutex<()> = Mutex::new(());

pub fn config(name: &str) -> UNet2DConditionConfig {
    let path = repo_root().join("crates/kiln-pipeline/configs").join(name).join("unet/config.json");
    UNet2DConditionConfig::from_json_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// Builds the model, checks its size against diffusers, runs one forward at `latent`×`latent`.
pub fn run(name: &str, tensors: usize, params: usize, latent: usize, added: bool) {
    let _guard = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let device = Device::flex();
    let config = config(name);
    let unet = config.init(&device).unwrap();
    // diffusers: len(state_dict()) and sum(p.numel()), see the module doc.
    assert_eq!(unet.collect(None, None, false).len(), tensors, "{name}: tensor count");
    assert_eq!(unet.num_params(), params, "{name}: parameter count");

    let start = std::time::Instant::now();
    let context_dim = config.context_dim();
    let sample = Tensor::<4>::random([1, 4, latent, latent], Distribution::Normal(0.0, 1.0), &device);
    let context = Tensor::<3>::random([1, 77, context_dim], Distribution::Normal(0.0, 1.0), &device);
    let added = added.then(|| TextTimeCond {
        text_embeds: Tensor::random([1, 1280], Distribution::Normal(0.0, 1.0), &device),
        time_ids: vec![vec![1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0]],
    });
    let out = unet.forward(sample, &[999.0], context, added.as_ref()).unwrap();
    assert_eq!(out.dims(), [1, 4, latent, latent]);
    let values: Vec<f32> = out.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
    assert!(values.iter().all(|v| v.is_finite()), "{name}: non-finite output");
    eprintln!(
        "{name}: {params} parameters, forward at {latent}x{latent} with random weights in {:.1?}",
        start.elapsed()
    );
}

#[test]
fn sd15_config() {
    run("sd15", 686, 859_520_964, 8, false);
}

#[test]
fn sd21_config() {
    run("sd21", 686, 865_910_724, 8, false);
}
