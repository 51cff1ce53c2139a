//! The clock against a real chronyd (started with -x, serving NTP on a loopback port),
//! with the supervisor's wall clock shifted by libfaketime; the machine's clock is never
//! touched. Ghostrunner scenarios 1, 2, 3, 5, 6 and 27.

use std::collections::BTreeMap;
use std::time::Duration;

use nix::sys::signal::Signal;
use sim::github::JobSpec;

use crate::support::events::Event;
use crate::support::{
    apply, eventually, faketime_env, faketime_file_env, github, health, setup, wait_health,
    Chronyd, Cli, Daemon, Sandbox, NOBODY,
};

const T: Duration = Duration::from_secs(60);

/// The signed offset an event carries (`offset_s`, `+7.012`).
fn offset_of(e: &Event) -> f64 {
    e.str("offset_s")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no offset in {e:?}"))
}

/// The first measured offset, at whichever level it was logged.
async fn first_offset(d: &Daemon) -> Event {
    tokio::select! {
        e = d.wait_event("clock_offset", T) => e,
        e = d.wait_event("clock_offset_warn", T) => e,
        e = d.wait_event("clock_fault", T) => e,
    }
}

/// The environment for watching chronyd through its command port, every second.
fn watch_chronyd(env: &mut BTreeMap<String, String>, chrony: &Chronyd) {
    env.insert("SUPERVISOR_CLOCK_CHRONYC".into(), "required".into());
    env.insert(
        "SUPERVISOR_CLOCK_CHRONYC_ADDRESS".into(),
        chrony.cmd_address(),
    );
    env.insert("SUPERVISOR_CLOCK_INTERVAL".into(), "1s".into());
}

#[tokio::test]
async fn measured_offset_equals_the_faketime_shift_within_50ms() {
    let chrony = Chronyd::start("").await;
    for (shift, secs) in [("+7s", 7.0), ("-3s", -3.0)] {
        let (_sb, _gh, mut env) = setup(|_| {}).await;
        env.insert("SUPERVISOR_CLOCK_NTP_SERVERS".into(), chrony.ntp_address());
        env.extend(faketime_env(shift));
        let mut d = Daemon::start(&env, &["run"]).await;
        let measured = first_offset(&d).await;
        let offset = offset_of(&measured);
        assert!(
            (offset - secs).abs() <= 0.05,
            "shift {shift}: measured {offset}: {measured:?}"
        );
        assert!(
            measured.is("source", &format!("ntp {}", chrony.ntp_address())),
            "{measured:?}"
        );
        d.signal(Signal::SIGTERM);
        assert_eq!(d.wait_exit(T).await.0, Some(0));
    }
}

