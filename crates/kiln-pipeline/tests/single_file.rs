//! Single-file checkpoints against diffusers 0.42.1 (scripts/fixtures/single_file.py):
//!
//! * the tiny families (SD1, SD2 v-prediction, SDXL, 9-channel inpainting) as one LDM-layout file
//!   (built here from the folder by the script's manifest, every tensor checked against its
//!   CRC-32) draw the pictures diffusers' `from_single_file(file, config=folder)` drew, and the
//!   same pictures as the folder; a `.ckpt` written by torch.save (f16, `state_dict` with EMA
//!   bookkeeping) too;
//! * full-size key sets (SD 1.5, SD 2.1 768-v, SDXL base, SD 1.5 inpainting; shapes only, the
//!   data a hole in a sparse file): the family diffusers infers, and with the published configs
//!   every key maps to exactly diffusers' keys and shapes (0 unused, 0 missing);
//! * files that are not checkpoints, or half of one, fail saying what they look like.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use burn::tensor::{DType, Device};
use kiln_nn::{Transform, WeightsFile};
use kiln_pipeline::single_file::{Architecture, ClipShape, Family, SingleFile};
use kiln_pipeline::{PipelineError, StableDiffusion};
use serde_json::Value;

mod common;
use common::{case_inputs, case_task, max_levels, read_png, write_safetensors, TempDir};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixtures() -> PathBuf {
    root().join("assets/fixtures/single_file")
}

/// CRC-32 (IEEE 802.3, what Python's `zlib.crc32` computes).
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Builds `tiny_<family>.json`'s LDM file from the family's folder in `dir`, checking each
/// tensor's bytes against the script's CRC-32.
fn build_tiny(family: &str, dir: &Path) -> PathBuf {
    let manifest = json(&fixtures().join(format!("tiny_{family}.json")));
    let folder = root().join(manifest["folder"].as_str().unwrap());
    let files: HashMap<String, std::sync::Arc<WeightsFile>> = manifest["files"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(c, f)| (c.clone(), folder.join(f.as_str().unwrap())))
        .filter(|(_, path)| path.exists())
        .map(|(c, path)| (c, WeightsFile::open(&path).unwrap()))
        .collect();
    let mut tensors = Vec::new();
    for t in manifest["tensors"].as_array().unwrap() {
        let [name, dtype, shape, component, op, sources, crc] = t.as_array().unwrap().as_slice() else { panic!("{t}") };
        let file = &files[component.as_str().unwrap()];
        let sources: Vec<&str> = sources.as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
        let read = |k: &str| file.read(k).unwrap();
        let bytes = match op.as_str().unwrap() {
            "copy" | "unsqueeze" => read(sources[0]),
            "cat" => sources.iter().flat_map(|k| read(k)).collect(),
            "transpose" => {
                let s = &file.get(sources[0]).unwrap().shape;
                let (rows, cols, b) = (s[0] as usize, s[1] as usize, read(sources[0]));
                let size = b.len() / (rows * cols);
                let mut out = vec![0u8; b.len()];
                for r in 0..rows {
                    for c in 0..cols {
                        out[(c * rows + r) * size..][..size].copy_from_slice(&b[(r * cols + c) * size..][..size]);
                    }
                }
                out
            }
            other => panic!("op {other}"),
        };
        let name = name.as_str().unwrap().to_string();
        assert_eq!(crc32(&bytes), crc.as_u64().unwrap() as u32, "{name}: not the script's tensor");
        let shape: Vec<u64> = shape.as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect();
        tensors.push((name, dtype.as_str().unwrap(), shape, Some(bytes)));
    }
    let dtype_names: Vec<(String, &str, Vec<u64>, Option<Vec<u8>>)> = tensors;
    let path = dir.join(format!("{family}.safetensors"));
    write_safetensors(&path, &dtype_names);
    path
}

/// The pipeline case (cases.json) the script drew for `family`.
fn case(family: &str) -> Value {
    let first = match family {
        "sd1" => "case00-0.png",
        "sd2" => "case08-0.png",
        "sdxl" => "case11-0.png",
        "inpaint" => "case20-0.png",
        _ => unreachable!(),
    };
    let cases = json(&root().join("assets/fixtures/pipelines/cases.json"));
    cases["cases"].as_array().unwrap().iter().find(|c| c["images"][0] == first).unwrap().clone()
}

