//! `TCDScheduler` (diffusers `schedulers/scheduling_tcd.py`): trajectory consistency distillation
//! sampling (Zheng et al. 2024, strategic stochastic sampling): each step predicts x₀ and ε,
//! moves to the intermediate timestep s = ⌊(1 − γ) · t_prev⌋, and re-noises from s to t_prev with
//! fresh noise.
//!
//! γ is the `eta` argument of `TCDScheduler.step` (0.3 when `step` is called without it, the
//! paper's recommendation). diffusers' Stable Diffusion pipelines pass their own `eta` argument,
//! default 0.0, to every `step` that accepts one, so a TCD run through `pipe(...)` without `eta=`
//! is deterministic (γ = 0). kiln does what the pipelines do: [`TcdScheduler::new`] takes γ from
//! [`StepOptions::eta`] (default 0.0), like DDIM's η; pass `eta = 0.3` for the paper's setting.
//!
//! TCD keeps `clip_sample`, `thresholding` and `set_alpha_to_one` in its config (they are read and
//! validated) but its `step` uses none of them. Scalars are computed in `f32` like diffusers'
//! 0-dim float32 tensors.

use burn::tensor::Tensor;

use crate::class::SchedulerClass;
use crate::common::{add_noise_alphas, consistency_timesteps, noise_like, ConsistencyConfig, PredictionType};
use crate::config::SchedulerConfig;
use crate::error::{Result, SchedulerError};
use crate::scheduler::{NoiseSource, Schedule, Scheduler, StepOptions};

/// The default γ (`eta`) of `TCDScheduler.step`.
pub const TCD_DEFAULT_GAMMA: f64 = 0.3;

/// TCDScheduler, built for `num_inference_steps`.
#[derive(Debug, Clone)]
pub struct TcdScheduler {
    /// float32 values, as diffusers' `alphas_cumprod`.
    alphas_cumprod: Vec<f64>,
    final_alpha_cumprod: f32,
    prediction_type: PredictionType,
    gamma: f64,
    /// `timesteps`, `sigmas`, `init_noise_sigma` (see [`Schedule`])
    schedule: Schedule,
}

impl TcdScheduler {
    /// Builds TCD with γ = `options.eta` (the pipeline's `eta`, as diffusers passes it to `step`).
    pub fn new(config: &SchedulerConfig, num_inference_steps: usize, options: &StepOptions) -> Result<Self> {
        Self::with_gamma(config, num_inference_steps, options.eta)
    }

    /// Builds TCD with the given γ (`eta` of `TCDScheduler.step`, in [0, 1]; 0 is deterministic).
    pub fn with_gamma(config: &SchedulerConfig, num_inference_steps: usize, gamma: f64) -> Result<Self> {
        if !(0.0..=1.0).contains(&gamma) {
            return Err(SchedulerError::Invalid(format!("TCD's gamma (eta) must be within [0, 1], got {gamma}")));
        }
        let mut r = config.reader("TCDScheduler");
        let c = ConsistencyConfig::read(&mut r)?;
        r.finish();
        // set_timesteps without `original_inference_steps` argument: the same schedule as LCM
        let timesteps =
            consistency_timesteps(c.betas.num_train_timesteps, c.original_inference_steps, num_inference_steps)?;
        let (alphas_cumprod, final_alpha_cumprod) = c.alphas();
        Ok(Self { alphas_cumprod, final_alpha_cumprod, prediction_type: c.prediction_type, gamma, schedule: Schedule { class: SchedulerClass::Tcd, timesteps, sigmas: Vec::new(), init_noise_sigma: 1.0 } })
    }

    /// γ, the `eta` of `TCDScheduler.step`.
    pub fn gamma(&self) -> f64 {
        self.gamma
    }

    fn alpha_prod(&self, t: i64) -> f32 {
        if t >= 0 { self.alphas_cumprod[t as usize] as f32 } else { self.final_alpha_cumprod }
    }
}

impl Scheduler for TcdScheduler {
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
        let timestep = self.schedule.timesteps[step_index] as i64;
        // the next timestep, 0 after the last
        let prev_timestep = self.schedule.timesteps.get(step_index + 1).map_or(0, |&t| t as i64);
        // torch.floor((1 - eta) * prev_timestep): a python float times an int64 tensor is float32
        let timestep_s = (((1.0 - self.gamma) as f32) * prev_timestep as f32).floor() as i64;

        let alpha_prod_t = self.alpha_prod(timestep);
        let beta_prod_t = 1.0 - alpha_prod_t;
        let alpha_prod_t_prev = self.alpha_prod(prev_timestep);
        let alpha_prod_s = self.alpha_prod(timestep_s);
        let beta_prod_s = 1.0 - alpha_prod_s;

        let (pred_original_sample, pred_epsilon) = match self.prediction_type {
            PredictionType::Epsilon => (
                (sample.clone() - model_output.clone().mul_scalar(beta_prod_t.sqrt())).div_scalar(alpha_prod_t.sqrt()),
                model_output.clone(),
            ),
            PredictionType::Sample => (
                model_output.clone(),
                (sample.clone() - model_output.clone().mul_scalar(alpha_prod_t.sqrt())).div_scalar(beta_prod_t.sqrt()),
            ),
            PredictionType::VPrediction => (
                sample.clone().mul_scalar(alpha_prod_t.sqrt()) - model_output.clone().mul_scalar(beta_prod_t.sqrt()),
                model_output.clone().mul_scalar(alpha_prod_t.sqrt()) + sample.clone().mul_scalar(beta_prod_t.sqrt()),
            ),
        };
        // x_s, the sample at the intermediate timestep s
        let pred_noised_sample =
            pred_original_sample.mul_scalar(alpha_prod_s.sqrt()) + pred_epsilon.mul_scalar(beta_prod_s.sqrt());

        if self.gamma > 0.0 && step_index != self.schedule.timesteps.len() - 1 {
            let noise = noise_like(&model_output, noise);
            let ratio = alpha_prod_t_prev / alpha_prod_s;
            pred_noised_sample.mul_scalar(ratio.sqrt()) + noise.mul_scalar((1.0 - ratio).sqrt())
        } else {
            pred_noised_sample
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
    fn gamma_must_be_within_0_and_1() {
        let c = SchedulerConfig::from_json_str("{}", "test").unwrap();
        assert_eq!(TcdScheduler::new(&c, 4, &StepOptions::default()).unwrap().gamma(), 0.0);
        let paper = StepOptions { eta: TCD_DEFAULT_GAMMA, ..StepOptions::default() };
        assert_eq!(TcdScheduler::new(&c, 4, &paper).unwrap().gamma(), 0.3);
        assert!(TcdScheduler::with_gamma(&c, 4, 0.0).is_ok());
        assert!(TcdScheduler::with_gamma(&c, 4, 1.0).is_ok());
        assert!(TcdScheduler::with_gamma(&c, 4, 1.5).is_err());
        assert!(TcdScheduler::with_gamma(&c, 4, f64::NAN).is_err());
    }
}
