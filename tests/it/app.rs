//! GitHub App authentication through the real binary against the fake GitHub, which
//! verifies each JWT's RS256 signature and times on its own clock and issues installation
//! tokens that expire.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use sim::github::app::AppOptions;
use sim::github::FakeGithub;

use crate::support::{github, listeners, wait_health, Daemon, Sandbox};

const T: Duration = Duration::from_secs(60);

/// One RSA key pair for the whole test run (openssl, PKCS#1 as GitHub issues them).
pub(crate) fn keypair() -> &'static (String, String) {
    static K: OnceLock<(String, String)> = OnceLock::new();
    K.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.pem");
        let run = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .output()
                .expect("openssl");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&[
            "genrsa",
            "-traditional",
            "-out",
            key.to_str().unwrap(),
            "2048",
        ]);
        let public = dir.path().join("pub.pem");
        run(&[
            "rsa",
            "-in",
            key.to_str().unwrap(),
            "-pubout",
            "-out",
            public.to_str().unwrap(),
        ]);
        (
            std::fs::read_to_string(&key).unwrap(),
            std::fs::read_to_string(&public).unwrap(),
        )
    })
}

/// The fake GitHub with the App installed on octo/app.
pub(crate) async fn app_github(f: impl FnOnce(&mut AppOptions)) -> FakeGithub {
    let mut a = AppOptions::new(keypair().1.clone());
    f(&mut a);
    github(|o| o.app = Some(a)).await
}

/// The App's key file (mode 0600) in the sandbox.
pub(crate) fn key_file(sb: &Sandbox) -> PathBuf {
    let p = sb.dir.path().join("app.pem");
    std::fs::write(&p, &keypair().0).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// The sandbox's environment with the App instead of the PAT.
pub(crate) fn app_env(sb: &Sandbox, gh: &FakeGithub) -> BTreeMap<String, String> {
    let mut env = sb.env(gh);
    env.remove("GITHUB_PAT");
    env.insert("SUPERVISOR_GITHUB_APP_ID".into(), "4242".into());
    env.insert(
        "SUPERVISOR_GITHUB_APP_PRIVATE_KEY_FILE".into(),
        key_file(sb).display().to_string(),
    );
    env
}

fn job(name: &str) -> sim::github::JobSpec {
    crate::support::job(name, 300)
}

fn issued(gh: &FakeGithub) -> u64 {
    gh.state(|s| s.installation_tokens_issued)
}

fn jit_calls(gh: &FakeGithub) -> Vec<u16> {
    gh.calls()
        .iter()
        .filter(|c| c.path.ends_with("generate-jitconfig"))
        .map(|c| c.status)
        .collect()
}

/// No secret of the App anywhere: not the key, a JWT or an installation token.
fn assert_no_secret(what: &str, text: &str, tokens: &[String]) {
    let key_line = keypair().0.lines().nth(1).unwrap();
    assert!(!text.contains(key_line), "{what} holds the private key");
    assert!(
        !text.contains("PRIVATE KEY"),
        "{what} holds the private key"
    );
    assert!(!text.contains("eyJ"), "{what} holds a JWT");
    for t in tokens {
        assert!(
            !text.contains(t.as_str()),
            "{what} holds an installation token"
        );
    }
}

#[tokio::test]
async fn jobs_run_end_to_end_with_an_app_one_token_and_no_secret_anywhere() {
    let sb = Sandbox::new();
    let gh = app_github(|_| {}).await;
    let mut env = app_env(&sb, &gh);
    // Four slots register at once: one token request between them (a single flight).
    env.insert("SUPERVISOR_SLOTS".into(), "4".into());
    let mut d = Daemon::start(&env, &["run"]).await;
    d.wait_listening(4, T).await;
    assert_eq!(issued(&gh), 1, "four slots, one token request");
    let token_calls = gh
        .calls()
        .iter()
        .filter(|c| c.path.ends_with("/access_tokens"))
        .count();
    assert_eq!(token_calls, 1);
    for i in 0..6 {
        gh.enqueue(job(&format!("job {i}")), 1);
    }
    assert!(gh.wait_for(T, |s| s.completed.len() == 6).await);
    assert!(gh.state(|s| s.completed.iter().all(|j| j.result == "Succeeded")));
    assert!(
        jit_calls(&gh).iter().all(|s| *s == 201),
        "{:?}",
        jit_calls(&gh)
    );
    assert_eq!(issued(&gh), 1, "the token is reused until near its expiry");
    // No secret leaks: the log, the status file, the listeners' environment.
    let tokens: Vec<String> = gh.state(|s| s.installation_tokens.keys().cloned().collect());
    let pid = listeners(&sb, 4)[0];
    let environ = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/environ")).unwrap())
        .replace('\0', "\n");
    assert_no_secret("the listener's environment", &environ, &tokens);
    let cmdline = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap())
        .into_owned();
    assert_no_secret("the listener's argv", &cmdline, &tokens);
    let status = std::fs::read_to_string(sb.state.join("status.json")).unwrap();
    assert_no_secret("status.json", &status, &tokens);
    let token = crate::support::status(&env).system.token;
    assert_eq!(token.valid, Some(true), "{token:?}");
    assert_eq!(token.kind.as_deref(), Some("app"));
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
    assert_no_secret("the log", &d.log().join("\n"), &tokens);
    let text = crate::support::cli(&env, &["config"]).stdout;
    assert!(
        text.contains("github.app_id") && text.contains("4242"),
        "{text}"
    );
    assert_no_secret("supervisor config", &text, &tokens);
}

