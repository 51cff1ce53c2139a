//! Scale-set mode through the binary (issue 19 §6), against the fake GitHub's scale-set
//! service: jobs end to end with no idle listener between them, `max_runners` under a
//! burst, a session conflict after SIGKILL waited out, a scale set deleted and recreated,
//! an expired queue token and an evicted session survived, a blackholed poll replaced,
//! a drain that leaves no ghost, and the GHES acquire flow.

use std::collections::BTreeMap;
use std::time::Duration;

use nix::sys::signal::Signal;
use runner_supervisor::status::{ScaleSetStatus, StatusFile};
use sim::github::scaleset::JobState;
use sim::github::{FakeGithub, JobSpec, Options};

use crate::support::{eventually, github, listeners, Daemon, Sandbox};

const T: Duration = Duration::from_secs(30);
pub const NAME: &str = "laptop-ci";

/// The fake with polls held `hold_ms` and sessions dead after `expiry_ms` without a poll.
pub async fn fake(hold_ms: u64, expiry_ms: u64, f: impl FnOnce(&mut Options)) -> FakeGithub {
    github(|o| {
        o.scaleset.poll_hold = Duration::from_millis(hold_ms);
        o.scaleset.session_expiry = Duration::from_millis(expiry_ms);
        f(o)
    })
    .await
}

/// Scale-set mode with `max` runners.
pub fn env(sb: &Sandbox, gh: &FakeGithub, max: usize) -> BTreeMap<String, String> {
    let mut e = sb.env(gh);
    for (k, v) in [
        ("SUPERVISOR_RUNNER_MODE", "scaleset"),
        ("SUPERVISOR_SCALESET_NAME", NAME),
        ("SUPERVISOR_SCALESET_MAX_RUNNERS", &max.to_string()),
        ("SUPERVISOR_SCALESET_POLL_TIMEOUT", "3s"),
        ("SUPERVISOR_SCALESET_SURPLUS_GRACE", "1s"),
    ] {
        e.insert(k.to_string(), v.to_string());
    }
    e
}

pub fn job(name: &str, ms: u64) -> JobSpec {
    JobSpec {
        name: name.into(),
        duration_ms: ms,
        labels: vec![NAME.into()],
        ..JobSpec::default()
    }
}

pub fn ss(s: &StatusFile) -> ScaleSetStatus {
    s.system.scaleset.clone().unwrap_or_default()
}

fn done(gh: &FakeGithub) -> usize {
    gh.scaleset_jobs()
        .iter()
        .filter(|j| j.state == JobState::Completed)
        .count()
}

async fn polling(sb: &Sandbox) -> StatusFile {
    sb.wait_status(T, |s| ss(s).session == "polling").await
}

#[tokio::test]
async fn jobs_run_end_to_end_with_no_idle_listener_between_them() {
    let sb = Sandbox::new();
    let gh = fake(500, 2000, |_| {}).await;
    let mut e = env(&sb, &gh, 2);
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    e.insert("SUPERVISOR_METRICS_LISTEN".into(), addr.to_string());
    let mut d = Daemon::start(&e, &["run"]).await;
    let s = polling(&sb).await;
    // Status, health and metrics show the session.
    let out = crate::support::Cli::new(&e, &["status"]).run_async().await;
    assert!(
        out.stdout.contains(&format!("jobs use runs-on: {NAME}"))
            && out.stdout.contains("session polling"),
        "{}",
        out.stdout
    );
    let out = crate::support::Cli::new(&e, &["health"]).run_async().await;
    assert_eq!(out.code, Some(0), "{}", out.stdout);
    let m = crate::metrics::http_get(addr, "/metrics").2;
    assert!(m.contains("scaleset_session{state=\"polling\"} 1"), "{m}");
    // Idle: no listener at all, every slot waiting, one session.
    assert!(listeners(&sb, 2).is_empty());
    assert!(
        s.slots.iter().all(|x| x.state.as_str() == "waiting"),
        "{s:#?}"
    );
    assert_eq!(gh.scale_sets().len(), 1);
    assert_eq!(gh.scale_sets()[0].name, NAME);
    for i in 0..3 {
        gh.enqueue_scaleset_job(job(&format!("e2e-{i}"), 300));
    }
    assert!(
        eventually(T, || done(&gh) == 3).await,
        "{:?}",
        gh.scaleset_jobs()
    );
    let s = sb
        .wait_status(T, |s| {
            let x = ss(s);
            x.runners_busy + x.runners_idle + x.runners_starting == 0
        })
        .await;
    assert!(
        eventually(T, || listeners(&sb, 2).is_empty()).await,
        "a listener outlived its job"
    );
    assert_eq!(ss(&s).runners_started, 3, "one runner per job");
    let st = ss(&s).statistics.expect("the service's statistics");
    assert_eq!(st.total_assigned_jobs, 0);
    let m = crate::metrics::http_get(addr, "/metrics").2;
    assert!(m.contains("scaleset_runners_started_total 3"), "{m}");
    assert!(ss(&s).last_message_id >= 100_000_001);
    // Every poll announced max_runners, never 0.
    let caps: Vec<_> = gh
        .calls()
        .into_iter()
        .filter_map(|c| c.max_capacity)
        .collect();
    assert!(
        !caps.is_empty() && caps.iter().all(|c| c == "2"),
        "{caps:?}"
    );
    d.signal(Signal::SIGTERM);
    let (code, sum) = d.wait_summary(T).await;
    assert_eq!(code, Some(0));
    assert_eq!(sum.jobs_completed, 3);
    // The session is deleted on exit; the scale set is kept.
    assert!(gh.scale_sets().len() == 1);
    assert!(gh.runners().is_empty(), "ghosts: {:?}", gh.runners());
}

