//! kiln's CPU kernels for burn's flex backend (f32 activations, inference; the linear and
//! convolution weights f32, f16 or bf16: `cpu/weights.rs`): each returns `None` where it does
//! not apply (another device or dtype, autodiff, a geometry it does not cover), and the op's entry
//! point in the crate root falls back to burn's op.

pub mod activation;
pub mod attention;
pub mod conv;
pub(crate) mod flex;
pub mod linear;
pub mod norm;
pub(crate) mod weights;

use std::cell::RefCell;
use std::thread::LocalKey;

/// Runs `f` with this thread's value of `key`, a kernel's scratch kept between calls so it is
/// not allocated again (a fresh one if it is in use further up this thread's stack: a task's gemm
/// threads may run another call's task while they wait).
pub(crate) fn with_scratch<T: Default, R>(key: &'static LocalKey<RefCell<T>>, f: impl FnOnce(&mut T) -> R) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => f(&mut scratch),
        Err(_) => f(&mut T::default()),
    })
}

/// A fixed pseudo-random sequence in [-1, 1) (xorshift), the kernels' test inputs.
#[cfg(test)]
pub(crate) fn test_values(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2654435761).max(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32) * 2.0 - 1.0
        })
        .collect()
}
