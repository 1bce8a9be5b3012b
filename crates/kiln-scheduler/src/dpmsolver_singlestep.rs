//! `DPMSolverSinglestepScheduler` (diffusers `schedulers/scheduling_dpmsolver_singlestep.py`):
//! singlestep DPM-Solver / DPM-Solver++ (Lu et al. 2022, arXiv 2206.00927 and 2211.01095).
//!
//! The steps are grouped by an order list (`get_order_list`): within a group of order k the
//! update restarts from the sample at the group's first step and uses the k model outputs taken
//! inside the group. The σ schedule, the model output conversion and the first-order update are
//! shared with the multistep scheduler ([`crate::dpmsolver_multistep`]); coefficients are float32
//! scalars, as diffusers computes them.

use burn::tensor::Tensor;

use crate::class::SchedulerClass;
use crate::common::{noise_like, SampleClip};
use crate::config::SchedulerConfig;
use crate::dpmsolver::{AlgorithmType, DpmClassInfo, DpmConfig, DpmCore, SolverType};
use crate::error::{Result, SchedulerError};
use crate::float::{np_linspace, np_round};
use crate::scheduler::{check_steps, NoiseSource, Schedule, Scheduler, StepOptions};

/// `get_order_list(num_inference_steps)`: the solver order of each step.
///
/// Returns `None` where diffusers fails (an empty list whose last entry it sets).
pub fn order_list(steps: usize, order: usize, lower_order_final: bool, final_sigma_zero: bool) -> Option<Vec<usize>> {
    let repeat = |pattern: &[usize], times: usize| -> Vec<usize> {
        pattern.iter().copied().cycle().take(pattern.len() * times).collect()
    };
    let mut orders = if lower_order_final {
        match order {
            3 => match steps % 3 {
                0 => [repeat(&[1, 2, 3], (steps / 3).saturating_sub(1)), vec![1, 2], vec![1]].concat(),
                1 => [repeat(&[1, 2, 3], steps / 3), vec![1]].concat(),
                _ => [repeat(&[1, 2, 3], steps / 3), vec![1, 2]].concat(),
            },
            2 => {
                if steps % 2 == 0 {
                    [repeat(&[1, 2], (steps / 2).saturating_sub(1)), vec![1, 1]].concat()
                } else {
                    [repeat(&[1, 2], steps / 2), vec![1]].concat()
                }
            }
            _ => vec![1; steps],
        }
    } else {
        match order {
            3 => repeat(&[1, 2, 3], steps / 3),
            2 => repeat(&[1, 2], steps / 2),
            _ => vec![1; steps],
        }
    };
    if final_sigma_zero {
        *orders.last_mut()? = 1;
    }
    Some(orders)
}

/// DPMSolverSinglestepScheduler, built for `num_inference_steps`.
#[derive(Debug, Clone)]
pub struct DpmSolverSinglestepScheduler {
    core: DpmCore,
    order_list: Vec<usize>,
    /// `self.model_outputs`: the last `solver_order` converted model outputs, oldest first.
    model_outputs: Vec<Option<Tensor<4>>>,
    /// `self.sample`: the sample at the first step of the current group.
    sample: Option<Tensor<4>>,
}

