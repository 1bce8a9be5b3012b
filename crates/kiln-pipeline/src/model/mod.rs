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

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use thiserror::Error;

/// The pipelines kiln runs, decided by `model_index.json`'s `_class_name`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum PipelineKind {
    /// SD 1.x / 2.x: one CLIP text encoder, 4-channel UNet (txt2img and img2img).
    StableDiffusion,
    /// SDXL: two text encoders (the second with projection), pooled embeddings and time ids.
    StableDiffusionXL,
    /// SD 1.x / 2.x inpainting: the UNet takes 9 channels (latents, mask, masked-image latents).
    StableDiffusionInpaint,
}

/// `_class_name` values kiln accepts, and the pipeline each one runs as. The img2img classes share
/// their txt2img sibling's folder layout; img2img itself is chosen by `--init-image`.
pub const SUPPORTED_PIPELINES: &[(&str, PipelineKind)] = &[
    ("StableDiffusionPipeline", PipelineKind::StableDiffusion),
    ("StableDiffusionImg2ImgPipeline", PipelineKind::StableDiffusion),
    ("StableDiffusionInpaintPipeline", PipelineKind::StableDiffusionInpaint),
    ("StableDiffusionXLPipeline", PipelineKind::StableDiffusionXL),
    ("StableDiffusionXLImg2ImgPipeline", PipelineKind::StableDiffusionXL),
];

impl PipelineKind {
    /// The kind for a `model_index.json` `_class_name`; `None` if kiln does not run it.
    pub fn from_class_name(name: &str) -> Option<Self> {
        SUPPORTED_PIPELINES.iter().find(|(n, _)| *n == name).map(|(_, k)| *k)
    }

    /// The components (model_index keys = subfolders) the pipeline needs.
    pub fn required_components(self) -> &'static [&'static str] {
        match self {
            PipelineKind::StableDiffusion | PipelineKind::StableDiffusionInpaint => {
                &["scheduler", "text_encoder", "tokenizer", "unet", "vae"]
            }
            PipelineKind::StableDiffusionXL => {
                &["scheduler", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet", "vae"]
            }
        }
    }
}

impl fmt::Display for PipelineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PipelineKind::StableDiffusion => "Stable Diffusion",
            PipelineKind::StableDiffusionXL => "Stable Diffusion XL",
            PipelineKind::StableDiffusionInpaint => "Stable Diffusion inpainting",
        })
    }
}

/// Why a model could not be resolved. Every variant names the folder, file or Hub id.
#[derive(Debug, Error)]
pub enum ModelError {
    #[error("model folder {0} does not exist")]
    NotFound(PathBuf),
    #[error(
        "{0} is a file; kiln reads diffusers model folders (model_index.json plus component subfolders), \
         not single-file checkpoints"
    )]
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
    #[error("{path}: `{component}` has only PyTorch pickle weights; kiln reads safetensors only")]
    PickleWeights { path: String, component: String },
    #[error("{path}: `{component}` has sharded weights, which kiln does not load yet")]
    ShardedWeights { path: String, component: String },
    #[error("{path}: {message}")]
    BadVae { path: String, message: String },
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

/// A Hub model id with an optional revision: `org/name` or `org/name@revision`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubId {
    pub repo: String,
    pub revision: Option<String>,
}

impl HubId {
    /// Parses `org/name[@revision]`; `None` if `s` does not have that shape. Repo ids follow the
    /// Hub's rules: letters, digits, `-`, `_`, `.`; no `--` or `..`; at most 96 characters.
    pub fn parse(s: &str) -> Option<Self> {
        let (repo, revision) = match s.split_once('@') {
            Some((r, rev)) if !rev.is_empty() && !rev.contains(char::is_whitespace) => (r, Some(rev.to_string())),
            Some(_) => return None,
            None => (s, None),
        };
        let (org, name) = repo.split_once('/')?;
        let part_ok = |p: &str| {
            !p.is_empty()
                && p.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
                && !p.starts_with(['-', '.'])
                && !p.ends_with(['-', '.'])
                && !p.contains("--")
                && !p.contains("..")
        };
        (part_ok(org) && part_ok(name) && repo.len() <= 96).then(|| HubId { repo: repo.to_string(), revision })
    }

