//! The text encoders of the published SD 3.5 and FLUX.1 configs (crates/kiln-pipeline/configs,
//! scripts/fixtures/flow_configs.py): T5 v1.1 XXL's encoder and SD 3's CLIP-L with projection build
//! with transformers' parameter counts, lazily (nothing of T5's 4.8 B parameters is allocated).

use std::path::PathBuf;

use burn::module::Module;
use burn::prelude::*;
use kiln_text_encoder::t5::{T5Config, T5EncoderModel};
use kiln_text_encoder::{ClipTextConfig, ClipTextModel};

fn configs() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../kiln-pipeline/configs")
}

#[test]
fn t5_xxl_and_clip_l_have_transformers_parameter_counts() {
    for path in ["sd35-medium/text_encoder_3", "sd35-large/text_encoder_3", "flux-dev/text_encoder_2", "flux-schnell/text_encoder_2"] {
        let c = T5Config::from_file(&configs().join(path).join("config.json")).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!((c.d_model, c.num_layers, c.num_heads, c.gated), (4096, 24, 64, true), "{path}");
        assert_eq!(T5EncoderModel::new(&c, &Device::flex()).num_params(), 4_762_310_656, "{path}");
    }
    let c = ClipTextConfig::from_file(&configs().join("sd35-medium/text_encoder/config.json")).unwrap();
    assert_eq!(ClipTextModel::new(&c, &Device::flex()).num_params(), 123_650_304);
}