impl DpmSolverSinglestepScheduler {
    pub fn new(config: &SchedulerConfig, num_inference_steps: usize, _options: &StepOptions) -> Result<Self> {
        let mut r = config.reader("DPMSolverSinglestepScheduler");
        let c = DpmConfig::read(
            &mut r,
            &DpmClassInfo {
                class: "DPMSolverSinglestepScheduler",
                algorithms: &["dpmsolver", "dpmsolver++", "sde-dpmsolver++", "deis"],
                knows_rescale: false,
            },
        )?;
        r.finish();

        let order = c.solver_order;
        if order > 3 {
            return Err(SchedulerError::Unsupported {
                key: "solver_order".into(),
                value: order.to_string(),
                allowed: "1, 2 or 3 (Order > 3 is not supported by this scheduler)".into(),
            });
        }
        if c.algorithm == AlgorithmType::DpmSolver && !matches!(c.clip, SampleClip::None) {
            // convert_model_output indexes `self.alpha_t[timestep]` with timestep = None there,
            // which fails for any real sample shape
            return Err(SchedulerError::Invalid(
                "thresholding with algorithm_type dpmsolver is broken in diffusers' \
                 DPMSolverSinglestepScheduler; use algorithm_type dpmsolver++"
                    .into(),
            ));
        }
        let train = c.betas.num_train_timesteps;
        // __init__ builds the order list for num_train_timesteps with the config as given
        if order_list(train, order, c.lower_order_final, !c.final_sigma_min).is_none() {
            return Err(SchedulerError::Invalid(format!(
                "solver_order {order} with lower_order_final false needs num_train_timesteps >= {order}"
            )));
        }

        let n = num_inference_steps;
        check_steps(n, train)?;
        let alphas_cumprod = c.alphas_cumprod();
        let clipped_idx = c.clipped_idx(&alphas_cumprod);
        let mut timesteps: Vec<f64> = np_linspace(0.0, (train - 1 - clipped_idx.min(train - 1)) as f64, n + 1)
            .into_iter()
            .map(np_round)
            .rev()
            .collect();
        timesteps.pop();
        // Karras timesteps are always rounded here (even for squaredcos_cap_v2)
        let (timesteps, sigmas) = c.layout(&alphas_cumprod, timesteps, n, false, true)?;

        // set_timesteps switches lower_order_final on for uneven step counts and for a zero final σ
        let mut lower_order_final = c.lower_order_final;
        if !lower_order_final && n % order != 0 {
            log::warn!(
                "DPMSolverSinglestepScheduler: {n} steps is not a multiple of solver_order {order}; \
                 using lower_order_final = true"
            );
            lower_order_final = true;
        }
        if !lower_order_final && !c.final_sigma_min {
            log::warn!(
                "DPMSolverSinglestepScheduler: final_sigmas_type zero needs lower_order_final; \
                 using lower_order_final = true"
            );
            lower_order_final = true;
        }
        let order_list = order_list(n, order, lower_order_final, !c.final_sigma_min)
            .expect("lower_order_final lists are never empty");
        if order_list.len() < timesteps.len() {
            return Err(SchedulerError::Invalid(format!(
                "the order list has {} entries for {} timesteps",
                order_list.len(),
                timesteps.len()
            )));
        }
        Ok(Self { core: c.core(SchedulerClass::DpmSolverSinglestep, timesteps, sigmas), order_list, model_outputs: vec![None; order], sample: None })
    }

    /// The solver order of each step (`scheduler.order_list`).
    pub fn order_list(&self) -> &[usize] {
        &self.order_list
    }

    /// `singlestep_dpm_solver_second_order_update`: from `sigmas[i - 1]` (the group's start) to
    /// `sigmas[i + 1]`, with the model outputs at `i - 1` and `i`.
    fn second_order_update(&self, step_index: usize, sample: Tensor<4>, noise: Option<Tensor<4>>) -> Tensor<4> {
        let c = &self.core;
        let t = c.alpha_sigma(step_index + 1);
        let s0 = c.alpha_sigma(step_index);
        let s1 = c.alpha_sigma(step_index - 1);
        let k = self.model_outputs.len();
        let m0 = self.model_outputs[k - 1].clone().expect("set by step");
        let m1 = self.model_outputs[k - 2].clone().expect("checked by step");
        let (h, h_0) = (t.lambda - s1.lambda, s0.lambda - s1.lambda);
        let r0 = h_0 / h;
        let d1 = (m0 - m1.clone()).mul_scalar((1.0 / r0) as f64);
        c.update_2(c.solver_type, t, s1, h, m1, d1, sample, noise)
    }

    /// `singlestep_dpm_solver_third_order_update`: from `sigmas[i - 2]` to `sigmas[i + 1]`. Its
    /// midpoint branch is the second-order Heun formula with D1 = D1_1.
    fn third_order_update(&self, step_index: usize, sample: Tensor<4>, noise: Option<Tensor<4>>) -> Tensor<4> {
        let c = &self.core;
        let t = c.alpha_sigma(step_index + 1);
        let s0 = c.alpha_sigma(step_index);
        let s1 = c.alpha_sigma(step_index - 1);
        let s2 = c.alpha_sigma(step_index - 2);
        let k = self.model_outputs.len();
        let m0 = self.model_outputs[k - 1].clone().expect("set by step");
        let m1 = self.model_outputs[k - 2].clone().expect("checked by step");
        let m2 = self.model_outputs[k - 3].clone().expect("checked by step");
        let (h, h_0, h_1) = (t.lambda - s2.lambda, s0.lambda - s2.lambda, s1.lambda - s2.lambda);
        let (r0, r1) = (h_0 / h, h_1 / h);
        let d1_0 = (m1 - m2.clone()).mul_scalar((1.0 / r1) as f64);
        let d1_1 = (m0 - m2.clone()).mul_scalar((1.0 / r0) as f64);
        match c.solver_type {
            SolverType::Midpoint => c.update_2(SolverType::Heun, t, s2, h, m2, d1_1, sample, noise),
            SolverType::Heun => {
                let d1 = (d1_0.clone().mul_scalar(r0 as f64) - d1_1.clone().mul_scalar(r1 as f64)).div_scalar((r0 - r1) as f64);
                let d2 = (d1_1 - d1_0).mul_scalar(2.0).div_scalar((r0 - r1) as f64);
                c.update_3(t, s2, h, m2, d1, d2, sample, noise)
            }
        }
    }
}

