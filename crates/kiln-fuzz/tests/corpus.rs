//! The seed corpus holds a JPEG init image for the image target, written by this test with
//! `KILN_WRITE_CORPUS=1` (the image crate's encoder; scripts/fixtures/fuzz_corpus.py writes the
//! other seeds) and checked here otherwise: it must decode to the gradient it was made from.

use image::{ImageFormat, Rgb, RgbImage};

fn gradient() -> RgbImage {
    RgbImage::from_fn(16, 8, |x, y| Rgb([(x * 16) as u8, (y * 32) as u8, 128]))
}

#[test]
fn the_corpus_has_a_jpeg_init_image() {
    let path = kiln_fuzz::corpus_dir().join("image/gradient-16x8.jpg");
    if std::env::var("KILN_WRITE_CORPUS").is_ok_and(|v| v == "1") {
        gradient().save_with_format(&path, ImageFormat::Jpeg).unwrap();
    }
    let img = image::open(&path).expect("corpus/image/gradient-16x8.jpg decodes").to_rgb8();
    assert_eq!(img.dimensions(), (16, 8));
    let err = img.pixels().zip(gradient().pixels()).map(|(a, b)| (0..3).map(|c| (a[c] as i32 - b[c] as i32).abs()).max().unwrap()).max().unwrap();
    assert!(err <= 24, "JPEG error {err}");
}
