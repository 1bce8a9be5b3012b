//! kiln's GPU routes (`kiln_ops::gpu::route`) through a whole UNet on the wgpu lane
//! (`kiln_ops::testing::wgpu_lane_device`: Mesa's llvmpipe through OpenGL on CI): the tiny SD1
//! UNet (head dims 4 and 8, so the padded attention route applies too) must give diffusers'
//! output with every alternative forced, with `auto` (which measures every op's routes at each
//! shape) and with burn's ops alone. Its own test binary, since the route policies are
//! process-wide.

mod common;

use common::*;
use kiln_ops::gpu::route::{route_choices, set_policy, GpuOp, RoutePolicy};
use kiln_unet::UNet2DConditionModel;
use kiln_unet::LoadOptions;

fn run_sd1(lane: &burn::tensor::Device, policies: &[RoutePolicy]) {
    let unet = UNet2DConditionModel::load(&fixture_dir("sd1").join("unet"), &LoadOptions::new(lane)).unwrap();
    let refs = Refs::family("sd1");
    for &policy in policies {
        for op in GpuOp::ALL {
            set_policy(op, policy);
        }
        for (case, err, scale) in run_cases(&unet, &refs, lane) {
            eprintln!("sd1 on the lane, routes {policy:?}, {case}: max err {err:.3e}, max |ref| {scale:.3}");
            // f32 against diffusers' f32: summation order only (as in parity.rs)
            let tol = 1e-4 * scale.max(1.0);
            assert!(err <= tol, "{policy:?} {case}: max err {err} > {tol}");
        }
    }
}

kiln_ops::lane_test! {
    /// Also the on-disk store of measured choices: this process measures and writes every choice to
    /// a fresh store; a second process (this test re-run with `KILN_ROUTES_CHILD`) pointed at the
    /// same store by `KILN_CACHE_DIR` reads every one back instead of timing, and still matches
    /// diffusers.
    fn every_route_through_the_sd1_unet_matches_diffusers(lane) {
        if let Ok(expected) = std::env::var("KILN_ROUTES_CHILD") {
            run_sd1(&lane, &[RoutePolicy::Auto]);
            let made = route_choices();
            assert_eq!(made.len().to_string(), expected, "{made:?}");
            assert!(made.iter().all(|c| c.cached), "every choice read from the store: {made:?}");
            return;
        }
        let dir = std::env::temp_dir().join(format!("kiln-routes-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        kiln_ops::gpu::store::set_store_path(Some(dir.join("gpu-routes.json")));
        run_sd1(&lane, &[RoutePolicy::Alternative, RoutePolicy::Auto, RoutePolicy::Burn]);
        let made = route_choices();
        for c in &made {
            eprintln!("measured: {} {} -> {} {:?}", c.op, c.shape, c.route, c.times_s);
        }
        for op in ["attention", "conv2d", "group_norm"] {
            assert!(made.iter().any(|c| c.op == op), "{op} was measured: {made:?}");
        }
        assert!(made.iter().all(|c| !c.cached), "a fresh store: {made:?}");
        assert!(made.iter().all(|c| c.mismatched.is_empty()), "every alternative agrees with burn's op: {made:?}");
        let stored: Vec<serde_json::Value> = serde_json::from_slice(&std::fs::read(dir.join("gpu-routes.json")).unwrap()).unwrap();
        assert_eq!(stored.len(), made.len());
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "every_route_through_the_sd1_unet_matches_diffusers", "--nocapture"])
            .env("KILN_ROUTES_CHILD", made.len().to_string())
            .env("KILN_CACHE_DIR", &dir)
            .status()
            .expect("re-running the test binary");
        assert!(status.success(), "the second process: {status}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
