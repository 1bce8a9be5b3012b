//! End-to-end parity of the flow-matching pipelines: kiln's SD 3 and FLUX.1 pipelines on the tiny
//! random models of assets/fixtures/models/{sd3, sd3-no-t5, flux-dev, flux-schnell} give the PNGs
//! diffusers 0.42.1 wrote for the same arguments and CPU-generator seed
//! (scripts/fixtures/flow_pipelines.py): txt2img, img2img and inpainting of both families, CFG on and off,
//! negative prompts, non-square sizes, two images per prompt, SD 3 without T5, clip_skip and
//! prompt_3, skip-layer guidance, the flow Heun sampler, FLUX.1-dev's guidance embedding and
//! dynamic shifting, schnell's static shift, FLUX's true CFG and a size rounded down to a
//! multiple of 2f.

use std::collections::HashMap;
use std::path::PathBuf;

use burn::tensor::Device;
mod common;
use common::read_png;
use kiln_pipeline::{FlowOptions, GenerateOptions, LoadOptions, Pipeline, SkipLayerGuidance, Task};
use serde_json::Value;

/// Every pixel within 2 levels of 255, as for the SD pipelines.
const MAX_LEVELS: i32 = 2;

fn root() -> PathBuf {
    PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into())).join("../..")
}

/// A case's diffusers keyword arguments as kiln's options.
fn options(case: &Value) -> GenerateOptions {
    let a = &case["args"];
    let s = |k: &str| a.get(k).and_then(Value::as_str).map(String::from);
    let u = |k: &str| a.get(k).and_then(Value::as_u64).map(|v| v as usize);
    let slg = a.get("skip_guidance_layers").map(|layers| SkipLayerGuidance {
        layers: layers.as_array().unwrap().iter().map(|l| l.as_u64().unwrap() as usize).collect(),
        scale: a["skip_layer_guidance_scale"].as_f64().unwrap(),
        start: a["skip_layer_guidance_start"].as_f64().unwrap(),
        stop: a["skip_layer_guidance_stop"].as_f64().unwrap(),
    });
    GenerateOptions {
        prompt: s("prompt").unwrap(),
        negative_prompt: s("negative_prompt"),
        num_inference_steps: u("num_inference_steps").unwrap(),
        guidance_scale: a["guidance_scale"].as_f64().unwrap(),
        width: u("width"),
        height: u("height"),
        seed: case["seed"].as_u64().unwrap(),
        num_images_per_prompt: u("num_images_per_prompt").unwrap_or(1),
        scheduler: case["sampler"].as_str().map(|n| n.parse().unwrap()),
        clip_skip: u("clip_skip"),
        flow: FlowOptions {
            prompt_3: s("prompt_3"),
            max_sequence_length: u("max_sequence_length"),
            true_cfg_scale: a.get("true_cfg_scale").and_then(Value::as_f64).unwrap_or(1.0),
            skip_layer_guidance: slg,
            ..FlowOptions::default()
        },
        ..GenerateOptions::default()
    }
}

