//! `kiln generate`: flags → [`GenerateOptions`] and a [`Task`] (txt2img, img2img with
//! `--init-image`, inpainting with `--mask`) → the pipeline → PNG files with their parameters.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use kiln::burn::tensor::{DType, Device};
use kiln::pipeline::image_processor::{decode_image, image_size, pil_grayscale};
use kiln::pipeline::infotext::{default_strength, generation_params, RunRecord};
use kiln::pipeline::png::{check_output, save_png};
use kiln::pipeline::embeddings::EmbeddingFile;
use kiln::pipeline::lora::LoraFile;
use kiln::pipeline::single_file::SingleFile;
use kiln::pipeline::{resolve, resolve_vae, FlowOptions, GenerateOptions, HubConfig, Pipeline, PipelineError, PipelineKind, PromptSyntax, ResolveOptions, SkipLayerGuidance, StableDiffusion, Task};
use kiln::scheduler::{SamplerChoice, SamplerName, SchedulerConfig, StepOptions};

use crate::device::DeviceArgs;
use crate::{interrupt, CliError};

#[derive(Args)]
pub struct GenerateArgs {
    /// A diffusers model folder (SD 1.x/2.x, SDXL, inpainting, SD 3/3.5, FLUX.1), a Hub id
    /// `org/name[@revision]`, or a single-file checkpoint (`.safetensors`, `.ckpt`: SD 1.x, 2.x,
    /// SDXL base, SD 1.x/2.x inpainting in the original LDM layout; the family is detected from
    /// its keys).
    #[arg(long, value_name = "DIR|HUB_ID|FILE")]
    model: String,
    /// Single-file checkpoints: the diffusers folder or Hub id whose configs and tokenizers
    /// describe its architecture (diffusers' `config=`); default: the detected family's published
    /// configs, compiled in.
    #[arg(long, value_name = "DIR|HUB_ID")]
    config: Option<String>,
    /// Single-file checkpoints: what the UNet predicts, overriding the family's default (SD 2.x
    /// files are read as 768 v-prediction; SD 2.x base 512 is `epsilon`).
    #[arg(long, value_name = "TYPE", value_parser = ["epsilon", "v_prediction"])]
    prediction_type: Option<String>,
    #[arg(long, value_name = "TEXT")]
    prompt: String,
    #[arg(long, value_name = "TEXT")]
    negative_prompt: Option<String>,
    /// SDXL and SD 3: the second text encoder's prompt; FLUX: T5's (default: --prompt).
    #[arg(long, value_name = "TEXT")]
    prompt_2: Option<String>,
    /// SDXL and SD 3: the second text encoder's negative prompt (default: --negative-prompt).
    #[arg(long, value_name = "TEXT")]
    negative_prompt_2: Option<String>,
    /// SD 3: T5's prompt (default: --prompt).
    #[arg(long, value_name = "TEXT")]
    prompt_3: Option<String>,
    /// SD 3: T5's negative prompt (default: --negative-prompt).
    #[arg(long, value_name = "TEXT")]
    negative_prompt_3: Option<String>,
    /// Denoising steps; default 30 (SD family), 28 (SD 3, FLUX, as diffusers).
    #[arg(long, value_name = "N")]
    steps: Option<usize>,
    /// Classifier-free guidance scale, 1 or less turns it off; default 7.5 (SD family), 7.0
    /// (SD 3). FLUX.1-dev embeds it (guidance distillation, one pass), default 3.5; schnell
    /// ignores it.
    #[arg(long, value_name = "F")]
    guidance_scale: Option<f64>,
    /// SD 3 and FLUX: T5's sequence length (max_sequence_length), at most 512; default 256 (SD 3),
    /// 512 (FLUX).
    #[arg(long, value_name = "N")]
    max_sequence_length: Option<usize>,
    /// FLUX: true classifier-free guidance with --negative-prompt when above 1 (a second pass).
    #[arg(long, value_name = "F", default_value_t = 1.0)]
    true_cfg_scale: f64,
    /// SD 3.5: skip-layer guidance, the transformer blocks to skip (comma-separated, e.g. 7,8,9).
    #[arg(long, value_name = "LAYERS", value_delimiter = ',')]
    skip_layer_guidance: Option<Vec<usize>>,
    /// Skip-layer guidance's scale.
    #[arg(long, value_name = "F", default_value_t = 2.8)]
    slg_scale: f64,
    /// Skip-layer guidance starts after this fraction of the steps.
    #[arg(long, value_name = "F", default_value_t = 0.01)]
    slg_start: f64,
    /// Skip-layer guidance stops at this fraction of the steps.
    #[arg(long, value_name = "F", default_value_t = 0.2)]
    slg_stop: f64,
    /// guidance_rescale (0 = off).
    #[arg(long, value_name = "F", default_value_t = 0.0)]
    guidance_rescale: f64,
    /// Seed of torch's CPU generator (the same seed gives diffusers' picture).
    #[arg(long, value_name = "N", default_value_t = 0)]
    seed: u64,
    /// Output width; default: the init image's, else the model's (UNet sample_size × 8).
    #[arg(long, value_name = "W")]
    width: Option<usize>,
    /// Output height; default: the init image's, else the model's.
    #[arg(long, value_name = "H")]
    height: Option<usize>,
    #[arg(long, value_name = "N", default_value_t = 1)]
    num_images: usize,
    /// Sampler (see `kiln schedule --help`); default: the model's scheduler_config.json.
    #[arg(long, value_name = "NAME")]
    scheduler: Option<String>,
    /// Karras sigmas.
    #[arg(long)]
    karras: bool,
    /// Use the hidden state this many layers before the last.
    #[arg(long, value_name = "N")]
    clip_skip: Option<usize>,
    /// The pipeline's eta (DDIM η, TCD γ).
    #[arg(long, value_name = "F", default_value_t = 0.0)]
    eta: f64,
    /// Output PNG; with several images `-N` is inserted before the extension.
    #[arg(long, value_name = "PATH", default_value = "out.png")]
    output: PathBuf,
    /// Replace an existing output file.
    #[arg(long)]
    overwrite: bool,
    #[command(flatten)]
    device: DeviceArgs,
    /// Use the .fp16.safetensors weights where the model has them.
    #[arg(long)]
    fp16_variant: bool,
    /// img2img / inpainting: the starting image (PNG or JPEG, of the output size; kiln does not
    /// resize).
    #[arg(long, value_name = "PATH")]
    init_image: Option<PathBuf>,
    /// How much of the schedule runs on the init image, in [0, 1]; default 0.8 (img2img; 0.3 for
    /// SDXL), 1.0 (inpainting); 0.6 for both on SD 3 and FLUX.
    #[arg(long, value_name = "F")]
    strength: Option<f64>,
    /// Inpainting mask (needs --init-image, same size): white repaints, black keeps; colour masks
    /// are converted to grey as PIL does, then cut at 50 %.
    #[arg(long, value_name = "PATH")]
    mask: Option<PathBuf>,
    /// SDXL micro-conditioning: the original size, WIDTHxHEIGHT (default: the output size).
    #[arg(long, value_name = "WxH")]
    original_size: Option<String>,
    /// SDXL micro-conditioning: the target size, WIDTHxHEIGHT (default: the output size).
    #[arg(long, value_name = "WxH")]
    target_size: Option<String>,
    /// SDXL micro-conditioning: crop coordinates TOP,LEFT (default 0,0).
    #[arg(long, value_name = "TOP,LEFT")]
    crops_coords_top_left: Option<String>,
    /// A LoRA to merge into the denoiser and text encoders, with its scale (default 1.0);
    /// repeatable. kohya/A1111 (`lora_unet_…`, LoCon) and diffusers/PEFT (`lora_A`/`lora_B`) files
    /// for SD 1.x/2.x and SDXL; diffusers/PEFT files (`transformer.…`) for SD 3 and FLUX. Applied
    /// whole or refused naming the keys that match nothing.
    #[arg(long, value_name = "PATH[:SCALE]")]
    lora: Vec<String>,
    /// How prompts are read: `diffusers` (the text as it is, cut at 77 tokens) or `a1111`
    /// (AUTOMATIC1111's: `(text)`, `[text]`, `(text:1.3)`, `\(` escapes, `BREAK`, prompts of any
    /// length in 75-token chunks, `<lora:NAME:W>` from --lora-dir).
    #[arg(long, value_name = "SYNTAX", value_parser = ["diffusers", "a1111"], default_value = "diffusers")]
    prompt_syntax: String,
    /// Where `<lora:NAME:W>` in an `a1111` prompt finds NAME (.safetensors, .pt, .ckpt).
    #[arg(long, value_name = "DIR")]
    lora_dir: Option<PathBuf>,
    /// A textual-inversion embedding under TOKEN (default: the token the file names, else its
    /// file stem); repeatable. A1111 `.pt`/`.safetensors`, diffusers `learned_embeds`, SDXL
    /// `clip_l`/`clip_g` files.
    #[arg(long, value_name = "PATH[:TOKEN]")]
    embedding: Vec<String>,
    /// A folder of embeddings, each usable by its file stem as A1111 does: those whose stem a
    /// prompt holds are loaded.
    #[arg(long, value_name = "DIR")]
    embeddings_dir: Option<PathBuf>,
    /// A VAE folder or Hub id to use instead of the model's (also a single file's).
    #[arg(long, value_name = "DIR")]
    vae: Option<String>,
}

