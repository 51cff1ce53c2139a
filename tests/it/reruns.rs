//! Re-running exactly the jobs the host lost (issue 18 §3), through the binary against
//! the fake GitHub: a job whose runner vanished is concluded `failure` once its lock runs
//! out (GitHub's "The self-hosted runner lost communication with the server"), and a
//! re-run makes the run's next attempt, which the fake queues again.
//!
//! The supervisor checks a lost job's run 10 s after the loss, then with back-off; debug
//! builds take `SUPERVISOR_RERUN_CHECK_MS` so these tests check every 200 ms instead.

use std::collections::BTreeMap;
use std::time::Duration;

use nix::sys::signal::Signal;
use runner_supervisor::jobs::{JobRecord, Outcome, RerunState};
use sim::github::{FakeGithub, TokenKind};

use crate::job_records::{records, wait_records};
use crate::support::{job, setup, Daemon, Sandbox};

const T: Duration = Duration::from_secs(60);

/// A fake GitHub that gives a vanished runner's job up after 1 s, and the supervisor's
/// environment with fast checks.
async fn rerun_setup(
    f: impl FnOnce(&mut sim::github::Options),
) -> (Sandbox, FakeGithub, BTreeMap<String, String>) {
    let (sb, gh, mut env) = setup(|o| {
        o.job_lock_timeout = Duration::from_secs(1);
        f(o)
    })
    .await;
    env.insert("SUPERVISOR_RERUN_CHECK_MS".into(), "200".into());
    (sb, gh, env)
}

/// SIGKILL slot 0's listener once it runs job `name` (attempt `attempt`), identified by
/// its hook.
async fn kill_busy_listener(sb: &Sandbox, name: &str, attempt: u32) {
    sb.wait_status(T, |s| {
        s.slots[0]
            .job_of
            .as_ref()
            .is_some_and(|o| o.job == name && o.run_attempt == attempt)
    })
    .await;
    for pid in crate::support::listeners(sb, 1) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
    }
}

fn rerun_of(r: &JobRecord) -> RerunState {
    r.rerun
        .as_ref()
        .expect("a re-run was planned")
        .state
        .clone()
}

fn settled(r: &JobRecord) -> bool {
    r.rerun.as_ref().is_some_and(|x| !x.state.pending())
}

/// Milliseconds (fake's clock) of the calls whose path ends with `suffix`.
fn calls_to(gh: &FakeGithub, method: &str, suffix: &str) -> Vec<u64> {
    gh.calls()
        .iter()
        .filter(|c| c.method == method && c.path.ends_with(suffix))
        .map(|c| c.at_ms)
        .collect()
}

