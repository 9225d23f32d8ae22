//! No import cycle between the agent's modules: each module of `ayaflow/src` may use only
//! modules below it, so a change to one never has to know the modules that use it.
//!
//! The graph is read from the sources: every `crate::a::b` path (in `use` items, also inside
//! braces, and in expressions), and `super::` paths resolved against the file's module. Edges are
//! taken at two levels: between the crate's top-level modules, and between the submodules of
//! one directory module (`store::write` -> `store::types`). Test modules are left out: a test
//! may reach anywhere.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// The module path of a source file: `src/store/write.rs` -> `["store", "write"]`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The text of `source` without comments, string literals and `#[cfg(test)]` items (a test
/// module declared inline is cut from its attribute to the end of the file: by convention it
/// comes last).
fn code_only(source: &str) -> String {
    let cut = source.find("#[cfg(test)]").unwrap_or(source.len());
    let mut out = String::new();
    for line in source[..cut].lines() {
        let line = line.split("//").next().unwrap_or("");
        let mut in_str = false;
        for c in line.chars() {
            if c == '"' {
                in_str = !in_str;
            } else if !in_str {
                out.push(c);
            }
        }
        out.push('\n');
    }
    out
}

/// Every module path a file's code names, absolute from the crate root: `crate::x::y` and
/// `super::z` (resolved against `here`), including the paths of `use crate::{a, b::c}` groups.
fn referenced(code: &str, here: &[String]) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    for root in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(at) = code[from..].find(root) {
            let begin = from + at;
            from = begin + root.len();
            let prev = code[..begin].chars().last();
            if prev.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let base: Vec<String> = if root == "crate::" {
                Vec::new()
            } else {
                // The parent of this file's module (`module_of` already maps a mod.rs to its
                // directory's module).
                let mut b = here.to_vec();
                b.pop();
                b
            };
            collect_paths(&code[from..], base, &mut found);
        }
    }
    found
}

/// Reads a path (or a `{...}` group of paths) at the start of `rest`, appending each to `out`.
fn collect_paths(rest: &str, base: Vec<String>, out: &mut Vec<Vec<String>>) {
    let rest = rest.trim_start();
    if let Some(group) = rest.strip_prefix('{') {
        let mut depth = 0;
        let mut item = String::new();
        let mut items = Vec::new();
        for c in group.chars() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => break,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    items.push(std::mem::take(&mut item));
                    continue;
                }
                _ => {}
            }
            item.push(c);
        }
        items.push(item);
        for i in items {
            collect_paths(&i, base.clone(), out);
        }
        return;
    }
    let mut path = base;
    let mut seg = String::new();
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_alphanumeric() || c == '_' {
            seg.push(c);
        } else if c == ':' && chars.peek() == Some(&':') {
            chars.next();
            path.push(std::mem::take(&mut seg));
            if chars.peek() == Some(&'{') {
                let tail: String = chars.collect();
                collect_paths(&tail, path, out);
                return;
            }
        } else {
            break;
        }
    }
    if !seg.is_empty() && seg != "self" {
        path.push(seg);
    }
    out.push(path);
}

/// A cycle in `graph`, as the list of its nodes, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|s| s == n) {
            let mut cycle = stack[i..].to_vec();
            cycle.push(n.to_string());
            return Some(cycle);
        }
        if done.contains(n) {
            return None;
        }
        stack.push(n.to_string());
        for m in graph.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, graph, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for n in graph.keys() {
        if let Some(c) = visit(n, graph, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

/// Edges between modules that share the parent `prefix` (the crate root for `[]`).
fn edges_under(src: &Path, prefix: &[String]) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let here = module_of(src, &f);
        if here.len() <= prefix.len() || here[..prefix.len()] != *prefix {
            continue;
        }
        let from = here[prefix.len()].clone();
        if from == "tests"
            || f.file_name()
                .is_some_and(|n| n.to_string_lossy().ends_with("tests.rs"))
        {
            continue;
        }
        let code = code_only(&std::fs::read_to_string(&f).unwrap());
        let entry = graph.entry(from.clone()).or_default();
        for path in referenced(&code, &here) {
            if path.len() > prefix.len() && path[..prefix.len()] == *prefix {
                let to = &path[prefix.len()];
                if *to != from && sibling_exists(src, prefix, to) {
                    entry.insert(to.clone());
                }
            }
        }
    }
    graph
}

fn sibling_exists(src: &Path, prefix: &[String], name: &str) -> bool {
    let dir = prefix.iter().fold(src.to_path_buf(), |d, p| d.join(p));
    dir.join(format!("{name}.rs")).exists() || dir.join(name).join("mod.rs").exists()
}

fn src() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn the_top_level_modules_have_no_import_cycle() {
    let graph = edges_under(&src(), &[]);
    assert!(
        graph.contains_key("agent") && graph["agent"].contains("pipeline"),
        "the graph is read: {graph:?}"
    );
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "module import cycle: {}. Move what both need into a module that depends on neither \
             (stats next to their producer, readings as plain values)",
            cycle.join(" -> ")
        );
    }
}

#[test]
fn the_submodules_of_each_directory_have_no_import_cycle() {
    let src = src();
    let mut dirs = Vec::new();
    fn walk(dir: &Path, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                let mut pre = prefix.clone();
                pre.push(p.file_name().unwrap().to_string_lossy().to_string());
                out.push(pre.clone());
                walk(&p, pre, out);
            }
        }
    }
    walk(&src, Vec::new(), &mut dirs);
    assert!(!dirs.is_empty());
    for d in dirs {
        let graph = edges_under(&src, &d);
        if let Some(cycle) = find_cycle(&graph) {
            panic!(
                "import cycle inside {}: {}",
                d.join("::"),
                cycle.join(" -> ")
            );
        }
    }
}

#[test]
fn a_cycle_is_found() {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("c".into());
    assert_eq!(find_cycle(&g), None);
    g.entry("c".into()).or_default().insert("a".into());
    assert_eq!(find_cycle(&g).unwrap(), ["a", "b", "c", "a"]);
    let mut found = Vec::new();
    collect_paths(
        "{api::ApiStats, store::{ErrorKind, x}};",
        Vec::new(),
        &mut found,
    );
    assert_eq!(
        found,
        [
            vec!["api", "ApiStats"],
            vec!["store", "ErrorKind"],
            vec!["store", "x"]
        ]
    );
}
