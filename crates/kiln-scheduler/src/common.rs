//! What several samplers share: the config types (`prediction_type`, `timestep_spacing`,
//! `clip_sample`/`thresholding`), the tensor helpers of their `step`s, the timestep layouts and
//! `add_noise` of the ᾱ-indexed samplers (DDIM family, LCM/TCD, the multistep solvers) and the
//! σ-parameterised helpers of the k-diffusion samplers (Euler, Euler a, Heun, LMS, KDPM2).
//! Each cites the diffusers function it reproduces.

use burn::tensor::{Tensor, TensorData};

use crate::config::ConfigReader;
use crate::error::{Result, SchedulerError};
use crate::float::{f32r, np_arange_f64, np_interp, np_linspace, np_log_f32, np_round, torch_sqrt_f32};
use crate::schedule::{sigma_to_t, sigmas_from_alphas_cumprod, torch_sigmas_from_alphas_cumprod, BetaConfig, SigmaBounds, SigmaSpacing};
use crate::scheduler::{check_steps, NoiseSource};

// ---- config types ----------------------------------------------------------------------------

/// What the model predicts (`prediction_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PredictionType {
    Epsilon,
    VPrediction,
    Sample,
}

impl PredictionType {
    pub(crate) fn read(r: &mut ConfigReader<'_>) -> Result<Self> {
        Ok(match r.choice("prediction_type", "epsilon", &["epsilon", "v_prediction", "sample"])?.as_str() {
            "epsilon" => Self::Epsilon,
            "v_prediction" => Self::VPrediction,
            _ => Self::Sample,
        })
    }
}

/// `timestep_spacing` (Table 2 of arXiv 2305.08891).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestepSpacing {
    Linspace,
    Leading,
    Trailing,
}

impl TimestepSpacing {
    pub(crate) fn read(r: &mut ConfigReader<'_>, default: &'static str) -> Result<Self> {
        Ok(match r.choice("timestep_spacing", default, &["linspace", "leading", "trailing"])?.as_str() {
            "linspace" => Self::Linspace,
            "leading" => Self::Leading,
            _ => Self::Trailing,
        })
    }
}

/// `clip_sample` / `thresholding`, shared by the ᾱ-parameterised samplers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum SampleClip {
    None,
    Clip(f64),
    Threshold { ratio: f64, max_value: f64 },
}

impl SampleClip {
    /// Reads `thresholding`, `dynamic_thresholding_ratio`, `sample_max_value` and, when the class
    /// has them, `clip_sample` (with its class default) and `clip_sample_range`.
    pub(crate) fn read(r: &mut ConfigReader<'_>, clip_default: Option<bool>) -> Result<Self> {
        let thresholding = r.bool("thresholding", false)?;
        let ratio = r.f64("dynamic_thresholding_ratio", 0.995)?;
        let max_value = r.f64("sample_max_value", 1.0)?;
        let (clip, range) = match clip_default {
            Some(d) => (r.bool("clip_sample", d)?, r.f64("clip_sample_range", 1.0)?),
            None => (false, 1.0),
        };
        Ok(if thresholding {
            Self::Threshold { ratio, max_value }
        } else if clip {
            Self::Clip(range)
        } else {
            Self::None
        })
    }

    pub(crate) fn apply(self, x0: Tensor<4>) -> Tensor<4> {
        match self {
            Self::None => x0,
            Self::Clip(range) => x0.clamp(-range, range),
            Self::Threshold { ratio, max_value } => threshold_sample(x0, ratio, max_value),
        }
    }
}

/// Draws noise shaped like `sample` (same device and dtype) from `source`, like diffusers'
/// `randn_tensor(sample.shape, generator=generator, dtype=sample.dtype)`.
pub fn noise_like(sample: &Tensor<4>, source: &mut dyn NoiseSource) -> Tensor<4> {
    let dims = sample.dims();
    let values = source.randn(&dims);
    assert_eq!(
        values.len(),
        dims.iter().product::<usize>(),
        "NoiseSource returned {} values for shape {dims:?}",
        values.len()
    );
    Tensor::from_data(TensorData::new(values, dims), (&sample.device(), sample.dtype()))
}

