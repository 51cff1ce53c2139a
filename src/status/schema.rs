//! The status document, schema `runner-supervisor.status.v1` (README "The status
//! schema"): what `status.json`, the control socket and `status --json` carry, and how its
//! host-wide part is derived from the monitors' facts and conditions.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Health, SlotStatus};

/// The schema of `status.json` and of `supervisor status --json` (README "Status").
/// Fields are only ever added within a version; a removal or a change of meaning makes v2.
pub const SCHEMA: &str = "runner-supervisor.status.v1";

/// The status: `status.json` (which `supervisor health` reads), the control socket's
/// `GET /v1/status` and `supervisor status --json` are this, in this schema.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusFile {
    /// [`SCHEMA`].
    #[serde(default)]
    pub schema: String,
    /// The supervisor's version.
    #[serde(default)]
    pub version: String,
    pub pid: u32,
    /// The host part of this supervisor's runner names (a container's hostname).
    #[serde(default, rename = "host")]
    pub hostname: String,
    pub started_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub health: Health,
    pub reasons: Vec<String>,
    pub mode: String,
    pub slots: Vec<SlotStatus>,
    pub jobs_completed: u64,
    pub api_requests: u64,
    #[serde(default)]
    pub facts: BTreeMap<String, String>,
    /// Host-wide state: token, clock, disk, dependencies, keepalive, rate limit.
    #[serde(default)]
    pub system: SystemStatus,
    /// The counters of the exit summary, so far.
    #[serde(default)]
    pub counts: Counts,
}

/// Host-wide state in the status.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SystemStatus {
    pub token: TokenStatus,
    pub clock: ClockInfo,
    pub disk: DiskInfo,
    /// `[health] dependencies`, each as last probed.
    pub dependencies: Vec<Dependency>,
    pub keepalive: KeepaliveInfo,
    /// GitHub's rate limit as its last answer said; null before any answer carried it.
    pub rate_limit: Option<crate::github::RateLimit>,
    /// The runner's version, as its listener printed it.
    pub runner_version: Option<String>,
    /// The runner's version against the newest release and GitHub's deadline for it.
    #[serde(default)]
    pub runner: RunnerStatus,
    /// Memory pressure: the kernel's PSI `some avg10` (percent of the last 10 s in which
    /// some task waited for memory); null without PSI.
    #[serde(default)]
    pub memory_pressure: Option<f64>,
    /// The systemd-logind inhibitor locks on sleep and on shutdown (one each), taken while
    /// any slot runs a job (`[host] inhibit`): `held`, `held on sleep only; unavailable
    /// (reason)` (one refused), `released`, `off` or `unavailable (reason)`.
    #[serde(default)]
    pub inhibitor: Option<String>,
    /// Windows kept awake while busy (WSL2, `[host] windows_keep_awake`): `held`,
    /// `released`, `off` or `unavailable (reason)`; null off WSL2.
    #[serde(default)]
    pub windows_keep_awake: Option<String>,
    /// Whether the host takes jobs now (`[intake]`), and why not.
    #[serde(default)]
    pub intake: Option<IntakeStatus>,
    /// Scale-set mode: the host's one session and what the service says of the set.
    #[serde(default)]
    pub scaleset: Option<ScaleSetStatus>,
}

/// The statistics the scale-set service sends with each message (its own words, in
/// snake case).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct ScaleSetStatistics {
    pub total_available_jobs: u64,
    pub total_acquired_jobs: u64,
    /// Assigned to the set and not finished, waiting or running.
    pub total_assigned_jobs: u64,
    pub total_running_jobs: u64,
    pub total_registered_runners: u64,
    pub total_busy_runners: u64,
    pub total_idle_runners: u64,
}

/// Scale-set mode (`[runner] mode = "scaleset"`): the session, the service's statistics
/// and this host's runners.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ScaleSetStatus {
    /// The scale set's name: jobs use `runs-on: <name>`.
    pub name: String,
    /// Its id, once found or created.
    pub id: Option<u64>,
    /// `connecting`, `conflict` (waiting out another session), `polling`, `rebuilding`
    /// (after a resume, a clock step or a lost session), `failing`, `closed`.
    pub session: String,
    /// Since when the session has been in that state.
    pub since: Option<DateTime<Utc>>,
    /// Why, when not `polling`.
    pub detail: Option<String>,
    /// The last message id taken (and acknowledged).
    pub last_message_id: u64,
    /// 409 conflicts waited out so far.
    pub conflicts_waited: u64,
    pub sessions_opened: u64,
    /// Scale sets created (the first, or again after GitHub deleted an idle one).
    pub sets_created: u64,
    /// Polls that neither answered nor failed within `[scaleset] poll_timeout`.
    pub polls_timed_out: u64,
    /// What the service sent with its last message.
    pub statistics: Option<ScaleSetStatistics>,
    /// Jobs assigned to this host's runners and not over, by our own count.
    pub jobs_assigned: u64,
    /// Runners started (one per assigned job, plus warm ones).
    pub runners_started: u64,
    pub runners_starting: u64,
    pub runners_idle: u64,
    pub runners_busy: u64,
    /// Assignments that lapsed unserved (re-assigned by GitHub under a new job id).
    pub assignments_lapsed: u64,
    pub max_runners: u64,
    pub min_runners: u64,
}

