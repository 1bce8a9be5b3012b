//! Measured choices between equivalent ways of running one op on a GPU.
//!
//! Some ops have more than one correct formulation on burn's CubeCL backends (attention with the
//! head dim as it is or zero-padded for the tensor-core flash kernel; a convolution by burn's conv
//! kernels or as an im2col matrix product), and which is faster depends on the GPU, the driver, the
//! dtype and the shape. kiln does what burn's autotune does for its own kernels: at the first use
//! of an op at one shape on one device, [`choose`] runs every candidate once untimed (kernel
//! compilation, burn's autotune), times [`TIMED_CALLS`] calls of each between two
//! `device.sync()`s, and keeps the fastest for the rest of the process. Every measurement is
//! recorded ([`route_choices`]); `kiln bench` reports them.

use std::sync::atomic::{AtomicU8, Ordering};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use burn::tensor::{DType, Device, Tensor};

/// The ops kiln can run either by burn's kernels or by its own restructuring on GPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GpuOp {
    /// Attention with a head dim that is not a multiple of 16 ([`crate::attention::gpu_route`]):
    /// the alternative zero-pads it.
    Attention,
    /// Stride-1 convolutions ([`crate::gpu_conv`]): the alternative is an im2col product.
    Conv2d,
    /// GroupNorm (+ SiLU) ([`crate::gpu_norm`]): the alternative is a fused formulation.
    GroupNorm,
}

impl GpuOp {
    pub const ALL: [GpuOp; 3] = [GpuOp::Attention, GpuOp::Conv2d, GpuOp::GroupNorm];

    /// The op's name in [`RouteChoice::op`] and reports.
    pub fn name(self) -> &'static str {
        match self {
            GpuOp::Attention => "attention",
            GpuOp::Conv2d => "conv2d",
            GpuOp::GroupNorm => "group_norm",
        }
    }

    /// The `kiln` flag that sets the op's [`RoutePolicy`].
    pub fn flag(self) -> &'static str {
        match self {
            GpuOp::Attention => "--gpu-attention",
            GpuOp::Conv2d => "--gpu-conv",
            GpuOp::GroupNorm => "--gpu-norm",
        }
    }

    /// The name of kiln's alternative route (the flag's third value).
    pub fn alternative(self) -> &'static str {
        match self {
            GpuOp::Attention => "padded",
            GpuOp::Conv2d => "im2col",
            GpuOp::GroupNorm => "fused",
        }
    }
}

/// Which route a [`GpuOp`] takes on GPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RoutePolicy {
    /// Time burn's route and kiln's alternative at each shape's first use and keep the faster.
    #[default]
    Auto,
    /// Always burn's op.
    Burn,
    /// Always kiln's alternative (where it applies).
    Alternative,
}

impl RoutePolicy {
    /// `auto`, `burn` or the op's alternative, else a message naming the flag and the value.
    pub fn parse(op: GpuOp, value: &str) -> Result<Self, String> {
        match value {
            "auto" => Ok(RoutePolicy::Auto),
            "burn" => Ok(RoutePolicy::Burn),
            v if v == op.alternative() => Ok(RoutePolicy::Alternative),
            other => Err(format!("{} must be auto, burn or {}, got {other:?}", op.flag(), op.alternative())),
        }
    }

    /// The policy as [`RoutePolicy::parse`] reads it.
    pub fn name(self, op: GpuOp) -> &'static str {
        match self {
            RoutePolicy::Auto => "auto",
            RoutePolicy::Burn => "burn",
            RoutePolicy::Alternative => op.alternative(),
        }
    }
}

static POLICIES: [AtomicU8; 3] = [AtomicU8::new(0), AtomicU8::new(0), AtomicU8::new(0)];

/// Sets `op`'s process-wide [`RoutePolicy`] (`kiln --gpu-attention`, `--gpu-conv`, `--gpu-norm`).
pub fn set_policy(op: GpuOp, policy: RoutePolicy) {
    POLICIES[op as usize].store(policy as u8, Ordering::Relaxed);
}

/// `op`'s process-wide [`RoutePolicy`].
pub fn policy(op: GpuOp) -> RoutePolicy {
    match POLICIES[op as usize].load(Ordering::Relaxed) {
        1 => RoutePolicy::Burn,
        2 => RoutePolicy::Alternative,
        _ => RoutePolicy::Auto,
    }
}

