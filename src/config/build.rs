//! From layered values to the typed configuration: bounds, relations between keys, and
//! every problem collected before failing.
//!
//! One function per section builds that section's typed config and checks its keys; the
//! problems are listed section by section, in the order the sections are built.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::keys::*;
use super::*;

/// Check bounds and relations, and build the typed config; also how many times each key
/// was read (every one exactly once: see the tests).
pub(crate) fn build(
    l: &Layered,
    env: &dyn Env,
    purpose: Purpose,
    file: Option<PathBuf>,
    errors: &mut Vec<ConfigError>,
) -> (Option<Config>, BTreeMap<&'static str, u32>) {
    let r = Reader::new(l);
    let cfg = build_with(&r, env, purpose, file, &mut Problems { l, errors });
    (cfg, r.reads())
}

/// The problems found, each with its key and where the key's value came from.
struct Problems<'a> {
    l: &'a Layered,
    errors: &'a mut Vec<ConfigError>,
}

impl Problems<'_> {
    /// A problem with `key`'s value.
    fn add(&mut self, key: &str, message: String) {
        self.errors.push(ConfigError {
            key: key.to_string(),
            source: self.l.get(key).map(|(_, s)| s.to_string()),
            message,
        });
    }
}

fn build_with(
    r: &Reader,
    env: &dyn Env,
    purpose: Purpose,
    file: Option<PathBuf>,
    p: &mut Problems,
) -> Option<Config> {
    check_bounds(p);
    let github = github(r, purpose, p);
    let runner = runner(r, env, purpose, p);
    let health = health(r, p);
    let clock = clock(r, p);
    let network = network(r, p);
    let log = log(r, p);
    let state_dir = r.get(&STATE_DIR);
    let control = control(r, &state_dir, p);
    if state_dir.as_os_str().is_empty() {
        p.add(STATE_DIR.name(), "must not be empty".into());
    }
    let autoheal = autoheal(r, p);
    let disk = disk(r, p);
    let shared_dir = shared_dir(r, p);
    let entries = entries(p.l);
    if github.scope.is_none() && purpose == Purpose::Run {
        return None;
    }
    if !p.errors.is_empty() {
        return None;
    }
    Some(Config {
        github,
        runner,
        state_dir,
        network,
        watchdog: watchdog(r),
        clock,
        token: TokenConfig {
            check_interval: r.get(&TOKEN_CHECK_INTERVAL),
            expiry_warning: r.get(&TOKEN_EXPIRY_WARNING),
        },
        health,
        disk,
        autoheal,
        shared_dir,
        control,
        log,
        entries,
        file,
        warnings: vec![],
    })
}

/// Bounds on every int and duration.
fn check_bounds(p: &mut Problems) {
    for k in KEYS {
        let message = match (k.kind, p.l.get(k.dotted()).map(|(v, _)| v)) {
            (Kind::Int { min, max }, Some(Value::Int(n))) if *n < min || *n > max => {
                format!("{n} is out of range {min}..={max}")
            }
            (Kind::Duration { min, max }, Some(Value::Duration(d))) if *d < min || *d > max => {
                format!(
                    "{} is out of range {}..={}",
                    humantime::format_duration(*d),
                    humantime::format_duration(min),
                    humantime::format_duration(max)
                )
            }
            _ => continue,
        };
        p.add(k.dotted(), message);
    }
}

/// `[github]`: the URLs, the credentials (a token or an App) and the scope.
fn github(r: &Reader, purpose: Purpose, p: &mut Problems) -> GithubConfig {
    let api_url = r.get(&GITHUB_API_URL).trim_end_matches('/').to_string();
    let web_url = match r.get(&GITHUB_WEB_URL) {
        Some(w) => w.trim_end_matches('/').to_string(),
        None => derive_web_url(&api_url),
    };
    for (key, u) in [
        (GITHUB_API_URL.name(), &api_url),
        (GITHUB_WEB_URL.name(), &web_url),
    ] {
        if let Err(m) = check_url(u) {
            p.add(key, m);
        }
    }
    // `doctor` and `config` report an unreadable token file or App key (a root-only
    // credential) instead of refusing to run.
    let mut token_error: Option<String> = None;
    let token = token(r, purpose, &mut token_error, p);
    let app = app(r, purpose, &mut token_error, p);
    GithubConfig {
        api_url,
        web_url,
        token,
        token_error,
        app,
        scope: scope(r, purpose, p),
        connect_timeout: r.get(&GITHUB_CONNECT_TIMEOUT),
        request_timeout: r.get(&GITHUB_REQUEST_TIMEOUT),
        max_retries: r.get(&GITHUB_MAX_RETRIES) as u32,
        backoff_base: r.get(&GITHUB_BACKOFF_BASE),
        backoff_cap: r.get(&GITHUB_BACKOFF_CAP),
        max_rate_limit_wait: r.get(&GITHUB_MAX_RATE_LIMIT_WAIT),
    }
}

