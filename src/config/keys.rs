//! Every configuration key, declared once: its Rust type, section and name, kind and
//! bounds, default, extra environment names and documentation. Each becomes a typed
//! constant ([`Key`]) that `build` reads through, so a misspelt key does not compile, and
//! [`KEYS`], which drives the TOML reader, the env reader, `--set`, `supervisor config`
//! and the example file. A test checks that `build` reads every key exactly once.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::{
    AutoUpdate, ChronycMode, Key, KeySpec, Kind, ListenerKeepalive, LogFormat, OnBattery,
    RegistrationMode, RunnerMode, Secret, Toggle,
};
use super::{Backend, Workspace};
use super::{Inhibit, WindowsKeepAwake};

const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

macro_rules! keys {
    ($( $name:ident : $t:ty = $section:literal . $key:literal, $kind:expr, $default:expr, $aliases:expr, $doc:literal; )*) => {
        $(
            #[doc = $doc]
            pub const $name: Key<$t> = Key::new(KeySpec {
                section: $section,
                key: $key,
                dotted: concat!($section, ".", $key),
                kind: $kind,
                default: $default,
                aliases: $aliases,
                doc: $doc,
            });
        )*
        /// Every key. Order is the order of `config/supervisor.toml` and `supervisor config`.
        pub const KEYS: &[&KeySpec] = &[$(&$name.spec),*];
    };
}

