//! Draining on SIGTERM: busy runners may finish within drain_timeout; a second signal forces.

use std::time::Duration;

use nix::sys::signal::Signal;
use sim::github::JobSpec;

use crate::support::{github, listeners, setup, wait_gone, Daemon, Sandbox};

const T: Duration = Duration::from_secs(60);

#[tokio::test]
async fn scenario_15_sigterm_during_a_job_lets_it_finish() {
    let sb = Sandbox::new();
    let gh = github(|_| {}).await;
    gh.enqueue(
        JobSpec {
            duration_ms: 1500,
            ..Default::default()
        },
        1,
    );
    let mut d = Daemon::start(&sb.env(&gh), &["run"]).await;
    d.wait_events("runner_job_started", |e| e.is("job", "build"), 1, T)
        .await;
    d.signal(Signal::SIGTERM);
    d.wait_event("drain_waiting", T).await;
    let (code, summary) = d.wait_summary(T).await;
    assert_eq!(code, Some(0));
    assert_eq!(summary.jobs_completed, 1, "{summary:?}");
    assert_eq!(gh.state(|s| s.completed[0].result.clone()), "Succeeded");
    assert!(
        gh.runners().is_empty(),
        "the runner made in advance is deleted too: {:?}",
        gh.runners()
    );
}

#[tokio::test]
async fn scenario_15_drain_timeout_cancels_the_job_and_deregisters() {
    let sb = Sandbox::new();
    let gh = github(|_| {}).await;
    gh.enqueue(
        JobSpec {
            duration_ms: 60_000,
            ..Default::default()
        },
        1,
    );
    let mut env = sb.env(&gh);
    env.insert("SUPERVISOR_RUNNER_DRAIN_TIMEOUT".into(), "1s".into());
    let mut d = Daemon::start(&env, &["run"]).await;
    d.wait_events("runner_job_started", |e| e.is("job", "build"), 1, T)
        .await;
    let pid = listeners(&sb, 1)[0];
    d.signal(Signal::SIGTERM);
    d.wait_event("drain_timeout", T).await;
    // The job the drain cancelled is a lost job (issue 18 §2), whatever the runner prints.
    let lost = d.wait_event("job_lost", T).await;
    assert!(lost.is("cause", "stop_timeout"), "{lost:?}");
    assert_eq!(d.wait_exit(T).await.0, Some(0));
    assert_eq!(gh.state(|s| s.completed[0].result.clone()), "Canceled");
    assert!(wait_gone(pid, Duration::from_secs(5)).await);
    assert!(gh.runners().is_empty(), "{:?}", gh.runners());
}

#[tokio::test]
async fn a_second_signal_forces_the_stop() {
    let sb = Sandbox::new();
    let gh = github(|_| {}).await;
    gh.enqueue(
        JobSpec {
            duration_ms: 60_000,
            ..Default::default()
        },
        1,
    );
    let mut d = Daemon::start(&sb.env(&gh), &["run"]).await;
    d.wait_events("runner_job_started", |e| e.is("job", "build"), 1, T)
        .await;
    d.signal(Signal::SIGTERM);
    d.wait_events("drain", |e| e.is("signal", "SIGTERM"), 1, T)
        .await;
    let t = std::time::Instant::now();
    d.signal(Signal::SIGINT);
    d.wait_events("force", |e| e.is("signal", "SIGINT"), 1, T)
        .await;
    assert_eq!(d.wait_exit(T).await.0, Some(0));
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert_eq!(gh.state(|s| s.completed[0].result.clone()), "Canceled");
    assert!(gh.runners().is_empty(), "{:?}", gh.runners());
}

#[tokio::test]
async fn sigterm_is_heard_even_when_stderr_is_a_broken_pipe() {
    // Regression: a failed log write used to panic the task that logged, once the
    // signal task, so a supervisor whose log reader had gone ignored SIGTERM.
    let sb = Sandbox::new();
    let gh = github(|_| {}).await;
    let mut child = tokio::process::Command::new(crate::support::supervisor_bin())
        .arg("run")
        .env_clear()
        .envs(sb.env(&gh))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    assert!(
        gh.wait_for(T, |s| s.runners.values().any(|r| r.session.is_some()))
            .await
    );
    drop(child.stderr.take());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().unwrap() as i32),
        Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("SIGTERM must be heard")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(gh.runners().is_empty());
}

