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
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use burn::tensor::{DType, Device, Tensor};

use super::store::{find_stored, store, store_path, to_static, StoredChoice};

/// The ops kiln can run either by burn's kernels or by its own restructuring on GPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GpuOp {
    /// Attention with a head dim that is not a multiple of 16 ([`crate::attention::gpu_route`]):
    /// the alternative zero-pads it.
    Attention,
    /// Stride-1 convolutions ([`super::conv`]): the alternative is an im2col product.
    Conv2d,
    /// GroupNorm (+ SiLU) ([`super::norm`]): the alternative is a fused formulation.
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

    /// The name of kiln's alternative route (the third value [`RoutePolicy::parse`] takes).
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
    /// `auto`, `burn` or the op's alternative, else a message naming the allowed values and
    /// the one given (the caller says which setting it was).
    pub fn parse(op: GpuOp, value: &str) -> Result<Self, String> {
        match value {
            "auto" => Ok(RoutePolicy::Auto),
            "burn" => Ok(RoutePolicy::Burn),
            v if v == op.alternative() => Ok(RoutePolicy::Alternative),
            other => Err(format!("must be auto, burn or {}, got {other:?}", op.alternative())),
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

/// Sets `op`'s process-wide [`RoutePolicy`] (the application's setting; `Auto` until set).
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Each op's policy reads `auto`, `burn` and its own alternative, writes them back the same,
    /// and refuses another op's alternative with a message naming the allowed values and the value.
    #[test]
    fn policies_parse_and_print_per_op() {
        for op in GpuOp::ALL {
            for value in ["auto", "burn", op.alternative()] {
                let p = RoutePolicy::parse(op, value).unwrap();
                assert_eq!(p.name(op), value);
            }
        }
        let err = RoutePolicy::parse(GpuOp::Attention, "im2col").unwrap_err();
        assert_eq!(err, "must be auto, burn or padded, got \"im2col\"");
        assert_eq!(policy(GpuOp::Conv2d), RoutePolicy::Auto, "the default");
    }

    /// `choose` checks every candidate's output against the first one's before timing counts: a
    /// wrong candidate (off by 1 %, or NaN) or one that panics is recorded as mismatched and never
    /// kept, however fast; an equivalent formulation (rounding apart) competes on time.
    #[test]
    fn candidates_that_disagree_with_the_reference_are_never_kept() {
        crate::gpu::store::set_store_path(None);
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
}
