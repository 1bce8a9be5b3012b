//! `FlowMatchHeunDiscreteScheduler` (diffusers `schedulers/scheduling_flow_match_heun_discrete.py`):
//! Heun's method on the flow-matching ODE. Like `HeunDiscreteScheduler`, each step calls the model
//! twice (an Euler predictor to σ_next, then the trapezoidal corrector), so the schedule has
//! 2n − 1 timesteps and 2n interleaved sigmas; churn (`s_churn`, `s_tmin`, `s_tmax`, `s_noise`)
//! adds noise before the predictor as k-diffusion's `sample_heun` does. Its only config keys are
//! `num_train_timesteps` and the static `shift`.

use burn::tensor::Tensor;

use crate::class::SchedulerClass;
use crate::common::{interleave, noise_like};
use crate::config::SchedulerConfig;
use crate::error::Result;
use crate::float::{np_linspace, torch_sqrt_f32};
use crate::flow::{check_flow_steps, check_positive, scale_noise, shift_f64, train_sigma_range};
use crate::scheduler::{NoiseSource, Schedule, Scheduler, StepOptions};

/// The first half of a step, kept for the corrector (`prev_derivative`, `dt`, `sample`).
#[derive(Debug, Clone)]
struct FirstOrder {
    derivative: Tensor<4>,
    dt: f32,
    sample: Tensor<4>,
}

/// FlowMatchHeunDiscreteScheduler, built for `num_inference_steps`.
#[derive(Debug, Clone)]
pub struct FlowMatchHeunScheduler {
    options: StepOptions,
    /// timesteps: 2n − 1 (`[t0, t1, t1, …]`); sigmas: 2n (`[σ0, σ1, σ1, …, σ_{n−1}, σ_{n−1}, 0]`).
    schedule: Schedule,
    /// `Some` between the two model calls of a step (`state_in_first_order` is `dt is None`).
    first: Option<FirstOrder>,
}

impl FlowMatchHeunScheduler {
    pub fn new(config: &SchedulerConfig, num_inference_steps: usize, options: &StepOptions) -> Result<Self> {
        let mut r = config.reader(SchedulerClass::FlowMatchHeun.class_name());
        let num_train_timesteps = r.usize("num_train_timesteps", 1000)?;
        let shift = r.f64("shift", 1.0)?;
        r.finish();
        check_positive("num_train_timesteps", num_train_timesteps as f64)?;
        check_positive("shift", shift)?;
        let n = num_inference_steps;
        check_flow_steps(n)?;

        let n_train = num_train_timesteps as f64;
        let (sigma_max, sigma_min) = train_sigma_range(num_train_timesteps, Some(shift));
        // float64 numpy: linspace(σ_max · N, σ_min · N, n) / N, shifted again; then float32
        let sigmas: Vec<f32> = np_linspace(sigma_max * n_train, sigma_min * n_train, n)
            .into_iter()
            .map(|t| shift_f64(shift, t / n_train) as f32)
            .collect();
        let t: Vec<f64> = sigmas.iter().map(|&s| (s * num_train_timesteps as f32) as f64).collect();
        let mut timesteps = vec![t[0]];
        for &v in &t[1..] {
            timesteps.push(v);
            timesteps.push(v);
        }
        let mut sigmas: Vec<f64> = sigmas.into_iter().map(f64::from).collect();
        sigmas.push(0.0);
        let sigmas = interleave(&sigmas, false);
        Ok(Self {
            options: options.clone(),
            first: None,
            schedule: Schedule { class: SchedulerClass::FlowMatchHeun, timesteps, sigmas, init_noise_sigma: 1.0 },
        })
    }
}

impl Scheduler for FlowMatchHeunScheduler {
    fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    fn order(&self) -> usize {
        2
    }

    fn step(
        &mut self,
        model_output: Tensor<4>,
        step_index: usize,
        sample: Tensor<4>,
        noise: &mut dyn NoiseSource,
    ) -> Tensor<4> {
        let sigmas = &self.schedule.sigmas;
        let (sigma, sigma_next) = match self.first {
            None => (sigmas[step_index] as f32, sigmas[step_index + 1] as f32),
            Some(_) => (sigmas[step_index - 1] as f32, sigmas[step_index] as f32),
        };
        let o = &self.options;
        let s = f64::from(sigma);
        let gamma = if o.s_tmin <= s && s <= o.s_tmax {
            (o.s_churn / (sigmas.len() - 1) as f64).min(2f64.sqrt() - 1.0)
        } else {
            0.0
        };
        let sigma_hat = sigma * (gamma + 1.0) as f32;
        let mut sample = sample;
        if gamma > 0.0 {
            let eps = noise_like(&model_output, noise).mul_scalar(o.s_noise as f32);
            sample = sample + eps.mul_scalar(torch_sqrt_f32(sigma_hat * sigma_hat - sigma * sigma));
        }
        match self.first.take() {
            None => {
                // denoised = sample − v · σ; derivative = (sample − denoised) / σ_hat
                let denoised = sample.clone() - model_output.mul_scalar(sigma);
                let derivative = (sample.clone() - denoised).div_scalar(sigma_hat);
                let dt = sigma_next - sigma_hat;
                let prev_sample = sample.clone() + derivative.clone().mul_scalar(dt);
                self.first = Some(FirstOrder { derivative, dt, sample });
                prev_sample
            }
            Some(first) => {
                let denoised = sample.clone() - model_output.mul_scalar(sigma_next);
                let derivative = (sample - denoised).div_scalar(sigma_next);
                let derivative = (first.derivative + derivative).mul_scalar(0.5);
                first.sample + derivative.mul_scalar(first.dt)
            }
        }
    }

    fn add_noise(&self, original: Tensor<4>, noise: Tensor<4>, step_index: usize) -> Tensor<4> {
        scale_noise(original, noise, self.schedule.sigmas[step_index])
    }
}
