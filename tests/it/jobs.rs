//! The one-job-at-a-time loop: names, labels, slots, pre-registration, ghost reaping,
//! and the registration-token fallback.

use std::collections::BTreeSet;
use std::time::Duration;

use nix::sys::signal::Signal;
use runner_supervisor::config::this_host;
use sim::github::JobSpec;

use crate::support::{github, looks_like_jit_name, setup, Daemon, Sandbox};

const T: Duration = Duration::from_secs(60);

#[tokio::test]
async fn two_slots_take_jobs_one_at_a_time_and_leave_no_ghosts() {
    let sb = Sandbox::new();
    let gh = github(|_| {}).await;
    gh.enqueue(
        JobSpec {
            duration_ms: 300,
            ..Default::default()
        },
        6,
    );
    let mut env = sb.env(&gh);
    env.insert("SUPERVISOR_SLOTS".into(), "2".into());
    env.insert("SUPERVISOR_LABELS".into(), "self-hosted,linux,mongo".into());
    let mut d = Daemon::start(&env, &["run"]).await;
    d.wait_nth("job_completed", 6, T).await;
    d.signal(Signal::SIGTERM);
    let (code, summary) = d.wait_summary(T).await;
    assert_eq!(code, Some(0));
    assert_eq!(summary.jobs_completed, 6, "{summary:?}");

    let done = gh.state(|s| s.completed.clone());
    assert_eq!(done.len(), 6);
    assert!(done.iter().all(|j| j.result == "Succeeded"));
    let names: BTreeSet<&str> = done.iter().map(|j| j.runner.as_str()).collect();
    assert_eq!(names.len(), 6, "one runner per job: {names:?}");
    for slot in 0..2 {
        assert!(
            names.iter().any(|n| looks_like_jit_name(n, "ci", slot)),
            "slot {slot} took jobs: {names:?}"
        );
    }
    assert!(names
        .iter()
        .all(|n| looks_like_jit_name(n, "ci", 0) || looks_like_jit_name(n, "ci", 1)));
    // Every registration carried our labels.
    let bodies_ok = gh
        .calls()
        .iter()
        .filter(|c| c.path.ends_with("generate-jitconfig"))
        .count();
    assert!(bodies_ok >= 6);
    assert!(gh.runners().is_empty(), "no ghost left: {:?}", gh.runners());
}

