//! Scenario 24, disk below threshold, against a real Docker engine this test starts
//! (see `support::dockerd`) with images built by `docker import` from a local busybox
//! root file system: nothing is pulled.

use std::collections::BTreeMap;
use std::time::Duration;

use nix::sys::signal::Signal;
use sim::github::JobSpec;

use crate::support::dockerd::Dockerd;
use crate::support::events::Event;
use crate::support::{github, wait_health, Daemon, Sandbox};

const T: Duration = Duration::from_secs(60);

fn images(d: &mut Dockerd) -> String {
    d.docker(&["images", "--format", "{{.Repository}}:{{.Tag}}"])
        .unwrap_or_default()
}

fn names(d: &mut Dockerd) -> String {
    d.docker(&["ps", "-a", "--format", "{{.Names}}"])
        .unwrap_or_default()
}

/// Wait until the job `build` (the default job) runs.
async fn wait_job_started(d: &Daemon) {
    d.wait_events("runner_job_started", |e| e.is("job", "build"), 1, T)
        .await;
}

/// A prune that removed one container.
fn one_container(e: &Event) -> bool {
    e.u64("containers") == Some(1)
}

/// What a job leaves behind: a stopped container named `name` and an image.
fn leave_junk(dk: &mut Dockerd, name: &str) {
    dk.import("rs-test:junk");
    dk.docker(&[
        "create",
        "--network",
        "host",
        "--name",
        name,
        "rs-test:junk",
        "/bin/busybox",
        "true",
    ])
    .expect("create");
}

/// The supervisor's environment for pruning `dk` below `threshold_gb`.
fn disk_env(
    sb: &Sandbox,
    gh: &sim::github::FakeGithub,
    dk: &Dockerd,
    threshold_gb: u64,
) -> BTreeMap<String, String> {
    let mut env = sb.env(gh);
    env.insert("SUPERVISOR_DISK_PRUNE".into(), "on".into());
    env.insert("SUPERVISOR_DISK_DOCKER_HOST".into(), dk.host());
    env.insert(
        "SUPERVISOR_DISK_PATH".into(),
        dk.dir.path().display().to_string(),
    );
    env.insert("PRUNE_THRESHOLD_GB".into(), threshold_gb.to_string());
    env.insert("SUPERVISOR_DISK_INTERVAL".into(), "300ms".into());
    env.insert("SUPERVISOR_DISK_UNTIL".into(), "0s".into());
    env.insert("SUPERVISOR_DISK_KEEP_IMAGES".into(), "rs-test:keep".into());
    env
}

