//! `HeunDiscreteScheduler` (diffusers `schedulers/scheduling_heun_discrete.py`): Algorithm 2 of
//! Karras et al. 2022 without churn (k-diffusion's `sample_heun`). Each step calls the model twice:
//! an Euler predictor from σ_i to σ_{i+1}, then the trapezoidal corrector with the derivative at
//! σ_{i+1}. The schedule therefore has 2n − 1 timesteps (`[t0, t1, t1, t2, t2, …]`) and 2n sigmas
//! (`[σ0, σ1, σ1, …, σ_{n−1}, σ_{n−1}, 0]`); the last step is a plain Euler step to σ = 0.

use burn::tensor::Tensor;

use crate::class::SchedulerClass;
use crate::common::{interleave, k_init_noise_sigma, k_pred_original_sample, k_scale_model_input, k_sigma_schedule, read_steps_offset, PredictionType, TimestepSpacing};
use crate::config::SchedulerConfig;
use crate::error::{Result, SchedulerError};
use crate::float::{cumprod_f32, f32r};
use crate::schedule::{betas_for_alpha_bar_exp, BetaConfig, BetaSchedule, SigmaSpacing};
use crate::scheduler::{check_steps, NoiseSource, Schedule, Scheduler, StepOptions};

/// The first half of a Heun step, kept for the second call (`prev_derivative`, `dt`, `sample`).
#[derive(Debug, Clone)]
struct FirstOrder {
    derivative: Tensor<4>,
    dt: f32,
    sample: Tensor<4>,
}

/// HeunDiscreteScheduler, built for `num_inference_steps`.
#[derive(Debug, Clone)]
pub struct HeunScheduler {
    prediction_type: PredictionType,
    clip_sample: Option<f64>,
    /// timesteps: 2n − 1 timesteps; sigmas: 2n interleaved sigmas, float32 like diffusers.
    schedule: Schedule,
    /// `Some` between the two model calls of a step (`state_in_first_order` is `dt is None`).
    first: Option<FirstOrder>,
}

impl HeunScheduler {
    pub fn new(config: &SchedulerConfig, num_inference_steps: usize, _options: &StepOptions) -> Result<Self> {
        // Heun alone also knows beta_schedule = "exp" (betas_for_alpha_bar with exp(−12 t)), which
        // the shared BetaConfig does not: read the other keys with "linear" in its place.
        let exp_schedule =
            matches!(config.values.get("beta_schedule"), Some(serde_json::Value::String(s)) if s == "exp");
        let patched;
        let config = if exp_schedule {
            patched = config.clone().with("beta_schedule", "linear");
            &patched
        } else {
            config
        };
        let mut r = config.reader("HeunDiscreteScheduler");
        let betas = BetaConfig::read(
            &mut r,
            0.00085,
            0.012,
            "linear",
            &["linear", "scaled_linear", "squaredcos_cap_v2", "exp"],
            false,
        )?;
        let prediction_type = PredictionType::read(&mut r)?;
        let sigma_spacing = SigmaSpacing::read(&mut r, true)?;
        let clip = r.bool("clip_sample", false)?;
        let clip_range = r.f64("clip_sample_range", 1.0)?;
        let spacing = TimestepSpacing::read(&mut r, "linspace")?;
        let steps_offset = read_steps_offset(&mut r, betas.num_train_timesteps)?;
        r.finish();

        let n = num_inference_steps;
        check_steps(n, betas.num_train_timesteps)?;
        let alphas_cumprod: Vec<f64> = if exp_schedule && !matches!(betas.schedule, BetaSchedule::Trained(_)) {
            let alphas: Vec<f32> =
                betas_for_alpha_bar_exp(betas.num_train_timesteps, 0.999).iter().map(|b| 1.0 - b).collect();
            cumprod_f32(&alphas).into_iter().map(|a| a as f64).collect()
        } else {
            betas.alphas_cumprod()
        };
        let schedule = k_sigma_schedule(&alphas_cumprod, spacing, sigma_spacing, n, steps_offset);
        // sigmas = concatenate([sigmas, [0.0]]).astype(float32), then
        // cat([sigmas[:1], sigmas[1:-1].repeat_interleave(2), sigmas[-1:]])
        let mut sigmas: Vec<f64> = schedule.sigmas.into_iter().map(f32r).collect();
        sigmas.push(0.0);
        let sigmas = interleave(&sigmas, false);
        // timesteps = cat([timesteps[:1], timesteps[1:].repeat_interleave(2)]).to(float32)
        let t: Vec<f64> = schedule.timesteps.into_iter().map(f32r).collect();
        if t.is_empty() {
            return Err(SchedulerError::Invalid("the schedule has no timesteps".into()));
        }
        let mut timesteps = vec![t[0]];
        for &v in &t[1..] {
            timesteps.push(v);
            timesteps.push(v);
        }
        let init_noise_sigma = k_init_noise_sigma(&sigmas, spacing);
        Ok(Self {
            prediction_type,
            clip_sample: clip.then_some(clip_range),
            first: None,
            schedule: Schedule { class: SchedulerClass::Heun, timesteps, sigmas, init_noise_sigma },
        })
    }
}

