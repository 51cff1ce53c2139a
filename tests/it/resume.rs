//! Suspend and resume, in process with injected clocks (the machine's clock is never
//! touched): idle listeners are recycled, busy ones keep their job (scenario 4 and §4).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use runner_supervisor::config::{Config, Purpose};
use runner_supervisor::github::GithubClient;
use runner_supervisor::os::clocks::ShiftedClocks;
use runner_supervisor::os::shutdown::Mode;
use runner_supervisor::supervisor::{self, Deps, Summary};
use sim::github::{FakeGithub, JobSpec};
use tokio::sync::watch;

use nix::sys::signal::Signal;

use crate::support::{apply, faketime_file_env, github, Daemon, Sandbox};

const T: Duration = Duration::from_secs(30);

pub struct InProcess {
    pub mode: Arc<watch::Sender<Mode>>,
    pub task: tokio::task::JoinHandle<anyhow::Result<Summary>>,
    pub clocks: Arc<ShiftedClocks>,
}

/// Run `supervisor::run` in this process against `gh`, with clocks the test can shift.
pub fn start(sb: &Sandbox, gh: &FakeGithub, extra: &[(&str, &str)]) -> InProcess {
    let mut env: BTreeMap<String, String> = sb.env(gh);
    for (k, v) in extra {
        env.insert(k.to_string(), v.to_string());
    }
    env.remove("SUPERVISOR_LOG");
    let cfg = Arc::new(Config::resolve(&env, &Default::default(), Purpose::Run).expect("config"));
    let gh = GithubClient::new(&cfg, cfg.github.token.clone().unwrap()).unwrap();
    let clocks = Arc::new(ShiftedClocks::default());
    let deps = Deps {
        cfg,
        gh,
        hostname: "vm".into(),
        outer_env: Box::new(|k| std::env::var(k).ok()),
        clocks: clocks.clone(),
        token: None,
        // The listeners' job hooks call the real binary, as under `supervisor run`.
        hook_exe: Some(env!("CARGO_BIN_EXE_supervisor").into()),
    };
    let mode = Arc::new(watch::channel(Mode::Run).0);
    let task = tokio::spawn(supervisor::run(deps, mode.clone()));
    InProcess { mode, task, clocks }
}

impl InProcess {
    pub async fn stop(self) -> Summary {
        let _ = self.mode.send(Mode::Drain);
        tokio::time::timeout(T, self.task)
            .await
            .expect("stops")
            .unwrap()
            .unwrap()
    }
}

