//! The fake runner against the fake GitHub, run directly: exact strings on the right
//! streams, the `{utc}` format, `_diag/Runner_*.log` entries, and the real exit codes.
// Tests and benches measure and read real time on purpose (see clippy.toml).
#![allow(clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use sim::github::{FakeGithub, JobSpec, Options};
use sim::protocol::Script;

const EXE: &str = env!("CARGO_BIN_EXE_fake-runner");

struct Run {
    code: Option<i32>,
    stdout: Vec<String>,
    stderr: Vec<String>,
    diag: String,
}

fn is_utc(s: &str) -> bool {
    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%SZ").is_ok()
}

/// `{utc}: rest` → rest, checking the timestamp format.
fn stamped(line: &str) -> Option<&str> {
    let (ts, rest) = line.split_at_checked(20)?;
    (is_utc(ts) && rest.starts_with(": ")).then(|| &rest[2..])
}

async fn jit(gh: &FakeGithub, name: &str) -> (u64, String) {
    gh.generate_jit(name).await
}

fn install(dir: &Path) -> PathBuf {
    let root = dir.join("runner");
    sim::fixture::install_runner(&root, Path::new(EXE)).unwrap();
    root
}

async fn run(root: &Path, jit: Option<&str>, sigint_on: Option<&str>) -> Run {
    let mut cmd = tokio::process::Command::new(root.join("bin/Runner.Listener"));
    cmd.arg("run")
        .current_dir(root)
        .env_clear()
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(j) = jit {
        cmd.env("ACTIONS_RUNNER_INPUT_JITCONFIG", j);
    }
    cmd.env("ACTIONS_RUNNER_RETURN_VERSION_DEPRECATED_EXIT_CODE", "1");
    let mut child = cmd.spawn().unwrap();
    let pid = child.id().unwrap() as i32;
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let err = child.stderr.take().unwrap();
    let err_task = tokio::spawn(async move {
        let mut v = vec![];
        let mut l = BufReader::new(err).lines();
        while let Ok(Some(x)) = l.next_line().await {
            v.push(x);
        }
        v
    });
    let mut stdout = vec![];
    while let Ok(Ok(Some(line))) =
        tokio::time::timeout(Duration::from_secs(30), out.next_line()).await
    {
        if sigint_on.is_some_and(|s| line.contains(s)) {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGINT,
            )
            .unwrap();
        }
        stdout.push(line);
    }
    let code = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap()
        .code();
    let stderr = err_task.await.unwrap();
    let diag = std::fs::read_dir(root.join("_diag"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("Runner_"))
                .map(|e| std::fs::read_to_string(e.path()).unwrap())
                .collect::<String>()
        })
        .unwrap_or_default();
    Run {
        code,
        stdout,
        stderr,
        diag,
    }
}

#[tokio::test]
async fn one_job_then_exit_0_with_the_exact_lines() {
    let t = tempfile::tempdir().unwrap();
    let gh = FakeGithub::start(Options::default()).await.unwrap();
    gh.enqueue(
        JobSpec {
            name: "build and test".into(),
            duration_ms: 100,
            ..Default::default()
        },
        1,
    );
    let (_, blob) = jit(&gh, "r1").await;
    let root = install(t.path());
    let r = run(&root, Some(&blob), None).await;
    assert_eq!(r.code, Some(0), "{:?}", r.stderr);
    assert!(r.stderr.is_empty(), "{:?}", r.stderr);
    let s = &r.stdout;
    assert_eq!(s[0], "\u{221a} Connected to GitHub");
    assert_eq!(s[1], "");
    assert_eq!(s[2], "Current runner version: '2.338.0'");
    assert_eq!(stamped(&s[3]), Some("Listening for Jobs"), "{s:?}");
    assert_eq!(stamped(&s[4]), Some("Running job: build and test"));
    assert_eq!(
        stamped(&s[5]),
        Some("Job build and test completed with result: Succeeded")
    );
    assert_eq!(
        &s[6..],
        ["\u{221a} Removed .credentials", "\u{221a} Removed .runner"]
    );
    assert!(!root.join(".runner").exists() && !root.join(".credentials").exists());
    // The diag log mirrors WriteLine, but not success messages.
    assert!(
        r.diag
            .contains(" INFO Terminal] WRITE LINE: Current runner version: '2.338.0'"),
        "{}",
        r.diag
    );
    assert!(r.diag.contains(": Listening for Jobs"));
    assert!(!r.diag.contains("Connected to GitHub"));
    assert!(
        r.diag
            .lines()
            .all(|l| l.starts_with('[') && is_utc(&l[1..21])),
        "{}",
        r.diag
    );
    // The service de-registered the ephemeral runner.
    assert!(gh.runners().is_empty());
}

