//! `FlowMatchEulerDiscreteScheduler` (diffusers `schedulers/scheduling_flow_match_euler_discrete.py`):
//! the Euler sampler of SD 3/3.5 and FLUX.1. The model predicts the velocity v, one step is
//! `x + (σ_next − σ) · v`; `stochastic_sampling` instead re-noises the predicted x₀ to σ_next.
//!
//! The schedule reproduces `set_timesteps(n, sigmas=…, mu=…)` exactly, quirks included: the static
//! `shift` is applied in `__init__` (to σ_max/σ_min) and again to the new σ; custom sigmas (FLUX's
//! pipeline passes `linspace(1, 1/n, n)`) are float32 numpy and shifted in float32, the default
//! ones float64.

use burn::tensor::Tensor;

use crate::class::SchedulerClass;
use crate::common::noise_like;
use crate::config::SchedulerConfig;
use crate::error::{Result, SchedulerError};
use crate::float::np_linspace;
use crate::flow::{check_flow_steps, check_positive, scale_noise, shift_f32, shift_f64, train_sigma_range};
use crate::schedule::{SigmaBounds, SigmaSpacing};
use crate::scheduler::{NoiseSource, Schedule, Scheduler, StepOptions};

/// FlowMatchEulerDiscreteScheduler, built for `num_inference_steps` (or the custom sigmas).
#[derive(Debug, Clone)]
pub struct FlowMatchEulerScheduler {
    stochastic: bool,
    /// timesteps: n, `σ · N` in float32; sigmas: n + 1 float32 values ending in 0 (1 when inverted).
    schedule: Schedule,
}

/// `time_shift_type`: how `mu` shifts σ under `use_dynamic_shifting`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimeShift {
    /// `e^μ / (e^μ + (1/σ − 1))`
    Exponential,
    /// `μ / (μ + (1/σ − 1))`
    Linear,
}

impl TimeShift {
    fn apply_f64(self, mu: f64, t: f64) -> f64 {
        // `(1 / t - 1) ** sigma` with sigma = 1.0: the power is the identity
        match self {
            Self::Exponential => mu.exp() / (mu.exp() + (1.0 / t - 1.0)),
            Self::Linear => mu / (mu + (1.0 / t - 1.0)),
        }
    }

    /// On a float32 numpy array: each Python float rounded to float32, each operation rounded.
    fn apply_f32(self, mu: f64, t: f32) -> f32 {
        let m = match self {
            Self::Exponential => mu.exp() as f32,
            Self::Linear => mu as f32,
        };
        m / (m + (1.0 / t - 1.0))
    }
}

