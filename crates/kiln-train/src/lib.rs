//! # kiln-train
//!
//! The groundwork of kiln's own demo model (issue 6): a synthetic captioned dataset of simple
//! scenes ([`dataset`]), deterministic from a seed with a held-out split of caption
//! combinations, and the image analysis ([`analysis`]) the semantic test uses to check that a
//! generated picture matches its caption. The training loops (burn's autodiff on the same model
//! code as inference) come next.

pub mod analysis;
pub mod dataset;
pub mod train;