impl Scheduler for DpmSolverSinglestepScheduler {
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
        let model_output = self.core.convert_model_output(model_output, &sample, step_index);
        self.model_outputs.remove(0);
        self.model_outputs.push(Some(model_output.clone()));
        let noise = if self.core.algorithm.is_sde() { Some(noise_like(&model_output, noise)) } else { None };
        let k = self.model_outputs.len();
        let mut order = self.order_list[step_index];
        while self.model_outputs[k - order].is_none() {
            order -= 1;
        }
        if order == 1 {
            self.sample = Some(sample);
        }
        let group_sample = self.sample.clone().expect("set at the group's first step");
        match order {
            1 => self.core.first_order_update(model_output, step_index, group_sample, noise),
            2 => self.second_order_update(step_index, group_sample, noise),
            _ => self.third_order_update(step_index, group_sample, noise),
        }
    }

    fn add_noise(&self, original: Tensor<4>, noise: Tensor<4>, step_index: usize) -> Tensor<4> {
        self.core.add_noise(original, noise, step_index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_lists_match_diffusers() {
        // DPMSolverSinglestepScheduler.get_order_list, diffusers 0.42.1
        assert_eq!(order_list(9, 3, true, true).unwrap(), vec![1, 2, 3, 1, 2, 3, 1, 2, 1]);
        assert_eq!(order_list(10, 3, true, true).unwrap(), vec![1, 2, 3, 1, 2, 3, 1, 2, 3, 1]);
        assert_eq!(order_list(11, 3, true, false).unwrap(), vec![1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2]);
        assert_eq!(order_list(6, 2, true, false).unwrap(), vec![1, 2, 1, 2, 1, 1]);
        assert_eq!(order_list(7, 2, true, true).unwrap(), vec![1, 2, 1, 2, 1, 2, 1]);
        assert_eq!(order_list(6, 3, false, false).unwrap(), vec![1, 2, 3, 1, 2, 3]);
        assert_eq!(order_list(1, 3, true, true).unwrap(), vec![1]);
        assert_eq!(order_list(2, 3, true, true).unwrap(), vec![1, 1]);
        assert_eq!(order_list(2, 3, false, true), None);
    }

    #[test]
    fn lower_order_final_is_switched_on_like_set_timesteps() {
        let config = SchedulerConfig::default().with("solver_order", 3).with("lower_order_final", false);
        // zero final σ forces lower_order_final = true
        let s = DpmSolverSinglestepScheduler::new(&config, 9, &StepOptions::default()).unwrap();
        assert_eq!(s.order_list(), &[1, 2, 3, 1, 2, 3, 1, 2, 1]);
        // σ_min final and a multiple of the order keeps it off
        let config = config.with("final_sigmas_type", "sigma_min");
        let s = DpmSolverSinglestepScheduler::new(&config, 9, &StepOptions::default()).unwrap();
        assert_eq!(s.order_list(), &[1, 2, 3, 1, 2, 3, 1, 2, 3]);
        // an uneven step count switches it on
        let s = DpmSolverSinglestepScheduler::new(&config, 8, &StepOptions::default()).unwrap();
        assert_eq!(s.order_list(), &[1, 2, 3, 1, 2, 3, 1, 2]);
    }

    #[test]
    fn refuses_what_diffusers_refuses() {
        let o = StepOptions::default();
        let c = SchedulerConfig::default().with("algorithm_type", "dpmsolver");
        assert!(DpmSolverSinglestepScheduler::new(&c, 10, &o).is_err(), "dpmsolver needs final_sigmas_type sigma_min");
        let c = SchedulerConfig::default().with("algorithm_type", "sde-dpmsolver");
        assert!(DpmSolverSinglestepScheduler::new(&c, 10, &o).is_err());
        let c = SchedulerConfig::default().with("solver_order", 4);
        assert!(DpmSolverSinglestepScheduler::new(&c, 10, &o).is_err());
        let c = SchedulerConfig::default().with("algorithm_type", "deis");
        assert!(DpmSolverSinglestepScheduler::new(&c, 10, &o).is_err(), "deis is remapped but fails the final σ check");
        let c = c.with("final_sigmas_type", "sigma_min");
        assert!(DpmSolverSinglestepScheduler::new(&c, 10, &o).is_ok());
    }
}