    /// The revision asked for, `main` by default.
    pub fn revision(&self) -> &str {
        self.revision.as_deref().unwrap_or("main")
    }

    /// The repo's folder in the Hub cache: `models--org--name`.
    pub fn cache_folder(&self) -> String {
        format!("models--{}", self.repo.replace('/', "--"))
    }
}

impl fmt::Display for HubId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.revision {
            Some(rev) => write!(f, "{}@{rev}", self.repo),
            None => f.write_str(&self.repo),
        }
    }
}

/// Where Hub models live and whether kiln may download them.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// The cache's `hub` folder (holding `models--org--name/`).
    pub cache_dir: PathBuf,
    /// Read the cache only (`HF_HUB_OFFLINE=1`).
    pub offline: bool,
    /// `HF_ENDPOINT`, default `https://huggingface.co`.
    pub endpoint: String,
    /// `HF_TOKEN`, else the token file `huggingface-cli login` writes.
    pub token: Option<String>,
    /// Print each file fetched, with a progress bar (on stderr).
    pub progress: bool,
}

impl HubConfig {
    /// The settings `huggingface_hub` reads: `HF_HUB_CACHE` (or `HUGGINGFACE_HUB_CACHE`), else
    /// `$HF_HOME/hub`, `HF_HOME` defaulting to `$XDG_CACHE_HOME/huggingface` or
    /// `~/.cache/huggingface`; `HF_HUB_OFFLINE` (1/ON/YES/TRUE); `HF_ENDPOINT`; `HF_TOKEN`, else
    /// `HF_TOKEN_PATH`, else `$HF_HOME/token`.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let home = std::env::home_dir().unwrap_or_else(|| PathBuf::from("."));
        let expand = |v: String| match v.strip_prefix("~/") {
            Some(rest) => home.join(rest),
            None if v == "~" => home.clone(),
            None => PathBuf::from(v),
        };
        let hf_home = var("HF_HOME").map(&expand).unwrap_or_else(|| {
            var("XDG_CACHE_HOME").map(&expand).unwrap_or_else(|| home.join(".cache")).join("huggingface")
        });
        let cache_dir =
            var("HF_HUB_CACHE").or_else(|| var("HUGGINGFACE_HUB_CACHE")).map(&expand).unwrap_or_else(|| hf_home.join("hub"));
        let offline = var("HF_HUB_OFFLINE").is_some_and(|v| matches!(v.to_uppercase().as_str(), "1" | "ON" | "YES" | "TRUE"));
        let endpoint = var("HF_ENDPOINT").unwrap_or_else(|| "https://huggingface.co".into()).trim_end_matches('/').to_string();
        let token_path = var("HF_TOKEN_PATH").map(&expand).unwrap_or_else(|| hf_home.join("token"));
        let token = var("HF_TOKEN").or_else(|| {
            std::fs::read_to_string(token_path).ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty())
        });
        HubConfig { cache_dir, offline, endpoint, token, progress: true }
    }

    /// Offline settings for a given cache folder (tests, `kiln info`).
    pub fn offline(cache_dir: impl Into<PathBuf>) -> Self {
        HubConfig {
            cache_dir: cache_dir.into(),
            offline: true,
            endpoint: "https://huggingface.co".into(),
            token: None,
            progress: false,
        }
    }
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
        for name in index.kind.required_components() {
            let planned = layout.iter().find(|c| c.name == *name).expect("layout holds every required component");
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
    let vae = match &opts.vae {
        None => None,
        Some(spec) => Some(match ModelSource::parse(spec)? {
            ModelSource::Local(p) => vae_dir(&p)?,
            ModelSource::Hub(id) => {
                let snapshot = match hub.offline {
                    true => cached_snapshot(&hub.cache_dir, &id, true)?,
                    false => download(&id, hub, opts.prefer_fp16, Want::Vae)?,
                };
                vae_dir(&snapshot)?
            }
        }),
    };
    let (root, name) = match &source {
        ModelSource::Local(p) => (p.clone(), p.display().to_string()),
        ModelSource::Hub(id) => {
            let snapshot = match hub.offline {
                true => cached_snapshot(&hub.cache_dir, id, true)?,
                false => download(id, hub, opts.prefer_fp16, Want::Pipeline { skip_vae: vae.is_some() })?,
            };
            (snapshot, id.to_string())
        }
    };
    ModelFolder::open_with(&root, &name, opts.prefer_fp16, vae.as_deref())
}

