//! `kiln generate` end to end on the tiny SD1 pipeline of assets/fixtures/models: the PNG equals
//! diffusers' picture for the same arguments (scripts/fixtures/pipelines.py, case 0), carries its
//! parameters (read back by `kiln info`), and bad input exits 2 with a message naming the value.

use std::path::PathBuf;

mod common;
use common::{assert_usage_error, kiln, pixels};

fn root() -> PathBuf {
    PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into())).join("../..")
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-generate-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn generate_reproduces_diffusers_and_records_parameters() {
    let model = root().join("assets/fixtures/models/sd1");
    let dir = tmp("ok");
    let out = dir.join("circle.png");
    let o = kiln(&[
        "generate", "--model", model.to_str().unwrap(), "--prompt", "a red circle on a blue background",
        "--steps", "5", "--guidance-scale", "7.5", "--seed", "0", "--width", "64", "--height", "48",
        "--output", out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // diffusers' picture for these arguments (case 0 of scripts/fixtures/pipelines.py); the bound
    // is the 2 levels of 255
    let want = pixels(&root().join("assets/fixtures/pipelines/case00-0.png"));
    let got = pixels(&out);
    assert_eq!(got.len(), want.len());
    let worst = got.iter().zip(&want).map(|(a, b)| (*a as i32 - *b as i32).abs()).max().unwrap();
    assert!(worst <= 2, "max difference {worst} levels");

    let info = kiln(&["info", out.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(info.status.success(), "{}", String::from_utf8_lossy(&info.stderr));
    for needle in ["a red circle on a blue background", "Steps: 5", "CFG scale: 7.5", "Seed: 0", "Size: 64x48"] {
        assert!(text.contains(needle), "kiln info should print {needle:?}: {text}");
    }

    // an existing output is never overwritten without --overwrite
    let again = kiln(&[
        "generate", "--model", model.to_str().unwrap(), "--prompt", "x", "--steps", "1", "--width", "64",
        "--height", "48", "--output", out.to_str().unwrap(),
    ]);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--overwrite"));
    assert_eq!(pixels(&out), got, "the existing file must be untouched");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn generate_bad_input_exits_2() {
    let model = root().join("assets/fixtures/models/sd1");
    let m = model.to_str().unwrap();
    let dir = tmp("bad");
    let out = dir.join("x.png");
    let o = out.to_str().unwrap();
    // the defaults below, with `extra` replacing a flag of the same name (clap refuses repeats)
    let run = |extra: &[&str], needles: &[&str]| {
        let mut args: Vec<String> = vec!["generate".into(), "--model".into(), m.into(), "--prompt".into(), "p".into(), "--output".into(), o.into()];
        for (flag, value) in [("--steps", "2"), ("--width", "64"), ("--height", "64")] {
            if !extra.iter().any(|e| e.split('=').next() == Some(flag)) {
                args.extend([flag.to_string(), value.to_string()]);
            }
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_usage_error(&refs, needles);
    };
    run(&["--width", "60"], &["width", "60", "multiple of 8"]);
    run(&["--height", "0"], &["height", "0"]);
    run(&["--steps", "0"], &["steps", "0"]);
    run(&["--guidance-scale=-1"], &["guidance", "-1"]);
    run(&["--scheduler", "eulr"], &["eulr", "euler-a"]);
    run(&["--device", "tpu"], &["--device", "tpu"]);
    run(&["--dtype", "f8"], &["--dtype", "f8"]);
    run(&["--num-images", "0"], &["number of images", "0"]);
    run(&["--guidance-rescale", "2"], &["guidance rescale", "2", "[0, 1]"]);
    run(&["--clip-skip", "50"], &["clip_skip", "50", "at most"]);
    // a size whose attention scores alone exceed any machine's memory; refused before any work
    run(&["--width", "65536", "--height", "65536"], &["65536x65536", "GiB", "available"]);
    // img2img / inpainting inputs
    let init = root().join("assets/fixtures/pipelines/inputs/init-64x48.png");
    let init = init.to_str().unwrap();
    let mask = root().join("assets/fixtures/pipelines/inputs/mask-64x48.png");
    let mask = mask.to_str().unwrap();
    run(&["--init-image", init, "--strength", "1.5"], &["--strength", "1.5", "[0, 1]"]);
    run(&["--init-image", init, "--strength=-0.1"], &["--strength", "-0.1", "[0, 1]"]);
    run(&["--init-image", init, "--strength", "0.05", "--steps", "10", "--height", "48"], &["strength", "0.05", "10 steps", "no denoising step"]);
    run(&["--mask", mask], &["--mask needs --init-image"]);
    run(&["--strength", "0.5"], &["--strength needs --init-image"]);
    run(&["--init-image", "/nonexistent/in.png"], &["init image", "/nonexistent/in.png", "does not exist"]);
    let not_image = dir.join("notes.png");
    std::fs::write(&not_image, "this is text, not a PNG").unwrap();
    run(&["--init-image", not_image.to_str().unwrap()], &["notes.png", "not a readable PNG or JPEG"]);
    run(&["--init-image", init, "--mask", not_image.to_str().unwrap()], &["mask", "notes.png", "not a readable"]);
    // 64x64 requested, the image is 64x48: refused (kiln does not resize), both sizes named
    run(&["--init-image", init], &["init image size", "64x48", "64x64", "does not resize"]);
    let small_mask = dir.join("small-mask.png");
    image::GrayImage::new(32, 32).save(&small_mask).unwrap();
    run(
        &["--init-image", init, "--mask", small_mask.to_str().unwrap(), "--width", "64", "--height", "48"],
        &["mask size", "32x32", "64x48"],
    );
    run(&["--original-size", "big"], &["--original-size", "WIDTHxHEIGHT", "big"]);
    run(&["--crops-coords-top-left", "1;2"], &["--crops-coords-top-left", "TOP,LEFT", "1;2"]);
    assert_usage_error(&["generate", "--model", "/nonexistent/model", "--prompt", "p", "--output", o], &["/nonexistent/model"]);
    let missing_dir = dir.join("no/such/dir/x.png");
    assert_usage_error(
        &["generate", "--model", m, "--prompt", "p", "--width", "64", "--height", "64", "--output", missing_dir.to_str().unwrap()],
        &["does not exist"],
    );
    assert!(!out.exists(), "no output on failure");
    std::fs::remove_dir_all(&dir).ok();
}

/// A copy of the sd1 fixture model (components symlinked) with `component` replaced by what
/// `damage` writes into a fresh folder.
fn damaged_model(dir: &std::path::Path, tag: &str, component: &str, damage: impl Fn(&std::path::Path)) -> PathBuf {
    let src = root().join("assets/fixtures/models/sd1");
    let model = dir.join(format!("damaged-{tag}"));
    std::fs::create_dir_all(&model).unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == "reference.safetensors" || name == component {
            continue;
        }
        std::os::unix::fs::symlink(entry.path().canonicalize().unwrap(), model.join(&name)).unwrap();
    }
    damage(&model.join(component));
    model
}

#[test]
fn broken_models_exit_2_naming_the_file() {
    let dir = tmp("broken");
    let out = dir.join("x.png");
    let o = out.to_str().unwrap();
    let unet = root().join("assets/fixtures/models/sd1/unet");
    let weights = std::fs::read(unet.join("diffusion_pytorch_model.safetensors")).unwrap();
    let config = std::fs::read_to_string(unet.join("config.json")).unwrap();
    let cases: Vec<(PathBuf, Vec<&str>)> = vec![
        // a component model_index.json lists is missing
        (damaged_model(&dir, "missing", "unet", |_| {}), vec!["unet"]),
        // truncated weights
        (
            damaged_model(&dir, "truncated", "vae", |d| {
                std::fs::create_dir_all(d).unwrap();
                let vae = root().join("assets/fixtures/models/sd1/vae");
                std::fs::copy(vae.join("config.json"), d.join("config.json")).unwrap();
                let w = std::fs::read(vae.join("diffusion_pytorch_model.safetensors")).unwrap();
                std::fs::write(d.join("diffusion_pytorch_model.safetensors"), &w[..w.len() / 2]).unwrap();
            }),
            vec!["diffusion_pytorch_model.safetensors"],
        ),
        // corrupt weights (garbage header)
        (
            damaged_model(&dir, "corrupt", "unet", |d| {
                std::fs::create_dir_all(d).unwrap();
                std::fs::write(d.join("config.json"), &config).unwrap();
                let mut w = weights.clone();
                w[8..40].fill(b'!');
                std::fs::write(d.join("diffusion_pytorch_model.safetensors"), &w).unwrap();
            }),
            vec!["diffusion_pytorch_model.safetensors"],
        ),
        // a config value kiln does not implement
        (
            damaged_model(&dir, "config", "unet", |d| {
                std::fs::create_dir_all(d).unwrap();
                std::fs::write(d.join("config.json"), config.replace("\"silu\"", "\"mish\"")).unwrap();
                std::fs::write(d.join("diffusion_pytorch_model.safetensors"), &weights).unwrap();
            }),
            vec!["act_fn", "mish", "silu"],
        ),
    ];
    for (model, needles) in &cases {
        let m = model.to_str().unwrap();
        assert_usage_error(
            &["generate", "--model", m, "--prompt", "p", "--steps", "1", "--width", "64", "--height", "64", "--output", o],
            needles,
        );
        std::fs::remove_dir_all(model).ok();
    }
    assert!(!out.exists(), "no output on failure");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn model_kinds_and_tasks_that_do_not_fit_exit_2() {
    let dir = tmp("kinds");
    let out = dir.join("x.png");
    let o = out.to_str().unwrap();
    let init = root().join("assets/fixtures/pipelines/inputs/init-64x48.png");
    let inpaint = root().join("assets/fixtures/models/inpaint");
    let sdxl = root().join("assets/fixtures/models/sdxl");
    assert_usage_error(
        &["generate", "--model", inpaint.to_str().unwrap(), "--prompt", "p", "--steps", "1", "--width", "64", "--height", "64", "--output", o],
        &["inpainting model", "9 channels", "mask"],
    );
    let mask = root().join("assets/fixtures/pipelines/inputs/mask-64x48.png");
    assert_usage_error(
        &["generate", "--model", sdxl.to_str().unwrap(), "--prompt", "p", "--steps", "1", "--init-image", init.to_str().unwrap(), "--mask", mask.to_str().unwrap(), "--output", o],
        &["inpainting with SDXL", "not supported yet"],
    );
    assert!(!out.exists());
    std::fs::remove_dir_all(&dir).ok();
}

/// img2img, inpainting and SDXL through the binary reproduce diffusers' pictures
/// (scripts/fixtures/pipelines.py cases 11, 15 and 20); the size defaults to the init image's.
#[test]
fn generate_img2img_inpaint_and_sdxl_reproduce_diffusers() {
    let dir = tmp("tasks");
    let fixtures = root().join("assets/fixtures/pipelines");
    let init = fixtures.join("inputs/init-64x48.png");
    let mask = fixtures.join("inputs/mask-64x48.png");
    let models = root().join("assets/fixtures/models");
    let runs: Vec<(&str, Vec<String>)> = vec![
        (
            "case11-0.png",
            ["--model", models.join("sdxl").to_str().unwrap(), "--prompt", "a red circle", "--steps", "4", "--guidance-scale", "5", "--seed", "1", "--width", "64", "--height", "64"]
                .map(String::from)
                .to_vec(),
        ),
        (
            "case15-0.png",
            ["--model", models.join("sd1").to_str().unwrap(), "--prompt", "a red circle on a blue background", "--steps", "10", "--seed", "5", "--init-image", init.to_str().unwrap(), "--strength", "0.6"]
                .map(String::from)
                .to_vec(),
        ),
        (
            "case20-0.png",
            ["--model", models.join("inpaint").to_str().unwrap(), "--prompt", "a red circle", "--steps", "5", "--seed", "10", "--init-image", init.to_str().unwrap(), "--mask", mask.to_str().unwrap()]
                .map(String::from)
                .to_vec(),
        ),
    ];
    for (file, args) in runs {
        let out = dir.join(file);
        let mut full: Vec<&str> = vec!["generate"];
        full.extend(args.iter().map(String::as_str));
        full.extend(["--output", out.to_str().unwrap()]);
        let o = kiln(&full);
        assert!(o.status.success(), "{file}: {}", String::from_utf8_lossy(&o.stderr));
        let (got, want) = (pixels(&out), pixels(&fixtures.join(file)));
        assert_eq!(got.len(), want.len(), "{file}: size");
        let worst = got.iter().zip(&want).map(|(a, b)| (*a as i32 - *b as i32).abs()).max().unwrap();
        assert!(worst <= 2, "{file}: {worst} levels from diffusers");
    }
    // img2img records its strength
    let info = kiln(&["info", dir.join("case15-0.png").to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&info.stdout).contains("Denoising strength: 0.6"), "{}", String::from_utf8_lossy(&info.stdout));
    std::fs::remove_dir_all(&dir).ok();
}

/// `--vae` replaces the model's VAE: the same run with a VAE folder whose config differs (its
/// scaling factor) gives another picture, and the model's own VAE copied as is gives the same one.
#[test]
fn vae_override_is_used() {
    let dir = tmp("vae");
    let sd1 = root().join("assets/fixtures/models/sd1");
    let vae = sd1.join("vae");
    let (same, other) = (dir.join("same-vae"), dir.join("other-vae"));
    for (d, factor) in [(&same, None), (&other, Some("0.5"))] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::copy(vae.join("diffusion_pytorch_model.safetensors"), d.join("diffusion_pytorch_model.safetensors")).unwrap();
        let config = std::fs::read_to_string(vae.join("config.json")).unwrap();
        let config = match factor {
            Some(f) => config.replace("\"scaling_factor\": 0.18215", &format!("\"scaling_factor\": {f}")),
            None => config,
        };
        assert!(factor.is_none() || config.contains("0.5"), "the fixture's scaling factor is 0.18215");
        std::fs::write(d.join("config.json"), config).unwrap();
    }
    let run = |vae: Option<&PathBuf>, name: &str| {
        let out = dir.join(name);
        let mut args = vec![
            "generate", "--model", sd1.to_str().unwrap(), "--prompt", "a red circle on a blue background", "--steps", "5",
            "--seed", "0", "--width", "64", "--height", "48", "--output", out.to_str().unwrap(),
        ];
        if let Some(v) = vae {
            args.extend(["--vae", v.to_str().unwrap()]);
        }
        let o = kiln(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        pixels(&out)
    };
    let base = run(None, "base.png");
    assert_eq!(run(Some(&same), "same.png"), base);
    let changed = run(Some(&other), "other.png");
    let worst = changed.iter().zip(&base).map(|(a, b)| (*a as i32 - *b as i32).abs()).max().unwrap();
    assert!(worst > 10, "a different VAE must change the picture (max difference {worst})");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_prompt_longer_than_77_tokens_is_truncated_with_a_warning() {
    let model = root().join("assets/fixtures/models/sd1");
    let dir = tmp("long");
    let out = dir.join("long.png");
    // 90 words of one token each: 90 + bos + eos ids, 77 kept, 15 dropped (as transformers cuts)
    let prompt = vec!["red"; 90].join(" ");
    let o = kiln(&[
        "generate", "--model", model.to_str().unwrap(), "--prompt", &prompt, "--steps", "1", "--width", "64",
        "--height", "64", "--output", out.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("truncated") && stderr.contains("15 tokens dropped"), "warning expected: {stderr}");
    std::fs::remove_dir_all(&dir).ok();
}

/// `--device vulkan` where the Vulkan driver is one cubecl-spirv 0.11.3 would crash (Mesa's
/// lavapipe, which CI installs) or where there is no Vulkan at all: exit 2 with the reason and
/// the way out, instead of a segfault in the driver. Skipped where a usable Vulkan GPU exists.
#[test]
fn vulkan_without_a_usable_driver_exits_2() {
    use kiln::ops::device::{vulkan_check, VulkanCheck, EXPLICIT_LAYOUT_EXT};
    let needle = match vulkan_check() {
        VulkanCheck::Usable => return eprintln!("skipped: this machine has a usable Vulkan adapter"),
        VulkanCheck::Crashes(_) => EXPLICIT_LAYOUT_EXT.to_str().unwrap().to_string(),
        VulkanCheck::Absent(_) => "no Vulkan adapter".to_string(),
    };
    let model = root().join("assets/fixtures/models/sd1");
    let out = tmp("vulkan").join("never.png");
    let o = kiln(&["generate", "--model", model.to_str().unwrap(), "--prompt", "x", "--device", "vulkan", "--output", out.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--device vulkan") && stderr.contains(&needle) && stderr.contains("--device cpu"), "{stderr}");
    assert!(!out.exists());
}

/// `--device wgpu` on a machine whose only adapters are Mesa's lavapipe (which cubecl would
/// crash) and llvmpipe through OpenGL (whose row sums burn gets wrong, `kiln::ops::device::
/// reduction_check`) — CI's — exits 2 naming both reasons and the way out, instead of writing a
/// wrong picture. Skipped elsewhere.
#[test]
fn wgpu_without_a_usable_adapter_exits_2() {
    use kiln::ops::device::{open, reduction_check, vulkan_check, VulkanCheck, EXPLICIT_LAYOUT_EXT};
    if !matches!(vulkan_check(), VulkanCheck::Crashes(_)) {
        return eprintln!("skipped: Vulkan here is usable or absent");
    }
    let gl = match open(Some(kiln::burn::tensor::wgpu::WgpuBackend::Gl)).map(|gl| reduction_check(&gl)) {
        Ok(Err(why)) => why,
        other => return eprintln!("skipped: OpenGL here is {other:?}"),
    };
    let model = root().join("assets/fixtures/models/sd1");
    let out = tmp("wgpu").join("never.png");
    let o = kiln(&["generate", "--model", model.to_str().unwrap(), "--prompt", "x", "--device", "wgpu", "--output", out.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    for needle in ["--device wgpu", EXPLICIT_LAYOUT_EXT.to_str().unwrap(), &gl, "--device cpu"] {
        assert!(stderr.contains(needle), "{needle:?} in {stderr}");
    }
    assert!(!out.exists());
}

/// `kiln generate` and `kiln schedule` choose the sampler through the same function: a sampler
/// without Karras sigmas and `--karras` is refused by both, with the same message, before
/// generate loads the weights (before, generate ran DDIM without Karras sigmas and wrote
/// "Schedule type: Karras" into the PNG).
#[test]
fn generate_and_schedule_refuse_karras_alike() {
    let model = root().join("assets/fixtures/models/sd1");
    let m = model.to_str().unwrap();
    let out = tmp("karras").join("x.png");
    let g = kiln(&["generate", "--model", m, "--prompt", "x", "--steps", "2", "--scheduler", "ddim", "--karras", "--output", out.to_str().unwrap()]);
    let s = kiln(&["schedule", "--model", m, "--scheduler", "ddim", "--karras", "--steps", "2"]);
    for o in [&g, &s] {
        assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let (ge, se) = (String::from_utf8_lossy(&g.stderr), String::from_utf8_lossy(&s.stderr));
    assert!(ge.contains("--karras: DDIMScheduler has no Karras sigmas"), "{ge}");
    assert_eq!(ge.lines().last(), se.lines().last(), "one message from one place");
    assert!(!out.exists());
}

/// SD 3 and FLUX.1 through `kiln generate`: the flow-matching fixtures' pictures
/// (scripts/fixtures/flow_pipelines.py, cases 3, 6, 7, 9, 13 and 15: SD 3 with skip-layer guidance,
/// SD 3 img2img, FLUX.1-schnell, FLUX.1-dev with true CFG and two images, SD 3 and FLUX.1-dev
/// inpainting), the family's defaults (img2img's and inpainting's strength 0.6), and the SD-only
/// and flow-only flags refused by name.
#[test]
fn generate_sd3_and_flux_reproduce_diffusers() {
    let dir = tmp("flow");
    let fixtures = root().join("assets/fixtures/flow_pipelines");
    let models = root().join("assets/fixtures/models");
    let init = fixtures.join("inputs/init-32x24.png");
    let mask = fixtures.join("inputs/mask-32x24.png");
    let model = |name: &str| models.join(name).to_str().unwrap().to_string();
    let runs: Vec<(&str, Vec<String>)> = vec![
        ("case03-0.png", ["--model", &model("sd3"), "--prompt", "a cat on a sofa", "--steps", "6", "--guidance-scale", "4.5", "--seed", "5", "--width", "32", "--height", "24", "--max-sequence-length", "24", "--skip-layer-guidance", "1", "--slg-scale", "2.8", "--slg-start", "0.01", "--slg-stop", "0.6"].map(String::from).to_vec()),
        ("case06-0.png", ["--model", &model("sd3"), "--prompt", "a blue square", "--steps", "5", "--seed", "21", "--init-image", init.to_str().unwrap(), "--max-sequence-length", "32"].map(String::from).to_vec()),
        ("case07-0.png", ["--model", &model("flux-schnell"), "--prompt", "a red circle on a blue background", "--steps", "4", "--guidance-scale", "0", "--seed", "0", "--width", "32", "--height", "24", "--max-sequence-length", "32"].map(String::from).to_vec()),
        ("case09-0.png", ["--model", &model("flux-dev"), "--prompt", "two yellow triangles", "--negative-prompt", "blurry", "--true-cfg-scale", "4", "--steps", "3", "--seed", "9", "--width", "24", "--height", "32", "--num-images", "2", "--max-sequence-length", "32"].map(String::from).to_vec()),
        ("case13-0.png", ["--model", &model("sd3"), "--prompt", "a yellow star", "--negative-prompt", "blurry", "--steps", "5", "--strength", "0.8", "--seed", "23", "--init-image", init.to_str().unwrap(), "--mask", mask.to_str().unwrap(), "--max-sequence-length", "32"].map(String::from).to_vec()),
        ("case15-0.png", ["--model", &model("flux-dev"), "--prompt", "a green triangle", "--steps", "4", "--seed", "31", "--init-image", init.to_str().unwrap(), "--mask", mask.to_str().unwrap(), "--max-sequence-length", "32"].map(String::from).to_vec()),
    ];
    for (file, args) in runs {
        let out = dir.join(file);
        let mut full: Vec<&str> = vec!["generate"];
        full.extend(args.iter().map(String::as_str));
        full.extend(["--output", out.to_str().unwrap()]);
        let o = kiln(&full);
        assert!(o.status.success(), "{file}: {}", String::from_utf8_lossy(&o.stderr));
        // --num-images 2 writes NAME-1.png and NAME-2.png
        let written = if args.iter().any(|a| a == "--num-images") { vec![(dir.join("case09-0-1.png"), "case09-0.png"), (dir.join("case09-0-2.png"), "case09-1.png")] } else { vec![(out.clone(), file)] };
        for (path, want) in written {
            let (got, want_px) = (pixels(&path), pixels(&fixtures.join(want)));
            assert_eq!(got.len(), want_px.len(), "{want}: size");
            let worst = got.iter().zip(&want_px).map(|(a, b)| (*a as i32 - *b as i32).abs()).max().unwrap();
            assert!(worst <= 2, "{want}: {worst} levels from diffusers");
        }
    }
    // a PEFT LoRA on FLUX.1-dev (scripts/fixtures/flow_loras.py), recorded in the PNG's parameters
    let lora_out = dir.join("flux-lora.png");
    let lora = root().join("assets/fixtures/loras/flux-dev-peft.safetensors");
    let o = kiln(&[
        "generate", "--model", &model("flux-dev"), "--prompt", "a photograph of an astronaut riding a horse", "--steps", "4", "--seed", "1", "--width", "40", "--height", "24",
        "--max-sequence-length", "48", "--lora", &format!("{}:0.8", lora.display()), "--output", lora_out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "flux LoRA: {}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("65 of its 65 modules applied"), "{}", String::from_utf8_lossy(&o.stderr));
    let (got, want) = (pixels(&lora_out), pixels(&root().join("assets/fixtures/loras/flux-dev-peft.png")));
    let worst = got.iter().zip(&want).map(|(a, b)| (*a as i32 - *b as i32).abs()).max().unwrap();
    assert!(got.len() == want.len() && worst <= 2, "flux LoRA: {worst} levels from diffusers");
    let info = kiln(&["info", lora_out.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&info.stdout).contains("Lora hashes: \"flux-dev-peft: "), "{}", String::from_utf8_lossy(&info.stdout));
    let info = kiln(&["info", dir.join("case06-0.png").to_str().unwrap()]);
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(text.contains("Denoising strength: 0.6") && text.contains("CFG scale: 7"), "{text}");
    let info = kiln(&["info", dir.join("case15-0.png").to_str().unwrap()]);
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(text.contains("Denoising strength: 0.6") && text.contains("CFG scale: 3.5"), "{text}");

    let sd3 = model("sd3");
    let sd1 = model("sd1");
    let out = dir.join("x.png");
    let o = out.to_str().unwrap();
    assert_usage_error(&["generate", "--model", &sd3, "--prompt", "p", "--prompt-syntax", "a1111", "--output", o], &["--prompt-syntax a1111", "Stable Diffusion 3"]);
    assert_usage_error(&["generate", "--model", &sd3, "--prompt", "p", "--scheduler", "dpm++2m", "--output", o], &["dpm++2m", "euler or heun"]);
    assert_usage_error(&["generate", "--model", &sd3, "--prompt", "p", "--width", "30", "--height", "24", "--output", o], &["width", "30", "multiple of 4"]);
    assert_usage_error(&["generate", "--model", &sd3, "--prompt", "p", "--max-sequence-length", "513", "--width", "32", "--height", "24", "--output", o], &["max_sequence_length", "513"]);
    assert_usage_error(&["generate", "--model", &sd1, "--prompt", "p", "--prompt-3", "q", "--output", o], &["--prompt-3", "SD 3 / FLUX option"]);
    assert_usage_error(&["generate", "--model", &model("flux-dev"), "--prompt", "p", "--clip-skip", "1", "--width", "32", "--height", "24", "--output", o], &["clip_skip"]);
    assert!(!out.exists(), "no output for refused runs");
    std::fs::remove_dir_all(&dir).ok();
}
