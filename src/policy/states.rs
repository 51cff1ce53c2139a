//! The words the machines decide in: what a slot is doing ([`SlotState`], the word
//! `status.json` shows) and what the supervisor is doing ([`Mode`], which signals set).

use serde::{Deserialize, Serialize};

/// What a slot is doing. Written to `status.json` as the lower-case word (unchanged).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SlotState {
    /// Asking GitHub for a registration.
    Registering,
    /// The listener is starting (config.sh first in token mode).
    #[default]
    Starting,
    /// Idle, long-polling for a job.
    Listening,
    /// Running a job.
    Busy,
    /// The job is over; the listener is exiting.
    Finishing,
    /// The listener is being stopped (SIGINT, grace, SIGKILL).
    Stopping,
    /// Waiting out a failure back-off.
    Backoff,
    /// Paused for a reason the operator must fix (a deprecated runner).
    Paused,
    /// Waiting out an open circuit breaker.
    BreakerOpen,
    /// Registrations paused until the clock is fixed.
    ClockFault,
    /// Scale-set mode: no runner, waiting until the scale set is assigned a job this
    /// slot may serve (`[runner] mode = "scaleset"`). Idle by design, not a fault.
    Waiting,
    /// Intake is closed (`[intake]`: on battery, low battery, quiet hours): no listener,
    /// no registration, until it reopens by itself. A choice, not a fault.
    Closed,
    /// The slot has ended (the supervisor stops).
    Stopped,
}

impl SlotState {
    /// The word in `status.json` and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            SlotState::Registering => "registering",
            SlotState::Starting => "starting",
            SlotState::Listening => "listening",
            SlotState::Busy => "busy",
            SlotState::Finishing => "finishing",
            SlotState::Stopping => "stopping",
            SlotState::Backoff => "backoff",
            SlotState::Paused => "paused",
            SlotState::BreakerOpen => "breaker-open",
            SlotState::ClockFault => "clock-fault",
            SlotState::Closed => "closed",
            SlotState::Waiting => "waiting",
            SlotState::Stopped => "stopped",
        }
    }
}

impl SlotState {
    /// Nothing is under way in the slot: no registration, start, job or stop (it listens,
    /// waits, or waits something out). The host is quiet when every slot is.
    pub fn is_quiet(self) -> bool {
        !matches!(
            self,
            SlotState::Registering
                | SlotState::Starting
                | SlotState::Busy
                | SlotState::Finishing
                | SlotState::Stopping
        )
    }
}

impl std::fmt::Display for SlotState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the supervisor is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    /// Taking jobs.
    Run,
    /// No new jobs; idle listeners stop now, busy ones may finish within `drain_timeout`.
    Drain,
    /// Stop every listener now (SIGINT, grace, SIGKILL).
    Force,
    /// SIGKILL every listener group now.
    Kill,
}

impl Mode {
    /// A word for logs and the status file.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Run => "run",
            Mode::Drain => "drain",
            Mode::Force => "force",
            Mode::Kill => "kill",
        }
    }

    /// The mode after one more signal.
    pub fn escalate(self) -> Mode {
        match self {
            Mode::Run => Mode::Drain,
            Mode::Drain => Mode::Force,
            Mode::Force | Mode::Kill => Mode::Kill,
        }
    }
}
