//! `EulerDiscreteScheduler` (diffusers `schedulers/scheduling_euler_discrete.py`): Algorithm 2 of
//! Karras et al. 2022 (k-diffusion's `sample_euler`), with optional churn.

use burn::tensor::Tensor;

use crate::class::SchedulerClass;
use crate::common::{k_scale_model_input, k_timesteps, noise_like, read_steps_offset, PredictionType, TimestepSpacing};
use crate::config::SchedulerConfig;
use crate::error::{Result, SchedulerError};
use crate::float::{f32r, np_interp, np_log_f32, torch_linspace_f32};
use crate::schedule::{sigma_to_t, sigmas_from_alphas_cumprod, BetaConfig, SigmaBounds, SigmaSpacing};
use crate::scheduler::{check_steps, NoiseSource, Schedule, Scheduler, StepOptions};

/// EulerDiscreteScheduler, built for `num_inference_steps`.
#[derive(Debug, Clone)]
pub struct EulerScheduler {
    prediction_type: PredictionType,
    /// sigmas: n + 1 values (the last is 0 or σ_min), float32 like diffusers.
    schedule: Schedule,
    options: StepOptions,
}

impl EulerScheduler {
    pub fn new(config: &SchedulerConfig, num_inference_steps: usize, options: &StepOptions) -> Result<Self> {
        let mut r = config.reader("EulerDiscreteScheduler");
        let betas = BetaConfig::read(
            &mut r,
            0.0001,
            0.02,
            "linear",
            &["linear", "scaled_linear", "squaredcos_cap_v2"],
            true,
        )?;
        let prediction_type = PredictionType::read(&mut r)?;
        let interpolation = r.choice("interpolation_type", "linear", &["linear", "log_linear"])?;
        let spacing_kind = SigmaSpacing::read(&mut r, true)?;
        let bounds = SigmaBounds { sigma_min: r.opt_f64("sigma_min")?, sigma_max: r.opt_f64("sigma_max")? };
        let spacing = TimestepSpacing::read(&mut r, "linspace")?;
        let timestep_type = r.choice("timestep_type", "discrete", &["discrete", "continuous"])?;
        let steps_offset = read_steps_offset(&mut r, betas.num_train_timesteps)?;
        let final_sigmas_type = r.choice("final_sigmas_type", "zero", &["zero", "sigma_min"])?;
        r.finish();

        let n = num_inference_steps;
        check_steps(n, betas.num_train_timesteps)?;
        let mut alphas_cumprod = betas.alphas_cumprod();
        if betas.rescale_betas_zero_snr {
            // `self.alphas_cumprod[-1] = 2**-24`: keeps the last σ finite
            *alphas_cumprod.last_mut().unwrap() = 2f64.powi(-24);
        }
        let train_sigmas = sigmas_from_alphas_cumprod(&alphas_cumprod);
        // np.log of a float32 array stays float32
        let log_sigmas: Vec<f64> = train_sigmas.iter().map(|&s| np_log_f32(s as f32) as f64).collect();

        let mut timesteps = k_timesteps(spacing, betas.num_train_timesteps, n, steps_offset);
        let mut sigmas: Vec<f64> = if interpolation == "linear" {
            let xp: Vec<f64> = (0..train_sigmas.len()).map(|i| i as f64).collect();
            timesteps.iter().map(|&t| np_interp(t, &xp, &train_sigmas)).collect()
        } else {
            // torch.linspace(log σ[-1], log σ[0], n + 1).exp() — n + 1 values, as diffusers has it
            let last = (train_sigmas[train_sigmas.len() - 1] as f32).ln() as f64;
            let first = (train_sigmas[0] as f32).ln() as f64;
            torch_linspace_f32(last, first, n + 1).into_iter().map(|l| l.exp() as f64).collect()
        };
        if let Some(converted) = spacing_kind.convert(&sigmas, n, bounds) {
            timesteps = converted.iter().map(|&s| sigma_to_t(s, &log_sigmas)).collect();
            sigmas = converted;
        }
        let sigma_last = if final_sigmas_type == "sigma_min" {
            let a = alphas_cumprod[0] as f32;
            ((1.0 - a) / a).sqrt() as f64
        } else {
            0.0
        };
        sigmas.push(sigma_last);
        let sigmas: Vec<f64> = sigmas.into_iter().map(f32r).collect();
        let timesteps: Vec<f64> = if timestep_type == "continuous" && prediction_type == PredictionType::VPrediction {
            sigmas[..sigmas.len() - 1].iter().map(|&s| f32r(0.25 * (s as f32).ln() as f64)).collect()
        } else {
            timesteps.into_iter().map(f32r).collect()
        };
        let max_sigma = sigmas.iter().cloned().fold(f64::MIN, f64::max);
        let init_noise_sigma = match spacing {
            TimestepSpacing::Linspace | TimestepSpacing::Trailing => max_sigma,
            // `(self.schedule.sigmas.max() ** 2 + 1) ** 0.5`, in float32
            TimestepSpacing::Leading => {
                let m = max_sigma as f32;
                (m * m + 1.0).sqrt() as f64
            }
        };
        if timesteps.is_empty() {
            return Err(SchedulerError::Invalid("the schedule has no timesteps".into()));
        }
        Ok(Self { prediction_type, options: options.clone(), schedule: Schedule { class: SchedulerClass::Euler, timesteps, sigmas, init_noise_sigma } })
    }
}

impl Scheduler for EulerScheduler {
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
        let o = &self.options;
        let sigma = self.schedule.sigmas[step_index];
        let gamma = if o.s_tmin <= sigma && sigma <= o.s_tmax {
            (o.s_churn / (self.schedule.sigmas.len() - 1) as f64).min(2f64.sqrt() - 1.0)
        } else {
            0.0
        };
        let sigma_hat = f32r(sigma * (gamma + 1.0));
        let mut sample = sample;
        if gamma > 0.0 {
            let eps = noise_like(&model_output, noise).mul_scalar(o.s_noise);
            // `(sigma_hat**2 - sigma**2) ** 0.5`, in float32
            let (h, s) = (sigma_hat as f32, sigma as f32);
            sample = sample + eps.mul_scalar((h * h - s * s).sqrt());
        }
        let pred_original_sample = match self.prediction_type {
            PredictionType::Sample => model_output,
            PredictionType::Epsilon => sample.clone() - model_output.mul_scalar(sigma_hat),
            PredictionType::VPrediction => {
                // `model_output * (-sigma / (sigma**2 + 1) ** 0.5) + sample / (sigma**2 + 1)`, in float32
                let s = sigma as f32;
                let s2 = s * s + 1.0;
                model_output.mul_scalar(-s / s2.sqrt()) + sample.clone().div_scalar(s2)
            }
        };
        let derivative = (sample.clone() - pred_original_sample).div_scalar(sigma_hat);
        let dt = self.schedule.sigmas[step_index + 1] - sigma_hat;
        sample + derivative.mul_scalar(dt)
    }

    fn add_noise(&self, original: Tensor<4>, noise: Tensor<4>, step_index: usize) -> Tensor<4> {
        original + noise.mul_scalar(self.schedule.sigmas[step_index])
    }
}
