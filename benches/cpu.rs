//! Criterion benches for regressions on the CPU (burn's flex backend), on the tiny models of
//! assets/fixtures/models and a schedule of SD's size:
//!
//!     cargo bench --bench cpu
//!
//! These catch slowdowns between commits on one machine; GPU and PyTorch comparisons are
//! `kiln bench` and scripts/bench/ (README, "Benchmarks").

use std::path::{Path, PathBuf};

use criterion::{criterion_group, criterion_main, Criterion};
use kiln::burn::tensor::{Device, Tensor, TensorData};
use kiln::pipeline::{LoadOptions, in_worker, GenerateOptions, StableDiffusion, TorchGenerator};
use kiln::scheduler::{SamplerName, SchedulerConfig, StepOptions};
use kiln::unet::UNet2DConditionModel;
use kiln::vae::AutoencoderKL;

fn fixture(name: &str) -> PathBuf {
    Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string())).join("assets/fixtures/models").join(name)
}

fn randn(g: &mut TorchGenerator, shape: [usize; 4], device: &Device) -> Tensor<4> {
    Tensor::from_data(TensorData::new(g.randn(&shape), shape), device)
}

fn sync(device: &Device) {
    device.sync().expect("device sync");
}

/// 20 DPM++ 2M steps on SD 1.5's latent shape at 512×512 (the scheduler's tensor arithmetic).
fn scheduler_steps(c: &mut Criterion) {
    let device = Device::flex();
    let config = SchedulerConfig::from_model_dir(&Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string())).join("crates/kiln-pipeline/configs/sd15")).unwrap();
    let mut g = TorchGenerator::new(0);
    let sample = randn(&mut g, [1, 4, 64, 64], &device);
    let eps = randn(&mut g, [1, 4, 64, 64], &device);
    c.bench_function("scheduler: dpm++2m, 20 steps, [1,4,64,64]", |b| {
        b.iter(|| {
            let mut s = SamplerName::Dpmpp2m.build(&config, 20, &StepOptions::default()).unwrap();
            let mut x = sample.clone();
            for i in 0..s.timesteps().len() {
                x = s.step(eps.clone(), i, x, &mut g);
            }
            sync(&device);
            x
        })
    });
}

/// One CFG UNet call of the tiny SD1 model at 64×64 (latents [2, 4, 32, 32]).
fn unet_step(c: &mut Criterion) {
    let device = Device::flex();
    let unet = UNet2DConditionModel::load(&fixture("sd1").join("unet"), &LoadOptions::new(&device)).unwrap();
    let mut g = TorchGenerator::new(0);
    let x = randn(&mut g, [2, 4, 32, 32], &device);
    let ctx_dim = unet.config().context_dim();
    let ctx: Tensor<3> = Tensor::from_data(TensorData::new(g.randn(&[2, 77, ctx_dim]), [2, 77, ctx_dim]), &device);
    c.bench_function("unet: tiny sd1, CFG batch 2, 32x32 latents", |b| {
        b.iter(|| {
            // on one of rayon's workers, as the pipeline calls it (kiln::pipeline::in_worker)
            let y = in_worker(&device, || unet.forward(x.clone(), &[500.0], ctx.clone(), None).unwrap());
            sync(&device);
            y
        })
    });
}

/// VAE decode of one latent tile of the tiny SD1 VAE (32×32 latents → 64×64 pixels).
fn vae_decode_tile(c: &mut Criterion) {
    let device = Device::flex();
    let vae = AutoencoderKL::load(&fixture("sd1").join("vae"), &LoadOptions::new(&device)).unwrap();
    let mut g = TorchGenerator::new(0);
    let z = randn(&mut g, [1, 4, 32, 32], &device);
    c.bench_function("vae: tiny sd1 decode, 32x32 latents", |b| {
        b.iter(|| {
            let y = in_worker(&device, || vae.decode(z.clone()).unwrap());
            sync(&device);
            y
        })
    });
}

/// The README's first command as a library call: 20 PNDM steps at 64×64 with CFG.
fn txt2img(c: &mut Criterion) {
    let device = Device::flex();
    let pipe = StableDiffusion::load(&fixture("sd1"), &LoadOptions::new(&device)).unwrap();
    let options = GenerateOptions {
        prompt: "a red circle on a blue background".into(),
        width: Some(64),
        height: Some(64),
        num_inference_steps: 20,
        ..Default::default()
    };
    c.bench_function("txt2img: tiny sd1, 64x64, 20 steps", |b| b.iter(|| pipe.txt2img(&options, &mut |_, _| true).unwrap()));
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = scheduler_steps, unet_step, vae_decode_tile, txt2img
}
criterion_main!(benches);
