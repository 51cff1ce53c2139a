//! Configuration: defaults < TOML file < environment < CLI flags, validated in one pass.
//!
//! Every key is declared once in [`KEYS`]; that table gives its type, default, bounds,
//! environment names and documentation, so the TOML reader, the env reader, the
//! `--set` flag and `supervisor config` can never disagree.
//! Invariant: this is the only module that reads the process environment for settings.
//! It must not: perform network calls or start anything.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod keys;
pub use keys::KEYS;

/// A secret string: never printed by `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap a secret value.
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    /// The secret itself; call only where it is sent to GitHub.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

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

/// The declaration of one key.
pub struct KeySpec {
    pub section: &'static str,
    pub key: &'static str,
    pub kind: Kind,
    /// The default in the string form the env would use; `None` means unset.
    pub default: Option<&'static str>,
    /// Extra environment names (ghostrunner's, and short forms), before the generic one.
    pub aliases: &'static [&'static str],
    pub doc: &'static str,
}

impl KeySpec {
    /// `section.key`.
    pub fn dotted(&self) -> String {
        format!("{}.{}", self.section, self.key)
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
const OTHER_ENV: &[&str] = &["SUPERVISOR_CONFIG"];

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Default,
    File { path: PathBuf, line: usize },
    Env(String),
    Cli(String),
}

impl Source {
    fn rank(&self) -> u8 {
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
    fn display(&self, secret: bool) -> String {
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

/// One configuration problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// `section.key`, or the file for syntax errors.
    pub key: String,
    /// Where the bad value came from.
    pub source: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(s) => write!(f, "{} ({s}): {}", self.key, self.message),
            None => write!(f, "{}: {}", self.key, self.message),
        }
    }
}

/// Every problem found, reported together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "invalid configuration ({} problem{}):",
            self.0.len(),
            if self.0.len() == 1 { "" } else { "s" }
        )?;
        for e in &self.0 {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Which runners: a repository's or an organisation's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Repo { owner: String, repo: String },
    Org { org: String },
}

impl Scope {
    /// The REST path prefix: `/repos/o/r` or `/orgs/o`.
    pub fn api_path(&self) -> String {
        match self {
            Scope::Repo { owner, repo } => format!("/repos/{owner}/{repo}"),
            Scope::Org { org } => format!("/orgs/{org}"),
        }
    }
    /// The path part of the web URL: `o/r` or `o`.
    pub fn web_path(&self) -> String {
        match self {
            Scope::Repo { owner, repo } => format!("{owner}/{repo}"),
            Scope::Org { org } => org.clone(),
        }
    }
}

/// How runners are registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistrationMode {
    Auto,
    Jit,
    Token,
}

/// `[github]`.
#[derive(Debug, Clone)]
pub struct GithubConfig {
    pub api_url: String,
    pub web_url: String,
    pub token: Option<Secret>,
    /// Absent only for [`Purpose::Local`] commands, which never talk to GitHub.
    pub scope: Option<Scope>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub max_retries: u32,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    pub max_rate_limit_wait: Duration,
}

/// `[runner]`.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    pub dir: PathBuf,
    pub name_prefix: String,
    pub labels: Vec<String>,
    pub slots: usize,
    pub group_id: u64,
    pub work_folder: String,
    pub registration: RegistrationMode,
    pub drain_timeout: Duration,
    pub stop_grace: Duration,
    pub session_conflict_wait: Duration,
    pub update_wait: Duration,
    pub ready_timeout: Duration,
    pub stable_after: Duration,
    /// Extra variables for the runner; values may be secrets of the user's, so never logged.
    pub env: BTreeMap<String, String>,
    /// Supervisor variables passed through, resolved at start.
    pub pass_env: BTreeMap<String, String>,
}

/// `[network]`.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    pub keepalive_idle: Duration,
    pub keepalive_interval: Duration,
    pub keepalive_probes: u32,
    pub set_sysctls: Toggle,
    pub dns_interval: Duration,
    pub fallback_resolvers: Vec<String>,
    pub resolv_conf: PathBuf,
    pub dns_port: u16,
}

/// `[watchdog]`.
#[derive(Debug, Clone)]
pub struct WatchdogConfig {
    pub grace: Duration,
    pub job_stall_timeout: Duration,
    pub max_fires: u32,
    pub window: Duration,
    pub open_for: Duration,
    pub retryable_exits: u32,
    pub socket_stall: Duration,
    pub socket_check_interval: Duration,
    pub offline_after: Duration,
    pub offline_check_interval: Duration,
}

