//! What the transformer tests share: the flow fixtures' folder and reference tensors.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use burn::prelude::*;
use safetensors::{Dtype, SafeTensors};

/// assets/fixtures/models/flow (scripts/fixtures/flow_models.py).
pub fn flow() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets/fixtures/models/flow")
}

/// `reference.safetensors`'s float32 tensors as (shape, values).
pub fn refs() -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(flow().join("reference.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .filter(|(_, v)| v.dtype() == Dtype::F32)
        .map(|(k, v)| (k, (v.shape().to_vec(), v.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect())))
        .collect()
}

/// A reference as a tensor on `device`.
pub fn tensor<const D: usize>(r: &(Vec<usize>, Vec<f32>), device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(r.1.clone(), r.0.clone()), device)
}
