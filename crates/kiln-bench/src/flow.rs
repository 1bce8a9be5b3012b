//! `kiln bench` for the flow-matching families (SD 3/3.5, FLUX.1): the same four timings as for a
//! UNet model — the text encoders (CLIP and T5, prompt and negative prompt), one denoiser step
//! (SD 3: the CFG batch; FLUX.1: one pass, the guidance embedded), the VAE decode and a whole run
//! with FlowMatchEuler — for a published config with random weights or a model folder.
//!
//! Before anything is allocated, the weights' bytes (burn builds parameters lazily, so their
//! count is known first) are checked against what the CPU has available: a preset too large for
//! the machine says how much it needs instead of failing late.

use std::path::Path;
use std::time::Instant;

use burn::module::Module;
use burn::tensor::{DType, Device, Tensor, TensorData};
use kiln_pipeline::flow::{calculate_shift, uses_dynamic_shifting};
use kiln_pipeline::flux::latent_image_ids;
use kiln_pipeline::{presets, LoadOptions, ModelFolder, Pipeline, PipelineError, ResolveOptions, TorchGenerator};
use kiln_scheduler::{SamplerChoice, SchedulerConfig, StepOptions};
use kiln_text_encoder::t5::{T5Config, T5EncoderModel};
use kiln_text_encoder::{ClipTextConfig, ClipTextModel};
use kiln_transformer::{FluxTransformer2DModel, FluxTransformerConfig, Sd3Transformer2DModel, Sd3TransformerConfig};
use kiln_vae::{AutoencoderKL, AutoencoderKLConfig};

use crate::{bad_config, dtype_name, report, sync, time, BenchModel, BenchOptions, BenchReport, PeakMemory};

/// The denoiser of a flow model.
pub(crate) enum Denoiser {
    Sd3(Box<Sd3Transformer2DModel>),
    Flux(Box<FluxTransformer2DModel>),
}

/// A flow model's parts, as the benchmark runs them.
pub(crate) struct FlowComponents {
    name: String,
    clips: Vec<ClipTextModel>,
    t5: Option<T5EncoderModel>,
    denoiser: Denoiser,
    vae: AutoencoderKL,
    scheduler: SchedulerConfig,
}

/// Whether `o` names a flow-matching preset.
pub(crate) fn is_flow_preset(o: &BenchOptions) -> bool {
    matches!(&o.model, BenchModel::Preset(name) if presets::preset(name).is_some_and(|p| p.is_flow_matching()))
}

/// `MemAvailable` of /proc/meminfo in bytes (Linux); `None` elsewhere.
fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kib| kib * 1024)
}

fn gib(b: u64) -> f64 {
    b as f64 / (1u64 << 30) as f64
}

