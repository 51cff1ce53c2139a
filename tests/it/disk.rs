//! Scenario 24, disk below threshold, against a real Docker engine this test starts
//! (`dockerd --bridge=none --iptables=false`, its own data root and socket) with images
//! built by `docker import` from a local busybox root file system: nothing is pulled.

use std::time::Duration;

use nix::sys::signal::Signal;
use sim::github::JobSpec;

use crate::support::dockerd::Dockerd;
use crate::support::{github, wait_health, Daemon, Sandbox};

const T: Duration = Duration::from_secs(60);

fn images(d: &mut Dockerd) -> String {
    d.docker(&["images", "--format", "{{.Repository}}:{{.Tag}}"])
        .unwrap_or_default()
}

#[tokio::test]
async fn scenario_24_disk_below_threshold_prunes_between_jobs_and_never_volumes() {
    let mut dk = Dockerd::start().await;
    dk.import("rs-test:keep");
    dk.import("rs-test:junk");
    // A second, distinct image for the junk tag (same content would share the id).
    dk.docker(&[
        "create",
        "--network",
        "host",
        "--name",
        "stopped",
        "rs-test:junk",
        "/bin/busybox",
        "true",
    ])
    .expect("create");
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
    let mut env = sb.env(&gh);
    env.insert("SUPERVISOR_DISK_PRUNE".into(), "on".into());
    env.insert("SUPERVISOR_DISK_DOCKER_HOST".into(), dk.host());
    env.insert(
        "SUPERVISOR_DISK_PATH".into(),
        dk.dir.path().display().to_string(),
    );
    // Far above the free space: the disk is "below threshold", even below half of it.
    env.insert("PRUNE_THRESHOLD_GB".into(), "1000000".into());
    env.insert("SUPERVISOR_DISK_INTERVAL".into(), "300ms".into());
    env.insert("SUPERVISOR_DISK_UNTIL".into(), "0s".into());
    env.insert("SUPERVISOR_DISK_KEEP_IMAGES".into(), "rs-test:keep".into());
    let mut d = Daemon::start(&env, &["run"]).await;
    // While a job runs, nothing is pruned.
    d.wait_log(&["Running job: build"], T).await;
    // The job leaves a stopped container and an image behind.
    dk.import("rs-test:junk");
    dk.docker(&[
        "create",
        "--network",
        "host",
        "--name",
        "stopped",
        "rs-test:junk",
        "/bin/busybox",
        "true",
    ])
    .expect("create");
    std::fs::create_dir_all(work_marker.parent().unwrap()).unwrap();
    std::fs::write(&work_marker, b"cache").unwrap();
    d.wait_log(&["pruning deferred until no job runs"], T).await;
    let deferred_at = d.count(&["Docker pruned"]);
    assert!(dk
        .docker(&["ps", "-a", "--format", "{{.Names}}"])
        .unwrap()
        .contains("stopped"));
    // Between jobs, within one interval of the job's end.
    d.wait_log(&["job completed"], T).await;
    let t = std::time::Instant::now();
    let before = d.count(&["Docker pruned"]);
    assert_eq!(before, deferred_at, "no prune while the job ran");
    let line = d.wait_lines(&["Docker pruned"], before + 1, T).await;
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(
        line.contains("containers=1"),
        "{line}\n{}",
        d.log().join("\n")
    );
    assert!(
        !dk.docker(&["ps", "-a", "--format", "{{.Names}}"])
            .unwrap()
            .contains("stopped"),
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
    // Still below half the threshold: health says critical.
    wait_health(&env, "disk: critical", Duration::from_secs(5)).await;
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}
