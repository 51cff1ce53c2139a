//! `[runner] backend = "container"` through the binary, on the tests' own real Docker
//! engine: a fresh container for every job (created for its listener, removed after it),
//! the runner mounted read-only from the install, the JIT config in a file only the
//! container holds, the same supervision (lines, exits, OOM as a lost job), declared
//! caches, and nothing left after a SIGKILL of the supervisor.

use std::collections::BTreeMap;
use std::time::Duration;

use nix::sys::signal::Signal;
use sim::github::JobSpec;

use crate::support::dockerd::Dockerd;
use crate::support::rootfs::debootstrap;
use crate::support::{setup, Daemon};

const T: Duration = Duration::from_secs(90);

pub const IMAGE: &str = "rs-job:test";

/// A real engine with a job image (Debian bookworm minbase: sh, bash, coreutils: what the
/// fake runner needs), and a supervisor's environment for container mode on it.
pub async fn engine() -> Dockerd {
    let mut dk = Dockerd::start().await;
    let rootfs = debootstrap("bookworm-minbase", &[]);
    dk.import_rootfs(&rootfs, IMAGE, &[]);
    dk
}

pub fn container_env(env: &mut BTreeMap<String, String>, dk: &Dockerd) {
    for (k, v) in [
        ("SUPERVISOR_RUNNER_BACKEND", "container"),
        ("SUPERVISOR_CONTAINER_IMAGE", IMAGE),
        ("SUPERVISOR_CONTAINER_DOCKER_HOST", &dk.host()),
        // The fake GitHub is on loopback.
        ("SUPERVISOR_CONTAINER_NETWORK", "host"),
    ] {
        env.insert(k.into(), v.to_string());
    }
}

pub fn step(name: &str, run: &str) -> JobSpec {
    JobSpec {
        name: name.into(),
        duration_ms: 300,
        run: Some(run.into()),
        ..Default::default()
    }
}

/// Our job containers on the engine (any state), by name.
pub fn job_containers(dk: &mut Dockerd) -> Vec<String> {
    dk.docker(&[
        "ps",
        "-a",
        "--filter",
        "label=io.github.runner-supervisor.role=job",
        "--format",
        "{{.Names}}",
    ])
    .unwrap_or_default()
    .lines()
    .map(str::to_string)
    .filter(|l| !l.is_empty())
    .collect()
}

fn results(gh: &sim::github::FakeGithub) -> Vec<(String, String)> {
    gh.state(|s| {
        s.completed
            .iter()
            .map(|j| (j.name.clone(), j.result.clone()))
            .collect()
    })
}

#[tokio::test]
async fn every_job_runs_in_a_fresh_container_and_only_declared_caches_are_shared() {
    let mut dk = engine().await;
    let (sb, gh, mut env) = setup(|_| {}).await;
    container_env(&mut env, &dk);
    env.insert(
        "SUPERVISOR_CONTAINER_VOLUMES".into(),
        "rs-shared-cache:/cache".into(),
    );
    env.insert(
        "SUPERVISOR_CONTAINER_ENV".into(),
        "JOB_SLOT={slot},WHO={runner_name}@{hostname}".into(),
    );
    // Job 1 leaves a file in its work folder and a line in the declared cache; job 2 must
    // see the line and not the file (its step fails otherwise, and so does the job).
    gh.enqueue(
        step(
            "first",
            "touch left-by-first && echo first >> /cache/log && test \"$JOB_SLOT\" = 0 && case \"$WHO\" in ci-*@*) ;; *) exit 3;; esac",
        ),
        1,
    );
    gh.enqueue(
        step(
            "second",
            "test ! -e left-by-first && grep -qx first /cache/log && test ! -w /runner/bin",
        ),
        1,
    );
    let mut d = Daemon::start(&env, &["run"]).await;
    assert!(
        gh.wait_for(T, |s| s.completed.len() == 2).await,
        "{}",
        d.log().join("\n")
    );
    assert_eq!(
        results(&gh),
        vec![
            ("first".to_string(), "Succeeded".to_string()),
            ("second".to_string(), "Succeeded".to_string())
        ]
    );
    // Each job's container was removed after it: the one left is the idle listener's.
    d.wait_nth("container_removed", 2, T).await;
    let live = job_containers(&mut dk);
    assert!(live.len() <= 1, "{live:?}");
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
    assert_eq!(job_containers(&mut dk), Vec::<String>::new());
    // The declared cache outlives them.
    let vols = dk
        .docker(&["volume", "ls", "--format", "{{.Name}}"])
        .unwrap();
    assert!(vols.lines().any(|v| v == "rs-shared-cache"), "{vols}");
    drop(sb);
}
