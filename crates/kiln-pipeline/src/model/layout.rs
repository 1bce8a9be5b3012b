//! Which files each component of a model loads — config, weights (the fp16 variant or not),
//! tokenizer files — checked before anything is loaded, on a local folder or on a Hub listing
//! (to download exactly those files).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::ModelError;

/// Which weights file a model component loads.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Weights {
    pub path: PathBuf,
    /// `Some("fp16")` for `*.fp16.safetensors`.
    pub variant: Option<String>,
}

/// The files of one component.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum ComponentFiles {
    /// A network: `config.json` and a safetensors weights file.
    Model { config: PathBuf, weights: Weights },
    /// A CLIP tokenizer: `tokenizer.json`, or `vocab.json` + `merges.txt`; `tokenizer_config.json`
    /// where present.
    Tokenizer { tokenizer_json: Option<PathBuf>, vocab: Option<PathBuf>, merges: Option<PathBuf>, config: Option<PathBuf> },
    /// `scheduler_config.json`.
    Scheduler { config: PathBuf },
}

/// One checked component of a model folder.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Component {
    /// The `model_index.json` key and subfolder name (`unet`, `text_encoder_2`, ...).
    pub name: String,
    /// `diffusers` or `transformers`.
    pub library: String,
    /// The class `model_index.json` names (`UNet2DConditionModel`, `CLIPTextModel`, ...).
    pub class_name: String,
    pub dir: PathBuf,
    pub files: ComponentFiles,
}

impl Component {
    /// `config.json` (models) or `scheduler_config.json` (schedulers).
    pub fn config(&self) -> Option<&Path> {
        match &self.files {
            ComponentFiles::Model { config, .. } | ComponentFiles::Scheduler { config } => Some(config),
            ComponentFiles::Tokenizer { config, .. } => config.as_deref(),
        }
    }

    /// The weights file, for models.
    pub fn weights(&self) -> Option<&Weights> {
        match &self.files {
            ComponentFiles::Model { weights, .. } => Some(weights),
            _ => None,
        }
    }
}

/// Files of a model, local or as listed by the Hub; paths are relative, `/`-separated.
pub(crate) trait FileSet {
    fn has_file(&self, rel: &str) -> bool;
    fn has_dir(&self, rel: &str) -> bool;
    /// How errors name `rel` (a full path, or `org/name@rev: rel`).
    fn show(&self, rel: &str) -> String;
    /// The text of a small JSON file (only needed for the `--vae` class check).
    fn read(&self, rel: &str) -> Option<String>;
    /// The names of the files directly in folder `dir` (relative, `dir/name`).
    fn files_in(&self, dir: &str) -> Vec<String>;
}

pub(crate) struct LocalFiles(pub(crate) PathBuf);

impl FileSet for LocalFiles {
    fn has_file(&self, rel: &str) -> bool {
        self.0.join(rel).is_file()
    }
    fn has_dir(&self, rel: &str) -> bool {
        rel.is_empty() || self.0.join(rel).is_dir()
    }
    fn show(&self, rel: &str) -> String {
        if rel.is_empty() { self.0.display().to_string() } else { self.0.join(rel).display().to_string() }
    }
    fn read(&self, rel: &str) -> Option<String> {
        kiln_nn::read_text_file(&self.0.join(rel), kiln_nn::CONFIG_LIMIT).ok()
    }
    fn files_in(&self, dir: &str) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(self.0.join(dir))
            .map(|entries| entries.filter_map(|e| e.ok()).map(|e| join(dir, &e.file_name().to_string_lossy())).collect())
            .unwrap_or_default();
        out.sort();
        out
    }
}

pub(crate) struct HubListing {
    pub(crate) label: String,
    pub(crate) files: BTreeSet<String>,
}

impl FileSet for HubListing {
    fn has_file(&self, rel: &str) -> bool {
        self.files.contains(rel)
    }
    fn has_dir(&self, rel: &str) -> bool {
        rel.is_empty() || self.files.iter().any(|f| f.strip_prefix(rel).is_some_and(|r| r.starts_with('/')))
    }
    fn show(&self, rel: &str) -> String {
        if rel.is_empty() { self.label.clone() } else { format!("{}: {rel}", self.label) }
    }
    fn read(&self, _rel: &str) -> Option<String> {
        None
    }
    fn files_in(&self, dir: &str) -> Vec<String> {
        let prefix = if dir.is_empty() { String::new() } else { format!("{dir}/") };
        self.files.iter().filter(|f| f.strip_prefix(&prefix).is_some_and(|r| !r.contains('/'))).cloned().collect()
    }
}

