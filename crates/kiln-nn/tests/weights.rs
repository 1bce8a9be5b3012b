//! `kiln_nn::Weights`: a module loads what a plan names, read from the file one tensor at a time,
//! with each transform a single-file checkpoint needs (a slice of a fused projection, a
//! transpose, a 1×1 convolution read as a linear layer), from f32, f16 and bf16 files; what the
//! plan lacks or the module does not use is an error naming the file and the tensors.

use std::path::{Path, PathBuf};

use burn::tensor::{DType, Device};
use kiln_nn::{burn_dtype, Linear, LinearConfig, Transform, Weight, Weights, WeightsFile};

/// Writes a safetensors file of `(name, dtype, shape, f32 values)`, each value stored in `dtype`.
fn write(path: &Path, tensors: &[(&str, &str, Vec<u64>, Vec<f32>)]) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, dtype, shape, values) in tensors {
        let start = data.len();
        for v in values {
            match *dtype {
                "F32" => data.extend_from_slice(&v.to_le_bytes()),
                // exact for the values used here
                "BF16" => data.extend_from_slice(&((v.to_bits() >> 16) as u16).to_le_bytes()),
                "F16" => data.extend_from_slice(&half_bits(*v).to_le_bytes()),
                _ => unreachable!(),
            }
        }
        header.insert(name.to_string(), serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}));
    }
    let mut header = serde_json::to_vec(&header).unwrap();
    header.resize(header.len().div_ceil(8) * 8, b' ');
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header);
    bytes.extend(data);
    std::fs::write(path, bytes).unwrap();
}

