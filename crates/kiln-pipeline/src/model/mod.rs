//! Model resolution: a diffusers model folder, or a Hugging Face Hub id in the local Hub cache.
//!
//! `--model` takes either
//! * a local folder in diffusers' layout (`model_index.json` plus one subfolder per component, as
//!   `DiffusionPipeline.save_pretrained` writes it), or
//! * a Hub id `org/name`, optionally `org/name@revision` (a branch, tag or commit hash; default
//!   `main`), looked up in the standard Hub cache that `huggingface_hub` (Python) and the `hf-hub`
//!   crate share: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`, with the
//!   layout `models--org--name/refs/<revision>` (a file holding the commit hash) and
//!   `models--org--name/snapshots/<commit>/<files>`. Online, the files the pipeline needs are
//!   downloaded into that cache first (printing each one); with `HF_HUB_OFFLINE=1` only the cache
//!   is read.
//!
//! A path that exists is always taken as a folder (as `DiffusionPipeline.from_pretrained` does).
//!
//! Then `model_index.json` decides the pipeline ([`PipelineKind`] from `_class_name`) and which
//! components must be present; each is checked (folder, config, weights) before anything is
//! loaded, so a half-downloaded model fails with the name of the missing file rather than deep
//! inside a loader. Safety checker, feature extractor and image encoder entries are ignored (kiln
//! does not run them).

use std::fmt;
use std::path::{Path, PathBuf};

use thiserror::Error;

#[cfg(feature = "hub")]
mod download;
mod hub;
mod index;
mod layout;

pub use hub::{cached_snapshot, valid_revision, HubConfig, HubId};
pub use index::{check_model_index, PipelineKind, SUPPORTED_PIPELINES};
pub use layout::{Component, ComponentFiles, Weights};

use index::ModelIndex;
use layout::{vae_layout, LocalFiles};

/// Why a model could not be resolved. Every variant names the folder, file or Hub id.
#[derive(Debug, Error)]
pub enum ModelError {
    #[error("model folder {0} does not exist")]
    NotFound(PathBuf),
    #[error("{0} is a file, not a diffusers model folder (model_index.json plus component subfolders)")]
    NotAFolder(PathBuf),
    #[error("{0} is not a diffusers model folder: it has no model_index.json")]
    NoModelIndex(PathBuf),
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not valid JSON: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
    #[error("{path}: {message}")]
    BadIndex { path: String, message: String },
    #[error(
        "{path}: pipeline class `{class}` is not supported; kiln runs {}",
        SUPPORTED_PIPELINES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
    )]
    UnsupportedPipeline { path: String, class: String },
    #[error("{model}: {class} needs a `{component}` component, but model_index.json has none")]
    ComponentNotListed { model: String, class: String, component: String },
    #[error("{path}: the `{component}` component folder is missing")]
    MissingComponentDir { path: String, component: String },
    #[error("missing {path} (the {what} of `{component}`)")]
    MissingFile { path: String, component: String, what: &'static str },
    #[error("{path}: `{component}` has no tokenizer.json and no {missing}")]
    MissingTokenizer { path: String, component: String, missing: &'static str },
    #[error("{path}: no weights for `{component}` (expected {expected})")]
    MissingWeights { path: String, component: String, expected: String },
    #[error("{path}: {message}")]
    BadVae { path: String, message: String },
    #[error("`{spec}`: `{revision}` is not a revision name (a branch, tag or commit: letters, digits and -_./, no `..` or empty parts)")]
    BadRevision { spec: String, revision: String },
    #[error("`{0}` is neither an existing folder nor a Hub id (org/name or org/name@revision)")]
    NotAModel(String),
    #[error(
        "Hub model {id} is not in the Hub cache {}: {detail}{}",
        cache.display(),
        if *.offline { " (HF_HUB_OFFLINE is set, so kiln does not download)" } else { "" }
    )]
    NotInCache { id: HubId, cache: PathBuf, detail: String, offline: bool },
    #[error("Hub model {id}: {message}")]
    Hub { id: HubId, message: String },
}

