//! Registration and restarts: failures after a job, clean restarts, config.sh under a signal, strays holding a session, fixed-name session conflicts (scenarios 8, 12, 16, 17 and 23).
//! Each through the real binary; a scenario test is named after its number in
//! `ghostrunner.md` §3.

use std::time::Duration;

use nix::sys::signal::Signal;
use sim::github::{Fault, FaultKind, JobSpec};

use crate::support::{
    eventually, github, health, looks_like_jit_name, setup, wait_gone, Daemon, Sandbox,
};

const T: Duration = Duration::from_secs(60);

#[tokio::test]
async fn scenario_08_registration_failing_after_a_job_backs_off_and_turns_unhealthy() {
    let (_sb, gh, mut env) = setup(|_| {}).await;
    env.insert("SUPERVISOR_HEALTH_UNHEALTHY_AFTER".into(), "2s".into());
    env.insert("SUPERVISOR_GITHUB_MAX_RETRIES".into(), "1".into());
    let mut d = Daemon::run_listening(&env, 1, T).await;
    // Network trouble on the registration calls from the job on (the one made in
    // advance while it runs, and every one after it).
    gh.fault(Fault {
        body: None,
        method: None,
        path: Some("generate-jitconfig".into()),
        kind: FaultKind::Reset,
        times: 0,
    });
    gh.enqueue(
        JobSpec {
            duration_ms: 800,
            ..Default::default()
        },
        1,
    );
    d.wait_event("job_completed", T).await;
    d.wait_nth("registration_failed", 2, T).await;
    let mut last = (None, String::new());
    assert!(
        eventually(Duration::from_secs(10), || {
            last = health(&env);
            last.0 == Some(1)
        })
        .await,
        "{last:?}"
    );
    assert!(
        (last.1.contains("slot 0 backoff") || last.1.contains("slot 0 registering"))
            && !last.1.contains("0:listening"),
        "{}",
        last.1
    );
    // Back-offs grow with jitter; never a tight loop.
    let waits: Vec<u64> = d
        .events()
        .iter()
        .filter(|e| e.name == "registration_failed")
        .filter_map(|e| e.u64("wait_s"))
        .collect();
    assert!(waits.len() >= 2, "{waits:?}");
    assert!(waits.windows(2).all(|w| w[1] >= w[0]), "{waits:?}");
    gh.state(|s| s.faults.clear());
    d.wait_listening(2, T).await;
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn scenario_12_and_23_a_restart_starts_clean_like_a_new_container() {
    let (sb, gh, env) = setup(|_| {}).await;
    let mut d = Daemon::run_listening(&env, 1, T).await;
    let old = gh.runners()[0].name.clone();
    d.signal(Signal::SIGKILL);
    d.wait_exit(T).await;
    // GitHub notices the dead listener; stale state is left behind (a streak, a .runner).
    gh.state(|s| s.runners.values_mut().for_each(|r| r.force_offline = true));
    std::fs::write(
        sb.state.join("status.json"),
        r#"{"pid":1,"health":"unhealthy","reasons":["stale streak 4"]}"#,
    )
    .unwrap();
    std::fs::write(sb.slot_root(0).join(".runner"), "stale").unwrap();
    let mut d = Daemon::start(&env, &["run"]).await;
    let token = d
        .wait_events("preflight", |e| e.is("check", "token"), 1, T)
        .await;
    assert_eq!(token.level, "INFO", "{token:?}");
    d.wait_event("clock_offset", T).await;
    d.wait_event("ghost_reaped", T).await;
    d.wait_listening(1, T).await;
    assert!(
        gh.state(|s| s.deleted.contains(&old)),
        "the stale runner is deleted"
    );
    let (code, out) = health(&env);
    assert_eq!(
        code,
        Some(0),
        "the first check after a restart is clean: {out}"
    );
    assert!(!out.contains("stale"), "{out}");
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn scenario_16_sigterm_during_config_sh_is_handled_at_once() {
    let sb = Sandbox::new();
    let gh = github(|o| o.jit = false).await;
    gh.fault(Fault {
        body: None,
        method: None,
        path: Some("runner-registration".into()),
        kind: FaultKind::Latency { ms: 60_000 },
        times: 0,
    });
    let mut d = Daemon::start(&sb.env(&gh), &["run"]).await;
    // Wording under test: config.sh's own console line (reference A1), no event of ours.
    d.wait_events("runner_line", |e| e.has("message", "Authentication"), 1, T)
        .await;
    let t = std::time::Instant::now();
    d.signal(Signal::SIGTERM);
    let failed = d.wait_event("start_failed", T).await;
    assert!(failed.has("error", "interrupted by shutdown"), "{failed:?}");
    assert_eq!(d.wait_exit(T).await.0, Some(0));
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

#[tokio::test]
async fn scenario_17_a_stray_listener_holding_a_session_is_stopped_and_its_runner_deleted() {
    let sb = Sandbox::new();
    let gh = github(|_| {}).await;
    // A stray from an earlier life, started from the runner install, holds a session.
    let host = runner_supervisor::config::this_host();
    let name = format!("ci-{host}-0-stray1");
    let (_, blob) = gh.generate_jit(&name).await;
    let mut stray = tokio::process::Command::new(sb.install.join("bin/Runner.Listener"))
        .arg("run")
        .current_dir(&sb.install)
        .env("ACTIONS_RUNNER_INPUT_JITCONFIG", &blob)
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stray_pid = stray.id().unwrap() as i32;
    assert!(
        gh.wait_for(T, |s| s.runners.values().any(|r| r.session.is_some()))
            .await
    );
    let mut d = Daemon::start(&sb.env(&gh), &["run"]).await;
    d.wait_event("stray_stop", T).await;
    assert!(
        tokio::time::timeout(T, stray.wait()).await.is_ok(),
        "the stray stopped"
    );
    assert!(wait_gone(stray_pid, Duration::from_secs(5)).await);
    d.wait_listening(1, T).await;
    assert!(
        gh.state(|s| s.deleted.contains(&name)),
        "its runner is deleted: {:?}",
        gh.state(|s| s.deleted.clone())
    );
    let live = gh.runners();
    assert_eq!(live.len(), 1);
    assert!(looks_like_jit_name(&live[0].name, "ci", 0));
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn a_fixed_name_session_conflict_waits_session_conflict_wait_before_re_registering() {
    let sb = Sandbox::new();
    // No JIT: config.sh with the slot's fixed name, which a stale session still holds.
    let gh = github(|o| o.jit = false).await;
    gh.state(|s| s.conflicts_for_next = 1);
    let mut env = sb.env(&gh);
    env.insert("SESSION_CONFLICT_WAIT".into(), "2".into());
    let mut d = Daemon::start(&env, &["run"]).await;
    let exited = d
        .wait_events(
            "listener_exited",
            |e| e.is("reason", "session_conflict"),
            1,
            T,
        )
        .await;
    let listening = d.wait_listening(1, T).await;
    let waited = listening.at - exited.at;
    assert!(
        waited >= chrono::Duration::seconds(2),
        "re-registered after {waited}"
    );
    assert!(
        d.count_events("sigkill", |_| true) == 0,
        "SIGINT and the grace first, always"
    );
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}