/// An `auto`/`on`/`off` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Toggle {
    /// Decided from what the host proves (each setting says how).
    Auto,
    On,
    Off,
}

impl Toggle {
    fn parse(word: Option<&str>) -> Toggle {
        match word {
            Some("on") => Toggle::On,
            Some("off") => Toggle::Off,
            _ => Toggle::Auto,
        }
    }
}

/// How chronyd is watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChronycMode {
    Auto,
    Required,
    Off,
}

/// `[clock]`.
#[derive(Debug, Clone)]
pub struct ClockConfig {
    pub ntp_servers: Vec<String>,
    pub interval: Duration,
    pub warn_offset: Duration,
    pub fault_offset: Duration,
    pub chronyc: ChronycMode,
    pub chronyc_address: String,
    pub makestep: bool,
    pub lock_file: PathBuf,
}

/// `[token]`.
#[derive(Debug, Clone)]
pub struct TokenConfig {
    pub check_interval: Duration,
    pub expiry_warning: Duration,
}

/// `[disk]`.
#[derive(Debug, Clone)]
pub struct DiskConfig {
    pub prune: Toggle,
    pub docker_host: String,
    pub path: Option<PathBuf>,
    pub threshold_gb: u64,
    pub interval: Duration,
    pub until: Duration,
    pub keep_images: Vec<String>,
}

/// `[autoheal]`: the `supervisor autoheal` service.
#[derive(Debug, Clone)]
pub struct AutohealConfig {
    /// Only containers with this label set to `true` are restarted.
    pub label: String,
    pub interval: Duration,
    pub stop_timeout: Duration,
    pub max_restarts: u32,
    pub window: Duration,
}

/// `[health]`.
#[derive(Debug, Clone)]
pub struct HealthConfig {
    pub unhealthy_after: Duration,
    pub dependencies: Vec<String>,
}

/// `[log]`.
#[derive(Debug, Clone)]
pub struct LogConfig {
    pub json: bool,
    pub level: String,
}

/// One resolved key, for `supervisor config`.
#[derive(Debug, Clone)]
pub struct Entry {
    pub key: String,
    pub value: String,
    pub source: Source,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub github: GithubConfig,
    pub runner: RunnerConfig,
    pub state_dir: PathBuf,
    pub network: NetworkConfig,
    pub watchdog: WatchdogConfig,
    pub clock: ClockConfig,
    pub token: TokenConfig,
    pub health: HealthConfig,
    pub disk: DiskConfig,
    pub autoheal: AutohealConfig,
    /// Shared by every supervisor on this host or Docker engine: the fleet's status files
    /// and the pruner lock.
    pub shared_dir: PathBuf,
    pub log: LogConfig,
    /// Every key with its value (secrets redacted) and source.
    pub entries: Vec<Entry>,
    /// The config file read, if any.
    pub file: Option<PathBuf>,
    /// Accepted, but worth saying (two environment names for one key, with different values).
    pub warnings: Vec<String>,
}

/// What the command line contributes.
#[derive(Debug, Clone, Default)]
pub struct CliInput {
    /// `--config`.
    pub config_path: Option<PathBuf>,
    /// `(flag name, section.key, value)`, in order.
    pub sets: Vec<(String, String, String)>,
}

/// What to require beyond well-formed values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// `run`: token, scope and runner binary must be there.
    Run,
    /// `config` and `doctor`: a missing token or runner is reported by them, not refused;
    /// a missing repository or organisation is still an error.
    Inspect,
    /// `health`, `pruner`, `autoheal`: host-local work; no GitHub setting is required.
    Local,
}

type Layered = BTreeMap<String, (Value, Source)>;

fn spec(dotted: &str) -> Option<&'static KeySpec> {
    KEYS.iter().find(|k| k.dotted() == dotted)
}

