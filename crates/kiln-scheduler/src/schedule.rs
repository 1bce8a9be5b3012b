//! Noise schedules: betas, ᾱ, timestep spacings and sigma spacings, as f64 vectors.
//!
//! diffusers builds betas and ᾱ as float32 torch tensors and the spacings with numpy (mostly
//! float64, sometimes float32). The functions here reproduce those computations value for value:
//! where diffusers rounds to float32 we round to f32 too, so integer timesteps come out identical
//! and float schedules agree to the last bit or two.

use crate::config::ConfigReader;
use crate::error::{Result, SchedulerError};

/// Rounds an f64 to the nearest f32 and back (what `.astype(np.float32)` / `torch.float32` do).
#[inline]
pub fn f32r(x: f64) -> f64 {
    x as f32 as f64
}

/// `torch.linspace(start, end, steps, dtype=torch.float32)` on the CPU
/// (`aten/src/ATen/native/cpu/RangeFactoriesKernel.cpp::linspace_kernel`): float arithmetic, the
/// first half counted up from `start`, the second half down from `end`, each value one fused
/// multiply-add (torch's vectorised kernel uses FMA; verified bit for bit against torch 2.15).
pub fn torch_linspace_f32(start: f64, end: f64, steps: usize) -> Vec<f32> {
    let (start, end) = (start as f32, end as f32);
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f32;
    let halfway = steps / 2;
    (0..steps)
        .map(|i| {
            if i < halfway {
                step.mul_add(i as f32, start)
            } else {
                (-step).mul_add((steps - i - 1) as f32, end)
            }
        })
        .collect()
}

/// `numpy.linspace(start, stop, num)` in float64 (`y = arange(num) * step + start`, last = stop).
pub fn np_linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 0 {
        return Vec::new();
    }
    if num == 1 {
        return vec![start];
    }
    let div = (num - 1) as f64;
    let delta = stop - start;
    let step = delta / div;
    let mut y: Vec<f64> = if step == 0.0 {
        (0..num).map(|i| i as f64 / div * delta + start).collect()
    } else {
        (0..num).map(|i| i as f64 * step + start).collect()
    };
    y[num - 1] = stop;
    y
}

/// `numpy.arange(start, stop, step)` for floats: length `ceil((stop - start) / step)`, values
/// `start + i * delta` with `delta = (start + step) - start` (numpy's `@TYPE@_fill`).
pub fn np_arange_f64(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil();
    if !(len > 0.0) {
        return Vec::new();
    }
    let len = len as usize;
    let delta = (start + step) - start;
    (0..len).map(|i| if i == 0 { start } else { start + i as f64 * delta }).collect()
}

/// `numpy.round`: halves go to the even neighbour.
#[inline]
pub fn np_round(x: f64) -> f64 {
    x.round_ties_even()
}

