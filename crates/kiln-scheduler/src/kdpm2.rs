//! `KDPM2DiscreteScheduler` and `KDPM2AncestralDiscreteScheduler` (diffusers
//! `schedulers/scheduling_k_dpm_2_discrete.py`, `scheduling_k_dpm_2_ancestral_discrete.py`):
//! k-diffusion's `sample_dpm_2` and `sample_dpm_2_ancestral` (DPM-Solver-2, Lu et al. 2022, with
//! the midpoint taken in log σ). Each step calls the model twice — at σ_i and at the log-midpoint
//! σ_mid — so the schedule has 2n − 1 timesteps, the odd ones fractional (`_sigma_to_t(σ_mid)`).
//!
//! - KDPM2: Euler to σ_mid = √(σ_i σ_{i+1}), then from σ_i to σ_{i+1} with the derivative at σ_mid.
//! - KDPM2 ancestral: the same towards σ_down (with σ_mid = √(σ_i σ_down)), then noise of std σ_up.
//!
//! The last step (towards σ = 0) is a single Euler step; its second half never runs.

use burn::tensor::Tensor;

use crate::class::SchedulerClass;
use crate::common::{ancestral_sigmas_f32, interleave, k_init_noise_sigma, k_pred_original_sample, k_scale_model_input, k_sigma_schedule, noise_like, read_steps_offset, PredictionType, TimestepSpacing};
use crate::config::SchedulerConfig;
use crate::error::{Result, SchedulerError};
use crate::float::{f32r, np_log_f32, np_round};
use crate::schedule::{BetaConfig, SigmaSpacing};
use crate::scheduler::{check_steps, NoiseSource, Schedule, Scheduler, StepOptions};

/// `_sigma_to_t(sigma, log_sigmas)` as KDPM2 calls it for the interpolated sigmas: `sigma` is a
/// float32 torch tensor and `log_sigmas` a float32 torch tensor, so the whole computation
/// (`log`, the distances, `w`, `(1 − w)·low + w·high`) runs in float32.
pub(crate) fn sigma_to_t_f32(sigma: f32, log_sigmas: &[f32]) -> f32 {
    // np.maximum propagates NaN (KDPM2 ancestral can produce a NaN σ_mid, see `build`)
    let log_sigma = np_log_f32(if sigma.is_nan() { sigma } else { sigma.max(1e-10) });
    let n = log_sigmas.len();
    // low_idx = cumsum(dists >= 0).argmax() (the last index with log σ_i <= log σ; 0 if none)
    let mut last_true = None;
    for (i, &ls) in log_sigmas.iter().enumerate() {
        if log_sigma - ls >= 0.0 {
            last_true = Some(i);
        }
    }
    let low_idx = last_true.unwrap_or(0).min(n - 2);
    let high_idx = low_idx + 1;
    let low = log_sigmas[low_idx];
    let high = log_sigmas[high_idx];
    let w = ((low - log_sigma) / (low - high)).clamp(0.0, 1.0);
    (1.0 - w) * low_idx as f32 + w * high_idx as f32
}

/// `start.log().lerp(end.log(), 0.5).exp()` on float32 tensors: torch's lerp with weight ≥ 0.5 is
/// `end − (end − start)·(1 − weight)`.
fn log_midpoint_f32(a: f32, b: f32) -> f32 {
    let (la, lb) = (a.ln(), b.ln());
    (lb - (lb - la) * 0.5).exp()
}

/// Which of the two classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    Plain,
    Ancestral,
}

/// KDPM2DiscreteScheduler or KDPM2AncestralDiscreteScheduler, built for `num_inference_steps`.
#[derive(Debug, Clone)]
pub struct KDpm2Scheduler {
    variant: Variant,
    prediction_type: PredictionType,
    /// timesteps: 2n − 1 timesteps; sigmas: 2n + 2 interleaved sigmas `[σ0, σ1, σ1, …, σn, σn, σn]` (σn = 0), float32.
    schedule: Schedule,
    /// `sigmas_interpol`, interleaved the same way.
    sigmas_interpol: Vec<f64>,
    /// Ancestral only: `sigmas_up` / `sigmas_down`, interleaved the same way.
    sigmas_up: Vec<f64>,
    sigmas_down: Vec<f64>,
    /// The sample of the first model call, kept for the second (`self.sample`;
    /// `state_in_first_order` is `sample is None`).
    first_sample: Option<Tensor<4>>,
}