/// Intake (`[intake]`): open, or closed and why (on battery, low battery, quiet hours).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IntakeStatus {
    pub open: bool,
    /// Why it is closed.
    pub reason: Option<String>,
    /// Since when it has been open or closed.
    pub since: DateTime<Utc>,
    /// What the power supplies said.
    pub on_battery: bool,
    /// The battery's charge, percent, when there is one.
    pub battery: Option<u8>,
}

/// The installed runner version, the newest release, and GitHub's deadline for the
/// installed one (`GET …/actions/runners/deprecations/{version}`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct RunnerStatus {
    /// Installed: as the listener printed it (`bin/Runner.Listener --version` at start).
    pub version: Option<String>,
    /// The newest release the downloads endpoint lists.
    pub latest: Option<String>,
    /// `unchecked`, `unknown` (GitHub does not know the version, or the server has no
    /// deprecations endpoint), `undated` (no date yet) or `dated`.
    pub deadline: String,
    /// After this GitHub sends this version no jobs.
    pub runtime_deprecates_at: Option<DateTime<Utc>>,
    /// After this a runner of this version can no longer register.
    pub registration_deprecates_at: Option<DateTime<Utc>>,
    /// Whole days to the runtime deadline; negative past it.
    pub days_left: Option<i64>,
    /// When the deadline was last read.
    pub checked_at: Option<DateTime<Utc>>,
    /// `[runner] auto_update`: `on`, `notify` or `off`.
    pub auto_update: Option<String>,
    /// The version being tried on one slot first: `2.339.0 on slot 1`.
    pub canary: Option<String>,
    /// The last upgrade the autopilot proved.
    pub last_upgrade: Option<String>,
    /// Versions rolled back after two canary failures, with the reason (not tried again
    /// until a newer release or `supervisor runner retry`).
    pub rolled_back: Vec<String>,
}

/// The token as last checked.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TokenStatus {
    /// `pat` or `app` (a GitHub App's installation tokens).
    #[serde(default)]
    pub kind: Option<String>,
    /// true: GitHub accepts it; false: refused (401); null: not checked yet.
    pub valid: Option<bool>,
    /// Why it is not valid.
    pub error: Option<String>,
    /// Its expiry (fine-grained tokens and classic tokens with one).
    pub expires_at: Option<DateTime<Utc>>,
    /// Whole days to expiry.
    pub days_left: Option<i64>,
}

/// The clock as last measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ClockInfo {
    /// Seconds; positive when the local clock is ahead.
    pub offset_s: Option<f64>,
    /// The NTP server or `GitHub Date header`.
    pub source: Option<String>,
    /// Why registrations are paused, while the clock is at fault.
    pub fault: Option<String>,
    /// `synchronised`, `not synchronised`, `down`; null when chronyd is not watched.
    pub chronyd: Option<String>,
}

/// Docker's disk, as the pruner sees it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DiskInfo {
    pub free_bytes: Option<u64>,
    /// Who prunes this engine (`this supervisor`, `another supervisor (...)`).
    pub pruner: Option<String>,
    /// The last prune: when, and what it freed.
    pub last_prune: Option<String>,
    /// Bytes pruned by this supervisor since it started.
    pub pruned_bytes: u64,
}

/// One dependency.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Dependency {
    pub address: String,
    pub reachable: bool,
}

/// TCP keepalive on the supervisor's and the listeners' connections.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct KeepaliveInfo {
    /// Whether keepalive is injected into the listeners' own connections, and if not why
    /// (`on (...)`, `refused: ...`, `off`); null before the first listener.
    pub listener: Option<String>,
    /// The host's keepalive sysctls, when this supervisor set them.
    pub sysctls: Option<String>,
    /// Listeners so far whose connections got keepalive.
    #[serde(default)]
    pub listeners_on: u64,
    /// Listeners so far that the kernel refused (each judged alone, while live).
    #[serde(default)]
    pub listeners_refused: u64,
}

/// What the exit summary counts, so far.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Counts {
    pub jobs_completed: u64,
    /// Jobs whose listener ended before it reported them completed.
    pub jobs_lost: u64,
    /// Lost jobs by cause.
    #[serde(default)]
    pub jobs_lost_by_cause: BTreeMap<String, u64>,
    /// Re-runs of lost jobs by result: `accepted` (GitHub made the next attempt),
    /// `refused` (GitHub said no), `given_up`, `skipped` (`never_rerun`).
    #[serde(default)]
    pub jobs_rerun_by_result: BTreeMap<String, u64>,
    /// Lost jobs whose re-run waits for their run to complete.
    #[serde(default)]
    pub reruns_pending: u64,
    pub job_results: BTreeMap<String, u64>,
    pub listeners_started: u64,
    pub listener_exits: BTreeMap<String, u64>,
    pub registrations: u64,
    pub deregistrations: u64,
    pub ghosts_reaped: u64,
    pub strays_stopped: u64,
    pub session_conflicts: u64,
    pub watchdog_fires: BTreeMap<String, u64>,
    /// Registrations still queued for deletion (finished by the next start).
    pub deletions_pending: u64,
    pub api_requests: u64,
}