#[tokio::test]
async fn labels_reach_the_registration() {
    let (_sb, gh, mut env) = setup(|_| {}).await;
    env.insert("SUPERVISOR_LABELS".into(), "self-hosted,linux,mongo".into());
    let mut d = Daemon::run_listening(&env, 1, T).await;
    let r = &gh.runners()[0];
    assert_eq!(r.labels, ["self-hosted", "linux", "mongo"]);
    assert!(r.status_is_online());
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn the_next_runner_is_registered_while_the_job_runs() {
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
    d.wait_event("job_completed", T).await;
    d.wait_listening(2, T).await;
    let calls = gh.calls();
    let gens: Vec<u64> = calls
        .iter()
        .filter(|c| c.path.ends_with("generate-jitconfig"))
        .map(|c| c.at_ms)
        .collect();
    let done = calls
        .iter()
        .find(|c| c.path.ends_with("/complete"))
        .unwrap()
        .at_ms;
    assert!(
        gens.len() >= 2 && gens[1] < done,
        "second registration at {gens:?}, job done at {done}"
    );
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
    assert!(gh.runners().is_empty());
}

#[tokio::test]
async fn only_this_hosts_offline_runners_are_reaped_at_start() {
    let sb = Sandbox::new();
    let gh = github(|_| {}).await;
    let host = this_host();
    let scope = "repos/octo/app";
    let ours_offline = gh.add_runner(scope, &format!("ci-{host}-0-abc123"), false);
    let ours_fixed = gh.add_runner(scope, &format!("ci-{host}-1"), false);
    let ours_online = gh.add_runner(scope, &format!("ci-{host}-0-zzz999"), true);
    let other_host = gh.add_runner(scope, &format!("ci-{host}-2-0-abc123"), false);
    let other_prefix = gh.add_runner(scope, &format!("web-{host}-0-abc123"), false);
    let stranger = gh.add_runner(scope, "laptop-of-someone", false);
    let mut d = Daemon::start(&sb.env(&gh), &["run"]).await;
    d.wait_listening(1, T).await;
    let ids: BTreeSet<u64> = gh.runners().iter().map(|r| r.id).collect();
    assert!(
        !ids.contains(&ours_offline) && !ids.contains(&ours_fixed),
        "ghosts reaped"
    );
    for keep in [ours_online, other_host, other_prefix, stranger] {
        assert!(ids.contains(&keep), "runner {keep} is not ours to delete");
    }
    d.signal(Signal::SIGTERM);
    let (code, summary) = d.wait_summary(T).await;
    assert_eq!(code, Some(0));
    assert_eq!(summary.ghosts_reaped, 2, "{summary:?}");
}

#[tokio::test]
async fn servers_without_jit_fall_back_to_config_sh() {
    let sb = Sandbox::new();
    let gh = github(|o| o.jit = false).await;
    gh.enqueue(
        JobSpec {
            duration_ms: 200,
            ..Default::default()
        },
        2,
    );
    let mut d = Daemon::start(&sb.env(&gh), &["run"]).await;
    d.wait_event("jit_fallback", T).await;
    d.wait_nth("job_completed", 2, T).await;
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
    let calls = gh.calls();
    let exchange: Vec<_> = calls
        .iter()
        .filter(|c| c.path.ends_with("/actions/runner-registration"))
        .collect();
    assert!(exchange.len() >= 2);
    assert!(
        exchange
            .iter()
            .all(|c| c.auth_scheme.as_deref() == Some("RemoteAuth")
                && c.path.starts_with("/api/v3/")),
        "{exchange:?}"
    );
    let host = this_host();
    let done = gh.state(|s| s.completed.clone());
    assert!(
        done.iter().all(|j| j.runner == format!("ci-{host}-0")),
        "fixed name: {done:?}"
    );
    // config.sh's output went to the log, and the registration token never did.
    // Wording under test: config.sh's own console line (reference A1), logged as the
    // runner printed it.
    assert!(d.count_events("runner_line", |e| e.has("message", "Settings Saved.")) >= 2);
    assert!(gh.runners().is_empty(), "{:?}", gh.runners());
}

#[tokio::test]
async fn scenario_16_sigterm_during_a_back_off_and_a_revoked_token_backs_off_minutes() {
    let sb = Sandbox::new();
    let gh = github(|_| {}).await;
    gh.state(|s| s.revoked = true);
    let mut d = Daemon::start(&sb.env(&gh), &["run"]).await;
    let line = d.wait_event("registration_failed", T).await;
    assert!(
        line.str("error")
            .is_some_and(|e| e.contains("unauthorized"))
            && line.u64("wait_s") == Some(300),
        "{line:?}"
    );
    // Scenario 16: a signal during a back-off is handled at once.
    let t = std::time::Instant::now();
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(10)).await.0, Some(0));
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(
        gh.calls()
            .iter()
            .filter(|c| c.path.ends_with("generate-jitconfig"))
            .count(),
        1,
        "one attempt, no tight loop"
    );
}

#[tokio::test]
async fn organisation_runners_use_the_org_endpoints() {
    let sb = Sandbox::new();
    let gh = github(|_| {}).await;
    gh.enqueue(
        JobSpec {
            duration_ms: 100,
            ..Default::default()
        },
        1,
    );
    let mut env = sb.env(&gh);
    env.remove("REPO_OWNER");
    env.remove("REPO_NAME");
    env.insert("SUPERVISOR_GITHUB_ORG".into(), "acme".into());
    let mut d = Daemon::start(&env, &["run"]).await;
    d.wait_event("job_completed", T).await;
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
    let rest: Vec<String> = gh
        .calls()
        .into_iter()
        .map(|c| c.path)
        .filter(|p| !p.starts_with("/_sim") && p != "/user")
        .collect();
    assert!(
        !rest.is_empty()
            && rest
                .iter()
                .all(|p| p.starts_with("/orgs/acme/actions/runners")),
        "{rest:?}"
    );
}

