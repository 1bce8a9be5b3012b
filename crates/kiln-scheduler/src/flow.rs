//! What the two flow-matching samplers share (diffusers
//! `schedulers/scheduling_flow_match_euler_discrete.py` and `…_heun_discrete.py`): the σ range
//! `__init__` leaves behind, the static shift, the step-count and `shift` checks, and
//! `scale_noise` (img2img's noising, kiln's `add_noise`).
//!
//! In flow matching the sample at σ is `σ · noise + (1 − σ) · x₀`, σ runs from 1 (pure noise) to
//! 0, the model predicts the velocity `noise − x₀`, and the timestep the model sees is `σ · 1000`.

use burn::tensor::Tensor;

use crate::error::{Result, SchedulerError};

/// The most inference steps a flow sampler is built for. diffusers sets no bound (flow models
/// take continuous time); kiln's keeps a typo from allocating a schedule of billions.
pub const MAX_FLOW_STEPS: usize = 10_000;

/// `num_inference_steps` in 1..=[`MAX_FLOW_STEPS`].
pub(crate) fn check_flow_steps(steps: usize) -> Result<()> {
    if steps == 0 {
        return Err(SchedulerError::ZeroSteps(steps));
    }
    if steps > MAX_FLOW_STEPS {
        return Err(SchedulerError::Invalid(format!(
            "num_inference_steps {steps} is more than a flow-matching sampler takes (at most {MAX_FLOW_STEPS})"
        )));
    }
    Ok(())
}

/// A config number that must be finite and positive (`shift`, `num_train_timesteps`).
pub(crate) fn check_positive(key: &str, value: f64) -> Result<()> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(SchedulerError::Unsupported {
            key: key.into(),
            value: value.to_string(),
            allowed: "a finite number above 0".into(),
        })
    }
}

/// The static shift `shift · σ / (1 + (shift − 1) · σ)` in float32, the way a torch tensor or a
/// float32 numpy array computes it with a Python float `shift` (the scalar rounded to float32
/// first, each operation rounded).
pub(crate) fn shift_f32(shift: f64, sigma: f32) -> f32 {
    let s = shift as f32;
    let s1 = (shift - 1.0) as f32;
    s * sigma / (1.0 + s1 * sigma)
}

/// The same shift on a float64 numpy array.
pub(crate) fn shift_f64(shift: f64, sigma: f64) -> f64 {
    shift * sigma / (1.0 + (shift - 1.0) * sigma)
}

/// `sigma_max`, `sigma_min` after `__init__`: the training σ = t / N for t = N … 1 (float32), put
/// through the static shift unless `use_dynamic_shifting` (then `shift` is `None`).
pub(crate) fn train_sigma_range(num_train_timesteps: usize, shift: Option<f64>) -> (f64, f64) {
    let n = num_train_timesteps as f32;
    let (max, min) = (n / n, 1.0 / n);
    match shift {
        Some(shift) => (shift_f32(shift, max) as f64, shift_f32(shift, min) as f64),
        None => (max as f64, min as f64),
    }
}

/// `scale_noise(sample, t, noise)`: `σ · noise + (1 − σ) · sample` in float32.
///
/// # Shapes
/// - original, noise: `[batch, channels, height, width]`; returns the same shape.
pub(crate) fn scale_noise(original: Tensor<4>, noise: Tensor<4>, sigma: f64) -> Tensor<4> {
    let sigma = sigma as f32;
    noise.mul_scalar(sigma) + original.mul_scalar(1.0 - sigma)
}

/// The first step index of a flow-matching img2img run (`pipeline_stable_diffusion_3_img2img.py`
/// and `pipeline_flux_img2img.py::get_timesteps`): `init_timestep = min(steps · strength, steps)`
/// stays a float, `t_start = int(max(steps − init_timestep, 0))`, and the loop begins at
/// `t_start · order`. (SD's pipelines truncate `steps · strength` first, which can start one step
/// later: 25 steps at strength 0.3 start at index 18 there and 17 here.)
pub fn flow_img2img_begin_index(num_inference_steps: usize, strength: f64, order: usize) -> Result<usize> {
    if !(0.0..=1.0).contains(&strength) || strength.is_nan() {
        return Err(SchedulerError::Strength(strength));
    }
    let n = num_inference_steps as f64;
    let init_timestep = (n * strength).min(n);
    let t_start = (n - init_timestep).max(0.0) as usize;
    if t_start >= num_inference_steps {
        return Err(SchedulerError::Invalid(format!(
            "strength {strength} with {num_inference_steps} steps leaves no denoising step; raise --strength or --steps"
        )));
    }
    Ok(t_start * order)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn begin_index_keeps_the_float_product() {
        // 25 × 0.3 = 7.5: SD truncates it to 7 (t_start 18), flow pipelines take int(17.5) = 17
        assert_eq!(flow_img2img_begin_index(25, 0.3, 1).unwrap(), 17);
        assert_eq!(crate::img2img_begin_index(25, 0.3, 1).unwrap(), 18);
        assert_eq!(flow_img2img_begin_index(28, 0.8, 1).unwrap(), 5);
        assert_eq!(flow_img2img_begin_index(10, 0.55, 1).unwrap(), 4);
        assert_eq!(flow_img2img_begin_index(10, 0.55, 2).unwrap(), 8);
        assert_eq!(flow_img2img_begin_index(4, 1.0, 1).unwrap(), 0);
        assert_eq!(flow_img2img_begin_index(10, 0.05, 1).unwrap(), 9);
        assert!(flow_img2img_begin_index(10, 0.0, 1).is_err());
        assert!(flow_img2img_begin_index(10, 1.5, 1).is_err());
        assert!(flow_img2img_begin_index(10, f64::NAN, 1).is_err());
    }

    #[test]
    fn static_shift_of_the_training_range() {
        // FlowMatchEulerDiscreteScheduler(shift=3.0).sigma_min / sigma_max, diffusers 0.42.1
        let (max, min) = train_sigma_range(1000, Some(3.0));
        assert_eq!(max, 1.0);
        assert_eq!(min, 0.002994012087583542);
        let (max, min) = train_sigma_range(1000, None);
        assert_eq!((max, min as f32), (1.0, 0.001));
    }
}
