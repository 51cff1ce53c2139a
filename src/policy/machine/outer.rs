//! The whole slot between two listeners, pure: the gates (an open circuit breaker, a clock
//! fault), the registration made in advance or a new one, registration and start
//! failures (a refused token, back-off, an early retry when the token works again), the
//! exit of a listener (the plan of [`after_exit`], the fires and the breaker's verdict on
//! them, a job lost with its listener), and what follows.
//!
//! [`Slot::step`] takes the outcome of the last operation and returns what to show and
//! record ([`Effect`]s) and the one operation to carry out next ([`Op`]). The async slot
//! (`slot/mod.rs`) carries them out and feeds the outcomes back, and decides nothing.
//!
//! Its inputs and outputs are in `steps.rs`, its back-off and jitter in `backoff.rs`.
//!
//! It must not: do IO, read a clock or a random source (jitter comes from [`Jitter`]),
//! or look at anything but its inputs.

use std::time::Duration;

use crate::policy::cause::{looks_like_network, Cause};
use crate::policy::exit::{deprecation_needs_confirmation, ExitReason};
use crate::policy::states::SlotState;

use super::{after_exit, reason, Exit, Next, StopCause};

pub use super::backoff::{crash_loop_starts, Backoff, Jitter, FAILURE_BACKOFF_CAP};
pub use super::steps::{Effect, Exited, Op, Outcome, RegFailure, RegKind, SlotLimits, Step};

/// How a slot retries after an auth or permission failure: at most one call per 5
/// minutes per runner while the token is bad (ghostrunner called every 10 s, W17).
pub const AUTH_RETRY: Duration = Duration::from_secs(300);
/// How long a version-deprecated slot waits before trying again.
pub const DEPRECATED_PAUSE: Duration = Duration::from_secs(3600);

/// What comes after an exit, with the waits drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    Now,
    Wait(Duration),
    StopStraysThenWait(Duration),
    AwaitUpdate,
    AwaitUpgrade(Duration),
}

/// Where the slot is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Gates,
    Registering,
    Starting,
    Watching,
    Confirming,
    Recording,
    Waiting,
    Done,
}

/// The slot's policy between two listeners.
#[derive(Debug, Clone)]
pub struct Slot {
    limits: SlotLimits,
    jitter: Jitter,
    phase: Phase,
    /// Consecutive failures.
    pub failures: u32,
    /// Consecutive exit-2 exits.
    retryable_streak: u32,
    /// The last fatal message pointed at the network.
    network_evidence: bool,
    /// The current run of failures is GitHub refusing the token (not this slot's doing).
    refused_only: bool,
    /// A registration was made in advance and not taken yet.
    prepared: bool,
    /// The registration in hand is a fixed-name (token) one.
    fixed_name: bool,
    /// What follows the recording of fires: the exit's effects and what comes after.
    after_record: Option<(Vec<Effect>, After)>,
    /// A deprecated line awaiting GitHub's word: the exit's effects so far, the version.
    after_confirm: Option<(Vec<Effect>, String)>,
    /// The current state shown is `paused`.
    paused: bool,
}

impl Slot {
    pub fn new(limits: SlotLimits, jitter: Jitter) -> Slot {
        Slot {
            limits,
            jitter,
            phase: Phase::Gates,
            failures: 0,
            retryable_streak: 0,
            network_evidence: false,
            refused_only: false,
            prepared: false,
            fixed_name: false,
            after_record: None,
            after_confirm: None,
            paused: false,
        }
    }

    /// Whether a listener that starts now follows failures (it must listen for
    /// `stable_after` to end them).
    pub fn failing(&self) -> bool {
        self.failures > 0
    }

    fn backoff(&mut self) -> Duration {
        let j = self.jitter.next();
        self.limits.backoff.wait(self.failures, j)
    }

    /// How long to wait after a failed registration: the back-off, at least what a rate
    /// limit asks, and [`AUTH_RETRY`] when GitHub refuses the token or the permission.
    fn registration_wait(&mut self, f: &RegKind) -> Duration {
        let b = self.backoff();
        match f {
            RegKind::RateLimited { retry_after } => (*retry_after).max(b),
            RegKind::Refused { .. } | RegKind::Denied => AUTH_RETRY,
            RegKind::Transient => b,
        }
    }