#[tokio::test]
async fn a_listener_killed_mid_job_is_rerun_exactly_once_after_its_run_completed() {
    let (sb, gh, mut env) = rerun_setup(|_| {}).await;
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    env.insert("SUPERVISOR_METRICS_LISTEN".into(), metrics.to_string());
    gh.enqueue(job("e2e", 4_000), 1);
    let mut d = Daemon::start(&env, &["run"]).await;
    kill_busy_listener(&sb, "e2e", 1).await;
    let lost = d.wait_event("job_lost", T).await;
    assert!(lost.is("cause", "killed"), "{lost:?}");
    let done = d
        .wait_events("job_rerun", |e| e.is("result", "accepted"), 1, T)
        .await;
    assert_eq!(done.u64("attempt"), Some(2), "{done:?}");
    // GitHub made attempt 2 of the same run, once; asked only after the run completed.
    let (run_id, first_job, completed_at) = gh.state(|s| {
        let j = s.actions_jobs.values().next().unwrap().clone();
        (j.run_id, j.id, j.completed_at)
    });
    assert_eq!(gh.state(|s| s.reruns.clone()), [(run_id, first_job, 2)]);
    let posts = calls_to(&gh, "POST", &format!("/actions/jobs/{first_job}/rerun"));
    assert_eq!(posts.len(), 1);
    let completed_at = completed_at.expect("the vanished runner's job was concluded");
    let concluded = gh.state(|s| s.actions_jobs[&first_job].conclusion.clone());
    assert_eq!(concluded.as_deref(), Some("failure"));
    let started = gh.started_at();
    let completed_ms = (completed_at - started).num_milliseconds().max(0) as u64;
    assert!(
        posts[0] >= completed_ms,
        "re-run asked for before the run completed"
    );
    println!(
        "run completed -> re-run requested: {} ms",
        posts[0] - completed_ms
    );
    // The one look-up, and the record says what was done.
    assert_eq!(calls_to(&gh, "GET", "/attempts/1/jobs").len(), 1);
    let recs = wait_records(&env, &["--lost"], |r| r.first().is_some_and(settled)).await;
    assert_eq!(rerun_of(&recs[0]), RerunState::Accepted { attempt: 2 });
    assert_eq!(recs[0].job_id, Some(first_job));
    assert!(
        matches!(&recs[0].outcome, Outcome::Lost { cause, action } if cause == "killed" && action == "re-run as attempt 2")
    );
    // Attempt 2 reaches a slot; lost again, it is not re-run again (max_reruns = 1).
    let hook = d
        .wait_events("job_hook", |e| e.is("run_attempt", "2"), 1, T)
        .await;
    assert_eq!(hook.u64("run_id"), Some(run_id));
    kill_busy_listener(&sb, "e2e", 2).await;
    d.wait_events("job_rerun", |e| e.is("result", "given_up"), 1, T)
        .await;
    assert_eq!(gh.state(|s| s.reruns.len()), 1, "re-run exactly once");
    let recs = wait_records(&env, &["--lost"], |r| r.len() == 2 && r.iter().all(settled)).await;
    assert!(
        matches!(rerun_of(&recs[1]), RerunState::GivenUp { why } if why.contains("max_reruns"))
    );
    let s = crate::support::status(&env);
    assert_eq!(s.counts.jobs_rerun_by_result.get("accepted"), Some(&1));
    assert_eq!(s.counts.jobs_rerun_by_result.get("given_up"), Some(&1));
    assert_eq!(s.counts.reruns_pending, 0);
    let text = crate::support::cli(&env, &["status"]).stdout;
    assert!(text.contains("reruns        1 accepted"), "{text}");
    let scrape = crate::metrics::http_get(metrics, "/metrics").2;
    for line in [
        "runner_supervisor_jobs_lost_total{cause=\"killed\"} 2",
        "runner_supervisor_jobs_rerun_total{result=\"accepted\"} 1",
        "runner_supervisor_jobs_rerun_total{result=\"given_up\"} 1",
        "runner_supervisor_jobs_rerun_pending 0",
    ] {
        assert!(scrape.lines().any(|l| l == line), "{line}:\n{scrape}");
    }
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn a_job_lost_with_a_killed_supervisor_is_rerun_after_the_next_start() {
    let (sb, gh, env) = rerun_setup(|_| {}).await;
    gh.enqueue(job("e2e", 6_000), 1);
    let mut d = Daemon::start(&env, &["run"]).await;
    sb.wait_status(T, |s| s.slots[0].job_of.is_some()).await;
    wait_records(&env, &[], |r| {
        r.first().is_some_and(|x| x.identity.is_some())
    })
    .await;
    d.kill_with_listeners(&sb, 1, T).await;
    let mut d = Daemon::start(&env, &["run"]).await;
    d.wait_event("jobs_lost_with_supervisor", T).await;
    let done = d
        .wait_events("job_rerun", |e| e.is("result", "accepted"), 1, T)
        .await;
    assert_eq!(done.u64("attempt"), Some(2));
    assert_eq!(gh.state(|s| s.reruns.len()), 1);
    let recs = records(&env, &["--lost"]).await;
    assert!(matches!(&recs[0].outcome, Outcome::Lost { cause, .. } if cause == "supervisor"));
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn a_job_that_fails_by_itself_is_never_rerun_nor_looked_up() {
    let (_sb, gh, env) = rerun_setup(|_| {}).await;
    let mut failing = job("unit", 300);
    failing.result = "Failed".into();
    gh.enqueue(failing, 1);
    let mut d = Daemon::start(&env, &["run"]).await;
    let done = d.wait_event("job_completed", T).await;
    assert!(done.is("result", "Failed"), "{done:?}");
    let recs = wait_records(&env, &[], |r| {
        r.first().is_some_and(|x| x.outcome != Outcome::Running)
    })
    .await;
    assert!(recs[0].rerun.is_none() && !recs[0].lost(), "{recs:?}");
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
    let actions = gh
        .calls()
        .iter()
        .filter(|c| c.path.contains("/actions/runs/") || c.path.contains("/actions/jobs/"))
        .count();
    assert_eq!(actions, 0, "no run checks, look-ups or re-runs");
}

#[tokio::test]
async fn a_lost_job_of_a_never_rerun_workflow_is_only_recorded() {
    let (sb, gh, mut env) = rerun_setup(|_| {}).await;
    env.insert("SUPERVISOR_JOBS_NEVER_RERUN".into(), "Deploy".into());
    let mut deploy = job("ship", 60_000);
    deploy.workflow = Some("Deploy".into());
    gh.enqueue(deploy, 1);
    let mut d = Daemon::start(&env, &["run"]).await;
    kill_busy_listener(&sb, "ship", 1).await;
    let e = d.wait_event("job_lost", T).await;
    assert!(e.is("cause", "killed"));
    // Looked up at once (its record gets its id), never re-run.
    d.wait_event("job_looked_up", T).await;
    let recs = wait_records(&env, &["--lost"], |r| {
        r.first().is_some_and(|x| x.job_id.is_some())
    })
    .await;
    assert!(
        matches!(rerun_of(&recs[0]), RerunState::Skipped { why } if why.contains("never_rerun"))
    );
    assert_eq!(
        crate::support::status(&env)
            .counts
            .jobs_rerun_by_result
            .get("skipped"),
        Some(&1)
    );
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
    assert!(calls_to(&gh, "POST", "/rerun").is_empty());
}

#[tokio::test]
async fn without_the_actions_permission_the_rerun_is_refused_with_the_fix_and_runners_go_on() {
    let (sb, gh, env) = rerun_setup(|o| {
        o.token_kind = TokenKind::FineGrained {
            administration: "write".into(),
            organization_self_hosted_runners: "none".into(),
            actions: "read".into(),
        }
    })
    .await;
    gh.enqueue(job("e2e", 60_000), 1);
    let mut d = Daemon::start(&env, &["run"]).await;
    kill_busy_listener(&sb, "e2e", 1).await;
    let refused = d
        .wait_events("job_rerun", |e| e.is("result", "refused"), 1, T)
        .await;
    assert_eq!(refused.u64("status"), Some(403), "{refused:?}");
    let recs = wait_records(&env, &["--lost"], |r| r.first().is_some_and(settled)).await;
    match rerun_of(&recs[0]) {
        RerunState::Refused {
            status,
            message,
            fix,
        } => {
            assert_eq!(status, 403);
            assert!(message.contains("actions=write"), "{message}");
            assert!(
                fix.contains("fine-grained") && fix.contains("repo scope"),
                "{fix}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(gh.state(|s| s.reruns.len()), 0);
    // The runners are untouched: the next job runs.
    gh.enqueue(job("unit", 100), 1);
    let done = d.wait_event("job_completed", T).await;
    assert!(done.is("result", "Succeeded"));
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn the_hourly_budget_holds_under_a_loop_of_losses() {
    let (sb, gh, mut env) = rerun_setup(|_| {}).await;
    env.insert("SUPERVISOR_JOBS_MAX_RERUNS_PER_HOUR".into(), "2".into());
    // Four jobs, each lost as soon as it runs; their re-runs queue behind them.
    for name in ["a", "b", "c", "d"] {
        gh.enqueue(job(name, 60_000), 1);
    }
    let mut d = Daemon::start(&env, &["run"]).await;
    for (n, name) in ["a", "b", "c", "d"].into_iter().enumerate() {
        kill_busy_listener(&sb, name, 1).await;
        d.wait_nth("job_lost", n + 1, T).await;
    }
    let recs = wait_records(&env, &["--lost"], |r| {
        r.len() >= 4 && r[..4].iter().all(settled)
    })
    .await;
    let accepted = recs[..4]
        .iter()
        .filter(|r| matches!(rerun_of(r), RerunState::Accepted { .. }))
        .count();
    let budget = recs[..4]
        .iter()
        .filter(|r| matches!(rerun_of(r), RerunState::GivenUp { why } if why.contains("max_reruns_per_hour")))
        .count();
    assert_eq!((accepted, budget), (2, 2), "{recs:#?}");
    assert_eq!(gh.state(|s| s.reruns.len()), 2);
    d.kill_with_listeners(&sb, 1, T).await;
}

#[tokio::test]
async fn doctor_checks_the_rerun_permission_and_a_token_without_it_only_warns() {
    // A classic token with repo: re-runs can be made.
    let (_sb, _gh, env) = rerun_setup(|_| {}).await;
    let d = crate::doctor::doctor(&env).await;
    assert_eq!(d.status("reruns"), "pass", "{:#}", d.json);
    // An organisation's runners with a classic token of admin:org only: the runners
    // work, re-runs would be refused; a warning naming the scope and where to add it.
    let (sb, gh, _) = rerun_setup(|o| {
        o.token_kind = TokenKind::Classic {
            scopes: vec!["admin:org".into()],
        }
    })
    .await;
    let mut env = sb.env(&gh);
    env.remove("REPO_OWNER");
    env.remove("REPO_NAME");
    env.insert("SUPERVISOR_GITHUB_ORG".into(), "acme".into());
    let d = crate::doctor::doctor(&env).await;
    assert_eq!(d.status("reruns"), "warn", "{:#}", d.json);
    assert_eq!(d.status("scopes"), "pass");
    assert!(
        d.reason("reruns").contains("repo scope"),
        "{}",
        d.reason("reruns")
    );
    assert!(d
        .fix("reruns")
        .contains("https://github.com/settings/tokens"));
    // Re-runs off: nothing to check.
    env.insert("SUPERVISOR_JOBS_RERUN_LOST".into(), "false".into());
    let d = crate::doctor::doctor(&env).await;
    assert!(
        d.reason("reruns").contains("not re-run"),
        "{}",
        d.reason("reruns")
    );
}

#[tokio::test]
async fn a_pending_rerun_survives_a_restart_of_the_supervisor() {
    // GitHub gives the vanished runner's job up only 10 s after the kill.
    let (sb, gh, env) = rerun_setup(|o| o.job_lock_timeout = Duration::from_secs(10)).await;
    gh.enqueue(job("e2e", 3_000), 1);
    let mut d = Daemon::start(&env, &["run"]).await;
    kill_busy_listener(&sb, "e2e", 1).await;
    d.wait_event("job_lost", T).await;
    // The re-run waits for the run; the supervisor dies meanwhile.
    let waiting = wait_records(&env, &["--lost"], |r| {
        r.first().is_some_and(|x| {
            x.rerun
                .as_ref()
                .is_some_and(|y| y.state == RerunState::Waiting)
        })
    })
    .await;
    assert!(gh.state(|s| s.reruns.is_empty()));
    // The host loses power: the queue is only what the records say.
    d.kill_with_listeners(&sb, 1, T).await;
    assert_eq!(
        records(&env, &["--lost"]).await[0]
            .rerun
            .as_ref()
            .unwrap()
            .state,
        RerunState::Waiting,
        "still queued in the records: {waiting:?}"
    );
    // The next start takes the queue up: re-run once the run completed.
    let mut d = Daemon::start(&env, &["run"]).await;
    let done = d
        .wait_events("job_rerun", |e| e.is("result", "accepted"), 1, T)
        .await;
    assert_eq!(done.u64("attempt"), Some(2));
    assert_eq!(gh.state(|s| s.reruns.len()), 1);
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}
