//! The published transformer configs of SD 3.5 Medium, SD 3.5 Large, FLUX.1-schnell and
//! FLUX.1-dev (crates/kiln-pipeline/configs/<name>/transformer/config.json, written by
//! scripts/fixtures/flow_configs.py) build the full-size models with diffusers 0.42.1's parameter
//! counts. burn initialises parameters lazily, so nothing of the 2–12 B parameters is allocated.

use std::path::PathBuf;

use burn::module::Module;
use burn::prelude::*;
use kiln_transformer::{FluxTransformer2DModel, FluxTransformerConfig, Sd3Transformer2DModel, Sd3TransformerConfig};

fn config(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../kiln-pipeline/configs").join(name).join("transformer/config.json")
}

#[test]
fn sd35_configs_have_diffusers_parameter_counts() {
    // diffusers counts parameters; kiln's position table is a parameter too (diffusers' buffer)
    for (name, params, table, dual) in [("sd35-medium", 2_243_171_520, 226_492_416, 13), ("sd35-large", 8_056_627_520, 89_653_248, 0)] {
        let c = Sd3TransformerConfig::from_file(&config(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let model = Sd3Transformer2DModel::new(&c, &Device::flex());
        assert_eq!(model.num_params(), params + table, "{name}");
        assert_eq!(model.pos_embed.pos_embed.lazy_shape().num_elements(), table, "{name}: position table");
        assert_eq!(model.transformer_blocks.iter().filter(|b| b.attn2.is_some()).count(), dual, "{name}: dual-attention blocks");
    }
}

#[test]
fn flux_configs_have_diffusers_parameter_counts() {
    for (name, params, guidance) in [("flux-schnell", 11_891_178_560, false), ("flux-dev", 11_901_408_320, true)] {
        let c = FluxTransformerConfig::from_file(&config(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let model = FluxTransformer2DModel::new(&c, &Device::flex());
        assert_eq!(model.num_params(), params, "{name}");
        assert_eq!(model.has_guidance_embeds(), guidance, "{name}");
    }
}
