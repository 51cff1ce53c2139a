//! The module graph the architecture promises, read from the source (ARCHITECTURE.md,
//! "The rooms"): the crate is at most twelve top-level modules, each declared in `lib.rs`
//! with one line; every import goes down a layer (nothing imports upward or sideways
//! between rooms of one layer), at most eight layers deep, with no cycle; the pure
//! decision code (`policy`) sits at the bottom and imports nothing that does IO; the
//! monitors are siblings (none imports another monitor, a slot or the supervisor), and
//! the slot imports no monitor.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file below `dir`, with its path relative to `src/`.
fn files(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p.strip_prefix(src()).unwrap().to_path_buf();
                out.push((rel, std::fs::read_to_string(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// The product's code of a file: test modules may reach anywhere.
fn product(text: &str) -> &str {
    text.split("#[cfg(test)]").next().unwrap()
}

/// Every `crate::` path a file names, written out (`use crate::{a, b::c}` gives `a` and
/// `b::c`).
fn crate_paths(code: &str) -> Vec<String> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut out = vec![];
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + 7..];
        if let Some(list) = rest.strip_prefix('{') {
            let list: String = list.chars().take_while(|c| *c != '}').collect();
            out.extend(
                list.split(',')
                    .map(|n| n.split_whitespace().next().unwrap_or("").to_string())
                    .filter(|n| !n.is_empty() && n != "self"),
            );
        } else {
            let path: String = rest.chars().take_while(|c| ident(*c)).collect();
            let path = path.trim_end_matches(':').to_string();
            if !path.is_empty() {
                out.push(path);
            }
        }
    }
    out
}

/// Top-level module of a source file: `src/slot/listen.rs` → `slot`.
fn module_of(rel: &Path) -> String {
    let first = rel.components().next().unwrap();
    first
        .as_os_str()
        .to_string_lossy()
        .trim_end_matches(".rs")
        .to_string()
}

/// Every top-level module and the top-level modules it names through `crate::`.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (rel, text) in files(&src()) {
        let m = module_of(&rel);
        if m == "main" || m == "lib" {
            continue;
        }
        let deps = g.entry(m.clone()).or_default();
        for p in crate_paths(product(&text)) {
            let top = p.split("::").next().unwrap().to_string();
            if top != m {
                deps.insert(top);
            }
        }
    }
    g
}

/// The layers, top to bottom (ARCHITECTURE.md): a module imports only from layers
/// below its own.
const LAYERS: &[&[&str]] = &[
    &["cli"],
    &["supervisor"],
    &["slot", "monitors", "docker"],
    &["status"],
    &["runner", "jobs"],
    &["github"],
    &["config", "os"],
    &["policy"],
];

fn layer_of(m: &str) -> usize {
    LAYERS
        .iter()
        .position(|l| l.contains(&m))
        .unwrap_or_else(|| panic!("{m} is in no layer: add it to LAYERS and ARCHITECTURE.md"))
}

#[test]
fn the_crate_is_at_most_twelve_rooms_each_named_in_one_line_of_lib_rs() {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    let lines: Vec<&str> = lib.lines().collect();
    let mut declared = BTreeSet::new();
    for (i, l) in lines.iter().enumerate() {
        let Some(m) = l.strip_prefix("pub mod ").and_then(|m| m.strip_suffix(';')) else {
            assert!(!l.starts_with("mod "), "lib.rs: {l}: every room is public");
            continue;
        };
        assert!(
            i > 0
                && lines[i - 1].starts_with("/// ")
                && (i < 2 || !lines[i - 2].starts_with("///")),
            "lib.rs: {m} wants exactly one line saying what it holds"
        );
        declared.insert(m.to_string());
    }
    assert!(
        declared.len() <= 12,
        "{} rooms: {declared:?}",
        declared.len()
    );
    let on_disk: BTreeSet<String> = std::fs::read_dir(src())
        .unwrap()
        .flatten()
        .map(|e| {
            e.file_name()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_string()
        })
        .filter(|n| n != "lib" && n != "main")
        .collect();
    assert_eq!(declared, on_disk, "lib.rs declares what src/ holds");
    let layered: BTreeSet<String> = LAYERS
        .iter()
        .flat_map(|l| l.iter().map(|m| m.to_string()))
        .collect();
    assert_eq!(declared, layered, "every room is in one layer");
}

#[test]
fn every_import_goes_down_a_layer_at_most_eight_deep() {
    let g = graph();
    for (m, deps) in &g {
        for d in deps {
            assert!(
                layer_of(d) > layer_of(m),
                "{m} (layer {}) imports {d} (layer {}): nothing imports upward or sideways",
                LAYERS.len() - layer_of(m),
                LAYERS.len() - layer_of(d)
            );
        }
    }
    // The longest import chain, counted in modules.
    fn depth(m: &str, g: &BTreeMap<String, BTreeSet<String>>) -> usize {
        1 + g
            .get(m)
            .into_iter()
            .flatten()
            .map(|d| depth(d, g))
            .max()
            .unwrap_or(0)
    }
    let deepest = g.keys().map(|m| depth(m, &g)).max().unwrap();
    assert!(deepest <= 8, "{deepest} deep");
    assert!(
        g["policy"].is_empty(),
        "the pure code is at the bottom: {:?}",
        g["policy"]
    );
}

