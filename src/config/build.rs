//! From layered values to the typed configuration: bounds, relations between keys, and
//! every problem collected before failing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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
    let cfg = build_with(&r, l, env, purpose, file, errors);
    (cfg, r.reads())
}

fn build_with(
    r: &Reader,
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
        match (k.kind, l.get(k.dotted()).map(|(v, _)| v)) {
            (Kind::Int { min, max }, Some(Value::Int(n))) if *n < min || *n > max => {
                err(k.dotted(), format!("{n} is out of range {min}..={max}"))
            }
            (Kind::Duration { min, max }, Some(Value::Duration(d))) if *d < min || *d > max => err(
                k.dotted(),
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
    use super::keys::*;

    // API URL.
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
            err(key, m);
        }
    }

    // Token: the higher layer wins; the same layer twice is ambiguous.
    // `doctor` and `config` report an unreadable token file (a root-only credential)
    // instead of refusing to run.
    let mut token_error: Option<String> = None;
    let token_src = r.source(&GITHUB_TOKEN);
    let file_src = r.source(&GITHUB_TOKEN_FILE);
    let (token_value, token_file) = (r.get(&GITHUB_TOKEN), r.get(&GITHUB_TOKEN_FILE));
    let token =
        match (&token_src, &file_src) {
            (Some(ts), Some(fs)) if ts.rank() == fs.rank() => {
                err(
                    GITHUB_TOKEN.name(),
                    format!("set only one of github.token ({ts}) and github.token_file ({fs})"),
                );
                None
            }
            (Some(ts), Some(fs)) if fs.rank() > ts.rank() => token_file
                .and_then(|f| read_token_file_for(purpose, &f, &mut token_error, &mut err)),
            (Some(_), _) => token_value,
            (None, Some(_)) => token_file
                .and_then(|f| read_token_file_for(purpose, &f, &mut token_error, &mut err)),
            (None, None) => None,
        };
    // One rule for every source (env, file, TOML): surrounding whitespace, such as the
    // newline an editor or `echo` leaves, is not part of a token.
    let token = token.map(|t| Secret(t.0.trim().to_string()));
    if let Some(t) = &token {
        if t.0.is_empty() {
            err(GITHUB_TOKEN.name(), "is empty".into());
        } else if t.0.chars().any(|c| c.is_whitespace() || c.is_control()) {
            err(
                GITHUB_TOKEN.name(),
                "contains whitespace or control characters".into(),
            );
        }
    } else if purpose == Purpose::Run
        && token_src.is_none()
        && file_src.is_none()
        && r.source(&GITHUB_APP_ID).is_none()
    {
        err(GITHUB_TOKEN.name(),
            "no token: set GITHUB_PAT, SUPERVISOR_GITHUB_TOKEN or github.token_file (or run the simulated demo, see README)".into(),
        );
    }

    // A GitHub App instead of a token.
    let app = {
        let id = r.get(&GITHUB_APP_ID);
        let key_file = r.get(&GITHUB_APP_PRIVATE_KEY_FILE);
        let installation_id = r.get(&GITHUB_INSTALLATION_ID);
        match (id, key_file) {
            (None, None) => {
                if installation_id.is_some() {
                    err(
                        GITHUB_INSTALLATION_ID.name(),
                        "is set without github.app_id and github.app_private_key_file".into(),
                    );
                }
                None
            }
            (Some(_), None) => {
                err(
                    GITHUB_APP_PRIVATE_KEY_FILE.name(),
                    "missing: github.app_id is set; the App's private key file is needed too"
                        .into(),
                );
                None
            }
            (None, Some(_)) => {
                err(
                    GITHUB_APP_ID.name(),
                    "missing: github.app_private_key_file is set; the App's ID is needed too"
                        .into(),
                );
                None
            }
            (Some(app_id), Some(file)) => {
                if token_src.is_some() || file_src.is_some() {
                    let which = token_src
                        .as_ref()
                        .map(|s| format!("github.token ({s})"))
                        .or_else(|| {
                            file_src
                                .as_ref()
                                .map(|s| format!("github.token_file ({s})"))
                        })
                        .unwrap_or_default();
                    err(
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
                        err(GITHUB_APP_PRIVATE_KEY_FILE.name(), m);
                        None
                    }
                    Err(m) => {
                        token_error = Some(format!("the GitHub App's private key: {m}"));
                        None
                    }
                }
            }
        }
    };

    // Scope.
    let (owner, repo, org) = (
        r.get(&GITHUB_OWNER),
        r.get(&GITHUB_REPO),
        r.get(&GITHUB_ORG),
    );
    let scope = match (&owner, &repo, &org) {
        (_, _, Some(o)) if owner.is_some() || repo.is_some() => {
            err(
                GITHUB_ORG.name(),
                format!("set either github.org ({o}) or github.owner and github.repo, not both"),
            );
            None
        }
        (_, _, Some(o)) => {
            if let Err(m) = check_owner(o) {
                err(GITHUB_ORG.name(), m);
            }
            Some(Scope::Org { org: o.clone() })
        }
        (Some(o), Some(r), None) => {
            if let Err(m) = check_owner(o) {
                err(GITHUB_OWNER.name(), m);
            }
            if let Err(m) = check_repo(r) {
                err(GITHUB_REPO.name(), m);
            }
            Some(Scope::Repo {
                owner: o.clone(),
                repo: r.clone(),
            })
        }
        (Some(_), None, None) => {
            err(
                GITHUB_REPO.name(),
                "missing: set REPO_NAME (github.repo), or github.org for an organisation runner"
                    .into(),
            );
            None
        }
        (None, Some(_), None) => {
            err(
                GITHUB_OWNER.name(),
                "missing: set REPO_OWNER (github.owner)".into(),
            );
            None
        }
        // `config` and `doctor` work before a repository is chosen: they say it is missing.
        (None, None, None) if purpose != Purpose::Run => None,
        (None, None, None) => {
            err(GITHUB_OWNER.name(),
                "missing: set REPO_OWNER and REPO_NAME (github.owner, github.repo) for a repository runner, or github.org for an organisation runner".into(),
            );
            None
        }
    };

    // Runner.
    let dir = r.get(&RUNNER_DIR);
    if purpose == Purpose::Run {
        if let Err(m) = check_runner_dir(&dir) {
            err(RUNNER_DIR.name(), m);
        }
    }
    let prefix = r.get(&RUNNER_NAME_PREFIX);
    if prefix.is_empty()
        || prefix.len() > 40
        || !prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        err(
            RUNNER_NAME_PREFIX.name(),
            format!("{prefix:?} must be 1 to 40 characters of letters, digits, '-', '_' or '.'"),
        );
    }
    let labels = r.get(&RUNNER_LABELS);
    if let Err(m) = check_labels(&labels) {
        err(RUNNER_LABELS.name(), m);
    }
    let work_folder = r.get(&RUNNER_WORK_FOLDER);
    if work_folder.is_empty() || work_folder.contains("..") {
        err(
            RUNNER_WORK_FOLDER.name(),
            format!("{work_folder:?} must be a non-empty path without '..'"),
        );
    }
    // Unset tables and lists are empty, said here rather than assumed by the reader.
    let extra_env = r.get(&RUNNER_ENV).unwrap_or_default();
    for name in extra_env.keys() {
        if let Err(m) = check_env_name(name) {
            err(RUNNER_ENV.name(), m);
        }
    }
    let mut pass_env = BTreeMap::new();
    for name in r.get(&RUNNER_PASS_ENV).unwrap_or_default() {
        match check_env_name(&name) {
            Err(m) => err(RUNNER_PASS_ENV.name(), m),
            Ok(()) => {
                if let Some(v) = env.get(&name) {
                    pass_env.insert(name, v);
                }
            }
        }
    }
    let registration = r.get(&RUNNER_REGISTRATION);
    let dependencies = r.get(&HEALTH_DEPENDENCIES).unwrap_or_default();
    for dep in &dependencies {
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
            err(
                HEALTH_DEPENDENCIES.name(),
                format!("{dep:?} is not host:port"),
            );
        }
    }
    let chronyc_address = r.get(&CLOCK_CHRONYC_ADDRESS);
    if chronyc_address
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .is_none()
    {
        err(
            CLOCK_CHRONYC_ADDRESS.name(),
            format!("{chronyc_address:?} is not host:port"),
        );
    }
    let fallback_resolvers = r.get(&NETWORK_FALLBACK_RESOLVERS).unwrap_or_default();
    for ip in &fallback_resolvers {
        if ip.parse::<std::net::IpAddr>().is_err() {
            err(
                NETWORK_FALLBACK_RESOLVERS.name(),
                format!("{ip:?} is not an IP address"),
            );
        }
    }
    let (warn_offset, fault_offset) = (r.get(&CLOCK_WARN_OFFSET), r.get(&CLOCK_FAULT_OFFSET));
    if warn_offset > fault_offset {
        err(
            CLOCK_WARN_OFFSET.name(),
            format!(
                "{} is larger than clock.fault_offset ({}): a warning must come before the fault",
                humantime::format_duration(warn_offset),
                humantime::format_duration(fault_offset)
            ),
        );
    }
    let log_level = r.get(&LOG_LEVEL);
    if let Err(m) = check_log_level(&log_level) {
        err(LOG_LEVEL.name(), m);
    }
    let state_dir = r.get(&STATE_DIR);
    let control_socket = r
        .get(&CONTROL_SOCKET)
        .unwrap_or_else(|| state_dir.join("control.sock"));
    // sockaddr_un holds 107 bytes and a NUL.
    if control_socket.as_os_str().len() > 107 {
        err(
            CONTROL_SOCKET.name(),
            format!(
                "{} is {} bytes long; a Unix socket path has at most 107: set control.socket to a shorter path",
                control_socket.display(),
                control_socket.as_os_str().len()
            ),
        );
    }
    if state_dir.as_os_str().is_empty() {
        err(STATE_DIR.name(), "must not be empty".into());
    }
    let autoheal_label = r.get(&AUTOHEAL_LABEL);
    if autoheal_label.is_empty()
        || autoheal_label
            .chars()
            .any(|c| c.is_whitespace() || c == '=' || c == ',')
    {
        err(
            AUTOHEAL_LABEL.name(),
            format!(
                "{autoheal_label:?} is not a Docker label key (non-empty, no spaces, '=' or ',')"
            ),
        );
    }
    let docker_host = r.get(&DISK_DOCKER_HOST);
    if !docker_host.starts_with("unix:///") {
        err(
            DISK_DOCKER_HOST.name(),
            format!("{docker_host:?} must be a Unix socket, unix:///path/to/docker.sock (a TCP engine or a socket proxy needs a Unix socket here)"),
        );
    }
    let shared_dir = r.get(&STATE_SHARED_DIR);
    if shared_dir.as_os_str().is_empty() {
        err(
            STATE_SHARED_DIR.name(),
            "must not be empty (it holds the fleet's status files and the pruner lock)".into(),
        );
    }

    let entries = KEYS
        .iter()
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
        .collect();

    let metrics_listen = match r.get(&METRICS_LISTEN).filter(|v| !v.trim().is_empty()) {
        None => None,
        Some(v) => match v.trim().parse::<std::net::SocketAddr>().ok().or_else(|| {
            // A host name (localhost:9464) resolves here, once.
            use std::net::ToSocketAddrs;
            v.trim().to_socket_addrs().ok().and_then(|mut a| a.next())
        }) {
            Some(a) => Some(a),
            None => {
                err(
                    METRICS_LISTEN.name(),
                    format!("{v:?} is not host:port (e.g. 127.0.0.1:9464, localhost:9464 or [::1]:9464)"),
                );
                None
            }
        },
    };

    if scope.is_none() && purpose == Purpose::Run {
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
            token_error,
            app,
            scope,
            connect_timeout: r.get(&GITHUB_CONNECT_TIMEOUT),
            request_timeout: r.get(&GITHUB_REQUEST_TIMEOUT),
            max_retries: r.get(&GITHUB_MAX_RETRIES) as u32,
            backoff_base: r.get(&GITHUB_BACKOFF_BASE),
            backoff_cap: r.get(&GITHUB_BACKOFF_CAP),
            max_rate_limit_wait: r.get(&GITHUB_MAX_RATE_LIMIT_WAIT),
        },
        runner: RunnerConfig {
            dir,
            name_prefix: prefix,
            labels,
            slots: r.get(&RUNNER_SLOTS) as usize,
            group_id: r.get(&RUNNER_GROUP_ID),
            work_folder,
            registration,
            drain_timeout: r.get(&RUNNER_DRAIN_TIMEOUT),
            stop_grace: r.get(&RUNNER_STOP_GRACE),
            session_conflict_wait: r.get(&RUNNER_SESSION_CONFLICT_WAIT),
            update_wait: r.get(&RUNNER_UPDATE_WAIT),
            ready_timeout: r.get(&RUNNER_READY_TIMEOUT),
            stable_after: r.get(&RUNNER_STABLE_AFTER),
            failure_backoff: r.get(&RUNNER_FAILURE_BACKOFF),
            env: extra_env,
            pass_env,
        },
        state_dir,
        network: NetworkConfig {
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
        },
        watchdog: WatchdogConfig {
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
        },
        clock: ClockConfig {
            ntp_servers: r.get(&CLOCK_NTP_SERVERS),
            interval: r.get(&CLOCK_INTERVAL),
            warn_offset,
            fault_offset,
            chronyc: r.get(&CLOCK_CHRONYC),
            chronyc_address,
            makestep: r.get(&CLOCK_MAKESTEP),
            lock_file: r.get(&CLOCK_LOCK_FILE),
        },
        token: TokenConfig {
            check_interval: r.get(&TOKEN_CHECK_INTERVAL),
            expiry_warning: r.get(&TOKEN_EXPIRY_WARNING),
        },
        health: HealthConfig {
            unhealthy_after: r.get(&HEALTH_UNHEALTHY_AFTER),
            dependencies,
        },
        disk: DiskConfig {
            prune: r.get(&DISK_PRUNE),
            docker_host,
            path: r.get(&DISK_PATH),
            threshold_gb: r.get(&DISK_THRESHOLD_GB),
            interval: r.get(&DISK_INTERVAL),
            until: r.get(&DISK_UNTIL),
            keep_images: r.get(&DISK_KEEP_IMAGES).unwrap_or_default(),
        },
        autoheal: AutohealConfig {
            label: autoheal_label,
            interval: r.get(&AUTOHEAL_INTERVAL),
            stop_timeout: r.get(&AUTOHEAL_STOP_TIMEOUT),
            max_restarts: r.get(&AUTOHEAL_MAX_RESTARTS) as u32,
            window: r.get(&AUTOHEAL_WINDOW),
        },
        shared_dir,
        control: ControlConfig {
            socket: control_socket,
            metrics_listen,
        },
        log: LogConfig {
            json: r.get(&LOG_FORMAT) == LogFormat::Json,
            level: log_level,
        },
        entries,
        file,
        warnings: vec![],
    })
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

fn read_token_file_for(
    purpose: Purpose,
    path: &Path,
    token_error: &mut Option<String>,
    err: &mut impl FnMut(&str, String),
) -> Option<Secret> {
    if purpose == Purpose::Run {
        return read_token_file(path, err);
    }
    read_token_file(path, &mut |_: &str, m: String| *token_error = Some(m))
}

pub(crate) fn read_token_file(path: &Path, err: &mut impl FnMut(&str, String)) -> Option<Secret> {
    let path = path.display();
    match read_bounded(Path::new(&path.to_string()), MAX_TOKEN_FILE) {
        Ok(t) => Some(Secret(t)),
        Err(e) => {
            err(
                super::keys::GITHUB_TOKEN_FILE.name(),
                format!("{path}: {e}"),
            );
            None
        }
    }
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
