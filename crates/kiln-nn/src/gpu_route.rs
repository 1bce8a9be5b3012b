//! Measured choices between equivalent ways of running one op on a GPU.
//!
//! Some ops have more than one correct formulation on burn's CubeCL backends (attention with the
//! head dim as it is or zero-padded for the tensor-core flash kernel; a convolution by burn's conv
//! kernels or as an im2col matrix product), and which is faster depends on the GPU, the driver, the
//! dtype and the shape. kiln does what burn's autotune does for its own kernels: at the first use
//! of an op at one shape on one device, [`choose`] runs every candidate once untimed (kernel
//! compilation, burn's autotune), checks its output against the first candidate's (burn's op, the
//! reference: a candidate that disagrees beyond [`tolerance`] is never kept), times
//! [`TIMED_CALLS`] calls of each between two `device.sync()`s, and keeps the fastest for the rest
//! of the process. Every measurement is recorded ([`route_choices`]); `kiln bench` reports them.

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

/// Whether `op` takes kiln's alternative here: [`pick`] between burn's op and the alternative.
pub fn use_alternative<const D: usize>(
    op: GpuOp,
    device: &Device,
    dtype: DType,
    shape: impl FnOnce() -> String,
    burn: &dyn Fn() -> Tensor<D>,
    alternative: &dyn Fn() -> Tensor<D>,
) -> bool {
    pick(op, device, dtype, shape, &[("burn", burn), (op.alternative(), alternative)]) == op.alternative()
}

