//! The targets: every parser of bytes that come from outside kiln, called as kiln calls it.
//! Each returns whether the input was accepted; an error is the right answer to bad input, a
//! panic, hang or huge allocation is a finding.

use std::path::Path;

use burn::tensor::Device;
use kiln_pipeline::image_processor::{decode_image, image_size, pil_grayscale};
use kiln_pipeline::model::{cached_snapshot, check_model_index, valid_revision, HubId, ModelSource};
use kiln_pipeline::png::{parse_infotext, read_png_texts, GenerationParams};
use kiln_scheduler::{SamplerChoice, SamplerName, SchedulerClass, SchedulerConfig, StepOptions};
use kiln_text_encoder::t5::{T5Config, T5EncoderModel, T5Tokenizer};
use kiln_text_encoder::{ClipTextConfig, ClipTextModel, ClipTokenizer};
use kiln_transformer::{FluxTransformer2DModel, FluxTransformerConfig, Sd3Transformer2DModel, Sd3TransformerConfig};
use kiln_unet::UNet2DConditionConfig;
use kiln_vae::AutoencoderKLConfig;

use crate::engine::{Outcome, Scratch, Target};

fn accepted(ok: bool) -> Outcome {
    if ok { Outcome::Accepted } else { Outcome::Refused }
}

/// Every target, by name.
pub const TARGETS: &[Target] = &[
    Target { name: "safetensors_header", run: safetensors_header },
    Target { name: "torch_checkpoint", run: torch_checkpoint },
    Target { name: "single_file_keys", run: single_file_keys },
    Target { name: "png_text", run: png_text },
    Target { name: "infotext", run: infotext },
    Target { name: "a1111_prompt", run: a1111_prompt },
    Target { name: "model_index", run: model_index },
    Target { name: "unet_config", run: unet_config },
    Target { name: "vae_config", run: vae_config },
    Target { name: "clip_config", run: clip_config },
    Target { name: "scheduler_config", run: scheduler_config },
    Target { name: "tokenizer", run: tokenizer },
    Target { name: "t5_config", run: t5_config },
    Target { name: "t5_tokenizer", run: t5_tokenizer },
    Target { name: "transformer_config", run: transformer_config },
    Target { name: "sharded_index", run: sharded_index },
    Target { name: "lora_file", run: lora_file },
    Target { name: "hub_id", run: hub_id },
    Target { name: "image", run: image },
    Target { name: "serve_request", run: serve_request },
];

/// `kiln_nn::read_safetensors_header`, which every weights file passes before it loads.
fn safetensors_header(input: &[u8], s: &Scratch) -> Outcome {
    let path = s.file("w.safetensors", input);
    accepted(kiln_nn::read_safetensors_header(&path).is_ok())
}

/// A PyTorch checkpoint (`kiln info x.ckpt`): the zip directory, the pickle run by kiln's
/// restricted interpreter, then the bytes of every tensor of at most 1 MiB.
fn torch_checkpoint(input: &[u8], s: &Scratch) -> Outcome {
    let path = s.file("x.ckpt", input);
    match kiln_nn::read_torch_checkpoint(&path) {
        Ok(ckpt) => {
            for t in ckpt.tensors.iter().filter(|t| t.numel <= 1 << 17) {
                let _ = ckpt.tensor_bytes(t);
            }
            Outcome::Accepted
        }
        Err(_) => Outcome::Refused,
    }
}

