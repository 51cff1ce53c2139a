//! The sources of values and their parsing: the environment (a trait, a map in tests),
//! the TOML file (with line and column for every problem), strings from env and flags.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

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

/// The type of a key, with its bounds.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Str,
    Secret,
    Path,
    Url,
    Bool,
    /// An integer in `[min, max]`.
    Int {
        min: u64,
        max: u64,
    },
    /// A duration in `[min, max]`; human forms like `90s`, `15m`, `6h`, or bare seconds.
    Duration {
        min: Duration,
        max: Duration,
    },
    /// A list of strings: a TOML array, or comma-separated in env and flags.
    List,
    /// A table of string to string: a TOML inline table, or `K=V,K=V` in env and flags.
    Map,
    /// One of these words.
    Enum(&'static [&'static str]),
}

/// A key's declaration with the Rust type its value is read as (see `keys.rs`).
pub struct Key<T> {
    pub spec: KeySpec,
    _type: std::marker::PhantomData<fn() -> T>,
}

impl<T> Key<T> {
    /// Declare a key.
    pub const fn new(spec: KeySpec) -> Key<T> {
        Key {
            spec,
            _type: std::marker::PhantomData,
        }
    }

    /// `section.key`.
    pub const fn name(&self) -> &'static str {
        self.spec.dotted
    }
}

/// A type a key's value is read as. `None` means the value is missing or of another type.
pub trait FromValue: Sized {
    fn from_value(v: Option<&Value>) -> Option<Self>;
}

impl FromValue for String {
    fn from_value(v: Option<&Value>) -> Option<Self> {
        match v? {
            Value::Str(s) => Some(s.clone()),
            _ => None,
        }
    }
}

impl FromValue for PathBuf {
    fn from_value(v: Option<&Value>) -> Option<Self> {
        String::from_value(v).map(PathBuf::from)
    }
}

impl FromValue for Secret {
    fn from_value(v: Option<&Value>) -> Option<Self> {
        String::from_value(v).map(Secret)
    }
}

impl FromValue for u64 {
    fn from_value(v: Option<&Value>) -> Option<Self> {
        match v? {
            Value::Int(n) => Some(*n),
            _ => None,
        }
    }
}

impl FromValue for bool {
    fn from_value(v: Option<&Value>) -> Option<Self> {
        match v? {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }
}

impl FromValue for Duration {
    fn from_value(v: Option<&Value>) -> Option<Self> {
        match v? {
            Value::Duration(d) => Some(*d),
            _ => None,
        }
    }
}

impl FromValue for Vec<String> {
    fn from_value(v: Option<&Value>) -> Option<Self> {
        match v? {
            Value::List(l) => Some(l.clone()),
            _ => None,
        }
    }
}

impl FromValue for BTreeMap<String, String> {
    fn from_value(v: Option<&Value>) -> Option<Self> {
        match v? {
            Value::Map(m) => Some(m.clone()),
            _ => None,
        }
    }
}

/// An optional key: unset is `None`, never a made-up value.
impl<T: FromValue> FromValue for Option<T> {
    fn from_value(v: Option<&Value>) -> Option<Self> {
        match v {
            None => Some(None),
            Some(_) => T::from_value(v).map(Some),
        }
    }
}

/// Enum keys: the declaration's words, parsed into the enum.
macro_rules! from_words {
    ($t:ty { $($word:literal => $v:expr),* $(,)? }) => {
        impl FromValue for $t {
            fn from_value(v: Option<&Value>) -> Option<Self> {
                match String::from_value(v)?.as_str() {
                    $($word => Some($v),)*
                    _ => None,
                }
            }
        }
    };
}

from_words!(ListenerKeepalive { "auto" => ListenerKeepalive::Auto, "off" => ListenerKeepalive::Off });
from_words!(Toggle { "auto" => Toggle::Auto, "on" => Toggle::On, "off" => Toggle::Off });
from_words!(RegistrationMode { "auto" => RegistrationMode::Auto, "jit" => RegistrationMode::Jit, "token" => RegistrationMode::Token });
from_words!(ChronycMode { "auto" => ChronycMode::Auto, "required" => ChronycMode::Required, "off" => ChronycMode::Off });
from_words!(LogFormat { "text" => LogFormat::Text, "json" => LogFormat::Json });

/// The declaration of one key.
pub struct KeySpec {
    pub section: &'static str,
    pub key: &'static str,
    /// `section.key` (made by the `keys!` macro from the two, never written by hand).
    pub dotted: &'static str,
    pub kind: Kind,
    /// The default in the string form the env would use; `None` means unset.
    pub default: Option<&'static str>,
    /// Extra environment names (ghostrunner's, and short forms), before the generic one.
    pub aliases: &'static [&'static str],
    pub doc: &'static str,
}

impl KeySpec {
    /// `section.key`.
    pub fn dotted(&self) -> &'static str {
        self.dotted
    }
    /// `SUPERVISOR_<SECTION>_<KEY>`.
    pub fn env_name(&self) -> String {
        format!(
            "SUPERVISOR_{}_{}",
            self.section.to_ascii_uppercase(),
            self.key.to_ascii_uppercase()
        )
    }
}

