//! The code's layout, checked: no module cycle in any crate (a module that uses another never
//! is used back by it, directly or through others), so a reader can follow any module's
//! dependencies one way. Test code (`#[cfg(test)]` modules) is left out.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Result;
use keybrake_e2e::workspace_root;

/// The top-level module a file belongs to (`src/vaultkey/mod.rs` and `src/vaultkey/x.rs` are
/// `vaultkey`), or `None` for the crate root.
fn module_of(src: &std::path::Path, file: &std::path::Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?.to_owned();
    let name = first.strip_suffix(".rs").unwrap_or(&first).to_owned();
    (!matches!(name.as_str(), "lib" | "main")).then_some(name)
}

/// The top-level modules `text` names after `crate::`, including inside `use crate::{...}`.
fn used(text: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level items of the group: `a::b`, `c::{d, e}`, `f`.
            let (mut depth, mut item) = (0, String::new());
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.insert(ident(item.trim()));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 || item.is_empty() {
                    item.push(c);
                }
            }
            out.insert(ident(item.trim()));
        } else {
            out.insert(ident(rest));
        }
    }
    out.retain(|m| !m.is_empty() && m != "self");
    out
}

fn rust_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            rust_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// A cycle in `graph`, as the modules on it, if there is one.
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == m) {
            let mut c = path[i..].to_vec();
            c.push(m.to_owned());
            return Some(c);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_owned());
        for next in graph.get(m).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
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
fn no_crate_has_a_module_cycle() -> Result<()> {
    let root = workspace_root();
    let crates = [
        "crds",
        "ledger",
        "ledger-model",
        "operator",
        "proxy",
        "control-plane",
        "cli",
        "tests",
        "redis-harness",
    ];
    for krate in crates {
        let src = root.join(krate).join("src");
        let mut files = Vec::new();
        rust_files(&src, &mut files)?;
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for file in &files {
            let Some(module) = module_of(&src, file) else {
                continue;
            };
            let text = std::fs::read_to_string(file)?;
            let production = text.split("#[cfg(test)]").next().unwrap_or("");
            let uses = used(production);
            let entry = graph.entry(module.clone()).or_default();
            entry.extend(uses.into_iter().filter(|u| *u != module));
        }
        // A crate of one file (redis-harness) has no modules to cycle through.
        assert!(
            graph.len() > 1 || files.len() == 1 || krate == "tests",
            "{krate}: no modules found"
        );
        if let Some(c) = cycle(&graph) {
            panic!("{krate}: module cycle {}", c.join(" -> "));
        }
    }
    Ok(())
}

#[test]
fn the_scanner_sees_grouped_and_plain_uses_and_finds_a_cycle() {
    let u = used("use crate::{a::{b, c}, d, e::f};\nfn x() { crate::g::h(); }");
    assert_eq!(
        u.into_iter().collect::<Vec<_>>(),
        ["a", "d", "e", "g"].map(str::to_owned)
    );
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a".to_owned(), BTreeSet::from(["b".to_owned()])),
        ("b".to_owned(), BTreeSet::from(["a".to_owned()])),
    ]
    .into();
    assert!(cycle(&graph).is_some());
}
