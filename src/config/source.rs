//! The sources of values and their layering: defaults < the TOML file < the environment
//! (a trait, a map in tests) < flags, each value recorded with where it came from.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use super::*;

/// Where the process environment comes from; tests use a map.
pub trait Env {
    /// One variable.
    fn get(&self, name: &str) -> Option<String>;
    /// All variable names (to find unknown `SUPERVISOR_*` ones).
    fn names(&self) -> Vec<String>;
}

/// The real process environment.
pub struct OsEnv;

impl Env for OsEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
    fn names(&self) -> Vec<String> {
        std::env::vars_os()
            .filter_map(|(k, _)| k.into_string().ok())
            .collect()
    }
}

impl Env for BTreeMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        BTreeMap::get(self, name).cloned()
    }
    fn names(&self) -> Vec<String> {
        self.keys().cloned().collect()
    }
}

/// Environment names that are not keys but are ours.
pub(crate) const OTHER_ENV: &[&str] = &[
    "SUPERVISOR_CONFIG",
    // Test hooks, read by debug builds only (see `sdnotify`, `runner::process`, `diagnose`,
    // `pressure`, `keepawake`, `jobs::rerun` and `supervisor::settle`).
    "SUPERVISOR_TEST_STALL_AFTER",
    "SUPERVISOR_TEST_REAP_DELAY",
    "SUPERVISOR_DOCTOR_HOST_ROOT",
    "SUPERVISOR_PSI_MEMORY",
    "SUPERVISOR_MEMORY_EVENTS",
    "SUPERVISOR_TEST_WSL_INTEROP",
    "SUPERVISOR_RERUN_CHECK_MS",
    "SUPERVISOR_TEST_SETTLE_AFTER_MS",
];

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Default,
    File { path: PathBuf, line: usize },
    Env(String),
    Cli(String),
}

impl Source {
    pub(crate) fn rank(&self) -> u8 {
        match self {
            Source::Default => 0,
            Source::File { .. } => 1,
            Source::Env(_) => 2,
            Source::Cli(_) => 3,
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File { path, line } => write!(f, "{}:{line}", path.display()),
            Source::Env(n) => write!(f, "env {n}"),
            Source::Cli(n) => write!(f, "flag {n}"),
        }
    }
}

/// Every key set so far, with its value and where it came from.
pub(crate) type Layered = BTreeMap<String, (Value, Source)>;

/// The first layer: every key's default.
pub(crate) fn defaults() -> Layered {
    let mut layered = Layered::new();
    for k in KEYS {
        if let Some(d) = k.default {
            let v = parse_str(k.kind, d).expect("defaults parse");
            layered.insert(k.dotted().to_string(), (v, Source::Default));
        }
    }
    layered
}

/// The configuration file: `--config`, else `SUPERVISOR_CONFIG`.
pub(crate) fn config_file(env: &dyn Env, cli: &CliInput) -> Option<PathBuf> {
    cli.config_path.clone().or_else(|| {
        env.get("SUPERVISOR_CONFIG")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
    })
}

/// The file's layer, read bounded.
pub(crate) fn layer_file(path: &Path, layered: &mut Layered, errors: &mut Vec<ConfigError>) {
    match read_bounded(path, MAX_CONFIG_FILE) {
        Ok(text) => read_file(path, &text, layered, errors),
        Err(e) => errors.push(ConfigError {
            key: "config file".into(),
            source: Some(path.display().to_string()),
            message: e,
        }),
    }
}

