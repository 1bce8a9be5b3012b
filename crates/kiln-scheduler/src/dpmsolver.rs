//! What DPM-Solver's multistep and singlestep schedulers share (diffusers
//! `scheduling_dpmsolver_multistep.py` and `scheduling_dpmsolver_singlestep.py`): the config
//! both read ([`DpmConfig`]), the σ schedule, `convert_model_output`, the first-order update and
//! the second- and third-order update formulas ([`DpmCore::update_2`], [`DpmCore::update_3`]),
//! which the two classes apply to different states.
//!
//! Numerics: diffusers keeps `self.sigmas` as a float32 tensor and computes every coefficient
//! (α_t, σ_t, λ_t, h, e^{-h}, r0, …) as 0-dim float32 tensors. kiln computes those coefficients
//! in f32 with the same operation order, so each tensor operation sees exactly the scalar torch
//! uses, and the tensor operations run in the same order as diffusers' expressions.

use burn::tensor::Tensor;

use crate::class::SchedulerClass;
use crate::common::{read_solver_order, SampleClip};
use crate::config::ConfigReader;
use crate::error::{Result, SchedulerError};
use crate::float::{f32r, np_interp, np_linspace, np_log_f32, np_round};
use crate::schedule::{sigma_to_t, sigmas_from_alphas_cumprod, BetaConfig, SigmaBounds, SigmaSpacing};
use crate::scheduler::Schedule;

/// `algorithm_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlgorithmType {
    /// Data-prediction DPM-Solver++ (the default).
    DpmSolverPp,
    /// Noise-prediction DPM-Solver (deprecated in diffusers).
    DpmSolver,
    /// Stochastic DPM-Solver++ (draws noise every step).
    SdeDpmSolverPp,
    /// Stochastic noise-prediction DPM-Solver (multistep only, deprecated in diffusers).
    SdeDpmSolver,
}

impl AlgorithmType {
    /// The "++" variants predict x₀ (`convert_model_output` returns x₀ rather than ε).
    fn predicts_x0(self) -> bool {
        matches!(self, Self::DpmSolverPp | Self::SdeDpmSolverPp)
    }

    pub(crate) fn is_sde(self) -> bool {
        matches!(self, Self::SdeDpmSolverPp | Self::SdeDpmSolver)
    }
}

/// `solver_type`: how the second-order term is formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SolverType {
    Midpoint,
    Heun,
}

/// `prediction_type` of the DPM-Solver family, which also knows `flow_prediction`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DpmPrediction {
    Epsilon,
    Sample,
    VPrediction,
    FlowPrediction,
}

/// The configuration and σ schedule both DPM-Solver schedulers share, and their common
/// `convert_model_output` / `dpm_solver_first_order_update`.
#[derive(Debug, Clone)]
pub(crate) struct DpmCore {
    pub algorithm: AlgorithmType,
    pub solver_type: SolverType,
    prediction: DpmPrediction,
    clip: SampleClip,
    /// `variance_type` is `learned` / `learned_range`: the model's ε is its first 3 channels.
    learned_variance: bool,
    /// `use_flow_sigmas`: α_t = 1 − σ, σ_t = σ instead of the VP conversion.
    flow: bool,
    /// The timesteps, and float32 σ values, one per timestep plus the final one.
    pub schedule: Schedule,
}

/// What [`DpmCore::read`] needs to know about the class reading it.
pub(crate) struct DpmClassInfo {
    pub class: &'static str,
    pub algorithms: &'static [&'static str],
    pub knows_rescale: bool,
}

/// Everything read from the config, before the timesteps are laid out.
pub(crate) struct DpmConfig {
    pub betas: BetaConfig,
    pub raw_beta_schedule: String,
    pub solver_order: usize,
    pub algorithm: AlgorithmType,
    pub solver_type: SolverType,
    pub prediction: DpmPrediction,
    pub clip: SampleClip,
    pub lower_order_final: bool,
    pub spacing: SigmaSpacing,
    pub use_flow_sigmas: bool,
    pub flow_shift: f64,
    pub final_sigma_min: bool,
    pub lambda_min_clipped: f64,
    pub learned_variance: bool,
}