pub(crate) fn require(files: &dyn FileSet, rel: &str, component: &str, what: &'static str) -> Result<(), ModelError> {
    if files.has_file(rel) {
        Ok(())
    } else {
        Err(ModelError::MissingFile { path: files.show(rel), component: component.to_string(), what })
    }
}

fn join(dir: &str, file: &str) -> String {
    if dir.is_empty() { file.to_string() } else { format!("{dir}/{file}") }
}

/// `{stem}.fp16.safetensors` when preferred and present, else `{stem}.safetensors`, else the fp16
/// variant if it is all there is; without safetensors, the PyTorch pickle diffusers would load in
/// the same order (`diffusion_pytorch_model[.fp16].bin`, `pytorch_model[.fp16].bin`), which kiln
/// reads without running it.
pub(crate) fn pick_weights(files: &dyn FileSet, dir: &str, stem: &str, prefer_fp16: bool) -> Result<(String, Option<String>), ModelError> {
    let component = if dir.is_empty() { "vae".to_string() } else { dir.to_string() };
    // one format's files: the fp16 variant when preferred and present, else the plain file, else
    // the fp16 variant if it is all there is
    let pick = |plain: String, fp16: String| -> Option<(String, Option<String>)> {
        if prefer_fp16 && files.has_file(&fp16) {
            return Some((fp16, Some("fp16".into())));
        }
        if files.has_file(&plain) {
            if prefer_fp16 {
                log::info!("{}: no fp16 variant, using {plain}", files.show(dir));
            }
            return Some((plain, None));
        }
        if files.has_file(&fp16) {
            log::info!("{}: only the fp16 weights variant is present, using it", files.show(dir));
            return Some((fp16, Some("fp16".into())));
        }
        None
    };
    let (plain, fp16) = (join(dir, &kiln_nn::weights_file_name(stem, None)), join(dir, &kiln_nn::weights_file_name(stem, Some("fp16"))));
    if let Some(picked) = pick(plain.clone(), fp16.clone()) {
        return Ok(picked);
    }
    // a sharded checkpoint: its index, read by the loader (kiln_nn::WeightsFile::open_sharded)
    let index = |variant| join(dir, &kiln_nn::sharded_index_name(stem, variant));
    if let Some(picked) = pick(index(None), index(Some("fp16"))) {
        return Ok(picked);
    }
    if let Some(picked) = pick(join(dir, &kiln_nn::pickle_file_name(stem, None)), join(dir, &kiln_nn::pickle_file_name(stem, Some("fp16")))) {
        return Ok(picked);
    }
    Err(ModelError::MissingWeights { path: files.show(dir), component, expected: format!("{stem}.safetensors or {stem}.fp16.safetensors") })
}

/// The shard files of a sharded checkpoint (`weights` its index): `{stem}-NNNNN-of-NNNNN.safetensors`,
/// with a variant `{stem}.{variant}-NNNNN-of-NNNNN.safetensors`, in `dir`; none for one file.
pub(crate) fn shards(files: &dyn FileSet, dir: &str, stem: &str, weights: &str, variant: Option<&str>) -> Vec<String> {
    if !weights.ends_with(".json") {
        return Vec::new();
    }
    let prefix = match variant {
        Some(v) => format!("{stem}.{v}-"),
        None => format!("{stem}-"),
    };
    files
        .files_in(dir)
        .into_iter()
        .filter(|f| {
            let name = f.rsplit('/').next().unwrap_or(f);
            name.strip_prefix(&prefix).and_then(|r| r.strip_suffix(".safetensors")).is_some_and(|r| r.contains("-of-"))
        })
        .collect()
}

