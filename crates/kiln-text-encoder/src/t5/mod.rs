//! T5's encoder (`T5EncoderModel`, the third text encoder of SD 3 and the second of FLUX.1) and its
//! tokenizer (`T5TokenizerFast`), as transformers 5.25 implements them.

mod charsmap;
pub mod config;
pub mod model;
pub mod tokenizer;

pub use config::{ResolvedT5Config, T5Activation, T5Config};
pub use model::T5EncoderModel;
pub use tokenizer::T5Tokenizer;
