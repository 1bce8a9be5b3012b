//! End-to-end parity: kiln's txt2img on the tiny random pipelines of assets/fixtures/models gives
//! the PNGs diffusers 0.42.1 wrote for the same arguments and CPU-generator seed
//! (scripts/fixtures/pipelines.py): samplers incl. euler-a and dpm++2m-sde, non-square sizes,
//! negative prompts, guidance 1.0 (no CFG), several images per prompt, SD1 and SD2 (v-prediction).

use std::collections::HashMap;
use std::path::PathBuf;

use burn::tensor::{DType, Device};
use kiln_pipeline::{StableDiffusion, Txt2ImgOptions};
use serde_json::Value;

/// The bound: every pixel within 2 levels of 255. Random-weight models amplify f32
/// rounding differences (op order in GEMMs/convs differs between torch and flex), so exact
/// equality is not expected.
const MAX_LEVELS: i32 = 2;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read_png(path: &PathBuf) -> (u32, u32, Vec<u8>) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb, "{path:?}");
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

#[test]
fn txt2img_matches_diffusers() {
    let dir = root().join("assets/fixtures/pipelines");
    let cases: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let device = Device::flex();
    let mut pipes: HashMap<String, StableDiffusion> = HashMap::new();
    let mut failures = Vec::new();
    let cases = cases["cases"].as_array().unwrap();
    for (i, case) in cases.iter().enumerate() {
        let model = case["model"].as_str().unwrap().to_string();
        let pipe = pipes.entry(model.clone()).or_insert_with(|| {
            StableDiffusion::load(&root().join("assets/fixtures/models").join(&model), &device, DType::F32, None).unwrap()
        });
        let o = Txt2ImgOptions {
            prompt: case["prompt"].as_str().unwrap().into(),
            negative_prompt: case["negative_prompt"].as_str().map(String::from),
            num_inference_steps: case["steps"].as_u64().unwrap() as usize,
            guidance_scale: case["guidance_scale"].as_f64().unwrap(),
            width: case["width"].as_u64().unwrap() as usize,
            height: case["height"].as_u64().unwrap() as usize,
            seed: case["seed"].as_u64().unwrap(),
            num_images_per_prompt: case["num_images"].as_u64().unwrap() as usize,
            scheduler: case["scheduler"].as_str().map(|s| s.parse().unwrap()),
            ..Txt2ImgOptions::default()
        };
        let mut steps = 0;
        let images = pipe.txt2img(&o, &mut |_, _| {
            steps += 1;
            true
        });
        let images = match images {
            Ok(images) => images,
            Err(e) => {
                failures.push(format!("case {i} ({model}, {:?}): {e}", o.scheduler));
                continue;
            }
        };
        for (img, file) in images.iter().zip(case["images"].as_array().unwrap()) {
            let (w, h, want) = read_png(&dir.join(file.as_str().unwrap()));
            assert_eq!((img.width(), img.height()), (w, h), "case {i}: size");
            let worst = img.as_raw().iter().zip(&want).map(|(a, b)| (*a as i32 - *b as i32).abs()).max().unwrap();
            let label = format!("case {i} ({model}, {}, {w}x{h}, cfg {})", case["scheduler"], o.guidance_scale);
            println!("{label}: max difference {worst} levels");
            if worst > MAX_LEVELS {
                failures.push(format!("{label}: {worst} levels > {MAX_LEVELS}"));
            }
        }
    }
    assert!(failures.is_empty(), "{} of {} cases differ from diffusers:\n{}", failures.len(), cases.len(), failures.join("\n"));
}
