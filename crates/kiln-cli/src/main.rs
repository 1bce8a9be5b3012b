//! `kiln`: the command-line front end. Parses flags, calls the library, prints results. Exit
//! status: 0 done; 2 an error, printed as one `error:` line naming the value and what is allowed;
//! 130 interrupted (Ctrl-C or SIGTERM; nothing half-written is left); a closed stdout ends the
//! process quietly (SIGPIPE, as Unix tools do).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod convert;
mod device;
mod generate;
mod info;
mod interrupt;
mod schedule;
mod serve;

/// How a command failed: a message (exit status 2) or an interrupt (130).
#[derive(Debug)]
pub enum CliError {
    Message(String),
    Interrupted,
}

impl From<String> for CliError {
    fn from(message: String) -> Self {
        CliError::Message(message)
    }
}

impl From<&str> for CliError {
    fn from(message: &str) -> Self {
        CliError::Message(message.to_string())
    }
}

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
    Schedule(schedule::ScheduleArgs),
    /// Describe a PNG (its generation parameters), a model folder or Hub id in the cache
    /// (pipeline, components, dtypes, parameter counts), a component folder, a safetensors file
    /// or a PyTorch checkpoint (a single-file checkpoint's family and components).
    Info(info::InfoArgs),
    /// Write a single-file checkpoint (.safetensors/.ckpt, LDM layout) as a diffusers folder
    /// that diffusers' from_pretrained and kiln load.
    Convert(convert::ConvertArgs),
    /// Time the text encoder, one UNet CFG step, the VAE decode and an end-to-end run on a
    /// device, for a config preset (random weights) or a model folder.
    Bench(bench::BenchArgs),
    /// Serve models over HTTP: OpenAI's Images API, AUTOMATIC1111's API, asynchronous jobs,
    /// health, readiness and Prometheus metrics, behind a bounded queue.
    Serve(serve::ServeArgs),
}

fn main() -> ExitCode {
    interrupt::install();
    let cli = Cli::parse();
    // kiln serve logs through tracing (kiln_server::init_logging)
    if !matches!(cli.command, Command::Serve(_)) {
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    }
    let result = match cli.command {
        Command::Generate(args) => generate::generate(args),
        Command::Schedule(args) => schedule::schedule(args),
        Command::Info(args) => info::info(args),
        Command::Convert(args) => convert::convert(args),
        Command::Bench(args) => bench::bench(args),
        Command::Serve(args) => serve::serve(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Message(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
        Err(CliError::Interrupted) => {
            eprintln!("interrupted");
            ExitCode::from(interrupt::INTERRUPTED)
        }
    }
}