impl DpmConfig {
    /// Reads the `__init__` keys common to both DPM-Solver classes (the caller reads its own
    /// extra keys — `euler_at_final`, `use_lu_lambdas`, `timestep_spacing`, … — and calls
    /// `finish`), and applies `__init__`'s checks.
    pub(crate) fn read(r: &mut ConfigReader<'_>, info: &DpmClassInfo) -> Result<Self> {
        let schedules = &["linear", "scaled_linear", "squaredcos_cap_v2"];
        let betas = BetaConfig::read(r, 0.0001, 0.02, "linear", schedules, info.knows_rescale)?;
        let raw_beta_schedule = r.choice("beta_schedule", "linear", schedules)?;
        let solver_order = read_solver_order(r)?;
        let prediction = match r
            .choice("prediction_type", "epsilon", &["epsilon", "sample", "v_prediction", "flow_prediction"])?
            .as_str()
        {
            "epsilon" => DpmPrediction::Epsilon,
            "sample" => DpmPrediction::Sample,
            "v_prediction" => DpmPrediction::VPrediction,
            _ => DpmPrediction::FlowPrediction,
        };
        let clip = SampleClip::read(r, None)?;
        let algorithm_as_written = r.choice("algorithm_type", "dpmsolver++", info.algorithms)?;
        // `deis` is silently remapped to `dpmsolver++` (register_to_config in __init__)
        let algorithm = match algorithm_as_written.as_str() {
            "dpmsolver++" | "deis" => AlgorithmType::DpmSolverPp,
            "dpmsolver" => AlgorithmType::DpmSolver,
            "sde-dpmsolver++" => AlgorithmType::SdeDpmSolverPp,
            _ => AlgorithmType::SdeDpmSolver,
        };
        // UniPC's / DEIS's solver types are remapped to midpoint, as diffusers does
        let solver_type =
            match r.choice("solver_type", "midpoint", &["midpoint", "heun", "logrho", "bh1", "bh2"])?.as_str() {
                "heun" => SolverType::Heun,
                _ => SolverType::Midpoint,
            };
        let lower_order_final = r.bool("lower_order_final", info.class == "DPMSolverMultistepScheduler")?;
        let spacing = SigmaSpacing::read(r, true)?;
        let use_flow_sigmas = r.bool("use_flow_sigmas", false)?;
        let flow_shift = r.f64("flow_shift", 1.0)?;
        let final_sigma_min = r.choice("final_sigmas_type", "zero", &["zero", "sigma_min"])? == "sigma_min";
        let lambda_min_clipped = r.f64("lambda_min_clipped", f64::NEG_INFINITY)?;
        // diffusers never validates `variance_type`; DDPM configs carry their own values here
        let variance_type = r.choice(
            "variance_type",
            "none",
            &["none", "learned", "learned_range", "fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log"],
        )?;
        let learned_variance = matches!(variance_type.as_str(), "learned" | "learned_range");
        // `use_dynamic_shifting` only matters when the pipeline passes `mu` to set_timesteps,
        // which kiln's `build(config, n)` (= `set_timesteps(n)`) never does.
        let _use_dynamic_shifting = r.bool("use_dynamic_shifting", false)?;
        r.choice("time_shift_type", "exponential", &["exponential"])?;

        if !matches!(algorithm_as_written.as_str(), "dpmsolver++" | "sde-dpmsolver++") && !final_sigma_min {
            return Err(SchedulerError::Invalid(format!(
                "`final_sigmas_type` zero is not supported for `algorithm_type` {algorithm_as_written}; \
                 set final_sigmas_type to \"sigma_min\" (diffusers refuses this combination too)"
            )));
        }
        if prediction == DpmPrediction::FlowPrediction && !algorithm.predicts_x0() {
            return Err(SchedulerError::Invalid(format!(
                "prediction_type flow_prediction needs algorithm_type dpmsolver++ or sde-dpmsolver++, \
                 not {algorithm_as_written} (diffusers raises the same error)"
            )));
        }
        Ok(Self {
            betas,
            raw_beta_schedule,
            solver_order,
            algorithm,
            solver_type,
            prediction,
            clip,
            lower_order_final,
            spacing,
            use_flow_sigmas,
            flow_shift,
            final_sigma_min,
            lambda_min_clipped,
            learned_variance,
        })
    }

    /// ᾱ_t as float32 (with `alphas_cumprod[-1] = 2**-24` under `rescale_betas_zero_snr`).
    pub(crate) fn alphas_cumprod(&self) -> Vec<f64> {
        let mut ac = self.betas.alphas_cumprod();
        if self.betas.rescale_betas_zero_snr {
            *ac.last_mut().unwrap() = 2f64.powi(-24);
        }
        ac
    }

