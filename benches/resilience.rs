//! Resilience figures, printed:
//! - watchdog: from a listener's stuck line (`Runner connect error ... Retrying until
//!   reconnected.`, never followed by a recovery) to the replacement listener's
//!   `Listening for Jobs`, minus the configured grace; p50 over 30 stuck listeners on the
//!   real binary (target p50 <= 200 ms);
//! - resume: from a simulated suspend (CLOCK_BOOTTIME jumps 90 s, injected) to every idle
//!   listener replaced, in process, over 10 resumes with 2 slots (target <= 2 s);
//! - crash loop: listener starts in the first 30 s when every listener crashes 0.3 s after
//!   `Listening for Jobs`, on the real binary (target <= 8), and in 10 minutes by the same
//!   back-off policy, worst case over 1,000 draws of its jitter (target <= 20).
//!
//! Run: `cargo build --release --workspace && cargo bench --bench resilience`.
// Tests and benches measure and read real time on purpose (see clippy.toml).
#![allow(clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use runner_supervisor::config::{Config, Purpose};
use runner_supervisor::github::GithubClient;
use runner_supervisor::os::clocks::ShiftedClocks;
use runner_supervisor::os::shutdown::Mode;
use runner_supervisor::supervisor::{self, Deps};
use sim::github::{FakeGithub, Options};
use sim::protocol::Script;
use tokio::io::{AsyncBufReadExt, BufReader};

const STUCK: usize = 30;
const RESUMES: usize = 10;
const GRACE_MS: f64 = 1000.0;

fn fake_runner() -> PathBuf {
    sim::fixture::fake_runner_beside(Path::new(env!("CARGO_BIN_EXE_supervisor")))
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// `supervisor run` against `gh`, its log on a pipe; many fires allowed (no breaker).
fn spawn_supervisor(
    gh: &FakeGithub,
    install: &Path,
    state: &Path,
    extra: &[(&str, String)],
) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_supervisor"))
        .arg("run")
        .env_clear()
        .envs(sim::fixture::supervisor_env(
            &gh.url(),
            "bench",
            install,
            state,
        ))
        .env("WATCHDOG_MAX_FIRES", "1000")
        .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn supervisor")
}

/// SIGTERM, and wait for the exit.
async fn stop(mut child: tokio::process::Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
}

async fn watchdog(dir: &Path) -> Vec<f64> {
    let gh = FakeGithub::start(Options::default()).await.unwrap();
    for _ in 0..STUCK {
        gh.script(Script::ConnectionLoss {
            after_ms: 50,
            recover_after_ms: None,
            give_up: false,
            during_job: false,
        });
    }
    let install = dir.join("install-wd");
    sim::fixture::install_runner(&install, &fake_runner()).unwrap();
    let mut child = spawn_supervisor(
        &gh,
        &install,
        &dir.join("state-wd"),
        &[
            ("SUPERVISOR_LOG_FORMAT", "json".to_string()),
            (
                "SUPERVISOR_WATCHDOG_GRACE",
                format!("{}ms", GRACE_MS as u64),
            ),
        ],
    );
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    // (runner that got stuck, when); paired with the next listening line of another runner.
    let mut stuck: std::collections::VecDeque<(String, DateTime<Utc>)> = Default::default();
    let mut out = vec![];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    while let Ok(Ok(Some(raw))) = tokio::time::timeout_at(deadline, lines.next_line()).await {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&raw) else {
            continue;
        };
        let msg = v["fields"]["message"].as_str().unwrap_or("");
        let runner = v["fields"]["runner"].as_str().unwrap_or("").to_string();
        if std::env::var_os("BENCH_DEBUG").is_some() {
            eprintln!("{raw}");
        }
        let Some(at) = v["timestamp"]
            .as_str()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc))
        else {
            continue;
        };
        if msg.contains("Retrying until reconnected.") {
            stuck.push_back((runner, at));
        } else if msg.ends_with("Listening for Jobs") {
            // The replacement of the oldest stuck runner that is not this one.
            if let Some(pos) = stuck.iter().position(|(r, _)| *r != runner) {
                let (_, s) = stuck.remove(pos).expect("position is valid");
                out.push((at - s).num_microseconds().unwrap_or(0) as f64 / 1000.0 - GRACE_MS);
                if out.len() >= STUCK - 1 {
                    break;
                }
            }
        }
    }
    stop(child).await;
    out
}