    fn to(&mut self, phase: Phase, effects: Vec<Effect>, op: Op) -> Step {
        self.phase = phase;
        Step { effects, op }
    }

    fn finish(&mut self) -> Step {
        self.to(Phase::Done, vec![], Op::Finish)
    }

    fn gates(&mut self, effects: Vec<Effect>) -> Step {
        self.paused = false;
        self.to(Phase::Gates, effects, Op::CheckGates)
    }

    /// Feed the outcome of the last operation; what to do next.
    pub fn step(&mut self, outcome: Outcome) -> Step {
        if self.phase == Phase::Done {
            return Step {
                effects: vec![],
                op: Op::Finish,
            };
        }
        match outcome {
            Outcome::Stopping => self.finish(),
            Outcome::Begin | Outcome::Waited => self.gates(vec![]),
            Outcome::Gates {
                breaker: Some((wait, why)),
                ..
            } => self.to(
                Phase::Gates,
                vec![
                    Effect::Error(Some(why)),
                    Effect::Show(SlotState::BreakerOpen),
                ],
                Op::AwaitBreaker(wait),
            ),
            Outcome::Gates {
                clock_fault: Some(why),
                ..
            } => self.to(
                Phase::Gates,
                vec![
                    Effect::ClockPaused(why.clone()),
                    Effect::Error(Some(format!("clock fault: {why}"))),
                    Effect::Show(SlotState::ClockFault),
                ],
                Op::AwaitClock,
            ),
            Outcome::Gates {
                intake_closed: Some(why),
                ..
            } => {
                // The registration made in advance is deleted while waiting.
                self.prepared = false;
                self.to(
                    Phase::Gates,
                    vec![
                        Effect::Error(Some(format!("intake closed: {why}"))),
                        Effect::Show(SlotState::Closed),
                    ],
                    Op::AwaitIntake,
                )
            }
            Outcome::IntakeOpened => self.gates(vec![Effect::Error(None)]),
            Outcome::BreakerWaited { reset } => {
                // Open no longer: the fires that opened it leave the status too.
                let shown = [Effect::Error(None), Effect::BreakerShown];
                self.gates(shown[usize::from(!reset)..].to_vec())
            }
            Outcome::ClockFixed => self.gates(vec![Effect::ClockResumed, Effect::Error(None)]),
            Outcome::Gates { .. } if self.prepared => {
                self.prepared = false;
                self.to(Phase::Registering, vec![], Op::TakePrepared)
            }
            Outcome::Gates { .. } if self.limits.on_demand => self.to(
                Phase::Registering,
                vec![Effect::Show(SlotState::Waiting)],
                Op::AwaitAssignment,
            ),
            Outcome::Gates { .. } | Outcome::Prepared(None) | Outcome::Assigned => self.to(
                Phase::Registering,
                vec![Effect::Show(SlotState::Registering)],
                Op::Register,
            ),
            // Too old (or its token about to expire): deleted, and a new one made.
            Outcome::Prepared(Some(false)) => self.to(
                Phase::Registering,
                vec![Effect::Deregister, Effect::Show(SlotState::Registering)],
                Op::Register,
            ),
            // The one made in advance is a JIT registration: a fixed name is made anew.
            Outcome::Prepared(Some(true)) => self.start(),
            Outcome::Registered {
                fixed_name,
                stopping,
            } => self.registered(fixed_name, stopping),
            Outcome::RegisterFailed(f) => self.register_failed(f),
            Outcome::Started => self.to(Phase::Watching, vec![Effect::ListenerStarted], Op::Watch),
            Outcome::StartFailed(error) => self.start_failed(error),
            Outcome::VersionRefused(error) => self.version_refused(error),
            Outcome::Exited(x) => self.exited(x),
            Outcome::DeprecationConfirmed(confirmed) => self.deprecation_confirmed(confirmed),
            Outcome::Recorded { opened } => {
                let (e, next) = self.after_record.take().unwrap_or((vec![], After::Now));
                self.next(next, opened).after(e)
            }
        }
    }

