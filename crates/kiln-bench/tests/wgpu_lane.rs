//! `kiln bench`'s harness on the wgpu lane (`kiln_ops::testing`; Mesa's llvmpipe through OpenGL
//! on a CPU-only machine).

use std::path::PathBuf;

use burn::tensor::DType;

fn root() -> PathBuf {
    PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into())).join("../..")
}

kiln_ops::lane_test! {
/// `kiln bench`'s report on a GPU runtime (the lane; the CLI refuses llvmpipe's OpenGL for its
/// wrong long-row sums, which these tiny shapes stay clear of): the adapter named, every op's
/// routes measured at first use with none disagreeing with burn's, both peak-memory figures from
/// the device allocator (the timed calls' after first use gave its pages back), the profile.
/// Ignored by default: 100-360 s on 2 cores. Run it with
/// `cargo test -p kiln-bench --test wgpu_lane -- --ignored --nocapture`.
#[ignore = "100-360 s on llvmpipe; run with --ignored"]
fn bench_report_on_the_wgpu_lane(device) {
    use kiln_bench::{run_bench, BenchModel, BenchOptions};
    let o = BenchOptions {
        model: BenchModel::Folder(root().join("assets/fixtures/models/sd1")),
        dtype: DType::F32,
        vae_dtype: DType::F32,
        width: 64,
        height: 48,
        steps: 2,
        batch: 1,
        iters: 1,
        seed: 0,
        profile: true,
    };
    let r = run_bench(&o, &device, "wgpu lane").unwrap();
    eprintln!("{}", serde_json::to_string_pretty(&r).unwrap());
    assert!(r.adapter.as_deref().is_some_and(|a| !a.is_empty()), "{:?}", r.adapter);
    for op in ["attention", "conv2d", "group_norm"] {
        assert!(r.routes.iter().any(|c| c.op == op), "{op} measured");
    }
    assert!(r.routes.iter().all(|c| c.mismatched.is_empty() && c.times_ms.len() >= 2), "{:?}", r.routes);
    let (peak, steady) = (r.peak_memory_bytes.unwrap(), r.steady_peak_memory_bytes.unwrap());
    assert!(steady > 0 && steady <= peak, "peak {peak}, steady {steady}");
    assert_eq!(r.peak_memory_source, "device allocator, bytes reserved");
    assert!(r.unet_profile.is_some());
}
}
