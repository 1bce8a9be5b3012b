//! `UniPCMultistepScheduler` (diffusers `schedulers/scheduling_unipc_multistep.py`): the unified
//! predictor-corrector of Zhao et al. 2023 (arXiv 2302.04867), UniP-p predictor with the UniC
//! corrector, B(h) = h (`bh1`) or e^h − 1 (`bh2`), data (`predict_x0`) or noise prediction.
//!
//! diffusers computes every scalar of the update (α_t, σ_t, λ_t, h, the φ-functions, the ρ
//! coefficients of `torch.linalg.solve`) as 0-dim float32 tensors; this port does the same
//! arithmetic in `f32`, in the same order, so the small differences λ_t − λ_s (where float32
//! cancellation dominates) come out as diffusers has them.

use burn::tensor::Tensor;

use crate::class::SchedulerClass;
use crate::common::{alpha_sigma_f32, multistep_timesteps, read_solver_order, read_steps_offset, spaced_timesteps, train_sigmas_and_logs, PredictionType, SampleClip, TimestepSpacing};
use crate::config::SchedulerConfig;
use crate::error::{Result, SchedulerError};
use crate::float::{f32r, np_interp, torch_expm1_f32, torch_log_f32};
use crate::schedule::{BetaConfig, SigmaBounds, SigmaSpacing};
use crate::scheduler::{check_steps, NoiseSource, Schedule, Scheduler, StepOptions};

/// α_t, σ_t and λ_t = log α_t − log σ_t of a float32 σ, as diffusers' UniPC updates compute them.
#[inline]
fn alpha_sigma_lambda(sigma: f32) -> (f32, f32, f32) {
    let (alpha, sigma_t) = alpha_sigma_f32(sigma);
    (alpha, sigma_t, torch_log_f32(alpha) - torch_log_f32(sigma_t))
}

/// `torch.linalg.solve(a, b)` for a tiny float32 system, as torch's CPU path (MKL `sgetrf` +
/// `sgetrs`) computes it: LU with partial pivoting (the first row of largest |a_ij|), the first
/// column scaled by the pivot's reciprocal and later columns divided by their pivot, fused
/// multiply-add updates; then forward (unit lower) and back substitution as fused dot products,
/// each unknown multiplied by its diagonal's reciprocal. Bit for bit with torch 2.15/MKL on
/// 1 500 random 2×2 systems (UniPC's order-2 corrector and order-3 predictor) and for the 3×3
/// factorisation; MKL's 3×3 substitution order differs and lands within a few ulps.
pub(crate) fn solve_f32(mut a: Vec<Vec<f32>>, mut b: Vec<f32>) -> Vec<f32> {
    let n = b.len();
    for j in 0..n {
        let mut p = j;
        for i in j + 1..n {
            if a[i][j].abs() > a[p][j].abs() {
                p = i;
            }
        }
        if p != j {
            a.swap(p, j);
            b.swap(p, j);
        }
        let pivot = a[j][j];
        let r = 1.0f32 / pivot;
        for row in a.iter_mut().skip(j + 1) {
            row[j] = if j == 0 { row[j] * r } else { row[j] / pivot };
        }
        for i in j + 1..n {
            let l = a[i][j];
            for k in j + 1..n {
                a[i][k] = (-l).mul_add(a[j][k], a[i][k]);
            }
        }
    }
    // L y = P b (unit lower)
    for i in 0..n {
        for k in 0..i {
            b[i] = (-a[i][k]).mul_add(b[k], b[i]);
        }
    }
    // U x = y, from the last row up
    for i in (0..n).rev() {
        for k in i + 1..n {
            b[i] = (-a[i][k]).mul_add(b[k], b[i]);
        }
        b[i] *= 1.0f32 / a[i][i];
    }
    b
}

/// `torch.einsum("k,bkc...->bc...", rhos, D1s)`: Σ_k ρ_k D1_k.
fn weighted_sum(rhos: &[f32], d1s: &[Tensor<4>]) -> Tensor<4> {
    let mut acc = d1s[0].clone().mul_scalar(rhos[0]);
    for (rho, d) in rhos.iter().zip(d1s).skip(1) {
        acc = acc + d.clone().mul_scalar(*rho);
    }
    acc
}