#[tokio::test]
async fn scenario_03_clock_90s_behind_is_detected_within_60s_and_the_idle_listener_kept() {
    let chrony = Chronyd::start("").await;
    let (_sb, gh, mut env) = setup(|_| {}).await;
    env.insert("SUPERVISOR_CLOCK_NTP_SERVERS".into(), chrony.ntp_address());
    env.extend(faketime_env("-90s"));
    let mut d = Daemon::start(&env, &["run"]).await;
    let t = std::time::Instant::now();
    // Beyond the warning threshold (2 s).
    let warned = d.wait_event("clock_offset_warn", T).await;
    assert!(t.elapsed() < Duration::from_secs(60));
    assert!(
        (offset_of(&warned) + 90.0).abs() < 0.05,
        "signed offset logged: {warned:?}"
    );
    // 90 s is not a fault (the runner's OAuth tolerates five minutes): nothing is restarted.
    d.wait_listening(1, T).await;
    let name = gh.runners()[0].name.clone();
    gh.enqueue(JobSpec::default(), 1);
    d.wait_events("listener_exited", |e| e.is("reason", "job_done"), 1, T)
        .await;
    assert_eq!(gh.state(|s| s.completed[0].runner.clone()), name);
    assert_eq!(
        d.count_events("listener_exited", |_| true),
        1,
        "only the job's own exit"
    );
    assert_eq!(d.count_events("clock_fault", |_| true), 0);
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn scenario_05_skew_beyond_five_minutes_pauses_registrations_until_fixed() {
    let chrony = Chronyd::start("").await;
    let sb = Sandbox::new();
    let gh = github(|o| o.time_scale = 0.001).await;
    let shift = sb.dir.path().join("faketime");
    std::fs::write(&shift, "+10m\n").unwrap();
    let ft = faketime_file_env(&shift);
    let mut env = sb.env(&gh);
    env.insert("SUPERVISOR_CLOCK_NTP_SERVERS".into(), chrony.ntp_address());
    env.insert("SUPERVISOR_CLOCK_INTERVAL".into(), "1s".into());
    // The supervisor and the runner share the host's (shifted) clock.
    apply(&mut env, &ft);
    env.insert("SUPERVISOR_RUNNER_ENV".into(), ft.clone());
    let mut d = Daemon::start(&env, &["run"]).await;
    d.wait_event("clock_fault", T).await;
    d.wait_event("clock_pause", T).await;
    let before = gh
        .calls()
        .iter()
        .filter(|c| c.path.ends_with("generate-jitconfig"))
        .count();
    assert!(
        before <= 1,
        "no registration storm while the clock is wrong: {before}"
    );
    // chronyd (or the operator) fixes the clock.
    std::fs::write(&shift, "+0\n").unwrap();
    d.wait_event("clock_fixed", T).await;
    d.wait_listening(1, T).await;
    assert_eq!(
        d.count_events("clock_pause", |_| true),
        1,
        "one classification, no thrashing"
    );
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn scenario_01_a_broken_time_daemon_config_is_reported_within_one_interval() {
    let mut chrony = Chronyd::start("minpoll 4\n").await;
    assert!(
        !chrony.running(),
        "a global minpoll must make chronyd refuse its config"
    );
    let (_sb, _gh, mut env) = setup(|_| {}).await;
    watch_chronyd(&mut env, &chrony);
    let mut d = Daemon::start(&env, &["run"]).await;
    d.wait_event("chronyd_down", Duration::from_secs(5)).await;
    wait_health(
        &env,
        "chronyd: time daemon not running",
        Duration::from_secs(10),
    )
    .await;
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn scenario_06_time_daemon_killed_mid_run_is_reported_and_the_monitor_survives() {
    let mut chrony = Chronyd::start("").await;
    let (sb, _gh, mut env) = setup(|_| {}).await;
    watch_chronyd(&mut env, &chrony);
    let mut d = Daemon::start(&env, &["run"]).await;
    d.wait_event("chronyd_state", T).await;
    sb.wait_status(T, |s| {
        s.system.clock.chronyd.as_deref() == Some("synchronised")
    })
    .await;
    chrony.kill();
    let down = d.wait_event("chronyd_down", Duration::from_secs(5)).await;
    assert!(down.is("address", &chrony.cmd_address()), "{down:?}");
    // Wording under test: the operator is told the supervisor cannot restart chronyd.
    assert!(
        down.str("message")
            .is_some_and(|m| m.contains("cannot restart it")),
        "{down:?}"
    );
    let mut last = (None, String::new());
    assert!(
        eventually(Duration::from_secs(10), || {
            last = health(&env);
            last.1.contains("3 consecutive failed checks")
        })
        .await,
        "degraded after three failures: {last:?}"
    );
    assert_eq!(last.0, Some(0), "degraded, not unhealthy");
    // The monitor keeps checking and the supervisor keeps running.
    d.wait_listening(1, T).await;
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn scenario_02_clock_checks_work_as_an_unprivileged_user() {
    let chrony = Chronyd::start("").await;
    let gh = github(|_| {}).await;
    let sb = Sandbox::new();
    let mut env = sb.env(&gh);
    watch_chronyd(&mut env, &chrony);
    env.insert("SUPERVISOR_CLOCK_NTP_SERVERS".into(), chrony.ntp_address());
    // Async: the fake GitHub runs on this test's runtime and must keep answering.
    let out = Cli::wrapped(&env, &NOBODY, &["doctor", "--json"])
        .run_async()
        .await;
    let report: serde_json::Value = out.json();
    let check = |name: &str| {
        report["checks"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"] == name))
            .unwrap_or_else(|| panic!("{name} missing: {report:#}"))
            .clone()
    };
    let chronyd = check("chronyd");
    assert!(
        chronyd["status"] == "pass"
            && chronyd["reason"]
                .as_str()
                .is_some_and(|r| r.contains("synchronised")),
        "{report:#}"
    );
    assert_eq!(check("ntp")["status"], "pass", "{report:#}");
}

#[tokio::test]
async fn scenario_27_only_one_supervisor_disciplines_the_clock() {
    let chrony = Chronyd::start("").await;
    let gh = github(|_| {}).await;
    let lock = tempfile::tempdir().unwrap();
    let mut daemons = vec![];
    let mut sandboxes = vec![];
    for i in 0..2 {
        let sb = Sandbox::new();
        let mut env = sb.env(&gh);
        env.insert("RUNNER_NAME".into(), format!("sup{i}"));
        env.insert("SUPERVISOR_CLOCK_MAKESTEP".into(), "true".into());
        env.insert("SUPERVISOR_CLOCK_CHRONYC".into(), "required".into());
        env.insert(
            "SUPERVISOR_CLOCK_CHRONYC_ADDRESS".into(),
            chrony.cmd_address(),
        );
        env.insert(
            "SUPERVISOR_CLOCK_LOCK_FILE".into(),
            lock.path().join("clock.lock").display().to_string(),
        );
        let d = Daemon::start(&env, &["run"]).await;
        d.wait_listening(1, T).await;
        daemons.push(d);
        sandboxes.push(sb);
    }
    let count =
        |name: &str| -> usize { daemons.iter().map(|d| d.count_events(name, |_| true)).sum() };
    let (leaders, monitors) = (count("clock_lock_held"), count("clock_monitor_only"));
    assert_eq!((leaders, monitors), (1, 1));
    assert_eq!(
        daemons[0].count_events("clock_lock_held", |_| true),
        1,
        "the first one leads"
    );
    for mut d in daemons {
        d.signal(Signal::SIGTERM);
        assert_eq!(d.wait_exit(T).await.0, Some(0));
    }
}

#[tokio::test]
async fn the_runners_own_clock_skew_line_is_the_clocks_fault_not_unknown() {
    // The host's clock measures fine; only the runner's OAuth says it is off.
    let sb = Sandbox::new();
    let gh = github(|o| o.time_scale = 0.001).await;
    gh.script(sim::protocol::Script::ClockSkew);
    let mut env = sb.env(&gh);
    env.insert("SUPERVISOR_CLOCK_INTERVAL".into(), "1s".into());
    let mut d = Daemon::start(&env, &["run"]).await;
    let warned = d.wait_event("clock_skew", T).await;
    assert_eq!(warned.level, "WARN", "{warned:?}");
    assert_eq!(warned.u64("slot"), Some(0), "{warned:?}");
    let exited = d
        .wait_events("listener_exited", |e| e.is("reason", "clock_skew"), 1, T)
        .await;
    assert!(exited.is("ended", "Code(1)"), "{exited:?}");
    // The measurement finds the clock fine: the next listener listens.
    d.wait_listening(1, T).await;
    let unknown: Vec<Event> = d
        .events()
        .into_iter()
        .filter(|e| e.is("reason", "unknown") || e.is("cause", "unknown"))
        .collect();
    assert!(unknown.is_empty(), "{unknown:#?}");
    let v = crate::support::status(&env);
    let last = v.slots[0].last_exit.clone().unwrap_or_default();
    assert!(last.starts_with("clock_skew"), "{v:?}");
    d.signal(Signal::SIGTERM);
    let (code, summary) = d.wait_summary(T).await;
    assert_eq!(code, Some(0));
    assert_eq!(summary.exits.get("clock_skew"), Some(&1), "{summary:?}");
}
