//! The wgpu lane: kiln-ops' ops on a CubeCL device (`kiln_ops::testing::wgpu_lane_device`, on a
//! CPU-only machine Mesa's llvmpipe through OpenGL) against the same inputs on flex, and the device
//! checks `kiln --device` relies on.
//!
//! Each test runs its op on flex and on the lane and compares the outputs with
//! `kiln_ops::testing::assert_close` (max |lane - flex| <= 1e-4 x max(1, max|flex|), see there).
//! Shapes are tiny: Mesa caps a storage buffer at 128 MiB and llvmpipe is slow.
//!
//! Every test runs under the watchdog (`kiln_ops::lane_test!`): in a child process, one at a
//! time, failing with every thread's backtrace past its deadline. Tests skip (with the reason on
//! stderr) only when the machine has no adapter for the lane; CI sets `KILN_WGPU_LANE_REQUIRED=1`
//! so a missing adapter fails instead.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::PaddingConfig2d;
use burn::tensor::{Device, Tensor};
use kiln_ops::lane_test;
use kiln_ops::scaled_dot_product_attention;
use kiln_ops::testing::{assert_close, randn};

/// `nn.Conv2d(c_in, c_out, kernel, stride, padding)` with random weights.
fn conv2d(c_in: usize, c_out: usize, kernel: usize, stride: usize, padding: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([c_in, c_out], [kernel, kernel])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(padding, padding, padding, padding))
        .init(device)
}

/// The OpenGL device (`kiln_ops::device::open`, which the lane shares by default).
fn lane_gl() -> Device {
    kiln_ops::device::open(Some(burn::tensor::wgpu::WgpuBackend::Gl)).expect("the lane runs on OpenGL")
}

lane_test! {
    /// The lane's device names its adapter (what `kiln bench` reports as `adapter`): llvmpipe.
    fn the_lane_device_names_its_adapter(lane) {
        let name = lane.identity().map(|i| i.name).unwrap_or_default();
        eprintln!("lane adapter: {name:?}");
        assert!(name.contains("llvmpipe"), "{name:?}");
    }
}

lane_test! {
    /// `kiln_ops::device::auto` (`kiln --device wgpu`) passes over a Vulkan driver cubecl would crash
    /// (lavapipe on CI) for OpenGL: where OpenGL passes `reduction_check` that device runs a matrix
    /// product (the kernel lavapipe crashes on); where it does not (llvmpipe, CI) `auto` refuses with
    /// both reasons. Skipped where Vulkan is usable or absent.
    fn auto_device_passes_over_a_crashing_vulkan_driver(_lane) {
        use kiln_ops::device::{auto, vulkan_check, VulkanCheck};
        let check = vulkan_check();
        if !matches!(check, VulkanCheck::Crashes(_)) {
            return eprintln!("skipped: Vulkan here is {check:?}");
        }
        match (kiln_ops::device::reduction_check(&lane_gl()), auto()) {
            (Ok(()), Ok(device)) => {
                assert!(format!("{device:?}").contains("Gl"), "{device:?}");
                let flex = Device::flex();
                let (a, b) = (randn([64, 64], &flex), randn([64, 64], &flex));
                let want = a.clone().matmul(b.clone());
                assert_close("matmul on device::auto", a.to_device(&device).matmul(b.to_device(&device)), want);
            }
            // llvmpipe's OpenGL (CI): refused too, with both reasons
            (Err(gl), Err(why)) => assert!(why.contains(&gl) && why.contains("VK_KHR_workgroup_memory_explicit_layout"), "{why}"),
            (gl, auto) => panic!("OpenGL's check says {gl:?} but auto() gave {auto:?}"),
        }
    }
}

lane_test! {
    /// `kiln_ops::device::reduction_check` passes on flex, and on the lane its verdict is what summing
    /// its rows there gives — on Mesa 22.3.6's llvmpipe through OpenGL (CI) a refusal naming the
    /// adapter and the wrong sums, the burn 0.22.1 bug kiln refuses `--device wgpu` for there (when
    /// an update fixes it, this test fails: drop the expectation, and kiln uses the adapter again).
    fn reduction_check_catches_wrong_row_sums(lane) {
        use kiln_ops::device::{reduction_check, REDUCTION_CHECKS};
        assert_eq!(reduction_check(&Device::flex()), Ok(()));
        let verdict = reduction_check(&lane);
        eprintln!("reduction check on the lane: {verdict:?}");
        let right = |[rows, len]: [usize; 2]| {
            let sums = Tensor::<2>::ones([rows, len], &Device::flex()).to_device(&lane).sum_dim(1);
            sums.into_data().try_to_vec::<f32>().unwrap().iter().all(|&s| s == len as f32)
        };
        assert_eq!(verdict.is_ok(), REDUCTION_CHECKS.into_iter().all(right));
        let name = lane.identity().map(|i| i.name).unwrap_or_default();
        if name.contains("llvmpipe") && format!("{lane:?}").contains("Gl") {
            let why = verdict.expect_err("burn's row sums on llvmpipe/OpenGL were wrong (Mesa 22.3.6, burn 0.22.1)");
            assert!(why.contains(&name) && why.contains("ones to ["), "{why}");
        }
    }
}

