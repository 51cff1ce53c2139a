//! `[runner] auto_update = "on"` through the binary: a newer release is downloaded
//! once, tried on one idle slot first, then every slot moves, a busy one after its job;
//! a broken one is rolled back after two canary failures and not tried again.

use std::time::Duration;

use nix::sys::signal::Signal;
use runner_supervisor::status::SlotState;

use crate::support::{job, setup, sim_bin, Daemon};

const T: Duration = Duration::from_secs(60);

/// Runner versions the listeners said, in order.
fn versions_said(d: &Daemon) -> Vec<String> {
    d.events()
        .iter()
        .filter(|e| e.name == "runner_version")
        // Wording under test: the runner's own `Current runner version` line (A1).
        .filter_map(|e| e.str("message")?.split('\'').nth(1).map(str::to_string))
        .collect()
}

#[tokio::test]
async fn a_new_release_is_tried_on_one_slot_then_every_slot_moves_and_no_job_is_lost() {
    let (sb, gh, mut env) = setup(|o| {
        o.runner_binary = Some(sim_bin("fake-runner"));
        o.latest_runner_version = "2.339.0".into();
    })
    .await;
    env.insert("SUPERVISOR_SLOTS".into(), "2".into());
    env.insert("SUPERVISOR_RUNNER_STABLE_AFTER".into(), "1s".into());
    env.insert(
        "SUPERVISOR_RUNNER_VERSIONS_DIR".into(),
        sb.dir.path().join("versions").display().to_string(),
    );
    // A long job keeps one slot busy through the upgrade.
    gh.enqueue(job("long", 4000), 1);
    let mut d = Daemon::start(&env, &["run"]).await;
    let t = std::time::Instant::now();
    let promoted = d.wait_event("runner_promoted", T).await;
    assert!(promoted.is("version", "2.339.0"), "{promoted:?}");
    // Every slot ends on 2.339.0: the busy one after its job.
    let s = sb
        .wait_status(T, |s| {
            s.system.runner.last_upgrade.is_some()
                && s.slots.iter().all(|x| x.state == SlotState::Listening)
                && d.count_events("runner_switched", |_| true) >= 2
        })
        .await;
    let all = t.elapsed();
    assert!(s.system.runner.canary.is_none(), "{:?}", s.system.runner);
    assert_eq!(
        d.count_events("runner_switched", |e| e.is("version", "2.339.0")),
        2,
        "each slot switched once"
    );
    // The job that ran during the upgrade completed; none was lost.
    assert!(
        gh.wait_for(T, |s| s
            .completed
            .iter()
            .any(|j| j.name == "long" && j.result == "Succeeded"))
            .await
    );
    assert_eq!(d.count_events("job_lost", |_| true), 0);
    assert_eq!(
        gh.state(|s| s.downloads.values().sum::<u64>()),
        1,
        "one download"
    );
    let said = versions_said(&d);
    assert_eq!(
        said.first().map(String::as_str),
        Some(sim::protocol::RUNNER_VERSION)
    );
    assert_eq!(said.last().map(String::as_str), Some("2.339.0"), "{said:?}");
    eprintln!("figures: release to every slot upgraded in {all:?}; jobs lost 0; downloads 1");
    // `supervisor runner` says which slots run which version, and the last upgrade.
    let out = crate::support::Cli::new(&env, &["runner"])
        .run_async()
        .await;
    assert!(
        out.stdout
            .contains("slots         0: 2.339.0 (listening), 1: 2.339.0 (listening)")
            && out.stdout.contains("last upgrade  2.339.0 at ")
            && out.stdout.contains("auto_update   on"),
        "{}",
        out.stdout
    );
    eprintln!("supervisor runner:\n{}", out.stdout);
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn a_broken_release_is_rolled_back_after_two_canary_failures_and_not_tried_again() {
    let (sb, gh, mut env) = setup(|o| {
        o.runner_binary = Some(sim_bin("fake-runner"));
        o.latest_runner_version = "2.339.0".into();
        o.broken_releases.insert("2.339.0".into(), 200);
    })
    .await;
    env.insert("SUPERVISOR_SLOTS".into(), "2".into());
    env.insert("SUPERVISOR_RUNNER_FAILURE_BACKOFF".into(), "50ms".into());
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    env.insert("SUPERVISOR_METRICS_LISTEN".into(), metrics.to_string());
    env.insert(
        "SUPERVISOR_RUNNER_VERSIONS_DIR".into(),
        sb.dir.path().join("versions").display().to_string(),
    );
    let mut d = Daemon::start(&env, &["run"]).await;
    let rb = d.wait_event("runner_rolled_back", T).await;
    assert!(
        rb.is("version", "2.339.0") && rb.is("to", sim::protocol::RUNNER_VERSION),
        "{rb:?}"
    );
    let s = sb
        .wait_status(T, |s| {
            !s.system.runner.rolled_back.is_empty()
                && s.slots.iter().all(|x| x.state == SlotState::Listening)
        })
        .await;
    assert!(
        s.system.runner.rolled_back[0].starts_with("2.339.0"),
        "{:?}",
        s.system.runner
    );
    // Only the canary slot ever ran it, twice; the other never switched to it.
    assert_eq!(
        d.count_events("runner_switched", |e| e.is("version", "2.339.0")),
        1
    );
    assert_eq!(d.count_events("runner_promoted", |_| true), 0);
    assert_eq!(
        d.count_events("runner_rolled_back", |_| true),
        1,
        "said once"
    );
    let (_, health) = crate::support::health(&env);
    assert!(health.contains("rolled back"), "{health}");
    // Metrics say it, with the reason, and every slot back on the old version.
    let (_, _, body) = crate::metrics::http_get(metrics, "/metrics");
    assert!(
        body.lines().any(
            |l| l.starts_with("runner_supervisor_runner_version_rolled_back{")
                && l.contains("version=\"2.339.0\"")
                && l.contains("reason=")
        ),
        "{body}"
    );
    assert!(
        body.contains(&format!(
            "runner_supervisor_runner_slots_by_version{{version=\"{}\"}} 2",
            sim::protocol::RUNNER_VERSION
        )),
        "{body}"
    );
    // A restart remembers it (the mark is in the versions directory): skipped.
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
    let mut d = Daemon::start(&env, &["run"]).await;
    let skipped = d.wait_event("runner_skipped", T).await;
    assert!(skipped.is("version", "2.339.0"), "{skipped:?}");
    let s = sb
        .wait_status(T, |s| {
            s.slots.iter().all(|x| x.state == SlotState::Listening)
        })
        .await;
    assert!(
        s.system.runner.rolled_back[0].starts_with("2.339.0"),
        "{:?}",
        s.system.runner
    );
    assert_eq!(d.count_events("runner_switched", |_| true), 0);
    // `supervisor runner retry` forgets the mark, and it is tried again.
    let out = crate::support::cli(&env, &["runner", "retry"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout
            .contains("cleared the bad-version mark of 2.339.0"),
        "{out:?}"
    );
    d.wait_events("runner_switched", |e| e.is("version", "2.339.0"), 1, T)
        .await;
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
    let _ = gh;
}

#[tokio::test]
async fn runner_upgrade_needs_auto_update_on() {
    let (_sb, _gh, mut env) = setup(|_| {}).await;
    env.insert("SUPERVISOR_RUNNER_AUTO_UPDATE".into(), "off".into());
    let mut d = Daemon::run_listening(&env, 1, T).await;
    let out = crate::support::cli(&env, &["runner", "upgrade"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("auto_update"), "{out:?}");
    let s = crate::support::status(&env);
    assert_eq!(s.system.runner.auto_update.as_deref(), Some("off"));
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}