/// f16 bits of a value that is exact in f16 (small integers and halves).
fn half_bits(v: f32) -> u16 {
    if v == 0.0 {
        return 0;
    }
    let bits = v.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32 - 127 + 15;
    let mantissa = ((bits >> 13) & 0x3ff) as u16;
    sign | ((exp as u16) << 10) | mantissa
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-nn-weights-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn linear(device: &Device) -> Linear {
    LinearConfig::new(2, 3).init(device)
}

/// The module's weight (`[out, in]`, as torch lays it out, which kiln's `Linear` keeps), and its
/// bias.
fn values(l: &Linear) -> (Vec<f32>, Vec<f32>) {
    let w = l.weight.val().into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
    let b = l.bias.as_ref().unwrap().val().into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
    (w, b)
}

const W: [f32; 6] = [1.0, -2.0, 0.5, 0.25, 3.0, -1.5];
const B: [f32; 3] = [0.5, -0.5, 1.0];

#[test]
fn every_dtype_and_transform_loads_the_values_it_names() {
    let device = Device::flex();
    for dtype in ["F32", "F16", "BF16"] {
        let path = tmp(&format!("plain-{dtype}.safetensors"));
        write(&path, &[("weight", dtype, vec![3, 2], W.to_vec()), ("bias", dtype, vec![3], B.to_vec())]);
        let l = Weights::all(WeightsFile::open(&path).unwrap()).load_into(linear(&device), DType::F32, &[]).unwrap();
        assert_eq!(values(&l), (W.to_vec(), B.to_vec()), "{dtype}");
        // on the CPU a half-precision weight stays as stored (kiln's kernels read it), the bias
        // is cast; on an autodiff device (training) everything is f32
        let want = burn_dtype(dtype).unwrap();
        assert_eq!((l.weight.val().dtype(), l.bias.as_ref().unwrap().val().dtype()), (want, DType::F32), "{dtype}");
        let autodiff = Device::flex().autodiff();
        let l = Weights::all(WeightsFile::open(&path).unwrap()).load_into(linear(&autodiff), DType::F32, &[]).unwrap();
        assert_eq!(l.weight.val().dtype(), DType::F32, "{dtype} on autodiff");
        assert_eq!(values(&l), (W.to_vec(), B.to_vec()), "{dtype} on autodiff");
    }
    // q, k, v stacked: the middle third
    let path = tmp("fused.safetensors");
    let mut fused: Vec<f32> = vec![9.0; 6];
    fused.extend(W);
    fused.extend([7.0; 6]);
    let mut fused_bias = vec![9.0; 3];
    fused_bias.extend(B);
    fused_bias.extend([7.0; 3]);
    write(&path, &[("in_proj_weight", "F16", vec![9, 2], fused), ("in_proj_bias", "F16", vec![9], fused_bias)]);
    let rows = Transform::Rows { index: 1, parts: 3 };
    let plan = Weights { file: WeightsFile::open(&path).unwrap(), weights: vec![Weight::new("weight", "in_proj_weight", rows), Weight::new("bias", "in_proj_bias", rows)] };
    assert_eq!(values(&plan.load_into(linear(&device), DType::F32, &[]).unwrap()), (W.to_vec(), B.to_vec()));
    // stored as x @ W ([in, out]): transposed; a 1×1 convolution's [out, in, 1, 1]: squeezed
    let path = tmp("shapes.safetensors");
    let wt: Vec<f32> = (0..2).flat_map(|i| (0..3).map(move |o| W[o * 2 + i])).collect();
    write(&path, &[("proj", "F32", vec![2, 3], wt), ("conv", "BF16", vec![3, 2, 1, 1], W.to_vec()), ("b", "F32", vec![3], B.to_vec())]);
    let file = WeightsFile::open(&path).unwrap();
    for (key, t) in [("proj", Transform::Transpose), ("conv", Transform::Squeeze)] {
        let plan = Weights { file: file.clone(), weights: vec![Weight::new("weight", key, t), Weight::new("bias", "b", Transform::None)] };
        assert_eq!(values(&plan.load_into(linear(&device), DType::F32, &[]).unwrap()), (W.to_vec(), B.to_vec()), "{key}");
    }
}

#[test]
fn what_the_plan_lacks_or_the_module_does_not_use_is_named() {
    let device = Device::flex();
    let path = tmp("errors.safetensors");
    write(&path, &[("weight", "F32", vec![3, 2], W.to_vec()), ("bias", "F32", vec![3], B.to_vec()), ("extra", "F32", vec![1], vec![0.0])]);
    let file = WeightsFile::open(&path).unwrap();
    let err = Weights::all(file.clone()).load_into(linear(&device), DType::F32, &[]).unwrap_err().to_string();
    assert!(err.contains("errors.safetensors") && err.contains("does not use") && err.contains("extra"), "{err}");
    // ignored names are not reported
    Weights::all(file.clone()).load_into(linear(&device), DType::F32, &["^extra$"]).unwrap();
    let only_weight = Weights { file: file.clone(), weights: vec![Weight::new("weight", "weight", Transform::None)] };
    let err = only_weight.load_into(linear(&device), DType::F32, &[]).unwrap_err().to_string();
    assert!(err.contains("lacks") && err.contains("bias"), "{err}");
    let split_wrong = Weights { file: file.clone(), weights: vec![Weight::new("weight", "weight", Transform::Rows { index: 0, parts: 2 })] };
    let err = split_wrong.load_into(linear(&device), DType::F32, &[]).unwrap_err().to_string();
    assert!(err.contains("does not split into 2 equal parts"), "{err}");
    let no_key = Weights { file, weights: vec![Weight::new("weight", "nope", Transform::None)] };
    let err = no_key.load_into(linear(&device), DType::F32, &[]).unwrap_err().to_string();
    assert!(err.contains("nope"), "{err}");
    // cast at load: f32 weights into an f16 module
    let path = tmp("cast.safetensors");
    write(&path, &[("weight", "F32", vec![3, 2], W.to_vec()), ("bias", "F32", vec![3], B.to_vec())]);
    let l = Weights::all(WeightsFile::open(&path).unwrap()).load_into(linear(&device), DType::F16, &[]).unwrap();
    assert_eq!(l.weight.val().dtype(), DType::F16);
    assert_eq!(values(&l), (W.to_vec(), B.to_vec()));
}
