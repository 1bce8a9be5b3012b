//! The fuzzing loop: seeds from a corpus folder, mutated (bit flips, interesting numbers, cuts,
//! splices, JSON tokens), each run through a target under three guards — a panic is caught and
//! the input saved; an input still running after [`HANG_LIMIT`] is written out and the process
//! aborted by a watchdog thread; an allocation past [`crate::alloc::LIMIT`] is refused after
//! the input is written out (the process then aborts). Inputs a target accepts (parsed without
//! error) join the pool that later mutations start from, so mutation reaches past the first
//! check of each format.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::current;
use std::time::{Duration, Instant};

/// An input running longer than this is a hang.
pub const HANG_LIMIT: Duration = Duration::from_secs(10);

/// The largest input the loop makes (inputs are trimmed back to it).
pub const MAX_INPUT: usize = 1 << 20;

/// The pool of accepted inputs mutations start from: at most this many, and this many bytes
/// (past either, a new one replaces a random one), so the loop's own memory stays small.
pub const POOL_INPUTS: usize = 4096;
pub const POOL_BYTES: usize = 64 << 20;

/// What a target did with an input: refused it (an error, as intended for bad input) or
/// accepted it (parsed and used). Panics, hangs and huge allocations are caught around it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    Refused,
}

/// A fuzzing target: a parser of outside bytes, and where its seeds are.
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8], &Scratch) -> Outcome,
}

/// A scratch folder a target may write its input to (files must be files for most parsers).
pub struct Scratch {
    pub dir: PathBuf,
}

impl Scratch {
    /// `dir/name` holding `bytes`.
    pub fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.dir.join(name);
        let _ = std::fs::remove_file(&p);
        std::fs::write(&p, bytes).expect("the scratch folder takes files");
        p
    }
}

static STARTED_MS: AtomicU64 = AtomicU64::new(0);

fn now_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// xorshift64*: fast, seedable, good enough to pick mutations.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// In `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const INTERESTING_NUMBERS: &[&str] = &[
    "0", "-1", "1", "2", "7", "8", "77", "255", "256", "1000", "65535", "65536", "2147483647", "2147483648",
    "4294967295", "4294967296", "9223372036854775807", "9223372036854775808", "18446744073709551615",
    "18446744073709551616", "1e12", "1e30", "1e308", "-1e308", "0.5", "-0.5", "1.5", "NaN", "Infinity", "-0",
    "4611686018427387904", "100000", "100001",
];
const JSON_TOKENS: &[&str] = &["null", "true", "false", "[]", "{}", "\"\"", "[[[[", "]]]]", ",", ":", "\"", "\\", "\u{0}", "[1,2]", "{\"a\":1}"];

