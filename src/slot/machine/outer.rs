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
//! It must not: do IO, read a clock or a random source (jitter comes from [`Jitter`]),
//! or look at anything but its inputs.

use std::time::Duration;

use crate::cause::{looks_like_network, Cause};
use crate::runner::exit::{deprecation_needs_confirmation, ExitReason, Seen};
use crate::status::slot::SlotState;

use super::{after_exit, reason, Exit, HostFacts, Next, StopCause};

/// How a slot retries after an auth or permission failure: at most one call per 5
/// minutes per runner while the token is bad (ghostrunner called every 10 s, W17).
pub const AUTH_RETRY: Duration = Duration::from_secs(300);
/// How long a version-deprecated slot waits before trying again.
pub const DEPRECATED_PAUSE: Duration = Duration::from_secs(3600);

/// Where the jitter of back-offs comes from: a seeded source (the daemon seeds it once), or
/// a fixed fraction (tests, which then assert exact waits).
#[derive(Debug, Clone)]
pub enum Jitter {
    /// A fraction in `[0, 1]` of the upper half of each back-off.
    Fixed(f64),
    /// splitmix64 from this state.
    Seeded(u64),
}

impl Jitter {
    /// The next fraction in `[0, 1]`.
    fn next(&mut self) -> f64 {
        match self {
            Jitter::Fixed(f) => f.clamp(0.0, 1.0),
            Jitter::Seeded(s) => {
                *s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = *s;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                z ^= z >> 31;
                (z >> 11) as f64 / (1u64 << 53) as f64
            }
        }
    }
}

/// The longest crash-loop back-off.
pub const FAILURE_BACKOFF_CAP: Duration = Duration::from_secs(300);

/// The crash-loop back-off: first wait and longest (`[runner] failure_backoff`, 2 s, and
/// 5 min).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    /// The wait after the `failures`-th consecutive failure (1-based): a point in the
    /// upper half of `min(cap, base·2^(failures-1))`, `jitter` of the way up.
    pub fn wait(&self, failures: u32, jitter: f64) -> Duration {
        let n = failures.saturating_sub(1).min(30);
        let d = self.base.saturating_mul(1u32 << n).min(self.cap);
        let half = d / 2;
        half + half.mul_f64(jitter.clamp(0.0, 1.0))
    }
}

/// Listener starts within `window` for a listener that crashes `crash` after it starts
/// (start-up included), each failure backed off by `backoff`, with `jitter`. The
/// crash-loop figures of the tests and the resilience benchmark.
pub fn crash_loop_starts(
    backoff: Backoff,
    window: Duration,
    crash: Duration,
    jitter: &mut Jitter,
) -> usize {
    let (mut t, mut failures, mut starts) = (Duration::ZERO, 0, 0);
    while t < window {
        starts += 1;
        failures += 1;
        t += crash + backoff.wait(failures, jitter.next());
    }
    starts
}

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
    pub ended: crate::runner::exit::Ended,
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
    },
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
    /// Take the registration made in advance into hand: answer [`Outcome::Prepared`].
    TakePrepared,
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
        ended: crate::runner::exit::Ended,
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
    /// A deprecated runner: the operator must install a current one (shown as `paused`).
    Deprecated {
        failures: u32,
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
    fn after(mut self, mut first: Vec<Effect>) -> Step {
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
}

/// What comes after an exit, with the waits drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    Now,
    Wait(Duration),
    StopStraysThenWait(Duration),
    AwaitUpdate,
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
            Outcome::Gates { .. } | Outcome::Prepared(None) => self.to(
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
        let lost_job = x.job.filter(|_| !x.seen.job_completed);
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
            Next::Pause => {
                e.push(Effect::Deprecated {
                    failures: self.failures,
                });
                self.paused = true;
                After::Wait(DEPRECATED_PAUSE)
            }
        };
        if plan.fires.is_empty() {
            return self.next(next, None).after(e);
        }
        // The fires first, as they happened; the rest once the breaker has said.
        self.after_record = Some((e, next));
        self.to(Phase::Recording, vec![], Op::Record(plan.fires))
    }

    /// GitHub's word on a deprecated line from a runner before 2.337.0: confirmed, the
    /// slot pauses; otherwise it was a 403 from the broker (a proxy, a VPN, an outage:
    /// actions/runner #4613), a network fault: a watchdog fire and a back-off, never a pause.
    fn deprecation_confirmed(&mut self, confirmed: bool) -> Step {
        let (mut e, version) = self.after_confirm.take().unwrap_or_default();
        if confirmed {
            e.push(Effect::Deprecated {
                failures: self.failures,
            });
            self.paused = true;
            return self.next(After::Wait(DEPRECATED_PAUSE), None).after(e);
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
