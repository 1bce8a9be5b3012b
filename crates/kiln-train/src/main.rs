//! `kiln-train`: trains kiln's demo model (see [`kiln_train::train`]) and writes it as a diffusers
//! folder.
//!
//!     cargo run -p kiln-train -- --out /tmp/kiln-shapes

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use kiln_train::train::{train, TrainOptions};

#[derive(Parser)]
#[command(name = "kiln-train", version, about = "Train kiln's demo text-to-image model (VAE, then CLIP + UNet) on synthetic shapes")]
struct Args {
    /// The diffusers folder to write; checkpoints go to OUT/checkpoints.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    #[arg(long, value_name = "N", default_value_t = 0)]
    seed: u64,
    #[arg(long, value_name = "N", default_value_t = 4000)]
    vae_steps: usize,
    #[arg(long, value_name = "N", default_value_t = 8)]
    vae_batch: usize,
    #[arg(long, value_name = "F", default_value_t = 1e-3)]
    vae_lr: f64,
    /// Steps that train the VAE's decoder alone after the VAE stage (sharper edges; the latents
    /// stay the same); 0 skips them.
    #[arg(long, value_name = "N", default_value_t = 2000)]
    vae_decoder_steps: usize,
    /// Steps of the UNet stage (CLIP + UNet, batches of --unet-batch); also the length of its
    /// learning-rate decay. The defaults are the shipped model's recipe.
    #[arg(long, value_name = "N", default_value_t = 10000)]
    unet_steps: usize,
    /// Stop the UNet stage after step N (a checkpoint, and the folder written from it), keeping
    /// the learning-rate schedule of --unet-steps: a long run in parts; --resume continues it.
    #[arg(long, value_name = "N")]
    stop_after: Option<usize>,
    #[arg(long, value_name = "N", default_value_t = 32)]
    unet_batch: usize,
    #[arg(long, value_name = "F", default_value_t = 1e-3)]
    unet_lr: f64,
    /// Training scenes rendered and encoded once.
    #[arg(long, value_name = "N", default_value_t = 8192)]
    dataset_size: usize,
    #[arg(long, value_name = "N", default_value_t = 250)]
    checkpoint_every: usize,
    /// Continue from OUT/checkpoints.
    #[arg(long)]
    resume: bool,
    /// Replace what an earlier run wrote in OUT (without --resume or --overwrite, kiln-train
    /// refuses a folder that already holds a model or checkpoints).
    #[arg(long)]
    overwrite: bool,
    /// Where the CLIP tokenizer files and SD 1.5's tokenizer configs are.
    #[arg(long, value_name = "DIR", default_value = "assets/tokenizers/clip")]
    tokenizer_files: PathBuf,
    #[arg(long, value_name = "DIR", default_value = "crates/kiln-pipeline/configs/sd15/tokenizer")]
    tokenizer_configs: PathBuf,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let a = Args::parse();
    for (what, v) in [("--vae-batch", a.vae_batch), ("--unet-batch", a.unet_batch), ("--dataset-size", a.dataset_size), ("--checkpoint-every", a.checkpoint_every)] {
        if v == 0 {
            eprintln!("error: {what} must be at least 1, got 0");
            return ExitCode::from(2);
        }
    }
    if let Some(n) = a.stop_after {
        if n == 0 || n > a.unet_steps {
            eprintln!("error: --stop-after must be between 1 and --unet-steps ({}), got {n}", a.unet_steps);
            return ExitCode::from(2);
        }
    }
    let taken = ["model_index.json", "checkpoints"].iter().any(|f| a.out.join(f).exists());
    if taken && !a.resume && !a.overwrite {
        eprintln!(
            "error: {} already holds a model or checkpoints; pass --resume to continue that run, --overwrite to start over in it, or choose another --out",
            a.out.display()
        );
        return ExitCode::from(2);
    }
    let o = TrainOptions {
        out: a.out,
        tokenizer_files: a.tokenizer_files,
        tokenizer_configs: a.tokenizer_configs,
        seed: a.seed,
        vae_steps: a.vae_steps,
        vae_batch: a.vae_batch,
        vae_lr: a.vae_lr,
        vae_decoder_steps: a.vae_decoder_steps,
        unet_steps: a.unet_steps,
        unet_stop_after: a.stop_after,
        unet_batch: a.unet_batch,
        unet_lr: a.unet_lr,
        dataset_size: a.dataset_size,
        checkpoint_every: a.checkpoint_every,
        resume: a.resume,
    };
    let stop_after = o.unet_stop_after;
    let bar = ProgressBar::new(0);
    bar.set_style(ProgressStyle::with_template("{msg:>6} {bar:30} {pos}/{len}  loss {prefix}  ETA {eta}").unwrap());
    let mut stage = String::new();
    let mut smooth = None::<f64>;
    let result = train(&o, &burn::tensor::Device::flex(), &mut |s, step, total, loss, secs| {
        if s != stage {
            stage = s.to_string();
            smooth = None;
            bar.set_message(stage.clone());
            bar.set_length(total as u64);
        }
        let l = smooth.map_or(loss, |m| 0.98 * m + 0.02 * loss);
        smooth = Some(l);
        bar.set_prefix(format!("{l:.4} ({secs:.2} s/step)"));
        bar.set_position(step as u64);
        if step == 1 || step % 100 == 0 || step == total || (s == "unet" && Some(step) == stop_after) {
            let line = format!("{s} step {step}/{total}: loss {l:.4}, {secs:.2} s/step");
            // without a terminal the bar is hidden: log the line instead
            if bar.is_hidden() { eprintln!("{line}") } else { bar.println(line) }
        }
    });
    bar.finish();
    match result {
        Ok(()) => {
            eprintln!("wrote {}", o.out.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