fn output_paths(output: &Path, n: usize) -> Vec<PathBuf> {
    if n == 1 {
        return vec![output.to_path_buf()];
    }
    let stem = output.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let ext = output.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default();
    (1..=n).map(|i| output.with_file_name(format!("{stem}-{i}{ext}"))).collect()
}

/// Refuses an image of `size` where the output is `want` (an unset side follows the image).
fn check_size(what: &str, path: &Path, (w, h): (usize, usize), want: (Option<usize>, Option<usize>)) -> Result<(), String> {
    let (ow, oh) = (want.0.unwrap_or(w), want.1.unwrap_or(h));
    if (ow, oh) == (w, h) {
        return Ok(());
    }
    Err(format!(
        "{what} size {w}x{h} ({}) differs from the output size {ow}x{oh}; kiln does not resize: give an image of the output size",
        path.display()
    ))
}

/// `WIDTHxHEIGHT` → diffusers' `(height, width)`.
fn parse_size(flag: &str, v: &str) -> Result<(usize, usize), String> {
    let bad = || format!("{flag} must be WIDTHxHEIGHT with positive integers (e.g. 1024x1024), got {v:?}");
    let (w, h) = v.split_once(['x', 'X']).ok_or_else(bad)?;
    let (w, h): (usize, usize) = (w.trim().parse().map_err(|_| bad())?, h.trim().parse().map_err(|_| bad())?);
    if w == 0 || h == 0 {
        return Err(bad());
    }
    Ok((h, w))
}