/// The token: the higher layer wins; the same layer twice is ambiguous.
fn token(
    r: &Reader,
    purpose: Purpose,
    token_error: &mut Option<String>,
    p: &mut Problems,
) -> Option<Secret> {
    let token_src = r.source(&GITHUB_TOKEN);
    let file_src = r.source(&GITHUB_TOKEN_FILE);
    let (token_value, token_file) = (r.get(&GITHUB_TOKEN), r.get(&GITHUB_TOKEN_FILE));
    let mut from_file = |f: PathBuf| match read_token_file(&f) {
        Ok(t) => Some(t),
        Err(m) if purpose == Purpose::Run => {
            p.add(GITHUB_TOKEN_FILE.name(), m);
            None
        }
        Err(m) => {
            *token_error = Some(m);
            None
        }
    };
    let token = match (&token_src, &file_src) {
        (Some(ts), Some(fs)) if ts.rank() == fs.rank() => {
            p.add(
                GITHUB_TOKEN.name(),
                format!("set only one of github.token ({ts}) and github.token_file ({fs})"),
            );
            None
        }
        (Some(ts), Some(fs)) if fs.rank() > ts.rank() => token_file.and_then(&mut from_file),
        (Some(_), _) => token_value,
        (None, Some(_)) => token_file.and_then(&mut from_file),
        (None, None) => None,
    };
    // One rule for every source (env, file, TOML): surrounding whitespace, such as the
    // newline an editor or `echo` leaves, is not part of a token.
    let token = token.map(|t| Secret(t.0.trim().to_string()));
    if let Some(t) = &token {
        if t.0.is_empty() {
            p.add(GITHUB_TOKEN.name(), "is empty".into());
        } else if t.0.chars().any(|c| c.is_whitespace() || c.is_control()) {
            p.add(
                GITHUB_TOKEN.name(),
                "contains whitespace or control characters".into(),
            );
        }
    } else if purpose == Purpose::Run
        && token_src.is_none()
        && file_src.is_none()
        && r.source(&GITHUB_APP_ID).is_none()
    {
        p.add(GITHUB_TOKEN.name(),
            "no token: set GITHUB_PAT, SUPERVISOR_GITHUB_TOKEN or github.token_file (or run the simulated demo, see README)".into(),
        );
    }
    token
}

/// A GitHub App instead of a token: its ID and private key, both or neither.
fn app(
    r: &Reader,
    purpose: Purpose,
    token_error: &mut Option<String>,
    p: &mut Problems,
) -> Option<AppConfig> {
    let id = r.get(&GITHUB_APP_ID);
    let key_file = r.get(&GITHUB_APP_PRIVATE_KEY_FILE);
    let installation_id = r.get(&GITHUB_INSTALLATION_ID);
    let (app_id, file) = match (id, key_file) {
        (None, None) => {
            if installation_id.is_some() {
                p.add(
                    GITHUB_INSTALLATION_ID.name(),
                    "is set without github.app_id and github.app_private_key_file".into(),
                );
            }
            return None;
        }
        (Some(_), None) => {
            p.add(
                GITHUB_APP_PRIVATE_KEY_FILE.name(),
                "missing: github.app_id is set; the App's private key file is needed too".into(),
            );
            return None;
        }
        (None, Some(_)) => {
            p.add(
                GITHUB_APP_ID.name(),
                "missing: github.app_private_key_file is set; the App's ID is needed too".into(),
            );
            return None;
        }
        (Some(app_id), Some(file)) => (app_id, file),
    };
    let which = r
        .source(&GITHUB_TOKEN)
        .map(|s| format!("github.token ({s})"))
        .or_else(|| {
            r.source(&GITHUB_TOKEN_FILE)
                .map(|s| format!("github.token_file ({s})"))
        });
    if let Some(which) = which {
        p.add(
            GITHUB_APP_ID.name(),
            format!("a token and a GitHub App are both configured ({which}); use one of them"),
        );
    }
    match read_app_key(&file) {
        Ok(pem) => Some(AppConfig {
            app_id,
            private_key: pem,
            key_file: file,
            installation_id,
        }),
        Err(m) if purpose == Purpose::Run => {
            p.add(GITHUB_APP_PRIVATE_KEY_FILE.name(), m);
            None
        }
        Err(m) => {
            *token_error = Some(format!("the GitHub App's private key: {m}"));
            None
        }
    }
}

