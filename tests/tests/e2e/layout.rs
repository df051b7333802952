//! The code's layout, checked: no module cycle in any crate (a module that uses another never
//! is used back by it, directly or through others), so a reader can follow any module's
//! dependencies one way. Every file is a module, the crate root too: `adapters/stripe/mod.rs`
//! using `super::table` depends on `adapters::table`, and `adapters/mod.rs` calling
//! `stripe::plan` depends on `adapters::stripe`, so a parent that dispatches to its children
//! cannot also hold what they use (that goes in a sibling). A path naming an item depends on the
//! module that holds the item's name (`crate::adapters::Request` on `adapters`); a parent's
//! `mod x;` is no use of `x`. Test code (`#[cfg(test)]` items and the modules declared under
//! one), comments and literals are left out.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use anyhow::Result;
use keybrake_e2e::workspace_root;

/// How finely a crate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grain {
    /// Every module (file), the root included.
    Module,
    /// Only between top-level modules, the root left out: a module's children are one node.
    TopLevel,
}

/// The crates checked, and how finely: every crate at the grain of every module. A crate whose
/// parent module must both use its children and hold what they use could be checked at
/// [`Grain::TopLevel`] for a while; none is.
const CRATES: [(&str, Grain); 12] = [
    ("crds", Grain::Module),
    ("ledger", Grain::Module),
    ("ledger-model", Grain::Module),
    ("operator", Grain::Module),
    ("proxy", Grain::Module),
    ("control-plane", Grain::Module),
    ("runtime", Grain::Module),
    ("redis-harness", Grain::Module),
    ("cli", Grain::Module),
    ("tests", Grain::Module),
    ("audit", Grain::Module),
    ("bench", Grain::Module),
];

/// A module, as its path from the crate root (`["adapters", "stripe"]`; the root is `[]`).
type Module = Vec<String>;

/// The module a file is (`src/adapters/stripe/mod.rs` and `src/adapters/stripe.rs` are
/// `adapters::stripe`, `src/lib.rs` is the root), or `None` for a binary's root (`main.rs`,
/// `bin/`): a crate of its own that uses this one by name.
fn module_of(src: &Path, file: &Path) -> Option<Module> {
    let rel = file.strip_prefix(src).ok()?;
    let mut names: Module = rel
        .components()
        .map(|c| c.as_os_str().to_str().map(str::to_owned))
        .collect::<Option<_>>()?;
    let last = names.pop()?;
    let last = last.strip_suffix(".rs")?;
    match (names.is_empty(), last) {
        (true, "main") => return None,
        (true, "lib") | (false, "mod") => {}
        _ => names.push(last.to_owned()),
    }
    (names.first().map(String::as_str) != Some("bin")).then_some(names)
}

