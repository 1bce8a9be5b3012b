//! The wgpu test lane: a wgpu device that works on a CPU-only CI machine through Mesa's software
//! rasterizer, for tests that check kiln's blocks on a CubeCL backend against flex.
//!
//! [`wgpu_lane_device`] returns, by default, burn's wgpu runtime on the **OpenGL** API
//! (`Device::wgpu_options().graphics_api(WgpuBackend::Gl)`): cubecl compiles its kernels to WGSL,
//! naga translates them to GLSL, and Mesa's llvmpipe runs them through EGL's surfaceless platform.
//! Packages (Debian 12): `libegl1 libegl-mesa0 libgl1-mesa-dri` (`.ci/run` installs them).
//!
//! Why not Vulkan (lavapipe, `mesa-vulkan-drivers`): with the `vulkan` feature cubecl compiles to
//! SPIR-V on any Vulkan adapter with the Vulkan memory model and buffer device addresses, which
//! lavapipe has, and there is no runtime switch back to WGSL. On a device without
//! `VK_KHR_workgroup_memory_explicit_layout` (lavapipe in Mesa 22.3.6 and 25.0.7 lacks it)
//! cubecl-spirv 0.11.3 lowers shared memory through `lower_shared_implicit`
//! (`cubecl-spirv-0.11.3/src/ops/memory.rs`), which swaps the variable's and the pointer's types
//! and declares every shared array as a `Workgroup` variable holding a *pointer* to the array
//! (`OpVariable %ptr_Workgroup_ptr_Workgroup_arr`). `spirv-val` rejects the module
//! ("OpInBoundsAccessChain reached non-composite type") and lavapipe segfaults in
//! `vkCreateComputePipelines` on the first kernel that uses shared memory (a 64x64 or 256x256
//! matmul: cubek's partitioned matmul; element-wise ops and a sum run). Hand-fixing the three
//! `OpVariable`s makes the module pass `spirv-val` and lavapipe build the pipeline. Drivers that
//! expose the extension (desktop GPU drivers generally do) take the explicit-layout path instead. `KILN_WGPU_LANE=vulkan` asks for the Vulkan lane anyway, through
//! [`device::vulkan`]: refused (with the reason printed) on a software driver without the
//! extension, since a segfault cannot be caught in-process.
//!
//! The WGSL path has no f16 on GL: lane tests run in f32. Mesa caps one storage buffer at
//! 128 MiB, and burn 0.22.1's row sums there lose elements in rows of 65536 and more
//! ([`device::reduction_check`], which is why `kiln --device wgpu` refuses this adapter while
//! the lane, at its small shapes, uses it): keep shapes tiny.
//!
//! Environment:
//! - `KILN_WGPU_LANE` = `gl` (default) | `vulkan` | `off`
//! - `KILN_WGPU_LANE_REQUIRED=1`: panic instead of returning `None` (CI sets it, so a machine
//!   that lost its Mesa packages fails the lane instead of skipping it).

use std::sync::OnceLock;

use burn::tensor::wgpu::WgpuBackend;
use burn::tensor::Device;

use crate::device;

/// The device the wgpu lane runs on, or `None` (after printing why on stderr) when this machine
/// has no usable adapter for the configured lane.
///
/// Initialised once per process (burn registers a wgpu runtime once per device selector); every
/// call returns a clone of the same device. Tests skip on `None`:
///
/// ```no_run
/// let Some(device) = kiln_ops::testing::wgpu_lane_device() else { return };
/// ```
///
/// # Panics
/// When `KILN_WGPU_LANE_REQUIRED=1` and the lane is unavailable, or `KILN_WGPU_LANE` holds an
/// unknown value.
pub fn wgpu_lane_device() -> Option<Device> {
    static LANE: OnceLock<Result<Device, String>> = OnceLock::new();
    match LANE.get_or_init(init_lane) {
        Ok(device) => Some(device.clone()),
        Err(reason) => {
            let required = std::env::var("KILN_WGPU_LANE_REQUIRED").is_ok_and(|v| v == "1");
            if required {
                panic!("wgpu lane required (KILN_WGPU_LANE_REQUIRED=1) but unavailable: {reason}");
            }
            eprintln!("wgpu lane skipped: {reason}");
            None
        }
    }
}

