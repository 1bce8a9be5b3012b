//! `kiln schedule --json` against diffusers on configs the scheduler parity fixtures never use
//! (`scripts/fixtures/schedule_cli.py`), plus its bad-input behaviour (exit code 2, a clear message).

use std::path::PathBuf;

mod common;
use common::{assert_usage_error, kiln};
use serde_json::Value;

fn assets() -> PathBuf {
    PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into())).join("../../assets/fixtures/schedule_cli")
}

fn close(a: f64, b: f64, rtol: f64) -> bool {
    (a - b).abs() <= rtol * b.abs().max(1e-3)
}

#[test]
fn schedule_json_matches_diffusers_on_unseen_configs() {
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(assets().join("expected.json")).unwrap()).unwrap();
    let runs = expected["runs"].as_array().unwrap();
    let mut failures = Vec::new();
    for run in runs {
        let model = assets().join(run["model"].as_str().unwrap());
        let steps = run["steps"].as_u64().unwrap().to_string();
        let mut args = vec!["schedule", "--model", model.to_str().unwrap(), "--steps", &steps, "--json"];
        if let Some(s) = run["scheduler"].as_str() {
            args.extend(["--scheduler", s]);
        }
        if run["karras"].as_bool().unwrap() {
            args.push("--karras");
        }
        let mu = run.get("mu").map(|m| m.to_string());
        if let Some(mu) = &mu {
            args.extend(["--mu", mu]);
        }
        let sigmas = run.get("sigmas").map(|s| {
            s.as_array().unwrap().iter().map(|v| v.to_string()).collect::<Vec<_>>().join(",")
        });
        if let Some(sigmas) = &sigmas {
            args.extend(["--sigmas", sigmas]);
        }
        let out = kiln(&args);
        let label = format!("{args:?}");
        if !out.status.success() {
            failures.push(format!("{label}: exit {:?}: {}", out.status, String::from_utf8_lossy(&out.stderr)));
            continue;
        }
        let got: Value = serde_json::from_slice(&out.stdout).unwrap();
        let want = &run["expected"];
        let gt: Vec<f64> = got["timesteps"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let wt: Vec<f64> = want["timesteps"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        // integer timesteps exactly; fractional ones (from sigma_to_t) to float32 precision
        let t_ok = gt.len() == wt.len()
            && gt.iter().zip(&wt).all(|(g, w)| if w.fract() == 0.0 { g == w } else { (g - w).abs() <= 1e-4 });
        if !t_ok {
            failures.push(format!("{label}: timesteps {gt:?} vs diffusers {wt:?}"));
        }
        match (got.get("sigmas"), want.get("sigmas")) {
            (Some(g), Some(w)) => {
                let g: Vec<f64> = g.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
                let w: Vec<f64> = w.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
                // float32 values in diffusers
                if g.len() != w.len() || !g.iter().zip(&w).all(|(a, b)| close(*a, *b, 1e-5)) {
                    failures.push(format!("{label}: sigmas {g:?} vs diffusers {w:?}"));
                }
            }
            (None, None) => {}
            (g, w) => failures.push(format!("{label}: sigmas present in kiln: {}, in diffusers: {}", g.is_some(), w.is_some())),
        }
        let (gi, wi) = (got["init_noise_sigma"].as_f64().unwrap(), want["init_noise_sigma"].as_f64().unwrap());
        if !close(gi, wi, 1e-5) {
            failures.push(format!("{label}: init_noise_sigma {gi} vs diffusers {wi}"));
        }
        if got["order"] != want["order"] {
            failures.push(format!("{label}: order {} vs diffusers {}", got["order"], want["order"]));
        }
    }
    assert!(failures.is_empty(), "{} of {} runs differ:\n{}", failures.len(), runs.len(), failures.join("\n"));
}

#[test]
fn bad_input_exits_2_with_a_clear_message() {
    let sd2 = assets().join("sd2-base");
    let sd2 = sd2.to_str().unwrap();
    assert_usage_error(&["schedule", "--model", sd2, "--steps", "0", "--json"], &["num_inference_steps", "0"]);
    assert_usage_error(&["schedule", "--model", sd2, "--steps", "1001", "--json"], &["1001", "1000"]);
    assert_usage_error(&["schedule", "--model", sd2, "--scheduler", "eulr", "--steps", "10"], &["eulr", "euler-a"]);
    assert_usage_error(&["schedule", "--model", "/nonexistent/model", "--steps", "10"], &["/nonexistent/model"]);
    let flux = assets().join("flux-dev");
    let flux = flux.to_str().unwrap();
    assert_usage_error(&["schedule", "--model", flux, "--steps", "10"], &["use_dynamic_shifting", "--mu"]);
    assert_usage_error(&["schedule", "--model", flux, "--steps", "10", "--scheduler", "ddim"], &["ddim", "euler or heun"]);
    assert_usage_error(&["schedule", "--model", sd2, "--steps", "10", "--mu", "1.0"], &["--mu", "PNDMScheduler"]);
    assert_usage_error(&["schedule", "--model", sd2, "--scheduler", "ddim", "--karras", "--steps", "10"], &["--karras", "DDIMScheduler"]);
    assert_usage_error(&["schedule", "--steps", "10"], &["--model"]);

    let dir = std::env::temp_dir().join(format!("kiln-schedule-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad_json = dir.join("broken.json");
    std::fs::write(&bad_json, "{\"_class_name\": \"DDIMScheduler\", ").unwrap();
    assert_usage_error(&["schedule", "--config", bad_json.to_str().unwrap(), "--steps", "10"], &["broken.json", "malformed"]);
    let bad_value = dir.join("cubic.json");
    std::fs::write(&bad_value, r#"{"_class_name": "DDIMScheduler", "beta_schedule": "cubic"}"#).unwrap();
    assert_usage_error(&["schedule", "--config", bad_value.to_str().unwrap(), "--steps", "10"], &["beta_schedule", "cubic", "scaled_linear"]);
    let unknown_class = dir.join("unknown.json");
    std::fs::write(&unknown_class, r#"{"_class_name": "FancyScheduler"}"#).unwrap();
    assert_usage_error(&["schedule", "--config", unknown_class.to_str().unwrap(), "--steps", "10"], &["FancyScheduler", "EulerDiscreteScheduler"]);
    let no_class = dir.join("noclass.json");
    std::fs::write(&no_class, r#"{"beta_schedule": "linear"}"#).unwrap();
    assert_usage_error(&["schedule", "--config", no_class.to_str().unwrap(), "--steps", "10"], &["_class_name", "--scheduler"]);
    std::fs::remove_dir_all(&dir).ok();
}
