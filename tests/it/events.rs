//! The log interface: every decision the supervisor logs is a JSON line (`[log] format =
//! "json"`) with a stable `event` name and its fields, as README "The log interface"
//! lists them. Tests wait on these, not on the wording of messages.

use std::time::Duration;

use nix::sys::signal::Signal;
use sim::protocol::Script;

use crate::support::{github, job, Daemon, Sandbox};

const T: Duration = Duration::from_secs(60);

#[tokio::test]
async fn decisions_carry_stable_event_names_and_fields() {
    let sb = Sandbox::new();
    let gh = github(|_| {}).await;
    // The first listener loses its connection for good (a watchdog fire); the second
    // crashes after it listens (a failure, backed off); the third takes a job.
    gh.script(Script::ConnectionLoss {
        after_ms: 100,
        recover_after_ms: None,
        give_up: false,
        during_job: false,
    });
    gh.script(Script::Crash {
        after_ms: 300,
        during_job: false,
    });
    let mut env = sb.env(&gh);
    env.insert("SUPERVISOR_LOG_FORMAT".into(), "json".into());
    env.insert("SUPERVISOR_WATCHDOG_GRACE".into(), "1s".into());
    env.insert("SUPERVISOR_RUNNER_FAILURE_BACKOFF".into(), "100ms".into());
    let mut d = Daemon::start(&env, &["run"]).await;

    let fire = d.wait_event("watchdog_fire", T).await;
    assert_eq!(fire.u64("slot"), Some(0));
    assert!(fire.is("cause", "network"), "{fire:?}");
    assert_eq!(fire.level, "WARN");
    let exited = d
        .wait_events("listener_exited", |e| e.is("reason", "watchdog"), 1, T)
        .await;
    assert_eq!(exited.u64("slot"), Some(0));
    let failed = d.wait_event("listener_failed", T).await;
    assert!(failed.is("reason", "retryable"), "{failed:?}");
    assert_eq!(failed.u64("failures"), Some(1));
    // Jittered in the upper half of the configured 100 ms.
    assert!(
        (50..=100).contains(&failed.u64("wait_ms").unwrap()),
        "{failed:?}"
    );
    d.wait_events("runner_listening", |_| true, 3, T).await;
    gh.enqueue(job("build", 200), 1);
    let started = d.wait_event("runner_job_started", T).await;
    assert!(started.str("runner").is_some_and(|r| r.starts_with("ci-")));
    let done = d.wait_event("job_completed", T).await;
    assert!(
        done.is("job", "build") && done.is("result", "Succeeded"),
        "{done:?}"
    );
    assert_eq!(d.count_events("registration_deleted", |_| true), 2);
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
    assert_eq!(d.count_events("drain", |e| e.is("signal", "SIGTERM")), 1);
    assert_eq!(d.count_events("stopped", |_| true), 1);
    // Every line the supervisor itself logs carries an event name.
    let nameless: Vec<String> = d
        .log()
        .into_iter()
        .filter(|l| l.starts_with('{') && l.contains("\"target\":\"runner_supervisor"))
        .filter(|l| crate::support::events::parse(l).is_none())
        .collect();
    assert!(nameless.is_empty(), "{nameless:#?}");
}
