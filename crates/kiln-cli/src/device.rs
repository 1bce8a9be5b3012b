//! The device and precision flags `kiln generate` and `kiln bench` share.

use clap::Args;
use kiln::burn::tensor::{DType, Device, DeviceKind};

#[derive(Args)]
pub struct DeviceArgs {
    /// cpu (burn's flex backend), vulkan (SPIR-V, f16 tensor cores), wgpu (auto API, WGSL).
    #[arg(long, value_name = "cpu|vulkan|wgpu", default_value = "cpu")]
    pub device: String,
    /// The UNet's precision (the text encoders stay f32).
    #[arg(long, value_name = "f32|f16", default_value = "f32")]
    pub dtype: String,
    /// The VAE's precision; an f16 decode that overflows (NaN/inf) is redone in f32.
    #[arg(long, value_name = "f32|f16", default_value = "f32")]
    pub vae_dtype: String,
}

fn dtype(flag: &str, v: &str) -> Result<DType, String> {
    match v {
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        other => Err(format!("{flag} must be f32 or f16, got {other:?}")),
    }
}

impl DeviceArgs {
    /// `(device, UNet dtype, VAE dtype)`, or a message naming the bad flag.
    pub fn resolve(&self) -> Result<(Device, DType, DType), String> {
        let device = match self.device.as_str() {
            "cpu" => Device::flex(),
            "vulkan" => Device::vulkan(DeviceKind::DefaultDevice),
            "wgpu" => Device::wgpu(DeviceKind::DefaultDevice),
            other => return Err(format!("--device must be cpu, vulkan or wgpu, got {other:?}")),
        };
        Ok((device, dtype("--dtype", &self.dtype)?, dtype("--vae-dtype", &self.vae_dtype)?))
    }
}
