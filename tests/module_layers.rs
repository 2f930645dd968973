//! The tree's rules, checked on the source (ARCHITECTURE.md "Rules of the tree"): in every
//! crate, the top-level modules import each other without a cycle, and so do the sibling files
//! of every folder; no product source file is over 600 lines (unit tests live in their own
//! `tests.rs` files, which are not counted).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

const CRATES: &[&str] = &["src", "lb/src", "broker/src", "protocol/src", "shared/src"];
const MAX_LINES: usize = 600;

/// A source file and its module path (`["connection", "inbound"]`; the crate root is `[]`).
struct Module {
    path: PathBuf,
    name: Vec<String>,
    text: String,
}

fn modules(root: &Path) -> Vec<Module> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
                continue;
            }
            if p.extension().and_then(|x| x.to_str()) != Some("rs") {
                continue;
            }
            let rel = p.strip_prefix(root).unwrap().with_extension("");
            let mut name: Vec<String> = rel
                .iter()
                .map(|c| c.to_string_lossy().into_owned())
                .collect();
            if matches!(
                name.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                name.pop();
            }
            if name.iter().any(|n| n == "tests" || n.ends_with("_tests")) {
                continue;
            }
            let text = fs::read_to_string(&p).unwrap();
            out.push(Module {
                path: p,
                name,
                text,
            });
        }
    }
    out
}

/// The text before an inline `#[cfg(test)] mod tests { .. }`, without line comments.
fn product_code(text: &str) -> String {
    let end = text.find("#[cfg(test)]\nmod tests {").unwrap_or(text.len());
    text[..end]
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The module paths a file names: `crate::a::b`, `super::c`, `crate::{a, b::c}`.
fn referenced(m: &Module, known: &BTreeSet<Vec<String>>) -> BTreeSet<Vec<String>> {
    let code = product_code(&m.text);
    let mut refs = BTreeSet::new();
    let mut add = |base: Vec<String>, rest: &str| {
        let mut path = base;
        for seg in rest.split("::") {
            let seg: String = seg
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if seg.is_empty() {
                break;
            }
            path.push(seg);
        }
        // the longest prefix that is a module of this crate
        while !path.is_empty() && !known.contains(&path) {
            path.pop();
        }
        if !path.is_empty() {
            refs.insert(path);
        }
    };
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + 7..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for item in group.split(',') {
                add(Vec::new(), item.trim());
            }
        } else {
            add(Vec::new(), rest);
        }
    }
    for (i, _) in code.match_indices("super::") {
        // `super::super::x` is counted once, from its first `super`
        if code[..i].ends_with("super::") {
            continue;
        }
        // a file's `super` is its folder, whether it is `a/b.rs` or `a/b/mod.rs`
        let mut base = m.name.clone();
        base.pop();
        let mut rest = &code[i + 7..];
        while let Some(r) = rest.strip_prefix("super::") {
            base.pop();
            rest = r;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for item in group.split(',') {
                add(base.clone(), item.trim());
            }
        } else {
            add(base, rest);
        }
    }
    refs
}

/// Edges between the children of `parent` (a module's own descendants count as it).
fn sibling_edges(
    mods: &[Module],
    known: &BTreeSet<Vec<String>>,
    parent: &[String],
) -> BTreeMap<String, BTreeSet<String>> {
    let child_of = |p: &[String]| -> Option<String> {
        (p.len() > parent.len() && p.starts_with(parent)).then(|| p[parent.len()].clone())
    };
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for m in mods {
        let Some(from) = child_of(&m.name) else {
            continue;
        };
        for r in referenced(m, known) {
            if let Some(to) = child_of(&r) {
                if to != from {
                    edges.entry(from.clone()).or_default().insert(to);
                }
            }
        }
    }
    edges
}

fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|s| s == n) {
            let mut c = stack[i..].to_vec();
            c.push(n.to_string());
            return Some(c);
        }
        if done.contains(n) {
            return None;
        }
        stack.push(n.to_string());
        for m in edges.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, edges, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for n in edges.keys() {
        if let Some(c) = visit(n, edges, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn no_module_imports_a_module_that_imports_it() {
    let mut problems = Vec::new();
    for krate in CRATES {
        let mods = modules(&root().join(krate));
        let known: BTreeSet<Vec<String>> = mods.iter().map(|m| m.name.clone()).collect();
        // every folder, the crate root included: its children form a graph without a cycle
        let folders: BTreeSet<Vec<String>> = mods
            .iter()
            .filter(|m| {
                m.path
                    .file_stem()
                    .is_some_and(|s| s == "mod" || s == "lib" || s == "main")
            })
            .map(|m| m.name.clone())
            .chain(
                mods.iter()
                    .filter(|m| m.name.len() > 1)
                    .map(|m| m.name[..m.name.len() - 1].to_vec()),
            )
            .collect();
        for f in folders {
            if let Some(c) = find_cycle(&sibling_edges(&mods, &known, &f)) {
                problems.push(format!("{krate}/{}: {}", f.join("/"), c.join(" -> ")));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "module cycles:\n{}",
        problems.join("\n")
    );
}

#[test]
fn no_product_source_file_is_over_600_lines() {
    let mut long = Vec::new();
    for krate in CRATES {
        for m in modules(&root().join(krate)) {
            let n = product_code(&m.text).lines().count();
            if n > MAX_LINES {
                long.push(format!("{} ({n} lines)", m.path.display()));
            }
        }
    }
    assert!(
        long.is_empty(),
        "over {MAX_LINES} lines:\n{}",
        long.join("\n")
    );
}

#[test]
fn the_checker_finds_a_cycle() {
    let mut e: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    e.entry("a".into()).or_default().insert("b".into());
    e.entry("b".into()).or_default().insert("c".into());
    assert_eq!(find_cycle(&e), None);
    e.entry("c".into()).or_default().insert("a".into());
    assert_eq!(find_cycle(&e).map(|c| c.len()), Some(4));
}