fn parse_pair(flag: &str, v: &str) -> Result<(usize, usize), String> {
    let bad = || format!("{flag} must be TOP,LEFT with integers >= 0 (e.g. 0,0), got {v:?}");
    let (a, b) = v.split_once(',').ok_or_else(bad)?;
    Ok((a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?))
}

/// Refuses, before the weights load, a sampler the scheduler config cannot give (the same
/// SamplerChoice the pipeline builds it with, built once so that bad betas or offsets show here).
/// (A flow-matching model's schedule also needs the run's μ and sigmas: its sampler choice is
/// checked here, the schedule when the pipeline builds it.)
fn check_sampler(a: &GenerateArgs, kind: PipelineKind, scheduler: Option<SamplerName>, config: &SchedulerConfig) -> Result<(), CliError> {
    let choice = SamplerChoice { sampler: scheduler, karras: a.karras };
    choice.resolve(config).map_err(|e| crate::schedule::choice_error(&e))?;
    if !kind.is_flow_matching() {
        let (steps, _) = defaults(kind, a.steps, None);
        choice.build(config, steps, &StepOptions { eta: a.eta, ..StepOptions::default() }).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// `PATH[:SCALE]` → the path and the scale (1.0 when there is none; a path may hold `:`).
fn parse_lora(spec: &str) -> Result<(PathBuf, f64), String> {
    let (path, scale) = match spec.rsplit_once(':') {
        Some((path, scale)) if !path.is_empty() && scale.parse::<f64>().is_ok() => (path, scale.parse::<f64>().unwrap_or(1.0)),
        _ => (spec, 1.0),
    };
    if !scale.is_finite() {
        return Err(format!("--lora {spec}: the scale must be a finite number"));
    }
    Ok((PathBuf::from(path), scale))
}

/// `PATH[:TOKEN]` → the path and the token (an existing path is taken whole: a path may hold `:`).
fn parse_embedding(spec: &str) -> (PathBuf, Option<String>) {
    match spec.rsplit_once(':') {
        Some((path, token)) if !Path::new(spec).exists() && !path.is_empty() && !token.is_empty() => (PathBuf::from(path), Some(token.to_string())),
        _ => (PathBuf::from(spec), None),
    }
}

/// The embeddings of `dir` a prompt names: files (`.pt`, `.safetensors`, `.bin`) whose stem one of
/// `texts` holds (compared lowercased, as the tokenizer matches them), by name.
fn embeddings_in(dir: &Path, texts: &[&str]) -> Result<Vec<PathBuf>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("--embeddings-dir {}: {e}", dir.display()))?;
    let texts: Vec<String> = texts.iter().map(|t| t.to_lowercase()).collect();
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "pt" || e == "safetensors" || e == "bin"))
        .filter(|p| p.file_stem().is_some_and(|s| !s.is_empty() && texts.iter().any(|t| t.contains(&s.to_string_lossy().to_lowercase()))))
        .collect();
    found.sort();
    Ok(found)
}

