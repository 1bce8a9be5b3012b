//! The library's side of the bad-input catalogue: typed [`PipelineError`]s naming the value, no
//! panics, nothing computed before the checks (the CLI's exit-2 messages are tested in
//! kiln-cli/tests/generate.rs).

use std::path::PathBuf;

use burn::tensor::Device;
use image::{GrayImage, RgbImage};
use kiln_pipeline::{LoadOptions, GenerateOptions, PipelineError, StableDiffusion, Task};

fn model(name: &str) -> StableDiffusion {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into())).join("../../assets/fixtures/models").join(name);
    StableDiffusion::load(&dir, &LoadOptions::new(&Device::flex())).unwrap()
}

fn options(width: usize, height: usize) -> GenerateOptions {
    GenerateOptions { prompt: "p".into(), num_inference_steps: 4, width: Some(width), height: Some(height), ..Default::default() }
}

fn input_error(r: Result<(), PipelineError>) -> (&'static str, String) {
    match r {
        Err(PipelineError::Input { what, value, .. }) => (what, value),
        other => panic!("expected PipelineError::Input, got {other:?}"),
    }
}

#[test]
fn check_inputs_returns_typed_errors() {
    let sd1 = model("sd1");
    let image = RgbImage::new(64, 48);
    let mask = GrayImage::new(64, 48);
    let tx = Task::Txt2Img;
    assert_eq!(input_error(sd1.check_inputs(&options(60, 64), &tx)), ("width", "60".into()));
    assert_eq!(input_error(sd1.check_inputs(&options(64, 0), &tx)), ("height", "0".into()));
    let o = GenerateOptions { num_inference_steps: 0, ..options(64, 64) };
    assert_eq!(input_error(sd1.check_inputs(&o, &tx)).0, "steps");
    let o = GenerateOptions { guidance_scale: -1.0, ..options(64, 64) };
    assert_eq!(input_error(sd1.check_inputs(&o, &tx)), ("guidance scale", "-1".into()));
    let o = GenerateOptions { guidance_scale: f64::NAN, ..options(64, 64) };
    assert_eq!(input_error(sd1.check_inputs(&o, &tx)).0, "guidance scale");
    let o = GenerateOptions { num_images_per_prompt: 0, ..options(64, 64) };
    assert_eq!(input_error(sd1.check_inputs(&o, &tx)).0, "number of images");
    let i2i = |strength| Task::Img2Img { image: &image, strength };
    assert_eq!(input_error(sd1.check_inputs(&options(64, 48), &i2i(1.5))), ("strength", "1.5".into()));
    assert_eq!(input_error(sd1.check_inputs(&options(64, 48), &i2i(0.1))), ("strength", "0.1".into()));
    assert!(sd1.check_inputs(&options(64, 48), &i2i(0.25)).is_ok(), "int(4 × 0.25) = 1 step is allowed");
    assert_eq!(input_error(sd1.check_inputs(&options(64, 64), &i2i(0.5))), ("init image size", "64x48".into()));
    let small = GrayImage::new(32, 32);
    let inpaint = Task::Inpaint { image: &image, mask: &small, strength: 1.0 };
    assert_eq!(input_error(sd1.check_inputs(&options(64, 48), &inpaint)), ("mask size", "32x32".into()));
    let inpaint = Task::Inpaint { image: &image, mask: &mask, strength: 1.0 };
    assert!(sd1.check_inputs(&options(64, 48), &inpaint).is_ok());
    // the size defaults to the init image's
    let o = GenerateOptions { width: None, height: None, ..options(0, 0) };
    assert_eq!(sd1.output_size(&o, &i2i(0.5)), (48, 64));
    assert!(matches!(sd1.check_inputs(&options(1 << 16, 1 << 16), &tx), Err(PipelineError::TooLarge { width: 65536, .. })));
}

#[test]
fn tasks_a_model_does_not_run_are_refused() {
    let image = RgbImage::new(64, 48);
    let inpaint_model = model("inpaint");
    let e = inpaint_model.check_inputs(&options(64, 48), &Task::Txt2Img).unwrap_err();
    assert!(matches!(e, PipelineError::Unsupported(_)) && e.to_string().contains("9 channels"), "{e}");
    let sdxl = model("sdxl");
    let mask = GrayImage::new(64, 48);
    assert!(sdxl.check_inputs(&options(64, 48), &Task::Img2Img { image: &image, strength: 0.5 }).is_ok());
    let e = sdxl.check_inputs(&options(64, 48), &Task::Inpaint { image: &image, mask: &mask, strength: 1.0 }).unwrap_err();
    assert!(matches!(e, PipelineError::Unsupported(_)) && e.to_string().contains("SDXL"), "{e}");
}

#[test]
fn the_callback_cancels_and_missing_models_are_named() {
    let sd1 = model("sd1");
    let r = sd1.txt2img(&options(64, 64), &mut |info, _| info.step < 1);
    assert!(matches!(r, Err(PipelineError::Cancelled(1))), "{:?}", r.err());
    let e = StableDiffusion::load("/nonexistent/model".as_ref(), &LoadOptions::new(&Device::flex())).err().unwrap();
    assert!(matches!(e, PipelineError::Model(_)) && e.to_string().contains("/nonexistent/model"), "{e}");
}

/// The pipeline builds its scheduler through `SamplerChoice`, as `kiln schedule` does: Karras
/// sigmas where the sampler has them (not the plain ones), an error where it has none.
#[test]
fn the_pipeline_chooses_the_sampler_through_sampler_choice() {
    use kiln_scheduler::{SamplerChoice, SamplerName, StepOptions};
    let pipe = model("sd1");
    let options = |scheduler: &str, karras: bool| GenerateOptions {
        scheduler: Some(scheduler.parse::<SamplerName>().unwrap()),
        karras,
        num_inference_steps: 8,
        ..Default::default()
    };
    let karras = pipe.build_scheduler(&options("euler", true)).unwrap();
    let want = SamplerChoice { sampler: Some(SamplerName::Euler), karras: true }
        .build(&pipe.scheduler_config, 8, &StepOptions::default())
        .unwrap();
    assert_eq!(karras.sigmas(), want.sigmas());
    let plain = pipe.build_scheduler(&options("euler", false)).unwrap();
    assert_ne!(karras.sigmas(), plain.sigmas(), "Karras sigmas differ from the plain ones");
    let e = pipe.build_scheduler(&options("ddim", true)).err().unwrap().to_string();
    assert!(e.contains("DDIMScheduler has no Karras sigmas"), "{e}");
}
