//! The gates before a registration: an open breaker first, then a clock fault, then
//! closed intake.

use super::*;

#[test]
fn gates_an_open_breaker_first_then_a_clock_fault() {
    let mut s = slot(0.0);
    s.step(Outcome::Begin);
    let both = Outcome::Gates {
        breaker: Some((
            S(600),
            "circuit breaker open for 600s after 6 fires (clock:6)".into(),
        )),
        clock_fault: Some("offset +400s".into()),
        intake_closed: None,
    };
    let step = s.step(both);
    assert_eq!(
        step.effects,
        [
            Effect::Error(Some(
                "circuit breaker open for 600s after 6 fires (clock:6)".into()
            )),
            Effect::Show(SlotState::BreakerOpen)
        ]
    );
    assert_eq!(step.op, Op::AwaitBreaker(S(600)));
    // Waited out: the breaker is shown as it is now, the error stays until the next step.
    let step = s.step(Outcome::BreakerWaited { reset: false });
    assert_eq!(
        (step.effects, step.op),
        (vec![Effect::BreakerShown], Op::CheckGates)
    );
    let step = s.step(Outcome::Gates {
        breaker: None,
        clock_fault: Some("offset +400s".into()),
        intake_closed: None,
    });
    assert_eq!(
        step.effects,
        [
            Effect::ClockPaused("offset +400s".into()),
            Effect::Error(Some("clock fault: offset +400s".into())),
            Effect::Show(SlotState::ClockFault)
        ]
    );
    assert_eq!(step.op, Op::AwaitClock);
    let step = s.step(Outcome::ClockFixed);
    assert_eq!(step.effects, [Effect::ClockResumed, Effect::Error(None)]);
    assert_eq!(step.op, Op::CheckGates);
    // An operator's reset clears the error at once.
    s.step(Outcome::Gates {
        breaker: Some((S(60), "open".into())),
        clock_fault: None,
        intake_closed: None,
    });
    let step = s.step(Outcome::BreakerWaited { reset: true });
    assert_eq!(step.effects, [Effect::Error(None), Effect::BreakerShown]);
}

#[test]
fn closed_intake_waits_without_a_registration_and_goes_on_when_it_opens() {
    let mut s = slot(0.0);
    s.step(Outcome::Begin);
    let step = s.step(Outcome::Gates {
        breaker: None,
        clock_fault: None,
        intake_closed: Some("the host is on battery".into()),
    });
    assert_eq!(
        step.effects,
        [
            Effect::Error(Some("intake closed: the host is on battery".into())),
            Effect::Show(SlotState::Closed)
        ]
    );
    assert_eq!(step.op, Op::AwaitIntake);
    let step = s.step(Outcome::IntakeOpened);
    assert_eq!(
        (step.effects, step.op),
        (vec![Effect::Error(None)], Op::CheckGates)
    );
    let step = s.step(NO_GATES);
    assert_eq!(step.op, Op::Register);
}

fn on_demand() -> Slot {
    Slot::new(
        SlotLimits {
            on_demand: true,
            ..limits()
        },
        Jitter::Fixed(0.0),
    )
}

#[test]
fn scale_set_mode_waits_for_an_assignment_before_each_registration() {
    let mut s = on_demand();
    s.step(Outcome::Begin);
    let step = s.step(NO_GATES);
    assert_eq!(
        (step.effects, step.op),
        (vec![Effect::Show(SlotState::Waiting)], Op::AwaitAssignment)
    );
    let step = s.step(Outcome::Assigned);
    assert_eq!(
        (step.effects, step.op),
        (vec![Effect::Show(SlotState::Registering)], Op::Register)
    );
    // Stopped while waiting: nothing registered, nothing to delete.
    let mut s = on_demand();
    s.step(Outcome::Begin);
    s.step(NO_GATES);
    assert_eq!(s.step(Outcome::Stopping).op, Op::Finish);
}
