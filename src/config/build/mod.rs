//! From layered values to the typed configuration: bounds, relations between keys, and
//! every problem collected before failing.
//!
//! One function per section builds that section's typed config and checks its keys; the
//! problems are listed section by section, in the order the sections are built.
//! `github.rs` is the `[github]` section (the credentials and the scope); `reader.rs`
//! reads values through the typed keys, counting each read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::keys::*;
use super::*;

mod arc;
pub(super) mod container;
mod github;
mod reader;

use github::github;
pub(crate) use reader::Reader;

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
    let mut warnings = vec![];
    // An ARC runner pod needs no credentials and no scope of ours.
    let jit = arc::jit_config(r, env, purpose, &mut warnings);
    let github = github(
        r,
        if jit.is_some() {
            Purpose::Inspect
        } else {
            purpose
        },
        p,
    );
    let state_dir = r.get(&STATE_DIR);
    let mut runner = runner(r, env, purpose, &state_dir, p);
    let health = health(r, p);
    let clock = clock(r, p);
    let network = network(r, p);
    let log = log(r, p);
    let control = control(r, &state_dir, p);
    if state_dir.as_os_str().is_empty() {
        p.add(STATE_DIR.name(), "must not be empty".into());
    }
    let autoheal = autoheal(r, p);
    let disk = disk(r, p);
    let shared_dir = shared_dir(r, p);
    let intake = intake(r, p);
    let scaleset = scaleset(r, &runner, p);
    let container = container::container(r, env, &state_dir, p);
    // Scale-set mode: one slot per runner the scale set may have at once.
    if runner.mode == RunnerMode::ScaleSet {
        runner.slots = scaleset.max_runners;
    }
    let entries = entries(p.l);
    let arc_pod = jit.is_some();
    if let Some(jit) = jit {
        arc::apply(&mut runner, env, jit, &mut warnings);
    }
    if github.scope.is_none() && purpose == Purpose::Run && !arc_pod {
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
        jobs: JobsConfig {
            keep: r.get(&JOBS_KEEP) as usize,
            keep_for: r.get(&JOBS_KEEP_FOR),
            lease: r.get(&JOBS_LEASE),
            renewal_late: r.get(&JOBS_RENEWAL_LATE),
            oom_score_adj: r.get(&JOB_OOM_SCORE_ADJ) as i32,
            nice: r.get(&JOB_NICE) as i32,
            memory_pressure_warn: r.get(&JOB_MEMORY_PRESSURE_WARN) as f64,
            rerun: RerunPolicy {
                enabled: r.get(&JOBS_RERUN_LOST),
                within: r.get(&JOBS_RERUN_WITHIN),
                never: r.get(&JOBS_NEVER_RERUN).unwrap_or_default(),
                max_per_job: r.get(&JOBS_MAX_RERUNS) as u32,
                max_per_hour: r.get(&JOBS_MAX_RERUNS_PER_HOUR) as u32,
            },
        },
        host: HostConfig {
            inhibit: r.get(&HOST_INHIBIT),
            windows_keep_awake: r.get(&HOST_WINDOWS_KEEP_AWAKE),
        },
        intake,
        scaleset,
        container,
        log,
        entries,
        file,
        warnings,
    })
}

