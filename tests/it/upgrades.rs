//! The runner autopilot against what goes wrong (issue 17 §5), each through the binary:
//! a real deprecation (upgraded at once with `auto_update = "on"`, paused with the fix
//! with `"off"`), a runner below the registration floor, a bad checksum, no way to
//! download, two supervisors sharing one versions directory, and an upgrade killed
//! half-way.

use std::collections::BTreeMap;
use std::time::Duration;

use nix::sys::signal::Signal;
use runner_supervisor::status::SlotState;
use sim::github::{FakeGithub, Fault, FaultKind, Options};
use sim::protocol::RUNNER_VERSION;

use crate::support::{job, setup, sim_bin, Daemon, Sandbox};

const T: Duration = Duration::from_secs(60);
const NEW: &str = "2.339.0";

/// A fake GitHub that serves tarballs of the fake runner, with `NEW` the newest release.
fn releases(o: &mut Options) {
    o.runner_binary = Some(sim_bin("fake-runner"));
    o.latest_runner_version = NEW.into();
    o.deprecations.insert(NEW.into(), None);
}

/// The installed runner (`RUNNER_VERSION`) dated in the past: the broker refuses it.
fn installed_is_past(o: &mut Options) {
    let past = "2026-11-05T00:00:00Z".parse().unwrap();
    o.deprecations.insert(RUNNER_VERSION.into(), Some(past));
}

/// Versions in their own directory of the sandbox.
fn versions_dir(sb: &Sandbox, env: &mut BTreeMap<String, String>) -> std::path::PathBuf {
    let dir = sb.dir.path().join("versions");
    env.insert(
        "SUPERVISOR_RUNNER_VERSIONS_DIR".into(),
        dir.display().to_string(),
    );
    dir
}

fn downloads(gh: &FakeGithub) -> u64 {
    gh.state(|s| s.downloads.values().sum::<u64>())
}

/// Hold every tarball download for `ms` (the listing answers at once).
fn slow_downloads(gh: &FakeGithub, ms: u64) {
    gh.fault(Fault {
        method: Some("GET".into()),
        path: Some("/releases/download/".into()),
        body: None,
        kind: FaultKind::Latency { ms },
        times: 0,
    });
}

