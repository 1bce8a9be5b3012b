//! torch's and numpy's float arithmetic, reproduced: the schedules diffusers computes in float32
//! tensors and float64 numpy arrays (`linspace`, `arange`, `interp`, `round`, `cumprod`), and
//! torch's CPU `sqrt`/`log`/`exp` of float32 where MKL's results differ from correctly rounded
//! ones. Schedules built from these agree with diffusers' to the last bit or two.

/// `torch.sqrt` (and `** 0.5`) of a float32 tensor on the CPU. torch hands float32 square roots to
/// MKL's vector math (`vsSqrt`, high-accuracy mode), which is *not* correctly rounded: its AVX-512
/// kernel (`mkl_vml_kernel_sSqrt_Z0HAynn`, the one torch runs on any AVX-512 CPU) takes the
/// hardware estimate y = `vrsqrt14ps`(x) and makes one fused correction,
/// s = x·y, h = y/2, √x ≈ fma(fma(−s, s, x), h, s), which lands one ulp low on ~0.5% of inputs.
/// diffusers' σ = ((1 − ᾱ)/ᾱ) ** 0.5 and α_t = 1/(σ² + 1) ** 0.5 come out of it, and the
/// higher-order multistep coefficients amplify a one-ulp σ several hundred times. This function
/// runs the same instruction sequence where the CPU has AVX-512 (bit for bit with torch there,
/// verified on 800 000 inputs) and the correctly rounded square root elsewhere (where torch runs
/// another MKL kernel).
pub fn torch_sqrt_f32(x: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        // MKL rescales inputs below 2^-78 (y > 2^39) and passes 0, ±inf and negatives through
        // special paths; the schedules never meet those, so they take the plain square root.
        if x.is_finite() && x >= f32::from_bits(0x1880_0000) && std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F (checked just above).
            let y = unsafe { rsqrt14(x) };
            let s = x * y;
            let h = 0.5 * y;
            return (-s).mul_add(s, x).mul_add(h, s);
        }
    }
    x.sqrt()
}

/// `torch.log` of a 0-dim float32 tensor. torch's CPU kernel (MKL VML, high-accuracy mode) is
/// correctly rounded on all but ~0.05% of inputs, so the correctly rounded value (the f64
/// logarithm rounded once) reproduces it far more often than libm's `logf` (~1% off).
#[inline]
pub fn torch_log_f32(x: f32) -> f32 {
    (x as f64).ln() as f32
}

/// `torch.exp` of a 0-dim float32 tensor, approximated by the correctly rounded value. MKL's
/// `vsExp` differs from it (and from libm's `expf`) by one ulp on ~1% of inputs; only DEIS'
/// first-order update calls it, where one ulp of e^h stays far inside the parity tolerance.
#[inline]
pub fn torch_exp_f32(x: f32) -> f32 {
    (x as f64).exp() as f32
}

/// `torch.expm1` of a 0-dim float32 tensor, as the correctly rounded value (torch's vectorised
/// kernel is within it on all but ~0.1% of inputs; libm's `expm1f` misses it on ~10%).
#[inline]
pub fn torch_expm1_f32(x: f32) -> f32 {
    (x as f64).exp_m1() as f32
}

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

/// `vrsqrt14ss`: the AVX-512 reciprocal square root estimate (relative error < 2^-14).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn rsqrt14(x: f32) -> f32 {
    use std::arch::x86_64::{_mm_cvtss_f32, _mm_rsqrt14_ss, _mm_set_ss};
    let v = _mm_set_ss(x);
    _mm_cvtss_f32(_mm_rsqrt14_ss(v, v))
}
