//! A GitHub App's token economy and recovery, with the real `supervisor` binary against
//! the fake GitHub (which verifies every JWT and expires installation tokens).
//!
//! Run: `cargo build --release --workspace && cargo bench --bench app`.
//! Figures:
//! - registrations per hour on 2 slots with back-to-back short jobs, and installation
//!   tokens requested per token lifetime (`APP_TTL_SECS`, 20 s here so that a run of
//!   `APP_SECS` = 60 s crosses several lifetimes): with GitHub's one-hour tokens that is
//!   tokens per hour (target: about 1);
//! - from a suspended installation restored to `supervisor health` saying Ok, with the
//!   default `[token] check_interval` (target: well under a minute).
// Tests and benches measure and read real time on purpose (see clippy.toml).
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use sim::github::app::AppOptions;
use sim::github::{FakeGithub, JobSpec, Options};

fn env_secs(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn openssl(args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn health(env: &BTreeMap<String, String>) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_supervisor"))
        .arg("health")
        .env_clear()
        .envs(env)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let secs = env_secs("APP_SECS", 60);
    let ttl = env_secs("APP_TTL_SECS", 20);
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("app.pem");
    let public = dir.path().join("pub.pem");
    openssl(&[
        "genrsa",
        "-traditional",
        "-out",
        key.to_str().unwrap(),
        "2048",
    ]);
    openssl(&[
        "rsa",
        "-in",
        key.to_str().unwrap(),
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut app = AppOptions::new(std::fs::read_to_string(&public).unwrap());
    app.token_ttl = Duration::from_secs(ttl);
    let gh = FakeGithub::start(Options {
        app: Some(app),
        ..Options::default()
    })
    .await
    .unwrap();
    let install = dir.path().join("actions-runner");
    let runner = sim::fixture::fake_runner_beside(Path::new(env!("CARGO_BIN_EXE_supervisor")));
    sim::fixture::install_runner(&install, &runner).unwrap();
    let mut env: BTreeMap<String, String> =
        sim::fixture::supervisor_env(&gh.url(), "bench", &install, &dir.path().join("state"))
            .into_iter()
            .collect();
    env.remove("GITHUB_PAT");
    for (k, v) in [
        ("SUPERVISOR_GITHUB_APP_ID", "4242".to_string()),
        (
            "SUPERVISOR_GITHUB_APP_PRIVATE_KEY_FILE",
            key.display().to_string(),
        ),
        ("SUPERVISOR_SLOTS", "2".into()),
        ("SUPERVISOR_LOG", "warn".into()),
    ] {
        env.insert(k.into(), v);
    }
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_supervisor"))
        .arg("run")
        .env_clear()
        .envs(&env)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let jit = |s: &sim::github::State| {
        s.calls
            .iter()
            .filter(|c| c.path.ends_with("generate-jitconfig") && c.status == 201)
            .count()
    };
    assert!(
        gh.wait_for(Duration::from_secs(30), |s| s
            .runners
            .values()
            .filter(|r| r.session.is_some())
            .count()
            == 2)
            .await
    );
    // Back-to-back 100 ms jobs on both slots for `secs`.
    let (regs0, tokens0) = gh.state(|s| (jit(s), s.installation_tokens_issued));
    let t0 = Instant::now();
    let mut done = 0;
    while t0.elapsed() < Duration::from_secs(secs) {
        gh.enqueue(
            JobSpec {
                name: "bench".into(),
                duration_ms: 100,
                result: "Succeeded".into(),
                labels: vec![],
                workflow: None,
                actions: vec![],
                run: None,
            },
            2,
        );
        done += 2;
        assert!(
            gh.wait_for(Duration::from_secs(30), |s| s.completed.len() >= done)
                .await
        );
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let (regs, tokens, refused) = gh.state(|s| {
        (
            jit(s) - regs0,
            s.installation_tokens_issued - tokens0,
            s.calls.iter().filter(|c| c.status == 401).count(),
        )
    });
    let per_hour = regs as f64 * 3600.0 / elapsed;
    let per_lifetime = tokens as f64 * ttl as f64 / elapsed;
    println!(
        "GitHub App, 2 slots, {done} jobs in {elapsed:.0} s, installation tokens living {ttl} s:"
    );
    println!("  registrations: {regs} ({per_hour:.0} per hour)");
    println!(
        "  installation tokens requested: {tokens} ({per_lifetime:.2} per token lifetime, i.e. {per_lifetime:.2} per hour with GitHub's one-hour tokens) [target about 1: {}]",
        if (0.8..=1.6).contains(&per_lifetime) { "ok" } else { "MISSED" }
    );
    println!("  refused requests (401): {refused}");

    // Suspend the installation, wait for health to say so, restore, time the recovery.
    gh.state(|s| s.installation_suspended = true);
    // The next registration (made while this job runs) meets the suspension.
    gh.enqueue(
        JobSpec {
            name: "after suspension".into(),
            duration_ms: 100,
            result: "Succeeded".into(),
            labels: vec![],
            workflow: None,
            actions: vec![],
            run: None,
        },
        1,
    );
    let t = Instant::now();
    while !health(&env).starts_with("Degraded") {
        assert!(t.elapsed() < Duration::from_secs(120), "never degraded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let degraded_after = t.elapsed();
    gh.state(|s| s.installation_suspended = false);
    let t = Instant::now();
    while !health(&env).starts_with("Ok") {
        assert!(t.elapsed() < Duration::from_secs(120), "never recovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let recovered = t.elapsed();
    println!(
        "  suspended installation: health degraded after {:.1} s; restored to Ok in {:.1} s (default check_interval; rechecked every 30 s while refused) [target < 60 s: {}]",
        degraded_after.as_secs_f64(),
        recovered.as_secs_f64(),
        if recovered < Duration::from_secs(60) { "ok" } else { "MISSED" }
    );
    let _ = child.start_kill();
    let _ = child.wait().await;
}
