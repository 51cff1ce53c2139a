//! The slot's policy, pure: what to do with each thing a listener says or that happens to
//! it while it runs ([`Listen`]), what its exit means and what comes after it
//! ([`after_exit`], the table of ARCHITECTURE.md "The slot loop"), and everything the
//! slot decides between two listeners ([`outer::Slot`]: the gates, registrations and
//! their failures, starts, exits, the breaker's verdict, and how long a failing slot
//! waits).
//!
//! It must not: do IO, read a clock, or look at anything but its inputs. The async slot
//! (`slot/mod.rs`, `slot/listen.rs`) feeds it inputs with the current time and carries
//! out the actions it returns.

use std::time::Duration;

use tokio::time::Instant;

use crate::policy::cause::{attribute, looks_like_network, Cause, Context, SlotCmd};
use crate::policy::events::RunnerEvent;
use crate::policy::exit::{classify, Ended, ExitReason, Seen};
use crate::policy::states::Mode;
use crate::policy::states::SlotState;
use crate::policy::tcpinfo::Finding;
use crate::policy::watchdog::Watchdog;

/// Why we stopped a listener ourselves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopCause {
    /// Draining or forced by signals.
    Shutdown,
    /// Not listening within `ready_timeout`.
    NotReady,
    /// It reported a session conflict: stop now instead of waiting out its 240 s.
    SessionConflict,
    /// The watchdog fired, with the root cause and what it saw.
    Watchdog(Cause, String),
    /// The host resumed and this listener was idle.
    Recycle,
    /// The host slept past the job lease while this listener was busy: its job is gone
    /// at GitHub, whatever the runner says of it afterwards.
    LeaseLost,
    /// Intake closed while this listener was idle.
    Intake,
    /// Scale-set mode: no assigned job needs this idle runner any more.
    Surplus,
}

/// The limits a listener is watched with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub grace: Duration,
    pub job_stall_timeout: Duration,
    pub ready_timeout: Duration,
    pub drain_timeout: Duration,
    pub stable_after: Duration,
    /// A busy listener whose trace shows lease renewals, and none for this long, is
    /// said late (`[jobs] renewal_late`; the runner renews every 60 s).
    pub renewal_late: Duration,
    /// Register the next runner while a job runs (never in scale-set mode: a registration
    /// there is made only for an assigned job).
    pub prepare_next: bool,
}

/// What the host knows that the machine cannot see: for attributing a watchdog fire.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostFacts {
    pub clock_fault: bool,
    pub token_invalid: bool,
}

impl HostFacts {
    fn cause(self, network_evidence: bool) -> Cause {
        attribute(Context {
            clock_fault: self.clock_fault,
            token_invalid: self.token_invalid,
            network_evidence,
        })
    }
}

fn is_clock_skew(input: &Input) -> bool {
    matches!(input, Input::Event(RunnerEvent::ClockSkew))
}

/// Something that happened to a running listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A line it printed that means something.
    Event(RunnerEvent),
    /// The supervisor's mode changed (drain, force, kill).
    Mode(Mode),
    /// A slot command (resume recycle, offline replacement, a connection finding).
    Cmd(SlotCmd),
    /// Time passed: a deadline may be due.
    Tick,
}