lane_test! {
    /// `kiln_ops::device::dtype_check`: flex computes in f16 and f32; OpenGL's WGSL has no f16 (the lane
    /// says so through `Device::supports_dtype`), and the refusal names the flag and the way out.
    fn dtype_check_names_the_flag(lane) {
        use burn::tensor::DType;
        use kiln_ops::device::dtype_check;
        assert_eq!(dtype_check(&Device::flex(), DType::F16, "--dtype"), Ok(()));
        assert_eq!(dtype_check(&lane, DType::F32, "--dtype"), Ok(()));
        match dtype_check(&lane, DType::F16, "--vae-dtype") {
            Ok(()) => assert!(lane.supports_dtype(DType::F16)),
            Err(why) => assert!(why.starts_with("--vae-dtype f16: the adapter") && why.ends_with("use --vae-dtype f32"), "{why}"),
        }
    }
}

lane_test! {
    fn matmul_batched_and_odd_sizes(lane) {
        let flex = Device::flex();
        for (what, [b, m, k, n]) in [("matmul 64x64x64", [1, 64, 64, 64]), ("matmul batched odd", [3, 33, 40, 17])] {
            let a = randn([b, m, k], &flex);
            let c = randn([b, k, n], &flex);
            let want = a.clone().matmul(c.clone());
            let got = a.to_device(&lane).matmul(c.to_device(&lane));
            assert_close(what, got, want);
        }
    }
}

lane_test! {
    fn conv2d_3x3_stride_1_and_2(lane) {
        let flex = Device::flex();
        let x = randn([2, 8, 12, 12], &flex);
        for (what, stride) in [("conv 3x3 s1", 1), ("conv 3x3 s2", 2)] {
            let conv = conv2d(8, 16, 3, stride, 1, &flex);
            let want = conv.forward(x.clone());
            let got = conv.to_device(&lane).forward(x.clone().to_device(&lane));
            assert_close(what, got, want);
        }
    }
}

lane_test! {
    fn attention_causal(lane) {
        let flex = Device::flex();
        // CLIP's text encoder: causal self-attention, 77 tokens, head_dim 16 (and SD1.x's 40).
        for (what, [b, h, s, d]) in [("sdpa causal d16", [1, 2, 77, 16]), ("sdpa causal d40", [2, 1, 9, 40])] {
            let q = randn([b, h, s, d], &flex);
            let k = randn([b, h, s, d], &flex);
            let v = randn([b, h, s, d], &flex);
            let want = scaled_dot_product_attention(q.clone(), k.clone(), v.clone(), false, true);
            let got = scaled_dot_product_attention(q.to_device(&lane), k.to_device(&lane), v.to_device(&lane), false, true);
            assert_close(what, got, want);
        }
    }
}

lane_test! {
    /// The padded-head-dim route (`GpuAttentionRoute::PaddedHeadDim`, what `--gpu-attention auto`
    /// may pick for SD 1.x's head dim 40 on GPUs) through burn's CubeCL attention against flex, and
    /// the measurement `auto` makes: both routes timed, a finite positive time each.
    fn attention_padded_head_dim_route(lane) {
        use kiln_ops::attention::{attention_by, GpuAttentionRoute};
        use kiln_ops::gpu::route::time_calls;
        let flex = Device::flex();
        for (what, causal, [b, h, sq, sk, d]) in
            [("padded d40 self", false, [2, 2, 64, 64, 40]), ("padded d40 cross", false, [1, 2, 33, 7, 40]), ("padded d8 causal", true, [1, 2, 9, 9, 8])]
        {
            let q = randn([b, h, sq, d], &flex);
            let k = randn([b, h, sk, d], &flex);
            let v = randn([b, h, sk, d], &flex);
            let want = scaled_dot_product_attention(q.clone(), k.clone(), v.clone(), false, causal);
            let (q, k, v) = (q.to_device(&lane), k.to_device(&lane), v.to_device(&lane));
            let got = attention_by(GpuAttentionRoute::PaddedHeadDim, q.clone(), k.clone(), v.clone(), causal);
            assert_close(what, got, want);
            for route in [GpuAttentionRoute::Burn, GpuAttentionRoute::PaddedHeadDim] {
                let secs = time_calls(&lane, &|| attention_by(route, q.clone(), k.clone(), v.clone(), causal)).expect("the lane runs the route");
                eprintln!("{what}: {route:?} {:.3} ms", secs * 1e3);
                assert!(secs > 0.0 && secs.is_finite(), "{route:?}: {secs}");
            }
        }
    }
}