/// `text` with comments and string and character literals blanked, so only code is read.
fn code(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    let blank = |out: &mut Vec<u8>, from: &[u8]| {
        out.extend(from.iter().map(|&c| if c == b'\n' { c } else { b' ' }));
    };
    while i < b.len() {
        let rest = &b[i..];
        let end = if rest.starts_with(b"//") {
            rest.iter().position(|&c| c == b'\n').unwrap_or(rest.len())
        } else if rest.starts_with(b"/*") {
            // Block comments nest in Rust.
            let (mut depth, mut j) = (0, 0);
            while j < rest.len() {
                if rest[j..].starts_with(b"/*") {
                    depth += 1;
                    j += 2;
                } else if rest[j..].starts_with(b"*/") {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            j
        } else if let Some(hashes) = raw_string(rest, i > 0 && ident_byte(b[i - 1])) {
            let close: Vec<u8> = std::iter::once(b'"')
                .chain(std::iter::repeat_n(b'#', hashes))
                .collect();
            let open = rest.iter().position(|&c| c == b'"').unwrap_or(0) + 1;
            rest[open..]
                .windows(close.len())
                .position(|w| w == close.as_slice())
                .map_or(rest.len(), |p| open + p + close.len())
        } else if rest[0] == b'"' {
            let mut j = 1;
            while j < rest.len() && rest[j] != b'"' {
                j += if rest[j] == b'\\' { 2 } else { 1 };
            }
            (j + 1).min(rest.len())
        } else if rest[0] == b'\'' && (rest.get(1) == Some(&b'\\') || rest.get(2) == Some(&b'\'')) {
            // A character literal (`'{'`, `'\''`), not a lifetime.
            let mut j = 2;
            while j < rest.len() && rest[j] != b'\'' {
                j += 1;
            }
            (j + 1).min(rest.len())
        } else {
            out.push(rest[0]);
            i += 1;
            continue;
        };
        blank(&mut out, &rest[..end]);
        i += end.max(1);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The number of `#`s of a raw string (`r"…"`, `br#"…"#`) starting `rest`, if one does.
fn raw_string(rest: &[u8], in_ident: bool) -> Option<usize> {
    if in_ident {
        return None;
    }
    let after = rest
        .strip_prefix(b"br")
        .or_else(|| rest.strip_prefix(b"r"))?;
    let hashes = after.iter().take_while(|&&c| c == b'#').count();
    (after.get(hashes) == Some(&b'"')).then_some(hashes)
}

fn ident_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// `code` without its `#[cfg(test)]` items, and the child modules declared test-only
/// (`#[cfg(test)] mod x;`), whose files are left out too.
fn production(code: &str) -> (String, BTreeSet<String>) {
    const MARK: &str = "#[cfg(test)]";
    let (mut out, mut test_children) = (String::new(), BTreeSet::new());
    let mut rest = code;
    while let Some(at) = rest.find(MARK) {
        out.push_str(&rest[..at]);
        let item = &rest[at + MARK.len()..];
        let b = item.as_bytes();
        // The item ends at its first `;` outside brackets, or with the block it opens.
        let (mut depth, mut end) = (0i32, b.len());
        for (j, &c) in b.iter().enumerate() {
            match c {
                b'(' | b'[' => depth += 1,
                b')' | b']' => depth -= 1,
                b';' if depth == 0 => {
                    end = j + 1;
                    break;
                }
                b'{' if depth == 0 => {
                    end = block_end(b, j);
                    break;
                }
                _ => {}
            }
        }
        let words: Vec<&str> = item[..end]
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| !w.is_empty())
            .collect();
        if item[..end].ends_with(';')
            && let Some(m) = words.iter().position(|w| *w == "mod")
            && let Some(name) = words.get(m + 1)
        {
            test_children.insert((*name).to_owned());
        }
        rest = &item[end..];
    }
    out.push_str(rest);
    (out, test_children)
}

/// The index just past the block whose `{` is at `open`.
fn block_end(b: &[u8], open: usize) -> usize {
    let mut depth = 0;
    for (j, &c) in b.iter().enumerate().skip(open) {
        match c {
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return j + 1;
                }
            }
            _ => {}
        }
    }
    b.len()
}

/// Every path in `code` with a `::` in it, as its segments; a group (`use a::{b, c::{d, self}}`)
/// gives one path per leaf (`a::b`, `a::c::d`, `a::c::self`), a glob ends in `*`.
fn paths(code: &str) -> Vec<Vec<String>> {
    let b = code.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let starts = (ident_byte(b[i]) || b[i] == b'$')
            && !b[i].is_ascii_digit()
            && (i == 0 || !(ident_byte(b[i - 1]) || matches!(b[i - 1], b':' | b'$' | b'.')));
        if !starts {
            i += 1;
            continue;
        }
        let (first, next) = ident(b, i);
        i = tail(b, next, vec![first], false, &mut out);
    }
    out
}

/// The identifier at `i` (`$crate` included) and the index after it.
fn ident(b: &[u8], i: usize) -> (String, usize) {
    let mut j = i + usize::from(b[i] == b'$');
    while j < b.len() && ident_byte(b[j]) {
        j += 1;
    }
    (String::from_utf8_lossy(&b[i..j]).into_owned(), j)
}