/// The snapshot folder of `id` in the Hub cache `cache_dir`, without any network access:
/// `models--org--name/snapshots/<commit>`, the commit read from `refs/<revision>` (or given
/// directly as a 40-hex-digit revision).
pub fn cached_snapshot(cache_dir: &Path, id: &HubId, offline: bool) -> Result<PathBuf, ModelError> {
    let not_in_cache = |detail: String| ModelError::NotInCache { id: id.clone(), cache: cache_dir.into(), detail, offline };
    let repo_dir = cache_dir.join(id.cache_folder());
    if !repo_dir.is_dir() {
        return Err(not_in_cache(format!("no {} folder", id.cache_folder())));
    }
    let rev = id.revision();
    let commit = if is_commit_hash(rev) && repo_dir.join("snapshots").join(rev).is_dir() {
        rev.to_string()
    } else {
        let ref_path = repo_dir.join("refs").join(rev);
        match std::fs::read_to_string(&ref_path) {
            Ok(c) => c.trim().to_string(),
            Err(_) => return Err(not_in_cache(format!("revision `{rev}` was never fetched (no {})", ref_path.display()))),
        }
    };
    let snapshot = repo_dir.join("snapshots").join(&commit);
    if (!is_commit_hash(&commit) && commit.contains(['/', '\\'])) || !snapshot.is_dir() {
        return Err(not_in_cache(format!("revision `{rev}` points at commit {commit}, whose snapshot folder is missing")));
    }
    Ok(snapshot)
}

fn is_commit_hash(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
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

// ---- model_index.json and the layout check, shared by local folders and Hub listings ----------

/// Files of a model, local or as listed by the Hub; paths are relative, `/`-separated.
trait FileSet {
    fn has_file(&self, rel: &str) -> bool;
    fn has_dir(&self, rel: &str) -> bool;
    /// How errors name `rel` (a full path, or `org/name@rev: rel`).
    fn show(&self, rel: &str) -> String;
    /// The text of a small JSON file (only needed for the `--vae` class check).
    fn read(&self, rel: &str) -> Option<String>;
}

struct LocalFiles(PathBuf);

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
        std::fs::read_to_string(self.0.join(rel)).ok()
    }
}

struct HubListing {
    label: String,
    files: BTreeSet<String>,
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
}

struct ModelIndex {
    path: String,
    class_name: String,
    kind: PipelineKind,
    force_zeros_for_empty_prompt: bool,
    /// `(name, library, class)` of every non-null component entry.
    entries: Vec<(String, String, String)>,
}

