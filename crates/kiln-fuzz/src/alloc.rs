//! A global allocator that counts: live bytes, what one input holds above the loop's own (its
//! peak), and the largest single request. Past [`LIMIT`] (held by the input or asked for at
//! once) it refuses the allocation after writing out the input being run (the process then
//! aborts: an input that makes kiln allocate a GiB is a finding). The fuzzing binary and its
//! test install it with `#[global_allocator]`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The most memory one input may make kiln hold at once, or ask for in one allocation.
pub const LIMIT: usize = 1 << 30;

static LIVE: AtomicUsize = AtomicUsize::new(0);
/// Live bytes when the current input started (the loop's own: its pool, the seeds).
static BASE: AtomicUsize = AtomicUsize::new(0);
/// The most live bytes above `BASE` since [`start_input`].
static INPUT_PEAK: AtomicUsize = AtomicUsize::new(0);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

/// The counting allocator.
pub struct Counting;

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !admit(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, passed on to System.
        let p = unsafe { System.alloc(layout) };
        if p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !admit(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: as in `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() && !admit(new_size - layout.size()) {
            return std::ptr::null_mut();
        }
        if new_size <= layout.size() {
            LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        // SAFETY: as in `alloc`; `ptr` came from this allocator with `layout`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if p.is_null() && new_size > layout.size() {
            LIVE.fetch_sub(new_size - layout.size(), Ordering::Relaxed);
        }
        p
    }
}

/// Counts `size` more bytes; `false` (after writing out the input) past the limit.
fn admit(size: usize) -> bool {
    LARGEST.fetch_max(size, Ordering::Relaxed);
    let live = LIVE.fetch_add(size, Ordering::Relaxed) + size;
    let held = live.saturating_sub(BASE.load(Ordering::Relaxed));
    INPUT_PEAK.fetch_max(held, Ordering::Relaxed);
    if size > LIMIT || held > LIMIT {
        LIVE.fetch_sub(size, Ordering::Relaxed);
        crate::current::dump("allocation over 1 GiB");
        return false;
    }
    true
}

/// An input starts: what is live now is the loop's own, and the input's peak starts at 0.
pub fn start_input() {
    BASE.store(LIVE.load(Ordering::Relaxed), Ordering::Relaxed);
    INPUT_PEAK.store(0, Ordering::Relaxed);
}

/// The most bytes the current (or last) input held at once above the loop's own.
pub fn input_peak() -> usize {
    INPUT_PEAK.load(Ordering::Relaxed)
}

/// Bytes live now (the loop's and the input's).
pub fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// The largest single request since [`reset_largest`].
pub fn largest() -> usize {
    LARGEST.load(Ordering::Relaxed)
}

/// Starts the largest-request counter afresh.
pub fn reset_largest() {
    LARGEST.store(0, Ordering::Relaxed);
}
