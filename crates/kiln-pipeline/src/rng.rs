//! torch's CPU random number generator, reproduced bit for bit on the host.
//!
//! diffusers seeds a run with `generator = torch.Generator("cpu").manual_seed(seed)` (or
//! `torch.manual_seed(seed)`, the same generator) and then draws, in order and from that one
//! generator, the initial latents (`randn_tensor` → `torch.randn(shape, generator=g)`), the VAE
//! posterior sample of img2img/inpaint, the noise `add_noise` mixes into the init latents, and the
//! noise of every stochastic sampler step. [`TorchGenerator`] returns exactly the float32 values
//! torch returns for that sequence, so a kiln run with the same seed starts from the same latents
//! as the diffusers run and stays on the same noise path.
//!
//! # What torch does (PyTorch 2.x, checked against the installed torch 2.15 CPU build)
//!
//! * **Engine** — `at::mt19937` (`aten/src/ATen/core/MT19937RNGEngine.h`): MT19937 seeded with
//!   `init_genrand` from the low 32 bits of the 64-bit seed (`init_with_uint32`: `state[0] =
//!   seed & 0xffffffff`), so seeds that agree in their low 32 bits draw the same numbers.
//!   `CPUGeneratorImpl::random64()` (`aten/src/ATen/CPUGeneratorImpl.cpp`) concatenates two draws,
//!   the first as the high word (`make64BitsFrom32Bits(random1, random2)`).
//!   `CPUGeneratorImpl::set_current_seed` (what `manual_seed` calls) resets the engine and both
//!   cached normals.
//! * **Uniforms** — `uniform_real_distribution<T>` (`aten/src/ATen/core/DistributionsHelper.h`)
//!   → `transformation::uniform_real` (`TransformationHelper.h`): float keeps the low 24 bits of one
//!   32-bit draw times 2⁻²⁴, double the low 53 bits of a `random64()` times 2⁻⁵³.
//! * **`torch.rand`** (float32) — `uniform_kernel` (`aten/src/ATen/native/cpu/DistributionTemplates.h`):
//!   one float uniform per element, in order.
//! * **`torch.randn`** (float32) — `normal_kernel` (same file) takes one of two paths:
//!   - `numel >= 16` (and contiguous, always true for a fresh tensor): `normal_fill` writes `numel`
//!     float uniforms into the output, then runs Box–Muller in place on each full block of 16
//!     (`NormalFill16`: `u1 = 1 - data[j]`, `u2 = data[j + 8]` for `j` in `0..8`; `data[j] = r cos θ`,
//!     `data[j + 8] = r sin θ` with `r = sqrt(-2 ln u1)`, `θ = 2π u2`). If `numel % 16 != 0` it
//!     then draws 16 *new* uniforms into the last 16 slots (overlapping the last full block) and
//!     transforms those. The engine advances by `numel` (+ 16 with a tail) 32-bit draws. This path
//!     never touches the cached normal.
//!   - `numel < 16`: a serial loop of `at::normal_distribution<double>` per element: two double
//!     uniforms `u1`, `u2` (four 32-bit draws), `r = sqrt(-2 log1p(-u2))`, `θ = 2π u1`; returns
//!     `r cos θ` and caches `r sin θ` in the generator (`next_double_normal_sample`), which the
//!     next serial draw returns instead of drawing — also across calls, and across any
//!     `normal_fill` call in between. Each value is cast from double to float.
//!
//! * **Half precision** (`dtype=torch.float16` / `torch.bfloat16`, what diffusers' `randn_tensor`
//!   draws for a half-precision pipeline when the generator is on the CPU) computes in float
//!   (`opmath_t`) and rounds each value to the storage type (round to nearest even), but draws
//!   differently: `normal_fill` fills a 16-float stack buffer per block (16 uniforms, Box–Muller,
//!   store) instead of drawing all uniforms first, so with a tail the values past the last full
//!   block differ from the float32 draw; the serial path casts double → float → half (two
//!   roundings); `torch.rand` maps a value that rounds up to 1 to 0 (`uniform_kernel`'s clamp).
//!   [`TorchGenerator::randn_as`] / [`TorchGenerator::rand_as`] reproduce these, returning f32
//!   values that are exactly representable in the requested type.
//!
//! # Which Box–Muller arithmetic
//!
//! `NormalFill16<float>` has an AVX2 specialisation (`CPU_CAPABILITY_AVX2`) built on
//! `log256_ps`/`sincos256_ps` from `aten/src/ATen/native/cpu/avx_mathfun.h` (Cephes polynomials),
//! and `DistributionKernels.cpp` registers `normal_stub` with `REGISTER_NO_AVX512_DISPATCH`, so
//! every x86-64 CPU with AVX2 — AVX-512 ones included — runs that AVX2 code. Its results differ
//! from the libm-based generic kernel in the last bits of about 4 values in 10 (up to ~4 ulp,
//! 1.8e-6, for seed 0 and 2×4×64×64; seed 0, `randn(20)`: element 3 is `-0.43387880921` with
//! AVX2 and `-0.43387883902` with `ATEN_CPU_CAPABILITY=default`). The shipped binary
//! (`libtorch_cpu.so`, GCC) also contracts most multiply/add pairs of `avx_mathfun.h` into FMAs —
//! read off its disassembly of `NormalFill16<float, true>::operator()` — so this module replays
//! that exact sequence of roundings lane by lane ([`NormalKernel::Avx2`], the default): plain
//! IEEE f32 arithmetic, `f32::mul_add` and `f32::sqrt`, identical on every platform.
//! [`NormalKernel::Default`] replays the generic `NormalFill16` torch runs without AVX2
//! (`logf`, `sincosf`, `fmaf` from the C library), matching torch where both use the same libm.
//!
//! The serial path (< 16 values) uses the C library's double `log1p`, `sin` and `cos` through
//! Rust's `f64` methods, as torch does (`::log1p`, `::sin`, `::cos`; GCC merges the last two into
//! `sincos`); on glibc both call the same functions, so the values are bit-identical.

