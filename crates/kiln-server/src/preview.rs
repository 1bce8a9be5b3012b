//! A cheap preview of a running job's latents, for `/sdapi/v1/progress`'s `current_image`: A1111's
//! "Approx cheap" projection (`modules/sd_vae_approx.py` `cheap_approximation`: a linear map of
//! each latent pixel's channels to RGB, `einsum("...lxy,lr -> ...rxy")`, then
//! `clamp((x + 1) / 2, 0, 1)` as `sd_samplers_common.samples_to_images_tensor` does), at the
//! latents' size (1/8 of the image). Factors per family as A1111 has them: SD 1.x/2.x and SDXL
//! (4 channels), SD 3 and FLUX.1 (16; A1111's FLUX rows come from ComfyUI).

use image::RgbImage;
use kiln_pipeline::PipelineKind;

use crate::jobs::Latents;

/// SD 1.x/2.x's latent → RGB factors (rows: latent channels).
const SD_FACTORS: [[f32; 3]; 4] = [[0.298, 0.207, 0.208], [0.187, 0.286, 0.173], [-0.158, 0.189, 0.264], [-0.184, -0.271, -0.473]];
/// SDXL's.
const SDXL_FACTORS: [[f32; 3]; 4] = [[0.3448, 0.4168, 0.4395], [-0.1953, -0.0290, 0.0250], [0.1074, 0.0886, -0.0163], [-0.3730, -0.2499, -0.2088]];
/// SD 3's.
const SD3_FACTORS: [[f32; 3]; 16] = [
    [-0.0645, 0.0177, 0.1052],
    [0.0028, 0.0312, 0.0650],
    [0.1848, 0.0762, 0.0360],
    [0.0944, 0.0360, 0.0889],
    [0.0897, 0.0506, -0.0364],
    [-0.0020, 0.1203, 0.0284],
    [0.0855, 0.0118, 0.0283],
    [-0.0539, 0.0658, 0.1047],
    [-0.0057, 0.0116, 0.0700],
    [-0.0412, 0.0281, -0.0039],
    [0.1106, 0.1171, 0.1220],
    [-0.0248, 0.0682, -0.0481],
    [0.0815, 0.0846, 0.1207],
    [-0.0120, -0.0055, -0.0867],
    [-0.0749, -0.0634, -0.0456],
    [-0.1418, -0.1457, -0.1259],
];
/// FLUX.1's.
const FLUX_FACTORS: [[f32; 3]; 16] = [
    [-0.0404, 0.0159, 0.0609],
    [0.0043, 0.0298, 0.0850],
    [0.0328, -0.0749, -0.0503],
    [-0.0245, 0.0085, 0.0549],
    [0.0966, 0.0894, 0.0530],
    [0.0035, 0.0399, 0.0123],
    [0.0583, 0.1184, 0.1262],
    [-0.0191, -0.0206, -0.0306],
    [-0.0324, 0.0055, 0.1001],
    [0.0955, 0.0659, -0.0545],
    [-0.0504, 0.0231, -0.0013],
    [0.0500, -0.0008, -0.0088],
    [0.0982, 0.0941, 0.0976],
    [-0.1233, -0.0280, -0.0897],
    [-0.0005, -0.0530, -0.0020],
    [-0.1273, -0.0932, -0.0680],
];

/// The first image of `latents` (a model of `kind`'s) as RGB, or `None` for latents whose channel
/// count is not the family's.
pub fn latents_to_rgb(latents: &Latents, kind: PipelineKind) -> Option<RgbImage> {
    let factors: &[[f32; 3]] = match kind {
        PipelineKind::StableDiffusionXL => &SDXL_FACTORS,
        PipelineKind::StableDiffusion3 => &SD3_FACTORS,
        PipelineKind::Flux => &FLUX_FACTORS,
        _ => &SD_FACTORS,
    };
    let [batch, channels, h, w] = latents.shape;
    if batch == 0 || channels != factors.len() || latents.values.len() < channels * h * w {
        return None;
    }
    let plane = h * w;
    let mut image = RgbImage::new(u32::try_from(w).ok()?, u32::try_from(h).ok()?);
    for (i, pixel) in image.pixels_mut().enumerate() {
        for (r, value) in pixel.0.iter_mut().enumerate() {
            let x: f32 = factors.iter().enumerate().map(|(l, f)| latents.values[l * plane + i] * f[r]).sum();
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
        let image = latents_to_rgb(&latents, PipelineKind::StableDiffusion).unwrap();
        assert_eq!(image.get_pixel(0, 0).0, [165, 153, 154]); // (1.298/2, 1.207/2, 1.208/2) × 255, truncated
        assert_eq!(image.get_pixel(1, 0).0, [127, 127, 127]);
        assert!(latents_to_rgb(&Latents { shape: [1, 16, 1, 1], values: vec![0.0; 16] }, PipelineKind::StableDiffusion).is_none());
        // 16 channels on SD 3: channel 2 at 1 → its row (0.1848, 0.0762, 0.0360)
        let mut values = vec![0.0; 16];
        values[2] = 1.0;
        let image = latents_to_rgb(&Latents { shape: [1, 16, 1, 1], values: values.clone() }, PipelineKind::StableDiffusion3).unwrap();
        assert_eq!(image.get_pixel(0, 0).0, [151, 137, 132]); // (1.1848/2, 1.0762/2, 1.0360/2) × 255, truncated
        // and FLUX: channel 2's row (0.0328, -0.0749, -0.0503)
        let image = latents_to_rgb(&Latents { shape: [1, 16, 1, 1], values }, PipelineKind::Flux).unwrap();
        assert_eq!(image.get_pixel(0, 0).0, [131, 117, 121]);
        assert!(latents_to_rgb(&Latents { shape: [1, 4, 1, 1], values: vec![0.0; 4] }, PipelineKind::Flux).is_none());
    }
}
