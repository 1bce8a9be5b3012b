//! Parity with diffusers 0.42.1: every fixture case written by `scripts/fixtures/schedulers.py`
//! (timesteps, sigmas, init_noise_sigma, order and a whole denoising loop on a dummy model, every
//! intermediate sample) must be reproduced on the flex backend.

use std::collections::VecDeque;
use std::path::PathBuf;

use burn::tensor::{Device, Tensor, TensorData};
use kiln_scheduler::{flow_img2img_begin_index, img2img_begin_index, NoiseSource, SchedulerClass, SchedulerConfig, StepOptions};
use serde_json::Value;

/// Relative tolerance on samples. diffusers runs the same f32 formulas in torch; kiln's order of
/// scalar operations differs slightly (coefficients folded in f64), which costs ~1e-7 relative per
/// step and accumulates to a few 1e-6 over 50 steps — the bound is 1e-5.
const SAMPLE_RTOL: f64 = 1e-5;
/// sigmas and init_noise_sigma are float32 in diffusers; kiln reproduces the float32 rounding, so
/// only last-bit differences from libm's log/exp versus numpy's remain.
const SIGMA_RTOL: f64 = 1e-5;
/// Fractional timesteps (from `_sigma_to_t`) are float32 values near 1000: 1e-4 absolute is a few ulps.
const FRACTIONAL_T_ATOL: f64 = 1e-4;

fn fixture_path(class: &str) -> PathBuf {
    PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into())).join("../../assets/fixtures/scheduler").join(format!("{class}.json"))
}

struct FixtureNoise(VecDeque<Vec<f32>>);

impl NoiseSource for FixtureNoise {
    fn randn(&mut self, shape: &[usize]) -> Vec<f32> {
        let v = self.0.pop_front().expect("kiln drew more noise tensors than diffusers did");
        assert_eq!(v.len(), shape.iter().product::<usize>(), "noise tensor size differs from diffusers'");
        v
    }
}

/// A fixture number: JSON numbers, or the strings "NaN", "inf", "-inf" that the generator writes
/// for the non-finite values diffusers produces in a few degenerate schedules.
fn num(x: &Value) -> f64 {
    x.as_f64().or_else(|| x.as_str().and_then(|s| s.parse().ok())).expect("a number")
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| num(x) as f32).collect()
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(num).collect()
}

fn tensor(values: Vec<f32>, shape: [usize; 4], device: &Device) -> Tensor<4> {
    Tensor::from_data(TensorData::new(values, shape), device)
}

fn compare_samples(what: &str, got: Tensor<4>, want: &[f32]) -> Result<(), String> {
    let got: Vec<f32> = got.into_data().try_into_vec::<f32>().unwrap();
    let scale = want.iter().filter(|x| x.is_finite()).fold(1.0f64, |m, &x| m.max((x as f64).abs()));
    let mut worst = 0.0f64;
    for (a, b) in got.iter().zip(want) {
        if !b.is_finite() {
            // diffusers gave NaN or ±inf here: kiln must give the same
            if !(a.is_nan() && b.is_nan() || a == b) {
                return Err(format!("{what}: diffusers has {b}, kiln {a}"));
            }
            continue;
        }
        let d = (*a as f64 - *b as f64).abs();
        if !(d <= worst) {
            worst = d;
        }
    }
    if got.len() != want.len() || !(worst <= SAMPLE_RTOL * scale) {
        return Err(format!("{what}: max abs diff {worst:e} > {SAMPLE_RTOL:e} x scale {scale:e}"));
    }
    Ok(())
}

