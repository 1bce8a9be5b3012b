//! diffusers' `VaeImageProcessor` (`image_processor.py`) for the images a pipeline takes and
//! returns: `preprocess` of init images (`[0, 255]` → `[-1, 1]`), the mask processor
//! (`do_convert_grayscale`, `do_binarize`, no normalisation), `postprocess` to 8-bit RGB.
//!
//! kiln does not resample: an init image or mask whose size differs from the requested output is
//! refused with both sizes named (diffusers would resize it with Lanczos).

use burn::tensor::{Device, Tensor, TensorData};
use std::path::Path;

use image::{DynamicImage, GrayImage, RgbImage};

use crate::error::PipelineError;

/// An init image as the pipeline's tensor: `pil_to_numpy` (`x / 255` in float32) then
/// `normalize` (`2x − 1`).
///
/// # Shapes
/// - returns `[1, 3, height, width]`
pub fn image_to_tensor(image: &RgbImage, device: &Device) -> Tensor<4> {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let mut planar = vec![0f32; 3 * h * w];
    for (i, px) in image.pixels().enumerate() {
        for c in 0..3 {
            let v = px.0[c] as f32 / 255.0;
            planar[c * h * w + i] = 2.0 * v - 1.0;
        }
    }
    Tensor::from_data(TensorData::new(planar, [1, 3, h, w]), device)
}

/// PIL's `Image.convert("L")` (ITU-R 601-2 luma in fixed point:
/// `(R·19595 + G·38470 + B·7471 + 0x8000) >> 16`), which the mask processor applies to colour
/// masks. Grey images are taken as they are; an alpha channel is dropped first, as PIL does.
pub fn pil_grayscale(image: &DynamicImage) -> GrayImage {
    match image {
        DynamicImage::ImageLuma8(g) => g.clone(),
        DynamicImage::ImageLumaA8(_) | DynamicImage::ImageLuma16(_) | DynamicImage::ImageLumaA16(_) => image.to_luma8(),
        _ => {
            let rgb = image.to_rgb8();
            GrayImage::from_fn(rgb.width(), rgb.height(), |x, y| {
                let [r, g, b] = rgb.get_pixel(x, y).0;
                let l = (r as u32 * 19595 + g as u32 * 38470 + b as u32 * 7471 + 0x8000) >> 16;
                image::Luma([l as u8])
            })
        }
    }
}

/// The mask processor's binarisation of one 8-bit mask value: `x / 255 < 0.5` → 0, else 1.
fn binarize(v: u8) -> f32 {
    if (v as f32 / 255.0) < 0.5 { 0.0 } else { 1.0 }
}

/// The inpainting mask as the mask processor leaves it: `x / 255`, then binarised
/// (`< 0.5` → 0, else 1). 1 marks the pixels to repaint.
///
/// # Shapes
/// - returns `[1, 1, height, width]`
pub fn mask_to_tensor(mask: &GrayImage, device: &Device) -> Tensor<4> {
    let (w, h) = (mask.width() as usize, mask.height() as usize);
    let values: Vec<f32> = mask.pixels().map(|p| binarize(p.0[0])).collect();
    Tensor::from_data(TensorData::new(values, [1, 1, h, w]), device)
}

/// `torch.nn.functional.interpolate(mask, size=(h, w))` in its default `nearest` mode:
/// source index `floor(dst · (in / out))` with the scale in float32.
///
/// # Shapes
/// - mask: `[1, 1, H, W]`; returns `[1, 1, h, w]`
pub fn interpolate_nearest(mask: &GrayImage, h: usize, w: usize, device: &Device) -> Tensor<4> {
    let (src_w, src_h) = (mask.width() as usize, mask.height() as usize);
    let index = |dst: usize, src: usize, out: usize| -> usize {
        let scale = src as f32 / out as f32;
        ((dst as f32 * scale).floor() as usize).min(src - 1)
    };
    let mut values = Vec::with_capacity(h * w);
    for y in 0..h {
        for x in 0..w {
            values.push(binarize(mask.get_pixel(index(x, src_w, w) as u32, index(y, src_h, h) as u32).0[0]));
        }
    }
    Tensor::from_data(TensorData::new(values, [1, 1, h, w]), device)
}

/// `[n, 3, h, w]` in [-1, 1] → RGB8 images, as diffusers' `VaeImageProcessor.postprocess` +
/// `numpy_to_pil` do it (`(x * 0.5 + 0.5).clamp(0, 1)`, `(x * 255).round()`).
pub fn to_rgb_images(image: Tensor<4>) -> Result<Vec<RgbImage>, PipelineError> {
    let [n, c, h, w] = image.dims();
    if c != 3 {
        return Err(PipelineError::Input { what: "decoded image channels", value: c.to_string(), allowed: "3".into() });
    }
    let image = image.mul_scalar(0.5).add_scalar(0.5).clamp(0.0, 1.0).permute([0, 2, 3, 1]);
    let values: Vec<f32> = image
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| PipelineError::Input { what: "decoded image", value: format!("{e:?}"), allowed: "f32 data".into() })?;
    Ok((0..n)
        .map(|i| {
            let bytes: Vec<u8> = values[i * h * w * 3..(i + 1) * h * w * 3]
                .iter()
                // numpy's round() is half-to-even
                .map(|&v| (v * 255.0).round_ties_even() as u8)
                .collect();
            RgbImage::from_raw(w as u32, h as u32, bytes).expect("buffer size matches")
        })
        .collect())
}

