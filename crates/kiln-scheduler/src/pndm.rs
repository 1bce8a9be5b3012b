//! `PNDMScheduler` (diffusers `schedulers/scheduling_pndm.py`): pseudo numerical methods for
//! diffusion models (Liu et al. 2022): a linear multistep method (PLMS) on the DDIM transfer
//! function, warmed up either by four Runge–Kutta steps (PRK, 12 model calls) or, with
//! `skip_prk_steps`, by one Heun-like step that revisits its timestep.
//!
//! diffusers keeps no step index: `step` dispatches on its own call `counter` (PRK for the first
//! 12 calls unless `skip_prk_steps`, PLMS after) and keeps the model outputs `ets`. kiln does the
//! same, so an img2img loop that starts at a later index starts the counter at 0 exactly like
//! diffusers' pipeline does. `order` is 1 (the class attribute), even though PRK calls the model
//! four times per step.

use burn::tensor::Tensor;

use crate::class::SchedulerClass;
use crate::common::{add_noise_alphas, check_timestep_range, ddim_timesteps, read_steps_offset, TimestepSpacing};
use crate::config::SchedulerConfig;
use crate::error::{Result, SchedulerError};
use crate::schedule::BetaConfig;
use crate::scheduler::{check_steps, NoiseSource, Schedule, Scheduler, StepOptions};

/// `pndm_order`: PLMS uses up to four past model outputs; PRK warms up with four steps.
const PNDM_ORDER: usize = 4;

/// PNDMScheduler, built for `num_inference_steps`.
#[derive(Debug, Clone)]
pub struct PndmScheduler {
    /// float32 values, as diffusers' `alphas_cumprod`.
    alphas_cumprod: Vec<f64>,
    final_alpha_cumprod: f32,
    v_prediction: bool,
    skip_prk_steps: bool,
    num_train_timesteps: usize,
    num_inference_steps: usize,
    /// `prk_timesteps` (empty with `skip_prk_steps`), the first part of `timesteps`.
    prk_timesteps: Vec<i64>,
    /// timesteps: `prk_timesteps` followed by `plms_timesteps`.
    schedule: Schedule,
    // step state
    counter: usize,
    ets: Vec<Tensor<4>>,
    cur_sample: Option<Tensor<4>>,
    cur_model_output: Option<Tensor<4>>,
}

impl PndmScheduler {
    pub fn new(config: &SchedulerConfig, num_inference_steps: usize, options: &StepOptions) -> Result<Self> {
        let _ = options;
        let mut r = config.reader("PNDMScheduler");
        let betas =
            BetaConfig::read(&mut r, 0.0001, 0.02, "linear", &["linear", "scaled_linear", "squaredcos_cap_v2"], false)?;
        let skip_prk_steps = r.bool("skip_prk_steps", false)?;
        let set_alpha_to_one = r.bool("set_alpha_to_one", false)?;
        // `_get_prev_sample` raises for "sample"
        let v_prediction = r.choice("prediction_type", "epsilon", &["epsilon", "v_prediction"])? == "v_prediction";
        let spacing = TimestepSpacing::read(&mut r, "leading")?;
        let steps_offset = read_steps_offset(&mut r, betas.num_train_timesteps)?;
        r.finish();

        let train = betas.num_train_timesteps;
        let n = num_inference_steps;
        check_steps(n, train)?;
        let alphas_cumprod = betas.alphas_cumprod();
        let final_alpha_cumprod = if set_alpha_to_one { 1.0 } else { alphas_cumprod[0] as f32 };

        // set_timesteps: `_timesteps` ascending
        let base: Vec<i64> = ddim_timesteps(spacing, train, n, steps_offset).into_iter().rev().map(|t| t as i64).collect();
        let (prk_timesteps, plms_timesteps): (Vec<i64>, Vec<i64>) = if skip_prk_steps {
            // concatenate([_timesteps[:-1], _timesteps[-2:-1], _timesteps[-1:]])[::-1]
            let len = base.len();
            let mut plms: Vec<i64> = base[..len - 1].to_vec();
            if len >= 2 {
                plms.push(base[len - 2]);
            }
            plms.push(base[len - 1]);
            plms.reverse();
            (Vec::new(), plms)
        } else {
            if base.len() < PNDM_ORDER {
                return Err(SchedulerError::Invalid(format!(
                    "PNDMScheduler with skip_prk_steps = false needs at least {PNDM_ORDER} inference steps for its \
                     Runge-Kutta warm-up, got {n} (diffusers fails too); use more steps or skip_prk_steps = true"
                )));
            }
            // _timesteps[-4:].repeat(2) + tile([0, T // n // 2], 4)
            let half = (train / n / 2) as i64;
            let prk: Vec<i64> = base[base.len() - PNDM_ORDER..]
                .iter()
                .flat_map(|&t| [t, t + half])
                .collect();
            // (prk[:-1].repeat(2)[1:-1])[::-1]
            let repeated: Vec<i64> = prk[..prk.len() - 1].iter().flat_map(|&t| [t, t]).collect();
            let mut prk: Vec<i64> = repeated[1..repeated.len() - 1].to_vec();
            prk.reverse();
            // _timesteps[:-3][::-1]
            let plms: Vec<i64> = base[..base.len() - 3].iter().rev().copied().collect();
            (prk, plms)
        };
        let timesteps: Vec<f64> = prk_timesteps.iter().chain(&plms_timesteps).map(|&t| t as f64).collect();
        check_timestep_range(&timesteps, train, steps_offset)?;
        Ok(Self {
            alphas_cumprod,
            final_alpha_cumprod,
            v_prediction,
            skip_prk_steps,
            num_train_timesteps: train,
            num_inference_steps: n,
            prk_timesteps,
            counter: 0,
            ets: Vec::new(),
            cur_sample: None,
            cur_model_output: None,
            schedule: Schedule { class: SchedulerClass::Pndm, timesteps, sigmas: Vec::new(), init_noise_sigma: 1.0 },
        })
    }

