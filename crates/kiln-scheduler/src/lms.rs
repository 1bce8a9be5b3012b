//! `LMSDiscreteScheduler` (diffusers `schedulers/scheduling_lms_discrete.py`): the linear
//! multistep sampler of k-diffusion (`sample_lms`, Karras et al. 2022 sigmas), order up to 4.
//!
//! diffusers gets each multistep coefficient from `scipy.integrate.quad` of a Lagrange basis
//! polynomial; kiln integrates that polynomial exactly in closed form (see [`lms_coefficient`]).
//!
//! Its σ schedule is `common.rs`'s `k_sigma_schedule`, which the k-diffusion style samplers
//! (LMS, Heun, KDPM2, KDPM2 ancestral) share.

use std::collections::VecDeque;

use burn::tensor::Tensor;

use crate::class::SchedulerClass;
use crate::common::{k_init_noise_sigma, k_pred_original_sample, k_scale_model_input, k_sigma_schedule, read_steps_offset, PredictionType, TimestepSpacing};
use crate::config::SchedulerConfig;
use crate::error::{Result, SchedulerError};
use crate::float::f32r;
use crate::schedule::{BetaConfig, SigmaSpacing};
use crate::scheduler::{check_steps, NoiseSource, Schedule, Scheduler, StepOptions};

/// `get_lms_coefficient(order, t, current_order)`:
/// ∫ from σ_t to σ_{t+1} of Π_{k ≠ j} (τ − σ_{t−k}) / (σ_{t−j} − σ_{t−k}) dτ, with j = `current`.
///
/// diffusers evaluates this with `scipy.integrate.quad(..., epsrel=1e-4)`. The integrand is a
/// polynomial of degree `order − 1` ≤ 3, and QUADPACK's first rule (21-point Gauss–Kronrod) is
/// exact for polynomials up to degree 31, so quad's answer is the exact integral up to rounding
/// (its error estimate is at rounding level and passes the tolerance at once; were it ever to
/// subdivide, every sub-rule would be exact as well). Here the polynomial is expanded in
/// u = τ − σ_t (local coordinates avoid cancellation when σ is large) and integrated term by
/// term over [0, σ_{t+1} − σ_t] in f64. diffusers evaluates the integrand in float32 (the σ are
/// float32 tensors), so the two differ by float32 rounding of the coefficient (~1e-7 relative).
pub fn lms_coefficient(sigmas: &[f64], order: usize, t: usize, current: usize) -> f64 {
    let a = sigmas[t];
    let h = sigmas[t + 1] - a;
    // poly[i] is the coefficient of u^i
    let mut poly = vec![1.0f64];
    let mut denom = 1.0f64;
    for k in 0..order {
        if k == current {
            continue;
        }
        // τ − σ_{t−k} = u + c
        let c = a - sigmas[t - k];
        let mut next = vec![0.0f64; poly.len() + 1];
        for (i, &p) in poly.iter().enumerate() {
            next[i] += p * c;
            next[i + 1] += p;
        }
        poly = next;
        denom *= sigmas[t - current] - sigmas[t - k];
    }
    let mut integral = 0.0;
    let mut h_pow = h;
    for (i, &p) in poly.iter().enumerate() {
        integral += p * h_pow / (i + 1) as f64;
        h_pow *= h;
    }
    integral / denom
}

/// The most derivatives LMS keeps (`step(..., order=4)`, the pipelines' default).
const LMS_ORDER: usize = 4;

/// LMSDiscreteScheduler, built for `num_inference_steps`.
#[derive(Debug, Clone)]
pub struct LmsScheduler {
    prediction_type: PredictionType,
    /// sigmas: n + 1 values (the last is 0), float32 like diffusers.
    schedule: Schedule,
    /// The last (up to 4) derivatives, oldest first (`self.derivatives`).
    derivatives: VecDeque<Tensor<4>>,
}

impl LmsScheduler {
    pub fn new(config: &SchedulerConfig, num_inference_steps: usize, _options: &StepOptions) -> Result<Self> {
        let mut r = config.reader("LMSDiscreteScheduler");
        let betas =
            BetaConfig::read(&mut r, 0.0001, 0.02, "linear", &["linear", "scaled_linear", "squaredcos_cap_v2"], false)?;
        let sigma_spacing = SigmaSpacing::read(&mut r, true)?;
        let prediction_type = PredictionType::read(&mut r)?;
        let spacing = TimestepSpacing::read(&mut r, "linspace")?;
        let steps_offset = read_steps_offset(&mut r, betas.num_train_timesteps)?;
        r.finish();

        let n = num_inference_steps;
        check_steps(n, betas.num_train_timesteps)?;
        let alphas_cumprod = betas.alphas_cumprod();
        let schedule = k_sigma_schedule(&alphas_cumprod, spacing, sigma_spacing, n, steps_offset);
        // sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
        let mut sigmas: Vec<f64> = schedule.sigmas.into_iter().map(f32r).collect();
        sigmas.push(0.0);
        // self.schedule.timesteps = torch.from_numpy(timesteps).to(dtype=torch.float32)
        let timesteps: Vec<f64> = schedule.timesteps.into_iter().map(f32r).collect();
        if timesteps.is_empty() {
            return Err(SchedulerError::Invalid("the schedule has no timesteps".into()));
        }
        let init_noise_sigma = k_init_noise_sigma(&sigmas, spacing);
        Ok(Self { prediction_type, derivatives: VecDeque::new(), schedule: Schedule { class: SchedulerClass::Lms, timesteps, sigmas, init_noise_sigma } })
    }
}