fn draw(pipe: &StableDiffusion, family: &str) -> image::RgbImage {
    let case = case(family);
    let (o, init, mask, strength) = case_inputs(&case, &root().join("assets/fixtures/pipelines"));
    pipe.generate(&o, case_task(&case, &init, &mask, strength), &mut |_, _| true).unwrap().remove(0)
}

#[test]
fn tiny_single_files_draw_what_diffusers_draws_from_them() {
    let device = Device::flex();
    let tmp = TempDir::new("single-file");
    for (family, detected) in [("sd1", Family::Sd1), ("sd2", Family::Sd2), ("sdxl", Family::SdxlBase), ("inpaint", Family::Sd1Inpaint)] {
        let path = build_tiny(family, &tmp.0);
        let file = SingleFile::open(&path).unwrap();
        assert_eq!(file.detection.family, detected, "{family}: {:?}", file.detection);
        assert!(!file.detection.published, "{family}: the tiny layout is not a published one");
        let folder = root().join("assets/fixtures/models").join(family);
        let pipe = StableDiffusion::load_single_file(&file, &Architecture::from_folder(&folder).unwrap(), None, &device, DType::F32).unwrap();
        let image = draw(&pipe, family);
        let (_, _, want) = read_png(&fixtures().join(format!("{family}.png")));
        let worst = max_levels(image.as_raw(), &want);
        println!("{family}: {worst} levels from diffusers' from_single_file picture");
        assert!(worst <= 1, "{family}: {worst} levels from diffusers' from_single_file picture");
        let from_folder = draw(&StableDiffusion::load(&folder, &kiln_pipeline::LoadOptions::new(&device)).unwrap(), family);
        assert_eq!(image.as_raw(), from_folder.as_raw(), "{family}: the file and the folder hold the same weights");
    }
}

#[test]
fn a_torch_ckpt_with_state_dict_and_ema_draws_what_diffusers_draws() {
    let device = Device::flex();
    let file = SingleFile::open(&fixtures().join("sd1.ckpt")).unwrap();
    assert_eq!(file.root, "state_dict.");
    assert_eq!((file.ema_tensors, file.other_keys.clone()), (2, vec!["model_ema.decay".to_string(), "model_ema.num_updates".to_string()]));
    let arch = Architecture::from_folder(&root().join("assets/fixtures/models/sd1")).unwrap();
    let pipe = StableDiffusion::load_single_file(&file, &arch, None, &device, DType::F32).unwrap();
    let (_, _, want) = read_png(&fixtures().join("sd1-ckpt.png"));
    let worst = max_levels(draw(&pipe, "sd1").as_raw(), &want);
    assert!(worst <= 1, "{worst} levels from diffusers' from_single_file picture of the .ckpt");
}

