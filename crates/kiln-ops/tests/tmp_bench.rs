use burn::tensor::{DType, Device, Distribution, Tensor};
use burn::nn::conv::Conv2dConfig;
use burn::nn::PaddingConfig2d;
use std::time::Instant;

#[test]
#[ignore]
fn conv_shapes() {
    let device = Device::flex();
    let shapes: Vec<(usize, usize, usize, usize, usize, usize)> = std::env::var("SHAPES").ok().map(|_| vec![(2, 2560, 1280, 4, 3, 1), (2, 2560, 1280, 8, 3, 1), (2, 1920, 1280, 8, 3, 1), (2, 1920, 640, 16, 3, 1), (2, 1280, 640, 16, 3, 1), (2, 960, 640, 16, 3, 1), (2, 960, 320, 32, 3, 1), (2, 640, 320, 32, 3, 1), (2, 640, 1280, 8, 3, 1), (2, 320, 640, 16, 3, 1), (2, 320, 320, 32, 3, 2), (2, 640, 640, 16, 3, 2), (2, 1280, 1280, 8, 3, 2)]).unwrap_or(vec![(2, 320, 320, 32, 3, 1), (2, 640, 640, 16, 3, 1), (2, 1280, 1280, 8, 3, 1), (2, 1280, 1280, 4, 3, 1), (2, 2560, 1280, 8, 3, 1), (1, 512, 512, 64, 3, 1), (1, 256, 256, 128, 3, 1), (2, 320, 320, 32, 1, 1)]);
    for (b, c_in, c_out, hw, k, stride) in shapes {
        let conv = Conv2dConfig::new([c_in, c_out], [k, k]).with_stride([stride, stride]).with_padding(PaddingConfig2d::Explicit(k / 2, k / 2, k / 2, k / 2)).init(&device);
        let x = Tensor::<4>::random([b, c_in, hw, hw], Distribution::Normal(0.0, 1.0), &device);
        let mut half = conv.clone();
        half.weight = half.weight.map(|w| w.cast(DType::F16));
        let mut times = vec![];
        for c in [&conv, &half] {
            let _ = kiln_ops::conv2d_forward(c, x.clone());
            let t = Instant::now();
            for _ in 0..3 { let _ = kiln_ops::conv2d_forward(c, x.clone()).into_data(); }
            times.push(t.elapsed().as_secs_f64() / 3.0 * 1e3);
        }
        println!("conv b{b} {c_in}->{c_out} {hw}x{hw} k{k} s{stride}: f32 {:.2} ms, f16 {:.2} ms", times[0], times[1]);
    }
    for (m, k, n) in [(2048, 320, 320), (2048, 320, 2560), (2048, 1280, 320), (512, 640, 5120), (128, 1280, 10240), (128, 5120, 1280), (154, 768, 768), (154, 768, 3072)] {
        let x = Tensor::<2>::random([m, k], Distribution::Normal(0.0, 1.0), &device);
        let w = Tensor::<2>::random([n, k], Distribution::Normal(0.0, 0.1), &device);
        let mut times = vec![];
        for w in [w.clone(), w.cast(DType::F16)] {
            let _ = kiln_ops::linear(x.clone(), w.clone(), None);
            let t = Instant::now();
            for _ in 0..3 { let _ = kiln_ops::linear(x.clone(), w.clone(), None).into_data(); }
            times.push(t.elapsed().as_secs_f64() / 3.0 * 1e3);
        }
        println!("linear {m}x{k} -> {n}: f32 {:.2} ms, f16 {:.2} ms", times[0], times[1]);
    }
}

#[test]
#[ignore]
fn conversion() {
    use half::slice::HalfFloatSliceExt;
    let n = 14_745_600usize;
    let src: Vec<half::f16> = (0..n).map(|i| half::f16::from_f32((i % 1000) as f32 * 0.001)).collect();
    let mut dst = vec![0f32; 400 * 640];
    let t = Instant::now();
    for chunk in src.chunks(400 * 640) {
        for (s, d) in chunk.chunks(400).zip(dst.chunks_mut(400)) {
            s.convert_to_f32_slice(&mut d[..s.len()]);
        }
    }
    println!("convert {n}: {:.2} ms", t.elapsed().as_secs_f64() * 1e3);
    let t = Instant::now();
    for chunk in src.chunks(400 * 640) {
        for (s, d) in chunk.chunks(400).zip(dst.chunks_mut(400)) {
            for (a, b) in s.iter().zip(d.iter_mut()) { *b = a.to_f32(); }
        }
    }
    println!("per element {n}: {:.2} ms", t.elapsed().as_secs_f64() * 1e3);
}
