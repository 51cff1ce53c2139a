//! Health under trouble that is not the runner's: a dependency killed, GitHub unreachable during a job (scenarios 18 and 19).
//! Each through the real binary; a scenario test is named after its number in
//! `ghostrunner.md` §3.

use std::time::Duration;

use nix::sys::signal::Signal;
use sim::github::{Fault, FaultKind, JobSpec};

use crate::support::{github, health, wait_health, Daemon, Sandbox};

const T: Duration = Duration::from_secs(60);

#[tokio::test]
async fn scenario_18_a_dependency_killed_mid_run_degrades_health_and_nothing_restarts() {
    let sb = Sandbox::new();
    let gh = github(|_| {}).await;
    let mongo = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = mongo.local_addr().unwrap().to_string();
    let mut env = sb.env(&gh);
    env.insert("SUPERVISOR_HEALTH_DEPENDENCIES".into(), addr.clone());
    env.insert("SUPERVISOR_NETWORK_DNS_INTERVAL".into(), "300ms".into());
    let mut d = Daemon::run_listening(&env, 1, T).await;
    drop(mongo);
    d.wait_event("dependency_down", T).await;
    let last = wait_health(
        &env,
        &format!("dependency {addr}: unreachable"),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(last.0, Some(0), "degraded, not unhealthy: {}", last.1);
    assert_eq!(
        d.count_events("listener_exited", |_| true),
        0,
        "runners stay up"
    );
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn scenario_19_github_unreachable_during_a_job_is_not_unhealthy_and_restarts_nothing() {
    let sb = Sandbox::new();
    let gh = github(|_| {}).await;
    gh.enqueue(
        JobSpec {
            duration_ms: 4000,
            ..Default::default()
        },
        1,
    );
    let mut env = sb.env(&gh);
    env.insert("SUPERVISOR_HEALTH_UNHEALTHY_AFTER".into(), "1s".into());
    env.insert("SUPERVISOR_GITHUB_MAX_RETRIES".into(), "0".into());
    let mut d = Daemon::start(&env, &["run"]).await;
    d.wait_events("runner_job_started", |e| e.is("job", "build"), 1, T)
        .await;
    for f in [
        FaultKind::Status { status: 503 },
        FaultKind::RateLimit {
            status: 429,
            retry_after: Some(600),
            primary: false,
        },
    ] {
        gh.fault(Fault {
            body: None,
            method: None,
            path: Some("/repos/".into()),
            kind: f,
            times: 0,
        });
    }
    // While the job runs, health stays healthy however long GitHub is gone.
    let mut seen_busy = 0;
    while gh.state(|s| s.completed.is_empty()) {
        let (code, out) = health(&env);
        if out.contains("0:busy") {
            seen_busy += 1;
            assert_eq!(code, Some(0), "{out}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(seen_busy >= 3, "health was checked during the job");
    d.wait_event("job_completed", T).await;
    assert_eq!(gh.state(|s| s.completed[0].result.clone()), "Succeeded");
    assert_eq!(d.count_events("watchdog_fire", |_| true), 0);
    assert_eq!(
        d.count_events("listener_exited", |e| e.is("reason", "watchdog")),
        0
    );
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}
