//! FLUX.1's transformer: `FluxTransformer2DModel`, its double- and single-stream blocks (its
//! rotary positions are [`crate::rope`], its attention is [`crate::attention::JointAttention`] with
//! [`crate::attention::Layout::TextFirstRotary`]).

pub mod block;
pub mod config;
pub mod model;

pub use config::FluxTransformerConfig;
pub use model::FluxTransformer2DModel;