/// What the slot must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Show this state.
    Show(SlotState),
    /// A job started: show its name.
    JobStarted(String),
    /// A job completed: count it.
    JobCompleted { name: String, result: String },
    /// Make the next registration now, while the job runs.
    PrepareNext,
    /// The run of failures is over (it listened for `stable_after`).
    EndFailures,
    /// Stop the listener (SIGINT, grace, SIGKILL): why.
    Stop(StopCause),
    /// The runner says its version.
    RunnerVersion(String),
    /// Draining: the running job may finish until the drain deadline.
    DrainWaiting,
    /// The host slept past the job lease: the busy listener's job is gone; replaced.
    LeaseLost,
    /// The host resumed: a busy listener keeps its job.
    KeepBusyOnResume,
    /// The host resumed: an idle listener's long-poll is dead.
    RecycleIdle,
    /// Draining, the job did not finish within `drain_timeout`: it is cancelled.
    DrainTimedOut,
    /// The runner printed the clock-skew line (first time): the clock is at fault now.
    ClockSkew,
    /// A busy listener has not renewed its job's lease for this long (past its cadence):
    /// GitHub gives the job up when the lease runs out.
    LeaseLate(Duration),
    /// A renewal failed (the runner's own line): the job may be abandoned at once.
    LeaseRenewFailed(String),
    /// Renewals resumed after a late or failed one.
    LeaseRenewedAgain,
}

/// One listener's life as the slot sees it, from spawn to the decision to stop it (or its
/// own exit).
#[derive(Debug, Clone)]
pub struct Listen {
    limits: Limits,
    /// What it said, for classifying its exit.
    pub seen: Seen,
    /// The last `An error occurred:` message.
    pub fatal: Option<String>,
    /// The result of the job it completed, if it completed one.
    pub completed: Option<String>,
    wd: Watchdog,
    busy: bool,
    /// The job it runs (started, not completed).
    job: Option<String>,
    mode: Mode,
    /// The slot's failures when it started (a crash loop listens too).
    failing: bool,
    prepared: bool,
    ready_deadline: Instant,
    drain_deadline: Option<Instant>,
    stable_at: Option<Instant>,
    stop: Option<StopCause>,
    /// The stop was decided while a job ran: the job is lost, whatever follows.
    stopped_busy: bool,
    /// The job's last lease renewal (its start until the first), once the trace shows
    /// renewals at all.
    last_renewal: Option<Instant>,
    /// This listener's trace shows renewals (older runners, or no trace: nothing judged).
    renewals_seen: bool,
    /// A late or failed renewal was said for this job, and none since.
    lease_said: bool,
}

impl Listen {
    /// A listener spawned at `now`; `failing` when the slot's last attempts failed;
    /// `prepared` when the next registration exists already.
    pub fn new(limits: Limits, now: Instant, failing: bool, prepared: bool, mode: Mode) -> Listen {
        Listen {
            limits,
            seen: Seen::default(),
            fatal: None,
            completed: None,
            wd: Watchdog::new(limits.grace, limits.job_stall_timeout),
            busy: false,
            stopped_busy: false,
            job: None,
            mode,
            failing,
            prepared,
            ready_deadline: now + limits.ready_timeout,
            drain_deadline: None,
            stable_at: None,
            stop: None,
            last_renewal: None,
            renewals_seen: false,
            lease_said: false,
        }
    }

    /// Whether a job runs.
    pub fn busy(&self) -> bool {
        self.busy
    }

    /// The job it runs: started, and not completed.
    pub fn job(&self) -> Option<&String> {
        self.job.as_ref()
    }

    /// The decision to stop it, once taken.
    pub fn stop_cause(&self) -> Option<&StopCause> {
        self.stop.as_ref()
    }

