//! The device and precision flags `kiln generate` and `kiln bench` share.

use clap::Args;
use kiln::burn::tensor::{DType, Device};
use kiln::ops::device as wgpu_device;
use kiln::ops::gpu::route::{set_policy, GpuOp, RoutePolicy};

#[derive(Args)]
pub struct DeviceArgs {
    /// cpu (burn's flex backend), vulkan (SPIR-V, f16 tensor cores), wgpu (the API wgpu picks;
    /// OpenGL where the only Vulkan driver is one cubecl would crash, e.g. Mesa's lavapipe). A GPU
    /// device that sums long rows wrongly (burn on llvmpipe's OpenGL) is refused.
    #[arg(long, value_name = "cpu|vulkan|wgpu", default_value = "cpu")]
    pub device: String,
    /// The UNet's precision (the text encoders stay f32).
    #[arg(long, value_name = "f32|f16", default_value = "f32")]
    pub dtype: String,
    /// The VAE's precision; an f16 decode that overflows (NaN/inf) is redone in f32.
    #[arg(long, value_name = "f32|f16", default_value = "f32")]
    pub vae_dtype: String,
    /// GPUs, attention: auto (at first use time burn's kernel, the zero-padded head dim where it is
    /// not a multiple of 16 (SD 1.x's 40), and for large attentions in f16 on GPUs with tensor
    /// cores burn's flash kernel with larger tiles; keep the fastest that agrees with burn's;
    /// remembered per GPU),
    /// burn (as is), padded (always pad head dims to a multiple of 16 for burn's flash kernel).
    #[arg(long, value_name = "auto|burn|padded", default_value = "auto")]
    pub gpu_attention: String,
    /// GPUs, stride-1 convolutions: auto (time burn's conv kernel and an im2col matrix product
    /// at first use, keep the faster; remembered per GPU), burn (as is), im2col (always where it applies).
    #[arg(long, value_name = "auto|burn|im2col", default_value = "auto")]
    pub gpu_conv: String,
    /// GPUs, GroupNorm (+ SiLU): auto (time burn's module and kiln's fused formulation, no f32
    /// copies of f16 inputs, at first use, keep the faster; remembered per GPU), burn (as is), fused (always).
    #[arg(long, value_name = "auto|burn|fused", default_value = "auto")]
    pub gpu_norm: String,
}

/// The flag that sets `op`'s route policy.
pub fn flag(op: GpuOp) -> &'static str {
    match op {
        GpuOp::Attention => "--gpu-attention",
        GpuOp::Conv2d => "--gpu-conv",
        GpuOp::GroupNorm => "--gpu-norm",
    }
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
            "vulkan" => wgpu_device::vulkan().map_err(|why| format!("--device vulkan: {why}; use --device cpu"))?,
            "wgpu" => wgpu_device::auto().map_err(|why| format!("--device wgpu: {why}; use --device cpu"))?,
            other => return Err(format!("--device must be cpu, vulkan or wgpu, got {other:?}")),
        };
        let policies = [
            (GpuOp::Attention, &self.gpu_attention),
            (GpuOp::Conv2d, &self.gpu_conv),
            (GpuOp::GroupNorm, &self.gpu_norm),
        ]
        .map(|(op, value)| RoutePolicy::parse(op, value).map(|p| (op, p)).map_err(|why| format!("{} {why}", flag(op))));
        let dtypes = (dtype("--dtype", &self.dtype)?, dtype("--vae-dtype", &self.vae_dtype)?);
        wgpu_device::dtype_check(&device, dtypes.0, "--dtype")?;
        wgpu_device::dtype_check(&device, dtypes.1, "--vae-dtype")?;
        for policy in policies {
            let (op, policy) = policy?;
            set_policy(op, policy);
        }
        Ok((device, dtypes.0, dtypes.1))
    }
}
