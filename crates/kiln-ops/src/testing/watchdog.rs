//! The watchdog lane tests run under: the test's body in a child process (the test binary re-run
//! on that one test), with a deadline.
//!
//! A GPU driver that never signals a fence, or a runtime that parks every thread, makes a test
//! wait forever; inside the test process nothing can interrupt it. A child process can be watched:
//! past the deadline the watchdog attaches gdb to it, takes every thread's backtrace, kills it and
//! fails the test with the backtraces and what the child printed. The children run one at a time
//! per test binary, so one device is never driven by two tests at once. In the child, a panic on
//! a thread other than the test's (a runtime's thread dying, which leaves the test waiting)
//! aborts it at once.
//!
//! Environment: `KILN_LANE_DEADLINE_S` (default [`DEFAULT_DEADLINE_S`]) sets the deadline.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use burn::tensor::Device;

/// Set in the child: run the test's body here.
const CHILD: &str = "KILN_TEST_CHILD";

/// The deadline of one lane test, in seconds: the slowest lane test takes about a minute cold on 2
/// loaded cores (llvmpipe compiling each kernel), so ten times that is a hang.
pub const DEFAULT_DEADLINE_S: u64 = 600;

/// Runs `body` on the wgpu lane ([`super::wgpu_lane_device`]) in a child process under the
/// deadline ([`run_in_child`]); in the child, skips (saying why) where there is no lane.
/// `module` is the test's `module_path!()`, `name` its function name.
pub fn run_on_lane(module: &str, name: &str, body: impl FnOnce(Device)) {
    run_in_child(module, name, || {
        if let Some(lane) = super::wgpu_lane_device() {
            body(lane)
        }
    })
}

/// Runs `body` in a child process — this test binary, re-run on the test `module::name` alone with
/// `KILN_TEST_CHILD` set — one such child at a time per process; fails the test when the child fails,
/// dies of a signal, or outlives the deadline (with every thread's backtrace, taken by gdb where
/// the machine has it). In the child, simply runs `body`.
pub fn run_in_child(module: &str, name: &str, body: impl FnOnce()) {
    if std::env::var_os(CHILD).is_some() {
        abort_on_other_threads_panics();
        return body();
    }
    // libtest names a test by its module path without the crate's name
    let test = match module.split_once("::") {
        Some((_, inner)) => format!("{inner}::{name}"),
        None => name.to_string(),
    };
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let deadline = std::env::var("KILN_LANE_DEADLINE_S").ok().and_then(|s| s.parse().ok()).unwrap_or(DEFAULT_DEADLINE_S);
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut command = Command::new(exe);
    command
        .args([test.as_str(), "--exact", "--nocapture", "--include-ignored", "--test-threads=1"])
        .env(CHILD, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // its own process group, so that processes the test starts in turn die with it
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut child = command.spawn().expect("re-running the test binary");
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the test's child") {
            break Some(status);
        }
        if start.elapsed() >= Duration::from_secs(deadline) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let Some(status) = status else {
        let backtraces = backtraces(&child);
        kill_group(&mut child);
        let (out, err) = (out.join().unwrap_or_default(), err.join().unwrap_or_default());
        panic!(
            "{test}: still running after {deadline} s (KILN_LANE_DEADLINE_S): killed.\n\
             --- the child's threads ---\n{backtraces}\n--- its stdout ---\n{out}\n--- its stderr ---\n{err}"
        );
    };
    let (out, err) = (out.join().unwrap_or_default(), err.join().unwrap_or_default());
    // what the child printed, for `--nocapture` (captured with the test's output otherwise)
    eprint!("{err}");
    if !status.success() {
        panic!("{test}: the child failed ({status}{}).\n--- its stdout ---\n{out}\n--- its stderr ---\n{err}", signal(&status));
    }
    // libtest prints "running 0 tests" when the filter matched nothing: a wrong name must fail
    assert!(out.contains("1 passed"), "{test}: the child ran no test (is `{test}` the test's path?):\n{out}");
}

/// In the child: a panic on any thread but the test's ends the process at once (after the usual
/// message). A runtime thread that dies leaves the test waiting for it forever: wgpu-hal's GL
/// backend panics when it waits more than 6 s for its context lock
/// (`wgpu-hal-30.0.2/src/gles/egl.rs`, `CONTEXT_LOCK_TIMEOUT_SECS`), which llvmpipe running a
/// kernel on loaded cores can hold that long; when the thread is cubecl-wgpu's poll thread,
/// nothing wakes the device's server again (docs/testing.md#the-wgpu-lane-hang). Aborting turns
/// that into a failure now instead of one at the deadline.
fn abort_on_other_threads_panics() {
    let test_thread = std::thread::current().id();
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        if std::thread::current().id() != test_thread {
            eprintln!("kiln watchdog: a thread other than the test's panicked; nothing would wake the test: aborting");
            std::process::abort();
        }
    }));
}

/// Kills `child` and every process in its group (the processes it started).
fn kill_group(child: &mut Child) {
    #[cfg(unix)]
    let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", child.id())]).status();
    let _ = child.kill();
    let _ = child.wait();
}

/// Reads `pipe` to the end on its own thread (a child that fills a pipe nobody reads would block).
fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut text);
        }
        String::from_utf8_lossy(&text).into_owned()
    })
}

/// `, killed by signal N` where the child died of one.
fn signal(status: &std::process::ExitStatus) -> String {
    #[cfg(unix)]
    if let Some(signal) = std::os::unix::process::ExitStatusExt::signal(status) {
        return format!(", killed by signal {signal}");
    }
    let _ = status;
    String::new()
}

/// Every thread's backtrace in `child`, by gdb (`thread apply all bt`); where gdb is missing or
/// cannot attach, each thread's name and kernel wait channel from `/proc`.
fn backtraces(child: &Child) -> String {
    let pid = child.id().to_string();
    let gdb = Command::new("gdb")
        .args(["-p", pid.as_str(), "-batch", "-nx", "-ex", "set pagination off", "-ex", "thread apply all bt"])
        .stdin(Stdio::null())
        .output();
    if let Ok(o) = &gdb {
        let text = String::from_utf8_lossy(&o.stdout);
        if text.contains("Thread ") {
            return text.into_owned();
        }
    }
    let mut lines = vec![format!("(no gdb backtrace: {})", gdb.map_or_else(|e| e.to_string(), |o| String::from_utf8_lossy(&o.stderr).into_owned()))];
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let read = |f: &str| std::fs::read_to_string(task.path().join(f)).unwrap_or_default().trim().to_string();
            lines.push(format!("thread {:?} {:?}: waiting in {:?}", task.file_name(), read("comm"), read("wchan")));
        }
    }
    lines.join("\n")
}
