//! burn's flash-attention kernels (cubek's `blackbox_accelerated` and `unit` routines) called with
//! a tile configuration of kiln's choosing, as extra candidates for [`crate::gpu::route::choose`].
//!
//! burn's `attention` op autotunes its tensor-core flash kernel over 2, 4 and 8 planes (warps) per
//! cube, each plane holding one 16-row tile of queries and stepping through the keys one 16-column
//! tile at a time (`BlackboxAcceleratedStrategy { seq_q: 1, seq_kv: 1 }`,
//! `burn-cubecl-0.22.1/src/kernel/attention/tune.rs`). That is little work between two softmax
//! rescales: on the H100 it ran at 25 TFLOP/s at head dim 64 where PyTorch's SDPA ran at 460
//! (docs/performance.md#h100-2026-11-26). FlashAttention's speed comes from larger tiles per warp; cubek's routine takes
//! them as its `seq_q` / `seq_kv` partition sizes, which burn leaves at 1. [`FLASH_TILES`] are such
//! configurations: on a GPU with f16 cooperative matrices, at f16/bf16, `auto` times each next to
//! burn's op and keeps one only where it agrees with burn's output and is faster.

use burn::backend::{Backend, DispatchDevice, backend_extension, tensor::FloatTensor};
use burn::tensor::{DType, Device, Tensor, ops::AttentionModuleOptions};
use burn_cubecl::kernel::attention::{AttentionStrategy, attention};
use cubek_attention::forward::routines::blackbox_accelerated::BlackboxAcceleratedStrategy;

/// Which of burn's flash kernels [`flash_attention`] launches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlashKernel {
    /// The unit routine (no tensor cores; burn's autotune tries it last): runs on every cubecl
    /// GPU, which is how the wgpu test lane exercises this module's dispatch.
    Unit,
    /// The tensor-core routine: `planes` planes per cube, each computing `seq_q` 16-row query
    /// tiles against `seq_kv` 16-column key tiles per step.
    Accelerated { planes: u8, seq_q: u8, seq_kv: u8 },
}

impl FlashKernel {
    /// Query rows one cube covers, with cooperative-matrix tiles of 16 rows (the size NVIDIA's
    /// Vulkan driver offers for f16); the kernel needs it to divide the sequence length.
    fn rows(self) -> usize {
        match self {
            FlashKernel::Unit => 1,
            FlashKernel::Accelerated { planes, seq_q, .. } => planes as usize * seq_q as usize * 16,
        }
    }
}

/// The tile configurations `auto` measures besides burn's own autotuned choice, named as
/// [`crate::gpu::route::RouteChoice`] reports them: planes, query tiles and key tiles per plane.
pub const FLASH_TILES: [(&str, FlashKernel); 3] = [
    ("flash-4p-1q-4kv", FlashKernel::Accelerated { planes: 4, seq_q: 1, seq_kv: 4 }),
    ("flash-4p-2q-2kv", FlashKernel::Accelerated { planes: 4, seq_q: 2, seq_kv: 2 }),
    ("flash-8p-1q-2kv", FlashKernel::Accelerated { planes: 8, seq_q: 1, seq_kv: 2 }),
];

/// Whether `device` is a cubecl GPU whose cooperative matrices take f16 operands (what cubek's
/// tensor-core routine validates against; burn's autotune asks the same).
pub fn has_f16_tensor_cores(device: &Device) -> bool {
    match device.as_dispatch() {
        DispatchDevice::Cube(cube) => {
            let f16 = burn::backend::cubecl::dtype_to_storage_type(DType::F16);
            cube.client().properties().features.matmul.cmma.iter().any(|c| c.a_type == f16 && c.b_type == f16)
        }
        #[allow(unreachable_patterns)]
        _ => false,
    }
}

/// Attention smaller than this (`4 · batch · heads · seq_q · seq_k · head_dim` FLOPs) is left to
/// burn's own choice: at most a few microseconds to gain on a GPU with tensor cores, against a
/// kernel compilation per tile configuration at first use. SD 1.5 at 512 px keeps its two largest
/// self-attentions (43 and 5.4 GFLOP), SDXL at 1024 px its two (86 and 11) and its largest
/// cross-attention (1.6).
pub const MIN_FLASH_TILE_FLOP: usize = 1 << 30;

/// The widest head dim (padded to a multiple of 16) kiln's tile sizes are tried at: a plane holds
/// `seq_q × head_dim / 16` query and output tiles, and past 128 (FlashAttention-2's own limit is
/// 256) the larger partitions would spill registers. Leaves out the VAE's single 512-wide head.
pub const MAX_FLASH_TILE_HEAD_DIM: usize = 128;

/// The [`FLASH_TILES`] that apply to attention of `q` `[batch, heads, seq_q, head_dim]` against
/// `seq_k` keys in `dtype` on `device`: none on flex, under autodiff, in f32 (the routine's tiles
/// are f16 whatever the problem's dtype), without f16 tensor cores, below
/// [`MIN_FLASH_TILE_FLOP`] or above [`MAX_FLASH_TILE_HEAD_DIM`]; only those whose cube covers a
/// divisor of `seq_q`.
pub fn flash_tile_candidates(device: &Device, dtype: DType, q: [usize; 4], seq_k: usize) -> Vec<(&'static str, FlashKernel)> {
    // flex and autodiff devices are not cubecl ones: has_f16_tensor_cores says no for them
    if !matches!(dtype, DType::F16 | DType::BF16) {
        return Vec::new();
    }
    let tiles = flash_tiles_for(q, seq_k);
    if tiles.is_empty() || !has_f16_tensor_cores(device) {
        return Vec::new();
    }
    tiles
}

