//! # kiln-bench
//!
//! `kiln bench`: seconds per text encode, denoiser step (a UNet's CFG step; SD 3's MMDiT on the
//! CFG batch, FLUX's transformer in one pass), VAE decode and end-to-end run, on any device, for a
//! config preset (random weights: speed does not depend on their values) or a model folder.
//!
//! Every timed call is followed by `device.sync()`, so the time covers the work and not just its
//! submission. The first call of each component is timed on its own and reported as
//! `first_use_s`: it includes kernel compilation and autotuning on GPUs, which later calls reuse.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::{DType, Device, Tensor, TensorData};
use kiln_ops::gpu::route::{policy, GpuOp};
use kiln_scheduler::{SamplerName, SchedulerConfig, StepOptions};
use kiln_text_encoder::{ClipTextConfig, ClipTextModel};
use kiln_unet::{TextTimeCond, UNet2DConditionConfig, UNet2DConditionModel};
use kiln_vae::{AutoencoderKL, AutoencoderKLConfig};
use serde::Serialize;

use kiln_pipeline::presets;
use kiln_pipeline::{LoadOptions, PipelineError, StableDiffusion, TorchGenerator};

mod flow;

/// The preset names `--preset` takes.
pub fn preset_names() -> Vec<&'static str> {
    presets::preset_names()
}

/// What to benchmark.
#[derive(Debug, Clone)]
pub enum BenchModel {
    /// A config preset (`sd15`, `sd21`, `sdxl`, `sd35m`, `sd35l`, `flux-schnell`, `flux-dev`) with
    /// random weights.
    Preset(String),
    /// A diffusers folder, with its weights.
    Folder(PathBuf),
}

/// `kiln bench` options.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub model: BenchModel,
    /// The UNet's dtype.
    pub dtype: DType,
    /// The VAE's dtype (the pipeline decodes in f32).
    pub vae_dtype: DType,
    pub width: usize,
    pub height: usize,
    /// Denoising steps of the end-to-end run.
    pub steps: usize,
    /// Images per run; the UNet sees twice as many (classifier-free guidance).
    pub batch: usize,
    /// Timed repetitions per component (after the first, untimed-for-the-mean call).
    pub iters: usize,
    pub seed: u64,
    /// Also run one UNet CFG step with per-op timing ([`BenchReport::unet_profile`]).
    pub profile: bool,
}

/// Seconds over the timed repetitions.
#[derive(Debug, Clone, Serialize)]
pub struct Timing {
    pub mean_s: f64,
    pub min_s: f64,
    pub max_s: f64,
    pub iters: usize,
    /// The first call alone (kernel compilation and autotuning on GPUs).
    pub first_use_s: f64,
}

/// What `kiln bench` reports (`--json` prints it as is).
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub model: String,
    pub device: String,
    /// The GPU as it names itself (e.g. `NVIDIA H100 80GB HBM3`); `None` on the CPU.
    pub adapter: Option<String>,
    pub dtype: String,
    pub vae_dtype: String,
    pub width: usize,
    pub height: usize,
    pub batch: usize,
    pub steps: usize,
    /// Building the model and loading its weights (a preset: random weights at the real sizes),
    /// seconds: what a run spends before its first text-encoder call.
    pub load_seconds: f64,
    /// Encoding the prompt and the negative prompt (both encoders for SDXL).
    pub text_encode: Timing,
    /// One denoiser call at the latent size: a UNet's or SD 3's on the CFG batch (2 × batch), FLUX's
    /// on the batch (its guidance is embedded). Named `unet_step` for the reports' readers.
    pub unet_step: Timing,
    /// Decoding `batch` latents to images.
    pub vae_decode: Timing,
    /// Text encode + `steps` UNet CFG steps with Euler + VAE decode.
    pub end_to_end: Timing,
    /// Peak memory in bytes: the process's peak resident set on the CPU (VmHWM), the device
    /// allocator's reserved bytes after each call on GPUs; `None` where neither is known.
    pub peak_memory_bytes: Option<u64>,
    /// The same over the timed calls only: after each component's first use the allocator gives
    /// back the pages no tensor holds (route measurement and autotuning at first use hold several
    /// outputs at once) and the CPU's peak-RSS mark is reset, so this is what a warmed-up run needs.
    pub steady_peak_memory_bytes: Option<u64>,
    pub peak_memory_source: String,
    /// The denoiser's parameters.
    pub unet_parameters: usize,
    /// What the denoiser is: `UNet`, `MMDiT (SD 3)`, `FLUX transformer`.
    pub denoiser: String,
    /// Each `kiln_ops::gpu::route::GpuOp`'s policy in force, by op name (`attention`, `conv2d`,
    /// `group_norm`): `auto`, `burn` or kiln's alternative (`--gpu-attention`, `--gpu-conv`,
    /// `--gpu-norm`).
    pub gpu_policies: BTreeMap<String, String>,
    /// The choices `auto` made on the device in this run (GPUs only), measured now or read from
    /// the store of earlier measurements: each op and shape, every route's time and the one kept
    /// ([`kiln_ops::gpu::route`]).
    pub routes: Vec<RouteReport>,
    /// `--profile`: one more UNet CFG step with the device synced around every convolution,
    /// GroupNorm and attention call ([`kiln_ops::profile`]).
    pub unet_profile: Option<UnetProfile>,
}

