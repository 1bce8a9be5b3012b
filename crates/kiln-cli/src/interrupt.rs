//! Ctrl-C and SIGTERM: a run stops at its next denoising step, removes what it was writing and
//! exits with status 130; outside a run (loading, checking) the process exits at once. A second
//! signal exits at once too. SIGPIPE ends the process quietly, as Unix tools do (`kiln schedule
//! … | head`).

use std::sync::atomic::{AtomicBool, Ordering};

/// Exit status of an interrupted run (128 + SIGINT, what shells report).
pub const INTERRUPTED: u8 = 130;

static REQUESTED: AtomicBool = AtomicBool::new(false);
static GRACEFUL: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    // only async-signal-safe work here: atomics and _exit
    if REQUESTED.swap(true, Ordering::SeqCst) || !GRACEFUL.load(Ordering::SeqCst) {
        unsafe { libc::_exit(INTERRUPTED as libc::c_int) };
    }
}

/// Installs the handlers; call once at start.
pub fn install() {
    // SAFETY: `on_signal` only touches atomics and calls `_exit`, both async-signal-safe, and
    // SIG_DFL for SIGPIPE restores the default action.
    unsafe {
        let handler = on_signal as extern "C" fn(libc::c_int) as *const () as libc::sighandler_t;
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Whether a signal asked the run to stop.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// Runs `f` with signals deferred to [`requested`] (the caller checks it at its safe points and
/// cleans up) instead of ending the process.
pub fn graceful<R>(f: impl FnOnce() -> R) -> R {
    GRACEFUL.store(true, Ordering::SeqCst);
    let r = f();
    GRACEFUL.store(false, Ordering::SeqCst);
    r
}

/// Gives SIGINT and SIGTERM back to their default actions and ignores SIGPIPE, for a command that
/// handles them itself (`kiln serve` drains on them; a client gone mid-reply must not end it).
pub fn hand_over() {
    // SAFETY: restoring default dispositions and ignoring SIGPIPE install no handler code.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_DFL);
        libc::signal(libc::SIGTERM, libc::SIG_DFL);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}