use kiln_scheduler::NoiseSource;

const MT_N: usize = 624;
const MT_M: usize = 397;
const MATRIX_A: u32 = 0x9908_b0df;
const UPPER_MASK: u32 = 0x8000_0000;
const LOWER_MASK: u32 = 0x7fff_ffff;

/// `at::mt19937` (`aten/src/ATen/core/MT19937RNGEngine.h`), the engine of torch's CPU generator.
#[derive(Clone)]
struct Mt19937 {
    state: [u32; MT_N],
    /// Draws left before the next twist, counted down before each draw (`data_.left_`).
    left: u32,
    /// Index of the next state word to temper (`data_.next_`).
    next: usize,
}

impl Mt19937 {
    /// `mt19937_engine(seed)` → `init_with_uint32`: only the low 32 bits of the seed are used.
    fn new(seed: u64) -> Self {
        let mut state = [0u32; MT_N];
        state[0] = (seed & 0xffff_ffff) as u32;
        for j in 1..MT_N {
            let prev = state[j - 1];
            state[j] = 1_812_433_253u32.wrapping_mul(prev ^ (prev >> 30)).wrapping_add(j as u32);
        }
        Self { state, left: 1, next: 0 }
    }

    /// `mt19937_engine::operator()`: one tempered 32-bit draw.
    fn next_u32(&mut self) -> u32 {
        self.left -= 1;
        if self.left == 0 {
            self.next_state();
        }
        let mut y = self.state[self.next];
        self.next += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^= y >> 18;
        y
    }