/// Whether `op` takes kiln's alternative here: never on flex or under autodiff (the alternatives
/// are for GPUs, and kiln-train's gradients go through burn's ops); on GPUs as its [`RoutePolicy`]
/// says, and under `Auto` as [`choose`] measured between `burn` and `alternative`.
pub fn use_alternative<const D: usize>(
    op: GpuOp,
    device: &Device,
    dtype: DType,
    shape: impl FnOnce() -> String,
    burn: &dyn Fn() -> Tensor<D>,
    alternative: &dyn Fn() -> Tensor<D>,
) -> bool {
    if *device == Device::flex() || device.is_autodiff() {
        return false;
    }
    match policy(op) {
        RoutePolicy::Burn => false,
        RoutePolicy::Alternative => true,
        RoutePolicy::Auto => {
            choose(op.name(), device, dtype, shape(), &[("burn", burn), (op.alternative(), alternative)]) == op.alternative()
        }
    }
}

/// Timed calls per candidate in [`choose`].
pub const TIMED_CALLS: usize = 5;

/// One measurement: every candidate of `op` timed at one shape, and the one kept.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteChoice {
    /// The op, e.g. `"attention"`, `"conv2d"`.
    pub op: &'static str,
    pub device: String,
    pub dtype: DType,
    /// The operands' shapes as the op describes them.
    pub shape: String,
    /// `(route name, seconds per call)` for every candidate, in the order given.
    pub times_s: Vec<(&'static str, f64)>,
    /// The fastest route's name.
    pub route: &'static str,
    /// Read from the on-disk store ([`store_path`]) instead of timed in this process.
    pub cached: bool,
}

fn choices() -> &'static Mutex<Vec<RouteChoice>> {
    static CHOICES: OnceLock<Mutex<Vec<RouteChoice>>> = OnceLock::new();
    CHOICES.get_or_init(Default::default)
}

/// Every choice made in this process, in order.
pub fn route_choices() -> Vec<RouteChoice> {
    choices().lock().map(|c| c.clone()).unwrap_or_default()
}

/// Seconds per call of `call` on `device`: one untimed call, then [`TIMED_CALLS`] calls between
/// two syncs (their outputs kept alive until the second sync, so none is skipped).
pub fn time_calls<const D: usize>(device: &Device, call: &dyn Fn() -> Tensor<D>) -> Result<f64, String> {
    let sync = || device.sync().map_err(|e| format!("{e:?}"));
    let first = call();
    sync()?;
    drop(first);
    let start = Instant::now();
    let outs: Vec<Tensor<D>> = (0..TIMED_CALLS).map(|_| call()).collect();
    sync()?;
    let secs = start.elapsed().as_secs_f64() / TIMED_CALLS as f64;
    drop(outs);
    Ok(secs)
}

