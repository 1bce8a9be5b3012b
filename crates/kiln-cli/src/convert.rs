//! `kiln convert FILE OUT_DIR`: a single-file checkpoint written as a diffusers folder
//! (`kiln_pipeline::single_file::convert`), with the same `--config` and `--prediction-type` as
//! `kiln generate`; and the architecture both commands give a single file.

use std::path::{Path, PathBuf};

use clap::Args;
use kiln::burn::tensor::DType;
use kiln::pipeline::single_file::convert::{convert as write_folder, ConvertOptions};
use kiln::pipeline::single_file::{Architecture, SingleFile, SingleFileError};
use kiln::pipeline::{resolve_config, HubConfig};

use crate::{interrupt, CliError};

#[derive(Args)]
pub struct ConvertArgs {
    /// The single-file checkpoint (.safetensors, .ckpt) in the original LDM layout.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// The diffusers folder to write; it must not exist (kiln never replaces a folder).
    #[arg(value_name = "OUT_DIR")]
    out: PathBuf,
    /// The diffusers folder or Hub id whose configs and tokenizers describe the checkpoint's
    /// architecture (diffusers' `config=`); default: the detected family's published configs.
    #[arg(long, value_name = "DIR|HUB_ID")]
    config: Option<String>,
    /// What the UNet predicts, overriding the family's default (SD 2.x files are read as 768
    /// v-prediction; SD 2.x base 512 is `epsilon`).
    #[arg(long, value_name = "TYPE", value_parser = ["epsilon", "v_prediction"])]
    prediction_type: Option<String>,
    /// Cast the weights to this dtype (default: keep the file's).
    #[arg(long, value_name = "DTYPE", value_parser = ["f16", "f32"])]
    dtype: Option<String>,
    /// Name the weights `*.fp16.safetensors` (diffusers' `variant="fp16"`), in f16.
    #[arg(long)]
    fp16_variant: bool,
}

/// The architecture of a single file: `--config`'s folder (or Hub id), else the family's
/// published configs; with `--prediction-type` applied.
pub fn architecture(file: &SingleFile, config: Option<&str>, prediction_type: Option<&str>) -> Result<Architecture, CliError> {
    let arch = match config {
        Some(spec) => {
            let dir = resolve_config(spec, &HubConfig::from_env()).map_err(|e| format!("--config: {e}"))?;
            Architecture::from_folder(&dir).map_err(|e| format!("--config: {e}"))?
        }
        None => Architecture::for_file(file).map_err(|e| e.to_string())?,
    };
    Ok(match prediction_type {
        Some(p) => arch.with_prediction_type(p),
        None => arch,
    })
}

pub fn convert(a: ConvertArgs) -> Result<(), CliError> {
    if a.fp16_variant && a.dtype.as_deref() == Some("f32") {
        return Err("--fp16-variant writes f16 weights; it cannot be combined with --dtype f32".into());
    }
    let file = SingleFile::open(&a.file).map_err(|e| e.to_string())?;
    eprintln!("{}: {} checkpoint ({})", a.file.display(), file.detection.family.name(), file.detection.evidence);
    let arch = architecture(&file, a.config.as_deref(), a.prediction_type.as_deref())?;
    let options = ConvertOptions {
        dtype: a.dtype.as_deref().map(|d| if d == "f16" { DType::F16 } else { DType::F32 }),
        fp16_variant: a.fp16_variant,
    };
    // Ctrl-C / SIGTERM: stop before the next tensor, remove the temporary folder, exit 130
    let written = interrupt::graceful(|| write_folder(&file, &arch, &a.out, options, &|| !interrupt::requested()));
    let written = match written {
        Err(SingleFileError::Cancelled) => return Err(CliError::Interrupted),
        other => other.map_err(|e| e.to_string())?,
    };
    for path in &written {
        let rel = path.strip_prefix(&a.out).unwrap_or(path);
        let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        println!("{}  {bytes} bytes", Path::new(&a.out).join(rel).display());
    }
    eprintln!("wrote {} ({} files, {}, from {})", a.out.display(), written.len(), file.detection.family.name(), arch.origin);
    Ok(())
}