/// The coefficients shared by the predictor and the corrector (the loop over `order` in
/// `multistep_uni_p_bh_update` / `multistep_uni_c_bh_update`): `rks`, the matrix R (rows rks^(i−1)),
/// b, hφ₁(h) and B(h).
struct UniCoefficients {
    r: Vec<Vec<f32>>,
    b: Vec<f32>,
    h_phi_1: f32,
    b_h: f32,
}

fn uni_coefficients(rks: &[f32], hh: f32, bh1: bool, order: usize) -> UniCoefficients {
    let h_phi_1 = torch_expm1_f32(hh); // h φ₁(h) = e^h − 1
    let mut h_phi_k = h_phi_1 / hh - 1.0;
    let mut factorial_i: u64 = 1;
    let b_h = if bh1 { hh } else { torch_expm1_f32(hh) };
    let mut r = Vec::with_capacity(order);
    let mut b = Vec::with_capacity(order);
    for i in 1..=order {
        // torch.pow(rks, i - 1): 0 → ones, 1 → copy, 2 → x·x, 3 → x·x·x
        let e = i - 1;
        r.push(
            rks.iter()
                .map(|&x| match e {
                    0 => 1.0,
                    1 => x,
                    2 => x * x,
                    3 => x * x * x,
                    _ => x.powf(e as f32),
                })
                .collect(),
        );
        b.push(h_phi_k * factorial_i as f32 / b_h);
        factorial_i *= i as u64 + 1;
        h_phi_k = h_phi_k / hh - (1.0 / factorial_i as f64) as f32;
    }
    UniCoefficients { r, b, h_phi_1, b_h }
}

/// UniPCMultistepScheduler, built for `num_inference_steps`.
#[derive(Debug, Clone)]
pub struct UniPcScheduler {
    prediction_type: PredictionType,
    clip: SampleClip,
    predict_x0: bool,
    bh1: bool,
    solver_order: usize,
    lower_order_final: bool,
    disable_corrector: Vec<usize>,
    /// sigmas: n + 1 values, float32 like diffusers (the last is 0 or σ_min).
    schedule: Schedule,
    /// The converted model outputs of the last `solver_order` steps, oldest first
    /// (`self.model_outputs`).
    model_outputs: Vec<Option<Tensor<4>>>,
    lower_order_nums: usize,
    /// The (corrected) sample the last predictor started from (`self.last_sample`).
    last_sample: Option<Tensor<4>>,
    /// The order of the last predictor, which the next corrector reuses (`self.this_order`).
    this_order: usize,
}

