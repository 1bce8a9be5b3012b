//! FLUX.1's transformer: `FluxTransformer2DModel`, its double- and single-stream blocks, its
//! attention and rotary positions.

pub mod attention;
pub mod block;
pub mod config;
pub mod model;
pub mod rope;

pub use config::FluxTransformerConfig;
pub use model::FluxTransformer2DModel;
