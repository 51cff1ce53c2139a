//! The slot machine's table-driven tests: one per exit row, and per watchdog, drain and
//! recycle path. They run in microseconds, with no process and no clock.

use super::*;

const S: fn(u64) -> Duration = Duration::from_secs;

fn limits() -> Limits {
    Limits {
        grace: S(120),
        job_stall_timeout: S(1800),
        ready_timeout: S(300),
        drain_timeout: S(900),
        stable_after: S(60),
        renewal_late: S(90),
        prepare_next: true,
    }
}

fn ev(line: &str) -> Input {
    Input::Event(crate::policy::events::parse_line(line).expect(line))
}

const LISTENING: &str = "2026-12-01 10:00:00Z: Listening for Jobs";
const JOB: &str = "2026-12-01 10:00:00Z: Running job: build";
const DONE: &str = "2026-12-01 10:00:00Z: Job build completed with result: Succeeded";
const ERR: &str = "2026-12-01 10:00:00Z: Runner connect error: The HTTP request timed out after 00:01:00.. Retrying until reconnected.";
const BACK: &str = "2026-12-01 10:00:00Z: Runner reconnected.";

fn machine(failing: bool) -> (Listen, Instant) {
    let t0 = Instant::now();
    (Listen::new(limits(), t0, failing, false, Mode::Run), t0)
}

fn stops(a: &[Action]) -> Option<&StopCause> {
    a.iter().find_map(|x| match x {
        Action::Stop(c) => Some(c),
        _ => None,
    })
}

const H: HostFacts = HostFacts {
    clock_fault: false,
    token_invalid: false,
};

// === the listener phase ===

#[test]
fn a_job_shows_busy_prepares_the_next_registration_once_and_is_counted() {
    let (mut m, t) = machine(false);
    assert_eq!(
        m.step(ev(LISTENING), t, H),
        vec![Action::Show(SlotState::Listening)]
    );
    let a = m.step(ev(JOB), t, H);
    assert_eq!(
        a,
        vec![
            Action::JobStarted("build".into()),
            Action::Show(SlotState::Busy),
            Action::PrepareNext
        ]
    );
    assert!(m.busy());
    let a = m.step(ev(DONE), t, H);
    assert_eq!(
        a[0],
        Action::JobCompleted {
            name: "build".into(),
            result: "Succeeded".into()
        }
    );
    assert!(!m.busy() && m.seen.job_completed);
}

#[test]
fn the_watchdog_fires_after_grace_and_a_recovery_cancels_it() {
    let (mut m, t) = machine(false);
    m.step(ev(LISTENING), t, H);
    m.step(ev(ERR), t, H);
    assert_eq!(m.deadline(), Some(t + S(120)));
    m.step(ev(BACK), t + S(100), H);
    assert_eq!(m.deadline(), None, "recovered");
    m.step(ev(ERR), t + S(200), H);
    assert!(stops(&m.step(Input::Tick, t + S(319), H)).is_none());
    let a = m.step(Input::Tick, t + S(320), H);
    match stops(&a) {
        Some(StopCause::Watchdog(Cause::Network, d)) => {
            assert!(d.contains("no recovery 120s"), "{d}")
        }
        other => panic!("{other:?}"),
    }
    assert!(
        m.step(Input::Tick, t + S(400), H).is_empty(),
        "decided once"
    );
}