/// Which runners: a repository's (owner and repo) or an organisation's.
fn scope(r: &Reader, purpose: Purpose, p: &mut Problems) -> Option<Scope> {
    let (owner, repo, org) = (
        r.get(&GITHUB_OWNER),
        r.get(&GITHUB_REPO),
        r.get(&GITHUB_ORG),
    );
    match (&owner, &repo, &org) {
        (_, _, Some(o)) if owner.is_some() || repo.is_some() => {
            p.add(
                GITHUB_ORG.name(),
                format!("set either github.org ({o}) or github.owner and github.repo, not both"),
            );
            None
        }
        (_, _, Some(o)) => {
            if let Err(m) = check_owner(o) {
                p.add(GITHUB_ORG.name(), m);
            }
            Some(Scope::Org { org: o.clone() })
        }
        (Some(o), Some(r), None) => {
            if let Err(m) = check_owner(o) {
                p.add(GITHUB_OWNER.name(), m);
            }
            if let Err(m) = check_repo(r) {
                p.add(GITHUB_REPO.name(), m);
            }
            Some(Scope::Repo {
                owner: o.clone(),
                repo: r.clone(),
            })
        }
        (Some(_), None, None) => {
            p.add(
                GITHUB_REPO.name(),
                "missing: set REPO_NAME (github.repo), or github.org for an organisation runner"
                    .into(),
            );
            None
        }
        (None, Some(_), None) => {
            p.add(
                GITHUB_OWNER.name(),
                "missing: set REPO_OWNER (github.owner)".into(),
            );
            None
        }
        // `config` and `doctor` work before a repository is chosen: they say it is missing.
        (None, None, None) if purpose != Purpose::Run => None,
        (None, None, None) => {
            p.add(GITHUB_OWNER.name(),
                "missing: set REPO_OWNER and REPO_NAME (github.owner, github.repo) for a repository runner, or github.org for an organisation runner".into(),
            );
            None
        }
    }
}

