//! Shared helpers of the kiln-unet integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::TensorData;
use kiln_unet::{TextTimeCond, UNet2DConditionModel};
use safetensors::{Dtype, SafeTensors};

pub fn repo_root() -> PathBuf {
    Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string())).join("../..")
}

pub fn fixture_dir(family: &str) -> PathBuf {
    repo_root().join("assets/fixtures/models").join(family)
}

/// The tensors of a reference.safetensors file, read on the host.
pub struct Refs {
    bytes: Vec<u8>,
}

impl Refs {
    pub fn open(path: &Path) -> Self {
        Self { bytes: std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())) }
    }

    pub fn family(family: &str) -> Self {
        Self::open(&fixture_dir(family).join("reference.safetensors"))
    }

    pub fn has(&self, name: &str) -> bool {
        SafeTensors::deserialize(&self.bytes).unwrap().tensor(name).is_ok()
    }

    /// An f32 tensor as (values, shape).
    pub fn host(&self, name: &str) -> (Vec<f32>, Vec<usize>) {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(t.dtype(), Dtype::F32, "{name}");
        let values = t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        (values, t.shape().to_vec())
    }

    pub fn tensor<const D: usize>(&self, name: &str, device: &Device) -> Tensor<D> {
        let (values, shape) = self.host(name);
        Tensor::from_data(TensorData::new(values, shape), device)
    }

    /// SDXL's `text_embeds` and `time_ids`, when the family has them.
    pub fn text_time(&self, device: &Device) -> Option<TextTimeCond> {
        if !self.has("unet.text_embeds") {
            return None;
        }
        let (ids, shape) = self.host("unet.time_ids");
        Some(TextTimeCond {
            text_embeds: self.tensor("unet.text_embeds", device),
            time_ids: ids.chunks(shape[1]).map(|r| r.iter().map(|&v| v as f64).collect()).collect(),
        })
    }
}

/// (max |got - want|, max |want|).
pub fn max_errors<const D: usize>(got: Tensor<D>, want: Tensor<D>) -> (f32, f32) {
    assert_eq!(got.dims(), want.dims());
    let got: Vec<f32> = got.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
    let want: Vec<f32> = want.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
    assert!(got.iter().all(|v| v.is_finite()), "non-finite output");
    let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    let scale = want.iter().map(|v| v.abs()).fold(0f32, f32::max);
    (err, scale)
}

/// The reference cases of scripts/fixtures/models.py: (name, timesteps).
pub const CASES: &[(&str, &[f64])] = &[
    ("unet.out.t999", &[999.0]),
    ("unet.out.t500", &[500.0]),
    ("unet.out.t1", &[1.0]),
    ("unet.out.t10_700", &[10.0, 700.0]),
];

/// Runs every reference case; returns (case, max error, max |reference|).
pub fn run_cases(unet: &UNet2DConditionModel, refs: &Refs, device: &Device) -> Vec<(&'static str, f32, f32)> {
    let sample: Tensor<4> = refs.tensor("unet.sample", device);
    let context: Tensor<3> = refs.tensor("unet.encoder_hidden_states", device);
    let added = refs.text_time(device);
    CASES
        .iter()
        .map(|&(name, t)| {
            let out = unet.forward(sample.clone(), t, context.clone(), added.as_ref()).unwrap();
            let (err, scale) = max_errors(out, refs.tensor(name, device));
            (name, err, scale)
        })
        .collect()
}

/// A fresh directory under the test target's tmp dir.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("kiln-unet-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