/// Reads the rest of a path after its `prefix` from `i`, pushing what it names to `out`
/// (`in_group`: a group's leaf, a path even without a `::`); the index after it.
fn tail(
    b: &[u8],
    mut i: usize,
    mut prefix: Vec<String>,
    in_group: bool,
    out: &mut Vec<Vec<String>>,
) -> usize {
    loop {
        if !b[i..].starts_with(b"::") {
            if in_group || prefix.len() > 1 {
                out.push(prefix);
            }
            return i;
        }
        i += 2;
        match b.get(i) {
            Some(b'{') => {
                i += 1;
                loop {
                    while i < b.len() && b[i].is_ascii_whitespace() {
                        i += 1;
                    }
                    match b.get(i) {
                        None => return i,
                        Some(b'}') => return i + 1,
                        Some(b'*') => {
                            out.push([prefix.clone(), vec!["*".to_owned()]].concat());
                            i += 1;
                        }
                        Some(&c) if ident_byte(c) => {
                            let (seg, next) = ident(b, i);
                            let mut p = prefix.clone();
                            p.push(seg);
                            i = tail(b, next, p, true, out);
                        }
                        Some(_) => {}
                    }
                    // Past a rename (`b as c`) to the next leaf.
                    while i < b.len() && !matches!(b[i], b',' | b'}') {
                        i += 1;
                    }
                    if b.get(i) == Some(&b',') {
                        i += 1;
                    }
                }
            }
            Some(b'*') => {
                prefix.push("*".to_owned());
                out.push(prefix);
                return i + 1;
            }
            Some(&c) if ident_byte(c) => {
                let (seg, next) = ident(b, i);
                prefix.push(seg);
                i = next;
            }
            // A turbofish (`Vec::<u8>`): the path so far.
            _ => {
                if prefix.len() > 1 {
                    out.push(prefix);
                }
                return i;
            }
        }
    }
}

/// The module of the crate that `path`, written in module `at`, names: the longest prefix of
/// its absolute form that is a module (an item inside a module names that module). Paths from
/// `crate::`, `super::`, `self::` and to `at`'s own children (`table::find` in `adapters`);
/// `None` for anything else (`std::`, other crates, local items).
fn resolve(path: &[String], at: &[String], modules: &BTreeSet<Module>) -> Option<Module> {
    let (first, rest) = path.split_first()?;
    let mut abs: Module = match first.as_str() {
        "crate" | "$crate" => rest.to_vec(),
        "self" => [at, rest].concat(),
        "super" => {
            let ups = path.iter().take_while(|s| *s == "super").count();
            let base = at.get(..at.len().checked_sub(ups)?)?;
            [base, &path[ups..]].concat()
        }
        _ => {
            let abs = [at, path].concat();
            modules.contains(&abs[..=at.len()]).then_some(abs)?
        }
    };
    while matches!(abs.last().map(String::as_str), Some("self" | "*")) {
        abs.pop();
    }
    (0..=abs.len())
        .rev()
        .map(|n| abs[..n].to_vec())
        .find(|m| modules.contains(m))
}

/// The module graph of the crate whose sources are `files` under `src`: each module (a file)
/// and the modules its production code names.
fn graph(src: &Path, files: &[(PathBuf, String)]) -> BTreeMap<Module, BTreeSet<Module>> {
    let mut read: BTreeMap<Module, (String, BTreeSet<String>)> = BTreeMap::new();
    for (file, text) in files {
        if let Some(m) = module_of(src, file) {
            read.insert(m, production(&code(text)));
        }
    }
    // Files of test-only modules, and what is under them.
    let test_only: Vec<Module> = read
        .iter()
        .flat_map(|(m, (_, kids))| {
            kids.iter()
                .map(|k| [m.as_slice(), std::slice::from_ref(k)].concat())
        })
        .collect();
    read.retain(|m, _| !test_only.iter().any(|t| m.starts_with(t)));
    let modules: BTreeSet<Module> = read.keys().cloned().collect();
    read.iter()
        .map(|(m, (text, _))| {
            let uses = paths(text)
                .iter()
                .filter_map(|p| resolve(p, m, &modules))
                .filter(|t| t != m)
                .collect();
            (m.clone(), uses)
        })
        .collect()
}

