//! kiln's GPU routes (`kiln_nn::gpu_route`) through a whole UNet on the wgpu lane
//! (`kiln_nn::testing::wgpu_lane_device`: Mesa's llvmpipe through OpenGL on CI): the tiny SD1
//! UNet (head dims 4 and 8, so the padded attention route applies too) must give diffusers'
//! output with every alternative forced, with `auto` (which measures every op's routes at each
//! shape) and with burn's ops alone. Its own test binary, since the route policies are
//! process-wide.

mod common;

use burn::tensor::DType;
use common::*;
use kiln_nn::gpu_route::{route_choices, set_policy, GpuOp, RoutePolicy};
use kiln_unet::UNet2DConditionModel;

#[test]
fn every_route_through_the_sd1_unet_matches_diffusers() {
    let Some(lane) = kiln_nn::testing::wgpu_lane_device() else { return };
    let unet = UNet2DConditionModel::load(&fixture_dir("sd1").join("unet"), &lane, DType::F32, None).unwrap();
    let refs = Refs::family("sd1");
    for policy in [RoutePolicy::Alternative, RoutePolicy::Auto, RoutePolicy::Burn] {
        for op in GpuOp::ALL {
            set_policy(op, policy);
        }
        for (case, err, scale) in run_cases(&unet, &refs, &lane) {
            eprintln!("sd1 on the lane, routes {policy:?}, {case}: max err {err:.3e}, max |ref| {scale:.3}");
            // f32 against diffusers' f32: summation order only (as in parity.rs)
            let tol = 1e-4 * scale.max(1.0);
            assert!(err <= tol, "{policy:?} {case}: max err {err} > {tol}");
        }
    }
    let made = route_choices();
    for c in &made {
        eprintln!("measured: {} {} -> {} {:?}", c.op, c.shape, c.route, c.times_s);
    }
    for op in ["attention", "conv2d", "group_norm"] {
        assert!(made.iter().any(|c| c.op == op), "{op} was measured: {made:?}");
    }
}