    /// `torch.searchsorted(torch.flip(self.lambda_t, [0]), lambda_min_clipped)`, with
    /// λ_t = log √ᾱ_t − log √(1 − ᾱ_t) in float32.
    pub(crate) fn clipped_idx(&self, alphas_cumprod: &[f64]) -> usize {
        let lambdas: Vec<f64> = alphas_cumprod
            .iter()
            .rev()
            .map(|&a| {
                let a = a as f32;
                (a.sqrt().ln() - (1.0 - a).sqrt().ln()) as f64
            })
            .collect();
        lambdas.iter().take_while(|&&l| l < self.lambda_min_clipped).count()
    }

    /// The σ part of `set_timesteps`, after the integer timesteps are laid out: optional
    /// Karras / λ-uniform (multistep only) / exponential / beta / flow σs (which replace the
    /// timesteps), else σ interpolated at the timesteps; then the final σ, all as float32.
    /// `round_karras` is diffusers' rule for rounding the `_sigma_to_t` timesteps of the Karras
    /// (and λ-uniform) spacings; the others are truncated by the cast to int64.
    pub(crate) fn layout(
        &self,
        alphas_cumprod: &[f64],
        timesteps: Vec<f64>,
        n: usize,
        use_lu_lambdas: bool,
        round_karras: bool,
    ) -> Result<(Vec<f64>, Vec<f64>)> {
        let train_sigmas = sigmas_from_alphas_cumprod(alphas_cumprod);
        // np.log of the float32 σ array stays float32
        let log_sigmas: Vec<f64> = train_sigmas.iter().map(|&s| np_log_f32(s as f32) as f64).collect();
        let flipped: Vec<f64> = train_sigmas.iter().rev().copied().collect();
        let to_t = |sigmas: &[f64]| -> Vec<f64> { sigmas.iter().map(|&s| sigma_to_t(s, &log_sigmas)).collect() };
        let (timesteps, mut sigmas) = match self.spacing {
            SigmaSpacing::Karras => {
                let sigmas = self.spacing.convert(&flipped, n, SigmaBounds::default()).unwrap();
                let t = to_t(&sigmas);
                let t = if round_karras { t.into_iter().map(np_round).collect() } else { t };
                (t, sigmas)
            }
            _ if use_lu_lambdas => {
                // _convert_to_lu: λ here is log σ (flipped), uniform between its ends (ρ = 1)
                let lambdas: Vec<f64> = log_sigmas.iter().rev().copied().collect();
                let (lambda_min, lambda_max) = (lambdas[lambdas.len() - 1], lambdas[0]);
                let sigmas: Vec<f64> = np_linspace(0.0, 1.0, n)
                    .into_iter()
                    .map(|ramp| (lambda_max + ramp * (lambda_min - lambda_max)).exp())
                    .collect();
                let t = to_t(&sigmas);
                let t = if round_karras { t.into_iter().map(np_round).collect() } else { t };
                (t, sigmas)
            }
            SigmaSpacing::Exponential | SigmaSpacing::Beta => {
                let sigmas = self.spacing.convert(&flipped, n, SigmaBounds::default()).unwrap();
                (to_t(&sigmas), sigmas)
            }
            SigmaSpacing::Default if self.use_flow_sigmas => {
                let train = self.betas.num_train_timesteps as f64;
                let shift = self.flow_shift;
                let mut sigmas: Vec<f64> = np_linspace(1.0, 1.0 / train, n + 1)
                    .into_iter()
                    .map(|a| {
                        let s = 1.0 - a;
                        shift * s / (1.0 + (shift - 1.0) * s)
                    })
                    .rev()
                    .collect();
                sigmas.pop();
                let t = sigmas.iter().map(|&s| s * train).collect();
                (t, sigmas)
            }
            SigmaSpacing::Default => {
                let xp: Vec<f64> = (0..train_sigmas.len()).map(|i| i as f64).collect();
                let sigmas = timesteps.iter().map(|&t| np_interp(t, &xp, &train_sigmas)).collect();
                (timesteps, sigmas)
            }
        };
        let sigma_last = if self.final_sigma_min {
            let a = alphas_cumprod[0] as f32;
            ((1.0 - a) / a).sqrt() as f64
        } else {
            0.0
        };
        sigmas.push(sigma_last);
        let sigmas: Vec<f64> = sigmas.into_iter().map(f32r).collect();
        // torch.from_numpy(timesteps).to(torch.int64) truncates toward zero
        let timesteps: Vec<f64> = timesteps.into_iter().map(|t| t.trunc()).collect();
        if timesteps.is_empty() {
            return Err(SchedulerError::Invalid(format!(
                "lambda_min_clipped = {} leaves no timesteps",
                self.lambda_min_clipped
            )));
        }
        if sigmas.iter().any(|s| !s.is_finite()) {
            return Err(SchedulerError::Invalid("the σ schedule is not finite".into()));
        }
        Ok((timesteps, sigmas))
    }

