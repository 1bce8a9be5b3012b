//! End-to-end parity of the flow-matching pipelines: kiln's SD 3 and FLUX.1 pipelines on the tiny
//! random models of assets/fixtures/models/{sd3, sd3-no-t5, flux-dev, flux-schnell} give the PNGs
//! diffusers 0.42.1 wrote for the same arguments and CPU-generator seed
//! (scripts/fixtures/flow_pipelines.py): txt2img and img2img of both families, CFG on and off,
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
        let task = match &init {
            Some(image) => Task::Img2Img { image, strength: case["args"]["strength"].as_f64().unwrap() },
            None => Task::Txt2Img,
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
