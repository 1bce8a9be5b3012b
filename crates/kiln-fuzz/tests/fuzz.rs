//! Every fuzzing target for a short budget (CI): the seed corpus, then mutations, with no crash,
//! no hang (> 10 s), no allocation over 1 GiB and no memory kept per input. The long runs'
//! figures are in docs/reliability.md.

use std::time::Duration;

use kiln_fuzz::engine::fuzz;
use kiln_fuzz::targets::TARGETS;

#[global_allocator]
static ALLOC: kiln_fuzz::alloc::Counting = kiln_fuzz::alloc::Counting;

/// Seconds per target in CI (19 targets: about a minute and a half in all).
const BUDGET_S: u64 = 5;

#[test]
fn every_target_survives_its_corpus_and_mutations() {
    let out = std::env::temp_dir().join(format!("kiln-fuzz-test-{}", std::process::id()));
    let mut failures = Vec::new();
    for t in TARGETS {
        let r = fuzz(t, &kiln_fuzz::corpus_dir(), &out, Duration::from_secs(BUDGET_S), 7);
        eprintln!(
            "{}: {} seeds, {} executions, {} accepted, slowest {:.3} s, peak {} bytes held by one input, largest allocation {} bytes, {} bytes kept after the loop",
            r.target, r.seeds, r.executions, r.accepted, r.slowest_s, r.peak_bytes, r.largest_alloc, r.retained_bytes
        );
        assert!(r.seeds > 0, "{}: no seeds in corpus/{}", t.name, t.name);
        assert!(r.accepted > 0, "{}: no input accepted: the target never gets past its first check", t.name);
        // what stays after the loop is what kiln keeps once (lazy statics: 28 KB for the
        // tokenizer), not a share of every input (the tokenizers leak kept ~1 KB per input)
        if r.retained_bytes > 1 << 20 {
            failures.push(format!("{}: {} bytes still held after {} inputs", t.name, r.retained_bytes, r.executions));
        }
        for (path, message) in r.crashes {
            failures.push(format!("{}: {} ({message})", t.name, path.display()));
        }
    }
    let _ = std::fs::remove_dir_all(&out);
    assert!(failures.is_empty(), "crashes and leaks:\n{}", failures.join("\n"));
}

/// The loop's guards catch what they should: a panicking target is reported with its input.
#[test]
fn a_panicking_target_is_reported() {
    fn panics(input: &[u8], _: &kiln_fuzz::engine::Scratch) -> kiln_fuzz::engine::Outcome {
        assert!(!input.contains(&b'!'), "found the bug");
        kiln_fuzz::engine::Outcome::Accepted
    }
    let out = std::env::temp_dir().join(format!("kiln-fuzz-selftest-{}", std::process::id()));
    let corpus = out.join("corpus");
    std::fs::create_dir_all(corpus.join("selftest")).unwrap();
    std::fs::write(corpus.join("selftest/seed"), b"hello world").unwrap();
    let t = kiln_fuzz::engine::Target { name: "selftest", run: panics };
    let r = fuzz(&t, &corpus, &out, Duration::from_secs(2), 1);
    assert!(!r.crashes.is_empty(), "mutations reach a '!' within 2 s");
    let saved = std::fs::read(&r.crashes[0].0).unwrap();
    assert!(saved.contains(&b'!') && r.crashes[0].1.contains("found the bug"));
    let _ = std::fs::remove_dir_all(&out);
}