async fn resume(dir: &Path) -> Vec<f64> {
    let gh = FakeGithub::start(Options::default()).await.unwrap();
    let install = dir.join("install-rs");
    sim::fixture::install_runner(&install, &fake_runner()).unwrap();
    let env: std::collections::BTreeMap<String, String> =
        sim::fixture::supervisor_env(&gh.url(), "bench", &install, &dir.join("state-rs"))
            .into_iter()
            .chain([("SUPERVISOR_SLOTS".to_string(), "2".to_string())])
            .collect();
    let cfg = Arc::new(Config::resolve(&env, &Default::default(), Purpose::Run).unwrap());
    let client = GithubClient::new(&cfg, cfg.github.token.clone().unwrap()).unwrap();
    let clocks = Arc::new(ShiftedClocks::default());
    let deps = Deps {
        cfg,
        gh: client,
        hostname: "bench".into(),
        outer_env: Box::new(|k| std::env::var(k).ok()),
        clocks: clocks.clone(),
        token: None,
        hook_exe: None,
    };
    let mode = Arc::new(tokio::sync::watch::channel(Mode::Run).0);
    let task = tokio::spawn(supervisor::run(deps, mode.clone()));
    let online =
        |s: &sim::github::State| s.runners.values().filter(|r| r.session.is_some()).count() == 2;
    let mut out = vec![];
    for i in 0..RESUMES {
        assert!(gh.wait_for(Duration::from_secs(30), online).await);
        let deleted_before = gh.state(|s| s.deleted.len());
        let t = Instant::now();
        clocks.suspend(Duration::from_secs(90));
        let ok = gh
            .wait_for(Duration::from_secs(30), |s| {
                s.deleted.len() >= deleted_before + 2 && online(s)
            })
            .await;
        assert!(ok, "resume {i}: idle listeners not recycled");
        out.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let _ = mode.send(Mode::Drain);
    let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
    out
}

/// Listener starts within 30 s of the first, on the real binary, each crashing 0.3 s after
/// it listens.
async fn crash_loop(dir: &Path) -> usize {
    const WINDOW: Duration = Duration::from_secs(30);
    let gh = FakeGithub::start(Options::default()).await.unwrap();
    for _ in 0..100 {
        gh.script(Script::Crash {
            after_ms: 300,
            during_job: false,
        });
    }
    let install = dir.join("install-cl");
    sim::fixture::install_runner(&install, &fake_runner()).unwrap();
    let mut child = spawn_supervisor(&gh, &install, &dir.join("state-cl"), &[]);
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut starts = 0;
    let mut first: Option<tokio::time::Instant> = None;
    loop {
        let deadline = first.map_or(tokio::time::Instant::now() + Duration::from_secs(60), |f| {
            f + WINDOW
        });
        match tokio::time::timeout_at(deadline, lines.next_line()).await {
            Ok(Ok(Some(l))) if l.contains("Listening for Jobs") => {
                first.get_or_insert_with(tokio::time::Instant::now);
                starts += 1;
            }
            Ok(Ok(Some(_))) => {}
            _ => break,
        }
    }
    stop(child).await;
    starts
}

/// The most listener starts in `window` over 1,000 seeds of the back-off's jitter (the
/// default 2 s base), for a listener crashing `crash` after it starts.
fn crash_loop_policy(window: Duration, crash: Duration) -> usize {
    use runner_supervisor::policy::machine::outer::{
        crash_loop_starts, Backoff, Jitter, FAILURE_BACKOFF_CAP,
    };
    let backoff = Backoff {
        base: Duration::from_secs(2),
        cap: FAILURE_BACKOFF_CAP,
    };
    (0..1000u64)
        .map(|seed| crash_loop_starts(backoff, window, crash, &mut Jitter::Seeded(seed)))
        .max()
        .unwrap_or(0)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (mut wd, mut rs, crash_30s) = rt.block_on(async {
        (
            watchdog(dir.path()).await,
            resume(dir.path()).await,
            crash_loop(dir.path()).await,
        )
    });
    let crash_10min = crash_loop_policy(Duration::from_secs(600), Duration::from_millis(300));
    assert!(!wd.is_empty() && !rs.is_empty());
    let (wd_p50, wd_max) = (pct(&mut wd, 0.5), pct(&mut wd, 1.0));
    let (rs_p50, rs_max) = (pct(&mut rs, 0.5), pct(&mut rs, 1.0));
    let mark = |ok: bool| if ok { "ok" } else { "MISSED" };
    println!("\nrunner-supervisor resilience benchmark");
    println!(
        "  stuck line -> replacement listening, minus the {GRACE_MS} ms grace ({} listeners)",
        wd.len()
    );
    println!(
        "    p50 {wd_p50:8.1} ms   target <= 200 ms   {}   (max {wd_max:.1} ms)",
        mark(wd_p50 <= 200.0)
    );
    println!(
        "  simulated resume -> idle listeners recycled ({} resumes, 2 slots)",
        rs.len()
    );
    println!(
        "    max {rs_max:8.1} ms   target <= 2000 ms  {}   (p50 {rs_p50:.1} ms)",
        mark(rs_max <= 2000.0)
    );
    println!("  crash loop: a listener crashing 0.3 s after it listens");
    println!(
        "    starts in 30 s   {crash_30s:4}   target <= 8   {}   (real binary)",
        mark(crash_30s <= 8)
    );
    println!(
        "    starts in 10 min {crash_10min:4}   target <= 20  {}   (the back-off policy, worst of 1,000 jitter draws)",
        mark(crash_10min <= 20)
    );
}