#[tokio::test]
async fn session_conflict_sequence_ends_in_exit_5() {
    let t = tempfile::tempdir().unwrap();
    let gh = FakeGithub::start(Options {
        time_scale: 0.005,
        ..Options::default()
    })
    .await
    .unwrap();
    gh.state(|s| s.conflicts_for_next = 100);
    let (_, blob) = jit(&gh, "busy-name").await;
    let r = run(&install(t.path()), Some(&blob), None).await;
    assert_eq!(r.code, Some(5));
    assert_eq!(
        r.stdout
            .iter()
            .filter(|l| *l == "\u{221a} Connected to GitHub")
            .count(),
        8
    );
    let e = &r.stderr;
    assert_eq!(e[0], "A session for this runner already exists.");
    assert_eq!(stamped(&e[1]), Some("Runner connect error: The actions runner busy-name already has an active session.. Retrying until reconnected."));
    assert_eq!(
        e.iter()
            .filter(|l| l.contains("Runner connect error"))
            .count(),
        1,
        "printed once per episode"
    );
    assert_eq!(
        e.iter()
            .filter(|l| *l == "A session for this runner already exists.")
            .count(),
        8
    );
    assert_eq!(
        e[e.len() - 2],
        "Stop retry on SessionConflictException after retried for 240 seconds."
    );
    assert_eq!(
        e[e.len() - 1],
        "Failed to create session. The actions runner busy-name already has an active session."
    );
    assert!(r
        .diag
        .contains("ERR  Terminal] WRITE ERROR: A session for this runner already exists."));
}

#[tokio::test]
async fn not_configured_and_bad_jit_config_exit_1() {
    let t = tempfile::tempdir().unwrap();
    let root = install(t.path());
    let r = run(&root, None, None).await;
    assert_eq!(
        (r.code, r.stderr.clone()),
        (Some(1), vec!["Runner is not configured.".to_string()])
    );
    let r = run(&root, Some("not base64 %%%"), None).await;
    assert_eq!(r.code, Some(1));
    assert!(
        r.stderr[0].contains("not a valid Base-64 string"),
        "{:?}",
        r.stderr
    );
}

#[tokio::test]
async fn deleted_registration_at_session_create_exits_1() {
    let t = tempfile::tempdir().unwrap();
    let gh = FakeGithub::start(Options::default()).await.unwrap();
    let (id, blob) = jit(&gh, "gone").await;
    gh.delete_runner(id);
    let r = run(&install(t.path()), Some(&blob), None).await;
    assert_eq!(r.code, Some(1));
    assert!(r.stderr[0].starts_with("Failed to create a session. The runner registration has been deleted from the server, please re-configure."), "{:?}", r.stderr);
}

#[tokio::test]
async fn deleted_while_idle_cleans_up_and_exits_0() {
    let t = tempfile::tempdir().unwrap();
    let gh = FakeGithub::start(Options::default()).await.unwrap();
    let (id, blob) = jit(&gh, "idle").await;
    let root = install(t.path());
    let runner = tokio::spawn({
        let root = root.clone();
        async move { run(&root, Some(&blob), None).await }
    });
    assert!(
        gh.wait_for(Duration::from_secs(10), |s| s
            .runners
            .values()
            .any(|r| r.session.is_some()))
            .await
    );
    gh.delete_runner(id);
    let r = runner.await.unwrap();
    assert_eq!(r.code, Some(0));
    assert_eq!(
        r.stderr,
        ["The runner no longer exists on the server. Cleaning up local configuration."]
    );
    assert_eq!(
        &r.stdout[r.stdout.len() - 2..],
        ["\u{221a} Removed .credentials", "\u{221a} Removed .runner"]
    );
    assert!(!root.join(".runner").exists());
}