    /// The next moment a [`Input::Tick`] matters.
    pub fn deadline(&self) -> Option<Instant> {
        if self.stop.is_some() {
            return None;
        }
        [
            self.wd.deadline(),
            (!self.seen.listening).then_some(self.ready_deadline),
            self.drain_deadline,
            self.stable_at,
            self.lease_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// When a busy listener's renewal is late, if it can be.
    fn lease_deadline(&self) -> Option<Instant> {
        if !self.busy || !self.renewals_seen || self.lease_said {
            return None;
        }
        self.last_renewal.map(|t| t + self.limits.renewal_late)
    }

    /// Feed one input at `now`.
    pub fn step(&mut self, input: Input, now: Instant, host: HostFacts) -> Vec<Action> {
        // The runner's own clock-skew line is evidence of a clock fault, whatever the
        // host's measurement says yet.
        let host = HostFacts {
            clock_fault: host.clock_fault || self.seen.clock_skew || is_clock_skew(&input),
            ..host
        };
        if self.stop.is_some() {
            // Decided: only what it says is still recorded, for classifying its exit.
            if let Input::Event(ev) = &input {
                self.seen.record(ev);
            }
            return vec![];
        }
        let mut out = vec![];
        match input {
            Input::Event(ev) => self.event(ev, now, &mut out),
            Input::Mode(m) => {
                self.mode = m;
                if m >= Mode::Force || (m == Mode::Drain && !self.busy) {
                    return self.decide(StopCause::Shutdown, out);
                }
                if m == Mode::Drain && self.drain_deadline.is_none() {
                    self.drain_deadline = Some(now + self.limits.drain_timeout);
                    out.push(Action::DrainWaiting);
                }
            }
            Input::Cmd(SlotCmd::Recycle) if self.busy => out.push(Action::KeepBusyOnResume),
            Input::Cmd(SlotCmd::LeaseLost) if self.busy => {
                out.push(Action::LeaseLost);
                return self.decide(StopCause::LeaseLost, out);
            }
            Input::Cmd(SlotCmd::Recycle | SlotCmd::LeaseLost) => {
                out.push(Action::RecycleIdle);
                return self.decide(StopCause::Recycle, out);
            }
            Input::Cmd(SlotCmd::Surplus) if self.busy => {}
            Input::Cmd(SlotCmd::Surplus) => return self.decide(StopCause::Surplus, out),
            Input::Cmd(SlotCmd::CloseIntake) if self.busy => {}
            Input::Cmd(SlotCmd::CloseIntake) => return self.decide(StopCause::Intake, out),
            Input::Cmd(SlotCmd::Replace(_)) if self.busy => {}
            Input::Cmd(SlotCmd::Replace(cause)) => {
                return self.decide(
                    StopCause::Watchdog(cause, "GitHub shows the listening runner offline".into()),
                    out,
                )
            }
            Input::Cmd(SlotCmd::Connection { finding: Finding::DeadPath(d), .. }) => {
                return self.decide(
                    StopCause::Watchdog(
                        host.cause(true),
                        format!("a listener connection has had retransmissions or keepalive probes outstanding for {}s (dead path)", d.as_secs()),
                    ),
                    out,
                )
            }
            // A quiet job is not a hang.
            Input::Cmd(SlotCmd::Connection { finding: Finding::Silent(_), .. }) if self.busy => {}
            Input::Cmd(SlotCmd::Connection { finding: Finding::Silent(d), .. }) => {
                return self.decide(
                    StopCause::Watchdog(
                        host.cause(true),
                        format!("no data on any listener connection for {}s (silent hang)", d.as_secs()),
                    ),
                    out,
                )
            }
            Input::Tick => {}
        }
        self.deadlines(now, host, out)
    }

    fn event(&mut self, ev: RunnerEvent, now: Instant, out: &mut Vec<Action>) {
        if ev == RunnerEvent::ClockSkew && !self.seen.clock_skew {
            out.push(Action::ClockSkew);
        }
        self.seen.record(&ev);
        self.wd.on_event(&ev, now);
        match ev {
            RunnerEvent::Listening => {
                out.push(Action::Show(SlotState::Listening));
                // A crash loop listens too: the failures end only once it has listened
                // for `stable_after`.
                if self.failing {
                    self.stable_at = Some(now + self.limits.stable_after);
                }
            }
            RunnerEvent::JobStarted { name } => {
                // The first renewal comes before the Worker starts: the clock runs from here.
                self.last_renewal = Some(now);
                self.lease_said = false;
                self.busy = true;
                self.job = Some(name.clone());
                self.stable_at = None;
                out.push(Action::JobStarted(name));
                out.push(Action::Show(SlotState::Busy));
                if !self.prepared && self.mode == Mode::Run && self.limits.prepare_next {
                    self.prepared = true;
                    out.push(Action::PrepareNext);
                }
            }
            // Stopped by us while busy (past the job lease, at the drain's end, by the
            // watchdog): the runner's "completed" that follows is its cancellation, no
            // completion. It stays this listener's lost job.
            RunnerEvent::JobCompleted { .. } if self.stopped_busy => {}
            RunnerEvent::JobCompleted { name, result } => {
                self.completed = Some(result.clone());
                self.busy = false;
                self.job = None;
                out.push(Action::JobCompleted { name, result });
                out.push(Action::Show(SlotState::Finishing));
                // Draining, the job was what it waited for.
                if self.mode == Mode::Drain {
                    self.drain_deadline = None;
                }
            }
            RunnerEvent::SessionConflict if !self.busy => {
                self.stop = Some(StopCause::SessionConflict);
                out.push(Action::Stop(StopCause::SessionConflict));
            }
            RunnerEvent::LeaseRenewed => {
                self.renewals_seen = true;
                self.last_renewal = Some(now);
                if self.lease_said && self.busy {
                    out.push(Action::LeaseRenewedAgain);
                }
                self.lease_said = false;
            }
            RunnerEvent::LeaseRenewFailed { message } if self.busy => {
                self.renewals_seen = true;
                self.lease_said = true;
                out.push(Action::LeaseRenewFailed(message));
            }
            RunnerEvent::Fatal { message } => self.fatal = Some(message),
            RunnerEvent::Version(v) => out.push(Action::RunnerVersion(v)),
            _ => {}
        }
    }

    fn deadlines(&mut self, now: Instant, host: HostFacts, mut out: Vec<Action>) -> Vec<Action> {
        if self.stop.is_some() {
            return out;
        }
        if self.wd.expired(now) {
            let msg = self.wd.error().unwrap_or_default().to_string();
            let limit = if self.busy {
                self.limits.job_stall_timeout
            } else {
                self.limits.grace
            };
            let cause = host.cause(looks_like_network(&msg));
            let detail = format!(
                "no recovery {}s after \"Runner connect error: {msg}\"",
                limit.as_secs()
            );
            return self.decide(StopCause::Watchdog(cause, detail), out);
        }
        if !self.seen.listening && now >= self.ready_deadline {
            return self.decide(StopCause::NotReady, out);
        }
        if self.drain_deadline.is_some_and(|d| now >= d) {
            out.push(Action::DrainTimedOut);
            return self.decide(StopCause::Shutdown, out);
        }
        if let Some(d) = self.lease_deadline().filter(|d| now >= *d) {
            self.lease_said = true;
            let since = self
                .last_renewal
                .map_or(self.limits.renewal_late, |t| now - t);
            let _ = d;
            out.push(Action::LeaseLate(since));
        }
        if self.stable_at.is_some_and(|d| now >= d) {
            self.stable_at = None;
            self.failing = false;
            out.push(Action::EndFailures);
        }
        out
    }

    fn decide(&mut self, cause: StopCause, mut out: Vec<Action>) -> Vec<Action> {
        self.stopped_busy = self.busy;
        self.stop = Some(cause.clone());
        out.push(Action::Stop(cause));
        out
    }
}

/// The meaning of an exit: our own stop's cause first, else the code and what it said.
pub fn reason(cause: Option<&StopCause>, ended: Ended, seen: &Seen) -> ExitReason {
    match cause {
        Some(StopCause::SessionConflict) => ExitReason::SessionConflict,
        // Not listening because its OAuth fails on the clock: the clock's fault.
        Some(StopCause::NotReady) if seen.clock_skew => ExitReason::ClockSkew,
        Some(StopCause::NotReady) => ExitReason::Unknown,
        Some(StopCause::Watchdog(..)) => ExitReason::Watchdog,
        Some(StopCause::Recycle | StopCause::LeaseLost) => ExitReason::Recycled,
        Some(StopCause::Intake | StopCause::Surplus) => ExitReason::Stopped,
        Some(StopCause::Shutdown) | None => classify(ended, seen, cause.is_some()),
    }
}

/// What the slot knows when it plans what follows an exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    pub reason: ExitReason,
    /// Our watchdog stopped it: the cause and what it saw.
    pub watchdog: Option<(Cause, String)>,
    /// A fixed-name (registration-token) runner, whose session outlives its process.
    pub fixed_name: bool,
    /// Consecutive failures before this exit.
    pub failures: u32,
    /// Consecutive exit-2 exits before this one.
    pub retryable_streak: u32,
    /// That many in a row count as a watchdog fire (`[watchdog] retryable_exits`).
    pub retryable_exits: u32,
    /// The last `An error occurred:` message points at the network.
    pub network_evidence: bool,
    /// How long a fixed name's stale session needs to expire (`[runner] session_conflict_wait`).
    pub session_conflict_wait: Duration,
    pub host: HostFacts,
}

/// What follows an exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Register and start the next listener now.
    Now,
    /// Back off (the wait is drawn by [`outer::Slot`]): show `backoff` with this error.
    Backoff { error: String },
    /// Pause: show `paused` (the operator must act), then try again after
    /// [`outer::DEPRECATED_PAUSE`].
    Pause,
    /// Stop strays of this root (they may hold the fixed name's session), then wait.
    StopStraysThenWait(Duration),
    /// Wait for the self-update's `update.finished`, then go on.
    AwaitUpdate,
}

