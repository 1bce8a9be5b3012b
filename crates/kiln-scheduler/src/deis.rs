//! `DEISMultistepScheduler` (diffusers `schedulers/scheduling_deis_multistep.py`): diffusion
//! exponential integrator sampling (Zhang & Chen 2022, arXiv 2204.13902), the multistep
//! "logρ" solver of orders 1–3 on the noise prediction.
//!
//! diffusers computes α, σ, ρ = σ/α and the Lagrange-integral coefficients as float32 (0-dim
//! tensors and `np.log` of them); this port does the same arithmetic in `f32`, in the same order.

use burn::tensor::Tensor;

use crate::class::SchedulerClass;
use crate::common::{alpha_sigma_f32, multistep_timesteps, read_solver_order, read_steps_offset, spaced_timesteps, train_sigmas_and_logs, PredictionType, SampleClip, TimestepSpacing};
use crate::config::SchedulerConfig;
use crate::error::{Result, SchedulerError};
use crate::float::{f32r, np_interp, np_log_f32, torch_exp_f32, torch_log_f32};
use crate::schedule::{BetaConfig, SigmaBounds, SigmaSpacing};
use crate::scheduler::{check_steps, NoiseSource, Schedule, Scheduler, StepOptions};

/// DEISMultistepScheduler, built for `num_inference_steps`.
#[derive(Debug, Clone)]
pub struct DeisScheduler {
    prediction_type: PredictionType,
    clip: SampleClip,
    solver_order: usize,
    lower_order_final: bool,
    /// sigmas: n + 1 values, float32 like diffusers (the last repeats σ_min).
    schedule: Schedule,
    /// The converted model outputs (noise predictions) of the last `solver_order` steps, oldest
    /// first (`self.model_outputs`).
    model_outputs: Vec<Option<Tensor<4>>>,
    lower_order_nums: usize,
}

impl DeisScheduler {
    pub fn new(config: &SchedulerConfig, num_inference_steps: usize, _options: &StepOptions) -> Result<Self> {
        let mut r = config.reader("DEISMultistepScheduler");
        let betas = BetaConfig::read(
            &mut r,
            0.0001,
            0.02,
            "linear",
            &["linear", "scaled_linear", "squaredcos_cap_v2"],
            false,
        )?;
        let solver_order = read_solver_order(&mut r)?;
        let prediction_type = PredictionType::read(&mut r)?;
        let clip = SampleClip::read(&mut r, None)?;
        // diffusers maps the DPM-Solver names to "deis" and the other solvers' to "logrho"
        let _algorithm_type = r.choice("algorithm_type", "deis", &["deis", "dpmsolver", "dpmsolver++"])?;
        let _solver_type = r.choice("solver_type", "logrho", &["logrho", "midpoint", "heun", "bh1", "bh2"])?;
        let lower_order_final = r.bool("lower_order_final", true)?;
        let spacing_kind = SigmaSpacing::read(&mut r, true)?;
        let use_flow_sigmas = r.bool("use_flow_sigmas", false)?;
        let _flow_shift = r.f64("flow_shift", 1.0)?;
        let spacing = TimestepSpacing::read(&mut r, "linspace")?;
        let steps_offset = read_steps_offset(&mut r, betas.num_train_timesteps)?;
        // Only consulted when a flow-matching pipeline passes `mu` to set_timesteps.
        let _use_dynamic_shifting = r.bool("use_dynamic_shifting", false)?;
        let _time_shift_type = r.choice("time_shift_type", "exponential", &["exponential"])?;
        r.finish();

        if use_flow_sigmas {
            return Err(SchedulerError::Unsupported {
                key: "use_flow_sigmas".into(),
                value: "true".into(),
                allowed: "false (flow-matching sigmas are not implemented)".into(),
            });
        }

        let n = num_inference_steps;
        check_steps(n, betas.num_train_timesteps)?;
        let alphas_cumprod = betas.alphas_cumprod();
        let (train_sigmas, log_sigmas) = train_sigmas_and_logs(&alphas_cumprod);
        let mut timesteps = multistep_timesteps(spacing, betas.num_train_timesteps, n, steps_offset);
        let flipped: Vec<f64> = train_sigmas.iter().rev().cloned().collect();
        // DEIS has no sigma_min/sigma_max keys: the spacings span the training σ's.
        let mut sigmas = match spacing_kind.convert(&flipped, n, SigmaBounds::default()) {
            Some(converted) => {
                timesteps = spaced_timesteps(spacing_kind, &converted, &log_sigmas);
                let mut s = converted;
                s.push(s[s.len() - 1]);
                s
            }
            None => {
                let xp: Vec<f64> = (0..train_sigmas.len()).map(|i| i as f64).collect();
                let mut s: Vec<f64> = timesteps.iter().map(|&t| np_interp(t, &xp, &train_sigmas)).collect();
                s.push(train_sigmas[0]);
                s
            }
        };
        sigmas.iter_mut().for_each(|s| *s = f32r(*s));

        Ok(Self {
            prediction_type,
            clip,
            solver_order,
            lower_order_final,
            model_outputs: vec![None; solver_order],
            lower_order_nums: 0,
            schedule: Schedule { class: SchedulerClass::Deis, timesteps, sigmas, init_noise_sigma: 1.0 },
        })
    }