/// A second `supervisor run` on the same state directory exits 1 naming the holder, and
/// touches nothing: the first one's listener, registration and status stay as they were.
#[tokio::test]
async fn a_second_supervisor_on_the_same_state_directory_exits_1_and_touches_nothing() {
    let (sb, gh, env) = setup(|_| {}).await;
    let mut first = Daemon::start(&env, &["run"]).await;
    first.wait_listening(1, T).await;
    let listeners = crate::support::listeners(&sb, 1);
    assert_eq!(listeners.len(), 1);
    let status = std::fs::read(sb.state.join("status.json")).unwrap();
    let calls = gh.calls().len();

    let mut second = Daemon::start(&env, &["run"]).await;
    let (code, _) = second.wait_exit(T).await;
    assert_eq!(code, Some(1));
    // Wording under test: the fatal error must name the holder's pid for the user.
    let holder = format!("another supervisor (pid {})", first.pid);
    assert_eq!(
        second.count_events("fatal", |e| e.has("message", &holder)),
        1,
        "{}",
        second.log().join("\n")
    );
    assert_eq!(
        crate::support::listeners(&sb, 1),
        listeners,
        "its listener lives on"
    );
    assert_eq!(gh.calls().len(), calls, "no API call");
    let now = sb.status().expect("status.json");
    let before: runner_supervisor::status::StatusFile = serde_json::from_slice(&status).unwrap();
    assert_eq!(now.pid, before.pid, "its status is still the first one's");
    assert_eq!(now.pid, first.pid as u32);
    assert_eq!(gh.runners().len(), 1);

    first.signal(Signal::SIGTERM);
    assert_eq!(first.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn a_job_started_hook_runs_with_the_jobs_environment_and_its_failure_fails_the_job() {
    use std::os::unix::fs::PermissionsExt;
    let sb = Sandbox::new();
    let gh = github(|_| {}).await;
    let out = sb.dir.path().join("hook.out");
    let hook = sb.dir.path().join("job-started.sh");
    std::fs::write(
        &hook,
        format!(
            "echo \"$GITHUB_JOB $GITHUB_REPOSITORY $RUNNER_NAME $GITHUB_ACTIONS\" >> {}\n[ \"$GITHUB_JOB\" != bad ]\n",
            out.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut env = sb.env(&gh);
    env.insert(
        "SUPERVISOR_RUNNER_ENV".into(),
        format!("ACTIONS_RUNNER_HOOK_JOB_STARTED={}", hook.display()),
    );
    gh.enqueue(crate::support::job("good", 100), 1);
    gh.enqueue(crate::support::job("bad", 100), 1);
    let mut d = Daemon::start(&env, &["run"]).await;
    assert!(gh.wait_for(T, |s| s.completed.len() >= 2).await);
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
    let done = gh.state(|s| s.completed.clone());
    let result = |n: &str| done.iter().find(|j| j.name == n).unwrap().result.clone();
    assert_eq!(result("good"), "Succeeded");
    assert_eq!(
        result("bad"),
        "Failed",
        "a failing started hook fails the job"
    );
    let lines = std::fs::read_to_string(&out).unwrap();
    let good = done.iter().find(|j| j.name == "good").unwrap();
    assert!(
        lines.contains(&format!("good octo/app {} true", good.runner)),
        "{lines}"
    );
}

#[tokio::test]
async fn registrations_left_online_by_a_killed_run_are_deleted_at_the_next_start() {
    let sb = Sandbox::new();
    let gh = github(|_| {}).await;
    let host = this_host();
    // Online and named like ours, but not in our slot roots: not ours to delete.
    let not_left = gh.add_runner("repos/octo/app", &format!("ci-{host}-0-zzz999"), true);
    let mut env = sb.env(&gh);
    env.insert("SUPERVISOR_SLOTS".into(), "2".into());
    let mut d = Daemon::start(&env, &["run"]).await;
    let listening = |s: &sim::github::State| {
        s.runners
            .values()
            .filter(|r| r.id != not_left && r.status_is_online())
            .count()
    };
    assert!(gh.wait_for(T, |s| listening(s) == 2).await);
    let left: BTreeSet<u64> = gh
        .runners()
        .iter()
        .map(|r| r.id)
        .filter(|id| *id != not_left)
        .collect();
    // Killed with its listeners, as a watchdog kill or a power cut would: no cleanup, and
    // GitHub still shows both runners online.
    d.kill_with_listeners(&sb, 2, T).await;
    assert!(gh
        .runners()
        .iter()
        .filter(|r| left.contains(&r.id))
        .all(|r| r.status_is_online()));
    let mut d = Daemon::start(&env, &["run"]).await;
    // Two new listeners (the reaping comes before any registration).
    let new = |s: &sim::github::State| {
        s.runners
            .values()
            .filter(|r| r.id != not_left && !left.contains(&r.id) && r.status_is_online())
            .count()
    };
    assert!(gh.wait_for(T, |s| new(s) == 2).await);
    let ids: BTreeSet<u64> = gh.runners().iter().map(|r| r.id).collect();
    assert!(ids.is_disjoint(&left), "left: {left:?}, now: {ids:?}");
    assert!(ids.contains(&not_left));
    d.signal(Signal::SIGTERM);
    let (code, summary) = d.wait_summary(T).await;
    assert_eq!(code, Some(0));
    assert_eq!(summary.ghosts_reaped, 2, "{summary:?}");
    let ids: Vec<u64> = gh.runners().iter().map(|r| r.id).collect();
    assert_eq!(ids, [not_left], "nothing else left");
}