/// Parse a string (from env, flags or defaults) as `kind`.
fn parse_str(kind: Kind, s: &str) -> Result<Value, String> {
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
fn from_toml(kind: Kind, item: &toml_edit::Item) -> Result<Value, String> {
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

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Read the TOML file into layered values, collecting errors.
fn read_file(path: &Path, text: &str, out: &mut Layered, errors: &mut Vec<ConfigError>) {
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

fn sections() -> Vec<&'static str> {
    let mut s: Vec<&str> = KEYS.iter().map(|k| k.section).collect();
    s.dedup();
    s
}

impl Config {
    /// Resolve defaults, the file, the environment and the flags into a validated config.
    pub fn resolve(
        env: &dyn Env,
        cli: &CliInput,
        purpose: Purpose,
    ) -> Result<Config, ConfigErrors> {
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        let mut layered: Layered = BTreeMap::new();
        for k in KEYS {
            if let Some(d) = k.default {
                let v = parse_str(k.kind, d).expect("defaults parse");
                layered.insert(k.dotted(), (v, Source::Default));
            }
        }

        // The file: --config, else SUPERVISOR_CONFIG.
        let file = cli.config_path.clone().or_else(|| {
            env.get("SUPERVISOR_CONFIG")
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
        });
        if let Some(path) = &file {
            match read_bounded(path, MAX_CONFIG_FILE) {
                Ok(text) => read_file(path, &text, &mut layered, &mut errors),
                Err(e) => errors.push(ConfigError {
                    key: "config file".into(),
                    source: Some(path.display().to_string()),
                    message: e,
                }),
            }
        }

        // The environment: aliases first, the generic name last (it wins).
        for k in KEYS {
            let names = k
                .aliases
                .iter()
                .map(|a| a.to_string())
                .chain([k.env_name()]);
            let mut first: Option<(String, String)> = None;
            for name in names {
                if let Some(raw) = env.get(&name) {
                    if let Some((other, value)) = &first {
                        if value.trim() != raw.trim() {
                            let shown = |v: &str| {
                                if matches!(k.kind, Kind::Secret) {
                                    "<redacted>".to_string()
                                } else {
                                    v.to_string()
                                }
                            };
                            warnings.push(format!(
                                "{other}={} and {name}={} both set {}; {name} wins",
                                shown(value),
                                shown(&raw),
                                k.dotted()
                            ));
                        }
                    } else {
                        first = Some((name.clone(), raw.clone()));
                    }
                    match parse_str(k.kind, &raw) {
                        Ok(v) => {
                            layered.insert(k.dotted(), (v, Source::Env(name)));
                        }
                        Err(m) => errors.push(ConfigError {
                            key: k.dotted(),
                            source: Some(format!("env {name}")),
                            message: m,
                        }),
                    }
                }
            }
        }
        for name in env.names() {
            if name.starts_with("SUPERVISOR_")
                && !OTHER_ENV.contains(&name.as_str())
                && !KEYS
                    .iter()
                    .any(|k| k.env_name() == name || k.aliases.contains(&name.as_str()))
            {
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

        // The command line.
        for (flag, dotted, raw) in &cli.sets {
            let Some(k) = spec(dotted) else {
                let all: Vec<String> = KEYS.iter().map(|k| k.dotted()).collect();
                let hint = did_you_mean(dotted, all.iter().map(String::as_str))
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

        let cfg = build(&layered, env, purpose, file, &mut errors);
        if errors.is_empty() {
            let mut cfg = cfg.expect("no errors means a config");
            cfg.warnings = warnings;
            Ok(cfg)
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

/// Check bounds and relations, and build the typed config.
fn build(
    l: &Layered,
    env: &dyn Env,
    purpose: Purpose,
    file: Option<PathBuf>,
    errors: &mut Vec<ConfigError>,
) -> Option<Config> {
    let src = |k: &str| l.get(k).map(|(_, s)| s.to_string());
    let mut err = |key: &str, message: String| {
        errors.push(ConfigError {
            key: key.to_string(),
            source: src(key),
            message,
        });
    };
    // Bounds on every int and duration.
    for k in KEYS {
        match (k.kind, l.get(&k.dotted()).map(|(v, _)| v)) {
            (Kind::Int { min, max }, Some(Value::Int(n))) if *n < min || *n > max => {
                err(&k.dotted(), format!("{n} is out of range {min}..={max}"))
            }
            (Kind::Duration { min, max }, Some(Value::Duration(d))) if *d < min || *d > max => err(
                &k.dotted(),
                format!(
                    "{} is out of range {}..={}",
                    humantime::format_duration(*d),
                    humantime::format_duration(min),
                    humantime::format_duration(max)
                ),
            ),
            _ => {}
        }
    }
    let s = |k: &str| match l.get(k) {
        Some((Value::Str(s), _)) => Some(s.clone()),
        _ => None,
    };
    let d = |k: &str| match l.get(k) {
        Some((Value::Duration(d), _)) => *d,
        _ => Duration::ZERO,
    };
    let n = |k: &str| match l.get(k) {
        Some((Value::Int(n), _)) => *n,
        _ => 0,
    };
    let list = |k: &str| match l.get(k) {
        Some((Value::List(v), _)) => v.clone(),
        _ => vec![],
    };
    let map = |k: &str| match l.get(k) {
        Some((Value::Map(m), _)) => m.clone(),
        _ => BTreeMap::new(),
    };

    // API URL.
    let api_url = s("github.api_url")
        .unwrap_or_default()
        .trim_end_matches('/')
        .to_string();
    let web_url = match s("github.web_url") {
        Some(w) => w.trim_end_matches('/').to_string(),
        None => derive_web_url(&api_url),
    };
    for (key, u) in [("github.api_url", &api_url), ("github.web_url", &web_url)] {
        if let Err(m) = check_url(u) {
            err(key, m);
        }
    }

    // Token: the higher layer wins; the same layer twice is ambiguous.
    let token_src = l.get("github.token").map(|(_, s)| s.clone());
    let file_src = l.get("github.token_file").map(|(_, s)| s.clone());
    let token = match (&token_src, &file_src) {
        (Some(ts), Some(fs)) if ts.rank() == fs.rank() => {
            err(
                "github.token",
                format!("set only one of github.token ({ts}) and github.token_file ({fs})"),
            );
            None
        }
        (Some(ts), Some(fs)) if fs.rank() > ts.rank() => {
            read_token_file(&s("github.token_file").unwrap_or_default(), &mut err)
        }
        (Some(_), _) => s("github.token").map(Secret),
        (None, Some(_)) => read_token_file(&s("github.token_file").unwrap_or_default(), &mut err),
        (None, None) => None,
    };
    // One rule for every source (env, file, TOML): surrounding whitespace, such as the
    // newline an editor or `echo` leaves, is not part of a token.
    let token = token.map(|t| Secret(t.0.trim().to_string()));
    if let Some(t) = &token {
        if t.0.is_empty() {
            err("github.token", "is empty".into());
        } else if t.0.chars().any(|c| c.is_whitespace() || c.is_control()) {
            err(
                "github.token",
                "contains whitespace or control characters".into(),
            );
        }
    } else if purpose == Purpose::Run && token_src.is_none() && file_src.is_none() {
        err(
            "github.token",
            "no token: set GITHUB_PAT, SUPERVISOR_GITHUB_TOKEN or github.token_file (or run the simulated demo, see README)".into(),
        );
    }

    // Scope.
    let (owner, repo, org) = (s("github.owner"), s("github.repo"), s("github.org"));
    let scope = match (&owner, &repo, &org) {
        (_, _, Some(o)) if owner.is_some() || repo.is_some() => {
            err(
                "github.org",
                format!("set either github.org ({o}) or github.owner and github.repo, not both"),
            );
            None
        }
        (_, _, Some(o)) => {
            if let Err(m) = check_owner(o) {
                err("github.org", m);
            }
            Some(Scope::Org { org: o.clone() })
        }
        (Some(o), Some(r), None) => {
            if let Err(m) = check_owner(o) {
                err("github.owner", m);
            }
            if let Err(m) = check_repo(r) {
                err("github.repo", m);
            }
            Some(Scope::Repo {
                owner: o.clone(),
                repo: r.clone(),
            })
        }
        (Some(_), None, None) => {
            err(
                "github.repo",
                "missing: set REPO_NAME (github.repo), or github.org for an organisation runner"
                    .into(),
            );
            None
        }
        (None, Some(_), None) => {
            err(
                "github.owner",
                "missing: set REPO_OWNER (github.owner)".into(),
            );
            None
        }
        (None, None, None) if purpose == Purpose::Local => None,
        (None, None, None) => {
            err(
                "github.owner",
                "missing: set REPO_OWNER and REPO_NAME (github.owner, github.repo) for a repository runner, or github.org for an organisation runner".into(),
            );
            None
        }
    };

    // Runner.
    let dir = PathBuf::from(s("runner.dir").unwrap_or_default());
    if purpose == Purpose::Run {
        if let Err(m) = check_runner_dir(&dir) {
            err("runner.dir", m);
        }
    }
    let prefix = s("runner.name_prefix").unwrap_or_default();
    if prefix.is_empty()
        || prefix.len() > 40
        || !prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        err(
            "runner.name_prefix",
            format!("{prefix:?} must be 1 to 40 characters of letters, digits, '-', '_' or '.'"),
        );
    }
    let labels = list("runner.labels");
    if let Err(m) = check_labels(&labels) {
        err("runner.labels", m);
    }
    let work_folder = s("runner.work_folder").unwrap_or_default();
    if work_folder.is_empty() || work_folder.contains("..") {
        err(
            "runner.work_folder",
            format!("{work_folder:?} must be a non-empty path without '..'"),
        );
    }
    let extra_env = map("runner.env");
    for name in extra_env.keys() {
        if let Err(m) = check_env_name(name) {
            err("runner.env", m);
        }
    }
    let mut pass_env = BTreeMap::new();
    for name in list("runner.pass_env") {
        match check_env_name(&name) {
            Err(m) => err("runner.pass_env", m),
            Ok(()) => {
                if let Some(v) = env.get(&name) {
                    pass_env.insert(name, v);
                }
            }
        }
    }
    let registration = match s("runner.registration").as_deref() {
        Some("jit") => RegistrationMode::Jit,
        Some("token") => RegistrationMode::Token,
        _ => RegistrationMode::Auto,
    };
    for dep in list("health.dependencies") {
        if dep
            .rsplit_once(':')
            .and_then(|(h, p)| {
                if h.is_empty() {
                    None
                } else {
                    p.parse::<u16>().ok()
                }
            })
            .is_none()
        {
            err("health.dependencies", format!("{dep:?} is not host:port"));
        }
    }
    if let Some(a) = s("clock.chronyc_address") {
        if a.rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .is_none()
        {
            err("clock.chronyc_address", format!("{a:?} is not host:port"));
        }
    }
    for r in list("network.fallback_resolvers") {
        if r.parse::<std::net::IpAddr>().is_err() {
            err(
                "network.fallback_resolvers",
                format!("{r:?} is not an IP address"),
            );
        }
    }
    if d("clock.warn_offset") > d("clock.fault_offset") {
        err(
            "clock.warn_offset",
            format!(
                "{} is larger than clock.fault_offset ({}): a warning must come before the fault",
                humantime::format_duration(d("clock.warn_offset")),
                humantime::format_duration(d("clock.fault_offset"))
            ),
        );
    }
    if let Err(m) = check_log_level(&s("log.level").unwrap_or_default()) {
        err("log.level", m);
    }
    let state_dir = PathBuf::from(s("state.dir").unwrap_or_default());
    if state_dir.as_os_str().is_empty() {
        err("state.dir", "must not be empty".into());
    }

    let entries = KEYS
        .iter()
        .map(|k| {
            let (value, source) = match l.get(&k.dotted()) {
                Some((v, s)) => (v.display(matches!(k.kind, Kind::Secret)), s.clone()),
                None => ("(unset)".to_string(), Source::Default),
            };
            Entry {
                key: k.dotted(),
                value,
                source,
            }
        })
        .collect();

    if scope.is_none() && purpose != Purpose::Local {
        return None;
    }
    if !errors.is_empty() {
        return None;
    }
    Some(Config {
        github: GithubConfig {
            api_url,
            web_url,
            token,
            scope,
            connect_timeout: d("github.connect_timeout"),
            request_timeout: d("github.request_timeout"),
            max_retries: n("github.max_retries") as u32,
            backoff_base: d("github.backoff_base"),
            backoff_cap: d("github.backoff_cap"),
            max_rate_limit_wait: d("github.max_rate_limit_wait"),
        },
        runner: RunnerConfig {
            dir,
            name_prefix: prefix,
            labels,
            slots: n("runner.slots") as usize,
            group_id: n("runner.group_id"),
            work_folder,
            registration,
            drain_timeout: d("runner.drain_timeout"),
            stop_grace: d("runner.stop_grace"),
            session_conflict_wait: d("runner.session_conflict_wait"),
            update_wait: d("runner.update_wait"),
            ready_timeout: d("runner.ready_timeout"),
            stable_after: d("runner.stable_after"),
            env: extra_env,
            pass_env,
        },
        state_dir,
        network: NetworkConfig {
            keepalive_idle: d("network.keepalive_idle"),
            keepalive_interval: d("network.keepalive_interval"),
            keepalive_probes: n("network.keepalive_probes") as u32,
            set_sysctls: Toggle::parse(s("network.set_sysctls").as_deref()),
            dns_interval: d("network.dns_interval"),
            fallback_resolvers: list("network.fallback_resolvers"),
            resolv_conf: PathBuf::from(s("network.resolv_conf").unwrap_or_default()),
            dns_port: n("network.dns_port") as u16,
        },
        watchdog: WatchdogConfig {
            grace: d("watchdog.grace"),
            job_stall_timeout: d("watchdog.job_stall_timeout"),
            max_fires: n("watchdog.max_fires") as u32,
            window: d("watchdog.window"),
            open_for: d("watchdog.open_for"),
            retryable_exits: n("watchdog.retryable_exits") as u32,
            socket_stall: d("watchdog.socket_stall"),
            socket_check_interval: d("watchdog.socket_check_interval"),
            offline_after: d("watchdog.offline_after"),
            offline_check_interval: d("watchdog.offline_check_interval"),
        },
        clock: ClockConfig {
            ntp_servers: list("clock.ntp_servers"),
            interval: d("clock.interval"),
            warn_offset: d("clock.warn_offset"),
            fault_offset: d("clock.fault_offset"),
            chronyc: match s("clock.chronyc").as_deref() {
                Some("required") => ChronycMode::Required,
                Some("off") => ChronycMode::Off,
                _ => ChronycMode::Auto,
            },
            chronyc_address: s("clock.chronyc_address").unwrap_or_default(),
            makestep: matches!(l.get("clock.makestep"), Some((Value::Bool(true), _))),
            lock_file: PathBuf::from(s("clock.lock_file").unwrap_or_default()),
        },
        token: TokenConfig {
            check_interval: d("token.check_interval"),
            expiry_warning: d("token.expiry_warning"),
        },
        health: HealthConfig {
            unhealthy_after: d("health.unhealthy_after"),
            dependencies: list("health.dependencies"),
        },
        disk: DiskConfig {
            prune: Toggle::parse(s("disk.prune").as_deref()),
            docker_host: s("disk.docker_host").unwrap_or_default(),
            path: s("disk.path").map(PathBuf::from),
            threshold_gb: n("disk.threshold_gb"),
            interval: d("disk.interval"),
            until: d("disk.until"),
            keep_images: list("disk.keep_images"),
        },
        autoheal: AutohealConfig {
            label: s("autoheal.label").unwrap_or_default(),
            interval: d("autoheal.interval"),
            stop_timeout: d("autoheal.stop_timeout"),
            max_restarts: n("autoheal.max_restarts") as u32,
            window: d("autoheal.window"),
        },
        shared_dir: PathBuf::from(s("state.shared_dir").unwrap_or_default()),
        log: LogConfig {
            json: s("log.format").as_deref() == Some("json"),
            level: s("log.level").unwrap_or_else(|| "info".into()),
        },
        entries,
        file,
        warnings: vec![],
    })
}

/// The largest configuration file read.
const MAX_CONFIG_FILE: u64 = 1 << 20;
/// The largest token file read (a token is at most a few hundred bytes).
const MAX_TOKEN_FILE: u64 = 64 << 10;

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

fn read_token_file(path: &str, err: &mut impl FnMut(&str, String)) -> Option<Secret> {
    match read_bounded(Path::new(path), MAX_TOKEN_FILE) {
        Ok(t) => Some(Secret(t)),
        Err(e) => {
            err("github.token_file", format!("{path}: {e}"));
            None
        }
    }
}

/// A tracing filter made of levels and `target=level` directives. A bare word that is not
/// a level would be taken for a target and silence everything else, so it is refused.
pub fn check_log_level(filter: &str) -> Result<(), String> {
    const LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];
    if filter.trim().is_empty() {
        return Err("is empty; use info, debug, or target=level directives".into());
    }
    for d in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let level = d.rsplit_once('=').map_or(d, |(_, l)| l);
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "{d:?} is not a level ({}) or a target=level directive",
                LEVELS.join(", ")
            ));
        }
    }
    Ok(())
}

/// The known name closest to `name`, if it is close enough to be a typo.
pub fn did_you_mean<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let name = name.to_ascii_lowercase();
    known
        .into_iter()
        .map(|k| (edit_distance(&name, &k.to_ascii_lowercase()), k))
        .filter(|(d, k)| *d > 0 && *d <= (k.len() / 4).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// `https://api.github.com` → `https://github.com`; `https://h/api/v3` → `https://h`.
pub fn derive_web_url(api: &str) -> String {
    let api = api.trim_end_matches('/');
    if let Some(rest) = api.strip_prefix("https://api.") {
        return format!("https://{rest}");
    }
    api.strip_suffix("/api/v3").unwrap_or(api).to_string()
}

fn check_url(u: &str) -> Result<(), String> {
    let rest = u
        .strip_prefix("https://")
        .or_else(|| u.strip_prefix("http://"))
        .ok_or_else(|| {
            format!("{u:?} must start with https:// (or http:// for a local test server)")
        })?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(format!("{u:?} has no host"));
    }
    Ok(())
}

/// GitHub user and organisation names: 1 to 39 letters, digits or single inner hyphens.
pub fn check_owner(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 39
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--");
    if ok {
        Ok(())
    } else {
        Err(format!("{s:?} is not a valid GitHub account name (1 to 39 letters, digits or single inner hyphens)"))
    }
}

/// Repository names: 1 to 100 of letters, digits, '.', '-', '_', not `.` or `..`.
pub fn check_repo(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 100
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a valid repository name (1 to 100 letters, digits, '.', '-' or '_')"
        ))
    }
}

