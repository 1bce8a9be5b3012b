//! `kiln`: the command-line front end. Parses flags, calls the library, prints results; errors
//! are printed as one message and exit with status 2.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod device;
mod generate;
mod info;
mod schedule;

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
    /// (pipeline, components, dtypes, parameter counts), a component folder or a safetensors file.
    Info(info::InfoArgs),
    /// Time the text encoder, one UNet CFG step, the VAE decode and an end-to-end run on a
    /// device, for a config preset (random weights) or a model folder.
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(args) => generate::generate(args),
        Command::Schedule(args) => schedule::schedule(args),
        Command::Info(args) => info::info(args),
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

