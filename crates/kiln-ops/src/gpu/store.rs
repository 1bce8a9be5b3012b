//! The on-disk store of measured route choices ([`super::route::choose`]): like burn's autotune
//! cache, a choice measured in one process is read back by the next one on the same GPU, so a
//! process's first use of each shape does not time every route again.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// One measured choice as the on-disk store keeps it: keyed by kiln's version, the GPU (its name
/// and cubecl's compilation fingerprint), the op, the dtype and the shape.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub(super) struct StoredChoice {
    pub(super) kiln: String,
    pub(super) adapter: String,
    pub(super) op: String,
    pub(super) dtype: String,
    pub(super) shape: String,
    pub(super) times_s: Vec<(String, f64)>,
    /// `None`: not finite (JSON has no infinity).
    #[serde(default)]
    pub(super) mismatched: Vec<(String, Option<f64>)>,
    pub(super) route: String,
}

impl StoredChoice {
    fn same_key(&self, other: &StoredChoice) -> bool {
        (&self.kiln, &self.adapter, &self.op, &self.dtype, &self.shape)
            == (&other.kiln, &other.adapter, &other.op, &other.dtype, &other.shape)
    }
}

static STORE_OVERRIDE: Mutex<Option<Option<PathBuf>>> = Mutex::new(None);

/// Overrides [`store_path`] for this process: `Some(file)` keeps choices there, `None` keeps them
/// in memory only (the test lane does this, so tests never write into the user's cache).
pub fn set_store_path(path: Option<PathBuf>) {
    if let Ok(mut o) = STORE_OVERRIDE.lock() {
        *o = Some(path);
    }
}

/// Whether [`set_store_path`] was called in this process.
pub fn store_path_overridden() -> bool {
    STORE_OVERRIDE.lock().map(|o| o.is_some()).unwrap_or(false)
}

/// The file measured choices are kept in between processes: what [`set_store_path`] set, else
/// `$KILN_CACHE_DIR/gpu-routes.json`, else `$XDG_CACHE_HOME/kiln/gpu-routes.json`, else
/// `$HOME/.cache/kiln/gpu-routes.json`; `None` (every process measures again) with
/// `KILN_CACHE_DIR=off` or no home. Delete the file to measure again, e.g. after a driver update
/// or a change to kiln's routes.
pub fn store_path() -> Option<PathBuf> {
    if let Some(path) = STORE_OVERRIDE.lock().ok().and_then(|o| o.clone()) {
        return path;
    }
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    let dir = match var("KILN_CACHE_DIR") {
        Some(dir) if dir.as_os_str() == "off" => return None,
        Some(dir) => dir,
        None => var("XDG_CACHE_HOME").or_else(|| var("HOME").map(|h| h.join(".cache")))?.join("kiln"),
    };
    Some(dir.join("gpu-routes.json"))
}

fn read_store(path: &Path) -> Vec<StoredChoice> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            log::warn!("{}: not a kiln route store ({e}); measuring again", path.display());
            Vec::new()
        }),
        Err(_) => Vec::new(),
    }
}

pub(super) fn find_stored(path: &Path, key: &StoredChoice) -> Option<StoredChoice> {
    read_store(path).into_iter().find(|s| s.same_key(key))
}

/// A stored choice in terms of this call's candidates; `None` when it names a route the caller
/// does not offer or lacks one the caller offers (a store from a build with other routes: measure
/// again).
pub(super) fn to_static(stored: &StoredChoice, candidates: &[&'static str]) -> Option<(Vec<(&'static str, f64)>, Vec<(&'static str, f64)>, &'static str)> {
    let name = |n: &str| candidates.iter().copied().find(|c| *c == n);
    let route = name(&stored.route)?;
    let times = stored.times_s.iter().map(|(n, t)| Some((name(n)?, *t))).collect::<Option<Vec<_>>>()?;
    let mismatched = stored.mismatched.iter().map(|(n, e)| Some((name(n)?, e.unwrap_or(f64::INFINITY)))).collect::<Option<Vec<_>>>()?;
    let seen = |c: &&str| times.iter().chain(&mismatched).any(|(n, _)| n == c);
    candidates.iter().all(|c| seen(&c)).then_some((times, mismatched, route))
}

/// Adds `choice` to the store (replacing one with the same key), written to a temporary file in
/// the same folder and renamed over the old one, so a reader never sees half a file. Failures are
/// logged: the store only saves time.
pub(super) fn store(path: &Path, choice: StoredChoice) {
    let write = || -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut all = read_store(&path);
        all.retain(|s| !s.same_key(&choice));
        all.push(choice.clone());
        let tmp = path.with_extension(format!("json.{}.tmp", std::process::id()));
        std::fs::write(&tmp, serde_json::to_vec_pretty(&all).map_err(std::io::Error::other)?)?;
        std::fs::rename(&tmp, path)
    };
    if let Err(e) = write() {
        log::warn!("could not keep the measured {} route in {}: {e}", choice.op, path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(adapter: &str, shape: &str, route: &str) -> StoredChoice {
        StoredChoice {
            kiln: env!("CARGO_PKG_VERSION").into(),
            adapter: adapter.into(),
            op: "conv2d".into(),
            dtype: "F16".into(),
            shape: shape.into(),
            times_s: vec![("burn".into(), 2e-3), ("im2col".into(), 1e-3)],
            mismatched: Vec::new(),
            route: route.into(),
        }
    }

    /// The store keeps one choice per key (a second write replaces the first), finds it by
    /// kiln's version, adapter, op, dtype and shape only, and a damaged file reads as empty.
    #[test]
    fn the_store_round_trips_by_key() {
        let dir = std::env::temp_dir().join(format!("kiln-route-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("nested/gpu-routes.json");
        store(&path, stored("GPU A [spirv_1_2]", "x [2, 320, 64, 64]", "burn"));
        store(&path, stored("GPU A [spirv_1_2]", "x [2, 320, 64, 64]", "im2col"));
        store(&path, StoredChoice { mismatched: vec![("im2col".into(), None)], ..stored("GPU B [spirv_3_4]", "x [2, 320, 64, 64]", "burn") });
        assert_eq!(read_store(&path).len(), 2, "a choice with a non-finite error keeps the file readable");
        let key = stored("GPU A [spirv_1_2]", "x [2, 320, 64, 64]", "");
        assert_eq!(find_stored(&path, &key).map(|s| s.route), Some("im2col".into()));
        assert_eq!(find_stored(&path, &stored("GPU A [spirv_1_2]", "x [1, 320, 64, 64]", "")), None);
        assert_eq!(find_stored(&path, &StoredChoice { kiln: "0.0.0".into(), ..key }), None);
        std::fs::write(&path, b"{ not json").unwrap();
        assert!(read_store(&path).is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A stored choice maps onto this call's candidates, and one naming a route the caller does
    /// not offer, or missing one it offers, is ignored (measured again).
    #[test]
    fn stored_routes_must_be_offered() {
        let s = stored("GPU", "x", "im2col");
        assert_eq!(to_static(&s, &["burn", "im2col"]), Some((vec![("burn", 2e-3), ("im2col", 1e-3)], vec![], "im2col")));
        assert_eq!(to_static(&s, &["burn", "winograd"]), None);
        assert_eq!(to_static(&s, &["burn", "im2col", "winograd"]), None, "a route added since: measure again");
        let failed = StoredChoice { mismatched: vec![("winograd".into(), None)], ..s.clone() };
        let (_, mismatched, _) = to_static(&failed, &["burn", "im2col", "winograd"]).expect("a route that failed was tried");
        assert_eq!(mismatched, [("winograd", f64::INFINITY)]);
    }
}