/// What `--model` (or `--vae`) named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    Local(PathBuf),
    Hub(HubId),
}

impl ModelSource {
    /// An existing path is a folder; otherwise `org/name[@revision]` is a Hub id; anything else
    /// is an error (a path that does not exist).
    pub fn parse(spec: &str) -> Result<Self, ModelError> {
        let path = Path::new(spec);
        if path.exists() {
            return Ok(ModelSource::Local(path.to_path_buf()));
        }
        // (a revision may hold `/`, e.g. `refs/pr/1`; the repo part has exactly one)
        let repo_part = spec.split('@').next().unwrap_or_default();
        let looks_like_path = spec.starts_with(['/', '.', '~']) || spec.contains('\\') || repo_part.matches('/').count() != 1;
        // `org/name@rev` with a repo id that parses but a revision that does not
        if let Some((repo, rev)) = spec.split_once('@')
            && !looks_like_path
            && HubId::parse(repo).is_some()
            && !hub::valid_revision(rev)
        {
            return Err(ModelError::BadRevision { spec: spec.into(), revision: rev.into() });
        }
        match HubId::parse(spec) {
            Some(id) if !looks_like_path => Ok(ModelSource::Hub(id)),
            _ if spec.contains(['/', '\\']) || spec.starts_with(['.', '~']) => Err(ModelError::NotFound(path.into())),
            _ => Err(ModelError::NotAModel(spec.to_string())),
        }
    }
}

impl fmt::Display for ModelSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelSource::Local(p) => write!(f, "{}", p.display()),
            ModelSource::Hub(id) => write!(f, "{id}"),
        }
    }
}

/// Options of [`resolve`] and [`ModelFolder::open`].
#[derive(Debug, Clone, Default)]
pub struct ResolveOptions {
    /// Prefer the `.fp16.safetensors` weight variants where a component has them (and download
    /// only those).
    pub prefer_fp16: bool,
    /// `--vae`: a VAE folder (`config.json` + weights, or a model folder with a `vae/` subfolder)
    /// or a Hub id, used instead of the model's own VAE.
    pub vae: Option<String>,
}

/// A resolved, checked model folder: every component the pipeline needs is present.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelFolder {
    /// The folder (for a Hub id, its snapshot in the cache).
    pub root: PathBuf,
    /// What the user named: the folder or the Hub id.
    pub name: String,
    /// `model_index.json`'s `_class_name`.
    pub class_name: String,
    pub kind: PipelineKind,
    /// SDXL: encode an empty negative prompt as zeros (diffusers' default `true`); always false
    /// for SD 1/2, whose pipelines encode the empty string.
    pub force_zeros_for_empty_prompt: bool,
    /// The required components, in [`PipelineKind::required_components`] order.
    pub components: Vec<Component>,
}

impl ModelFolder {
    /// Checks the folder `root` (see the module docs). `opts.vae` must be a local folder here;
    /// [`resolve`] also takes Hub ids.
    pub fn open(root: &Path, opts: &ResolveOptions) -> Result<Self, ModelError> {
        let vae = opts.vae.as_deref().map(|v| vae_dir(Path::new(v))).transpose()?;
        Self::open_with(root, &root.display().to_string(), opts.prefer_fp16, vae.as_deref())
    }

