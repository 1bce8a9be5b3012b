//! What a job asks for ([`GenRequest`], checked by the route that took it) and what it gives
//! ([`GenOutput`]: PNGs with their parameters text).

use std::path::PathBuf;

use image::{GrayImage, RgbImage};
use kiln_pipeline::GenerateOptions;

/// What a generation request asks for, checked by the route that took it.
#[derive(Debug, Clone)]
pub struct GenRequest {
    /// A served model's name.
    pub model: String,
    pub options: GenerateOptions,
    /// The prompt as the client wrote it (the parameters text keeps `<lora:…>`).
    pub shown_prompt: String,
    pub init_image: Option<RgbImage>,
    pub mask: Option<GrayImage>,
    /// img2img / inpainting strength (the route applied diffusers' default).
    pub strength: f64,
    /// LoRAs to merge for this request, with their scales (resolved in `--lora-dir`).
    pub loras: Vec<(PathBuf, f64)>,
    /// A1111's batches: image i is its own run with seed + i (`processing.py`: `all_seeds =
    /// [seed + x …]`), each the picture `kiln generate --seed S+i` draws; otherwise one run of
    /// `num_images_per_prompt` images from one generator, as diffusers and `kiln generate -n`.
    pub seed_per_image: bool,
}

/// One generated picture: its PNG (with the parameters text) and that text.
#[derive(Debug, Clone)]
pub struct GenImage {
    pub png: Vec<u8>,
    pub infotext: String,
}

#[derive(Debug, Clone)]
pub struct GenOutput {
    pub images: Vec<GenImage>,
    pub model: String,
    pub seconds: f64,
}
