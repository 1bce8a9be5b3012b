//! Embedding kiln: load a diffusers folder, generate with a progress callback, save a PNG.
//!
//!     cargo run --example txt2img -- assets/fixtures/models/sd1 "a red circle on a blue background" out.png

use kiln::burn::tensor::Device;
use kiln::pipeline::{LoadOptions, StableDiffusion, GenerateOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, model, prompt, output] = args.as_slice() else {
        return Err("usage: txt2img MODEL_DIR PROMPT OUTPUT.png".into());
    };
    let device = Device::flex();
    let pipe = StableDiffusion::load(model.as_ref(), &LoadOptions::new(&device))?;
    let options = GenerateOptions {
        prompt: prompt.clone(),
        width: Some(64),
        height: Some(64),
        num_inference_steps: 20,
        seed: 42,
        ..Default::default()
    };
    let images = pipe.txt2img(&options, &mut |info, _latents| {
        eprintln!("step {}/{} (t = {})", info.step + 1, info.total, info.timestep);
        true // return false to cancel
    })?;
    let file = std::io::BufWriter::new(std::fs::File::create(output)?);
    let img = &images[0];
    let mut encoder = png::Encoder::new(file, img.width(), img.height());
    encoder.set_color(png::ColorType::Rgb);
    encoder.write_header()?.write_image_data(img.as_raw())?;
    eprintln!("wrote {output}");
    Ok(())
}