#[tokio::test]
async fn scenario_24_disk_below_threshold_prunes_between_jobs_and_never_volumes() {
    let mut dk = Dockerd::start().await;
    dk.import("rs-test:keep");
    leave_junk(&mut dk, "stopped");
    dk.docker(&["volume", "create", "rs-vol"]).expect("volume");
    let sb = Sandbox::new();
    let work_marker = sb.slot_root(0).join("_work").join("cache.bin");
    let gh = github(|_| {}).await;
    gh.enqueue(
        JobSpec {
            duration_ms: 2500,
            ..Default::default()
        },
        1,
    );
    // Below the threshold, above half of it: not critical, so nothing is pruned while a
    // job runs.
    let free_gb =
        runner_supervisor::docker::disk::free_bytes(dk.dir.path()).unwrap() / 1_000_000_000;
    let mut env = disk_env(&sb, &gh, &dk, free_gb + 2);
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    env.insert("SUPERVISOR_METRICS_LISTEN".into(), metrics.to_string());
    // The slot's own work folder outlives the job (the default, fresh, empties it before
    // the next listener: the slot's doing, never the pruner's).
    env.insert("SUPERVISOR_RUNNER_WORKSPACE".into(), "kept".into());
    let mut d = Daemon::start(&env, &["run"]).await;
    wait_job_started(&d).await;
    // The job leaves a stopped container and an image behind.
    leave_junk(&mut dk, "stopped");
    std::fs::create_dir_all(work_marker.parent().unwrap()).unwrap();
    std::fs::write(&work_marker, b"cache").unwrap();
    d.wait_event("prune_deferred", T).await;
    let deferred_at = d.count_events("pruned", |_| true);
    assert!(names(&mut dk).contains("stopped"));
    // Between jobs, within one interval of the job's end.
    d.wait_event("job_completed", T).await;
    let t = std::time::Instant::now();
    let before = d.count_events("pruned", |_| true);
    assert_eq!(before, deferred_at, "no prune while the job ran");
    let pruned = d.wait_nth("pruned", before + 1, T).await;
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(
        pruned.u64("containers"),
        Some(1),
        "{pruned:?}\n{}",
        d.log().join("\n")
    );
    assert!(
        !names(&mut dk).contains("stopped"),
        "the stopped container is gone"
    );
    let imgs = images(&mut dk);
    assert!(imgs.contains("rs-test:keep"), "kept: {imgs}");
    assert!(!imgs.contains("rs-test:junk"), "pruned: {imgs}");
    assert!(
        dk.docker(&["volume", "ls", "--format", "{{.Name}}"])
            .unwrap()
            .contains("rs-vol"),
        "volumes are never pruned"
    );
    assert!(work_marker.exists(), "a runner's _work is never touched");
    // Health says what was freed, and that space is still short.
    let (_, out) = wait_health(&env, "disk last prune", Duration::from_secs(5)).await;
    assert!(out.contains("below the"), "{out}");
    assert!(out.contains("MB freed (1 containers"), "{out}");
    // Status and metrics say the same: free bytes, the last prune, bytes pruned.
    let disk = crate::support::status(&env).system.disk;
    let pruned = disk.pruned_bytes;
    assert!(pruned > 0, "{disk:?}");
    assert!(disk.free_bytes.unwrap() > 0, "{disk:?}");
    assert!(
        disk.last_prune.as_deref().unwrap().contains("MB freed"),
        "{disk:?}"
    );
    assert_eq!(disk.pruner.as_deref(), Some("this supervisor"));
    let (_, _, body) = crate::metrics::http_get(metrics, "/metrics");
    let value = |name: &str| -> f64 {
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name}:\n{body}"))
            .trim()
            .parse()
            .unwrap()
    };
    assert_eq!(value("runner_supervisor_pruned_bytes_total"), pruned as f64);
    assert!(value("runner_supervisor_disk_free_bytes") > 0.0);
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