    /// `step_prk`: one of the four evaluations of a Runge–Kutta step.
    fn step_prk(&mut self, model_output: Tensor<4>, timestep: i64, sample: Tensor<4>) -> Tensor<4> {
        let diff_to_prev =
            if self.counter % 2 == 1 { 0 } else { (self.num_train_timesteps / self.num_inference_steps / 2) as i64 };
        let prev_timestep = timestep - diff_to_prev;
        let timestep = self.prk_timesteps[self.counter / 4 * 4];
        let add = |acc: Option<Tensor<4>>, x: Tensor<4>| match acc {
            None => x, // `self.cur_model_output = 0` + x
            Some(acc) => acc + x,
        };
        let model_output = match self.counter % 4 {
            0 => {
                let part = model_output.clone().mul_scalar(1.0 / 6.0);
                self.cur_model_output = Some(add(self.cur_model_output.take(), part));
                self.ets.push(model_output.clone());
                self.cur_sample = Some(sample.clone());
                model_output
            }
            1 | 2 => {
                let part = model_output.clone().mul_scalar(1.0 / 3.0);
                self.cur_model_output = Some(add(self.cur_model_output.take(), part));
                model_output
            }
            _ => add(self.cur_model_output.take(), model_output.mul_scalar(1.0 / 6.0)),
        };
        let cur_sample = self.cur_sample.clone().unwrap_or(sample);
        let prev_sample = self.get_prev_sample(cur_sample, timestep, prev_timestep, model_output);
        self.counter += 1;
        prev_sample
    }

    /// `step_plms`: the linear multistep update (with the Heun-like start of `skip_prk_steps`).
    fn step_plms(&mut self, model_output: Tensor<4>, timestep: i64, sample: Tensor<4>) -> Tensor<4> {
        let ratio = (self.num_train_timesteps / self.num_inference_steps) as i64;
        let mut timestep = timestep;
        let mut prev_timestep = timestep - ratio;
        if self.counter != 1 {
            let keep = self.ets.len().saturating_sub(3);
            self.ets.drain(..keep);
            self.ets.push(model_output.clone());
        } else {
            prev_timestep = timestep;
            timestep += ratio;
        }
        let mut sample = sample;
        let e = &self.ets;
        let k = e.len();
        let model_output = if k == 1 && self.counter == 0 {
            self.cur_sample = Some(sample.clone());
            model_output
        } else if k == 1 && self.counter == 1 {
            sample = self.cur_sample.take().expect("the first PLMS step stored its sample");
            (model_output + e[k - 1].clone()).div_scalar(2.0)
        } else if k == 2 {
            (e[k - 1].clone().mul_scalar(3.0) - e[k - 2].clone()).div_scalar(2.0)
        } else if k == 3 {
            (e[k - 1].clone().mul_scalar(23.0) - e[k - 2].clone().mul_scalar(16.0) + e[k - 3].clone().mul_scalar(5.0))
                .div_scalar(12.0)
        } else {
            (e[k - 1].clone().mul_scalar(55.0) - e[k - 2].clone().mul_scalar(59.0)
                + e[k - 3].clone().mul_scalar(37.0)
                - e[k - 4].clone().mul_scalar(9.0))
            .mul_scalar(1.0 / 24.0)
        };
        let prev_sample = self.get_prev_sample(sample, timestep, prev_timestep, model_output);
        self.counter += 1;
        prev_sample
    }

