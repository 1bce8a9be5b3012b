//! `kiln bench`: flags → [`BenchOptions`] → a text or JSON report.

use std::path::PathBuf;

use clap::Args;
use kiln_bench::{preset_names, run_bench, BenchModel, BenchOptions, BenchReport, Timing};

use crate::device::DeviceArgs;

#[derive(Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["preset", "model", "unet_check"])))]
pub struct BenchArgs {
    /// A published config with random weights: sd15, sd21, sdxl, sd35m, sd35l, flux-schnell,
    /// flux-dev (crates/kiln-pipeline/configs/). A preset larger than the memory available says
    /// how much it needs.
    #[arg(long, value_name = "NAME")]
    preset: Option<String>,
    /// A diffusers model folder (SD family, SD 3, FLUX) or a single-file checkpoint of a published
    /// family (its own weights).
    #[arg(long, value_name = "DIR|FILE")]
    model: Option<PathBuf>,
    #[command(flatten)]
    device: DeviceArgs,
    #[arg(long, value_name = "W", default_value_t = 512)]
    width: usize,
    #[arg(long, value_name = "H", default_value_t = 512)]
    height: usize,
    /// Denoising steps of the end-to-end run.
    #[arg(long, value_name = "N", default_value_t = 20)]
    steps: usize,
    /// Images per run; a UNet and SD 3's transformer run on twice as many (classifier-free
    /// guidance), FLUX's on as many (its guidance is embedded).
    #[arg(long, value_name = "N", default_value_t = 1)]
    batch: usize,
    /// Timed repetitions of each component after the first call.
    #[arg(long, value_name = "N", default_value_t = 3)]
    iters: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Also time one UNet CFG step per op (convolutions, linear layers, GroupNorms, attention; the device is
    /// synced around each, so that step is slower than the plain one).
    #[arg(long)]
    profile: bool,
    /// Instead of timing: run DIR/unet on the inputs scripts/gpu/unet_check.py wrote and save
    /// DIR/kiln_out.safetensors for it to compare with PyTorch.
    #[arg(long, value_name = "DIR")]
    unet_check: Option<PathBuf>,
}

fn line(name: &str, t: &Timing) -> String {
    format!(
        "{name:<14} {:>10.2} ms  (min {:.2}, max {:.2}, {} runs; first use {:.2} ms)",
        t.mean_s * 1e3,
        t.min_s * 1e3,
        t.max_s * 1e3,
        t.iters,
        t.first_use_s * 1e3
    )
}

fn print_text(r: &BenchReport) {
    println!("model: {}", r.model);
    let adapter = r.adapter.as_deref().map(|a| format!(" on {a}")).unwrap_or_default();
    println!("device: {}{adapter}   {} {} ({} parameters), VAE {}", r.device, r.denoiser, r.dtype, r.unet_parameters, r.vae_dtype);
    let denoiser_batch = if r.denoiser.starts_with("FLUX") { r.batch } else { 2 * r.batch };
    println!("size: {}x{}, batch {} ({} batch {denoiser_batch}), {} steps", r.width, r.height, r.batch, r.denoiser, r.steps);
    println!("load               {:.2} s  (building the model and reading its weights)", r.load_seconds);
    println!("{}", line("text encode", &r.text_encode));
    let step = if r.denoiser == "UNet" { "UNet CFG step".to_string() } else { format!("{} step", r.denoiser.split(' ').next().unwrap_or("denoiser")) };
    println!("{}", line(&step, &r.unet_step));
    println!("{}", line("VAE decode", &r.vae_decode));
    println!("{}", line("end to end", &r.end_to_end));
    let policies: Vec<String> = r.gpu_policies.iter().map(|(op, p)| format!("{op} {p}")).collect();
    println!("GPU routes: {}", policies.join(", "));
    for c in &r.routes {
        let times: Vec<String> = c
            .times_ms
            .iter()
            .map(|(route, ms)| match c.mismatched.get(route) {
                Some(err) => format!("{route} {ms:.3} ms (disagrees with burn: relative error {err:.1e})"),
                None => format!("{route} {ms:.3} ms"),
            })
            .chain(c.mismatched.keys().filter(|r| !c.times_ms.contains_key(*r)).map(|r| format!("{r} failed")))
            .collect();
        let stored = if c.stored { " (stored)" } else { "" };
        println!("  {} {} {}: {} -> {}{stored}", c.op, c.dtype, c.shape, times.join(", "), c.route);
    }
    if let Some(p) = &r.unet_profile {
        println!("UNet CFG step by op ({:.2} ms with a device sync around each op):", p.step_ms);
        for op in &p.ops {
            println!("  {:<12} {:>5} calls {:>10.2} ms  {:>5.1} %", op.op, op.calls, op.ms, 100.0 * op.share);
        }
        println!("  {:<12} {:>5}       {:>10.2} ms  {:>5.1} %", "other", "", p.other_ms, 100.0 * p.other_ms / p.step_ms);
    }
    match r.peak_memory_bytes {
        Some(b) => {
            let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
            let steady = r.steady_peak_memory_bytes.map(|s| format!(", {:.2} GiB over the timed calls", gib(s))).unwrap_or_default();
            println!("peak memory: {:.2} GiB{steady} ({})", gib(b), r.peak_memory_source)
        }
        None => println!("peak memory: not reported by this device"),
    }
}

pub fn bench(a: BenchArgs) -> Result<(), crate::CliError> {
    let (device, dtype, vae_dtype) = a.device.resolve()?;
    if let Some(dir) = &a.unet_check {
        let path = kiln_bench::unet_check(dir, &device, dtype).map_err(|e| e.to_string())?;
        eprintln!("wrote {}", path.display());
        return Ok(());
    }
    let model = match (a.preset, a.model) {
        (Some(p), _) => {
            if !preset_names().contains(&p.as_str()) {
                return Err(format!("--preset must be one of {}, got {p:?}", preset_names().join(", ")).into());
            }
            BenchModel::Preset(p)
        }
        (None, Some(dir)) => BenchModel::Folder(dir),
        (None, None) => return Err("--preset or --model is required".into()),
    };
    let options = BenchOptions {
        model,
        dtype,
        vae_dtype,
        width: a.width,
        height: a.height,
        steps: a.steps,
        batch: a.batch,
        iters: a.iters,
        seed: 0,
        profile: a.profile,
    };
    options.check().map_err(|e| e.to_string())?;
    let device_name = format!("{} ({device:?})", a.device.device);
    let report = run_bench(&options, &device, &device_name).map_err(|e| e.to_string())?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?);
    } else {
        print_text(&report);
    }
    Ok(())
}