/// One to four stacked mutations of `input` (`other`: a second pool entry for splicing).
pub fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(11) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = [0u8, 0xff, 0x7f, 0x80, b'0', b'9', b'-', b'"', b'.', b'\n'][rng.below(10)];
            }
            2 => {
                let i = rng.below(v.len() + 1);
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                v.splice(i..i, bytes);
            }
            3 if !v.is_empty() => {
                let i = rng.below(v.len());
                let n = 1 + rng.below((v.len() - i).min(64));
                v.drain(i..i + n);
            }
            4 if !v.is_empty() => {
                let i = rng.below(v.len());
                let n = 1 + rng.below((v.len() - i).min(256));
                let copy = v[i..i + n].to_vec();
                let at = rng.below(v.len() + 1);
                v.splice(at..at, copy);
            }
            5 if !other.is_empty() => {
                let cut = rng.below(v.len() + 1);
                let from = rng.below(other.len());
                v.truncate(cut);
                v.extend(&other[from..]);
            }
            6 if v.len() >= 8 => {
                // an interesting integer over 1, 2, 4 or 8 bytes, either byte order
                let width = [1, 2, 4, 8][rng.below(4)];
                let i = rng.below(v.len() - width + 1);
                let value: u64 = [0, 1, u64::MAX, i64::MAX as u64, 1 << 31, 1 << 32, 1 << 62, 0x7fff_ffff, 100_000_000][rng.below(9)];
                let bytes = if rng.below(2) == 0 { value.to_le_bytes() } else { value.to_be_bytes() };
                v[i..i + width].copy_from_slice(&bytes[..width]);
            }
            7 | 8 => {
                // replace a run of digits (a number in JSON or text) with an interesting number
                let starts: Vec<usize> = (0..v.len()).filter(|&i| v[i].is_ascii_digit() && (i == 0 || !v[i - 1].is_ascii_digit())).collect();
                if let Some(&s) = starts.get(rng.below(starts.len().max(1))) {
                    let mut e = s;
                    while e < v.len() && (v[e].is_ascii_digit() || v[e] == b'.' || v[e] == b'e') {
                        e += 1;
                    }
                    let n = INTERESTING_NUMBERS[rng.below(INTERESTING_NUMBERS.len())];
                    v.splice(s..e, n.bytes());
                }
            }
            9 => {
                let i = rng.below(v.len() + 1);
                let t = JSON_TOKENS[rng.below(JSON_TOKENS.len())];
                v.splice(i..i, t.bytes());
            }
            _ => {
                // truncate
                let n = rng.below(v.len() + 1);
                v.truncate(n);
            }
        }
    }
    v.truncate(MAX_INPUT);
    v
}

/// What one run of a target found.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub target: &'static str,
    pub executions: u64,
    pub accepted: u64,
    /// Inputs that panicked, saved under `crashes/`, with the panic message.
    pub crashes: Vec<(PathBuf, String)>,
    /// The slowest input, in seconds.
    pub slowest_s: f64,
    /// The most bytes one input held at once (above the loop's own), and the largest single
    /// allocation, while the target ran. The input with that peak is saved as `peak-<target>.bin`.
    pub peak_bytes: usize,
    pub largest_alloc: usize,
    /// Bytes still live when the loop is over (its own pool freed): what the target kept, in
    /// caches or leaks, over all its inputs.
    pub retained_bytes: usize,
    pub seeds: usize,
}

/// The seeds of `target`: every file under `corpus/<target>/`.
pub fn seeds(corpus: &Path, target: &str) -> Vec<Vec<u8>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus.join(target)).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    files.sort();
    files.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

