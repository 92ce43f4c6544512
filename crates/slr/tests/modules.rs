//! The house rule of the binary crate: no circle of imports between its modules.
//!
//! Every file of `crates/slr/src` is a module; a file that names `crate::a::b` or `super::x`
//! imports the module file that defines it. The threads of the router talk through the mailbox
//! (`mailbox.rs`) precisely so that health checks and the control thread depend on it and
//! nothing depends back: this test keeps it that way. Run it alone with
//! `cargo test -p slr --test modules`; it prints the graph with `-- --nocapture`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path (`router::packet_loop`) of a file under src/.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts
        .last()
        .is_some_and(|p| p == "mod" || p == "main" || p == "lib")
    {
        parts.pop();
    }
    parts.join("::")
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

/// The paths a file's code names: `crate::x::y` as `x::y`, `super::z` resolved against the
/// file's module. Comments and the inline test module are left out.
fn referenced_paths(module: &str, is_mod_file: bool, text: &str) -> Vec<String> {
    let code: String = text
        .split("\n#[cfg(test)]")
        .next()
        .unwrap()
        .lines()
        .map(|l| l.split("//").next().unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    let parent: Vec<&str> = {
        let mut p: Vec<&str> = module.split("::").filter(|s| !s.is_empty()).collect();
        // `super` in a module file (x/mod.rs, main.rs) is the parent of x; in x/y.rs it is x.
        if !is_mod_file || !p.is_empty() {
            p.pop();
        }
        p
    };
    let mut out = Vec::new();
    // `mod x;` in this file: `x::...` names the child module x.
    let own: Vec<&str> = module.split("::").filter(|s| !s.is_empty()).collect();
    let children: Vec<String> = code
        .lines()
        .filter_map(|l| {
            let l = l.trim().strip_prefix("pub ").unwrap_or(l.trim());
            l.strip_prefix("mod ")?.strip_suffix(';').map(str::to_owned)
        })
        .collect();
    let mut prefixes: Vec<(String, Vec<&str>)> =
        vec![("crate::".into(), Vec::new()), ("super::".into(), parent)];
    for c in &children {
        prefixes.push((
            format!("{c}::"),
            own.iter().copied().chain([c.as_str()]).collect(),
        ));
    }
    for (prefix, base) in prefixes {
        let mut rest = code.as_str();
        while let Some(i) = rest.find(prefix.as_str()) {
            let before = rest[..i].chars().last();
            rest = &rest[i + prefix.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let path: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            // `use crate::{a, b::c}` lists: each item is a path of its own.
            let items: Vec<String> = if rest[path.len()..].starts_with('{') {
                let group = &rest[path.len() + 1..rest.find('}').unwrap_or(rest.len())];
                group
                    .split(',')
                    .map(|s| format!("{path}{}", s.trim()))
                    .collect()
            } else {
                vec![path]
            };
            for item in items {
                let mut full: Vec<String> = base.iter().map(|s| s.to_string()).collect();
                full.extend(item.split("::").filter(|s| !s.is_empty()).map(String::from));
                out.push(full.join("::"));
            }
        }
    }
    out
}

#[test]
fn no_circle_of_imports_between_modules() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(&src, f)).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let module = module_of(&src, f);
        let is_mod_file = f
            .file_name()
            .is_some_and(|n| n == "mod.rs" || n == "main.rs");
        let text = std::fs::read_to_string(f).unwrap();
        let edges = graph.entry(module.clone()).or_default();
        for path in referenced_paths(&module, is_mod_file, &text) {
            // The longest module that is a prefix of the path defines the name.
            let mut parts: Vec<&str> = path.split("::").collect();
            while !parts.is_empty() && !modules.contains(&parts.join("::")) {
                parts.pop();
            }
            let target = parts.join("::");
            if !parts.is_empty() && target != module {
                edges.insert(target);
            }
        }
    }
    for (m, to) in &graph {
        println!(
            "{} -> {}",
            if m.is_empty() { "main" } else { m },
            to.iter().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    assert!(graph.len() > 10, "the source tree was read: {graph:?}");
    assert!(
        graph["router"].contains("mailbox") && graph["health"].contains("mailbox"),
        "the import reader sees the router's imports: {graph:?}"
    );
    if let Some(circle) = find_circle(&graph) {
        panic!("a circle of imports: {}", circle.join(" -> "));
    }
}

/// A circle of the graph (its modules in order, the first repeated at the end), if any.
fn find_circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == m) {
            let mut circle = path[at..].to_vec();
            circle.push(m.to_owned());
            return Some(circle);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_owned());
        for t in graph.get(m).into_iter().flatten() {
            if let Some(c) = visit(t, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(m.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|m| visit(m, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_import_reader_and_the_search_find_a_circle() {
    // A parent importing its child, and the child naming its parent through super::.
    let parent = referenced_paths("a", true, "mod b;\nuse b::X;\nfn f() { crate::c::g() }");
    assert_eq!(parent, ["c::g", "a::b::X"]);
    let child = referenced_paths("a::b", false, "use super::{helper, d::Y};\n// crate::z\n");
    assert_eq!(child, ["a::helper", "a::d::Y"]);
    let graph: BTreeMap<String, BTreeSet<String>> =
        [("a", vec!["a::b", "c"]), ("a::b", vec!["a"]), ("c", vec![])]
            .into_iter()
            .map(|(m, to)| (m.to_owned(), to.into_iter().map(String::from).collect()))
            .collect();
    assert_eq!(find_circle(&graph).unwrap(), ["a", "a::b", "a"]);
    let mut acyclic = graph.clone();
    acyclic.get_mut("a::b").unwrap().clear();
    assert_eq!(find_circle(&acyclic), None);
}
