//! Linear layers, the op entry point: kiln's CPU kernel ([`crate::cpu::linear`]), burn's matmul
//! elsewhere.

use burn::tensor::Tensor;

use crate::{cpu, profile};

/// `torch.nn.functional.linear(x, weight, bias)`: `x · weightᵀ + bias`, the weight in PyTorch's
/// layout. On the CPU (flex, f32 activations) by kiln's kernel, which reads f16/bf16 weights as
/// they were loaded ([`cpu::linear`]); everywhere else (GPUs, autodiff) by burn's matmul, the
/// weight cast to the activations' dtype if it differs. kiln's models call their linear layers
/// through this (kiln-nn's `Linear`).
///
/// # Shapes
/// - x: `[..., in]`, weight: `[out, in]`, bias: `[out]`
/// - output: `[..., out]`
pub fn linear<const D: usize>(x: Tensor<D>, weight: Tensor<2>, bias: Option<Tensor<1>>) -> Tensor<D> {
    profile::scope("linear", profile::device_of(&x), || {
        if let Some(y) = cpu::linear::linear(&x, &weight, bias.as_ref()) {
            return y;
        }
        let weight = if weight.dtype() == x.dtype() { weight } else { weight.cast(x.dtype()) };
        let y = x.matmul(weight.transpose().unsqueeze::<D>());
        match bias {
            Some(b) if b.dtype() != y.dtype() => {
                let dtype = y.dtype();
                y + b.cast(dtype).unsqueeze::<D>()
            }
            Some(b) => y + b.unsqueeze::<D>(),
            None => y,
        }
    })
}