/// `[runner]`: the install, names, labels, and the listeners' environment.
fn runner(r: &Reader, env: &dyn Env, purpose: Purpose, p: &mut Problems) -> RunnerConfig {
    let dir = r.get(&RUNNER_DIR);
    if purpose == Purpose::Run {
        if let Err(m) = check_runner_dir(&dir) {
            p.add(RUNNER_DIR.name(), m);
        }
    }
    let prefix = r.get(&RUNNER_NAME_PREFIX);
    if prefix.is_empty()
        || prefix.len() > 40
        || !prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        p.add(
            RUNNER_NAME_PREFIX.name(),
            format!("{prefix:?} must be 1 to 40 characters of letters, digits, '-', '_' or '.'"),
        );
    }
    let labels = r.get(&RUNNER_LABELS);
    if let Err(m) = check_labels(&labels) {
        p.add(RUNNER_LABELS.name(), m);
    }
    let work_folder = r.get(&RUNNER_WORK_FOLDER);
    if work_folder.is_empty() || work_folder.contains("..") {
        p.add(
            RUNNER_WORK_FOLDER.name(),
            format!("{work_folder:?} must be a non-empty path without '..'"),
        );
    }
    // Unset tables and lists are empty, said here rather than assumed by the reader.
    let extra_env = r.get(&RUNNER_ENV).unwrap_or_default();
    for name in extra_env.keys() {
        if let Err(m) = check_env_name(name) {
            p.add(RUNNER_ENV.name(), m);
        }
    }
    let mut pass_env = BTreeMap::new();
    for name in r.get(&RUNNER_PASS_ENV).unwrap_or_default() {
        match check_env_name(&name) {
            Err(m) => p.add(RUNNER_PASS_ENV.name(), m),
            Ok(()) => {
                if let Some(v) = env.get(&name) {
                    pass_env.insert(name, v);
                }
            }
        }
    }
    RunnerConfig {
        dir,
        name_prefix: prefix,
        labels,
        slots: r.get(&RUNNER_SLOTS) as usize,
        group_id: r.get(&RUNNER_GROUP_ID),
        work_folder,
        registration: r.get(&RUNNER_REGISTRATION),
        drain_timeout: r.get(&RUNNER_DRAIN_TIMEOUT),
        stop_grace: r.get(&RUNNER_STOP_GRACE),
        session_conflict_wait: r.get(&RUNNER_SESSION_CONFLICT_WAIT),
        update_wait: r.get(&RUNNER_UPDATE_WAIT),
        ready_timeout: r.get(&RUNNER_READY_TIMEOUT),
        stable_after: r.get(&RUNNER_STABLE_AFTER),
        failure_backoff: r.get(&RUNNER_FAILURE_BACKOFF),
        env: extra_env,
        pass_env,
    }
}

/// `[health]`: dependencies are `host:port`.
fn health(r: &Reader, p: &mut Problems) -> HealthConfig {
    let dependencies = r.get(&HEALTH_DEPENDENCIES).unwrap_or_default();
    for dep in &dependencies {
        if dep
            .rsplit_once(':')
            .and_then(|(h, port)| {
                if h.is_empty() {
                    None
                } else {
                    port.parse::<u16>().ok()
                }
            })
            .is_none()
        {
            p.add(
                HEALTH_DEPENDENCIES.name(),
                format!("{dep:?} is not host:port"),
            );
        }
    }
    HealthConfig {
        unhealthy_after: r.get(&HEALTH_UNHEALTHY_AFTER),
        dependencies,
    }
}

/// `[clock]`: chronyc's address, and a warning that comes before the fault.
fn clock(r: &Reader, p: &mut Problems) -> ClockConfig {
    let chronyc_address = r.get(&CLOCK_CHRONYC_ADDRESS);
    if chronyc_address
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse::<u16>().ok())
        .is_none()
    {
        p.add(
            CLOCK_CHRONYC_ADDRESS.name(),
            format!("{chronyc_address:?} is not host:port"),
        );
    }
    let (warn_offset, fault_offset) = (r.get(&CLOCK_WARN_OFFSET), r.get(&CLOCK_FAULT_OFFSET));
    if warn_offset > fault_offset {
        p.add(
            CLOCK_WARN_OFFSET.name(),
            format!(
                "{} is larger than clock.fault_offset ({}): a warning must come before the fault",
                humantime::format_duration(warn_offset),
                humantime::format_duration(fault_offset)
            ),
        );
    }
    ClockConfig {
        ntp_servers: r.get(&CLOCK_NTP_SERVERS),
        interval: r.get(&CLOCK_INTERVAL),
        warn_offset,
        fault_offset,
        chronyc: r.get(&CLOCK_CHRONYC),
        chronyc_address,
        makestep: r.get(&CLOCK_MAKESTEP),
        lock_file: r.get(&CLOCK_LOCK_FILE),
    }
}

/// `[network]`: fallback resolvers are IP addresses.
fn network(r: &Reader, p: &mut Problems) -> NetworkConfig {
    let fallback_resolvers = r.get(&NETWORK_FALLBACK_RESOLVERS).unwrap_or_default();
    for ip in &fallback_resolvers {
        if ip.parse::<std::net::IpAddr>().is_err() {
            p.add(
                NETWORK_FALLBACK_RESOLVERS.name(),
                format!("{ip:?} is not an IP address"),
            );
        }
    }
    NetworkConfig {
        keepalive_idle: r.get(&NETWORK_KEEPALIVE_IDLE),
        keepalive_interval: r.get(&NETWORK_KEEPALIVE_INTERVAL),
        keepalive_probes: r.get(&NETWORK_KEEPALIVE_PROBES) as u32,
        set_sysctls: r.get(&NETWORK_SET_SYSCTLS),
        listener_keepalive: r.get(&NETWORK_LISTENER_KEEPALIVE),
        user_timeout: r.get(&NETWORK_USER_TIMEOUT),
        dns_interval: r.get(&NETWORK_DNS_INTERVAL),
        fallback_resolvers,
        resolv_conf: r.get(&NETWORK_RESOLV_CONF),
        dns_port: r.get(&NETWORK_DNS_PORT) as u16,
    }
}