/// The largest init image or mask side kiln decodes (its pixels are read before any check of
/// the whole file could see them: a small PNG can declare 20000 × 20000).
pub const MAX_IMAGE_SIDE: u32 = 16384;

/// The size of the init image or mask at `path`, from its header (nothing decoded), checked
/// against [`MAX_IMAGE_SIDE`].
pub fn image_size(path: &Path, what: &str) -> Result<(usize, usize), PipelineError> {
    if !path.is_file() {
        return Err(PipelineError::Image(format!("{what} {} does not exist or is not a file", path.display())));
    }
    let (w, h) = image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| PipelineError::Image(format!("cannot read {what} {}: {e}", path.display())))?
        .into_dimensions()
        .map_err(|e| PipelineError::Image(format!("{what} {} is not a readable PNG or JPEG image: {e}", path.display())))?;
    if w > MAX_IMAGE_SIDE || h > MAX_IMAGE_SIDE {
        return Err(PipelineError::Image(format!("{what} {} is {w}x{h}; kiln takes images of at most {MAX_IMAGE_SIDE} pixels a side", path.display())));
    }
    Ok((w as usize, h as usize))
}

/// Decodes the image at `path` (whose size [`image_size`] checked), within the same limits.
pub fn decode_image(path: &Path, what: &str) -> Result<image::DynamicImage, PipelineError> {
    let mut reader = image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| PipelineError::Image(format!("cannot read {what} {}: {e}", path.display())))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    reader.limits(limits);
    reader.decode().map_err(|e| PipelineError::Image(format!("{what} {} is not a readable PNG or JPEG image: {e}", path.display())))
}

/// [`image_size`] for an image in memory (an upload): its size from the header, nothing decoded.
pub fn image_size_of(bytes: &[u8], what: &str) -> Result<(usize, usize), PipelineError> {
    let (w, h) = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| PipelineError::Image(format!("cannot read {what}: {e}")))?
        .into_dimensions()
        .map_err(|e| PipelineError::Image(format!("{what} is not a readable PNG or JPEG image: {e}")))?;
    if w > MAX_IMAGE_SIDE || h > MAX_IMAGE_SIDE {
        return Err(PipelineError::Image(format!("{what} is {w}x{h}; kiln takes images of at most {MAX_IMAGE_SIDE} pixels a side")));
    }
    Ok((w as usize, h as usize))
}

/// [`decode_image`] for an image in memory, within the same limits.
pub fn decode_image_bytes(bytes: &[u8], what: &str) -> Result<image::DynamicImage, PipelineError> {
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| PipelineError::Image(format!("cannot read {what}: {e}")))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    reader.limits(limits);
    reader.decode().map_err(|e| PipelineError::Image(format!("{what} is not a readable PNG or JPEG image: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pil_luma_formula() {
        // values PIL 11 gives for Image.new("RGB", (1, 1), c).convert("L").getpixel((0, 0))
        for (rgb, l) in [([255, 0, 0], 76), ([0, 255, 0], 150), ([200, 100, 50], 124), ([60, 160, 240], 139), ([255, 255, 255], 255)] {
            let img = DynamicImage::ImageRgb8(RgbImage::from_pixel(1, 1, image::Rgb(rgb)));
            assert_eq!(pil_grayscale(&img).get_pixel(0, 0).0[0], l, "{rgb:?}");
        }
    }

    #[test]
    fn mask_binarised_at_one_half() {
        let device = Device::flex();
        let mask = GrayImage::from_raw(4, 1, vec![0, 127, 128, 255]).unwrap();
        let t: Vec<f32> = mask_to_tensor(&mask, &device).into_data().try_into_vec::<f32>().unwrap();
        assert_eq!(t, vec![0.0, 0.0, 1.0, 1.0]);
    }

    #[test]
    fn nearest_takes_the_top_left_pixel_of_each_cell() {
        let device = Device::flex();
        let mask = GrayImage::from_fn(16, 8, |x, y| image::Luma([if x % 8 == 0 && y % 8 == 0 { 255 } else { 0 }]));
        let t: Vec<f32> = interpolate_nearest(&mask, 1, 2, &device).into_data().try_into_vec::<f32>().unwrap();
        assert_eq!(t, vec![1.0, 1.0]);
    }
}
