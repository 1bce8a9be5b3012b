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