/// A single-file checkpoint's keys and shapes (one `name d0 d1 …` a line, what a safetensors
/// header or a checkpoint's pickle gives): the family detection, then every key through the
/// UNet, VAE and text-encoder maps and their transforms' shapes, as `SingleFile` runs them.
fn single_file_keys(input: &[u8], _: &Scratch) -> Outcome {
    use kiln_pipeline::single_file::{clip, detect, unet, vae, ClipLayout, ClipShape};
    let text = String::from_utf8_lossy(input);
    let mut keys: Vec<(String, Vec<u64>)> = Vec::new();
    for line in text.lines() {
        let mut parts = line.split(' ');
        let name = parts.next().unwrap_or_default().to_string();
        keys.push((name, parts.filter_map(|d| d.parse().ok()).collect()));
    }
    let map: std::collections::HashMap<&str, &[u64]> = keys.iter().map(|(k, s)| (k.as_str(), s.as_slice())).collect();
    let ok = detect::detect(&map).is_ok();
    for (key, shape) in &keys {
        for lpb in [1, 2, 3] {
            let _ = key.strip_prefix(unet::PREFIX).and_then(|k| unet::diffusers_key(k, lpb));
        }
        if let Some((_, t)) = vae::PREFIXES.iter().find_map(|p| key.strip_prefix(p)).and_then(|k| vae::diffusers_key(k, 4)) {
            let _ = t.shape(shape);
        }
        for (prefix, layout, _) in clip::PREFIXES {
            let Some(k) = key.strip_prefix(prefix) else { continue };
            for shape_of in [ClipShape { layers: 12, projection: false }, ClipShape { layers: 32, projection: true }] {
                if let Some(clip::Mapped::To(targets)) = clip::diffusers_keys(k, layout, shape_of) {
                    for (_, t) in targets {
                        let _ = t.shape(shape);
                    }
                }
            }
            let _ = layout == ClipLayout::OpenClip;
        }
    }
    accepted(ok)
}

/// A PNG's text chunks (`kiln info x.png`), then A1111's parameters in each.
fn png_text(input: &[u8], s: &Scratch) -> Outcome {
    let path = s.file("x.png", input);
    let mut ok = false;
    for want in [Some("parameters"), None] {
        if let Ok(texts) = read_png_texts(&path, want) {
            ok = true;
            for (_, text) in texts {
                let _ = parse_infotext(&text);
                let _ = GenerationParams::parse(&text);
            }
        }
    }
    accepted(ok)
}

/// An A1111 prompt (`--prompt-syntax a1111`): its `<lora:…>` tags taken out, then the attention
/// parser.
fn a1111_prompt(input: &[u8], _: &Scratch) -> Outcome {
    let text = String::from_utf8_lossy(input);
    let tags = kiln_pipeline::prompt::extract_extra_networks(&text);
    let parsed = kiln_pipeline::prompt::parser::parse_prompt_attention(tags.as_ref().map_or(&*text, |(t, _)| t.as_str()));
    accepted(tags.is_ok() && parsed.is_ok())
}

/// The A1111 `parameters` text (infotext) parser alone.
fn infotext(input: &[u8], _: &Scratch) -> Outcome {
    let text = String::from_utf8_lossy(input);
    let _ = parse_infotext(&text);
    accepted(GenerationParams::parse(&text).is_ok())
}

fn model_index(input: &[u8], _: &Scratch) -> Outcome {
    accepted(check_model_index(&String::from_utf8_lossy(input), "model_index.json").is_ok())
}

/// A UNet config, then the model built from it (weights stay lazy: nothing is allocated).
fn unet_config(input: &[u8], _: &Scratch) -> Outcome {
    match UNet2DConditionConfig::from_json_str(&String::from_utf8_lossy(input)) {
        Ok(c) => {
            let _ = c.init(&Device::flex());
            Outcome::Accepted
        }
        Err(_) => Outcome::Refused,
    }
}

fn vae_config(input: &[u8], _: &Scratch) -> Outcome {
    match AutoencoderKLConfig::from_json_str(&String::from_utf8_lossy(input)) {
        Ok(c) => {
            let _ = c.tile_latent_min_size();
            let _ = c.init(&Device::flex());
            Outcome::Accepted
        }
        Err(_) => Outcome::Refused,
    }
}

fn clip_config(input: &[u8], _: &Scratch) -> Outcome {
    let Ok(config) = serde_json::from_slice::<ClipTextConfig>(input) else { return Outcome::Refused };
    match config.validate(Path::new("config.json")) {
        Ok(resolved) => {
            let _ = ClipTextModel::new(&resolved, &Device::flex());
            Outcome::Accepted
        }
        Err(_) => Outcome::Refused,
    }
}

