//! Shared test helpers: the fixture folders and their reference tensors.
#![allow(dead_code)]

use std::path::PathBuf;

use burn::prelude::*;
use burn::tensor::TensorData;

pub fn assets() -> PathBuf {
    PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into())).join("../../assets")
}

/// `assets/fixtures/models/<family>` (written by scripts/fixtures/models.py).
pub fn fixture(family: &str) -> PathBuf {
    assets().join("fixtures/models").join(family)
}

/// Reads the f32 reference tensors of a fixture family.
pub struct Reference(Vec<u8>);

impl Reference {
    pub fn open(family: &str) -> Self {
        Reference(std::fs::read(fixture(family).join("reference.safetensors")).expect("reference.safetensors"))
    }

    pub fn tensor(&self, name: &str, device: &Device) -> Tensor<4> {
        let st = safetensors::SafeTensors::deserialize(&self.0).expect("valid reference file");
        let view = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
        let values: Vec<f32> =
            view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        let shape: [usize; 4] = view.shape().try_into().expect("4-D reference tensor");
        Tensor::from_data(TensorData::new(values, shape), device)
    }
}

/// `(max |got - want|, max |want|)`, both read back as f32.
pub fn max_errors(got: Tensor<4>, want: Tensor<4>) -> (f32, f32) {
    assert_eq!(got.dims(), want.dims(), "shape");
    let got: Vec<f32> = got.try_into_vec_as::<f32>().unwrap();
    let want: Vec<f32> = want.try_into_vec_as::<f32>().unwrap();
    assert!(got.iter().all(|v| v.is_finite()), "non-finite output");
    let err = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0.0f32, f32::max);
    let scale = want.iter().map(|w| w.abs()).fold(0.0f32, f32::max);
    (err, scale)
}

/// f32 parity: max abs error <= 1e-4 × max(1, max |reference|). The fixture weights are exact in
/// f32 (stored f16, references computed in f32 from the same values), so the only differences
/// are summation order in convolutions, GroupNorm statistics and attention (a few f32 ulps that
/// grow through ~20 layers); 1e-4 relative leaves an order of magnitude of headroom over what
/// such reordering produces and is far below any real bug (a wrong eps, a missing residual or a
/// mis-weighted blend row is ≥ 1e-3).
pub fn assert_f32_parity(name: &str, got: Tensor<4>, want: Tensor<4>) -> f32 {
    let (err, scale) = max_errors(got, want);
    let tol = 1e-4 * scale.max(1.0);
    eprintln!("{name}: max abs error {err:.3e} (tolerance {tol:.3e}, max |ref| {scale:.3})");
    assert!(err <= tol, "{name}: max abs error {err} > {tol}");
    err
}