impl UniPcScheduler {
    pub fn new(config: &SchedulerConfig, num_inference_steps: usize, _options: &StepOptions) -> Result<Self> {
        let mut r = config.reader("UniPCMultistepScheduler");
        let betas = BetaConfig::read(
            &mut r,
            0.0001,
            0.02,
            "linear",
            &["linear", "scaled_linear", "squaredcos_cap_v2"],
            true,
        )?;
        let solver_order = read_solver_order(&mut r)?;
        let prediction_type = PredictionType::read(&mut r)?;
        let clip = SampleClip::read(&mut r, None)?;
        let predict_x0 = r.bool("predict_x0", true)?;
        // diffusers maps the other solvers' names to bh2 (`register_to_config(solver_type="bh2")`)
        let solver_type = r.choice("solver_type", "bh2", &["bh1", "bh2", "midpoint", "heun", "logrho"])?;
        let lower_order_final = r.bool("lower_order_final", true)?;
        let disable_corrector = r.usize_list("disable_corrector")?;
        // `solver_p` is a scheduler object, which a config file cannot hold: always absent.
        let spacing_kind = SigmaSpacing::read(&mut r, true)?;
        let use_flow_sigmas = r.bool("use_flow_sigmas", false)?;
        let _flow_shift = r.f64("flow_shift", 1.0)?;
        let spacing = TimestepSpacing::read(&mut r, "linspace")?;
        let steps_offset = read_steps_offset(&mut r, betas.num_train_timesteps)?;
        let final_sigmas_type = r.choice("final_sigmas_type", "zero", &["zero", "sigma_min"])?;
        let use_dynamic_shifting = r.bool("use_dynamic_shifting", false)?;
        let _time_shift_type = r.choice("time_shift_type", "exponential", &["exponential", "linear"])?;
        let bounds = SigmaBounds { sigma_min: r.opt_f64("sigma_min")?, sigma_max: r.opt_f64("sigma_max")? };
        let shift_terminal = r.opt_f64("shift_terminal")?;
        r.finish();

        if use_flow_sigmas {
            return Err(SchedulerError::Unsupported {
                key: "use_flow_sigmas".into(),
                value: "true".into(),
                allowed: "false (flow-matching sigmas are not implemented)".into(),
            });
        }
        if use_dynamic_shifting {
            // diffusers' set_timesteps raises without `mu`, which only flow-matching pipelines pass
            return Err(SchedulerError::Unsupported {
                key: "use_dynamic_shifting".into(),
                value: "true".into(),
                allowed: "false (dynamic shifting needs `mu` from a flow-matching pipeline)".into(),
            });
        }
        if shift_terminal.is_some() {
            return Err(SchedulerError::Unsupported {
                key: "shift_terminal".into(),
                value: format!("{}", shift_terminal.unwrap()),
                allowed: "null (only supported with use_flow_sigmas = true)".into(),
            });
        }

        let n = num_inference_steps;
        check_steps(n, betas.num_train_timesteps)?;
        let mut alphas_cumprod = betas.alphas_cumprod();
        if betas.rescale_betas_zero_snr {
            // `self.alphas_cumprod[-1] = 2**-24`
            *alphas_cumprod.last_mut().unwrap() = 2f64.powi(-24);
        }
        let (train_sigmas, log_sigmas) = train_sigmas_and_logs(&alphas_cumprod);

        let mut timesteps = multistep_timesteps(spacing, betas.num_train_timesteps, n, steps_offset);
        let flipped: Vec<f64> = train_sigmas.iter().rev().cloned().collect();
        let mut sigmas = match spacing_kind.convert(&flipped, n, bounds) {
            Some(converted) => {
                timesteps = spaced_timesteps(spacing_kind, &converted, &log_sigmas);
                let last = if final_sigmas_type == "sigma_min" { converted[converted.len() - 1] } else { 0.0 };
                let mut s = converted;
                s.push(last);
                s
            }
            None => {
                let xp: Vec<f64> = (0..train_sigmas.len()).map(|i| i as f64).collect();
                let mut s: Vec<f64> = timesteps.iter().map(|&t| np_interp(t, &xp, &train_sigmas)).collect();
                // ((1 − ᾱ_0) / ᾱ_0) ** 0.5 on the float32 tensor
                s.push(if final_sigmas_type == "sigma_min" { train_sigmas[0] } else { 0.0 });
                s
            }
        };
        sigmas.iter_mut().for_each(|s| *s = f32r(*s));

        Ok(Self {
            prediction_type,
            clip,
            predict_x0,
            bh1: solver_type == "bh1",
            solver_order,
            lower_order_final,
            disable_corrector,
            model_outputs: vec![None; solver_order],
            lower_order_nums: 0,
            last_sample: None,
            this_order: 0,
            schedule: Schedule { class: SchedulerClass::UniPc, timesteps, sigmas, init_noise_sigma: 1.0 },
        })
    }

    fn sigma(&self, index: usize) -> f32 {
        self.schedule.sigmas[index] as f32
    }

