//! `DDPMScheduler` (diffusers `schedulers/scheduling_ddpm.py`): ancestral sampling of denoising
//! diffusion probabilistic models (Ho et al. 2020, eq. 6–7), with the fixed variances, sample
//! clipping and dynamic thresholding.
//!
//! diffusers computes every scalar of `step` on 0-dim float32 tensors (ᾱ comes from the float32
//! `alphas_cumprod`); the coefficients here are computed in `f32` the same way, operation for
//! operation, because `1 − ᾱ_t/ᾱ_prev` cancels and would otherwise differ in the 6th digit.

use burn::tensor::Tensor;

use crate::class::SchedulerClass;
use crate::common::{add_noise_alphas, check_timestep_range, ddim_timesteps, noise_like, read_steps_offset, PredictionType, SampleClip, TimestepSpacing};
use crate::config::SchedulerConfig;
use crate::error::{Result, SchedulerError};
use crate::schedule::BetaConfig;
use crate::scheduler::{check_steps, NoiseSource, Schedule, Scheduler, StepOptions};

/// `variance_type`: the σ_t² of the reverse step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VarianceType {
    /// β̃_t = (1 − ᾱ_prev)/(1 − ᾱ_t) · β_t (the posterior variance).
    FixedSmall,
    /// β̃_t, applied as exp(½ log β̃_t).
    FixedSmallLog,
    /// β_t = 1 − ᾱ_t/ᾱ_prev.
    FixedLarge,
}

impl VarianceType {
    fn read(r: &mut crate::config::ConfigReader<'_>) -> Result<Self> {
        const ALL: [&str; 6] =
            ["fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range"];
        let value = r.choice("variance_type", "fixed_small", &ALL)?;
        let why = match value.as_str() {
            "fixed_small" => return Ok(Self::FixedSmall),
            "fixed_small_log" => return Ok(Self::FixedSmallLog),
            "fixed_large" => return Ok(Self::FixedLarge),
            // diffusers: `_get_variance` returns log β_t < 0 and `step` takes its square root: NaN
            "fixed_large_log" => {
                "diffusers' DDPMScheduler.step takes the square root of log(beta_t) < 0 and produces NaN"
            }
            // diffusers splits a 2C-channel model output into (prediction, predicted variance)
            _ => {
                "it needs the variance predicted by the model (a UNet with twice the latent channels), \
                 which kiln's Scheduler::step does not take"
            }
        };
        Err(SchedulerError::Unsupported {
            key: "variance_type".into(),
            value: format!("{value} ({why})"),
            allowed: "fixed_small, fixed_small_log, fixed_large".into(),
        })
    }
}

/// DDPMScheduler, built for `num_inference_steps`.
#[derive(Debug, Clone)]
pub struct DdpmScheduler {
    /// float32 values, as diffusers' `alphas_cumprod`.
    alphas_cumprod: Vec<f64>,
    variance_type: VarianceType,
    prediction_type: PredictionType,
    clip: SampleClip,
    /// `timesteps`, `sigmas`, `init_noise_sigma` (see [`Schedule`])
    schedule: Schedule,
}

impl DdpmScheduler {
    pub fn new(config: &SchedulerConfig, num_inference_steps: usize, options: &StepOptions) -> Result<Self> {
        let _ = options;
        let mut r = config.reader("DDPMScheduler");
        let betas = BetaConfig::read(
            &mut r,
            0.0001,
            0.02,
            "linear",
            &["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"],
            true,
        )?;
        let variance_type = VarianceType::read(&mut r)?;
        let clip = SampleClip::read(&mut r, Some(true))?;
        let prediction_type = PredictionType::read(&mut r)?;
        let spacing = TimestepSpacing::read(&mut r, "leading")?;
        let steps_offset = read_steps_offset(&mut r, betas.num_train_timesteps)?;
        r.finish();

        let train = betas.num_train_timesteps;
        check_steps(num_inference_steps, train)?;
        // set_timesteps: the same three spacings as DDIM, as int64
        let timesteps = ddim_timesteps(spacing, train, num_inference_steps, steps_offset);
        check_timestep_range(&timesteps, train, steps_offset)?;
        Ok(Self { alphas_cumprod: betas.alphas_cumprod(), variance_type, prediction_type, clip, schedule: Schedule { class: SchedulerClass::Ddpm, timesteps, sigmas: Vec::new(), init_noise_sigma: 1.0 } })
    }