    fn open_with(root: &Path, name: &str, prefer_fp16: bool, vae: Option<&Path>) -> Result<Self, ModelError> {
        match std::fs::metadata(root) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(ModelError::NotAFolder(root.into())),
            Err(_) => return Err(ModelError::NotFound(root.into())),
        }
        let index_path = root.join("model_index.json");
        if !index_path.is_file() {
            return Err(ModelError::NoModelIndex(root.into()));
        }
        let index = ModelIndex::read(&index_path)?;
        let files = LocalFiles(root.to_path_buf());
        let mut layout = index.layout(&files, prefer_fp16, vae.is_some())?;
        if let Some(vae_root) = vae {
            let vae_files = LocalFiles(vae_root.to_path_buf());
            layout.push(vae_layout(&vae_files, "", prefer_fp16)?);
        }
        let mut components = Vec::new();
        for name in index.kind.required_components().iter().chain(index.kind.optional_components()) {
            // the optional components the index lists are in the layout too
            let Some(planned) = layout.iter().find(|c| c.name == *name) else { continue };
            let base = if *name == "vae" && vae.is_some() { vae.unwrap() } else { root };
            components.push(planned.to_component(base));
        }
        Ok(ModelFolder {
            root: root.to_path_buf(),
            name: name.to_string(),
            class_name: index.class_name.clone(),
            kind: index.kind,
            force_zeros_for_empty_prompt: index.force_zeros_for_empty_prompt,
            components,
        })
    }

    /// The component named `name` (`unet`, `vae`, `text_encoder_2`, ...).
    pub fn component(&self, name: &str) -> Option<&Component> {
        self.components.iter().find(|c| c.name == name)
    }
}

/// Resolves `--model` (and `--vae`) to a checked [`ModelFolder`]: a local folder as is, a Hub id
/// through the cache (downloading what is missing unless `hub.offline`).
pub fn resolve(model: &str, opts: &ResolveOptions, hub: &HubConfig) -> Result<ModelFolder, ModelError> {
    let source = ModelSource::parse(model)?;
    let vae = opts.vae.as_deref().map(|spec| resolve_vae(spec, opts.prefer_fp16, hub)).transpose()?;
    let (root, name) = match &source {
        ModelSource::Local(p) => (p.clone(), p.display().to_string()),
        ModelSource::Hub(id) => {
            (snapshot(id, hub, opts.prefer_fp16, Want::Pipeline { skip_vae: vae.is_some() })?, id.to_string())
        }
    };
    ModelFolder::open_with(&root, &name, opts.prefer_fp16, vae.as_deref())
}

/// Resolves `--vae` (a VAE folder, a model folder with `vae/`, or a Hub id) to the VAE's folder.
pub fn resolve_vae(spec: &str, prefer_fp16: bool, hub: &HubConfig) -> Result<PathBuf, ModelError> {
    match ModelSource::parse(spec)? {
        ModelSource::Local(p) => vae_dir(&p),
        ModelSource::Hub(id) => vae_dir(&snapshot(&id, hub, prefer_fp16, Want::Vae)?),
    }
}

/// Resolves a single file's `--config` (a diffusers folder, or a Hub id through the cache) to a
/// folder whose `model_index.json` and component configs describe the architecture. A Hub id is
/// fetched as a whole pipeline (weights included) unless it is in the cache.
pub fn resolve_config(spec: &str, hub: &HubConfig) -> Result<PathBuf, ModelError> {
    match ModelSource::parse(spec)? {
        ModelSource::Local(p) if p.is_dir() => Ok(p),
        ModelSource::Local(p) if p.exists() => Err(ModelError::NotAFolder(p)),
        ModelSource::Local(p) => Err(ModelError::NotFound(p)),
        ModelSource::Hub(id) => snapshot(&id, hub, false, Want::Pipeline { skip_vae: false }),
    }
}

/// What a Hub repo must provide.
pub(crate) enum Want {
    /// A whole pipeline (model_index.json and each component); `skip_vae` when `--vae` replaces it.
    Pipeline { skip_vae: bool },
    /// A VAE repo (`config.json` + weights at the root, or under `vae/`).
    Vae,
}

/// The snapshot folder of `id` holding what `want` needs: read from the cache when `hub.offline`
/// (or when this build has no `hub` feature), else downloaded into it first.
fn snapshot(id: &HubId, hub: &HubConfig, prefer_fp16: bool, want: Want) -> Result<PathBuf, ModelError> {
    if hub.offline {
        return cached_snapshot(&hub.cache_dir, id, true);
    }
    #[cfg(feature = "hub")]
    return download::download(id, hub, prefer_fp16, want);
    #[cfg(not(feature = "hub"))]
    {
        let _ = (prefer_fp16, want);
        cached_snapshot(&hub.cache_dir, id, false).map_err(|e| ModelError::Hub {
            id: id.clone(),
            message: format!("{e}; this build of kiln has no `hub` feature, so it does not download"),
        })
    }
}