fn init_lane() -> Result<Device, String> {
    // measured GPU routes stay in memory unless a test chose a store (never the user's cache)
    if !crate::gpu::store::store_path_overridden() && std::env::var_os("KILN_CACHE_DIR").is_none() {
        crate::gpu::store::set_store_path(None);
    }
    one_stream();
    let lane = std::env::var("KILN_WGPU_LANE").unwrap_or_else(|_| "gl".into());
    let device = match lane.as_str() {
        "gl" => device::open(Some(WgpuBackend::Gl))?,
        "vulkan" => device::vulkan().map_err(|why| format!("known crash avoided: {why}; use KILN_WGPU_LANE=gl"))?,
        "off" => return Err("KILN_WGPU_LANE=off".into()),
        other => panic!("KILN_WGPU_LANE={other:?}: expected gl, vulkan or off"),
    };
    let name = device.identity().map(|id| id.name).unwrap_or_else(|| "unknown adapter".into());
    let f16 = device.supports_dtype(burn::tensor::DType::F16);
    eprintln!("wgpu lane: {lane} on {name} (f16 supported: {f16})");
    Ok(device)
}

/// Gives the lane's device one CubeCL stream (`[streaming] max_streams = 1`, on top of any
/// `cubecl.toml` and `CUBECL_*` variables), before the device opens: with the default (one
/// stream per thread that touches the device, up to 128) two test threads on Mesa's llvmpipe
/// hung in 1 of 4 cold runs, and 0 of 5 with one stream. Each stream has a poll thread, and a poll
/// thread that waits over 6 s for the GL context (a long kernel on llvmpipe) panics, leaving the
/// device's server waiting for good (docs/testing.md#the-wgpu-lane-hang): one stream, one poll
/// thread. Lane tests also run one per process under the watchdog ([`crate::lane_test!`]), which
/// ends a child at once when such a thread panics.
fn one_stream() {
    use burn_cubecl::cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};
    let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
    config.streaming.max_streams = 1;
    if !CubeClRuntimeConfig::try_set(config) {
        eprintln!("wgpu lane: CubeCL's configuration was already read; the lane keeps its streams");
    }
}

/// Standard-normal values of `shape` on `device` (burn's device RNG: each lane test draws its
/// inputs on flex and copies them to the lane).
pub fn randn<const D: usize>(shape: [usize; D], device: &Device) -> burn::tensor::Tensor<D> {
    burn::tensor::Tensor::random(shape, burn::tensor::Distribution::Normal(0.0, 1.0), device)
}

/// The relative tolerance of [`assert_close`]. Both sides run in f32; the difference is
/// summation order (cubecl's tiled matmul/conv/attention kernels vs flex's gemm), GLSL's
/// exp/rsqrt and GroupNorm's reduction order, all ~1e-6 relative at the lane's sizes, so 1e-4
/// leaves room without hiding a wrong index or mask (those give O(1) errors).
pub const LANE_TOLERANCE: f32 = 1e-4;

/// Asserts max |got − want| ≤ [`LANE_TOLERANCE`] × max(1, max |want|), `got` from the lane,
/// `want` from flex, and that `got` is finite; prints the error.
pub fn assert_close<const D: usize>(what: &str, got: burn::tensor::Tensor<D>, want: burn::tensor::Tensor<D>) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let got: Vec<f32> = got.into_data().convert::<f32>().try_to_vec().unwrap();
    let want: Vec<f32> = want.into_data().convert::<f32>().try_to_vec().unwrap();
    assert!(got.iter().all(|v| v.is_finite()), "{what}: non-finite values on the lane");
    let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
    let err = got.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    eprintln!("{what}: max abs err {err:.3e} (bound {:.3e})", LANE_TOLERANCE * scale);
    assert!(err <= LANE_TOLERANCE * scale, "{what}: max abs err {err} > {LANE_TOLERANCE} x {scale}");
}
