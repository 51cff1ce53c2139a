//! The listener process through the real binary: how it is spawned, what it may see,
//! how its output is read, what its exits mean, and that it never outlives us.

use std::time::Duration;

use nix::sys::signal::Signal;
use sim::protocol::Script;

use crate::support::{
    github, listeners, looks_like_jit_name, setup, wait_gone, wait_health, Daemon, Sandbox,
};

const T: Duration = Duration::from_secs(30);

/// Registrations asked of GitHub so far.
fn registrations(gh: &sim::github::FakeGithub) -> usize {
    gh.calls()
        .iter()
        .filter(|c| c.path.ends_with("generate-jitconfig"))
        .count()
}

fn read_nul(path: String) -> Vec<String> {
    std::fs::read(path)
        .unwrap()
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

#[tokio::test]
async fn scenario_14_sigterm_while_idle_and_a_listener_spawned_directly_with_a_clean_env() {
    let (sb, gh, mut env) = setup(|_| {}).await;
    env.insert("SUPERVISOR_RUNNER_ENV".into(), "EXTRA_VAR=hello".into());
    env.insert("SOME_SECRET_OF_THE_HOST".into(), "do-not-leak".into());
    let token = env["GITHUB_PAT"].clone();
    let mut d = Daemon::run_listening(&env, 1, T).await;
    let pids = listeners(&sb, 1);
    assert_eq!(pids.len(), 1, "{pids:?}");
    let pid = pids[0];
    let root = sb.slot_root(0);

    let argv = read_nul(format!("/proc/{pid}/cmdline"));
    assert_eq!(
        argv,
        [
            root.join("bin/Runner.Listener").display().to_string(),
            "run".to_string()
        ],
        "no run.sh, nothing secret on argv"
    );
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap(),
        root,
        "cwd is the runner root"
    );
    assert_eq!(
        nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid)))
            .unwrap()
            .as_raw(),
        pid,
        "own process group"
    );

    let environ = read_nul(format!("/proc/{pid}/environ"));
    assert!(
        environ.iter().any(|e| e == "EXTRA_VAR=hello"),
        "{environ:?}"
    );
    assert!(
        environ
            .iter()
            .any(|e| e.starts_with("ACTIONS_RUNNER_INPUT_JITCONFIG=")),
        "JIT config in the environment"
    );
    assert!(
        environ.iter().all(|e| !e.contains(&token)),
        "the token reached the runner"
    );
    assert!(
        environ.iter().all(|e| !e.starts_with("GITHUB_PAT=")
            && !e.starts_with("SOME_SECRET_OF_THE_HOST=")
            && !e.starts_with("SUPERVISOR_")),
        "{environ:?}"
    );
    // The runner's files were written from the JIT config, in the runner root.
    assert!(root.join(".runner").exists() && root.join(".credentials").exists());
    let diag: Vec<_> = std::fs::read_dir(root.join("_diag"))
        .unwrap()
        .flatten()
        .collect();
    assert!(!diag.is_empty());
    // Nothing the supervisor logged contains the token or the JIT config.
    let jit = environ
        .iter()
        .find_map(|e| e.strip_prefix("ACTIONS_RUNNER_INPUT_JITCONFIG="))
        .unwrap()
        .to_string();
    assert!(d
        .log()
        .iter()
        .all(|l| !l.contains(&token) && !l.contains(&jit)));

    // Scenario 14: SIGTERM while idle: stopped, deregistered, exit 0, within Docker's 10 s.
    let t = std::time::Instant::now();
    d.signal(Signal::SIGTERM);
    let (code, summary) = d.wait_summary(Duration::from_secs(10)).await;
    assert_eq!(code, Some(0));
    assert!(t.elapsed() < Duration::from_secs(10));
    assert_eq!(summary.deregistrations, 1, "{summary:?}");
    assert!(wait_gone(pid, Duration::from_secs(5)).await);
    assert!(gh.runners().is_empty(), "no ghost left: {:?}", gh.runners());
}

