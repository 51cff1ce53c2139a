//! The listener's own connections (issue 8), on the real kernel: keepalive injected into
//! the fake runner's long-poll socket lets it recover from a blackhole by itself; without
//! injection (refused by a seccomp filter like Docker's default profile) the read-only
//! watch replaces it; a peer gone silent after the headers is found; realistic polling and
//! a quiet job never fire.
//!
//! The only network change is an iptables DROP on the test's own loopback port, removed
//! afterwards (`Blackhole`).

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use runner_supervisor::os::sockets;
use runner_supervisor::status::{KeepaliveState, SlotState};
use serde_json::Value;
use sim::github::{FakeGithub, Fault, FaultKind, JobSpec, State};

use crate::support::events::Event;
use crate::support::{
    cli, eventually, github, listeners, setup, sim_bin, wait_health, Blackhole, Cli, Daemon,
    Sandbox, NOBODY,
};

const T: Duration = Duration::from_secs(60);

/// The keepalive on the listener's TCP connections to `port`: (keepalive on, idle) each.
fn listener_keepalive(pid: i32, port: u16) -> Vec<(bool, Duration)> {
    let Ok(pidfd) = sockets::pidfd_open(pid) else {
        return vec![];
    };
    let mut out = vec![];
    for (fd, _) in sockets::socket_fds(pid).unwrap_or_default() {
        let Ok(dup) = sockets::pidfd_getfd(pidfd.as_fd(), fd) else {
            continue;
        };
        if !sockets::is_tcp_connection(dup.as_fd())
            || sockets::peer(dup.as_fd()).map(|p| p.port()) != Some(port)
        {
            continue;
        }
        if let Ok((on, idle, ..)) = sockets::keepalive_of(dup.as_fd()) {
            out.push((on, idle));
        }
    }
    out
}

/// Polls the fake GitHub has answered empty (202) on the message long-poll.
fn polls_answered(s: &State) -> usize {
    s.calls
        .iter()
        .filter(|c| c.path.ends_with("/message") && c.status == 202)
        .count()
}

fn empty_polls(gh: &FakeGithub) -> usize {
    gh.state(|s| polls_answered(s))
}

/// The watch of a listener whose keepalive is not ours: silence counts after 3 s, checked
/// every 200 ms; nothing else fires; a stop and GitHub calls are quick.
const SILENCE_WATCH: &[(&str, &str)] = &[
    ("SUPERVISOR_WATCHDOG_SOCKET_CHECK_INTERVAL", "200ms"),
    ("SUPERVISOR_WATCHDOG_SILENT_AFTER", "3s"),
    ("SUPERVISOR_WATCHDOG_GRACE", "1h"),
    ("SUPERVISOR_RUNNER_STOP_GRACE", "1s"),
    ("SUPERVISOR_GITHUB_REQUEST_TIMEOUT", "2s"),
    ("SUPERVISOR_GITHUB_MAX_RETRIES", "0"),
];

/// Whether a watchdog fire's `detail` names the condition, in README's terms (`silent
/// hang`, `dead path`): the kind of finding has no field of its own.
fn detail_names(fired: &Event, condition: &str) -> bool {
    fired.str("detail").is_some_and(|d| d.contains(condition))
}

/// Blackhole `port` until the watchdog fires, which must be a silent hang (cause network),
/// then wait for the replacement to listen; how long the fire took.
async fn a_blackhole_is_a_silent_hang(d: &Daemon, port: u16) -> Duration {
    let (fired, took) = {
        let _bh = Blackhole::port(port);
        let dropped = Instant::now();
        let fired = d.wait_event("watchdog_fire", T).await;
        (fired, dropped.elapsed())
    };
    assert!(
        detail_names(&fired, "silent hang") && fired.is("cause", "network"),
        "{fired:?}"
    );
    d.wait_listening(2, T).await;
    took
}