#[tokio::test]
async fn a_token_that_expires_mid_run_is_refreshed_without_a_failed_registration() {
    let sb = Sandbox::new();
    // Tokens live 6 s here instead of an hour.
    let gh = app_github(|a| a.token_ttl = Duration::from_secs(6)).await;
    let env = app_env(&sb, &gh);
    let mut d = Daemon::run_listening(&env, 1, T).await;
    let t0 = Instant::now();
    let mut n = 0;
    // Jobs for 14 s: past two expiries.
    while t0.elapsed() < Duration::from_secs(14) {
        gh.enqueue(job(&format!("j{n}")), 1);
        n += 1;
        assert!(gh.wait_for(T, |s| s.completed.len() == n).await);
    }
    let tokens = issued(&gh);
    assert!(
        (2..=5).contains(&tokens),
        "{tokens} tokens over 14 s of 6 s tokens (refreshed a sixth of their life early)"
    );
    assert!(
        jit_calls(&gh).iter().all(|s| *s == 201),
        "no registration was refused: {:?}",
        jit_calls(&gh)
    );
    assert!(
        gh.calls().iter().all(|c| c.status != 401),
        "no request was refused"
    );
    println!("{n} jobs and registrations in 14 s with {tokens} installation tokens of 6 s");
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn a_suspended_installation_degrades_health_and_recovers_by_itself() {
    let sb = Sandbox::new();
    let gh = app_github(|_| {}).await;
    let mut env = app_env(&sb, &gh);
    env.insert("SUPERVISOR_TOKEN_CHECK_INTERVAL".into(), "1s".into());
    let mut d = Daemon::run_listening(&env, 1, T).await;
    gh.state(|s| s.installation_suspended = true);
    let line = d.wait_event("token_refused", T).await;
    assert!(
        line.str("error").is_some_and(|e| e.contains("suspended")),
        "{line:?}"
    );
    let (code, out) = wait_health(&env, "token", Duration::from_secs(10)).await;
    assert_eq!(code, Some(0), "degraded, not unhealthy: {out}");
    assert!(
        out.starts_with("Degraded") && out.contains("suspended"),
        "{out}"
    );
    let restored = Instant::now();
    gh.state(|s| s.installation_suspended = false);
    d.wait_event("token_recovered", T).await;
    let healthy = loop {
        let (_, out) = crate::support::health(&env);
        if out.starts_with("Ok") {
            break restored.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!(
        "restored installation to healthy: {} ms",
        healthy.as_millis()
    );
    // One refusal logged, however many checks saw it.
    assert_eq!(d.count_events("token_refused", |_| true), 1);
    gh.enqueue(job("after"), 1);
    assert!(
        gh.wait_for(T, |s| s.completed.iter().any(|j| j.name == "after"))
            .await
    );
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn a_clock_three_minutes_fast_or_slow_still_registers() {
    for shift in ["+3m", "-3m"] {
        let sb = Sandbox::new();
        let gh = app_github(|_| {}).await;
        let mut env = app_env(&sb, &gh);
        // Only the supervisor's clock: the fake GitHub keeps the true time.
        for (k, v) in crate::support::faketime_env(shift) {
            env.insert(k, v);
        }
        let mut d = Daemon::run_listening(&env, 1, T).await;
        gh.enqueue(job("skewed"), 1);
        assert!(gh.wait_for(T, |s| s.completed.len() == 1).await, "{shift}");
        assert!(
            jit_calls(&gh).iter().all(|s| *s == 201),
            "{shift}: {:?}",
            jit_calls(&gh)
        );
        let offset = crate::support::status(&env)
            .system
            .clock
            .offset_s
            .unwrap_or_default();
        assert!(
            (offset.abs() - 180.0).abs() < 5.0,
            "{shift}: offset {offset}"
        );
        println!(
            "{shift}: registered with the clock {offset:+.1} s off; JWTs refused: {}",
            gh.calls().iter().filter(|c| c.status == 401).count()
        );
        d.signal(Signal::SIGTERM);
        assert_eq!(d.wait_exit(T).await.0, Some(0));
    }
}

fn run_exit(env: &BTreeMap<String, String>) -> (Option<i32>, String) {
    let out = crate::support::cli(env, &["run"]);
    (out.code, out.stderr)
}

#[tokio::test]
async fn bad_key_files_and_a_pat_with_an_app_exit_64() {
    let sb = Sandbox::new();
    let gh = app_github(|_| {}).await;
    let env = app_env(&sb, &gh);
    let key = PathBuf::from(&env["SUPERVISOR_GITHUB_APP_PRIVATE_KEY_FILE"]);
    let with = |f: &dyn Fn(&mut BTreeMap<String, String>)| {
        let mut e = env.clone();
        f(&mut e);
        run_exit(&e)
    };
    // Missing.
    let (code, err) = with(&|e| {
        e.insert(
            "SUPERVISOR_GITHUB_APP_PRIVATE_KEY_FILE".into(),
            "/nonexistent/app.pem".into(),
        );
    });
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains("github.app_private_key_file") && err.contains("/nonexistent/app.pem"),
        "{err}"
    );
    // Not a PEM RSA key.
    let junk = sb.dir.path().join("junk.pem");
    std::fs::write(&junk, "not a key\n").unwrap();
    std::fs::set_permissions(&junk, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, err) = with(&|e| {
        e.insert(
            "SUPERVISOR_GITHUB_APP_PRIVATE_KEY_FILE".into(),
            junk.display().to_string(),
        );
    });
    assert_eq!(code, Some(64));
    assert!(err.contains("is not a PEM RSA private key"), "{err}");
    // Group-readable.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let (code, err) = run_exit(&env);
    assert_eq!(code, Some(64));
    assert!(
        err.contains("mode 0640") && err.contains("chmod 600"),
        "{err}"
    );
    assert!(!err.contains(keypair().0.lines().nth(1).unwrap()));
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    // A PAT and an App.
    let (code, err) = with(&|e| {
        e.insert("GITHUB_PAT".into(), "ghp_x".into());
    });
    assert_eq!(code, Some(64));
    assert!(
        err.contains("a token and a GitHub App are both configured"),
        "{err}"
    );
    // The ID without the key.
    let (code, err) = with(&|e| {
        e.remove("SUPERVISOR_GITHUB_APP_PRIVATE_KEY_FILE");
    });
    assert_eq!(code, Some(64));
    assert!(
        err.contains("github.app_private_key_file: missing"),
        "{err}"
    );
}

#[tokio::test]
async fn doctor_checks_the_installations_permissions_and_coverage() {
    // Everything granted.
    let sb = Sandbox::new();
    let gh = app_github(|_| {}).await;
    let env = app_env(&sb, &gh);
    let d = crate::doctor::doctor(&env).await;
    assert_eq!(d.status("token"), "pass", "{}", d.check("token"));
    assert!(d.reason("token").contains("runner-supervisor-ci[bot]"));
    assert_eq!(d.status("permissions"), "pass");
    assert!(d.reason("permissions").contains("administration: write"));
    // Administration only readable: named, with where to grant it.
    let gh = app_github(|a| {
        a.permissions.insert("administration".into(), "read".into());
    })
    .await;
    let env = app_env(&sb, &gh);
    let d = crate::doctor::doctor(&env).await;
    assert_eq!(d.status("permissions"), "fail");
    assert!(
        d.reason("permissions").contains("administration: read"),
        "{}",
        d.reason("permissions")
    );
    assert!(d
        .fix("permissions")
        .contains("Repository permissions, set Administration to Read and write"));
    // Not installed on the repository.
    let gh = app_github(|a| a.covers = vec!["repos/octo/other".into()]).await;
    let env = app_env(&sb, &gh);
    let d = crate::doctor::doctor(&env).await;
    assert_eq!(d.status("token"), "fail");
    assert!(
        d.reason("token").contains("is not installed on octo/app"),
        "{}",
        d.reason("token")
    );
    let _ = Path::new("");
}

#[tokio::test]
async fn doctor_takes_a_root_only_app_key_from_standard_input() {
    let sb = Sandbox::new();
    let gh = app_github(|_| {}).await;
    let mut env = app_env(&sb, &gh);
    // As the systemd README installs it: root's, 0600; doctor runs as the service's user.
    crate::support::as_nobody(&sb, &mut env);
    let d = crate::doctor::doctor_as(&env, &crate::support::NOBODY, &[], None).await;
    assert_eq!(d.status("token"), "fail");
    assert!(
        d.reason("token").contains("the GitHub App's private key")
            && d.reason("token").contains("Permission denied"),
        "{}",
        d.reason("token")
    );
    assert!(
        d.fix("token").contains("--app-key-stdin"),
        "{}",
        d.fix("token")
    );
    let d = crate::doctor::doctor_as(
        &env,
        &crate::support::NOBODY,
        &["--app-key-stdin"],
        Some(&keypair().0),
    )
    .await;
    assert_eq!(d.status("token"), "pass", "{:#}", d.json);
    assert_eq!(d.status("permissions"), "pass");
    assert_eq!(d.code, Some(0), "{:#}", d.json);
}

#[tokio::test]
async fn with_an_ntp_server_even_the_first_jwt_is_on_githubs_time() {
    let chrony = crate::support::Chronyd::start("").await;
    let sb = Sandbox::new();
    let gh = app_github(|_| {}).await;
    let mut env = app_env(&sb, &gh);
    env.insert("SUPERVISOR_CLOCK_NTP_SERVERS".into(), chrony.ntp_address());
    for (k, v) in crate::support::faketime_env("+3m") {
        env.insert(k, v);
    }
    let mut d = Daemon::start(&env, &["run"]).await;
    let e = d.wait_event("clock_offset_app", T).await;
    assert!(
        e.has("offset_s", "+17") || e.has("offset_s", "+18"),
        "{e:?}"
    );
    d.wait_listening(1, T).await;
    gh.enqueue(job("skewed"), 1);
    assert!(gh.wait_for(T, |s| s.completed.len() == 1).await);
    assert_eq!(
        gh.calls().iter().filter(|c| c.status == 401).count(),
        0,
        "no JWT was refused: {:?}",
        gh.calls()
            .iter()
            .filter(|c| c.status == 401)
            .map(|c| &c.path)
            .collect::<Vec<_>>()
    );
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

#[tokio::test]
async fn a_clock_that_jumps_from_three_minutes_fast_to_three_slow_keeps_registering() {
    let sb = Sandbox::new();
    let gh = app_github(|a| a.token_ttl = Duration::from_secs(4)).await;
    let mut env = app_env(&sb, &gh);
    let shift = sb.dir.path().join("faketime");
    std::fs::write(&shift, "+3m\n").unwrap();
    for kv in crate::support::faketime_file_env(&shift).split(',') {
        let (k, v) = kv.split_once('=').unwrap();
        env.insert(k.into(), v.into());
    }
    env.insert("SUPERVISOR_CLOCK_INTERVAL".into(), "1s".into());
    let mut d = Daemon::run_listening(&env, 1, T).await;
    gh.enqueue(job("fast"), 1);
    assert!(gh.wait_for(T, |s| s.completed.len() == 1).await);
    // The laptop's clock now runs 3 minutes slow, as after a bad resume.
    std::fs::write(&shift, "-3m\n").unwrap();
    let tokens = issued(&gh);
    // Jobs across at least two more token lifetimes (4 s each).
    let t0 = Instant::now();
    let mut n = 1;
    while t0.elapsed() < Duration::from_secs(10) {
        gh.enqueue(job(&format!("slow {n}")), 1);
        n += 1;
        assert!(gh.wait_for(T, |s| s.completed.len() == n).await, "job {n}");
    }
    assert!(
        issued(&gh) >= tokens + 2,
        "tokens refreshed on the slow clock too"
    );
    assert!(
        jit_calls(&gh).iter().all(|s| *s == 201),
        "{:?}",
        jit_calls(&gh)
    );
    // No request was refused after the jump: JWTs stay valid (iat further back), and
    // each token's life is read from GitHub's own Date, not from the jumping clock.
    assert_eq!(
        gh.calls().iter().filter(|c| c.status == 401).count(),
        1,
        "only the very first JWT, before any Date was seen"
    );
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}