/// `owner/repo@ref`, as `[runner] actions` takes them.
fn check_action(a: &str) -> Result<(), String> {
    let bad = || format!("{a:?} is not owner/repo@ref (e.g. actions/checkout@v4)");
    let (repo, rf) = a.split_once('@').ok_or_else(bad)?;
    let parts: Vec<&str> = repo.split('/').collect();
    let name = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    if parts.len() != 2
        || !parts.iter().all(|p| name(p))
        || rf.is_empty()
        || rf.contains("..")
        || rf.chars().any(char::is_whitespace)
    {
        return Err(bad());
    }
    Ok(())
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

/// `[runner]`: the install, names, labels, and the listeners' environment.
fn runner(
    r: &Reader,
    env: &dyn Env,
    purpose: Purpose,
    state_dir: &Path,
    p: &mut Problems,
) -> RunnerConfig {
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
    let mut actions = r.get(&RUNNER_ACTIONS).unwrap_or_default();
    actions.retain(|a| match check_action(a) {
        Ok(()) => true,
        Err(m) => {
            p.add(RUNNER_ACTIONS.name(), m);
            false
        }
    });
    let action_cache = r.get(&RUNNER_ACTION_CACHE);
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
        mode: r.get(&RUNNER_MODE),
        backend: r.get(&RUNNER_BACKEND),
        workspace: r.get(&RUNNER_WORKSPACE),
        action_cache: action_cache.unwrap_or_else(|| state_dir.join("actions")),
        actions,
        drain_timeout: r.get(&RUNNER_DRAIN_TIMEOUT),
        stop_grace: r.get(&RUNNER_STOP_GRACE),
        session_conflict_wait: r.get(&RUNNER_SESSION_CONFLICT_WAIT),
        update_wait: r.get(&RUNNER_UPDATE_WAIT),
        ready_timeout: r.get(&RUNNER_READY_TIMEOUT),
        stable_after: r.get(&RUNNER_STABLE_AFTER),
        failure_backoff: r.get(&RUNNER_FAILURE_BACKOFF),
        versions_dir: r.get(&RUNNER_VERSIONS_DIR),
        auto_update: r.get(&RUNNER_AUTO_UPDATE),
        env: extra_env,
        pass_env,
        jit_config: None,
    }
}

/// `[scaleset]`: the name defaults to `<name_prefix>-<host>`; at most 100 runners, at
/// least as many as kept warm.
fn scaleset(r: &Reader, runner: &RunnerConfig, p: &mut Problems) -> ScaleSetConfig {
    let name = r
        .get(&SCALESET_NAME)
        .unwrap_or_else(|| format!("{}-{}", runner.name_prefix, crate::config::this_host()));
    if name.is_empty()
        || name.len() > 100
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        p.add(
            SCALESET_NAME.name(),
            format!("{name:?} must be 1 to 100 characters of letters, digits, '-', '_' or '.' (jobs name it in runs-on)"),
        );
    }
    let runner_group = r.get(&SCALESET_RUNNER_GROUP);
    if runner_group.trim().is_empty() {
        p.add(SCALESET_RUNNER_GROUP.name(), "must not be empty".into());
    }
    let labels = r.get(&SCALESET_LABELS).unwrap_or_default();
    if !labels.is_empty() {
        if let Err(m) = check_labels(&labels) {
            p.add(SCALESET_LABELS.name(), m);
        }
    }
    let max_runners = r
        .get(&SCALESET_MAX_RUNNERS)
        .map(|n| n as usize)
        .unwrap_or(runner.slots);
    let min_runners = r.get(&SCALESET_MIN_RUNNERS) as usize;
    if min_runners > max_runners {
        p.add(
            SCALESET_MIN_RUNNERS.name(),
            format!("{min_runners} is more than scaleset.max_runners ({max_runners})"),
        );
    }
    ScaleSetConfig {
        name,
        runner_group,
        labels,
        max_runners,
        min_runners,
        poll_timeout: r.get(&SCALESET_POLL_TIMEOUT),
        conflict_limit: r.get(&SCALESET_CONFLICT_LIMIT),
        surplus_grace: r.get(&SCALESET_SURPLUS_GRACE),
    }
}

/// `[intake]`: quiet hours are `HH:MM-HH:MM` windows.
fn intake(r: &Reader, p: &mut Problems) -> IntakeConfig {
    let mut quiet_hours = vec![];
    for w in r.get(&INTAKE_QUIET_HOURS).unwrap_or_default() {
        match w.parse::<QuietWindow>() {
            Ok(q) => quiet_hours.push(q),
            Err(e) => p.add(INTAKE_QUIET_HOURS.name(), e),
        }
    }
    IntakeConfig {
        on_battery: r.get(&INTAKE_ON_BATTERY),
        min_battery: r.get(&INTAKE_MIN_BATTERY).map(|v| v as u8),
        quiet_hours,
        power_supply_dir: r.get(&INTAKE_POWER_SUPPLY_DIR),
        interval: r.get(&INTAKE_INTERVAL),
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