    fn alpha_sigma(&self, index: usize) -> (f32, f32) {
        alpha_sigma_f32(self.schedule.sigmas[index] as f32)
    }

    /// The `i`-th most recent converted model output (0 = the newest).
    fn history(&self, i: usize) -> Tensor<4> {
        self.model_outputs[self.solver_order - 1 - i].clone().expect("the warm-up order never reaches past the history")
    }

    /// `convert_model_output`: x₀ from the model output, then the noise prediction
    /// ε = (x − α_t x₀) / σ_t that DEIS integrates.
    fn convert_model_output(&self, model_output: Tensor<4>, sample: Tensor<4>, step_index: usize) -> Tensor<4> {
        let (alpha_t, sigma_t) = self.alpha_sigma(step_index);
        let x0_pred = match self.prediction_type {
            PredictionType::Epsilon => (sample.clone() - model_output.mul_scalar(sigma_t)).div_scalar(alpha_t),
            PredictionType::Sample => model_output,
            PredictionType::VPrediction => sample.clone().mul_scalar(alpha_t) - model_output.mul_scalar(sigma_t),
        };
        let x0_pred = self.clip.apply(x0_pred);
        (sample - x0_pred.mul_scalar(alpha_t)).div_scalar(sigma_t)
    }

    /// `deis_first_order_update` (DDIM in the exponential-integrator form).
    fn first_order(&self, m0: Tensor<4>, sample: Tensor<4>, step_index: usize) -> Tensor<4> {
        let (alpha_t, sigma_t) = self.alpha_sigma(step_index + 1);
        let (alpha_s, sigma_s) = self.alpha_sigma(step_index);
        let lambda_t = torch_log_f32(alpha_t) - torch_log_f32(sigma_t);
        let lambda_s = torch_log_f32(alpha_s) - torch_log_f32(sigma_s);
        let h = lambda_t - lambda_s;
        sample.mul_scalar(alpha_t / alpha_s) - m0.mul_scalar(sigma_t * (torch_exp_f32(h) - 1.0))
    }

    /// `multistep_deis_second_order_update`.
    fn second_order(&self, sample: Tensor<4>, step_index: usize) -> Tensor<4> {
        let (alpha_t, sigma_t) = self.alpha_sigma(step_index + 1);
        let (alpha_s0, sigma_s0) = self.alpha_sigma(step_index);
        let (alpha_s1, sigma_s1) = self.alpha_sigma(step_index - 1);
        let (m0, m1) = (self.history(0), self.history(1));
        let (rho_t, rho_s0, rho_s1) = (sigma_t / alpha_t, sigma_s0 / alpha_s0, sigma_s1 / alpha_s1);
        // ∫ of the Lagrange basis in log ρ; `np.log` of the float32 tensors
        let ln = np_log_f32;
        let ind_fn = |t: f32, b: f32, c: f32| t * (-ln(c) + ln(t) - 1.0) / (ln(b) - ln(c));
        let coef1 = ind_fn(rho_t, rho_s0, rho_s1) - ind_fn(rho_s0, rho_s0, rho_s1);
        let coef2 = ind_fn(rho_t, rho_s1, rho_s0) - ind_fn(rho_s0, rho_s1, rho_s0);
        (sample.div_scalar(alpha_s0) + m0.mul_scalar(coef1) + m1.mul_scalar(coef2)).mul_scalar(alpha_t)
    }

