//! The whole slot's table tests: every gate, every branch between two listeners, with
//! exact waits (a fixed jitter), no process and no clock.

use std::time::Duration;

use super::*;
use crate::policy::cause::Cause;
use crate::policy::exit::{Ended, Seen};
use crate::policy::machine::{HostFacts, StopCause};

const S: fn(u64) -> Duration = Duration::from_secs;

/// A deprecated line, confirmed by GitHub or not.
#[path = "outer_deprecation_tests.rs"]
mod deprecation;

/// The gates: the breaker, the clock, intake.
#[path = "outer_gates_tests.rs"]
mod gates;

fn limits() -> SlotLimits {
    SlotLimits {
        backoff: Backoff {
            base: S(2),
            cap: FAILURE_BACKOFF_CAP,
        },
        retryable_exits: 3,
        session_conflict_wait: S(30),
        auto_update: false,
        on_demand: false,
    }
}

/// A slot whose back-offs are exactly the lower half (`jitter` 0) or the top (1).
fn slot(jitter: f64) -> Slot {
    Slot::new(limits(), Jitter::Fixed(jitter))
}

const NO_GATES: Outcome = Outcome::Gates {
    breaker: None,
    clock_fault: None,
    intake_closed: None,
};

/// A slot through its gates to a listener being watched.
fn watching(s: &mut Slot) {
    assert_eq!(s.step(Outcome::Begin).op, Op::CheckGates);
    assert_eq!(s.step(NO_GATES).op, Op::Register);
    assert_eq!(
        s.step(Outcome::Registered {
            fixed_name: false,
            stopping: false
        })
        .op,
        Op::Start
    );
    assert_eq!(s.step(Outcome::Started).op, Op::Watch);
}

fn exit(ended: Ended, seen: Seen, cause: Option<StopCause>) -> Exited {
    Exited {
        ended,
        seen,
        cause,
        fatal: None,
        job: None,
        stable: false,
        prepared: false,
        host: HostFacts::default(),
    }
}

fn job_done() -> Exited {
    exit(
        Ended::Code(0),
        Seen {
            listening: true,
            job_completed: true,
            ..Seen::default()
        },
        None,
    )
}

fn crash() -> Exited {
    exit(Ended::Code(2), Seen::default(), None)
}

fn transient() -> RegFailure {
    RegFailure {
        kind: RegKind::Transient,
        error: "GitHub unavailable (503)".into(),
    }
}

fn refused() -> RegFailure {
    RegFailure {
        kind: RegKind::Refused {
            message: "Bad credentials".into(),
        },
        error: "401 Bad credentials".into(),
    }
}

#[test]
fn the_happy_path_registers_starts_watches_and_goes_round_after_a_job() {
    let mut s = slot(0.0);
    let step = s.step(Outcome::Begin);
    assert_eq!((step.effects, step.op), (vec![], Op::CheckGates));
    let step = s.step(NO_GATES);
    assert_eq!(step.effects, [Effect::Show(SlotState::Registering)]);
    assert_eq!(step.op, Op::Register);
    let step = s.step(Outcome::Registered {
        fixed_name: false,
        stopping: false,
    });
    assert_eq!(
        step.effects,
        [
            Effect::Token {
                refused: false,
                message: String::new()
            },
            Effect::Show(SlotState::Starting)
        ]
    );
    assert_eq!(step.op, Op::Start);
    let step = s.step(Outcome::Started);
    assert_eq!(
        (step.effects, step.op),
        (vec![Effect::ListenerStarted], Op::Watch)
    );
    let step = s.step(Outcome::Exited(job_done()));
    assert_eq!(
        step.effects,
        [
            Effect::ExitNoted {
                reason: ExitReason::JobDone,
                ended: Ended::Code(0),
                lost_job: None
            },
            Effect::ClearFailures
        ],
        "GitHub removed the runner after its job: nothing to delete"
    );
    assert_eq!(step.op, Op::CheckGates);
}