pub(crate) fn tokenizer_layout(files: &dyn FileSet, name: &str, library: &str, class: &str) -> Result<Planned, ModelError> {
    let f = |file: &str| {
        let rel = format!("{name}/{file}");
        files.has_file(&rel).then_some(rel)
    };
    let (tokenizer_json, vocab, merges, config) = (f("tokenizer.json"), f("vocab.json"), f("merges.txt"), f("tokenizer_config.json"));
    if tokenizer_json.is_none() && (vocab.is_none() || merges.is_none()) {
        let missing = match (&vocab, &merges) {
            (None, None) => "vocab.json and merges.txt",
            (None, _) => "vocab.json",
            _ => "merges.txt",
        };
        return Err(ModelError::MissingTokenizer { path: files.show(name), component: name.to_string(), missing });
    }
    // special_tokens_map.json is optional; fetched too when listed.
    let extra = f("special_tokens_map.json");
    Ok(Planned::new(name, library, class, PlannedFiles::Tokenizer { tokenizer_json, vocab, merges, config, extra }))
}

/// The VAE of `--vae`: `config.json` (an AutoencoderKL) and weights in `dir` (relative, may be "").
pub(crate) fn vae_layout(files: &dyn FileSet, dir: &str, prefer_fp16: bool) -> Result<Planned, ModelError> {
    let config = join(dir, "config.json");
    if !files.has_file(&config) {
        return Err(ModelError::BadVae { path: files.show(dir), message: "not a VAE folder: no config.json".into() });
    }
    let mut class = "AutoencoderKL".to_string();
    if let Some(text) = files.read(&config) {
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::BadVae { path: files.show(&config), message: format!("not valid JSON: {e}") })?;
        match value.get("_class_name").and_then(Value::as_str) {
            Some("AutoencoderKL") | None => {}
            Some(other) => {
                return Err(ModelError::BadVae {
                    path: files.show(&config),
                    message: format!("the VAE must be an AutoencoderKL, this config is a {other}"),
                });
            }
        }
        class = "AutoencoderKL".into();
    }
    let (weights, variant) = pick_weights(files, dir, "diffusion_pytorch_model", prefer_fp16)?;
    let shards = shards(files, dir, "diffusion_pytorch_model", &weights, variant.as_deref());
    let mut planned = Planned::new("vae", "diffusers", &class, PlannedFiles::Model { config, weights, variant, shards });
    planned.base = dir.to_string();
    Ok(planned)
}

/// A checked component with relative paths, before it is anchored to a folder.
pub(crate) struct Planned {
    pub(crate) name: String,
    library: String,
    class: String,
    /// The component folder relative to the root (the name, or `--vae`'s own root).
    pub(crate) base: String,
    files: PlannedFiles,
}

pub(crate) enum PlannedFiles {
    /// `shards`: a sharded checkpoint's shard files, `weights` then being its index.
    Model { config: String, weights: String, variant: Option<String>, shards: Vec<String> },
    Tokenizer { tokenizer_json: Option<String>, vocab: Option<String>, merges: Option<String>, config: Option<String>, extra: Option<String> },
    Scheduler { config: String },
}

impl Planned {
    pub(crate) fn new(name: &str, library: &str, class: &str, files: PlannedFiles) -> Self {
        Planned { name: name.into(), library: library.into(), class: class.into(), base: name.into(), files }
    }

    /// Every file, relative (what to download).
    pub(crate) fn all_files(&self) -> Vec<String> {
        match &self.files {
            PlannedFiles::Model { config, weights, shards, .. } => [config, weights].into_iter().chain(shards).cloned().collect(),
            PlannedFiles::Scheduler { config } => vec![config.clone()],
            PlannedFiles::Tokenizer { tokenizer_json, vocab, merges, config, extra } => {
                [tokenizer_json, vocab, merges, config, extra].into_iter().flatten().cloned().collect()
            }
        }
    }

    pub(crate) fn to_component(&self, root: &Path) -> Component {
        let at = |rel: &String| root.join(rel);
        let files = match &self.files {
            PlannedFiles::Model { config, weights, variant, .. } => ComponentFiles::Model {
                config: at(config),
                weights: Weights { path: at(weights), variant: variant.clone() },
            },
            PlannedFiles::Scheduler { config } => ComponentFiles::Scheduler { config: at(config) },
            PlannedFiles::Tokenizer { tokenizer_json, vocab, merges, config, .. } => ComponentFiles::Tokenizer {
                tokenizer_json: tokenizer_json.as_ref().map(at),
                vocab: vocab.as_ref().map(at),
                merges: merges.as_ref().map(at),
                config: config.as_ref().map(at),
            },
        };
        let dir = if self.base.is_empty() { root.to_path_buf() } else { root.join(&self.base) };
        Component { name: self.name.clone(), library: self.library.clone(), class_name: self.class.clone(), dir, files }
    }
}

