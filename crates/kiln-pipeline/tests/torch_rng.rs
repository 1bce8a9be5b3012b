//! `TorchGenerator` against what torch 2.15 (CPU) draws, bit for bit.
//!
//! The fixture `assets/fixtures/rng/torch_rng.json` is written by `scripts/fixtures/torch_rng.py`:
//! float32 bit patterns of `torch.randn`/`torch.rand` from `torch.Generator("cpu").manual_seed(s)`,
//! for many seeds and shapes, for sequences of draws from one generator, and for the generic
//! (non-AVX2) kernel. Tensors over 128 values are stored as head, tail, strided samples and an
//! FNV-1a 64 hash of all their bytes, so every element is still compared exactly.

use std::path::PathBuf;
use std::sync::OnceLock;

use kiln_pipeline::{NoiseDtype, NormalKernel, TorchGenerator};
use kiln_scheduler::NoiseSource;
use serde_json::Value;

fn fixture() -> &'static Value {
    static FIXTURE: OnceLock<Value> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let path = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into())).join("../../assets/fixtures/rng/torch_rng.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_str(&text).expect("torch_rng.json parses")
    })
}

fn seed(case: &Value) -> u64 {
    case["seed"].as_str().expect("seed string").parse().expect("u64 seed")
}

fn shape(case: &Value) -> Vec<usize> {
    case["shape"].as_array().expect("shape").iter().map(|d| d.as_u64().unwrap() as usize).collect()
}

fn bits(v: &Value) -> Vec<u32> {
    v.as_array().expect("bit list").iter().map(|b| b.as_u64().unwrap() as u32).collect()
}