    /// `mt19937_engine::next_state`: regenerate all 624 words.
    fn next_state(&mut self) {
        let twist = |u: u32, v: u32| {
            (((u & UPPER_MASK) | (v & LOWER_MASK)) >> 1) ^ if v & 1 != 0 { MATRIX_A } else { 0 }
        };
        let s = &mut self.state;
        for i in 0..MT_N - MT_M {
            s[i] = s[i + MT_M] ^ twist(s[i], s[i + 1]);
        }
        for i in MT_N - MT_M..MT_N - 1 {
            s[i] = s[i + MT_M - MT_N] ^ twist(s[i], s[i + 1]);
        }
        s[MT_N - 1] = s[MT_M - 1] ^ twist(s[MT_N - 1], s[0]);
        self.left = MT_N as u32;
        self.next = 0;
    }
}

/// Which float32 Box–Muller code of torch's `normal_fill` to reproduce (tensors of 16 or more
/// values; smaller ones always take the serial double path).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NormalKernel {
    /// `NormalFill16<float, true>`'s AVX2 specialisation, as compiled into the x86-64 torch
    /// wheels: what torch runs on any CPU with AVX2 (AVX-512 ones included). Pure IEEE
    /// arithmetic, so the result does not depend on the platform kiln runs on.
    #[default]
    Avx2,
    /// The generic `NormalFill16` (`logf`, `sincosf`, `fmaf`): what torch runs without AVX2
    /// (`ATEN_CPU_CAPABILITY=default`, and builds without the AVX2 specialisation, e.g. aarch64).
    /// Uses the C library's `logf`, `sinf` and `cosf`, so it matches torch where both link the
    /// same libm (checked here on x86-64 glibc).
    Default,
}

/// The dtype torch is asked to draw in (`torch.randn(..., dtype=...)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NoiseDtype {
    /// `torch.float32`.
    #[default]
    F32,
    /// `torch.float16`.
    F16,
    /// `torch.bfloat16`.
    BF16,
}

impl NoiseDtype {
    /// `static_cast<scalar_t>(float)`: round to the nearest value of this type (ties to even),
    /// returned widened to f32 (exactly).
    pub fn round(self, x: f32) -> f32 {
        match self {
            NoiseDtype::F32 => x,
            NoiseDtype::F16 => round_to_f16(x),
            NoiseDtype::BF16 => round_to_bf16(x),
        }
    }
}

/// A host-side generator that draws exactly what `torch.Generator("cpu").manual_seed(seed)` draws.
///
/// ```
/// use kiln_pipeline::TorchGenerator;
/// // torch.randn(3, generator=torch.Generator("cpu").manual_seed(0)) == [1.5410, -0.2934, -2.1788]
/// let mut g = TorchGenerator::new(0);
/// let x = g.randn(&[3]);
/// assert_eq!(x, [1.5409961, -0.2934289, -2.1787894]);
/// ```
///
/// Successive calls continue the stream exactly as successive torch calls on one generator do,
/// including the serial path's cached second normal.
#[derive(Clone)]
pub struct TorchGenerator {
    engine: Mt19937,
    seed: u64,
    /// `CPUGeneratorImpl::next_double_normal_sample_`: the spare `r sin θ` of the last serial
    /// Box–Muller pair, returned by the next serial draw.
    next_double_normal: Option<f64>,
    kernel: NormalKernel,
}

impl std::fmt::Debug for TorchGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TorchGenerator")
            .field("seed", &self.seed)
            .field("kernel", &self.kernel)
            .field("next_double_normal", &self.next_double_normal)
            .finish_non_exhaustive()
    }
}

impl TorchGenerator {
    /// `torch.Generator("cpu").manual_seed(seed)` on a CPU with AVX2 ([`NormalKernel::Avx2`]).
    ///
    /// A negative Python seed `s` is the same generator as `TorchGenerator::new(s as u64)`
    /// (torch stores it two's-complement).
    pub fn new(seed: u64) -> Self {
        Self::with_kernel(seed, NormalKernel::Avx2)
    }