    pub(crate) fn core(&self, class: SchedulerClass, timesteps: Vec<f64>, sigmas: Vec<f64>) -> DpmCore {
        DpmCore {
            algorithm: self.algorithm,
            solver_type: self.solver_type,
            prediction: self.prediction,
            clip: self.clip,
            learned_variance: self.learned_variance,
            flow: self.use_flow_sigmas,
            schedule: Schedule { class, timesteps, sigmas, init_noise_sigma: 1.0 },
        }
    }
}

/// The f32 scalars of one update, named as in diffusers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AlphaSigma {
    pub alpha: f32,
    pub sigma: f32,
    pub lambda: f32,
}

impl DpmCore {
    /// `_sigma_to_alpha_sigma_t(self.schedule.sigmas[i])` and λ = log α − log σ, in float32.
    pub(crate) fn alpha_sigma(&self, i: usize) -> AlphaSigma {
        let s = self.schedule.sigmas[i] as f32;
        let (alpha, sigma) = alpha_sigma_t(s, self.flow);
        AlphaSigma { alpha, sigma, lambda: alpha.ln() - sigma.ln() }
    }

    /// `convert_model_output`: x₀ for the "++" algorithms, ε for the others.
    pub(crate) fn convert_model_output(
        &self,
        model_output: Tensor<4>,
        sample: &Tensor<4>,
        step_index: usize,
    ) -> Tensor<4> {
        let model_output = if self.learned_variance && self.prediction == DpmPrediction::Epsilon {
            // model_output[:, :3]
            let [b, c, h, w] = model_output.dims();
            model_output.slice([0..b, 0..c.min(3), 0..h, 0..w])
        } else {
            model_output
        };
        let AlphaSigma { alpha: alpha_t, sigma: sigma_t, .. } = self.alpha_sigma(step_index);
        let (alpha_t, sigma_t) = (alpha_t as f64, sigma_t as f64);
        let sample = sample.clone();
        if self.algorithm.predicts_x0() {
            let x0_pred = match self.prediction {
                DpmPrediction::Epsilon => (sample - model_output.mul_scalar(sigma_t)).div_scalar(alpha_t),
                DpmPrediction::Sample => model_output,
                DpmPrediction::VPrediction => sample.mul_scalar(alpha_t) - model_output.mul_scalar(sigma_t),
                DpmPrediction::FlowPrediction => sample - model_output.mul_scalar(self.schedule.sigmas[step_index]),
            };
            self.clip.apply(x0_pred)
        } else {
            let epsilon = match self.prediction {
                DpmPrediction::Epsilon => model_output,
                DpmPrediction::Sample => (sample.clone() - model_output.mul_scalar(alpha_t)).div_scalar(sigma_t),
                DpmPrediction::VPrediction => model_output.mul_scalar(alpha_t) + sample.clone().mul_scalar(sigma_t),
                DpmPrediction::FlowPrediction => unreachable!("refused at build time"),
            };
            if matches!(self.clip, SampleClip::None) {
                epsilon
            } else {
                let x0_pred = (sample.clone() - epsilon.mul_scalar(sigma_t)).div_scalar(alpha_t);
                let x0_pred = self.clip.apply(x0_pred);
                (sample - x0_pred.mul_scalar(alpha_t)).div_scalar(sigma_t)
            }
        }
    }

