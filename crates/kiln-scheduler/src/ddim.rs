//! `DDIMScheduler` (diffusers `schedulers/scheduling_ddim.py`): denoising diffusion implicit
//! models (Song et al. 2020, eq. 12), with η, sample clipping and dynamic thresholding.

use burn::tensor::Tensor;

use crate::class::SchedulerClass;
use crate::common::{add_noise_alphas, check_timestep_range, ddim_timesteps, noise_like, read_steps_offset, PredictionType, SampleClip, TimestepSpacing};
use crate::config::SchedulerConfig;
use crate::error::Result;
use crate::schedule::BetaConfig;
use crate::scheduler::{check_steps, NoiseSource, Schedule, Scheduler, StepOptions};

/// DDIMScheduler, built for `num_inference_steps`.
#[derive(Debug, Clone)]
pub struct DdimScheduler {
    alphas_cumprod: Vec<f64>,
    final_alpha_cumprod: f64,
    prediction_type: PredictionType,
    clip: SampleClip,
    step_ratio: i64,
    /// `timesteps`, `sigmas`, `init_noise_sigma` (see [`Schedule`])
    schedule: Schedule,
    eta: f64,
}

impl DdimScheduler {
    pub fn new(config: &SchedulerConfig, num_inference_steps: usize, options: &StepOptions) -> Result<Self> {
        let mut r = config.reader("DDIMScheduler");
        let betas =
            BetaConfig::read(&mut r, 0.0001, 0.02, "linear", &["linear", "scaled_linear", "squaredcos_cap_v2"], true)?;
        let clip = SampleClip::read(&mut r, Some(true))?;
        let set_alpha_to_one = r.bool("set_alpha_to_one", true)?;
        let steps_offset = read_steps_offset(&mut r, betas.num_train_timesteps)?;
        let prediction_type = PredictionType::read(&mut r)?;
        let spacing = TimestepSpacing::read(&mut r, "leading")?;
        r.finish();

        let train = betas.num_train_timesteps;
        check_steps(num_inference_steps, train)?;
        let alphas_cumprod = betas.alphas_cumprod();
        let final_alpha_cumprod = if set_alpha_to_one { 1.0 } else { alphas_cumprod[0] };
        let timesteps = ddim_timesteps(spacing, train, num_inference_steps, steps_offset);
        check_timestep_range(&timesteps, train, steps_offset)?;
        Ok(Self {
            final_alpha_cumprod,
            prediction_type,
            clip,
            step_ratio: (train / num_inference_steps) as i64,
            alphas_cumprod,
            eta: options.eta,
            schedule: Schedule { class: SchedulerClass::Ddim, timesteps, sigmas: Vec::new(), init_noise_sigma: 1.0 },
        })
    }

    fn alpha_prod(&self, t: i64) -> f64 {
        if t >= 0 { self.alphas_cumprod[t as usize] } else { self.final_alpha_cumprod }
    }
}

impl Scheduler for DdimScheduler {
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
        let prev_timestep = timestep - self.step_ratio;
        let alpha_prod_t = self.alpha_prod(timestep);
        let alpha_prod_t_prev = self.alpha_prod(prev_timestep);
        let beta_prod_t = 1.0 - alpha_prod_t;
        let (pred_original_sample, pred_epsilon) = match self.prediction_type {
            PredictionType::Epsilon => (
                (sample.clone() - model_output.clone().mul_scalar(beta_prod_t.sqrt())).div_scalar(alpha_prod_t.sqrt()),
                model_output,
            ),
            PredictionType::Sample => (
                model_output.clone(),
                (sample.clone() - model_output.mul_scalar(alpha_prod_t.sqrt())).div_scalar(beta_prod_t.sqrt()),
            ),
            PredictionType::VPrediction => (
                sample.clone().mul_scalar(alpha_prod_t.sqrt()) - model_output.clone().mul_scalar(beta_prod_t.sqrt()),
                model_output.mul_scalar(alpha_prod_t.sqrt()) + sample.clone().mul_scalar(beta_prod_t.sqrt()),
            ),
        };
        let pred_original_sample = self.clip.apply(pred_original_sample);
        // _get_variance: σ_t² = (1 − ᾱ_prev)/(1 − ᾱ_t) · (1 − ᾱ_t/ᾱ_prev)
        let variance = ((1.0 - alpha_prod_t_prev) / beta_prod_t) * (1.0 - alpha_prod_t / alpha_prod_t_prev);
        let std_dev_t = self.eta * variance.sqrt();
        let direction = pred_epsilon.mul_scalar((1.0 - alpha_prod_t_prev - std_dev_t * std_dev_t).sqrt());
        let prev_sample = pred_original_sample.mul_scalar(alpha_prod_t_prev.sqrt()) + direction;
        if self.eta > 0.0 {
            prev_sample + noise_like(&sample, noise).mul_scalar(std_dev_t)
        } else {
            prev_sample
        }
    }

    fn add_noise(&self, original: Tensor<4>, noise: Tensor<4>, step_index: usize) -> Tensor<4> {
        add_noise_alphas(&self.alphas_cumprod, self.schedule.timesteps[step_index], original, noise)
    }
}

