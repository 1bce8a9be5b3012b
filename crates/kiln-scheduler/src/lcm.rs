//! `LCMScheduler` (diffusers `schedulers/scheduling_lcm.py`): multistep latent consistency
//! sampling (Luo et al. 2023, Algorithm 3): each step maps x_t to the consistency function's x₀
//! estimate (with the boundary-condition scalings c_skip, c_out) and re-noises it to the next
//! timestep with fresh noise.
//!
//! The timesteps are a subset of the `original_inference_steps`-step distillation schedule;
//! `timestep_spacing` and `steps_offset` are config keys LCM keeps but does not use. Scalars are
//! computed in `f32` like diffusers' 0-dim float32 tensors.

use burn::tensor::Tensor;

use crate::config::{ConfigReader, SchedulerConfig};
use crate::ddim::{add_noise_alphas, SampleClip};
use crate::error::{Result, SchedulerError};
use crate::euler::{PredictionType, TimestepSpacing};
use crate::schedule::BetaConfig;
use crate::{check_steps, noise_like, NoiseSource, Scheduler, SchedulerClass, StepOptions};

/// The config LCM and TCD share (their `__init__` signatures are identical).
#[derive(Debug, Clone)]
pub(crate) struct ConsistencyConfig {
    pub(crate) betas: BetaConfig,
    pub(crate) original_inference_steps: usize,
    pub(crate) clip: SampleClip,
    pub(crate) set_alpha_to_one: bool,
    pub(crate) prediction_type: PredictionType,
    pub(crate) timestep_scaling: f64,
}

impl ConsistencyConfig {
    /// Reads every `__init__` key of `LCMScheduler` / `TCDScheduler` with their defaults.
    pub(crate) fn read(r: &mut ConfigReader<'_>) -> Result<Self> {
        let betas = BetaConfig::read(
            r,
            0.00085,
            0.012,
            "scaled_linear",
            &["linear", "scaled_linear", "squaredcos_cap_v2"],
            true,
        )?;
        let original_inference_steps = r.usize("original_inference_steps", 50)?;
        let clip = SampleClip::read(r, Some(false))?;
        let set_alpha_to_one = r.bool("set_alpha_to_one", true)?;
        let _steps_offset = r.usize("steps_offset", 0)?; // unused by set_timesteps
        let prediction_type = PredictionType::read(r)?;
        let _spacing = TimestepSpacing::read(r, "leading")?; // unused by set_timesteps
        let timestep_scaling = r.f64("timestep_scaling", 10.0)?;
        Ok(Self { betas, original_inference_steps, clip, set_alpha_to_one, prediction_type, timestep_scaling })
    }

    /// ᾱ (float32 values) and `final_alpha_cumprod`.
    pub(crate) fn alphas(&self) -> (Vec<f64>, f32) {
        let alphas_cumprod = self.betas.alphas_cumprod();
        let final_alpha_cumprod = if self.set_alpha_to_one { 1.0 } else { alphas_cumprod[0] as f32 };
        (alphas_cumprod, final_alpha_cumprod)
    }
}

/// `set_timesteps(num_inference_steps)` of LCM and TCD (strength 1, no custom timesteps): the
/// distillation schedule `[k − 1, 2k − 1, …, original_steps · k − 1]` with `k = T // original_steps`,
/// reversed, sampled at `floor(linspace(0, len, n, endpoint=False))`.
pub(crate) fn consistency_timesteps(train: usize, original_steps: usize, n: usize) -> Result<Vec<f64>> {
    check_steps(n, train)?;
    if original_steps == 0 || original_steps > train {
        return Err(SchedulerError::Unsupported {
            key: "original_inference_steps".into(),
            value: original_steps.to_string(),
            allowed: format!("an integer in 1..={train} (num_train_timesteps)"),
        });
    }
    if n > original_steps {
        return Err(SchedulerError::Invalid(format!(
            "num_inference_steps ({n}) cannot be larger than original_inference_steps ({original_steps}): \
             the timesteps are a subset of the {original_steps}-step distillation schedule"
        )));
    }
    let k = (train / original_steps) as i64;
    let origin: Vec<i64> = (1..=original_steps as i64).rev().map(|i| i * k - 1).collect();
    // np.linspace(0, len, num=n, endpoint=False): arange(n) * (len / n)
    let step = origin.len() as f64 / n as f64;
    Ok((0..n).map(|i| origin[(i as f64 * step).floor() as usize] as f64).collect())
}

/// LCMScheduler, built for `num_inference_steps`.
#[derive(Debug, Clone)]
pub struct LcmScheduler {
    /// float32 values, as diffusers' `alphas_cumprod`.
    alphas_cumprod: Vec<f64>,
    final_alpha_cumprod: f32,
    prediction_type: PredictionType,
    clip: SampleClip,
    timestep_scaling: f32,
    timesteps: Vec<f64>,
}

