//! From layered values to the typed configuration: bounds, relations between keys, and
//! every problem collected before failing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

/// Check bounds and relations, and build the typed config.
pub(crate) fn build(
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

pub(crate) fn read_token_file(path: &str, err: &mut impl FnMut(&str, String)) -> Option<Secret> {
    match read_bounded(Path::new(path), MAX_TOKEN_FILE) {
        Ok(t) => Some(Secret(t)),
        Err(e) => {
            err("github.token_file", format!("{path}: {e}"));
            None
        }
    }
}
