//! Downloading a model's files from the Hub into the cache (the `hub` cargo feature, on by
//! default): exactly the files the pipeline will load, pinned to one commit.

use std::path::PathBuf;

use super::hub::{cached_snapshot, is_commit_hash, HubConfig, HubId};
use super::index::ModelIndex;
use super::layout::{vae_layout, FileSet, HubListing, Planned};
use super::{ModelError, Want};

/// Fetches what `want` needs of `id` into the cache (files already in the snapshot are kept) and
/// returns the snapshot folder. If the Hub cannot be reached, falls back to the cached snapshot.
pub(crate) fn download(id: &HubId, hub: &HubConfig, prefer_fp16: bool, want: Want) -> Result<PathBuf, ModelError> {
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
    if !super::hub::valid_revision(&rev) {
        return Err(hub_err(format!("`{rev}` is not a revision name (letters, digits and -_./, no `..`)")));
    }
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