/// Where one UNet CFG step's time goes (`kiln bench --profile`).
#[derive(Debug, Clone, Serialize)]
pub struct UnetProfile {
    /// The profiled step, syncs included (slower than [`BenchReport::unet_step`]).
    pub step_ms: f64,
    /// Per op: `conv2d`, `group_norm`, `attention`.
    pub ops: Vec<OpProfile>,
    /// The rest of the step: linear layers, element-wise ops, embeddings, the syncs.
    pub other_ms: f64,
}

/// One op's calls and time within [`UnetProfile`].
#[derive(Debug, Clone, Serialize)]
pub struct OpProfile {
    pub op: String,
    pub calls: usize,
    pub ms: f64,
    /// `ms` ÷ the profiled step.
    pub share: f64,
}

/// One measured choice ([`kiln_ops::gpu::route::RouteChoice`]).
#[derive(Debug, Clone, Serialize)]
pub struct RouteReport {
    /// `attention`, `conv2d` or `group_norm`.
    pub op: String,
    pub dtype: String,
    pub shape: String,
    /// Milliseconds per call of each route.
    pub times_ms: BTreeMap<String, f64>,
    /// Routes whose output disagreed with burn's (relative error, see
    /// `kiln_ops::gpu::route::relative_error`; JSON `null` where it is not finite): timed, never kept.
    pub mismatched: BTreeMap<String, f64>,
    /// The route kept (the fastest of those that agree with burn's).
    pub route: String,
    /// Read from the store of earlier measurements on this GPU (`kiln_ops::gpu::store::store_path`)
    /// rather than timed in this run.
    pub stored: bool,
}

fn route_reports() -> Vec<RouteReport> {
    kiln_ops::gpu::route::route_choices()
        .into_iter()
        .map(|c| RouteReport {
            op: c.op.into(),
            dtype: dtype_name(c.dtype),
            shape: c.shape,
            times_ms: c.times_s.iter().map(|(r, s)| (r.to_string(), s * 1e3)).collect(),
            mismatched: c.mismatched.iter().map(|(r, e)| (r.to_string(), *e)).collect(),
            route: c.route.into(),
            stored: c.cached,
        })
        .collect()
}

struct Components {
    name: String,
    text_encoders: Vec<ClipTextModel>,
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    scheduler: SchedulerConfig,
}

pub(crate) fn bad_config(what: &str, e: impl std::fmt::Display) -> PipelineError {
    PipelineError::Unsupported(format!("{what}: {e}"))
}