/// One full-size key set: a sparse file with its shapes, detection, and the maps with the
/// published configs against diffusers' keys.
fn check_full(name: &str, tmp: &Path) {
    let record = json(&fixtures().join(format!("keys_{name}.json")));
    let tensors: Vec<(String, &str, Vec<u64>, Option<Vec<u8>>)> = record["ldm"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let dtype = match t[2].as_str().unwrap() {
                "F16" => "F16",
                "F32" => "F32",
                "I64" => "I64",
                "I32" => "I32",
                d => panic!("{d}"),
            };
            (t[0].as_str().unwrap().to_string(), dtype, t[1].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect(), None)
        })
        .collect();
    let path = tmp.join(format!("{name}.safetensors"));
    write_safetensors(&path, &tensors);
    let file = SingleFile::open(&path).unwrap();
    assert_eq!(file.detection.family.diffusers_type(), record["diffusers_model_type"], "{name}: {:?}", file.detection);
    assert!(file.detection.published, "{name}: {:?}", file.detection);
    let arch = Architecture::published(file.detection.family, &path).unwrap();
    let unet: Value = serde_json::from_str(&arch.unet.text).unwrap();
    let vae: Value = serde_json::from_str(&arch.vae.text).unwrap();
    let mut plans = vec![
        ("unet", file.unet(unet["layers_per_block"].as_u64().unwrap() as usize).unwrap()),
        ("vae", file.vae(vae["up_block_types"].as_array().unwrap().len()).unwrap().unwrap()),
    ];
    for (component, config) in [("text_encoder", Some(&arch.text_encoder)), ("text_encoder_2", arch.text_encoder_2.as_ref())] {
        let Some(config) = config else { continue };
        let c: Value = serde_json::from_str(&config.text).unwrap();
        let shape = ClipShape {
            layers: c["num_hidden_layers"].as_u64().unwrap() as usize,
            projection: c["architectures"][0] == "CLIPTextModelWithProjection",
        };
        plans.push((component, file.text_encoder(component, shape).unwrap().unwrap()));
    }
    let want = record["diffusers"].as_object().unwrap();
    assert_eq!(plans.len(), want.len(), "{name}: components");
    for (component, plan) in plans {
        let got: BTreeMap<String, Vec<u64>> = plan
            .weights
            .iter()
            .filter(|w| !w.name.ends_with("position_ids"))
            .map(|w| (w.name.clone(), w.transform.shape(&plan.file.get(&w.key).unwrap().shape).unwrap()))
            .collect();
        let expected: BTreeMap<String, Vec<u64>> = want[component]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| (k[0].as_str().unwrap().to_string(), k[1].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect()))
            .collect();
        let missing: Vec<_> = expected.keys().filter(|k| !got.contains_key(*k)).collect();
        let extra: Vec<_> = got.keys().filter(|k| !expected.contains_key(*k)).collect();
        assert!(missing.is_empty() && extra.is_empty(), "{name} {component}: missing {missing:?}, not diffusers' {extra:?}");
        for (k, shape) in &expected {
            assert_eq!(&got[k], shape, "{name} {component}: {k}");
        }
        println!("{name} {component}: {} tensors map to diffusers' keys and shapes", got.len());
        // the transforms: SD 2 / SDXL OpenCLIP split and transposed, the VAE's 1×1 convolutions squeezed
        if component == "vae" {
            assert!(plan.weights.iter().any(|w| w.transform == Transform::Squeeze));
        }
    }
    // the keys no component uses: schedule buffers and EMA bookkeeping only
    assert!(file.other_keys.iter().all(|k| k.starts_with("model_ema.") || !k.contains('.')), "{name}: {:?}", file.other_keys);
}

#[test]
fn full_size_key_sets_are_detected_and_map_to_diffusers_keys() {
    let tmp = TempDir::new("single-file-full");
    for name in ["sd15", "sd21", "sdxl", "sd15-inpaint"] {
        check_full(name, &tmp.0);
    }
}

#[test]
fn files_that_are_not_checkpoints_say_what_they_look_like() {
    let tmp = TempDir::new("single-file-bad");
    let f16 = |name: &str, shape: &[u64]| (name.to_string(), "F16", shape.to_vec(), None::<Vec<u8>>);
    let cases: Vec<(&str, Vec<(String, &str, Vec<u64>, Option<Vec<u8>>)>, &str)> = vec![
        (
            "lora",
            vec![f16("lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight", &[4, 320]), f16("lora_unet_down_blocks_0_attentions_0_proj_in.alpha", &[])],
            "looks like a LoRA",
        ),
        ("embedding", vec![f16("emb_params", &[2, 768])], "textual-inversion embedding"),
        ("vae", vec![f16("encoder.down.0.block.0.conv1.weight", &[128, 128, 3, 3]), f16("decoder.up.0.block.0.conv1.weight", &[128, 128, 3, 3])], "a VAE alone"),
        ("unet-folder", vec![f16("conv_in.weight", &[320, 4, 3, 3]), f16("down_blocks.0.resnets.0.conv1.weight", &[320, 320, 3, 3])], "one component of a diffusers folder"),
        ("flux", vec![f16("double_blocks.0.img_attn.qkv.weight", &[9216, 3072])], "FLUX"),
        ("empty", vec![], "no tensors"),
        ("refiner", vec![f16("model.diffusion_model.input_blocks.0.0.weight", &[384, 4, 3, 3]), f16("conditioner.embedders.0.model.transformer.resblocks.9.mlp.c_proj.bias", &[1280])], "SDXL refiner checkpoints are detected but kiln does not run the SDXL refiner"),
    ];
    for (name, tensors, says) in cases {
        let path = tmp.0.join(format!("{name}.safetensors"));
        write_safetensors(&path, &tensors);
        let err = match SingleFile::open(&path) {
            Err(e) => e.to_string(),
            Ok(file) => Architecture::published(file.detection.family, &path).err().map(|e| e.to_string()).unwrap_or_default(),
        };
        assert!(err.contains(says) && err.contains(&path.display().to_string()), "{name}: {err}");
    }
    // half a checkpoint: a UNet without its VAE or text encoder
    let path = tmp.0.join("half.safetensors");
    let half = build_tiny("sd1", &tmp.0);
    let file = WeightsFile::open(&half).unwrap();
    let unet_only: Vec<(String, &str, Vec<u64>, Option<Vec<u8>>)> = file
        .tensors()
        .iter()
        .filter(|t| t.name.starts_with("model.diffusion_model.") || t.name.starts_with("cond_stage_model."))
        .map(|t| (t.name.clone(), "F16", t.shape.clone(), Some(file.read(&t.name).unwrap())))
        .collect();
    write_safetensors(&path, &unet_only);
    let file = SingleFile::open(&path).unwrap();
    let arch = Architecture::from_folder(&root().join("assets/fixtures/models/sd1")).unwrap();
    let err = StableDiffusion::load_single_file(&file, &arch, None, &Device::flex(), DType::F32).err().unwrap();
    assert!(matches!(err, PipelineError::SingleFile(_)) && err.to_string().contains("half a checkpoint: it has no VAE"), "{err}");
    // with a VAE folder (`--vae`) it loads, and draws the whole file's picture (the same VAE)
    let vae = root().join("assets/fixtures/models/sd1/vae");
    let pipe = StableDiffusion::load_single_file(&file, &arch, Some(&vae), &Device::flex(), DType::F32).unwrap();
    let (_, _, want) = read_png(&fixtures().join("sd1.png"));
    assert!(max_levels(draw(&pipe, "sd1").as_raw(), &want) <= 1);
    // and the published SD 1.5 architecture on the tiny file: the tensors that do not fit, named
    let tiny = SingleFile::open(&half).unwrap();
    let err = StableDiffusion::load_single_file(&tiny, &Architecture::published(Family::Sd1, &half).unwrap(), None, &Device::flex(), DType::F32).err().unwrap().to_string();
    assert!(err.contains(&half.display().to_string()), "{err}");
}

