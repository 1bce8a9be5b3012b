//! `kiln generate`: flags → [`Txt2ImgOptions`] → the pipeline → PNG files with their parameters.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use kiln::burn::tensor::{DType, Device, DeviceKind};
use kiln::pipeline::png::{save_png, GenerationParams};
use kiln::pipeline::{resolve, HubConfig, PipelineKind, ResolveOptions, StableDiffusion, Txt2ImgOptions};
use kiln::scheduler::SamplerName;

#[derive(Args)]
pub struct GenerateArgs {
    /// A diffusers model folder, or a Hub id `org/name[@revision]`.
    #[arg(long, value_name = "DIR|HUB_ID")]
    model: String,
    #[arg(long, value_name = "TEXT")]
    prompt: String,
    #[arg(long, value_name = "TEXT")]
    negative_prompt: Option<String>,
    #[arg(long, value_name = "N", default_value_t = 30)]
    steps: usize,
    /// Classifier-free guidance scale; 1 or less turns guidance off.
    #[arg(long, value_name = "F", default_value_t = 7.5)]
    guidance_scale: f64,
    /// guidance_rescale (0 = off).
    #[arg(long, value_name = "F", default_value_t = 0.0)]
    guidance_rescale: f64,
    /// Seed of torch's CPU generator (the same seed gives diffusers' picture).
    #[arg(long, value_name = "N", default_value_t = 0)]
    seed: u64,
    #[arg(long, value_name = "W", default_value_t = 512)]
    width: usize,
    #[arg(long, value_name = "H", default_value_t = 512)]
    height: usize,
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
    /// cpu (burn's flex backend), vulkan (SPIR-V, f16 tensor cores), wgpu (auto API, WGSL).
    #[arg(long, value_name = "cpu|vulkan|wgpu", default_value = "cpu")]
    device: String,
    /// The UNet's precision; the VAE and text encoder stay f32.
    #[arg(long, value_name = "f32|f16", default_value = "f32")]
    dtype: String,
    /// Use the .fp16.safetensors weights where the model has them.
    #[arg(long)]
    fp16_variant: bool,
    /// img2img (not supported yet).
    #[arg(long, value_name = "PATH")]
    init_image: Option<PathBuf>,
    #[arg(long, value_name = "F")]
    strength: Option<f64>,
    /// Inpainting mask (not supported yet).
    #[arg(long, value_name = "PATH")]
    mask: Option<PathBuf>,
    /// A VAE folder or Hub id to use instead of the model's.
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

pub fn generate(a: GenerateArgs) -> Result<(), String> {
    if a.init_image.is_some() || a.strength.is_some() || a.mask.is_some() {
        return Err("--init-image, --strength and --mask (img2img, inpainting) are not supported yet; only text-to-image is".into());
    }
    let device = match a.device.as_str() {
        "cpu" => Device::flex(),
        "vulkan" => Device::vulkan(DeviceKind::DefaultDevice),
        "wgpu" => Device::wgpu(DeviceKind::DefaultDevice),
        other => return Err(format!("--device must be cpu, vulkan or wgpu, got {other:?}")),
    };
    let dtype = match a.dtype.as_str() {
        "f32" => DType::F32,
        "f16" => DType::F16,
        other => return Err(format!("--dtype must be f32 or f16, got {other:?}")),
    };
    let scheduler = a.scheduler.as_deref().map(str::parse::<SamplerName>).transpose().map_err(|e| e.to_string())?;
    // refuse before any work: existing outputs, missing directories
    let paths = output_paths(&a.output, a.num_images.max(1));
    for p in &paths {
        if p.exists() && !a.overwrite {
            return Err(format!("{} exists; pass --overwrite to replace it", p.display()));
        }
        let dir = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if !dir.is_dir() {
            return Err(format!("output directory {} does not exist", dir.display()));
        }
    }
    let resolve_options = ResolveOptions { prefer_fp16: a.fp16_variant, vae: a.vae.clone() };
    let folder = resolve(&a.model, &resolve_options, &HubConfig::from_env()).map_err(|e| e.to_string())?;
    if folder.kind != PipelineKind::StableDiffusion {
        return Err(format!("{} is a {}; kiln generates with StableDiffusionPipeline models (SD 1.x / 2.x) so far", folder.name, folder.class_name));
    }
    let variant = a.fp16_variant.then_some("fp16");
    let pipe = StableDiffusion::load(&folder.root, &device, dtype, variant).map_err(|e| e.to_string())?;
    let options = Txt2ImgOptions {
        prompt: a.prompt.clone(),
        negative_prompt: a.negative_prompt.clone(),
        num_inference_steps: a.steps,
        guidance_scale: a.guidance_scale,
        guidance_rescale: a.guidance_rescale,
        width: a.width,
        height: a.height,
        seed: a.seed,
        num_images_per_prompt: a.num_images,
        scheduler,
        karras: a.karras,
        clip_skip: a.clip_skip,
        eta: a.eta,
    };
    let bar = ProgressBar::new(a.steps as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {per_sec}  ETA {eta}  {msg}")
            .map_err(|e| e.to_string())?,
    );
    let start = Instant::now();
    let images = pipe
        .txt2img(&options, &mut |info, _| {
            bar.set_length(info.total as u64);
            bar.set_position(info.step as u64 + 1);
            let secs = start.elapsed().as_secs_f64() / (info.step + 1) as f64;
            bar.set_message(format!("{secs:.2} s/it"));
            true
        })
        .map_err(|e| e.to_string())?;
    bar.finish();
    let sampler = scheduler.map(|s| s.to_string()).unwrap_or_else(|| pipe.scheduler_config.class_name.clone().unwrap_or_default());
    let mut extra = Vec::new();
    if a.karras {
        extra.push(("Schedule type".to_string(), "Karras".to_string()));
    }
    for (i, (image, path)) in images.iter().zip(&paths).enumerate() {
        let params = GenerationParams {
            prompt: a.prompt.clone(),
            negative_prompt: a.negative_prompt.clone().unwrap_or_default(),
            steps: a.steps as u32,
            sampler: sampler.clone(),
            cfg_scale: a.guidance_scale as f32,
            seed: a.seed,
            width: a.width as u32,
            height: a.height as u32,
            model: Some(folder.name.clone()),
            extra: if a.num_images > 1 {
                let mut e = extra.clone();
                e.push(("Batch pos".to_string(), i.to_string()));
                e
            } else {
                extra.clone()
            },
        };
        save_png(path, image, Some(&params), a.overwrite).map_err(|e| e.to_string())?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