#[tokio::test]
async fn max_runners_holds_under_a_burst_of_20_jobs() {
    let sb = Sandbox::new();
    let gh = fake(500, 2000, |_| {}).await;
    let mut d = Daemon::start(&env(&sb, &gh, 3), &["run"]).await;
    polling(&sb).await;
    for i in 0..20 {
        gh.enqueue_scaleset_job(job(&format!("burst-{i}"), 200));
    }
    let (mut procs, mut running) = (0, 0);
    let all = eventually(Duration::from_secs(90), || {
        // A listener's child between fork and exec (its worker) still shows the
        // listener's executable: count only listeners whose parent is none.
        let all = listeners(&sb, 3);
        let ppid = |p: &i32| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')
                        .and_then(|(_, r)| r.split_whitespace().nth(1)?.parse::<i32>().ok())
                })
        };
        let ls: Vec<i32> = all
            .iter()
            .filter(|p| !ppid(p).is_some_and(|pp| all.contains(&pp)))
            .copied()
            .collect();
        procs = procs.max(ls.len());
        let now: Vec<String> = gh
            .scaleset_jobs()
            .iter()
            .filter_map(|j| match &j.state {
                JobState::Running { runner_name, .. } => Some(runner_name.clone()),
                _ => None,
            })
            .collect();
        if now.len() > 3 {
            eprintln!("running: {now:?}");
        }
        running = running.max(now.len());
        done(&gh) == 20
    })
    .await;
    assert!(all, "{} of 20 done", done(&gh));
    assert!(procs <= 3, "{procs} listeners at once");
    assert!(running <= 3, "{running} jobs running at once");
    d.signal(Signal::SIGTERM);
    let (code, sum) = d.wait_summary(T).await;
    assert_eq!(code, Some(0));
    assert_eq!(sum.jobs_completed, 20);
    assert!(gh.runners().is_empty(), "ghosts: {:?}", gh.runners());
}

#[tokio::test]
async fn a_session_conflict_after_sigkill_is_waited_out() {
    let sb = Sandbox::new();
    // A dead session lives 4 s without polls (GitHub: about 50 s).
    let gh = fake(300, 4000, |_| {}).await;
    let e = env(&sb, &gh, 1);
    let mut d = Daemon::start(&e, &["run"]).await;
    polling(&sb).await;
    d.signal(Signal::SIGKILL);
    d.wait_exit(T).await;
    let d = Daemon::start(&e, &["run"]).await;
    let s = sb.wait_status(T, |s| ss(s).session == "conflict").await;
    assert!(ss(&s).detail.unwrap_or_default().contains("conflict"));
    let s = polling(&sb).await;
    assert!(ss(&s).conflicts_waited >= 1, "{:?}", ss(&s));
    // And jobs flow.
    gh.enqueue_scaleset_job(job("after-crash", 200));
    assert!(eventually(T, || done(&gh) == 1).await);
    drop(d);
}

