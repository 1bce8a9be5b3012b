//! The published configs of the model families kiln runs (`configs/`: SD 1.5, SD 2.1, SDXL base
//! as diffusers ships them on the Hub), compiled in, so that a model can be built without its
//! folder (`kiln bench --preset`: random weights at the real sizes).

/// One family's configs: each component's `config.json` (`scheduler`: its
/// `scheduler_config.json`) by component name.
#[derive(Debug, Clone, Copy)]
pub struct Preset {
    /// `sd15`, `sd21` or `sdxl`.
    pub name: &'static str,
    pub files: &'static [(&'static str, &'static str)],
}

impl Preset {
    /// The config of `component` (`unet`, `vae`, `text_encoder`, `text_encoder_2`, `scheduler`).
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
    },
    Preset {
        name: "sd21",
        files: &[
            ("unet", include_str!("../configs/sd21/unet/config.json")),
            ("vae", include_str!("../configs/sd21/vae/config.json")),
            ("text_encoder", include_str!("../configs/sd21/text_encoder/config.json")),
            ("scheduler", include_str!("../configs/sd21/scheduler/scheduler_config.json")),
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
    },
];

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
                    "vae" => "AutoencoderKL",
                    "scheduler" => "Scheduler",
                    _ => "CLIPText",
                };
                assert!(class.contains(want), "{}/{component}: {class}", p.name);
            }
        }
        assert_eq!(super::preset_names(), ["sd15", "sd21", "sdxl"]);
    }
}