#[test]
fn registration_failures_back_off_by_kind_with_exact_waits() {
    let mut s = slot(0.0);
    s.step(Outcome::Begin);
    s.step(NO_GATES);
    // Transient: 2 s base, the lower half with jitter 0: 1 s, then 2 s, then 4 s.
    for (n, wait) in [(1, S(1)), (2, S(2)), (3, S(4))] {
        let step = s.step(Outcome::RegisterFailed(transient()));
        assert_eq!(
            step.op,
            Op::Wait {
                wait,
                early_on_token: false
            },
            "failure {n}"
        );
        assert!(step.effects.contains(&Effect::Failure {
            state: SlotState::Backoff,
            error: "GitHub unavailable (503)".into(),
            failures: n
        }));
        assert_eq!(s.step(Outcome::Waited).op, Op::CheckGates);
        s.step(NO_GATES);
    }
    // A rate limit waits at least what GitHub asks.
    let step = s.step(Outcome::RegisterFailed(RegFailure {
        kind: RegKind::RateLimited {
            retry_after: S(900),
        },
        error: "rate limited".into(),
    }));
    assert_eq!(
        step.op,
        Op::Wait {
            wait: S(900),
            early_on_token: false
        }
    );
    // Denied: once per 5 minutes.
    s.step(Outcome::Waited);
    s.step(NO_GATES);
    let step = s.step(Outcome::RegisterFailed(RegFailure {
        kind: RegKind::Denied,
        error: "403".into(),
    }));
    assert_eq!(
        step.op,
        Op::Wait {
            wait: AUTH_RETRY,
            early_on_token: false
        }
    );
}

#[test]
fn a_refused_token_is_a_token_condition_retried_early_and_not_the_slots_failure() {
    let mut s = slot(0.0);
    s.step(Outcome::Begin);
    s.step(NO_GATES);
    for n in 1..=2 {
        let step = s.step(Outcome::RegisterFailed(refused()));
        assert_eq!(
            step.effects[0],
            Effect::Token {
                refused: true,
                message: "Bad credentials".into()
            }
        );
        assert_eq!(
            step.op,
            Op::Wait {
                wait: AUTH_RETRY,
                early_on_token: true
            },
            "woken early when the token works again"
        );
        assert_eq!(s.failures, n);
        s.step(Outcome::Waited);
        s.step(NO_GATES);
    }
    // Only refusals: once a registration works, the slot is healthy again.
    let step = s.step(Outcome::Registered {
        fixed_name: false,
        stopping: false,
    });
    assert!(
        step.effects.contains(&Effect::ClearFailures),
        "{:?}",
        step.effects
    );
    assert_eq!(s.failures, 0);

    // A run that began with another failure is the slot's own: it stays.
    let mut s = slot(0.0);
    s.step(Outcome::Begin);
    s.step(NO_GATES);
    s.step(Outcome::RegisterFailed(transient()));
    s.step(Outcome::Waited);
    s.step(NO_GATES);
    s.step(Outcome::RegisterFailed(refused()));
    s.step(Outcome::Waited);
    s.step(NO_GATES);
    let step = s.step(Outcome::Registered {
        fixed_name: false,
        stopping: false,
    });
    assert!(!step.effects.contains(&Effect::ClearFailures));
    assert_eq!(s.failures, 2);
}

#[test]
fn a_start_failure_deletes_the_registration_and_backs_off() {
    let mut s = slot(1.0);
    s.step(Outcome::Begin);
    s.step(NO_GATES);
    s.step(Outcome::Registered {
        fixed_name: false,
        stopping: false,
    });
    let step = s.step(Outcome::StartFailed("cannot spawn".into()));
    assert_eq!(
        step.effects,
        [
            Effect::Deregister,
            Effect::Failure {
                state: SlotState::Backoff,
                error: "cannot spawn".into(),
                failures: 1
            },
            // Jitter 1: the top of the first step, 2 s.
            Effect::StartFailed {
                error: "cannot spawn".into(),
                wait: S(2)
            }
        ]
    );
    assert_eq!(
        step.op,
        Op::Wait {
            wait: S(2),
            early_on_token: false
        }
    );
}