    /// `dpm_solver_first_order_update` from `sigmas[i]` to `sigmas[i + 1]` (DDIM-like).
    pub(crate) fn first_order_update(
        &self,
        model_output: Tensor<4>,
        step_index: usize,
        sample: Tensor<4>,
        noise: Option<Tensor<4>>,
    ) -> Tensor<4> {
        let t = self.alpha_sigma(step_index + 1);
        let s = self.alpha_sigma(step_index);
        let h = t.lambda - s.lambda;
        let f = |x: f32| x as f64;
        match self.algorithm {
            AlgorithmType::DpmSolverPp => {
                sample.mul_scalar(f(t.sigma / s.sigma)) - model_output.mul_scalar(f(t.alpha * ((-h).exp() - 1.0)))
            }
            AlgorithmType::DpmSolver => {
                sample.mul_scalar(f(t.alpha / s.alpha)) - model_output.mul_scalar(f(t.sigma * (h.exp() - 1.0)))
            }
            AlgorithmType::SdeDpmSolverPp => {
                let noise = noise.expect("SDE variants draw noise");
                sample.mul_scalar(f(t.sigma / s.sigma * (-h).exp()))
                    + model_output.mul_scalar(f(t.alpha * (1.0 - (-2.0 * h).exp())))
                    + noise.mul_scalar(f(t.sigma * (1.0 - (-2.0 * h).exp()).sqrt()))
            }
            AlgorithmType::SdeDpmSolver => {
                let noise = noise.expect("SDE variants draw noise");
                sample.mul_scalar(f(t.alpha / s.alpha)) - model_output.mul_scalar(f(2.0 * (t.sigma * (h.exp() - 1.0))))
                    + noise.mul_scalar(f(t.sigma * ((2.0 * h).exp() - 1.0).sqrt()))
            }
        }
    }

    /// `add_noise`: α_t · x₀ + σ_t · ε at `sigmas[step_index]` (the begin index).
    pub(crate) fn add_noise(&self, original: Tensor<4>, noise: Tensor<4>, step_index: usize) -> Tensor<4> {
        let (alpha_t, sigma_t) = alpha_sigma_t(self.schedule.sigmas[step_index] as f32, self.flow);
        original.mul_scalar(alpha_t as f64) + noise.mul_scalar(sigma_t as f64)
    }
}

/// `_sigma_to_alpha_sigma_t` in float32: α_t = 1/√(σ² + 1), σ_t = σ·α_t (or 1 − σ, σ for flow σs).
pub(crate) fn alpha_sigma_t(sigma: f32, flow: bool) -> (f32, f32) {
    if flow {
        (1.0 - sigma, sigma)
    } else {
        let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
        (alpha, sigma * alpha)
    }
}

