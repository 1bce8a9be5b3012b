//! `DPMSolverMultistepScheduler` (diffusers `schedulers/scheduling_dpmsolver_multistep.py`):
//! DPM-Solver (Lu et al. 2022, arXiv 2206.00927) and DPM-Solver++ (arXiv 2211.01095), multistep
//! variants of order 1–3, with the SDE variants (`sde-dpmsolver`, `sde-dpmsolver++`).
//!
//! This module also holds what the singlestep variant shares with it (the σ schedule, the model
//! output conversion and the first-order update): see `DpmCore` in dpmsolver.rs.
//!
//! Numerics: diffusers keeps `self.sigmas` as a float32 tensor and computes every coefficient
//! (α_t, σ_t, λ_t, h, e^{-h}, r0, …) as 0-dim float32 tensors. kiln computes those coefficients
//! in f32 with the same operation order, so each tensor operation sees exactly the scalar torch
//! uses, and the tensor operations run in the same order as diffusers' expressions.

use burn::tensor::Tensor;

use crate::class::SchedulerClass;
use crate::common::{noise_like, read_steps_offset, TimestepSpacing};
use crate::config::SchedulerConfig;
use crate::dpmsolver::{AlgorithmType, DpmClassInfo, DpmConfig, DpmCore};
use crate::error::{Result, SchedulerError};
use crate::float::{np_arange_f64, np_linspace, np_round};
use crate::scheduler::{check_steps, NoiseSource, Schedule, Scheduler, StepOptions};

/// DPMSolverMultistepScheduler, built for `num_inference_steps`.
#[derive(Debug, Clone)]
pub struct DpmSolverMultistepScheduler {
    core: DpmCore,
    solver_order: usize,
    lower_order_final: bool,
    euler_at_final: bool,
    final_sigma_min: bool,
    /// `self.model_outputs`: the last `solver_order` converted model outputs, oldest first.
    model_outputs: Vec<Option<Tensor<4>>>,
    lower_order_nums: usize,
}

impl DpmSolverMultistepScheduler {
    pub fn new(config: &SchedulerConfig, num_inference_steps: usize, _options: &StepOptions) -> Result<Self> {
        let mut r = config.reader("DPMSolverMultistepScheduler");
        let c = DpmConfig::read(
            &mut r,
            &DpmClassInfo {
                class: "DPMSolverMultistepScheduler",
                algorithms: &["dpmsolver", "dpmsolver++", "sde-dpmsolver", "sde-dpmsolver++", "deis"],
                knows_rescale: true,
            },
        )?;
        let euler_at_final = r.bool("euler_at_final", false)?;
        let use_lu_lambdas = r.bool("use_lu_lambdas", false)?;
        let spacing = TimestepSpacing::read(&mut r, "linspace")?;
        let steps_offset = read_steps_offset(&mut r, c.betas.num_train_timesteps)?;
        r.finish();

        if c.algorithm == AlgorithmType::SdeDpmSolver && c.solver_order >= 3 {
            // multistep_dpm_solver_third_order_update has no sde-dpmsolver branch: diffusers fails
            // with UnboundLocalError as soon as a third-order step is taken
            return Err(SchedulerError::Invalid(
                "algorithm_type sde-dpmsolver has no third-order update in diffusers (it fails at the \
                 first third-order step); use solver_order 1 or 2, or algorithm_type sde-dpmsolver++"
                    .into(),
            ));
        }

        let n = num_inference_steps;
        let train = c.betas.num_train_timesteps;
        check_steps(n, train)?;
        let alphas_cumprod = c.alphas_cumprod();
        let clipped_idx = c.clipped_idx(&alphas_cumprod);
        let last_timestep = train - clipped_idx;
        let timesteps: Vec<f64> = match spacing {
            TimestepSpacing::Linspace => {
                let mut t: Vec<f64> =
                    np_linspace(0.0, last_timestep as f64 - 1.0, n + 1).into_iter().map(np_round).rev().collect();
                t.pop();
                t
            }
            TimestepSpacing::Leading => {
                let step_ratio = last_timestep / (n + 1);
                (1..=n).rev().map(|i| (i * step_ratio).saturating_add(steps_offset) as f64).collect()
            }
            TimestepSpacing::Trailing => {
                let step_ratio = train as f64 / n as f64;
                np_arange_f64(last_timestep as f64, 0.0, -step_ratio).into_iter().map(|t| np_round(t) - 1.0).collect()
            }
        };
        let round_karras = c.raw_beta_schedule != "squaredcos_cap_v2";
        let (timesteps, sigmas) = c.layout(&alphas_cumprod, timesteps, n, use_lu_lambdas, round_karras)?;
        Ok(Self {
            core: c.core(SchedulerClass::DpmSolverMultistep, timesteps, sigmas),
            solver_order: c.solver_order,
            lower_order_final: c.lower_order_final,
            euler_at_final,
            final_sigma_min: c.final_sigma_min,
            model_outputs: vec![None; c.solver_order],
            lower_order_nums: 0,
        })
    }

    /// `multistep_dpm_solver_second_order_update`: from `sigmas[i]` with the model outputs at
    /// `i - 1` and `i`.
    fn second_order_update(&self, step_index: usize, sample: Tensor<4>, noise: Option<Tensor<4>>) -> Tensor<4> {
        let c = &self.core;
        let t = c.alpha_sigma(step_index + 1);
        let s0 = c.alpha_sigma(step_index);
        let s1 = c.alpha_sigma(step_index - 1);
        let k = self.model_outputs.len();
        let m0 = self.model_outputs[k - 1].clone().expect("set by step");
        let m1 = self.model_outputs[k - 2].clone().expect("lower_order_nums >= 1");
        let (h, h_0) = (t.lambda - s0.lambda, s0.lambda - s1.lambda);
        let r0 = h_0 / h;
        let d1 = (m0.clone() - m1).mul_scalar((1.0 / r0) as f64);
        c.update_2(c.solver_type, t, s0, h, m0, d1, sample, noise)
    }

