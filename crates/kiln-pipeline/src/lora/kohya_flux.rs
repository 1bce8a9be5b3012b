//! kohya's (sd-scripts') FLUX.1 LoRA names — the original (BFL) model's modules after
//! `lora_unet_`: `double_blocks_{i}_img_attn_qkv`, `single_blocks_{i}_linear1`, `final_layer_…` —
//! mapped onto diffusers' `FluxTransformer2DModel` as diffusers'
//! `_convert_kohya_flux_lora_to_diffusers` (`loaders/lora_conversion_utils.py`) maps them. A fused
//! projection (qkv, a single block's `linear1` = q, k, v and the MLP's input) becomes one update
//! per diffusers module: the rows of the up matrix that module's output takes, the down matrix
//! shared. The final layer's adaLN update has its halves swapped (BFL orders shift, scale;
//! diffusers scale, shift). diffusers splits `linear1` at FLUX.1's widths (3072 × 3 + 12288); kiln
//! at the loaded model's, the same on FLUX.1. diffusers 0.42.1 names the converted input and final
//! layers (`img_in`, `time_in_…`, `final_layer_…`) without the `transformer.` prefix, so its
//! loader drops them, and leaves the final layer's alphas out ("TODO: alphas"); kiln applies them
//! all, scaled by alpha / rank as sd-scripts trains them.

/// One diffusers module a kohya module updates.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Target {
    /// diffusers' module name in the transformer (`transformer_blocks.0.attn.to_q`).
    pub module: String,
    /// The up matrix's rows this module takes: `(start, count)`; `None`: all of them.
    pub rows: Option<(usize, usize)>,
    /// Whether the two halves of those rows swap (`swap_scale_shift`).
    pub swap_halves: bool,
}

fn whole(module: String) -> Vec<Target> {
    vec![Target { module, rows: None, swap_halves: false }]
}

/// Consecutive row ranges of `widths`.
fn split(modules: Vec<String>, widths: &[usize]) -> Vec<Target> {
    let mut start = 0;
    modules
        .into_iter()
        .zip(widths)
        .map(|(module, &n)| {
            let t = Target { module, rows: Some((start, n)), swap_halves: false };
            start += n;
            t
        })
        .collect()
}

/// `(block index, rest)` of `prefix{i}_{rest}`.
fn block<'a>(name: &'a str, prefix: &str) -> Option<(usize, &'a str)> {
    let rest = name.strip_prefix(prefix)?;
    let (i, rest) = rest.split_once('_')?;
    Some((i.parse().ok()?, rest))
}

/// The diffusers modules kohya's FLUX module `name` (after `lora_unet_`) updates; `out(module)`
/// is a diffusers module's output width in the loaded model, `rows` the up matrix's rows.
/// `None`: not a FLUX module name (or a fused one whose rows do not split as the model's widths).
pub(crate) fn targets(name: &str, rows: usize, out: &dyn Fn(&str) -> Option<usize>) -> Option<Vec<Target>> {
    let fused = |modules: Vec<String>| -> Option<Vec<Target>> {
        let widths: Vec<usize> = modules.iter().map(|m| out(m)).collect::<Option<_>>()?;
        (widths.iter().sum::<usize>() == rows).then(|| split(modules, &widths))
    };
    if let Some((i, rest)) = block(name, "double_blocks_") {
        let b = format!("transformer_blocks.{i}");
        return match rest {
            "img_attn_qkv" => fused(vec![format!("{b}.attn.to_q"), format!("{b}.attn.to_k"), format!("{b}.attn.to_v")]),
            "txt_attn_qkv" => fused(vec![format!("{b}.attn.add_q_proj"), format!("{b}.attn.add_k_proj"), format!("{b}.attn.add_v_proj")]),
            "img_attn_proj" => Some(whole(format!("{b}.attn.to_out.0"))),
            "txt_attn_proj" => Some(whole(format!("{b}.attn.to_add_out"))),
            "img_mlp_0" => Some(whole(format!("{b}.ff.net.0.proj"))),
            "img_mlp_2" => Some(whole(format!("{b}.ff.net.2"))),
            "txt_mlp_0" => Some(whole(format!("{b}.ff_context.net.0.proj"))),
            "txt_mlp_2" => Some(whole(format!("{b}.ff_context.net.2"))),
            "img_mod_lin" => Some(whole(format!("{b}.norm1.linear"))),
            "txt_mod_lin" => Some(whole(format!("{b}.norm1_context.linear"))),
            _ => None,
        };
    }
    if let Some((i, rest)) = block(name, "single_blocks_") {
        let b = format!("single_transformer_blocks.{i}");
        return match rest {
            "linear1" => fused(vec![format!("{b}.attn.to_q"), format!("{b}.attn.to_k"), format!("{b}.attn.to_v"), format!("{b}.proj_mlp")]),
            "linear2" => Some(whole(format!("{b}.proj_out"))),
            "modulation_lin" => Some(whole(format!("{b}.norm.linear"))),
            _ => None,
        };
    }
    let module = match name {
        "guidance_in_in_layer" => "time_text_embed.guidance_embedder.linear_1",
        "guidance_in_out_layer" => "time_text_embed.guidance_embedder.linear_2",
        "time_in_in_layer" => "time_text_embed.timestep_embedder.linear_1",
        "time_in_out_layer" => "time_text_embed.timestep_embedder.linear_2",
        "vector_in_in_layer" => "time_text_embed.text_embedder.linear_1",
        "vector_in_out_layer" => "time_text_embed.text_embedder.linear_2",
        "img_in" => "x_embedder",
        "txt_in" => "context_embedder",
        "final_layer_linear" => "proj_out",
        "final_layer_adaLN_modulation_1" => return Some(vec![Target { module: "norm_out.linear".into(), rows: None, swap_halves: true }]),
        _ => return None,
    };
    Some(whole(module.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// FLUX.1's widths: inner 3072, MLP 12288 (diffusers' hard-coded split of `linear1`).
    fn flux1(module: &str) -> Option<usize> {
        Some(if module.ends_with("proj_mlp") { 12288 } else { 3072 })
    }

    #[test]
    fn names_map_as_diffusers_converts_them() {
        let t = targets("single_blocks_37_linear1", 21504, &flux1).unwrap();
        let got: Vec<(&str, Option<(usize, usize)>)> = t.iter().map(|t| (t.module.as_str(), t.rows)).collect();
        assert_eq!(
            got,
            [
                ("single_transformer_blocks.37.attn.to_q", Some((0, 3072))),
                ("single_transformer_blocks.37.attn.to_k", Some((3072, 3072))),
                ("single_transformer_blocks.37.attn.to_v", Some((6144, 3072))),
                ("single_transformer_blocks.37.proj_mlp", Some((9216, 12288))),
            ]
        );
        assert_eq!(targets("double_blocks_3_txt_attn_qkv", 9216, &flux1).unwrap()[2].module, "transformer_blocks.3.attn.add_v_proj");
        assert_eq!(targets("double_blocks_0_img_mod_lin", 18432, &flux1).unwrap(), whole("transformer_blocks.0.norm1.linear".into()));
        assert!(targets("final_layer_adaLN_modulation_1", 6144, &flux1).unwrap()[0].swap_halves);
        // rows that do not split as the model's widths, and names that are not FLUX's
        assert!(targets("double_blocks_0_img_attn_qkv", 9000, &flux1).is_none());
        assert!(targets("double_blocks_x_img_attn_qkv", 9216, &flux1).is_none());
        assert!(targets("down_blocks_0_attentions_0_proj_in", 320, &flux1).is_none());
    }
}
