//! Opening a GPU device without crashing on drivers cubecl cannot use.
//!
//! With burn's `vulkan` feature cubecl compiles to SPIR-V on every Vulkan adapter. On an adapter
//! without `VK_KHR_workgroup_memory_explicit_layout` (Mesa's lavapipe, the software Vulkan driver
//! CPU-only Linux machines often have, in Mesa 22.3.6 and 25.0.7) cubecl-spirv 0.11.3 lowers shared
//! memory through `lower_shared_implicit` (`cubecl-spirv-0.11.3/src/ops/memory.rs`), which declares
//! each shared array as a `Workgroup` variable holding a *pointer* to the array; `spirv-val`
//! rejects the module and the driver segfaults in `vkCreateComputePipelines` on the first kernel
//! that uses shared memory (a matmul). A segfault cannot be caught, so [`vulkan`] and [`auto`]
//! look at the adapter's extensions first, through wgpu, before burn opens it.
//!
//! Then they run [`reduction_check`] on the opened device: on Mesa's llvmpipe through OpenGL
//! (the `--device wgpu` fallback on such machines) burn 0.22.1's row sums lose elements in long
//! rows, so GroupNorm goes wrong at real image sizes — a 512×512 picture of the kiln-shapes model
//! came out as coloured noise where the CPU drew clean circles. kiln refuses such an adapter
//! rather than write wrong pictures.

use std::sync::OnceLock;

use burn::tensor::wgpu::{wgpu, WgpuBackend, WgpuInitError};
use burn::tensor::{Device, DeviceKind, Tensor, TensorData};

/// The Vulkan extension whose absence sends cubecl-spirv 0.11.3 down its broken implicit
/// shared-memory lowering (see the module docs).
pub const EXPLICIT_LAYOUT_EXT: &std::ffi::CStr = c"VK_KHR_workgroup_memory_explicit_layout";

/// What [`vulkan_check`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VulkanCheck {
    /// The adapter burn would pick has the extension, or is a GPU (a hardware driver without it
    /// is not known to crash; a warning is logged).
    Usable,
    /// The adapter is a software driver without the extension (Mesa's lavapipe), which cubecl's
    /// kernels crash: why, naming it.
    Crashes(String),
    /// No Vulkan adapter (no loader or no driver): why.
    Absent(String),
}

/// Looks at the Vulkan adapter burn would pick (high performance, like burn's default device)
/// without opening a device on it.
pub fn vulkan_check() -> VulkanCheck {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: wgpu::Backends::VULKAN,
        flags: wgpu::InstanceFlags::empty(),
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    let options = wgpu::RequestAdapterOptions { power_preference: wgpu::PowerPreference::HighPerformance, ..Default::default() };
    let adapter = match block_on(instance.request_adapter(&options)) {
        Ok(adapter) => adapter,
        Err(err) => return VulkanCheck::Absent(format!("no Vulkan adapter ({err})")),
    };
    let info = adapter.get_info();
    // SAFETY: only reads the adapter's extension list; the raw handle is not kept.
    let has_ext = unsafe { adapter.as_hal::<wgpu::hal::api::Vulkan>() }
        .is_some_and(|hal| hal.physical_device_capabilities().supports_extension(EXPLICIT_LAYOUT_EXT));
    if has_ext {
        VulkanCheck::Usable
    } else if info.device_type != wgpu::DeviceType::Cpu {
        // a GPU driver without the extension: no crash is known there (cubecl falls back to its
        // implicit lowering, which only software drivers have been seen to reject)
        log::warn!("the Vulkan adapter {:?} lacks {}; cubecl's shared memory may not work on it", info.name, EXPLICIT_LAYOUT_EXT.to_string_lossy());
        VulkanCheck::Usable
    } else {
        VulkanCheck::Crashes(format!(
            "the Vulkan adapter {:?} ({}) lacks {}: cubecl-spirv 0.11.3 would emit invalid shared memory \
             and the driver would crash on the first matrix product",
            info.name,
            info.driver_info,
            EXPLICIT_LAYOUT_EXT.to_string_lossy()
        ))
    }
}