fn listening(gh: &FakeGithub) -> Vec<String> {
    gh.runners()
        .into_iter()
        .filter(|r| r.status_is_online())
        .map(|r| r.name)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_recycles_idle_listeners_and_keeps_busy_ones() {
    let sb = Sandbox::new();
    let gh = github(|_| {}).await;
    let sup = start(&sb, &gh, &[("SUPERVISOR_SLOTS", "2")]);
    assert!(
        gh.wait_for(T, |s| s
            .runners
            .values()
            .filter(|r| r.session.is_some())
            .count()
            == 2)
            .await
    );
    gh.enqueue(
        JobSpec {
            name: "long".into(),
            duration_ms: 3000,
            ..Default::default()
        },
        1,
    );
    assert!(gh.wait_for(T, |s| s.running.len() == 1).await);
    // The job is under way on the runner (it renews its lock after printing
    // `Running job`), not just handed out: the resume is seen at once now.
    assert!(
        gh.wait_for(T, |s| s.calls.iter().any(|c| c.path.ends_with("/renew")))
            .await
    );
    let busy = gh.state(|s| {
        s.running
            .values()
            .next()
            .map(|(rid, _)| s.runners[rid].name.clone())
            .unwrap()
    });
    let idle: Vec<String> = listening(&gh).into_iter().filter(|n| *n != busy).collect();
    let t = std::time::Instant::now();
    sup.clocks.suspend(Duration::from_secs(90));
    // The idle listener is replaced within a tick plus a restart.
    assert!(
        gh.wait_for(T, |s| s.deleted.contains(&idle[0])
            && s.runners.values().filter(|r| r.session.is_some()).count() == 2)
            .await
    );
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "recycled in {:?}",
        t.elapsed()
    );
    // The busy one finishes its job on the same runner.
    assert!(gh.wait_for(T, |s| s.completed.len() == 1).await);
    assert_eq!(
        gh.state(|s| (s.completed[0].runner.clone(), s.completed[0].result.clone())),
        (busy, "Succeeded".to_string())
    );
    let summary = sup.stop().await;
    assert_eq!(summary.exits.get("recycled"), Some(&1), "{summary:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspend_longer_than_the_job_lease_replaces_the_busy_listener_at_once_and_loses_its_job()
{
    let sb = Sandbox::new();
    // The fake gives a vanished runner's job up after 1 s (GitHub: about 10 minutes).
    let gh = github(|o| o.job_lock_timeout = Duration::from_secs(1)).await;
    let sup = start(&sb, &gh, &[]);
    assert!(
        gh.wait_for(T, |s| s.runners.values().any(|r| r.session.is_some()))
            .await
    );
    gh.enqueue(
        JobSpec {
            name: "long".into(),
            duration_ms: 6_000,
            ..Default::default()
        },
        1,
    );
    assert!(
        gh.wait_for(T, |s| s.calls.iter().any(|c| c.path.ends_with("/renew")))
            .await
    );
    // Its hook said who it is (a re-run needs that).
    sb.wait_status(T, |s| s.slots[0].job_of.is_some()).await;
    // Its hook said who it is (a re-run needs that).
    sb.wait_status(T, |s| s.slots[0].job_of.is_some()).await;
    let busy = gh.state(|s| {
        s.running
            .values()
            .next()
            .map(|(rid, _)| s.runners[rid].name.clone())
            .unwrap()
    });
    // 20 minutes asleep, past the default lease of 15: GitHub has given the job up.
    sup.clocks.suspend(Duration::from_secs(20 * 60));
    let s = sb
        .wait_status(T, |s| {
            s.counts.jobs_lost_by_cause.get("suspend") == Some(&1)
        })
        .await;
    assert_eq!(s.counts.jobs_lost, 1);
    // Replaced at once by a fresh listener; the old runner is gone.
    assert!(
        gh.wait_for(T, |s| s.deleted.contains(&busy)
            && s.runners
                .values()
                .any(|r| r.session.is_some() && r.name != busy))
            .await
    );
    // Re-run once its run completed (the first check is 10 s after the loss), and
    // attempt 2 reaches the fresh listener.
    let s = sb
        .wait_status(Duration::from_secs(60), |s| {
            s.slots[0]
                .job_of
                .as_ref()
                .is_some_and(|o| o.run_attempt == 2)
        })
        .await;
    assert_eq!(s.counts.jobs_rerun_by_result.get("accepted"), Some(&1));
    assert_eq!(gh.state(|s| s.reruns.len()), 1);
    let summary = sup.stop().await;
    assert_eq!(summary.exits.get("recycled"), Some(&1), "{summary:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_04_repeated_sleep_wake_each_jump_handled_once_without_tripping_the_breaker() {
    let sb = Sandbox::new();
    let gh = github(|_| {}).await;
    let sup = start(&sb, &gh, &[("WATCHDOG_MAX_FIRES", "1")]);
    for i in 0..5u64 {
        assert!(
            gh.wait_for(T, |s| s.runners.values().any(|r| r.session.is_some()))
                .await
        );
        let before = listening(&gh);
        if i % 2 == 0 {
            sup.clocks.suspend(Duration::from_secs(90));
        } else {
            // A WSL2-style resume: the wall clock jumps while the monotonic clocks did not count it.
            sup.clocks.step(if i == 1 { 90_000 } else { -90_000 });
        }
        assert!(
            gh.wait_for(T, |s| s.deleted.len() as u64 == i + 1
                && s.runners
                    .values()
                    .any(|r| r.session.is_some() && !before.contains(&r.name)))
                .await,
            "jump {i}"
        );
    }
    let summary = sup.stop().await;
    assert_eq!(summary.exits.get("recycled"), Some(&5), "{summary:?}");
    assert_eq!(
        summary.exits.get("watchdog"),
        None,
        "a resume is not a watchdog fire"
    );
    let breaker = std::fs::read_to_string(sb.state.join("breaker.json")).unwrap_or_default();
    assert!(
        !breaker.contains("open_until\": {"),
        "the breaker stays closed: {breaker}"
    );
}

/// The real binary's waits.
const T_BINARY: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_wall_clock_jump_like_a_wsl2_resume_recycles_the_idle_listener_with_one_log_line() {
    let sb = Sandbox::new();
    let gh = github(|_| {}).await;
    let shift = sb.dir.path().join("faketime");
    std::fs::write(&shift, "+0\n").unwrap();
    let mut env = sb.env(&gh);
    apply(&mut env, &faketime_file_env(&shift));
    let mut d = Daemon::run_listening(&env, 1, T_BINARY).await;
    let first = gh.runners()[0].name.clone();
    std::fs::write(&shift, "+2m\n").unwrap();
    let step = d.wait_event("clock_step", T_BINARY).await;
    assert!(
        step.has("step_s", "+120") && step.is("resume", "true"),
        "{step:?}"
    );
    d.wait_listening(2, T_BINARY).await;
    assert!(gh.state(|s| s.deleted.contains(&first)));
    assert_eq!(
        d.count_events("clock_step", |_| true),
        1,
        "one event per jump"
    );
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T_BINARY).await.0, Some(0));
}
