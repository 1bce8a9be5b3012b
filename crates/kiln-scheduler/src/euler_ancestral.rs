//! `EulerAncestralDiscreteScheduler` (diffusers `schedulers/scheduling_euler_ancestral_discrete.py`):
//! k-diffusion's `sample_euler_ancestral` — an Euler step down to σ_down, then fresh noise of
//! standard deviation σ_up, with σ_down² + σ_up² = σ_next² (η = 1).

use burn::tensor::Tensor;

use crate::class::SchedulerClass;
use crate::common::{ancestral_sigmas_f32, k_init_noise_sigma, k_pred_original_sample, k_scale_model_input, k_timesteps, noise_like, read_steps_offset, PredictionType, TimestepSpacing};
use crate::config::SchedulerConfig;
use crate::error::{Result, SchedulerError};
use crate::float::{f32r, np_interp};
use crate::schedule::{sigmas_from_alphas_cumprod, BetaConfig};
use crate::scheduler::{check_steps, NoiseSource, Schedule, Scheduler, StepOptions};

/// EulerAncestralDiscreteScheduler, built for `num_inference_steps`.
#[derive(Debug, Clone)]
pub struct EulerAncestralScheduler {
    prediction_type: PredictionType,
    /// sigmas: n + 1 values (the last is 0), float32 like diffusers.
    schedule: Schedule,
}

impl EulerAncestralScheduler {
    pub fn new(config: &SchedulerConfig, num_inference_steps: usize, _options: &StepOptions) -> Result<Self> {
        let mut r = config.reader("EulerAncestralDiscreteScheduler");
        let betas =
            BetaConfig::read(&mut r, 0.0001, 0.02, "linear", &["linear", "scaled_linear", "squaredcos_cap_v2"], true)?;
        // step() raises NotImplementedError for "sample"
        let prediction_type = match r.choice("prediction_type", "epsilon", &["epsilon", "v_prediction"])?.as_str() {
            "epsilon" => PredictionType::Epsilon,
            _ => PredictionType::VPrediction,
        };
        let spacing = TimestepSpacing::read(&mut r, "linspace")?;
        let steps_offset = read_steps_offset(&mut r, betas.num_train_timesteps)?;
        r.finish();

        let n = num_inference_steps;
        check_steps(n, betas.num_train_timesteps)?;
        let mut alphas_cumprod = betas.alphas_cumprod();
        if betas.rescale_betas_zero_snr {
            // `self.alphas_cumprod[-1] = 2**-24`: keeps the last σ finite
            *alphas_cumprod.last_mut().unwrap() = 2f64.powi(-24);
        }
        let train_sigmas = sigmas_from_alphas_cumprod(&alphas_cumprod);
        let timesteps = k_timesteps(spacing, betas.num_train_timesteps, n, steps_offset);
        if timesteps.is_empty() {
            return Err(SchedulerError::Invalid("the schedule has no timesteps".into()));
        }
        let xp: Vec<f64> = (0..train_sigmas.len()).map(|i| i as f64).collect();
        // sigmas = np.concatenate([np.interp(timesteps, arange(T), sigmas), [0.0]]).astype(np.float32)
        let mut sigmas: Vec<f64> = timesteps.iter().map(|&t| f32r(np_interp(t, &xp, &train_sigmas))).collect();
        sigmas.push(0.0);
        let init_noise_sigma = k_init_noise_sigma(&sigmas, spacing);
        Ok(Self { prediction_type, schedule: Schedule { class: SchedulerClass::EulerAncestral, timesteps, sigmas, init_noise_sigma } })
    }
}

impl Scheduler for EulerAncestralScheduler {
    fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    fn scale_model_input(&self, sample: Tensor<4>, step_index: usize) -> Tensor<4> {
        k_scale_model_input(sample, self.schedule.sigmas[step_index])
    }

    fn step(
        &mut self,
        model_output: Tensor<4>,
        step_index: usize,
        sample: Tensor<4>,
        noise: &mut dyn NoiseSource,
    ) -> Tensor<4> {
        let sigma = self.schedule.sigmas[step_index] as f32;
        let pred_original_sample = k_pred_original_sample(self.prediction_type, model_output.clone(), &sample, sigma);
        let sigma_to = self.schedule.sigmas[step_index + 1] as f32;
        let (sigma_up, sigma_down) = ancestral_sigmas_f32(sigma, sigma_to);
        let derivative = (sample.clone() - pred_original_sample).div_scalar(sigma);
        let dt = sigma_down - sigma;
        let prev_sample = sample + derivative.mul_scalar(dt);
        // randn_tensor(model_output.shape, dtype=model_output.dtype)
        let eps = noise_like(&model_output, noise);
        prev_sample + eps.mul_scalar(sigma_up)
    }

    fn add_noise(&self, original: Tensor<4>, noise: Tensor<4>, step_index: usize) -> Tensor<4> {
        original + noise.mul_scalar(self.schedule.sigmas[step_index] as f32)
    }
}
