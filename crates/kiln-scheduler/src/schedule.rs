//! Noise schedules: betas, ᾱ, timestep spacings and sigma spacings, as f64 vectors.
//!
//! diffusers builds betas and ᾱ as float32 torch tensors and the spacings with numpy (mostly
//! float64, sometimes float32). The functions here reproduce those computations value for value:
//! where diffusers rounds to float32 we round to f32 too, so integer timesteps come out identical
//! and float schedules agree to the last bit or two.

use crate::config::ConfigReader;
use crate::error::{Result, SchedulerError};
use crate::float::{cumprod_f32, np_linspace, torch_linspace_f32, torch_sqrt_f32};

/// The beta schedules diffusers knows (`beta_schedule`, or explicit `trained_betas`).
#[derive(Debug, Clone, PartialEq)]
pub enum BetaSchedule {
    Linear,
    ScaledLinear,
    SquaredcosCapV2,
    /// DDPM-only: `sigmoid(linspace(-6, 6)) * (end - start) + start`.
    Sigmoid,
    Trained(Vec<f64>),
}

/// The largest `num_train_timesteps` kiln takes (every published model uses 1000; a schedule
/// holds a few values per training step).
pub const MAX_TRAIN_TIMESTEPS: usize = 100_000;

/// The part of every discrete-time scheduler config that defines ᾱ_t.
#[derive(Debug, Clone, PartialEq)]
pub struct BetaConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub schedule: BetaSchedule,
    pub rescale_betas_zero_snr: bool,
}

impl BetaConfig {
    /// Reads `num_train_timesteps`, `beta_start`, `beta_end`, `beta_schedule`, `trained_betas`
    /// and (when `knows_rescale`) `rescale_betas_zero_snr`, with the given class defaults.
    pub(crate) fn read(
        r: &mut ConfigReader<'_>,
        default_start: f64,
        default_end: f64,
        default_schedule: &'static str,
        allowed: &[&'static str],
        knows_rescale: bool,
    ) -> Result<Self> {
        let num_train_timesteps = r.usize("num_train_timesteps", 1000)?;
        if !(2..=MAX_TRAIN_TIMESTEPS).contains(&num_train_timesteps) {
            return Err(SchedulerError::Unsupported {
                key: "num_train_timesteps".into(),
                value: num_train_timesteps.to_string(),
                allowed: format!("an integer in [2, {MAX_TRAIN_TIMESTEPS}]"),
            });
        }
        let beta_start = r.f64("beta_start", default_start)?;
        let beta_end = r.f64("beta_end", default_end)?;
        let trained = r.opt_f64_list("trained_betas")?;
        // diffusers ignores beta_schedule when trained_betas is given
        let name = if trained.is_some() {
            r.raw_string("beta_schedule")?.unwrap_or_else(|| default_schedule.to_string())
        } else {
            r.choice("beta_schedule", default_schedule, allowed)?
        };
        let rescale_betas_zero_snr = if knows_rescale { r.bool("rescale_betas_zero_snr", false)? } else { false };
        let schedule = match (trained, name.as_str()) {
            (Some(b), _) => {
                if b.len() != num_train_timesteps {
                    return Err(SchedulerError::Invalid(format!(
                        "trained_betas has {} values but num_train_timesteps is {num_train_timesteps}",
                        b.len()
                    )));
                }
                BetaSchedule::Trained(b)
            }
            (None, "linear") => BetaSchedule::Linear,
            (None, "scaled_linear") => BetaSchedule::ScaledLinear,
            (None, "squaredcos_cap_v2") => BetaSchedule::SquaredcosCapV2,
            (None, "sigmoid") => BetaSchedule::Sigmoid,
            (None, other) => unreachable!("choice() admitted {other}"),
        };
        let config = Self { num_train_timesteps, beta_start, beta_end, schedule, rescale_betas_zero_snr };
        // every β must be a probability strictly between 0 and 1: β ≤ 0 or ≥ 1 makes ᾱ zero,
        // negative or not decreasing, and the σ schedule NaN (a black picture)
        let key = if matches!(config.schedule, BetaSchedule::Trained(_)) { "trained_betas" } else { "beta_start/beta_end" };
        if let Some((t, b)) = config.raw_betas().iter().enumerate().find(|(_, b)| !(b.is_finite() && **b > 0.0 && **b < 1.0)) {
            return Err(SchedulerError::Unsupported {
                key: key.into(),
                value: format!("{beta_start}/{beta_end}, which give beta[{t}] = {b}"),
                allowed: "values that make every beta lie in (0, 1)".into(),
            });
        }
        Ok(config)
    }

    /// The betas as float32 before `rescale_betas_zero_snr` (which sets the last to 1 on purpose).
    fn raw_betas(&self) -> Vec<f32> {
        let n = self.num_train_timesteps;
        match &self.schedule {
            BetaSchedule::Trained(b) => b.iter().map(|&x| x as f32).collect(),
            BetaSchedule::Linear => torch_linspace_f32(self.beta_start, self.beta_end, n),
            BetaSchedule::ScaledLinear => torch_linspace_f32(self.beta_start.sqrt(), self.beta_end.sqrt(), n)
                .into_iter()
                .map(|b| b * b)
                .collect(),
            BetaSchedule::SquaredcosCapV2 => betas_for_alpha_bar_cosine(n, 0.999),
            BetaSchedule::Sigmoid => torch_linspace_f32(-6.0, 6.0, n)
                .into_iter()
                .map(|x| {
                    let s = 1.0f32 / (1.0 + (-x).exp());
                    s * (self.beta_end - self.beta_start) as f32 + self.beta_start as f32
                })
                .collect(),
        }
    }

    /// The betas as float32, exactly as diffusers' constructors build them.
    pub fn betas(&self) -> Vec<f32> {
        let betas = self.raw_betas();
        if self.rescale_betas_zero_snr { rescale_zero_terminal_snr(&betas) } else { betas }
    }

    /// ᾱ_t = Π(1 − β) as float32 (`torch.cumprod` accumulates in double on the CPU and rounds each
    /// output to float).
    pub fn alphas_cumprod(&self) -> Vec<f64> {
        cumprod_f32(&self.betas().iter().map(|b| 1.0 - b).collect::<Vec<f32>>())
            .into_iter()
            .map(|a| a as f64)
            .collect()
    }
}

/// `betas_for_alpha_bar(n, max_beta, "cosine")` (e.g. `scheduling_ddpm.py`): float64 Python math,
/// then `torch.tensor(..., dtype=float32)`.
pub fn betas_for_alpha_bar_cosine(n: usize, max_beta: f64) -> Vec<f32> {
    betas_for_alpha_bar(n, max_beta, |t| ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0).cos().powi(2))
}