fn load_components(o: &BenchOptions, device: &Device) -> Result<Components, PipelineError> {
    match &o.model {
        BenchModel::Preset(name) => {
            let preset = presets::preset(name).ok_or_else(|| PipelineError::Input {
                what: "preset",
                value: name.clone(),
                allowed: format!("one of {}", preset_names().join(", ")),
            })?;
            let get = |c: &str| preset.config(c);
            let unet = UNet2DConditionConfig::from_json_str(get("unet").unwrap_or_default())
                .and_then(|c| c.init(device))
                .map_err(|e| bad_config("unet config", e))?;
            let vae = AutoencoderKLConfig::from_json_str(get("vae").unwrap_or_default())
                .map_err(|e| bad_config("vae config", e))?
                .init(device)
                .map_err(|e| bad_config("vae config", e))?;
            let mut text_encoders = Vec::new();
            for key in ["text_encoder", "text_encoder_2"] {
                if let Some(text) = get(key) {
                    let config: ClipTextConfig = serde_json::from_str(text).map_err(|e| bad_config(key, e))?;
                    let config = config.validate(Path::new(&format!("{name}/{key}/config.json")))?;
                    text_encoders.push(ClipTextModel::new(&config, device));
                }
            }
            let scheduler = SchedulerConfig::from_json_str(get("scheduler").unwrap_or_default(), &format!("{name}/scheduler_config.json"))?;
            let unet = kiln_ops::cast_module(unet, o.dtype);
            let vae = kiln_ops::cast_module(vae, o.vae_dtype);
            Ok(Components { name: format!("preset {name} (random weights)"), text_encoders, unet, vae, scheduler })
        }
        BenchModel::Folder(dir) => {
            // the pipeline's own loader: component folders and weight variants as resolved
            let mut pipe = StableDiffusion::load(dir, &LoadOptions::new(device).with_dtype(o.dtype))?;
            if o.vae_dtype != DType::F32 {
                pipe.set_vae_dtype(o.vae_dtype);
            }
            let StableDiffusion { text_encoder, text_encoder_2, unet, vae, scheduler_config, .. } = pipe;
            Ok(Components {
                name: dir.display().to_string(),
                text_encoders: std::iter::once(text_encoder).chain(text_encoder_2).collect(),
                unet,
                vae,
                scheduler: scheduler_config,
            })
        }
    }
}

pub(crate) fn dtype_name(d: DType) -> String {
    format!("{d:?}").to_lowercase()
}

/// Peak memory so far: VmHWM on the CPU, the allocator's reserved bytes on GPUs; over every call
/// (`peak`) and over the timed calls only (`steady`, see [`PeakMemory::release`]).
pub(crate) struct PeakMemory {
    device: Device,
    peak: Option<u64>,
    steady: Option<u64>,
}

impl PeakMemory {
    fn new(device: &Device) -> Self {
        PeakMemory { device: device.clone(), peak: None, steady: None }
    }

    fn sample(&mut self, timed: bool) {
        let now = if self.device == Device::flex() {
            std::fs::read_to_string("/proc/self/status").ok().and_then(|s| {
                let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
                line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kib| kib * 1024)
            })
        } else {
            self.device.memory_pool_usage().map(|u| u.bytes_reserved)
        };
        if let Some(now) = now {
            let max = |p: Option<u64>| Some(p.map_or(now, |p| p.max(now)));
            self.peak = max(self.peak);
            if timed {
                self.steady = max(self.steady);
            }
        }
    }

    /// After a first use: the device allocator gives back the pages no tensor holds (burn's
    /// `memory_cleanup`: what route measurement and autotuning reserved), and on the CPU the
    /// peak-RSS mark is reset (`/proc/self/clear_refs`), so the timed calls' samples show what a
    /// warmed-up run needs.
    fn release(&mut self) {
        if self.device == Device::flex() {
            let _ = std::fs::write("/proc/self/clear_refs", "5");
        } else {
            self.device.memory_cleanup();
        }
    }
}

pub(crate) fn sync(device: &Device) -> Result<(), PipelineError> {
    device.sync().map_err(|e| PipelineError::Unsupported(format!("the device failed while running: {e:?}")))
}

/// Times `f` once (first use), then `iters` more times.
pub(crate) fn time<T>(
    name: &str,
    iters: usize,
    device: &Device,
    memory: &mut PeakMemory,
    mut f: impl FnMut() -> Result<T, PipelineError>,
) -> Result<Timing, PipelineError> {
    let run = |f: &mut dyn FnMut() -> Result<T, PipelineError>, memory: &mut PeakMemory, timed: bool| -> Result<f64, PipelineError> {
        let start = Instant::now();
        let out = f()?;
        sync(device)?;
        let secs = start.elapsed().as_secs_f64();
        memory.sample(timed);
        drop(out);
        Ok(secs)
    };
    let first_use_s = run(&mut f, memory, false)?;
    memory.release();
    log::info!("bench: {name}: first use {:.2} ms", first_use_s * 1e3);
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters.max(1) {
        times.push(run(&mut f, memory, true)?);
    }
    let mean_s = times.iter().sum::<f64>() / times.len() as f64;
    log::info!("bench: {name}: {:.2} ms mean of {}", mean_s * 1e3, times.len());
    Ok(Timing {
        mean_s,
        min_s: times.iter().cloned().fold(f64::INFINITY, f64::min),
        max_s: times.iter().cloned().fold(0.0, f64::max),
        iters: times.len(),
        first_use_s,
    })
}

