//! The house rules docs/architecture.md states, checked on the sources:
//! - no module import cycle inside any crate (a module depends on another when its code, tests
//!   aside, names the other's items: `use crate::x::…`, `crate::x::…`, `super::…`, or an item
//!   the crate root re-exports from it);
//! - no sampler file of kiln-scheduler imports another sampler file (what they share lives in
//!   `common`, `dpmsolver`, `schedule` and `float`);
//! - nothing in the repository cites a file outside it (the design notes kiln started from live
//!   outside the repository; the facts the code needs are copied into docs/).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The module path of a source file: `lib.rs` → "", `a.rs` / `a/mod.rs` → "a", `a/b.rs` → "a::b".
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib" || p == "main") {
        parts.pop();
    }
    parts.join("::")
}

/// The code of a file without comments, string and char literals, and `#[cfg(test)]` items.
fn code_of(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let end = text[i + 2..].find("*/").map_or(b.len(), |e| i + 2 + e + 2);
            i = end;
        } else if b[i] == b'r' && (b[i + 1..].starts_with(b"\"") || b[i + 1..].starts_with(b"#\"") || b[i + 1..].starts_with(b"##\""))
            && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_'))
        {
            let hashes = b[i + 1..].iter().take_while(|&&c| c == b'#').count();
            let close = format!("\"{}", "#".repeat(hashes));
            let start = i + 2 + hashes;
            i = text[start..].find(&close).map_or(b.len(), |e| start + e + close.len());
            out.push_str("\"\"");
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' && i + 2 < b.len() && (b[i + 2] == b'\'' || (b[i + 1] == b'\\' && b[i + 3..].contains(&b'\''))) {
            // a char literal ('a', '\n', '\u{1F600}'), not a lifetime
            let end = text[i + 1..].find('\'').map_or(b.len(), |e| i + 1 + e + 1);
            i = if b[i + 1] == b'\\' { text[i + 2..].find('\'').map_or(b.len(), |e| i + 2 + e + 1) } else { end };
            out.push_str("' '");
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    strip_test_items(&out)
}

/// Removes each `#[cfg(test)]` item (the attribute, then up to its balanced closing brace or `;`).
fn strip_test_items(code: &str) -> String {
    let mut out = String::new();
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        let (mut depth, mut end) = (0usize, after.len());
        for (j, c) in after.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = j + 1;
                        break;
                    }
                }
                ';' if depth == 0 => {
                    end = j + 1;
                    break;
                }
                _ => {}
            }
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The paths a `use` tree names, expanded: `a::{b, c::{d, e}}` → `a::b`, `a::c::d`, `a::c::e`.
fn expand_use(tree: &str) -> Vec<String> {
    // `x as y` renames: keep the path, drop the new name
    let tree: String = tree.split_whitespace().collect::<Vec<_>>().join(" ").replace(" as ", "@as@");
    let tree: String = tree.chars().filter(|c| !c.is_whitespace()).collect();
    fn go(prefix: &str, t: &str, out: &mut Vec<String>) {
        let Some(open) = t.find('{') else {
            let t = t.split("@as@").next().unwrap_or(t);
            out.push(if prefix.is_empty() { t.to_string() } else { format!("{prefix}{t}") });
            return;
        };
        let head = format!("{prefix}{}", &t[..open]);
        let inner = &t[open + 1..t.len() - 1];
        let (mut depth, mut start) = (0, 0);
        for (j, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    if start < j {
                        go(&head, &inner[start..j], out);
                    }
                    start = j + 1;
                }
                _ => {}
            }
        }
        if start < inner.len() {
            go(&head, &inner[start..], out);
        }
    }
    let mut out = Vec::new();
    go("", &tree, &mut out);
    out
}

struct Crate {
    name: String,
    /// module → its code (tests aside)
    modules: BTreeMap<String, String>,
}

fn crates() -> Vec<Crate> {
    let mut dirs: Vec<(String, PathBuf)> = vec![("kiln".into(), root().join("src"))];
    for e in std::fs::read_dir(root().join("crates")).unwrap().flatten() {
        dirs.push((e.file_name().to_string_lossy().into_owned(), e.path().join("src")));
    }
    dirs.sort();
    dirs.into_iter()
        .map(|(name, src)| {
            let modules = rust_files(&src)
                .into_iter()
                .filter(|f| !f.starts_with(src.join("bin")))
                .map(|f| (module_of(&src, &f), code_of(&std::fs::read_to_string(&f).unwrap())))
                .collect();
            Crate { name, modules }
        })
        .collect()
}

