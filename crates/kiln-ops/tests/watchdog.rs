//! The watchdog every lane test runs under (`kiln_ops::testing::run_in_child`), on a failure the
//! wgpu lane met: a runtime thread panics (wgpu-hal's GL backend could not take its context lock
//! within 6 s, on cubecl-wgpu's poll thread), and the test, waiting for that thread, would wait
//! forever. The child must end at once, and the test fail saying why, not at the deadline.

use std::time::{Duration, Instant};

#[test]
fn a_panic_on_another_thread_fails_the_test_at_once() {
    let start = Instant::now();
    let failed = std::panic::catch_unwind(|| {
        kiln_ops::testing::run_in_child(module_path!(), "a_panic_on_another_thread_fails_the_test_at_once", || {
            std::thread::spawn(|| panic!("Could not lock adapter context. This is most-likely a deadlock."));
            // the test's thread waits for the dead one, as cubecl's device server did
            loop {
                std::thread::park();
            }
        })
    });
    let message = match failed {
        Ok(()) => panic!("the child finished although its test thread never returns"),
        Err(payload) => payload.downcast_ref::<String>().cloned().unwrap_or_default(),
    };
    assert!(message.contains("killed by signal 6"), "{message}");
    assert!(message.contains("Could not lock adapter context") && message.contains("a thread other than the test's panicked"), "{message}");
    // the deadline is 600 s; the abort comes as soon as the child has started
    assert!(start.elapsed() < Duration::from_secs(120), "took {:?}", start.elapsed());
}

#[test]
fn a_failing_test_fails_with_what_its_child_printed() {
    let failed = std::panic::catch_unwind(|| {
        kiln_ops::testing::run_in_child(module_path!(), "a_failing_test_fails_with_what_its_child_printed", || {
            assert_eq!(1 + 1, 3, "the child's own assertion");
        })
    });
    let message = match failed {
        Ok(()) => panic!("the child's failed assertion passed"),
        Err(payload) => payload.downcast_ref::<String>().cloned().unwrap_or_default(),
    };
    assert!(message.contains("the child failed") && message.contains("the child's own assertion"), "{message}");
    assert!(!message.contains("signal"), "a panic on the test's own thread is an ordinary failure: {message}");
}
