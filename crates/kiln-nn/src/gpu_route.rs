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

use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use burn::tensor::{DType, Device, Tensor};

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
/// name; later calls with the same key return the recorded choice. When timing fails (the device
/// reports an error) the first candidate is returned and nothing is recorded.
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
    log::info!("{op} {dtype:?} {shape}: {times_s:?} -> {route}");
    if let Ok(mut made) = choices().lock() {
        if !made.iter().any(same) {
            made.push(RouteChoice { op, device: device_name, dtype, shape, times_s, route });
        }
    }
    route
}