/// A T5 config, then the encoder built from it (lazily: nothing is allocated).
fn t5_config(input: &[u8], _: &Scratch) -> Outcome {
    let Ok(config) = serde_json::from_slice::<T5Config>(input) else { return Outcome::Refused };
    match config.validate(Path::new("config.json")) {
        Ok(resolved) => {
            let _ = T5EncoderModel::new(&resolved, &Device::flex());
            Outcome::Accepted
        }
        Err(_) => Outcome::Refused,
    }
}

/// An SD 3 or FLUX transformer config (by its `_class_name`; SD 3's without one), then the model
/// built from it (lazily).
fn transformer_config(input: &[u8], _: &Scratch) -> Outcome {
    let flux = input.windows(22).any(|w| w == b"FluxTransformer2DModel");
    let device = Device::flex();
    let ok = if flux {
        match serde_json::from_slice::<FluxTransformerConfig>(input) {
            Ok(c) if c.validate(Path::new("config.json")).is_ok() => {
                let _ = FluxTransformer2DModel::new(&c, &device);
                true
            }
            _ => false,
        }
    } else {
        match serde_json::from_slice::<Sd3TransformerConfig>(input) {
            Ok(c) if c.validate(Path::new("config.json")).is_ok() => {
                let _ = Sd3Transformer2DModel::new(&c, &device);
                true
            }
            _ => false,
        }
    };
    accepted(ok)
}

/// A T5 tokenizer folder: the input split at 0xFF bytes into `tokenizer.json` and
/// `tokenizer_config.json` (absent when there is no second part), the rest a prompt encoded at
/// 32 and 77 tokens.
fn t5_tokenizer(input: &[u8], s: &Scratch) -> Outcome {
    let parts: Vec<&[u8]> = input.splitn(3, |&b| b == 0xff).collect();
    let dir = s.dir.join("t5_tokenizer");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a tokenizer folder");
    std::fs::write(dir.join("tokenizer.json"), parts[0]).expect("tokenizer.json");
    if let Some(config) = parts.get(1) {
        std::fs::write(dir.join("tokenizer_config.json"), config).expect("tokenizer_config.json");
    }
    match T5Tokenizer::from_dir(&dir) {
        Ok(t) => {
            let prompt = String::from_utf8_lossy(parts.get(2).copied().unwrap_or(b"a cat"));
            for len in [32, 77] {
                let _ = t.encode(&prompt, len);
            }
            Outcome::Accepted
        }
        Err(_) => Outcome::Refused,
    }
}

/// A sharded checkpoint's index (`*.safetensors.index.json`) beside two small shards, opened and
/// every tensor it lists read.
fn sharded_index(input: &[u8], s: &Scratch) -> Outcome {
    // shard 1 holds `a`, shard 2 holds `b` and `c` (f32 [3], 12 bytes each)
    fn shard(names: &[&str]) -> Vec<u8> {
        let mut header = serde_json::Map::new();
        for (i, name) in names.iter().enumerate() {
            header.insert(name.to_string(), serde_json::json!({"dtype": "F32", "shape": [3], "data_offsets": [12 * i, 12 * (i + 1)]}));
        }
        let mut out = kiln_nn::header_bytes(&header);
        out.extend(std::iter::repeat_n(0u8, 12 * names.len()));
        out
    }
    let dir = s.dir.join("sharded");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a shard folder");
    std::fs::write(dir.join("w-00001-of-00002.safetensors"), shard(&["a"])).expect("shard 1");
    std::fs::write(dir.join("w-00002-of-00002.safetensors"), shard(&["b", "c"])).expect("shard 2");
    let index = dir.join("w.safetensors.index.json");
    std::fs::write(&index, input).expect("the index");
    match kiln_nn::WeightsFile::open(&index) {
        Ok(w) => {
            for t in w.tensors().to_vec() {
                let _ = w.read(&t.name);
            }
            Outcome::Accepted
        }
        Err(_) => Outcome::Refused,
    }
}