    /// `convert_model_output`: the data prediction x₀ (`predict_x0`) or the noise prediction ε.
    fn convert_model_output(&self, model_output: Tensor<4>, sample: Tensor<4>, step_index: usize) -> Tensor<4> {
        let (alpha_t, sigma_t) = alpha_sigma_f32(self.sigma(step_index));
        if self.predict_x0 {
            let x0_pred = match self.prediction_type {
                PredictionType::Epsilon => (sample - model_output.mul_scalar(sigma_t)).div_scalar(alpha_t),
                PredictionType::Sample => model_output,
                PredictionType::VPrediction => sample.mul_scalar(alpha_t) - model_output.mul_scalar(sigma_t),
            };
            self.clip.apply(x0_pred)
        } else {
            match self.prediction_type {
                PredictionType::Epsilon => model_output,
                PredictionType::Sample => (sample - model_output.mul_scalar(alpha_t)).div_scalar(sigma_t),
                PredictionType::VPrediction => model_output.mul_scalar(alpha_t) + sample.mul_scalar(sigma_t),
            }
        }
    }

    /// The `i`-th most recent converted model output (0 = the newest, `model_output_list[-(i + 1)]`).
    fn history(&self, i: usize) -> Tensor<4> {
        self.model_outputs[self.solver_order - 1 - i].clone().expect("the warm-up order never reaches past the history")
    }

    /// x_t_ of both updates: σ_t/σ_s0 · x − α_t hφ₁ m0 (data prediction) or
    /// α_t/α_s0 · x − σ_t hφ₁ m0 (noise prediction).
    fn base_update(&self, x: Tensor<4>, m0: Tensor<4>, t: (f32, f32), s0: (f32, f32), h_phi_1: f32) -> Tensor<4> {
        let ((alpha_t, sigma_t), (alpha_s0, sigma_s0)) = (t, s0);
        if self.predict_x0 {
            x.mul_scalar(sigma_t / sigma_s0) - m0.mul_scalar(alpha_t * h_phi_1)
        } else {
            x.mul_scalar(alpha_t / alpha_s0) - m0.mul_scalar(sigma_t * h_phi_1)
        }
    }

    /// `multistep_uni_p_bh_update`: the UniP predictor from `sample` at σ[i] to σ[i + 1].
    fn predictor(&self, sample: Tensor<4>, step_index: usize, order: usize) -> Tensor<4> {
        let m0 = self.history(0);
        let (alpha_t, sigma_t, lambda_t) = alpha_sigma_lambda(self.sigma(step_index + 1));
        let (alpha_s0, sigma_s0, lambda_s0) = alpha_sigma_lambda(self.sigma(step_index));
        let h = lambda_t - lambda_s0;
        let mut rks = Vec::with_capacity(order);
        let mut d1s = Vec::with_capacity(order);
        for i in 1..order {
            let si = step_index - i;
            let mi = self.history(i);
            let (_, _, lambda_si) = alpha_sigma_lambda(self.sigma(si));
            let rk = (lambda_si - lambda_s0) / h;
            rks.push(rk);
            d1s.push((mi - m0.clone()).div_scalar(rk));
        }
        rks.push(1.0);
        let hh = if self.predict_x0 { -h } else { h };
        let c = uni_coefficients(&rks, hh, self.bh1, order);
        let res_scale = if self.predict_x0 { alpha_t * c.b_h } else { sigma_t * c.b_h };
        let x_t_ = self.base_update(sample, m0, (alpha_t, sigma_t), (alpha_s0, sigma_s0), c.h_phi_1);
        if d1s.is_empty() {
            // `x_t_ - alpha_t * B_h * 0`: exact unless B_h is infinite (bh1 at σ = 0), where it is NaN
            let z = res_scale * 0.0;
            return if z == 0.0 { x_t_ } else { x_t_.sub_scalar(z) };
        }
        let rhos_p: Vec<f32> = if order == 2 {
            vec![0.5]
        } else {
            let k = order - 1;
            let a: Vec<Vec<f32>> = c.r[..k].iter().map(|row| row[..k].to_vec()).collect();
            solve_f32(a, c.b[..k].to_vec())
        };
        let pred_res = weighted_sum(&rhos_p, &d1s);
        x_t_ - pred_res.mul_scalar(res_scale)
    }