    /// Like [`new`](Self::new), reproducing the given `normal_fill` kernel.
    pub fn with_kernel(seed: u64, kernel: NormalKernel) -> Self {
        Self { engine: Mt19937::new(seed), seed, next_double_normal: None, kernel }
    }

    /// `generator.manual_seed(seed)`: restart the stream (and drop the cached normal).
    pub fn manual_seed(&mut self, seed: u64) {
        *self = Self::with_kernel(seed, self.kernel);
    }

    /// `generator.initial_seed()`.
    pub fn initial_seed(&self) -> u64 {
        self.seed
    }

    /// The `normal_fill` kernel this generator reproduces.
    pub fn kernel(&self) -> NormalKernel {
        self.kernel
    }

    /// `CPUGeneratorImpl::random()`: one raw 32-bit draw.
    pub fn random_u32(&mut self) -> u32 {
        self.engine.next_u32()
    }

    /// `CPUGeneratorImpl::random64()`: two draws, the first as the high word.
    pub fn random_u64(&mut self) -> u64 {
        let hi = self.engine.next_u32() as u64;
        let lo = self.engine.next_u32() as u64;
        (hi << 32) | lo
    }

    /// `uniform_real_distribution<float>(0, 1)`: the low 24 bits of one draw times 2⁻²⁴.
    fn uniform_f32(&mut self) -> f32 {
        (self.engine.next_u32() & 0x00ff_ffff) as f32 * (1.0 / 16_777_216.0)
    }

    /// `uniform_real_distribution<double>(0, 1)`: the low 53 bits of `random64()` times 2⁻⁵³.
    fn uniform_f64(&mut self) -> f64 {
        (self.random_u64() & ((1u64 << 53) - 1)) as f64 * (1.0 / 9_007_199_254_740_992.0)
    }

    /// `torch.randn(shape, generator=g, dtype=torch.float32)`: `shape.iter().product()` standard
    /// normal values in row-major order (an empty `shape` is a 0-d tensor: one value).
    pub fn randn(&mut self, shape: &[usize]) -> Vec<f32> {
        self.randn_as(shape, NoiseDtype::F32)
    }

    /// `torch.rand(shape, generator=g, dtype=torch.float32)`: uniform values in `[0, 1)`.
    pub fn rand(&mut self, shape: &[usize]) -> Vec<f32> {
        self.rand_as(shape, NoiseDtype::F32)
    }

    /// `torch.randn(shape, generator=g, dtype=dtype)`, widened to f32 (every value is exactly
    /// representable in `dtype`). For F32 this is [`randn`](Self::randn).
    pub fn randn_as(&mut self, shape: &[usize], dtype: NoiseDtype) -> Vec<f32> {
        let size: usize = shape.iter().product();
        if size >= 16 {
            self.normal_fill(size, dtype)
        } else {
            // static_cast<scalar_t>(double): double -> float -> half for the half types
            (0..size).map(|_| dtype.round(self.normal_f64() as f32)).collect()
        }
    }

    /// `torch.rand(shape, generator=g, dtype=dtype)`, widened to f32: `uniform_kernel` draws a
    /// float, rounds it to `dtype` and maps a value that rounded up to 1 back to 0 (`from`).
    pub fn rand_as(&mut self, shape: &[usize], dtype: NoiseDtype) -> Vec<f32> {
        let size: usize = shape.iter().product();
        (0..size)
            .map(|_| {
                let v = dtype.round(self.uniform_f32());
                if v == 1.0 { 0.0 } else { v }
            })
            .collect()
    }