/// Environment names that are not keys but are ours.
pub(crate) const OTHER_ENV: &[&str] = &[
    "SUPERVISOR_CONFIG",
    // Test hooks, read by debug builds only (see `sdnotify`, `runner::process` and `diagnose`).
    "SUPERVISOR_TEST_STALL_AFTER",
    "SUPERVISOR_TEST_REAP_DELAY",
    "SUPERVISOR_DOCTOR_HOST_ROOT",
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

/// A parsed value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Bool(bool),
    Int(u64),
    Duration(Duration),
    List(Vec<String>),
    Map(BTreeMap<String, String>),
}

impl Value {
    pub(crate) fn display(&self, secret: bool) -> String {
        if secret {
            return "<redacted>".into();
        }
        match self {
            Value::Str(s) => s.clone(),
            Value::Bool(b) => b.to_string(),
            Value::Int(i) => i.to_string(),
            Value::Duration(d) => humantime::format_duration(*d).to_string(),
            Value::List(l) => l.join(","),
            Value::Map(m) => m
                .keys()
                .map(|k| format!("{k}=<set>"))
                .collect::<Vec<_>>()
                .join(","),
        }
    }
}

pub(crate) type Layered = BTreeMap<String, (Value, Source)>;

pub(crate) fn spec(dotted: &str) -> Option<&'static KeySpec> {
    KEYS.iter().copied().find(|k| k.dotted() == dotted)
}

/// Parse a string (from env, flags or defaults) as `kind`.
pub(crate) fn parse_str(kind: Kind, s: &str) -> Result<Value, String> {
    match kind {
        Kind::Str | Kind::Secret | Kind::Path | Kind::Url => Ok(Value::Str(s.to_string())),
        Kind::Bool => match s.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(Value::Bool(true)),
            "0" | "false" | "no" | "off" => Ok(Value::Bool(false)),
            _ => Err(format!("expected true or false, got {s:?}")),
        },
        Kind::Int { .. } => {
            let t = s.trim();
            if t.starts_with('-') {
                return Err(format!("must not be negative, got {t}"));
            }
            t.parse::<u64>()
                .map(Value::Int)
                .map_err(|_| format!("expected a whole number, got {s:?}"))
        }
        Kind::Duration { .. } => parse_duration(s).map(Value::Duration),
        Kind::List => Ok(Value::List(
            s.split(',')
                .map(|x| x.trim().to_string())
                .filter(|x| !x.is_empty())
                .collect(),
        )),
        Kind::Map => {
            let mut m = BTreeMap::new();
            for pair in s.split(',').filter(|p| !p.trim().is_empty()) {
                let (k, v) = pair
                    .split_once('=')
                    .ok_or_else(|| format!("expected NAME=value pairs, got {pair:?}"))?;
                m.insert(k.trim().to_string(), v.to_string());
            }
            Ok(Value::Map(m))
        }
        Kind::Enum(words) => {
            let t = s.trim().to_ascii_lowercase();
            if words.contains(&t.as_str()) {
                Ok(Value::Str(t))
            } else {
                Err(format!("expected one of {}, got {s:?}", words.join(", ")))
            }
        }
    }
}

/// `90s`, `15m`, `6h`, `1h 30m`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.starts_with('-') {
        return Err(format!("must not be negative, got {t:?}"));
    }
    if t.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(n) = t.parse::<u64>() {
        return Ok(Duration::from_secs(n));
    }
    humantime::parse_duration(t)
        .map_err(|e| format!("{t:?} is not a duration like 90s, 15m or 6h ({e})"))
}

/// Convert a TOML item to a value of `kind`.
pub(crate) fn from_toml(kind: Kind, item: &toml_edit::Item) -> Result<Value, String> {
    use toml_edit::Value as TV;
    let v = item
        .as_value()
        .ok_or_else(|| "expected a value, found a table".to_string())?;
    let type_name = |v: &TV| match v {
        TV::String(_) => "a string",
        TV::Integer(_) => "an integer",
        TV::Float(_) => "a float",
        TV::Boolean(_) => "a boolean",
        TV::Datetime(_) => "a datetime",
        TV::Array(_) => "an array",
        TV::InlineTable(_) => "a table",
    };
    match (kind, v) {
        (Kind::Str | Kind::Secret | Kind::Path | Kind::Url | Kind::Enum(_), TV::String(s)) => {
            parse_str(kind, s.value())
        }
        (Kind::Bool, TV::Boolean(b)) => Ok(Value::Bool(*b.value())),
        (Kind::Int { .. }, TV::Integer(i)) => {
            let n = *i.value();
            if n < 0 {
                Err(format!("must not be negative, got {n}"))
            } else {
                Ok(Value::Int(n as u64))
            }
        }
        (Kind::Duration { .. }, TV::String(s)) => parse_duration(s.value()).map(Value::Duration),
        (Kind::Duration { .. }, TV::Integer(i)) => {
            let n = *i.value();
            if n < 0 {
                Err(format!("must not be negative, got {n}"))
            } else {
                Ok(Value::Duration(Duration::from_secs(n as u64)))
            }
        }
        (Kind::List, TV::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("expected an array of strings, found {}", type_name(x)))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Value::List),
        (Kind::Map, TV::InlineTable(t)) => t
            .iter()
            .map(|(k, x)| {
                x.as_str()
                    .map(|s| (k.to_string(), s.to_string()))
                    .ok_or_else(|| format!("expected string values, {k} is {}", type_name(x)))
            })
            .collect::<Result<BTreeMap<_, _>, _>>()
            .map(Value::Map),
        (k, other) => Err(format!(
            "expected {}, found {}",
            match k {
                Kind::Str | Kind::Secret | Kind::Path | Kind::Url | Kind::Enum(_) => "a string",
                Kind::Bool => "a boolean",
                Kind::Int { .. } => "an integer",
                Kind::Duration { .. } => "a duration string like \"15m\" or seconds",
                Kind::List => "an array of strings",
                Kind::Map => "a table of strings",
            },
            type_name(other)
        )),
    }
}

pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Read the TOML file into layered values, collecting errors.
pub(crate) fn read_file(path: &Path, text: &str, out: &mut Layered, errors: &mut Vec<ConfigError>) {
    let doc = match toml_edit::ImDocument::parse(text.to_string()) {
        Ok(d) => d,
        Err(e) => {
            let (line, col) = e.span().map(|s| line_col(text, s.start)).unwrap_or((0, 0));
            errors.push(ConfigError {
                key: path.display().to_string(),
                source: Some(format!("line {line}, column {col}")),
                message: format!("malformed TOML: {}", e.message().trim()),
            });
            return;
        }
    };
    for (section, item) in doc.as_table().iter() {
        let pos = |span: Option<std::ops::Range<usize>>| {
            span.map(|s| line_col(text, s.start)).unwrap_or((0, 0))
        };
        let Some(table) = item.as_table() else {
            let (line, col) = pos(doc
                .as_table()
                .get_key_value(section)
                .and_then(|(k, _)| k.span()));
            errors.push(ConfigError {
                key: section.to_string(),
                source: Some(format!("{}:{line}:{col}", path.display())),
                message: if KEYS.iter().any(|k| k.section == section) {
                    format!("expected a [{section}] table")
                } else {
                    format!(
                        "unknown key (top-level keys must be in a section: {})",
                        sections().join(", ")
                    )
                },
            });
            continue;
        };
        if !KEYS.iter().any(|k| k.section == section) {
            let (line, col) = pos(table.span());
            errors.push(ConfigError {
                key: format!("[{section}]"),
                source: Some(format!("{}:{line}:{col}", path.display())),
                message: format!(
                    "unknown section; known sections are {}",
                    sections().join(", ")
                ),
            });
            continue;
        }
        for (key, value) in table.iter() {
            let dotted = format!("{section}.{key}");
            let kspan = table.get_key_value(key).and_then(|(k, _)| k.span());
            let (line, col) = pos(kspan.or_else(|| value.span()));
            let src = format!("{}:{line}:{col}", path.display());
            let Some(sp) = spec(&dotted) else {
                let known: Vec<&str> = KEYS
                    .iter()
                    .filter(|k| k.section == section)
                    .map(|k| k.key)
                    .collect();
                let hint = did_you_mean(key, known.iter().copied())
                    .map(|k| format!("did you mean {k}? "))
                    .unwrap_or_default();
                errors.push(ConfigError {
                    key: dotted,
                    source: Some(src),
                    message: format!("unknown key; {hint}[{section}] has {}", known.join(", ")),
                });
                continue;
            };
            match from_toml(sp.kind, value) {
                Ok(v) => {
                    out.insert(
                        dotted,
                        (
                            v,
                            Source::File {
                                path: path.to_path_buf(),
                                line,
                            },
                        ),
                    );
                }
                Err(m) => errors.push(ConfigError {
                    key: dotted,
                    source: Some(src),
                    message: m,
                }),
            }
        }
    }
}

pub(crate) fn sections() -> Vec<&'static str> {
    let mut s: Vec<&str> = KEYS.iter().map(|k| k.section).collect();
    s.dedup();
    s
}

/// The largest configuration file read.
pub(crate) const MAX_CONFIG_FILE: u64 = 1 << 20;
/// The largest token file read (a token is at most a few hundred bytes).
pub(crate) const MAX_TOKEN_FILE: u64 = 64 << 10;

/// Read at most `limit` bytes of `path` as UTF-8: a device such as /dev/zero, or a file
/// far too large, is an error rather than a hang.
pub fn read_bounded(path: &Path, limit: u64) -> Result<String, String> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| format!("cannot read it: {e}"))?;
    let mut buf = Vec::new();
    f.take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read it: {e}"))?;
    if buf.len() as u64 > limit {
        return Err(format!(
            "it is larger than {} KiB: not a file this setting can hold",
            limit >> 10
        ));
    }
    String::from_utf8(buf).map_err(|_| "it is not UTF-8 text".to_string())
}
