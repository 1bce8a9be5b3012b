//! The wgpu lane end to end: the tiny SD1 pipeline (CLIP, UNet, VAE, scheduler) runs on burn's
//! wgpu runtime (Mesa's llvmpipe through OpenGL on CI, see `kiln_nn::testing`) and must give
//! diffusers' picture for the same arguments (scripts/fixtures/pipelines.py, cases 0 and 1) within
//! the same 2 levels as on flex. Skips, saying why, only where no adapter exists.
//!
//! Ignored by default: it passed twice here (0 levels of difference, 101–364 s), then hung once
//! (every thread parked, the test thread sleeping in cubecl's `ChannelDeviceHandle::submit_inner`
//! after ~5 CPU-minutes) on Mesa llvmpipe through OpenGL. Until that hang is understood it must
//! not be able to stall CI. Run it with
//! `cargo test -p kiln-pipeline --test wgpu_lane -- --ignored --nocapture`.

use std::path::PathBuf;

use burn::tensor::DType;
mod common;
use common::read_png;
use kiln_pipeline::{GenerateOptions, StableDiffusion};

fn root() -> PathBuf {
    PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into())).join("../..")
}

#[test]
#[ignore = "hung once in cubecl's device channel on llvmpipe/OpenGL; run with --ignored"]
fn txt2img_on_the_wgpu_lane_matches_diffusers() {
    let Some(device) = kiln_nn::testing::wgpu_lane_device() else { return };
    let pipe = StableDiffusion::load(&root().join("assets/fixtures/models/sd1"), &device, DType::F32, None).unwrap();
    // case 0: PNDM (the model's scheduler), CFG 7.5; case 1: Euler a with a negative prompt
    for (file, options) in [
        (
            "case00-0.png",
            GenerateOptions {
                prompt: "a red circle on a blue background".into(),
                num_inference_steps: 5,
                guidance_scale: 7.5,
                width: Some(64),
                height: Some(48),
                seed: 0,
                ..Default::default()
            },
        ),
        (
            "case01-0.png",
            GenerateOptions {
                prompt: "a red circle on a blue background".into(),
                negative_prompt: Some("blurry, low quality".into()),
                num_inference_steps: 4,
                guidance_scale: 5.0,
                width: Some(48),
                height: Some(64),
                seed: 42,
                scheduler: Some("euler-a".parse().unwrap()),
                ..Default::default()
            },
        ),
    ] {
        let images = pipe.txt2img(&options, &mut |_, _| true).unwrap();
        let (_, _, want) = read_png(&root().join("assets/fixtures/pipelines").join(file));
        let got = images[0].as_raw();
        assert_eq!(got.len(), want.len());
        let worst = got.iter().zip(&want).map(|(a, b)| (*a as i32 - *b as i32).abs()).max().unwrap();
        println!("{file} on the wgpu lane: max difference {worst} levels");
        assert!(worst <= 2, "{file}: {worst} levels > 2");
    }
}

/// `kiln bench`'s report on a GPU runtime (the lane; the CLI refuses llvmpipe's OpenGL for its
/// wrong long-row sums, which these tiny shapes stay clear of): the adapter named, every op's
/// routes measured at first use with none disagreeing with burn's, both peak-memory figures from
/// the device allocator (the timed calls' after first use gave its pages back), the profile.
/// Ignored like the test above (the same device channel).
#[test]
#[ignore = "hung once in cubecl's device channel on llvmpipe/OpenGL; run with --ignored"]
fn bench_report_on_the_wgpu_lane() {
    use kiln_pipeline::bench::{run_bench, BenchModel, BenchOptions};
    let Some(device) = kiln_nn::testing::wgpu_lane_device() else { return };
    let o = BenchOptions {
        model: BenchModel::Folder(root().join("assets/fixtures/models/sd1")),
        dtype: DType::F32,
        vae_dtype: DType::F32,
        width: 64,
        height: 48,
        steps: 2,
        batch: 1,
        iters: 1,
        seed: 0,
        profile: true,
    };
    let r = run_bench(&o, &device, "wgpu lane").unwrap();
    eprintln!("{}", serde_json::to_string_pretty(&r).unwrap());
    assert!(r.adapter.as_deref().is_some_and(|a| !a.is_empty()), "{:?}", r.adapter);
    for op in ["attention", "conv2d", "group_norm"] {
        assert!(r.routes.iter().any(|c| c.op == op), "{op} measured");
    }
    assert!(r.routes.iter().all(|c| c.mismatched.is_empty() && c.times_ms.len() >= 2), "{:?}", r.routes);
    let (peak, steady) = (r.peak_memory_bytes.unwrap(), r.steady_peak_memory_bytes.unwrap());
    assert!(steady > 0 && steady <= peak, "peak {peak}, steady {steady}");
    assert_eq!(r.peak_memory_source, "device allocator, bytes reserved");
    assert!(r.unet_profile.is_some());
}
