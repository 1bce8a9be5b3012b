//! `kiln-fuzz TARGET|all [--seconds N] [--seed N] [--out DIR]`: fuzzes kiln's parsers (see the
//! library's docs); exits 1 when any input crashed, with the inputs saved under `DIR/crashes/`.

use std::path::PathBuf;
use std::time::Duration;

use kiln_fuzz::engine::fuzz;
use kiln_fuzz::targets::TARGETS;

#[global_allocator]
static ALLOC: kiln_fuzz::alloc::Counting = kiln_fuzz::alloc::Counting;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    let which = args.first().cloned().unwrap_or_else(|| "all".into());
    let seconds: u64 = value("--seconds").and_then(|s| s.parse().ok()).unwrap_or(10);
    let seed: u64 = value("--seed").and_then(|s| s.parse().ok()).unwrap_or(1);
    let out = PathBuf::from(value("--out").unwrap_or_else(|| std::env::temp_dir().join("kiln-fuzz").to_string_lossy().into_owned()));
    let targets: Vec<_> = TARGETS.iter().filter(|t| which == "all" || t.name == which).collect();
    if targets.is_empty() {
        eprintln!("unknown target {which:?}; targets: all, {}", TARGETS.iter().map(|t| t.name).collect::<Vec<_>>().join(", "));
        std::process::exit(2);
    }
    let mut crashed = false;
    println!("{:<20} {:>6} {:>10} {:>9} {:>8} {:>10} {:>9} {:>12} {:>13}", "target", "seeds", "execs", "accepted", "crashes", "slowest_s", "peak_MiB", "largest_MiB", "retained_MiB");
    for t in targets {
        let r = fuzz(t, &kiln_fuzz::corpus_dir(), &out, Duration::from_secs(seconds), seed);
        let mib = |b: usize| b as f64 / (1 << 20) as f64;
        println!(
            "{:<20} {:>6} {:>10} {:>9} {:>8} {:>10.3} {:>9.1} {:>12.1} {:>13.2}",
            r.target, r.seeds, r.executions, r.accepted, r.crashes.len(), r.slowest_s, mib(r.peak_bytes), mib(r.largest_alloc), mib(r.retained_bytes)
        );
        for (path, message) in &r.crashes {
            println!("  crash: {} ({message})", path.display());
        }
        crashed |= !r.crashes.is_empty();
    }
    std::process::exit(i32::from(crashed));
}