/// Fuzzes `target` for `budget`: its seeds first, then mutations. Crashing inputs are saved in
/// `out/crashes/<target>-<n>.bin`; the input running when a hang or a huge allocation aborts the
/// process is in `out/current-<target>.bin`.
///
/// One `fuzz` runs at a time in a process (the guards are process-wide): a second call waits.
/// While it runs, panics print nothing; their message and location go into the report.
pub fn fuzz(target: &Target, corpus: &Path, out: &Path, budget: Duration, seed: u64) -> Report {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let quiet = QuietPanics::install();
    let crashes_dir = out.join("crashes");
    std::fs::create_dir_all(&crashes_dir).expect("the output folder");
    let scratch = Scratch { dir: out.join(format!("scratch-{}", target.name)) };
    std::fs::create_dir_all(&scratch.dir).expect("a scratch folder");
    let dump = std::fs::OpenOptions::new().create(true).write(true).truncate(true).open(out.join(format!("current-{}.bin", target.name))).expect("the dump file");
    current::set_dump_file(std::os::fd::AsRawFd::as_raw_fd(&dump));
    start_watchdog();

    // a warm-up call on the empty input: what a target builds once for every input (its lazy
    // statics, e.g. the tiny models LoRAs are loaded into) is not counted as kept by the loop
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (target.run)(&[], &scratch)));
    let live_before = crate::alloc::live();
    let seeds = seeds(corpus, target.name);
    let mut pool: Vec<Vec<u8>> = if seeds.is_empty() { vec![Vec::new()] } else { seeds.clone() };
    let mut rng = Rng::new(seed ^ target.name.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64)));
    let mut report = Report { target: target.name, seeds: seeds.len(), ..Default::default() };
    crate::alloc::reset_largest();
    let mut pool_bytes: usize = pool.iter().map(Vec::len).sum();
    let start = Instant::now();
    let mut queue: std::collections::VecDeque<Vec<u8>> = seeds.into_iter().collect();
    while start.elapsed() < budget || !queue.is_empty() {
        let input = match queue.pop_front() {
            Some(s) => s,
            None => {
                let a = rng.below(pool.len());
                let b = rng.below(pool.len());
                mutate(&mut rng, &pool[a], &pool[b])
            }
        };
        current::set(&input);
        let t0 = Instant::now();
        STARTED_MS.store(now_ms(), Ordering::SeqCst);
        crate::alloc::start_input();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (target.run)(&input, &scratch)));
        STARTED_MS.store(0, Ordering::SeqCst);
        if crate::alloc::input_peak() > report.peak_bytes {
            report.peak_bytes = crate::alloc::input_peak();
            let _ = std::fs::write(out.join(format!("peak-{}.bin", target.name)), &input);
        }
        report.slowest_s = report.slowest_s.max(t0.elapsed().as_secs_f64());
        report.executions += 1;
        match result {
            Ok(Outcome::Accepted) => {
                report.accepted += 1;
                if pool.len() < POOL_INPUTS && pool_bytes + input.len() <= POOL_BYTES {
                    pool_bytes += input.len();
                    pool.push(input.clone());
                } else {
                    let i = rng.below(pool.len());
                    pool_bytes = pool_bytes - pool[i].len() + input.len();
                    pool[i] = input.clone();
                }
            }
            Ok(Outcome::Refused) => {}
            Err(_) => {
                let message = quiet.last();
                let path = crashes_dir.join(format!("{}-{}.bin", target.name, report.crashes.len()));
                let _ = std::fs::write(&path, &input);
                report.crashes.push((path, message));
            }
        }
        current::clear();
    }
    report.largest_alloc = crate::alloc::largest();
    drop((pool, queue));
    report.retained_bytes = crate::alloc::live().saturating_sub(live_before);
    current::set_dump_file(-1);
    drop(dump);
    let _ = std::fs::remove_file(out.join(format!("current-{}.bin", target.name)));
    let _ = std::fs::remove_dir_all(&scratch.dir);
    report
}

/// Replaces the panic hook for the length of a [`fuzz`] call: a panic's message and location are
/// kept for the report instead of printed (a target may panic thousands of times).
struct QuietPanics {
    last: std::sync::Arc<std::sync::Mutex<String>>,
    previous: Option<Box<dyn Fn(&std::panic::PanicHookInfo<'_>) + Sync + Send + 'static>>,
}

impl QuietPanics {
    fn install() -> Self {
        let last = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let previous = std::panic::take_hook();
        let slot = last.clone();
        std::panic::set_hook(Box::new(move |info| {
            let message = info
                .payload()
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| info.payload().downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "(a panic without a message)".into());
            let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
            *slot.lock().unwrap_or_else(|e| e.into_inner()) = format!("{message}{at}");
        }));
        QuietPanics { last, previous: Some(previous) }
    }

    /// The last panic's message and location.
    fn last(&self) -> String {
        std::mem::take(&mut *self.last.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Drop for QuietPanics {
    fn drop(&mut self) {
        if let Some(previous) = self.previous.take() {
            std::panic::set_hook(previous);
        }
    }
}

/// A thread that aborts the process when an input outlives [`HANG_LIMIT`], after writing it out.
fn start_watchdog() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        std::thread::spawn(|| {
            loop {
                std::thread::sleep(Duration::from_millis(200));
                let started = STARTED_MS.load(Ordering::SeqCst);
                if started != 0 && now_ms().saturating_sub(started) > HANG_LIMIT.as_millis() as u64 {
                    current::dump("an input ran for more than 10 s (a hang)");
                    std::process::abort();
                }
            }
        });
    });
}