/// A preset's models, built lazily (nothing allocated), then checked against the memory the CPU
/// has: weights in their dtypes plus 1 GiB for activations.
pub(crate) fn preset_components(name: &str, o: &BenchOptions, device: &Device) -> Result<FlowComponents, PipelineError> {
    let preset = presets::preset(name).ok_or_else(|| PipelineError::Input { what: "preset", value: name.into(), allowed: presets::preset_names().join(", ") })?;
    let get = |c: &str| preset.config(c).unwrap_or_default();
    let label = |c: &str| format!("preset {name}: {c}/config.json");
    let parse = |c: &str| -> Result<serde_json::Value, PipelineError> { serde_json::from_str(get(c)).map_err(|e| bad_config(&label(c), e)) };
    let mut clips = Vec::new();
    let sd3 = preset.config("text_encoder_3").is_some();
    for key in if sd3 { &["text_encoder", "text_encoder_2"][..] } else { &["text_encoder"][..] } {
        let config: ClipTextConfig = serde_json::from_value(parse(key)?).map_err(|e| bad_config(&label(key), e))?;
        clips.push(ClipTextModel::new(&config.validate(Path::new(&label(key)))?, device));
    }
    let t5_key = if sd3 { "text_encoder_3" } else { "text_encoder_2" };
    let t5_config: T5Config = serde_json::from_value(parse(t5_key)?).map_err(|e| bad_config(&label(t5_key), e))?;
    let t5 = T5EncoderModel::new(&t5_config.validate(Path::new(&label(t5_key)))?, device);
    let denoiser = if sd3 {
        let c: Sd3TransformerConfig = serde_json::from_value(parse("transformer")?).map_err(|e| bad_config(&label("transformer"), e))?;
        c.validate(Path::new(&label("transformer")))?;
        Denoiser::Sd3(Box::new(Sd3Transformer2DModel::new(&c, device)))
    } else {
        let c: FluxTransformerConfig = serde_json::from_value(parse("transformer")?).map_err(|e| bad_config(&label("transformer"), e))?;
        c.validate(Path::new(&label("transformer")))?;
        Denoiser::Flux(Box::new(FluxTransformer2DModel::new(&c, device)))
    };
    let vae = AutoencoderKLConfig::from_json_str(get("vae")).and_then(|c| c.init(device)).map_err(|e| bad_config(&label("vae"), e))?;
    let scheduler = SchedulerConfig::from_json_str(get("scheduler"), &format!("preset {name}: scheduler_config.json"))?;

    // weights: the denoiser and T5 in --dtype, CLIP in f32, the VAE in --vae-dtype
    let size = |d: DType| d.size() as u64;
    let parts = [
        ("transformer", denoiser_params(&denoiser) as u64 * size(o.dtype)),
        ("T5", t5.num_params() as u64 * size(o.dtype)),
        ("CLIP", clips.iter().map(|c| c.num_params() as u64).sum::<u64>() * 4),
        ("VAE", vae.num_params() as u64 * size(o.vae_dtype)),
    ];
    let needed = parts.iter().map(|(_, b)| b).sum::<u64>() + (1 << 30);
    if *device == Device::flex()
        && let Some(available) = available_memory()
        && needed > available
    {
        let breakdown: Vec<String> = parts.iter().map(|(what, b)| format!("{what} {:.1}", gib(*b))).collect();
        return Err(PipelineError::Unsupported(format!(
            "preset {name} needs about {:.1} GiB (weights: {} GiB, transformer and T5 in {}; plus 1 GiB for activations) and this machine has {:.1} GiB available; \
             {}",
            gib(needed),
            breakdown.join(", "),
            dtype_name(o.dtype),
            gib(available),
            if o.dtype == DType::F32 { "try --dtype f16 or a smaller preset" } else { "try a smaller preset or a machine with more memory" }
        )));
    }
    let t5 = kiln_ops::cast_module(t5, o.dtype);
    let denoiser = match denoiser {
        Denoiser::Sd3(m) => Denoiser::Sd3(Box::new(kiln_ops::cast_module(*m, o.dtype))),
        Denoiser::Flux(m) => Denoiser::Flux(Box::new(kiln_ops::cast_module(*m, o.dtype))),
    };
    let vae = kiln_ops::cast_module(vae, o.vae_dtype);
    Ok(FlowComponents { name: format!("preset {name} (random weights)"), clips, t5: Some(t5), denoiser, vae, scheduler })
}

/// A flow model folder's parts (the pipeline's own loader); `None` for an SD-family folder.
pub(crate) fn folder_components(dir: &Path, o: &BenchOptions, device: &Device) -> Result<Option<FlowComponents>, PipelineError> {
    if dir.is_file() || !ModelFolder::open(dir, &ResolveOptions::default())?.kind.is_flow_matching() {
        return Ok(None);
    }
    let pipe = match Pipeline::load(dir, &LoadOptions::new(device).with_dtype(o.dtype))? {
        Pipeline::StableDiffusion(_) => return Ok(None),
        Pipeline::StableDiffusion3(p) => {
            let p = *p;
            let t5 = p.t5.map(|(_, te)| te);
            FlowComponents { name: String::new(), clips: vec![p.text_encoder, p.text_encoder_2], t5, denoiser: Denoiser::Sd3(Box::new(p.transformer)), vae: p.vae, scheduler: p.scheduler_config }
        }
        Pipeline::Flux(p) => {
            let p = *p;
            FlowComponents { name: String::new(), clips: vec![p.text_encoder], t5: Some(p.text_encoder_2), denoiser: Denoiser::Flux(Box::new(p.transformer)), vae: p.vae, scheduler: p.scheduler_config }
        }
    };
    let vae = kiln_ops::cast_module(pipe.vae, o.vae_dtype);
    Ok(Some(FlowComponents { name: dir.display().to_string(), vae, ..pipe }))
}

fn denoiser_params(d: &Denoiser) -> usize {
    match d {
        Denoiser::Sd3(m) => m.num_params(),
        Denoiser::Flux(m) => m.num_params(),
    }
}