#[test]
fn the_registration_made_in_advance_is_used_deleted_or_replaced() {
    for (prepared, effects, op) in [
        (
            Some(true),
            vec![Effect::Show(SlotState::Starting)],
            Op::Start,
        ),
        (
            Some(false),
            vec![Effect::Deregister, Effect::Show(SlotState::Registering)],
            Op::Register,
        ),
        (
            None,
            vec![Effect::Show(SlotState::Registering)],
            Op::Register,
        ),
    ] {
        let mut s = slot(0.0);
        watching(&mut s);
        s.step(Outcome::Exited(Exited {
            prepared: true,
            ..job_done()
        }));
        let step = s.step(NO_GATES);
        assert_eq!((step.effects, step.op), (vec![], Op::TakePrepared));
        let step = s.step(Outcome::Prepared(prepared));
        assert_eq!((step.effects, step.op), (effects, op), "{prepared:?}");
    }
}

#[test]
fn a_crash_mid_job_loses_the_job_deletes_the_registration_and_backs_off() {
    let mut s = slot(0.0);
    watching(&mut s);
    let step = s.step(Outcome::Exited(Exited {
        job: Some("e2e".into()),
        ..crash()
    }));
    assert_eq!(
        step.effects,
        [
            Effect::ExitNoted {
                reason: ExitReason::Retryable,
                ended: Ended::Code(2),
                lost_job: Some("e2e".into())
            },
            Effect::Deregister,
            Effect::Failure {
                state: SlotState::Backoff,
                error: "listener exited: retryable".into(),
                failures: 1
            },
            Effect::ListenerFailed {
                reason: ExitReason::Retryable,
                failures: 1,
                wait: S(1)
            },
            Effect::Show(SlotState::Backoff)
        ]
    );
    assert_eq!(
        step.op,
        Op::Wait {
            wait: S(1),
            early_on_token: false
        }
    );
}

#[test]
fn a_watchdog_fire_is_recorded_first_and_an_opened_breaker_is_waited_out_at_once() {
    let stopped = || {
        exit(
            Ended::Code(0),
            Seen {
                listening: true,
                ..Seen::default()
            },
            Some(StopCause::Watchdog(Cause::Network, "silent hang".into())),
        )
    };
    let mut s = slot(0.0);
    watching(&mut s);
    let step = s.step(Outcome::Exited(stopped()));
    assert_eq!(step.effects, vec![], "the fire first, as it happened");
    assert_eq!(
        step.op,
        Op::Record(vec![(Cause::Network, "silent hang".into())])
    );
    // Closed: the rest of the exit, then round again.
    let step = s.step(Outcome::Recorded { opened: None });
    assert_eq!(
        step.effects,
        [
            Effect::ExitNoted {
                reason: ExitReason::Watchdog,
                ended: Ended::Code(0),
                lost_job: None
            },
            Effect::Deregister,
            Effect::ClearFailures
        ]
    );
    assert_eq!(step.op, Op::CheckGates);
    // Opened: the verdict is used as it is, not asked again.
    s.step(NO_GATES);
    s.step(Outcome::Registered {
        fixed_name: false,
        stopping: false,
    });
    s.step(Outcome::Started);
    s.step(Outcome::Exited(stopped()));
    let step = s.step(Outcome::Recorded {
        opened: Some((S(600), "circuit breaker open for 600s after 6 fires".into())),
    });
    assert_eq!(
        &step.effects[3..],
        [
            Effect::Error(Some("circuit breaker open for 600s after 6 fires".into())),
            Effect::Show(SlotState::BreakerOpen)
        ]
    );
    assert_eq!(step.op, Op::AwaitBreaker(S(600)));
}

