//! Where a model call's time goes, by op, for `kiln bench --profile`.
//!
//! While profiling is on ([`set_enabled`]), each of kiln's op entry points — [`crate::conv2d_forward`],
//! [`crate::group_norm`] and [`crate::group_norm_silu`], [`crate::attention::multi_head_attention`]
//! — syncs the device before and after the op and adds the time between to the op's total.
//! Syncing per op drains the GPU's queue each time (and stops burn's fusion across the op's edges),
//! so a profiled call is slower than a plain one: the shares say where the time goes, the plain
//! timing says how long a step takes. Off by default: a branch on one atomic per op.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use burn::tensor::{Device, Tensor};

static ENABLED: AtomicBool = AtomicBool::new(false);
static TOTALS: Mutex<BTreeMap<&'static str, OpTime>> = Mutex::new(BTreeMap::new());

/// Calls of one op and their summed time while profiling was on.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct OpTime {
    pub calls: usize,
    pub secs: f64,
}

/// Turns profiling on or off for the whole process.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// The totals per op since the last call (`conv2d`, `group_norm`, `attention`), and clears them.
pub fn take() -> BTreeMap<&'static str, OpTime> {
    TOTALS.lock().map(|mut t| std::mem::take(&mut *t)).unwrap_or_default()
}

/// `x`'s device when profiling is on (what [`scope`] takes), else `None`.
pub(crate) fn device_of<const D: usize>(x: &Tensor<D>) -> Option<Device> {
    ENABLED.load(Ordering::Relaxed).then(|| x.device())
}

/// `f()`, timed between two syncs of `device` under `op` when `device` is given
/// ([`device_of`]: profiling is on).
pub(crate) fn scope<T>(op: &'static str, device: Option<Device>, f: impl FnOnce() -> T) -> T {
    let Some(device) = device else { return f() };
    let _ = device.sync();
    let start = Instant::now();
    let out = f();
    let _ = device.sync();
    let secs = start.elapsed().as_secs_f64();
    if let Ok(mut totals) = TOTALS.lock() {
        let t = totals.entry(op).or_default();
        t.calls += 1;
        t.secs += secs;
    }
    out
}