/// Dynamic thresholding (`_threshold_sample` in diffusers' DDPM/DDIM/DPM-Solver/UniPC/DEIS/LCM/TCD,
/// Imagen §2.3): per batch item, s = clamp(quantile(|x|, ratio), 1, max_value), then
/// x = clamp(x, −s, s) / s. The quantile interpolates linearly between order statistics like
/// `torch.quantile`.
///
/// # Shapes
/// - sample: `[batch, channels, height, width]`; returns the same shape.
pub fn threshold_sample(sample: Tensor<4>, ratio: f64, max_value: f64) -> Tensor<4> {
    let [b, c, h, w] = sample.dims();
    let n = c * h * w;
    let flat: Tensor<2> = sample.reshape([b, n]);
    let sorted = flat.clone().abs().sort(1);
    let rank = (ratio as f32 * (n - 1) as f32) as f64;
    let below = rank.floor() as usize;
    let above = rank.ceil() as usize;
    let weight = rank - below as f64;
    let lo = sorted.clone().slice([0..b, below..below + 1]);
    let hi = sorted.slice([0..b, above..above + 1]);
    // torch.lerp: start + w (end − start) for w < 0.5, else end − (end − start)(1 − w)
    let s = if weight < 0.5 {
        lo.clone() + (hi - lo).mul_scalar(weight)
    } else {
        hi.clone() - (hi - lo).mul_scalar(1.0 - weight)
    };
    // torch.clamp(s, min=1, max=max_value): max wins when min > max
    let s = s.clamp_min(1.0).clamp_max(max_value).expand([b, n]);
    let clamped = flat.max_pair(s.clone().neg()).min_pair(s.clone()) / s;
    clamped.reshape([b, c, h, w])
}

/// The highest `solver_order` kiln takes (DPM-Solver, DEIS, UniPC). diffusers takes any order
/// and keeps that many model outputs (DPM-Solver and DEIS step at most third order, UniPC at any
/// order); orders past a handful only add history, and one from a hostile config
/// (`2147483647`) would allocate it up front.
pub const MAX_SOLVER_ORDER: usize = 8;

/// `solver_order` (default 2), in `1..=MAX_SOLVER_ORDER`.
pub(crate) fn read_solver_order(r: &mut ConfigReader<'_>) -> Result<usize> {
    let solver_order = r.usize("solver_order", 2)?;
    if !(1..=MAX_SOLVER_ORDER).contains(&solver_order) {
        return Err(SchedulerError::Unsupported {
            key: "solver_order".into(),
            value: solver_order.to_string(),
            allowed: format!("an integer in [1, {MAX_SOLVER_ORDER}]"),
        });
    }
    Ok(solver_order)
}

// ---- the ᾱ-indexed samplers --------------------------------------------------------------------

/// `steps_offset` (read after the betas): less than `num_train_timesteps`. A larger offset puts
/// every "leading" timestep outside the schedule (diffusers then fails indexing ᾱ mid-run).
pub(crate) fn read_steps_offset(r: &mut ConfigReader<'_>, num_train_timesteps: usize) -> Result<usize> {
    let steps_offset = r.usize("steps_offset", 0)?;
    if steps_offset >= num_train_timesteps {
        return Err(SchedulerError::Unsupported {
            key: "steps_offset".into(),
            value: steps_offset.to_string(),
            allowed: format!("an integer below num_train_timesteps ({num_train_timesteps})"),
        });
    }
    Ok(steps_offset)
}

/// Refuses timesteps outside the training range `0..train` (what DDIM, DDPM and PNDM would index
/// ᾱ with), naming the first and the offset that put it there.
pub(crate) fn check_timestep_range(timesteps: &[f64], train: usize, steps_offset: usize) -> Result<()> {
    match timesteps.iter().find(|&&t| !(0.0..train as f64).contains(&t)) {
        Some(&t) => Err(SchedulerError::Invalid(format!(
            "timestep {t} is outside the training range 0..{train} (steps_offset = {steps_offset})"
        ))),
        None => Ok(()),
    }
}

/// The integer timesteps of the ᾱ-indexed samplers (`scheduling_ddim.py::set_timesteps`).
pub(crate) fn ddim_timesteps(spacing: TimestepSpacing, train: usize, n: usize, steps_offset: usize) -> Vec<f64> {
    match spacing {
        TimestepSpacing::Linspace => np_linspace(0.0, (train - 1) as f64, n)
            .into_iter()
            .rev()
            .map(|t| np_round(t).trunc())
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = train / n;
            (0..n).rev().map(|i| (i * ratio).saturating_add(steps_offset) as f64).collect()
        }
        TimestepSpacing::Trailing => np_arange_f64(train as f64, 0.0, -(train as f64 / n as f64))
            .into_iter()
            .map(|t| np_round(t) - 1.0)
            .collect(),
    }
}