    fn registered(&mut self, fixed_name: bool, stopping: bool) -> Step {
        self.fixed_name = fixed_name;
        let mut e = vec![Effect::Token {
            refused: false,
            message: String::new(),
        }];
        // The token works again: refusals were no failure of this slot's.
        if self.refused_only {
            self.refused_only = false;
            self.failures = 0;
            e.push(Effect::ClearFailures);
        }
        if stopping {
            e.push(Effect::Deregister);
            return self.to(Phase::Done, e, Op::Finish);
        }
        self.start().after(e)
    }

    fn register_failed(&mut self, f: RegFailure) -> Step {
        let refused = matches!(f.kind, RegKind::Refused { .. });
        self.refused_only = refused && (self.refused_only || self.failures == 0);
        let mut e = vec![];
        if let RegKind::Refused { message } = &f.kind {
            e.push(Effect::Token {
                refused: true,
                message: message.clone(),
            });
        }
        self.failures += 1;
        let wait = self.registration_wait(&f.kind);
        e.push(Effect::Failure {
            state: SlotState::Backoff,
            error: f.error.clone(),
            failures: self.failures,
        });
        e.push(Effect::RegistrationFailed {
            error: f.error,
            wait,
        });
        // A refused token is retried early once the token watch sees it work.
        self.to(
            Phase::Waiting,
            e,
            Op::Wait {
                wait,
                early_on_token: refused,
            },
        )
    }

    fn start_failed(&mut self, error: String) -> Step {
        self.failures += 1;
        let wait = self.backoff();
        let e = vec![
            Effect::Deregister,
            Effect::Failure {
                state: SlotState::Backoff,
                error: error.clone(),
                failures: self.failures,
            },
            Effect::StartFailed { error, wait },
        ];
        self.to(
            Phase::Waiting,
            e,
            Op::Wait {
                wait,
                early_on_token: false,
            },
        )
    }

    fn start(&mut self) -> Step {
        self.to(
            Phase::Starting,
            vec![Effect::Show(SlotState::Starting)],
            Op::Start,
        )
    }

    fn exited(&mut self, x: Exited) -> Step {
        if x.stable {
            self.failures = 0;
        }
        self.prepared = x.prepared;
        if let Some(f) = &x.fatal {
            self.network_evidence = looks_like_network(f);
        }
        let why = reason(x.cause.as_ref(), x.ended, &x.seen);
        let plan = after_exit(&Exit {
            reason: why,
            watchdog: match &x.cause {
                Some(StopCause::Watchdog(c, d)) => Some((*c, d.clone())),
                _ => None,
            },
            fixed_name: self.fixed_name,
            failures: self.failures,
            retryable_streak: self.retryable_streak,
            retryable_exits: self.limits.retryable_exits,
            network_evidence: self.network_evidence,
            session_conflict_wait: self.limits.session_conflict_wait,
            host: x.host,
        });
        self.retryable_streak = plan.retryable_streak;
        let mut e = vec![];
        if plan.clock_fault {
            e.push(Effect::ClockFault);
        }
        // A job that started and never completed is lost with its listener: known from
        // the listener's own events.
        // A job still held when our own stop ends the listener (the stop was decided while
        // it ran) is lost even if the runner printed its cancellation.
        let lost_job = x.job.filter(|_| !x.seen.job_completed || x.cause.is_some());
        e.push(Effect::ExitNoted {
            reason: why,
            ended: x.ended,
            lost_job,
        });
        if plan.deregister {
            // The service removes an ephemeral runner after its job; anything else is ours.
            e.push(Effect::Deregister);
        }
        self.failures = plan.failures;
        if self.failures == 0 {
            e.push(Effect::ClearFailures);
        }
        let next = match plan.next {
            Next::Now => After::Now,
            Next::StopStraysThenWait(d) => After::StopStraysThenWait(d),
            Next::AwaitUpdate => After::AwaitUpdate,
            Next::Backoff { error } => {
                let wait = self.backoff();
                e.push(Effect::Failure {
                    state: SlotState::Backoff,
                    error,
                    failures: self.failures,
                });
                e.push(Effect::ListenerFailed {
                    reason: why,
                    failures: self.failures,
                    wait,
                });
                After::Wait(wait)
            }
            // Before 2.337.0 any 403 from the broker read "deprecated": GitHub decides.
            Next::Pause if deprecation_needs_confirmation(x.seen.version.as_deref()) => {
                let version = x.seen.version.clone().unwrap_or_default();
                self.after_confirm = Some((e, version.clone()));
                return self.to(
                    Phase::Confirming,
                    vec![],
                    Op::ConfirmDeprecation { version },
                );
            }
            Next::Pause => self.deprecated(&mut e),
        };
        if plan.fires.is_empty() {
            return self.next(next, None).after(e);
        }
        // The fires first, as they happened; the rest once the breaker has said.
        self.after_record = Some((e, next));
        self.to(Phase::Recording, vec![], Op::Record(plan.fires))
    }