impl FlowMatchEulerScheduler {
    pub fn new(config: &SchedulerConfig, num_inference_steps: usize, options: &StepOptions) -> Result<Self> {
        let class = SchedulerClass::FlowMatchEuler.class_name();
        let mut r = config.reader(class);
        let num_train_timesteps = r.usize("num_train_timesteps", 1000)?;
        let shift = r.f64("shift", 1.0)?;
        let dynamic = r.bool("use_dynamic_shifting", false)?;
        // base/max shift and the sequence lengths are read by the pipeline's `calculate_shift`
        // (it computes `mu`); the scheduler itself only stores them
        for key in ["base_shift", "max_shift", "base_image_seq_len", "max_image_seq_len"] {
            let _ = r.opt_f64(key)?;
        }
        let invert_sigmas = r.bool("invert_sigmas", false)?;
        let shift_terminal = r.opt_f64("shift_terminal")?;
        let spacing = SigmaSpacing::read(&mut r, true)?;
        let time_shift = match r.choice("time_shift_type", "exponential", &["exponential", "linear"])?.as_str() {
            "exponential" => TimeShift::Exponential,
            _ => TimeShift::Linear,
        };
        let stochastic = r.bool("stochastic_sampling", false)?;
        r.finish();

        check_positive("num_train_timesteps", num_train_timesteps as f64)?;
        check_positive("shift", shift)?;
        // `if self.config.shift_terminal:` — 0 and None leave the schedule alone; 1 would divide by 0
        let shift_terminal = match shift_terminal {
            Some(v) if v == 0.0 => None,
            Some(v) if !(v.is_finite() && v < 1.0) => {
                return Err(SchedulerError::Unsupported {
                    key: "shift_terminal".into(),
                    value: v.to_string(),
                    allowed: "a number below 1 (the last σ of the stretched schedule)".into(),
                })
            }
            other => other,
        };
        let mu = match (dynamic, options.mu) {
            (false, _) => None,
            (true, Some(mu)) if mu.is_finite() => Some(mu),
            (true, Some(mu)) => return Err(SchedulerError::Invalid(format!("mu must be a finite number, got {mu}"))),
            (true, None) => {
                return Err(SchedulerError::Invalid(format!(
                    "{class} with use_dynamic_shifting needs mu (the pipeline computes it from the image size; \
                     `kiln schedule` takes --mu)"
                )))
            }
        };
        if time_shift == TimeShift::Linear && mu.is_some_and(|m| m <= 0.0) {
            return Err(SchedulerError::Invalid(format!(
                "time_shift_type linear needs mu above 0, got {}",
                mu.unwrap_or_default()
            )));
        }

        let n_train = num_train_timesteps as f64;
        let (sigma_max, sigma_min) = train_sigma_range(num_train_timesteps, (!dynamic).then_some(shift));
        // σ before the optional spacings, float64 (default) or float32 (custom sigmas)
        let sigmas: Vec<f64> = match &options.sigmas {
            None => {
                check_flow_steps(num_inference_steps)?;
                // timesteps = np.linspace(σ_max · N, σ_min · N, n); sigmas = timesteps / N
                let ts = np_linspace(sigma_max * n_train, sigma_min * n_train, num_inference_steps);
                let mut s: Vec<f64> = ts
                    .into_iter()
                    .map(|t| t / n_train)
                    .map(|s| match mu {
                        Some(mu) => time_shift.apply_f64(mu, s),
                        None => shift_f64(shift, s),
                    })
                    .collect();
                if let Some(terminal) = shift_terminal {
                    // stretch_shift_to_terminal, float64
                    let scale = (1.0 - s[s.len() - 1]) / (1.0 - terminal);
                    s.iter_mut().for_each(|v| *v = 1.0 - (1.0 - *v) / scale);
                }
                s
            }
            Some(custom) => {
                if custom.len() != num_inference_steps {
                    return Err(SchedulerError::Invalid(format!(
                        "{} custom sigmas for {num_inference_steps} steps: give one sigma per step",
                        custom.len()
                    )));
                }
                check_flow_steps(custom.len())?;
                if let Some(bad) = custom.iter().find(|s| !(s.is_finite() && **s > 0.0 && **s <= 1.0)) {
                    return Err(SchedulerError::Invalid(format!("custom sigma {bad} is outside (0, 1]")));
                }
                let mut s: Vec<f32> = custom
                    .iter()
                    .map(|&v| v as f32)
                    .map(|s| match mu {
                        Some(mu) => time_shift.apply_f32(mu, s),
                        None => shift_f32(shift, s),
                    })
                    .collect();
                if let Some(terminal) = shift_terminal {
                    // a float32 numpy scalar over a Python float stays float32 (NEP 50)
                    let scale = (1.0 - s[s.len() - 1]) / (1.0 - terminal) as f32;
                    s.iter_mut().for_each(|v| *v = 1.0 - (1.0 - *v) / scale);
                }
                s.into_iter().map(f64::from).collect()
            }
        };
        let n = sigmas.len();
        let sigmas = spacing.convert(&sigmas, n, SigmaBounds::default()).unwrap_or(sigmas);
        // torch.from_numpy(sigmas).to(float32); timesteps = sigmas * N (float32)
        let mut sigmas: Vec<f32> = sigmas.into_iter().map(|s| s as f32).collect();
        let n_train32 = num_train_timesteps as f32;
        if invert_sigmas {
            sigmas.iter_mut().for_each(|s| *s = 1.0 - *s);
        }
        let timesteps: Vec<f64> = sigmas.iter().map(|&s| (s * n_train32) as f64).collect();
        let mut sigmas: Vec<f64> = sigmas.into_iter().map(f64::from).collect();
        sigmas.push(if invert_sigmas { 1.0 } else { 0.0 });
        if let Some(bad) = sigmas.iter().find(|s| !s.is_finite()) {
            return Err(SchedulerError::Invalid(format!("the schedule has a non-finite sigma ({bad})")));
        }
        Ok(Self {
            stochastic,
            schedule: Schedule { class: SchedulerClass::FlowMatchEuler, timesteps, sigmas, init_noise_sigma: 1.0 },
        })
    }
}

impl Scheduler for FlowMatchEulerScheduler {
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
        let sigma = self.schedule.sigmas[step_index] as f32;
        let sigma_next = self.schedule.sigmas[step_index + 1] as f32;
        if self.stochastic {
            // x0 = sample − σ · v; prev = (1 − σ_next) · x0 + σ_next · noise
            let x0 = sample.clone() - model_output.mul_scalar(sigma);
            let noise = noise_like(&sample, noise);
            x0.mul_scalar(1.0 - sigma_next) + noise.mul_scalar(sigma_next)
        } else {
            let dt = sigma_next - sigma;
            sample + model_output.mul_scalar(dt)
        }
    }

    fn add_noise(&self, original: Tensor<4>, noise: Tensor<4>, step_index: usize) -> Tensor<4> {
        scale_noise(original, noise, self.schedule.sigmas[step_index])
    }
}