/// `graph` at `grain`, each module named by its path (`adapters::stripe`; the root is `crate`).
fn at_grain(
    graph: &BTreeMap<Module, BTreeSet<Module>>,
    grain: Grain,
) -> BTreeMap<String, BTreeSet<String>> {
    let name = |m: &[String]| match (grain, m.first()) {
        (_, None) => Some("crate".to_owned()),
        (Grain::Module, Some(_)) => Some(m.join("::")),
        (Grain::TopLevel, Some(top)) => Some(top.clone()),
    };
    let keep = |m: &[String]| grain == Grain::Module || !m.is_empty();
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, uses) in graph.iter().filter(|(m, _)| keep(m)) {
        let Some(from) = name(m) else { continue };
        let to: BTreeSet<String> = uses
            .iter()
            .filter(|u| keep(u))
            .filter_map(|u| name(u))
            .filter(|u| *u != from)
            .collect();
        out.entry(from).or_default().extend(to);
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
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
    let mut cycles = Vec::new();
    for (krate, grain) in CRATES {
        let src = root.join(krate).join("src");
        let mut paths = Vec::new();
        rust_files(&src, &mut paths)?;
        let files = paths
            .into_iter()
            .map(|p| Ok((std::fs::read_to_string(&p)?, p)))
            .map(|r: Result<_>| r.map(|(text, p)| (p, text)))
            .collect::<Result<Vec<_>>>()?;
        let graph = at_grain(&graph(&src, &files), grain);
        assert!(
            graph.len() > 1 || matches!(krate, "tests" | "runtime" | "redis-harness"),
            "{krate}: no modules found"
        );
        if let Some(c) = cycle(&graph) {
            cycles.push(format!("{krate}: module cycle {}", c.join(" -> ")));
        }
    }
    assert!(cycles.is_empty(), "{}", cycles.join("\n"));
    Ok(())
}

fn strings(paths: Vec<Vec<String>>) -> Vec<String> {
    paths.into_iter().map(|p| p.join("::")).collect()
}

#[test]
fn the_scanner_sees_grouped_and_plain_uses_and_finds_a_cycle() {
    let text = "use crate::{a::{b, c}, d, e::f};\nfn x() { crate::g::h(); }";
    assert_eq!(
        strings(paths(text)),
        [
            "crate::a::b",
            "crate::a::c",
            "crate::d",
            "crate::e::f",
            "crate::g::h"
        ]
    );
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a".to_owned(), BTreeSet::from(["b".to_owned()])),
        ("b".to_owned(), BTreeSet::from(["a".to_owned()])),
    ]
    .into();
    assert!(cycle(&graph).is_some());
}

