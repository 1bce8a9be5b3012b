//! kiln's CPU kernels for burn's flex backend (f32, inference): each returns `None` where it does
//! not apply (another device or dtype, autodiff, a geometry it does not cover), and the op's entry
//! point in the crate root falls back to burn's op.

pub mod activation;
pub mod attention;
pub mod conv;
pub(crate) mod flex;
pub mod norm;
