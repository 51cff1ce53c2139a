//! The job's lease (reference caches-and-containment 5.6): the listener renews it about
//! every 60 s and, with `ACTIONS_RUNNER_PRINT_LOG_TO_STDOUT=1` (which the supervisor sets),
//! prints `Successfully renew job …`; a renewal missed past its cadence, or the runner's
//! `Catch exception during renew runner job` line, is shown and logged at once.

use std::time::Duration;

use nix::sys::signal::Signal;
use sim::protocol::Script;

use crate::support::{job, setup, Daemon};

const T: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_renewal_missed_past_its_cadence_is_shown_and_logged_before_github_gives_up() {
    let (sb, gh, mut env) = setup(|_| {}).await;
    env.insert("SUPERVISOR_JOBS_RENEWAL_LATE".into(), "2s".into());
    gh.script(Script::LeaseTrouble {
        after_ms: 500,
        fail: false,
    });
    gh.enqueue(job("starved", 8_000), 1);
    let mut d = Daemon::start(&env, &["run"]).await;
    let late = d.wait_event("lease_renewal_late", T).await;
    assert!(late.u64("since_s").is_some_and(|s| s >= 2), "{late:?}");
    let s = sb
        .wait_status(T, |s| s.slots[0].lease_warning.is_some())
        .await;
    assert!(
        s.slots[0]
            .lease_warning
            .as_deref()
            .unwrap()
            .contains("no renewal of the job's lease"),
        "{:?}",
        s.slots[0]
    );
    // Said once per episode; gone with the job.
    d.wait_event("job_completed", T).await;
    assert_eq!(d.count_events("lease_renewal_late", |_| true), 1);
    sb.wait_status(T, |s| s.slots[0].lease_warning.is_none())
        .await;
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn a_failed_renewal_is_said_at_once() {
    let (sb, gh, mut env) = setup(|_| {}).await;
    // Far beyond the job: only the runner's own line can raise it.
    env.insert("SUPERVISOR_JOBS_RENEWAL_LATE".into(), "5m".into());
    gh.script(Script::LeaseTrouble {
        after_ms: 500,
        fail: true,
    });
    gh.enqueue(job("abandoned", 6_000), 1);
    let mut d = Daemon::start(&env, &["run"]).await;
    let failed = d.wait_event("lease_renewal_failed", T).await;
    assert!(
        failed.has("line", "Catch exception during renew runner job"),
        "{failed:?}"
    );
    let s = sb
        .wait_status(T, |s| s.slots[0].lease_warning.is_some())
        .await;
    assert!(s.slots[0]
        .lease_warning
        .as_deref()
        .unwrap()
        .contains("#4635"));
    // Healthy renewals are not events of their own at info, and never a warning.
    assert_eq!(d.count_events("lease_renewal_late", |_| true), 0);
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn healthy_renewals_raise_nothing() {
    let (sb, gh, mut env) = setup(|_| {}).await;
    env.insert("SUPERVISOR_JOBS_RENEWAL_LATE".into(), "7s".into());
    gh.enqueue(job("fine", 12_000), 1);
    let mut d = Daemon::start(&env, &["run"]).await;
    d.wait_event("job_completed", T).await;
    assert_eq!(d.count_events("lease_renewal_late", |_| true), 0);
    assert_eq!(d.count_events("lease_renewal_failed", |_| true), 0);
    assert!(sb.status().unwrap().slots[0].lease_warning.is_none());
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}