impl KDpm2Scheduler {
    /// `KDPM2DiscreteScheduler.from_config(config)` + `set_timesteps(n)`.
    pub fn new(config: &SchedulerConfig, num_inference_steps: usize, options: &StepOptions) -> Result<Self> {
        Self::build(Variant::Plain, config, num_inference_steps, options)
    }

    /// `KDPM2AncestralDiscreteScheduler.from_config(config)` + `set_timesteps(n)`.
    pub fn new_ancestral(config: &SchedulerConfig, num_inference_steps: usize, options: &StepOptions) -> Result<Self> {
        Self::build(Variant::Ancestral, config, num_inference_steps, options)
    }

    fn build(variant: Variant, config: &SchedulerConfig, n: usize, _options: &StepOptions) -> Result<Self> {
        let mut r = config.reader(match variant {
            Variant::Plain => "KDPM2DiscreteScheduler",
            Variant::Ancestral => "KDPM2AncestralDiscreteScheduler",
        });
        let betas = BetaConfig::read(
            &mut r,
            0.00085,
            0.012,
            "linear",
            &["linear", "scaled_linear", "squaredcos_cap_v2"],
            false,
        )?;
        let sigma_spacing = SigmaSpacing::read(&mut r, true)?;
        // step() raises NotImplementedError for "sample"
        let prediction_type = match r.choice("prediction_type", "epsilon", &["epsilon", "v_prediction"])?.as_str() {
            "epsilon" => PredictionType::Epsilon,
            _ => PredictionType::VPrediction,
        };
        let spacing = TimestepSpacing::read(&mut r, "linspace")?;
        let steps_offset = read_steps_offset(&mut r, betas.num_train_timesteps)?;
        r.finish();

        check_steps(n, betas.num_train_timesteps)?;
        let alphas_cumprod = betas.alphas_cumprod();
        let schedule = k_sigma_schedule(&alphas_cumprod, spacing, sigma_spacing, n, steps_offset);
        // Karras timesteps are rounded (`np.array([...]).round()`); the other respacings are not.
        // Default timesteps are float32; respaced ones stay float64 (the tensor keeps numpy's dtype).
        let timesteps: Vec<f64> = if !schedule.respaced {
            schedule.timesteps.iter().map(|&t| f32r(t)).collect()
        } else if sigma_spacing == SigmaSpacing::Karras {
            schedule.timesteps.iter().map(|&t| np_round(t)).collect()
        } else {
            schedule.timesteps.clone()
        };
        let log_sigmas: Vec<f32> = schedule.log_sigmas.iter().map(|&l| l as f32).collect();
        // sigmas = torch.from_numpy(concatenate([sigmas, [0.0]]).astype(float32))
        let mut sigmas: Vec<f32> = schedule.sigmas.iter().map(|&s| s as f32).collect();
        sigmas.push(0.0);
        let m = sigmas.len(); // n + 1

        let (sigmas_interpol, sigmas_up, sigmas_down): (Vec<f32>, Vec<f32>, Vec<f32>) = match variant {
            Variant::Plain => {
                // sigmas.log().lerp(sigmas.roll(1).log(), 0.5).exp(): element 0 pairs σ0 with σn = 0
                let interpol = (0..m).map(|i| log_midpoint_f32(sigmas[i], sigmas[(i + m - 1) % m])).collect();
                (interpol, Vec::new(), Vec::new())
            }
            Variant::Ancestral => {
                // sigmas_next = sigmas.roll(-1) with sigmas_next[-1] = 0; σ_up[-1] is NaN (0/0)
                // in diffusers and never read, so it is left 0 here.
                let mut up = vec![0.0f32; m];
                let mut down = vec![0.0f32; m];
                for i in 0..m - 1 {
                    let (u, d) = ancestral_sigmas_f32(sigmas[i], sigmas[i + 1]);
                    up[i] = u;
                    down[i] = d;
                }
                // sigmas_down[-1] = 0; interpol = exp(lerp(log σ, log σ_down, 0.5)); interpol[-2:] = 0
                let mut interpol: Vec<f32> = (0..m).map(|i| log_midpoint_f32(sigmas[i], down[i])).collect();
                for v in interpol.iter_mut().skip(m.saturating_sub(2)) {
                    *v = 0.0;
                }
                (interpol, up, down)
            }
        };

        // timesteps_interpol = [_sigma_to_t(σ_mid, log_sigmas)] (float32), cast to the
        // timesteps' dtype
        let timesteps_interpol: Vec<f64> =
            sigmas_interpol.iter().map(|&s| sigma_to_t_f32(s, &log_sigmas) as f64).collect();
        if timesteps.is_empty() {
            return Err(SchedulerError::Invalid("the schedule has no timesteps".into()));
        }
        // KDPM2: stack(timesteps_interpol[1:-1], timesteps[1:]); ancestral: timesteps_interpol[:-2]
        let interpol_offset = match variant {
            Variant::Plain => 1,
            Variant::Ancestral => 0,
        };
        let mut all_timesteps = vec![timesteps[0]];
        for k in 1..timesteps.len() {
            all_timesteps.push(timesteps_interpol[k - 1 + interpol_offset]);
            all_timesteps.push(timesteps[k]);
        }

        let widen = |v: &[f32]| -> Vec<f64> { v.iter().map(|&x| x as f64).collect() };
        let sigmas = interleave(&widen(&sigmas), true);
        let init_noise_sigma = k_init_noise_sigma(&sigmas, spacing);
        Ok(Self {
            variant,
            prediction_type,
            sigmas_interpol: interleave(&widen(&sigmas_interpol), true),
            sigmas_up: if sigmas_up.is_empty() { Vec::new() } else { interleave(&widen(&sigmas_up), true) },
            sigmas_down: if sigmas_down.is_empty() { Vec::new() } else { interleave(&widen(&sigmas_down), true) },
            first_sample: None,
            schedule: Schedule { class: match variant {
                Variant::Plain => SchedulerClass::KDpm2,
                Variant::Ancestral => SchedulerClass::KDpm2Ancestral,
            }, timesteps: all_timesteps, sigmas, init_noise_sigma },
        })
    }