#[tokio::test]
async fn a_deleted_scale_set_expired_tokens_and_an_evicted_session_are_survived() {
    let sb = Sandbox::new();
    let gh = fake(300, 2000, |_| {}).await;
    let mut d = Daemon::start(&env(&sb, &gh, 1), &["run"]).await;
    let s = polling(&sb).await;
    let pid = d.supervisor_pid();
    let first = ss(&s).id.unwrap();
    // The queue token expires: refreshed, no new session.
    gh.expire_queue_tokens(first);
    gh.enqueue_scaleset_job(job("one", 100));
    assert!(eventually(T, || done(&gh) == 1).await);
    // Evicted: a new session, jobs go on.
    let opened = ss(&sb.status().unwrap()).sessions_opened;
    gh.evict_sessions(first);
    gh.enqueue_scaleset_job(job("two", 100));
    assert!(eventually(T, || done(&gh) == 2).await);
    let s = sb.wait_status(T, |s| ss(s).sessions_opened > opened).await;
    // GitHub deletes the idle scale set (a laptop back from holiday): created again.
    assert!(gh.delete_scale_set(first));
    gh.enqueue_scaleset_job(job("three", 100));
    let s2 = sb
        .wait_status(T, |s| ss(s).id.is_some_and(|i| i != first))
        .await;
    assert_eq!(ss(&s2).sets_created, ss(&s).sets_created + 1);
    assert!(
        eventually(T, || done(&gh) == 3).await,
        "{:?}",
        gh.scaleset_jobs()
    );
    // GitHub refuses the admin token before its exp: minted again, jobs go on.
    gh.expire_admin_tokens();
    gh.enqueue_scaleset_job(job("four", 100));
    assert!(
        eventually(T, || done(&gh) == 4).await,
        "{:?}",
        gh.scaleset_jobs()
    );
    // All without a restart.
    assert_eq!(d.supervisor_pid(), pid);
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn a_blackholed_poll_is_replaced_within_its_bound() {
    let sb = Sandbox::new();
    let gh = fake(300, 20_000, |_| {}).await;
    let mut d = Daemon::start(&env(&sb, &gh, 1), &["run"]).await;
    polling(&sb).await;
    gh.scaleset_faults(sim::github::scaleset::PollFaults {
        blackhole_polls: 1,
        ..Default::default()
    });
    let t0 = std::time::Instant::now();
    let s = sb.wait_status(T, |s| ss(s).polls_timed_out >= 1).await;
    // poll_timeout is 3 s: detected within it plus a poll's hold.
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(ss(&s).polls_timed_out, 1);
    gh.enqueue_scaleset_job(job("after-blackhole", 100));
    assert!(eventually(T, || done(&gh) == 1).await);
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn stop_drains_a_running_runner_and_leaves_no_ghost() {
    let sb = Sandbox::new();
    let gh = fake(300, 2000, |_| {}).await;
    let mut d = Daemon::start(&env(&sb, &gh, 2), &["run"]).await;
    polling(&sb).await;
    gh.enqueue_scaleset_job(job("long", 3000));
    assert!(
        eventually(T, || gh
            .scaleset_jobs()
            .iter()
            .any(|j| matches!(j.state, JobState::Running { .. })))
        .await
    );
    d.signal(Signal::SIGTERM);
    let (code, sum) = d.wait_summary(T).await;
    assert_eq!(code, Some(0));
    assert_eq!(sum.jobs_completed, 1, "the job finished during the drain");
    assert_eq!(done(&gh), 1);
    assert!(gh.runners().is_empty(), "ghosts: {:?}", gh.runners());
    assert!(listeners(&sb, 2).is_empty());
    assert!(
        gh.calls()
            .iter()
            .any(|c| c.method == "DELETE" && c.path.contains("/sessions/")),
        "the session was deleted"
    );
    assert!(
        !gh.calls()
            .iter()
            .any(|c| c.method == "DELETE" && c.path.ends_with(&format!("runnerscalesets/{}", 1))),
        "the scale set is never deleted"
    );
}

#[tokio::test]
async fn ghes_jobs_are_acquired_then_run() {
    let sb = Sandbox::new();
    let gh = fake(300, 2000, |o| o.scaleset.ghes = true).await;
    let mut d = Daemon::start(&env(&sb, &gh, 2), &["run"]).await;
    polling(&sb).await;
    gh.enqueue_scaleset_job(job("ghes-1", 100));
    gh.enqueue_scaleset_job(job("ghes-2", 100));
    assert!(
        eventually(T, || done(&gh) == 2).await,
        "{:?}",
        gh.scaleset_jobs()
    );
    assert!(gh
        .calls()
        .iter()
        .any(|c| c.method == "POST" && c.path.ends_with("/acquirejobs")));
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}
