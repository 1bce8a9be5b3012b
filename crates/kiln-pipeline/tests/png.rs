//! PNG output: pixels and A1111 parameters round-trip, the chunk types PIL writes (and reads),
//! atomic no-clobber writes, and the errors for bad output paths and bad inputs.

use std::fs;
use std::path::{Path, PathBuf};

mod common;
use common::TempDir;
use image::RgbImage;
use kiln_pipeline::png::{read_generation_params, read_parameters, read_png_texts, save_png, save_png_with_text};
use kiln_pipeline::{GenerationParams, PngError};


fn fixture(name: &str) -> PathBuf {
    Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string())).join("../../assets/fixtures/png").join(name)
}

fn gradient(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7) as u8, (y * 13) as u8, ((x + y) * 3) as u8]))
}

fn params(prompt: &str) -> GenerationParams {
    GenerationParams {
        prompt: prompt.into(),
        negative_prompt: "blurry, low quality".into(),
        steps: 25,
        sampler: "DPM++ 2M".into(),
        cfg_scale: 7.5,
        seed: 1234567890123,
        width: 40,
        height: 24,
        model: Some("stabilityai/stable-diffusion-xl-base-1.0".into()),
        extra: vec![("Schedule type".into(), "Karras".into())],
    }
}

fn chunk_types(path: &Path) -> Vec<String> {
    let bytes = fs::read(path).unwrap();
    let mut out = Vec::new();
    let mut i = 8;
    while i + 8 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[i..i + 4].try_into().unwrap()) as usize;
        out.push(String::from_utf8_lossy(&bytes[i + 4..i + 8]).into_owned());
        i += 12 + len;
    }
    out
}

fn leftovers(dir: &Path) -> Vec<String> {
    fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|n| n.ends_with(".tmp")).collect()
}

#[test]
fn pixels_and_parameters_round_trip() {
    let tmp = TempDir::new("rt");
    let img = gradient(40, 24);
    for (name, prompt, chunk) in [
        ("latin1.png", "a red fox, in the snow: ü é\nsecond line", "tEXt"),
        ("unicode.png", "宇宙飛行士 🚀, riding a horse\n\nthird line", "iTXt"),
    ] {
        let path = tmp.0.join(name);
        let p = params(prompt);
        save_png(&path, &img, Some(&p), false).unwrap();
        let decoded = image::open(&path).unwrap().to_rgb8();
        assert_eq!(decoded, img, "{name}: pixels");
        assert_eq!(read_parameters(&path).unwrap().unwrap(), p.to_infotext(), "{name}: raw text");
        assert_eq!(read_generation_params(&path).unwrap(), p, "{name}: parsed");
        let chunks = chunk_types(&path);
        let text_at = chunks.iter().position(|c| c == chunk).unwrap_or_else(|| panic!("{name}: no {chunk} in {chunks:?}"));
        assert!(text_at < chunks.iter().position(|c| c == "IDAT").unwrap(), "{name}: text before the image data (as PIL writes it)");
    }
    // no parameters at all
    let bare = tmp.0.join("bare.png");
    save_png(&bare, &img, None, false).unwrap();
    assert_eq!(read_parameters(&bare).unwrap(), None);
    assert_eq!(read_generation_params(&bare).unwrap_err().to_string(), format!("{} is a PNG without generation parameters (no `parameters` text chunk)", bare.display()));
    assert!(leftovers(&tmp.0).is_empty());
}

#[test]
fn reads_what_pil_writes() {
    // scripts/fixtures/png_params.py: PngInfo.add_text as A1111 calls it
    let latin1 = read_generation_params(&fixture("pil_latin1.png")).unwrap();
    assert_eq!(latin1.prompt, "a red fox, snow");
    assert_eq!(latin1.negative_prompt, "blurry, ü");
    assert_eq!((latin1.steps, latin1.sampler.as_str(), latin1.cfg_scale, latin1.seed), (30, "Euler a", 7.5, 42));
    assert_eq!((latin1.width, latin1.height, latin1.model.as_deref()), (2, 2, Some("org/name")));
    assert_eq!(read_generation_params(&fixture("pil_ztxt.png")).unwrap(), latin1, "zTXt");
    let unicode = read_generation_params(&fixture("pil_unicode.png")).unwrap();
    assert_eq!((unicode.prompt.as_str(), unicode.seed, unicode.cfg_scale), ("宇宙飛行士 🚀", 4294967295, 7.0));
    assert_eq!(unicode.extra, vec![("Schedule type".to_string(), "Karras".to_string())]);
    let texts = read_png_texts(&fixture("pil_no_params.png"), None).unwrap();
    assert_eq!(texts, vec![("Comment".to_string(), "kiln test".to_string())]);
    assert!(matches!(read_generation_params(&fixture("pil_no_params.png")), Err(PngError::NoParameters(_))));
}

