//! GEGLU, the op entry point: kiln's CPU kernel ([`crate::cpu::activation`]), burn's ops
//! elsewhere.

use burn::tensor::activation::gelu;
use burn::tensor::Tensor;

use crate::cpu;

/// diffusers' GEGLU after its projection: `hidden * gelu(gate)` with the exact (erf) GELU, where
/// `h` holds `hidden` and `gate` side by side (`proj(x).chunk(2, dim=-1)`); by kiln's CPU kernel
/// where it applies ([`cpu::activation`]), else by burn's ops.
///
/// # Shapes
/// - h: `[batch, seq, 2 · inner]` → `[batch, seq, inner]`
pub fn geglu(h: Tensor<3>) -> Tensor<3> {
    if let Some(out) = cpu::activation::geglu(&h) {
        return out;
    }
    let inner = h.dims()[2] / 2;
    let hidden = h.clone().narrow(2, 0, inner);
    let gate = h.narrow(2, inner, inner);
    hidden * gelu(gate)
}