/// The tensors of a diffusers component file: name (transformers' `text_model.` prefix as the
/// single file has it) → (dtype, shape, bytes), without the `position_ids` buffer.
fn tensors_of(path: &Path) -> BTreeMap<String, (String, Vec<u64>, Vec<u8>)> {
    let file = WeightsFile::open(path).unwrap();
    file.tensors()
        .iter()
        .filter(|t| !t.name.ends_with("position_ids"))
        .map(|t| {
            let name = if path.to_string_lossy().contains("text_encoder") && !t.name.starts_with("text_model.") && !t.name.starts_with("text_projection") {
                format!("text_model.{}", t.name)
            } else {
                t.name.clone()
            };
            (name, (t.dtype.clone(), t.shape.clone(), file.read(&t.name).unwrap()))
        })
        .collect()
}

#[test]
fn convert_writes_the_folder_diffusers_wrote() {
    use kiln_pipeline::single_file::convert::{convert, ConvertOptions};
    let tmp = TempDir::new("single-file-convert");
    for family in ["sd1", "sd2", "sdxl", "inpaint"] {
        let path = build_tiny(family, &tmp.0);
        let folder = root().join("assets/fixtures/models").join(family);
        let out = tmp.0.join(format!("{family}-diffusers"));
        let file = SingleFile::open(&path).unwrap();
        let arch = Architecture::from_folder(&folder).unwrap();
        let written = convert(&file, &arch, &out, ConvertOptions::default(), &|| true).unwrap();
        let components: &[&str] = if family == "sdxl" { &["unet", "vae", "text_encoder", "text_encoder_2"] } else { &["unet", "vae", "text_encoder"] };
        for c in components {
            let name = if c.starts_with("text_encoder") { "model.safetensors" } else { "diffusion_pytorch_model.safetensors" };
            let (got, want) = (tensors_of(&out.join(c).join(name)), tensors_of(&folder.join(c).join(name)));
            assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "{family} {c}: tensor names");
            for (k, v) in &want {
                assert!(got[k] == *v, "{family} {c}: `{k}` differs from the folder's");
            }
            for f in ["config.json"] {
                let (a, b) = (json(&out.join(c).join(f)), json(&folder.join(c).join(f)));
                assert_eq!(a, b, "{family} {c}/{f}");
            }
        }
        assert!(written.iter().any(|p| p.ends_with("tokenizer/vocab.json")) && written.iter().any(|p| p.ends_with("model_index.json")));
        // kiln loads the folder as a folder (model_index.json, tokenizers, scheduler)
        let index = kiln_pipeline::model::ModelFolder::open(&out, &Default::default()).unwrap();
        assert_eq!(index.kind, arch.kind, "{family}");
        // never over an existing folder
        let again = convert(&file, &arch, &out, ConvertOptions::default(), &|| true).unwrap_err().to_string();
        assert!(again.contains("already exists"), "{again}");
    }
    // f16 → f32 with the fp16 naming off, and a stop request: no folder, no temporary folder left
    let path = tmp.0.join("sd1.safetensors");
    let file = SingleFile::open(&path).unwrap();
    let arch = Architecture::from_folder(&root().join("assets/fixtures/models/sd1")).unwrap();
    let out = tmp.0.join("sd1-f32");
    convert(&file, &arch, &out, ConvertOptions { dtype: Some(DType::F32), fp16_variant: false }, &|| true).unwrap();
    let unet = tensors_of(&out.join("unet/diffusion_pytorch_model.safetensors"));
    assert!(unet.values().all(|(d, ..)| d == "F32"));
    let out = tmp.0.join("sd1-stopped");
    let err = convert(&file, &arch, &out, ConvertOptions { dtype: None, fp16_variant: true }, &|| false).unwrap_err();
    assert!(matches!(err, kiln_pipeline::SingleFileError::Cancelled), "{err}");
    assert!(!out.exists());
    let leftovers: Vec<_> = std::fs::read_dir(&tmp.0).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().contains("kiln-convert")).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// Full-size files with random weights (scripts/fixtures/single_file_full.py writes them to the
