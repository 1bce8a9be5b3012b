//! What a target keeps after its inputs are done stays bounded: building and using a tokenizer
//! many times does not grow memory. tokenizers 0.23's BPE kept a word cache per instance in a
//! thread-local map and never removed a dropped instance's entries (about 1 KB per tokenizer
//! built; the long fuzzing run's memory grew past 1 GB from it, docs/reliability.md#fuzzing).

use kiln_fuzz::engine::{Outcome, Scratch};
use kiln_fuzz::targets::TARGETS;

#[global_allocator]
static ALLOC: kiln_fuzz::alloc::Counting = kiln_fuzz::alloc::Counting;

#[test]
fn building_tokenizers_again_and_again_does_not_grow_memory() {
    let target = TARGETS.iter().find(|t| t.name == "tokenizer").expect("a tokenizer target");
    let scratch = Scratch { dir: std::env::temp_dir().join(format!("kiln-fuzz-leaks-{}", std::process::id())) };
    std::fs::create_dir_all(&scratch.dir).unwrap();
    // two empty configs, the target's tiny vocabulary and merges, then "a cat" encoded
    let input = b"{}\xff{}";
    let run = || assert!(matches!((target.run)(input, &scratch), Outcome::Accepted), "the tiny tokenizer loads");
    // warm up: the first loads fill what is filled once (lazy statics, regexes)
    for _ in 0..50 {
        run();
    }
    let before = kiln_fuzz::alloc::live();
    const LOADS: usize = 2000;
    for _ in 0..LOADS {
        run();
    }
    let grown = kiln_fuzz::alloc::live().saturating_sub(before);
    let _ = std::fs::remove_dir_all(&scratch.dir);
    eprintln!("{LOADS} tokenizer loads left {grown} bytes behind");
    // with the leak: about 1 KB per load, 2 MB here
    assert!(grown < 64 << 10, "{LOADS} tokenizer loads left {grown} bytes behind ({} per load)", grown / LOADS);
}