keys! {
    GITHUB_API_URL: String = "github" . "api_url", Kind::Url, Some("https://api.github.com"), &[],
        "REST API base; GHES uses https://HOST/api/v3";
    GITHUB_WEB_URL: Option<String> = "github" . "web_url", Kind::Url, None, &[],
        "web base for config.sh --url; derived from api_url when unset";
    GITHUB_TOKEN: Option<Secret> = "github" . "token", Kind::Secret, None, &["GITHUB_PAT"],
        "classic or fine-grained PAT; prefer token_file";
    GITHUB_TOKEN_FILE: Option<PathBuf> = "github" . "token_file", Kind::Path, None, &[],
        "file holding the token (Docker secret, systemd credential)";
    GITHUB_APP_ID: Option<u64> = "github" . "app_id", Kind::Int { min: 1, max: 1 << 53 }, None, &[],
        "GitHub App authentication instead of a token: the App's ID (Settings > Developer settings > GitHub Apps > the App > App ID)";
    GITHUB_APP_PRIVATE_KEY_FILE: Option<PathBuf> = "github" . "app_private_key_file", Kind::Path, None, &[],
        "the App's private key (the .pem GitHub generates), mode 0600 or stricter (a systemd credential, a Docker secret)";
    GITHUB_INSTALLATION_ID: Option<u64> = "github" . "installation_id", Kind::Int { min: 1, max: 1 << 53 }, None, &[],
        "the App's installation to use; found from the repository or organisation when unset";
    GITHUB_OWNER: Option<String> = "github" . "owner", Kind::Str, None, &["REPO_OWNER"],
        "repository owner, for repository runners";
    GITHUB_REPO: Option<String> = "github" . "repo", Kind::Str, None, &["REPO_NAME"],
        "repository name, for repository runners";
    GITHUB_ORG: Option<String> = "github" . "org", Kind::Str, None, &[],
        "organisation, for organisation runners (instead of owner and repo)";
    GITHUB_CONNECT_TIMEOUT: Duration = "github" . "connect_timeout", Kind::Duration { min: secs(1), max: secs(300), }, Some("10s"), &[],
        "TCP and TLS connect timeout";
    GITHUB_REQUEST_TIMEOUT: Duration = "github" . "request_timeout", Kind::Duration { min: secs(1), max: secs(600), }, Some("30s"), &[],
        "whole-request timeout";
    GITHUB_MAX_RETRIES: u64 = "github" . "max_retries", Kind::Int { min: 0, max: 20 }, Some("4"), &[],
        "retries of a transient failure or rate limit before giving up";
    GITHUB_BACKOFF_BASE: Duration = "github" . "backoff_base", Kind::Duration { min: Duration::from_millis(10), max: secs(60), }, Some("1s"), &[],
        "first back-off step; doubles, with jitter";
    GITHUB_BACKOFF_CAP: Duration = "github" . "backoff_cap", Kind::Duration { min: Duration::from_millis(100), max: secs(3600), }, Some("5m"), &[],
        "longest back-off step";
    GITHUB_MAX_RATE_LIMIT_WAIT: Duration = "github" . "max_rate_limit_wait", Kind::Duration { min: secs(60), max: secs(7200), }, Some("15m"), &[],
        "a rate limit longer than this is returned to the caller instead of waited out";
    RUNNER_DIR: PathBuf = "runner" . "dir", Kind::Path, Some("/home/runner/actions-runner"), &[],
        "the runner's install directory, holding bin/Runner.Listener";
    RUNNER_NAME_PREFIX: String = "runner" . "name_prefix", Kind::Str, Some("runner"), &["RUNNER_NAME"],
        "runner names are <prefix>-<host>-<slot>-<random>";
    RUNNER_LABELS: Vec<String> = "runner" . "labels", Kind::List, Some("self-hosted,Linux,X64"), &["SUPERVISOR_LABELS"],
        "labels for every runner (at most 100, 256 characters each)";
    RUNNER_SLOTS: u64 = "runner" . "slots", Kind::Int { min: 1, max: 100 }, Some("1"), &["SUPERVISOR_SLOTS"],
        "runners supervised at once";
    RUNNER_GROUP_ID: u64 = "runner" . "group_id", Kind::Int { min: 1, max: u32::MAX as u64, }, Some("1"), &[],
        "runner group id (1 is the default group)";
    RUNNER_WORK_FOLDER: String = "runner" . "work_folder", Kind::Str, Some("_work"), &[],
        "job work folder, relative to the runner root";
    RUNNER_REGISTRATION: RegistrationMode = "runner" . "registration", Kind::Enum(&["auto", "jit", "token"]), Some("auto"), &[],
        "jit, token (config.sh fallback), or auto (jit, falling back when the server has none)";
    RUNNER_MODE: RunnerMode = "runner" . "mode", Kind::Enum(&["slots", "scaleset"]), Some("slots"), &[],
        "slots: each slot keeps an idle Runner.Listener registered and long-polling; scaleset: one long-poll for the whole host through GitHub's runner scale-set API ([scaleset]), and a just-in-time runner only when a job is assigned (jobs must use runs-on: <scale set name>)";
    RUNNER_DRAIN_TIMEOUT: Duration = "runner" . "drain_timeout", Kind::Duration { min: secs(0), max: secs(7 * 24 * 3600), }, Some("15m"), &[],
        "on SIGTERM, how long a busy runner may finish its job";
    RUNNER_STOP_GRACE: Duration = "runner" . "stop_grace", Kind::Duration { min: secs(1), max: secs(600), }, Some("30s"), &[],
        "SIGINT-to-SIGKILL wait when stopping a listener";
    RUNNER_SESSION_CONFLICT_WAIT: Duration = "runner" . "session_conflict_wait", Kind::Duration { min: secs(0), max: secs(600), }, Some("30s"), &["SESSION_CONFLICT_WAIT"],
        "wait before re-registering a fixed-name runner after a session conflict";
    RUNNER_UPDATE_WAIT: Duration = "runner" . "update_wait", Kind::Duration { min: secs(1), max: secs(600), }, Some("35s"), &[],
        "after exit code 3 or 4, how long to wait for update.finished";
    RUNNER_READY_TIMEOUT: Duration = "runner" . "ready_timeout", Kind::Duration { min: secs(1), max: secs(3600), }, Some("5m"), &[],
        "a listener not listening by then is stopped and replaced";
    RUNNER_STABLE_AFTER: Duration = "runner" . "stable_after", Kind::Duration { min: secs(1), max: secs(3600), }, Some("60s"), &[],
        "a listener listening this long ends a run of failures (as does a completed job); until then failures back off exponentially from failure_backoff, doubling to 5 min";
    RUNNER_FAILURE_BACKOFF: Duration = "runner" . "failure_backoff", Kind::Duration { min: Duration::from_millis(10), max: secs(300), }, Some("2s"), &[],
        "the first wait of a failing slot (a crash loop, a failed registration or start), doubling to 5 min, with jitter";
    RUNNER_AUTO_UPDATE: AutoUpdate = "runner" . "auto_update", Kind::Enum(&["on", "notify", "off"]), Some("on"), &[],
        "on: a newer runner release is downloaded (checksum verified) and the slots move to it between jobs, one canary slot first, rolled back after two canary failures; notify: status and doctor only say it is out; off: neither";
    RUNNER_VERSIONS_DIR: Option<PathBuf> = "runner" . "versions_dir", Kind::Path, None, &[],
        "runner versions the supervisor installs, one directory per version, shared by supervisors that point at it (default: <state dir>/runners; on a disk that survives a reboot, never a tmpfs such as /run); [runner] dir stays untouched";
    RUNNER_ACTION_CACHE: Option<PathBuf> = "runner" . "action_cache", Kind::Path, None, &[],
        "the runner's action archive cache (ACTIONS_RUNNER_ACTION_ARCHIVE_CACHE, runner 2.310+): <owner>_<repo>/<sha>.tar.gz, filled by the supervisor (the actions below, and every action a job had to download), read-only to jobs (default: <state dir>/actions)";
    RUNNER_ACTIONS: Option<Vec<String>> = "runner" . "actions", Kind::List, None, &[],
        "actions to have in the archive cache before any job needs them, owner/repo@ref (resolved through the API at start)";
    RUNNER_ENV: Option<BTreeMap<String, String>> = "runner" . "env", Kind::Map, None, &[],
        "extra environment for the runner and its jobs, NAME = value";
    RUNNER_PASS_ENV: Option<Vec<String>> = "runner" . "pass_env", Kind::List, None, &[],
        "names of supervisor environment variables passed on to the runner";
    RUNNER_BACKEND: Backend = "runner" . "backend", Kind::Enum(&["process", "container"]), Some("process"), &[],
        "how a runner is started: process (a child of the supervisor, in this file system) or container (a fresh container of [container] image for every job, through the Docker engine, removed after it)";
    RUNNER_WORKSPACE: Workspace = "runner" . "workspace", Kind::Enum(&["fresh", "kept"]), Some("fresh"), &[],
        "fresh: a slot's work folder is emptied before every listener, so no job sees a file of an earlier one (declared caches excepted); kept: it stays from job to job";
    CONTAINER_IMAGE: String = "container" . "image", Kind::Str, Some("runner-supervisor:local"), &[],
        "the image every job container runs (default: the one compose/ builds); it needs the runner's dependencies, sh and bash, not the runner itself (the supervisor mounts it read-only)";
    CONTAINER_DOCKER_HOST: Option<String> = "container" . "docker_host", Kind::Str, None, &[],
        "the engine job containers are made on: unix:///path or tcp://host:port (default: DOCKER_HOST, else unix:///var/run/docker.sock)";
    CONTAINER_NETWORK: Option<String> = "container" . "network", Kind::Str, None, &[],
        "the network job containers join: a network name, or host (default: the engine's default bridge)";
    CONTAINER_MEMORY: Option<String> = "container" . "memory", Kind::Str, None, &[],
        "each job container's memory limit, e.g. 4g or 512m (over it, the job is OOM-killed inside its container, lost with cause oom, and re-run)";
    CONTAINER_CPUS: Option<String> = "container" . "cpus", Kind::Str, None, &[],
        "each job container's CPU limit, in CPUs, e.g. 1.5";
    CONTAINER_PIDS_LIMIT: Option<u64> = "container" . "pids_limit", Kind::Int { min: 16, max: 4_194_304 }, None, &[],
        "each job container's limit on processes and threads";
    CONTAINER_SHM_SIZE: Option<String> = "container" . "shm_size", Kind::Str, None, &[],
        "each job container's /dev/shm, e.g. 1g (browsers want more than the engine's 64m)";
    CONTAINER_VOLUMES: Option<Vec<String>> = "container" . "volumes", Kind::List, None, &[],
        "caches shared by every job: SRC:DST[:ro], SRC a named volume or an absolute host path the engine sees (comma-separated in the environment)";
    CONTAINER_ENV: Option<BTreeMap<String, String>> = "container" . "env", Kind::Map, None, &[],
        "extra variables for each job container, NAME = value, with placeholders {runner_name}, {slot}, {repo_owner}, {repo_name}, {org}, {hostname}";
    CONTAINER_USER: Option<String> = "container" . "user", Kind::Str, None, &[],
        "the user the runner runs as in the container, uid[:gid] or a name the image knows (default: the image's)";
    CONTAINER_DOCKER: String = "container" . "docker", Kind::Str, Some("none"), &[],
        "whether jobs may use a Docker engine: none, host (the engine's own socket, mounted: root on the host), or the URL of a filtering proxy (unix:///path or tcp://host:port), given as DOCKER_HOST";
    CONTAINER_TOOL_CACHE: Option<PathBuf> = "container" . "tool_cache", Kind::Path, None, &[],
        "the warm tool cache, a copy-on-write view per job at /opt/hostedtoolcache (RUNNER_TOOL_CACHE, AGENT_TOOLSDIRECTORY); new tool versions of successful jobs are promoted into a new generation (default: <state dir>/toolcache)";
    SCALESET_NAME: Option<String> = "scaleset" . "name", Kind::Str, None, &[],
        "the scale set's name, what jobs name in runs-on (default <name_prefix>-<host>); give each host its own";
    SCALESET_RUNNER_GROUP: String = "scaleset" . "runner_group", Kind::Str, Some("Default"), &[],
        "the runner group the scale set is in, by name";
    SCALESET_LABELS: Option<Vec<String>> = "scaleset" . "labels", Kind::List, None, &[],
        "extra labels of the scale set, after its name (GitHub does not reliably route on them: use runs-on: <name>)";
    SCALESET_MAX_RUNNERS: Option<u64> = "scaleset" . "max_runners", Kind::Int { min: 1, max: 100 }, None, &[],
        "at most this many runners at once (default [runner] slots); sent as X-ScaleSetMaxCapacity";
    SCALESET_MIN_RUNNERS: u64 = "scaleset" . "min_runners", Kind::Int { min: 0, max: 100 }, Some("0"), &[],
        "warm runners kept registered and listening while no job is assigned (0: no idle listener at all)";
    SCALESET_POLL_TIMEOUT: Duration = "scaleset" . "poll_timeout", Kind::Duration { min: Duration::from_millis(100), max: secs(600) }, Some("70s"), &[],
        "a long poll that neither answers nor fails this long is dead (GitHub holds a poll about 50 s): a new connection polls again";
    SCALESET_CONFLICT_LIMIT: Duration = "scaleset" . "conflict_limit", Kind::Duration { min: secs(1), max: secs(3600) }, Some("5m"), &[],
        "wait out a session conflict (a crashed session lasts about 50 s) this long before saying another host uses the name";
    SCALESET_SURPLUS_GRACE: Duration = "scaleset" . "surplus_grace", Kind::Duration { min: Duration::from_millis(10), max: secs(3600) }, Some("30s"), &[],
        "a listening runner no assigned job needs (its assignment lapsed or was cancelled) is stopped and removed after this long";
    STATE_DIR: PathBuf = "state" . "dir", Kind::Path, Some("/var/lib/runner-supervisor"), &[],
        "state directory: per-slot runner roots, status, breaker";
    STATE_SHARED_DIR: PathBuf = "state" . "shared_dir", Kind::Path, Some("/run/runner-supervisor"), &[],
        "shared by every supervisor on this host or Docker engine (one volume in compose): each publishes its status in fleet/, and the one pruner holds pruner.lock";
    NETWORK_KEEPALIVE_IDLE: Duration = "network" . "keepalive_idle", Kind::Duration { min: secs(1), max: secs(7200), }, Some("60s"), &[],
        "TCP keepalive idle time on every GitHub connection";
    NETWORK_KEEPALIVE_INTERVAL: Duration = "network" . "keepalive_interval", Kind::Duration { min: secs(1), max: secs(600), }, Some("10s"), &[],
        "TCP keepalive probe interval";
    NETWORK_KEEPALIVE_PROBES: u64 = "network" . "keepalive_probes", Kind::Int { min: 1, max: 50 }, Some("6"), &[],
        "TCP keepalive probes before the connection is dropped";
    NETWORK_SET_SYSCTLS: Toggle = "network" . "set_sysctls", Kind::Enum(&["auto", "on", "off"]), Some("auto"), &[],
        "set net.ipv4.tcp_keepalive_* to the values above: auto = only in a container's own network namespace";
    NETWORK_LISTENER_KEEPALIVE: ListenerKeepalive = "network" . "listener_keepalive", Kind::Enum(&["auto", "off"]), Some("auto"), &[],
        "set the keepalive above (and user_timeout) on the listener's own connections, which it never enables itself (pidfd_getfd; auto = wherever the kernel permits, off = never touch them)";
    NETWORK_USER_TIMEOUT: Duration = "network" . "user_timeout", Kind::Duration { min: secs(0), max: secs(3600), }, Some("0s"), &[],
        "TCP_USER_TIMEOUT on the listener's connections: sent data unacknowledged this long (or keepalive unanswered) fails the connection by itself, and the watchdog waits that long beyond socket_stall; 0 for none (keepalive fails a silent path after interval x probes)";
    NETWORK_DNS_INTERVAL: Duration = "network" . "dns_interval", Kind::Duration { min: Duration::from_millis(100), max: secs(3600) }, Some("60s"), &[],
        "how often the API host is resolved (and resolvers checked)";
    NETWORK_FALLBACK_RESOLVERS: Option<Vec<String>> = "network" . "fallback_resolvers", Kind::List, None, &[],
        "container mode: nameservers put first in resolv_conf while the primary ones fail";
    NETWORK_RESOLV_CONF: PathBuf = "network" . "resolv_conf", Kind::Path, Some("/etc/resolv.conf"), &[],
        "the resolv.conf managed in container mode";
    NETWORK_DNS_PORT: u64 = "network" . "dns_port", Kind::Int { min: 1, max: 65535 }, Some("53"), &[],
        "port used to query nameservers directly";
    WATCHDOG_GRACE: Duration = "watchdog" . "grace", Kind::Duration { min: secs(1), max: secs(3600) }, Some("120s"), &[],
        "an idle listener whose connect error is not followed by a recovery within this is replaced";
    WATCHDOG_JOB_STALL_TIMEOUT: Duration = "watchdog" . "job_stall_timeout", Kind::Duration { min: secs(1), max: secs(24 * 3600) }, Some("30m"), &[],
        "the same for a listener busy with a job";
    WATCHDOG_MAX_FIRES: u64 = "watchdog" . "max_fires", Kind::Int { min: 1, max: 1000 }, Some("5"), &["WATCHDOG_MAX_FIRES"],
        "more watchdog fires than this within the window open the circuit breaker";
    WATCHDOG_WINDOW: Duration = "watchdog" . "window", Kind::Duration { min: secs(1), max: secs(7 * 24 * 3600) }, Some("1h"), &[],
        "the circuit breaker's sliding window";
    WATCHDOG_OPEN_FOR: Duration = "watchdog" . "open_for", Kind::Duration { min: secs(1), max: secs(24 * 3600) }, Some("10m"), &[],
        "how long an open circuit breaker pauses the slot";
    WATCHDOG_RETRYABLE_EXITS: u64 = "watchdog" . "retryable_exits", Kind::Int { min: 1, max: 100 }, Some("3"), &[],
        "consecutive exit-2 exits that count as a watchdog fire";
    WATCHDOG_SOCKET_STALL: Duration = "watchdog" . "socket_stall", Kind::Duration { min: secs(1), max: secs(3600) }, Some("60s"), &[],
        "a listener connection with retransmissions or keepalive probes outstanding this long (beyond its own keepalive or user timeout) is a dead path";
    WATCHDOG_SOCKET_CHECK_INTERVAL: Duration = "watchdog" . "socket_check_interval", Kind::Duration { min: Duration::from_millis(100), max: secs(600) }, Some("4s"), &[],
        "how often the listener's TCP connections are inspected";
    WATCHDOG_SILENT_AFTER: Duration = "watchdog" . "silent_after", Kind::Duration { min: secs(1), max: secs(24 * 3600) }, Some("180s"), &[],
        "an idle listener none of whose connections has received data this long is hung (GitHub answers a poll within ~50 s, the listener's own timeout is 100 s, plus a margin)";
    WATCHDOG_OFFLINE_AFTER: Duration = "watchdog" . "offline_after", Kind::Duration { min: secs(1), max: secs(24 * 3600) }, Some("10m"), &[],
        "a listening runner that GitHub shows offline this long is replaced";
    WATCHDOG_OFFLINE_CHECK_INTERVAL: Duration = "watchdog" . "offline_check_interval", Kind::Duration { min: secs(1), max: secs(24 * 3600) }, Some("5m"), &[],
        "how often GitHub's view of listening runners is checked (one API call)";
    CLOCK_NTP_SERVERS: Vec<String> = "clock" . "ntp_servers", Kind::List, Some("pool.ntp.org,time.cloudflare.com"), &[],
        "SNTP servers (host or host:port) for measuring the clock offset";
    CLOCK_INTERVAL: Duration = "clock" . "interval", Kind::Duration { min: Duration::from_millis(100), max: secs(24 * 3600) }, Some("60s"), &[],
        "how often the clock offset is measured";
    CLOCK_WARN_OFFSET: Duration = "clock" . "warn_offset", Kind::Duration { min: Duration::from_millis(10), max: secs(3600) }, Some("2s"), &[],
        "offsets beyond this are warned about";
    CLOCK_FAULT_OFFSET: Duration = "clock" . "fault_offset", Kind::Duration { min: secs(1), max: secs(24 * 3600) }, Some("5m"), &[],
        "offsets beyond this are a clock fault (the runner's OAuth fails): registrations pause";
    CLOCK_CHRONYC: ChronycMode = "clock" . "chronyc", Kind::Enum(&["auto", "required", "off"]), Some("auto"), &[],
        "watch chronyd through chronyc: auto (if installed), required, off";
    CLOCK_CHRONYC_ADDRESS: String = "clock" . "chronyc_address", Kind::Str, Some("127.0.0.1:323"), &[],
        "chronyd's command address (read-only, loopback)";
    CLOCK_MAKESTEP: bool = "clock" . "makestep", Kind::Bool, Some("false"), &[],
        "on a clock fault, ask chronyd to step (chronyc makestep); the supervisor never sets the clock itself";
    CLOCK_LOCK_FILE: PathBuf = "clock" . "lock_file", Kind::Path, Some("/run/runner-supervisor/clock.lock"), &[],
        "only the supervisor holding this lock may ask chronyd to step; others stay monitor-only";
    TOKEN_CHECK_INTERVAL: Duration = "token" . "check_interval", Kind::Duration { min: Duration::from_millis(100), max: secs(7 * 24 * 3600) }, Some("6h"), &[],
        "how often the token is re-validated (also at start and on resume)";
    TOKEN_EXPIRY_WARNING: Duration = "token" . "expiry_warning", Kind::Duration { min: secs(0), max: secs(365 * 24 * 3600) }, Some("14d"), &[],
        "warn this long before the token expires";
    HEALTH_UNHEALTHY_AFTER: Duration = "health" . "unhealthy_after", Kind::Duration { min: secs(1), max: secs(24 * 3600) }, Some("3m"), &[],
        "a slot failing this long (not during a job) makes health unhealthy";
    HEALTH_DEPENDENCIES: Option<Vec<String>> = "health" . "dependencies", Kind::List, None, &[],
        "host:port services (e.g. mongo:27017) whose loss is reported as degraded";
    DISK_PRUNE: Toggle = "disk" . "prune", Kind::Enum(&["auto", "on", "off"]), Some("auto"), &[],
        "prune Docker when disk runs low: auto = when the Docker socket exists";
    DISK_DOCKER_HOST: String = "disk" . "docker_host", Kind::Str, Some("unix:///var/run/docker.sock"), &[],
        "the Docker engine's socket";
    DISK_PATH: Option<PathBuf> = "disk" . "path", Kind::Path, None, &[],
        "file system to watch; Docker's data root when unset";
    DISK_THRESHOLD_GB: u64 = "disk" . "threshold_gb", Kind::Int { min: 1, max: 1_000_000 }, Some("10"), &["PRUNE_THRESHOLD_GB"],
        "prune when less than this many GB are free; critical below half of it";
    DISK_INTERVAL: Duration = "disk" . "interval", Kind::Duration { min: Duration::from_millis(100), max: secs(24 * 3600) }, Some("60s"), &[],
        "how often free space is checked";
    DISK_UNTIL: Duration = "disk" . "until", Kind::Duration { min: secs(0), max: secs(365 * 24 * 3600) }, Some("6h"), &[],
        "only prune containers and images older than this";
    DISK_KEEP_IMAGES: Option<Vec<String>> = "disk" . "keep_images", Kind::List, None, &[],
        "images never removed (caches such as mongo:7.0); volumes are never pruned";
    AUTOHEAL_LABEL: String = "autoheal" . "label", Kind::Str, Some("io.github.runner-supervisor.autoheal"), &[],
        "supervisor autoheal restarts only unhealthy containers whose label of this name is \"true\"";
    AUTOHEAL_INTERVAL: Duration = "autoheal" . "interval", Kind::Duration { min: Duration::from_millis(100), max: secs(3600) }, Some("30s"), &[],
        "how often labelled containers are re-checked (Docker's health events act at once)";
    AUTOHEAL_STOP_TIMEOUT: Duration = "autoheal" . "stop_timeout", Kind::Duration { min: secs(1), max: secs(7 * 24 * 3600) }, Some("16m"), &[],
        "SIGTERM-to-SIGKILL wait of a restart, at least a runner's drain_timeout + stop_grace; a container's own longer stop timeout (compose stop_grace_period) wins";
    AUTOHEAL_MAX_RESTARTS: u64 = "autoheal" . "max_restarts", Kind::Int { min: 1, max: 1000 }, Some("3"), &[],
        "restarts of one container within the window; past that it is left alone (no restart storm)";
    AUTOHEAL_WINDOW: Duration = "autoheal" . "window", Kind::Duration { min: secs(1), max: secs(7 * 24 * 3600) }, Some("1h"), &[],
        "the sliding window of max_restarts";
    JOBS_KEEP: u64 = "jobs" . "keep", Kind::Int { min: 10, max: 1_000_000 }, Some("1000"), &[],
        "job records kept in <state dir>/jobs.redb (supervisor jobs); the oldest go first";
    JOBS_LEASE: Duration = "jobs" . "lease", Kind::Duration { min: secs(60), max: secs(24 * 3600) }, Some("15m"), &[],
        "a suspend longer than this while a slot is busy loses its job (the runner renews it every 60 s, each renewal holding about 10 min): its listener is replaced at once on resume";
    JOBS_RENEWAL_LATE: Duration = "jobs" . "renewal_late", Kind::Duration { min: secs(1), max: secs(600) }, Some("90s"), &[],
        "a busy listener that has not renewed its job's lease this long (it renews every 60 s; ACTIONS_RUNNER_PRINT_LOG_TO_STDOUT=1 shows the renewals) is shown and logged as late, before GitHub declares the runner lost";
    JOBS_KEEP_FOR: Duration = "jobs" . "keep_for", Kind::Duration { min: secs(3600), max: secs(3650 * 24 * 3600) }, Some("30d"), &[],
        "job records older than this go too";
    JOBS_RERUN_LOST: bool = "jobs" . "rerun_lost", Kind::Bool, Some("true"), &[],
        "re-run a job the host lost (its listener died, the host slept past the lease, the supervisor was killed, a drain ran out) once its run has completed and if it did not succeed (needs the Actions write permission: classic token repo, fine-grained Actions read and write, GitHub App actions: write)";
    JOBS_RERUN_WITHIN: Duration = "jobs" . "rerun_within", Kind::Duration { min: secs(60), max: secs(7 * 24 * 3600) }, Some("6h"), &[],
        "give up re-running a lost job whose run has not completed within this time";
    JOBS_NEVER_RERUN: Option<Vec<String>> = "jobs" . "never_rerun", Kind::List, None, &[],
        "workflows (by name, as GITHUB_WORKFLOW) whose lost jobs are only recorded, never re-run, e.g. [\"Deploy\"]";
    JOBS_MAX_RERUNS: u64 = "jobs" . "max_reruns", Kind::Int { min: 1, max: 10 }, Some("1"), &[],
        "re-runs of one job across its attempts";
    JOBS_MAX_RERUNS_PER_HOUR: u64 = "jobs" . "max_reruns_per_hour", Kind::Int { min: 1, max: 1000 }, Some("10"), &[],
        "re-runs this supervisor requests in any hour: a host that keeps losing jobs does not loop";
    JOB_OOM_SCORE_ADJ: u64 = "job" . "oom_score_adj", Kind::Int { min: 0, max: 1000 }, Some("500"), &[],
        "set on each job's Runner.Worker as soon as it appears (its processes inherit it): under memory pressure the kernel kills the job, not the listener or the supervisor";
    JOB_MEMORY_PRESSURE_WARN: u64 = "job" . "memory_pressure_warn", Kind::Int { min: 1, max: 100 }, Some("10"), &[],
        "memory pressure (PSI some avg10, percent) above which an episode is logged once; shown in status and metrics";
    JOB_NICE: u64 = "job" . "nice", Kind::Int { min: 0, max: 19 }, Some("0"), &[],
        "nice value set on each job's Runner.Worker (its processes inherit it)";
    HOST_INHIBIT: Inhibit = "host" . "inhibit", Kind::Enum(&["block", "delay", "off"]), Some("block"), &[],
        "while any slot runs a job, hold systemd-logind inhibitor locks on sleep and on shutdown: block (they wait until the last job ends; a service needs systemd/runner-supervisor-inhibit.rules), delay (logind's short delay only), off";
    HOST_WINDOWS_KEEP_AWAKE: WindowsKeepAwake = "host" . "windows_keep_awake", Kind::Enum(&["auto", "off"]), Some("auto"), &[],
        "WSL2 with Windows interop: while any slot runs a job, keep Windows itself from sleeping through a powershell.exe helper (auto = wherever interop works; systemd/README.md says its limits)";
    INTAKE_ON_BATTERY: OnBattery = "intake" . "on_battery", Kind::Enum(&["continue", "stop"]), Some("continue"), &[],
        "stop: while the host runs on battery, take no new jobs (idle listeners stop and their registrations are deleted; busy ones finish; GitHub keeps the jobs queued)";
    INTAKE_MIN_BATTERY: Option<u64> = "intake" . "min_battery", Kind::Int { min: 1, max: 100 }, None, &[],
        "on battery, take no new jobs below this charge (percent)";
    INTAKE_QUIET_HOURS: Option<Vec<String>> = "intake" . "quiet_hours", Kind::List, None, &[],
        "local-time windows in which no new jobs are taken, e.g. [\"22:00-07:00\"] (a window may span midnight)";
    INTAKE_POWER_SUPPLY_DIR: PathBuf = "intake" . "power_supply_dir", Kind::Path, Some("/sys/class/power_supply"), &[],
        "where the power supplies are read (a host's sysfs mounted elsewhere in a container)";
    INTAKE_INTERVAL: Duration = "intake" . "interval", Kind::Duration { min: Duration::from_millis(100), max: secs(3600) }, Some("30s"), &[],
        "how often power is read (quiet hours begin and end on the minute)";
    CONTROL_SOCKET: Option<PathBuf> = "control" . "socket", Kind::Path, None, &[],
        "the control socket (HTTP on a Unix socket, mode 0660: status, breaker reset, drain, recycle) that supervisor status, breaker and drain use; <state dir>/control.sock when unset";
    METRICS_LISTEN: Option<String> = "metrics" . "listen", Kind::Str, None, &[],
        "host:port serving Prometheus metrics at /metrics (e.g. 127.0.0.1:9464 or localhost:9464); unset or empty = off";
    LOG_FORMAT: LogFormat = "log" . "format", Kind::Enum(&["text", "json"]), Some("text"), &[],
        "log format on stderr";
    LOG_LEVEL: String = "log" . "level", Kind::Str, Some("info"), &["SUPERVISOR_LOG"],
        "tracing filter, e.g. info or runner_supervisor=debug";
}