#[test]
fn never_overwrites_unless_asked() {
    let tmp = TempDir::new("ow");
    let path = tmp.0.join("out.png");
    save_png(&path, &gradient(4, 4), Some(&params("first")), false).unwrap();
    let err = save_png(&path, &gradient(8, 8), Some(&params("second")), false).unwrap_err();
    assert_eq!(err.to_string(), format!("{} already exists; not overwriting it (use --overwrite to replace it)", path.display()));
    assert_eq!(read_generation_params(&path).unwrap().prompt, "first", "the existing file is untouched");
    save_png(&path, &gradient(8, 8), Some(&params("second")), true).unwrap();
    assert_eq!(read_generation_params(&path).unwrap().prompt, "second");
    assert_eq!(image::open(&path).unwrap().to_rgb8(), gradient(8, 8));
    // a symlink, dangling or not, is never replaced, even with overwrite
    let link = tmp.0.join("link.png");
    std::os::unix::fs::symlink(tmp.0.join("nowhere.png"), &link).unwrap();
    for overwrite in [false, true] {
        assert!(matches!(save_png(&link, &gradient(2, 2), None, overwrite), Err(PngError::NotARegularFile(_))));
    }
    assert!(fs::symlink_metadata(&link).unwrap().file_type().is_symlink() && !tmp.0.join("nowhere.png").exists());
    assert!(leftovers(&tmp.0).is_empty(), "{:?}", leftovers(&tmp.0));
}

#[test]
fn bad_output_paths_name_the_problem() {
    let tmp = TempDir::new("bad");
    let img = gradient(2, 2);
    let missing = tmp.0.join("no/such/dir");
    let err = save_png(&missing.join("x.png"), &img, None, false).unwrap_err();
    assert_eq!(err.to_string(), format!("output directory {} does not exist", missing.display()));
    let file = tmp.0.join("file");
    fs::write(&file, b"x").unwrap();
    let err = save_png(&file.join("x.png"), &img, None, false).unwrap_err();
    assert_eq!(err.to_string(), format!("output directory {} is not a directory", file.display()));
    let err = save_png(&tmp.0, &img, None, true).unwrap_err();
    assert_eq!(err.to_string(), format!("{} names a folder, not an image file (give a file name ending in .png)", tmp.0.display()));
    let err = save_png_with_text(&tmp.0.join("empty.png"), &RgbImage::new(0, 0), &[], false).unwrap_err();
    assert!(err.to_string().starts_with(&format!("cannot encode {} as PNG", tmp.0.join("empty.png").display())), "{err}");
    assert!(!tmp.0.join("empty.png").exists());
    assert!(leftovers(&tmp.0).is_empty(), "{:?}", leftovers(&tmp.0));
}

#[test]
fn bad_inputs_name_the_file() {
    let tmp = TempDir::new("in");
    let not_png = tmp.0.join("fake.png");
    fs::write(&not_png, b"GIF89a not a png at all").unwrap();
    assert_eq!(read_parameters(&not_png).unwrap_err().to_string(), format!("{} is not a PNG file (no PNG signature)", not_png.display()));
    let truncated = tmp.0.join("truncated.png");
    fs::write(&truncated, &fs::read(fixture("pil_latin1.png")).unwrap()[..40]).unwrap();
    let err = read_parameters(&truncated).unwrap_err().to_string();
    assert!(err.starts_with(&format!("{} is not a valid PNG (corrupt or truncated?)", truncated.display())), "{err}");
    let missing = tmp.0.join("missing.png");
    assert!(read_parameters(&missing).unwrap_err().to_string().starts_with(&format!("cannot read {}", missing.display())));
    let garbled = tmp.0.join("garbled.png");
    save_png_with_text(&garbled, &gradient(2, 2), &[("parameters", "just some text")], false).unwrap();
    assert_eq!(
        read_generation_params(&garbled).unwrap_err().to_string(),
        format!("{}: cannot parse its generation parameters: no parameter line (`Steps: …, Sampler: …, …`)", garbled.display())
    );
}