/// `numpy.interp(x, xp, fp)` for increasing `xp`, clamped at both ends.
pub fn np_interp(x: f64, xp: &[f64], fp: &[f64]) -> f64 {
    let n = xp.len();
    if x <= xp[0] {
        return fp[0];
    }
    if x >= xp[n - 1] {
        return fp[n - 1];
    }
    // binary search for j with xp[j] <= x < xp[j+1]
    let j = match xp.binary_search_by(|v| v.partial_cmp(&x).unwrap()) {
        Ok(j) => return fp[j],
        Err(j) => j - 1,
    };
    let slope = (fp[j + 1] - fp[j]) / (xp[j + 1] - xp[j]);
    slope * (x - xp[j]) + fp[j]
}

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
        if num_train_timesteps < 2 {
            return Err(SchedulerError::Unsupported {
                key: "num_train_timesteps".into(),
                value: num_train_timesteps.to_string(),
                allowed: "an integer >= 2".into(),
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
        Ok(Self { num_train_timesteps, beta_start, beta_end, schedule, rescale_betas_zero_snr })
    }

    /// The betas as float32, exactly as diffusers' constructors build them.
    pub fn betas(&self) -> Vec<f32> {
        let n = self.num_train_timesteps;
        let betas: Vec<f32> = match &self.schedule {
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
        };
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

/// `torch.cumprod` of a float32 tensor on the CPU.
pub fn cumprod_f32(x: &[f32]) -> Vec<f32> {
    let mut acc = 1.0f64;
    x.iter()
        .map(|&v| {
            acc *= v as f64;
            acc as f32
        })
        .collect()
}

/// `betas_for_alpha_bar(n, max_beta, "cosine")` (e.g. `scheduling_ddpm.py`): float64 Python math,
/// then `torch.tensor(..., dtype=float32)`.
pub fn betas_for_alpha_bar_cosine(n: usize, max_beta: f64) -> Vec<f32> {
    let alpha_bar = |t: f64| ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0).cos().powi(2);
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

/// `np.log` of a float32 value: numpy's own SIMD kernel (`simd_log_FLOAT` in
/// `numpy/_core/src/umath/loops_exponent_log.dispatch.c.src`, AVX2-FMA3/AVX512F, which numpy runs
/// for float32 on every x86-64 CPU with AVX2), transcribed for one lane. It is not correctly
/// rounded (up to 3.8 ulp) and differs from libm's `logf` on about a fifth of all inputs; the
/// samplers that call `np.log` on float32 values (`log_sigmas` for `_sigma_to_t`, DEIS' `ind_fn`)
/// need its exact bits where differences of logs cancel.
pub fn np_log_f32(x: f32) -> f32 {
    const SQRT1_2: f32 = f32::from_bits(0x3F35_04F3); // NPY_SQRT1_2f
    const LOGE2: f32 = f32::from_bits(0x3F31_7218); // NPY_LOGE2f
    // NPY_COEFF_P*_LOGf / NPY_COEFF_Q*_LOGf (npy_simd_data.h), rounded to float like the C literals
    const P: [f32; 6] = [
        0.0,
        9.999999999999998702752e-01,
        2.112677543073053063722e+00,
        1.480000633576506585156e+00,
        3.808837741388407920751e-01,
        2.589979117907922693523e-02,
    ];
    const Q: [f32; 6] = [
        1.0,
        2.612677543073109236779e+00,
        2.453006071784736363091e+00,
        9.864942958519418960339e-01,
        1.546476374983906719538e-01,
        5.875095403124574342950e-03,
    ];
    if x.is_nan() {
        return x;
    }
    if x < 0.0 {
        return -f32::NAN;
    }
    if x == 0.0 {
        return f32::NEG_INFINITY;
    }
    if x == f32::INFINITY {
        return f32::INFINITY;
    }
    // exponent and mantissa in [0.5, 1); denormals are scaled by 2^100 first
    let (v, bias) = if x < f32::MIN_POSITIVE { (x * f32::from_bits(0x7180_0000), 100.0) } else { (x, 0.0) };
    let bits = v.to_bits();
    let mut exponent = ((bits >> 23) as i32 - 0x7E) as f32 - bias;
    let mut m = f32::from_bits((bits & 0x007F_FFFF) | (126 << 23));
    if m <= SQRT1_2 {
        m = m + m;
        exponent -= 1.0;
    }
    let y = m - 1.0;
    let mut num = P[5].mul_add(y, P[4]);
    num = num.mul_add(y, P[3]);
    num = num.mul_add(y, P[2]);
    num = num.mul_add(y, P[1]);
    num = num.mul_add(y, P[0]);
    let mut den = Q[5].mul_add(y, Q[4]);
    den = den.mul_add(y, Q[3]);
    den = den.mul_add(y, Q[2]);
    den = den.mul_add(y, Q[1]);
    den = den.mul_add(y, Q[0]);
    exponent.mul_add(LOGE2, num / den)
}

#[cfg(test)]
mod tests {
    use super::*;

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
