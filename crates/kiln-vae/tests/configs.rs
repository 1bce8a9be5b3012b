//! The SD 1.5, SD 2.1 and SDXL `vae/config.json` files as published on the Hub
//! (crates/kiln-pipeline/configs/<family>/vae/config.json) build the full-size VAE, and a random-weight model
//! encodes and decodes at a tiny size on flex.

mod common;

use burn::prelude::*;
use burn::tensor::Distribution;
use common::assets;
use kiln_vae::AutoencoderKLConfig;

#[test]
fn published_configs_build_and_run() {
    let device = Device::flex();
    for (family, sample_size, scaling) in [("sd15", 512, 0.18215), ("sd21", 768, 0.18215), ("sdxl", 1024, 0.13025)] {
        let path = assets().join("../crates/kiln-pipeline/configs").join(family).join("vae/config.json");
        let config = AutoencoderKLConfig::from_file(&path).unwrap_or_else(|e| panic!("{family}: {e}"));
        assert_eq!(config.block_out_channels, [128, 256, 512, 512]);
        assert_eq!(config.layers_per_block, 2);
        assert_eq!(config.scaling_factor, scaling);
        assert!(config.force_upcast && config.use_quant_conv && config.use_post_quant_conv);
        assert_eq!(config.downsample_factor(), 8);
        assert_eq!((config.tile_sample_min_size(), config.tile_latent_min_size()), (sample_size, sample_size / 8));

        let vae = config.init(&device).unwrap();
        // diffusers: AutoencoderKL.from_config(...) has 83 653 863 parameters for all three
        assert_eq!(vae.num_params(), 83_653_863, "{family}");
        // 4×4 latents -> 32×32 image
        let z = Tensor::<4>::random([1, 4, 4, 4], Distribution::Normal(0.0, 1.0), &device);
        let image = vae.decode(z).unwrap();
        assert_eq!(image.dims(), [1, 3, 32, 32], "{family}");
        let finite: bool = image.is_finite().all().into_scalar();
        assert!(finite, "{family}: non-finite decode");
        if family == "sd15" {
            let x = Tensor::<4>::random([1, 3, 32, 32], Distribution::Uniform(-1.0, 1.0), &device);
            let posterior = vae.encode(x).unwrap();
            assert_eq!(posterior.mean.dims(), [1, 4, 4, 4]);
        }
    }
}

/// SD 3.5's and FLUX.1's `vae/config.json` (16 latent channels, no quant convs, their shift and
/// scaling factors) build the full-size VAE with diffusers' parameter count and decode on flex.
#[test]
fn flow_family_configs_build_and_run() {
    let device = Device::flex();
    for (family, scaling, shift) in [("sd35-medium", 1.5305, 0.0609), ("sd35-large", 1.5305, 0.0609), ("flux-schnell", 0.3611, 0.1159), ("flux-dev", 0.3611, 0.1159)] {
        let path = assets().join("../crates/kiln-pipeline/configs").join(family).join("vae/config.json");
        let config = AutoencoderKLConfig::from_file(&path).unwrap_or_else(|e| panic!("{family}: {e}"));
        assert_eq!((config.latent_channels, config.scaling_factor, config.shift_factor), (16, scaling, Some(shift)), "{family}");
        assert!(!config.use_quant_conv && !config.use_post_quant_conv, "{family}");
        let vae = config.init(&device).unwrap();
        // diffusers: AutoencoderKL.from_config(...) (scripts/fixtures/flow_configs.py)
        assert_eq!(vae.num_params(), 83_819_683, "{family}");
        if family == "flux-dev" {
            let image = vae.decode(Tensor::<4>::random([1, 16, 4, 4], Distribution::Normal(0.0, 1.0), &device)).unwrap();
            assert_eq!(image.dims(), [1, 3, 32, 32]);
        }
    }
}
