//! A cheap preview of a running job's latents, for `/sdapi/v1/progress`'s `current_image`: A1111's
//! "Approx cheap" projection (`modules/sd_vae_approx.py` `cheap_approximation`: a 4 → 3 linear map
//! of each latent pixel, `einsum("...lxy,lr -> ...rxy")`, then `clamp((x + 1) / 2, 0, 1)` as
//! `sd_samplers_common.samples_to_images_tensor` does), at the latents' size (1/8 of the image).

use image::RgbImage;

use crate::jobs::Latents;

/// SD 1.x/2.x's latent → RGB factors (rows: latent channels).
const SD_FACTORS: [[f32; 3]; 4] = [[0.298, 0.207, 0.208], [0.187, 0.286, 0.173], [-0.158, 0.189, 0.264], [-0.184, -0.271, -0.473]];
/// SDXL's.
const SDXL_FACTORS: [[f32; 3]; 4] = [[0.3448, 0.4168, 0.4395], [-0.1953, -0.0290, 0.0250], [0.1074, 0.0886, -0.0163], [-0.3730, -0.2499, -0.2088]];

/// The first image of `latents` as RGB, or `None` for latents without 4 channels.
pub fn latents_to_rgb(latents: &Latents, sdxl: bool) -> Option<RgbImage> {
    let [batch, channels, h, w] = latents.shape;
    if batch == 0 || channels != 4 || latents.values.len() < channels * h * w {
        return None;
    }
    let factors = if sdxl { &SDXL_FACTORS } else { &SD_FACTORS };
    let plane = h * w;
    let mut image = RgbImage::new(u32::try_from(w).ok()?, u32::try_from(h).ok()?);
    for (i, pixel) in image.pixels_mut().enumerate() {
        for (r, value) in pixel.0.iter_mut().enumerate() {
            let x: f32 = (0..4).map(|l| latents.values[l * plane + i] * factors[l][r]).sum();
            *value = (((x + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0) as u8;
        }
    }
    Some(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projects_each_latent_pixel() {
        // one pixel, channel values (1, 0, 0, 0) → the first row: (0.298, 0.207, 0.208)
        let latents = Latents { shape: [1, 4, 1, 2], values: vec![1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0] };
        let image = latents_to_rgb(&latents, false).unwrap();
        assert_eq!(image.get_pixel(0, 0).0, [165, 153, 154]); // (1.298/2, 1.207/2, 1.208/2) × 255, truncated
        assert_eq!(image.get_pixel(1, 0).0, [127, 127, 127]);
        assert!(latents_to_rgb(&Latents { shape: [1, 16, 1, 1], values: vec![0.0; 16] }, false).is_none());
    }
}