/// A LoRA file (`--lora`), loaded into a tiny model and taken out again: the first byte picks
/// the SD 1.x fixture (even) or the FLUX.1-dev one (odd), the rest is the file. Reading its keys,
/// alphas and diffusers' metadata, matching every module (kohya, PEFT, LyCORIS, kohya's FLUX
/// names), checking the factors' shapes and merging them.
fn lora_file(input: &[u8], s: &Scratch) -> Outcome {
    use kiln_pipeline::{LoadOptions, Pipeline};
    use std::sync::Mutex;
    static PIPES: std::sync::OnceLock<[Mutex<Pipeline>; 2]> = std::sync::OnceLock::new();
    let pipes = PIPES.get_or_init(|| {
        let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/fixtures/models");
        let load = |name: &str| Mutex::new(Pipeline::load(&models.join(name), &LoadOptions::new(&Device::flex())).expect("a fixture model"));
        [load("sd1"), load("flux-dev")]
    });
    // (the models load on the first call, the engine's warm-up on the empty input)
    let Some((which, file)) = input.split_first() else { return Outcome::Refused };
    let path = s.dir.join("lora.safetensors");
    std::fs::write(&path, file).expect("the LoRA file");
    let mut pipe = pipes[usize::from(which % 2)].lock().unwrap_or_else(|e| e.into_inner());
    let ok = pipe.load_lora(&path, 0.5).is_ok();
    pipe.unload_loras();
    accepted(ok)
}

/// A scheduler config, built as every class and through every sampler name (with and without
/// Karras sigmas) for a few step counts: the schedules are host math on the config's numbers.
fn scheduler_config(input: &[u8], _: &Scratch) -> Outcome {
    let Ok(config) = SchedulerConfig::from_json_str(&String::from_utf8_lossy(input), "scheduler_config.json") else { return Outcome::Refused };
    let steps = [1, 2, 7, 25][input.len() % 4];
    let options = StepOptions::default();
    let mut ok = false;
    for class in SchedulerClass::ALL {
        ok |= class.build(&config, steps, &options).is_ok();
    }
    for &(_, sampler) in SamplerName::ALL {
        for karras in [false, true] {
            let _ = SamplerChoice { sampler: Some(sampler), karras }.build(&config, steps, &options);
        }
    }
    let _ = SamplerChoice { sampler: None, karras: false }.build(&config, steps, &options);
    accepted(ok)
}

/// A tokenizer folder: the input split at 0xFF bytes into `tokenizer_config.json`,
/// `special_tokens_map.json`, `vocab.json` and `merges.txt` (a tiny valid vocabulary where a
/// part is missing), then a prompt encoded with it.
fn tokenizer(input: &[u8], s: &Scratch) -> Outcome {
    const VOCAB: &str = r#"{"!": 0, "a</w>": 1, "c": 2, "at</w>": 3, "<|startoftext|>": 4, "<|endoftext|>": 5, "ca": 6, "cat</w>": 7, "a": 8, "t</w>": 9}"#;
    const MERGES: &str = "#version: 0.2\nc a\nca t</w>\na t</w>\n";
    let parts: Vec<&[u8]> = input.split(|&b| b == 0xff).collect();
    let part = |i: usize, default: &str| -> Vec<u8> { parts.get(i).map(|p| p.to_vec()).unwrap_or_else(|| default.as_bytes().to_vec()) };
    let dir = s.dir.join("tokenizer");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a tokenizer folder");
    for (name, bytes) in [
        ("tokenizer_config.json", part(0, "{}")),
        ("special_tokens_map.json", part(1, "{}")),
        ("vocab.json", part(2, VOCAB)),
        ("merges.txt", part(3, MERGES)),
    ] {
        std::fs::write(dir.join(name), bytes).expect("tokenizer files");
    }
    match ClipTokenizer::from_dir(&dir) {
        Ok(t) => {
            let _ = t.encode("a cat");
            let _ = t.encode(&String::from_utf8_lossy(parts.last().copied().unwrap_or_default()));
            Outcome::Accepted
        }
        Err(_) => Outcome::Refused,
    }
}