#[tokio::test]
async fn an_idle_stop_fits_dockers_grace_even_when_github_is_unreachable() {
    let (sb, gh, mut env) = setup(|_| {}).await;
    // Production back-off: the retries alone would take longer than Docker's grace.
    env.insert("SUPERVISOR_GITHUB_BACKOFF_BASE".into(), "2s".into());
    let mut d = Daemon::run_listening(&env, 1, T).await;
    gh.fault(sim::github::Fault {
        body: None,
        method: Some("DELETE".into()),
        path: None,
        kind: sim::github::FaultKind::Reset,
        times: 0,
    });
    let t = std::time::Instant::now();
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "stopped in {:?}",
        t.elapsed()
    );
    assert_eq!(
        d.count_events("deletions_left", |_| true),
        1,
        "{}",
        d.log().join("\n")
    );
    let queued = std::fs::read_to_string(sb.state.join("deletions.json")).unwrap();
    assert!(queued.contains("\"id\""), "{queued}");
}

/// A deletion GitHub refuses for a while (5xx, then 429 with Retry-After) is not given up:
/// it is queued and retried, and a clean stop leaves no registration behind. One that is
/// still refused at the stop is persisted, and the next start finishes it.
#[tokio::test]
async fn refused_deletions_are_retried_until_gone_and_survive_a_restart() {
    use sim::github::{Fault, FaultKind};
    let sb = Sandbox::new();
    let gh = github(|_| {}).await;
    gh.enqueue(
        sim::github::JobSpec {
            duration_ms: 200,
            ..Default::default()
        },
        2,
    );
    let mut env = sb.env(&gh);
    env.insert("SUPERVISOR_GITHUB_MAX_RETRIES".into(), "1".into());
    env.insert("SUPERVISOR_SLOTS".into(), "2".into());
    let mut d = Daemon::start(&env, &["run"]).await;
    d.wait_nth("job_completed", 2, T).await;
    d.wait_listening(4, T).await;
    // Every DELETE fails for a while: 503s, then a rate limit with Retry-After.
    gh.fault(Fault {
        body: None,
        method: Some("DELETE".into()),
        path: None,
        kind: FaultKind::Status { status: 503 },
        times: 4,
    });
    gh.fault(Fault {
        body: None,
        method: Some("DELETE".into()),
        path: None,
        kind: FaultKind::RateLimit {
            status: 429,
            retry_after: Some(1),
            primary: false,
        },
        times: 1,
    });
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
    assert!(
        d.count_events("deletion_queued", |_| true) >= 1,
        "{}",
        d.log().join("\n")
    );
    assert!(gh.runners().is_empty(), "no ghost: {:?}", gh.runners());
    let queued = std::fs::read_to_string(sb.state.join("deletions.json")).unwrap();
    assert_eq!(queued.trim(), "[]");

    // Refused past the stop: persisted, and finished by the next start.
    let mut d = Daemon::start(&env, &["run"]).await;
    d.wait_listening(2, T).await;
    gh.fault(Fault {
        body: None,
        method: Some("DELETE".into()),
        path: None,
        kind: FaultKind::Status { status: 502 },
        times: 0,
    });
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
    assert_eq!(gh.runners().len(), 2, "both still registered");
    let queued = std::fs::read_to_string(sb.state.join("deletions.json")).unwrap();
    assert_eq!(queued.matches("\"id\"").count(), 2, "{queued}");
    gh.state(|s| s.faults.clear());
    // The ghost reaper would find them too: keep their names off this host's pattern so
    // only the queue can delete them.
    gh.state(|s| {
        for r in s.runners.values_mut() {
            r.name = format!("renamed-{}", r.id);
        }
    });
    let mut d = Daemon::start(&env, &["run"]).await;
    d.wait_events("registration_deleted", |e| e.is("from", "queue"), 2, T)
        .await;
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
    assert!(gh.runners().is_empty(), "no ghost: {:?}", gh.runners());
}
