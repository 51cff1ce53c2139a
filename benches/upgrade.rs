//! Runner-upgrade figures, printed (issue 17 §5), on the real binary with two slots and a
//! steady stream of jobs, against the fake GitHub serving tarballs of the fake runner:
//! - time from the supervisor seeing a new release (`supervisor runner upgrade`; by
//!   itself it looks at start and every 6 h) to every idle slot running it: the download,
//!   the canary proving it (`stable_after` 1 s or a job), the other slot moving, over
//!   [`RELEASES`] releases in a row;
//! - jobs lost during the upgrades (target 0);
//! - downloads per release per host (target 1);
//! - API calls the version watch adds per day (its schedule: the downloads list every
//!   6 h, one version's deadline at most once a day), and the calls measured in the run.
//!
//! Run: `cargo build --release --workspace && cargo bench --bench upgrade`.
// Tests and benches measure and read real time on purpose (see clippy.toml).
#![allow(clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use runner_supervisor::monitors::versionwatch::{DEADLINE_EVERY, LATEST_EVERY};
use runner_supervisor::status::{SlotState, StatusFile};
use sim::github::{FakeGithub, JobSpec, Options};

const RELEASES: u64 = 5;
const JOB_MS: u64 = 700;
const LIMIT: Duration = Duration::from_secs(60);

fn fake_runner() -> PathBuf {
    sim::fixture::fake_runner_beside(Path::new(env!("CARGO_BIN_EXE_supervisor")))
}

fn release(i: u64) -> String {
    format!("2.{}.0", 339 + i)
}

fn status(state: &Path) -> Option<StatusFile> {
    serde_json::from_slice(&std::fs::read(state.join("status.json")).ok()?).ok()
}

async fn wait_status(state: &Path, what: &str, cond: impl Fn(&StatusFile) -> bool) {
    let t = Instant::now();
    while t.elapsed() < LIMIT {
        if status(state).as_ref().is_some_and(&cond) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never: {what}; last status {:#?}", status(state));
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(bench());
}

async fn bench() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = Options {
        runner_binary: Some(fake_runner()),
        ..Options::default()
    };
    for i in 0..RELEASES {
        o.deprecations.insert(release(i), None);
    }
    let gh = Arc::new(FakeGithub::start(o).await.unwrap());
    let install = dir.path().join("actions-runner");
    sim::fixture::install_runner(&install, &fake_runner()).unwrap();
    let state = dir.path().join("state");
    let mut env = sim::fixture::supervisor_env(&gh.url(), "bench", &install, &state);
    for (k, v) in [
        ("SUPERVISOR_SLOTS", "2"),
        ("SUPERVISOR_RUNNER_STABLE_AFTER", "1s"),
        ("SUPERVISOR_LOG", "warn"),
    ] {
        env.push((k.into(), v.into()));
    }
    env.push((
        "SUPERVISOR_RUNNER_VERSIONS_DIR".into(),
        dir.path().join("versions").display().to_string(),
    ));
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_supervisor"))
        .arg("run")
        .env_clear()
        .envs(env.clone())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_status(&state, "both slots listening", |s| {
        s.slots.iter().all(|x| x.state == SlotState::Listening)
    })
    .await;
    let calls_at_start = watch_calls(&gh);
    // A steady stream of jobs: one queued whenever the queue is empty.
    let feeding = Arc::new(AtomicBool::new(true));
    let fed = Arc::new(AtomicU64::new(0));
    let feeder = {
        let (gh, feeding, fed) = (gh.clone(), feeding.clone(), fed.clone());
        tokio::spawn(async move {
            while feeding.load(Ordering::Relaxed) {
                if gh.state(|s| s.queue.is_empty()) {
                    let n = fed.fetch_add(1, Ordering::Relaxed);
                    gh.enqueue(
                        JobSpec {
                            name: format!("job-{n}"),
                            duration_ms: JOB_MS,
                            result: "Succeeded".into(),
                            labels: vec![],
                            workflow: None,
                            actions: vec![],
                            run: None,
                        },
                        1,
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let mut took = vec![];
    for i in 0..RELEASES {
        let v = release(i);
        gh.state(|s| s.released = Some(v.clone()));
        let t = Instant::now();
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_supervisor"))
            .args(["runner", "upgrade"])
            .env_clear()
            .envs(env.clone())
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        wait_status(&state, &format!("every slot on {v}"), |s| {
            s.system.runner.version.as_deref() == Some(v.as_str())
                && s.slots.iter().all(|x| {
                    x.runner_version.as_deref() == Some(v.as_str())
                        && matches!(x.state, SlotState::Listening | SlotState::Busy)
                })
        })
        .await;
        took.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    feeding.store(false, Ordering::Relaxed);
    feeder.await.unwrap();
    // Every job fed is done, and none failed or was lost.
    let all = fed.load(Ordering::Relaxed) as usize;
    let done = gh
        .wait_for(LIMIT, |s| s.completed.len() >= all && s.queue.is_empty())
        .await;
    assert!(done, "jobs left undone");
    let succeeded = gh.state(|s| {
        s.completed
            .iter()
            .filter(|j| j.result == "Succeeded")
            .count()
    });
    let lost = all - succeeded;
    let jobs_lost_status = status(&state).map(|s| s.counts.jobs_lost).unwrap_or(0);
    let downloads: Vec<u64> = gh.state(|s| s.downloads.values().copied().collect());
    let calls = watch_calls(&gh) - calls_at_start;
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;

    let mut sorted = took.clone();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let p50 = sorted[sorted.len() / 2];
    let max = sorted[sorted.len() - 1];
    let per_day_list = 86_400 / LATEST_EVERY.as_secs();
    let per_day_deadline = 86_400 / DEADLINE_EVERY.as_secs();
    let mark = |ok: bool| if ok { "ok" } else { "MISSED" };
    println!("\nrunner-supervisor upgrade benchmark (2 slots, a {JOB_MS} ms job always queued)");
    println!(
        "  new release seen -> every idle slot on it ({RELEASES} releases): p50 {p50:.0} ms, max {max:.0} ms"
    );
    println!(
        "  jobs run during the upgrades {all}, lost {lost} (status jobs_lost {jobs_lost_status})   target 0   {}",
        mark(lost == 0 && jobs_lost_status == 0)
    );
    println!(
        "  downloads per release {:?}   target 1 each   {}",
        downloads,
        mark(downloads.len() as u64 == RELEASES && downloads.iter().all(|d| *d == 1))
    );
    println!(
        "  API calls added per day: {per_day_list} downloads lists + {per_day_deadline} deadline per version in use = {} (one more deadline, and one tarball, on a day a release is installed)",
        per_day_list + per_day_deadline
    );
    println!(
        "  API calls measured over the {RELEASES} upgrades: {calls} (a downloads list for each, and each new version's deadline once it runs)"
    );
}

/// Calls the version watch makes: the downloads list and the deprecations endpoint.
fn watch_calls(gh: &FakeGithub) -> usize {
    gh.calls()
        .iter()
        .filter(|c| {
            c.path.ends_with("/actions/runners/downloads")
                || c.path.contains("/actions/runners/deprecations/")
        })
        .count()
}