/// `--model` as a Hub id: parsing, the revision check, and reading the cache, whose `refs/`
/// file holds the input's last line. A snapshot found must lie inside the cache.
fn hub_id(input: &[u8], s: &Scratch) -> Outcome {
    let text = String::from_utf8_lossy(input);
    let (spec, ref_content) = text.split_once('\n').unwrap_or((&text, "0123456789abcdef0123456789abcdef01234567"));
    let _ = ModelSource::parse(spec);
    let _ = valid_revision(spec);
    let Some(id) = HubId::parse(spec) else { return Outcome::Refused };
    let cache = s.dir.join("hub");
    let _ = std::fs::remove_dir_all(&cache);
    let repo = cache.join(id.cache_folder());
    let _ = std::fs::create_dir_all(repo.join("refs"));
    let _ = std::fs::create_dir_all(repo.join("snapshots/0123456789abcdef0123456789abcdef01234567"));
    if valid_revision(id.revision()) {
        let ref_file = repo.join("refs").join(id.revision());
        if let Some(parent) = ref_file.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let _ = std::fs::write(&ref_file, ref_content);
    }
    match cached_snapshot(&cache, &id, true) {
        Ok(snapshot) => {
            assert!(snapshot.starts_with(&cache) && !snapshot.components().any(|c| c == std::path::Component::ParentDir), "{snapshot:?} is outside the cache");
            Outcome::Accepted
        }
        Err(_) => Outcome::Refused,
    }
}

/// An init image or mask: its size from the header, then (when small) the decode and the
/// conversions the pipeline makes.
fn image(input: &[u8], s: &Scratch) -> Outcome {
    let path = s.file("init.png", input);
    match image_size(&path, "init image") {
        Ok((w, h)) if w * h <= 1 << 20 => match decode_image(&path, "init image") {
            Ok(img) => {
                let _ = img.to_rgb8();
                let _ = pil_grayscale(&img);
                Outcome::Accepted
            }
            Err(_) => Outcome::Refused,
        },
        Ok(_) => Outcome::Accepted,
        Err(_) => Outcome::Refused,
    }
}

/// `kiln serve`'s request bodies, read and checked as the routes read them, up to the job they
/// would queue: the first byte picks the route (`/v1/images/generations` and `/v1/jobs`,
/// `/sdapi/v1/txt2img`, `/sdapi/v1/img2img` with its base64 images), the rest is the body. One
/// served SD 1.x-like model; `--max-size 512` bounds what an image may decode to.
fn serve_request(input: &[u8], _: &Scratch) -> Outcome {
    use kiln_server::api::a1111::parse_request;
    use kiln_server::api::request::{body_params, to_request, Fields};
    use kiln_server::state::{AppState, ServedModel};
    static STATE: std::sync::OnceLock<AppState> = std::sync::OnceLock::new();
    let state = STATE.get_or_init(|| {
        let config = kiln_server::ServeConfig { max_size: 512, ..kiln_server::ServeConfig::default() };
        let model = ServedModel { name: "m".into(), source: "m".into(), kind: kiln_pipeline::PipelineKind::StableDiffusion, default_size: (64, 64), a1111_chunks: true };
        AppState::with_models(config, vec![model])
    });
    let Some((route, body)) = input.split_first() else { return Outcome::Refused };
    let ok = match route % 3 {
        0 => Fields::parse(body).and_then(|f| body_params(state, &f)).and_then(|p| to_request(state, p)).is_ok(),
        1 => parse_request(state, body, false).is_ok(),
        _ => parse_request(state, body, true).is_ok(),
    };
    accepted(ok)
}