/// The route `op` takes here among `candidates`, named as [`choose`] takes them: the first is
/// burn's op (`"burn"`); one named [`GpuOp::alternative`] is what [`RoutePolicy::Alternative`]
/// forces (burn's op where none is offered); any others are only measured under `Auto`. burn's op
/// on flex and under autodiff (the routes are for GPUs, and kiln-train's gradients go through
/// burn's ops); on GPUs as the op's [`RoutePolicy`] says, under `Auto` as [`choose`] measured.
pub fn pick<const D: usize>(
    op: GpuOp,
    device: &Device,
    dtype: DType,
    shape: impl FnOnce() -> String,
    candidates: &[(&'static str, &dyn Fn() -> Tensor<D>)],
) -> &'static str {
    let burn = candidates[0].0;
    if *device == Device::flex() || device.is_autodiff() || candidates.len() == 1 {
        return burn;
    }
    match policy(op) {
        RoutePolicy::Burn => burn,
        RoutePolicy::Alternative => candidates.iter().find(|c| c.0 == op.alternative()).map_or(burn, |c| c.0),
        RoutePolicy::Auto => choose(op.name(), device, dtype, shape(), candidates),
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
    /// `(route name, seconds per call)` for every candidate that ran, in the order given.
    pub times_s: Vec<(&'static str, f64)>,
    /// `(route name, relative error)` for every candidate whose output disagreed with the first
    /// candidate's beyond [`tolerance`] (see [`relative_error`]): timed, never kept. A candidate
    /// that panicked is here too, with an infinite error and no time in `times_s`.
    pub mismatched: Vec<(&'static str, f64)>,
    /// The fastest route among those that agree with the first candidate.
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
    time_calls_keeping_first(device, call).map(|(secs, _)| secs)
}

/// [`time_calls`], also returning the untimed call's output.
fn time_calls_keeping_first<const D: usize>(device: &Device, call: &dyn Fn() -> Tensor<D>) -> Result<(f64, Tensor<D>), String> {
    let sync = || device.sync().map_err(|e| format!("{e:?}"));
    let first = call();
    sync()?;
    let start = Instant::now();
    let outs: Vec<Tensor<D>> = (0..TIMED_CALLS).map(|_| call()).collect();
    sync()?;
    let secs = start.elapsed().as_secs_f64() / TIMED_CALLS as f64;
    drop(outs);
    Ok((secs, first))
}

/// The largest relative error [`choose`] accepts from a candidate against the first one: 1e-3 in
/// f32, 5e-2 in f16, 1e-1 in bf16. kiln's alternatives differ from burn's ops only by rounding
/// (≤ 4e-3 in f16 in the tests; a GPU kernel that accumulates a 2880-term 3×3 convolution in f16
/// may drift ~√2880 roundings of 4.9e-4, about 2.6e-2 of a partial sum, and bf16 rounds 8×
/// coarser); a wrong kernel is off by the order of the values themselves.
pub fn tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::F16 => 5e-2,
        DType::BF16 => 1e-1,
        _ => 1e-3,
    }
}

/// `max |candidate − reference| ÷ max |reference|`, over the elements where both are finite,
/// computed on the device in the operands' dtype (no f32 copies of large f16 outputs; three
/// scalars read back). Infinite where the candidate is not finite
/// but the reference is, where the shapes differ, or where reading back fails.
pub fn relative_error<const D: usize>(candidate: Tensor<D>, reference: Tensor<D>) -> f64 {
    if candidate.dims() != reference.dims() {
        return f64::INFINITY;
    }
    let (cand_ok, ref_ok) = (candidate.clone().is_finite(), reference.clone().is_finite());
    let broken = cand_ok.clone().bool_not().bool_and(ref_ok.clone()).any().try_into_scalar::<bool>();
    if broken.unwrap_or(true) {
        return f64::INFINITY;
    }
    let skip = cand_ok.bool_and(ref_ok.clone()).bool_not();
    let diff = (candidate - reference.clone()).abs().mask_fill(skip, 0.0).max().try_into_scalar::<f32>();
    let scale = reference.abs().mask_fill(ref_ok.bool_not(), 0.0).max().try_into_scalar::<f32>();
    match (diff, scale) {
        (Ok(diff), Ok(scale)) => diff as f64 / (scale as f64).max(f32::MIN_POSITIVE as f64),
        _ => f64::INFINITY,
    }
}

/// Times every candidate once per `(op, device, dtype, shape)` and returns the fastest one's
/// name among those whose output agrees with the first candidate's (the reference, burn's op)
/// within [`tolerance`]; later calls with the same key return the recorded choice, and so do later
/// processes on the same GPU, through the on-disk store ([`store_path`]). When timing fails (the
/// device reports an error) the first candidate is returned and nothing is recorded.
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
        mismatched: Vec::new(),
        route: String::new(),
    };
    let stored = store_at.as_deref().zip(adapter.as_deref()).and_then(|(path, a)| find_stored(path, &key(a)));
    let names: Vec<_> = candidates.iter().map(|c| c.0).collect();
    let (times_s, mismatched, route, cached) = match stored.and_then(|s| to_static(&s, &names)) {
        Some((times_s, mismatched, route)) => (times_s, mismatched, route, true),
        None => {
            let mut times_s = Vec::with_capacity(candidates.len());
            let mut mismatched = Vec::new();
            let mut reference = None;
            for (i, (name, call)) in candidates.iter().enumerate() {
                // an alternative that panics (a kernel configuration its library rejects) is
                // passed over; burn's own op panicking is burn's error and stays one
                let timed = match i {
                    0 => Some(time_calls_keeping_first(device, *call)),
                    _ => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| time_calls_keeping_first(device, *call))).ok(),
                };
                let output = match timed {
                    Some(Ok((secs, output))) => {
                        times_s.push((*name, secs));
                        output
                    }
                    None => {
                        log::warn!("{op} route {name} at {shape} panicked; not using it");
                        mismatched.push((*name, f64::INFINITY));
                        continue;
                    }
                    Some(Err(e)) => {
                        log::warn!("timing {op} route {name} at {shape} failed ({e}); using {}", candidates[0].0);
                        return candidates[0].0;
                    }
                };
                match &reference {
                    None => reference = Some(output),
                    Some(want) => {
                        let err = relative_error(output, want.clone());
                        if !(err <= tolerance(dtype)) {
                            log::warn!("{op} route {name} at {shape} disagrees with {} (relative error {err:.2e}); not using it", candidates[0].0);
                            mismatched.push((*name, err));
                        }
                    }
                }
            }
            let agreed = times_s.iter().filter(|t| !mismatched.iter().any(|m| m.0 == t.0));
            let route = agreed.min_by(|a, b| a.1.total_cmp(&b.1)).map_or(candidates[0].0, |t| t.0);
            if let (Some(path), Some(a)) = (&store_at, &adapter) {
                let times = times_s.iter().map(|(n, t)| (n.to_string(), *t)).collect();
                let errors = mismatched.iter().map(|(n, e)| (n.to_string(), e.is_finite().then_some(*e))).collect();
                store(path, StoredChoice { times_s: times, mismatched: errors, route: route.into(), ..key(a) });
            }
            (times_s, mismatched, route, false)
        }
    };
    log::info!("{op} {dtype:?} {shape}: {times_s:?} -> {route}{}", if cached { " (stored)" } else { "" });
    if let Ok(mut made) = choices().lock() {
        if !made.iter().any(same) {
            made.push(RouteChoice { op, device: device_name, dtype, shape, times_s, mismatched, route, cached });
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
    /// `None`: not finite (JSON has no infinity).
    #[serde(default)]
    mismatched: Vec<(String, Option<f64>)>,
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
/// does not offer or lacks one the caller offers (a store from a build with other routes: measure
/// again).
fn to_static(stored: &StoredChoice, candidates: &[&'static str]) -> Option<(Vec<(&'static str, f64)>, Vec<(&'static str, f64)>, &'static str)> {
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

    /// `choose` checks every candidate's output against the first one's before timing counts: a
    /// wrong candidate (off by 1 %, or NaN) or one that panics is recorded as mismatched and never
    /// kept, however fast; an equivalent formulation (rounding apart) competes on time.
    #[test]
    fn candidates_that_disagree_with_the_reference_are_never_kept() {
        set_store_path(None);
        let device = Device::flex();
        let x = Tensor::<2>::random([48, 48], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
        let reference = || x.clone().matmul(x.clone());
        let same = || x.clone().mul_scalar(3.0).matmul(x.clone()).div_scalar(3.0);
        let off = || x.clone().matmul(x.clone()).mul_scalar(1.01);
        let nan = || x.clone().slice([0..48, 0..1]).div_scalar(0.0).mul_scalar(0.0).add(x.clone().matmul(x.clone()));
        let panics = || -> Tensor<2> { panic!("a kernel configuration its library rejects") };
        let route = choose(
            "mismatch test",
            &device,
            DType::F32,
            "48x48".into(),
            &[("burn", &reference), ("same", &same), ("off", &off), ("panics", &panics), ("nan", &nan)],
        );
        let c = route_choices().into_iter().find(|c| c.op == "mismatch test").unwrap();
        let timed: Vec<_> = c.times_s.iter().map(|t| t.0).collect();
        assert_eq!(timed, ["burn", "same", "off", "nan"], "every candidate that ran is timed: {c:?}");
        let mismatched: Vec<_> = c.mismatched.iter().map(|m| m.0).collect();
        assert_eq!(mismatched, ["off", "panics", "nan"], "{c:?}");
        assert!((c.mismatched[0].1 - 0.01).abs() < 1e-3, "off by 1 %: {c:?}");
        assert_eq!((c.mismatched[1].1, c.mismatched[2].1), (f64::INFINITY, f64::INFINITY));
        let agreed = c.times_s.iter().filter(|t| t.0 == "burn" || t.0 == "same");
        assert_eq!(route, agreed.min_by(|a, b| a.1.total_cmp(&b.1)).unwrap().0, "{c:?}");
    }

    /// The relative error is measured against the reference's largest value, skips elements
    /// that are not finite in the reference, and is infinite for a non-finite candidate element
    /// or a different shape.
    #[test]
    fn relative_error_against_the_reference() {
        let device = Device::flex();
        let t = |v: [f32; 4]| Tensor::<1>::from_floats(v, &device);
        assert_eq!(relative_error(t([1.0, -4.0, 2.0, 0.0]), t([1.0, -4.0, 2.0, 0.0])), 0.0);
        assert!((relative_error(t([1.0, -4.0, 2.2, 0.0]), t([1.0, -4.0, 2.0, 0.0])) - 0.05).abs() < 1e-6);
        assert!((relative_error(t([9.0, -4.0, 2.2, 0.0]), t([f32::NAN, -4.0, 2.0, 0.0])) - 0.05).abs() < 1e-6);
        assert_eq!(relative_error(t([1.0, f32::INFINITY, 2.0, 0.0]), t([1.0, -4.0, 2.0, 0.0])), f64::INFINITY);
        assert_eq!(relative_error(t([1.0; 4]).slice([0..3]), t([1.0; 4]).slice([1..4])), 0.0);
        assert_eq!(relative_error(t([1.0; 4]).slice([0..3]), t([1.0; 4])), f64::INFINITY);
        let half = |v: [f32; 4]| t(v).cast(DType::F16);
        let err = relative_error(half([1.0, -4.0, 2.001, 0.5]), half([1.0, -4.0, 2.0, 0.5]));
        assert!(err <= tolerance(DType::F16) && err > 0.0, "f16 rounding is within tolerance: {err}");
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