/// Below half the threshold (critical), pruning goes on while a job runs, but never
/// removes what was made since the job started.
#[tokio::test]
async fn when_critical_pruning_goes_on_during_a_job_but_spares_what_the_job_made() {
    let mut dk = Dockerd::start().await;
    dk.import("rs-test:keep");
    let sb = Sandbox::new();
    let gh = github(|_| {}).await;
    gh.enqueue(
        JobSpec {
            duration_ms: 4000,
            ..Default::default()
        },
        1,
    );
    let env = disk_env(&sb, &gh, &dk, 1_000_000);
    let mut d = Daemon::start(&env, &["run"]).await;
    wait_job_started(&d).await;
    leave_junk(&mut dk, "made-by-the-job");
    // Three rounds after it was made: each pruned, none touched it.
    let rounds = d.count_events("prune_critical", |_| true);
    d.wait_nth("prune_critical", rounds + 3, T).await;
    assert!(names(&mut dk).contains("made-by-the-job"));
    assert!(images(&mut dk).contains("rs-test:junk"));
    // Once the job is over, it goes.
    d.wait_event("job_completed", T).await;
    let before = d.count_events("pruned", one_container);
    d.wait_events("pruned", one_container, before + 1, T).await;
    assert!(!names(&mut dk).contains("made-by-the-job"));
    assert!(images(&mut dk).contains("rs-test:keep"));
    wait_health(&env, "disk: critical", Duration::from_secs(5)).await;
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

/// Two supervisors on one engine share a fleet directory: one prunes (it holds the lock),
/// the other stands by; the pruner waits while the *other* supervisor's job runs, and
/// the stand-by takes over when the pruner stops.
#[tokio::test]
async fn one_pruner_per_engine_waits_for_the_other_supervisors_job() {
    let mut dk = Dockerd::start().await;
    let gh = github(|_| {}).await;
    gh.enqueue(
        JobSpec {
            duration_ms: 3000,
            labels: vec!["b".into()],
            ..Default::default()
        },
        1,
    );
    let free_gb =
        runner_supervisor::docker::disk::free_bytes(dk.dir.path()).unwrap() / 1_000_000_000;
    let shared = tempfile::tempdir().unwrap();
    let (sa, sb) = (Sandbox::new(), Sandbox::new());
    let mut env_a = disk_env(&sa, &gh, &dk, free_gb + 2);
    let mut env_b = disk_env(&sb, &gh, &dk, free_gb + 2);
    for (env, prefix) in [(&mut env_a, "pa"), (&mut env_b, "pb")] {
        env.insert(
            "SUPERVISOR_STATE_SHARED_DIR".into(),
            shared.path().display().to_string(),
        );
        env.insert("RUNNER_NAME".into(), prefix.into());
    }
    env_b.insert("SUPERVISOR_LABELS".into(), "self-hosted,Linux,X64,b".into());
    let mut a = Daemon::start(&env_a, &["run"]).await;
    a.wait_event("pruner", T).await;
    let mut b = Daemon::start(&env_b, &["run"]).await;
    b.wait_event("pruner_standby", T).await;
    wait_job_started(&b).await;
    // B's job makes a container; A, the pruner, must not remove it while B's job runs.
    leave_junk(&mut dk, "b-job-container");
    let deferred = a.wait_event("prune_deferred", T).await;
    assert!(
        deferred
            .str("busy")
            .is_some_and(|busy| busy.split(',').any(|r| r.starts_with("pb-"))),
        "{deferred:?}"
    );
    let pruned = a.count_events("pruned", |_| true);
    assert!(names(&mut dk).contains("b-job-container"));
    b.wait_event("job_completed", T).await;
    a.wait_events("pruned", one_container, 1, T).await;
    assert!(a.count_events("pruned", |_| true) > pruned);
    assert!(!names(&mut dk).contains("b-job-container"));
    assert_eq!(b.count_events("pruned", |_| true), 0, "only one pruner");
    // The pruner stops: its lock dies with it, and the stand-by takes over.
    a.signal(Signal::SIGTERM);
    assert_eq!(a.wait_exit(T).await.0, Some(0));
    b.wait_event("pruner", T).await;
    b.signal(Signal::SIGTERM);
    assert_eq!(b.wait_exit(T).await.0, Some(0));
}

/// The supervisor's own caches go last: after Docker's prune, only while space is short
/// and no job runs; the action archives oldest first, then the warm tool cache.
#[tokio::test]
async fn the_caches_are_reclaimed_last_and_never_while_a_job_runs() {
    let dk = crate::containers::engine().await;
    let sb = Sandbox::new();
    let gh = github(|_| {}).await;
    // Far above free space: short of space whatever is pruned.
    let mut env = disk_env(&sb, &gh, &dk, 1_000_000);
    crate::containers::container_env(&mut env, &dk);
    // The job installs a tool (promoted: a warm cache to reclaim) and uses two actions
    // (downloaded, then cached by the supervisor).
    let mut job = crate::containers::step(
        "busy",
        "d=$RUNNER_TOOL_CACHE/node/1.0.0/x64 && mkdir -p $d && touch $d/node $d.complete",
    );
    job.duration_ms = 3_000;
    job.actions = vec!["actions/checkout@v4".into(), "actions/setup-node@v4".into()];
    gh.enqueue(job, 1);
    let mut d = Daemon::start(&env, &["run"]).await;
    d.wait_event("tool_cache_promoted", T).await;
    let r = d
        .wait_events(
            "action_cache_reclaimed",
            |e| e.u64("archives") == Some(2),
            1,
            T,
        )
        .await;
    assert!(r.u64("reclaimed_bytes").is_some_and(|b| b > 0), "{r:?}");
    d.wait_event("tool_cache_reclaimed", T).await;
    let ev = d.events();
    let at = |n: &str| ev.iter().find(|e| e.name == n).unwrap().at;
    let (started, done) = (at("runner_job_started"), at("job_completed"));
    for e in ev.iter().filter(|e| e.name.ends_with("_cache_reclaimed")) {
        assert!(
            e.at < started || e.at > done,
            "reclaimed while the job ran: {e:?}"
        );
    }
    // Docker first (a round's prune_start, its prune, then the caches, then its summary);
    // the archives before the tool cache.
    let pos = |n: &str| ev.iter().position(|e| e.name == n).unwrap();
    let a = ev
        .iter()
        .rposition(|e| e.name == "action_cache_reclaimed")
        .unwrap();
    let round = ev[..a]
        .iter()
        .rposition(|e| e.name == "prune_start")
        .expect("a round");
    assert!(
        !ev[round..a].iter().any(|e| e.name == "pruned"),
        "a cache went before Docker's prune"
    );
    assert!(pos("action_cache_reclaimed") < pos("tool_cache_reclaimed"));
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
    // Removed once the idle listener's view of it was gone.
    assert!(!sb.state.join("toolcache/gen-1").exists());
}
