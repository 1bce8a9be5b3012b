//! `load_lora`, `set_lora_scales`, `unload_loras` of every pipeline ([`StableDiffusion`],
//! [`StableDiffusion3`], [`Flux`]): the loaded LoRAs' updates merged into the denoiser's and text
//! encoders' weights, every change undone exactly from the parameters kept as they were. A
//! pipeline says which components it has (its `LoraTarget` impl); the rest is shared.

use std::collections::HashMap;
use std::path::Path;

use burn::module::Module;
use burn::tensor::{DType, Device};
use kiln_nn::{merge_deltas, param_names, restore, Delta, LoadError, Originals};
use kiln_unet::PerBlock;

use super::{hash, LoadedLora, LoraError, LoraFile, LoraReport, LoraState};
use crate::error::PipelineError;
use crate::{Flux, StableDiffusion, StableDiffusion3};

/// Merge errors: `(parameter, why)`.
type MergeErrors = Vec<(String, String)>;

/// A pipeline whose components LoRAs update, by the component names of its LoRA files (`unet`,
/// `transformer`, `text_encoder`, `text_encoder_2`, `text_encoder_3`).
pub(crate) trait LoraTarget {
    fn lora_state(&mut self) -> &mut LoraState;
    fn lora_device(&self) -> &Device;
    /// Each component's parameter names (PyTorch's) and shapes.
    fn lora_params(&self) -> HashMap<&'static str, Vec<(String, Vec<usize>)>>;
    /// The original (LDM) name of a UNet parameter, which SDXL's kohya LoRAs use.
    fn ldm_name(&self, _name: &str) -> Option<String> {
        None
    }
    /// Merges `deltas` into component `name` (one it has): what it replaced, and what did not fit.
    fn merge_component(&mut self, name: &str, deltas: &HashMap<String, Vec<Delta>>) -> Option<(Originals, MergeErrors)>;
    /// Puts back what a merge into component `name` replaced.
    fn restore_component(&mut self, name: &str, originals: Originals);
}

/// [`merge_deltas`] in place, computing in the module's dtype.
fn merge_into<M: Module>(module: &mut M, deltas: &HashMap<String, Vec<Delta>>, dtype: DType) -> (Originals, MergeErrors) {
    let (merged, originals, errors) = merge_deltas(module.clone(), deltas, dtype);
    *module = merged;
    (originals, errors)
}

/// [`restore`] in place.
fn restore_into<M: Module>(module: &mut M, originals: Originals) {
    *module = restore(module.clone(), originals);
}

/// [`merge_into`] on a component, computing in its own dtype.
macro_rules! merge {
    ($module:expr, $deltas:expr) => {{
        let dtype = $module.dtype();
        merge_into(&mut $module, $deltas, dtype)
    }};
}

fn names<M: Module>(module: &M) -> Vec<(String, Vec<usize>)> {
    param_names(module)
}

/// Loads the LoRA at `path` at `scale` and merges every loaded LoRA; nothing changes on failure.
fn load<T: LoraTarget>(target: &mut T, path: &Path, scale: f64) -> Result<LoraReport, PipelineError> {
    if !scale.is_finite() {
        return Err(PipelineError::Input { what: "a LoRA's scale", value: scale.to_string(), allowed: "a finite number".into() });
    }
    let file = LoraFile::open(path).map_err(PipelineError::Lora)?;
    let params = target.lora_params();
    let updates = file.updates(&params, &|n| target.ldm_name(n), target.lora_device()).map_err(PipelineError::Lora)?;
    let hash = hash::lora_short_hash(path).map_err(|source| PipelineError::Lora(LoadError::Io { path: path.into(), source }.into()))?;
    target.lora_state().loaded.push(LoadedLora { path: file.path.clone(), format: file.format, modules: file.modules(), hash, scale, updates });
    match merge(target) {
        Ok(reports) => Ok(reports.last().cloned().expect("one per LoRA")),
        Err(e) => {
            target.lora_state().loaded.pop();
            merge(target).expect("the LoRAs that were loaded merge again");
            Err(e)
        }
    }
}

