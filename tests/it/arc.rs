//! The same image as an actions-runner-controller runner pod (issue 19 §5): `supervisor
//! run` with `ACTIONS_RUNNER_INPUT_JITCONFIG` and no token runs that one runner (watchdog,
//! keepalive, job records), registers, deletes and calls nothing at GitHub, and exits the
//! way ARC reads a `runner` container (0 job done, 7 deprecated, non-zero otherwise),
//! within the pod's 30 s grace on SIGTERM. The JIT config comes from the fake GitHub's
//! generate-jitconfig, as ARC's would from the scale-set service. The image run as ARC's
//! EphemeralRunner pod runs it is `compose::arc_pod`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use sim::github::FakeGithub;
use sim::protocol::Script;

use crate::support::*;

const T: Duration = Duration::from_secs(60);
/// Kubernetes' default grace, from SIGTERM to SIGKILL (ARC sets none of its own).
pub(crate) const POD_GRACE: Duration = Duration::from_secs(30);
const ARC_USER_AGENT: &str = "actions-runner-controller/0.13.1";

/// The environment ARC gives the `runner` container (scaleset-protocol.md §7), on top of
/// the sandbox's directories: the JIT config and ARC's variables, and no token or scope.
fn pod_env(env: &mut BTreeMap<String, String>, jit: &str) {
    for k in ["GITHUB_PAT", "REPO_OWNER", "REPO_NAME"] {
        env.remove(k);
    }
    env.insert("ACTIONS_RUNNER_INPUT_JITCONFIG".into(), jit.into());
    env.insert(
        "GITHUB_ACTIONS_RUNNER_EXTRA_USER_AGENT".into(),
        ARC_USER_AGENT.into(),
    );
    env.insert(
        "ACTIONS_RUNNER_RETURN_VERSION_DEPRECATED_EXIT_CODE".into(),
        "1".into(),
    );
}

/// A pod's supervisor against `gh`, for the JIT runner `name`: the sandbox, the daemon
/// and the JIT config.
async fn pod(gh: &FakeGithub, name: &str, extra: &[(&str, &str)]) -> (Sandbox, Daemon, String) {
    let sb = Sandbox::new();
    let (_, jit) = gh.generate_jit(name).await;
    let mut env = sb.env(gh);
    pod_env(&mut env, &jit);
    for (k, v) in extra {
        env.insert(k.to_string(), v.to_string());
    }
    let d = Daemon::start(&env, &["run"]).await;
    (sb, d, jit)
}

/// Requests the supervisor itself made to the fake (its User-Agent), if any.
pub(crate) fn supervisor_calls(gh: &FakeGithub) -> Vec<String> {
    gh.calls()
        .iter()
        .filter(|c| {
            c.user_agent
                .as_deref()
                .is_some_and(|u| u.starts_with("runner-supervisor/"))
        })
        .map(|c| format!("{} {}", c.method, c.path))
        .collect()
}

fn proc_file(pid: i32, what: &str) -> String {
    String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/{what}")).unwrap_or_default())
        .replace('\0', "\n")
}