/// `doctor --json` (under `wrapper`, if any): its `keepalive` check.
async fn doctor_keepalive(env: &BTreeMap<String, String>, wrapper: &[&str]) -> Value {
    // Async: the fake GitHub runs on this test's runtime and must keep answering.
    let report: Value = Cli::wrapped(env, wrapper, &["doctor", "--json"])
        .run_async()
        .await
        .json();
    report["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "keepalive"))
        .unwrap_or_else(|| panic!("no keepalive check: {report:#}"))
        .clone()
}

fn env_for(sb: &Sandbox, gh: &FakeGithub, extra: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut env = sb.env(gh);
    for (k, v) in extra {
        env.insert(k.to_string(), v.to_string());
    }
    env
}

#[tokio::test]
async fn with_injected_keepalive_the_listener_survives_a_blackhole_by_itself() {
    let sb = Sandbox::new();
    // Polls held 2 s; the runner's back-off scaled to 0.15-0.3 s.
    let gh = github(|o| {
        o.poll_timeout = Duration::from_secs(2);
        o.time_scale = 0.01;
    })
    .await;
    let (idle, interval, probes) = (1u64, 1u64, 2u64);
    let env = env_for(
        &sb,
        &gh,
        &[
            ("SUPERVISOR_NETWORK_KEEPALIVE_IDLE", "1s"),
            ("SUPERVISOR_NETWORK_KEEPALIVE_INTERVAL", "1s"),
            ("SUPERVISOR_NETWORK_KEEPALIVE_PROBES", "2"),
            // Bounds a request sent into the dark just as well (no keepalive while
            // data is in flight).
            ("SUPERVISOR_NETWORK_USER_TIMEOUT", "3s"),
            ("SUPERVISOR_WATCHDOG_SOCKET_CHECK_INTERVAL", "200ms"),
            ("SUPERVISOR_WATCHDOG_SOCKET_STALL", "20s"),
            ("SUPERVISOR_WATCHDOG_SILENT_AFTER", "30s"),
            ("SUPERVISOR_WATCHDOG_GRACE", "1h"),
        ],
    );
    let mut d = Daemon::run_listening(&env, 1, T).await;
    d.wait_event("keepalive_set", T).await;
    let pid = listeners(&sb, 1)[0];
    let port = gh.addr().port();
    // The listener's own long-poll socket carries our keepalive (read back from it).
    assert!(
        eventually(T, || {
            let k = listener_keepalive(pid, port);
            !k.is_empty() && k.iter().all(|(on, i)| *on && i.as_secs() == idle)
        })
        .await,
        "{:?}",
        listener_keepalive(pid, port)
    );
    // Mid-poll (the request sent and acknowledged), the path goes dark.
    let polls = empty_polls(&gh);
    let bh = Blackhole::port(port);
    let dropped = Instant::now();
    let err = d.wait_event("runner_connect_error", T).await;
    let to_error = dropped.elapsed();
    // Wording under test: the runner's own console line names the error (ETIMEDOUT).
    assert!(
        err.str("message")
            .is_some_and(|m| m.contains("Connection timed out")),
        "the listener's own socket failed with ETIMEDOUT: {err:?}"
    );
    // Within idle + interval x probes (3 s), plus scheduling.
    let window = Duration::from_secs(idle + interval * probes);
    assert!(to_error <= window + Duration::from_secs(2), "{to_error:?}");
    drop(bh);
    d.wait_event("runner_reconnected", T).await;
    let to_reconnect = dropped.elapsed();
    assert!(gh.wait_for(T, |s| polls_answered(s) > polls + 1).await);
    eprintln!(
        "figures: DROP -> the listener's own ETIMEDOUT {:.2}s (window {}s); -> Runner reconnected. {:.2}s (rule removed at the error)",
        to_error.as_secs_f64(),
        window.as_secs(),
        to_reconnect.as_secs_f64()
    );
    // The supervisor restarted nothing: the same listener, one registration.
    assert_eq!(
        d.count_events("watchdog_fire", |_| true),
        0,
        "{:#?}",
        d.log()
    );
    assert_eq!(listeners(&sb, 1), vec![pid]);
    assert_eq!(gh.runners().len(), 1);
    wait_health(&env, "listener keepalive: on", T).await;
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn without_injection_a_blackholed_listener_is_replaced_by_the_read_only_watch() {
    let sb = Sandbox::new();
    let gh = github(|o| o.poll_timeout = Duration::from_millis(500)).await;
    let env = env_for(&sb, &gh, SILENCE_WATCH);
    // Docker's default seccomp profile without CAP_SYS_PTRACE: pidfd_getfd is EPERM.
    let wrapper = sim_bin("deny-getfd");
    let mut d = Daemon::start_wrapped(&env, &[wrapper.to_str().unwrap()], &["run"]).await;
    d.wait_listening(1, T).await;
    let refused = d.wait_event("keepalive_refused", T).await;
    assert!(
        refused.u64("slot") == Some(0)
            && refused.str("reason").is_some_and(|r| r.contains("seccomp"))
            && refused.str("fix").is_some_and(|f| f.contains("SYS_PTRACE")),
        "the reason and the fix: {refused:?}"
    );
    let (_, h) = wait_health(&env, "listener keepalive: refused", T).await;
    assert!(h.contains("SYS_PTRACE"), "{h}");
    let pid = listeners(&sb, 1)[0];
    let port = gh.addr().port();
    assert!(
        listener_keepalive(pid, port).iter().all(|(on, _)| !on),
        "nothing was set on the listener's sockets"
    );
    let polls = empty_polls(&gh);
    assert!(gh.wait_for(T, |s| polls_answered(s) > polls).await);
    let took = a_blackhole_is_a_silent_hang(&d, port).await;
    eprintln!(
        "figures: without injection, DROP -> replacement decided {:.2}s (silent_after 3s)",
        took.as_secs_f64()
    );
    assert_ne!(listeners(&sb, 1), vec![pid], "replaced");
    assert_eq!(
        d.count_events("keepalive_refused", |_| true),
        1,
        "said once"
    );
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn a_peer_silent_after_the_headers_is_found_even_though_keepalive_answers() {
    let sb = Sandbox::new();
    let gh = github(|o| o.poll_timeout = Duration::from_millis(500)).await;
    let env = env_for(
        &sb,
        &gh,
        &[
            ("SUPERVISOR_NETWORK_KEEPALIVE_IDLE", "1s"),
            ("SUPERVISOR_NETWORK_KEEPALIVE_INTERVAL", "1s"),
            ("SUPERVISOR_NETWORK_KEEPALIVE_PROBES", "2"),
            ("SUPERVISOR_WATCHDOG_SOCKET_CHECK_INTERVAL", "200ms"),
            ("SUPERVISOR_WATCHDOG_SOCKET_STALL", "2s"),
            ("SUPERVISOR_WATCHDOG_SILENT_AFTER", "3s"),
            ("SUPERVISOR_WATCHDOG_GRACE", "1h"),
            ("SUPERVISOR_RUNNER_STOP_GRACE", "1s"),
        ],
    );
    let mut d = Daemon::run_listening(&env, 1, T).await;
    d.wait_event("keepalive_set", T).await;
    // The next poll gets its headers and then nothing; the connection stays up and
    // acknowledges keepalive probes (a live peer, not a dead path).
    gh.fault(Fault {
        body: None,
        method: Some("GET".into()),
        path: Some("/message".into()),
        kind: FaultKind::Silent,
        times: 1,
    });
    assert!(
        gh.wait_for(T, |s| s
            .calls
            .iter()
            .any(|c| c.path.ends_with("/message") && c.status == 200))
            .await
    );
    let silent_since = Instant::now();
    let fired = d.wait_event("watchdog_fire", T).await;
    let took = silent_since.elapsed();
    assert!(
        detail_names(&fired, "silent hang") && fired.is("cause", "network"),
        "{fired:?}"
    );
    assert!(!detail_names(&fired, "dead path"), "{fired:?}");
    eprintln!(
        "figures: silent hang found {:.2}s after the peer went silent (silent_after 3s, check 200ms)",
        took.as_secs_f64()
    );
    d.wait_listening(2, T).await;
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn realistic_polling_and_a_quiet_job_never_fire() {
    let sb = Sandbox::new();
    // Periods scaled down: GitHub holds each poll 500 ms; silence counts after 2 s.
    let gh = github(|o| o.poll_timeout = Duration::from_millis(500)).await;
    let env = env_for(
        &sb,
        &gh,
        &[
            ("SUPERVISOR_NETWORK_KEEPALIVE_IDLE", "1s"),
            ("SUPERVISOR_NETWORK_KEEPALIVE_INTERVAL", "1s"),
            ("SUPERVISOR_NETWORK_KEEPALIVE_PROBES", "2"),
            ("SUPERVISOR_NETWORK_USER_TIMEOUT", "3s"),
            ("SUPERVISOR_WATCHDOG_SOCKET_CHECK_INTERVAL", "100ms"),
            ("SUPERVISOR_WATCHDOG_SOCKET_STALL", "1s"),
            ("SUPERVISOR_WATCHDOG_SILENT_AFTER", "2s"),
        ],
    );
    let mut d = Daemon::run_listening(&env, 1, T).await;
    d.wait_event("keepalive_set", T).await;
    // Twelve poll periods of an idle listener.
    assert!(gh.wait_for(T, |s| polls_answered(s) >= 12).await);
    // A job that is quiet for twice silent_after (its long-poll socket says nothing).
    gh.enqueue(
        JobSpec {
            name: "quiet".into(),
            duration_ms: 4_000,
            result: "Succeeded".into(),
            labels: vec![],
            workflow: None,
            run: None,
            actions: vec![],
        },
        1,
    );
    assert!(gh.wait_for(T, |s| s.completed.len() == 1).await);
    // And twelve more periods on the next listener.
    d.wait_listening(2, T).await;
    let before = empty_polls(&gh);
    assert!(gh.wait_for(T, |s| polls_answered(s) >= before + 12).await);
    let fires = d.count_events("watchdog_fire", |_| true);
    eprintln!(
        "figures: {} empty polls, one quiet 4 s job, {} false fires",
        empty_polls(&gh),
        fires
    );
    assert_eq!(fires, 0, "{:#?}", d.log());
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn with_listener_keepalive_off_nothing_is_touched_and_a_silent_path_is_still_found() {
    let sb = Sandbox::new();
    let gh = github(|o| o.poll_timeout = Duration::from_millis(500)).await;
    let env = env_for(
        &sb,
        &gh,
        &[
            &[("SUPERVISOR_NETWORK_LISTENER_KEEPALIVE", "off")],
            SILENCE_WATCH,
        ]
        .concat(),
    );
    let mut d = Daemon::run_listening(&env, 1, T).await;
    wait_health(&env, "listener keepalive: off", T).await;
    // Several poll periods in, the listener's sockets are as it made them.
    let polls = empty_polls(&gh);
    assert!(gh.wait_for(T, |s| polls_answered(s) >= polls + 4).await);
    let pid = listeners(&sb, 1)[0];
    let k = listener_keepalive(pid, gh.addr().port());
    assert!(!k.is_empty() && k.iter().all(|(on, _)| !on), "{k:?}");
    assert_eq!(d.count_events("keepalive_set", |_| true), 0);
    a_blackhole_is_a_silent_hang(&d, gh.addr().port()).await;
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn doctor_says_whether_keepalive_can_be_set_and_how_to_fix_it() {
    let (_sb, _gh, env) = setup(|_| {}).await;
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let check = doctor_keepalive(&env, &[]).await;
    assert!(
        check["status"] == "pass"
            && text(&check["reason"]).contains("can be set on the listener's connections"),
        "{check:#}"
    );
    let deny = sim_bin("deny-getfd");
    let check = doctor_keepalive(&env, &[deny.to_str().unwrap()]).await;
    assert!(
        check["status"] == "warn"
            && text(&check["reason"]).contains("seccomp")
            && text(&check["reason"]).contains("read-only"),
        "{check:#}"
    );
    assert!(text(&check["fix"]).contains("SYS_PTRACE"), "{check:#}");
}

#[tokio::test]
async fn a_listener_that_cannot_even_be_listed_is_still_found_silent_through_its_users_sockets() {
    let sb = Sandbox::new();
    // The supervisor runs as nobody, without CAP_SYS_PTRACE; the listener, its child, makes
    // itself undumpable (PR_SET_DUMPABLE 0): pidfd_getfd and /proc/<pid>/fd both refuse.
    given_to_nobody(&sb);
    let gh = github(|o| o.poll_timeout = Duration::from_millis(500)).await;
    let env = env_for(
        &sb,
        &gh,
        &[
            &[("SUPERVISOR_RUNNER_ENV", "SIM_RUNNER_UNDUMPABLE=1")],
            SILENCE_WATCH,
        ]
        .concat(),
    );
    let mut d = Daemon::start_wrapped(&env, &NOBODY, &["run"]).await;
    d.wait_listening(1, T).await;
    let blind = d.wait_event("keepalive_refused", T).await;
    assert!(
        blind
            .str("reason")
            .is_some_and(|r| r.contains("not dumpable")),
        "{blind:?}"
    );
    // Wording under test: only the message tells a refused listing of the descriptors from
    // a refused pidfd_getfd (no field says which).
    assert!(
        blind
            .str("message")
            .is_some_and(|m| m.contains("cannot list the listener's descriptors")),
        "{blind:?}"
    );
    wait_health(&env, "listener keepalive: refused", T).await;
    let polls = empty_polls(&gh);
    assert!(gh.wait_for(T, |s| polls_answered(s) >= polls + 4).await);
    assert_eq!(
        d.count_events("watchdog_fire", |_| true),
        0,
        "polling is not silence"
    );
    a_blackhole_is_a_silent_hang(&d, gh.addr().port()).await;
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

/// The sandbox owned by nobody (uid 65534), with a copy of the fake runner as the
/// listener (a hard link would be chowned for every other test too).
fn given_to_nobody(sb: &Sandbox) {
    let listener = sb.install.join("bin/Runner.Listener");
    std::fs::remove_file(&listener).unwrap();
    std::fs::copy(sim_bin("fake-runner"), &listener).unwrap();
    let st = std::process::Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(sb.dir.path())
        .status()
        .unwrap();
    assert!(st.success());
}

#[tokio::test]
async fn as_an_unprivileged_user_every_listener_of_twenty_jobs_gets_keepalive() {
    let sb = Sandbox::new();
    given_to_nobody(&sb);
    let gh = github(|o| o.poll_timeout = Duration::from_secs(2)).await;
    // Each exited listener stays a zombie for 400 ms (a debug build's hook) while its
    // descriptors are looked at every 100 ms: a zombie's /proc/<pid>/fd is root's, 0500.
    let env = env_for(
        &sb,
        &gh,
        &[
            ("SUPERVISOR_RUNNER_SLOTS", "2"),
            ("SUPERVISOR_WATCHDOG_SOCKET_CHECK_INTERVAL", "100ms"),
            ("SUPERVISOR_TEST_REAP_DELAY", "400"),
        ],
    );
    let mut d = Daemon::start_wrapped(&env, &NOBODY, &["run"]).await;
    let jobs = 20;
    gh.enqueue(crate::support::job("cycle", 150), jobs);
    assert!(gh.wait_for(T * 3, |s| s.completed.len() >= jobs).await);
    // Both slots listening again, each with keepalive on its new listener.
    let s = sb
        .wait_status(T, |s| {
            s.slots.iter().all(|x| {
                x.state == SlotState::Listening
                    && x.keepalive.as_ref().map(|k| k.state) == Some(KeepaliveState::On)
            })
        })
        .await;
    let k = &s.system.keepalive;
    assert_eq!(k.listeners_refused, 0, "{k:?}");
    assert_eq!(
        k.listeners_on, s.counts.listeners_started,
        "every listener of the run: {k:?}"
    );
    assert!(k.listeners_on > jobs as u64, "{k:?}");
    assert!(
        k.listener.as_deref().is_some_and(|l| l.starts_with("on (")),
        "{k:?}"
    );
    // The human `status` text, printed as the figure.
    let out = cli(&env, &["status"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let text = out.stdout;
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("keepalive     listener:"))
        .unwrap_or_else(|| panic!("{text}"));
    eprintln!("figures: as uid 65534 after {jobs} jobs:{line}");
    assert!(line.contains(" 0 refused"), "{line}");
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}