/// `--vae DIR`: a folder with `config.json` (a VAE folder), or a model folder with `vae/`.
fn vae_dir(dir: &Path) -> Result<PathBuf, ModelError> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(ModelError::NotAFolder(dir.into())),
        Err(_) => return Err(ModelError::NotFound(dir.into())),
    }
    if dir.join("config.json").is_file() {
        Ok(dir.to_path_buf())
    } else if dir.join("vae").join("config.json").is_file() {
        Ok(dir.join("vae"))
    } else {
        Err(ModelError::BadVae {
            path: dir.display().to_string(),
            message: "not a VAE folder: no config.json (nor vae/config.json)".into(),
        })
    }
}


#[cfg(test)]
mod tests {
    use super::layout::{HubListing, Planned};
    use super::*;
    use serde_json::Value;

    fn listing(files: &[&str]) -> HubListing {
        HubListing { label: "org/name@main".into(), files: files.iter().map(|s| s.to_string()).collect() }
    }

    fn sd_index() -> ModelIndex {
        let v: Value = serde_json::from_str(
            r#"{"_class_name": "StableDiffusionPipeline", "scheduler": ["diffusers", "PNDMScheduler"],
                "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
                "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
                "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
                "feature_extractor": ["transformers", "CLIPImageProcessor"], "requires_safety_checker": true}"#,
        )
        .unwrap();
        ModelIndex::parse(&v, "model_index.json").unwrap()
    }

    const SD15_REPO: &[&str] = &[
        "model_index.json",
        "feature_extractor/preprocessor_config.json",
        "safety_checker/config.json",
        "safety_checker/model.safetensors",
        "scheduler/scheduler_config.json",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "text_encoder/model.fp16.safetensors",
        "text_encoder/pytorch_model.bin",
        "tokenizer/merges.txt",
        "tokenizer/special_tokens_map.json",
        "tokenizer/tokenizer_config.json",
        "tokenizer/vocab.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "unet/diffusion_pytorch_model.bin",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.fp16.safetensors",
        "v1-5-pruned.safetensors",
    ];

    fn download_plan(index: &ModelIndex, files: &HubListing, fp16: bool, skip_vae: bool) -> Vec<String> {
        index.layout(files, fp16, skip_vae).unwrap().iter().flat_map(Planned::all_files).collect()
    }

    #[test]
    fn download_plan_takes_only_what_the_pipeline_needs() {
        let plan = download_plan(&sd_index(), &listing(SD15_REPO), false, false);
        assert_eq!(
            plan,
            [
                "scheduler/scheduler_config.json",
                "text_encoder/config.json",
                "text_encoder/model.safetensors",
                "tokenizer/vocab.json",
                "tokenizer/merges.txt",
                "tokenizer/tokenizer_config.json",
                "tokenizer/special_tokens_map.json",
                "unet/config.json",
                "unet/diffusion_pytorch_model.safetensors",
                "vae/config.json",
                "vae/diffusion_pytorch_model.safetensors",
            ]
        );
        let plan = download_plan(&sd_index(), &listing(SD15_REPO), true, true);
        assert!(plan.contains(&"unet/diffusion_pytorch_model.fp16.safetensors".to_string()));
        assert!(plan.contains(&"text_encoder/model.fp16.safetensors".to_string()));
        assert!(!plan.iter().any(|f| f.starts_with("vae/")), "--vae replaces the model's VAE: {plan:?}");
    }

    #[test]
    fn hub_listing_errors_name_the_file() {
        let without = |skip: &str| listing(&SD15_REPO.iter().copied().filter(|f| !f.starts_with(skip)).collect::<Vec<_>>());
        let err = sd_index().layout(&without("unet/diffusion_pytorch_model"), false, false).err().unwrap();
        assert_eq!(
            err.to_string(),
            "org/name@main: unet: no weights for `unet` (expected diffusion_pytorch_model.safetensors or diffusion_pytorch_model.fp16.safetensors)"
        );
        // without safetensors, the pickle diffusers would load (read without running it)
        let plan = download_plan(&sd_index(), &without("text_encoder/model."), false, false);
        assert!(plan.contains(&"text_encoder/pytorch_model.bin".to_string()), "{plan:?}");
        let err = sd_index().layout(&without("tokenizer/merges"), false, false).err().unwrap();
        assert_eq!(err.to_string(), "org/name@main: tokenizer: `tokenizer` has no tokenizer.json and no merges.txt");
        let err = sd_index().layout(&without("vae/"), false, false).err().unwrap();
        assert!(err.to_string().contains("the `vae` component folder is missing"), "{err}");
        let vae = vae_layout(&listing(&["config.json", "diffusion_pytorch_model.fp16.safetensors"]), "", false).unwrap();
        assert_eq!(vae.all_files(), ["config.json", "diffusion_pytorch_model.fp16.safetensors"]);
    }

    #[test]
    fn hub_ids() {
        assert_eq!(HubId::parse("org/name"), Some(HubId { repo: "org/name".into(), revision: None }));
        let id = HubId::parse("stabilityai/stable-diffusion-xl-base-1.0@refs/pr/12").unwrap();
        assert_eq!((id.repo.as_str(), id.revision()), ("stabilityai/stable-diffusion-xl-base-1.0", "refs/pr/12"));
        assert_eq!(id.cache_folder(), "models--stabilityai--stable-diffusion-xl-base-1.0");
        for bad in ["name", "a/b/c", "/abs", "org/", "org/na me", "org/a--b", "org/name@", "-org/name", "org/name."] {
            assert_eq!(HubId::parse(bad), None, "{bad}");
        }
        assert!(matches!(ModelSource::parse("./no/such/dir"), Err(ModelError::NotFound(_))));
        assert!(matches!(ModelSource::parse("nosuchthing"), Err(ModelError::NotAModel(_))));
        assert!(matches!(ModelSource::parse("org/name@v1"), Ok(ModelSource::Hub(_))));
        assert_eq!(
            ModelSource::parse("org/name@refs/pr/1").unwrap(),
            ModelSource::Hub(HubId { repo: "org/name".into(), revision: Some("refs/pr/1".into()) })
        );
    }

    #[test]
    fn index_errors() {
        let parse = |s: &str| ModelIndex::parse(&serde_json::from_str(s).unwrap(), "m/model_index.json").err().unwrap().to_string();
        let e = parse(r#"{"_class_name": "FluxKontextPipeline"}"#);
        assert!(e.starts_with("m/model_index.json: pipeline class `FluxKontextPipeline` is not supported; kiln runs StableDiffusionPipeline, "), "{e}");
        assert!(e.contains("StableDiffusionXLPipeline") && e.contains("FluxPipeline"), "{e}");
        assert_eq!(parse("{}"), "m/model_index.json: no `_class_name` (the pipeline class)");
        assert!(parse(r#"{"_class_name": "StableDiffusionXLPipeline", "force_zeros_for_empty_prompt": "yes"}"#)
            .contains("`force_zeros_for_empty_prompt` must be true or false"));
        assert!(parse(r#"{"_class_name": "StableDiffusionPipeline", "unet": "UNet2DConditionModel"}"#).contains("`unet` must be [library, class]"));
        assert_eq!(
            parse(r#"{"_class_name": "StableDiffusionXLImg2ImgPipeline", "requires_aesthetics_score": true}"#),
            "m/model_index.json: `requires_aesthetics_score: true` (SDXL refiner conditioning) is not supported"
        );
    }
}
