//! [`StableDiffusion::load_lora`], [`StableDiffusion::set_lora_scales`],
//! [`StableDiffusion::unload_loras`]: the loaded LoRAs' updates merged into the UNet's and text
//! encoders' weights, every change undone exactly from the parameters kept as they were.

use std::collections::HashMap;
use std::path::Path;

use kiln_nn::{merge_deltas, param_names, restore, Delta, LoadError};
use kiln_unet::PerBlock;

use super::{hash, LoadedLora, LoraError, LoraFile, LoraReport, Updates};
use crate::error::PipelineError;
use crate::StableDiffusion;

impl StableDiffusion {
    /// Loads the LoRA at `path` at `scale` (diffusers' adapter weight; A1111's `<lora:name:scale>`)
    /// and merges every loaded LoRA into the weights. Nothing changes when it fails: a module the
    /// model lacks, an update that does not fit, an unsupported layer kind are errors.
    pub fn load_lora(&mut self, path: &Path, scale: f64) -> Result<LoraReport, PipelineError> {
        if !scale.is_finite() {
            return Err(PipelineError::Input { what: "a LoRA's scale", value: scale.to_string(), allowed: "a finite number".into() });
        }
        let file = LoraFile::open(path).map_err(PipelineError::Lora)?;
        let updates = self.match_lora(&file).map_err(PipelineError::Lora)?;
        let hash = hash::lora_short_hash(path).map_err(|source| PipelineError::Lora(LoadError::Io { path: path.into(), source }.into()))?;
        self.loras.loaded.push(LoadedLora { path: file.path.clone(), format: file.format, modules: file.modules(), hash, scale, updates });
        match self.merge_loras() {
            Ok(reports) => Ok(reports.last().cloned().expect("one per LoRA")),
            Err(e) => {
                self.loras.loaded.pop();
                self.merge_loras().expect("the LoRAs that were loaded merge again");
                Err(e)
            }
        }
    }

    /// `file`'s updates matched to this model's UNet and text encoders.
    fn match_lora(&self, file: &LoraFile) -> Result<Updates, LoraError> {
        let mut params: HashMap<&str, Vec<String>> = HashMap::new();
        params.insert("unet", param_names(&self.unet).into_iter().map(|(n, _)| n).collect());
        params.insert("text_encoder", param_names(&self.text_encoder).into_iter().map(|(n, _)| n).collect());
        if let Some(te) = &self.text_encoder_2 {
            params.insert("text_encoder_2", param_names(te).into_iter().map(|(n, _)| n).collect());
        }
        // SDXL kohya LoRAs name the UNet's modules as the original (LDM) model does
        let config = self.unet.config();
        let lpb = match &config.layers_per_block {
            PerBlock::One(n) => Some(*n),
            PerBlock::List(l) => l.first().copied().filter(|n| l.iter().all(|m| m == n)),
        };
        let up_attention: Vec<bool> = config.up_block_types.iter().map(|t| t.contains("CrossAttn")).collect();
        let ldm_name = |name: &str| lpb.and_then(|lpb| crate::single_file::unet::ldm_key(name, lpb, &|b| up_attention.get(b).copied().unwrap_or(false)));
        file.updates(&params, &ldm_name, &self.device)
    }

    /// Sets each loaded LoRA's scale (in the order they were loaded) and merges again.
    pub fn set_lora_scales(&mut self, scales: &[f64]) -> Result<Vec<LoraReport>, PipelineError> {
        if scales.len() != self.loras.loaded.len() || scales.iter().any(|s| !s.is_finite()) {
            return Err(PipelineError::Input {
                what: "LoRA scales",
                value: format!("{scales:?}"),
                allowed: format!("{} finite numbers, one per loaded LoRA", self.loras.loaded.len()),
            });
        }
        for (lora, new) in self.loras.loaded.iter_mut().zip(scales) {
            lora.scale = *new;
        }
        self.merge_loras()
    }

    /// Takes every LoRA out: the weights are again exactly those loaded from the model.
    pub fn unload_loras(&mut self) {
        self.restore_weights();
        self.loras.loaded.clear();
    }

    /// The loaded LoRAs, in order.
    pub fn loras(&self) -> Vec<(&Path, f64)> {
        self.loras.loaded.iter().map(|l| (l.path.as_path(), l.scale)).collect()
    }

    fn restore_weights(&mut self) {
        let mut originals = std::mem::take(&mut self.loras.originals);
        if let Some(o) = originals.remove("unet") {
            self.unet = restore(self.unet.clone(), o);
        }
        if let Some(o) = originals.remove("text_encoder") {
            self.text_encoder = restore(self.text_encoder.clone(), o);
        }
        if let Some(o) = originals.remove("text_encoder_2") {
            self.text_encoder_2 = self.text_encoder_2.take().map(|te| restore(te, o));
        }
    }

    /// Restores the weights, then merges every loaded LoRA at its scale (no file is read).
    fn merge_loras(&mut self) -> Result<Vec<LoraReport>, PipelineError> {
        self.restore_weights();
        let mut all: HashMap<&'static str, HashMap<String, Vec<Delta>>> = HashMap::new();
        for lora in &self.loras.loaded {
            lora.updates.add_to(lora.scale, &mut all);
        }
        let reports = self.loras.loaded.iter().map(LoadedLora::report).collect();
        let mut errors = Vec::new();
        if let Some(d) = all.get("unet") {
            let (m, o, e) = merge_deltas(self.unet.clone(), d, self.unet.dtype());
            (self.unet, errors) = (m, [errors, e].concat());
            self.loras.originals.insert("unet", o);
        }
        if let Some(d) = all.get("text_encoder") {
            let (m, o, e) = merge_deltas(self.text_encoder.clone(), d, self.text_encoder.dtype());
            (self.text_encoder, errors) = (m, [errors, e].concat());
            self.loras.originals.insert("text_encoder", o);
        }
        if let (Some(d), Some(te)) = (all.get("text_encoder_2"), self.text_encoder_2.as_ref()) {
            let (m, o, e) = merge_deltas(te.clone(), d, te.dtype());
            (self.text_encoder_2, errors) = (Some(m), [errors, e].concat());
            self.loras.originals.insert("text_encoder_2", o);
        }
        if !errors.is_empty() {
            self.restore_weights();
            let path = self.loras.loaded.last().map(|l| l.path.clone()).unwrap_or_default();
            return Err(PipelineError::Lora(LoraError::Shape { path, errors: errors.into_iter().map(|(n, e)| format!("`{n}`: {e}")).collect() }));
        }
        Ok(reports)
    }
}
