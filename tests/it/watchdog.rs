//! The watchdog and the circuit breaker through the real binary (ghostrunner scenarios 7,
//! 9, 10, 11, and the repeated exit-2 case).

use std::time::Duration;

use nix::sys::signal::Signal;
use sim::github::{FakeGithub, JobSpec};
use sim::protocol::Script;

use crate::support::{
    apply, faketime_file_env, github, setup, wait_health, Chronyd, Daemon, Sandbox,
};

const T: Duration = Duration::from_secs(60);

fn loss(recover_after_ms: Option<u64>, during_job: bool) -> Script {
    Script::ConnectionLoss {
        after_ms: 100,
        recover_after_ms,
        give_up: false,
        during_job,
    }
}

/// Registrations asked of GitHub so far.
fn registrations(gh: &FakeGithub) -> usize {
    gh.calls()
        .iter()
        .filter(|c| c.path.ends_with("generate-jitconfig"))
        .count()
}

/// When the supervisor logged its first `name` event.
fn logged_at(d: &Daemon, name: &str) -> chrono::DateTime<chrono::FixedOffset> {
    d.events()
        .iter()
        .find(|e| e.name == name)
        .map(|e| e.at)
        .unwrap_or_else(|| panic!("no {name} event:\n{}", d.log().join("\n")))
}

/// Seconds from the first `from` event to the first `to` event, by the log's timestamps.
fn secs_between(d: &Daemon, from: &str, to: &str) -> f64 {
    (logged_at(d, to) - logged_at(d, from))
        .to_std()
        .unwrap_or_else(|_| panic!("{to} logged before {from}"))
        .as_secs_f64()
}

/// The position of the first `name` event matching `pred` among all events.
fn position(
    d: &Daemon,
    name: &str,
    pred: impl Fn(&crate::support::events::Event) -> bool,
) -> usize {
    d.events()
        .iter()
        .position(|e| e.name == name && pred(e))
        .unwrap_or_else(|| panic!("no {name} event:\n{}", d.log().join("\n")))
}

