//! Helpers shared by the integration tests: fixture paths, reference tensors, temp folders.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use safetensors::{Dtype, SafeTensors};

pub fn root() -> PathBuf {
    Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string())).join("../..")
}

pub fn fixture(family: &str) -> PathBuf {
    root().join("assets/fixtures/models").join(family)
}

/// A reference tensor from `reference.safetensors`, as f32 (or i32 for ids) on the host.
pub struct Ref {
    pub shape: Vec<usize>,
    pub f32: Vec<f32>,
    pub i32: Vec<i32>,
}

pub fn load_refs(family: &str, prefix: &str) -> HashMap<String, Ref> {
    let bytes = std::fs::read(fixture(family).join("reference.safetensors")).expect("reference.safetensors");
    let st = SafeTensors::deserialize(&bytes).expect("valid reference file");
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let Some(key) = name.strip_prefix(&format!("{prefix}.")) else { continue };
        let data = view.data();
        let (f, i) = match view.dtype() {
            Dtype::F32 => (data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(), vec![]),
            Dtype::I32 => (vec![], data.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap())).collect()),
            other => panic!("unexpected dtype {other:?} for {name}"),
        };
        out.insert(key.to_string(), Ref { shape: view.shape().to_vec(), f32: f, i32: i });
    }
    out
}

/// `(max |got - want|, max |want|)` over a tensor and its reference.
pub fn max_err<const D: usize>(got: Tensor<D>, want: &Ref) -> (f32, f32) {
    assert_eq!(got.dims().to_vec(), want.shape, "shape");
    let got: Vec<f32> = got.into_data().try_to_vec_as::<f32>().unwrap();
    let err = got.iter().zip(&want.f32).map(|(a, b)| (a - b).abs()).fold(0f32, |m, e| if e.is_nan() { f32::NAN } else { m.max(e) });
    let scale = want.f32.iter().fold(0f32, |m, v| m.max(v.abs()));
    (err, scale)
}

/// A fresh, empty temp folder for one test.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-text-encoder-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The tensors of a safetensors file as (name, dtype, shape, bytes).
pub fn read_tensors(path: &Path) -> Vec<(String, Dtype, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<_> = st.tensors().into_iter().map(|(n, t)| (n, t.dtype(), t.shape().to_vec(), t.data().to_vec())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

pub fn write_tensors(path: &Path, tensors: &[(String, Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let bytes = safetensors::serialize(views, None).unwrap();
    std::fs::write(path, bytes).unwrap();
}