/// folder `KILN_FULL_SINGLE_FILES`; 2 GB each, not committed): loaded with the published configs
/// as `StableDiffusion::load(file)` loads any file, one 64×64 picture in 2 steps against
/// diffusers' `from_single_file` picture. Run by hand (minutes, several GB of memory):
/// `KILN_FULL_SINGLE_FILES=/tmp/kiln-full cargo test -p kiln-pipeline --test single_file -- --ignored`.
#[test]
#[ignore = "needs the full-size files scripts/fixtures/single_file_full.py writes (2 GB each)"]
fn full_size_files_draw_what_diffusers_draws() {
    let dir = PathBuf::from(std::env::var("KILN_FULL_SINGLE_FILES").expect("KILN_FULL_SINGLE_FILES: the folder single_file_full.py wrote"));
    let device = Device::flex();
    let mut report = Vec::new();
    for name in ["sd15", "sd21", "sd15-inpaint", "sdxl"] {
        let path = dir.join(format!("{name}.safetensors"));
        if !path.exists() && name == "sdxl" {
            continue; // written with --sdxl only
        }
        let start = std::time::Instant::now();
        let pipe = StableDiffusion::load(&path, &kiln_pipeline::LoadOptions::new(&device)).unwrap();
        let loaded = start.elapsed();
        let mut o = kiln_pipeline::GenerateOptions {
            prompt: "a lighthouse at dusk".into(),
            num_inference_steps: 2,
            guidance_scale: 7.5,
            width: Some(64),
            height: Some(64),
            seed: 0,
            ..Default::default()
        };
        let inputs = root().join("assets/fixtures/pipelines/inputs");
        let (image, mask) = (image::open(inputs.join("init-64x48.png")).unwrap().to_rgb8(), kiln_pipeline::image_processor::pil_grayscale(&image::open(inputs.join("mask-64x48.png")).unwrap()));
        let task = if name.ends_with("inpaint") {
            o.height = Some(48);
            kiln_pipeline::Task::Inpaint { image: &image, mask: &mask, strength: 1.0 }
        } else {
            kiln_pipeline::Task::Txt2Img
        };
        let got = pipe.generate(&o, task, &mut |_, _| true).unwrap().remove(0);
        let (_, _, want) = read_png(&fixtures().join(format!("full_{name}.png")));
        let worst = max_levels(got.as_raw(), &want);
        report.push(format!("{name}: {worst} levels from diffusers' picture (loaded in {loaded:.1?}, {} total)", format!("{:.1?}", start.elapsed())));
        println!("{}", report.last().unwrap());
        assert!(worst <= 2, "{name}: {worst} levels");
    }
}