#[test]
fn flow_pipelines_match_diffusers() {
    let dir = root().join("assets/fixtures/flow_pipelines");
    let cases: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let device = Device::flex();
    let mut pipes: HashMap<String, Pipeline> = HashMap::new();
    let mut failures = Vec::new();
    let cases = cases["cases"].as_array().unwrap();
    assert!(cases.len() >= 12, "{} end-to-end cases", cases.len());
    for (i, case) in cases.iter().enumerate() {
        let model = case["model"].as_str().unwrap().to_string();
        let pipe = pipes
            .entry(model.clone())
            .or_insert_with(|| Pipeline::load(&root().join("assets/fixtures/models").join(&model), &LoadOptions::new(&device)).unwrap());
        let o = options(case);
        let init = case["init_image"].as_str().map(|p| image::open(dir.join(p)).unwrap().to_rgb8());
        let mask = case["mask_image"].as_str().map(|p| image::open(dir.join(p)).unwrap().to_luma8());
        let strength = || case["args"]["strength"].as_f64().unwrap();
        let task = match (&init, &mask) {
            (Some(image), Some(mask)) => Task::Inpaint { image, mask, strength: strength() },
            (Some(image), None) => Task::Img2Img { image, strength: strength() },
            _ => Task::Txt2Img,
        };
        let label = format!("case {i} ({model} {}, {}x{}, cfg {})", case["task"], o.width.unwrap_or(0), o.height.unwrap_or(0), o.guidance_scale);
        let images = match pipe.generate(&o, task, &mut |_, _| true) {
            Ok(images) => images,
            Err(e) => {
                failures.push(format!("{label}: {e}"));
                continue;
            }
        };
        let files = case["images"].as_array().unwrap();
        assert_eq!(images.len(), files.len(), "{label}: number of images");
        for (img, file) in images.iter().zip(files) {
            let (w, h, want) = read_png(&dir.join(file.as_str().unwrap()));
            assert_eq!((img.width(), img.height()), (w, h), "{label}: size");
            let worst = img.as_raw().iter().zip(&want).map(|(a, b)| (*a as i32 - *b as i32).abs()).max().unwrap();
            println!("{label}: max difference {worst} levels");
            if worst > MAX_LEVELS {
                failures.push(format!("{label}: {worst} levels > {MAX_LEVELS}"));
            }
        }
    }
    assert!(failures.is_empty(), "{} of {} cases differ from diffusers:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

/// Inpainting's inputs on both flow families: a mask of another size than the init image, a
/// strength that leaves no step and skip-layer guidance (diffusers' SD 3 inpaint pipeline has
/// none) are refused by name before any model runs.
#[test]
fn flow_inpainting_inputs_are_checked() {
    let dir = root().join("assets/fixtures/flow_pipelines");
    let device = Device::flex();
    let init = image::open(dir.join("inputs/init-32x24.png")).unwrap().to_rgb8();
    let mask = image::open(dir.join("inputs/mask-32x24.png")).unwrap().to_luma8();
    let small = image::GrayImage::new(16, 24);
    for model in ["sd3", "flux-dev"] {
        let pipe = Pipeline::load(&root().join("assets/fixtures/models").join(model), &LoadOptions::new(&device)).unwrap();
        let o = GenerateOptions { prompt: "p".into(), num_inference_steps: 4, width: Some(32), height: Some(24), ..GenerateOptions::default() };
        let run = |o: &GenerateOptions, task: Task| pipe.generate(o, task, &mut |_, _| panic!("{model}: a refused run took a step")).map(|_| ()).unwrap_err();
        match run(&o, Task::Inpaint { image: &init, mask: &small, strength: 0.6 }) {
            kiln_pipeline::PipelineError::Input { what, value, allowed } => {
                assert_eq!((what, value.as_str()), ("mask size", "16x24"), "{model}");
                assert!(allowed.contains("32x24"), "{model}: {allowed}");
            }
            e => panic!("{model}: {e}"),
        }
        match run(&o, Task::Inpaint { image: &init, mask: &mask, strength: 0.0 }) {
            kiln_pipeline::PipelineError::Input { what, .. } => assert_eq!(what, "strength", "{model}"),
            e => panic!("{model}: {e}"),
        }
        if model == "sd3" {
            let slg = GenerateOptions {
                flow: FlowOptions { skip_layer_guidance: Some(SkipLayerGuidance { layers: vec![1], scale: 2.8, start: 0.01, stop: 0.2 }), ..FlowOptions::default() },
                ..o.clone()
            };
            let e = run(&slg, Task::Inpaint { image: &init, mask: &mask, strength: 0.6 }).to_string();
            assert!(e.contains("skip-layer guidance") && e.contains("inpaint"), "{e}");
        }
    }
}

/// A transformer that takes more than the latents (SD 3's 33-channel inpainting transformers,
/// FLUX Fill's 384 packed channels) is refused by name before any step, not run into a shape
/// error.
#[test]
fn transformers_that_take_more_than_the_latents_are_refused() {
    let device = Device::flex();
    let models = root().join("assets/fixtures/models");
    let o = GenerateOptions { prompt: "p".into(), num_inference_steps: 2, width: Some(32), height: Some(24), ..GenerateOptions::default() };
    let mut sd3 = kiln_pipeline::StableDiffusion3::load(&models.join("sd3"), &LoadOptions::new(&device)).unwrap();
    sd3.transformer.in_channels = 33;
    let e = sd3.check_inputs(&o, &Task::Txt2Img).unwrap_err().to_string();
    assert!(e.contains("33 input channels") && e.contains("16 latent channels"), "{e}");
    let mut flux = kiln_pipeline::Flux::load(&models.join("flux-dev"), &LoadOptions::new(&device)).unwrap();
    flux.vae.config.latent_channels = 96;
    let e = flux.check_inputs(&o, &Task::Txt2Img).unwrap_err().to_string();
    assert!(e.contains("64 input channels") && e.contains("96 latent channels") && e.contains("FLUX Fill"), "{e}");
}