fn set_scales<T: LoraTarget>(target: &mut T, scales: &[f64]) -> Result<Vec<LoraReport>, PipelineError> {
    let loaded = target.lora_state().loaded.len();
    if scales.len() != loaded || scales.iter().any(|s| !s.is_finite()) {
        return Err(PipelineError::Input { what: "LoRA scales", value: format!("{scales:?}"), allowed: format!("{loaded} finite numbers, one per loaded LoRA") });
    }
    for (lora, new) in target.lora_state().loaded.iter_mut().zip(scales) {
        lora.scale = *new;
    }
    merge(target)
}

fn unload<T: LoraTarget>(target: &mut T) {
    restore_all(target);
    target.lora_state().loaded.clear();
}

fn restore_all<T: LoraTarget>(target: &mut T) {
    let originals = std::mem::take(&mut target.lora_state().originals);
    for (name, o) in originals {
        target.restore_component(name, o);
    }
}

/// Restores the weights, then merges every loaded LoRA at its scale (no file is read).
fn merge<T: LoraTarget>(target: &mut T) -> Result<Vec<LoraReport>, PipelineError> {
    restore_all(target);
    let mut all: HashMap<&'static str, HashMap<String, Vec<Delta>>> = HashMap::new();
    let state = target.lora_state();
    for lora in &state.loaded {
        lora.updates.add_to(lora.scale, &mut all);
    }
    let reports: Vec<LoraReport> = state.loaded.iter().map(LoadedLora::report).collect();
    let path = state.loaded.last().map(|l| l.path.clone()).unwrap_or_default();
    let mut errors = Vec::new();
    let mut components: Vec<_> = all.into_iter().collect();
    components.sort_by_key(|(name, _)| *name);
    for (name, deltas) in components {
        if let Some((originals, e)) = target.merge_component(name, &deltas) {
            errors.extend(e);
            target.lora_state().originals.insert(name, originals);
        }
    }
    if !errors.is_empty() {
        restore_all(target);
        return Err(PipelineError::Lora(LoraError::Shape { path, errors: errors.into_iter().map(|(n, e)| format!("`{n}`: {e}")).collect() }));
    }
    Ok(reports)
}

/// The public LoRA methods of a pipeline type, over its [`LoraTarget`].
macro_rules! lora_methods {
    ($pipeline:ty) => {
        impl $pipeline {
            /// Loads the LoRA at `path` at `scale` (diffusers' adapter weight; A1111's
            /// `<lora:name:scale>`) and merges every loaded LoRA into the weights. Nothing changes
            /// when it fails: a module the model lacks, an update that does not fit, an
            /// unsupported layer kind are errors.
            pub fn load_lora(&mut self, path: &Path, scale: f64) -> Result<LoraReport, PipelineError> {
                load(self, path, scale)
            }

            /// Sets each loaded LoRA's scale (in the order they were loaded) and merges again.
            pub fn set_lora_scales(&mut self, scales: &[f64]) -> Result<Vec<LoraReport>, PipelineError> {
                set_scales(self, scales)
            }

            /// Takes every LoRA out: the weights are again exactly those loaded from the model.
            pub fn unload_loras(&mut self) {
                unload(self)
            }

            /// The loaded LoRAs, in order.
            pub fn loras(&self) -> Vec<(&Path, f64)> {
                self.loras.loaded.iter().map(|l| (l.path.as_path(), l.scale)).collect()
            }
        }
    };
}

lora_methods!(StableDiffusion);
lora_methods!(StableDiffusion3);
lora_methods!(Flux);

impl LoraTarget for StableDiffusion {
    fn lora_state(&mut self) -> &mut LoraState {
        &mut self.loras
    }

    fn lora_device(&self) -> &Device {
        &self.device
    }