    /// `multistep_dpm_solver_third_order_update`: from `sigmas[i]` with the model outputs at
    /// `i - 2`, `i - 1` and `i`.
    fn third_order_update(&self, step_index: usize, sample: Tensor<4>, noise: Option<Tensor<4>>) -> Tensor<4> {
        let c = &self.core;
        let t = c.alpha_sigma(step_index + 1);
        let s0 = c.alpha_sigma(step_index);
        let s1 = c.alpha_sigma(step_index - 1);
        let s2 = c.alpha_sigma(step_index - 2);
        let k = self.model_outputs.len();
        let m0 = self.model_outputs[k - 1].clone().expect("set by step");
        let m1 = self.model_outputs[k - 2].clone().expect("lower_order_nums >= 2");
        let m2 = self.model_outputs[k - 3].clone().expect("lower_order_nums >= 2");
        let (h, h_0, h_1) = (t.lambda - s0.lambda, s0.lambda - s1.lambda, s1.lambda - s2.lambda);
        let (r0, r1) = (h_0 / h, h_1 / h);
        let d1_0 = (m0.clone() - m1.clone()).mul_scalar((1.0 / r0) as f64);
        let d1_1 = (m1 - m2).mul_scalar((1.0 / r1) as f64);
        let d1 = d1_0.clone() + (d1_0.clone() - d1_1.clone()).mul_scalar((r0 / (r0 + r1)) as f64);
        let d2 = (d1_0 - d1_1).mul_scalar((1.0 / (r0 + r1)) as f64);
        c.update_3(t, s0, h, m0, d1, d2, sample, noise)
    }
}

impl Scheduler for DpmSolverMultistepScheduler {
    fn schedule(&self) -> &Schedule {
        &self.core.schedule
    }

    fn step(
        &mut self,
        model_output: Tensor<4>,
        step_index: usize,
        sample: Tensor<4>,
        noise: &mut dyn NoiseSource,
    ) -> Tensor<4> {
        let len = self.core.schedule.timesteps.len();
        let lower_order_final = step_index + 1 == len
            && (self.euler_at_final || (self.lower_order_final && len < 15) || !self.final_sigma_min);
        let lower_order_second = step_index + 2 == len && self.lower_order_final && len < 15;
        let model_output = self.core.convert_model_output(model_output, &sample, step_index);
        self.model_outputs.remove(0);
        self.model_outputs.push(Some(model_output.clone()));
        let noise = if self.core.algorithm.is_sde() { Some(noise_like(&model_output, noise)) } else { None };
        let prev_sample = if self.solver_order == 1 || self.lower_order_nums < 1 || lower_order_final {
            self.core.first_order_update(model_output, step_index, sample, noise)
        } else if self.solver_order == 2 || self.lower_order_nums < 2 || lower_order_second {
            self.second_order_update(step_index, sample, noise)
        } else {
            self.third_order_update(step_index, sample, noise)
        };
        if self.lower_order_nums < self.solver_order {
            self.lower_order_nums += 1;
        }
        prev_sample
    }

    fn add_noise(&self, original: Tensor<4>, noise: Tensor<4>, step_index: usize) -> Tensor<4> {
        self.core.add_noise(original, noise, step_index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dpmsolver::SolverType;

    fn build(c: &SchedulerConfig, n: usize) -> Result<DpmSolverMultistepScheduler> {
        DpmSolverMultistepScheduler::new(c, n, &StepOptions::default())
    }

    #[test]
    fn refuses_what_diffusers_refuses() {
        let c = SchedulerConfig::default();
        assert!(build(&c.clone().with("algorithm_type", "dpmsolver"), 10).is_err());
        assert!(build(&c.clone().with("algorithm_type", "sde-dpmsolver"), 10).is_err());
        assert!(
            build(&c.clone().with("algorithm_type", "dpmsolver").with("final_sigmas_type", "sigma_min"), 10).is_ok()
        );
        assert!(build(&c.clone().with("algorithm_type", "unknown"), 10).is_err());
        assert!(build(&c.clone().with("solver_order", 0), 10).is_err());
        assert!(
            build(
                &c.clone()
                    .with("algorithm_type", "sde-dpmsolver")
                    .with("final_sigmas_type", "sigma_min")
                    .with("solver_order", 3),
                10
            )
            .is_err(),
            "diffusers has no third-order sde-dpmsolver update"
        );
        assert!(build(&c.clone().with("use_karras_sigmas", true).with("use_beta_sigmas", true), 10).is_err());
        assert!(build(&c, 0).is_err());
        assert!(build(&c, 1001).is_err());
    }

    #[test]
    fn remaps_other_solvers_keys_like_diffusers() {
        // UniPC's solver_type bh2 becomes midpoint
        let c = SchedulerConfig::default().with("solver_type", "bh2");
        assert_eq!(build(&c, 10).unwrap().core.solver_type, SolverType::Midpoint);
    }

    #[test]
    fn lambda_min_clipped_shortens_the_schedule() {
        // squaredcos_cap_v2 with lambda_min_clipped = -5.1 (diffusers 0.42.1: 995, 896, …)
        let c = SchedulerConfig::default().with("beta_schedule", "squaredcos_cap_v2").with("lambda_min_clipped", -5.1);
        let s = build(&c, 10).unwrap();
        assert_eq!(&s.timesteps()[..3], &[995.0, 896.0, 796.0]);
    }
}
