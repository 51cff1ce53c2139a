//! The README's first command: the real `supervisor` with 2 slots against the simulated
//! GitHub, through a handful of jobs (one of whose runners crashes mid-job, and one API
//! call that fails), then SIGTERM and a summary. Needs no token and no network.
//!
//! `cargo run --release -p sim --bin demo [-- --jobs N]`
// Tests and benches measure and read real time on purpose (see clippy.toml).
#![allow(clippy::disallowed_methods)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use sim::github::{FakeGithub, Fault, FaultKind, JobSpec, Options};
use sim::protocol::Script;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Build the workspace's binaries (a no-op when up to date) and find `name` beside us.
/// Under `cargo run`, CARGO is set: always build, so a stale supervisor is never used.
fn find_or_build(name: &str) -> PathBuf {
    let me = std::env::current_exe().expect("own path");
    let dir = me.parent().expect("a directory").to_path_buf();
    let p = dir.join(name);
    if let Ok(cargo) = std::env::var("CARGO") {
        let mut cmd = std::process::Command::new(cargo);
        cmd.args(["build", "--quiet", "--workspace", "--bins"]);
        if dir.ends_with("release") {
            cmd.arg("--release");
        }
        if !cmd.status().is_ok_and(|s| s.success()) {
            eprintln!("demo: building the workspace failed");
            std::process::exit(1);
        }
    }
    if !p.exists() {
        eprintln!(
            "demo: cannot find {}; run `cargo build --release --workspace` first",
            p.display()
        );
        std::process::exit(1);
    }
    p
}

fn arg_jobs() -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--jobs")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(8)
}

fn short(line: &str) -> Option<String> {
    // Keep the demo readable: the runner's console and the supervisor's decisions.
    let keep = [
        "Listening for Jobs",
        "Running job",
        "completed with result",
        "listener exited",
        "registration deleted",
        "retrying",
        "ghost",
        "draining",
        "starting",
        "stopped",
        "Connect",
        "error",
    ];
    if keep.iter().any(|k| line.contains(k)) && !line.contains("Connected to GitHub") {
        Some(
            line.split_once("Z ")
                .map(|(_, r)| r.to_string())
                .unwrap_or_else(|| line.to_string()),
        )
    } else {
        None
    }
}

/// One HTTP GET on loopback; the body.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return String::new();
    };
    let _ = s
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf).await;
    buf.split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let supervisor = find_or_build("supervisor");
    let fake_runner = find_or_build("fake-runner");
    let n = arg_jobs().max(2);
    let tmp = std::env::temp_dir().join(format!("runner-supervisor-demo-{}", std::process::id()));
    let install = tmp.join("actions-runner");
    sim::fixture::install_runner(&install, &fake_runner).expect("lay out the runner directory");

    let gh = FakeGithub::start(Options {
        runner_startup_ms: 300,
        job_lock_timeout: Duration::from_secs(2),
        ..Options::default()
    })
    .await
    .expect("start the fake GitHub");
    println!(
        "== simulated GitHub on {} (no token, no network needed)",
        gh.url()
    );
    let names = [
        "build",
        "unit tests",
        "e2e (mongo)",
        "lint",
        "docs",
        "package",
        "integration",
        "release notes",
    ];
    for i in 0..n {
        let result = if i == 3 { "Failed" } else { "Succeeded" };
        gh.enqueue(
            JobSpec {
                name: names[i % names.len()].to_string(),
                duration_ms: 400 + (i as u64 % 3) * 300,
                result: result.into(),
                labels: vec![],
                workflow: None,
                run: None,
                actions: vec![],
            },
            1,
        );
    }
    // Two things go wrong, as they do: one API call fails, one runner crashes mid-job.
    gh.fault(Fault {
        body: None,
        method: Some("POST".into()),
        path: Some("generate-jitconfig".into()),
        kind: FaultKind::Status { status: 502 },
        times: 1,
    });
    gh.script(Script::Normal);
    gh.script(Script::Crash {
        after_ms: 200,
        during_job: true,
    });
    println!("== {n} jobs queued; one registration call will fail with 502, one runner will crash mid-job");
    println!("== starting: supervisor run (2 slots)\n");

    let env = sim::fixture::supervisor_env(&gh.url(), "demo", &install, &tmp.join("state"));
    // Metrics on a free loopback port, for one scrape at the end.
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let mut child = tokio::process::Command::new(&supervisor)
        .arg("run")
        .env_clear()
        .envs(env.clone())
        .env("SUPERVISOR_METRICS_LISTEN", metrics.to_string())
        .env("SUPERVISOR_SLOTS", "2")
        .env("SUPERVISOR_GITHUB_BACKOFF_BASE", "200ms")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the supervisor");
    let pid = child.id().expect("pid") as i32;
    let mut err = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let printer = tokio::spawn(async move {
        let mut all = vec![];
        while let Ok(Some(line)) = err.next_line().await {
            if let Some(s) = short(&line) {
                println!("  {s}");
            }
            all.push(line);
        }
        all
    });
    // Done when every job is, or at once if the supervisor exits early.
    let all_done = tokio::select! {
        done = gh.wait_for(Duration::from_secs(120), |s| s.completed.len() >= n) => done,
        _ = child.wait() => false,
    };
    println!(
        "\n== {}",
        if all_done {
            "all jobs finished"
        } else {
            "timed out waiting for the jobs"
        }
    );
    // What an operator sees: `supervisor status`, and a metrics scrape.
    let ask = |args: &[&str]| {
        std::process::Command::new(&supervisor)
            .args(args)
            .env_clear()
            .envs(env.clone())
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout).into_owned()
                    + &String::from_utf8_lossy(&o.stderr)
            })
            .unwrap_or_default()
    };
    println!("\n== supervisor status\n");
    for l in ask(&["status"]).lines() {
        println!("  {l}");
    }
    let scrape = http_get(metrics, "/metrics").await;
    println!("\n== a metrics scrape (http://{metrics}/metrics), some of it\n");
    for l in scrape.lines().filter(|l| {
        !l.starts_with('#')
            && (l.contains("_jobs_total")
                || l.contains("_slots{")
                || l.contains("listener_exits")
                || l.contains("_turnaround_seconds_count"))
    }) {
        println!("  {l}");
    }
    println!("\n== supervisor drain (through the control socket; SIGTERM does the same)\n");
    for l in ask(&["drain"]).lines() {
        println!("  {l}");
    }
    let _ = pid;
    let mut out = String::new();
    if let Some(mut so) = child.stdout.take() {
        use tokio::io::AsyncReadExt;
        let _ = so.read_to_string(&mut out).await;
    }
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait()).await;
    let _ = printer.await;
    println!(
        "\n== supervisor exited with {:?}",
        status.ok().and_then(|s| s.ok()).and_then(|s| s.code())
    );
    print!("{out}");
    let (completed, left, calls) = gh.state(|s| {
        (
            s.completed.clone(),
            s.runners.len(),
            s.calls
                .iter()
                .filter(|c| !c.path.starts_with("/_sim") && !c.path.contains("runner-registration"))
                .count(),
        )
    });
    println!("\n== what GitHub saw");
    for j in &completed {
        println!("  {:<16} {:<12} on {}", j.name, j.result, j.runner);
    }
    println!("  runners left registered: {left}   REST API calls: {calls}");
    let _ = std::fs::remove_dir_all(&tmp);
    if !all_done || left != 0 {
        std::process::exit(1);
    }
}