/// The shape rules of [`flash_tile_candidates`]: at least [`MIN_FLASH_TILE_FLOP`], head dim at
/// most [`MAX_FLASH_TILE_HEAD_DIM`], cube rows dividing `seq_q`.
fn flash_tiles_for(q: [usize; 4], seq_k: usize) -> Vec<(&'static str, FlashKernel)> {
    let [batch, heads, seq_q, head_dim] = q;
    if 4 * batch * heads * seq_q * seq_k * head_dim < MIN_FLASH_TILE_FLOP || head_dim.next_multiple_of(16) > MAX_FLASH_TILE_HEAD_DIM {
        return Vec::new();
    }
    FLASH_TILES.into_iter().filter(|(_, k)| seq_q % k.rows() == 0).collect()
}

#[backend_extension(Cube, Fusion)]
pub trait FlashAttentionOps: Backend {
    /// `softmax(q kᵀ / √d) v` by burn's flash `kernel`.
    #[fusion(dtype = q, shape = {
        let mut out = q.clone();
        out[3] = v[3];
        out
    })]
    fn flash_attention(q: FloatTensor<Self>, k: FloatTensor<Self>, v: FloatTensor<Self>, causal: bool, kernel: FlashKernel) -> FloatTensor<Self>;
}

impl FlashAttentionOps for burn_cubecl::CubeBackend {
    fn flash_attention(q: FloatTensor<Self>, k: FloatTensor<Self>, v: FloatTensor<Self>, causal: bool, kernel: FlashKernel) -> FloatTensor<Self> {
        let options = AttentionModuleOptions { is_causal: causal, ..Default::default() };
        let strategy = match kernel {
            FlashKernel::Unit => AttentionStrategy::FlashUnit,
            FlashKernel::Accelerated { planes, seq_q, seq_kv } => {
                AttentionStrategy::FlashBlackboxAccelerated(BlackboxAcceleratedStrategy { num_planes: planes, seq_q, seq_kv })
            }
        };
        // burn's `attention` itself answers an invalid tile configuration with its materialising
        // fallback; an unavailable kernel gets the same here (correct, and slow, so `auto` passes it over).
        attention(q.clone(), k.clone(), v.clone(), None, None, options, strategy).unwrap_or_else(|e| {
            log::info!("flash attention {kernel:?} unavailable ({e:?}); burn's fallback instead");
            burn::backend::ops::attention::attention_fallback::<Self>(q, k, v, None, None, options)
        })
    }
}

/// `softmax(q kᵀ / √d) v` by burn's flash `kernel`, on a cubecl GPU (panics on flex: callers take
/// their kernels from [`flash_tile_candidates`], which offers none there). The head dims must suit
/// the kernel (multiples of 16 for the tensor-core routine; kiln pads them first).
///
/// # Shapes
/// - q: `[batch, heads, seq_q, head_dim]`, k: `[batch, heads, seq_k, head_dim]`,
///   v: `[batch, heads, seq_k, value_dim]` → `[batch, heads, seq_q, value_dim]`
pub fn flash_attention(kernel: FlashKernel, q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, causal: bool) -> Tensor<4> {
    let out = <burn::backend::Dispatch as FlashAttentionOps>::flash_attention(q.into_dispatch(), k.into_dispatch(), v.into_dispatch(), causal, kernel);
    Tensor::from_dispatch(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On the CPU, and in f32 anywhere, no tile configuration is offered (so the extension, which
    /// has no flex implementation, is never called there); every configuration covers 64 query
    /// rows or a multiple, so each applies to SD's 64·64 … 8·8 latent sequences that it divides.
    #[test]
    fn no_tiles_on_the_cpu_or_in_f32() {
        let flex = Device::flex();
        assert!(!has_f16_tensor_cores(&flex));
        assert!(flash_tile_candidates(&flex, DType::F16, [2, 8, 4096, 40], 4096).is_empty());
        assert!(flash_tile_candidates(&flex, DType::F32, [2, 8, 4096, 40], 4096).is_empty());
        let rows: Vec<_> = FLASH_TILES.iter().map(|(_, k)| k.rows()).collect();
        assert_eq!(rows, [64, 128, 128]);
    }

    /// Which attention shapes get tile candidates (on a GPU with f16 tensor cores, in f16).
    #[test]
    fn tiles_for_the_large_attentions_only() {
        let count = |q, k| flash_tiles_for(q, k).len();
        // SD 1.5 at 512 px: self-attention at 64² and 32² latents (43, 5.4 GFLOP), not at 16²
        // (0.7) nor the cross-attentions (0.8 at most)
        assert_eq!(count([2, 8, 4096, 40], 4096), 3);
        assert_eq!(count([2, 8, 1024, 80], 1024), 3);
        assert_eq!(count([2, 8, 256, 160], 256), 0);
        assert_eq!(count([2, 8, 4096, 40], 77), 0);
        // SDXL at 1024 px: its largest cross-attention (1.6 GFLOP) too
        assert_eq!(count([2, 10, 4096, 64], 77), 3);
        // the VAE's single 512-wide head at 512 px: too wide
        assert_eq!(count([1, 1, 4096, 512], 4096), 0);
        // 4160 rows: only the 64-row cube divides them
        assert_eq!(flash_tiles_for([2, 8, 4160, 40], 4160).iter().map(|t| t.0).collect::<Vec<_>>(), ["flash-4p-1q-4kv"]);
    }
}