/// Times every candidate once per `(op, device, dtype, shape)` and returns the fastest one's
/// name; later calls with the same key return the recorded choice, and so do later processes on
/// the same GPU, through the on-disk store ([`store_path`]). When timing fails (the device reports
/// an error) the first candidate is returned and nothing is recorded.
pub fn choose<const D: usize>(
    op: &'static str,
    device: &Device,
    dtype: DType,
    shape: String,
    candidates: &[(&'static str, &dyn Fn() -> Tensor<D>)],
) -> &'static str {
    let device_name = format!("{device:?}");
    let same = |c: &RouteChoice| c.op == op && c.device == device_name && c.dtype == dtype && c.shape == shape;
    // the lock is not held while timing: a candidate may itself choose a route
    if let Some(c) = choices().lock().ok().and_then(|made| made.iter().find(|c| same(c)).cloned()) {
        return c.route;
    }
    let store_at = store_path();
    let adapter = store_at.as_ref().and_then(|_| device.identity()).map(|id| format!("{} [{}]", id.name, id.fingerprint));
    let key = |adapter: &str| StoredChoice {
        kiln: env!("CARGO_PKG_VERSION").into(),
        adapter: adapter.into(),
        op: op.into(),
        dtype: format!("{dtype:?}"),
        shape: shape.clone(),
        times_s: Vec::new(),
        route: String::new(),
    };
    let stored = store_at.as_deref().zip(adapter.as_deref()).and_then(|(path, a)| find_stored(path, &key(a)));
    let (times_s, route, cached) = match stored.and_then(|s| to_static(&s, &candidates.iter().map(|c| c.0).collect::<Vec<_>>())) {
        Some((times_s, route)) => (times_s, route, true),
        None => {
            let mut times_s = Vec::with_capacity(candidates.len());
            for (name, call) in candidates {
                match time_calls(device, *call) {
                    Ok(s) => times_s.push((*name, s)),
                    Err(e) => {
                        log::warn!("timing {op} route {name} at {shape} failed ({e}); using {}", candidates[0].0);
                        return candidates[0].0;
                    }
                }
            }
            let route = times_s.iter().min_by(|a, b| a.1.total_cmp(&b.1)).map_or(candidates[0].0, |t| t.0);
            if let (Some(path), Some(a)) = (&store_at, &adapter) {
                let times = times_s.iter().map(|(n, t)| (n.to_string(), *t)).collect();
                store(path, StoredChoice { times_s: times, route: route.into(), ..key(a) });
            }
            (times_s, route, false)
        }
    };
    log::info!("{op} {dtype:?} {shape}: {times_s:?} -> {route}{}", if cached { " (stored)" } else { "" });
    if let Ok(mut made) = choices().lock() {
        if !made.iter().any(same) {
            made.push(RouteChoice { op, device: device_name, dtype, shape, times_s, route, cached });
        }
    }
    route
}

/// One measured choice as the on-disk store keeps it: keyed by kiln's version, the GPU (its name
/// and cubecl's compilation fingerprint), the op, the dtype and the shape.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct StoredChoice {
    kiln: String,
    adapter: String,
    op: String,
    dtype: String,
    shape: String,
    times_s: Vec<(String, f64)>,
    route: String,
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

fn find_stored(path: &Path, key: &StoredChoice) -> Option<StoredChoice> {
    read_store(path).into_iter().find(|s| s.same_key(key))
}

/// A stored choice in terms of this call's candidates; `None` when it names a route the caller
/// does not offer (a store from another build).
fn to_static(stored: &StoredChoice, candidates: &[&'static str]) -> Option<(Vec<(&'static str, f64)>, &'static str)> {
    let name = |n: &str| candidates.iter().copied().find(|c| *c == n);
    let route = name(&stored.route)?;
    let times = stored.times_s.iter().map(|(n, t)| Some((name(n)?, *t))).collect::<Option<Vec<_>>>()?;
    Some((times, route))
}

/// Adds `choice` to the store (replacing one with the same key), written to a temporary file in
/// the same folder and renamed over the old one, so a reader never sees half a file. Failures are
/// logged: the store only saves time.
fn store(path: &Path, choice: StoredChoice) {
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

    /// Each flag reads `auto`, `burn` and its own alternative, writes them back the same, and
    /// refuses another op's alternative with a message naming the flag and the value.
    #[test]
    fn policies_parse_and_print_per_op() {
        for op in GpuOp::ALL {
            for value in ["auto", "burn", op.alternative()] {
                let p = RoutePolicy::parse(op, value).unwrap();
                assert_eq!(p.name(op), value);
            }
        }
        let err = RoutePolicy::parse(GpuOp::Attention, "im2col").unwrap_err();
        assert_eq!(err, "--gpu-attention must be auto, burn or padded, got \"im2col\"");
        assert_eq!(policy(GpuOp::Conv2d), RoutePolicy::Auto, "the default");
    }

    fn stored(adapter: &str, shape: &str, route: &str) -> StoredChoice {
        StoredChoice {
            kiln: env!("CARGO_PKG_VERSION").into(),
            adapter: adapter.into(),
            op: "conv2d".into(),
            dtype: "F16".into(),
            shape: shape.into(),
            times_s: vec![("burn".into(), 2e-3), ("im2col".into(), 1e-3)],
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
        store(&path, stored("GPU B [spirv_3_4]", "x [2, 320, 64, 64]", "burn"));
        assert_eq!(read_store(&path).len(), 2);
        let key = stored("GPU A [spirv_1_2]", "x [2, 320, 64, 64]", "");
        assert_eq!(find_stored(&path, &key).map(|s| s.route), Some("im2col".into()));
        assert_eq!(find_stored(&path, &stored("GPU A [spirv_1_2]", "x [1, 320, 64, 64]", "")), None);
        assert_eq!(find_stored(&path, &StoredChoice { kiln: "0.0.0".into(), ..key }), None);
        std::fs::write(&path, b"{ not json").unwrap();
        assert!(read_store(&path).is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A stored choice maps onto this call's candidates, and one naming a route the caller does
    /// not offer is ignored (measured again).
    #[test]
    fn stored_routes_must_be_offered() {
        let s = stored("GPU", "x", "im2col");
        assert_eq!(to_static(&s, &["burn", "im2col"]), Some((vec![("burn", 2e-3), ("im2col", 1e-3)], "im2col")));
        assert_eq!(to_static(&s, &["burn", "winograd"]), None);
    }
}