/// The plan after an exit: the table of ARCHITECTURE.md "The slot loop".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitPlan {
    /// Delete the registration (GitHub removes an ephemeral runner only after its job).
    pub deregister: bool,
    /// Watchdog fires to record in the breaker.
    pub fires: Vec<(Cause, String)>,
    /// The runner reported clock skew: a host-wide clock fault.
    pub clock_fault: bool,
    /// The failure count after it.
    pub failures: u32,
    /// The run of exit-2 exits after it.
    pub retryable_streak: u32,
    pub next: Next,
}

/// Plan what follows an exit.
pub fn after_exit(e: &Exit) -> ExitPlan {
    use ExitReason as R;
    let mut fires: Vec<(Cause, String)> = e.watchdog.iter().cloned().collect();
    let host = e.host;
    let mut streak = match e.reason {
        R::Retryable => e.retryable_streak + 1,
        // A stop of ours between two crashes does not end the run.
        R::Stopped => e.retryable_streak,
        _ => 0,
    };
    // A listener that keeps exiting with code 2 is stuck too.
    if streak >= e.retryable_exits {
        streak = 0;
        fires.push((
            host.cause(e.network_evidence),
            format!("{} consecutive retryable exits (code 2)", e.retryable_exits),
        ));
    }
    let (failures, next) = match e.reason {
        R::JobDone | R::Stopped | R::RegistrationDeleted | R::Watchdog | R::Recycled => {
            (0, Next::Now)
        }
        // A fresh JIT name has no session to conflict with; a fixed name must let the old
        // session expire first (and it may be held by a stray listener of this root).
        R::SessionConflict if e.fixed_name => (
            e.failures,
            Next::StopStraysThenWait(e.session_conflict_wait),
        ),
        R::SessionConflict => (e.failures, Next::Now),
        R::Updating => (e.failures, Next::AwaitUpdate),
        R::VersionDeprecated => (e.failures + 1, Next::Pause),
        other => (
            e.failures + 1,
            Next::Backoff {
                error: format!("listener exited: {}", other.as_str()),
            },
        ),
    };
    ExitPlan {
        deregister: e.reason != R::JobDone,
        fires,
        clock_fault: e.reason == R::ClockSkew,
        failures,
        retryable_streak: streak,
        next,
    }
}

mod backoff;
pub mod outer;
mod steps;

#[cfg(test)]
mod tests;