#[test]
fn a_busy_listener_gets_the_job_stall_timeout_and_the_cause_is_attributed() {
    let (mut m, t) = machine(false);
    m.step(ev(LISTENING), t, H);
    m.step(ev(JOB), t, H);
    m.step(ev(ERR), t, H);
    assert!(stops(&m.step(Input::Tick, t + S(121), H)).is_none());
    let clock = HostFacts {
        clock_fault: true,
        token_invalid: true,
    };
    match stops(&m.step(Input::Tick, t + S(1800), clock)) {
        Some(StopCause::Watchdog(Cause::Clock, _)) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_runners_own_clock_skew_line_makes_the_cause_clock_before_the_host_knows() {
    let skew = "The local machine's clock may be out of sync with the server time by more than five minutes. Please sync your clock with your domain or internet time and try again.";
    let (mut m, t) = machine(false);
    m.step(ev(LISTENING), t, H);
    assert_eq!(m.step(ev(skew), t, H), vec![Action::ClockSkew]);
    m.step(ev(ERR), t, H);
    assert!(m.step(ev(skew), t, H).is_empty(), "reported once");
    // The host has measured nothing wrong (H), and the error text says "timed out".
    match stops(&m.step(Input::Tick, t + S(120), H)) {
        Some(StopCause::Watchdog(Cause::Clock, _)) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_listener_that_never_listens_for_clock_skew_exits_for_the_clock() {
    let skew = "The local machine's clock may be out of sync with the server time by more than five minutes. Please sync your clock with your domain or internet time and try again.";
    let (mut m, t) = machine(false);
    assert_eq!(m.step(ev(skew), t, H), vec![Action::ClockSkew]);
    assert_eq!(
        stops(&m.step(Input::Tick, t + S(300), H)),
        Some(&StopCause::NotReady)
    );
    assert_eq!(
        reason(
            m.stop_cause(),
            crate::policy::exit::Ended::Signal(2),
            &m.seen
        ),
        ExitReason::ClockSkew
    );
}

#[test]
fn not_listening_in_time_is_replaced() {
    let (mut m, t) = machine(false);
    assert_eq!(m.deadline(), Some(t + S(300)));
    assert_eq!(
        stops(&m.step(Input::Tick, t + S(300), H)),
        Some(&StopCause::NotReady)
    );
}

#[test]
fn a_session_conflict_stops_an_idle_listener_at_once() {
    let (mut m, t) = machine(false);
    let a = m.step(ev("A session for this runner already exists."), t, H);
    assert_eq!(stops(&a), Some(&StopCause::SessionConflict));
}

#[test]
fn a_dead_path_is_a_network_fire() {
    let (mut m, t) = machine(false);
    m.step(ev(LISTENING), t, H);
    match stops(&m.step(
        Input::Cmd(SlotCmd::Connection {
            pid: 1,
            finding: Finding::DeadPath(S(61)),
        }),
        t,
        H,
    )) {
        Some(StopCause::Watchdog(Cause::Network, d)) => {
            assert!(d.contains("61s") && d.contains("dead path"), "{d}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_silent_hang_replaces_an_idle_listener_and_never_a_busy_one() {
    let (mut m, t) = machine(false);
    m.step(ev(LISTENING), t, H);
    m.step(ev(JOB), t, H);
    let silent = Input::Cmd(SlotCmd::Connection {
        pid: 1,
        finding: Finding::Silent(S(200)),
    });
    assert_eq!(stops(&m.step(silent.clone(), t, H)), None, "a quiet job");
    let (mut m, t) = machine(false);
    m.step(ev(LISTENING), t, H);
    match stops(&m.step(silent, t, H)) {
        Some(StopCause::Watchdog(Cause::Network, d)) => {
            assert!(d.contains("200s") && d.contains("silent hang"), "{d}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn drain_stops_idle_listeners_and_lets_a_job_finish_until_the_drain_timeout() {
    let (mut m, t) = machine(false);
    m.step(ev(LISTENING), t, H);
    assert_eq!(
        stops(&m.step(Input::Mode(Mode::Drain), t, H)),
        Some(&StopCause::Shutdown)
    );

    let (mut m, t) = machine(false);
    m.step(ev(LISTENING), t, H);
    m.step(ev(JOB), t, H);
    let a = m.step(Input::Mode(Mode::Drain), t, H);
    assert_eq!(a, vec![Action::DrainWaiting]);
    assert_eq!(m.deadline(), Some(t + S(900)));
    let a = m.step(Input::Tick, t + S(900), H);
    assert_eq!(a[0], Action::DrainTimedOut);
    assert_eq!(stops(&a), Some(&StopCause::Shutdown));

    // A second signal stops a busy one now.
    let (mut m, t) = machine(false);
    m.step(ev(JOB), t, H);
    m.step(Input::Mode(Mode::Drain), t, H);
    assert_eq!(
        stops(&m.step(Input::Mode(Mode::Force), t, H)),
        Some(&StopCause::Shutdown)
    );
}

#[test]
fn a_job_that_completes_during_the_drain_is_counted_and_prepares_nothing() {
    // The line that was queued when the drain began goes through the same step: the
    // job is counted and busy cleared, and no registration is made while draining.
    let (mut m, t) = machine(false);
    m.step(ev(LISTENING), t, H);
    m.step(Input::Mode(Mode::Drain), t, H);
    let (mut m2, t2) = machine(false);
    m2.step(ev(LISTENING), t2, H);
    m2.step(ev(JOB), t2, H);
    m2.step(Input::Mode(Mode::Drain), t2, H);
    let a = m2.step(ev(DONE), t2, H);
    assert!(matches!(a[0], Action::JobCompleted { .. }));
    assert!(!m2.busy());
    assert_eq!(m2.deadline(), None, "nothing left to wait for but its exit");
    // A job that starts while draining prepares no registration.
    let (mut m3, t3) = machine(false);
    m3.step(ev(LISTENING), t3, H);
    m3.mode = Mode::Drain;
    assert!(!m3.step(ev(JOB), t3, H).contains(&Action::PrepareNext));
    let _ = m;
}

#[test]
fn a_resume_recycles_an_idle_listener_and_keeps_a_busy_one() {
    let (mut m, t) = machine(false);
    m.step(ev(LISTENING), t, H);
    let a = m.step(Input::Cmd(SlotCmd::Recycle), t, H);
    assert_eq!(
        a,
        vec![Action::RecycleIdle, Action::Stop(StopCause::Recycle)]
    );
    let (mut m, t) = machine(false);
    m.step(ev(JOB), t, H);
    assert_eq!(
        m.step(Input::Cmd(SlotCmd::Recycle), t, H),
        vec![Action::KeepBusyOnResume]
    );
    assert!(m
        .step(Input::Cmd(SlotCmd::Replace(Cause::Unknown)), t, H)
        .is_empty());
}

#[test]
fn a_suspend_past_the_job_lease_replaces_a_busy_listener_at_once() {
    let (mut m, t) = machine(false);
    m.step(ev(JOB), t, H);
    assert_eq!(
        m.step(Input::Cmd(SlotCmd::LeaseLost), t, H),
        vec![Action::LeaseLost, Action::Stop(StopCause::LeaseLost)]
    );
    // An idle one is recycled as on any resume.
    let (mut m, t) = machine(false);
    m.step(ev(LISTENING), t, H);
    assert_eq!(
        m.step(Input::Cmd(SlotCmd::LeaseLost), t, H),
        vec![Action::RecycleIdle, Action::Stop(StopCause::Recycle)]
    );
}

#[test]
fn failures_end_only_after_listening_for_stable_after() {
    let (mut m, t) = machine(true);
    m.step(ev(LISTENING), t, H);
    assert_eq!(m.deadline(), Some(t + S(60)));
    assert!(!m
        .step(Input::Tick, t + S(59), H)
        .contains(&Action::EndFailures));
    assert_eq!(m.step(Input::Tick, t + S(60), H), vec![Action::EndFailures]);
    assert_eq!(m.deadline(), None);
    // Not failing: nothing to end.
    let (mut m, t) = machine(false);
    m.step(ev(LISTENING), t, H);
    assert_eq!(m.deadline(), None);
}

// === the exit table: one row each ===

fn exit(reason: ExitReason) -> Exit {
    Exit {
        reason,
        watchdog: None,
        fixed_name: false,
        failures: 2,
        retryable_streak: 0,
        retryable_exits: 3,
        network_evidence: false,
        session_conflict_wait: S(30),
        host: H,
    }
}

#[test]
fn after_each_kind_of_exit() {
    use ExitReason as R;
    // (reason, deregister, failures after, next is Now)
    for (r, dereg, failures, now) in [
        (R::JobDone, false, 0, true),
        (R::Stopped, true, 0, true),
        (R::RegistrationDeleted, true, 0, true),
        (R::Watchdog, true, 0, true),
        (R::Recycled, true, 0, true),
        (R::SessionConflict, true, 2, true),
        (R::Retryable, true, 3, false),
        (R::Terminated, true, 3, false),
        (R::Crashed, true, 3, false),
        (R::CleanExit, true, 3, false),
        (R::ClockSkew, true, 3, false),
        (R::Unknown, true, 3, false),
    ] {
        let p = after_exit(&exit(r));
        assert_eq!(p.deregister, dereg, "{r:?}");
        assert_eq!(p.failures, failures, "{r:?}");
        assert_eq!(p.next == Next::Now, now, "{r:?}: {:?}", p.next);
        if let Next::Backoff { error } = &p.next {
            assert_eq!(error, &format!("listener exited: {}", r.as_str()));
        }
        assert_eq!(p.clock_fault, r == R::ClockSkew);
    }
    let p = after_exit(&exit(R::Updating));
    assert_eq!((p.next, p.failures), (Next::AwaitUpdate, 2));
    let p = after_exit(&exit(R::VersionDeprecated));
    assert_eq!((p.next, p.failures), (Next::Pause, 3));
    let p = after_exit(&Exit {
        fixed_name: true,
        ..exit(R::SessionConflict)
    });
    assert_eq!(p.next, Next::StopStraysThenWait(S(30)));
}

#[test]
fn a_watchdog_stop_is_a_fire_and_repeated_exit_2_is_one_too() {
    let p = after_exit(&Exit {
        watchdog: Some((Cause::Network, "stalled".into())),
        ..exit(ExitReason::Watchdog)
    });
    assert_eq!(p.fires, vec![(Cause::Network, "stalled".into())]);
    let mut streak = 0;
    let mut fired = vec![];
    for _ in 0..3 {
        let p = after_exit(&Exit {
            retryable_streak: streak,
            network_evidence: true,
            ..exit(ExitReason::Retryable)
        });
        streak = p.retryable_streak;
        fired.extend(p.fires);
    }
    assert_eq!(fired.len(), 1, "the third exit 2 in a row fires");
    assert_eq!(fired[0].0, Cause::Network);
    assert_eq!(streak, 0, "and starts a new run");
    // Anything else ends the run; our own stop between two crashes does not.
    assert_eq!(
        after_exit(&Exit {
            retryable_streak: 2,
            ..exit(ExitReason::JobDone)
        })
        .retryable_streak,
        0
    );
    assert_eq!(
        after_exit(&Exit {
            retryable_streak: 2,
            ..exit(ExitReason::Stopped)
        })
        .retryable_streak,
        2
    );
}

#[test]
fn our_stop_cause_decides_the_reason_before_the_code() {
    let seen = Seen::default();
    let w = StopCause::Watchdog(Cause::Unknown, String::new());
    assert_eq!(
        reason(Some(&w), Ended::Code(0), &seen),
        ExitReason::Watchdog
    );
    assert_eq!(
        reason(Some(&StopCause::Recycle), Ended::Code(0), &seen),
        ExitReason::Recycled
    );
    assert_eq!(
        reason(Some(&StopCause::NotReady), Ended::Code(0), &seen),
        ExitReason::Unknown
    );
    assert_eq!(
        reason(Some(&StopCause::SessionConflict), Ended::Code(0), &seen),
        ExitReason::SessionConflict
    );
    assert_eq!(
        reason(Some(&StopCause::Shutdown), Ended::Code(0), &seen),
        ExitReason::Stopped
    );
    assert_eq!(reason(None, Ended::Code(2), &seen), ExitReason::Retryable);
}

#[test]
fn scale_set_mode_registers_nothing_in_advance_and_stops_only_an_idle_surplus_runner() {
    let t = Instant::now();
    let l = Limits {
        prepare_next: false,
        ..limits()
    };
    let mut m = Listen::new(l, t, false, false, Mode::Run);
    m.step(ev(LISTENING), t, H);
    // Surplus while idle: stopped, an ordinary stop (no failure, no fire).
    let a = m.step(Input::Cmd(SlotCmd::Surplus), t, H);
    assert_eq!(stops(&a), Some(&StopCause::Surplus));
    assert_eq!(
        reason(Some(&StopCause::Surplus), Ended::Code(0), &Seen::default()),
        ExitReason::Stopped
    );
    let mut m = Listen::new(l, t, false, false, Mode::Run);
    m.step(ev(LISTENING), t, H);
    let a = m.step(ev(JOB), t, H);
    assert!(!a.contains(&Action::PrepareNext), "{a:?}");
    // Busy: a surplus word changes nothing.
    assert!(m.step(Input::Cmd(SlotCmd::Surplus), t, H).is_empty());
}

// === the job's lease ===

const RENEWED: &str = "[RUNNER 2026-12-01 10:00:00Z INFO JobDispatcher] Successfully renew job 7, job is valid till 12/01/2026 10:10:00";
const RENEW_FAILED: &str =
    "[RUNNER 2026-12-01 10:00:00Z ERR  JobDispatcher] Catch exception during renew runner job 7.";

fn lease_actions(a: &[Action]) -> Vec<&Action> {
    a.iter()
        .filter(|x| {
            matches!(
                x,
                Action::LeaseLate(_) | Action::LeaseRenewFailed(_) | Action::LeaseRenewedAgain
            )
        })
        .collect()
}

#[test]
fn a_renewal_missed_past_its_cadence_is_said_once_and_its_return_too() {
    let (mut m, t) = machine(false);
    m.step(ev(LISTENING), t, H);
    m.step(ev(RENEWED), t, H);
    m.step(ev(JOB), t, H);
    // Renewals every 60 s keep it quiet.
    for i in 1..=3 {
        let now = t + S(60 * i);
        assert!(lease_actions(&m.step(Input::Tick, now, H)).is_empty());
        m.step(ev(RENEWED), now, H);
    }
    let last = t + S(180);
    assert_eq!(m.deadline(), Some(last + S(90)));
    assert!(lease_actions(&m.step(Input::Tick, last + S(89), H)).is_empty());
    let a = m.step(Input::Tick, last + S(91), H);
    assert_eq!(lease_actions(&a), vec![&Action::LeaseLate(S(91))]);
    // Said once: no deadline for it any more, no second warning.
    assert_eq!(m.deadline(), None);
    assert!(lease_actions(&m.step(Input::Tick, last + S(200), H)).is_empty());
    // It comes back.
    let a = m.step(ev(RENEWED), last + S(210), H);
    assert_eq!(lease_actions(&a), vec![&Action::LeaseRenewedAgain]);
    assert!(
        stops(&a).is_none(),
        "a late renewal is said, never acted on alone"
    );
}

#[test]
fn a_failed_renewal_is_said_at_once() {
    let (mut m, t) = machine(false);
    m.step(ev(LISTENING), t, H);
    m.step(ev(JOB), t, H);
    let a = m.step(ev(RENEW_FAILED), t + S(61), H);
    assert_eq!(
        lease_actions(&a),
        vec![&Action::LeaseRenewFailed(
            "Catch exception during renew runner job 7.".into()
        )]
    );
}

#[test]
fn no_renewal_is_judged_without_a_trace_that_shows_them_nor_while_idle() {
    // A runner that prints no renewals (no trace on stdout) is never said late.
    let (mut m, t) = machine(false);
    m.step(ev(LISTENING), t, H);
    m.step(ev(JOB), t, H);
    assert_eq!(m.deadline(), None);
    assert!(lease_actions(&m.step(Input::Tick, t + S(3600), H)).is_empty());
    // Idle between jobs: nothing to renew.
    let (mut m, t) = machine(false);
    m.step(ev(LISTENING), t, H);
    m.step(ev(RENEWED), t, H);
    assert_eq!(m.deadline(), None);
    m.step(ev(JOB), t, H);
    m.step(ev(DONE), t + S(10), H);
    assert_eq!(m.deadline(), None);
}
