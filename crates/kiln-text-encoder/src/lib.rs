//! # kiln-text-encoder
//!
//! The CLIP text encoders of Stable Diffusion, ported from transformers 5.24
//! (`models/clip/modeling_clip.py`): [`ClipTextModel`] covers `CLIPTextModel` (SD 1.x CLIP ViT-L/14,
//! SD 2.x OpenCLIP ViT-H, SDXL's first encoder) and `CLIPTextModelWithProjection` (SDXL's
//! OpenCLIP bigG), configured from `text_encoder*/config.json` ([`ClipTextConfig`]) and loaded from
//! `model[.fp16].safetensors`. Every layer's hidden state is returned, so clip_skip and SDXL's
//! penultimate-layer conditioning are a matter of indexing.
//!
//! [`ClipTokenizer`] is transformers' `CLIPTokenizer` on the HF `tokenizers` library, read from a
//! `tokenizer*/` folder as the Hub ships it.
//!
//! [`T5EncoderModel`] and [`T5Tokenizer`] (module [`t5`]) are the T5 v1.1 encoder SD 3 and FLUX.1
//! condition on, with transformers' tokenizer pipeline.
//!
//! ```no_run
//! use burn::tensor::{DType, Device};
//! use kiln_text_encoder::{ClipTextModel, ClipTokenizer, LoadOptions};
//! let device = Device::flex();
//! let tokenizer = ClipTokenizer::from_dir("sd15/tokenizer")?;
//! let encoder = ClipTextModel::load("sd15/text_encoder".as_ref(), &LoadOptions::new(&device))?;
//! let prompt = tokenizer.encode("a photo of a cat")?;
//! if prompt.dropped_tokens > 0 {
//!     eprintln!("truncated: {}", prompt.dropped_text);
//! }
//! let out = encoder.encode(&[prompt.ids], &device)?;
//! let context = out.last_hidden_state; // [1, 77, 768]
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod config;
pub mod error;
pub mod model;
pub mod t5;
pub mod tokenizer;

pub use config::{Activation, ClipArchitecture, ClipTextConfig, ResolvedClipConfig};
pub use error::{TextEncoderError, TokenizerError};
pub use kiln_nn::LoadOptions;
pub use model::{ClipTextModel, ClipTextOutput};
pub use t5::{T5EncoderModel, T5Tokenizer};
pub use tokenizer::{ClipTokenizer, TokenizedPrompt};
