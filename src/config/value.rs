//! Keys and values: a key's declaration and kind, the Rust types its value is read as,
//! and parsing a value from a string (env, flags, defaults).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::*;

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
from_words!(RunnerMode { "slots" => RunnerMode::Slots, "scaleset" => RunnerMode::ScaleSet });
from_words!(RegistrationMode { "auto" => RegistrationMode::Auto, "jit" => RegistrationMode::Jit, "token" => RegistrationMode::Token });
from_words!(ChronycMode { "auto" => ChronycMode::Auto, "required" => ChronycMode::Required, "off" => ChronycMode::Off });
from_words!(AutoUpdate { "on" => AutoUpdate::On, "notify" => AutoUpdate::Notify, "off" => AutoUpdate::Off });
from_words!(OnBattery { "continue" => OnBattery::Continue, "stop" => OnBattery::Stop });
from_words!(Inhibit { "block" => Inhibit::Block, "delay" => Inhibit::Delay, "off" => Inhibit::Off });
from_words!(WindowsKeepAwake { "auto" => WindowsKeepAwake::Auto, "off" => WindowsKeepAwake::Off });
from_words!(Backend { "process" => Backend::Process, "container" => Backend::Container });
from_words!(Workspace { "fresh" => Workspace::Fresh, "kept" => Workspace::Kept });
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
