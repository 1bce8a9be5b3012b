//! Runs kiln's UNet on inputs written by scripts/gpu/unet_check.py and writes its output, so the
//! script can compare kiln with PyTorch on the same weights and inputs (f16 on the GPU):
//!
//!     cargo run --example unet_check -- DIR [cpu|vulkan|wgpu] [f32|f16]
//!
//! DIR holds `unet/` (config + weights) and `io.safetensors` (`sample`, `encoder_hidden_states`,
//! `timestep`, all f32); the output goes to `DIR/kiln_out.safetensors` (`out`, f32).

use std::collections::HashMap;
use std::path::Path;

use kiln::burn::tensor::{DType, Device, DeviceKind, Tensor, TensorData};
use kiln::unet::UNet2DConditionModel;
use safetensors::{tensor::TensorView, Dtype, SafeTensors};

fn read<const D: usize>(st: &SafeTensors, name: &str, device: &Device) -> Result<Tensor<D>, Box<dyn std::error::Error>> {
    let view = st.tensor(name)?;
    if view.dtype() != Dtype::F32 {
        return Err(format!("{name} must be f32, is {:?}", view.dtype()).into());
    }
    let values: Vec<f32> = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    Ok(Tensor::from_data(TensorData::new(values, view.shape().to_vec()), device))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let dir = Path::new(args.get(1).ok_or("usage: unet_check DIR [cpu|vulkan|wgpu] [f32|f16]")?);
    let device = match args.get(2).map(String::as_str).unwrap_or("cpu") {
        "cpu" => Device::flex(),
        "vulkan" => Device::vulkan(DeviceKind::DefaultDevice),
        "wgpu" => Device::wgpu(DeviceKind::DefaultDevice),
        other => return Err(format!("device must be cpu, vulkan or wgpu, got {other}").into()),
    };
    let dtype = match args.get(3).map(String::as_str).unwrap_or("f16") {
        "f32" => DType::F32,
        "f16" => DType::F16,
        other => return Err(format!("dtype must be f32 or f16, got {other}").into()),
    };
    let unet = UNet2DConditionModel::load(&dir.join("unet"), &device, dtype, None)?;
    let bytes = std::fs::read(dir.join("io.safetensors"))?;
    let st = SafeTensors::deserialize(&bytes)?;
    let sample: Tensor<4> = read(&st, "sample", &device)?;
    let context: Tensor<3> = read(&st, "encoder_hidden_states", &device)?;
    let t: Tensor<1> = read(&st, "timestep", &device)?;
    let t: Vec<f32> = t.into_data().try_into_vec::<f32>().map_err(|e| format!("{e:?}"))?;
    let out = unet.forward(sample, &[t[0] as f64], context, None)?.cast(DType::F32);
    let shape = out.dims().to_vec();
    let values: Vec<f32> = out.into_data().convert::<f32>().try_into_vec::<f32>().map_err(|e| format!("{e:?}"))?;
    let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = TensorView::new(Dtype::F32, shape, &raw)?;
    let data = safetensors::serialize(HashMap::from([("out".to_string(), view)]), None)?;
    std::fs::write(dir.join("kiln_out.safetensors"), data)?;
    eprintln!("wrote {}", dir.join("kiln_out.safetensors").display());
    Ok(())
}