/// The module `path` (a `::`-separated path from the crate root) falls in: its longest prefix
/// that is a module; through the root's re-exports for items the root re-exports.
fn resolve(path: &str, modules: &BTreeMap<String, String>, reexports: &BTreeMap<String, String>) -> Option<String> {
    let segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty() && *s != "self").collect();
    if let Some(target) = segs.first().and_then(|s| reexports.get(*s)) {
        return Some(target.clone());
    }
    (1..=segs.len()).rev().map(|n| segs[..n].join("::")).find(|m| modules.contains_key(m))
}

/// module → the modules its code depends on.
fn dependencies(c: &Crate) -> BTreeMap<String, BTreeSet<String>> {
    let root_code = c.modules.get("").cloned().unwrap_or_default();
    // the root's `pub use x::y::{A, B}` lines: A, B → module x::y
    let mut reexports = BTreeMap::new();
    for stmt in root_code.split(';') {
        let stmt = stmt.trim();
        let Some(tree) = stmt.strip_prefix("pub use ").or_else(|| stmt.strip_prefix("pub(crate) use ")) else { continue };
        for path in expand_use(tree) {
            let path = path.trim_start_matches("crate::").trim_start_matches("self::");
            let (module, item) = path.rsplit_once("::").unwrap_or(("", path));
            if let Some(m) = resolve(module, &c.modules, &BTreeMap::new()) {
                reexports.insert(item.to_string(), m);
            }
        }
    }
    let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, code) in &c.modules {
        let mut found = BTreeSet::new();
        let parent = module.rsplit_once("::").map_or("", |p| p.0).to_string();
        // `use` statements (the root's `mod` and `pub use` lines are declarations, not uses)
        let mut aliases = BTreeMap::new();
        for stmt in code.split(';') {
            let stmt = stmt.trim_start();
            let tree = match stmt.strip_prefix("use ").or_else(|| stmt.strip_prefix("pub(crate) use ")).or_else(|| stmt.strip_prefix("pub use ")) {
                Some(t) if !(module.is_empty() && stmt.starts_with("pub")) => t,
                _ => continue,
            };
            for path in expand_use(tree) {
                let full = if let Some(p) = path.strip_prefix("crate::") {
                    p.to_string()
                } else if let Some(p) = path.strip_prefix("super::") {
                    if parent.is_empty() { p.to_string() } else { format!("{parent}::{p}") }
                } else if let Some(p) = path.strip_prefix("self::") {
                    if module.is_empty() { p.to_string() } else { format!("{module}::{p}") }
                } else {
                    continue;
                };
                if let Some(m) = resolve(&full, &c.modules, &reexports) {
                    found.insert(m.clone());
                    if c.modules.contains_key(&full) {
                        aliases.insert(full.rsplit("::").next().unwrap().to_string(), full.clone());
                    }
                }
            }
        }
        // paths in the code: `crate::a::b`, `super::a`, and `alias::b` for modules imported by name
        let chars: Vec<char> = code.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            if !is_ident(chars[i]) || (i > 0 && (is_ident(chars[i - 1]) || chars[i - 1] == ':')) {
                i += 1;
                continue;
            }
            let start = i;
            while i < chars.len() && (is_ident(chars[i]) || (chars[i] == ':' && chars.get(i + 1) == Some(&':'))) {
                i += if chars[i] == ':' { 2 } else { 1 };
            }
            let path: String = chars[start..i].iter().collect();
            let path = path.trim_end_matches("::");
            let (head, tail) = path.split_once("::").unwrap_or((path, ""));
            let full = match head {
                "crate" => tail.to_string(),
                "super" => if parent.is_empty() { tail.to_string() } else { format!("{parent}::{tail}") },
                h => match aliases.get(h) {
                    Some(m) if !tail.is_empty() => format!("{m}::{tail}"),
                    _ => continue,
                },
            };
            if let Some(m) = resolve(&full, &c.modules, &reexports) {
                found.insert(m);
            }
        }
        found.remove(module);
        deps.insert(module.clone(), found);
    }
    deps
}

