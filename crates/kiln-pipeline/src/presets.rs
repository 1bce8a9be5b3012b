//! The published configs of the model families kiln runs (`configs/`: SD 1.5, SD 2.1, SDXL base,
//! SD 3.5 Medium and Large, FLUX.1 schnell and dev as diffusers ships them on the Hub) and their
//! tokenizers, compiled in, so that a model can be
//! built without its folder (`kiln bench --preset`: random weights at the real sizes; a
//! single-file checkpoint's architecture, `single_file::arch`).

/// One family's configs: each component's `config.json` (`scheduler`: its
/// `scheduler_config.json`) by component name.
#[derive(Debug, Clone, Copy)]
pub struct Preset {
    /// `sd15`, `sd21`, `sdxl`, `sd35m`, `sd35l`, `flux-schnell`, `flux-dev`.
    pub name: &'static str,
    pub files: &'static [(&'static str, &'static str)],
    /// Each tokenizer's `tokenizer_config.json` and `special_tokens_map.json` by component name;
    /// the vocabulary and merges are CLIP's for all ([`CLIP_VOCAB`], [`CLIP_MERGES`]).
    pub tokenizers: &'static [(&'static str, &'static str, &'static str)],
}

/// CLIP's BPE vocabulary (`vocab.json`), the same in every published SD tokenizer.
pub const CLIP_VOCAB: &str = include_str!("../configs/sd15/tokenizer/vocab.json");
/// CLIP's BPE merges (`merges.txt`).
pub const CLIP_MERGES: &str = include_str!("../configs/sd15/tokenizer/merges.txt");

impl Preset {
    /// The config of `component` (`unet` or `transformer`, `vae`, `text_encoder`, `text_encoder_2`,
    /// `text_encoder_3`, `scheduler`).
    pub fn config(&self, component: &str) -> Option<&'static str> {
        self.files.iter().find(|(c, _)| *c == component).map(|(_, text)| *text)
    }
}