impl DpmCore {
    /// The second-order update to the state `t` from the state `s`, over the log-SNR step `h`,
    /// with D0 and D1 formed by the caller: the formula of diffusers'
    /// `multistep_dpm_solver_second_order_update` (from the latest state) and of
    /// `singlestep_dpm_solver_second_order_update` (from the group's first state), and, with
    /// `solver = Heun` and D1 = D1_1, of the singlestep third-order update's midpoint branch.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn update_2(
        &self,
        solver: SolverType,
        t: AlphaSigma,
        s: AlphaSigma,
        h: f32,
        d0: Tensor<4>,
        d1: Tensor<4>,
        sample: Tensor<4>,
        noise: Option<Tensor<4>>,
    ) -> Tensor<4> {
        let f = |x: f32| x as f64;
        let (alpha_t, sigma_t) = (t.alpha, t.sigma);
        match (self.algorithm, solver) {
            (AlgorithmType::DpmSolverPp, SolverType::Midpoint) => {
                sample.mul_scalar(f(sigma_t / s.sigma))
                    - d0.mul_scalar(f(alpha_t * ((-h).exp() - 1.0)))
                    - d1.mul_scalar(f(0.5 * (alpha_t * ((-h).exp() - 1.0))))
            }
            (AlgorithmType::DpmSolverPp, SolverType::Heun) => {
                sample.mul_scalar(f(sigma_t / s.sigma)) - d0.mul_scalar(f(alpha_t * ((-h).exp() - 1.0)))
                    + d1.mul_scalar(f(alpha_t * (((-h).exp() - 1.0) / h + 1.0)))
            }
            (AlgorithmType::DpmSolver, SolverType::Midpoint) => {
                sample.mul_scalar(f(alpha_t / s.alpha))
                    - d0.mul_scalar(f(sigma_t * (h.exp() - 1.0)))
                    - d1.mul_scalar(f(0.5 * (sigma_t * (h.exp() - 1.0))))
            }
            (AlgorithmType::DpmSolver, SolverType::Heun) => {
                sample.mul_scalar(f(alpha_t / s.alpha))
                    - d0.mul_scalar(f(sigma_t * (h.exp() - 1.0)))
                    - d1.mul_scalar(f(sigma_t * ((h.exp() - 1.0) / h - 1.0)))
            }
            (AlgorithmType::SdeDpmSolverPp, solver) => {
                let noise = noise.expect("SDE variants draw noise");
                let x = sample.mul_scalar(f(sigma_t / s.sigma * (-h).exp()))
                    + d0.mul_scalar(f(alpha_t * (1.0 - (-2.0 * h).exp())));
                let x = match solver {
                    SolverType::Midpoint => x + d1.mul_scalar(f(0.5 * (alpha_t * (1.0 - (-2.0 * h).exp())))),
                    SolverType::Heun => x + d1.mul_scalar(f(alpha_t * ((1.0 - (-2.0 * h).exp()) / (-2.0 * h) + 1.0))),
                };
                x + noise.mul_scalar(f(sigma_t * (1.0 - (-2.0 * h).exp()).sqrt()))
            }
            (AlgorithmType::SdeDpmSolver, solver) => {
                let noise = noise.expect("SDE variants draw noise");
                let x = sample.mul_scalar(f(alpha_t / s.alpha)) - d0.mul_scalar(f(2.0 * (sigma_t * (h.exp() - 1.0))));
                let x = match solver {
                    SolverType::Midpoint => x - d1.mul_scalar(f(sigma_t * (h.exp() - 1.0))),
                    SolverType::Heun => x - d1.mul_scalar(f(2.0 * (sigma_t * ((h.exp() - 1.0) / h - 1.0)))),
                };
                x + noise.mul_scalar(f(sigma_t * ((2.0 * h).exp() - 1.0).sqrt()))
            }
        }
    }

    /// The third-order update to `t` from `s` with D0, D1 and D2 formed by the caller: the
    /// formula of `multistep_dpm_solver_third_order_update` and of the singlestep third-order
    /// update's Heun branch. `sde-dpmsolver` has none (both classes refuse it at build time).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn update_3(
        &self,
        t: AlphaSigma,
        s: AlphaSigma,
        h: f32,
        d0: Tensor<4>,
        d1: Tensor<4>,
        d2: Tensor<4>,
        sample: Tensor<4>,
        noise: Option<Tensor<4>>,
    ) -> Tensor<4> {
        let f = |x: f32| x as f64;
        let (alpha_t, sigma_t) = (t.alpha, t.sigma);
        match self.algorithm {
            AlgorithmType::DpmSolverPp => {
                sample.mul_scalar(f(sigma_t / s.sigma)) - d0.mul_scalar(f(alpha_t * ((-h).exp() - 1.0)))
                    + d1.mul_scalar(f(alpha_t * (((-h).exp() - 1.0) / h + 1.0)))
                    - d2.mul_scalar(f(alpha_t * (((-h).exp() - 1.0 + h) / (h * h) - 0.5)))
            }
            AlgorithmType::DpmSolver => {
                sample.mul_scalar(f(alpha_t / s.alpha))
                    - d0.mul_scalar(f(sigma_t * (h.exp() - 1.0)))
                    - d1.mul_scalar(f(sigma_t * ((h.exp() - 1.0) / h - 1.0)))
                    - d2.mul_scalar(f(sigma_t * ((h.exp() - 1.0 - h) / (h * h) - 0.5)))
            }
            AlgorithmType::SdeDpmSolverPp => {
                let noise = noise.expect("SDE variants draw noise");
                let two_h = 2.0 * h;
                sample.mul_scalar(f(sigma_t / s.sigma * (-h).exp()))
                    + d0.mul_scalar(f(alpha_t * (1.0 - (-2.0 * h).exp())))
                    + d1.mul_scalar(f(alpha_t * ((1.0 - (-2.0 * h).exp()) / (-2.0 * h) + 1.0)))
                    + d2.mul_scalar(f(alpha_t * ((1.0 - (-2.0 * h).exp() - 2.0 * h) / (two_h * two_h) - 0.5)))
                    + noise.mul_scalar(f(sigma_t * (1.0 - (-2.0 * h).exp()).sqrt()))
            }
            AlgorithmType::SdeDpmSolver => unreachable!("refused at build time"),
        }
    }
}
