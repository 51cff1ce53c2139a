//! Scale-set mode, continued (issue 19 §1, §2, §3, §4): a GitHub App and an
//! organisation, a resume that rebuilds the session at once, a lapsed assignment that
//! leaks no runner, warm runners, and what `doctor` and `config` tell a user.

use std::time::Duration;

use nix::sys::signal::Signal;
use sim::github::app::AppOptions;
use sim::github::scaleset::JobState;
use sim::github::FakeGithub;

use crate::scaleset::{env, fake, job, ss, NAME};
use crate::support::{eventually, listeners, Cli, Daemon, Sandbox};

const T: Duration = Duration::from_secs(30);

fn done(gh: &FakeGithub) -> usize {
    gh.scaleset_jobs()
        .iter()
        .filter(|j| j.state == JobState::Completed)
        .count()
}

#[tokio::test]
async fn a_github_app_runs_scale_set_jobs() {
    let sb = Sandbox::new();
    let gh = fake(300, 2000, |o| {
        o.app = Some(AppOptions::new(crate::app::keypair().1.clone()))
    })
    .await;
    let mut e = env(&sb, &gh, 2);
    e.remove("GITHUB_PAT");
    e.insert("SUPERVISOR_GITHUB_APP_ID".into(), "4242".into());
    e.insert(
        "SUPERVISOR_GITHUB_APP_PRIVATE_KEY_FILE".into(),
        crate::app::key_file(&sb).display().to_string(),
    );
    let mut d = Daemon::start(&e, &["run"]).await;
    sb.wait_status(T, |s| ss(s).session == "polling").await;
    gh.enqueue_scaleset_job(job("app-job", 100));
    assert!(eventually(T, || done(&gh) == 1).await);
    // The registration token came with an installation token, not a PAT.
    assert!(gh.state(|s| s.installation_tokens_issued) >= 1);
    assert!(gh
        .calls()
        .iter()
        .any(|c| c.path.ends_with("/registration-token") && c.status == 201));
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn an_organisation_scale_set_runs_its_repositories_jobs() {
    let sb = Sandbox::new();
    let gh = fake(300, 2000, |_| {}).await;
    let mut e = env(&sb, &gh, 1);
    e.remove("REPO_OWNER");
    e.remove("REPO_NAME");
    e.insert("SUPERVISOR_GITHUB_ORG".into(), "acme".into());
    let mut d = Daemon::start(&e, &["run"]).await;
    sb.wait_status(T, |s| ss(s).session == "polling").await;
    assert_eq!(gh.scale_sets()[0].scope, "orgs/acme");
    gh.enqueue_scaleset_job_in("acme/web", job("org-job", 100));
    assert!(
        eventually(T, || done(&gh) == 1).await,
        "{:?}",
        gh.scaleset_jobs()
    );
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_rebuilds_the_session_at_once() {
    let sb = Sandbox::new();
    // Polls held 20 s: only the resume can explain a new session within 2 s.
    let gh = fake(20_000, 60_000, |_| {}).await;
    let e = env(&sb, &gh, 1);
    let extra: Vec<(&str, &str)> = e
        .iter()
        .filter(|(k, _)| k.starts_with("SUPERVISOR_SCALESET_") || *k == "SUPERVISOR_RUNNER_MODE")
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let sup = crate::resume::start(&sb, &gh, &extra);
    let s = sb.wait_status(T, |s| ss(s).session == "polling").await;
    let opened = ss(&s).sessions_opened;
    // The held poll's connection carries keepalive and TCP_USER_TIMEOUT (this process
    // runs the supervisor: its sockets are ours to read).
    let conns: Vec<_> = runner_supervisor::os::sockets::own_connections()
        .into_iter()
        .filter(|(peer, _)| *peer == gh.addr())
        .collect();
    assert!(!conns.is_empty(), "no connection to the fake");
    for (_, k) in &conns {
        assert!(k.enabled && k.user_timeout.is_some(), "{conns:?}");
    }
    let t = std::time::Instant::now();
    sup.clocks.suspend(Duration::from_secs(600));
    let s = sb.wait_status(T, |s| ss(s).sessions_opened > opened).await;
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    // The stale session was deleted first: no conflict to wait out.
    assert_eq!(ss(&s).conflicts_waited, 0);
    assert!(gh
        .calls()
        .iter()
        .any(|c| c.method == "DELETE" && c.path.contains("/sessions/")));
    gh.enqueue_scaleset_job(job("after-resume", 100));
    assert!(eventually(T, || done(&gh) == 1).await);
    sup.stop().await;
}

#[tokio::test]
async fn a_lapsed_assignment_leaks_no_runner() {
    let sb = Sandbox::new();
    // Runners take 1.5 s to start: the assignment lapses before one takes it.
    let gh = fake(300, 2000, |o| o.runner_startup_ms = 1500).await;
    let mut d = Daemon::start(&env(&sb, &gh, 2), &["run"]).await;
    sb.wait_status(T, |s| ss(s).session == "polling").await;
    let run = gh.enqueue_scaleset_job(job("lapsing", 200));
    // Our runner for it is starting when GitHub lets the assignment lapse and assigns
    // the job again under a new jobId.
    sb.wait_status(T, |s| ss(s).runners_started >= 1).await;
    let old = gh.lapse_assignment(Some(run)).expect("still assigned");
    assert!(
        eventually(T, || done(&gh) == 1
            || gh.scaleset_jobs().iter().any(|j| j.sim_id == run
                && j.job_id != old
                && j.state == JobState::Completed))
        .await
    );
    // One runner served it; nothing is left listening once the grace is over.
    let s = sb
        .wait_status(T, |s| {
            let x = ss(s);
            x.runners_idle + x.runners_busy + x.runners_starting == 0
        })
        .await;
    assert!(ss(&s).runners_started <= 2, "{:?}", ss(&s));
    assert!(eventually(T, || listeners(&sb, 2).is_empty()).await);
    assert!(
        eventually(T, || gh.runners().is_empty()).await,
        "{:?}",
        gh.runners()
    );
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn min_runners_keeps_warm_listeners_ready() {
    let sb = Sandbox::new();
    let gh = fake(300, 2000, |_| {}).await;
    let mut e = env(&sb, &gh, 2);
    e.insert("SUPERVISOR_SCALESET_MIN_RUNNERS".into(), "1".into());
    let mut d = Daemon::start(&e, &["run"]).await;
    d.wait_listening(1, T).await;
    let s = sb.wait_status(T, |s| ss(s).runners_idle == 1).await;
    assert_eq!(ss(&s).min_runners, 1);
    assert_eq!(listeners(&sb, 2).len(), 1);
    gh.enqueue_scaleset_job(job("warm", 200));
    assert!(eventually(T, || done(&gh) == 1).await);
    // Another is warmed once the first took the job.
    sb.wait_status(T, |s| ss(s).runners_idle == 1 && ss(s).runners_started >= 2)
        .await;
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
    assert!(gh.runners().is_empty(), "ghosts: {:?}", gh.runners());
}

#[tokio::test]
async fn doctor_and_config_say_the_runs_on_line_and_bad_values_exit_64() {
    let sb = Sandbox::new();
    let gh = fake(300, 2000, |_| {}).await;
    let e = env(&sb, &gh, 2);
    let out = Cli::new(&e, &["doctor"]).run_async().await;
    let line = out
        .stdout
        .lines()
        .find(|l| l.contains("scale set"))
        .unwrap_or_else(|| panic!("{}", out.stdout))
        .to_string();
    assert!(line.contains(&format!("runs-on: {NAME}")), "{line}");
    assert!(line.contains("does not exist yet"), "{line}");
    assert!(
        line.contains("[self-hosted, Linux, X64] never matches"),
        "{line}"
    );
    assert!(gh.scale_sets().is_empty(), "doctor creates nothing");
    let out = Cli::new(&e, &["config"]).run_async().await;
    assert!(
        out.stdout.contains(&format!("runs-on: {NAME}")),
        "{}",
        out.stdout
    );
    for (k, v) in [
        ("SUPERVISOR_RUNNER_MODE", "pool"),
        ("SUPERVISOR_SCALESET_MAX_RUNNERS", "0"),
        ("SUPERVISOR_SCALESET_MIN_RUNNERS", "3"),
        ("SUPERVISOR_SCALESET_NAME", "two words"),
        ("SUPERVISOR_SCALESET_POLL_TIMEOUT", "soon"),
    ] {
        let mut bad = e.clone();
        bad.insert(k.into(), v.into());
        let out = Cli::new(&bad, &["run"]).run_async().await;
        assert_eq!(out.code, Some(64), "{k}={v}: {}", out.stderr);
        let key = k
            .trim_start_matches("SUPERVISOR_")
            .to_lowercase()
            .replacen('_', ".", 1);
        assert!(out.stderr.contains(&key), "{k}: {}", out.stderr);
    }
}

#[tokio::test]
async fn a_wall_clock_step_like_a_wsl2_resume_rebuilds_the_session_through_the_binary() {
    let sb = Sandbox::new();
    // Polls held 20 s: only the step can explain a new session soon after it.
    let gh = fake(20_000, 60_000, |_| {}).await;
    let shift = sb.dir.path().join("faketime");
    std::fs::write(&shift, "+0\n").unwrap();
    let mut e = env(&sb, &gh, 1);
    crate::support::apply(&mut e, &crate::support::faketime_file_env(&shift));
    let mut d = Daemon::start(&e, &["run"]).await;
    let s = sb.wait_status(T, |s| ss(s).session == "polling").await;
    let opened = ss(&s).sessions_opened;
    std::fs::write(&shift, "+2m\n").unwrap();
    d.wait_event("scaleset_rebuild", T).await;
    let s = sb.wait_status(T, |s| ss(s).sessions_opened > opened).await;
    assert_eq!(
        ss(&s).conflicts_waited,
        0,
        "the stale session was deleted first"
    );
    gh.enqueue_scaleset_job(job("after-step", 100));
    assert!(eventually(T, || done(&gh) == 1).await);
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}
