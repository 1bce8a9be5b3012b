//! The text encoders' keys in a single-file checkpoint → transformers' `CLIPTextModel` /
//! `CLIPTextModelWithProjection` keys.
//!
//! CLIP ViT-L (SD 1.x, SDXL's first encoder) is stored as transformers stores it, under a prefix
//! (diffusers' `convert_ldm_clip_checkpoint`). OpenCLIP (SD 2.x's ViT-H, SDXL's bigG) has its own
//! names (diffusers' `convert_open_clip_checkpoint` and `DIFFUSERS_TO_LDM_MAPPING["openclip"]`):
//! `transformer.resblocks.i` layers with one fused `attn.in_proj_weight` (q, k, v stacked),
//! `ln_1/ln_2`, `mlp.c_fc/c_proj`, and a `text_projection` applied as `x @ W` (transposed for
//! `nn.Linear`).

use kiln_nn::Transform;

/// How a text encoder is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipLayout {
    /// transformers' keys (`text_model.…`).
    Transformers,
    /// OpenCLIP's keys.
    OpenClip,
}

/// Where each text encoder lives in a single-file checkpoint: (prefix, layout, the diffusers
/// component it is). diffusers' `create_diffusers_clip_model_from_ldm` reads the same prefixes.
pub const PREFIXES: [(&str, ClipLayout, &str); 5] = [
    ("cond_stage_model.transformer.", ClipLayout::Transformers, "text_encoder"),
    ("cond_stage_model.model.", ClipLayout::OpenClip, "text_encoder"),
    ("conditioner.embedders.0.transformer.", ClipLayout::Transformers, "text_encoder"),
    ("conditioner.embedders.1.model.", ClipLayout::OpenClip, "text_encoder_2"),
    // SDXL refiner: only the bigG encoder, first in its list
    ("conditioner.embedders.0.model.", ClipLayout::OpenClip, "text_encoder_2"),
];

/// What becomes of one stored key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mapped {
    /// Loaded as these (diffusers name, transform) pairs: one, or q/k/v from a fused `in_proj`.
    To(Vec<(String, Transform)>),
    /// Stored but not part of the diffusers model, and left alone as diffusers leaves it (the
    /// layers past `num_hidden_layers`: SD 2 conditions on the penultimate layer and diffusers'
    /// config has one layer fewer; OpenCLIP's `logit_scale`; a projection the model lacks).
    Unused,
}

/// What the text encoder model has: `num_hidden_layers`, and whether it has a `text_projection`.
#[derive(Debug, Clone, Copy)]
pub struct ClipShape {
    pub layers: usize,
    pub projection: bool,
}