#[tokio::test]
async fn scenario_09_listener_stuck_after_an_old_listening_line_is_replaced_once() {
    let sb = Sandbox::new();
    let gh = github(|_| {}).await;
    gh.script(loss(None, false));
    let mut env = sb.env(&gh);
    env.insert("SUPERVISOR_WATCHDOG_GRACE".into(), "1s".into());
    let mut d = Daemon::start(&env, &["run"]).await;
    d.wait_event("runner_connect_error", T).await;
    let fired = d.wait_event("watchdog_fire", T).await;
    assert!(fired.is("cause", "network"), "{fired:?}");
    // No recovery within the grace (1 s) after the connect error: fired at the grace.
    let after = secs_between(&d, "runner_connect_error", "watchdog_fire");
    assert!(
        (1.0..3.0).contains(&after),
        "fired {after:.2}s after the error"
    );
    d.wait_listening(2, T).await;
    // One fire, no stuck/recovered flapping; the stuck runner is deleted, a new one listens.
    assert_eq!(d.count_events("watchdog_fire", |_| true), 1);
    assert_eq!(gh.state(|s| s.deleted.len()), 1);
    assert_eq!(
        d.count_events("listener_exited", |e| e.is("reason", "watchdog")),
        1
    );
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn scenario_10_a_transient_error_that_recovers_is_left_alone() {
    let sb = Sandbox::new();
    let gh = github(|_| {}).await;
    // Idle: the error recovers within the grace.
    gh.script(loss(Some(300), false));
    // Busy: the next runner loses the connection during its job and recovers.
    gh.script(loss(Some(300), true));
    let mut env = sb.env(&gh);
    env.insert("SUPERVISOR_WATCHDOG_GRACE".into(), "1s".into());
    env.insert("SUPERVISOR_WATCHDOG_JOB_STALL_TIMEOUT".into(), "1s".into());
    let mut d = Daemon::start(&env, &["run"]).await;
    d.wait_event("runner_reconnected", T).await;
    // Jobs longer than the grace: a timer that had not been cancelled would have fired.
    gh.enqueue(
        JobSpec {
            duration_ms: 1500,
            ..Default::default()
        },
        2,
    );
    d.wait_nth("job_completed", 2, T).await;
    assert_eq!(d.count_events("runner_reconnected", |_| true), 2);
    assert_eq!(d.count_events("watchdog_fire", |_| true), 0);
    assert!(gh.state(|s| s.completed.iter().all(|j| j.result == "Succeeded")));
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn a_busy_listener_gets_the_job_stall_timeout_not_the_grace() {
    let sb = Sandbox::new();
    let gh = github(|_| {}).await;
    gh.script(loss(None, true));
    gh.enqueue(
        JobSpec {
            duration_ms: 60_000,
            ..Default::default()
        },
        1,
    );
    let mut env = sb.env(&gh);
    env.insert("SUPERVISOR_WATCHDOG_GRACE".into(), "1s".into());
    env.insert("SUPERVISOR_WATCHDOG_JOB_STALL_TIMEOUT".into(), "3s".into());
    let mut d = Daemon::start(&env, &["run"]).await;
    d.wait_event("runner_connect_error", T).await;
    d.wait_event("watchdog_fire", T).await;
    // No recovery within the job stall timeout (3 s), not the grace (1 s).
    let after = secs_between(&d, "runner_connect_error", "watchdog_fire");
    assert!(
        (3.0..5.0).contains(&after),
        "fired {after:.2}s after the error"
    );
    // The stalled job is a lost job (issue 18 §2).
    let lost = d.wait_event("job_lost", T).await;
    assert!(lost.is("cause", "stalled"), "{lost:?}");
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
    assert_eq!(gh.state(|s| s.completed[0].result.clone()), "Canceled");
}

#[tokio::test]
async fn repeated_exit_2_counts_as_a_fire() {
    let sb = Sandbox::new();
    let gh = github(|_| {}).await;
    for _ in 0..3 {
        gh.script(Script::Crash {
            after_ms: 0,
            during_job: false,
        });
    }
    let mut env = sb.env(&gh);
    env.insert("SUPERVISOR_WATCHDOG_RETRYABLE_EXITS".into(), "3".into());
    let mut d = Daemon::start(&env, &["run"]).await;
    let fired = d.wait_event("watchdog_fire", T).await;
    assert!(fired.is("cause", "unknown"), "{fired:?}");
    // The fire is the third consecutive retryable exit's (logged as that exit is noted):
    // none after the first two, and the first three exits are all retryable.
    d.wait_events("listener_exited", |e| e.is("reason", "retryable"), 3, T)
        .await;
    let at = position(&d, "watchdog_fire", |_| true);
    let second = d
        .events()
        .iter()
        .enumerate()
        .filter(|(_, e)| e.name == "listener_exited")
        .nth(1)
        .map(|(i, _)| i)
        .unwrap();
    assert!(second < at, "fired before the third exit: {fired:?}");
    let exits: Vec<String> = d
        .events()
        .iter()
        .filter(|e| e.name == "listener_exited")
        .filter_map(|e| e.str("reason"))
        .take(3)
        .collect();
    assert_eq!(exits, ["retryable"; 3]);
    assert_eq!(d.count_events("watchdog_fire", |_| true), 1);
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn scenario_11_offline_on_github_while_listening_is_replaced() {
    let (_sb, gh, mut env) = setup(|_| {}).await;
    env.insert(
        "SUPERVISOR_WATCHDOG_OFFLINE_CHECK_INTERVAL".into(),
        "1s".into(),
    );
    env.insert("SUPERVISOR_WATCHDOG_OFFLINE_AFTER".into(), "2s".into());
    let mut d = Daemon::run_listening(&env, 1, T).await;
    let first = gh.runners()[0].name.clone();
    gh.state(|s| s.runners.values_mut().for_each(|r| r.force_offline = true));
    let offline = d.wait_event("runner_offline", T).await;
    assert_eq!(offline.u64("slot"), Some(0), "{offline:?}");
    let fired = d.wait_event("watchdog_fire", T).await;
    assert_eq!(fired.u64("slot"), Some(0), "{fired:?}");
    // The fire is the offline runner's.
    assert!(position(&d, "runner_offline", |_| true) < position(&d, "watchdog_fire", |_| true));
    d.wait_listening(2, T).await;
    assert!(gh.state(|s| s.deleted.contains(&first)));
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn the_breaker_opens_says_why_and_survives_a_restart() {
    let sb = Sandbox::new();
    let gh = github(|_| {}).await;
    gh.script(loss(None, false));
    gh.script(loss(None, false));
    let mut env = sb.env(&gh);
    env.insert("SUPERVISOR_WATCHDOG_GRACE".into(), "1s".into());
    env.insert("WATCHDOG_MAX_FIRES".into(), "1".into());
    env.insert("SUPERVISOR_WATCHDOG_OPEN_FOR".into(), "1h".into());
    let mut d = Daemon::start(&env, &["run"]).await;
    let open = d.wait_event("breaker_open", T).await;
    assert!(open.is("cause", "network"), "the root cause: {open:?}");
    let last = wait_health(&env, "breaker-open", Duration::from_secs(5)).await;
    assert!(last.1.contains("network:2"), "{}", last.1);
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));

    // A restart does not reset it: the slot stays paused, nothing is registered.
    let registered = registrations(&gh);
    let mut d = Daemon::start(&env, &["run"]).await;
    wait_health(&env, "breaker-open", Duration::from_secs(10)).await;
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
    assert_eq!(registrations(&gh), registered);
}

#[tokio::test]
async fn scenario_07_the_watchdog_names_the_persisting_cause_clock() {
    let chrony = Chronyd::start("").await;
    let sb = Sandbox::new();
    let gh = github(|_| {}).await;
    gh.script(loss(None, false));
    let shift = sb.dir.path().join("faketime");
    std::fs::write(&shift, "+0\n").unwrap();
    let mut env = sb.env(&gh);
    apply(&mut env, &faketime_file_env(&shift));
    env.insert("SUPERVISOR_CLOCK_NTP_SERVERS".into(), chrony.ntp_address());
    env.insert("SUPERVISOR_CLOCK_INTERVAL".into(), "500ms".into());
    env.insert("SUPERVISOR_WATCHDOG_GRACE".into(), "3s".into());
    // A drift too small to look like a resume (30 s), but a fault at this threshold.
    env.insert("SUPERVISOR_CLOCK_FAULT_OFFSET".into(), "10s".into());
    let mut d = Daemon::start(&env, &["run"]).await;
    d.wait_event("runner_connect_error", T).await;
    // The clock goes wrong while the listener is stuck: its connect errors are the symptom.
    std::fs::write(&shift, "+20s\n").unwrap();
    d.wait_event("clock_fault", T).await;
    let fired = d.wait_event("watchdog_fire", T).await;
    assert!(
        fired.is("cause", "clock"),
        "the root cause, not the symptom: {fired:?}"
    );
    wait_health(&env, "clock: local clock is +20", Duration::from_secs(5)).await;
    // No restart storm while the clock is wrong: the replacement waits for the clock.
    d.wait_event("clock_pause", T).await;
    assert_eq!(registrations(&gh), 1);
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn scenario_13_cascade_gives_one_classification_and_no_thrashing() {
    let chrony = Chronyd::start("").await;
    let sb = Sandbox::new();
    let gh = github(|o| o.time_scale = 0.001).await;
    let shift = sb.dir.path().join("faketime");
    std::fs::write(&shift, "+10m\n").unwrap();
    let ft = faketime_file_env(&shift);
    let mut env = sb.env(&gh);
    apply(&mut env, &ft);
    env.insert("SUPERVISOR_RUNNER_ENV".into(), ft.clone());
    env.insert("SUPERVISOR_CLOCK_NTP_SERVERS".into(), chrony.ntp_address());
    env.insert("SUPERVISOR_CLOCK_INTERVAL".into(), "500ms".into());
    env.insert("SUPERVISOR_TOKEN_CHECK_INTERVAL".into(), "500ms".into());
    // Skew, a refused token and a listener retrying, all at once.
    gh.state(|s| s.revoked = true);
    let mut d = Daemon::start(&env, &["run"]).await;
    d.wait_event("clock_pause", T).await;
    d.wait_event("token_refused", T).await;
    let attempts = registrations(&gh);
    // Fix both.
    gh.state(|s| s.revoked = false);
    std::fs::write(&shift, "+0\n").unwrap();
    d.wait_event("clock_fixed", T).await;
    d.wait_listening(1, T).await;
    assert_eq!(
        d.count_events("clock_pause", |_| true),
        1,
        "one classification"
    );
    assert_eq!(
        d.count_events("token_refused", |_| true),
        1,
        "logged once, not per attempt"
    );
    assert!(
        attempts <= 1,
        "no registration attempts while the clock is wrong: {attempts}"
    );
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}