fn run_case(case: &Value, device: &Device) -> Result<(), String> {
    let class = SchedulerClass::from_class_name(case["class"].as_str().unwrap()).map_err(|e| e.to_string())?;
    let config = SchedulerConfig::from_map(case["config"].as_object().unwrap().clone()).map_err(|e| e.to_string())?;
    let steps = case["steps"].as_u64().unwrap() as usize;
    let mut options = StepOptions::default();
    let o = &case["options"];
    for (key, slot) in [
        ("eta", &mut options.eta),
        ("s_churn", &mut options.s_churn),
        ("s_tmin", &mut options.s_tmin),
        ("s_tmax", &mut options.s_tmax),
        ("s_noise", &mut options.s_noise),
    ] {
        if let Some(v) = o.get(key).and_then(Value::as_f64) {
            *slot = v;
        }
    }
    // the flow samplers' set_timesteps keywords, as the SD3/FLUX pipelines pass them
    if let Some(kw) = case.get("set_timesteps").filter(|v| v.is_object()) {
        options.mu = kw.get("mu").map(num);
        options.sigmas = kw.get("sigmas").map(f64s);
    }
    let mut scheduler = class.build(&config, steps, &options).map_err(|e| format!("build: {e}"))?;

    // the schedule
    let want_t = f64s(&case["timesteps"]);
    let got_t = scheduler.timesteps();
    if got_t.len() != want_t.len() {
        return Err(format!("timesteps: {} values, diffusers has {}: {got_t:?} vs {want_t:?}", got_t.len(), want_t.len()));
    }
    for (i, (g, w)) in got_t.iter().zip(&want_t).enumerate() {
        let ok = if w.is_nan() {
            g.is_nan()
        } else if w.fract() == 0.0 {
            g == w
        } else {
            (g - w).abs() <= FRACTIONAL_T_ATOL
        };
        if !ok {
            return Err(format!("timesteps[{i}] = {g}, diffusers {w} (all: {got_t:?} vs {want_t:?})"));
        }
    }
    if let Some(want_s) = case["sigmas"].as_array() {
        let want_s: Vec<f64> = want_s.iter().map(num).collect();
        let got_s = scheduler.sigmas().ok_or("diffusers has sigmas, kiln has none")?;
        if got_s.len() != want_s.len() {
            return Err(format!("sigmas: {} values, diffusers has {}", got_s.len(), want_s.len()));
        }
        for (i, (g, w)) in got_s.iter().zip(&want_s).enumerate() {
            if !(g == w || g.is_nan() && w.is_nan() || (g - w).abs() <= SIGMA_RTOL * w.abs().max(1e-3)) {
                return Err(format!("sigmas[{i}] = {g}, diffusers {w}"));
            }
        }
    }
    if case["sigmas"].is_null() && scheduler.sigmas().is_some() {
        return Err("kiln exposes sigmas where diffusers' class has none".into());
    }
    let want_init = num(&case["init_noise_sigma"]);
    if (scheduler.init_noise_sigma() - want_init).abs() > SIGMA_RTOL * want_init.abs().max(1.0) {
        return Err(format!("init_noise_sigma = {}, diffusers {want_init}", scheduler.init_noise_sigma()));
    }
    let order = case["order"].as_u64().unwrap() as usize;
    if scheduler.order() != order {
        return Err(format!("order = {}, diffusers {order}", scheduler.order()));
    }

    // the denoising loop
    let shape: Vec<usize> = case["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    let shape = [shape[0], shape[1], shape[2], shape[3]];
    let x0 = tensor(f32s(&case["sample0"]), shape, device);
    let begin = case["begin"].as_u64().unwrap() as usize;
    let mut sample = match case["strength"].as_f64() {
        None => x0.mul_scalar(scheduler.init_noise_sigma()),
        Some(strength) => {
            let begin_index = if class.is_flow_match() { flow_img2img_begin_index } else { img2img_begin_index };
            let b = begin_index(steps, strength, scheduler.order()).map_err(|e| e.to_string())?;
            if b != begin {
                return Err(format!("img2img begin index {b}, diffusers {begin}"));
            }
            let noise = tensor(f32s(&case["add_noise"]["noise"]), shape, device);
            let noisy = scheduler.add_noise(x0, noise, begin);
            compare_samples("add_noise", noisy.clone(), &f32s(&case["add_noise"]["noisy"]))?;
            noisy
        }
    };
    let mut noise = FixtureNoise(case["noises"].as_array().unwrap().iter().map(f32s).collect());
    let want_samples = case["samples"].as_array().unwrap();
    let timesteps = scheduler.timesteps().to_vec();
    if want_samples.len() != timesteps.len() - begin {
        return Err(format!("diffusers ran {} steps, kiln's loop has {}", want_samples.len(), timesteps.len() - begin));
    }
    for (k, i) in (begin..timesteps.len()).enumerate() {
        let t = timesteps[i];
        let x_in = scheduler.scale_model_input(sample.clone(), i);
        // diffusers' test dummy model: sample * t / (t + 1), in float32
        let model_output = x_in.mul_scalar(t as f32).div_scalar((t + 1.0) as f32);
        sample = scheduler.step(model_output, i, sample, &mut noise);
        compare_samples(&format!("sample after step {i} (t = {t})"), sample.clone(), &f32s(&want_samples[k]))?;
    }
    if !noise.0.is_empty() {
        return Err(format!("diffusers drew {} more noise tensors than kiln", noise.0.len()));
    }
    Ok(())
}

/// Runs every case of one class and returns how many passed; panics listing the failures.
fn run_class(class: &str) -> usize {
    let text = std::fs::read_to_string(fixture_path(class)).expect("fixture file");
    let fixture: Value = serde_json::from_str(&text).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    let device = Device::flex();
    let mut failures = Vec::new();
    for case in cases {
        if let Err(e) = run_case(case, &device) {
            failures.push(format!("{}: {e}", case["name"].as_str().unwrap()));
        }
    }
    println!("{class}: {}/{} fixture cases match diffusers {}", cases.len() - failures.len(), cases.len(), fixture["diffusers"]);
    assert!(failures.is_empty(), "{} of {} cases differ from diffusers:\n{}", failures.len(), cases.len(), failures.join("\n"));
    assert!(cases.len() >= 20, "{class}: only {} fixture cases", cases.len());
    cases.len()
}

macro_rules! parity {
    ($($test:ident => $class:literal),* $(,)?) => {
        $(#[test] fn $test() { run_class($class); })*

        #[test]
        fn every_class_has_fixtures() {
            let classes = [$($class),*];
            for c in SchedulerClass::ALL {
                assert!(classes.contains(&c.class_name()), "no parity test for {}", c.class_name());
            }
        }
    };
}

parity! {
    ddim => "DDIMScheduler",
    dpmsolver_multistep => "DPMSolverMultistepScheduler",
    dpmsolver_singlestep => "DPMSolverSinglestepScheduler",
    euler => "EulerDiscreteScheduler",
    ddpm => "DDPMScheduler",
    pndm => "PNDMScheduler",
    lcm => "LCMScheduler",
    tcd => "TCDScheduler",
    lms => "LMSDiscreteScheduler",
    euler_ancestral => "EulerAncestralDiscreteScheduler",
    heun => "HeunDiscreteScheduler",
    kdpm2 => "KDPM2DiscreteScheduler",
    kdpm2_ancestral => "KDPM2AncestralDiscreteScheduler",
    unipc => "UniPCMultistepScheduler",
    deis => "DEISMultistepScheduler",
    flow_match_euler => "FlowMatchEulerDiscreteScheduler",
    flow_match_heun => "FlowMatchHeunDiscreteScheduler",
}
