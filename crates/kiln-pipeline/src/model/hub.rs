//! Hub ids (`org/name[@revision]`), the Hub cache's settings and layout, and reading a snapshot
//! from the cache without the network (downloads: [`super::download`], the `hub` feature).

use std::fmt;
use std::path::{Path, PathBuf};

use super::ModelError;

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
            Some((r, rev)) if valid_revision(rev) => (r, Some(rev.to_string())),
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

/// Whether `rev` can name a Hub revision: a branch, tag or `refs/...` path in git's rules, or a
/// commit hash. It becomes a path under the cache (`refs/<rev>`), so it may not climb out: no
/// `..` or `.` components, no empty component, no leading `/`, only letters, digits and
/// `-_./`, at most 255 characters.
pub fn valid_revision(rev: &str) -> bool {
    !rev.is_empty()
        && rev.len() <= 255
        && rev.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
        && rev.split('/').all(|part| !part.is_empty() && part != "." && part != ".." && !part.ends_with(".lock"))
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
    if !valid_revision(rev) {
        return Err(not_in_cache(format!("`{rev}` is not a revision name (letters, digits and -_./, no `..`)")));
    }
    let commit = if is_commit_hash(rev) && repo_dir.join("snapshots").join(rev).is_dir() {
        rev.to_string()
    } else {
        let ref_path = repo_dir.join("refs").join(rev);
        match std::fs::read_to_string(&ref_path) {
            Ok(c) => c.trim().to_string(),
            Err(_) => return Err(not_in_cache(format!("revision `{rev}` was never fetched (no {})", ref_path.display()))),
        }
    };
    // the ref file holds a commit hash: anything else would be a path of the file's choosing
    if !is_commit_hash(&commit) {
        return Err(not_in_cache(format!("revision `{rev}`: its ref file holds {:?}, not a commit hash", commit.chars().take(80).collect::<String>())));
    }
    let snapshot = repo_dir.join("snapshots").join(&commit);
    if !snapshot.is_dir() {
        return Err(not_in_cache(format!("revision `{rev}` points at commit {commit}, whose snapshot folder is missing")));
    }
    Ok(snapshot)
}

pub(crate) fn is_commit_hash(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