/// Every preset.
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "sd15",
        files: &[
            ("unet", include_str!("../configs/sd15/unet/config.json")),
            ("vae", include_str!("../configs/sd15/vae/config.json")),
            ("text_encoder", include_str!("../configs/sd15/text_encoder/config.json")),
            ("scheduler", include_str!("../configs/sd15/scheduler/scheduler_config.json")),
        ],
        tokenizers: &[
            ("tokenizer", include_str!("../configs/sd15/tokenizer/tokenizer_config.json"), include_str!("../configs/sd15/tokenizer/special_tokens_map.json")),
        ],
    },
    Preset {
        name: "sd21",
        files: &[
            ("unet", include_str!("../configs/sd21/unet/config.json")),
            ("vae", include_str!("../configs/sd21/vae/config.json")),
            ("text_encoder", include_str!("../configs/sd21/text_encoder/config.json")),
            ("scheduler", include_str!("../configs/sd21/scheduler/scheduler_config.json")),
        ],
        tokenizers: &[
            ("tokenizer", include_str!("../configs/sd21/tokenizer/tokenizer_config.json"), include_str!("../configs/sd21/tokenizer/special_tokens_map.json")),
        ],
    },
    Preset {
        name: "sdxl",
        files: &[
            ("unet", include_str!("../configs/sdxl/unet/config.json")),
            ("vae", include_str!("../configs/sdxl/vae/config.json")),
            ("text_encoder", include_str!("../configs/sdxl/text_encoder/config.json")),
            ("text_encoder_2", include_str!("../configs/sdxl/text_encoder_2/config.json")),
            ("scheduler", include_str!("../configs/sdxl/scheduler/scheduler_config.json")),
        ],
        tokenizers: &[
            ("tokenizer", include_str!("../configs/sdxl/tokenizer/tokenizer_config.json"), include_str!("../configs/sdxl/tokenizer/special_tokens_map.json")),
            ("tokenizer_2", include_str!("../configs/sdxl/tokenizer_2/tokenizer_config.json"), include_str!("../configs/sdxl/tokenizer_2/special_tokens_map.json")),
        ],
    },
    Preset {
        name: "sd35m",
        files: &[
            ("transformer", include_str!("../configs/sd35-medium/transformer/config.json")),
            ("vae", include_str!("../configs/sd35-medium/vae/config.json")),
            ("text_encoder", include_str!("../configs/sd35-medium/text_encoder/config.json")),
            ("text_encoder_2", include_str!("../configs/sd35-medium/text_encoder_2/config.json")),
            ("text_encoder_3", include_str!("../configs/sd35-medium/text_encoder_3/config.json")),
            ("scheduler", include_str!("../configs/sd35-medium/scheduler/scheduler_config.json")),
        ],
        tokenizers: &[],
    },
    Preset {
        name: "sd35l",
        files: &[
            ("transformer", include_str!("../configs/sd35-large/transformer/config.json")),
            ("vae", include_str!("../configs/sd35-large/vae/config.json")),
            ("text_encoder", include_str!("../configs/sd35-large/text_encoder/config.json")),
            ("text_encoder_2", include_str!("../configs/sd35-large/text_encoder_2/config.json")),
            ("text_encoder_3", include_str!("../configs/sd35-large/text_encoder_3/config.json")),
            ("scheduler", include_str!("../configs/sd35-large/scheduler/scheduler_config.json")),
        ],
        tokenizers: &[],
    },
    Preset {
        name: "flux-schnell",
        files: &[
            ("transformer", include_str!("../configs/flux-schnell/transformer/config.json")),
            ("vae", include_str!("../configs/flux-schnell/vae/config.json")),
            ("text_encoder", include_str!("../configs/flux-schnell/text_encoder/config.json")),
            ("text_encoder_2", include_str!("../configs/flux-schnell/text_encoder_2/config.json")),
            ("scheduler", include_str!("../configs/flux-schnell/scheduler/scheduler_config.json")),
        ],
        tokenizers: &[],
    },
    Preset {
        name: "flux-dev",
        files: &[
            ("transformer", include_str!("../configs/flux-dev/transformer/config.json")),
            ("vae", include_str!("../configs/flux-dev/vae/config.json")),
            ("text_encoder", include_str!("../configs/flux-dev/text_encoder/config.json")),
            ("text_encoder_2", include_str!("../configs/flux-dev/text_encoder_2/config.json")),
            ("scheduler", include_str!("../configs/flux-dev/scheduler/scheduler_config.json")),
        ],
        tokenizers: &[],
    },
];

impl Preset {
    /// Whether this is a flow-matching family's preset (a `transformer`, not a `unet`).
    pub fn is_flow_matching(&self) -> bool {
        self.config("transformer").is_some()
    }
}

/// The preset called `name`.
pub fn preset(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name)
}

/// The names [`preset`] takes.
pub fn preset_names() -> Vec<&'static str> {
    PRESETS.iter().map(|p| p.name).collect()
}

#[cfg(test)]
mod tests {
    /// Every preset file is the JSON object of the file it names, with the class diffusers writes.
    #[test]
    fn every_preset_file_is_its_components_config() {
        for p in super::PRESETS {
            for (component, text) in p.files {
                let v: serde_json::Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{}/{component}: {e}", p.name));
                let class = v["_class_name"].as_str().or(v["architectures"][0].as_str()).unwrap_or_default();
                let want = match *component {
                    "unet" => "UNet2DConditionModel",
                    "transformer" => "Transformer2DModel",
                    "vae" => "AutoencoderKL",
                    "scheduler" => "Scheduler",
                    "text_encoder_3" => "T5EncoderModel",
                    "text_encoder_2" if p.name.starts_with("flux") => "T5EncoderModel",
                    _ => "CLIPText",
                };
                assert!(class.contains(want), "{}/{component}: {class}", p.name);
            }
        }
        assert_eq!(super::preset_names(), ["sd15", "sd21", "sdxl", "sd35m", "sd35l", "flux-schnell", "flux-dev"]);
    }
}