impl ModelIndex {
    fn read(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io { path: path.into(), source })?;
        let value: Value = serde_json::from_str(&text).map_err(|source| ModelError::Json { path: path.into(), source })?;
        Self::parse(&value, &path.display().to_string())
    }

    fn parse(value: &Value, path: &str) -> Result<Self, ModelError> {
        let bad = |message: String| ModelError::BadIndex { path: path.to_string(), message };
        let map: &Map<String, Value> = value.as_object().ok_or_else(|| bad("not a JSON object".into()))?;
        let class_name = match map.get("_class_name") {
            Some(Value::String(s)) => s.clone(),
            Some(v) => return Err(bad(format!("`_class_name` must be a string, not {v}"))),
            None => return Err(bad("no `_class_name` (the pipeline class)".into())),
        };
        let kind = PipelineKind::from_class_name(&class_name)
            .ok_or_else(|| ModelError::UnsupportedPipeline { path: path.to_string(), class: class_name.clone() })?;
        let force_zeros_for_empty_prompt = match (kind, map.get("force_zeros_for_empty_prompt")) {
            (PipelineKind::StableDiffusionXL, None) => true, // StableDiffusionXLPipeline.__init__ default
            (PipelineKind::StableDiffusionXL, Some(Value::Bool(b))) => *b,
            (PipelineKind::StableDiffusionXL, Some(v)) => {
                return Err(bad(format!("`force_zeros_for_empty_prompt` must be true or false, not {v}")));
            }
            _ => false,
        };
        // The SDXL refiner's conditioning (aesthetic scores in the time ids) is not implemented.
        if let Some(Value::Bool(true)) = map.get("requires_aesthetics_score") {
            return Err(bad("`requires_aesthetics_score: true` (SDXL refiner conditioning) is not supported".into()));
        }
        let mut entries = Vec::new();
        for (key, v) in map {
            if key.starts_with('_') {
                continue;
            }
            match v.as_array().map(Vec::as_slice) {
                Some([Value::String(lib), Value::String(class)]) => entries.push((key.clone(), lib.clone(), class.clone())),
                Some([Value::Null, Value::Null]) => {}
                _ if PipelineKind::required_components(kind).contains(&key.as_str()) => {
                    return Err(bad(format!("`{key}` must be [library, class] or [null, null], not {v}")));
                }
                _ => log::debug!("{path}: ignoring `{key}`"),
            }
        }
        for (name, _, class) in &entries {
            if !kind.required_components().contains(&name.as_str()) {
                log::debug!("{path}: ignoring component `{name}` ({class}), which kiln does not use");
            }
        }
        Ok(ModelIndex { path: path.to_string(), class_name, kind, force_zeros_for_empty_prompt, entries })
    }

    /// Checks every required component in `files`; `skip_vae` when `--vae` replaces it.
    fn layout(&self, files: &dyn FileSet, prefer_fp16: bool, skip_vae: bool) -> Result<Vec<Planned>, ModelError> {
        let mut out = Vec::new();
        for &name in self.kind.required_components() {
            if name == "vae" && skip_vae {
                continue;
            }
            let Some((_, library, class)) = self.entries.iter().find(|(n, _, _)| n == name) else {
                return Err(ModelError::ComponentNotListed {
                    model: self.path.clone(),
                    class: self.class_name.clone(),
                    component: name.to_string(),
                });
            };
            if !files.has_dir(name) {
                return Err(ModelError::MissingComponentDir { path: files.show(name), component: name.to_string() });
            }
            let role = role_of(name);
            let planned = match role {
                Role::Scheduler => {
                    let config = format!("{name}/scheduler_config.json");
                    require(files, &config, name, "scheduler config")?;
                    Planned::new(name, library, class, PlannedFiles::Scheduler { config })
                }
                Role::Tokenizer => tokenizer_layout(files, name, library, class)?,
                Role::Model => {
                    let config = format!("{name}/config.json");
                    require(files, &config, name, "config")?;
                    let stem = if library == "transformers" { "model" } else { "diffusion_pytorch_model" };
                    let (weights, variant) = pick_weights(files, name, stem, prefer_fp16)?;
                    Planned::new(name, library, class, PlannedFiles::Model { config, weights, variant })
                }
            };
            out.push(planned);
        }
        Ok(out)
    }
}

#[derive(Clone, Copy)]
enum Role {
    Scheduler,
    Tokenizer,
    Model,
}

fn role_of(name: &str) -> Role {
    if name == "scheduler" {
        Role::Scheduler
    } else if name.starts_with("tokenizer") {
        Role::Tokenizer
    } else {
        Role::Model
    }
}