/// Loads `--model`: a single-file checkpoint (with `--config`, `--prediction-type`, `--vae`) or
/// a diffusers folder / Hub id; and the model's name for the PNG parameters (A1111 writes the
/// checkpoint's file name without its extension).
/// `--steps` and `--guidance-scale`, or the family's defaults: kiln's 30 steps and 7.5 for the SD
/// family, diffusers' 28 steps and 7.0 (SD 3) or 3.5 (FLUX).
fn defaults(kind: PipelineKind, steps: Option<usize>, guidance: Option<f64>) -> (usize, f64) {
    let (s, g) = kiln::pipeline::infotext::default_steps_and_guidance(kind);
    (steps.unwrap_or(s), guidance.unwrap_or(g))
}

fn load_model(a: &GenerateArgs, scheduler: Option<SamplerName>, device: &Device, dtype: DType) -> Result<(Pipeline, String), CliError> {
    let hub = HubConfig::from_env();
    let path = Path::new(&a.model);
    if path.is_file() {
        if a.fp16_variant {
            return Err("--fp16-variant picks a diffusers folder's .fp16 weights; a single-file checkpoint has one set of weights".into());
        }
        let file = SingleFile::open(path).map_err(|e| e.to_string())?;
        eprintln!("{}: {} checkpoint ({})", path.display(), file.detection.family.name(), file.detection.evidence);
        let arch = crate::convert::architecture(&file, a.config.as_deref(), a.prediction_type.as_deref())?;
        let config = SchedulerConfig::from_json_str(&arch.scheduler.text, &arch.scheduler.label.display().to_string()).map_err(|e| e.to_string())?;
        check_sampler(a, PipelineKind::StableDiffusion, scheduler, &config)?;
        let vae = a.vae.as_deref().map(|v| resolve_vae(v, false, &hub)).transpose().map_err(|e| format!("--vae: {e}"))?;
        let pipe = StableDiffusion::load_single_file(&file, &arch, vae.as_deref(), device, dtype).map_err(|e| e.to_string())?;
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| a.model.clone());
        return Ok((Pipeline::StableDiffusion(Box::new(pipe)), name));
    }
    if a.config.is_some() || a.prediction_type.is_some() {
        return Err("--config and --prediction-type describe a single-file checkpoint (--model FILE); a diffusers folder has its own configs".into());
    }
    let resolve_options = ResolveOptions { prefer_fp16: a.fp16_variant, vae: a.vae.clone() };
    let folder = resolve(&a.model, &resolve_options, &hub).map_err(|e| e.to_string())?;
    if let Some(config) = folder.component("scheduler").and_then(|c| c.config()) {
        check_sampler(a, folder.kind, scheduler, &SchedulerConfig::from_file(config).map_err(|e| e.to_string())?)?;
    }
    if folder.kind.is_flow_matching() && a.vae.is_some() {
        return Err(format!("--vae replaces an SD-family model's VAE; {} models keep their own 16-channel VAE", folder.kind).into());
    }
    let pipe = Pipeline::load_folder(&folder, device, dtype).map_err(|e| e.to_string())?;
    Ok((pipe, folder.name.clone()))
}