/// `add_noise` of the ᾱ-indexed samplers: √ᾱ_t · x₀ + √(1 − ᾱ_t) · ε.
pub(crate) fn add_noise_alphas(alphas_cumprod: &[f64], timestep: f64, original: Tensor<4>, noise: Tensor<4>) -> Tensor<4> {
    let a = alphas_cumprod[timestep as usize];
    original.mul_scalar(a.sqrt()) + noise.mul_scalar((1.0 - a).sqrt())
}

/// The config LCM and TCD share (their `__init__` signatures are identical).
#[derive(Debug, Clone)]
pub(crate) struct ConsistencyConfig {
    pub(crate) betas: BetaConfig,
    pub(crate) original_inference_steps: usize,
    pub(crate) clip: SampleClip,
    pub(crate) set_alpha_to_one: bool,
    pub(crate) prediction_type: PredictionType,
    pub(crate) timestep_scaling: f64,
}

impl ConsistencyConfig {
    /// Reads every `__init__` key of `LCMScheduler` / `TCDScheduler` with their defaults.
    pub(crate) fn read(r: &mut ConfigReader<'_>) -> Result<Self> {
        let betas = BetaConfig::read(
            r,
            0.00085,
            0.012,
            "scaled_linear",
            &["linear", "scaled_linear", "squaredcos_cap_v2"],
            true,
        )?;
        let original_inference_steps = r.usize("original_inference_steps", 50)?;
        let clip = SampleClip::read(r, Some(false))?;
        let set_alpha_to_one = r.bool("set_alpha_to_one", true)?;
        let _steps_offset = r.usize("steps_offset", 0)?; // unused by set_timesteps
        let prediction_type = PredictionType::read(r)?;
        let _spacing = TimestepSpacing::read(r, "leading")?; // unused by set_timesteps
        let timestep_scaling = r.f64("timestep_scaling", 10.0)?;
        Ok(Self { betas, original_inference_steps, clip, set_alpha_to_one, prediction_type, timestep_scaling })
    }

    /// ᾱ (float32 values) and `final_alpha_cumprod`.
    pub(crate) fn alphas(&self) -> (Vec<f64>, f32) {
        let alphas_cumprod = self.betas.alphas_cumprod();
        let final_alpha_cumprod = if self.set_alpha_to_one { 1.0 } else { alphas_cumprod[0] as f32 };
        (alphas_cumprod, final_alpha_cumprod)
    }
}

/// `set_timesteps(num_inference_steps)` of LCM and TCD (strength 1, no custom timesteps): the
/// distillation schedule `[k − 1, 2k − 1, …, original_steps · k − 1]` with `k = T // original_steps`,
/// reversed, sampled at `floor(linspace(0, len, n, endpoint=False))`.
pub(crate) fn consistency_timesteps(train: usize, original_steps: usize, n: usize) -> Result<Vec<f64>> {
    check_steps(n, train)?;
    if original_steps == 0 || original_steps > train {
        return Err(SchedulerError::Unsupported {
            key: "original_inference_steps".into(),
            value: original_steps.to_string(),
            allowed: format!("an integer in 1..={train} (num_train_timesteps)"),
        });
    }
    if n > original_steps {
        return Err(SchedulerError::Invalid(format!(
            "num_inference_steps ({n}) cannot be larger than original_inference_steps ({original_steps}): \
             the timesteps are a subset of the {original_steps}-step distillation schedule"
        )));
    }
    let k = (train / original_steps) as i64;
    let origin: Vec<i64> = (1..=original_steps as i64).rev().map(|i| i * k - 1).collect();
    // np.linspace(0, len, num=n, endpoint=False): arange(n) * (len / n)
    let step = origin.len() as f64 / n as f64;
    Ok((0..n).map(|i| origin[(i as f64 * step).floor() as usize] as f64).collect())
}

/// The integer timesteps of the multistep solvers (`set_timesteps` of DPM-Solver++ multistep,
/// UniPC and DEIS): `linspace(0, T − 1, n + 1).round()` reversed without its last value;
/// `arange(n + 1) * (T // (n + 1))` reversed without 0, plus the offset; or
/// `round(arange(T, 0, −T/n)) − 1`.
pub(crate) fn multistep_timesteps(spacing: TimestepSpacing, train: usize, n: usize, steps_offset: usize) -> Vec<f64> {
    match spacing {
        TimestepSpacing::Linspace => {
            let mut t: Vec<f64> = np_linspace(0.0, (train - 1) as f64, n + 1).into_iter().map(np_round).collect();
            t.reverse();
            t.pop();
            t
        }
        TimestepSpacing::Leading => {
            let ratio = train / (n + 1);
            (1..=n).rev().map(|i| (i * ratio).saturating_add(steps_offset) as f64).collect()
        }
        TimestepSpacing::Trailing => np_arange_f64(train as f64, 0.0, -(train as f64 / n as f64))
            .into_iter()
            .map(|t| np_round(t) - 1.0)
            .collect(),
    }
}

