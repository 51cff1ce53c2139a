//! Our image as actions-runner-controller's EphemeralRunner pod runs its `runner`
//! container (issue 19 §5): built from compose/Dockerfile with the stand-ins (nothing
//! pulled), then run on the test's own engine with the pod's container name, environment
//! and command as compose/arc-values.yaml gives them to the gha-runner-scale-set chart,
//! against the fake GitHub (host networking: the engine has no bridge).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::dockerd::Dockerd;
use crate::support::rootfs::runner_tarball;
use crate::support::{github, job};

use super::stand_ins::{copy_repo, import_images};
use super::*;

const IMAGE: &str = "runner-supervisor:arc";
const ARC_USER_AGENT: &str = "actions-runner-controller/0.13.1";

/// The `runner` container of the shipped values.
fn runner_container() -> Value {
    let text = std::fs::read_to_string(repo().join("compose/arc-values.yaml")).unwrap();
    let yaml: serde_yaml::Value = serde_yaml::from_str(&text).expect("YAML");
    let v = serde_json::to_value(yaml).unwrap();
    assert_eq!(v["template"]["spec"]["terminationGracePeriodSeconds"], 30);
    let c = v["template"]["spec"]["containers"][0].clone();
    assert_eq!(
        c["name"], "runner",
        "ARC's environment goes only to `runner`"
    );
    c
}

/// Build the image from compose/Dockerfile with the test's runner tarball and supervisor.
fn build(dk: &mut Dockerd, work: &Path) -> f64 {
    let proj = work.join("proj");
    std::fs::create_dir_all(&proj).unwrap();
    copy_repo(&proj);
    let sha = runner_tarball(
        work,
        &proj.join(format!(
            "compose/runner/actions-runner-linux-x64-{RUNNER_VERSION}.tar.gz"
        )),
    );
    let prebuilt = proj.join("compose/prebuilt/supervisor");
    std::fs::copy(crate::support::supervisor_bin(), &prebuilt).unwrap();
    let _ = Command::new("strip").arg(&prebuilt).status();
    let t = Instant::now();
    let out = dk
        .command("docker")
        .args(["build", "--network", "none", "-f", "compose/Dockerfile"])
        .args(["--build-arg", "APT_PACKAGES="])
        .args(["--build-arg", &format!("RUNNER_VERSION={RUNNER_VERSION}")])
        .args(["--build-arg", &format!("RUNNER_SHA256={sha}")])
        .args(["-t", IMAGE, "."])
        .env("DOCKER_BUILDKIT", "0")
        .current_dir(&proj)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docker build: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    t.elapsed().as_secs_f64()
}

