//! `kiln`: the command-line front end. Parses flags, calls the library, prints results; errors
//! are printed as one message and exit with status 2.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

mod bench;
mod device;
mod generate;
use kiln::scheduler::{SamplerName, SchedulerClass, SchedulerConfig, StepOptions};
use serde_json::{json, Value};

#[derive(Parser)]
#[command(name = "kiln", version, about = "Stable Diffusion-family image generation in Rust (diffusers-compatible)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate images: text-to-image (SD 1.x / 2.x, SDXL), img2img (--init-image) and
    /// inpainting (--init-image --mask; inpainting models or ordinary SD 1.x / 2.x models).
    Generate(generate::GenerateArgs),
    /// Print the timesteps and sigmas a sampler uses for a model's scheduler config.
    Schedule(ScheduleArgs),
    /// Describe a PNG (its generation parameters), a model folder or Hub id in the cache
    /// (pipeline, components, dtypes, parameter counts), a component folder or a safetensors file.
    Info(InfoArgs),
    /// Time the text encoder, one UNet CFG step, the VAE decode and an end-to-end run on a
    /// device, for a config preset (random weights) or a model folder.
    Bench(bench::BenchArgs),
}

#[derive(Args)]
struct InfoArgs {
    /// A PNG, a diffusers model folder, a Hub id (org/name[@revision], from the Hub cache only),
    /// a component folder or a .safetensors file.
    #[arg(value_name = "PATH")]
    path: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["model", "config"])))]
struct ScheduleArgs {
    /// A diffusers model folder (reads scheduler/scheduler_config.json).
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// A scheduler_config.json file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Sampler: ddim, ddpm, pndm, lms, euler, euler-a, heun, dpm2, dpm2-a, dpm++2m, dpm++2m-sde,
    /// dpm++2s, unipc, deis, lcm, tcd. Default: the config's own class.
    #[arg(long, value_name = "NAME")]
    scheduler: Option<String>,
    /// Number of inference steps.
    #[arg(long, value_name = "N")]
    steps: usize,
    /// Use Karras sigmas (use_karras_sigmas = true).
    #[arg(long)]
    karras: bool,
    /// Print JSON: {"timesteps", "sigmas" (where the sampler has them), "init_noise_sigma", "order"}.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(args) => generate::generate(args),
        Command::Schedule(args) => schedule(args),
        Command::Info(args) => info(args),
        Command::Bench(args) => bench::bench(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}

/// A timestep as JSON: an integer where diffusers has an integer, else a float.
fn number(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 1e15 { json!(x as i64) } else { json!(x) }
}

fn schedule(args: ScheduleArgs) -> Result<(), String> {
    let mut config = match (&args.model, &args.config) {
        (Some(dir), _) => SchedulerConfig::from_model_dir(dir),
        (None, Some(file)) => SchedulerConfig::from_file(file),
        (None, None) => unreachable!("clap requires --model or --config"),
    }
    .map_err(|e| e.to_string())?;
    let (class, sampler) = match &args.scheduler {
        Some(name) => {
            let sampler: SamplerName = name.parse().map_err(|e: kiln::scheduler::SchedulerError| e.to_string())?;
            (sampler.class(), Some(sampler))
        }
        None => {
            let name = config.class_name.clone().ok_or(
                "the scheduler config has no _class_name; pass --scheduler NAME to choose a sampler",
            )?;
            (SchedulerClass::from_class_name(&name).map_err(|e| e.to_string())?, None)
        }
    };
    if args.karras {
        if !class.supports_karras() {
            return Err(format!("--karras is not supported by {} (it has no Karras sigmas)", class.class_name()));
        }
        config = config.with("use_karras_sigmas", true);
    }
    let config = match sampler {
        Some(s) => s.apply(&config),
        None => config,
    };
    let scheduler = class.build(&config, args.steps, &StepOptions::default()).map_err(|e| e.to_string())?;
    let mut out = serde_json::Map::new();
    out.insert("timesteps".into(), Value::Array(scheduler.timesteps().iter().map(|&t| number(t)).collect()));
    if let Some(sigmas) = scheduler.sigmas() {
        out.insert("sigmas".into(), json!(sigmas));
    }
    out.insert("init_noise_sigma".into(), json!(scheduler.init_noise_sigma()));
    out.insert("order".into(), json!(scheduler.order()));
    if args.json {
        println!("{}", Value::Object(out));
    } else {
        println!("{} — {} steps, order {}, init_noise_sigma {}", class.class_name(), args.steps, scheduler.order(), scheduler.init_noise_sigma());
        println!("{:>5}  {:>12}  {:>12}", "index", "timestep", "sigma");
        for (i, t) in scheduler.timesteps().iter().enumerate() {
            let sigma = scheduler.sigmas().and_then(|s| s.get(i)).map(|s| format!("{s:.6}")).unwrap_or_default();
            println!("{i:>5}  {t:>12.4}  {sigma:>12}");
        }
    }
    Ok(())
}

fn info(args: InfoArgs) -> Result<(), String> {
    use kiln_pipeline::info::{inspect, Info};
    let info = inspect(&args.path, &kiln_pipeline::HubConfig::from_env()).map_err(|e| e.to_string())?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&info).map_err(|e| e.to_string())?);
    } else {
        let text = info.to_string();
        if text.ends_with('\n') {
            print!("{text}");
        } else {
            println!("{text}");
        }
    }
    match &info {
        // A model kiln cannot run: the summary above, then the reason, and a failure status.
        Info::Model(m) => m.problem.clone().map_or(Ok(()), Err),
        _ => Ok(()),
    }
}