#[test]
fn the_scanner_reads_super_self_and_child_paths_to_the_module_they_name() {
    let m = |s: &str| -> Module {
        s.split("::")
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let modules: BTreeSet<Module> = ["", "a", "a::t", "a::s", "a::s::f", "a::s::i"]
        .into_iter()
        .map(m)
        .collect();
    let text = "use super::{f::{self, g}, super::t::{Entry, e}};\n\
                use super::super::*;\nuse self::x::Y as Z;\n\
                fn x() { f::id(); std::mem::drop(1); Self::new(); }";
    let found = paths(text);
    assert_eq!(
        strings(found.clone()),
        [
            "super::f::self",
            "super::f::g",
            "super::super::t::Entry",
            "super::super::t::e",
            "super::super::*",
            "self::x::Y",
            "f::id",
            "std::mem::drop",
            "Self::new",
        ]
    );
    let at = m("a::s::i");
    let named: Vec<Option<String>> = found
        .iter()
        .map(|p| resolve(p, &at, &modules).map(|t| t.join("::")))
        .collect();
    let want = [
        Some("a::s::f"),
        Some("a::s::f"),
        Some("a::t"),
        Some("a::t"),
        Some("a"),
        // An item of the module itself.
        Some("a::s::i"),
        // `f` is no child of `a::s::i`: another crate's, or a local item.
        None,
        None,
        None,
    ];
    assert_eq!(named, want.map(|w| w.map(str::to_owned)));
    // A parent naming its child, and the root naming a top-level module.
    assert_eq!(
        resolve(&["f".into(), "id".into()], &m("a::s"), &modules),
        Some(m("a::s::f"))
    );
    assert_eq!(
        resolve(&["crate".into(), "a".into(), "Call".into()], &at, &modules),
        Some(m("a"))
    );
    assert_eq!(resolve(&["super".into(), "x".into()], &[], &modules), None);
}

#[test]
fn test_code_comments_and_literals_are_no_uses() {
    let text = "// crate::a::b\n/* crate::c /* nested */ crate::d */\n\
                const S: &str = \"crate::e\"; const R: &str = r#\"crate::f\"#;\n\
                const C: char = '{'; fn l<'a>(x: &'a u8) { crate::g::h(); }\n\
                #[cfg(test)]\nmod tests { use crate::i; }\n\
                #[cfg(test)]\nmod testing;\nfn after() { super::j(); }";
    let (code, test_only) = production(&code(text));
    assert_eq!(strings(paths(&code)), ["crate::g::h", "super::j"]);
    assert_eq!(test_only, BTreeSet::from(["testing".to_owned()]));
}

#[test]
fn a_parent_that_dispatches_to_a_child_using_its_helpers_is_a_cycle() {
    let src = Path::new("/src");
    let file = |p: &str, text: &str| (src.join(p), text.to_owned());
    let files = [
        file("lib.rs", "pub mod a;\npub use a::Call;"),
        file(
            "a/mod.rs",
            "mod s;\npub fn helper() {}\npub fn plan() { s::plan() }",
        ),
        file("a/s.rs", "pub fn plan() { super::helper() }"),
        file("a/t.rs", "#[cfg(test)]\nmod x { use crate::a::s; }"),
        file("a/mock.rs", "use super::s;"),
        file("a/m2.rs", "fn x() {}\n#[cfg(test)]\nmod mock;"),
        file("main.rs", "use crate::a;"),
    ];
    let g = graph(src, &files);
    let modules = at_grain(&g, Grain::Module);
    assert_eq!(modules["crate"], BTreeSet::from(["a".to_owned()]));
    assert_eq!(modules["a::t"], BTreeSet::new());
    assert!(!modules.contains_key("a::m2::mock"));
    assert_eq!(
        cycle(&modules),
        Some(["a", "a::s", "a"].map(str::to_owned).to_vec())
    );
    assert_eq!(cycle(&at_grain(&g, Grain::TopLevel)), None);
}

/// The functions of `text` (code before any `#[cfg(test)]`) longer than `max` lines whose doc
/// comment does not say why (with the word "long"), as `name (lines)`.
fn long_functions(text: &str, max: usize) -> Vec<String> {
    let lines: Vec<&str> = text
        .split("#[cfg(test)]")
        .next()
        .unwrap_or("")
        .lines()
        .collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let code = line.trim_start();
        let indent = line.len() - code.len();
        let signature = [
            "fn ",
            "pub fn ",
            "async fn ",
            "pub async fn ",
            "pub(crate) fn ",
        ]
        .iter()
        .find_map(|p| code.strip_prefix(p));
        let Some(rest) = signature else { continue };
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        // The body ends at the first line closing at the signature's indent.
        let Some(len) = lines[i + 1..].iter().position(|l| {
            l.len() > indent && l.starts_with(&" ".repeat(indent)) && l[indent..].starts_with('}')
                || (indent == 0 && l.starts_with('}'))
        }) else {
            continue;
        };
        if len + 2 <= max {
            continue;
        }
        let says_why = lines[..i]
            .iter()
            .rev()
            .take_while(|l| l.trim_start().starts_with("///") || l.trim_start().starts_with("#["))
            .any(|l| l.to_lowercase().contains("long"));
        if !says_why {
            out.push(format!("{name} ({} lines)", len + 2));
        }
    }
    out
}

/// The proxy, where a reader follows one call through the stages: no file over 800 lines and
/// no function over 80 lines without a comment saying why (test code left out).
#[test]
fn proxy_files_and_functions_stay_short() -> Result<()> {
    let src = workspace_root().join("proxy/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files)?;
    let mut found = Vec::new();
    for file in files {
        if file.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&file)?;
        let code_lines = text.lines().count();
        let rel = file.strip_prefix(&src)?.display().to_string();
        if code_lines > 800 {
            found.push(format!("{rel}: {code_lines} lines"));
        }
        found.extend(
            long_functions(&text, 80)
                .into_iter()
                .map(|f| format!("{rel}: {f}")),
        );
    }
    assert!(
        found.is_empty(),
        "too long, without a comment saying why:\n{}",
        found.join("\n")
    );
    Ok(())
}

#[test]
fn the_length_check_sees_a_long_function_and_its_reason() {
    let body = "    x();\n".repeat(90);
    let long = format!("fn plain() {{\n{body}}}\n");
    assert_eq!(long_functions(&long, 80), ["plain (92 lines)"]);
    let said = format!("/// Long on purpose: the steps in order.\nfn said() {{\n{body}}}\n");
    assert!(long_functions(&said, 80).is_empty());
    let short = "fn short() {\n    x();\n}\n";
    assert!(long_functions(short, 80).is_empty());
}