/// `[log]`.
fn log(r: &Reader, p: &mut Problems) -> LogConfig {
    let level = r.get(&LOG_LEVEL);
    if let Err(m) = check_log_level(&level) {
        p.add(LOG_LEVEL.name(), m);
    }
    LogConfig {
        json: r.get(&LOG_FORMAT) == LogFormat::Json,
        level,
    }
}

/// `[control]` (the socket, under the state directory by default) and `[metrics]`.
fn control(r: &Reader, state_dir: &Path, p: &mut Problems) -> ControlConfig {
    let socket = r
        .get(&CONTROL_SOCKET)
        .unwrap_or_else(|| state_dir.join("control.sock"));
    // sockaddr_un holds 107 bytes and a NUL.
    if socket.as_os_str().len() > 107 {
        p.add(
            CONTROL_SOCKET.name(),
            format!(
                "{} is {} bytes long; a Unix socket path has at most 107: set control.socket to a shorter path",
                socket.display(),
                socket.as_os_str().len()
            ),
        );
    }
    ControlConfig {
        socket,
        metrics_listen: metrics_listen(r, p),
    }
}

/// `metrics.listen`: `host:port`, a name resolved here, once; unset or empty is off.
fn metrics_listen(r: &Reader, p: &mut Problems) -> Option<std::net::SocketAddr> {
    let v = r.get(&METRICS_LISTEN).filter(|v| !v.trim().is_empty())?;
    let addr = v.trim().parse::<std::net::SocketAddr>().ok().or_else(|| {
        use std::net::ToSocketAddrs;
        v.trim().to_socket_addrs().ok().and_then(|mut a| a.next())
    });
    if addr.is_none() {
        p.add(
            METRICS_LISTEN.name(),
            format!("{v:?} is not host:port (e.g. 127.0.0.1:9464, localhost:9464 or [::1]:9464)"),
        );
    }
    addr
}

/// `state.shared_dir`.
fn shared_dir(r: &Reader, p: &mut Problems) -> PathBuf {
    let shared_dir = r.get(&STATE_SHARED_DIR);
    if shared_dir.as_os_str().is_empty() {
        p.add(
            STATE_SHARED_DIR.name(),
            "must not be empty (it holds the fleet's status files and the pruner lock)".into(),
        );
    }
    shared_dir
}

/// `[autoheal]`: the label is a Docker label key.
fn autoheal(r: &Reader, p: &mut Problems) -> AutohealConfig {
    let label = r.get(&AUTOHEAL_LABEL);
    if label.is_empty()
        || label
            .chars()
            .any(|c| c.is_whitespace() || c == '=' || c == ',')
    {
        p.add(
            AUTOHEAL_LABEL.name(),
            format!("{label:?} is not a Docker label key (non-empty, no spaces, '=' or ',')"),
        );
    }
    AutohealConfig {
        label,
        interval: r.get(&AUTOHEAL_INTERVAL),
        stop_timeout: r.get(&AUTOHEAL_STOP_TIMEOUT),
        max_restarts: r.get(&AUTOHEAL_MAX_RESTARTS) as u32,
        window: r.get(&AUTOHEAL_WINDOW),
    }
}

/// `[disk]`: the engine is a Unix socket.
fn disk(r: &Reader, p: &mut Problems) -> DiskConfig {
    let docker_host = r.get(&DISK_DOCKER_HOST);
    if !docker_host.starts_with("unix:///") {
        p.add(
            DISK_DOCKER_HOST.name(),
            format!("{docker_host:?} must be a Unix socket, unix:///path/to/docker.sock (a TCP engine or a socket proxy needs a Unix socket here)"),
        );
    }
    DiskConfig {
        prune: r.get(&DISK_PRUNE),
        docker_host,
        path: r.get(&DISK_PATH),
        threshold_gb: r.get(&DISK_THRESHOLD_GB),
        interval: r.get(&DISK_INTERVAL),
        until: r.get(&DISK_UNTIL),
        keep_images: r.get(&DISK_KEEP_IMAGES).unwrap_or_default(),
    }
}