#[tokio::test]
async fn an_arc_pod_runs_its_one_jit_runner_and_exits_0_after_its_job() {
    let started = Instant::now();
    let gh = github(|_| {}).await;
    let (sb, mut d, jit) = pod(&gh, "arc-runner-abc12", &[]).await;
    d.wait_listening(1, T).await;
    // Named from its JIT config, as ARC named the pod.
    let arc = d.wait_event("arc_runner", T).await;
    assert!(arc.is("runner", "arc-runner-abc12"), "{arc:?}");
    // The connection watch has the listener: keepalive injected into its connections.
    let ka = d.wait_event("keepalive_set", T).await;
    eprintln!("keepalive: {ka:?}");
    // The JIT config is in its listener's environment only (the runner's own credential,
    // as ARC hands it to the stock runner), never on an argv.
    let listener = listeners(&sb, 1)[0];
    let environ = proc_file(listener, "environ");
    assert!(environ.contains(&format!("ACTIONS_RUNNER_INPUT_JITCONFIG={jit}")));
    assert!(
        environ.contains(&format!(
            "GITHUB_ACTIONS_RUNNER_EXTRA_USER_AGENT={ARC_USER_AGENT}"
        )),
        "ARC's variables reach the runner"
    );
    for pid in [listener, d.pid] {
        assert!(!proc_file(pid, "cmdline").contains(&jit), "argv of {pid}");
    }
    sb.wait_status(T, |_| true).await;
    let status = std::fs::read_to_string(sb.state.join("status.json")).unwrap();
    assert!(!status.contains(&jit));

    gh.enqueue(job("build", 300), 1);
    let (code, summary) = d.wait_summary(T).await;
    assert_eq!(code, Some(0), "job done: 0; log:\n{}", d.log().join("\n"));
    assert_eq!(summary.jobs_completed, 1);
    assert_eq!((summary.registrations, summary.deregistrations), (0, 0));
    let done = d.wait_event("arc_exit", T).await;
    assert!(
        done.is("reason", "job_done") && done.u64("code") == Some(0),
        "{done:?}"
    );
    // The job ran on that runner; the service removed it after its job, not us.
    let (completed, deleted) = gh.state(|s| (s.completed.clone(), s.deleted.clone()));
    assert_eq!(completed.len(), 1);
    assert_eq!(completed[0].runner, "arc-runner-abc12");
    assert_eq!(deleted, vec!["arc-runner-abc12".to_string()]);
    // No GitHub API call at all: no registration, no deletion, no ghost reaping, no token
    // check, no downloads.
    assert_eq!(supervisor_calls(&gh), Vec::<String>::new());
    assert!(
        d.log().iter().all(|l| !l.contains(&jit)),
        "the JIT config is never logged"
    );
    // The job's record is kept, as in any slot.
    let records = sb.state.join("jobs.redb");
    assert!(records.exists());
    eprintln!(
        "figures: job done to exit 0 in {:?} in all",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_arc_pod_whose_runner_is_deprecated_exits_7() {
    let gh = github(|_| {}).await;
    gh.script(Script::VersionDeprecated);
    let (_sb, mut d, _) = pod(&gh, "arc-runner-old01", &[]).await;
    let (code, _) = d.wait_exit(T).await;
    assert_eq!(code, Some(7), "log:\n{}", d.log().join("\n"));
    let e = d.wait_event("arc_exit", T).await;
    assert!(e.is("reason", "version_deprecated"), "{e:?}");
    // Deprecated is final: not started again, and nothing asked of GitHub.
    assert_eq!(d.count_events("arc_relaunch", |_| true), 0);
    assert_eq!(supervisor_calls(&gh), Vec::<String>::new());
}

#[tokio::test]
async fn a_listener_the_watchdog_replaces_before_any_job_is_started_again_with_the_same_jit_config()
{
    let gh = github(|_| {}).await;
    // The first listener loses its connection for good while idle; the next is normal.
    gh.script(Script::ConnectionLoss {
        after_ms: 100,
        recover_after_ms: None,
        give_up: false,
        during_job: false,
    });
    let (_sb, mut d, _) = pod(
        &gh,
        "arc-runner-wd001",
        &[
            ("SUPERVISOR_WATCHDOG_GRACE", "1s"),
            ("SUPERVISOR_RUNNER_FAILURE_BACKOFF", "100ms"),
        ],
    )
    .await;
    let fired = d.wait_event("watchdog_fire", T).await;
    assert!(fired.is("cause", "network"), "{fired:?}");
    d.wait_event("arc_relaunch", T).await;
    d.wait_listening(2, T).await;
    gh.enqueue(job("after-the-fire", 200), 1);
    let (code, summary) = d.wait_summary(T).await;
    assert_eq!(code, Some(0), "log:\n{}", d.log().join("\n"));
    assert_eq!(summary.jobs_completed, 1);
    // Both listeners were the same runner; nothing was registered or deleted by us.
    assert_eq!(
        d.count_events("listener_exited", |e| e.is("runner", "arc-runner-wd001")),
        2
    );
    assert_eq!(supervisor_calls(&gh), Vec::<String>::new());
}

#[tokio::test]
async fn sigterm_ends_a_busy_pod_at_once_with_its_job_cancelled() {
    let gh = github(|_| {}).await;
    let (_sb, mut d, _) = pod(&gh, "arc-runner-busy1", &[]).await;
    d.wait_listening(1, T).await;
    gh.enqueue(job("long", 600_000), 1);
    d.wait_event("runner_job_started", T).await;
    let t = Instant::now();
    d.signal(Signal::SIGTERM);
    let (code, summary) = d.wait_summary(POD_GRACE).await;
    let took = t.elapsed();
    eprintln!("figures: SIGTERM to exit, busy runner: {took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    // The job is lost (cancelled by the runner on SIGINT): not 0, so ARC removes the runner.
    assert_eq!(code, Some(1), "log:\n{}", d.log().join("\n"));
    assert_eq!(summary.jobs_lost, 1);
    assert_eq!(supervisor_calls(&gh), Vec::<String>::new());
}

#[tokio::test]
async fn sigterm_ends_the_pod_within_its_grace_even_when_the_runner_ignores_sigint() {
    let gh = github(|_| {}).await;
    gh.script(Script::Hang { after_ms: 0 });
    // Configured longer than the pod allows: capped at 20 s.
    let (sb, mut d, _) = pod(
        &gh,
        "arc-runner-hung1",
        &[("SUPERVISOR_RUNNER_STOP_GRACE", "60s")],
    )
    .await;
    d.wait_listening(1, T).await;
    let listener = listeners(&sb, 1)[0];
    let t = Instant::now();
    d.signal(Signal::SIGTERM);
    let (code, _) = d.wait_exit(POD_GRACE).await;
    let took = t.elapsed();
    eprintln!("figures: SIGTERM to exit, runner ignoring SIGINT: {took:?}");
    assert!(took < POD_GRACE, "{took:?}");
    assert!(
        took >= Duration::from_secs(19),
        "the grace was given: {took:?}"
    );
    let killed = d.wait_event("sigkill", T).await;
    assert_eq!(killed.u64("grace_s"), Some(20), "{killed:?}");
    assert!(wait_gone(listener, T).await);
    assert_ne!(code, Some(0), "SIGKILLed: not a clean stop");
    assert_eq!(code, Some(1));
}

#[tokio::test]
async fn sigterm_stops_an_idle_pod_cleanly_with_0() {
    let gh = github(|_| {}).await;
    let (_sb, mut d, _) = pod(&gh, "arc-runner-idle1", &[]).await;
    d.wait_listening(1, T).await;
    let t = Instant::now();
    d.signal(Signal::SIGTERM);
    let (code, _) = d.wait_exit(POD_GRACE).await;
    eprintln!("figures: SIGTERM to exit, idle runner: {:?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(10));
    assert_eq!(code, Some(0), "log:\n{}", d.log().join("\n"));
    assert_eq!(supervisor_calls(&gh), Vec::<String>::new());
}