fn require(files: &dyn FileSet, rel: &str, component: &str, what: &'static str) -> Result<(), ModelError> {
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
/// variant if it is all there is.
fn pick_weights(files: &dyn FileSet, dir: &str, stem: &str, prefer_fp16: bool) -> Result<(String, Option<String>), ModelError> {
    let plain = join(dir, &format!("{stem}.safetensors"));
    let fp16 = join(dir, &format!("{stem}.fp16.safetensors"));
    let component = if dir.is_empty() { "vae".to_string() } else { dir.to_string() };
    if prefer_fp16 && files.has_file(&fp16) {
        return Ok((fp16, Some("fp16".into())));
    }
    if files.has_file(&plain) {
        if prefer_fp16 {
            log::info!("{}: no fp16 variant, using {plain}", files.show(dir));
        }
        return Ok((plain, None));
    }
    if files.has_file(&fp16) {
        log::info!("{}: only the fp16 weights variant is present, using it", files.show(dir));
        return Ok((fp16, Some("fp16".into())));
    }
    let sharded = [format!("{plain}.index.json"), format!("{fp16}.index.json")];
    if sharded.iter().any(|f| files.has_file(f)) {
        return Err(ModelError::ShardedWeights { path: files.show(dir), component });
    }
    // transformers names its pickles pytorch_model.bin, diffusers diffusion_pytorch_model.bin
    let pickle_stem = if stem == "model" { "pytorch_model" } else { stem };
    let pickles = [join(dir, &format!("{pickle_stem}.bin")), join(dir, &format!("{pickle_stem}.fp16.bin"))];
    if pickles.iter().any(|f| files.has_file(f)) {
        return Err(ModelError::PickleWeights { path: files.show(dir), component });
    }
    Err(ModelError::MissingWeights { path: files.show(dir), component, expected: format!("{stem}.safetensors or {stem}.fp16.safetensors") })
}

fn tokenizer_layout(files: &dyn FileSet, name: &str, library: &str, class: &str) -> Result<Planned, ModelError> {
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
fn vae_layout(files: &dyn FileSet, dir: &str, prefer_fp16: bool) -> Result<Planned, ModelError> {
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
    let mut planned = Planned::new("vae", "diffusers", &class, PlannedFiles::Model { config, weights, variant });
    planned.base = dir.to_string();
    Ok(planned)
}

/// A checked component with relative paths, before it is anchored to a folder.
struct Planned {
    name: String,
    library: String,
    class: String,
    /// The component folder relative to the root (the name, or `--vae`'s own root).
    base: String,
    files: PlannedFiles,
}

enum PlannedFiles {
    Model { config: String, weights: String, variant: Option<String> },
    Tokenizer { tokenizer_json: Option<String>, vocab: Option<String>, merges: Option<String>, config: Option<String>, extra: Option<String> },
    Scheduler { config: String },
}

impl Planned {
    fn new(name: &str, library: &str, class: &str, files: PlannedFiles) -> Self {
        Planned { name: name.into(), library: library.into(), class: class.into(), base: name.into(), files }
    }

    /// Every file, relative (what to download).
    fn all_files(&self) -> Vec<String> {
        match &self.files {
            PlannedFiles::Model { config, weights, .. } => vec![config.clone(), weights.clone()],
            PlannedFiles::Scheduler { config } => vec![config.clone()],
            PlannedFiles::Tokenizer { tokenizer_json, vocab, merges, config, extra } => {
                [tokenizer_json, vocab, merges, config, extra].into_iter().flatten().cloned().collect()
            }
        }
    }

    fn to_component(&self, root: &Path) -> Component {
        let at = |rel: &String| root.join(rel);
        let files = match &self.files {
            PlannedFiles::Model { config, weights, variant } => ComponentFiles::Model {
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

// ---- downloads ---------------------------------------------------------------------------------

enum Want {
    /// A whole pipeline (model_index.json and each component); `skip_vae` when `--vae` replaces it.
    Pipeline { skip_vae: bool },
    /// A VAE repo (`config.json` + weights at the root, or under `vae/`).
    Vae,
}

/// Fetches what `want` needs of `id` into the cache (files already in the snapshot are kept) and
/// returns the snapshot folder. If the Hub cannot be reached, falls back to the cached snapshot.
fn download(id: &HubId, hub: &HubConfig, prefer_fp16: bool, want: Want) -> Result<PathBuf, ModelError> {
    use hf_hub::api::sync::ApiBuilder;
    use hf_hub::{Cache, Repo, RepoType};

    let hub_err = |message: String| ModelError::Hub { id: id.clone(), message };
    let cache = Cache::new(hub.cache_dir.clone());
    let api = ApiBuilder::from_cache(cache.clone())
        .with_endpoint(hub.endpoint.clone())
        .with_token(hub.token.clone())
        .with_progress(hub.progress)
        .build()
        .map_err(|e| hub_err(e.to_string()))?;
    let rev = id.revision().to_string();
    let info = match api.repo(Repo::with_revision(id.repo.clone(), RepoType::Model, rev.clone())).info() {
        Ok(info) => info,
        Err(e) => {
            return match cached_snapshot(&hub.cache_dir, id, false) {
                Ok(snapshot) => {
                    log::warn!("cannot reach the Hub for {id} ({e}); using the cached snapshot {}", snapshot.display());
                    Ok(snapshot)
                }
                Err(_) => Err(hub_err(format!("cannot list the repo at {} ({e}), and it is not in the cache {}", hub.endpoint, hub.cache_dir.display()))),
            };
        }
    };
    let listing = HubListing { label: format!("{id} (commit {})", short(&info.sha)), files: info.siblings.iter().map(|s| s.rfilename.clone()).collect() };
    let snapshot = cache.repo(Repo::with_revision(id.repo.clone(), RepoType::Model, rev.clone())).pointer_path(&info.sha);
    // Downloads are pinned to the listed commit, so every file comes from the same snapshot.
    let pinned = api.repo(Repo::with_revision(id.repo.clone(), RepoType::Model, info.sha.clone()));
    let fetch = |rel: &str| -> Result<(), ModelError> {
        if snapshot.join(rel).is_file() {
            return Ok(());
        }
        if hub.progress {
            eprintln!("fetching {id}: {rel}");
        }
        pinned.download(rel).map(|_| ()).map_err(|e| hub_err(format!("downloading {rel}: {e}")))
    };
    let files = match want {
        Want::Pipeline { skip_vae } => {
            if !listing.has_file("model_index.json") {
                return Err(hub_err("the repo has no model_index.json: it is not a diffusers pipeline".into()));
            }
            fetch("model_index.json")?;
            let index = ModelIndex::read(&snapshot.join("model_index.json"))?;
            let layout = index.layout(&listing, prefer_fp16, skip_vae)?;
            layout.iter().flat_map(Planned::all_files).collect::<Vec<_>>()
        }
        Want::Vae => {
            let dir = if listing.has_file("config.json") { "" } else { "vae" };
            vae_layout(&listing, dir, prefer_fp16)?.all_files()
        }
    };
    for rel in &files {
        fetch(rel)?;
    }
    // Point refs/<revision> at the commit, as huggingface_hub does, so offline runs find it.
    if !is_commit_hash(&rev) {
        cache
            .repo(Repo::with_revision(id.repo.clone(), RepoType::Model, rev))
            .create_ref(&info.sha)
            .map_err(|e| hub_err(format!("cannot write the cache ref: {e}")))?;
    }
    Ok(snapshot)
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let err = sd_index().layout(&without("text_encoder/model."), false, false).err().unwrap();
        assert!(err.to_string().contains("only PyTorch pickle weights"), "{err}");
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
        let e = parse(r#"{"_class_name": "FluxPipeline"}"#);
        assert!(e.starts_with("m/model_index.json: pipeline class `FluxPipeline` is not supported; kiln runs StableDiffusionPipeline, "), "{e}");
        assert!(e.contains("StableDiffusionXLPipeline"), "{e}");
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