/// Runs the benchmark on `device` (on the CPU from one of rayon's workers, as the pipeline does:
/// [`kiln_pipeline::in_worker`]).
pub fn run_bench(o: &BenchOptions, device: &Device, device_name: &str) -> Result<BenchReport, PipelineError> {
    kiln_pipeline::in_worker(device, || run_bench_here(o, device, device_name))
}

impl BenchOptions {
    /// The largest image side `kiln bench` takes (SDXL at 1024 is the largest published size).
    pub const MAX_SIDE: usize = 8192;
    /// The most images per run.
    pub const MAX_BATCH: usize = 64;
    /// The most steps, and timed repetitions.
    pub const MAX_STEPS: usize = 1000;

    /// Checks every option before any work: sizes positive multiples of 8 up to
    /// [`MAX_SIDE`](Self::MAX_SIDE), 1 to [`MAX_BATCH`](Self::MAX_BATCH) images, 1 to
    /// [`MAX_STEPS`](Self::MAX_STEPS) steps and timed repetitions. Errors name the option.
    pub fn check(&self) -> Result<(), PipelineError> {
        for (what, v) in [("width", self.width), ("height", self.height)] {
            if v == 0 || v % 8 != 0 || v > Self::MAX_SIDE {
                return Err(PipelineError::Input { what, value: v.to_string(), allowed: format!("a positive multiple of 8 up to {}", Self::MAX_SIDE) });
            }
        }
        for (what, v, max) in [("steps", self.steps, Self::MAX_STEPS), ("batch", self.batch, Self::MAX_BATCH), ("iters", self.iters, Self::MAX_STEPS)] {
            if v == 0 || v > max {
                return Err(PipelineError::Input { what, value: v.to_string(), allowed: format!("in [1, {max}]") });
            }
        }
        Ok(())
    }
}

