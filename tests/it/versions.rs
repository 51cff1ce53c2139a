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
async fn past_the_deadline_github_refuses_jobs_health_says_why_and_doctor_fails() {
    // The newest release itself dated in the past: nothing newer to move to, so the
    // broker's refusal pauses the slot.
    let past = "2026-11-05T00:00:00Z".parse().unwrap();
    let (sb, _gh, env) = setup(|o| {
        o.deprecations.insert(RUNNER_VERSION.into(), Some(past));
    })
    .await;
    let mut d = Daemon::start(&env, &["run"]).await;
    // The fake broker refuses it messages by date, with the runner's own line.
    let e = d.wait_event("runner_deprecated", T).await;
    assert!(e.is("version", RUNNER_VERSION), "{e:?}");
    let s = sb
        .wait_status(T, |s| s.system.runner.deadline == "dated")
        .await;
    assert!(
        s.system.runner.days_left.unwrap() < 0,
        "{:?}",
        s.system.runner
    );
    // health reads status.json, written a moment after the slot pauses.
    let (code, health) = wait_health(&env, "slot 0 paused", Duration::from_secs(5)).await;
    assert_ne!(code, Some(0), "no slot can take a job: {health}");
    assert!(health.contains("past its runtime deadline"), "{health}");
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
    // The broker answers one bare 403 (a proxy, a VPN, an outage): before 2.337.0 the
    // runner reports it as "deprecated".
    gh.fault(sim::github::Fault {
        method: Some("GET".into()),
        path: Some("/message".into()),
        body: None,
        kind: sim::github::FaultKind::Status { status: 403 },
        times: 1,
    });
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
    // 2.336.0: GitHub dates its runtime deadline 2026-11-05, in the past. With
    // auto_update off the slot pauses, naming the exact fix.
    let (sb, gh, mut env) = setup(|_| {}).await;
    env.insert("SUPERVISOR_RUNNER_AUTO_UPDATE".into(), "off".into());
    claims(&sb, "2.336.0");
    gh.script(sim::protocol::Script::VersionDeprecated);
    let mut d = Daemon::start(&env, &["run"]).await;
    let e = d.wait_event("deprecation_confirmed", T).await;
    assert!(e.is("version", "2.336.0"), "{e:?}");
    let e = d.wait_event("runner_deprecated", T).await;
    assert!(e.is("version", "2.336.0"), "{e:?}");
    let s = sb
        .wait_status(T, |s| {
            s.slots[0].state == runner_supervisor::status::SlotState::Paused
        })
        .await;
    // The exact fix: the newest release by name and where to get it, once the version
    // watch has read it (its first round runs beside the slots' start).
    let error = s.slots[0].error.clone().unwrap_or_default();
    let named = format!("install actions/runner {RUNNER_VERSION} (https://github.com/actions/runner/releases/tag/v{RUNNER_VERSION})");
    assert!(
        error.contains("(2.336.0) is too old")
            && (error.contains(&named)
                || error.contains("install the newest actions/runner release"))
            && error.contains("and restart the supervisor"),
        "{error}"
    );
    assert_eq!(d.count_events("watchdog_fire", |_| true), 0);
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

mod store {
    //! The versions directory through the library: a download verified and renamed into
    //! place, shared by two supervisors, a bad checksum refused, an interrupted install
    //! cleaned up.

    use runner_supervisor::github::GithubClient;
    use runner_supervisor::runner::store::{Store, StoreError};

    use crate::support::{github, sim_bin};

    async fn fake(f: impl FnOnce(&mut sim::github::Options)) -> sim::github::FakeGithub {
        github(|o| {
            o.runner_binary = Some(sim_bin("fake-runner"));
            o.latest_runner_version = "2.339.0".into();
            f(o);
        })
        .await
    }

    fn client(gh: &sim::github::FakeGithub) -> GithubClient {
        crate::github_client::client(gh, &[])
    }

    async fn newest(c: &GithubClient) -> runner_supervisor::github::RunnerApplication {
        let apps = c.runner_downloads().await.unwrap();
        assert_eq!(apps.len(), 1, "{apps:?}");
        apps[0].clone()
    }

    #[tokio::test]
    async fn a_release_is_verified_unpacked_into_place_and_downloaded_once_for_two_supervisors() {
        let gh = fake(|_| {}).await;
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (client(&gh), client(&gh));
        let app = newest(&a).await;
        let (sa, sb) = (
            Store::open(dir.path()).unwrap(),
            Store::open(dir.path()).unwrap(),
        );
        // Two supervisors sharing the directory ask at once: one downloads.
        let (ra, rb) = tokio::join!(
            sa.install(&a, "2.339.0", &app),
            sb.install(&b, "2.339.0", &app)
        );
        let ((pa, da), (pb, db)) = (ra.unwrap(), rb.unwrap());
        assert_eq!(pa, pb);
        assert!(da ^ db, "exactly one of them downloaded: {da} {db}");
        assert_eq!(
            gh.state(|s| s.downloads.values().sum::<u64>()),
            1,
            "one download per release per host"
        );
        // It is the release: its listener says so.
        let out = std::process::Command::new(pa.join("bin/Runner.Listener"))
            .arg("--version")
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2.339.0");
        assert_eq!(sa.versions(), ["2.339.0"]);
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            !names.iter().any(|n| n.starts_with(".partial-")),
            "nothing half-done left: {names:?}"
        );
    }

    #[tokio::test]
    async fn a_checksum_mismatch_is_refused_and_never_unpacked() {
        let gh = fake(|o| {
            o.bad_checksums.insert("2.339.0".into());
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let c = client(&gh);
        let app = newest(&c).await;
        let store = Store::open(dir.path()).unwrap();
        let err = store.install(&c, "2.339.0", &app).await.unwrap_err();
        assert!(matches!(err, StoreError::Checksum { .. }), "{err}");
        assert!(err.to_string().contains("refused"), "{err}");
        assert!(!store.path_of("2.339.0").exists());
        assert!(store.versions().is_empty());
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .filter(|n| n != ".lock")
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[tokio::test]
    async fn an_interrupted_install_is_never_used_and_the_next_one_cleans_it_up() {
        let gh = fake(|_| {}).await;
        let dir = tempfile::tempdir().unwrap();
        // What a SIGKILL in the middle of unpacking leaves: a partial directory with a
        // listener in it, and a partial tarball.
        let partial = dir.path().join(".partial-2.339.0-4242");
        std::fs::create_dir_all(partial.join("bin")).unwrap();
        std::fs::write(partial.join("bin/Runner.Listener"), "half").unwrap();
        std::fs::write(dir.path().join(".partial-2.339.0-4242.tar.gz"), "half").unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(store.versions().is_empty(), "a partial is no version");
        let c = client(&gh);
        let app = newest(&c).await;
        let (p, downloaded) = store.install(&c, "2.339.0", &app).await.unwrap();
        assert!(downloaded);
        assert!(p.join("bin/Runner.Listener").is_file());
        assert!(!partial.exists());
        assert!(!dir.path().join(".partial-2.339.0-4242.tar.gz").exists());
        // Keep the current and the previous version; remove older ones.
        for old in ["2.337.0", "2.338.0"] {
            std::fs::create_dir_all(store.path_of(old).join("bin")).unwrap();
        }
        assert_eq!(store.versions(), ["2.337.0", "2.338.0", "2.339.0"]);
        assert_eq!(store.prune(&["2.339.0", "2.338.0"]), ["2.337.0"]);
        assert_eq!(store.versions(), ["2.338.0", "2.339.0"]);
    }

    #[tokio::test]
    async fn a_broken_release_listens_then_crashes_when_run() {
        let gh = fake(|o| {
            o.broken_releases.insert("2.339.0".into(), 200);
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let c = client(&gh);
        let app = newest(&c).await;
        let store = Store::open(dir.path()).unwrap();
        let (path, _) = store.install(&c, "2.339.0", &app).await.unwrap();
        // Run from it: the listener listens, then crashes (exit 2), and again.
        let sb = crate::support::Sandbox::new();
        let mut env = sb.env(&gh);
        env.insert("SUPERVISOR_RUNNER_DIR".into(), path.display().to_string());
        env.insert("SUPERVISOR_RUNNER_FAILURE_BACKOFF".into(), "50ms".into());
        let mut d = crate::support::Daemon::start(&env, &["run"]).await;
        // Wording under test: the runner's own `Current runner version` line (A1).
        let v = d.wait_event("runner_version", super::T).await;
        assert!(v.has("message", "2.339.0"), "{v:?}");
        d.wait_listening(1, super::T).await;
        let failed = d.wait_nth("listener_failed", 2, super::T).await;
        assert!(failed.is("reason", "retryable"), "{failed:?}");
        d.signal(nix::sys::signal::Signal::SIGTERM);
        assert_eq!(d.wait_exit(super::T).await.0, Some(0));
    }
}

#[tokio::test]
async fn supervisor_runner_shows_the_versions_the_deadline_and_what_the_slots_run() {
    let (sb, gh, mut env) = setup(|o| {
        o.latest_runner_version = "2.339.0".into();
        o.deprecations.insert(
            RUNNER_VERSION.into(),
            Some("2027-01-20T00:00:00Z".parse().unwrap()),
        );
    })
    .await;
    let versions = sb.dir.path().join("versions");
    std::fs::create_dir_all(versions.join("2.337.0/bin")).unwrap();
    env.insert(
        "SUPERVISOR_RUNNER_VERSIONS_DIR".into(),
        versions.display().to_string(),
    );
    env.insert("SUPERVISOR_SLOTS".into(), "2".into());
    let mut d = Daemon::run_listening(&env, 2, T).await;
    let out = crate::support::Cli::new(&env, &["runner"])
        .run_async()
        .await;
    assert_eq!(out.code, Some(0), "{out:?}");
    let text = out.stdout;
    for want in [
        format!("configured    {}: {RUNNER_VERSION}", sb.install.display()),
        format!("installed     {}: 2.337.0", versions.display()),
        "newest        2.339.0".to_string(),
        format!("deadline      {RUNNER_VERSION}: runtime deadline 2027-01-20"),
        format!("slots         0: {RUNNER_VERSION} (listening), 1: {RUNNER_VERSION} (listening)"),
    ] {
        assert!(text.contains(&want), "missing {want:?} in:\n{text}");
    }
    eprintln!("supervisor runner:\n{text}");
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
    let _ = gh;
}