/// GitHub's limits: 1 to 100 labels, each 1 to 256 characters, no commas, no duplicates.
pub fn check_labels(labels: &[String]) -> Result<(), String> {
    if labels.is_empty() {
        return Err("needs at least one label".into());
    }
    if labels.len() > 100 {
        return Err(format!(
            "{} labels; GitHub allows at most 100",
            labels.len()
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for l in labels {
        if l.trim().is_empty() {
            return Err("a label is empty".into());
        }
        if l.chars().count() > 256 {
            return Err(format!(
                "label {}... is {} characters; GitHub allows at most 256",
                &l[..16.min(l.len())],
                l.chars().count()
            ));
        }
        if l.contains(',') {
            return Err(format!("label {l:?} contains a comma"));
        }
        if !seen.insert(l.to_ascii_lowercase()) {
            return Err(format!(
                "label {l:?} appears twice (labels are case-insensitive)"
            ));
        }
    }
    Ok(())
}

fn check_env_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if !valid {
        return Err(format!("{name:?} is not a valid environment variable name"));
    }
    if name == "GITHUB_PAT"
        || name.starts_with("SUPERVISOR_GITHUB_TOKEN")
        || name.starts_with("ACTIONS_RUNNER_INPUT_")
    {
        return Err(format!(
            "{name} must not be passed to the runner: jobs would see it"
        ));
    }
    Ok(())
}

fn check_runner_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join("bin").join("Runner.Listener");
    match std::fs::metadata(&bin) {
        Err(_) if !dir.exists() => Err(format!(
            "{} does not exist; install the runner there or set SUPERVISOR_RUNNER_DIR",
            dir.display()
        )),
        Err(_) => Err(format!(
            "{} has no bin/Runner.Listener; is this an actions/runner install?",
            dir.display()
        )),
        Ok(m) if !m.is_file() => Err(format!("{} is not a file", bin.display())),
        Ok(m) if m.permissions().mode() & 0o111 == 0 => {
            Err(format!("{} is not executable", bin.display()))
        }
        Ok(_) => Ok(()),
    }
}

/// The commented example configuration, generated from [`KEYS`].
pub fn example_toml() -> String {
    let mut out = String::from(
        "# runner-supervisor configuration. Every key is shown with its default.\n\
         # Precedence: defaults < this file < environment < command-line flags.\n\
         # Any key can be set from the environment as SUPERVISOR_<SECTION>_<KEY>,\n\
         # e.g. [runner] drain_timeout is SUPERVISOR_RUNNER_DRAIN_TIMEOUT=15m.\n\
         # Durations take 90s, 15m, 6h or a bare number of seconds.\n",
    );
    let mut section = "";
    for k in KEYS {
        if k.section != section {
            section = k.section;
            out.push_str(&format!("\n[{section}]\n"));
        }
        let mut envs: Vec<String> = k.aliases.iter().map(|s| s.to_string()).collect();
        envs.push(k.env_name());
        out.push_str(&format!("# {} (env: {})\n", k.doc, envs.join(", ")));
        let rendered = match (k.kind, k.default) {
            (_, None) => match k.kind {
                Kind::Map => format!("# {} = {{ NAME = \"value\" }}", k.key),
                Kind::List => format!("# {} = []", k.key),
                _ => format!("# {} = \"\"", k.key),
            },
            (Kind::Int { .. } | Kind::Bool, Some(d)) => format!("{} = {d}", k.key),
            (Kind::List, Some(d)) => format!(
                "{} = [{}]",
                k.key,
                d.split(',')
                    .map(|x| format!("\"{x}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            (_, Some(d)) => format!("{} = \"{d}\"", k.key),
        };
        out.push_str(&rendered);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn base() -> Vec<(&'static str, &'static str)> {
        vec![
            ("GITHUB_PAT", "ghp_x"),
            ("REPO_OWNER", "octo"),
            ("REPO_NAME", "app"),
        ]
    }

    fn resolve(pairs: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
        Config::resolve(&env(pairs), &CliInput::default(), Purpose::Inspect)
    }

    #[test]
    fn ghostrunner_names_work() {
        let mut p = base();
        p.extend([
            ("RUNNER_NAME", "ci"),
            ("SESSION_CONFLICT_WAIT", "45"),
            ("WATCHDOG_MAX_FIRES", "7"),
        ]);
        let c = resolve(&p).unwrap();
        assert_eq!(c.github.token.unwrap().expose(), "ghp_x");
        assert_eq!(
            c.github.scope,
            Some(Scope::Repo {
                owner: "octo".into(),
                repo: "app".into()
            })
        );
        assert_eq!(c.runner.name_prefix, "ci");
        assert_eq!(c.runner.session_conflict_wait, Duration::from_secs(45));
        assert_eq!(c.watchdog.max_fires, 7);
    }

    #[test]
    fn generic_env_names_and_durations() {
        let mut p = base();
        p.extend([
            ("SUPERVISOR_RUNNER_DRAIN_TIMEOUT", "15m"),
            ("SUPERVISOR_RUNNER_STOP_GRACE", "90s"),
            ("SUPERVISOR_SLOTS", "3"),
            ("SUPERVISOR_LABELS", "a, b,c"),
            ("SUPERVISOR_STATE_DIR", "/tmp/x"),
        ]);
        let c = resolve(&p).unwrap();
        assert_eq!(c.runner.drain_timeout, Duration::from_secs(900));
        assert_eq!(c.runner.stop_grace, Duration::from_secs(90));
        assert_eq!(c.runner.slots, 3);
        assert_eq!(c.runner.labels, vec!["a", "b", "c"]);
        assert_eq!(c.state_dir, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn errors_are_collected_and_named() {
        let e = resolve(&[
            ("REPO_OWNER", "-bad"),
            ("REPO_NAME", "a/b"),
            ("SUPERVISOR_RUNNER_DRAIN_TIMEOUT", "-5s"),
            ("SUPERVISOR_RUNNER_STOP_GRACE", "100y"),
            ("SUPERVISOR_SLOTS", "0"),
        ])
        .unwrap_err();
        let keys: Vec<&str> = e.0.iter().map(|e| e.key.as_str()).collect();
        for k in [
            "github.owner",
            "github.repo",
            "runner.drain_timeout",
            "runner.stop_grace",
            "runner.slots",
        ] {
            assert!(keys.contains(&k), "{k} missing from {e}");
        }
    }

    #[test]
    fn org_excludes_repo() {
        let e = resolve(&[
            ("GITHUB_PAT", "x"),
            ("REPO_OWNER", "o"),
            ("REPO_NAME", "r"),
            ("SUPERVISOR_GITHUB_ORG", "o"),
        ])
        .unwrap_err();
        assert_eq!(e.0[0].key, "github.org");
        let c = resolve(&[("GITHUB_PAT", "x"), ("SUPERVISOR_GITHUB_ORG", "acme")]).unwrap();
        assert_eq!(c.github.scope.unwrap().api_path(), "/orgs/acme");
    }

    #[test]
    fn labels_limits() {
        assert!(check_labels(&["a".into()]).is_ok());
        assert!(check_labels(&[]).is_err());
        assert!(check_labels(&(0..101).map(|i| i.to_string()).collect::<Vec<_>>()).is_err());
        assert!(check_labels(&["x".repeat(257)]).is_err());
        assert!(check_labels(&["x".repeat(256)]).is_ok());
        assert!(check_labels(&["A".into(), "a".into()]).is_err());
    }

    #[test]
    fn unknown_supervisor_env_is_rejected() {
        let mut p = base();
        p.push(("SUPERVISOR_RUNNER_DRAIN_TIMOUT", "1m"));
        let e = resolve(&p).unwrap_err();
        assert_eq!(e.0[0].key, "SUPERVISOR_RUNNER_DRAIN_TIMOUT");
    }

    #[test]
    fn web_url_derivation() {
        assert_eq!(
            derive_web_url("https://api.github.com"),
            "https://github.com"
        );
        assert_eq!(
            derive_web_url("https://ghe.example/api/v3"),
            "https://ghe.example"
        );
        assert_eq!(
            derive_web_url("http://127.0.0.1:9/api/v3"),
            "http://127.0.0.1:9"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("6h").unwrap(), Duration::from_secs(6 * 3600));
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn example_covers_every_key_and_parses() {
        let text = example_toml();
        for k in KEYS {
            assert!(text.contains(&format!("{} =", k.key)), "{}", k.dotted());
        }
        let mut l = BTreeMap::new();
        let mut errors = vec![];
        read_file(Path::new("example.toml"), &text, &mut l, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
    }
}