/// The sigma schedule shared by UniPC and DEIS: the training σ's, float32 like diffusers'
/// `((1 − ᾱ) / ᾱ) ** 0.5` tensor, and their float32 logs (`np.log` of the float32 array).
pub(crate) fn train_sigmas_and_logs(alphas_cumprod: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let sigmas = torch_sigmas_from_alphas_cumprod(alphas_cumprod);
    let logs = sigmas.iter().map(|&s| np_log_f32(s as f32) as f64).collect();
    (sigmas, logs)
}

/// The timesteps of the optional sigma spacings (`_sigma_to_t` of each converted σ): rounded for
/// Karras (`.round()`), truncated towards zero for exponential and beta (`.to(torch.int64)`).
pub(crate) fn spaced_timesteps(kind: SigmaSpacing, sigmas: &[f64], log_sigmas: &[f64]) -> Vec<f64> {
    sigmas
        .iter()
        .map(|&s| {
            let t = sigma_to_t(s, log_sigmas);
            if kind == SigmaSpacing::Karras { np_round(t) } else { t.trunc() }
        })
        .collect()
}

/// `_sigma_to_alpha_sigma_t` on a float32 σ: α_t = 1 / √(σ² + 1), σ_t = σ · α_t.
#[inline]
pub(crate) fn alpha_sigma_f32(sigma: f32) -> (f32, f32) {
    let alpha = 1.0f32 / torch_sqrt_f32(sigma * sigma + 1.0);
    (alpha, sigma * alpha)
}

// ---- the σ-parameterised (k-diffusion) samplers ------------------------------------------------

/// The timesteps of the k-diffusion style samplers (Euler, Euler a, Heun, LMS, KDPM2), as float32:
/// `linspace(0, T-1, n, dtype=float32)` reversed; `arange(n) * (T // n)` reversed + offset;
/// `round(arange(T, 0, -T/n)) - 1`.
pub(crate) fn k_timesteps(spacing: TimestepSpacing, train: usize, n: usize, steps_offset: usize) -> Vec<f64> {
    match spacing {
        TimestepSpacing::Linspace => {
            np_linspace(0.0, (train - 1) as f64, n).into_iter().rev().map(f32r).collect()
        }
        TimestepSpacing::Leading => {
            let ratio = train / n;
            (0..n).rev().map(|i| f32r((i * ratio) as f64) + steps_offset as f64).map(f32r).collect()
        }
        TimestepSpacing::Trailing => {
            let ratio = train as f64 / n as f64;
            np_arange_f64(train as f64, 0.0, -ratio).into_iter().map(|t| f32r(np_round(t)) - 1.0).collect()
        }
    }
}

/// The input scaling of the σ-parameterised samplers (Euler, Euler a, Heun, LMS, KDPM2):
/// `sample / ((sigma**2 + 1) ** 0.5)`, computed in float32 like diffusers' 0-dim σ tensor (an f64
/// sqrt differs by one ulp at e.g. σ = 0.0100013).
pub(crate) fn k_scale_model_input(sample: Tensor<4>, sigma: f64) -> Tensor<4> {
    let sigma = sigma as f32;
    sample.div_scalar((sigma * sigma + 1.0).sqrt())
}

/// x̂₀ of the σ-parameterised samplers at noise level σ (`pred_original_sample` in diffusers'
/// `scheduling_euler_ancestral_discrete.py`, `scheduling_lms_discrete.py`,
/// `scheduling_heun_discrete.py`, `scheduling_k_dpm_2_discrete.py`), float32 scalars:
/// ε: `sample - σ·out`; v: `out·(−σ/√(σ²+1)) + sample/(σ²+1)`; sample: `out`.
pub(crate) fn k_pred_original_sample(
    prediction_type: PredictionType,
    model_output: Tensor<4>,
    sample: &Tensor<4>,
    sigma: f32,
) -> Tensor<4> {
    match prediction_type {
        PredictionType::Epsilon => sample.clone() - model_output.mul_scalar(sigma),
        PredictionType::VPrediction => {
            let s2 = sigma * sigma + 1.0;
            model_output.mul_scalar(-sigma / s2.sqrt()) + sample.clone().div_scalar(s2)
        }
        PredictionType::Sample => model_output,
    }
}

