//! Small tensor helpers shared by the samplers' `step` functions.

use burn::tensor::{Tensor, TensorData};

use crate::euler::PredictionType;
use crate::NoiseSource;

/// Draws noise shaped like `sample` (same device and dtype) from `source`, like diffusers'
/// `randn_tensor(sample.shape, generator=generator, dtype=sample.dtype)`.
pub fn noise_like(sample: &Tensor<4>, source: &mut dyn NoiseSource) -> Tensor<4> {
    let dims = sample.dims();
    let values = source.randn(&dims);
    assert_eq!(
        values.len(),
        dims.iter().product::<usize>(),
        "NoiseSource returned {} values for shape {dims:?}",
        values.len()
    );
    Tensor::from_data(TensorData::new(values, dims), (&sample.device(), sample.dtype()))
}

/// Dynamic thresholding (`_threshold_sample` in diffusers' DDPM/DDIM/DPM-Solver/UniPC/DEIS/LCM/TCD,
/// Imagen §2.3): per batch item, s = clamp(quantile(|x|, ratio), 1, max_value), then
/// x = clamp(x, −s, s) / s. The quantile interpolates linearly between order statistics like
/// `torch.quantile`.
///
/// # Shapes
/// - sample: `[batch, channels, height, width]`; returns the same shape.
pub fn threshold_sample(sample: Tensor<4>, ratio: f64, max_value: f64) -> Tensor<4> {
    let [b, c, h, w] = sample.dims();
    let n = c * h * w;
    let flat: Tensor<2> = sample.reshape([b, n]);
    let sorted = flat.clone().abs().sort(1);
    let rank = (ratio as f32 * (n - 1) as f32) as f64;
    let below = rank.floor() as usize;
    let above = rank.ceil() as usize;
    let weight = rank - below as f64;
    let lo = sorted.clone().slice([0..b, below..below + 1]);
    let hi = sorted.slice([0..b, above..above + 1]);
    // torch.lerp: start + w (end − start) for w < 0.5, else end − (end − start)(1 − w)
    let s = if weight < 0.5 {
        lo.clone() + (hi - lo).mul_scalar(weight)
    } else {
        hi.clone() - (hi - lo).mul_scalar(1.0 - weight)
    };
    // torch.clamp(s, min=1, max=max_value): max wins when min > max
    let s = s.clamp_min(1.0).clamp_max(max_value).expand([b, n]);
    let clamped = flat.max_pair(s.clone().neg()).min_pair(s.clone()) / s;
    clamped.reshape([b, c, h, w])
}

/// The input scaling of the σ-parameterised samplers (Euler, Euler a, Heun, LMS, KDPM2):
/// `sample / ((sigma**2 + 1) ** 0.5)`, computed in float32 like diffusers' 0-dim σ tensor (an f64
/// sqrt differs by one ulp at e.g. σ = 0.0100013).
pub(crate) fn k_scale_model_input(sample: Tensor<4>, sigma: f64) -> Tensor<4> {
    let sigma = sigma as f32;
    sample.div_scalar((sigma * sigma + 1.0).sqrt())
}

/// x̂₀ of the σ-parameterised samplers at noise level σ (`pred_original_sample` in diffusers'
/// `scheduling_euler_ancestral_discrete.py`, `scheduling_lms_discrete.py`,
/// `scheduling_heun_discrete.py`, `scheduling_k_dpm_2_discrete.py`), float32 scalars:
/// ε: `sample - σ·out`; v: `out·(−σ/√(σ²+1)) + sample/(σ²+1)`; sample: `out`.
pub(crate) fn k_pred_original_sample(
    prediction_type: PredictionType,
    model_output: Tensor<4>,
    sample: &Tensor<4>,
    sigma: f32,
) -> Tensor<4> {
    match prediction_type {
        PredictionType::Epsilon => sample.clone() - model_output.mul_scalar(sigma),
        PredictionType::VPrediction => {
            let s2 = sigma * sigma + 1.0;
            model_output.mul_scalar(-sigma / s2.sqrt()) + sample.clone().div_scalar(s2)
        }
        PredictionType::Sample => model_output,
    }
}