#[tokio::test]
async fn hostile_output_is_cleaned_bounded_and_still_understood() {
    let sb = Sandbox::new();
    let gh = github(|_| {}).await;
    gh.script(Script::HostileOutput);
    gh.enqueue(Default::default(), 1);
    let mut d = Daemon::start(&sb.env(&gh), &["run"]).await;
    // The coloured "Listening for Jobs" line was recognised: the job ran.
    d.wait_event("job_completed", T).await;
    let events = d.events();
    let message = |e: &crate::support::events::Event| e.str("message").unwrap_or_default();
    // Wording under test: the fake runner's own bytes, decoded lossily (no event: any line).
    assert!(
        events
            .iter()
            .any(|e| e.name == "runner_line" && message(e).starts_with("invalid utf-8: \u{fffd}")),
        "lossy UTF-8"
    );
    assert!(
        events.iter().all(|e| !message(e).contains('\u{1b}')),
        "escape sequences stripped"
    );
    let log = d.log();
    assert!(
        log.iter()
            .all(|l| !l.contains('\u{1b}') && !l.contains("\\u001b")),
        "escape sequences stripped"
    );
    assert!(
        events
            .iter()
            .any(|e| e.u64("truncated").is_some_and(|n| n > 0)),
        "the 2 MiB line was cut"
    );
    assert!(log.iter().all(|l| l.len() < 9 * 1024), "every line bounded");
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn a_crash_is_retryable_and_its_registration_deleted() {
    let sb = Sandbox::new();
    let gh = github(|_| {}).await;
    gh.script(Script::Crash {
        after_ms: 50,
        during_job: false,
    });
    let mut d = Daemon::start(&sb.env(&gh), &["run"]).await;
    let exited = d
        .wait_events("listener_exited", |e| e.is("reason", "retryable"), 1, T)
        .await;
    assert!(exited.is("ended", "Code(2)"), "{exited:?}");
    d.wait_listening(2, T).await;
    let deleted = gh.state(|s| s.deleted.clone());
    assert_eq!(deleted.len(), 1);
    assert!(looks_like_jit_name(&deleted[0], "ci", 0), "{deleted:?}");
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn a_crash_mid_job_leaves_no_ghost() {
    let sb = Sandbox::new();
    let gh = github(|o| o.job_lock_timeout = Duration::from_millis(800)).await;
    gh.script(Script::Crash {
        after_ms: 200,
        during_job: true,
    });
    gh.enqueue(
        sim::github::JobSpec {
            duration_ms: 60_000,
            ..Default::default()
        },
        1,
    );
    let mut d = Daemon::start(&sb.env(&gh), &["run"]).await;
    let crashed = d
        .wait_events("listener_exited", |e| e.is("reason", "retryable"), 1, T)
        .await;
    let name = gh.state(|s| s.completed.first().map(|c| c.runner.clone()));
    // The busy runner is deleted once GitHub abandons its job.
    d.wait_event("registration_deleted", T).await;
    assert!(gh.state(|s| s.deleted.len()) >= 1, "{crashed:?}");
    assert_eq!(
        gh.state(|s| s
            .completed
            .iter()
            .map(|c| c.result.clone())
            .collect::<Vec<_>>()),
        ["Abandoned"],
        "{name:?}"
    );
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
    assert!(gh.runners().is_empty(), "{:?}", gh.runners());
}

#[tokio::test]
async fn registration_deleted_while_idle_is_told_apart_from_a_clean_stop() {
    let sb = Sandbox::new();
    let gh = github(|_| {}).await;
    let mut d = Daemon::start(&sb.env(&gh), &["run"]).await;
    d.wait_listening(1, T).await;
    let id = gh.runners()[0].id;
    assert!(gh.delete_runner(id));
    let exited = d.wait_event("listener_exited", T).await;
    assert!(
        exited.is("ended", "Code(0)") && exited.is("reason", "registration_deleted"),
        "{exited:?}"
    );
    d.wait_listening(2, T).await;
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn session_conflict_is_cut_short_with_a_fresh_name() {
    let sb = Sandbox::new();
    // Time scale 1: the runner itself would retry for 240 s before exiting 5.
    let gh = github(|_| {}).await;
    gh.state(|s| s.conflicts_for_next = 100);
    let mut d = Daemon::start(&sb.env(&gh), &["run"]).await;
    d.wait_event("runner_session_conflict", T).await;
    let t = std::time::Instant::now();
    d.wait_events(
        "listener_exited",
        |e| e.is("reason", "session_conflict"),
        1,
        Duration::from_secs(10),
    )
    .await;
    d.wait_listening(1, T).await;
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "recovered in {:?}, not 240 s",
        t.elapsed()
    );
    let deleted = gh.state(|s| s.deleted.clone());
    let live = gh.runners();
    assert_eq!(deleted.len(), 1, "the conflicting registration is deleted");
    assert_eq!(live.len(), 1);
    assert_ne!(live[0].name, deleted[0], "a new name");
    // The runner got SIGINT (it printed Exiting...), never a bare SIGKILL.
    // Wording under test: the runner's console line, the only sign it saw SIGINT.
    assert!(d.count_events("runner_line", |e| e.is("message", "Exiting...")) >= 1);
    assert_eq!(d.count_events("sigkill", |_| true), 0);
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn self_update_waits_for_update_finished_and_reaps_the_orphan() {
    let sb = Sandbox::new();
    let gh = github(|o| o.time_scale = 0.05).await;
    gh.script(Script::SelfUpdate { exit_code: 4 });
    let mut env = sb.env(&gh);
    env.insert(
        "SUPERVISOR_LOG".into(),
        "info,runner_supervisor::os::procs=debug".into(),
    );
    let mut d = Daemon::start(&env, &["run"]).await;
    let exited = d.wait_event("listener_exited", T).await;
    assert!(
        exited.is("ended", "Code(4)") && exited.is("reason", "updating"),
        "{exited:?}"
    );
    d.wait_event("update_finished", T).await;
    assert!(
        !sb.slot_root(0).join("update.finished").exists(),
        "the flag is consumed"
    );
    // The detached update script was re-parented to us and reaped: no zombie.
    // A debug event (procs=debug).
    d.wait_event("orphan_reaped", T).await;
    d.wait_listening(2, T).await;
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn scenario_22_version_deprecated_pauses_the_slot_and_health_says_why() {
    let sb = Sandbox::new();
    let gh = github(|_| {}).await;
    gh.script(Script::VersionDeprecated);
    let env = sb.env(&gh);
    let mut d = Daemon::start(&env, &["run"]).await;
    let exited = d.wait_event("listener_exited", T).await;
    assert!(
        exited.is("ended", "Code(7)") && exited.is("reason", "version_deprecated"),
        "{exited:?}"
    );
    let deprecated = d.wait_event("runner_deprecated", T).await;
    assert_eq!(deprecated.u64("slot"), Some(0), "{deprecated:?}");
    // Health says why, from the status file the running supervisor keeps.
    let last = wait_health(&env, "paused", Duration::from_secs(5)).await;
    assert_eq!(last.0, Some(1), "{}", last.1);
    assert!(last.1.contains("too old"), "{}", last.1);
    // No re-register loop: one registration only.
    assert_eq!(registrations(&gh), 1);
    // A pause is interrupted by SIGTERM at once.
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(10)).await.0, Some(0));
}

#[tokio::test]
async fn a_hung_listener_gets_sigint_then_sigkill_after_the_grace() {
    let sb = Sandbox::new();
    let gh = github(|_| {}).await;
    gh.script(Script::Hang { after_ms: 0 });
    let mut env = sb.env(&gh);
    env.insert("SUPERVISOR_RUNNER_STOP_GRACE".into(), "1s".into());
    let mut d = Daemon::run_listening(&env, 1, T).await;
    let pid = listeners(&sb, 1)[0];
    d.signal(Signal::SIGTERM);
    let killed = d.wait_event("sigkill", Duration::from_secs(10)).await;
    assert_eq!(killed.u64("pid"), Some(pid as u64), "{killed:?}");
    assert_eq!(d.wait_exit(T).await.0, Some(0));
    assert!(wait_gone(pid, Duration::from_secs(5)).await);
}

#[tokio::test]
async fn no_listener_outlives_a_sigkilled_supervisor() {
    let (sb, _gh, mut env) = setup(|_| {}).await;
    env.insert("SUPERVISOR_SLOTS".into(), "2".into());
    let mut d = Daemon::start(&env, &["run"]).await;
    d.wait_listening(2, T).await;
    let pids = listeners(&sb, 2);
    assert_eq!(pids.len(), 2);
    d.signal(Signal::SIGKILL);
    d.wait_exit(T).await;
    for pid in pids {
        assert!(
            wait_gone(pid, Duration::from_secs(5)).await,
            "listener {pid} survived"
        );
    }
}

#[tokio::test]
async fn as_pid_1_it_reaps_orphans_and_stops_on_sigterm() {
    let sb = Sandbox::new();
    let gh = github(|o| o.time_scale = 0.05).await;
    gh.script(Script::SelfUpdate { exit_code: 4 });
    let mut env = sb.env(&gh);
    env.insert(
        "SUPERVISOR_LOG".into(),
        "info,runner_supervisor::os::procs=debug".into(),
    );
    // A new PID namespace: the supervisor is PID 1 there, as in a container without tini.
    let mut d = Daemon::start_wrapped(
        &env,
        &[
            "unshare",
            "--pid",
            "--fork",
            "--kill-child=SIGKILL",
            "--mount-proc",
        ],
        &["run"],
    )
    .await;
    d.wait_event("update_finished", T).await;
    // The update script, orphaned when the listener exited, was re-parented to PID 1: us.
    // A debug event (procs=debug).
    d.wait_event("orphan_reaped", T).await;
    d.wait_listening(2, T).await;
    let pid = listeners(&sb, 1)[0];
    // unshare forwards nothing; signal the supervisor (its child) directly.
    let sup = d.supervisor_pid();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(sup), Signal::SIGTERM).unwrap();
    assert_eq!(d.wait_exit(T).await.0, Some(0));
    assert!(wait_gone(pid, Duration::from_secs(5)).await);
}

/// A listener that crashes 0.3 s after "Listening for Jobs" is backed off like any crash
/// loop (listening no longer resets the count), and once one listens for `stable_after`,
/// the run of failures is over: the next failure waits the shortest step again.
#[tokio::test]
async fn a_crash_loop_after_listening_is_backed_off_until_a_listener_is_stable() {
    let sb = Sandbox::new();
    let gh = github(|_| {}).await;
    for _ in 0..4 {
        gh.script(Script::Crash {
            after_ms: 150,
            during_job: false,
        });
    }
    let mut env = sb.env(&gh);
    env.insert("SUPERVISOR_RUNNER_STABLE_AFTER".into(), "1s".into());
    // The crash-loop back-off from 50 ms instead of 2 s: the same doubling, 40 times
    // faster (the four waits take 0.75 s instead of 30 s).
    env.insert("SUPERVISOR_RUNNER_FAILURE_BACKOFF".into(), "50ms".into());
    // Keep the retryable-exit watchdog out of this test.
    env.insert("SUPERVISOR_WATCHDOG_RETRYABLE_EXITS".into(), "100".into());
    let mut d = Daemon::start(&env, &["run"]).await;
    d.wait_nth("listener_failed", 4, Duration::from_secs(90))
        .await;
    let w: Vec<(u64, u64)> = d
        .events()
        .iter()
        .filter(|e| e.name == "listener_failed")
        .map(|e| (e.u64("failures").unwrap(), e.u64("wait_ms").unwrap()))
        .collect();
    assert_eq!(
        w.iter().map(|x| x.0).collect::<Vec<_>>(),
        vec![1, 2, 3, 4],
        "each crash after listening is one more failure: {w:?}"
    );
    // Doubling from the configured 50 ms, jitter in the upper half.
    for (i, (_, ms)) in w.iter().enumerate() {
        let step = 50u64 << i;
        assert!((step / 2..=step).contains(ms), "wait {i}: {ms} ms");
    }
    // The fifth listener does not crash: after stable_after, the failures are over.
    d.wait_events("listener_stable", |e| e.u64("failures") == Some(4), 1, T)
        .await;
    let (_, health) = wait_health(&env, "Ok", Duration::from_secs(5)).await;
    assert!(!health.contains("failures"), "{health}");
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}
