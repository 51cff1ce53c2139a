//! What the whole-slot machine ([`super::outer::Slot`]) takes and gives: the outcome of
//! the last operation, the effects to show, record or log, and the one operation to carry
//! out next. Pure data.

use std::time::Duration;

use crate::policy::cause::Cause;
use crate::policy::exit::{ExitReason, Seen};
use crate::policy::states::SlotState;

use super::backoff::Backoff;
use super::{HostFacts, StopCause};

/// A failed registration: what kind of failure, as far as the slot's policy cares, and
/// the error as it is shown and logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegFailure {
    pub kind: RegKind,
    pub error: String,
}

/// Kinds of registration failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegKind {
    /// GitHub refuses the token (401), saying this: a host-wide token condition.
    Refused { message: String },
    /// Forbidden, not found, invalid: a permission or configuration problem.
    Denied,
    /// Rate limited: wait at least this long.
    RateLimited { retry_after: Duration },
    /// Anything else (5xx, the network): back off.
    Transient,
}

/// What the slot knows when its listener has exited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exited {
    pub ended: crate::policy::exit::Ended,
    pub seen: Seen,
    /// Why we stopped it ourselves, if we did.
    pub cause: Option<StopCause>,
    /// Its last `An error occurred:` message.
    pub fatal: Option<String>,
    /// The job it was running when it exited (started, not completed): lost with it.
    pub job: Option<String>,
    /// It listened for `stable_after`: the run of failures ended while it ran.
    pub stable: bool,
    /// The next registration was made in advance while it ran.
    pub prepared: bool,
    pub host: HostFacts,
}

/// The outcome of the last [`Op`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The slot task starts.
    Begin,
    /// [`Op::CheckGates`]: how long the breaker stays open and why; the clock fault's reason.
    Gates {
        breaker: Option<(Duration, String)>,
        clock_fault: Option<String>,
        /// Why intake is closed (`[intake]`).
        intake_closed: Option<String>,
    },
    /// Intake is open again.
    IntakeOpened,
    /// [`Op::AwaitAssignment`]: this slot may start a runner for the scale set.
    Assigned,
    /// A breaker wait ended: `reset` when an operator closed it.
    BreakerWaited {
        reset: bool,
    },
    /// The clock is fixed.
    ClockFixed,
    /// [`Op::TakePrepared`]: the registration made in advance, `Some(usable)`, or none
    /// (its registration failed).
    Prepared(Option<bool>),
    /// [`Op::Register`] worked: a fixed-name (token) registration or a JIT one;
    /// `stopping` when the supervisor began to stop meanwhile.
    Registered {
        fixed_name: bool,
        stopping: bool,
    },
    RegisterFailed(RegFailure),
    /// [`Op::Start`] worked.
    Started,
    /// [`Op::Start`] failed.
    StartFailed(String),
    /// [`Op::Start`]: `config.sh` refused the runner as below GitHub's registration floor
    /// (its boxed `RUNNER UPDATE REQUIRED`): a deprecation, known for sure.
    VersionRefused(String),
    /// [`Op::Watch`]: it exited.
    Exited(Exited),
    /// [`Op::ConfirmDeprecation`]: whether GitHub dates the version's runtime deadline
    /// in the past.
    DeprecationConfirmed(bool),
    /// [`Op::Record`]: the breaker's verdict on the fires: how long it is open and why,
    /// if they opened it.
    Recorded {
        opened: Option<(Duration, String)>,
    },
    /// A wait ended.
    Waited,
    /// The supervisor began to stop during the operation.
    Stopping,
}