/// burn's wgpu runtime on `api` (Vulkan, OpenGL, or `None`: the API wgpu picks), or why not
/// (naming the Debian packages that provide it). burn registers one runtime per device selector
/// and process, so each is opened once and its device handed out again afterwards.
pub fn open(api: Option<WgpuBackend>) -> Result<Device, String> {
    static OPENED: [OnceLock<Result<Device, String>>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    let (slot, name, packages) = match api {
        Some(WgpuBackend::Vulkan) => (0, "Vulkan", "mesa-vulkan-drivers, or the GPU vendor's driver"),
        Some(WgpuBackend::Gl) => (1, "OpenGL (EGL)", "libegl1 libegl-mesa0 libgl1-mesa-dri"),
        _ => (2, "GPU", "the GPU vendor's driver"),
    };
    OPENED[slot]
        .get_or_init(|| {
            let options = Device::wgpu_options().device_kind(DeviceKind::DefaultDevice);
            let options = match api {
                Some(api) => options.graphics_api(api),
                None => options,
            };
            options.init().map_err(|err| match err {
                WgpuInitError::AdapterUnavailable { .. } | WgpuInitError::UnsupportedGraphicsApi { .. } => {
                    format!("no {name} adapter ({err}); on Debian/Ubuntu install {packages}")
                }
                err => format!("{name} device initialisation failed: {err}"),
            })
        })
        .clone()
}

/// The row sums [`reduction_check`] asks for: `[rows, length]` of ones.
pub const REDUCTION_CHECKS: [[usize; 2]; 2] = [[4, 65_536], [1, 262_144]];

/// Whether `device` sums long rows right: [`REDUCTION_CHECKS`] (ones, so every sum is exact in
/// f32), or why not, naming the adapter and what it answered. burn 0.22.1's row reduction on
/// Mesa's llvmpipe through OpenGL (cubek-reduce 0.3.1's `unit_vectorized_parallel_reduce`, what
/// burn's autotune keeps there) answered 65444 for the fourth of four rows of 65536 ones and
/// 262128 for one row of 262144, and zeros for whole rows at 131072: kiln's GroupNorm statistics
/// (a group of a 512×512 VAE feature map is a row of 262144 or more) come out wrong. Two small
/// reductions and one read back.
pub fn reduction_check(device: &Device) -> Result<(), String> {
    for [rows, len] in REDUCTION_CHECKS {
        let ones = Tensor::<2>::from_data(TensorData::new(vec![1.0f32; rows * len], [rows, len]), device);
        let sums = ones.sum_dim(1).try_into_data().map_err(|e| format!("{e:?}")).and_then(|d| d.try_to_vec::<f32>().map_err(|e| format!("{e:?}")));
        match sums {
            Ok(sums) if sums.iter().all(|&s| s == len as f32) => {}
            Ok(sums) => {
                return Err(format!(
                    "the adapter {} sums {rows} row(s) of {len} ones to {sums:?} (burn's row reduction loses elements there), \
                     so GroupNorm and kiln's pictures would be wrong",
                    adapter_name(device)
                ))
            }
            Err(e) => return Err(format!("the adapter {} failed a row sum: {e}", adapter_name(device))),
        }
    }
    Ok(())
}

/// Whether `device` computes in `dtype`, or a message naming `flag` (OpenGL's WGSL has no f16:
/// its kernels fail to compile and leave garbage).
pub fn dtype_check(device: &Device, dtype: burn::tensor::DType, flag: &str) -> Result<(), String> {
    if device.supports_dtype(dtype) {
        return Ok(());
    }
    Err(format!("{flag} {}: the adapter {} does not compute in it; use {flag} f32", format!("{dtype:?}").to_lowercase(), adapter_name(device)))
}

/// The adapter's name, quoted, for messages (the device's debug form where it reports none).
fn adapter_name(device: &Device) -> String {
    device.identity().map_or_else(|| format!("{device:?}"), |id| format!("{:?}", id.name))
}

/// `device` if it passes [`reduction_check`].
fn checked(device: Result<Device, String>) -> Result<Device, String> {
    let device = device?;
    reduction_check(&device).map(|()| device)
}

/// burn's wgpu runtime on Vulkan (SPIR-V, f16, cooperative-matrix tensor cores), or an error
/// saying why not — an adapter cubecl's kernels would crash, or one that fails
/// [`reduction_check`] (see the module docs).
pub fn vulkan() -> Result<Device, String> {
    match vulkan_check() {
        VulkanCheck::Usable => checked(open(Some(WgpuBackend::Vulkan))),
        VulkanCheck::Crashes(why) | VulkanCheck::Absent(why) => Err(why),
    }
}

/// burn's wgpu runtime on the graphics API wgpu picks (Vulkan where there is one, else Metal,
/// DirectX or OpenGL), except that a Vulkan adapter cubecl would crash is passed over for OpenGL,
/// with a warning saying why; an error where the device it ends on fails [`reduction_check`].
pub fn auto() -> Result<Device, String> {
    match vulkan_check() {
        VulkanCheck::Usable => checked(open(Some(WgpuBackend::Vulkan))),
        VulkanCheck::Crashes(why) => {
            log::warn!("{why}; trying OpenGL instead");
            checked(open(Some(WgpuBackend::Gl))).map_err(|gl| format!("{why}; and on OpenGL {gl}"))
        }
        VulkanCheck::Absent(_) => checked(open(None)),
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