impl Scheduler for HeunScheduler {
    fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    fn order(&self) -> usize {
        2
    }

    fn scale_model_input(&self, sample: Tensor<4>, step_index: usize) -> Tensor<4> {
        k_scale_model_input(sample, self.schedule.sigmas[step_index])
    }

    fn step(
        &mut self,
        model_output: Tensor<4>,
        step_index: usize,
        sample: Tensor<4>,
        _noise: &mut dyn NoiseSource,
    ) -> Tensor<4> {
        let first_order = self.first.is_none();
        let (sigma, sigma_next) = if first_order {
            (self.schedule.sigmas[step_index] as f32, self.schedule.sigmas[step_index + 1] as f32)
        } else {
            (self.schedule.sigmas[step_index - 1] as f32, self.schedule.sigmas[step_index] as f32)
        };
        // gamma = 0: sigma_hat == sigma
        let sigma_hat = sigma;
        let sigma_input = if first_order { sigma_hat } else { sigma_next };
        let pred_original_sample =
            k_pred_original_sample(self.prediction_type, model_output, &sample, sigma_input);
        let pred_original_sample = match self.clip_sample {
            Some(range) => pred_original_sample.clamp(-range, range),
            None => pred_original_sample,
        };
        match self.first.take() {
            None => {
                // 1. first order: Euler from σ to σ_next, remembered for the corrector
                let derivative = (sample.clone() - pred_original_sample).div_scalar(sigma_hat);
                let dt = sigma_next - sigma_hat;
                let prev_sample = sample.clone() + derivative.clone().mul_scalar(dt);
                self.first = Some(FirstOrder { derivative, dt, sample });
                prev_sample
            }
            Some(first) => {
                // 2. second order: the mean of both derivatives, from the first call's sample
                let derivative = (sample - pred_original_sample).div_scalar(sigma_next);
                let derivative = (first.derivative + derivative).div_scalar(2.0);
                first.sample + derivative.mul_scalar(first.dt)
            }
        }
    }

    fn add_noise(&self, original: Tensor<4>, noise: Tensor<4>, step_index: usize) -> Tensor<4> {
        original + noise.mul_scalar(self.schedule.sigmas[step_index] as f32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `HeunDiscreteScheduler(beta_schedule="exp")` (ᾱ(t) = exp(−12t)) with 10 steps, diffusers 0.42.1.
    #[test]
    fn exp_beta_schedule_matches_diffusers() {
        let config = SchedulerConfig::default().with("beta_schedule", "exp");
        let s = HeunScheduler::new(&config, 10, &StepOptions::default()).unwrap();
        let sigmas = s.sigmas().unwrap();
        assert_eq!(sigmas.len(), 20);
        assert_eq!(s.timesteps().len(), 19);
        for (i, want) in [(0, 403.4220886230469), (1, 207.26046752929688), (17, 0.10987384617328644), (19, 0.0)] {
            assert!((sigmas[i] - want).abs() <= 1e-6 * want, "sigmas[{i}] = {}, diffusers {want}", sigmas[i]);
        }
        assert_eq!(s.init_noise_sigma(), sigmas[0]);
    }

    #[test]
    fn interleaving() {
        assert_eq!(interleave(&[3.0, 2.0, 1.0, 0.0], false), vec![3.0, 2.0, 2.0, 1.0, 1.0, 0.0]);
        assert_eq!(interleave(&[3.0, 2.0, 0.0], true), vec![3.0, 2.0, 2.0, 0.0, 0.0, 0.0]);
    }
}