    /// ᾱ_t for t = 0..num_train_timesteps (diffusers' `noise_scheduler.alphas_cumprod`, what its
    /// training scripts noise the latents with).
    pub fn alphas_cumprod(&self) -> &[f64] {
        &self.alphas_cumprod
    }

    /// `previous_timestep(t)`: the timestep after the first occurrence of `t`, or −1 after the last.
    fn previous_timestep(&self, t: f64) -> i64 {
        let index = self.schedule.timesteps.iter().position(|&s| s == t).expect("t is one of the timesteps");
        if index == self.schedule.timesteps.len() - 1 { -1 } else { self.schedule.timesteps[index + 1] as i64 }
    }
}

impl Scheduler for DdpmScheduler {
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
        let t = self.schedule.timesteps[step_index];
        let prev_t = self.previous_timestep(t);
        // 0-dim float32 tensors in diffusers
        let alpha_prod_t = self.alphas_cumprod[t as usize] as f32;
        let alpha_prod_t_prev = if prev_t >= 0 { self.alphas_cumprod[prev_t as usize] as f32 } else { 1.0f32 };
        let beta_prod_t = 1.0 - alpha_prod_t;
        let beta_prod_t_prev = 1.0 - alpha_prod_t_prev;
        let current_alpha_t = alpha_prod_t / alpha_prod_t_prev;
        let current_beta_t = 1.0 - current_alpha_t;

        // eq. 15: the predicted x₀
        let pred_original_sample = match self.prediction_type {
            PredictionType::Epsilon => (sample.clone() - model_output.clone().mul_scalar(beta_prod_t.sqrt()))
                .div_scalar(alpha_prod_t.sqrt()),
            PredictionType::Sample => model_output.clone(),
            PredictionType::VPrediction => sample.clone().mul_scalar(alpha_prod_t.sqrt())
                - model_output.clone().mul_scalar(beta_prod_t.sqrt()),
        };
        let pred_original_sample = self.clip.apply(pred_original_sample);

        // eq. 7: the posterior mean μ̃_t(x_t, x₀)
        let pred_original_sample_coeff = (alpha_prod_t_prev.sqrt() * current_beta_t) / beta_prod_t;
        let current_sample_coeff = current_alpha_t.sqrt() * beta_prod_t_prev / beta_prod_t;
        let pred_prev_sample = pred_original_sample.mul_scalar(pred_original_sample_coeff)
            + sample.mul_scalar(current_sample_coeff);

        if t > 0.0 {
            let variance_noise = noise_like(&model_output, noise);
            // _get_variance
            let variance = ((1.0 - alpha_prod_t_prev) / (1.0 - alpha_prod_t) * current_beta_t).max(1e-20);
            let std = match self.variance_type {
                VarianceType::FixedSmall => variance.sqrt(),
                VarianceType::FixedSmallLog => (0.5 * variance.ln()).exp(),
                VarianceType::FixedLarge => current_beta_t.sqrt(),
            };
            pred_prev_sample + variance_noise.mul_scalar(std)
        } else {
            pred_prev_sample
        }
    }

    fn add_noise(&self, original: Tensor<4>, noise: Tensor<4>, step_index: usize) -> Tensor<4> {
        add_noise_alphas(&self.alphas_cumprod, self.schedule.timesteps[step_index], original, noise)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> SchedulerConfig {
        SchedulerConfig::from_json_str(json, "test").unwrap()
    }

    #[test]
    fn unsupported_variance_types_are_errors_that_say_why() {
        for (v, why) in [("fixed_large_log", "NaN"), ("learned", "predicted"), ("learned_range", "predicted")] {
            let c = config(&format!(r#"{{"variance_type": "{v}"}}"#));
            let msg = DdpmScheduler::new(&c, 10, &StepOptions::default()).unwrap_err().to_string();
            assert!(msg.contains("variance_type") && msg.contains(v) && msg.contains(why), "{msg}");
        }
        let msg = DdpmScheduler::new(&config(r#"{"variance_type": "cubic"}"#), 10, &StepOptions::default())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("fixed_small_log"), "{msg}");
    }

    #[test]
    fn leading_timesteps_past_the_training_range_are_an_error() {
        // diffusers: IndexError in step (t = 1000 with 1000 training steps)
        let c = config(r#"{"steps_offset": 1}"#);
        assert!(DdpmScheduler::new(&c, 1000, &StepOptions::default()).is_err());
        assert!(DdpmScheduler::new(&c, 999, &StepOptions::default()).is_ok());
    }
}