/// `[watchdog]`: nothing to check beyond the bounds.
fn watchdog(r: &Reader) -> WatchdogConfig {
    WatchdogConfig {
        grace: r.get(&WATCHDOG_GRACE),
        job_stall_timeout: r.get(&WATCHDOG_JOB_STALL_TIMEOUT),
        max_fires: r.get(&WATCHDOG_MAX_FIRES) as u32,
        window: r.get(&WATCHDOG_WINDOW),
        open_for: r.get(&WATCHDOG_OPEN_FOR),
        retryable_exits: r.get(&WATCHDOG_RETRYABLE_EXITS) as u32,
        socket_stall: r.get(&WATCHDOG_SOCKET_STALL),
        socket_check_interval: r.get(&WATCHDOG_SOCKET_CHECK_INTERVAL),
        silent_after: r.get(&WATCHDOG_SILENT_AFTER),
        offline_after: r.get(&WATCHDOG_OFFLINE_AFTER),
        offline_check_interval: r.get(&WATCHDOG_OFFLINE_CHECK_INTERVAL),
    }
}

/// Every key with its value (secrets redacted) and source, for `supervisor config`.
fn entries(l: &Layered) -> Vec<Entry> {
    KEYS.iter()
        .map(|k| {
            let (value, source) = match l.get(k.dotted()) {
                Some((v, s)) => (v.display(matches!(k.kind, Kind::Secret)), s.clone()),
                None => ("(unset)".to_string(), Source::Default),
            };
            Entry {
                key: k.dotted().to_string(),
                value,
                source,
            }
        })
        .collect()
}

/// The App's private key: owner-only, a PEM RSA private key.
fn read_app_key(path: &Path) -> Result<Secret, String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{} is readable or writable by group or others (mode {mode:04o}); a private key must not be: chmod 600 {}",
            path.display(),
            path.display()
        ));
    }
    let pem = read_bounded(path, MAX_TOKEN_FILE).map_err(|e| format!("{}: {e}", path.display()))?;
    if let Err(e) = jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()) {
        return Err(format!(
            "{} is not a PEM RSA private key (the .pem file GitHub generates for the App): {e}",
            path.display()
        ));
    }
    Ok(Secret(pem))
}

/// A token file's token, or why it cannot be read.
pub(crate) fn read_token_file(path: &Path) -> Result<Secret, String> {
    read_bounded(path, MAX_TOKEN_FILE)
        .map(Secret)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Reads layered values through the typed key constants, counting each read, so a test
/// can check that every declared key is consumed exactly once.
pub(crate) struct Reader<'a> {
    l: &'a Layered,
    reads: std::cell::RefCell<BTreeMap<&'static str, u32>>,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(l: &'a Layered) -> Reader<'a> {
        Reader {
            l,
            reads: Default::default(),
        }
    }

    /// The value of `key`. A key without a value is `None` for optional types; for any
    /// other it cannot happen (every such key has a default, parsed at start): a
    /// declaration error, which the tests' default configuration would hit at once.
    pub(crate) fn get<T: FromValue>(&self, key: &Key<T>) -> T {
        let name = key.name();
        *self.reads.borrow_mut().entry(name).or_default() += 1;
        T::from_value(self.l.get(name).map(|(v, _)| v)).unwrap_or_else(|| {
            panic!("configuration key {name} has no value of its type and no default: fix its declaration in config/keys.rs")
        })
    }

    /// Where `key`'s value came from, if it is set (not counted as a read).
    pub(crate) fn source<T>(&self, key: &Key<T>) -> Option<Source> {
        self.l.get(key.name()).map(|(_, s)| s.clone())
    }

    /// How many times each key was read.
    pub(crate) fn reads(&self) -> BTreeMap<&'static str, u32> {
        self.reads.borrow().clone()
    }
}