/// The σ schedule of the k-diffusion samplers before their per-class post-processing
/// (`set_timesteps` of LMS/Heun/KDPM2): timesteps by `timestep_spacing`,
/// `σ = np.interp(timesteps, arange(T), train_sigmas)` and, with a sigma spacing, the respaced
/// σ with `timesteps = [_sigma_to_t(σ, log_sigmas)]`.
#[derive(Debug, Clone)]
pub(crate) struct KSigmaSchedule {
    /// n timesteps: float32 values, or float64 fractional ones after a sigma respacing.
    pub timesteps: Vec<f64>,
    /// n sigmas in float64 (diffusers appends 0 and casts to float32 afterwards).
    pub sigmas: Vec<f64>,
    /// `np.log(train_sigmas)`, float32 values.
    pub log_sigmas: Vec<f64>,
    /// Whether a Karras/exponential/beta spacing replaced the default sigmas.
    pub respaced: bool,
}

/// Computes [`KSigmaSchedule`] from ᾱ (float32 values) for `n` steps.
pub(crate) fn k_sigma_schedule(
    alphas_cumprod: &[f64],
    spacing: TimestepSpacing,
    sigma_spacing: SigmaSpacing,
    n: usize,
    steps_offset: usize,
) -> KSigmaSchedule {
    let train = alphas_cumprod.len();
    // sigmas = np.array(((1 - alphas_cumprod) / alphas_cumprod) ** 0.5): float32
    let train_sigmas = sigmas_from_alphas_cumprod(alphas_cumprod);
    // np.log of a float32 array stays float32 (and is numpy's own SIMD log)
    let log_sigmas: Vec<f64> = train_sigmas.iter().map(|&s| np_log_f32(s as f32) as f64).collect();
    let timesteps = k_timesteps(spacing, train, n, steps_offset);
    let xp: Vec<f64> = (0..train).map(|i| i as f64).collect();
    let sigmas: Vec<f64> = timesteps.iter().map(|&t| np_interp(t, &xp, &train_sigmas)).collect();
    // _convert_to_karras / _exponential / _beta: these classes have no sigma_min/sigma_max keys
    match sigma_spacing.convert(&sigmas, n, SigmaBounds::default()) {
        Some(converted) => KSigmaSchedule {
            timesteps: converted.iter().map(|&s| sigma_to_t(s, &log_sigmas)).collect(),
            sigmas: converted,
            log_sigmas,
            respaced: true,
        },
        None => KSigmaSchedule { timesteps, sigmas, log_sigmas, respaced: false },
    }
}

/// `init_noise_sigma` of the k-diffusion samplers: `sigmas.max()` for linspace/trailing spacing,
/// `(sigmas.max() ** 2 + 1) ** 0.5` (float32 tensor arithmetic) for leading.
pub(crate) fn k_init_noise_sigma(sigmas: &[f64], spacing: TimestepSpacing) -> f64 {
    let max_sigma = sigmas.iter().cloned().fold(f64::MIN, f64::max);
    match spacing {
        TimestepSpacing::Linspace | TimestepSpacing::Trailing => max_sigma,
        TimestepSpacing::Leading => {
            let m = max_sigma as f32;
            (m * m + 1.0).sqrt() as f64
        }
    }
}

/// `(sigma_up, sigma_down)` of an ancestral step from `sigma_from` to `sigma_to`, in float32
/// tensor arithmetic like diffusers (`sigma_up = (σ_to² (σ_from² − σ_to²) / σ_from²) ** 0.5`,
/// `sigma_down = (σ_to² − σ_up²) ** 0.5`; torch's `** 0.5` is `sqrt`).
pub(crate) fn ancestral_sigmas_f32(sigma_from: f32, sigma_to: f32) -> (f32, f32) {
    let from2 = sigma_from * sigma_from;
    let to2 = sigma_to * sigma_to;
    let sigma_up = (to2 * (from2 - to2) / from2).sqrt();
    let sigma_down = (to2 - sigma_up * sigma_up).sqrt();
    (sigma_up, sigma_down)
}

/// `[x[:1], x[1:-1].repeat_interleave(2), x[-1:]]` (Heun's sigmas) or, with `keep_last_pair`,
/// `[x[:1], x[1:].repeat_interleave(2), x[-1:]]` (KDPM2's).
pub(crate) fn interleave(x: &[f64], keep_last_pair: bool) -> Vec<f64> {
    let n = x.len();
    let mut out = vec![x[0]];
    let end = if keep_last_pair { n } else { n - 1 };
    for &v in &x[1..end.max(1)] {
        out.push(v);
        out.push(v);
    }
    out.push(x[n - 1]);
    out
}
