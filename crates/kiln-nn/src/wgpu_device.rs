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

use std::sync::OnceLock;

use burn::tensor::wgpu::{wgpu, WgpuBackend, WgpuInitError};
use burn::tensor::{Device, DeviceKind};

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

/// burn's wgpu runtime on Vulkan (SPIR-V, f16, cooperative-matrix tensor cores), or an error
/// saying why not — including an adapter cubecl's kernels would crash (see the module docs).
pub fn vulkan() -> Result<Device, String> {
    match vulkan_check() {
        VulkanCheck::Usable => open(Some(WgpuBackend::Vulkan)),
        VulkanCheck::Crashes(why) | VulkanCheck::Absent(why) => Err(why),
    }
}

/// burn's wgpu runtime on the graphics API wgpu picks (Vulkan where there is one, else Metal,
/// DirectX or OpenGL), except that a Vulkan adapter cubecl would crash is passed over for OpenGL,
/// with a warning saying why.
pub fn auto() -> Result<Device, String> {
    match vulkan_check() {
        VulkanCheck::Usable => open(Some(WgpuBackend::Vulkan)),
        VulkanCheck::Crashes(why) => {
            log::warn!("{why}; using OpenGL instead");
            open(Some(WgpuBackend::Gl)).map_err(|gl| format!("{why}; and {gl}"))
        }
        VulkanCheck::Absent(_) => open(None),
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