fn fnv1a64(values: &[f32]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for v in values {
        for b in v.to_bits().to_le_bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// Every element of `got` equals torch's bit for bit (`f32::to_bits`), through whichever record
/// the fixture holds. Returns the number of elements checked.
fn assert_bit_exact(got: &[f32], expected: &Value, what: &str) -> usize {
    let numel = expected["numel"].as_u64().unwrap() as usize;
    assert_eq!(got.len(), numel, "{what}: numel");
    let got_bits: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
    let report = |i: usize, want: u32| {
        panic!(
            "{what}: element {i}: got {} ({:#010x}), torch {} ({want:#010x})",
            got[i],
            got_bits[i],
            f32::from_bits(want)
        )
    };
    if let Some(all) = expected.get("bits") {
        for (i, want) in bits(all).into_iter().enumerate() {
            if got_bits[i] != want {
                report(i, want);
            }
        }
        return numel;
    }
    let head = bits(&expected["head"]);
    let tail = bits(&expected["tail"]);
    let stride = expected["stride"].as_u64().unwrap() as usize;
    for (i, &want) in head.iter().enumerate() {
        if got_bits[i] != want {
            report(i, want);
        }
    }
    for (k, &want) in tail.iter().enumerate() {
        let i = numel - tail.len() + k;
        if got_bits[i] != want {
            report(i, want);
        }
    }
    for (k, want) in bits(&expected["strided"]).into_iter().enumerate() {
        if got_bits[k * stride] != want {
            report(k * stride, want);
        }
    }
    let want_hash = u64::from_str_radix(expected["fnv1a64"].as_str().unwrap(), 16).unwrap();
    assert_eq!(fnv1a64(got), want_hash, "{what}: FNV-1a 64 of all {numel} values (samples agree)");
    numel
}

fn dtype(case: &Value) -> NoiseDtype {
    match case["dtype"].as_str().expect("dtype") {
        "float32" => NoiseDtype::F32,
        "float16" => NoiseDtype::F16,
        "bfloat16" => NoiseDtype::BF16,
        other => panic!("unknown dtype {other}"),
    }
}

/// One recorded draw (`op`, `shape`, `dtype` of the record) from `g`.
fn draw(g: &mut TorchGenerator, case: &Value) -> Vec<f32> {
    let (shape, dtype) = (shape(case), dtype(case));
    match case["op"].as_str().unwrap() {
        "randn" if dtype == NoiseDtype::F32 => g.randn(&shape),
        "rand" if dtype == NoiseDtype::F32 => g.rand(&shape),
        "randn" => g.randn_as(&shape, dtype),
        "rand" => g.rand_as(&shape, dtype),
        other => panic!("unknown op {other}"),
    }
}

#[test]
fn fixture_is_from_the_avx2_kernel() {
    let capability = fixture()["cpu_capability"].as_str().unwrap();
    assert!(capability == "AVX2" || capability == "AVX512", "{capability}");
}

/// `torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))` for 8 seeds (incl.
/// 2^32 - 1, 2^32 + 5, 2^63 - 1, 2^64 - 1) × 15 shapes (0-d, 1, 2, 7, 15, 16, 17, 31, 32, 100, 256,
/// 189, 2×4×64×64, 1×4×96×128, 1×4×128×128): bit-exact.
#[test]
fn randn_matches_torch_bit_for_bit() {
    let mut checked = 0;
    for case in fixture()["randn"].as_array().unwrap() {
        let (seed, shape) = (seed(case), shape(case));
        let got = draw(&mut TorchGenerator::new(seed), case);
        checked += assert_bit_exact(&got, case, &format!("randn seed {seed} shape {shape:?}"));
    }
    assert!(checked > 1_000_000, "{checked}");
}

/// `torch.rand(shape, generator=...)`: bit-exact.
#[test]
fn rand_matches_torch_bit_for_bit() {
    for case in fixture()["rand"].as_array().unwrap() {
        let (seed, shape) = (seed(case), shape(case));
        let got = draw(&mut TorchGenerator::new(seed), case);
        assert_bit_exact(&got, case, &format!("rand seed {seed} shape {shape:?}"));
    }
}

/// Successive draws from one generator continue torch's stream: small draws hand their cached
/// second Box–Muller value on (also across a normal_fill in between), rand and randn interleave,
/// and diffusers-like sequences (latents then per-step ancestral noise; img2img) line up.
#[test]
fn sequences_of_draws_continue_the_stream() {
    for sequence in fixture()["sequences"].as_array().unwrap() {
        let seed = seed(sequence);
        let mut g = TorchGenerator::new(seed);
        for (k, d) in sequence["draws"].as_array().unwrap().iter().enumerate() {
            let what = format!("seed {seed} draw {k}: {}{:?} {}", d["op"], shape(d), d["dtype"]);
            assert_bit_exact(&draw(&mut g, d), d, &what);
        }
    }
}

/// `torch.randn/rand(..., dtype=torch.float16 / torch.bfloat16)`: computed in float, drawn block by
/// block, rounded to nearest even (the serial path double -> float -> half): bit-exact.
#[test]
fn half_precision_draws_match_torch_bit_for_bit() {
    let mut cases = 0;
    for case in fixture()["half"].as_array().unwrap() {
        let (seed, shape) = (seed(case), shape(case));
        let got = draw(&mut TorchGenerator::new(seed), case);
        let dtype = dtype(case);
        assert!(got.iter().all(|&v| dtype.round(v) == v), "values representable in {dtype:?}");
        assert_bit_exact(&got, case, &format!("{} seed {seed} shape {shape:?} {dtype:?}", case["op"]));
        cases += 1;
    }
    assert_eq!(cases, 66);
}

/// The same stream through the scheduler's `NoiseSource` trait object.
#[test]
fn noise_source_is_randn() {
    let sequence = &fixture()["sequences"][4]; // latents, then 4 ancestral steps
    let mut g = TorchGenerator::new(seed(sequence));
    let source: &mut dyn NoiseSource = &mut g;
    for d in sequence["draws"].as_array().unwrap() {
        assert_eq!(d["op"], "randn");
        assert_bit_exact(&source.randn(&shape(d)), d, "NoiseSource::randn");
    }
}

/// torch's generic `NormalFill16` (`ATEN_CPU_CAPABILITY=default`): libm's logf/sincosf/fmaf. Bit-exact
/// where Rust's `f32::ln/sin/cos` call the same libm as torch (glibc, where the fixture was made).
#[test]
#[cfg_attr(not(all(target_os = "linux", target_env = "gnu")), ignore = "depends on glibc's logf/sinf/cosf")]
fn default_kernel_matches_torch_without_avx2() {
    for case in fixture()["scalar_kernel"].as_array().unwrap() {
        let (seed, shape) = (seed(case), shape(case));
        let got = TorchGenerator::with_kernel(seed, NormalKernel::Default).randn(&shape);
        assert_bit_exact(&got, case, &format!("default kernel seed {seed} shape {shape:?}"));
    }
}

/// The two kernels really differ (in the last bits of some values: the Cephes polynomials of
/// avx_mathfun.h against glibc's logf/sinf/cosf), so the choice matters; the differences are far
/// below anything a diffusion model could notice.
#[test]
fn kernels_differ_in_the_last_bits() {
    let avx2 = TorchGenerator::new(0).randn(&[2, 4, 64, 64]);
    let default = TorchGenerator::with_kernel(0, NormalKernel::Default).randn(&[2, 4, 64, 64]);
    let differ = avx2.iter().zip(&default).filter(|(a, b)| a != b).count();
    let max_abs = avx2.iter().zip(&default).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    eprintln!("AVX2 vs default kernel: {differ} of {} values differ, max |diff| {max_abs:e}", avx2.len());
    assert!(differ > 0, "kernels agree everywhere");
    // values reach ~4.5, where an f32 ulp is 4.8e-7: a few ulps at most (1.8e-6 measured)
    assert!(max_abs <= 1e-5, "max |diff| {max_abs:e}");
}
