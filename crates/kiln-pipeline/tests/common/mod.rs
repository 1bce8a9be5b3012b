//! Helpers shared by kiln-pipeline's integration tests (each test binary uses some of them).
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fresh temporary folder, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!("kiln-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// An 8-bit RGB PNG's `(width, height, pixels)`.
pub fn read_png(path: &Path) -> (u32, u32, Vec<u8>) {
    let decoder = png::Decoder::new(std::io::BufReader::new(fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb, "{path:?}");
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

/// Mirrors `src` into `dst` with a symlink per file (to its resolved target), skipping the paths
/// (relative, `/`-separated) for which `skip` is true.
pub fn mirror(src: &Path, dst: &Path, skip: &dyn Fn(&str) -> bool) {
    fn walk(src: &Path, dst: &Path, rel: &str, skip: &dyn Fn(&str) -> bool) {
        fs::create_dir_all(dst).unwrap();
        for entry in fs::read_dir(src).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = if rel.is_empty() { name.clone() } else { format!("{rel}/{name}") };
            if skip(&rel) {
                continue;
            }
            let path = entry.path();
            if path.is_dir() {
                walk(&path, &dst.join(&name), &rel, skip);
            } else {
                std::os::unix::fs::symlink(path.canonicalize().unwrap(), dst.join(&name)).unwrap();
            }
        }
    }
    walk(src, dst, "", skip)
}

/// scripts/fixtures/pipelines.py's case 0 on the tiny SD1 model (its picture: case00-0.png).
pub fn sd1_case0() -> kiln_pipeline::GenerateOptions {
    kiln_pipeline::GenerateOptions {
        prompt: "a red circle on a blue background".into(),
        num_inference_steps: 5,
        guidance_scale: 7.5,
        width: Some(64),
        height: Some(48),
        seed: 0,
        ..Default::default()
    }
}

/// scripts/fixtures/pipelines.py's case `case` (an entry of cases.json; its input images in
/// `dir`): the options, the init image and mask, the strength.
pub fn case_inputs(case: &serde_json::Value, dir: &Path) -> (kiln_pipeline::GenerateOptions, Option<image::RgbImage>, Option<image::GrayImage>, f64) {
    use serde_json::Value;
    let pair = |key: &str| case.get(key).and_then(Value::as_array).map(|v| (v[0].as_u64().unwrap() as usize, v[1].as_u64().unwrap() as usize));
    let o = kiln_pipeline::GenerateOptions {
        prompt: case["prompt"].as_str().unwrap().into(),
        prompt_2: case.get("prompt_2").and_then(Value::as_str).map(String::from),
        negative_prompt: case["negative_prompt"].as_str().map(String::from),
        num_inference_steps: case["steps"].as_u64().unwrap() as usize,
        guidance_scale: case["guidance_scale"].as_f64().unwrap(),
        width: Some(case["width"].as_u64().unwrap() as usize),
        height: Some(case["height"].as_u64().unwrap() as usize),
        seed: case["seed"].as_u64().unwrap(),
        num_images_per_prompt: case["num_images"].as_u64().unwrap() as usize,
        scheduler: case["scheduler"].as_str().map(|s| s.parse().unwrap()),
        original_size: pair("original_size"),
        crops_coords_top_left: pair("crops_coords_top_left").unwrap_or((0, 0)),
        target_size: pair("target_size"),
        ..Default::default()
    };
    let input = |key: &str| case.get(key).and_then(Value::as_str).map(|f| image::open(dir.join(f)).unwrap());
    let init = input("init_image").map(|i| i.to_rgb8());
    let mask = input("mask_image").map(|m| kiln_pipeline::image_processor::pil_grayscale(&m));
    let strength = case.get("strength").and_then(Value::as_f64).unwrap_or(1.0);
    (o, init, mask, strength)
}

/// The task of `case` with its inputs.
pub fn case_task<'a>(case: &serde_json::Value, init: &'a Option<image::RgbImage>, mask: &'a Option<image::GrayImage>, strength: f64) -> kiln_pipeline::Task<'a> {
    use kiln_pipeline::Task;
    match (case["task"].as_str().unwrap(), init, mask) {
        ("txt2img", _, _) => Task::Txt2Img,
        ("img2img", Some(image), _) => Task::Img2Img { image, strength },
        ("inpaint", Some(image), Some(mask)) => Task::Inpaint { image, mask, strength },
        (t, _, _) => panic!("task {t} without its inputs"),
    }
}

/// The largest difference, in levels, between two images' bytes.
pub fn max_levels(a: &[u8], b: &[u8]) -> i32 {
    assert_eq!(a.len(), b.len(), "image sizes differ");
    a.iter().zip(b).map(|(x, y)| (*x as i32 - *y as i32).abs()).max().unwrap_or(0)
}

/// Writes a safetensors file: `(name, dtype, shape, bytes)` per tensor; `None` bytes leave the
/// tensor's data a hole (a sparse file: full-size shapes without their gigabytes).
pub fn write_safetensors(path: &Path, tensors: &[(String, &str, Vec<u64>, Option<Vec<u8>>)]) {
    use std::io::{Seek, SeekFrom, Write};
    let size = |dtype: &str| kiln_nn::dtype_size(dtype).unwrap();
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut offset = 0u64;
    for (name, dtype, shape, _) in tensors {
        let n = shape.iter().product::<u64>() * size(dtype);
        header.insert(name.clone(), serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}));
        offset += n;
    }
    let mut header = serde_json::to_vec(&header).unwrap();
    header.resize(header.len().div_ceil(8) * 8, b' ');
    let mut f = fs::File::create(path).unwrap();
    f.write_all(&(header.len() as u64).to_le_bytes()).unwrap();
    f.write_all(&header).unwrap();
    let start = 8 + header.len() as u64;
    let mut at = 0u64;
    for (_, dtype, shape, bytes) in tensors {
        let n = shape.iter().product::<u64>() * size(dtype);
        if let Some(bytes) = bytes {
            assert_eq!(bytes.len() as u64, n);
            f.seek(SeekFrom::Start(start + at)).unwrap();
            f.write_all(bytes).unwrap();
        }
        at += n;
    }
    f.set_len(start + at).unwrap();
}