/// diffusers' names for the key `key` (the prefix removed) of a text encoder stored in `layout`;
/// `None` for a key such a model does not have.
pub fn diffusers_keys(key: &str, layout: ClipLayout, shape: ClipShape) -> Option<Mapped> {
    let one = |k: String, t: Transform| Some(Mapped::To(vec![(k, t)]));
    if layout == ClipLayout::Transformers {
        return match key.strip_prefix("text_model.") {
            Some(rest) if rest.starts_with("embeddings.") || rest.starts_with("final_layer_norm.") => one(key.into(), Transform::None),
            Some(rest) => {
                let layer = rest.strip_prefix("encoder.layers.")?.split('.').next()?.parse::<usize>().ok()?;
                if layer < shape.layers { one(key.into(), Transform::None) } else { Some(Mapped::Unused) }
            }
            None if key == "text_projection.weight" && shape.projection => one(key.into(), Transform::None),
            None => None,
        };
    }
    match key {
        "token_embedding.weight" => return one("text_model.embeddings.token_embedding.weight".into(), Transform::None),
        "positional_embedding" => return one("text_model.embeddings.position_embedding.weight".into(), Transform::None),
        "ln_final.weight" | "ln_final.bias" => return one(format!("text_model.final_layer_norm.{}", &key[9..]), Transform::None),
        "text_projection" if shape.projection => return one("text_projection.weight".into(), Transform::Transpose),
        "text_projection" | "logit_scale" => return Some(Mapped::Unused),
        _ => {}
    }
    let rest = key.strip_prefix("transformer.resblocks.")?;
    let (i, rest) = rest.split_once('.')?;
    let i: usize = i.parse().ok()?;
    let layer = format!("text_model.encoder.layers.{i}");
    let mapped = match rest {
        "attn.in_proj_weight" | "attn.in_proj_bias" => {
            let param = if rest.ends_with("weight") { "weight" } else { "bias" };
            let qkv = ["q_proj", "k_proj", "v_proj"]
                .iter()
                .enumerate()
                .map(|(index, p)| (format!("{layer}.self_attn.{p}.{param}"), Transform::Rows { index, parts: 3 }))
                .collect();
            Mapped::To(qkv)
        }
        _ => {
            let (module, param) = rest.rsplit_once('.')?;
            let module = match module {
                "attn.out_proj" => "self_attn.out_proj",
                "ln_1" => "layer_norm1",
                "ln_2" => "layer_norm2",
                "mlp.c_fc" => "mlp.fc1",
                "mlp.c_proj" => "mlp.fc2",
                _ => return None,
            };
            if !matches!(param, "weight" | "bias") {
                return None;
            }
            Mapped::To(vec![(format!("{layer}.{module}.{param}"), Transform::None)])
        }
    };
    Some(if i < shape.layers { mapped } else { Mapped::Unused })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_clip_keys_map_as_diffusers_maps_them() {
        let shape = ClipShape { layers: 23, projection: false };
        let to = |k: &str| Some(Mapped::To(vec![(k.to_string(), Transform::None)]));
        assert_eq!(
            diffusers_keys("transformer.resblocks.3.attn.in_proj_bias", ClipLayout::OpenClip, shape),
            Some(Mapped::To(vec![
                ("text_model.encoder.layers.3.self_attn.q_proj.bias".into(), Transform::Rows { index: 0, parts: 3 }),
                ("text_model.encoder.layers.3.self_attn.k_proj.bias".into(), Transform::Rows { index: 1, parts: 3 }),
                ("text_model.encoder.layers.3.self_attn.v_proj.bias".into(), Transform::Rows { index: 2, parts: 3 }),
            ]))
        );
        assert_eq!(diffusers_keys("transformer.resblocks.0.mlp.c_proj.weight", ClipLayout::OpenClip, shape), to("text_model.encoder.layers.0.mlp.fc2.weight"));
        assert_eq!(diffusers_keys("transformer.resblocks.22.ln_2.bias", ClipLayout::OpenClip, shape), to("text_model.encoder.layers.22.layer_norm2.bias"));
        assert_eq!(diffusers_keys("positional_embedding", ClipLayout::OpenClip, shape), to("text_model.embeddings.position_embedding.weight"));
        // SD 2: the 24th layer and the projection are not part of diffusers' text encoder
        assert_eq!(diffusers_keys("transformer.resblocks.23.ln_1.weight", ClipLayout::OpenClip, shape), Some(Mapped::Unused));
        assert_eq!(diffusers_keys("text_projection", ClipLayout::OpenClip, shape), Some(Mapped::Unused));
        let bigg = ClipShape { layers: 32, projection: true };
        assert_eq!(diffusers_keys("text_projection", ClipLayout::OpenClip, bigg), Some(Mapped::To(vec![("text_projection.weight".into(), Transform::Transpose)])));
        assert_eq!(diffusers_keys("transformer.resblocks.1.attn.bogus", ClipLayout::OpenClip, bigg), None);
        let l = ClipShape { layers: 12, projection: false };
        assert_eq!(diffusers_keys("text_model.encoder.layers.11.mlp.fc1.bias", ClipLayout::Transformers, l), to("text_model.encoder.layers.11.mlp.fc1.bias"));
        assert_eq!(diffusers_keys("vision_model.x", ClipLayout::Transformers, l), None);
    }
}