/// The environment's layer: for each key its aliases first, the generic name last (it
/// wins). Returns the warnings: two names of one key set to different values.
pub(crate) fn layer_env(
    env: &dyn Env,
    layered: &mut Layered,
    errors: &mut Vec<ConfigError>,
) -> Vec<String> {
    let mut warnings = Vec::new();
    for k in KEYS {
        let names = k
            .aliases
            .iter()
            .map(|a| a.to_string())
            .chain([k.env_name()]);
        // An empty variable for a file or a number without a default means unset
        // (compose's `VAR: ""`, an `Environment=VAR=` in a unit).
        let unset_if_empty = k.default.is_none() && matches!(k.kind, Kind::Path | Kind::Int { .. });
        let mut first: Option<(String, String)> = None;
        for name in names {
            let Some(raw) = env
                .get(&name)
                .filter(|v| !(unset_if_empty && v.trim().is_empty()))
            else {
                continue;
            };
            match &first {
                Some((other, value)) if value.trim() != raw.trim() => {
                    warnings.push(two_names_warning(k, other, value, &name, &raw));
                }
                Some(_) => {}
                None => first = Some((name.clone(), raw.clone())),
            }
            match parse_str(k.kind, &raw) {
                Ok(v) => {
                    layered.insert(k.dotted().to_string(), (v, Source::Env(name)));
                }
                Err(m) => errors.push(ConfigError {
                    key: k.dotted().to_string(),
                    source: Some(format!("env {name}")),
                    message: m,
                }),
            }
        }
    }
    warnings
}

/// `other` and `name` both set key `k`, to different values: `name` wins.
fn two_names_warning(k: &KeySpec, other: &str, value: &str, name: &str, raw: &str) -> String {
    let shown = |v: &str| {
        if matches!(k.kind, Kind::Secret) {
            "<redacted>".to_string()
        } else {
            v.to_string()
        }
    };
    format!(
        "{other}={} and {name}={} both set {}; {name} wins",
        shown(value),
        shown(raw),
        k.dotted()
    )
}

/// A `SUPERVISOR_*` variable that names no key (a typo) is an error, with a suggestion.
pub(crate) fn reject_unknown_env(env: &dyn Env, errors: &mut Vec<ConfigError>) {
    let is_known = |name: &str| {
        OTHER_ENV.contains(&name)
            || KEYS
                .iter()
                .any(|k| k.env_name() == name || k.aliases.contains(&name))
    };
    for name in env.names() {
        if !name.starts_with("SUPERVISOR_") || is_known(&name) {
            continue;
        }
        let names: Vec<String> = KEYS
            .iter()
            .flat_map(|k| {
                k.aliases
                    .iter()
                    .map(|a| a.to_string())
                    .chain([k.env_name()])
            })
            .chain(OTHER_ENV.iter().map(|s| s.to_string()))
            .collect();
        let hint = did_you_mean(&name, names.iter().map(String::as_str))
            .map(|k| format!("did you mean {k}? "))
            .unwrap_or_default();
        errors.push(ConfigError {
            key: name.clone(),
            source: Some("environment".into()),
            message: format!("unknown SUPERVISOR_ variable; {hint}names are SUPERVISOR_<SECTION>_<KEY>, see `supervisor config`"),
        });
    }
}

/// The command line's layer: `(flag, section.key, value)` in order.
pub(crate) fn layer_flags(
    sets: &[(String, String, String)],
    layered: &mut Layered,
    errors: &mut Vec<ConfigError>,
) {
    for (flag, dotted, raw) in sets {
        let Some(k) = spec(dotted) else {
            let all: Vec<&str> = KEYS.iter().map(|k| k.dotted()).collect();
            let hint = did_you_mean(dotted, all.iter().copied())
                .map(|k| format!("did you mean {k}? "))
                .unwrap_or_default();
            errors.push(ConfigError {
                key: dotted.clone(),
                source: Some(format!("flag {flag}")),
                message: format!("unknown key; {hint}see `supervisor config` for the list"),
            });
            continue;
        };
        match parse_str(k.kind, raw) {
            Ok(v) => {
                layered.insert(dotted.clone(), (v, Source::Cli(flag.clone())));
            }
            Err(m) => errors.push(ConfigError {
                key: dotted.clone(),
                source: Some(format!("flag {flag}")),
                message: m,
            }),
        }
    }
}