/// A cycle in `deps`, if there is one.
fn find_cycle(deps: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        m: &str,
        deps: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(m.to_string(), 1);
        stack.push(m.to_string());
        for d in deps.get(m).into_iter().flatten() {
            match state.get(d.as_str()).copied().unwrap_or(0) {
                1 => {
                    let at = stack.iter().position(|s| s == d).unwrap();
                    let mut cycle = stack[at..].to_vec();
                    cycle.push(d.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(d, deps, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(m.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for m in deps.keys() {
        if state.get(m.as_str()).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(m, deps, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn no_module_import_cycles() {
    let mut cycles = Vec::new();
    let mut edges = 0;
    for c in crates() {
        let deps = dependencies(&c);
        edges += deps.values().map(BTreeSet::len).sum::<usize>();
        if let Some(cycle) = find_cycle(&deps) {
            let name = |m: &String| if m.is_empty() { "(crate root)".to_string() } else { m.clone() };
            cycles.push(format!("{}: {}", c.name, cycle.iter().map(name).collect::<Vec<_>>().join(" -> ")));
        }
    }
    assert!(edges > 100, "the scan found only {edges} dependencies: it is not reading the sources");
    assert!(cycles.is_empty(), "module import cycles:\n{}", cycles.join("\n"));
}

/// The checker itself: a cycle through a re-export and a `super::` path is found.
#[test]
fn the_cycle_check_finds_cycles() {
    let modules: BTreeMap<String, String> = [
        ("".to_string(), code_of("mod a;\nmod b;\npub use b::Thing;\n")),
        ("a".to_string(), code_of("use crate::Thing; // b\nfn f() {}\n")),
        ("b".to_string(), code_of("pub struct Thing;\nfn g() { super::a::f() }\n#[cfg(test)]\nmod tests { use crate::c; }\n")),
    ]
    .into_iter()
    .collect();
    let deps = dependencies(&Crate { name: "t".into(), modules });
    assert_eq!(deps["a"], BTreeSet::from(["b".to_string()]));
    assert_eq!(deps["b"], BTreeSet::from(["a".to_string()]));
    assert!(find_cycle(&deps).is_some());
}

#[test]
fn no_sampler_imports_another_sampler() {
    const SAMPLERS: &[&str] = &[
        "ddim", "ddpm", "deis", "dpmsolver_multistep", "dpmsolver_singlestep", "euler", "euler_ancestral", "heun", "kdpm2",
        "lcm", "lms", "pndm", "tcd", "unipc",
    ];
    let c = crates().into_iter().find(|c| c.name == "kiln-scheduler").unwrap();
    let deps = dependencies(&c);
    let mut wrong = Vec::new();
    for s in SAMPLERS {
        let d = deps.get(*s).unwrap_or_else(|| panic!("kiln-scheduler has a module {s}"));
        for other in d.iter().filter(|m| SAMPLERS.contains(&m.as_str())) {
            wrong.push(format!("{s} imports {other}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Files of the repository that cite something outside it: the shared design notes kiln started
/// from (`DESIGN §…`, `../shared`). The facts the code needs are in docs/.
#[test]
fn nothing_cites_a_file_outside_the_repository() {
    let mut wrong = Vec::new();
    let mut stack = vec![root()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if p.is_dir() {
                if !matches!(name.as_str(), ".git" | "target" | "fixtures" | "kiln-shapes") {
                    stack.push(p);
                }
                continue;
            }
            if !["rs", "md", "toml", "sh", "py", "yml", "yaml"].iter().any(|x| name.ends_with(&format!(".{x}")))
                && name != "run"
            {
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            // (this file names what it looks for)
            if p.ends_with("tests/architecture.rs") {
                continue;
            }
            for (n, line) in text.lines().enumerate() {
                if line.contains("DESIGN §") || line.contains("DESIGN.md") || line.contains("../shared") {
                    wrong.push(format!("{}:{}: {}", p.strip_prefix(root()).unwrap().display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "citations of files outside the repository:\n{}", wrong.join("\n"));
}