/// diffusers' `betas_for_alpha_bar` for a given ᾱ(t): β_i = min(1 − ᾱ((i+1)/n) / ᾱ(i/n), max_beta).
fn betas_for_alpha_bar(n: usize, max_beta: f64, alpha_bar: impl Fn(f64) -> f64) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let t1 = i as f64 / n as f64;
            let t2 = (i + 1) as f64 / n as f64;
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(max_beta) as f32
        })
        .collect()
}

/// `rescale_zero_terminal_snr(betas)` (arXiv 2305.08891, Algorithm 1), in float32 like diffusers.
pub fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let alphas: Vec<f32> = betas.iter().map(|b| 1.0 - b).collect();
    let cum = cumprod_f32(&alphas);
    let mut sqrt: Vec<f32> = cum.iter().map(|a| a.sqrt()).collect();
    let s0 = sqrt[0];
    let st = sqrt[sqrt.len() - 1];
    let scale = s0 / (s0 - st);
    for v in sqrt.iter_mut() {
        *v -= st;
        *v *= scale;
    }
    let bar: Vec<f32> = sqrt.iter().map(|v| v * v).collect();
    let mut out = Vec::with_capacity(bar.len());
    out.push(1.0 - bar[0]);
    for i in 1..bar.len() {
        out.push(1.0 - bar[i] / bar[i - 1]);
    }
    out
}

/// σ_t = √((1 − ᾱ_t) / ᾱ_t) computed in float32 (diffusers does it on the float32 ᾱ tensor).
pub fn sigmas_from_alphas_cumprod(alphas_cumprod: &[f64]) -> Vec<f64> {
    alphas_cumprod
        .iter()
        .map(|&a| {
            let a = a as f32;
            (((1.0 - a) / a).sqrt()) as f64
        })
        .collect()
}