impl LcmScheduler {
    pub fn new(config: &SchedulerConfig, num_inference_steps: usize, options: &StepOptions) -> Result<Self> {
        let _ = options;
        let mut r = config.reader("LCMScheduler");
        let c = ConsistencyConfig::read(&mut r)?;
        r.finish();
        let timesteps =
            consistency_timesteps(c.betas.num_train_timesteps, c.original_inference_steps, num_inference_steps)?;
        let (alphas_cumprod, final_alpha_cumprod) = c.alphas();
        Ok(Self {
            alphas_cumprod,
            final_alpha_cumprod,
            prediction_type: c.prediction_type,
            clip: c.clip,
            timestep_scaling: c.timestep_scaling as f32,
            timesteps,
        })
    }
}

/// `get_scalings_for_boundary_condition_discrete(t)` with σ_data = 0.5, in float32 (the timestep
/// is an int64 tensor, so `t * timestep_scaling` is a float32 tensor): c_skip = σ²/(s² + σ²),
/// c_out = s/√(s² + σ²) with s = t · timestep_scaling. `σ² / x` is `x.reciprocal() * σ²` in torch.
pub(crate) fn boundary_scalings(timestep: f64, timestep_scaling: f32) -> (f32, f32) {
    let sigma_data2 = 0.25f32;
    let scaled = timestep as f32 * timestep_scaling;
    let denom = scaled * scaled + sigma_data2;
    let c_skip = (1.0 / denom) * sigma_data2;
    let c_out = scaled / denom.sqrt();
    (c_skip, c_out)
}

impl Scheduler for LcmScheduler {
    fn class(&self) -> SchedulerClass {
        SchedulerClass::Lcm
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn step(
        &mut self,
        model_output: Tensor<4>,
        step_index: usize,
        sample: Tensor<4>,
        noise: &mut dyn NoiseSource,
    ) -> Tensor<4> {
        let timestep = self.timesteps[step_index];
        // the next timestep; the last step "re-noises" to its own timestep (unused: no noise)
        let prev_timestep = self.timesteps.get(step_index + 1).copied().unwrap_or(timestep) as i64;
        let alpha_prod_t = self.alphas_cumprod[timestep as usize] as f32;
        let alpha_prod_t_prev = if prev_timestep >= 0 {
            self.alphas_cumprod[prev_timestep as usize] as f32
        } else {
            self.final_alpha_cumprod
        };
        let beta_prod_t = 1.0 - alpha_prod_t;
        let beta_prod_t_prev = 1.0 - alpha_prod_t_prev;
        let (c_skip, c_out) = boundary_scalings(timestep, self.timestep_scaling);

        let predicted_original_sample = match self.prediction_type {
            PredictionType::Epsilon => (sample.clone() - model_output.clone().mul_scalar(beta_prod_t.sqrt()))
                .div_scalar(alpha_prod_t.sqrt()),
            PredictionType::Sample => model_output.clone(),
            PredictionType::VPrediction => sample.clone().mul_scalar(alpha_prod_t.sqrt())
                - model_output.clone().mul_scalar(beta_prod_t.sqrt()),
        };
        let predicted_original_sample = self.clip.apply(predicted_original_sample);
        // the consistency model's output
        let denoised = predicted_original_sample.mul_scalar(c_out) + sample.mul_scalar(c_skip);
        if step_index != self.timesteps.len() - 1 {
            let noise = noise_like(&model_output, noise);
            denoised.mul_scalar(alpha_prod_t_prev.sqrt()) + noise.mul_scalar(beta_prod_t_prev.sqrt())
        } else {
            denoised
        }
    }

    fn add_noise(&self, original: Tensor<4>, noise: Tensor<4>, step_index: usize) -> Tensor<4> {
        add_noise_alphas(&self.alphas_cumprod, self.timesteps[step_index], original, noise)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timesteps_are_a_subset_of_the_distillation_schedule() {
        // diffusers 0.42.1, LCMScheduler().set_timesteps(4) and (3)
        assert_eq!(consistency_timesteps(1000, 50, 4).unwrap(), vec![999.0, 759.0, 499.0, 259.0]);
        assert_eq!(consistency_timesteps(1000, 50, 3).unwrap(), vec![999.0, 679.0, 339.0]);
        assert_eq!(consistency_timesteps(1000, 50, 1).unwrap(), vec![999.0]);
    }

    #[test]
    fn too_many_steps_or_bad_original_steps_are_errors() {
        let msg = consistency_timesteps(1000, 20, 25).unwrap_err().to_string();
        assert!(msg.contains("original_inference_steps"), "{msg}");
        assert!(consistency_timesteps(1000, 0, 1).is_err());
        assert!(consistency_timesteps(1000, 1001, 1).is_err());
        assert!(consistency_timesteps(1000, 50, 0).is_err());
    }
}
