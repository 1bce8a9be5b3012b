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
//! expose the extension (desktop GPU drivers generally do) take the explicit-layout path instead. `KILN_WGPU_LANE=vulkan` asks for the Vulkan lane anyway: it is used when the
//! adapter has the extension and refused (with the reason printed) when it does not, since a
//! segfault cannot be caught in-process.
//!
//! The WGSL path has no f16 on GL: lane tests run in f32. Mesa caps one storage buffer at
//! 128 MiB: keep shapes tiny.
//!
//! Environment:
//! - `KILN_WGPU_LANE` = `gl` (default) | `vulkan` | `off`
//! - `KILN_WGPU_LANE_REQUIRED=1`: panic instead of returning `None` (CI sets it, so a machine
//!   that lost its Mesa packages fails the lane instead of skipping it).

use std::sync::OnceLock;

use burn::tensor::wgpu::{WgpuBackend, WgpuInitError};
use burn::tensor::{Device, DeviceKind};

/// The Vulkan extension whose absence sends cubecl-spirv 0.11.3 down its broken implicit
/// shared-memory lowering (see the module docs).
const EXPLICIT_LAYOUT_EXT: &std::ffi::CStr = c"VK_KHR_workgroup_memory_explicit_layout";

/// The device the wgpu lane runs on, or `None` (after printing why on stderr) when this machine
/// has no usable adapter for the configured lane.
///
/// Initialised once per process (burn registers a wgpu runtime once per device selector); every
/// call returns a clone of the same device. Tests skip on `None`:
///
/// ```no_run
/// let Some(device) = kiln_nn::testing::wgpu_lane_device() else { return };
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
    let lane = std::env::var("KILN_WGPU_LANE").unwrap_or_else(|_| "gl".into());
    let device = match lane.as_str() {
        "gl" => Device::wgpu_options()
            .graphics_api(WgpuBackend::Gl)
            .device_kind(DeviceKind::DefaultDevice)
            .init()
            .map_err(|err| describe(err, "OpenGL (EGL)", "libegl1 libegl-mesa0 libgl1-mesa-dri"))?,
        "vulkan" => {
            vulkan_known_crash()?;
            Device::wgpu_options()
                .graphics_api(WgpuBackend::Vulkan)
                .device_kind(DeviceKind::DefaultDevice)
                .init()
                .map_err(|err| describe(err, "Vulkan", "mesa-vulkan-drivers"))?
        }
        "off" => return Err("KILN_WGPU_LANE=off".into()),
        other => panic!("KILN_WGPU_LANE={other:?}: expected gl, vulkan or off"),
    };
    let name = device.identity().map(|id| id.name).unwrap_or_else(|| "unknown adapter".into());
    let f16 = device.supports_dtype(burn::tensor::DType::F16);
    eprintln!("wgpu lane: {lane} on {name} (f16 supported: {f16})");
    Ok(device)
}

fn describe(err: WgpuInitError, api: &str, packages: &str) -> String {
    match err {
        WgpuInitError::AdapterUnavailable { .. } | WgpuInitError::UnsupportedGraphicsApi { .. } => {
            format!("no {api} adapter ({err}); on Debian/Ubuntu install {packages}")
        }
        err => format!("{api} device initialisation failed: {err}"),
    }
}

/// `Err(reason)` when the Vulkan adapter burn would pick lacks `VK_KHR_workgroup_memory_explicit_layout`,
/// i.e. when cubecl-spirv 0.11.3's first shared-memory kernel would crash the driver.
fn vulkan_known_crash() -> Result<(), String> {
    use burn::tensor::wgpu::wgpu;
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: wgpu::Backends::VULKAN,
        flags: wgpu::InstanceFlags::empty(),
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    let options = wgpu::RequestAdapterOptions {
        power_preference: wgpu::PowerPreference::HighPerformance,
        ..Default::default()
    };
    let adapter = block_on(instance.request_adapter(&options))
        .map_err(|err| format!("no Vulkan adapter ({err}); on Debian/Ubuntu install mesa-vulkan-drivers"))?;
    let info = adapter.get_info();
    // SAFETY: only reads the adapter's extension list; the raw handle is not kept.
    let has_ext = unsafe { adapter.as_hal::<wgpu::hal::api::Vulkan>() }
        .is_some_and(|hal| hal.physical_device_capabilities().supports_extension(EXPLICIT_LAYOUT_EXT));
    if has_ext {
        Ok(())
    } else {
        Err(format!(
            "known crash avoided: Vulkan adapter {:?} ({}) lacks {}, so cubecl-spirv 0.11.3 would emit \
             invalid shared memory (a Workgroup variable of pointer type) and the driver segfaults in \
             vkCreateComputePipelines; use KILN_WGPU_LANE=gl",
            info.name,
            info.driver_info,
            EXPLICIT_LAYOUT_EXT.to_string_lossy()
        ))
    }
}

/// Drives a future to completion on this thread (wgpu's native adapter request is ready at once).
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let mut future = std::pin::pin!(future);
    loop {
        if let std::task::Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::yield_now();
    }
}