    /// `normal_fill` (`aten/src/ATen/native/cpu/DistributionTemplates.h`) with mean 0 and std 1:
    /// Box–Muller per block of 16, the tail recomputed from 16 fresh uniforms.
    fn normal_fill(&mut self, size: usize, dtype: NoiseDtype) -> Vec<f32> {
        debug_assert!(size >= 16);
        let fill: fn(&mut [f32]) = match self.kernel {
            NormalKernel::Avx2 => normal_fill_16_avx2,
            NormalKernel::Default => normal_fill_16_default,
        };
        let mut data: Vec<f32>;
        if dtype == NoiseDtype::F32 {
            // float: all `size` uniforms straight into the output, then Box–Muller in place
            data = (0..size).map(|_| self.uniform_f32()).collect();
            for block in data.chunks_exact_mut(16) {
                fill(block);
            }
        } else {
            // bf16/fp16: a float buffer of 16, drawn, transformed and stored block by block
            data = vec![0.0; size];
            for block in data.chunks_exact_mut(16) {
                for v in block.iter_mut() {
                    *v = self.uniform_f32();
                }
                fill(block);
            }
        }
        if !size.is_multiple_of(16) {
            let tail = &mut data[size - 16..];
            for v in tail.iter_mut() {
                *v = self.uniform_f32();
            }
            fill(tail);
        }
        if dtype != NoiseDtype::F32 {
            for v in &mut data {
                *v = dtype.round(*v);
            }
        }
        data
    }