#[test]
fn three_exit_2_in_a_row_fire_with_the_network_as_cause() {
    let mut s = slot(0.0);
    let mut ops = vec![];
    for _ in 0..3 {
        watching(&mut s);
        let step = s.step(Outcome::Exited(Exited {
            fatal: Some("The HTTP request timed out".into()),
            ..crash()
        }));
        ops.push(step.op.clone());
        if let Op::Record(_) = step.op {
            s.step(Outcome::Recorded { opened: None });
        }
        s.step(Outcome::Waited);
    }
    assert!(matches!(ops[0], Op::Wait { .. }) && matches!(ops[1], Op::Wait { .. }));
    assert_eq!(
        ops[2],
        Op::Record(vec![(
            Cause::Network,
            "3 consecutive retryable exits (code 2)".into()
        )])
    );
}

#[test]
fn other_exits_session_conflicts_updates_and_clock_skew() {
    // A fixed name's session must expire first; strays of its root may hold it.
    let mut s = slot(0.0);
    s.step(Outcome::Begin);
    s.step(NO_GATES);
    s.step(Outcome::Registered {
        fixed_name: true,
        stopping: false,
    });
    s.step(Outcome::Started);
    let step = s.step(Outcome::Exited(exit(Ended::Code(5), Seen::default(), None)));
    assert_eq!(step.op, Op::StopStraysThenWait(S(30)));
    assert!(step.effects.contains(&Effect::Show(SlotState::Backoff)));
    // A JIT name has no old session: go on.
    let mut s = slot(0.0);
    watching(&mut s);
    let step = s.step(Outcome::Exited(exit(Ended::Code(5), Seen::default(), None)));
    assert_eq!(step.op, Op::CheckGates);
    // Self-update: wait for update.finished.
    let mut s = slot(0.0);
    watching(&mut s);
    let step = s.step(Outcome::Exited(exit(Ended::Code(3), Seen::default(), None)));
    assert_eq!(step.op, Op::AwaitUpdate);
    // The runner's clock-skew line: a host-wide clock fault.
    let mut s = slot(0.0);
    watching(&mut s);
    let skew = Seen {
        clock_skew: true,
        ..Seen::default()
    };
    let step = s.step(Outcome::Exited(exit(Ended::Code(1), skew, None)));
    assert_eq!(step.effects[0], Effect::ClockFault);
}

#[test]
fn a_stable_listener_ends_the_run_of_failures() {
    let mut s = slot(0.0);
    for _ in 0..3 {
        watching(&mut s);
        s.step(Outcome::Exited(crash()));
        s.step(Outcome::Waited);
    }
    assert_eq!(s.failures, 3);
    assert!(s.failing());
    watching(&mut s);
    // It listened for stable_after, then was stopped for a resume.
    let step = s.step(Outcome::Exited(Exited {
        stable: true,
        ..exit(
            Ended::Code(0),
            Seen {
                listening: true,
                ..Seen::default()
            },
            Some(StopCause::Recycle),
        )
    }));
    assert_eq!(s.failures, 0);
    assert!(step.effects.contains(&Effect::ClearFailures));
}

#[test]
fn stopping_at_any_point_finishes_and_a_registration_made_meanwhile_is_deleted() {
    for before in 0..4 {
        let mut s = slot(0.0);
        let script = [
            Outcome::Begin,
            NO_GATES,
            Outcome::RegisterFailed(transient()),
        ];
        for o in script.into_iter().take(before) {
            s.step(o);
        }
        assert_eq!(s.step(Outcome::Stopping).op, Op::Finish);
        assert_eq!(s.step(Outcome::Begin).op, Op::Finish, "done is done");
    }
    let mut s = slot(0.0);
    s.step(Outcome::Begin);
    s.step(NO_GATES);
    let step = s.step(Outcome::Registered {
        fixed_name: false,
        stopping: true,
    });
    assert_eq!(step.op, Op::Finish);
    assert!(step.effects.contains(&Effect::Deregister));
}
