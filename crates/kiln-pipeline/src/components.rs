//! What the pipelines' loaders share: a resolved folder's component by name (its folder, or an
//! error naming the missing component) and the load options of its weights (the variant the
//! folder resolved to).

use std::path::PathBuf;

use burn::tensor::Device;
use kiln_nn::LoadOptions;

use crate::error::PipelineError;
use crate::model::ModelFolder;

/// The folder of component `name`.
pub(crate) fn dir(folder: &ModelFolder, name: &str) -> Result<PathBuf, PipelineError> {
    folder
        .component(name)
        .map(|c| c.dir.clone())
        .ok_or_else(|| PipelineError::MissingComponent { path: folder.root.clone(), component: name.to_string() })
}

/// Load options for component `name` on `device`: f32, its weights' variant.
pub(crate) fn options(folder: &ModelFolder, name: &str, device: &Device) -> LoadOptions {
    let variant = folder.component(name).and_then(|c| c.weights()).and_then(|w| w.variant.clone());
    LoadOptions::new(device).with_variant(variant.as_deref())
}
