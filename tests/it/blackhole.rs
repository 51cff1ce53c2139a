//! Silent TCP blackholes (ghostrunner scenario 26): the supervisor's own requests fail
//! within the keepalive window, and a listener whose connection is blackholed is replaced.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use runner_supervisor::config::{Config, Purpose};
use runner_supervisor::github::{GithubClient, GithubError};
use sim::github::{Fault, FaultKind};

use crate::support::{github, Blackhole, Daemon, Sandbox};

const T: Duration = Duration::from_secs(60);

#[tokio::test]
async fn the_supervisors_own_request_fails_within_the_keepalive_window() {
    let gh = github(|_| {}).await;
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in [
        ("GITHUB_PAT", sim::github::Options::default().token.as_str()),
        ("REPO_OWNER", "octo"),
        ("REPO_NAME", "app"),
        ("SUPERVISOR_GITHUB_API_URL", gh.url().as_str()),
        ("SUPERVISOR_GITHUB_REQUEST_TIMEOUT", "120s"),
        ("SUPERVISOR_GITHUB_MAX_RETRIES", "0"),
        ("SUPERVISOR_NETWORK_KEEPALIVE_IDLE", "1s"),
        ("SUPERVISOR_NETWORK_KEEPALIVE_INTERVAL", "1s"),
        ("SUPERVISOR_NETWORK_KEEPALIVE_PROBES", "2"),
    ] {
        env.insert(k.into(), v.into());
    }
    let cfg = Config::resolve(&env, &Default::default(), Purpose::Inspect).unwrap();
    let c = GithubClient::new(&cfg, cfg.github.token.clone().unwrap()).unwrap();
    // The server holds the answer for a minute; meanwhile the path goes dark.
    gh.fault(Fault {
        body: None,
        method: None,
        path: Some("/user".into()),
        kind: FaultKind::Latency { ms: 60_000 },
        times: 1,
    });
    let call = tokio::spawn(async move { c.get_user().await });
    assert!(gh.wait_for(T, |s| s.arrivals >= 1).await);
    let _bh = Blackhole::port(gh.addr().port());
    let t = Instant::now();
    let r = tokio::time::timeout(T, call)
        .await
        .expect("the request must not hang")
        .unwrap();
    let took = t.elapsed();
    assert!(matches!(r, Err(GithubError::Transient(_))), "{r:?}");
    // Keepalive window: 1 s idle + 2 probes x 1 s = 3 s, far below the 120 s request timeout.
    assert!(took < Duration::from_secs(10), "failed after {took:?}");
}

#[tokio::test]
async fn scenario_26_a_listener_on_a_blackholed_connection_is_replaced() {
    let sb = Sandbox::new();
    // The runner's back-off scaled to 0.15-0.3 s.
    let gh = github(|o| {
        o.poll_timeout = Duration::from_millis(300);
        o.time_scale = 0.01;
    })
    .await;
    let mut env = sb.env(&gh);
    // Its long-poll fails by itself within 3 s (the keepalive we give it); its next
    // connection is a SYN into the dark: a dead path past socket_stall.
    env.insert("SUPERVISOR_NETWORK_KEEPALIVE_IDLE".into(), "1s".into());
    env.insert("SUPERVISOR_NETWORK_KEEPALIVE_INTERVAL".into(), "1s".into());
    env.insert("SUPERVISOR_NETWORK_KEEPALIVE_PROBES".into(), "2".into());
    env.insert("SUPERVISOR_WATCHDOG_SOCKET_STALL".into(), "2s".into());
    env.insert(
        "SUPERVISOR_WATCHDOG_SOCKET_CHECK_INTERVAL".into(),
        "200ms".into(),
    );
    env.insert("SUPERVISOR_WATCHDOG_GRACE".into(), "1h".into());
    env.insert("SUPERVISOR_RUNNER_STOP_GRACE".into(), "1s".into());
    env.insert("SUPERVISOR_GITHUB_REQUEST_TIMEOUT".into(), "2s".into());
    env.insert("SUPERVISOR_GITHUB_MAX_RETRIES".into(), "0".into());
    let mut d = Daemon::run_listening(&env, 1, T).await;
    let fired = {
        let _bh = Blackhole::port(gh.addr().port());
        d.wait_event("watchdog_fire", T).await
    };
    assert!(
        fired.is("cause", "network")
            && fired.str("detail").is_some_and(|d| d.contains("dead path")),
        "{fired:?}"
    );
    // The path is back: a fresh runner listens.
    d.wait_listening(2, T).await;
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}