/// What pure code must not use: the file system, the network, processes, tasks,
/// channels, logging, the system's own calls.
const IO: &[&str] = &[
    "tokio::sync",
    "tokio::task",
    "tokio::fs",
    "tokio::net",
    "tokio::process",
    "tokio::spawn",
    "tokio::signal",
    "std::fs",
    "std::net",
    "std::process",
    "std::env",
    "std::thread",
    "tracing::",
    "nix::",
    "libc::",
    "zbus::",
    "bollard::",
    "reqwest::Client",
    "socket2::",
];

#[test]
fn pure_modules_import_no_module_that_does_io() {
    let files = files(&src().join("policy"));
    assert!(files.len() >= 10, "{}", files.len());
    for (rel, text) in &files {
        let code = product(text);
        for p in crate_paths(code) {
            assert!(
                p.starts_with("policy"),
                "{}: imports crate::{p}: pure code imports only pure code",
                rel.display()
            );
        }
        for io in IO {
            assert!(!code.contains(io), "{} uses {io}", rel.display());
        }
    }
}

/// What the pure slot machine may import: types and pure functions, nothing that does IO
/// (no `github`, no `Board`, no `Host`).
const MACHINE_MAY_IMPORT: &[&str] = &[
    "crate::policy::cause",
    "crate::policy::events",
    "crate::policy::exit",
    "crate::policy::tcpinfo",
    "crate::policy::watchdog::Watchdog",
    "crate::policy::states::Mode",
    "crate::policy::states::SlotState",
    "crate::policy::machine",
];

#[test]
fn the_slot_machine_imports_nothing_that_does_io() {
    let dir = src().join("policy/machine");
    let mut files = 0;
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with("tests.rs") {
            continue;
        }
        files += 1;
        let text = std::fs::read_to_string(e.path()).unwrap();
        let code = product(&text);
        // `use crate::{a, b}` is spelt out as paths here too.
        assert!(
            !code.contains("use crate::{"),
            "{name}: one path per import"
        );
        for (i, _) in code.match_indices("crate::") {
            let path: String = code[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            let path = path.trim_end_matches(':');
            let braced = code[i + path.len()..].starts_with("::{");
            let ok = MACHINE_MAY_IMPORT
                .iter()
                .any(|a| path.starts_with(a) || (braced && a.starts_with(path)));
            assert!(ok, "{name} imports {path}: the machine must stay pure");
        }
        for io in IO.iter().chain(&["rand::"]) {
            assert!(!code.contains(io), "{name} uses {io}");
        }
    }
    assert!(files >= 2, "the listener machine and the slot machine");
}

/// The monitors: each folder or file of `src/monitors`, and the two on the Docker
/// engine (`docker::disk`, `docker::autoheal`).
fn monitors() -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (rel, text) in files(&src().join("monitors")) {
        let name = rel
            .components()
            .nth(1)
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if name == "mod" {
            continue;
        }
        m.entry(format!("monitors::{name}"))
            .or_default()
            .extend(crate_paths(product(&text)));
    }
    for name in ["disk", "autoheal"] {
        let text = std::fs::read_to_string(src().join(format!("docker/{name}.rs"))).unwrap();
        m.insert(format!("docker::{name}"), crate_paths(product(&text)));
    }
    m
}

#[test]
fn monitors_are_siblings_and_the_slot_depends_on_none_of_them() {
    let monitors = monitors();
    assert!(monitors.len() >= 12, "{:?}", monitors.keys());
    for (m, paths) in &monitors {
        for p in paths {
            let other = monitors
                .keys()
                .find(|o| *o != m && (p == *o || p.starts_with(&format!("{o}::"))));
            assert!(
                other.is_none() && !p.starts_with("slot") && !p.starts_with("supervisor"),
                "monitor {m} imports crate::{p}"
            );
        }
    }
    for (rel, text) in files(&src().join("slot")) {
        for p in crate_paths(product(&text)) {
            assert!(
                !monitors
                    .keys()
                    .any(|o| p == *o || p.starts_with(&format!("{o}::"))),
                "the slot ({}) imports the monitor crate::{p}",
                rel.display()
            );
        }
    }
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let g = graph();
    // Depth-first search for a cycle.
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if done.contains(n) {
            return;
        }
        if let Some(i) = path.iter().position(|p| p == n) {
            panic!("import cycle: {} -> {n}", path[i..].join(" -> "));
        }
        path.push(n.to_string());
        for d in g.get(n).into_iter().flatten() {
            visit(d, g, path, done);
        }
        path.pop();
        done.insert(n.to_string());
    }
    let mut done = BTreeSet::new();
    for n in g.keys() {
        visit(n, &g, &mut vec![], &mut done);
    }
}
