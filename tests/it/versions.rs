//! Runner versions through the real binary: the installed version, the newest release and
//! GitHub's real deadline for it (the deprecations endpoint), in status (text and JSON),
//! `/metrics`, health and `doctor`; read once at start, not again within the day; a
//! server without the endpoint (GHES) is "unknown", not an error.

use std::time::Duration;

use chrono::Utc;
use nix::sys::signal::Signal;
use sim::protocol::RUNNER_VERSION;

use crate::doctor::doctor;
use crate::metrics::http_get;
use crate::support::{cli, setup, wait_health, Daemon};

const T: Duration = Duration::from_secs(60);

fn deprecation_calls(gh: &sim::github::FakeGithub) -> usize {
    gh.calls()
        .iter()
        .filter(|c| c.path.contains("/actions/runners/deprecations/"))
        .count()
}

#[tokio::test]
async fn a_deadline_within_21_days_is_shown_everywhere_and_doctor_warns_with_the_fix() {
    let deadline = Utc::now() + chrono::Duration::days(10) + chrono::Duration::hours(1);
    let (sb, gh, mut env) = setup(|o| {
        o.latest_runner_version = "2.339.0".into();
        o.deprecations.insert(RUNNER_VERSION.into(), Some(deadline));
    })
    .await;
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    env.insert("SUPERVISOR_METRICS_LISTEN".into(), metrics.to_string());
    let mut d = Daemon::run_listening(&env, 1, T).await;
    let s = sb
        .wait_status(T, |s| {
            s.system.runner.deadline == "dated" && s.system.runner.latest.is_some()
        })
        .await;
    let r = &s.system.runner;
    assert_eq!(r.version.as_deref(), Some(RUNNER_VERSION), "{r:?}");
    assert_eq!(r.latest.as_deref(), Some("2.339.0"), "{r:?}");
    assert_eq!(
        r.runtime_deprecates_at.map(|t| t.timestamp()),
        Some(deadline.timestamp())
    );
    assert_eq!(r.days_left, Some(10), "{r:?}");
    assert!(r.checked_at.is_some());
    let e = d.wait_event("runner_deadline", T).await;
    assert!(
        e.is("version", RUNNER_VERSION) && e.is("deadline", "dated"),
        "{e:?}"
    );

    // Status text, health (a note, still Ok), metrics.
    let text = cli(&env, &["status"]).stdout;
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("runner "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.contains(RUNNER_VERSION)
            && line.contains("newest release 2.339.0")
            && line.contains("in 10 days"),
        "{line}"
    );
    let (code, health) = wait_health(&env, "runner version", Duration::from_secs(5)).await;
    assert_eq!(code, Some(0), "a note, not a fault: {health}");
    let (_, _, body) = http_get(metrics, "/metrics");
    let info = body
        .lines()
        .find(|l| l.starts_with("runner_supervisor_runner_version_info{"))
        .unwrap_or_else(|| panic!("{body}"));
    assert!(
        info.contains(&format!("version=\"{RUNNER_VERSION}\"")) && info.ends_with(" 1"),
        "{info}"
    );
    let stamp = body
        .lines()
        .find(|l| l.starts_with("runner_supervisor_runner_version_deadline_timestamp_seconds "))
        .unwrap_or_else(|| panic!("{body}"));
    assert_eq!(
        stamp.split(' ').nth(1).unwrap().parse::<f64>().unwrap() as i64,
        deadline.timestamp()
    );
    // Read once at start, not again within the day.
    assert_eq!(deprecation_calls(&gh), 1);

    // doctor: a warning (exit 1) that names the deadline and the fix.
    let doc = doctor(&env).await;
    assert_eq!(doc.status("runner version"), "warn", "{:#}", doc.json);
    let reason = doc.reason("runner version");
    assert!(
        reason.contains("in 10 days") && reason.contains("2.339.0 is the newest release"),
        "{reason}"
    );
    assert!(
        doc.fix("runner version").contains("2.339.0"),
        "{}",
        doc.fix("runner version")
    );
    assert!(
        !reason.contains("30 days"),
        "the fixed rule is gone: {reason}"
    );
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn past_the_deadline_health_is_degraded_and_doctor_fails() {
    let past = "2026-11-05T00:00:00Z".parse().unwrap();
    let (sb, _gh, env) = setup(|o| {
        o.deprecations.insert(RUNNER_VERSION.into(), Some(past));
    })
    .await;
    let mut d = Daemon::run_listening(&env, 1, T).await;
    let s = sb
        .wait_status(T, |s| s.system.runner.deadline == "dated")
        .await;
    assert!(
        s.system.runner.days_left.unwrap() < 0,
        "{:?}",
        s.system.runner
    );
    let (code, health) =
        wait_health(&env, "past its runtime deadline", Duration::from_secs(5)).await;
    assert_eq!(code, Some(0), "degraded, not unhealthy: {health}");
    assert!(health.starts_with("Degraded"), "{health}");
    let text = cli(&env, &["status"]).stdout;
    assert!(
        text.contains("2026-11-05") && text.contains("PAST"),
        "{text}"
    );
    let doc = doctor(&env).await;
    assert_eq!(doc.code, Some(2), "{:#}", doc.json);
    assert_eq!(doc.status("runner version"), "fail");
    assert!(
        doc.reason("runner version").contains("2026-11-05"),
        "{}",
        doc.reason("runner version")
    );
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn a_server_without_the_deprecations_endpoint_means_unknown_not_an_error() {
    let (sb, gh, env) = setup(|o| o.deprecations_endpoint = false).await;
    let mut d = Daemon::run_listening(&env, 1, T).await;
    let s = sb
        .wait_status(T, |s| s.system.runner.deadline == "unknown")
        .await;
    assert_eq!(s.system.runner.runtime_deprecates_at, None);
    assert_eq!(d.count_events("runner_deadline_failed", |_| true), 0);
    assert_eq!(deprecation_calls(&gh), 1);
    let (code, health) = crate::support::health(&env);
    assert_eq!(code, Some(0));
    assert!(!health.contains("runner version"), "{health}");
    let doc = doctor(&env).await;
    assert_eq!(doc.status("runner version"), "pass", "{:#}", doc.json);
    assert!(doc.reason("runner version").contains("unknown"));
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

/// A runner that claims `version` (the fake reads `bin/sim-version`).
fn claims(sb: &crate::support::Sandbox, version: &str) {
    std::fs::write(sb.install.join("bin/sim-version"), version).unwrap();
}

#[tokio::test]
async fn before_2_337_0_a_deprecated_line_github_does_not_confirm_is_a_network_fault_not_a_pause() {
    // 2.336.0 with no date at GitHub: the line came from a 403 (actions/runner #4613).
    let (sb, gh, mut env) = setup(|o| {
        o.deprecations.insert("2.336.0".into(), None);
    })
    .await;
    claims(&sb, "2.336.0");
    gh.script(sim::protocol::Script::VersionDeprecated);
    env.insert("SUPERVISOR_RUNNER_FAILURE_BACKOFF".into(), "100ms".into());
    let mut d = Daemon::start(&env, &["run"]).await;
    let exited = d.wait_event("listener_exited", T).await;
    assert!(exited.is("reason", "version_deprecated"), "{exited:?}");
    let e = d.wait_event("deprecation_unconfirmed", T).await;
    assert!(e.is("version", "2.336.0"), "{e:?}");
    let fire = d.wait_event("watchdog_fire", T).await;
    assert!(
        fire.is("cause", "network") && fire.has("detail", "#4613"),
        "{fire:?}"
    );
    let failed = d.wait_event("listener_failed", T).await;
    assert_eq!(failed.u64("failures"), Some(1), "{failed:?}");
    // It goes on: the next listener listens, and the slot was never paused.
    d.wait_listening(2, T).await;
    assert_eq!(d.count_events("runner_deprecated", |_| true), 0);
    let s = crate::support::status(&env);
    assert_eq!(
        s.slots[0].state,
        runner_supervisor::status::SlotState::Listening
    );
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn before_2_337_0_a_deprecation_github_confirms_pauses_the_slot() {
    // 2.336.0: GitHub dates its runtime deadline 2026-11-05, in the past.
    let (sb, gh, env) = setup(|_| {}).await;
    claims(&sb, "2.336.0");
    gh.script(sim::protocol::Script::VersionDeprecated);
    let mut d = Daemon::start(&env, &["run"]).await;
    let e = d.wait_event("deprecation_confirmed", T).await;
    assert!(e.is("version", "2.336.0"), "{e:?}");
    d.wait_event("runner_deprecated", T).await;
    sb.wait_status(T, |s| {
        s.slots[0].state == runner_supervisor::status::SlotState::Paused
    })
    .await;
    assert_eq!(d.count_events("watchdog_fire", |_| true), 0);
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}
