//! Re-run figures, printed (issue 18 §5), on the real binary with its production check
//! schedule (10 s after the loss, then 20 s, 40 s, then every 60 s): a listener is
//! SIGKILLed mid-job, and the fake GitHub concludes the job `failure` when its lock runs
//! out, [`LOCKS`] seconds after the last renewal (GitHub: about 10 minutes; a drain that
//! ran out or a cancelled job: at once). For each, printed:
//! - the time from the run's completion to the re-run request;
//! - the API calls the lost job added (the run's checks, the one look-up, the re-run);
//! - the calls a job that ended by itself added (target 0).
//!
//! Run: `cargo build --release --workspace && cargo bench --bench rerun` (about 2 min:
//! the cases run side by side, each with its own fake GitHub and supervisor).
// Tests and benches measure and read real time on purpose (see clippy.toml).
#![allow(clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use runner_supervisor::status::StatusFile;
use sim::github::{FakeGithub, JobSpec, Options};

/// The job lock timeouts, seconds: when the run completes after the kill.
const LOCKS: [u64; 4] = [1, 15, 35, 75];
const LIMIT: Duration = Duration::from_secs(240);

fn fake_runner() -> PathBuf {
    sim::fixture::fake_runner_beside(Path::new(env!("CARGO_BIN_EXE_supervisor")))
}

fn status(state: &Path) -> Option<StatusFile> {
    serde_json::from_slice(&std::fs::read(state.join("status.json")).ok()?).ok()
}

async fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let t = Instant::now();
    while t.elapsed() < LIMIT {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never: {what}");
}

fn pids_of(exe: &Path) -> Vec<i32> {
    let mut out = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| p == exe) {
            out.push(pid);
        }
    }
    out
}

struct Figures {
    lock_s: u64,
    completion_to_request_ms: i64,
    run_checks: usize,
    lookups: usize,
    reruns: usize,
    calls_for_a_clean_job: usize,
}

fn actions_calls(gh: &FakeGithub) -> Vec<(String, String)> {
    gh.calls()
        .into_iter()
        .filter(|c| c.path.contains("/actions/runs/") || c.path.contains("/actions/jobs/"))
        .map(|c| (c.method, c.path))
        .collect()
}

async fn case(lock_s: u64) -> Figures {
    let dir = tempfile::tempdir().unwrap();
    let gh = FakeGithub::start(Options {
        job_lock_timeout: Duration::from_secs(lock_s),
        ..Options::default()
    })
    .await
    .unwrap();
    let install = dir.path().join("actions-runner");
    sim::fixture::install_runner(&install, &fake_runner()).unwrap();
    let state = dir.path().join("state");
    let mut env = sim::fixture::supervisor_env(&gh.url(), "bench", &install, &state);
    env.push(("SUPERVISOR_LOG".into(), "warn".into()));
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
    // A job that ends by itself first: no call at all.
    gh.enqueue(
        JobSpec {
            name: "clean".into(),
            duration_ms: 200,
            ..JobSpec::default()
        },
        1,
    );
    wait_for("the clean job completed", || {
        status(&state).is_some_and(|s| s.counts.jobs_completed == 1)
    })
    .await;
    let calls_for_a_clean_job = actions_calls(&gh).len();
    // Then a long one, killed once its hook said who it is.
    gh.enqueue(
        JobSpec {
            name: "e2e".into(),
            duration_ms: 600_000,
            ..JobSpec::default()
        },
        1,
    );
    wait_for("the job identified", || {
        status(&state).is_some_and(|s| s.slots[0].job_of.is_some())
    })
    .await;
    let listener = state.join("slots/0/bin/Runner.Listener");
    for pid in pids_of(&listener) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    wait_for("the re-run", || !gh.state(|s| s.reruns.is_empty())).await;
    let job = gh.state(|s| {
        s.actions_jobs
            .values()
            .find(|j| j.spec.name == "e2e" && j.run_attempt == 1)
            .unwrap()
            .clone()
    });
    let post = gh
        .calls()
        .into_iter()
        .find(|c| c.method == "POST" && c.path.ends_with("/rerun"))
        .unwrap();
    let completed_ms = (job.completed_at.unwrap() - gh.started_at()).num_milliseconds();
    let calls = actions_calls(&gh);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = child.wait().await;
    for pid in pids_of(&listener) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    Figures {
        lock_s,
        completion_to_request_ms: post.at_ms as i64 - completed_ms,
        run_checks: calls
            .iter()
            .filter(|(m, p)| m == "GET" && p.ends_with(&format!("/runs/{}", job.run_id)))
            .count(),
        lookups: calls
            .iter()
            .filter(|(_, p)| p.contains("/attempts/"))
            .count(),
        reruns: calls.iter().filter(|(m, _)| m == "POST").count(),
        calls_for_a_clean_job,
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let figures = rt.block_on(async {
        let cases: Vec<_> = LOCKS.iter().map(|&l| tokio::spawn(case(l))).collect();
        let mut out = vec![];
        for c in cases {
            out.push(c.await.unwrap());
        }
        out
    });
    println!("re-run of a lost job (production schedule: checks 10 s after the loss, then 20 s, 40 s, then every 60 s)");
    println!("run completes after | completion -> re-run request | calls added: run checks + look-up + re-run = total | calls for a job that ended by itself");
    for f in &figures {
        println!(
            "{:>18} s | {:>26.1} s | {:>2} + {} + {} = {:>2} | {}",
            f.lock_s,
            f.completion_to_request_ms as f64 / 1000.0,
            f.run_checks,
            f.lookups,
            f.reruns,
            f.run_checks + f.lookups + f.reruns,
            f.calls_for_a_clean_job
        );
    }
    // GitHub concludes a vanished runner's job about 10 minutes after its last renewal:
    // checks at 10, 30, 70, 130 s, then every 60 s to 610 s and 670 s.
    let schedule: Vec<u64> = (0..16)
        .scan(0u64, |t, i| {
            *t += runner_supervisor::jobs::rerun::next_delay(
                runner_supervisor::jobs::rerun::FIRST_CHECK,
                i,
            )
            .as_secs();
            Some(*t)
        })
        .collect();
    let at_10_min = schedule.iter().filter(|&&t| t < 600).count() + 1;
    println!(
        "for GitHub's ~10 min: {at_10_min} run checks + 1 look-up + 1 re-run = {} calls per lost job; the request within 60 s of the completion",
        at_10_min + 2
    );
}