/// `_sigma_to_t(sigma, log_sigmas)` (`scheduling_euler_discrete.py`): the fractional training
/// timestep whose log-sigma brackets `sigma`, by linear interpolation in log space.
pub fn sigma_to_t(sigma: f64, log_sigmas: &[f64]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    let n = log_sigmas.len();
    // low_idx = (number of log_sigmas <= log_sigma) - 1, clipped to [0, n-2]
    // (np.cumsum(dists >= 0).argmax() is the index of the last true entry; 0 when none).
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
    (1.0 - w) * low_idx as f64 + w * high_idx as f64
}

/// Where the optional sigma spacings take their ends from (`sigma_min`/`sigma_max` in the config
/// of the samplers that have those keys, else the ends of the input sigmas).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SigmaBounds {
    pub sigma_min: Option<f64>,
    pub sigma_max: Option<f64>,
}

impl SigmaBounds {
    fn ends(&self, in_sigmas: &[f64]) -> (f64, f64) {
        (
            self.sigma_min.unwrap_or(in_sigmas[in_sigmas.len() - 1]),
            self.sigma_max.unwrap_or(in_sigmas[0]),
        )
    }
}

/// `_convert_to_karras` (Karras et al. 2022, ρ = 7).
pub fn karras_sigmas(in_sigmas: &[f64], n: usize, bounds: SigmaBounds) -> Vec<f64> {
    let (sigma_min, sigma_max) = bounds.ends(in_sigmas);
    let rho = 7.0;
    let min_inv_rho = sigma_min.powf(1.0 / rho);
    let max_inv_rho = sigma_max.powf(1.0 / rho);
    np_linspace(0.0, 1.0, n)
        .into_iter()
        .map(|ramp| (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)).powf(rho))
        .collect()
}

/// `_convert_to_exponential`: log-uniform between σ_max and σ_min.
pub fn exponential_sigmas(in_sigmas: &[f64], n: usize, bounds: SigmaBounds) -> Vec<f64> {
    let (sigma_min, sigma_max) = bounds.ends(in_sigmas);
    np_linspace(sigma_max.ln(), sigma_min.ln(), n).into_iter().map(f64::exp).collect()
}

/// `_convert_to_beta` ("Beta Sampling is All You Need", arXiv 2407.12173): σ placed at the
/// quantiles of a Beta(α, β) distribution, α = β = 0.6 (`scipy.stats.beta.ppf`).
pub fn beta_sigmas(in_sigmas: &[f64], n: usize, bounds: SigmaBounds) -> Vec<f64> {
    let (sigma_min, sigma_max) = bounds.ends(in_sigmas);
    np_linspace(0.0, 1.0, n)
        .into_iter()
        .map(|x| sigma_min + beta_ppf(1.0 - x, 0.6, 0.6) * (sigma_max - sigma_min))
        .collect()
}

/// Which optional sigma spacing a sampler was configured with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SigmaSpacing {
    #[default]
    Default,
    Karras,
    Exponential,
    Beta,
}

impl SigmaSpacing {
    /// Reads `use_karras_sigmas`, `use_exponential_sigmas`, `use_beta_sigmas` (at most one true).
    pub(crate) fn read(r: &mut ConfigReader<'_>, knows_exp_beta: bool) -> Result<Self> {
        let karras = r.bool("use_karras_sigmas", false)?;
        let (exponential, beta) = if knows_exp_beta {
            (r.bool("use_exponential_sigmas", false)?, r.bool("use_beta_sigmas", false)?)
        } else {
            (false, false)
        };
        match (karras, exponential, beta) {
            (false, false, false) => Ok(Self::Default),
            (true, false, false) => Ok(Self::Karras),
            (false, true, false) => Ok(Self::Exponential),
            (false, false, true) => Ok(Self::Beta),
            _ => Err(SchedulerError::Invalid(
                "only one of use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas can be true".into(),
            )),
        }
    }

    /// Respaces `sigmas` (descending) to `n` values, or returns `None` for the default spacing.
    pub fn convert(self, sigmas: &[f64], n: usize, bounds: SigmaBounds) -> Option<Vec<f64>> {
        match self {
            Self::Default => None,
            Self::Karras => Some(karras_sigmas(sigmas, n, bounds)),
            Self::Exponential => Some(exponential_sigmas(sigmas, n, bounds)),
            Self::Beta => Some(beta_sigmas(sigmas, n, bounds)),
        }
    }
}