    /// `multistep_uni_c_bh_update`: the UniC corrector of the sample predicted at the previous step
    /// (from `last_sample` at σ[i − 1] to σ[i]), using this step's converted output `model_t`.
    fn corrector(&self, model_t: Tensor<4>, last_sample: Tensor<4>, step_index: usize, order: usize) -> Tensor<4> {
        let m0 = self.history(0);
        let (alpha_t, sigma_t, lambda_t) = alpha_sigma_lambda(self.sigma(step_index));
        let (alpha_s0, sigma_s0, lambda_s0) = alpha_sigma_lambda(self.sigma(step_index - 1));
        let h = lambda_t - lambda_s0;
        let mut rks = Vec::with_capacity(order);
        let mut d1s = Vec::with_capacity(order);
        for i in 1..order {
            let si = step_index - (i + 1);
            let mi = self.history(i);
            let (_, _, lambda_si) = alpha_sigma_lambda(self.sigma(si));
            let rk = (lambda_si - lambda_s0) / h;
            rks.push(rk);
            d1s.push((mi - m0.clone()).div_scalar(rk));
        }
        rks.push(1.0);
        let hh = if self.predict_x0 { -h } else { h };
        let c = uni_coefficients(&rks, hh, self.bh1, order);
        let rhos_c: Vec<f32> = if order == 1 { vec![0.5] } else { solve_f32(c.r.clone(), c.b.clone()) };
        let res_scale = if self.predict_x0 { alpha_t * c.b_h } else { sigma_t * c.b_h };
        let x_t_ = self.base_update(last_sample, m0.clone(), (alpha_t, sigma_t), (alpha_s0, sigma_s0), c.h_phi_1);
        let d1_t = model_t - m0;
        let last = d1_t.mul_scalar(rhos_c[order - 1]);
        let res = if d1s.is_empty() { last } else { weighted_sum(&rhos_c[..order - 1], &d1s) + last };
        x_t_ - res.mul_scalar(res_scale)
    }
}

impl Scheduler for UniPcScheduler {
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
        let use_corrector = step_index > 0
            && !self.disable_corrector.contains(&(step_index - 1))
            && self.last_sample.is_some();
        let model_output_convert = self.convert_model_output(model_output, sample.clone(), step_index);
        let sample = if use_corrector {
            let last_sample = self.last_sample.take().expect("checked above");
            self.corrector(model_output_convert.clone(), last_sample, step_index, self.this_order)
        } else {
            sample
        };
        self.model_outputs.remove(0);
        self.model_outputs.push(Some(model_output_convert));