    /// `multistep_deis_third_order_update`.
    fn third_order(&self, sample: Tensor<4>, step_index: usize) -> Tensor<4> {
        let (alpha_t, sigma_t) = self.alpha_sigma(step_index + 1);
        let (alpha_s0, sigma_s0) = self.alpha_sigma(step_index);
        let (alpha_s1, sigma_s1) = self.alpha_sigma(step_index - 1);
        let (alpha_s2, sigma_s2) = self.alpha_sigma(step_index - 2);
        let (m0, m1, m2) = (self.history(0), self.history(1), self.history(2));
        let (rho_t, rho_s0, rho_s1, rho_s2) =
            (sigma_t / alpha_t, sigma_s0 / alpha_s0, sigma_s1 / alpha_s1, sigma_s2 / alpha_s2);
        let ind_fn = |t: f32, b: f32, c: f32, d: f32| {
            // `np.log` of the float32 tensors
            let (lt, lb, lc, ld) = (np_log_f32(t), np_log_f32(b), np_log_f32(c), np_log_f32(d));
            let numerator = t * (lc * (ld - lt + 1.0) - ld * lt + ld + lt * lt - 2.0 * lt + 2.0);
            let denominator = (lb - lc) * (lb - ld);
            numerator / denominator
        };
        let coef1 = ind_fn(rho_t, rho_s0, rho_s1, rho_s2) - ind_fn(rho_s0, rho_s0, rho_s1, rho_s2);
        let coef2 = ind_fn(rho_t, rho_s1, rho_s2, rho_s0) - ind_fn(rho_s0, rho_s1, rho_s2, rho_s0);
        let coef3 = ind_fn(rho_t, rho_s2, rho_s0, rho_s1) - ind_fn(rho_s0, rho_s2, rho_s0, rho_s1);
        (sample.div_scalar(alpha_s0) + m0.mul_scalar(coef1) + m1.mul_scalar(coef2) + m2.mul_scalar(coef3))
            .mul_scalar(alpha_t)
    }
}

impl Scheduler for DeisScheduler {
    fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    fn step(
        &mut self,
        model_output: Tensor<4>,
        step_index: usize,
        sample: Tensor<4>,
        _noise: &mut dyn NoiseSource,
    ) -> Tensor<4> {
        let len = self.schedule.timesteps.len();
        let short = self.lower_order_final && len < 15;
        let lower_order_final = short && step_index == len - 1;
        let lower_order_second = short && step_index + 2 == len;
        let model_output = self.convert_model_output(model_output, sample.clone(), step_index);
        self.model_outputs.remove(0);
        self.model_outputs.push(Some(model_output.clone()));

        let prev_sample = if self.solver_order == 1 || self.lower_order_nums < 1 || lower_order_final {
            self.first_order(model_output, sample, step_index)
        } else if self.solver_order == 2 || self.lower_order_nums < 2 || lower_order_second {
            self.second_order(sample, step_index)
        } else {
            self.third_order(sample, step_index)
        };
        if self.lower_order_nums < self.solver_order {
            self.lower_order_nums += 1;
        }
        prev_sample
    }

    fn add_noise(&self, original: Tensor<4>, noise: Tensor<4>, step_index: usize) -> Tensor<4> {
        let (alpha_t, sigma_t) = self.alpha_sigma(step_index);
        original.mul_scalar(alpha_t) + noise.mul_scalar(sigma_t)
    }
}