fn run_bench_here(o: &BenchOptions, device: &Device, device_name: &str) -> Result<BenchReport, PipelineError> {
    o.check()?;
    if let Some(report) = flow::run(o, device, device_name)? {
        return Ok(report);
    }
    let loading = Instant::now();
    let c = load_components(o, device)?;
    sync(device)?;
    let load_seconds = loading.elapsed().as_secs_f64();
    let mut memory = PeakMemory::new(device);
    let mut generator = TorchGenerator::new(o.seed);
    let f = c.vae.downsample_factor();
    let (lh, lw) = (o.height / f, o.width / f);
    let cfg_batch = 2 * o.batch;
    let unet_config = c.unet.config().clone();
    let randn = |g: &mut TorchGenerator, shape: [usize; 4]| Tensor::<4>::from_data(TensorData::new(g.randn(&shape), shape), device);

    // text encode: the prompt and the negative prompt, 77 tokens each
    let max_len = c.text_encoders.iter().map(|t| t.max_position_embeddings()).min().unwrap_or(77).min(77);
    let ids: Vec<Vec<u32>> = (0..2).map(|i| (0..max_len).map(|j| ((i * 7919 + j * 104_729) % 49_000) as u32).collect()).collect();
    let encode = || -> Result<(Tensor<3>, Option<Tensor<2>>), PipelineError> {
        let mut parts = Vec::new();
        let mut pooled = None;
        for te in &c.text_encoders {
            let out = te.encode(&ids, device)?;
            parts.push(if c.text_encoders.len() > 1 { out.hidden_states[out.hidden_states.len() - 2].clone() } else { out.last_hidden_state });
            pooled = out.text_embeds.or(pooled);
        }
        Ok((Tensor::cat(parts, 2), pooled))
    };
    let text_encode = time("text encode", o.iters, device, &mut memory, encode)?;

    // UNet inputs for the CFG batch
    let (context, pooled) = encode()?;
    let context = context.repeat_dim(0, o.batch);
    let added = match (&unet_config.addition_embed_type, pooled) {
        (Some(kind), Some(pooled)) if kind == "text_time" => Some(TextTimeCond {
            text_embeds: pooled.repeat_dim(0, o.batch),
            time_ids: vec![[o.height, o.width, 0, 0, o.height, o.width].iter().map(|&v| v as f64).collect(); cfg_batch],
        }),
        _ => None,
    };
    let sample = randn(&mut generator, [cfg_batch, unet_config.in_channels, lh, lw]);
    let unet_call = || c.unet.forward(sample.clone(), &[999.0], context.clone(), added.as_ref());
    let unet_step = time("UNet CFG step", o.iters, device, &mut memory, || Ok(unet_call()?))?;

    let unet_profile = if o.profile {
        kiln_ops::profile::take();
        kiln_ops::profile::set_enabled(true);
        sync(device)?;
        let start = Instant::now();
        let out = unet_call();
        let synced = sync(device);
        let step_ms = start.elapsed().as_secs_f64() * 1e3;
        kiln_ops::profile::set_enabled(false);
        let totals = kiln_ops::profile::take();
        drop(out?);
        synced?;
        let ops: Vec<OpProfile> = totals
            .into_iter()
            .map(|(op, t)| OpProfile { op: op.into(), calls: t.calls, ms: t.secs * 1e3, share: t.secs * 1e3 / step_ms })
            .collect();
        let other_ms = step_ms - ops.iter().map(|p| p.ms).sum::<f64>();
        Some(UnetProfile { step_ms, ops, other_ms })
    } else {
        None
    };

    let latents = randn(&mut generator, [o.batch, c.vae.config.latent_channels, lh, lw]);
    let vae_decode = time("VAE decode", o.iters, device, &mut memory, || Ok(c.vae.decode(latents.clone())?))?;

    let scheduler_config = c.scheduler.clone();
    let end_to_end = time("end to end", o.iters.min(2), device, &mut memory, || {
        let mut scheduler = SamplerName::Euler.build(&scheduler_config, o.steps, &StepOptions::default())?;
        let (context, _) = encode()?;
        let context = context.repeat_dim(0, o.batch);
        let mut g = TorchGenerator::new(o.seed);
        let mut x = randn(&mut g, [o.batch, unet_config.in_channels, lh, lw]).mul_scalar(scheduler.init_noise_sigma());
        let timesteps = scheduler.timesteps().to_vec();
        for (i, &t) in timesteps.iter().enumerate() {
            let input = scheduler.scale_model_input(Tensor::cat(vec![x.clone(), x.clone()], 0), i);
            let pred = c.unet.forward(input, &[t], context.clone(), added.as_ref())?;
            let (uncond, text) = (pred.clone().narrow(0, 0, o.batch), pred.narrow(0, o.batch, o.batch));
            let guided = uncond.clone() + (text - uncond).mul_scalar(7.5);
            x = scheduler.step(guided, i, x, &mut g);
        }
        Ok(c.vae.decode(x.div_scalar(c.vae.scaling_factor()))?)
    })?;

    let parameters = burn::module::Module::num_params(&c.unet);
    Ok(report(o, c.name, device, device_name, load_seconds, [text_encode, unet_step, vae_decode, end_to_end], &memory, parameters, "UNet", unet_profile))
}

/// The report of a run: its timings (text encode, denoiser step, VAE decode, end to end), peak
/// memory, the denoiser's parameters and the GPU routes in force.
#[allow(clippy::too_many_arguments)]
pub(crate) fn report(
    o: &BenchOptions,
    model: String,
    device: &Device,
    device_name: &str,
    load_seconds: f64,
    [text_encode, unet_step, vae_decode, end_to_end]: [Timing; 4],
    memory: &PeakMemory,
    parameters: usize,
    denoiser: &str,
    unet_profile: Option<UnetProfile>,
) -> BenchReport {
    BenchReport {
        model,
        device: device_name.to_string(),
        adapter: if *device == Device::flex() { None } else { device.identity().map(|i| i.name) },
        dtype: dtype_name(o.dtype),
        vae_dtype: dtype_name(o.vae_dtype),
        width: o.width,
        height: o.height,
        batch: o.batch,
        steps: o.steps,
        load_seconds,
        text_encode,
        unet_step,
        vae_decode,
        end_to_end,
        peak_memory_bytes: memory.peak,
        steady_peak_memory_bytes: memory.steady,
        peak_memory_source: if *device == Device::flex() { "process peak RSS (VmHWM)".into() } else { "device allocator, bytes reserved".into() },
        unet_parameters: parameters,
        denoiser: denoiser.into(),
        gpu_policies: GpuOp::ALL.iter().map(|&op| (op.name().to_string(), policy(op).name(op).to_string())).collect(),
        routes: route_reports(),
        unet_profile,
    }
}