    /// `_get_prev_sample`: eq. 9 of the PNDM paper (the DDIM step written for ε), in float32 like
    /// diffusers' 0-dim tensors.
    fn get_prev_sample(&self, sample: Tensor<4>, timestep: i64, prev_timestep: i64, model_output: Tensor<4>) -> Tensor<4> {
        let alpha_prod_t = self.alphas_cumprod[timestep as usize] as f32;
        let alpha_prod_t_prev =
            if prev_timestep >= 0 { self.alphas_cumprod[prev_timestep as usize] as f32 } else { self.final_alpha_cumprod };
        let beta_prod_t = 1.0 - alpha_prod_t;
        let beta_prod_t_prev = 1.0 - alpha_prod_t_prev;
        let model_output = if self.v_prediction {
            model_output.mul_scalar(alpha_prod_t.sqrt()) + sample.clone().mul_scalar(beta_prod_t.sqrt())
        } else {
            model_output
        };
        let sample_coeff = (alpha_prod_t_prev / alpha_prod_t).sqrt();
        let model_output_denom_coeff =
            alpha_prod_t * beta_prod_t_prev.sqrt() + (alpha_prod_t * beta_prod_t * alpha_prod_t_prev).sqrt();
        sample.mul_scalar(sample_coeff)
            - model_output.mul_scalar(alpha_prod_t_prev - alpha_prod_t).div_scalar(model_output_denom_coeff)
    }
}

impl Scheduler for PndmScheduler {
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
        let _ = noise;
        let timestep = self.schedule.timesteps[step_index] as i64;
        if self.counter < self.prk_timesteps.len() && !self.skip_prk_steps {
            self.step_prk(model_output, timestep, sample)
        } else {
            self.step_plms(model_output, timestep, sample)
        }
    }

    fn add_noise(&self, original: Tensor<4>, noise: Tensor<4>, step_index: usize) -> Tensor<4> {
        add_noise_alphas(&self.alphas_cumprod, self.schedule.timesteps[step_index], original, noise)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(json: &str, n: usize) -> Result<PndmScheduler> {
        PndmScheduler::new(&SchedulerConfig::from_json_str(json, "test").unwrap(), n, &StepOptions::default())
    }

    #[test]
    fn timesteps_with_and_without_prk() {
        // diffusers 0.42.1, PNDMScheduler(steps_offset=1, skip_prk_steps=True).set_timesteps(10)
        let s = build(r#"{"steps_offset": 1, "skip_prk_steps": true}"#, 10).unwrap();
        assert_eq!(s.timesteps(), &[901.0, 801.0, 801.0, 701.0, 601.0, 501.0, 401.0, 301.0, 201.0, 101.0, 1.0]);
        // PNDMScheduler().set_timesteps(4)
        let s = build("{}", 4).unwrap();
        assert_eq!(
            s.timesteps(),
            &[750.0, 625.0, 625.0, 500.0, 500.0, 375.0, 375.0, 250.0, 250.0, 125.0, 125.0, 0.0, 0.0]
        );
    }

    #[test]
    fn prk_needs_four_steps_and_sample_prediction_is_refused() {
        let msg = build("{}", 3).unwrap_err().to_string();
        assert!(msg.contains("skip_prk_steps") && msg.contains("at least 4"), "{msg}");
        assert!(build(r#"{"skip_prk_steps": true}"#, 1).is_ok());
        let msg = build(r#"{"prediction_type": "sample"}"#, 10).unwrap_err().to_string();
        assert!(msg.contains("prediction_type") && msg.contains("v_prediction"), "{msg}");
    }
}
