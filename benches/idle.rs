//! The idle footprint of the real `supervisor` binary: CPU time, wake-ups and memory of
//! all its threads while its listeners wait for jobs (the fake runner long-polling the
//! fake GitHub, which holds each poll 50 s as GitHub does).
//!
//! Run: `cargo build --release --workspace && cargo bench --bench idle`
//! (`IDLE_SECS=60` by default: the measured window after every slot listens and a
//! settling period).
//! Figures, with 2 slots and with 50:
//! - CPU: nanoseconds on CPU of every thread (`/proc/<pid>/task/*/schedstat`) over the
//!   window, as a share of one core (target ≤ 0.05 %);
//! - wake-ups: voluntary + involuntary context switches of every thread over the window,
//!   per second (target ≤ 1.5/s, and no more with 50 slots than with 2);
//! - memory: RSS (VmRSS) and peak RSS (VmHWM) (targets: not past 8 MB and 11 MB).
//!
//! Threads that end inside the window would take their counts with them: the figures
//! print how many threads there were at each end, so a churn shows.
// Tests and benches measure and read real time on purpose (see clippy.toml).
#![allow(clippy::disallowed_methods)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use sim::github::{FakeGithub, Options};
use tokio::io::{AsyncBufReadExt, BufReader};

fn fake_runner() -> PathBuf {
    sim::fixture::fake_runner_beside(Path::new(env!("CARGO_BIN_EXE_supervisor")))
}

#[derive(Debug, Clone, Copy, Default)]
struct TaskCounts {
    cpu_ns: u64,
    switches: u64,
}

/// Per thread: time on CPU and context switches.
fn sample(pid: u32) -> HashMap<u32, TaskCounts> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in dir.flatten() {
        let Some(tid) = t.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let cpu_ns = std::fs::read_to_string(t.path().join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
            .unwrap_or(0);
        let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        out.insert(
            tid,
            TaskCounts {
                cpu_ns,
                switches: field("voluntary_ctxt_switches:") + field("nonvoluntary_ctxt_switches:"),
            },
        );
    }
    out
}

fn status_kb(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

struct Figures {
    slots: usize,
    cpu_percent: f64,
    wakeups_per_s: f64,
    rss_kb: u64,
    hwm_kb: u64,
    threads: (usize, usize),
}

async fn run(slots: usize, idle: Duration, dir: &Path) -> Figures {
    let gh = FakeGithub::start(Options {
        runner_startup_ms: 0,
        ..Options::default()
    })
    .await
    .unwrap();
    let install = dir.join(format!("install-{slots}"));
    sim::fixture::install_runner(&install, &fake_runner()).unwrap();
    let state = dir.join(format!("state-{slots}"));
    // `IDLE_SUPERVISOR=/path/to/supervisor` measures another build (e.g. an older one) in
    // the same harness.
    let bin = std::env::var("IDLE_SUPERVISOR")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_supervisor").to_string());
    let mut child = tokio::process::Command::new(bin)
        .arg("run")
        .env_clear()
        .envs(sim::fixture::supervisor_env(
            &gh.url(),
            "idle",
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
    let mut listening = 0usize;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    while listening < slots {
        match tokio::time::timeout_at(deadline, lines.next_line()).await {
            Ok(Ok(Some(l))) if l.contains("Listening for Jobs") => listening += 1,
            Ok(Ok(Some(_))) => {}
            _ => panic!("only {listening} of {slots} slots listen"),
        }
    }
    // Keep reading (and counting) what it logs while idle.
    let logged = tokio::spawn(async move {
        let mut n = 0u64;
        while let Ok(Some(_)) = lines.next_line().await {
            n += 1;
        }
        n
    });
    // Let start-up work finish (first socket scans, the first status writes).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = sample(pid);
    tokio::time::sleep(idle).await;
    let after = sample(pid);
    let rss_kb = status_kb(pid, "VmRSS:");
    let hwm_kb = status_kb(pid, "VmHWM:");
    let mut cpu = 0u64;
    let mut switches = 0u64;
    for (tid, a) in &after {
        let b = before.get(tid).copied().unwrap_or_default();
        cpu += a.cpu_ns.saturating_sub(b.cpu_ns);
        switches += a.switches.saturating_sub(b.switches);
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(60), child.wait()).await;
    let _ = logged.await;
    let secs = idle.as_secs_f64();
    Figures {
        slots,
        cpu_percent: cpu as f64 / (secs * 1e9) * 100.0,
        wakeups_per_s: switches as f64 / secs,
        rss_kb,
        hwm_kb,
        threads: (before.len(), after.len()),
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
    let idle = Duration::from_secs(
        std::env::var("IDLE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (two, fifty) = rt.block_on(async {
        let two = run(2, idle, dir.path()).await;
        let fifty = run(50, idle, dir.path()).await;
        (two, fifty)
    });
    println!(
        "idle footprint over {} s after every slot listens:",
        idle.as_secs()
    );
    for f in [&two, &fifty] {
        println!(
            "  {:>2} slots: CPU {:.4} % of a core, {:.2} wake-ups/s, RSS {:.1} MB, peak RSS {:.1} MB, threads {}->{}",
            f.slots,
            f.cpu_percent,
            f.wakeups_per_s,
            f.rss_kb as f64 / 1024.0,
            f.hwm_kb as f64 / 1024.0,
            f.threads.0,
            f.threads.1
        );
    }
    println!(
        "  targets: CPU <= 0.05 % with 2 slots [{}]; <= 1.5 wake-ups/s with 2 slots [{}] and no more with 50 (+0.25/s slack) [{}]; RSS <= 8 MB [{}] and peak <= 11 MB [{}] with 2 slots",
        mark(two.cpu_percent <= 0.05),
        mark(two.wakeups_per_s <= 1.5),
        mark(fifty.wakeups_per_s <= two.wakeups_per_s + 0.25),
        mark(two.rss_kb <= 8 * 1024),
        mark(two.hwm_kb <= 11 * 1024),
    );
}
