//! The VAE's keys in the original LDM layout (`first_stage_model.*`: `down.i.block.j`,
//! `mid.block_1`, `mid.attn_1.{q,k,v,proj_out}` as 1×1 convolutions, `up.i` numbered from the
//! bottom) → diffusers' `AutoencoderKL` keys.
//!
//! A port of diffusers' `loaders/single_file_utils.py::convert_ldm_vae_checkpoint` (with
//! `update_vae_resnet_ldm_to_diffusers`, `update_vae_attentions_ldm_to_diffusers` and
//! `conv_attn_to_linear`), one key at a time.

use kiln_nn::Transform;

/// The VAE's prefixes in a single-file checkpoint, in the order diffusers tries them
/// (`LDM_VAE_KEYS`).
pub const PREFIXES: [&str; 2] = ["first_stage_model.", "vae."];

/// diffusers' key of the LDM VAE key `key` (the prefix removed) and how its tensor is read, for a
/// VAE with `up_blocks` decoder levels; `None` for a key the VAE does not have.
pub fn diffusers_key(key: &str, up_blocks: usize) -> Option<(String, Transform)> {
    let plain = |k: String| Some((k, Transform::None));
    let (half, rest) = key.split_once('.')?;
    if half != "encoder" && half != "decoder" {
        return match key {
            "quant_conv.weight" | "quant_conv.bias" | "post_quant_conv.weight" | "post_quant_conv.bias" => plain(key.into()),
            _ => None,
        };
    }
    let resnet = |block: String, rest: &str| plain(format!("{half}.{block}.{}", rest.replace("nin_shortcut", "conv_shortcut")));
    match rest {
        "conv_in.weight" | "conv_in.bias" | "conv_out.weight" | "conv_out.bias" => return plain(key.into()),
        "norm_out.weight" | "norm_out.bias" => return plain(format!("{half}.conv_{rest}")),
        _ => {}
    }
    if let Some(rest) = rest.strip_prefix("mid.") {
        if let Some(rest) = rest.strip_prefix("block_1.") {
            return resnet("mid_block.resnets.0".into(), rest);
        }
        if let Some(rest) = rest.strip_prefix("block_2.") {
            return resnet("mid_block.resnets.1".into(), rest);
        }
        let rest = rest.strip_prefix("attn_1.")?;
        let (layer, param) = rest.split_once('.')?;
        let name = match layer {
            "norm" => "group_norm",
            "q" => "to_q",
            "k" => "to_k",
            "v" => "to_v",
            "proj_out" => "to_out.0",
            _ => return None,
        };
        // q, k, v and proj_out are 1×1 convolutions in LDM, linear layers in diffusers
        let transform = if layer == "norm" { Transform::None } else { Transform::Squeeze };
        return Some((format!("{half}.mid_block.attentions.0.{name}.{param}"), transform));
    }
    let (dir, rest) = rest.split_once('.')?;
    let (i, rest) = rest.split_once('.')?;
    let i: usize = i.parse().ok()?;
    let (level, sampler) = match (half, dir) {
        ("encoder", "down") => (i, "downsample"),
        // the decoder's levels are numbered from the bottom in LDM
        ("decoder", "up") => (up_blocks.checked_sub(i + 1)?, "upsample"),
        _ => return None,
    };
    let blocks = if dir == "down" { "down_blocks" } else { "up_blocks" };
    if let Some(rest) = rest.strip_prefix("block.") {
        let (j, rest) = rest.split_once('.')?;
        let j: usize = j.parse().ok()?;
        return resnet(format!("{blocks}.{level}.resnets.{j}"), rest);
    }
    let param = rest.strip_prefix(sampler)?.strip_prefix(".conv.")?;
    let samplers = if dir == "down" { "downsamplers" } else { "upsamplers" };
    plain(format!("{half}.{blocks}.{level}.{samplers}.0.conv.{param}"))
}

#[cfg(test)]
mod tests {
    use super::diffusers_key;
    use kiln_nn::Transform;

    #[test]
    fn sd_vae_keys_map_as_diffusers_maps_them() {
        for (ldm, want, t) in [
            ("encoder.down.1.block.0.nin_shortcut.weight", "encoder.down_blocks.1.resnets.0.conv_shortcut.weight", Transform::None),
            ("encoder.down.0.downsample.conv.bias", "encoder.down_blocks.0.downsamplers.0.conv.bias", Transform::None),
            ("encoder.mid.attn_1.q.weight", "encoder.mid_block.attentions.0.to_q.weight", Transform::Squeeze),
            ("decoder.mid.attn_1.proj_out.bias", "decoder.mid_block.attentions.0.to_out.0.bias", Transform::Squeeze),
            ("decoder.mid.attn_1.norm.weight", "decoder.mid_block.attentions.0.group_norm.weight", Transform::None),
            ("decoder.mid.block_2.conv1.weight", "decoder.mid_block.resnets.1.conv1.weight", Transform::None),
            ("decoder.up.3.block.2.norm2.bias", "decoder.up_blocks.0.resnets.2.norm2.bias", Transform::None),
            ("decoder.up.1.upsample.conv.weight", "decoder.up_blocks.2.upsamplers.0.conv.weight", Transform::None),
            ("decoder.norm_out.weight", "decoder.conv_norm_out.weight", Transform::None),
            ("post_quant_conv.bias", "post_quant_conv.bias", Transform::None),
        ] {
            assert_eq!(diffusers_key(ldm, 4), Some((want.to_string(), t)), "{ldm}");
        }
        for ldm in ["decoder.up.4.block.0.conv1.weight", "encoder.up.0.block.0.conv1.weight", "loss.logvar", "encoder.mid.attn_1.x.weight"] {
            assert_eq!(diffusers_key(ldm, 4), None, "{ldm}");
        }
    }
}
