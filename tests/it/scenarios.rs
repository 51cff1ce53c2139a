//! Ghostrunner's incident scenarios (`ghostrunner.md` §3) not covered by a module of their
//! own, each through the real binary and named after its number.

use std::time::Duration;

use nix::sys::signal::Signal;
use sim::github::{Fault, FaultKind, JobSpec, TokenKind};
use sim::protocol::Script;

use crate::support::{
    eventually, github, health, libfaketime, looks_like_jit_name, wait_gone, wait_health, Chronyd,
    Daemon, Sandbox,
};

const T: Duration = Duration::from_secs(60);

fn faketime_file_env(file: &std::path::Path) -> String {
    format!("LD_PRELOAD={},FAKETIME_TIMESTAMP_FILE={},FAKETIME_NO_CACHE=1,FAKETIME_DONT_FAKE_MONOTONIC=1", libfaketime(), file.display())
}

fn apply(env: &mut std::collections::BTreeMap<String, String>, kvs: &str) {
    for kv in kvs.split(',') {
        let (k, v) = kv.split_once('=').unwrap();
        env.insert(k.into(), v.into());
    }
}

#[tokio::test]
async fn scenario_07_the_watchdog_names_the_persisting_cause_clock() {
    let chrony = Chronyd::start("").await;
    let sb = Sandbox::new();
    let gh = github(|_| {}).await;
    gh.script(Script::ConnectionLoss {
        after_ms: 100,
        recover_after_ms: None,
        give_up: false,
        during_job: false,
    });
    let shift = sb.dir.path().join("faketime");
    std::fs::write(&shift, "+0\n").unwrap();
    let mut env = sb.env(&gh);
    apply(&mut env, &faketime_file_env(&shift));
    env.insert("SUPERVISOR_CLOCK_NTP_SERVERS".into(), chrony.ntp_address());
    env.insert("SUPERVISOR_CLOCK_INTERVAL".into(), "500ms".into());
    env.insert("SUPERVISOR_WATCHDOG_GRACE".into(), "3s".into());
    // A drift too small to look like a resume (30 s), but a fault at this threshold.
    env.insert("SUPERVISOR_CLOCK_FAULT_OFFSET".into(), "10s".into());
    let mut d = Daemon::start(&env, &["run"]).await;
    d.wait_log(&["Runner connect error"], T).await;
    // The clock goes wrong while the listener is stuck: its connect errors are the symptom.
    std::fs::write(&shift, "+20s\n").unwrap();
    d.wait_log(&["clock fault"], T).await;
    let fired = d.wait_log(&["watchdog fired"], T).await;
    assert!(
        fired.contains("cause=\"clock\""),
        "the root cause, not the symptom: {fired}"
    );
    wait_health(&env, "clock: local clock is +20", Duration::from_secs(5)).await;
    // No restart storm while the clock is wrong: the replacement waits for the clock.
    d.wait_log(&["registrations paused"], T).await;
    assert_eq!(
        gh.calls()
            .iter()
            .filter(|c| c.path.ends_with("generate-jitconfig"))
            .count(),
        1
    );
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn scenario_08_registration_failing_after_a_job_backs_off_and_turns_unhealthy() {
    let sb = Sandbox::new();
    let gh = github(|_| {}).await;
    let mut env = sb.env(&gh);
    env.insert("SUPERVISOR_HEALTH_UNHEALTHY_AFTER".into(), "2s".into());
    env.insert("SUPERVISOR_GITHUB_MAX_RETRIES".into(), "1".into());
    let mut d = Daemon::start(&env, &["run"]).await;
    d.wait_log(&["Listening for Jobs"], T).await;
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
    d.wait_log(&["job completed"], T).await;
    d.wait_lines(&["registration failed"], 2, T).await;
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
        .log()
        .iter()
        .filter(|l| l.contains("registration failed"))
        .filter_map(|l| {
            l.split("wait_s=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert!(waits.windows(2).all(|w| w[1] >= w[0]), "{waits:?}");
    gh.state(|s| s.faults.clear());
    d.wait_lines(&["Listening for Jobs"], 2, T).await;
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn scenario_12_and_23_a_restart_starts_clean_like_a_new_container() {
    let sb = Sandbox::new();
    let gh = github(|_| {}).await;
    let env = sb.env(&gh);
    let mut d = Daemon::start(&env, &["run"]).await;
    d.wait_log(&["Listening for Jobs"], T).await;
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
    d.wait_log(&["valid, user octocat"], T).await;
    d.wait_log(&["clock offset measured"], T).await;
    d.wait_log(&["deleted a ghost runner"], T).await;
    d.wait_log(&["Listening for Jobs"], T).await;
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
async fn scenario_13_cascade_gives_one_classification_and_no_thrashing() {
    let chrony = Chronyd::start("").await;
    let sb = Sandbox::new();
    let gh = github(|o| o.time_scale = 0.001).await;
    let shift = sb.dir.path().join("faketime");
    std::fs::write(&shift, "+10m\n").unwrap();
    let ft = faketime_file_env(&shift);
    let mut env = sb.env(&gh);
    apply(&mut env, &ft);
    env.insert("SUPERVISOR_RUNNER_ENV".into(), ft.clone());
    env.insert("SUPERVISOR_CLOCK_NTP_SERVERS".into(), chrony.ntp_address());
    env.insert("SUPERVISOR_CLOCK_INTERVAL".into(), "500ms".into());
    env.insert("SUPERVISOR_TOKEN_CHECK_INTERVAL".into(), "500ms".into());
    // Skew, a refused token and a listener retrying, all at once.
    gh.state(|s| s.revoked = true);
    let mut d = Daemon::start(&env, &["run"]).await;
    d.wait_log(&["registrations paused"], T).await;
    d.wait_log(&["GitHub refused the token"], T).await;
    let attempts = gh
        .calls()
        .iter()
        .filter(|c| c.path.ends_with("generate-jitconfig"))
        .count();
    // Fix both.
    gh.state(|s| s.revoked = false);
    std::fs::write(&shift, "+0\n").unwrap();
    d.wait_log(&["clock fixed"], T).await;
    d.wait_log(&["Listening for Jobs"], T).await;
    assert_eq!(d.count(&["registrations paused"]), 1, "one classification");
    assert_eq!(
        d.count(&["GitHub refused the token"]),
        1,
        "logged once, not per attempt"
    );
    assert!(
        attempts <= 1,
        "no registration attempts while the clock is wrong: {attempts}"
    );
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
    d.wait_log(&["Authentication"], T).await;
    let t = std::time::Instant::now();
    d.signal(Signal::SIGTERM);
    d.wait_log(&["config.sh interrupted by shutdown"], T).await;
    assert_eq!(d.wait_exit(T).await.0, Some(0));
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

#[tokio::test]
async fn scenario_17_a_stray_listener_holding_a_session_is_stopped_and_its_runner_deleted() {
    let sb = Sandbox::new();
    let gh = github(|_| {}).await;
    // A stray from an earlier life, started from the runner install, holds a session.
    let host = runner_supervisor::naming::this_host();
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
    d.wait_log(&["stray Runner.Listener"], T).await;
    assert!(
        tokio::time::timeout(T, stray.wait()).await.is_ok(),
        "the stray stopped"
    );
    assert!(wait_gone(stray_pid, Duration::from_secs(5)).await);
    d.wait_log(&["Listening for Jobs"], T).await;
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
async fn scenario_18_a_dependency_killed_mid_run_degrades_health_and_nothing_restarts() {
    let sb = Sandbox::new();
    let gh = github(|_| {}).await;
    let mongo = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = mongo.local_addr().unwrap().to_string();
    let mut env = sb.env(&gh);
    env.insert("SUPERVISOR_HEALTH_DEPENDENCIES".into(), addr.clone());
    env.insert("SUPERVISOR_NETWORK_DNS_INTERVAL".into(), "300ms".into());
    let mut d = Daemon::start(&env, &["run"]).await;
    d.wait_log(&["Listening for Jobs"], T).await;
    drop(mongo);
    d.wait_log(&["dependency unreachable"], T).await;
    let last = wait_health(
        &env,
        &format!("dependency {addr}: unreachable"),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(last.0, Some(0), "degraded, not unhealthy: {}", last.1);
    assert_eq!(d.count(&["listener exited"]), 0, "runners stay up");
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn scenario_19_github_unreachable_during_a_job_is_not_unhealthy_and_restarts_nothing() {
    let sb = Sandbox::new();
    let gh = github(|_| {}).await;
    gh.enqueue(
        JobSpec {
            duration_ms: 4000,
            ..Default::default()
        },
        1,
    );
    let mut env = sb.env(&gh);
    env.insert("SUPERVISOR_HEALTH_UNHEALTHY_AFTER".into(), "1s".into());
    env.insert("SUPERVISOR_GITHUB_MAX_RETRIES".into(), "0".into());
    let mut d = Daemon::start(&env, &["run"]).await;
    d.wait_log(&["Running job: build"], T).await;
    for f in [
        FaultKind::Status { status: 503 },
        FaultKind::RateLimit {
            status: 429,
            retry_after: Some(600),
            primary: false,
        },
    ] {
        gh.fault(Fault {
            body: None,
            method: None,
            path: Some("/repos/".into()),
            kind: f,
            times: 0,
        });
    }
    // While the job runs, health stays healthy however long GitHub is gone.
    let mut seen_busy = 0;
    while gh.state(|s| s.completed.is_empty()) {
        let (code, out) = health(&env);
        if out.contains("0:busy") {
            seen_busy += 1;
            assert_eq!(code, Some(0), "{out}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(seen_busy >= 3, "health was checked during the job");
    d.wait_log(&["job completed"], T).await;
    assert_eq!(gh.state(|s| s.completed[0].result.clone()), "Succeeded");
    assert_eq!(d.count(&["listener exited", "watchdog"]), 0);
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn scenario_20_a_token_revoked_mid_run_degrades_health_and_recovers_by_itself() {
    let sb = Sandbox::new();
    let gh = github(|_| {}).await;
    let mut env = sb.env(&gh);
    env.insert("SUPERVISOR_TOKEN_CHECK_INTERVAL".into(), "500ms".into());
    let mut d = Daemon::start(&env, &["run"]).await;
    d.wait_log(&["Listening for Jobs"], T).await;
    gh.state(|s| s.revoked = true);
    d.wait_log(&["GitHub refused the token"], T).await;
    let last = wait_health(
        &env,
        "token: GitHub refuses the token (401)",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(last.0, Some(0), "degraded: {}", last.1);
    // A job finishes; the next registration is refused and backs off for five minutes...
    gh.enqueue(
        JobSpec {
            duration_ms: 100,
            ..Default::default()
        },
        1,
    );
    let line = d.wait_log(&["registration failed"], T).await;
    assert!(line.contains("wait_s=300"), "{line}");
    // ...until the token works again: then it recovers at once, by itself.
    gh.state(|s| s.revoked = false);
    d.wait_log(&["the token works again"], T).await;
    d.wait_lines(&["Listening for Jobs"], 2, Duration::from_secs(10))
        .await;
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn scenario_21_a_fine_grained_token_passes_preflight_by_a_capability_probe() {
    for (perm, ok) in [("write", true), ("read", false)] {
        let sb = Sandbox::new();
        let gh = github(|o| {
            o.token_kind = TokenKind::FineGrained {
                administration: perm.into(),
                organization_self_hosted_runners: "none".into(),
            }
        })
        .await;
        let out = tokio::process::Command::new(crate::support::supervisor_bin())
            .arg("doctor")
            .env_clear()
            .envs(sb.env(&gh))
            .output()
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .find(|l| l.contains("permissions"))
            .unwrap_or_else(|| panic!("{text}"));
        if ok {
            assert!(
                line.starts_with("[ok  ]") && line.contains("can create registration tokens"),
                "{text}"
            );
        } else {
            assert!(line.starts_with("[FAIL]"), "{text}");
            assert!(
                text.contains("Administration: Read and write"),
                "the fix is named: {text}"
            );
        }
        assert!(
            !text.contains("scopes"),
            "no scope check for fine-grained tokens: {text}"
        );
    }
}

#[tokio::test]
async fn scenario_25_dns_fallback_resolvers_while_the_primary_fails_then_restored() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let port = std::net::UdpSocket::bind("127.0.0.77:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let primary_up = Arc::new(AtomicBool::new(true));
    for (ip, flag) in [
        ("127.0.0.77", Some(primary_up.clone())),
        ("127.0.0.78", None),
    ] {
        let sock = tokio::net::UdpSocket::bind((ip, port)).await.unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                if flag.as_ref().is_none_or(|f| f.load(Ordering::SeqCst)) && n >= 12 {
                    buf[2] |= 0x80; // a response: NOERROR, no answers
                    let _ = sock.send_to(&buf[..n], from).await;
                }
            }
        });
    }
    let sb = Sandbox::new();
    let gh = github(|_| {}).await;
    let resolv = sb.dir.path().join("resolv.conf");
    let original = "search lan\nnameserver 127.0.0.77\n";
    std::fs::write(&resolv, original).unwrap();
    let mut env = sb.env(&gh);
    env.insert(
        "SUPERVISOR_NETWORK_FALLBACK_RESOLVERS".into(),
        "127.0.0.78".into(),
    );
    env.insert(
        "SUPERVISOR_NETWORK_RESOLV_CONF".into(),
        resolv.display().to_string(),
    );
    env.insert("SUPERVISOR_NETWORK_DNS_PORT".into(), port.to_string());
    env.insert("SUPERVISOR_NETWORK_DNS_INTERVAL".into(), "300ms".into());
    let mut d = Daemon::start(&env, &["run"]).await;
    d.wait_log(&["Listening for Jobs"], T).await;
    assert_eq!(
        std::fs::read_to_string(&resolv).unwrap(),
        original,
        "untouched while the primary answers"
    );
    // The VPN cycle breaks the primary resolver.
    primary_up.store(false, Ordering::SeqCst);
    d.wait_log(&["fallback resolvers put first"], T).await;
    let text = std::fs::read_to_string(&resolv).unwrap();
    let first = text.lines().find(|l| l.starts_with("nameserver")).unwrap();
    assert_eq!(first, "nameserver 127.0.0.78", "{text}");
    assert!(
        text.contains("nameserver 127.0.0.77"),
        "the original stays below: {text}"
    );
    primary_up.store(true, Ordering::SeqCst);
    d.wait_log(&["resolv.conf restored"], T).await;
    assert_eq!(std::fs::read_to_string(&resolv).unwrap(), original);
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn keepalive_sysctls_are_set_in_a_network_namespace_of_their_own() {
    let sb = Sandbox::new();
    let gh = github(|_| {}).await;
    let host_before = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_keepalive_time").unwrap();
    let mut env = sb.env(&gh);
    env.insert("SUPERVISOR_NETWORK_SET_SYSCTLS".into(), "on".into());
    env.insert("SUPERVISOR_NETWORK_KEEPALIVE_IDLE".into(), "77s".into());
    env.insert("SUPERVISOR_NETWORK_KEEPALIVE_INTERVAL".into(), "7s".into());
    env.insert("SUPERVISOR_NETWORK_KEEPALIVE_PROBES".into(), "4".into());
    // A new network namespace, as a container has: the sysctls there are its own.
    let mut d = Daemon::start_wrapped(&env, &["unshare", "--net"], &["run"]).await;
    let line = d.wait_log(&["tcp keepalive sysctls in effect"], T).await;
    assert!(
        line.contains("time=77")
            && line.contains("intvl=7")
            && line.contains("probes=4")
            && line.contains("how=\"set\""),
        "{line}"
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/tcp_keepalive_time").unwrap(),
        host_before,
        "the host's are untouched"
    );
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

/// `auto` decides from the network namespace itself, never from a marker file or from
/// being PID 1: in a namespace of its own the sysctls are set; as PID 1 (as in a
/// host-network container) in the machine's namespace, they are left alone.
#[tokio::test]
async fn set_sysctls_auto_sets_them_only_in_a_network_namespace_of_its_own() {
    let read = |k: &str| -> String {
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/{k}"))
            .unwrap()
            .trim()
            .to_string()
    };
    let host = [
        read("tcp_keepalive_time"),
        read("tcp_keepalive_intvl"),
        read("tcp_keepalive_probes"),
    ];
    for (wrapper, how) in [
        (&["unshare", "--net"][..], "how=\"set\""),
        (
            &[
                "unshare",
                "--pid",
                "--fork",
                "--kill-child=SIGKILL",
                "--mount-proc",
            ][..],
            "how=\"unchanged\"",
        ),
    ] {
        let sb = Sandbox::new();
        let gh = github(|_| {}).await;
        let mut env = sb.env(&gh);
        env.insert("SUPERVISOR_NETWORK_SET_SYSCTLS".into(), "auto".into());
        // The machine's own values: even a wrong decision would write nothing new.
        env.insert(
            "SUPERVISOR_NETWORK_KEEPALIVE_IDLE".into(),
            format!("{}s", host[0]),
        );
        env.insert(
            "SUPERVISOR_NETWORK_KEEPALIVE_INTERVAL".into(),
            format!("{}s", host[1]),
        );
        env.insert(
            "SUPERVISOR_NETWORK_KEEPALIVE_PROBES".into(),
            host[2].clone(),
        );
        let mut d = Daemon::start_wrapped(&env, wrapper, &["run"]).await;
        let line = d.wait_log(&["tcp keepalive sysctls in effect"], T).await;
        assert!(line.contains(how), "{wrapper:?}: {line}");
        // unshare --fork forwards nothing: signal the supervisor, its child, directly.
        let child = std::fs::read_to_string(format!("/proc/{}/task/{}/children", d.pid, d.pid))
            .unwrap_or_default();
        let pid = child
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(d.pid);
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGTERM).unwrap();
        assert_eq!(d.wait_exit(T).await.0, Some(0));
    }
}

#[tokio::test]
async fn a_wall_clock_jump_like_a_wsl2_resume_recycles_the_idle_listener_with_one_log_line() {
    let sb = Sandbox::new();
    let gh = github(|_| {}).await;
    let shift = sb.dir.path().join("faketime");
    std::fs::write(&shift, "+0\n").unwrap();
    let mut env = sb.env(&gh);
    apply(&mut env, &faketime_file_env(&shift));
    let mut d = Daemon::start(&env, &["run"]).await;
    d.wait_log(&["Listening for Jobs"], T).await;
    let first = gh.runners()[0].name.clone();
    std::fs::write(&shift, "+2m\n").unwrap();
    let line = d.wait_log(&["wall clock stepped by"], T).await;
    assert!(
        line.contains("+120") && line.contains("treating it as a resume"),
        "{line}"
    );
    d.wait_lines(&["Listening for Jobs"], 2, T).await;
    assert!(gh.state(|s| s.deleted.contains(&first)));
    assert_eq!(d.count(&["wall clock stepped by"]), 1, "one line per jump");
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
        .wait_log(&["listener exited", "session_conflict"], T)
        .await;
    d.wait_lines(&["Listening for Jobs"], 1, T).await;
    let listening = d
        .log()
        .into_iter()
        .find(|l| l.contains("Listening for Jobs"))
        .unwrap();
    let ts = |l: &str| {
        chrono::DateTime::parse_from_rfc3339(l.split_whitespace().next().unwrap()).unwrap()
    };
    let waited = ts(&listening) - ts(&exited);
    assert!(
        waited >= chrono::Duration::seconds(2),
        "re-registered after {waited}"
    );
    assert!(
        d.count(&["SIGKILL"]) == 0,
        "SIGINT and the grace first, always"
    );
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn the_token_expiry_is_warned_about_from_14_days_before() {
    let sb = Sandbox::new();
    let soon = (chrono::Utc::now() + chrono::Duration::days(3))
        .format("%Y-%m-%d %H:%M:%S UTC")
        .to_string();
    let gh = github(|o| o.token_expiration = Some(soon)).await;
    let mut env = sb.env(&gh);
    env.insert("SUPERVISOR_TOKEN_CHECK_INTERVAL".into(), "500ms".into());
    let mut d = Daemon::start(&env, &["run"]).await;
    let line = d.wait_log(&["expires in"], T).await;
    assert!(
        line.contains("expires in 2 days") || line.contains("expires in 3 days"),
        "{line}"
    );
    let (code, out) = wait_health(&env, "token expiry: expires in", Duration::from_secs(5)).await;
    assert_eq!(code, Some(0), "a warning, not a failure: {out}");
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

/// A DNS server on `ip:53` answering A queries for `name` with 127.0.0.1 while `up`, and
/// SERVFAIL otherwise (AAAA: no answers).
async fn fake_dns(ip: &str, name: &'static str, up: std::sync::Arc<std::sync::atomic::AtomicBool>) {
    let sock = tokio::net::UdpSocket::bind((ip, 53))
        .await
        .expect("bind port 53 (root)");
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            if n < 17 {
                continue;
            }
            // The question: labels, then type and class.
            let mut i = 12;
            let mut labels = vec![];
            while i < n && buf[i] != 0 {
                let len = buf[i] as usize;
                labels
                    .push(String::from_utf8_lossy(&buf[i + 1..(i + 1 + len).min(n)]).into_owned());
                i += 1 + len;
            }
            let qend = i + 5;
            if qend > n {
                continue;
            }
            let qtype = u16::from_be_bytes([buf[i + 1], buf[i + 2]]);
            let mut resp = buf[..qend].to_vec();
            resp[2] = 0x81; // QR, RD
            let ok = up.load(std::sync::atomic::Ordering::SeqCst);
            resp[3] = if ok { 0x80 } else { 0x82 }; // RA; NOERROR or SERVFAIL
            resp[6..12].copy_from_slice(&[0, 0, 0, 0, 0, 0]);
            if ok && qtype == 1 && labels.join(".").eq_ignore_ascii_case(name) {
                resp[7] = 1; // one answer
                resp.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4, 127, 0, 0, 1]);
            }
            let _ = sock.send_to(&resp, from).await;
        }
    });
}

#[tokio::test]
async fn the_api_host_is_resolved_periodically_and_a_failure_reported() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let up = std::sync::Arc::new(AtomicBool::new(false));
    fake_dns("127.0.0.79", "gh.test", up.clone()).await;
    let sb = Sandbox::new();
    let gh = github(|_| {}).await;
    let resolv = sb.dir.path().join("resolv.conf");
    std::fs::write(
        &resolv,
        "nameserver 127.0.0.79\noptions timeout:1 attempts:1\n",
    )
    .unwrap();
    let mut env = sb.env(&gh);
    env.insert(
        "SUPERVISOR_GITHUB_API_URL".into(),
        format!("http://gh.test:{}", gh.addr().port()),
    );
    env.insert("SUPERVISOR_NETWORK_DNS_INTERVAL".into(), "300ms".into());
    // Its own mount namespace, where /etc/resolv.conf is ours: no query leaves the machine.
    let wrapper = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        &format!(
            "mount --bind {} /etc/resolv.conf && exec \"$0\" \"$@\"",
            resolv.display()
        ),
    ];
    let mut d = Daemon::start_wrapped(&env, &wrapper, &["run"]).await;
    d.wait_log(&["cannot resolve the API host"], T).await;
    wait_health(&env, "dns: cannot resolve gh.test", Duration::from_secs(5)).await;
    // The resolver recovers: so does everything else, by itself.
    up.store(true, Ordering::SeqCst);
    d.wait_log(&["the API host resolves again"], T).await;
    d.wait_log(&["Listening for Jobs"], T).await;
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}
