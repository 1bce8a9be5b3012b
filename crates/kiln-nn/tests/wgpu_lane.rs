//! The wgpu lane: kiln-nn's blocks on a CubeCL device (`kiln_ops::testing::wgpu_lane_device`, on
//! a CPU-only machine Mesa's llvmpipe through OpenGL) against the same weights and inputs on flex.
//!
//! Each test builds its block on flex with random weights, copies the module and inputs to the
//! lane device, and compares the outputs with `kiln_ops::testing::assert_close`. Every test runs
//! under the watchdog (`kiln_ops::lane_test!`); see kiln-ops/tests/wgpu_lane.rs for the ops alone.

use burn::module::Module;
use burn::tensor::Device;
use kiln_nn::{AttentionConfig, Downsample2DConfig, ResnetBlock2DConfig, Upsample2DConfig};
use kiln_ops::lane_test;
use kiln_ops::testing::{assert_close, randn};

lane_test! {
    fn resnet_block_with_temb_and_shortcut(lane) {
        let flex = Device::flex();
        // in != out: exercises conv_shortcut; temb: time_emb_proj; UNet eps and a VAE-style one.
        for (what, temb, eps) in [("resnet (unet)", Some(24), 1e-5), ("resnet (vae)", None, 1e-6)] {
            let block = ResnetBlock2DConfig::new(16, 32).with_temb_channels(temb).with_groups(8).with_eps(eps).init(&flex);
            let x = randn([2, 16, 8, 8], &flex);
            let t = temb.map(|c| randn([2, c], &flex));
            let want = block.forward(x.clone(), t.clone());
            let got = block.to_device(&lane).forward(x.to_device(&lane), t.map(|t| t.to_device(&lane)));
            assert_close(what, got, want);
        }
    }
}

lane_test! {
    fn attention_self_cross_and_spatial(lane) {
        let flex = Device::flex();

        // UNet attn1 (self) and attn2 (cross, context width 24, 7 tokens), head_dim 8.
        let attn1 = AttentionConfig::new(32, 4, 8).init(&flex);
        let attn2 = AttentionConfig::new(32, 4, 8).with_cross_attention_dim(Some(24)).init(&flex);
        let x = randn([2, 36, 32], &flex);
        let ctx = randn([2, 7, 24], &flex);
        let want = attn1.forward(x.clone(), None);
        let got = attn1.to_device(&lane).forward(x.clone().to_device(&lane), None);
        assert_close("attention self", got, want);
        let want = attn2.forward(x.clone(), Some(ctx.clone()));
        let got = attn2.to_device(&lane).forward(x.to_device(&lane), Some(ctx.to_device(&lane)));
        assert_close("attention cross", got, want);

        // VAE mid-block: GroupNorm, one head over the channels, residual.
        let vae = AttentionConfig::new(16, 1, 16)
            .with_qkv_bias(true)
            .with_norm_num_groups(Some(4))
            .with_residual_connection(true)
            .init(&flex);
        let x = randn([1, 16, 6, 6], &flex);
        let want = vae.forward_spatial(x.clone());
        let got = vae.to_device(&lane).forward_spatial(x.to_device(&lane));
        assert_close("attention spatial (vae)", got, want);
    }
}

lane_test! {
    fn downsample_and_upsample(lane) {
        let flex = Device::flex();
        let x = randn([1, 8, 9, 9], &flex);
        // UNet (padding 1) and VAE encoder (padding 0 = asymmetric (0, 1, 0, 1) pad first).
        for (what, padding) in [("downsample pad 1", 1), ("downsample vae", 0)] {
            let down = Downsample2DConfig::new(8, 8).with_padding(padding).init(&flex);
            let want = down.forward(x.clone());
            let got = down.to_device(&lane).forward(x.clone().to_device(&lane));
            assert_close(what, got, want);
        }
        let up = Upsample2DConfig::new(8, 4).init(&flex);
        let lane_up = up.clone().to_device(&lane);
        let want = up.forward(x.clone(), None);
        let got = lane_up.forward(x.clone().to_device(&lane), None);
        assert_close("upsample x2", got, want);
        // The UNet's odd-size case: upsample to the skip connection's 17x19.
        let want = up.forward(x.clone(), Some([17, 19]));
        let got = lane_up.forward(x.to_device(&lane), Some([17, 19]));
        assert_close("upsample to 17x19", got, want);
    }
}
