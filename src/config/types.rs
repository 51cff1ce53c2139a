//! The validated configuration's types: what the rest of the supervisor reads.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::Source;

/// A secret string: never printed by `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub(crate) String);

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

/// `[runner] mode`: idle listeners per slot, or one scale-set session for the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunnerMode {
    Slots,
    ScaleSet,
}

/// `[runner] backend`: how a runner is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A child process of the supervisor.
    Process,
    /// A fresh container for every job, through the Docker engine.
    Container,
}

/// `[runner] workspace`: whether a slot's work folder outlives a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workspace {
    Fresh,
    Kept,
}

/// A cache `[container] volumes` shares with every job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSpec {
    /// A named volume, or an absolute path the engine sees.
    pub source: String,
    pub target: String,
    pub read_only: bool,
    /// A named volume (not a bind mount).
    pub named: bool,
}

/// `[container] docker`: which Docker engine a job may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobDocker {
    None,
    /// The job containers' own engine socket, mounted.
    Host,
    /// A proxy's URL, given to the job as `DOCKER_HOST`.
    Url(String),
}

/// `[container]`: the job containers of `[runner] backend = "container"`.
#[derive(Debug, Clone)]
pub struct ContainerConfig {
    pub image: String,
    /// `unix:///path` or `tcp://host:port`.
    pub docker_host: String,
    pub network: Option<String>,
    /// Bytes.
    pub memory: Option<i64>,
    /// Billionths of a CPU.
    pub nano_cpus: Option<i64>,
    pub pids_limit: Option<i64>,
    /// Bytes.
    pub shm_size: Option<i64>,
    pub volumes: Vec<VolumeSpec>,
    /// Values may hold placeholders (`{runner_name}`...), filled per container.
    pub env: BTreeMap<String, String>,
    pub user: Option<String>,
    pub docker: JobDocker,
    /// The warm tool cache's directory (its generations).
    pub tool_cache: PathBuf,
}

/// `[scaleset]`: the runner scale set of `[runner] mode = "scaleset"`.
#[derive(Debug, Clone)]
pub struct ScaleSetConfig {
    /// What jobs name in `runs-on`.
    pub name: String,
    pub runner_group: String,
    /// Extra labels, after the name.
    pub labels: Vec<String>,
    pub max_runners: usize,
    pub min_runners: usize,
    pub poll_timeout: Duration,
    pub conflict_limit: Duration,
    pub surplus_grace: Duration,
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
    /// Why the token file could not be read (`doctor` and `config` only; `run` refuses).
    pub token_error: Option<String>,
    /// GitHub App authentication, instead of a token.
    pub app: Option<AppConfig>,
    /// Absent only for [`Purpose::Local`] commands, which never talk to GitHub.
    pub scope: Option<Scope>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub max_retries: u32,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    pub max_rate_limit_wait: Duration,
}

/// A GitHub App: its ID, private key, and installation (found when not given).
#[derive(Debug, Clone)]
pub struct AppConfig {
    pub app_id: u64,
    /// The PEM, checked to be an RSA private key.
    pub private_key: Secret,
    pub key_file: PathBuf,
    pub installation_id: Option<u64>,
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
    /// `slots` or `scaleset`.
    pub mode: RunnerMode,
    /// `process` or `container`.
    pub backend: Backend,
    /// Whether the work folder is emptied between jobs.
    pub workspace: Workspace,
    /// The action archive cache's directory.
    pub action_cache: PathBuf,
    /// Actions cached at start, `owner/repo@ref`.
    pub actions: Vec<String>,
    pub drain_timeout: Duration,
    pub stop_grace: Duration,
    pub session_conflict_wait: Duration,
    pub update_wait: Duration,
    pub ready_timeout: Duration,
    pub stable_after: Duration,
    /// The first back-off of a failing slot.
    pub failure_backoff: Duration,
    /// `[runner] versions_dir` when set; see [`Config::versions_dir`].
    pub versions_dir: Option<PathBuf>,
    pub auto_update: AutoUpdate,
    /// Extra variables for the runner; values may be secrets of the user's, so never logged.
    pub env: BTreeMap<String, String>,
    /// Supervisor variables passed through, resolved at start.
    pub pass_env: BTreeMap<String, String>,
    /// An ARC runner pod (`ACTIONS_RUNNER_INPUT_JITCONFIG` in the environment, and no
    /// token or App of ours): the one JIT runner `run` starts, and nothing else. Set only
    /// for `run`; the runner's own credential, passed only in that runner's environment.
    pub jit_config: Option<Secret>,
}

/// `[network]`.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    pub keepalive_idle: Duration,
    pub keepalive_interval: Duration,
    pub keepalive_probes: u32,
    pub set_sysctls: Toggle,
    pub listener_keepalive: ListenerKeepalive,
    /// `TCP_USER_TIMEOUT`; zero for none.
    pub user_timeout: Duration,
    pub dns_interval: Duration,
    pub fallback_resolvers: Vec<String>,
    pub resolv_conf: PathBuf,
    pub dns_port: u16,
}

impl NetworkConfig {
    /// What the listeners' connections get: `keepalive_*` and `user_timeout`.
    pub fn keepalive_for_listeners(&self) -> crate::policy::keepalive::Keepalive {
        crate::policy::keepalive::Keepalive {
            idle: self.keepalive_idle,
            interval: self.keepalive_interval,
            probes: self.keepalive_probes,
            user_timeout: self.user_timeout,
        }
    }

