//! `kiln schedule`: the timesteps and sigmas a sampler uses for a model's scheduler config.

use std::path::PathBuf;

use clap::Args;
use kiln::scheduler::{SamplerChoice, SamplerName, SchedulerConfig, SchedulerError, StepOptions};
use serde_json::{json, Value};

#[derive(Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["model", "config"])))]
pub struct ScheduleArgs {
    /// A diffusers model folder (reads scheduler/scheduler_config.json).
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// A scheduler_config.json file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Sampler: ddim, ddpm, pndm, lms, euler, euler-a, heun, dpm2, dpm2-a, dpm++2m, dpm++2m-sde,
    /// dpm++2s, unipc, deis, lcm, tcd; on a flow-matching config (SD 3, FLUX) euler and heun are
    /// the flow-matching samplers. Default: the config's own class.
    #[arg(long, value_name = "NAME")]
    scheduler: Option<String>,
    /// Number of inference steps.
    #[arg(long, value_name = "N")]
    steps: usize,
    /// Use Karras sigmas (use_karras_sigmas = true).
    #[arg(long)]
    karras: bool,
    /// The dynamic shift μ of a flow-matching config with use_dynamic_shifting (FLUX.1-dev): what
    /// the pipeline computes from the image size (`calculate_shift`; 1.15 at 1024×1024).
    #[arg(long, value_name = "MU", allow_negative_numbers = true)]
    mu: Option<f64>,
    /// Custom sigmas for the flow-matching Euler sampler, one per step, comma-separated
    /// (`set_timesteps(sigmas=…)`; FLUX's pipeline passes linspace(1, 1/steps, steps)).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    sigmas: Option<Vec<f64>>,
    /// Print JSON: {"timesteps", "sigmas" (where the sampler has them), "init_noise_sigma", "order"}.
    #[arg(long)]
    json: bool,
}

/// A sampler choice's error, naming the flag where one flag is to blame.
pub(crate) fn choice_error(e: &SchedulerError) -> String {
    match e {
        SchedulerError::NoKarras { .. } => format!("--karras: {e}"),
        SchedulerError::Invalid(_) => format!("{e}; pass --scheduler NAME to choose a sampler"),
        _ => e.to_string(),
    }
}

/// A timestep as JSON: an integer where diffusers has an integer, else a float.
fn number(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 1e15 { json!(x as i64) } else { json!(x) }
}

pub fn schedule(args: ScheduleArgs) -> Result<(), crate::CliError> {
    let config = match (&args.model, &args.config) {
        (Some(dir), _) => SchedulerConfig::from_model_dir(dir),
        (None, Some(file)) => SchedulerConfig::from_file(file),
        (None, None) => unreachable!("clap requires --model or --config"),
    }
    .map_err(|e| e.to_string())?;
    let sampler = match &args.scheduler {
        Some(name) => Some(name.parse::<SamplerName>().map_err(|e| e.to_string())?),
        None => None,
    };
    let choice = SamplerChoice { sampler, karras: args.karras };
    let (class, config) = choice.resolve(&config).map_err(|e| choice_error(&e))?;
    if (args.mu.is_some() || args.sigmas.is_some()) && !class.is_flow_match() {
        return Err(format!("--mu and --sigmas are for the flow-matching samplers; {} takes neither", class.class_name()).into());
    }
    let options = StepOptions { mu: args.mu, sigmas: args.sigmas.clone(), ..StepOptions::default() };
    let scheduler = class.build(&config, args.steps, &options).map_err(|e| e.to_string())?;
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