#[tokio::test]
async fn sigint_while_idle_prints_exiting_and_exits_0() {
    let t = tempfile::tempdir().unwrap();
    let gh = FakeGithub::start(Options::default()).await.unwrap();
    let (_, blob) = jit(&gh, "stop-me").await;
    let r = run(&install(t.path()), Some(&blob), Some("Listening for Jobs")).await;
    assert_eq!(r.code, Some(0));
    assert_eq!(r.stdout.last().unwrap(), "Exiting...");
    assert!(
        gh.wait_for(Duration::from_secs(5), |s| s
            .runners
            .values()
            .all(|r| r.session.is_none()))
            .await,
        "session deleted"
    );
}

#[tokio::test]
async fn scripted_faults_use_the_real_strings_and_codes() {
    let cases: Vec<(Script, Option<i32>, &str)> = vec![
        (
            Script::ClockSkew,
            Some(1),
            "Stopped retrying OAuth token request exception after 1800 seconds.",
        ),
        (
            Script::VersionDeprecated,
            Some(7),
            "An error occurred: Runner version v2.338.0 is deprecated and cannot receive messages.",
        ),
        (
            Script::Crash {
                after_ms: 0,
                during_job: false,
            },
            Some(2),
            "An error occurred: Object reference not set to an instance of an object.",
        ),
        (
            Script::ConnectionLoss {
                after_ms: 0,
                recover_after_ms: None,
                give_up: true,
                during_job: false,
            },
            Some(2),
            "An error occurred: The HTTP request timed out after 00:01:00.",
        ),
    ];
    for (script, code, last) in cases {
        let t = tempfile::tempdir().unwrap();
        let gh = FakeGithub::start(Options {
            time_scale: 0.0005,
            ..Options::default()
        })
        .await
        .unwrap();
        gh.script(script.clone());
        let (_, blob) = jit(&gh, "f").await;
        let r = run(&install(t.path()), Some(&blob), None).await;
        assert_eq!(r.code, code, "{script:?}: {:?}", r.stderr);
        assert_eq!(
            r.stderr.last().map(String::as_str),
            Some(last),
            "{script:?}: {:?}",
            r.stderr
        );
        if script == Script::ClockSkew {
            assert!(r.stderr[0].starts_with("The local machine's clock may be out of sync with the server time by more than five minutes."));
        }
    }
}

#[tokio::test]
async fn a_lost_connection_that_recovers_prints_reconnected() {
    let t = tempfile::tempdir().unwrap();
    let gh = FakeGithub::start(Options::default()).await.unwrap();
    gh.script(Script::ConnectionLoss {
        after_ms: 50,
        recover_after_ms: Some(100),
        give_up: false,
        during_job: false,
    });
    let (_, blob) = jit(&gh, "flaky").await;
    let r = run(&install(t.path()), Some(&blob), Some("Runner reconnected.")).await;
    assert_eq!(r.code, Some(0));
    assert_eq!(stamped(&r.stderr[0]), Some("Runner connect error: The HTTP request timed out after 00:01:00.. Retrying until reconnected."));
    assert!(
        r.stdout
            .iter()
            .any(|l| stamped(l) == Some("Runner reconnected.")),
        "{:?}",
        r.stdout
    );
}

#[tokio::test]
async fn clock_skew_is_detected_from_the_runners_own_clock() {
    // The runner's wall clock is shifted 10 minutes with libfaketime; the machine's is not.
    let t = tempfile::tempdir().unwrap();
    let gh = FakeGithub::start(Options {
        time_scale: 0.0005,
        ..Options::default()
    })
    .await
    .unwrap();
    let (_, blob) = jit(&gh, "skewed").await;
    let root = install(t.path());
    let lib = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .expect("libfaketime is missing: apt-get install faketime (.ci/run does)");
    let out = tokio::process::Command::new(root.join("bin/Runner.Listener"))
        .arg("run")
        .current_dir(&root)
        .env_clear()
        .env("ACTIONS_RUNNER_INPUT_JITCONFIG", &blob)
        .env("LD_PRELOAD", lib)
        .env("FAKETIME", "+10m")
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with("The local machine's clock may be out of sync"),
        "{err}"
    );
}