    /// What the supervisor's own connections (the GitHub client's) get.
    pub fn keepalive_for_own(&self) -> crate::policy::keepalive::Keepalive {
        crate::policy::keepalive::Keepalive::for_own(self.keepalive_for_listeners())
    }
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
    pub silent_after: Duration,
    pub offline_after: Duration,
    pub offline_check_interval: Duration,
}

/// `[log] format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// `[network] listener_keepalive`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKeepalive {
    /// Set keepalive on the listener's connections wherever the kernel permits.
    Auto,
    /// Never touch them (their connections are still watched, read-only).
    Off,
}

/// An `auto`/`on`/`off` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Toggle {
    /// Decided from what the host proves (each setting says how).
    Auto,
    On,
    Off,
}

/// `[runner] auto_update`: whether the runner autopilot upgrades by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoUpdate {
    /// Download a newer release and move the slots to it between jobs, canary first.
    On,
    /// Only say that a newer release is out.
    Notify,
    /// Neither.
    Off,
}

/// `[host] inhibit`: the logind inhibitor lock held while a job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inhibit {
    /// Sleep and shutdown wait until the last job ends.
    Block,
    /// logind delays them for its `InhibitDelayMaxSec` only.
    Delay,
    /// No lock.
    Off,
}

impl Inhibit {
    /// The mode as logind's `Inhibit` takes it (`off` is never sent).
    pub fn as_str(self) -> &'static str {
        match self {
            Inhibit::Block => "block",
            Inhibit::Delay => "delay",
            Inhibit::Off => "off",
        }
    }
}

/// `[host] windows_keep_awake`: keep Windows awake while busy (WSL2 with interop).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowsKeepAwake {
    /// Wherever WSL2's interop can start `powershell.exe`.
    Auto,
    Off,
}

/// `[intake] on_battery`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnBattery {
    Continue,
    Stop,
}

/// A local-time window of `[intake] quiet_hours`, `HH:MM-HH:MM`; it may span midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuietWindow {
    pub start: chrono::NaiveTime,
    pub end: chrono::NaiveTime,
}

impl QuietWindow {
    /// Whether local time `t` is inside: from `start` (included) to `end` (excluded).
    pub fn contains(&self, t: chrono::NaiveTime) -> bool {
        if self.start <= self.end {
            self.start <= t && t < self.end
        } else {
            t >= self.start || t < self.end
        }
    }
}

impl std::str::FromStr for QuietWindow {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a local-time window HH:MM-HH:MM (e.g. \"22:00-07:00\")");
        let (a, b) = s.trim().split_once('-').ok_or_else(bad)?;
        let t = |x: &str| chrono::NaiveTime::parse_from_str(x.trim(), "%H:%M").map_err(|_| bad());
        let w = QuietWindow {
            start: t(a)?,
            end: t(b)?,
        };
        if w.start == w.end {
            return Err(format!(
                "{s:?} is an empty window (start and end are the same)"
            ));
        }
        Ok(w)
    }
}

impl std::fmt::Display for QuietWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}-{}",
            self.start.format("%H:%M"),
            self.end.format("%H:%M")
        )
    }
}

/// `[intake]`: when the host takes jobs.
#[derive(Debug, Clone)]
pub struct IntakeConfig {
    pub on_battery: OnBattery,
    /// On battery, below this charge (percent).
    pub min_battery: Option<u8>,
    pub quiet_hours: Vec<QuietWindow>,
    pub power_supply_dir: PathBuf,
    pub interval: Duration,
}

/// `[host]`: keeping the machine awake while a job runs.
#[derive(Debug, Clone)]
pub struct HostConfig {
    pub inhibit: Inhibit,
    pub windows_keep_awake: WindowsKeepAwake,
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

/// `[control]` and `[metrics]`: how the running supervisor is watched and controlled.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// The control socket.
    pub socket: PathBuf,
    /// Where `/metrics` is served, if anywhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// `[jobs]`: the job records.
#[derive(Debug, Clone)]
pub struct JobsConfig {
    /// Records kept, at most.
    pub keep: usize,
    /// Records older than this go.
    pub keep_for: std::time::Duration,
    /// A suspend longer than this while busy loses the job.
    pub lease: std::time::Duration,
    /// A busy listener's lease renewal this late is said (`[jobs] renewal_late`).
    pub renewal_late: std::time::Duration,
    /// `[job] oom_score_adj` for each job's `Runner.Worker`.
    pub oom_score_adj: i32,
    /// `[job] nice` for each job's `Runner.Worker`.
    pub nice: i32,
    /// `[job] memory_pressure_warn`, percent.
    pub memory_pressure_warn: f64,
    /// What is done about a lost job.
    pub rerun: RerunPolicy,
}

/// `[jobs] rerun_*`: re-running the jobs the host lost.
#[derive(Debug, Clone, PartialEq)]
pub struct RerunPolicy {
    /// `rerun_lost`.
    pub enabled: bool,
    /// `rerun_within`: give up when the run has not completed by then.
    pub within: std::time::Duration,
    /// `never_rerun`: workflows whose lost jobs are only recorded.
    pub never: Vec<String>,
    /// `max_reruns`: per job, across its attempts.
    pub max_per_job: u32,
    /// `max_reruns_per_hour`: per supervisor.
    pub max_per_hour: u32,
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
    pub control: ControlConfig,
    pub jobs: JobsConfig,
    /// `[host]`: keeping the machine awake while busy.
    pub host: HostConfig,
    pub intake: IntakeConfig,
    /// `[scaleset]`, used when `runner.mode` is `scaleset`.
    pub scaleset: ScaleSetConfig,
    /// `[container]`, used when `runner.backend` is `container`.
    pub container: ContainerConfig,
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
