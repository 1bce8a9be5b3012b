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

/// The LDM key of the diffusers UNet key (or module path) `key`: the inverse of
/// [`diffusers_key`] (diffusers' `scripts/convert_diffusers_to_original_stable_diffusion.py`;
/// kohya's SDXL LoRAs name the UNet's modules this way). `upsampler_after_attention(block)`: whether
/// up block `block` has attentions (its upsampler is then the layer's third part, `.2.conv`).
pub fn ldm_key(key: &str, layers_per_block: usize, upsampler_after_attention: &dyn Fn(usize) -> bool) -> Option<String> {
    let run = layers_per_block + 1;
    const FIXED: [(&str, &str); 7] = [
        ("time_embedding.linear_1", "time_embed.0"),
        ("time_embedding.linear_2", "time_embed.2"),
        ("conv_in", "input_blocks.0.0"),
        ("conv_norm_out", "out.0"),
        ("conv_out", "out.2"),
        ("add_embedding.linear_1", "label_emb.0.0"),
        ("add_embedding.linear_2", "label_emb.0.2"),
    ];
    // `name` or `name.<tail>`
    let strip = |key: &str, name: &str| -> Option<String> {
        let rest = key.strip_prefix(name)?;
        if rest.is_empty() { Some(String::new()) } else { rest.strip_prefix('.').map(|t| format!(".{t}")) }
    };
    for (diffusers, ldm) in FIXED {
        if let Some(tail) = strip(key, diffusers) {
            return Some(format!("{ldm}{tail}"));
        }
    }
    // a resnet's part: `.norm1.weight` → `.in_layers.0.weight`
    let resnet = |block: String, rest: &str| -> Option<String> {
        let Some(tail) = rest.strip_prefix('.') else { return rest.is_empty().then_some(block) };
        let (module, after) = match tail.split_once('.') {
            Some((m, a)) => (m, format!(".{a}")),
            None => (tail, String::new()),
        };
        let ldm = RESNET.iter().find(|(_, d)| d.trim_end_matches('.') == module)?.0.trim_end_matches('.');
        Some(format!("{block}.{ldm}{after}"))
    };
    let (blocks, rest) = key.split_once('.')?;
    match blocks {
        "down_blocks" | "up_blocks" => {
            let (b, rest) = split_index(rest)?;
            let (kind, rest) = rest.split_once('.')?;
            let (j, rest) = match rest.split_once('.') {
                Some((j, r)) => (j.parse::<usize>().ok()?, format!(".{r}")),
                None => (rest.parse::<usize>().ok()?, String::new()),
            };
            let down = blocks == "down_blocks";
            match (down, kind) {
                (true, "resnets") => resnet(format!("input_blocks.{}.0", 1 + b * run + j), &rest),
                (true, "attentions") => Some(format!("input_blocks.{}.1{rest}", 1 + b * run + j)),
                (true, "downsamplers") if j == 0 => Some(format!("input_blocks.{}.0{}", 1 + b * run + layers_per_block, rest.replacen(".conv", ".op", 1))),
                (false, "resnets") => resnet(format!("output_blocks.{}.0", b * run + j), &rest),
                (false, "attentions") => Some(format!("output_blocks.{}.1{rest}", b * run + j)),
                (false, "upsamplers") if j == 0 => {
                    let part = if upsampler_after_attention(b) { 2 } else { 1 };
                    Some(format!("output_blocks.{}.{part}{rest}", b * run + layers_per_block))
                }
                _ => None,
            }
        }
        "mid_block" => {
            let (kind, rest) = rest.split_once('.')?;
            let (j, rest) = match rest.split_once('.') {
                Some((j, r)) => (j.parse::<usize>().ok()?, format!(".{r}")),
                None => (rest.parse::<usize>().ok()?, String::new()),
            };
            match (kind, j) {
                ("resnets", 0) => resnet("middle_block.0".into(), &rest),
                ("attentions", 0) => Some(format!("middle_block.1{rest}")),
                ("resnets", 1) => resnet("middle_block.2".into(), &rest),
                _ => None,
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::{diffusers_key, ldm_key};

    /// Module paths (no `.weight`) too, as kohya names them.
    #[test]
    fn ldm_key_inverts_diffusers_key() {
        let attn = |b: usize| b < 3;
        for (diffusers, ldm) in [
            ("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", "input_blocks.4.1.transformer_blocks.0.attn1.to_q"),
            ("down_blocks.0.resnets.1.conv1", "input_blocks.2.0.in_layers.2"),
            ("down_blocks.0.downsamplers.0.conv", "input_blocks.3.0.op"),
            ("mid_block.resnets.1.time_emb_proj", "middle_block.2.emb_layers.1"),
            ("up_blocks.0.upsamplers.0.conv", "output_blocks.2.2.conv"),
            ("up_blocks.3.resnets.2.conv_shortcut", "output_blocks.11.0.skip_connection"),
            ("conv_in", "input_blocks.0.0"),
        ] {
            assert_eq!(ldm_key(diffusers, 2, &attn).as_deref(), Some(ldm), "{diffusers}");
            let weight = format!("{diffusers}.weight");
            assert_eq!(diffusers_key(&ldm_key(&weight, 2, &attn).unwrap(), 2).as_deref(), Some(weight.as_str()));
        }
    }

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
