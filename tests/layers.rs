//! The tree shows the architecture (docs/ARCHITECTURE.md, "Modules"): no
//! module of src/ may reach, through `crate::` and `super::` paths, a module
//! that reaches it back. Read from the sources, so a new circle fails here
//! and not in a reviewer's head.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// `key/args.rs` → `key::args`, `store/mod.rs` → `store`.
fn module_of(rel: &str) -> String {
    let stem = rel.trim_end_matches(".rs");
    let stem = stem.strip_suffix("/mod").unwrap_or(stem);
    stem.replace('/', "::")
}

fn walk(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            walk(&p, root, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            out.push((rel, std::fs::read_to_string(&p).unwrap()));
        }
    }
}

/// The code outside unit tests and comments.
fn code(text: &str) -> String {
    let body = text.split("#[cfg(test)]\nmod ").next().unwrap();
    body.lines().map(|l| l.split("//").next().unwrap()).collect::<Vec<_>>().join("\n")
}

/// Every `crate::a::b…` and `super::…` path in `text`, as written.
fn paths(text: &str) -> Vec<(bool, String)> {
    let mut out = Vec::new();
    for (prefix, is_super) in [("crate::", false), ("super::", true)] {
        let mut rest = text;
        while let Some(i) = rest.find(prefix) {
            let before = rest[..i].chars().last();
            rest = &rest[i + prefix.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let end = rest.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')).unwrap_or(rest.len());
            out.push((is_super, rest[..end].trim_end_matches(':').to_string()));
        }
    }
    out
}

/// The longest module in `mods` that `path` starts with.
fn resolve(path: &str, mods: &BTreeSet<String>) -> Option<String> {
    let segs: Vec<&str> = path.split("::").collect();
    (1..=segs.len()).rev().map(|n| segs[..n].join("::")).find(|m| mods.contains(m))
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&root, &root, &mut files);
    let mods: BTreeSet<String> = files.iter().map(|(r, _)| module_of(r)).collect();
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (rel, text) in &files {
        let m = module_of(rel);
        if m == "lib" || m == "main" {
            continue;
        }
        // A `mod.rs`'s `super` is its folder's parent; a file's is its folder.
        let parent = match m.rsplit_once("::") {
            Some((p, _)) => p.to_string(),
            None => String::new(),
        };
        for (is_super, p) in paths(&code(text)) {
            let full = match (is_super, parent.is_empty()) {
                (false, _) => p,
                (true, true) => continue,
                (true, false) => format!("{parent}::{p}"),
            };
            let Some(t) = resolve(&full, &mods) else { continue };
            // A module naming its own folder (`super::X` re-exported by mod.rs)
            // is the usual Rust shape, not a layer going up.
            if t != m && !m.starts_with(&format!("{t}::")) && t != "lib" {
                g.entry(m.clone()).or_default().insert(t);
            }
        }
    }
    g
}

/// A path back to `start` through `g`, if there is one.
fn circle_from(g: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    let mut stack = vec![(start.to_string(), vec![start.to_string()])];
    let mut seen = BTreeSet::new();
    while let Some((m, trail)) = stack.pop() {
        for t in g.get(&m).into_iter().flatten() {
            if t == start {
                let mut c = trail.clone();
                c.push(t.clone());
                return Some(c);
            }
            if seen.insert(t.clone()) {
                let mut next = trail.clone();
                next.push(t.clone());
                stack.push((t.clone(), next));
            }
        }
    }
    None
}

#[test]
fn no_module_reaches_back_to_itself() {
    let g = graph();
    // The reader must see the real graph, or the test proves nothing.
    assert!(g.get("backend").is_some_and(|t| t.contains("key")), "graph misread: {g:#?}");
    assert!(g.get("key::digest").is_some_and(|t| t.contains("cachedir::beneath")), "graph misread: {g:#?}");
    let circles: Vec<String> = g.keys().filter_map(|m| circle_from(&g, m)).map(|c| c.join(" → ")).collect();
    assert!(circles.is_empty(), "import circles:\n{}", circles.join("\n"));
}

#[test]
fn the_reader_finds_a_planted_circle() {
    let mut g = graph();
    g.entry("cachedir::layout".into()).or_default().insert("store::paths".into());
    assert!(circle_from(&g, "cachedir::layout").is_some());
}
