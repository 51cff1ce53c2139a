//! One slot's status: its state word, its job, its failures, its breaker and its
//! listener's keepalive, as `status.json` carries them.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use crate::policy::states::SlotState;

/// One slot's state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SlotStatus {
    pub state: SlotState,
    pub runner: Option<String>,
    pub job: Option<String>,
    pub since: DateTime<Utc>,
    /// The last failure, while failing.
    pub error: Option<String>,
    /// Consecutive failures.
    pub failures: u32,
    /// When the current run of failures began.
    pub failing_since: Option<DateTime<Utc>>,
    pub last_exit: Option<String>,
    /// The last watchdog fire: cause and detail.
    pub last_fire: Option<String>,
    /// When the current job started.
    #[serde(default)]
    pub job_started_at: Option<DateTime<Utc>>,
    /// When the last listener exited.
    #[serde(default)]
    pub last_exit_at: Option<DateTime<Utc>>,
    /// The slot's circuit breaker.
    #[serde(default)]
    pub breaker: BreakerStatus,
    /// Keepalive on the current listener's own connections; null without a listener.
    #[serde(default)]
    pub keepalive: Option<SlotKeepalive>,
    /// The runner version its listener runs, when the autopilot chose it.
    #[serde(default)]
    pub runner_version: Option<String>,
    /// Who the current job is (repository, run, attempt, job, workflow), once its
    /// job-started hook said.
    #[serde(default)]
    pub job_of: Option<crate::jobs::JobIdentity>,
    /// The busy listener's job lease is in danger: a renewal late past its cadence, or one
    /// the runner says failed (null while renewals keep coming).
    #[serde(default)]
    pub lease_warning: Option<String>,
    /// `[runner] backend = "container"`: the listener's job container and its image, while
    /// it runs.
    #[serde(default)]
    pub container: Option<SlotContainer>,
}

/// A slot's job container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotContainer {
    pub name: String,
    pub image: String,
}

/// Keepalive on one listener's own connections, judged for that listener alone.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SlotKeepalive {
    pub state: KeepaliveState,
    /// Its connections given keepalive so far.
    pub connections: u64,
    /// Why it was refused (measured on this listener), when refused.
    pub reason: Option<String>,
    /// How to fix the refusal.
    pub fix: Option<String>,
}

/// Whether keepalive is set on a listener's connections.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum KeepaliveState {
    /// Not judged yet: no connection taken so far.
    Pending,
    /// Set on its connections.
    On,
    /// `listener_keepalive = off`: watched read-only.
    Off,
    /// The kernel refused this listener: watched read-only.
    Refused,
}

impl KeepaliveState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeepaliveState::Pending => "pending",
            KeepaliveState::On => "on",
            KeepaliveState::Off => "off",
            KeepaliveState::Refused => "refused",
        }
    }
}

/// A slot's circuit breaker as `status` shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct BreakerStatus {
    /// Watchdog fires within the sliding window, by cause (`clock`, `token`, `network`,
    /// `unknown`).
    pub fires: BTreeMap<String, u32>,
    /// Open until then (wall clock), if open.
    pub open_until: Option<DateTime<Utc>>,
    /// The fires that opened it (`6 fires (clock:6)`), if open.
    pub opened_by: Option<String>,
}

impl Default for SlotStatus {
    fn default() -> Self {
        SlotStatus {
            state: SlotState::Starting,
            runner: None,
            job: None,
            since: crate::os::clocks::wall_now(),
            error: None,
            failures: 0,
            failing_since: None,
            last_exit: None,
            last_fire: None,
            job_started_at: None,
            last_exit_at: None,
            breaker: BreakerStatus::default(),
            keepalive: None,
            runner_version: None,
            job_of: None,
            lease_warning: None,
            container: None,
        }
    }
}
