//! `kiln bench` on the tiny SD1 model: the JSON report has every component's timings (positive,
//! first use reported apart), the UNet's parameter count (1 427 012, what the safetensors file
//! holds) and the peak memory; presets build the published configs (SD 1.5's UNet has 859 520 964
//! parameters, as diffusers counts them); bad input exits 2.

use std::path::PathBuf;

mod common;
use common::kiln;
use serde_json::Value;

fn model() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets/fixtures/models/sd1").to_str().unwrap().to_string()
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
    assert!(r["peak_memory_bytes"].as_u64().unwrap() > 1 << 20);
    assert!(r["device"].as_str().unwrap().starts_with("cpu"));
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