    /// `at::normal_distribution<double>(0, 1)` (`aten/src/ATen/core/DistributionsHelper.h`),
    /// including the cached second value (`maybe_get/set_next_double_normal_sample`).
    fn normal_f64(&mut self) -> f64 {
        // transformation::normal(ret, mean, std) = ret * std + mean, with mean 0 and std 1 (GCC
        // contracts it into an FMA; either way it is `ret`, with -0 becoming +0).
        let finish = |ret: f64| ret.mul_add(1.0, 0.0);
        if let Some(cached) = self.next_double_normal.take() {
            return finish(cached);
        }
        let u1 = self.uniform_f64();
        let u2 = self.uniform_f64();
        let r = (-2.0 * (-u2).ln_1p()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u1;
        self.next_double_normal = Some(r * theta.sin());
        finish(r * theta.cos())
    }
}

impl NoiseSource for TorchGenerator {
    fn randn(&mut self, shape: &[usize]) -> Vec<f32> {
        TorchGenerator::randn(self, shape)
    }
}

// -------------------------------------------------------------------------------------------------
// float -> half conversions (c10::Half(float), c10::BFloat16(float)), both round to nearest even.

/// The float16 value nearest `x` (ties to even; overflow to ±inf), as f32. Every step is exact
/// (scaling by powers of two, `round_ties_even` on an integer-valued range).
fn round_to_f16(x: f32) -> f32 {
    if !x.is_finite() {
        return x;
    }
    let a = x.abs();
    if a >= 65520.0 {
        // half-way between 65504 (max finite) and 65536 rounds to even: infinity
        return f32::INFINITY.copysign(x);
    }
    // quantum: 2^(e - 10) for normal halves (e = unbiased exponent of a, at least -14), so
    // subnormal halves (a < 2^-14) share the quantum 2^-24
    let e = ((a.to_bits() >> 23) as i32 - 127).max(-14);
    let quantum = f32::from_bits(((e - 10 + 127) as u32) << 23);
    ((a / quantum).round_ties_even() * quantum).copysign(x)
}

/// The bfloat16 value nearest `x` (ties to even), as f32: c10's `round_to_nearest_even`.
fn round_to_bf16(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    let u = x.to_bits();
    let rounded = u.wrapping_add(0x7fff + ((u >> 16) & 1));
    f32::from_bits(rounded & 0xffff_0000)
}

// -------------------------------------------------------------------------------------------------
// NormalFill16, generic: what torch runs without AVX2.

/// The primary `NormalFill16<float>` template with mean 0, std 1 (`DistributionTemplates.h`):
/// `radius = sqrtf(-2 * logf(u1))`, `theta = (float)(2.0 * pi * (double)u2)`,
/// `data = fmaf(radius * cosf(theta), std, mean)`.
fn normal_fill_16_default(data: &mut [f32]) {
    for j in 0..8 {
        let u1 = 1.0 - data[j];
        let u2 = data[j + 8];
        let radius = (-2.0 * u1.ln()).sqrt();
        let theta = (2.0 * std::f64::consts::PI * u2 as f64) as f32;
        data[j] = (radius * theta.cos()).mul_add(1.0, 0.0);
        data[j + 8] = (radius * theta.sin()).mul_add(1.0, 0.0);
    }
}

// -------------------------------------------------------------------------------------------------
// NormalFill16, AVX2: avx_mathfun.h as compiled into libtorch_cpu.so.
//
// Constants are the f32 bit patterns loaded by the binary (the float literals of avx_mathfun.h
// rounded to f32). Each `mul_add` below is a vfmadd/vfnmadd/vfmsub of the compiled code where
// the source has a separate `_mm256_mul_ps` and `_mm256_add_ps`/`_mm256_sub_ps` (GCC contracts
// them: -ffp-contract=fast); every other operation rounds on its own, as written in the source.

/// `_mm256_set1_ps(2.0f * c10::pi<double>)`: 2π rounded once to f32.
const TWO_PI: f32 = f32::from_bits(0x40c9_0fdb);
/// `_ps256_min_norm_pos`: the smallest normal f32.
const MIN_NORM_POS: f32 = f32::from_bits(0x0080_0000);
/// `_ps256_cephes_SQRTHF` (√½).
const SQRTHF: f32 = f32::from_bits(0x3f35_04f3);
/// `_ps256_cephes_log_p0..p8`.
const LOG_P: [f32; 9] = [
    f32::from_bits(0x3d90_21bb), // 7.0376836292E-2
    f32::from_bits(0xbdeb_d1b8), // -1.1514610310E-1
    f32::from_bits(0x3def_251a), // 1.1676998740E-1
    f32::from_bits(0xbdfe_5d4f), // -1.2420140846E-1
    f32::from_bits(0x3e11_e9bf), // 1.4249322787E-1
    f32::from_bits(0xbe2a_ae50), // -1.6668057665E-1
    f32::from_bits(0x3e4c_ceac), // 2.0000714765E-1
    f32::from_bits(0xbe7f_fffc), // -2.4999993993E-1
    f32::from_bits(0x3eaa_aaaa), // 3.3333331174E-1
];
/// `_ps256_cephes_log_q1` (-2.12194440e-4) and `_q2` (0.693359375).
const LOG_Q1: f32 = f32::from_bits(0xb95e_8083);
const LOG_Q2: f32 = f32::from_bits(0x3f31_8000);
/// `_ps256_cephes_FOPI` (4/π).
const FOPI: f32 = f32::from_bits(0x3fa2_f983);
/// `_ps256_minus_cephes_DP1..DP3`: -π/4 split in three.
const MINUS_DP1: f32 = f32::from_bits(0xbf49_0000); // -0.78515625
const MINUS_DP2: f32 = f32::from_bits(0xb97d_a000); // -2.4187564849853515625e-4
const MINUS_DP3: f32 = f32::from_bits(0xb322_2169); // -3.77489497744594108e-8
/// `_ps256_coscof_p0..p2`.
const COSCOF: [f32; 3] = [
    f32::from_bits(0x37cc_f5ce), // 2.443315711809948E-005
    f32::from_bits(0xbab6_061a), // -1.388731625493765E-003
    f32::from_bits(0x3d2a_aaa5), // 4.166664568298827E-002
];
/// `_ps256_sincof_p0..p2`.
const SINCOF: [f32; 3] = [
    f32::from_bits(0xb94c_a1f9), // -1.9515295891E-4
    f32::from_bits(0x3c08_839e), // 8.3321608736E-3
    f32::from_bits(0xbe2a_aaa3), // -1.6666655461E-1
];

/// `NormalFill16<float, true>::operator()` with mean 0, std 1, one lane at a time.
fn normal_fill_16_avx2(data: &mut [f32]) {
    for j in 0..8 {
        let u1 = 1.0 - data[j];
        let u2 = data[j + 8];
        let radius = (-2.0 * log256_lane(u1)).sqrt();
        let theta = TWO_PI * u2;
        let (sin, cos) = sincos256_lane(theta);
        // _mm256_fmadd_ps(n, std_, mean_)
        data[j] = (radius * cos).mul_add(1.0, 0.0);
        data[j + 8] = (radius * sin).mul_add(1.0, 0.0);
    }
}

/// One lane of `log256_ps` (`avx_mathfun.h`) for `x` in `(0, 1]`, the only inputs `normal_fill`
/// gives it (the NaN mask for `x <= 0` is therefore dropped).
fn log256_lane(x: f32) -> f32 {
    let x = x.max(MIN_NORM_POS);
    let exponent = (x.to_bits() >> 23) as i32 - 0x7f;
    // keep the mantissa, exponent of 0.5: x in [0.5, 1)
    let mut x = f32::from_bits((x.to_bits() & !0x7f80_0000) | 0.5f32.to_bits());
    let mut e = exponent as f32 + 1.0;
    let below = x < SQRTHF;
    let tmp = if below { x } else { 0.0 };
    x -= 1.0;
    e -= if below { 1.0 } else { 0.0 };
    x += tmp;
    let z = x * x;
    let mut y = LOG_P[0];
    for &p in &LOG_P[1..] {
        y = y.mul_add(x, p); // y = y * x + p
    }
    y *= x;
    y = y.mul_add(z, e * LOG_Q1); // y = y * z + e * q1
    y = (-z).mul_add(0.5, y); // y -= z * 0.5
    x += y;
    e.mul_add(LOG_Q2, x) // x + e * q2
}

/// One lane of `sincos256_ps` (`avx_mathfun.h`): `(sin θ, cos θ)` for `θ` in `[0, 2π)`.
fn sincos256_lane(theta: f32) -> (f32, f32) {
    let mut sign_bit_sin = theta.to_bits() & 0x8000_0000;
    let x = f32::from_bits(theta.to_bits() & 0x7fff_ffff);
    // j = (int(x * 4/π) + 1) & ~1 (_mm256_cvttps_epi32 truncates)
    let j = (((x * FOPI) as i32).wrapping_add(1)) & !1;
    let y = j as f32;
    let swap_sign_bit_sin = ((j & 4) as u32) << 29;
    // poly_mask: the sine polynomial gives sin θ when (j & 2) == 0
    let poly_mask = j & 2 == 0;
    // x = ((x - y*DP1) - y*DP2) - y*DP3, each step one FMA
    let mut x = y.mul_add(MINUS_DP1, x);
    x = y.mul_add(MINUS_DP2, x);
    x = y.mul_add(MINUS_DP3, x);
    let sign_bit_cos = ((!j.wrapping_sub(2) & 4) as u32) << 29;
    sign_bit_sin ^= swap_sign_bit_sin;

    let z = x * x;
    // cosine polynomial: y = ((p0 z + p1) z + p2) z z - z/2 + 1
    let mut yc = COSCOF[0].mul_add(z, COSCOF[1]);
    yc = yc.mul_add(z, COSCOF[2]);
    yc *= z;
    yc = z.mul_add(yc, -(z * 0.5));
    yc += 1.0;
    // sine polynomial: y2 = ((q0 z + q1) z + q2) z x + x
    let mut ys = SINCOF[0].mul_add(z, SINCOF[1]);
    ys = ys.mul_add(z, SINCOF[2]);
    ys *= z;
    ys = x.mul_add(ys, x);

    // the branch-free select of the source, kept literal (it only ever adds or subtracts +0.0)
    let ysin2 = if poly_mask { ys } else { 0.0 };
    let ysin1 = if poly_mask { 0.0 } else { yc };
    let ys_rest = ys - ysin2;
    let yc_rest = yc - ysin1;
    let sin = ysin1 + ysin2;
    let cos = yc_rest + ys_rest;
    (f32::from_bits(sin.to_bits() ^ sign_bit_sin), f32::from_bits(cos.to_bits() ^ sign_bit_cos))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference MT19937 output (mt19937ar.c with init_genrand(5489)): 3499211612 first,
    /// and the 10000th output of std::mt19937 default-seeded is 4123659995 (C++ [rand.predef]).
    #[test]
    fn mt19937_matches_the_reference_engine() {
        let mut mt = Mt19937::new(5489);
        assert_eq!(mt.next_u32(), 3_499_211_612);
        for _ in 1..9999 {
            mt.next_u32();
        }
        assert_eq!(mt.next_u32(), 4_123_659_995);
    }

    #[test]
    fn only_the_low_32_bits_of_the_seed_matter() {
        let a = TorchGenerator::new(5).randn(&[40]);
        let b = TorchGenerator::new((1u64 << 32) + 5).randn(&[40]);
        assert_eq!(a, b);
    }

    #[test]
    fn empty_shapes_draw_nothing() {
        let mut g = TorchGenerator::new(3);
        assert!(g.randn(&[0, 4]).is_empty());
        assert!(g.rand(&[2, 0]).is_empty());
        assert_eq!(g.randn(&[20]), TorchGenerator::new(3).randn(&[20]));
    }

    #[test]
    fn manual_seed_restarts_and_drops_the_cached_normal() {
        let mut g = TorchGenerator::new(9);
        let first = g.randn(&[1]);
        g.manual_seed(9);
        assert_eq!(g.randn(&[1]), first);
        assert_eq!(g.initial_seed(), 9);
    }

    #[test]
    fn half_rounding_is_round_to_nearest_even() {
        // f16: 1 + 2^-11 is half-way between 1 and 1 + 2^-10: ties to even (1)
        assert_eq!(round_to_f16(1.0 + 2f32.powi(-11)), 1.0);
        assert_eq!(round_to_f16(1.0 + 3.0 * 2f32.powi(-11)), 1.0 + 2.0 * 2f32.powi(-10));
        assert_eq!(round_to_f16(-2.0f32.powi(-25)), -0.0); // half of the smallest subnormal
        assert_eq!(round_to_f16(3.0 * 2f32.powi(-26)), 2f32.powi(-24));
        assert_eq!(round_to_f16(65519.0), 65504.0);
        assert_eq!(round_to_f16(65520.0), f32::INFINITY);
        assert_eq!(round_to_f16(0.999_7), 0.999_511_7); // 1 - 2^-11
        assert_eq!(round_to_f16(0.999_9), 1.0);
        // bf16: 1 + 2^-8 ties to 1, 1 + 3 * 2^-8 to 1 + 2^-6
        assert_eq!(round_to_bf16(1.0 + 2f32.powi(-8)), 1.0);
        assert_eq!(round_to_bf16(1.0 + 3.0 * 2f32.powi(-8)), 1.0 + 2f32.powi(-6));
        assert_eq!(round_to_bf16(-1.5), -1.5);
    }

    /// The lane emulation of log256_ps/sincos256_ps is accurate (it is Cephes) — a sanity check
    /// that no constant or step is wrong; bit-exactness against torch is in tests/torch_rng.rs.
    #[test]
    fn avx_mathfun_lanes_are_accurate() {
        for i in 1..=4096u32 {
            let u = i as f32 / 4096.0;
            let got = log256_lane(u) as f64;
            assert!((got - (u as f64).ln()).abs() <= 2e-7 * (u as f64).ln().abs().max(1.0), "log({u})");
            let theta = TWO_PI * (i - 1) as f32 / 4096.0;
            let (s, c) = sincos256_lane(theta);
            assert!((s as f64 - (theta as f64).sin()).abs() < 2e-7, "sin({theta})");
            assert!((c as f64 - (theta as f64).cos()).abs() < 2e-7, "cos({theta})");
        }
    }
}
