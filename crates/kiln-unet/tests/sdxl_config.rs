//! The published SDXL base UNet config (2.6 B parameters) with random weights, in f16: its own
//! test binary, because the flex device's default float dtype is set for the whole process, and
//! f16 halves the memory of the random model (≈ 5 GB instead of ≈ 10 GB).

mod common;

use burn::prelude::*;
use burn::store::ModuleSnapshot;
use burn::tensor::{DType, Distribution, FloatDType};
use common::*;
use kiln_unet::{TextTimeCond, UNet2DConditionConfig};

#[test]
fn sdxl_config() {
    let mut device = Device::flex();
    device.configure(FloatDType::F16).expect("first use of the flex device in this process");
    let path = repo_root().join("crates/kiln-pipeline/configs/sdxl/unet/config.json");
    let config = UNet2DConditionConfig::from_json_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let unet = config.init(&device).unwrap();
    // diffusers 0.42.1: len(state_dict()), sum(p.numel()) of UNet2DConditionModel.from_config
    assert_eq!(unet.collect(None, None, false).len(), 1680);
    assert_eq!(unet.num_params(), 2_567_463_684);

    let start = std::time::Instant::now();
    let latent = 8;
    let sample = Tensor::<4>::random([1, 4, latent, latent], Distribution::Normal(0.0, 1.0), &device);
    let context = Tensor::<3>::random([1, 77, 2048], Distribution::Normal(0.0, 1.0), &device);
    let added = TextTimeCond {
        text_embeds: Tensor::random([1, 1280], Distribution::Normal(0.0, 1.0), &device),
        time_ids: vec![vec![1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0]],
    };
    let out = unet.forward(sample, &[999.0], context, Some(&added)).unwrap();
    assert_eq!(unet.dtype(), DType::F16);
    assert_eq!(out.dims(), [1, 4, latent, latent]);
    let values: Vec<f32> = out.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
    assert!(values.iter().all(|v| v.is_finite()), "non-finite output");
    eprintln!("sdxl: forward at {latent}x{latent} with random f16 weights in {:.1?}", start.elapsed());
}
