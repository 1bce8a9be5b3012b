//! The wgpu lane end to end: the tiny SD1 pipeline (CLIP, UNet, VAE, scheduler) runs on burn's
//! wgpu runtime (Mesa's llvmpipe through OpenGL on CI, see `kiln_ops::testing`) and must give
//! diffusers' picture for the same arguments (scripts/fixtures/pipelines.py, cases 0 and 1) within
//! the same 2 levels as on flex. Skips, saying why, only where no adapter exists.
//!
//! Ignored by default: a whole pipeline on llvmpipe takes 100–360 s on 2 cores, too long for CI's
//! every run. Run it with `cargo test -p kiln-pipeline --test wgpu_lane -- --ignored --nocapture`;
//! like every lane test it runs under the watchdog (`kiln_ops::lane_test!`).

use std::path::PathBuf;

mod common;
use common::{read_png, sd1_case0};
use kiln_pipeline::{LoadOptions, GenerateOptions, StableDiffusion};

fn root() -> PathBuf {
    PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into())).join("../..")
}

kiln_ops::lane_test! {
#[ignore = "100-360 s on llvmpipe; run with --ignored"]
fn txt2img_on_the_wgpu_lane_matches_diffusers(device) {
    let pipe = StableDiffusion::load(&root().join("assets/fixtures/models/sd1"), &LoadOptions::new(&device)).unwrap();
    // case 0: PNDM (the model's scheduler), CFG 7.5; case 1: Euler a with a negative prompt
    for (file, options) in [
        ("case00-0.png", sd1_case0()),
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
}
