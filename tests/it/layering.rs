//! The module graph the architecture promises, read from the source: monitors are
//! siblings (none imports another monitor, a slot or the supervisor), the slot never
//! imports a monitor, and no module imports one that imports it back.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module of a source file: `src/slot/listen.rs` → `slot`.
fn module_of(rel: &Path) -> String {
    let mut parts = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned());
    let first = parts.next().unwrap();
    first.trim_end_matches(".rs").to_string()
}

/// Every top-level module and the top-level modules it names through `crate::`.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            if p.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let m = module_of(p.strip_prefix(&src).unwrap());
            if m == "main" || m == "lib" {
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap();
            // Test modules may reach anywhere; the graph is about the product's code.
            let code = text.split("#[cfg(test)]").next().unwrap();
            let deps = g.entry(m.clone()).or_default();
            for (i, _) in code.match_indices("crate::") {
                let name: String = code[i + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != m {
                    deps.insert(name);
                }
            }
            // `use crate::{a, b}` style.
            for (i, _) in code.match_indices("use crate::{") {
                let list: String = code[i + 12..].chars().take_while(|c| *c != '}').collect();
                for n in list.split(',') {
                    let n = n.trim().split("::").next().unwrap_or("").trim().to_string();
                    if !n.is_empty() && n != m && n != "self" {
                        deps.insert(n);
                    }
                }
            }
        }
    }
    g
}

const MONITORS: &[&str] = &[
    "clockwatch",
    "tokenwatch",
    "sleepwake",
    "netwatch",
    "connwatch",
    "offline",
    "disk",
    "autoheal",
    "versionwatch",
    "pressure",
    "intake",
    "keepawake",
];

/// What the pure slot machine may import: types and pure functions, nothing that does IO
/// (no `github`, no `Board`, no `Host`).
const MACHINE_MAY_IMPORT: &[&str] = &[
    "crate::cause",
    "crate::runner::events",
    "crate::runner::exit",
    "crate::tcpinfo",
    "crate::watchdog::Watchdog",
    "crate::shutdown::Mode",
    "crate::status::slot::SlotState",
];

#[test]
fn the_slot_machine_imports_nothing_that_does_io() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/slot/machine");
    let mut files = 0;
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with("tests.rs") {
            continue;
        }
        files += 1;
        let text = std::fs::read_to_string(e.path()).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap();
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
        for io in [
            "tokio::sync",
            "tokio::task",
            "std::fs",
            "std::net",
            "rand::",
            "tracing::",
        ] {
            assert!(!code.contains(io), "{name} uses {io}");
        }
    }
    assert!(files >= 2, "the listener machine and the slot machine");
}

#[test]
fn monitors_are_siblings_and_the_slot_depends_on_none_of_them() {
    let g = graph();
    for m in MONITORS {
        let deps = &g[*m];
        for d in deps {
            assert!(
                !MONITORS.contains(&d.as_str()) && d != "slot" && d != "supervisor",
                "monitor {m} imports {d}: {deps:?}"
            );
        }
    }
    for d in &g["slot"] {
        assert!(
            !MONITORS.contains(&d.as_str()),
            "the slot imports the monitor {d}"
        );
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
