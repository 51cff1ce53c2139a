//! The supervisor's scale-set mode end to end against the second, independent fake: the
//! `scaleset` crate's emulator (issue 19 §6). `supervisor::run` runs in this process
//! (the emulator serves no `/user`, so the binary's preflight is skipped, as in
//! `resume.rs`) with `[runner] mode = "scaleset"` for the emulator's organisation; the
//! emulator plays the runners' side of a job (`auto_run_jobs`: a job starts on an idle
//! runner of the set and completes), so the runner in the slot is a stand-in that prints
//! the runner's console lines and exits 0 after its one job, as a JIT runner does.
//!
//! What it shows: the session, the GHES flow the emulator models (JobAvailable →
//! acquire → JobAssigned), one runner per job with `max_runners` 2, every message
//! acknowledged, no runner left registered and no listener left idle, the session
//! deleted on stop.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use runner_supervisor::config::{Config, Purpose};
use runner_supervisor::github::GithubClient;
use runner_supervisor::os::clocks::ShiftedClocks;
use runner_supervisor::os::shutdown::Mode;
use runner_supervisor::supervisor::{self, Deps};
use scaleset::testing::{Emulator, JobState, DEFAULT_PAT, ORG};
use tokio::sync::watch;

use crate::scaleset::ss;
use crate::support::{eventually, listeners, read_status, Sandbox};

const T: Duration = Duration::from_secs(30);

/// A runner that listens, runs the one job the emulator starts on it, and exits 0.
const STAND_IN: &str = r#"#!/bin/bash
case "$1" in --version) echo 2.338.0; exit 0;; esac
ts() { date -u '+%Y-%m-%d %H:%M:%SZ'; }
echo "√ Connected to GitHub"
echo "Current runner version: '2.338.0'"
echo "$(ts): Listening for Jobs"
sleep 0.2
echo "$(ts): Running job: emulated"
sleep 0.5
echo "$(ts): Job emulated completed with result: Succeeded"
exit 0
"#;

fn stand_in_install(dir: &std::path::Path) -> std::path::PathBuf {
    let root = dir.join("stand-in-runner");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    for f in ["bin/Runner.Listener", "run.sh", "config.sh"] {
        let p = root.join(f);
        std::fs::write(&p, STAND_IN).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    root
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_set_mode_runs_the_emulators_jobs_one_runner_each_and_leaves_nothing_behind() {
    let emu = Emulator::builder()
        .long_poll(Duration::from_millis(300))
        .auto_run_jobs(Duration::from_millis(300))
        .start()
        .await;
    let sb = Sandbox::new();
    let install = stand_in_install(sb.dir.path());
    let mut env: BTreeMap<String, String> =
        sim::fixture::supervisor_env(&format!("{}/api/v3", emu.uri()), "emu", &install, &sb.state)
            .into_iter()
            .collect();
    env.remove("REPO_OWNER");
    env.remove("REPO_NAME");
    for (k, v) in [
        ("GITHUB_PAT", DEFAULT_PAT.to_string()),
        ("SUPERVISOR_GITHUB_ORG", ORG.to_string()),
        ("SUPERVISOR_GITHUB_WEB_URL", emu.uri()),
        ("SUPERVISOR_GITHUB_BACKOFF_BASE", "50ms".into()),
        ("SUPERVISOR_RUNNER_AUTO_UPDATE", "off".into()),
        ("SUPERVISOR_RUNNER_MODE", "scaleset".into()),
        ("SUPERVISOR_SCALESET_NAME", "emulated".into()),
        ("SUPERVISOR_SCALESET_MAX_RUNNERS", "2".into()),
        ("SUPERVISOR_SCALESET_POLL_TIMEOUT", "3s".into()),
    ] {
        env.insert(k.to_string(), v);
    }
    let cfg = Arc::new(Config::resolve(&env, &Default::default(), Purpose::Run).expect("config"));
    let gh = GithubClient::new(&cfg, cfg.github.token.clone().unwrap()).unwrap();
    let deps = Deps {
        cfg,
        gh,
        hostname: "emu-host".into(),
        outer_env: Box::new(|_| None),
        clocks: Arc::new(ShiftedClocks::default()),
        token: None,
        hook_exe: None,
    };
    let mode = Arc::new(watch::channel(Mode::Run).0);
    let task = tokio::spawn(supervisor::run(deps, mode.clone()));
    let polling = eventually(T, || {
        read_status(&sb.state).is_some_and(|s| ss(&s).session == "polling")
    })
    .await;
    assert!(polling, "{:#?}", read_status(&sb.state).map(|s| ss(&s)));
    let set = emu.state().scale_sets[0].clone();
    assert_eq!(set.name, "emulated");
    // Idle: a session, no runner, no listener.
    assert!(emu.state().runners.is_empty());
    assert!(listeners(&sb, 2).is_empty());
    for _ in 0..3 {
        emu.queue_job(set.id, ["emulated"]);
    }
    let done = eventually(T, || {
        let s = emu.state();
        s.jobs.len() == 3 && s.jobs.iter().all(|j| j.state == JobState::Completed)
    })
    .await;
    assert!(done, "{:#?}", emu.state().jobs);
    let settled = eventually(T, || {
        read_status(&sb.state).is_some_and(|s| {
            let x = ss(&s);
            x.runners_idle + x.runners_busy + x.runners_starting == 0 && x.runners_started == 3
        })
    })
    .await;
    assert!(settled, "{:#?}", read_status(&sb.state).map(|s| ss(&s)));
    assert!(eventually(T, || emu.state().queues_drained()).await);
    assert!(eventually(T, || emu.state().runners.is_empty()).await);
    assert!(listeners(&sb, 2).is_empty());
    let _ = mode.send(Mode::Drain);
    let summary = tokio::time::timeout(T, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(summary.jobs_completed, 3, "{summary:?}");
    assert!(emu.state().sessions.is_empty(), "the session is deleted");
    assert_eq!(emu.state().scale_sets.len(), 1, "the scale set is kept");
}
