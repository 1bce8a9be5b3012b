//! `DDIMScheduler` (diffusers `schedulers/scheduling_ddim.py`): denoising diffusion implicit
//! models (Song et al. 2020, eq. 12), with η, sample clipping and dynamic thresholding.

use burn::tensor::Tensor;

use crate::config::SchedulerConfig;
use crate::error::Result;
use crate::euler::{PredictionType, TimestepSpacing};
use crate::schedule::{np_arange_f64, np_linspace, np_round, BetaConfig};
use crate::{check_steps, noise_like, threshold_sample, NoiseSource, Scheduler, SchedulerClass, StepOptions};

/// `clip_sample` / `thresholding`, shared by the ᾱ-parameterised samplers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum SampleClip {
    None,
    Clip(f64),
    Threshold { ratio: f64, max_value: f64 },
}

impl SampleClip {
    /// Reads `thresholding`, `dynamic_thresholding_ratio`, `sample_max_value` and, when the class
    /// has them, `clip_sample` (with its class default) and `clip_sample_range`.
    pub(crate) fn read(r: &mut crate::config::ConfigReader<'_>, clip_default: Option<bool>) -> Result<Self> {
        let thresholding = r.bool("thresholding", false)?;
        let ratio = r.f64("dynamic_thresholding_ratio", 0.995)?;
        let max_value = r.f64("sample_max_value", 1.0)?;
        let (clip, range) = match clip_default {
            Some(d) => (r.bool("clip_sample", d)?, r.f64("clip_sample_range", 1.0)?),
            None => (false, 1.0),
        };
        Ok(if thresholding {
            Self::Threshold { ratio, max_value }
        } else if clip {
            Self::Clip(range)
        } else {
            Self::None
        })
    }

    pub(crate) fn apply(self, x0: Tensor<4>) -> Tensor<4> {
        match self {
            Self::None => x0,
            Self::Clip(range) => x0.clamp(-range, range),
            Self::Threshold { ratio, max_value } => threshold_sample(x0, ratio, max_value),
        }
    }
}

/// The integer timesteps of the ᾱ-indexed samplers (`scheduling_ddim.py::set_timesteps`).
pub(crate) fn ddim_timesteps(spacing: TimestepSpacing, train: usize, n: usize, steps_offset: usize) -> Vec<f64> {
    match spacing {
        TimestepSpacing::Linspace => np_linspace(0.0, (train - 1) as f64, n)
            .into_iter()
            .rev()
            .map(|t| np_round(t).trunc())
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = train / n;
            (0..n).rev().map(|i| (i * ratio + steps_offset) as f64).collect()
        }
        TimestepSpacing::Trailing => np_arange_f64(train as f64, 0.0, -(train as f64 / n as f64))
            .into_iter()
            .map(|t| np_round(t) - 1.0)
            .collect(),
    }
}

/// DDIMScheduler, built for `num_inference_steps`.
#[derive(Debug, Clone)]
pub struct DdimScheduler {
    alphas_cumprod: Vec<f64>,
    final_alpha_cumprod: f64,
    prediction_type: PredictionType,
    clip: SampleClip,
    step_ratio: i64,
    timesteps: Vec<f64>,
    eta: f64,
}

impl DdimScheduler {
    pub fn new(config: &SchedulerConfig, num_inference_steps: usize, options: &StepOptions) -> Result<Self> {
        let mut r = config.reader("DDIMScheduler");
        let betas =
            BetaConfig::read(&mut r, 0.0001, 0.02, "linear", &["linear", "scaled_linear", "squaredcos_cap_v2"], true)?;
        let clip = SampleClip::read(&mut r, Some(true))?;
        let set_alpha_to_one = r.bool("set_alpha_to_one", true)?;
        let steps_offset = r.usize("steps_offset", 0)?;
        let prediction_type = PredictionType::read(&mut r)?;
        let spacing = TimestepSpacing::read(&mut r, "leading")?;
        r.finish();

        let train = betas.num_train_timesteps;
        check_steps(num_inference_steps, train)?;
        let alphas_cumprod = betas.alphas_cumprod();
        let final_alpha_cumprod = if set_alpha_to_one { 1.0 } else { alphas_cumprod[0] };
        Ok(Self {
            final_alpha_cumprod,
            prediction_type,
            clip,
            step_ratio: (train / num_inference_steps) as i64,
            timesteps: ddim_timesteps(spacing, train, num_inference_steps, steps_offset),
            alphas_cumprod,
            eta: options.eta,
        })
    }

    fn alpha_prod(&self, t: i64) -> f64 {
        if t >= 0 { self.alphas_cumprod[t as usize] } else { self.final_alpha_cumprod }
    }
}

impl Scheduler for DdimScheduler {
    fn class(&self) -> SchedulerClass {
        SchedulerClass::Ddim
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
        let timestep = self.timesteps[step_index] as i64;
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
        add_noise_alphas(&self.alphas_cumprod, self.timesteps[step_index], original, noise)
    }
}

/// `add_noise` of the ᾱ-indexed samplers: √ᾱ_t · x₀ + √(1 − ᾱ_t) · ε.
pub(crate) fn add_noise_alphas(alphas_cumprod: &[f64], timestep: f64, original: Tensor<4>, noise: Tensor<4>) -> Tensor<4> {
    let a = alphas_cumprod[timestep as usize];
    original.mul_scalar(a.sqrt()) + noise.mul_scalar((1.0 - a).sqrt())
}