/// Start the `runner` container as ARC's pod would: its name, ARC's environment (the JIT
/// config passed by name, as from a secret), the values' command and env; detached.
fn start_pod(dk: &mut Dockerd, c: &Value, jit: &str) {
    let _ = dk.docker(&["rm", "-f", "runner"]);
    let command: Vec<&str> = c["command"]
        .as_array()
        .expect("a command")
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let (entry, args) = command.split_first().unwrap();
    let mut run = dk.command("docker");
    run.args(["run", "-d", "--name", "runner", "--network", "host"])
        .args(["-e", "ACTIONS_RUNNER_INPUT_JITCONFIG"])
        .args([
            "-e",
            &format!("GITHUB_ACTIONS_RUNNER_EXTRA_USER_AGENT={ARC_USER_AGENT}"),
        ])
        .args(["-e", "ACTIONS_RUNNER_RETURN_VERSION_DEPRECATED_EXIT_CODE=1"])
        .env("ACTIONS_RUNNER_INPUT_JITCONFIG", jit);
    for e in c["env"].as_array().into_iter().flatten() {
        run.args([
            "-e",
            &format!(
                "{}={}",
                e["name"].as_str().unwrap(),
                e["value"].as_str().unwrap()
            ),
        ]);
    }
    // Kubernetes' `command` replaces the image's entrypoint and its CMD.
    run.args(["--entrypoint", entry, IMAGE]).args(args);
    let out = run.output().unwrap();
    assert!(
        out.status.success(),
        "docker run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn logs(dk: &Dockerd) -> String {
    let out = dk
        .command("docker")
        .args(["logs", "runner"])
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

async fn wait_log(dk: &Dockerd, what: &str) {
    let ok = crate::support::eventually(T, || logs(dk).contains(what)).await;
    assert!(ok, "no {what:?} in the pod's log:\n{}", logs(dk));
}

/// `docker wait runner`: its exit status, and how long it took.
async fn wait_exit(dk: &Dockerd) -> (i32, Duration) {
    let t = Instant::now();
    let out = tokio::process::Command::new("docker")
        .env("DOCKER_HOST", dk.host())
        .args(["wait", "runner"])
        .output();
    let out = tokio::time::timeout(T, out)
        .await
        .unwrap_or_else(|_| panic!("the pod did not exit; log:\n{}", logs(dk)))
        .unwrap();
    let code = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    (code, t.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_image_runs_as_an_arc_runner_pod_exits_as_arc_reads_it_and_stops_within_the_grace() {
    let started = Instant::now();
    let work = tempfile::Builder::new()
        .prefix("rsarc")
        .tempdir_in("/tmp")
        .unwrap();
    let mut dk = Dockerd::start().await;
    import_images(&mut dk, work.path());
    let build_s = build(&mut dk, work.path());
    let c = runner_container();
    assert_eq!(c["command"], serde_json::json!(["/home/runner/run.sh"]));
    let gh = github(|_| {}).await;

    // 1. A job: done, exit 0.
    let (_, jit) = gh.generate_jit("arc-runner-pod01").await;
    let t = Instant::now();
    start_pod(&mut dk, &c, &jit);
    wait_log(&dk, "Listening for Jobs").await;
    let up_s = t.elapsed().as_secs_f64();
    // The supervisor is the container's first process (run.sh exec'd it); nothing is root.
    let top = dk.must(&["top", "runner", "-eo", "pid,user,args"]);
    let procs: Vec<&str> = top.lines().skip(1).collect();
    assert!(procs[0].contains("supervisor run"), "{top}");
    assert!(procs.iter().any(|p| p.contains("Runner.Listener")), "{top}");
    assert!(
        procs
            .iter()
            .all(|p| p.split_whitespace().nth(1) != Some("root")),
        "{top}"
    );
    gh.enqueue(job("in-a-pod", 300), 1);
    let (code, _) = wait_exit(&dk).await;
    let log = logs(&dk);
    assert_eq!(code, 0, "job done; log:\n{log}");
    let completed = gh.state(|s| s.completed.clone());
    assert_eq!(completed.len(), 1);
    assert_eq!(completed[0].runner, "arc-runner-pod01");
    assert!(!log.contains(&jit), "the JIT config is in the pod's log");
    assert_eq!(crate::arc::supervisor_calls(&gh), Vec::<String>::new());

    // 2. A deprecated runner: 7.
    gh.script(sim::protocol::Script::VersionDeprecated);
    let (_, jit) = gh.generate_jit("arc-runner-pod02").await;
    start_pod(&mut dk, &c, &jit);
    let (code, _) = wait_exit(&dk).await;
    assert_eq!(code, 7, "deprecated; log:\n{}", logs(&dk));

    // 3. Deleted while busy (a node drain): `docker stop -t 30` is the kubelet's SIGTERM,
    // then SIGKILL after the pod's grace.
    let (_, jit) = gh.generate_jit("arc-runner-pod03").await;
    start_pod(&mut dk, &c, &jit);
    wait_log(&dk, "Listening for Jobs").await;
    gh.enqueue(job("long", 600_000), 1);
    wait_log(&dk, "Running job: long").await;
    let t = Instant::now();
    dk.must(&["stop", "-t", "30", "runner"]);
    let stop = t.elapsed();
    let (code, _) = wait_exit(&dk).await;
    assert!(stop < crate::arc::POD_GRACE, "{stop:?}");
    assert_eq!(code, 1, "its job was lost: not 0; log:\n{}", logs(&dk));
    assert_eq!(crate::arc::supervisor_calls(&gh), Vec::<String>::new());

    eprintln!(
        "arc pod: image build {build_s:.1} s, pod start to listening {up_s:.1} s, \
         docker stop (busy) {:.2} s, whole test {:.1} s",
        stop.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