lane_test! {
    /// burn's flash kernels called through kiln's backend extension (`kiln_ops::gpu::flash`, the
    /// `auto` attention candidates with kiln's tile sizes) against flex's explicit softmax: the unit
    /// routine, which every cubecl GPU runs, on head dims 16 and 32 (causal too, and a value dim
    /// unlike the key's), and the `Flash` route with a tensor-core tile configuration at head dim 40
    /// (padded to 48) and a cross-attention key length of 7 — on a GPU without f16 cooperative
    /// matrices (this lane) that kernel is unavailable and burn's fallback answers, as the route
    /// promises. The tile configurations are offered exactly where the device has f16 tensor cores,
    /// in f16/bf16.
    fn flash_attention_with_kilns_tiles(lane) {
        use burn::tensor::DType;
        use kiln_ops::attention::{attention_by, GpuAttentionRoute};
        use kiln_ops::gpu::flash::{flash_attention, flash_tile_candidates, has_f16_tensor_cores, FlashKernel, FLASH_TILES};
        let flex = Device::flex();
        let cores = has_f16_tensor_cores(&lane);
        eprintln!("lane has f16 tensor cores: {cores}");
        let sd15 = [2, 8, 4096, 40]; // SD 1.5's largest self-attention at 512 px: 43 GFLOP
        assert_eq!(flash_tile_candidates(&lane, DType::F16, sd15, 4096).len(), if cores { FLASH_TILES.len() } else { 0 });
        assert!(flash_tile_candidates(&lane, DType::F32, sd15, 4096).is_empty());
        for (what, causal, [b, h, sq, sk, d, dv]) in [
            ("unit d16 self", false, [2, 2, 64, 64, 16, 16]),
            ("unit d32 causal", true, [1, 2, 48, 48, 32, 32]),
            ("unit d16 cross, value dim 32", false, [1, 3, 32, 7, 16, 32]),
        ] {
            let q = randn([b, h, sq, d], &flex);
            let k = randn([b, h, sk, d], &flex);
            let v = randn([b, h, sk, dv], &flex);
            let want = scaled_dot_product_attention(q.clone(), k.clone(), v.clone(), false, causal);
            let got = flash_attention(FlashKernel::Unit, q.to_device(&lane), k.to_device(&lane), v.to_device(&lane), causal);
            assert_close(what, got, want);
        }
        let tiles = GpuAttentionRoute::Flash(FLASH_TILES[0].1);
        for (what, [b, h, sq, sk, d]) in [("flash tiles d40 self", [2, 2, 64, 64, 40]), ("flash tiles d40 cross", [1, 2, 64, 7, 40])] {
            let q = randn([b, h, sq, d], &flex);
            let k = randn([b, h, sk, d], &flex);
            let v = randn([b, h, sk, d], &flex);
            let want = scaled_dot_product_attention(q.clone(), k.clone(), v.clone(), false, false);
            let got = attention_by(tiles, q.to_device(&lane), k.to_device(&lane), v.to_device(&lane), false);
            assert_close(what, got, want);
        }
    }
}

lane_test! {
    /// The im2col route of GPU convolutions (`GpuConvRoute::Im2col`, what `--gpu-conv auto` may pick)
    /// through burn's CubeCL matmul against burn's conv on flex: SD's 3×3 with padding 1 and a 1×1,
    /// whole and in bands of output rows.
    fn conv2d_im2col_route(lane) {
        use kiln_ops::gpu::conv::{conv2d_by, im2col_conv, GpuConvRoute};
        let flex = Device::flex();
        for (what, [b, c_in, h, w], c_out, k, p) in [("im2col 3x3", [2, 8, 9, 7], 6, 3, 1), ("im2col 1x1", [2, 8, 5, 5], 4, 1, 0)] {
            let conv = conv2d(c_in, c_out, k, 1, p, &flex);
            let x = randn([b, c_in, h, w], &flex);
            let want = conv.forward(x.clone());
            let got = conv2d_by(GpuConvRoute::Im2col, &conv.clone().to_device(&lane), x.clone().to_device(&lane));
            assert_close(what, got, want.clone());
            // bands of 2 output rows (the split the VAE's large convolutions get)
            let row_bytes = k * k * c_in * want.dims()[3] * 4;
            let got = im2col_conv(&conv.to_device(&lane), x.to_device(&lane), 2 * row_bytes);
            assert_close(&format!("{what}, bands of 2 rows"), got, want);
        }
    }
}