    /// `pred_original_sample` for `sigma_input`.
    fn pred_original(&self, model_output: Tensor<4>, sample: &Tensor<4>, sigma_input: f32) -> Tensor<4> {
        k_pred_original_sample(self.prediction_type, model_output, sample, sigma_input)
    }
}

impl Scheduler for KDpm2Scheduler {
    fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    fn order(&self) -> usize {
        2
    }

    fn scale_model_input(&self, sample: Tensor<4>, step_index: usize) -> Tensor<4> {
        let sigma = if self.first_sample.is_none() {
            self.schedule.sigmas[step_index]
        } else {
            match self.variant {
                Variant::Plain => self.sigmas_interpol[step_index],
                Variant::Ancestral => self.sigmas_interpol[step_index - 1],
            }
        };
        k_scale_model_input(sample, sigma)
    }

    fn step(
        &mut self,
        model_output: Tensor<4>,
        step_index: usize,
        sample: Tensor<4>,
        noise: &mut dyn NoiseSource,
    ) -> Tensor<4> {
        let i = step_index;
        let first_order = self.first_sample.is_none();
        match self.variant {
            Variant::Plain => {
                let (sigma, sigma_interpol, sigma_next) = if first_order {
                    (self.schedule.sigmas[i], self.sigmas_interpol[i + 1], self.schedule.sigmas[i + 1])
                } else {
                    (self.schedule.sigmas[i - 1], self.sigmas_interpol[i], self.schedule.sigmas[i])
                };
                let (sigma_hat, sigma_interpol, sigma_next) = (sigma as f32, sigma_interpol as f32, sigma_next as f32);
                let sigma_input = if first_order { sigma_hat } else { sigma_interpol };
                let pred_original_sample = self.pred_original(model_output, &sample, sigma_input);
                if first_order {
                    // 1. Euler to the log-midpoint
                    let derivative = (sample.clone() - pred_original_sample).div_scalar(sigma_hat);
                    let dt = sigma_interpol - sigma_hat;
                    self.first_sample = Some(sample.clone());
                    sample + derivative.mul_scalar(dt)
                } else {
                    // 2. the whole step with the midpoint's derivative
                    let derivative = (sample - pred_original_sample).div_scalar(sigma_interpol);
                    let dt = sigma_next - sigma_hat;
                    let sample = self.first_sample.take().expect("second order has a first sample");
                    sample + derivative.mul_scalar(dt)
                }
            }
            Variant::Ancestral => {
                let (sigma, sigma_interpol, sigma_up, sigma_down) = if first_order {
                    // sigmas_down[step_index - 1] is unused in the first half
                    (self.schedule.sigmas[i], self.sigmas_interpol[i], 0.0, 0.0)
                } else {
                    (self.schedule.sigmas[i - 1], self.sigmas_interpol[i - 1], self.sigmas_up[i - 1], self.sigmas_down[i - 1])
                };
                let (sigma_hat, sigma_interpol) = (sigma as f32, sigma_interpol as f32);
                let (sigma_up, sigma_down) = (sigma_up as f32, sigma_down as f32);
                let sigma_input = if first_order { sigma_hat } else { sigma_interpol };
                let pred_original_sample = self.pred_original(model_output.clone(), &sample, sigma_input);
                if first_order {
                    let derivative = (sample.clone() - pred_original_sample).div_scalar(sigma_hat);
                    let dt = sigma_interpol - sigma_hat;
                    self.first_sample = Some(sample.clone());
                    sample + derivative.mul_scalar(dt)
                } else {
                    let derivative = (sample - pred_original_sample).div_scalar(sigma_interpol);
                    let dt = sigma_down - sigma_hat;
                    let sample = self.first_sample.take().expect("second order has a first sample");
                    let prev_sample = sample + derivative.mul_scalar(dt);
                    // randn_tensor(model_output.shape, dtype=model_output.dtype)
                    let eps = noise_like(&model_output, noise);
                    prev_sample + eps.mul_scalar(sigma_up)
                }
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

    /// diffusers 0.42.1 `KDPM2AncestralDiscreteScheduler(beta_schedule="squaredcos_cap_v2")` with
    /// 2 steps: σ_up rounds to σ_1 in float32, so σ_down = 0, log σ_down = −inf and
    /// σ_mid = exp(lerp(log σ_0, −inf, 0.5)) = exp(−inf + inf) = NaN, and so is its timestep
    /// (every sample of that run is NaN in diffusers too). kiln reproduces it value for value.
    /// The parity fixture of this case holds JSON `NaN`, which serde_json cannot read.
    #[test]
    fn ancestral_reproduces_diffusers_nan_midpoint() {
        let config = SchedulerConfig::default().with("beta_schedule", "squaredcos_cap_v2");
        let s = KDpm2Scheduler::new_ancestral(&config, 2, &StepOptions::default()).unwrap();
        assert_eq!(s.timesteps().len(), 3);
        assert_eq!(s.timesteps()[0], 999.0);
        assert!(s.timesteps()[1].is_nan());
        assert_eq!(s.timesteps()[2], 0.0);
        let want = [20291.302734375, 0.006427108775824308, 0.006427108775824308, 0.0, 0.0, 0.0];
        assert_eq!(s.sigmas().unwrap(), &want);
        assert_eq!(s.sigmas_down[0], 0.0);
        assert!(s.sigmas_interpol[0].is_nan());
    }

    /// `timesteps` of diffusers' `KDPM2DiscreteScheduler` (SD 1.5 config, 4 steps): the odd ones are
    /// `_sigma_to_t` of the log-midpoints, computed in float32.
    #[test]
    fn interpolated_timesteps_match_diffusers() {
        let config = SchedulerConfig::default()
            .with("beta_schedule", "scaled_linear")
            .with("beta_start", 0.00085)
            .with("beta_end", 0.012);
        let s = KDpm2Scheduler::new(&config, 4, &StepOptions::default()).unwrap();
        assert_eq!(s.sigmas().unwrap().len(), 10);
        let t = s.timesteps();
        assert_eq!(t.len(), 7);
        assert_eq!([t[0], t[2], t[4], t[6]], [999.0, 666.0, 333.0, 0.0]);
        assert!(t[1] < 999.0 && t[1] > 666.0 && t[5] > 0.0 && t[5] < 333.0);
    }
}
