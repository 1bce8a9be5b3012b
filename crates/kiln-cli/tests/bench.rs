//! `kiln bench` on the tiny SD1 model: the JSON report has every component's timings (positive,
//! first use reported apart), the UNet's parameter count (1 427 012, what the safetensors file
//! holds) and the peak memory; presets build the published configs (SD 1.5's UNet has 859 520 964
//! parameters, as diffusers counts them); bad input exits 2.

use std::path::PathBuf;

mod common;
use common::kiln;
use serde_json::Value;

fn model() -> String {
    PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into())).join("../../assets/fixtures/models/sd1").to_str().unwrap().to_string()
}

#[test]
fn bench_reports_every_component() {
    let out = kiln(&["bench", "--model", &model(), "--width", "64", "--height", "48", "--steps", "3", "--iters", "2", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["unet_parameters"], 1_427_012);
    assert_eq!((r["width"].as_u64(), r["height"].as_u64(), r["steps"].as_u64()), (Some(64), Some(48), Some(3)));
    for c in ["text_encode", "unet_step", "vae_decode", "end_to_end"] {
        let t = &r[c];
        assert_eq!(t["iters"].as_u64(), Some(if c == "end_to_end" { 2 } else { 2 }), "{c}");
        for k in ["mean_s", "min_s", "max_s", "first_use_s"] {
            assert!(t[k].as_f64().unwrap() > 0.0, "{c}.{k}");
        }
        assert!(t["min_s"].as_f64() <= t["mean_s"].as_f64() && t["mean_s"].as_f64() <= t["max_s"].as_f64(), "{c}");
    }
    // 3 denoising steps cost more than one UNet step
    assert!(r["end_to_end"]["mean_s"].as_f64().unwrap() > r["unet_step"]["mean_s"].as_f64().unwrap());
    // loading is timed too (it took more than nothing)
    assert!(r["load_seconds"].as_f64().unwrap() > 0.0, "{r}");
    assert!(r["peak_memory_bytes"].as_u64().unwrap() > 1 << 20);
    let steady = r["steady_peak_memory_bytes"].as_u64().unwrap();
    assert!(steady > 1 << 20 && steady <= r["peak_memory_bytes"].as_u64().unwrap());
    assert!(r["device"].as_str().unwrap().starts_with("cpu"));
    assert!(r["adapter"].is_null(), "no GPU adapter on the CPU");
    // the GPU route policies are reported; flex has no route to measure
    for op in ["attention", "conv2d", "group_norm"] {
        assert_eq!(r["gpu_policies"][op].as_str(), Some("auto"), "{op}");
    }
    assert_eq!(r["routes"].as_array().map(Vec::len), Some(0));
    // the text report says the same
    let out = kiln(&["bench", "--model", &model(), "--width", "64", "--height", "64", "--steps", "1", "--iters", "1"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in ["UNet CFG step", "VAE decode", "text encode", "end to end", "peak memory", "first use", "GPU routes: attention auto, conv2d auto, group_norm auto"] {
        assert!(text.contains(needle), "{needle}: {text}");
    }
}

#[test]
fn bench_bad_input_exits_2() {
    for (args, needles) in [
        (vec!["bench", "--preset", "sd99"], vec!["sd99", "sd15, sd21, sdxl"]),
        (vec!["bench", "--preset", "sd15", "--width", "60"], vec!["width", "60", "multiple of 8"]),
        (vec!["bench", "--preset", "sd15", "--steps", "0"], vec!["steps", "0"]),
        (vec!["bench", "--preset", "sd15", "--dtype", "bf8"], vec!["--dtype", "bf8"]),
        (vec!["bench", "--preset", "sd15", "--device", "tpu"], vec!["--device", "tpu"]),
        (vec!["bench", "--preset", "sd15", "--gpu-attention", "fast"], vec!["--gpu-attention", "fast", "auto, burn or padded"]),
        (vec!["bench", "--preset", "sd15", "--gpu-conv", "winograd"], vec!["--gpu-conv", "winograd", "auto, burn or im2col"]),
        (vec!["bench", "--preset", "sd15", "--gpu-norm", "welford"], vec!["--gpu-norm", "welford", "auto, burn or fused"]),
        (vec!["bench", "--model", "/nonexistent/model"], vec!["/nonexistent/model"]),
        (vec!["bench"], vec!["--preset", "--model"]),
    ] {
        let out = kiln(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        for n in needles {
            assert!(stderr.contains(n), "{args:?}: {n:?} not in {stderr}");
        }
    }
}

/// The SD 1.5 preset builds the published config; its parameter count is diffusers'.
#[test]
fn the_sd15_preset_is_sd15() {
    let out = kiln(&["bench", "--preset", "sd15", "--width", "64", "--height", "64", "--steps", "1", "--iters", "1", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["unet_parameters"], 859_520_964);
}

/// The shapes in a safetensors file's header (the file's first 8 bytes give the header's length).
fn tensor_shapes(path: &std::path::Path) -> Vec<(String, Vec<usize>)> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, v)| (k.clone(), v["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect()))
        .collect()
}

/// `--profile`: one UNet step timed per op. Every convolution of the UNet (a 4-D weight in its
/// safetensors file) and every attention (a `to_q`) is counted once, GroupNorms are counted, and
/// the ops plus the rest add up to the profiled step.
#[test]
fn bench_profile_counts_every_op_of_the_unet() {
    let out = kiln(&["bench", "--model", &model(), "--width", "64", "--height", "64", "--steps", "1", "--iters", "1", "--profile", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let p = &r["unet_profile"];
    let weights = tensor_shapes(&PathBuf::from(model()).join("unet/diffusion_pytorch_model.safetensors"));
    let convs = weights.iter().filter(|(_, s)| s.len() == 4).count();
    let attentions = weights.iter().filter(|(k, _)| k.ends_with("to_q.weight")).count();
    let op = |name: &str| p["ops"].as_array().unwrap().iter().find(|o| o["op"] == name).unwrap_or_else(|| panic!("{name}: {p}")).clone();
    assert_eq!(op("conv2d")["calls"].as_u64(), Some(convs as u64), "{p}");
    assert_eq!(op("attention")["calls"].as_u64(), Some(attentions as u64), "{p}");
    assert!(op("group_norm")["calls"].as_u64().unwrap() > 0, "{p}");
    let step = p["step_ms"].as_f64().unwrap();
    let sum: f64 = p["ops"].as_array().unwrap().iter().map(|o| o["ms"].as_f64().unwrap()).sum::<f64>() + p["other_ms"].as_f64().unwrap();
    assert!((sum - step).abs() < 1e-6 * step.max(1.0), "{sum} vs {step}");
    for o in p["ops"].as_array().unwrap() {
        assert!(o["ms"].as_f64().unwrap() > 0.0 && o["share"].as_f64().unwrap() < 1.0, "{o}");
    }
    // without --profile there is none
    let out = kiln(&["bench", "--model", &model(), "--width", "64", "--height", "64", "--steps", "1", "--iters", "1", "--json"]);
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(r["unet_profile"].is_null());
}

/// SD 3 and FLUX.1 folders run through the flow harness: the denoiser's kind and parameters (what
/// the fixture's safetensors file holds, SD 3's position table included), every timing; a flow
/// preset larger than the machine's memory says how much it needs before allocating anything.
#[test]
fn bench_runs_sd3_and_flux_models_and_sizes_flow_presets() {
    let models = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into())).join("../../assets/fixtures/models");
    for (name, denoiser, params) in [("sd3", "MMDiT (SD 3)", 139_136), ("flux-dev", "FLUX transformer", 135_296)] {
        let dir = models.join(name);
        let out = kiln(&["bench", "--model", dir.to_str().unwrap(), "--width", "32", "--height", "24", "--steps", "2", "--iters", "1", "--json"]);
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let r: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!((r["denoiser"].as_str(), r["unet_parameters"].as_u64()), (Some(denoiser), Some(params)), "{name}");
        for c in ["text_encode", "unet_step", "vae_decode", "end_to_end"] {
            assert!(r[c]["mean_s"].as_f64().unwrap() > 0.0, "{name}: {c}");
        }
    }
    // SD 3.5 Large in f32: 52 GiB of weights; only a machine with less memory refuses
    let available_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| t.lines().find(|l| l.starts_with("MemAvailable:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()))
        .map(|kib| kib / (1 << 20) as f64);
    if available_gib.is_some_and(|g| g < 50.0) {
        let out = kiln(&["bench", "--preset", "sd35l"]);
        assert_eq!(out.status.code(), Some(2));
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(e.contains("preset sd35l needs about 52.4 GiB") && e.contains("available") && e.contains("--dtype f16"), "{e}");
    }
}