lane_test! {
    /// The fused GroupNorm (+ SiLU) route (`GpuNormRoute::Fused`, what `--gpu-norm auto` may pick)
    /// through burn's fused CubeCL kernels against burn's GroupNorm on flex.
    fn group_norm_fused_route(lane) {
        use burn::nn::GroupNormConfig;
        use kiln_ops::gpu::norm::{group_norm_by, GpuNormRoute};
        let flex = Device::flex();
        for (what, [b, c, h, w], groups, with_silu) in [("fused group norm + silu", [2, 32, 8, 8], 8, true), ("fused group norm", [1, 12, 5, 7], 4, false)] {
            let mut norm = GroupNormConfig::new(groups, c).with_epsilon(1e-6).init(&flex);
            norm.gamma = Some(burn::module::Param::from_tensor(randn([c], &flex)));
            norm.beta = Some(burn::module::Param::from_tensor(randn([c], &flex)));
            let x = randn([b, c, h, w], &flex).add_scalar(3.0);
            let want = group_norm_by(GpuNormRoute::Burn, &norm, x.clone(), with_silu);
            let got = group_norm_by(GpuNormRoute::Fused, &norm.clone().to_device(&lane), x.to_device(&lane), with_silu);
            assert_close(what, got, want);
        }
    }
}

lane_test! {
    /// `gpu_route::choose` on the lane: both candidates timed, the fastest kept and recorded, and the
    /// same key answered from the record without timing again.
    fn route_choice_is_measured_once(lane) {
        use burn::tensor::DType;
        use kiln_ops::gpu::route::{choose, route_choices};
        let x = randn([64, 64], &lane);
        let one = || x.clone().matmul(x.clone());
        // the same product, computed eight times: slower, and it agrees with `one` (choose checks that)
        let many = || (0..8).map(|_| x.clone().matmul(x.clone())).last().unwrap();
        let route = choose("lane test", &lane, DType::F32, "64x64".into(), &[("one", &one), ("many", &many)]);
        let made: Vec<_> = route_choices().into_iter().filter(|c| c.op == "lane test").collect();
        assert_eq!(made.len(), 1, "{made:?}");
        let c = &made[0];
        eprintln!("route choice: {c:?}");
        assert_eq!(c.times_s.iter().map(|t| t.0).collect::<Vec<_>>(), ["one", "many"]);
        assert!(c.times_s.iter().all(|t| t.1 > 0.0 && t.1.is_finite()), "{c:?}");
        assert!(c.mismatched.is_empty(), "{c:?}");
        let fastest = c.times_s.iter().min_by(|a, b| a.1.total_cmp(&b.1)).unwrap().0;
        assert_eq!((route, c.route), (fastest, fastest));
        let again = choose("lane test", &lane, DType::F32, "64x64".into(), &[("many", &many), ("one", &one)]);
        assert_eq!(again, route);
        assert_eq!(route_choices().iter().filter(|c| c.op == "lane test").count(), 1);
    }
}

/// Reproducer for the Vulkan (SPIR-V) lane's crash, kept out of the default run:
/// `cargo test -p kiln-ops --test wgpu_lane -- --ignored --nocapture vulkan_spirv_shared_memory_repro`.
///
/// Runs a 256x256 matmul on `Device::vulkan(DefaultDevice)` in a child process
/// (`kiln_ops::testing::run_in_child`), because the failure is a segfault. Passes when the child finishes and matches flex; on lavapipe (Mesa 22.3.6 and
/// 25.0.7, which lack `VK_KHR_workgroup_memory_explicit_layout`) it fails with the child killed
/// by SIGSEGV inside `vkCreateComputePipelines`: cubecl-spirv 0.11.3's implicit shared-memory
/// lowering declares each shared array as a Workgroup variable of pointer type (see
/// `kiln_ops::testing::lane`). Dump the SPIR-V with `CUBECL_DEBUG_LOG=/tmp/cubecl.log
/// CUBECL_DEBUG_OPTION=debug` and check it with `spirv-val --target-env vulkan1.3`.
#[test]
#[ignore = "reproducer: segfaults (in a child process) on lavapipe"]
fn vulkan_spirv_shared_memory_repro() {
    kiln_ops::testing::run_in_child(module_path!(), "vulkan_spirv_shared_memory_repro", || {
        let vulkan = Device::vulkan(burn::tensor::DeviceKind::DefaultDevice);
        let flex = Device::flex();
        let a = randn([256, 256], &flex);
        let b = randn([256, 256], &flex);
        let want = a.clone().matmul(b.clone());
        let got = a.to_device(&vulkan).matmul(b.to_device(&vulkan));
        assert_close("vulkan matmul 256", got, want);
    });
}
