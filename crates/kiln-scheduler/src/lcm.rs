//! `LCMScheduler` (diffusers `schedulers/scheduling_lcm.py`): multistep latent consistency
//! sampling (Luo et al. 2023, Algorithm 3): each step maps x_t to the consistency function's x₀
//! estimate (with the boundary-condition scalings c_skip, c_out) and re-noises it to the next
//! timestep with fresh noise.
//!
//! The timesteps are a subset of the `original_inference_steps`-step distillation schedule;
//! `timestep_spacing` and `steps_offset` are config keys LCM keeps but does not use. Scalars are
//! computed in `f32` like diffusers' 0-dim float32 tensors.

use burn::tensor::Tensor;

use crate::class::SchedulerClass;
use crate::common::{add_noise_alphas, consistency_timesteps, noise_like, ConsistencyConfig, PredictionType, SampleClip};
use crate::config::SchedulerConfig;
use crate::error::Result;
use crate::scheduler::{NoiseSource, Schedule, Scheduler, StepOptions};

/// LCMScheduler, built for `num_inference_steps`.
#[derive(Debug, Clone)]
pub struct LcmScheduler {
    /// float32 values, as diffusers' `alphas_cumprod`.
    alphas_cumprod: Vec<f64>,
    final_alpha_cumprod: f32,
    prediction_type: PredictionType,
    clip: SampleClip,
    timestep_scaling: f32,
    /// `timesteps`, `sigmas`, `init_noise_sigma` (see [`Schedule`])
    schedule: Schedule,
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
            schedule: Schedule { class: SchedulerClass::Lcm, timesteps, sigmas: Vec::new(), init_noise_sigma: 1.0 },
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
    fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    fn step(
        &mut self,
        model_output: Tensor<4>,
        step_index: usize,
        sample: Tensor<4>,
        noise: &mut dyn NoiseSource,
    ) -> Tensor<4> {
        let timestep = self.schedule.timesteps[step_index];
        // the next timestep; the last step "re-noises" to its own timestep (unused: no noise)
        let prev_timestep = self.schedule.timesteps.get(step_index + 1).copied().unwrap_or(timestep) as i64;
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
        if step_index != self.schedule.timesteps.len() - 1 {
            let noise = noise_like(&model_output, noise);
            denoised.mul_scalar(alpha_prod_t_prev.sqrt()) + noise.mul_scalar(beta_prod_t_prev.sqrt())
        } else {
            denoised
        }
    }

    fn add_noise(&self, original: Tensor<4>, noise: Tensor<4>, step_index: usize) -> Tensor<4> {
        add_noise_alphas(&self.alphas_cumprod, self.schedule.timesteps[step_index], original, noise)
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