#[tokio::test]
async fn a_real_deprecation_with_auto_update_on_is_upgraded_within_one_job_cycle() {
    let (sb, gh, mut env) = setup(|o| {
        releases(o);
        installed_is_past(o);
    })
    .await;
    versions_dir(&sb, &mut env);
    env.insert("SUPERVISOR_SLOTS".into(), "2".into());
    // The download takes a while: the first listeners start on the old runner, and
    // the broker refuses them by date.
    slow_downloads(&gh, 1500);
    gh.enqueue(job("after-the-upgrade", 100), 1);
    let mut d = Daemon::start(&env, &["run"]).await;
    let dep = d.wait_event("runner_deprecated", T).await;
    assert!(
        dep.is("version", RUNNER_VERSION) && dep.is("upgrading", "true"),
        "{dep:?}"
    );
    let switched = d.wait_event("runner_switched", T).await;
    assert!(switched.is("version", NEW), "{switched:?}");
    // The job queued all along runs on the new runner: one job cycle.
    assert!(
        gh.wait_for(T, |s| s
            .completed
            .iter()
            .any(|j| j.name == "after-the-upgrade" && j.result == "Succeeded"))
            .await
    );
    let took = (switched.at - dep.at).num_milliseconds();
    eprintln!("figures: deprecated line to the slot on {NEW} in {took} ms");
    let promoted = d.wait_event("runner_promoted", T).await;
    assert!(promoted.is("version", NEW), "{promoted:?}");
    // Every slot ends on it, and the deadline shown is the new version's.
    let s = sb
        .wait_status(T, |s| {
            s.system.runner.version.as_deref() == Some(NEW)
                && s.system.runner.deadline == "undated"
                && s.slots.iter().all(|x| {
                    x.runner_version.as_deref() == Some(NEW) && x.state == SlotState::Listening
                })
        })
        .await;
    assert!(
        s.reasons.iter().all(|r| !r.contains("runtime deadline")),
        "{:?}",
        s.reasons
    );
    // Each slot was refused once: a waiting slot never started the old runner again
    // while another tried the new one.
    for slot in 0..2u64 {
        assert!(
            d.count_events("runner_deprecated", |e| e.u64("slot") == Some(slot)) <= 1,
            "slot {slot}"
        );
    }
    // Paused only until the new runner was there: never backed off, never an hour.
    assert_eq!(d.count_events("listener_failed", |_| true), 0);
    assert_eq!(d.count_events("job_lost", |_| true), 0);
    assert_eq!(downloads(&gh), 1);
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn a_real_deprecation_with_auto_update_off_pauses_with_the_fix_and_downloads_nothing() {
    let (sb, gh, mut env) = setup(|o| {
        releases(o);
        installed_is_past(o);
    })
    .await;
    versions_dir(&sb, &mut env);
    env.insert("SUPERVISOR_RUNNER_AUTO_UPDATE".into(), "off".into());
    let mut d = Daemon::start(&env, &["run"]).await;
    let dep = d.wait_event("runner_deprecated", T).await;
    assert!(dep.is("upgrading", "false"), "{dep:?}");
    let s = sb
        .wait_status(T, |s| {
            s.slots[0].state == SlotState::Paused && s.system.runner.latest.as_deref() == Some(NEW)
        })
        .await;
    let error = s.slots[0].error.clone().unwrap_or_default();
    // The exact fix (wording under test: it is the operator's instruction).
    assert!(
        error.contains(&format!("install actions/runner {NEW}"))
            && error.contains(&sb.install.display().to_string()),
        "{error}"
    );
    // Health says why and what is available; nothing was downloaded.
    let (_, health) = crate::support::wait_health(&env, "is available", T).await;
    assert!(health.contains("auto_update is \"off\""), "{health}");
    assert_eq!(downloads(&gh), 0);
    assert_eq!(d.count_events("runner_switched", |_| true), 0);
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn a_runner_below_the_registration_floor_is_recognised_and_upgraded() {
    let (sb, gh, mut env) = setup(releases).await;
    versions_dir(&sb, &mut env);
    // config.sh (token mode) with a runner GitHub no longer lets register.
    env.insert("SUPERVISOR_RUNNER_REGISTRATION".into(), "token".into());
    std::fs::write(sb.install.join("bin/sim-version"), "2.328.0").unwrap();
    slow_downloads(&gh, 1500);
    let mut d = Daemon::start(&env, &["run"]).await;
    let floor = d.wait_event("registration_floor", T).await;
    assert!(floor.has("error", "2.329.0"), "{floor:?}");
    let dep = d.wait_event("runner_deprecated", T).await;
    assert!(dep.is("upgrading", "true"), "{dep:?}");
    // It goes on with the newest release: registered by config.sh and listening.
    let switched = d.wait_event("runner_switched", T).await;
    assert!(switched.is("version", NEW), "{switched:?}");
    sb.wait_status(T, |s| {
        s.slots[0].state == SlotState::Listening
            && s.slots[0].runner_version.as_deref() == Some(NEW)
    })
    .await;
    assert_eq!(d.count_events("start_failed", |_| true), 0);
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn a_checksum_mismatch_is_refused_said_and_never_run() {
    let (sb, gh, mut env) = setup(|o| {
        releases(o);
        o.bad_checksums.insert(NEW.into());
    })
    .await;
    let dir = versions_dir(&sb, &mut env);
    gh.enqueue(job("meanwhile", 100), 1);
    let mut d = Daemon::start(&env, &["run"]).await;
    let failed = d.wait_event("runner_upgrade_failed", T).await;
    assert!(
        failed.is("version", NEW) && failed.has("error", "checksum"),
        "{failed:?}"
    );
    // The next try waits: 5 minutes after the first failure.
    assert_eq!(failed.u64("retry_s"), Some(300), "{failed:?}");
    // Never unpacked, never run; the old runner keeps working.
    assert!(!dir.join(NEW).exists());
    assert!(
        gh.wait_for(T, |s| s.completed.iter().any(|j| j.name == "meanwhile"))
            .await
    );
    let (code, health) = crate::support::wait_health(&env, "does not match", T).await;
    assert_eq!(code, Some(0), "{health}");
    assert_eq!(d.count_events("runner_switched", |_| true), 0);
    let s = crate::support::status(&env);
    assert_eq!(s.slots[0].state, SlotState::Listening);
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn without_a_way_to_download_it_keeps_running_and_says_why() {
    let (sb, gh, mut env) = setup(releases).await;
    versions_dir(&sb, &mut env);
    // The download host unreachable: every connection reset.
    gh.fault(Fault {
        method: Some("GET".into()),
        path: Some("/releases/download/".into()),
        body: None,
        kind: FaultKind::Reset,
        times: 0,
    });
    gh.enqueue(job("meanwhile", 100), 1);
    let mut d = Daemon::start(&env, &["run"]).await;
    let failed = d.wait_event("runner_upgrade_failed", T).await;
    assert!(failed.has("error", "download"), "{failed:?}");
    assert!(
        gh.wait_for(T, |s| s.completed.iter().any(|j| j.name == "meanwhile"))
            .await
    );
    let (code, health) = crate::support::wait_health(&env, "cannot install runner", T).await;
    assert_eq!(code, Some(0), "still healthy: {health}");
    assert!(
        health.contains(&format!("keeping {RUNNER_VERSION}"))
            && health.contains("next try in 5 min"),
        "{health}"
    );
    // doctor says it too, with what to do.
    let doc = crate::doctor::doctor(&env).await;
    assert_eq!(doc.status("runner upgrades"), "warn", "{:#}", doc.json);
    assert!(
        doc.reason("runner upgrades")
            .contains("cannot install runner"),
        "{}",
        doc.reason("runner upgrades")
    );
    // `supervisor runner upgrade` tries again at once.
    let out = crate::support::cli(&env, &["runner", "upgrade"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    d.wait_nth("runner_upgrade_failed", 2, T).await;
    let second = d
        .events()
        .into_iter()
        .filter(|e| e.name == "runner_upgrade_failed")
        .nth(1)
        .unwrap();
    assert_eq!(
        second.u64("retry_s"),
        Some(600),
        "the back-off grows: {second:?}"
    );
    assert_eq!(d.count_events("runner_switched", |_| true), 0);
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn two_supervisors_sharing_a_versions_directory_download_once() {
    let (sb, gh, mut env) = setup(releases).await;
    let dir = versions_dir(&sb, &mut env);
    let sb2 = Sandbox::new();
    let mut env2 = sb2.env(&gh);
    env2.insert(
        "SUPERVISOR_RUNNER_VERSIONS_DIR".into(),
        dir.display().to_string(),
    );
    env2.insert("SUPERVISOR_RUNNER_NAME_PREFIX".into(), "other".into());
    // Both find the release at once; the download is slow enough that they overlap.
    slow_downloads(&gh, 1000);
    let mut a = Daemon::start(&env, &["run"]).await;
    let mut b = Daemon::start(&env2, &["run"]).await;
    for d in [&a, &b] {
        let s = d.wait_event("runner_switched", T).await;
        assert!(s.is("version", NEW), "{s:?}");
    }
    let said: Vec<bool> = [&a, &b]
        .iter()
        .map(|d| {
            d.events()
                .iter()
                .find(|e| e.name == "runner_downloaded")
                .map(|e| e.is("downloaded", "true"))
                .unwrap()
        })
        .collect();
    assert_eq!(downloads(&gh), 1, "one download for the host");
    assert_eq!(said.iter().filter(|x| **x).count(), 1, "{said:?}");
    for d in [&mut a, &mut b] {
        d.signal(Signal::SIGTERM);
        assert_eq!(d.wait_exit(T).await.0, Some(0));
    }
}

#[tokio::test]
async fn an_upgrade_killed_half_way_is_never_used_and_the_next_start_installs_a_good_one() {
    let (sb, gh, mut env) = setup(releases).await;
    let dir = versions_dir(&sb, &mut env);
    // What a SIGKILL in the middle of unpacking leaves: a half-unpacked version under its
    // temporary name, never renamed into place (no bin/Runner.Listener yet).
    let half = dir.join(format!(".partial-{NEW}-1"));
    std::fs::create_dir_all(half.join("bin")).unwrap();
    std::fs::write(half.join("config.sh"), "half").unwrap();
    // And a real SIGKILL while this supervisor downloads.
    slow_downloads(&gh, 60_000);
    let mut d = Daemon::start(&env, &["run"]).await;
    d.wait_listening(1, T).await;
    // The download began: its temporary file is there.
    let began = crate::support::eventually(T, || {
        std::fs::read_dir(&dir).unwrap().flatten().any(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with(&format!(".partial-{NEW}-")) && n.ends_with(".tar.gz")
        })
    })
    .await;
    assert!(began, "the download began");
    d.kill_with_listeners(&sb, 1, T).await;
    let left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!left.contains(&NEW.to_string()), "{left:?}");
    // The next start (downloads fast again) never uses what was left.
    gh.state(|s| s.faults.clear());
    let mut d = Daemon::start(&env, &["run"]).await;
    let switched = d.wait_event("runner_switched", T).await;
    assert!(switched.is("version", NEW), "{switched:?}");
    sb.wait_status(T, |s| {
        s.slots[0].state == SlotState::Listening
            && s.slots[0].runner_version.as_deref() == Some(NEW)
    })
    .await;
    let left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".partial-"))
        .collect();
    assert!(left.is_empty(), "cleaned up: {left:?}");
    assert!(dir.join(NEW).join("bin/Runner.Listener").is_file());
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn a_bad_auto_update_value_is_refused_naming_the_key_and_its_values() {
    let (_sb, _gh, mut env) = setup(|_| {}).await;
    env.insert("SUPERVISOR_RUNNER_AUTO_UPDATE".into(), "maybe".into());
    let out = crate::support::Cli::new(&env, &["config"])
        .run_async()
        .await;
    assert_eq!(out.code, Some(64), "{out:?}");
    for part in [
        "runner.auto_update",
        "SUPERVISOR_RUNNER_AUTO_UPDATE",
        "on",
        "notify",
        "off",
    ] {
        assert!(out.stderr.contains(part), "{part}: {}", out.stderr);
    }
}

#[tokio::test]
async fn a_versions_directory_that_cannot_be_written_is_said_and_what_runs_keeps_running() {
    let (sb, gh, mut env) = setup(releases).await;
    // A file where the directory should be: nothing can be made under it.
    let file = sb.dir.path().join("not-a-dir");
    std::fs::write(&file, "").unwrap();
    let dir = file.join("versions");
    env.insert(
        "SUPERVISOR_RUNNER_VERSIONS_DIR".into(),
        dir.display().to_string(),
    );
    let doc = crate::doctor::doctor(&env).await;
    assert_eq!(doc.status("runner upgrades"), "fail", "{:#}", doc.json);
    assert!(doc.reason("runner upgrades").contains("cannot be written"));
    assert!(doc.fix("runner upgrades").contains("ReadWritePaths"));
    gh.enqueue(job("meanwhile", 100), 1);
    let mut d = Daemon::start(&env, &["run"]).await;
    let failed = d.wait_event("runner_upgrade_failed", T).await;
    assert!(failed.has("error", "cannot create"), "{failed:?}");
    assert!(
        gh.wait_for(T, |s| s.completed.iter().any(|j| j.name == "meanwhile"))
            .await
    );
    assert_eq!(d.count_events("runner_switched", |_| true), 0);
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn doctor_warns_when_the_versions_directory_is_on_a_tmpfs() {
    if nix::sys::statfs::statfs("/dev/shm")
        .map(|s| s.filesystem_type() != nix::sys::statfs::TMPFS_MAGIC)
        .unwrap_or(true)
    {
        // Debian mounts a tmpfs there; the check below needs one.
        panic!("/dev/shm is not a tmpfs on this machine");
    }
    let (_sb, _gh, mut env) = setup(releases).await;
    let tmp = tempfile::tempdir_in("/dev/shm").unwrap();
    env.insert(
        "SUPERVISOR_RUNNER_VERSIONS_DIR".into(),
        tmp.path().join("runners").display().to_string(),
    );
    let doc = crate::doctor::doctor(&env).await;
    assert_eq!(doc.status("runner upgrades"), "warn", "{:#}", doc.json);
    assert!(doc.reason("runner upgrades").contains("tmpfs"));
    // With auto_update off, doctor says a newer release is there and nothing installs it.
    env.insert("SUPERVISOR_RUNNER_AUTO_UPDATE".into(), "off".into());
    let doc = crate::doctor::doctor(&env).await;
    assert_eq!(doc.status("runner upgrades"), "warn", "{:#}", doc.json);
    assert!(
        doc.reason("runner upgrades")
            .contains(&format!("runner {NEW} is available")),
        "{}",
        doc.reason("runner upgrades")
    );
}

#[path = "upgrades_autopilot.rs"]
mod autopilot;
