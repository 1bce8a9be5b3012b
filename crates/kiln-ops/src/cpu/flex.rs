//! Zero-copy access to tensors on burn's CPU backend (flex) for kiln's CPU kernels
//! ([`crate::cpu::attention`], [`crate::cpu::conv`], [`crate::cpu::linear`], [`crate::cpu::norm`],
//! [`crate::cpu::activation`]): the values of an f32 tensor (or a weight of any float dtype) as a slice, and a `Vec<f32>` handed
//! back as a tensor, without the copies `into_data`/`from_data` make.

use burn::tensor::{DType, Device, Tensor, TensorData};
use burn_flex::{Flex, FlexTensor};

/// The tensor's flex primitive, contiguous, when `t` is an f32 tensor on flex without autodiff
/// (`None` otherwise: another device, a tracked tensor or another dtype). A tensor that is already
/// contiguous is shared, not copied.
pub(crate) fn f32_tensor<const D: usize>(t: &Tensor<D>) -> Option<FlexTensor> {
    primitive(t, &[DType::F32])
}

/// The weight's flex primitive, contiguous, when `t` is an f32, f16 or bf16 tensor on flex without
/// autodiff: what [`crate::cpu::weights::WeightRows`] reads.
pub(crate) fn weight_tensor<const D: usize>(t: &Tensor<D>) -> Option<FlexTensor> {
    primitive(t, &[DType::F32, DType::F16, DType::BF16])
}

/// Whether kiln's CPU kernels can run on `t`: on flex, without autodiff, one of `dtypes`.
pub(crate) fn on_flex<const D: usize>(t: &Tensor<D>, dtypes: &[DType]) -> bool {
    let device = t.device();
    dtypes.contains(&t.dtype()) && !device.is_autodiff() && device == Device::flex()
}

/// `t`'s flex primitive, contiguous (shared, not copied, when it already is), where [`on_flex`].
fn primitive<const D: usize>(t: &Tensor<D>, dtypes: &[DType]) -> Option<FlexTensor> {
    if !on_flex(t, dtypes) {
        return None;
    }
    Some(t.clone().try_into_primitive::<Flex>().ok()?.to_contiguous())
}

/// The values of a primitive from [`f32_tensor`], in row-major order.
pub(crate) fn values(t: &FlexTensor) -> &[f32] {
    t.storage::<f32>()
}

/// `values` (row-major) as an f32 tensor of `shape` on flex, moved, not copied.
pub(crate) fn tensor<const D: usize>(values: Vec<f32>, shape: [usize; D]) -> Tensor<D> {
    Tensor::from_primitive::<Flex>(FlexTensor::from_data(TensorData::new(values, shape)))
}

/// An output buffer's base pointer, shared by the parallel tasks of a CPU kernel that each write
/// their own disjoint part of it (the kernel's SAFETY comments say which).
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(pub(crate) *mut f32);
// SAFETY: the kernels using it give each task a disjoint set of elements to write.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer (a method, so closures capture the `Sync` wrapper rather than its field).
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}