/// The kiln side of `scripts/gpu/unet_check.py`: loads `dir/unet` in `dtype` on `device`, runs it
/// on `dir/io.safetensors` (`sample`, `encoder_hidden_states`, `timestep`, f32) and writes the
/// output to `dir/kiln_out.safetensors` (`out`, f32), for the script to compare with PyTorch.
pub fn unet_check(dir: &Path, device: &Device, dtype: DType) -> Result<PathBuf, PipelineError> {
    use safetensors::{tensor::TensorView, Dtype, SafeTensors};
    let io_err = |e: std::io::Error| PipelineError::Unsupported(format!("{}: {e}", dir.display()));
    let st_err = |e: safetensors::SafeTensorError| PipelineError::Unsupported(format!("{}: {e}", dir.join("io.safetensors").display()));
    let unet = UNet2DConditionModel::load(&dir.join("unet"), &LoadOptions::new(device).with_dtype(dtype))?;
    let bytes = std::fs::read(dir.join("io.safetensors")).map_err(io_err)?;
    let st = SafeTensors::deserialize(&bytes).map_err(st_err)?;
    let read = |name: &str| -> Result<(Vec<f32>, Vec<usize>), PipelineError> {
        let view = st.tensor(name).map_err(st_err)?;
        if view.dtype() != Dtype::F32 {
            return Err(PipelineError::Unsupported(format!("{name} must be f32, is {:?}", view.dtype())));
        }
        Ok((view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(), view.shape().to_vec()))
    };
    let (sample, sample_shape) = read("sample")?;
    let (context, context_shape) = read("encoder_hidden_states")?;
    let (t, _) = read("timestep")?;
    let rank = |name: &str, shape: &[usize], want: usize| match shape.len() == want && shape.iter().all(|&d| d > 0) {
        true => Ok(()),
        false => Err(PipelineError::Unsupported(format!("{name} must be a {want}-D tensor without empty dims, is {shape:?}"))),
    };
    rank("sample", &sample_shape, 4)?;
    rank("encoder_hidden_states", &context_shape, 3)?;
    let t = *t.first().ok_or_else(|| PipelineError::Unsupported("timestep is empty".into()))?;
    if !t.is_finite() {
        return Err(PipelineError::Unsupported(format!("timestep must be finite, is {t}")));
    }
    let sample = Tensor::<4>::from_data(TensorData::new(sample, sample_shape), device);
    let context = Tensor::<3>::from_data(TensorData::new(context, context_shape), device);
    let out = unet.forward(sample, &[t as f64], context, None)?.cast(DType::F32);
    let shape = out.dims().to_vec();
    let values: Vec<f32> = out
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| PipelineError::Unsupported(format!("reading the UNet output: {e:?}")))?;
    let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = TensorView::new(Dtype::F32, shape, &raw).map_err(st_err)?;
    let data = safetensors::serialize([("out".to_string(), view)], None).map_err(st_err)?;
    let path = dir.join("kiln_out.safetensors");
    std::fs::write(&path, data).map_err(io_err)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On the CPU `release` resets the peak-RSS mark: 512 MiB touched and freed before it count
    /// in `peak` and not in `steady` (with room for 256 MiB that tests running beside it may
    /// allocate meanwhile).
    #[test]
    fn steady_peak_leaves_out_what_first_use_freed() {
        let mut memory = PeakMemory::new(&Device::flex());
        let big = vec![1u8; 512 << 20];
        assert_eq!(big.iter().step_by(4096).map(|&b| b as usize).sum::<usize>(), (512 << 20) / 4096);
        drop(big);
        memory.sample(false);
        memory.release();
        memory.sample(true);
        let (peak, steady) = (memory.peak.unwrap(), memory.steady.unwrap());
        assert!(steady + (256 << 20) < peak, "peak {peak}, steady {steady}");
    }
}
