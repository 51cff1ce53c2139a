//! The clock against a real chronyd (started with -x, serving NTP on a loopback port),
//! with the supervisor's wall clock shifted by libfaketime; the machine's clock is never
//! touched. Ghostrunner scenarios 1, 2, 3, 5, 6 and 27.

use std::time::Duration;

use nix::sys::signal::Signal;
use sim::github::JobSpec;

use crate::support::{
    eventually, faketime_env, github, health, libfaketime, wait_health, Chronyd, Daemon, Sandbox,
};

const T: Duration = Duration::from_secs(60);

fn offset_of(line: &str) -> f64 {
    let v = line
        .split("offset_s=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_else(|| panic!("no offset in {line}"));
    v.parse().unwrap()
}

#[tokio::test]
async fn measured_offset_equals_the_faketime_shift_within_50ms() {
    let chrony = Chronyd::start("").await;
    for (shift, secs) in [("+7s", 7.0), ("-3s", -3.0)] {
        let sb = Sandbox::new();
        let gh = github(|_| {}).await;
        let mut env = sb.env(&gh);
        env.insert("SUPERVISOR_CLOCK_NTP_SERVERS".into(), chrony.ntp_address());
        env.extend(faketime_env(shift));
        let mut d = Daemon::start(&env, &["run"]).await;
        let line = d.wait_log(&["offset_s="], T).await;
        let measured = offset_of(&line);
        assert!(
            (measured - secs).abs() <= 0.05,
            "shift {shift}: measured {measured}: {line}"
        );
        assert!(
            line.contains(&format!("ntp {}", chrony.ntp_address())),
            "{line}"
        );
        d.signal(Signal::SIGTERM);
        assert_eq!(d.wait_exit(T).await.0, Some(0));
    }
}

#[tokio::test]
async fn scenario_03_clock_90s_behind_is_detected_within_60s_and_the_idle_listener_kept() {
    let chrony = Chronyd::start("").await;
    let sb = Sandbox::new();
    let gh = github(|_| {}).await;
    let mut env = sb.env(&gh);
    env.insert("SUPERVISOR_CLOCK_NTP_SERVERS".into(), chrony.ntp_address());
    env.extend(faketime_env("-90s"));
    let mut d = Daemon::start(&env, &["run"]).await;
    let t = std::time::Instant::now();
    let line = d.wait_log(&["clock offset beyond 2s"], T).await;
    assert!(t.elapsed() < Duration::from_secs(60));
    assert!(
        (offset_of(&line) + 90.0).abs() < 0.05,
        "signed offset logged: {line}"
    );
    // 90 s is not a fault (the runner's OAuth tolerates five minutes): nothing is restarted.
    d.wait_log(&["Listening for Jobs"], T).await;
    let name = gh.runners()[0].name.clone();
    gh.enqueue(JobSpec::default(), 1);
    d.wait_log(&["listener exited", "job_done"], T).await;
    assert_eq!(gh.state(|s| s.completed[0].runner.clone()), name);
    assert_eq!(d.count(&["listener exited"]), 1, "only the job's own exit");
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
    let ft = format!(
        "LD_PRELOAD={},FAKETIME_TIMESTAMP_FILE={},FAKETIME_NO_CACHE=1,FAKETIME_DONT_FAKE_MONOTONIC=1",
        libfaketime(),
        shift.display()
    );
    let mut env = sb.env(&gh);
    env.insert("SUPERVISOR_CLOCK_NTP_SERVERS".into(), chrony.ntp_address());
    env.insert("SUPERVISOR_CLOCK_INTERVAL".into(), "1s".into());
    // The supervisor and the runner share the host's (shifted) clock.
    for kv in ft.split(',') {
        let (k, v) = kv.split_once('=').unwrap();
        env.insert(k.into(), v.into());
    }
    env.insert("SUPERVISOR_RUNNER_ENV".into(), ft.clone());
    let mut d = Daemon::start(&env, &["run"]).await;
    d.wait_log(&["clock fault"], T).await;
    d.wait_log(&["registrations paused"], T).await;
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
    d.wait_log(&["clock fixed"], T).await;
    d.wait_log(&["Listening for Jobs"], T).await;
    assert_eq!(
        d.count(&["registrations paused"]),
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
    let sb = Sandbox::new();
    let gh = github(|_| {}).await;
    let mut env = sb.env(&gh);
    env.insert("SUPERVISOR_CLOCK_CHRONYC".into(), "required".into());
    env.insert(
        "SUPERVISOR_CLOCK_CHRONYC_ADDRESS".into(),
        chrony.cmd_address(),
    );
    env.insert("SUPERVISOR_CLOCK_INTERVAL".into(), "1s".into());
    let mut d = Daemon::start(&env, &["run"]).await;
    d.wait_log(&["time daemon not running"], Duration::from_secs(5))
        .await;
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
    let sb = Sandbox::new();
    let gh = github(|_| {}).await;
    let mut env = sb.env(&gh);
    env.insert("SUPERVISOR_CLOCK_CHRONYC".into(), "required".into());
    env.insert(
        "SUPERVISOR_CLOCK_CHRONYC_ADDRESS".into(),
        chrony.cmd_address(),
    );
    env.insert("SUPERVISOR_CLOCK_INTERVAL".into(), "1s".into());
    let mut d = Daemon::start(&env, &["run"]).await;
    d.wait_log(&["time daemon synchronised"], T).await;
    chrony.kill();
    let line = d
        .wait_log(&["time daemon not running"], Duration::from_secs(5))
        .await;
    assert!(line.contains("cannot restart it"), "{line}");
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
    d.wait_log(&["Listening for Jobs"], T).await;
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn scenario_02_clock_checks_work_as_an_unprivileged_user() {
    let chrony = Chronyd::start("").await;
    let gh = github(|_| {}).await;
    let sb = Sandbox::new();
    let mut env = sb.env(&gh);
    env.insert("SUPERVISOR_CLOCK_CHRONYC".into(), "required".into());
    env.insert(
        "SUPERVISOR_CLOCK_CHRONYC_ADDRESS".into(),
        chrony.cmd_address(),
    );
    env.insert("SUPERVISOR_CLOCK_NTP_SERVERS".into(), chrony.ntp_address());
    env.insert("PATH".into(), std::env::var("PATH").unwrap());
    // Async: the fake GitHub runs on this test's runtime and must keep answering.
    let out = tokio::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(crate::support::supervisor_bin())
        .arg("doctor")
        .env_clear()
        .envs(&env)
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = |name: &str| {
        text.lines()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
            .to_string()
    };
    assert!(
        line("chronyd").starts_with("pass ") && line("chronyd").contains("synchronised"),
        "{text}"
    );
    assert!(line("ntp").starts_with("pass "), "{text}");
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
        d.wait_log(&["Listening for Jobs"], T).await;
        daemons.push(d);
        sandboxes.push(sb);
    }
    let leaders: usize = daemons
        .iter()
        .map(|d| d.count(&["may ask chronyd to step"]))
        .sum();
    let monitors: usize = daemons
        .iter()
        .map(|d| d.count(&["stays monitor-only"]))
        .sum();
    assert_eq!((leaders, monitors), (1, 1));
    assert_eq!(
        daemons[0].count(&["may ask chronyd to step"]),
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
    let warned = d
        .wait_log(
            &["the runner says the clock is more than five minutes off"],
            T,
        )
        .await;
    assert!(warned.contains("WARN"), "{warned}");
    let exited = d
        .wait_log(&["listener exited", "reason=\"clock_skew\""], T)
        .await;
    assert!(exited.contains("Code(1)"), "{exited}");
    // The measurement finds the clock fine: the next listener listens.
    d.wait_log(&["Listening for Jobs"], T).await;
    assert_eq!(d.count(&["reason=\"unknown\""]), 0);
    assert_eq!(d.count(&["cause=\"unknown\""]), 0);
    let v = crate::support::status(&env);
    let last = v.slots[0].last_exit.clone().unwrap_or_default();
    assert!(last.starts_with("clock_skew"), "{v:?}");
    d.signal(Signal::SIGTERM);
    let (code, summary) = d.wait_exit(T).await;
    assert_eq!(code, Some(0));
    assert!(summary.contains("clock_skew=1"), "{summary}");
}