    /// A deprecation known for sure: paused; with `auto_update = "on"` only until the
    /// autopilot has a newer runner for this slot, otherwise for [`DEPRECATED_PAUSE`].
    fn deprecated(&mut self, e: &mut Vec<Effect>) -> After {
        e.push(Effect::Deprecated {
            failures: self.failures,
            upgrading: self.limits.auto_update,
        });
        self.paused = true;
        match self.limits.auto_update {
            true => After::AwaitUpgrade(DEPRECATED_PAUSE),
            false => After::Wait(DEPRECATED_PAUSE),
        }
    }

    /// `config.sh` refused the runner as below the registration floor: nothing was
    /// registered (the registration token is unused), and the version is deprecated.
    fn version_refused(&mut self, error: String) -> Step {
        self.failures += 1;
        let _ = error;
        let mut e = vec![Effect::Deregister];
        let next = self.deprecated(&mut e);
        self.next(next, None).after(e)
    }

    /// GitHub's word on a deprecated line from a runner before 2.337.0: confirmed, the
    /// slot pauses; otherwise it was a 403 from the broker (a proxy, a VPN, an outage:
    /// actions/runner #4613), a network fault: a watchdog fire and a back-off, never a pause.
    fn deprecation_confirmed(&mut self, confirmed: bool) -> Step {
        let (mut e, version) = self.after_confirm.take().unwrap_or_default();
        if confirmed {
            let next = self.deprecated(&mut e);
            return self.next(next, None).after(e);
        }
        let shown = if version.is_empty() {
            "this version".to_string()
        } else {
            format!("v{version}")
        };
        let error = format!(
            "the runner said {shown} is deprecated, but GitHub dates no past deadline for it: a 403 from the broker (actions/runner #4613), treated as a network fault"
        );
        let wait = self.backoff();
        e.push(Effect::Failure {
            state: SlotState::Backoff,
            error: error.clone(),
            failures: self.failures,
        });
        e.push(Effect::ListenerFailed {
            reason: ExitReason::VersionDeprecated,
            failures: self.failures,
            wait,
        });
        self.after_record = Some((e, After::Wait(wait)));
        self.to(
            Phase::Recording,
            vec![],
            Op::Record(vec![(Cause::Network, error)]),
        )
    }

    /// What follows an exit, once its fires are recorded: an opened breaker is waited out
    /// at once, as its verdict says.
    fn next(&mut self, next: After, opened: Option<(Duration, String)>) -> Step {
        if let Some((wait, why)) = opened {
            self.paused = false;
            return self.to(
                Phase::Gates,
                vec![
                    Effect::Error(Some(why)),
                    Effect::Show(SlotState::BreakerOpen),
                ],
                Op::AwaitBreaker(wait),
            );
        }
        let (op, wait) = match next {
            After::Now => return self.gates(vec![]),
            After::StopStraysThenWait(d) => (Op::StopStraysThenWait(d), d),
            After::AwaitUpdate => (Op::AwaitUpdate, Duration::ZERO),
            After::AwaitUpgrade(limit) => (Op::AwaitRunnerUpgrade { limit }, limit),
            After::Wait(wait) => (
                Op::Wait {
                    wait,
                    early_on_token: false,
                },
                wait,
            ),
        };
        let mut e = vec![];
        if !wait.is_zero() && !self.paused {
            e.push(Effect::Show(SlotState::Backoff));
        }
        self.to(Phase::Waiting, e, op)
    }
}

#[cfg(test)]
#[path = "outer_tests.rs"]
mod tests;
