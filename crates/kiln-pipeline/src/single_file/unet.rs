//! The UNet's keys in the original LDM layout (`model.diffusion_model.*`: `input_blocks`,
//! `middle_block`, `output_blocks`) → diffusers' `UNet2DConditionModel` keys.
//!
//! A port of diffusers' `loaders/single_file_utils.py::convert_ldm_unet_checkpoint` (with
//! `update_unet_resnet_ldm_to_diffusers` and `DIFFUSERS_TO_LDM_MAPPING["unet"]`), one key at a
//! time: LDM numbers the down path's layers `input_blocks.1..` in runs of `layers_per_block + 1`
//! (the last of each run is the downsampler, except on the last level), the up path's
//! `output_blocks.0..` in runs of `layers_per_block + 1` (the upsampler sits beside the last
//! layer's attention or resnet).

/// The UNet's prefix in a single-file checkpoint.
pub const PREFIX: &str = "model.diffusion_model.";

/// A resnet's LDM sub-keys → diffusers' (`update_unet_resnet_ldm_to_diffusers`).
const RESNET: [(&str, &str); 6] = [
    ("in_layers.0.", "norm1."),
    ("in_layers.2.", "conv1."),
    ("out_layers.0.", "norm2."),
    ("out_layers.3.", "conv2."),
    ("emb_layers.1.", "time_emb_proj."),
    ("skip_connection.", "conv_shortcut."),
];

/// diffusers' key of the LDM resnet sub-key `rest` under `block`.
fn resnet(block: String, rest: &str) -> Option<String> {
    RESNET.iter().find_map(|(ldm, diffusers)| rest.strip_prefix(ldm).map(|tail| format!("{block}.{diffusers}{tail}")))
}

/// `(index, rest)` of `<index>.<rest>`.
fn split_index(s: &str) -> Option<(usize, &str)> {
    let (i, rest) = s.split_once('.')?;
    Some((i.parse().ok()?, rest))
}

/// diffusers' key of the LDM UNet key `key` (the prefix removed), for a UNet with
/// `layers_per_block` resnets a level; `None` for a key the UNet does not have.
pub fn diffusers_key(key: &str, layers_per_block: usize) -> Option<String> {
    let run = layers_per_block + 1;
    const FIXED: [(&str, &str); 7] = [
        ("time_embed.0.", "time_embedding.linear_1."),
        ("time_embed.2.", "time_embedding.linear_2."),
        ("input_blocks.0.0.", "conv_in."),
        ("out.0.", "conv_norm_out."),
        ("out.2.", "conv_out."),
        // SDXL's micro-conditioning (`addition_embed_type = "text_time"`)
        ("label_emb.0.0.", "add_embedding.linear_1."),
        ("label_emb.0.2.", "add_embedding.linear_2."),
    ];
    if let Some(k) = FIXED.iter().find_map(|(ldm, diffusers)| key.strip_prefix(ldm).map(|tail| format!("{diffusers}{tail}"))) {
        return Some(k);
    }
    if let Some(rest) = key.strip_prefix("input_blocks.") {
        let (i, rest) = split_index(rest)?;
        let (block, layer) = ((i.checked_sub(1)?) / run, (i - 1) % run);
        let (part, rest) = split_index(rest)?;
        return match part {
            0 if rest == "op.weight" || rest == "op.bias" => Some(format!("down_blocks.{block}.downsamplers.0.conv.{}", &rest[3..])),
            0 => resnet(format!("down_blocks.{block}.resnets.{layer}"), rest),
            1 => Some(format!("down_blocks.{block}.attentions.{layer}.{rest}")),
            _ => None,
        };
    }
    if let Some(rest) = key.strip_prefix("middle_block.") {
        return match split_index(rest)? {
            (0, rest) => resnet("mid_block.resnets.0".into(), rest),
            (1, rest) => Some(format!("mid_block.attentions.0.{rest}")),
            (2, rest) => resnet("mid_block.resnets.1".into(), rest),
            _ => None,
        };
    }
    if let Some(rest) = key.strip_prefix("output_blocks.") {
        let (i, rest) = split_index(rest)?;
        let (block, layer) = (i / run, i % run);
        let (part, rest) = split_index(rest)?;
        return match part {
            1 | 2 if rest == "conv.weight" || rest == "conv.bias" => Some(format!("up_blocks.{block}.upsamplers.0.{rest}")),
            0 => resnet(format!("up_blocks.{block}.resnets.{layer}"), rest),
            1 => Some(format!("up_blocks.{block}.attentions.{layer}.{rest}")),
            _ => None,
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::diffusers_key;

    /// Keys of SD 1.5 (2 layers a level) as diffusers' converter maps them.
    #[test]
    fn sd15_keys_map_as_diffusers_maps_them() {
        for (ldm, want) in [
            ("input_blocks.0.0.weight", "conv_in.weight"),
            ("input_blocks.1.0.in_layers.0.weight", "down_blocks.0.resnets.0.norm1.weight"),
            ("input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight", "down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k.weight"),
            ("input_blocks.3.0.op.bias", "down_blocks.0.downsamplers.0.conv.bias"),
            ("input_blocks.4.0.skip_connection.weight", "down_blocks.1.resnets.0.conv_shortcut.weight"),
            ("middle_block.2.emb_layers.1.bias", "mid_block.resnets.1.time_emb_proj.bias"),
            ("middle_block.1.proj_out.weight", "mid_block.attentions.0.proj_out.weight"),
            ("output_blocks.2.1.conv.weight", "up_blocks.0.upsamplers.0.conv.weight"),
            ("output_blocks.5.2.conv.bias", "up_blocks.1.upsamplers.0.conv.bias"),
            ("output_blocks.11.0.skip_connection.weight", "up_blocks.3.resnets.2.conv_shortcut.weight"),
            ("output_blocks.11.1.norm.weight", "up_blocks.3.attentions.2.norm.weight"),
            ("out.2.bias", "conv_out.bias"),
            ("time_embed.2.weight", "time_embedding.linear_2.weight"),
        ] {
            assert_eq!(diffusers_key(ldm, 2).as_deref(), Some(want), "{ldm}");
        }
        for ldm in ["input_blocks.1.2.weight", "middle_block.3.x", "output_blocks.0.0.in_layers.1.weight", "betas"] {
            assert_eq!(diffusers_key(ldm, 2), None, "{ldm}");
        }
    }
}