        let this_order = if self.lower_order_final {
            self.solver_order.min(self.schedule.timesteps.len() - step_index)
        } else {
            self.solver_order
        };
        self.this_order = this_order.min(self.lower_order_nums + 1); // warm-up of the multistep
        self.last_sample = Some(sample.clone());
        let prev_sample = self.predictor(sample, step_index, self.this_order);
        if self.lower_order_nums < self.solver_order {
            self.lower_order_nums += 1;
        }
        prev_sample
    }

    fn add_noise(&self, original: Tensor<4>, noise: Tensor<4>, step_index: usize) -> Tensor<4> {
        let (alpha_t, sigma_t) = alpha_sigma_f32(self.sigma(step_index));
        original.mul_scalar(alpha_t) + noise.mul_scalar(sigma_t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::float::{np_log_f32, torch_sqrt_f32};

    #[test]
    fn multistep_timestep_spacings() {
        assert_eq!(multistep_timesteps(TimestepSpacing::Linspace, 1000, 4, 0), vec![999.0, 749.0, 500.0, 250.0]);
        assert_eq!(multistep_timesteps(TimestepSpacing::Leading, 1000, 4, 1), vec![801.0, 601.0, 401.0, 201.0]);
        assert_eq!(multistep_timesteps(TimestepSpacing::Trailing, 1000, 4, 0), vec![999.0, 749.0, 499.0, 249.0]);
    }

    #[test]
    fn numpy_float32_log_bit_for_bit() {
        // (x, np.log(x)) as float32 bit patterns, numpy 2.4.6 (X86_V4)
        let cases: [(u32, u32); 36] = [
            (0x3f38d6be, 0xbea6c142), (0x3f46b216, 0xbe81be10), (0x3f552f50, 0xbe3b6910), (0x3f646250, 0xbde9c6e2),
            (0x000116c2, 0xc2b834f2), (0x3c4985f0, 0xc08cbdb2), (0x3f3504f3, 0xbeb17218), (0x3f3504f4, 0xbeb17215),
            (0x3f800000, 0x00000000), (0x3fc00000, 0x3ecf991f), (0x4169d598, 0x402ba649), (0x431d6843, 0x40a1e1fd),
            (0x45800000, 0x41051592), (0x7f61b1e6, 0x42b13196), (0x3d143660, 0xc0546c75), (0x45d20754, 0x410d01f7),
            (0x310e4a78, 0xc19ff6a1), (0x39c11438, 0xc0fd03aa), (0x35440c25, 0xc1621384), (0x33b1e127, 0xc182739f),
            (0x366dfdd6, 0xc148cb21), (0x3b08047f, 0xc0c5aea9), (0x3c83d7d3, 0xc084233c), (0x40972b87, 0x3fc6bdde),
            (0x3d21ab16, 0xc04edcaf), (0x44ce4d2c, 0x40ed14ba), (0x36f65a9f, 0xc13d268b), (0x4a6205e6, 0x4171fec3),
            (0x31d3cd7c, 0xc1973c69), (0x4464b2e7, 0x40da32cb), (0x3d15e603, 0xc053b320), (0x41275da5, 0x40163ef7),
            (0x3517f508, 0xc1662701), (0x36bf16c6, 0xc141370d), (0x4823bebf, 0x414079fe), (0x4d01ff80, 0x4195d7fd),
        ];
        for (x, want) in cases {
            let got = np_log_f32(f32::from_bits(x));
            assert_eq!(got.to_bits(), want, "np.log({}) = {}, kiln {got}", f32::from_bits(x), f32::from_bits(want));
        }
        assert_eq!(np_log_f32(0.0), f32::NEG_INFINITY);
        assert!(np_log_f32(-1.0).is_nan());
    }

    #[test]
    fn torch_square_root() {
        // (x, torch.sqrt(x)) as float32 bits, torch 2.15 + MKL on an AVX-512 CPU; the first seven
        // are one ulp below the correctly rounded root
        let cases: [(u32, u32); 9] = [
            (0x3f057566, 0x3f38d6be), (0x3e8fe358, 0x3f07b633), (0x3c896ecf, 0x3e04a1f1), (0x3d6e70a3, 0x3e771064),
            (0x3d771b78, 0x3e7b83ac), (0x4147db74, 0x40623182), (0x40001165, 0x3fb5113f), (0x3b7c32ef, 0x3d7e17a6),
            (0x44cf83e4, 0x4222fa76),
        ];
        let avx512 = cfg!(target_arch = "x86_64") && {
            #[cfg(target_arch = "x86_64")]
            let has = std::is_x86_feature_detected!("avx512f");
            #[cfg(not(target_arch = "x86_64"))]
            let has = false;
            has
        };
        for (x, want) in cases {
            let x = f32::from_bits(x);
            let want = if avx512 { want } else { x.sqrt().to_bits() };
            assert_eq!(torch_sqrt_f32(x).to_bits(), want, "sqrt({x})");
        }
        assert_eq!(torch_sqrt_f32(0.0), 0.0);
        assert_eq!(torch_sqrt_f32(f32::INFINITY), f32::INFINITY);
        assert!(torch_sqrt_f32(-1.0).is_nan());
    }

    #[test]
    fn solve_matches_a_hand_solution() {
        let x = solve_f32(vec![vec![1.0, 1.0, 1.0], vec![-1.0, -2.0, 1.0], vec![1.0, 4.0, 1.0]], vec![6.0, -2.0, 12.0]);
        for (got, want) in x.iter().zip([1.0f32, 2.0, 3.0]) {
            assert!((got - want).abs() < 1e-5, "{x:?}");
        }
    }
}
