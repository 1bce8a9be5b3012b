//! The input being run, for the guards to write out when they end the process: the allocator's
//! (which cannot allocate, so this writes with raw system calls) and the hang watchdog's. The
//! loop sets it before each run and clears it after.

use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicUsize, Ordering};

static PTR: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
static LEN: AtomicUsize = AtomicUsize::new(0);
static DUMP_FD: AtomicI32 = AtomicI32::new(-1);

/// `input` is being run: [`dump`] writes it. The caller keeps it alive until [`clear`].
pub fn set(input: &[u8]) {
    LEN.store(input.len(), Ordering::SeqCst);
    PTR.store(input.as_ptr() as *mut u8, Ordering::SeqCst);
}

/// No input is being run.
pub fn clear() {
    PTR.store(std::ptr::null_mut(), Ordering::SeqCst);
}

/// The open file [`dump`] writes the input to (`-1`: none).
pub fn set_dump_file(fd: i32) {
    DUMP_FD.store(fd, Ordering::SeqCst);
}

/// Writes the current input to the dump file and `reason` to stderr, without allocating.
pub fn dump(reason: &str) {
    let fd = DUMP_FD.load(Ordering::SeqCst);
    let (ptr, len) = (PTR.load(Ordering::SeqCst), LEN.load(Ordering::SeqCst));
    // SAFETY: raw writes of a str and of the input buffer the loop keeps alive between `set` and
    // `clear`; no allocation, so callable from the allocator and the watchdog.
    unsafe {
        let msg = b"kiln-fuzz: ";
        libc::write(2, msg.as_ptr().cast(), msg.len());
        libc::write(2, reason.as_ptr().cast(), reason.len());
        libc::write(2, b"\n".as_ptr().cast(), 1);
        if fd >= 0 && !ptr.is_null() {
            libc::ftruncate(fd, 0);
            libc::lseek(fd, 0, libc::SEEK_SET);
            libc::write(fd, ptr.cast(), len);
            libc::fsync(fd);
        }
    }
}