impl Scheduler for LmsScheduler {
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
        _noise: &mut dyn NoiseSource,
    ) -> Tensor<4> {
        let sigma = self.schedule.sigmas[step_index] as f32;
        let pred_original_sample = k_pred_original_sample(self.prediction_type, model_output, &sample, sigma);
        let derivative = (sample.clone() - pred_original_sample).div_scalar(sigma);
        self.derivatives.push_back(derivative);
        if self.derivatives.len() > LMS_ORDER {
            self.derivatives.pop_front();
        }
        // order = min(step_index + 1, order): after img2img's begin the coefficients are those of
        // a higher-order rule, but zip() with the (fewer) stored derivatives uses only the first ones
        let order = (step_index + 1).min(LMS_ORDER);
        let used = order.min(self.derivatives.len());
        // prev_sample = sample + sum(coeff * derivative for coeff, derivative in
        //                            zip(lms_coeffs, reversed(self.derivatives)))
        let mut acc: Option<Tensor<4>> = None;
        for (current, derivative) in self.derivatives.iter().rev().take(used).enumerate() {
            let coeff = lms_coefficient(&self.schedule.sigmas, order, step_index, current);
            let term = derivative.clone().mul_scalar(coeff);
            acc = Some(match acc {
                None => term,
                Some(a) => a + term,
            });
        }
        match acc {
            Some(a) => sample + a,
            None => sample,
        }
    }

    fn add_noise(&self, original: Tensor<4>, noise: Tensor<4>, step_index: usize) -> Tensor<4> {
        original + noise.mul_scalar(self.schedule.sigmas[step_index] as f32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::float::np_log_f32;

    /// `np.log(np.float32)` from numpy 2.4.6 (x86-64, AVX512): bit patterns of input and output.
    /// The first six are SD 1.5 training sigmas where numpy is an ulp off the rounded log.
    #[test]
    fn np_log_matches_numpy_bit_for_bit() {
        for (x, want) in [
            (0x3daad9cd_u32, 0xc01ef70c_u32),
            (0x3ddb890c, 0xc00eeb35),
            (0x3e2b5472, 0xbfe4d94a),
            (0x3e3d7c8a, 0xbfd7f4aa),
            (0x3e4ea2f9, 0xbfccdd84),
            (0x3e9654d1, 0xbf9cdca0),
            (0x3ceef0c0, 0xc0623882),
            (0x3fcf23ca, 0x3ef6754d),
            (0x4169d598, 0x402ba649),
            (0x2edbe6ff, 0xc1b834f1),
            (0x3f000000, 0xbf317218),
            (0x3f3504f3, 0xbeb17218),
            (0x3f3504f4, 0xbeb17215),
            (0x3f800000, 0x00000000),
            (0x40000000, 0x3f317218),
            (0x0020aac8, 0xc2b16788),
            (0x47f1205a, 0x413b940e),
        ] {
            let got = np_log_f32(f32::from_bits(x));
            assert_eq!(got.to_bits(), want, "log({}) = {got}, numpy {}", f32::from_bits(x), f32::from_bits(want));
        }
        assert!(np_log_f32(f32::NAN).is_nan() && np_log_f32(-1.0).is_nan());
        assert_eq!(np_log_f32(0.0), f32::NEG_INFINITY);
    }

    /// The coefficients against `scipy.integrate.quad` with a tight tolerance (f64 integrand).
    #[test]
    fn lms_coefficients_are_the_exact_integrals() {
        let sigmas = [14.614647, 9.0, 5.2, 2.5, 0.9, 0.0];
        // Lagrange basis polynomials sum to 1, so the coefficients sum to σ_{t+1} − σ_t.
        for t in 0..5 {
            let order = (t + 1).min(4);
            let sum: f64 = (0..order).map(|j| lms_coefficient(&sigmas, order, t, j)).sum();
            assert!((sum - (sigmas[t + 1] - sigmas[t])).abs() < 1e-12, "t = {t}: {sum}");
        }
        // order 1 is Euler: ∫ 1 dτ
        assert!((lms_coefficient(&sigmas, 1, 0, 0) - (9.0 - 14.614647)).abs() < 1e-12);
        // order 2, j = 1 at t = 1: ∫_{9}^{5.2} (τ − 9) / (14.614647 − 9) dτ = (−3.8)² / 2 / 5.614647
        let want = 3.8f64 * 3.8 / 2.0 / 5.614647;
        assert!((lms_coefficient(&sigmas, 2, 1, 1) - want).abs() < 1e-12);
    }
}
