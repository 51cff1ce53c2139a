//! The deprecated-version line: believed from 2.337.0 whatever the exit code; before it,
//! a pause only when GitHub confirms the deadline passed.

use super::*;

fn deprecated(version: &str, code: i32) -> Exited {
    exit(
        Ended::Code(code),
        Seen {
            listening: true,
            version_deprecated: true,
            version: Some(version.into()),
            ..Seen::default()
        },
        None,
    )
}

const PAUSE: Op = Op::Wait {
    wait: DEPRECATED_PAUSE,
    early_on_token: false,
};

#[test]
fn a_deprecated_runner_from_2_337_0_pauses_without_showing_backoff_whatever_its_code() {
    for code in [0, 1, 7] {
        let mut s = slot(0.0);
        watching(&mut s);
        let step = s.step(Outcome::Exited(deprecated("2.337.0", code)));
        assert!(
            step.effects.contains(&Effect::Deprecated {
                failures: 1,
                upgrading: false
            }),
            "{code}"
        );
        assert!(!step.effects.contains(&Effect::Show(SlotState::Backoff)));
        assert_eq!(step.op, PAUSE, "exit {code}");
    }
}

#[test]
fn before_2_337_0_a_deprecated_line_pauses_only_when_github_confirms_it() {
    // Confirmed: paused, as from a newer runner.
    let mut s = slot(0.0);
    watching(&mut s);
    let step = s.step(Outcome::Exited(deprecated("2.336.0", 7)));
    assert_eq!(
        step.op,
        Op::ConfirmDeprecation {
            version: "2.336.0".into()
        }
    );
    assert_eq!(step.effects, vec![], "nothing said before GitHub's word");
    let step = s.step(Outcome::DeprecationConfirmed(true));
    assert!(step.effects.contains(&Effect::Deprecated {
        failures: 1,
        upgrading: false
    }));
    assert_eq!(step.op, PAUSE);

    // Unconfirmed (a 403 from the broker): a network fire, then a back-off; no pause.
    let mut s = slot(0.0);
    watching(&mut s);
    s.step(Outcome::Exited(deprecated("2.336.0", 0)));
    let step = s.step(Outcome::DeprecationConfirmed(false));
    let Op::Record(fires) = &step.op else {
        panic!("{step:?}")
    };
    assert_eq!(fires.len(), 1);
    assert_eq!(fires[0].0, Cause::Network);
    assert!(fires[0].1.contains("#4613"), "{}", fires[0].1);
    let step = s.step(Outcome::Recorded { opened: None });
    assert!(!step
        .effects
        .iter()
        .any(|e| matches!(e, Effect::Deprecated { .. })));
    assert!(step.effects.iter().any(|e| matches!(
        e,
        Effect::Failure {
            state: SlotState::Backoff,
            failures: 1,
            ..
        }
    )));
    assert_eq!(
        step.op,
        Op::Wait {
            wait: S(1),
            early_on_token: false
        }
    );
}

/// With `auto_update = "on"` a deprecation is not waited out: the slot waits only for the
/// autopilot's newer runner (at most the pause), and shows `paused`, never `backoff`.
#[test]
fn with_auto_update_on_a_deprecated_runner_awaits_the_upgrade_instead_of_the_pause() {
    let mut s = Slot::new(
        SlotLimits {
            auto_update: true,
            ..limits()
        },
        Jitter::Fixed(0.0),
    );
    watching(&mut s);
    let step = s.step(Outcome::Exited(deprecated("2.337.0", 0)));
    assert!(step.effects.contains(&Effect::Deprecated {
        failures: 1,
        upgrading: true
    }));
    assert!(!step.effects.contains(&Effect::Show(SlotState::Backoff)));
    assert_eq!(
        step.op,
        Op::AwaitRunnerUpgrade {
            limit: DEPRECATED_PAUSE
        }
    );
    // The newer runner is there: the slot goes on at once.
    assert_eq!(s.step(Outcome::Waited).op, Op::CheckGates);
    // Before 2.337.0, GitHub's confirmation leads to the same wait.
    watching(&mut s);
    s.step(Outcome::Exited(deprecated("2.336.0", 0)));
    let step = s.step(Outcome::DeprecationConfirmed(true));
    assert_eq!(
        step.op,
        Op::AwaitRunnerUpgrade {
            limit: DEPRECATED_PAUSE
        }
    );
}

/// `config.sh`'s boxed "RUNNER UPDATE REQUIRED" (below the registration floor) is a
/// deprecation: the unused registration is deleted and the slot pauses, no back-off.
#[test]
fn a_registration_below_the_floor_is_a_deprecation() {
    for auto_update in [false, true] {
        let mut s = Slot::new(
            SlotLimits {
                auto_update,
                ..limits()
            },
            Jitter::Fixed(0.0),
        );
        assert_eq!(s.step(Outcome::Begin).op, Op::CheckGates);
        s.step(NO_GATES);
        assert_eq!(
            s.step(Outcome::Registered {
                fixed_name: true,
                stopping: false
            })
            .op,
            Op::Start
        );
        let step = s.step(Outcome::VersionRefused("RUNNER UPDATE REQUIRED".into()));
        assert!(step.effects.contains(&Effect::Deregister));
        assert!(step.effects.contains(&Effect::Deprecated {
            failures: 1,
            upgrading: auto_update
        }));
        assert!(!step.effects.contains(&Effect::Show(SlotState::Backoff)));
        let want = if auto_update {
            Op::AwaitRunnerUpgrade {
                limit: DEPRECATED_PAUSE,
            }
        } else {
            PAUSE
        };
        assert_eq!(step.op, want);
    }
}