/// ln Γ(x) (Lanczos, g = 7, n = 9; relative error below 1e-15 for x > 0).
fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = G[0];
    let t = x + 7.5;
    for (i, g) in G.iter().enumerate().skip(1) {
        a += g / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// Continued fraction of the incomplete beta function (modified Lentz).
fn beta_cf(a: f64, b: f64, x: f64) -> f64 {
    let tiny = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < tiny {
        d = tiny;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..10_000 {
        let m = m as f64;
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        if d.abs() < tiny {
            d = tiny;
        }
        c = 1.0 + aa / c;
        if c.abs() < tiny {
            c = tiny;
        }
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        if d.abs() < tiny {
            d = tiny;
        }
        c = 1.0 + aa / c;
        if c.abs() < tiny {
            c = tiny;
        }
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < 1e-16 {
            break;
        }
    }
    h
}

/// The regularised incomplete beta function I_x(a, b).
pub fn beta_cdf(x: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    if x < (a + 1.0) / (a + b + 2.0) {
        ln_front.exp() * beta_cf(a, b, x) / a
    } else {
        1.0 - ln_front.exp() * beta_cf(b, a, 1.0 - x) / b
    }
}

/// The quantile function of Beta(a, b) (`scipy.stats.beta.ppf`), by bisection to full precision.
pub fn beta_ppf(q: f64, a: f64, b: f64) -> f64 {
    if q <= 0.0 {
        return 0.0;
    }
    if q >= 1.0 {
        return 1.0;
    }
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if beta_cdf(mid, a, b) < q {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// `betas_for_alpha_bar(n, alpha_transform_type="exp")`: ᾱ(t) = exp(−12 t), in float64 Python
/// math, then `torch.tensor(..., dtype=float32)`.
pub(crate) fn betas_for_alpha_bar_exp(n: usize, max_beta: f64) -> Vec<f32> {
    betas_for_alpha_bar(n, max_beta, |t| (t * -12.0).exp())
}

/// σ_t = ((1 − ᾱ_t) / ᾱ_t) ** 0.5 on the float32 ᾱ tensor, with torch's square root.
pub fn torch_sigmas_from_alphas_cumprod(alphas_cumprod: &[f64]) -> Vec<f64> {
    alphas_cumprod
        .iter()
        .map(|&a| {
            let a = a as f32;
            torch_sqrt_f32((1.0 - a) / a) as f64
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::float::{np_arange_f64, np_interp, np_round};

    #[test]
    fn numpy_linspace_and_arange() {
        assert_eq!(np_linspace(0.0, 999.0, 4), vec![0.0, 333.0, 666.0, 999.0]);
        assert_eq!(np_arange_f64(1000.0, 0.0, -250.0), vec![1000.0, 750.0, 500.0, 250.0]);
        assert_eq!(np_round(2.5), 2.0);
        assert_eq!(np_round(3.5), 4.0);
    }

    #[test]
    fn linspace_rounds_like_torch() {
        // torch.linspace(0.0001, 0.02, 1000, dtype=torch.float32), torch 2.15 CPU: these elements
        // are one ulp below `start + step * i` rounded twice.
        let b = torch_linspace_f32(0.0001, 0.02, 1000);
        for (i, bits) in [(7, 0x397b1209u32), (14, 0x39c6a443), (15, 0x39d115de), (28, 0x3a2c6d60), (992, 0x3ca2b29d)] {
            assert_eq!(b[i].to_bits(), bits, "linspace[{i}] = {}", b[i]);
        }
        assert_eq!((b[0], b[999]), (0.0001, 0.02));
    }

    #[test]
    fn beta_quantiles_match_scipy() {
        // scipy.stats.beta.ppf(q, 0.6, 0.6), scipy 1.17.1.
        for (q, want) in [
            (0.1, 0.03958440558878085),
            (0.25, 0.17568037865269498),
            (0.5, 0.5000000000000001),
            (0.9, 0.9604155944112192),
        ] {
            let got = beta_ppf(q, 0.6, 0.6);
            assert!((got - want).abs() < 1e-13, "ppf({q}) = {got}, scipy {want}");
        }
    }

    #[test]
    fn interp_clamps_and_interpolates() {
        let xp = [0.0, 1.0, 2.0];
        let fp = [10.0, 20.0, 40.0];
        assert_eq!(np_interp(-1.0, &xp, &fp), 10.0);
        assert_eq!(np_interp(1.5, &xp, &fp), 30.0);
        assert_eq!(np_interp(2.0, &xp, &fp), 40.0);
        assert_eq!(np_interp(5.0, &xp, &fp), 40.0);
    }
}
