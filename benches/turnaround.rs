//! Turnaround, API calls per job, and memory of the real `supervisor` binary against the
//! fake GitHub, with the fake runner's own start-up set to zero.
//!
//! Run: `cargo build --release --workspace && cargo bench --bench turnaround`.
//! Figures:
//! - turnaround: from a job's `completed with result` line to the same slot's next
//!   `Listening for Jobs`, as timestamped by the supervisor when it read each line;
//!   p50 and p99 over at least 200 jobs on 2 slots (targets 100 ms and 300 ms);
//! - GitHub API calls per job when nothing fails (target at most 2);
//! - peak RSS (VmHWM) of the supervisor with 2 slots (target 15 MB) and 50 (target 60 MB).
// Tests and benches measure and read real time on purpose (see clippy.toml).
#![allow(clippy::disallowed_methods)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sim::github::{FakeGithub, JobSpec, Options};
use tokio::io::{AsyncBufReadExt, BufReader};

const JOBS: usize = 240;

fn fake_runner() -> PathBuf {
    sim::fixture::fake_runner_beside(Path::new(env!("CARGO_BIN_EXE_supervisor")))
}

struct Line {
    at: DateTime<Utc>,
    runner: String,
    message: String,
}

fn slot_of(runner: &str) -> Option<usize> {
    // <prefix>-<host>-<slot>-<suffix>
    let mut parts = runner.rsplit('-');
    parts.next()?;
    parts.next()?.parse().ok()
}

fn vm_hwm_kb(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

struct Outcome {
    turnarounds_ms: Vec<f64>,
    rest_calls: usize,
    generate_calls: usize,
    jobs: usize,
    hwm_kb: u64,
}

async fn run(slots: usize, jobs: usize, dir: &Path) -> Outcome {
    let gh = FakeGithub::start(Options {
        runner_startup_ms: 0,
        ..Options::default()
    })
    .await
    .unwrap();
    let install = dir.join(format!("install-{slots}"));
    sim::fixture::install_runner(&install, &fake_runner()).unwrap();
    let state = dir.join(format!("state-{slots}"));
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_supervisor"))
        .arg("run")
        .env_clear()
        .envs(sim::fixture::supervisor_env(
            &gh.url(),
            "bench",
            &install,
            &state,
        ))
        .env("SUPERVISOR_SLOTS", slots.to_string())
        .env("SUPERVISOR_LOG_FORMAT", "json")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn supervisor");
    let pid = child.id().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log: Vec<Line> = vec![];
    let mut listening = 0usize;
    let mut completed = 0usize;
    let mut enqueued = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    while let Ok(Ok(Some(raw))) = tokio::time::timeout_at(deadline, lines.next_line()).await {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&raw) else {
            continue;
        };
        let f = &v["fields"];
        let message = f["message"].as_str().unwrap_or("").to_string();
        let runner = f["runner"].as_str().unwrap_or("").to_string();
        let at = v["timestamp"]
            .as_str()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc));
        if message.ends_with("Listening for Jobs") {
            listening += 1;
        }
        if message.contains(" completed with result: ") {
            completed += 1;
        }
        if let Some(at) = at {
            log.push(Line {
                at,
                runner,
                message,
            });
        }
        // Start the jobs once every slot listens, so start-up is not measured.
        if !enqueued && listening >= slots {
            enqueued = true;
            if jobs > 0 {
                gh.enqueue(
                    JobSpec {
                        duration_ms: 20,
                        ..Default::default()
                    },
                    jobs,
                );
            }
        }
        if enqueued && completed >= jobs && listening >= jobs + slots {
            break;
        }
    }
    let hwm_kb = vm_hwm_kb(pid);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(60), child.wait()).await;

    // Pair each completed line with the same slot's next Listening line.
    let mut pending: HashMap<usize, DateTime<Utc>> = HashMap::new();
    let mut turnarounds_ms = vec![];
    for l in &log {
        let Some(slot) = slot_of(&l.runner) else {
            continue;
        };
        if l.message.contains(" completed with result: ") {
            pending.insert(slot, l.at);
        } else if l.message.ends_with("Listening for Jobs") {
            if let Some(done) = pending.remove(&slot) {
                turnarounds_ms.push((l.at - done).num_microseconds().unwrap_or(0) as f64 / 1000.0);
            }
        }
    }
    let calls = gh.calls();
    let rest: Vec<_> = calls
        .iter()
        .filter(|c| !c.path.starts_with("/_sim") && !c.path.contains("runner-registration"))
        .collect();
    Outcome {
        turnarounds_ms,
        rest_calls: rest.len(),
        generate_calls: rest
            .iter()
            .filter(|c| c.path.ends_with("generate-jitconfig"))
            .count(),
        jobs: gh.state(|s| s.completed.len()),
        hwm_kb,
    }
}

fn mark(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "MISSED"
    }
}

fn main() {
    // `cargo bench` passes --bench; accept and ignore harness flags.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (two, fifty) = rt.block_on(async {
        let two = run(2, JOBS, dir.path()).await;
        let fifty = run(50, 0, dir.path()).await;
        (two, fifty)
    });
    let mut t = two.turnarounds_ms.clone();
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    assert!(t.len() >= 200, "only {} turnarounds measured", t.len());
    let (p50, p99) = (percentile(&t, 0.50), percentile(&t, 0.99));
    let per_job = two.rest_calls as f64 / two.jobs as f64;
    let steady = two.generate_calls as f64 / two.jobs as f64;
    let mb = |kb: u64| kb as f64 / 1024.0;
    let mut rows: BTreeMap<&str, String> = BTreeMap::new();
    rows.insert(
        "1 turnaround p50",
        format!("{p50:8.1} ms   target <= 100 ms   {}", mark(p50 <= 100.0)),
    );
    rows.insert(
        "2 turnaround p99",
        format!("{p99:8.1} ms   target <= 300 ms   {}", mark(p99 <= 300.0)),
    );
    rows.insert(
        "3 turnaround max",
        format!(
            "{:8.1} ms   ({} jobs on 2 slots, {} measured)",
            t[t.len() - 1],
            two.jobs,
            t.len()
        ),
    );
    rows.insert("4 API calls per job", format!("{per_job:8.2}      target <= 2        {}   ({} REST calls, start-up and shutdown included; {steady:.2} generate-jitconfig per job)", mark(per_job <= 2.0), two.rest_calls));
    rows.insert(
        "5 RSS, 2 slots",
        format!(
            "{:8.1} MB   target <= 15 MB    {}   (peak, VmHWM)",
            mb(two.hwm_kb),
            mark(mb(two.hwm_kb) <= 15.0)
        ),
    );
    rows.insert(
        "6 RSS, 50 slots",
        format!(
            "{:8.1} MB   target <= 60 MB    {}   (peak, VmHWM, all 50 listening)",
            mb(fifty.hwm_kb),
            mark(mb(fifty.hwm_kb) <= 60.0)
        ),
    );
    println!("\nrunner-supervisor turnaround benchmark");
    for (k, v) in rows {
        println!("  {:<22} {v}", &k[2..]);
    }
}
