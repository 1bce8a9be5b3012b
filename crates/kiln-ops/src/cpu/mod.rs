//! kiln's CPU kernels for burn's flex backend (f32 activations, inference; the linear and
//! convolution weights f32, f16 or bf16: [`weights`]): each returns `None` where it does
//! not apply (another device or dtype, autodiff, a geometry it does not cover), and the op's entry
//! point in the crate root falls back to burn's op.

pub mod activation;
pub mod attention;
pub mod conv;
pub(crate) mod flex;
pub mod linear;
pub mod norm;
pub(crate) mod weights;
