//! README's two commands (`cargo run -p kiln-cli …`, then `cargo test --workspace`) and any
//! `cargo test -p <crate>` share one build of burn: every package below kiln is built with the
//! same features whichever of kiln's packages are selected. Cargo turns features on per
//! selection, so a dependency with other features in one selection is built again, and with it
//! every crate above it (burn's whole tree, 25 minutes on 2 cores, when it sits under burn-std).
//! `crates/kiln-workspace-hack` pins them; this test checks it still does, with `cargo tree`
//! (offline: it reads Cargo.lock and the registry cache the build filled).

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// `package version` → its feature sets in one selection (a package can appear twice: once for
/// the target, once for build scripts and proc macros).
fn features(selection: &[&str], edges: &str) -> BTreeMap<String, BTreeSet<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["tree", "--offline", "--locked", "--prefix", "none", "-f", "{p}|{f}", "-e", edges])
        .args(selection)
        .output()
        .expect("cargo tree runs");
    assert!(out.status.success(), "cargo tree {selection:?}: {}", String::from_utf8_lossy(&out.stderr));
    let mut map: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let line = line.trim_end_matches(" (*)");
        let Some((package, features)) = line.split_once('|') else { continue };
        // kiln's own packages are rebuilt when their code changes anyway
        if package.starts_with("kiln") {
            continue;
        }
        map.entry(package.trim().to_string()).or_default().insert(features.to_string());
    }
    map
}

#[test]
fn every_selection_builds_the_dependencies_with_the_workspaces_features() {
    let workspace = features(&["--workspace"], "normal,build,dev");
    assert!(workspace.keys().any(|p| p.starts_with("burn ")), "cargo tree lists burn: {:?}", workspace.keys().take(5).collect::<Vec<_>>());
    let metadata = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["metadata", "--offline", "--locked", "--no-deps", "--format-version", "1"])
        .output()
        .expect("cargo metadata runs");
    let metadata: serde_json::Value = serde_json::from_slice(&metadata.stdout).expect("cargo metadata prints JSON");
    let members: Vec<String> = metadata["packages"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap().to_string()).collect();
    assert!(members.len() >= 9, "{members:?}");
    let mut wrong = Vec::new();
    // (kiln-workspace-hack itself is never built alone: every other package depends on it)
    for member in members.iter().filter(|m| *m != "kiln-workspace-hack") {
        // `cargo run -p X` builds X's normal dependencies, `cargo test -p X` its dev-dependencies too
        for edges in ["normal,build", "normal,build,dev"] {
            for (package, sets) in features(&["-p", member], edges) {
                for set in sets {
                    if !workspace.get(&package).is_some_and(|w| w.contains(&set)) {
                        wrong.push(format!("`-p {member} -e {edges}`: {package} with [{set}]; the workspace builds it with {:?}", workspace.get(&package)));
                    }
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "these selections would build a dependency again with other features; add each package to \
         crates/kiln-workspace-hack/Cargo.toml with the workspace's features:\n{}",
        wrong.join("\n")
    );
}

/// Every crate packages on its own (`cargo package --workspace --no-verify`): nothing a crate
/// compiles in lies outside it (kiln-bench compiled in `../../../assets/configs` before the re-cut).
#[test]
fn every_crate_packages() {
    let target = std::env::temp_dir().join(format!("kiln-package-{}", std::process::id()));
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["package", "--workspace", "--no-verify", "--allow-dirty", "--offline", "--target-dir"])
        .arg(&target)
        .output()
        .expect("cargo package runs");
    let _ = std::fs::remove_dir_all(&target);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "cargo package --workspace failed:\n{stderr}");
    assert!(stderr.matches("Packaged").count() >= 12, "{stderr}");
}