    fn lora_params(&self) -> HashMap<&'static str, Vec<(String, Vec<usize>)>> {
        let mut params = HashMap::from([("unet", names(&self.unet)), ("text_encoder", names(&self.text_encoder))]);
        if let Some(te) = &self.text_encoder_2 {
            params.insert("text_encoder_2", names(te));
        }
        params
    }

    /// SDXL kohya LoRAs name the UNet's modules as the original (LDM) model does.
    fn ldm_name(&self, name: &str) -> Option<String> {
        let config = self.unet.config();
        let lpb = match &config.layers_per_block {
            PerBlock::One(n) => Some(*n),
            PerBlock::List(l) => l.first().copied().filter(|n| l.iter().all(|m| m == n)),
        }?;
        let up_attention: Vec<bool> = config.up_block_types.iter().map(|t| t.contains("CrossAttn")).collect();
        crate::single_file::unet::ldm_key(name, lpb, &|b| up_attention.get(b).copied().unwrap_or(false))
    }

    fn merge_component(&mut self, name: &str, deltas: &HashMap<String, Vec<Delta>>) -> Option<(Originals, MergeErrors)> {
        match name {
            "unet" => Some(merge!(self.unet, deltas)),
            "text_encoder" => Some(merge!(self.text_encoder, deltas)),
            "text_encoder_2" => self.text_encoder_2.as_mut().map(|te| merge!(*te, deltas)),
            _ => None,
        }
    }

    fn restore_component(&mut self, name: &str, originals: Originals) {
        match name {
            "unet" => restore_into(&mut self.unet, originals),
            "text_encoder" => restore_into(&mut self.text_encoder, originals),
            "text_encoder_2" => {
                if let Some(te) = self.text_encoder_2.as_mut() {
                    restore_into(te, originals)
                }
            }
            _ => {}
        }
    }
}

impl LoraTarget for StableDiffusion3 {
    fn lora_state(&mut self) -> &mut LoraState {
        &mut self.loras
    }

    fn lora_device(&self) -> &Device {
        &self.device
    }

    fn lora_params(&self) -> HashMap<&'static str, Vec<(String, Vec<usize>)>> {
        let mut params = HashMap::from([
            ("transformer", names(&self.transformer)),
            ("text_encoder", names(&self.text_encoder)),
            ("text_encoder_2", names(&self.text_encoder_2)),
        ]);
        if let Some((_, t5)) = &self.t5 {
            params.insert("text_encoder_3", names(t5));
        }
        params
    }

    fn merge_component(&mut self, name: &str, deltas: &HashMap<String, Vec<Delta>>) -> Option<(Originals, MergeErrors)> {
        match name {
            "transformer" => Some(merge!(self.transformer, deltas)),
            "text_encoder" => Some(merge!(self.text_encoder, deltas)),
            "text_encoder_2" => Some(merge!(self.text_encoder_2, deltas)),
            "text_encoder_3" => self.t5.as_mut().map(|(_, t5)| merge!(*t5, deltas)),
            _ => None,
        }
    }

    fn restore_component(&mut self, name: &str, originals: Originals) {
        match name {
            "transformer" => restore_into(&mut self.transformer, originals),
            "text_encoder" => restore_into(&mut self.text_encoder, originals),
            "text_encoder_2" => restore_into(&mut self.text_encoder_2, originals),
            "text_encoder_3" => {
                if let Some((_, t5)) = self.t5.as_mut() {
                    restore_into(t5, originals)
                }
            }
            _ => {}
        }
    }
}

impl LoraTarget for Flux {
    fn lora_state(&mut self) -> &mut LoraState {
        &mut self.loras
    }

    fn lora_device(&self) -> &Device {
        &self.device
    }

    fn lora_params(&self) -> HashMap<&'static str, Vec<(String, Vec<usize>)>> {
        HashMap::from([
            ("transformer", names(&self.transformer)),
            ("text_encoder", names(&self.text_encoder)),
            ("text_encoder_2", names(&self.text_encoder_2)),
        ])
    }

    fn merge_component(&mut self, name: &str, deltas: &HashMap<String, Vec<Delta>>) -> Option<(Originals, MergeErrors)> {
        match name {
            "transformer" => Some(merge!(self.transformer, deltas)),
            "text_encoder" => Some(merge!(self.text_encoder, deltas)),
            "text_encoder_2" => Some(merge!(self.text_encoder_2, deltas)),
            _ => None,
        }
    }

    fn restore_component(&mut self, name: &str, originals: Originals) {
        match name {
            "transformer" => restore_into(&mut self.transformer, originals),
            "text_encoder" => restore_into(&mut self.text_encoder, originals),
            "text_encoder_2" => restore_into(&mut self.text_encoder_2, originals),
            _ => {}
        }
    }
}