/// The benchmark of a flow model: text encode (prompt and negative prompt), one denoiser step,
/// VAE decode, a whole run of `steps` FlowMatchEuler steps.
pub(crate) fn run_flow_bench(o: &BenchOptions, c: FlowComponents, load_seconds: f64, device: &Device, device_name: &str) -> Result<BenchReport, PipelineError> {
    let mut memory = PeakMemory::new(device);
    let mut generator = TorchGenerator::new(o.seed);
    let f = c.vae.downsample_factor();
    let randn = |g: &mut TorchGenerator, shape: Vec<usize>| Tensor::<3>::from_data(TensorData::new(g.randn(&shape), shape), device);
    let (sd3, t5_len) = match &c.denoiser {
        Denoiser::Sd3(_) => (true, 256),
        Denoiser::Flux(_) => (false, 512),
    };
    // token ids: 77 for CLIP, the pipeline's default T5 length
    let ids = |len: usize, vocab: usize| -> Vec<Vec<u32>> { (0..2).map(|i| (0..len).map(|j| ((i * 7919 + j * 104_729) % vocab) as u32).collect()).collect() };
    let clip_ids = ids(77, 49_000);
    let t5_ids = c.t5.as_ref().map(|t| ids(t5_len, t.vocab_size().min(32_000)));
    let joint_dim = match &c.denoiser {
        Denoiser::Sd3(m) => m.context_embedder.weight.dims()[1],
        Denoiser::Flux(m) => m.context_embedder.weight.dims()[1],
    };
    // the conditioning of 2 prompts as the pipeline builds it (values do not change the timing)
    let encode = || -> Result<(Tensor<3>, Tensor<2>), PipelineError> {
        let mut pooled = Vec::new();
        let mut hidden = Vec::new();
        for te in &c.clips {
            let out = te.encode(&clip_ids, device)?;
            pooled.push(out.text_embeds.unwrap_or(out.pooler_output));
            hidden.push(out.hidden_states[out.hidden_states.len() - 2].clone());
        }
        let t5 = match (&c.t5, &t5_ids) {
            (Some(t5), Some(ids)) => t5.encode(ids, device)?.cast(DType::F32),
            _ => Tensor::zeros([2, t5_len, joint_dim], device),
        };
        if !sd3 {
            return Ok((t5, pooled.remove(0)));
        }
        let clip = Tensor::cat(hidden, 2);
        let [b, s, w] = clip.dims();
        let clip = if w <= joint_dim { Tensor::cat(vec![clip, Tensor::zeros([b, s, joint_dim - w], device)], 2) } else { clip.narrow(2, 0, joint_dim) };
        Ok((Tensor::cat(vec![clip, t5], 1), Tensor::cat(pooled, 1)))
    };
    let text_encode = time("text encode", o.iters, device, &mut memory, encode)?;
    let (context, pooled) = encode()?;

    let (lh, lw) = (o.height / f, o.width / f);
    let batch = o.batch;
    // SD 3: CFG batch [2b, c, h, w]; FLUX: b packed sequences of (h/2)(w/2) tokens
    let step_fn = |x: &Tensor<3>, t: f64, b: usize, context: &Tensor<3>, pooled: &Tensor<2>| -> Result<Tensor<3>, PipelineError> {
        match &c.denoiser {
            Denoiser::Sd3(m) => {
                let [_, ch, hw] = x.dims();
                let x4 = x.clone().reshape([b, ch, lh, hw / lh]);
                Ok(m.forward(x4, context.clone(), pooled.clone(), &vec![t; b], &[])?.reshape([b, ch, hw]))
            }
            Denoiser::Flux(m) => {
                let img_ids = latent_image_ids(lh / 2, lw / 2);
                let txt_ids = vec![[0f32; 3]; context.dims()[1]];
                let guidance = m.has_guidance_embeds().then(|| vec![3.5; b]);
                Ok(m.forward(x.clone(), context.clone(), pooled.clone(), &vec![t / 1000.0; b], &img_ids, &txt_ids, guidance.as_deref())?)
            }
        }
    };
    let (in_ch, cfg) = match &c.denoiser {
        Denoiser::Sd3(m) => (m.in_channels, 2),
        Denoiser::Flux(m) => (m.x_embedder.weight.dims()[1], 1),
    };
    let rows = cfg * batch;
    let select = |t: &Tensor<3>| if rows <= 2 { t.clone().narrow(0, 2 - rows, rows) } else { t.clone().narrow(0, 0, 1).repeat_dim(0, rows) };
    let (step_context, step_pooled) = (select(&context), {
        let p = pooled.clone();
        if rows <= 2 { p.narrow(0, 2 - rows, rows) } else { p.narrow(0, 0, 1).repeat_dim(0, rows) }
    });
    let x = if sd3 { randn(&mut generator, vec![rows, in_ch, lh * lw]) } else { randn(&mut generator, vec![rows, (lh / 2) * (lw / 2), in_ch]) };
    let denoiser_step = time("denoiser step", o.iters, device, &mut memory, || step_fn(&x, 1000.0, rows, &step_context, &step_pooled))?;

    let latents = Tensor::<4>::from_data(TensorData::new(generator.randn(&[batch, c.vae.config.latent_channels, lh, lw]), [batch, c.vae.config.latent_channels, lh, lw]), device);
    let vae_decode = time("VAE decode", o.iters, device, &mut memory, || Ok(c.vae.decode(latents.clone())?))?;

    let end_to_end = time("end to end", o.iters.min(2), device, &mut memory, || {
        let seq = (lh / 2) * (lw / 2);
        let options = if sd3 {
            let mu = uses_dynamic_shifting(&c.scheduler).then(|| calculate_shift(seq, &c.scheduler, 1.16));
            StepOptions { mu, ..StepOptions::default() }
        } else {
            let sigmas = kiln_scheduler::float::np_linspace(1.0, 1.0 / o.steps as f64, o.steps);
            StepOptions { mu: Some(calculate_shift(seq, &c.scheduler, 1.15)), sigmas: Some(sigmas), ..StepOptions::default() }
        };
        // the model's own FlowMatchEulerDiscreteScheduler
        let mut scheduler = SamplerChoice::default().build(&c.scheduler, o.steps, &options)?;
        let (context, pooled) = encode()?;
        let (context, pooled) = (select(&context), if rows <= 2 { pooled.narrow(0, 2 - rows, rows) } else { pooled.narrow(0, 0, 1).repeat_dim(0, rows) });
        let mut g = TorchGenerator::new(o.seed);
        let shape = if sd3 { vec![batch, in_ch, lh * lw] } else { vec![batch, seq, in_ch] };
        let mut x = randn(&mut g, shape);
        for (i, &t) in scheduler.timesteps().to_vec().iter().enumerate() {
            let input = if sd3 { Tensor::cat(vec![x.clone(), x.clone()], 0) } else { x.clone() };
            let pred = step_fn(&input, t, rows, &context, &pooled)?;
            let pred = if sd3 {
                let (uncond, text) = (pred.clone().narrow(0, 0, batch), pred.narrow(0, batch, batch));
                uncond.clone() + (text - uncond).mul_scalar(7.0)
            } else {
                pred
            };
            let [b, s2, s3] = x.dims();
            x = scheduler.step(pred.cast(DType::F32).reshape([b, s2, s3, 1]), i, x.reshape([b, s2, s3, 1]), &mut g).reshape([b, s2, s3]);
        }
        let z = if sd3 { x.reshape([batch, in_ch, lh, lw]) } else { kiln_pipeline::flux::unpack_latents(x, lh, lw) };
        let z = z.div_scalar(c.vae.scaling_factor()).add_scalar(c.vae.shift_factor().unwrap_or(0.0));
        Ok(c.vae.decode(z)?)
    })?;
    sync(device)?;
    let parameters = denoiser_params(&c.denoiser);
    let denoiser = if sd3 { "MMDiT (SD 3)" } else { "FLUX transformer" };
    Ok(report(o, c.name, device, device_name, load_seconds, [text_encode, denoiser_step, vae_decode, end_to_end], &memory, parameters, denoiser, None))
}

/// [`run_flow_bench`] for a preset or a flow folder; `None` for an SD-family folder.
pub(crate) fn run(o: &BenchOptions, device: &Device, device_name: &str) -> Result<Option<BenchReport>, PipelineError> {
    let loading = Instant::now();
    let components = match &o.model {
        BenchModel::Preset(name) if is_flow_preset(o) => preset_components(name, o, device)?,
        BenchModel::Folder(dir) => match folder_components(dir, o, device)? {
            Some(c) => c,
            None => return Ok(None),
        },
        BenchModel::Preset(_) => return Ok(None),
    };
    sync(device)?;
    let load_seconds = loading.elapsed().as_secs_f64();
    run_flow_bench(o, components, load_seconds, device, device_name).map(Some)
}
