//! # kiln-fuzz
//!
//! Fuzzing kiln's parsers of outside bytes on stable Rust ([`targets::TARGETS`]: safetensors
//! headers, PNG text chunks and A1111 parameters, model_index/UNet/VAE/CLIP/scheduler configs,
//! tokenizer folders, Hub ids and revisions, init images), with a mutation loop of its own
//! ([`engine`]) seeded from the committed corpus in `corpus/<target>/`, a counting allocator
//! ([`alloc`]) and a hang watchdog.
//!
//! `cargo run -p kiln-fuzz -- all --seconds 400` fuzzes every target for 400 s each; CI runs
//! every target for a few seconds (`tests/fuzz.rs`). Figures of the long runs: docs/reliability.md.

pub mod alloc;
pub mod current;
pub mod engine;
pub mod targets;

use std::path::{Path, PathBuf};

/// The committed seed corpus.
pub fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus")
}
