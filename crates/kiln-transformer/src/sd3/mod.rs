//! SD 3/3.5's MMDiT: `SD3Transformer2DModel` and its `JointTransformerBlock`.

pub mod block;
pub mod config;
pub mod model;

pub use block::JointTransformerBlock;
pub use config::Sd3TransformerConfig;
pub use model::Sd3Transformer2DModel;