pub fn generate(a: GenerateArgs) -> Result<(), crate::CliError> {
    let called = Instant::now();
    if a.mask.is_some() && a.init_image.is_none() {
        return Err("--mask needs --init-image (the image to inpaint)".into());
    }
    if a.strength.is_some() && a.init_image.is_none() {
        return Err("--strength needs --init-image (img2img or inpainting)".into());
    }
    if let Some(s) = a.strength {
        if !(0.0..=1.0).contains(&s) {
            return Err(format!("--strength must be in [0, 1], got {s}").into());
        }
    }
    let (device, dtype, vae_dtype) = a.device.resolve()?;
    let scheduler = a.scheduler.as_deref().map(str::parse::<SamplerName>).transpose().map_err(|e| e.to_string())?;
    let original_size = a.original_size.as_deref().map(|v| parse_size("--original-size", v)).transpose()?;
    let target_size = a.target_size.as_deref().map(|v| parse_size("--target-size", v)).transpose()?;
    let crops = a.crops_coords_top_left.as_deref().map(|v| parse_pair("--crops-coords-top-left", v)).transpose()?;
    // refuse before any work: outputs that cannot be written (or would replace what is not a
    // regular file, or exist without --overwrite), unreadable inputs
    let paths = output_paths(&a.output, a.num_images.max(1));
    for p in &paths {
        check_output(p, a.overwrite).map_err(|e| format!("--output: {e}"))?;
    }
    // the images' sizes from their headers first: a size kiln refuses is never decoded
    let init_size = a.init_image.as_deref().map(|p| image_size(p, "init image")).transpose().map_err(|e| e.to_string())?;
    let mask_size = a.mask.as_deref().map(|p| image_size(p, "mask")).transpose().map_err(|e| e.to_string())?;
    if let (Some(p), Some(size)) = (&a.init_image, init_size) {
        check_size("init image", p, size, (a.width, a.height))?;
    }
    if let (Some(p), Some(size), Some((iw, ih))) = (&a.mask, mask_size, init_size) {
        check_size("mask", p, size, (Some(iw), Some(ih)))?;
    }
    let init_image = a.init_image.as_deref().map(|p| decode_image(p, "init image").map(|i| i.to_rgb8())).transpose().map_err(|e| e.to_string())?;
    let mask = a.mask.as_deref().map(|p| decode_image(p, "mask").map(|m| pil_grayscale(&m))).transpose().map_err(|e| e.to_string())?;
    // the LoRAs are read (and refused) before the model loads; under the a1111 syntax the
    // prompt's <lora:NAME:W> too (taken out of the prompt, as A1111 does)
    let a1111 = a.prompt_syntax == "a1111";
    let mut loras = a.lora.iter().map(|spec| parse_lora(spec)).collect::<Result<Vec<_>, _>>()?;
    let mut prompt = a.prompt.clone();
    if a1111 {
        let (text, found) = kiln::pipeline::prompt::extract_extra_networks(&a.prompt).map_err(|e| e.to_string())?;
        prompt = text;
        for (kind, name, weight) in found {
            if kind != "lora" {
                return Err(format!("<{kind}:{name}>: kiln applies LoRAs (<lora:NAME:W>), not {kind} networks").into());
            }
            let dir = a.lora_dir.as_ref().ok_or_else(|| format!("<lora:{name}>: name the folder it is in with --lora-dir"))?;
            let path = kiln::pipeline::lora::find_in_dir(dir, &name).ok_or_else(|| format!("<lora:{name}>: no {name}.safetensors, .pt or .ckpt in {}", dir.display()))?;
            loras.push((path, weight));
        }
    }
    for (path, _) in &loras {
        LoraFile::open(path).map_err(|e| format!("--lora: {e}"))?;
    }
    // so are the embeddings: --embedding, and those of --embeddings-dir a prompt names
    let texts: Vec<&str> = [Some(&a.prompt), a.negative_prompt.as_ref(), a.prompt_2.as_ref(), a.negative_prompt_2.as_ref()].into_iter().flatten().map(String::as_str).collect();
    let mut embeddings: Vec<(PathBuf, Option<String>)> = a.embedding.iter().map(|s| parse_embedding(s)).collect();
    if let Some(dir) = &a.embeddings_dir {
        embeddings.extend(embeddings_in(dir, &texts)?.into_iter().map(|p| (p, None)));
    }
    let embeddings = embeddings
        .iter()
        .map(|(path, token)| EmbeddingFile::open(path, token.as_deref()).map_err(|e| format!("--embedding: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let (mut pipe, model_name) = load_model(&a, scheduler, &device, dtype)?;
    let kind = pipe.kind();
    if kind.is_flow_matching() {
        // what the SD 3 and FLUX pipelines do not take yet, refused by flag before any work
        let sd_only = [
            (!embeddings.is_empty(), "--embedding / --embeddings-dir"),
            (a1111, "--prompt-syntax a1111"),
        ];
        if let Some((_, flag)) = sd_only.iter().find(|(set, _)| *set) {
            return Err(format!("{flag}: not supported with {kind} models yet (text-to-image, img2img and inpainting are)").into());
        }
    } else {
        let flow_only = [
            (a.prompt_3.is_some() || a.negative_prompt_3.is_some(), "--prompt-3 / --negative-prompt-3"),
            (a.max_sequence_length.is_some(), "--max-sequence-length"),
            (a.true_cfg_scale != 1.0, "--true-cfg-scale"),
            (a.skip_layer_guidance.is_some(), "--skip-layer-guidance"),
        ];
        if let Some((_, flag)) = flow_only.iter().find(|(set, _)| *set) {
            return Err(format!("{flag}: an SD 3 / FLUX option; this is a {kind} model").into());
        }
    }
    let (steps, guidance_scale) = defaults(kind, a.steps, a.guidance_scale);
    let mut lora_hashes = Vec::new();
    for (path, scale) in &loras {
        let report = pipe.load_lora(path, *scale).map_err(|e| format!("--lora: {e}"))?;
        eprintln!("{report}");
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        lora_hashes.push(format!("{name}: {}", report.hash));
    }
    let mut ti_hashes = Vec::new();
    let sd = match &mut pipe {
        Pipeline::StableDiffusion(sd) => Some(sd.as_mut()),
        _ => None,
    };
    let mut sd = sd;
    for embedding in &embeddings {
        let path = &embedding.path;
        let Some(pipe) = sd.as_deref_mut() else { break };
        let tokens = pipe.add_embedding(embedding).map_err(|e| format!("--embedding: {e}"))?;
        eprintln!("{}: embedding {}", path.display(), tokens.join(" "));
        let hash = kiln::pipeline::lora::hash::short_hash(path, false).map_err(|e| format!("--embedding {}: {e}", path.display()))?;
        ti_hashes.push(format!("{}: {hash}", tokens[0]));
    }
    // (the flow families' VAE stays f32)
    if let (Some(pipe), true) = (sd.as_deref_mut(), vae_dtype != DType::F32) {
        pipe.set_vae_dtype(vae_dtype);
    }
    let options = GenerateOptions {
        prompt,
        prompt_2: a.prompt_2.clone(),
        negative_prompt: a.negative_prompt.clone(),
        negative_prompt_2: a.negative_prompt_2.clone(),
        num_inference_steps: steps,
        guidance_scale,
        guidance_rescale: a.guidance_rescale,
        width: a.width,
        height: a.height,
        seed: a.seed,
        num_images_per_prompt: a.num_images,
        scheduler,
        karras: a.karras,
        clip_skip: a.clip_skip,
        eta: a.eta,
        original_size,
        crops_coords_top_left: crops.unwrap_or((0, 0)),
        target_size,
        prompt_syntax: if a1111 { PromptSyntax::A1111 } else { PromptSyntax::Diffusers },
        flow: FlowOptions {
            prompt_3: a.prompt_3.clone(),
            negative_prompt_3: a.negative_prompt_3.clone(),
            max_sequence_length: a.max_sequence_length,
            true_cfg_scale: a.true_cfg_scale,
            skip_layer_guidance: a.skip_layer_guidance.clone().map(|layers| SkipLayerGuidance { layers, scale: a.slg_scale, start: a.slg_start, stop: a.slg_stop }),
        },
    };
    let task = match (&init_image, &mask) {
        (None, _) => Task::Txt2Img,
        // diffusers' defaults: 0.8 (SD img2img), 0.3 (SDXL img2img), 1.0 (inpainting)
        (Some(image), None) => Task::Img2Img { image, strength: a.strength.unwrap_or(default_strength(kind, false)) },
        (Some(image), Some(mask)) => Task::Inpaint { image, mask, strength: a.strength.unwrap_or(default_strength(kind, true)) },
    };
    let bar = ProgressBar::new(steps as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {per_sec}  ETA {eta}  {msg}")
            .map_err(|e| e.to_string())?,
    );
    // start-up: reading the flags and inputs, loading the weights (docs/performance.md)
    eprintln!("generating {} image(s), {} steps (ready in {:.2} s)", a.num_images, steps, called.elapsed().as_secs_f64());
    let start = Instant::now();
    // Ctrl-C / SIGTERM from here on: stop at the next step, write nothing, exit 130
    let images = interrupt::graceful(|| {
        pipe.generate(&options, task, &mut |info, _| {
            bar.set_length(info.total as u64);
            bar.set_position(info.step as u64 + 1);
            let secs = start.elapsed().as_secs_f64() / (info.step + 1) as f64;
            bar.set_message(format!("{secs:.2} s/it"));
            !interrupt::requested()
        })
    });
    let images = match images {
        Err(PipelineError::Cancelled(_)) if interrupt::requested() => return Err(CliError::Interrupted),
        other => other.map_err(|e| e.to_string())?,
    };
    bar.finish();
    let record = RunRecord { prompt: a.prompt.clone(), model: model_name, ti_hashes, lora_hashes };
    let params = generation_params(pipe.scheduler_config(), &options, &task, &record, &images);
    for ((image, path), params) in images.iter().zip(&paths).zip(&params) {
        // a signal during the save: the temporary file is removed, the output never appears
        interrupt::graceful(|| if interrupt::requested() { Err(CliError::Interrupted) } else { save_png(path, image, Some(params), a.overwrite).map_err(|e| CliError::from(e.to_string())) })?;
        if interrupt::requested() {
            // written just before the signal came: the run as a whole was interrupted
            eprintln!("wrote {} (then interrupted)", path.display());
            return Err(CliError::Interrupted);
        }
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
