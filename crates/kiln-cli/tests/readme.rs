//! The README's first command, run as the README writes it (its output path moved to a temporary
//! folder): it must generate from the demo model kiln ships, and the picture must show what the
//! prompt says, as far as the model gets it right — read back with the semantic test's analysis
//! (`kiln_train::analysis`).

use std::path::PathBuf;

mod common;
use common::{kiln, TempDir};
use kiln_train::analysis::analyze;
use kiln_train::dataset::{Shape, COLORS};

fn root() -> PathBuf {
    PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into())).join("../..")
}

/// Splits a shell command line into words (double quotes only, as the README uses them).
fn words(line: &str) -> Vec<String> {
    let (mut out, mut cur, mut quoted, mut any) = (Vec::new(), String::new(), false, false);
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

#[test]
fn readme_first_command_draws_its_prompt() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let block = readme.split("```sh\n").nth(1).expect("README starts with a sh block");
    let first = block.lines().next().unwrap();
    let w = words(first);
    let dashdash = w.iter().position(|a| a == "--").expect("cargo run … -- generate …");
    assert_eq!(&w[..dashdash], ["cargo", "run", "-p", "kiln-cli"], "{first}");
    let mut args: Vec<String> = w[dashdash + 1..].to_vec();
    assert_eq!(args[0], "generate");
    let value = |args: &[String], flag: &str| args.iter().position(|a| a == flag).map(|i| args[i + 1].clone());
    let m = args.iter().position(|a| a == "--model").expect("--model");
    let model = args[m + 1].clone();
    assert!(model.starts_with("assets/"), "the README's model must be one kiln ships: {model}");
    // run from the repository root, writing into a temporary folder rather than ./out.png
    let tmp = TempDir::new("readme");
    let out = tmp.0.join("out.png");
    let i = args.iter().position(|a| a == "--output").expect("--output");
    args[i + 1] = out.to_str().unwrap().to_string();
    args[m + 1] = root().join(&model).to_str().unwrap().to_string();
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = kiln(&refs);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let img = image::open(&out).unwrap().to_rgb8();
    // what the prompt asks for: "a <colour> <shape> on a <colour> background"
    let prompt = value(&args, "--prompt").unwrap();
    let p: Vec<&str> = prompt.split(' ').collect();
    let colour = |name: &str| COLORS.iter().position(|(n, _)| *n == name).unwrap_or_else(|| panic!("colour {name}"));
    let shape = Shape::ALL.into_iter().find(|s| s.name() == p[2]).unwrap_or_else(|| panic!("shape in {prompt}"));
    let r = analyze(&img);
    // what the shipped model draws for this prompt (measured 2026-11-27): one red circle on a
    // blue background, every attribute the prompt names
    assert_eq!((r.color, r.shape, r.background, r.count), (Some(colour(p[1])), Some(shape), colour(p[5]), 1), "{prompt}: {r:?}");
}
