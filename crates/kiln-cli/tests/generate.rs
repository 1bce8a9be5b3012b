//! `kiln generate` end to end on the tiny SD1 pipeline of assets/fixtures/models: the PNG equals
//! diffusers' picture for the same arguments (scripts/fixtures/pipelines.py, case 0), carries its
//! parameters (read back by `kiln info`), and bad input exits 2 with a message naming the value.

use std::path::PathBuf;
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln")).args(args).output().expect("run kiln")
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-generate-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn pixels(path: &PathBuf) -> Vec<u8> {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    buf
}

#[test]
fn generate_reproduces_diffusers_and_records_parameters() {
    let model = root().join("assets/fixtures/models/sd1");
    let dir = tmp("ok");
    let out = dir.join("circle.png");
    let o = kiln(&[
        "generate", "--model", model.to_str().unwrap(), "--prompt", "a red circle on a blue background",
        "--steps", "5", "--guidance-scale", "7.5", "--seed", "0", "--width", "64", "--height", "48",
        "--output", out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // diffusers' picture for these arguments (case 0 of scripts/fixtures/pipelines.py); the bound
    // is the 2 levels of 255
    let want = pixels(&root().join("assets/fixtures/pipelines/case00-0.png"));
    let got = pixels(&out);
    assert_eq!(got.len(), want.len());
    let worst = got.iter().zip(&want).map(|(a, b)| (*a as i32 - *b as i32).abs()).max().unwrap();
    assert!(worst <= 2, "max difference {worst} levels");

    let info = kiln(&["info", out.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(info.status.success(), "{}", String::from_utf8_lossy(&info.stderr));
    for needle in ["a red circle on a blue background", "Steps: 5", "CFG scale: 7.5", "Seed: 0", "Size: 64x48"] {
        assert!(text.contains(needle), "kiln info should print {needle:?}: {text}");
    }

    // an existing output is never overwritten without --overwrite
    let again = kiln(&[
        "generate", "--model", model.to_str().unwrap(), "--prompt", "x", "--steps", "1", "--width", "64",
        "--height", "48", "--output", out.to_str().unwrap(),
    ]);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--overwrite"));
    assert_eq!(pixels(&out), got, "the existing file must be untouched");
    std::fs::remove_dir_all(&dir).ok();
}

fn assert_usage_error(args: &[&str], needles: &[&str]) {
    let out = kiln(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?} should exit 2; stderr: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "{args:?}: message should mention {n:?}; got: {stderr}");
    }
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
}

#[test]
fn generate_bad_input_exits_2() {
    let model = root().join("assets/fixtures/models/sd1");
    let m = model.to_str().unwrap();
    let dir = tmp("bad");
    let out = dir.join("x.png");
    let o = out.to_str().unwrap();
    // the defaults below, with `extra` replacing a flag of the same name (clap refuses repeats)
    let run = |extra: &[&str], needles: &[&str]| {
        let mut args: Vec<String> = vec!["generate".into(), "--model".into(), m.into(), "--prompt".into(), "p".into(), "--output".into(), o.into()];
        for (flag, value) in [("--steps", "2"), ("--width", "64"), ("--height", "64")] {
            if !extra.iter().any(|e| e.split('=').next() == Some(flag)) {
                args.extend([flag.to_string(), value.to_string()]);
            }
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_usage_error(&refs, needles);
    };
    run(&["--width", "60"], &["width", "60", "multiple of 8"]);
    run(&["--height", "0"], &["height", "0"]);
    run(&["--steps", "0"], &["steps", "0"]);
    run(&["--guidance-scale=-1"], &["guidance", "-1"]);
    run(&["--scheduler", "eulr"], &["eulr", "euler-a"]);
    run(&["--device", "tpu"], &["--device", "tpu"]);
    run(&["--dtype", "f8"], &["--dtype", "f8"]);
    run(&["--init-image", "in.png", "--strength", "0.5"], &["not supported yet"]);
    assert_usage_error(&["generate", "--model", "/nonexistent/model", "--prompt", "p", "--output", o], &["/nonexistent/model"]);
    let missing_dir = dir.join("no/such/dir/x.png");
    assert_usage_error(
        &["generate", "--model", m, "--prompt", "p", "--width", "64", "--height", "64", "--output", missing_dir.to_str().unwrap()],
        &["does not exist"],
    );
    assert!(!out.exists(), "no output on failure");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_prompt_longer_than_77_tokens_is_truncated_with_a_warning() {
    let model = root().join("assets/fixtures/models/sd1");
    let dir = tmp("long");
    let out = dir.join("long.png");
    // 90 words of one token each: 90 + bos + eos ids, 77 kept, 15 dropped (as transformers cuts)
    let prompt = vec!["red"; 90].join(" ");
    let o = kiln(&[
        "generate", "--model", model.to_str().unwrap(), "--prompt", &prompt, "--steps", "1", "--width", "64",
        "--height", "64", "--output", out.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("truncated") && stderr.contains("15 tokens dropped"), "warning expected: {stderr}");
    std::fs::remove_dir_all(&dir).ok();
}