/// The one operation to carry out next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Read the breaker and the clock: answer [`Outcome::Gates`].
    CheckGates,
    /// Wait out the open breaker, or until an operator resets it.
    AwaitBreaker(Duration),
    /// Wait until the clock is fixed.
    AwaitClock,
    /// Drop any registration made in advance, then wait until intake opens again.
    AwaitIntake,
    /// Take the registration made in advance into hand: answer [`Outcome::Prepared`].
    TakePrepared,
    /// Scale-set mode: wait until the scale set needs another runner (a job assigned, or
    /// `min_runners` warm): answer [`Outcome::Assigned`].
    AwaitAssignment,
    /// Make a registration.
    Register,
    /// Start a listener with the registration in hand.
    Start,
    /// Watch the listener until it exits.
    Watch,
    /// Record watchdog fires in the breaker.
    Record(Vec<(Cause, String)>),
    /// Ask GitHub whether `version` is past its runtime deadline: answer
    /// [`Outcome::DeprecationConfirmed`].
    ConfirmDeprecation { version: String },
    /// Wait, or until the supervisor stops; with `early_on_token`, also until the token
    /// works again.
    Wait {
        wait: Duration,
        early_on_token: bool,
    },
    /// Stop strays of this root (they may hold a fixed name's session), then wait.
    StopStraysThenWait(Duration),
    /// Wait for the self-update's `update.finished`.
    AwaitUpdate,
    /// A deprecated runner with `auto_update = "on"`: ask for the newest release now, and
    /// wait until this slot's next listener would run another version than the refused
    /// one (the autopilot offered or promoted one), or for `limit`, or the stop.
    AwaitRunnerUpgrade { limit: Duration },
    /// Delete what is still registered and show the slot stopped: the end.
    Finish,
}

/// What to show, record or log on the way.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Show(SlotState),
    /// The slot's error line (`None` clears it).
    Error(Option<String>),
    /// A failure: the error, the count, and the state to show.
    Failure {
        state: SlotState,
        error: String,
        failures: u32,
    },
    /// The run of failures is over.
    ClearFailures,
    /// GitHub refuses the token, or accepts it again.
    Token {
        refused: bool,
        message: String,
    },
    /// Paused for the clock / resumed.
    ClockPaused(String),
    ClockResumed,
    /// The breaker gate is passed again: show the breaker as it is now.
    BreakerShown,
    /// A registration failed: log it with the wait.
    RegistrationFailed {
        error: String,
        wait: Duration,
    },
    /// The listener could not be started: log it with the wait.
    StartFailed {
        error: String,
        wait: Duration,
    },
    /// A listener runs with the registration in hand.
    ListenerStarted,
    /// The runner printed the clock-skew line: a host-wide clock fault.
    ClockFault,
    /// The listener exited (`ended`) for `reason`; its job, if any, is lost.
    ExitNoted {
        reason: ExitReason,
        ended: crate::policy::exit::Ended,
        lost_job: Option<String>,
    },
    /// Delete the registration in hand (not used by a job that completed).
    Deregister,
    /// The listener failed: back off (logged).
    ListenerFailed {
        reason: ExitReason,
        failures: u32,
        wait: Duration,
    },
    /// A deprecated runner (shown as `paused`): with `upgrading`, the autopilot replaces
    /// it now; otherwise the operator must install a current one.
    Deprecated {
        failures: u32,
        upgrading: bool,
    },
}

/// One step: effects in order, then the operation.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub effects: Vec<Effect>,
    pub op: Op,
}

impl Step {
    /// This step with `first` before its effects.
    pub(super) fn after(mut self, mut first: Vec<Effect>) -> Step {
        first.append(&mut self.effects);
        self.effects = first;
        self
    }
}

/// The limits of a slot's policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotLimits {
    pub backoff: Backoff,
    /// That many exit-2 exits in a row count as a watchdog fire.
    pub retryable_exits: u32,
    /// How long a fixed name's stale session needs to expire.
    pub session_conflict_wait: Duration,
    /// `[runner] auto_update = "on"`: a deprecated runner is replaced by a newer one at
    /// once (the autopilot's canary), instead of pausing the slot until someone installs it.
    pub auto_update: bool,
    /// Scale-set mode (`[runner] mode = "scaleset"`): a runner only when the scale set
    /// needs one, never registered in advance.
    pub on_demand: bool,
}
