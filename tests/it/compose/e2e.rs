//! The whole stack on a real engine: the shipped compose.yaml plus only the test's
//! override, built from compose/Dockerfile with the stand-ins.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::dockerd::{busybox, Dockerd};

use super::stack::*;
use super::stand_ins::*;
use super::*;

/// The whole stack on a real engine: the shipped compose.yaml plus only the test's
/// override, built from compose/Dockerfile with the stand-ins above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stack_runs_jobs_heals_prunes_and_stops_without_ghosts() {
    let started = Instant::now();
    let work = tempfile::Builder::new()
        .prefix("rse2e")
        .tempdir_in("/tmp")
        .unwrap();
    let mut dk = Dockerd::start().await;
    import_images(&mut dk, work.path());

    let (proj, sha) = build_context(work.path());
    // Between half the threshold and the threshold: below it, but not critical.
    let free_gb =
        runner_supervisor::docker::disk::free_bytes(dk.dir.path()).unwrap() / 1_000_000_000;
    std::fs::write(
        proj.join("compose/e2e.override.yaml"),
        override_yaml(free_gb + 2),
    )
    .unwrap();
    let gid = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(dk.socket()).unwrap().gid()
    };
    let env: Vec<(String, String)> = [
        ("DOCKER_HOST", dk.host()),
        ("DOCKER_GID", gid.to_string()),
        ("DOCKER_SOCKET", dk.socket().display().to_string()),
        ("REPO_OWNER", "octo".into()),
        ("REPO_NAME", "app".into()),
        ("RUNNER_VERSION", RUNNER_VERSION.into()),
        ("RUNNER_SHA256", sha),
        ("COMPOSE_DOCKER_CLI_BUILD", "0".into()),
        ("DOCKER_BUILDKIT", "0".into()),
        ("COMPOSE_HTTP_TIMEOUT", "600".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let mut st = Stack {
        project: PROJECT,
        files: ["compose/compose.yaml", "compose/e2e.override.yaml"],
        proj,
        env,
        http: reqwest::Client::new(),
        github: String::new(),
        dk,
        _work: work,
    };

    // 1. Build (no pull: every base is a local stand-in; the build has no network).
    let t = Instant::now();
    st.compose_ok(&["build"]);
    let build_s = t.elapsed().as_secs_f64();
    let size: u64 = st
        .docker(&[
            "image",
            "inspect",
            "-f",
            "{{.Size}}",
            "runner-supervisor:local",
        ])
        .parse()
        .unwrap();
    let history = st.docker(&["history", "--no-trunc", "runner-supervisor:local"]);
    assert!(!history.contains(TOKEN), "the token is not in the image");

    // 2. Up: mongo healthy first, then the runners.
    let t = Instant::now();
    st.compose_ok(&["up", "-d"]);
    let ip = st.inspect(
        "github",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
    );
    st.github = format!("http://{ip}:8080");
    for r in ["runner-1", "runner-2"] {
        st.wait_log(r, "Listening for Jobs", |l| {
            l.contains("Listening for Jobs")
        })
        .await;
    }
    let up_s = t.elapsed().as_secs_f64();
    // The supervisor is PID 1 and nothing runs as root.
    for r in ["runner-1", "runner-2"] {
        let pid: i32 = st.inspect(r, "{{.State.Pid}}").parse().unwrap();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
        assert!(nspid.ends_with("\t1"), "{r}: {nspid}");
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        assert!(String::from_utf8_lossy(&cmdline).contains("supervisor"));
        let procs = st.top(r);
        assert!(
            procs.iter().any(|(_, _, a)| a.contains("Runner.Listener")),
            "{procs:?}"
        );
        for (pid, user, args) in &procs {
            assert!(
                user != "root" && user != "0",
                "{r}: {pid} {args} runs as {user}"
            );
        }
        // The socket's group is there, whatever its number, so a job can use the engine.
        let groups = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let groups = groups.lines().find(|l| l.starts_with("Groups:")).unwrap();
        assert!(
            groups.split_whitespace().any(|g| g == gid.to_string()),
            "{groups}"
        );
        let id = st.cid(r);
        let who = st.docker(&["exec", &id, "id", "-u"]);
        assert_eq!(who, "1001", "{r}: docker exec runs as the image's user");
        let server = st.docker(&[
            "exec",
            &id,
            "docker",
            "version",
            "-f",
            "{{.Server.Version}}",
        ]);
        assert!(
            !server.is_empty(),
            "{r}: the runner user reaches the engine"
        );
    }

    // 3. Both runners take jobs, one at a time each.
    st.jobs("build", 1500, 4).await;
    let s = st
        .wait_state("4 jobs", |s| Stack::completed(s, "build").len() == 4)
        .await;
    let by: Vec<String> = Stack::completed(&s, "build")
        .iter()
        .map(|j| j["runner"].as_str().unwrap().to_string())
        .collect();
    assert!(by.iter().any(|n| n.starts_with("ci-1-runner-1-")), "{by:?}");
    assert!(by.iter().any(|n| n.starts_with("ci-2-runner-2-")), "{by:?}");
    for r in ["runner-1", "runner-2"] {
        // Each container's job lines alternate: never two jobs at once.
        let log = st.logs(r);
        let mut running = 0;
        for l in log.lines() {
            if l.contains("Running job: build") {
                running += 1;
                assert_eq!(running, 1, "{r} ran two jobs at once:\n{log}");
            } else if l.contains("Job build completed with result") {
                running -= 1;
            }
        }
    }

    // 4. A stuck listener ("Retrying until reconnected" that never recovers) is replaced.
    st.gh(
        reqwest::Method::POST,
        "/_admin/scripts",
        Some(json!({"kind": "connection_loss", "after_ms": 300, "recover_after_ms": null})),
    )
    .await;
    st.jobs("poke", 200, 1).await;
    let deadline = Instant::now() + T;
    let stuck_in = loop {
        let found = ["runner-1", "runner-2"].into_iter().find(|r| {
            let l = st.logs(r);
            l.contains("watchdog fired: replacing the listener")
        });
        if let Some(r) = found {
            break r;
        }
        assert!(Instant::now() < deadline, "no watchdog fire");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    st.wait_log(stuck_in, "a replacement listening", |l| {
        l.find("watchdog fired")
            .is_some_and(|fired| l[fired..].contains("Listening for Jobs"))
    })
    .await;

    // 5. One pruner for the engine: it waits while a job runs on either runner, then
    //    removes what was planted, keeping volumes and keep_images.
    // Deferral lines from here on (earlier jobs were deferred for too).
    let deferrals = |l: &str| -> Vec<String> {
        l.lines()
            .filter(|x| x.contains("pruning deferred until no job runs"))
            .map(str::to_string)
            .collect()
    };
    let deferred_before = deferrals(&st.logs("pruner")).len();
    st.jobs("long-a", 6000, 1).await;
    st.jobs("long-b", 12000, 1).await;
    st.wait_log("pruner", "deferral for both runners", |l| {
        deferrals(l)
            .iter()
            .skip(deferred_before)
            .any(|x| x.contains("ci-1-runner-1") && x.contains("ci-2-runner-2"))
    })
    .await;
    // Every deferral from here on comes after both runners were busy.
    let both_at = deferrals(&st.logs("pruner")).len();
    // What a finished job leaves behind: a stopped container, a dangling image, build
    // cache; and what must stay: a volume, an image in keep_images.
    let junk = st._work.path().join("junk");
    std::fs::create_dir_all(junk.join("bin")).unwrap();
    std::fs::copy(busybox(), junk.join("bin/busybox")).unwrap();
    std::fs::write(junk.join("v"), "1").unwrap();
    st.dk.import_rootfs(&junk, "rs-e2e/junk:1", &[]);
    std::fs::write(junk.join("v"), "2").unwrap();
    st.dk.import_rootfs(&junk, "rs-e2e/junk:1", &[]);
    st.docker(&[
        "create",
        "--network",
        "none",
        "--name",
        "rs-e2e-stopped",
        "rs-e2e/junk:1",
        "/bin/busybox",
        "true",
    ]);
    st.docker(&["volume", "create", "rs-e2e-vol"]);
    let ctx = st._work.path().join("bctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("Dockerfile"), "FROM rs-e2e/junk:1\nCOPY f /f\n").unwrap();
    std::fs::write(ctx.join("f"), "build cache\n").unwrap();
    let cli = if Path::new("/usr/bin/docker").exists() {
        "/usr/bin/docker"
    } else {
        "docker"
    };
    let out = st
        .dk
        .command(cli)
        .env("DOCKER_BUILDKIT", "1")
        .args(["build", "--network", "none", "-t", "rs-e2e/built:1"])
        .arg(&ctx)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "buildkit build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let df = |st: &mut Stack| st.docker(&["system", "df", "--format", "{{.Type}}={{.TotalCount}}"]);
    let before = df(&mut st);
    assert!(!before.contains("Build Cache=0"), "{before}");
    let dangling = st.docker(&["images", "-q", "--filter", "dangling=true"]);
    assert!(!dangling.is_empty());
    let pruned_before = count(&st.logs("pruner"), "Docker pruned");
    // long-a ends first: runner-2's (or runner-1's) job still runs, so nothing is pruned.
    st.wait_state("long-a done", |s| Stack::completed(s, "long-a").len() == 1)
        .await;
    st.wait_log("pruner", "deferral for the one still busy", |l| {
        deferrals(l)
            .iter()
            .skip(both_at)
            .any(|x| !(x.contains("ci-1-runner-1") && x.contains("ci-2-runner-2")))
    })
    .await;
    assert_eq!(count(&st.logs("pruner"), "Docker pruned"), pruned_before);
    assert!(st
        .docker(&["ps", "-a", "--format", "{{.Names}}"])
        .contains("rs-e2e-stopped"));
    st.wait_state("long-b done", |s| Stack::completed(s, "long-b").len() == 1)
        .await;
    let log = st
        .wait_log("pruner", "a prune after the jobs", |l| {
            count(l, "Docker pruned") > pruned_before
        })
        .await;
    let line = log
        .lines()
        .filter(|l| l.contains("Docker pruned"))
        .nth(pruned_before)
        .unwrap()
        .to_string();
    assert!(line.contains("containers=1"), "{line}");
    assert!(!line.contains("build_cache=0"), "{line}");
    let names = st.docker(&["ps", "-a", "--format", "{{.Names}}"]);
    assert!(!names.contains("rs-e2e-stopped"), "{names}");
    assert!(
        names.contains("runner-1"),
        "the stack's own containers stay: {names}"
    );
    assert_eq!(
        st.docker(&["images", "-q", "--filter", "dangling=true"]),
        ""
    );
    let after = df(&mut st);
    assert!(after.contains("Build Cache=0"), "{after}");
    let images = st.docker(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert!(images.contains("rs-e2e/keep:1"), "{images}");
    assert!(images.contains("mongo:7.0"), "{images}");
    assert!(st
        .docker(&["volume", "ls", "--format", "{{.Name}}"])
        .contains("rs-e2e-vol"));
    let health = st
        .dk
        .command("docker")
        .args(["exec", &st.cid("pruner"), "supervisor", "health"])
        .output()
        .unwrap();
    let health = String::from_utf8_lossy(&health.stdout).to_string();
    assert!(health.contains("disk last prune"), "{health}");
    assert!(health.contains("disk pruned bytes"), "{health}");

    // 6. Autoheal: a labelled runner that stays unhealthy is restarted (once: the limit
    //    is 1 here), mongo made unhealthy is not (it carries no label).
    let mongo_started = st.inspect("mongo", "{{.State.StartedAt}}");
    let r1_started = st.inspect("runner-1", "{{.State.StartedAt}}");
    let mongo_id = st.cid("mongo");
    st.docker(&["exec", &mongo_id, "/bin/busybox", "touch", "/tmp/unhealthy"]);
    st.gh(
        reqwest::Method::POST,
        "/_admin/faults",
        Some(json!({"path": "generate-jitconfig", "body": "\"ci-1-", "kind": {"type": "status", "status": 500}, "times": 0})),
    )
    .await;
    let listener = st
        .top("runner-1")
        .into_iter()
        .find(|(_, _, a)| a.contains("Runner.Listener"))
        .expect("runner-1's listener")
        .0;
    // A process of our own engine's container, by PID.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(listener),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    st.wait_health("mongo", "unhealthy").await;
    let r1_name = st.inspect("runner-1", "{{.Name}}");
    let r1_name = r1_name.trim_start_matches('/').to_string();
    st.wait_log("autoheal", "runner-1 restarted", |l| {
        l.lines()
            .any(|x| x.contains("autoheal: container restarted") && x.contains(&r1_name))
    })
    .await;
    assert_ne!(st.inspect("runner-1", "{{.State.StartedAt}}"), r1_started);
    // Still failing after the restart: left alone, not restarted in a storm.
    st.wait_log("autoheal", "the restart limit", |l| {
        l.contains("restart limit reached")
    })
    .await;
    let ah = st.logs("autoheal");
    assert_eq!(
        count(&ah, "autoheal: restarting an unhealthy container"),
        1,
        "{ah}"
    );
    let mongo_name = st.inspect("mongo", "{{.Name}}");
    assert!(
        !ah.contains(mongo_name.trim_start_matches('/')),
        "mongo is never touched:\n{ah}"
    );
    assert_eq!(st.inspect("mongo", "{{.State.StartedAt}}"), mongo_started);
    // Recovery.
    st.docker(&["exec", &mongo_id, "/bin/busybox", "rm", "/tmp/unhealthy"]);
    st.gh(reqwest::Method::DELETE, "/_admin/faults", None).await;
    st.wait_health("mongo", "healthy").await;
    st.wait_health("runner-1", "healthy").await;

    // 7. `docker compose stop`: idle, then with a job running (it finishes, then the
    //    runners deregister): no ghost is left.
    st.wait_health("runner-2", "healthy").await;
    let idle_stop = st.timed_stop(&["runner-2"]);
    st.compose_ok(&["start", "runner-2"]);
    st.wait_health("runner-2", "healthy").await;
    st.wait_state("two listeners", |s| {
        s["runners"]
            .as_array()
            .is_some_and(|r| r.iter().filter(|x| !x["session"].is_null()).count() >= 2)
    })
    .await;
    st.jobs("last", 5000, 1).await;
    st.wait_state("a job running", |s| s["running"] == 1).await;
    let busy_stop = st.timed_stop(&["runner-1", "runner-2"]);
    let s = st.state().await;
    let last = Stack::completed(&s, "last");
    assert_eq!(last.len(), 1, "{s:#}");
    assert_eq!(last[0]["result"], "Succeeded", "the drained job finished");
    assert_eq!(
        s["runners"].as_array().map(Vec::len),
        Some(0),
        "no ghost runner: {s:#}"
    );
    for r in ["runner-1", "runner-2"] {
        assert_eq!(st.inspect(r, "{{.State.ExitCode}}"), "0");
    }

    // 8. The token is in no inspect output and no log.
    let ids: Vec<String> = st
        .docker(&["ps", "-aq"])
        .lines()
        .map(str::to_string)
        .collect();
    let mut args = vec!["inspect"];
    args.extend(ids.iter().map(String::as_str));
    assert!(!st.docker(&args).contains(TOKEN));
    let logs = st.compose_ok(&["logs", "--no-color"]);
    assert!(logs.contains("Listening for Jobs"));
    assert!(!logs.contains(TOKEN), "the token is in a log");

    eprintln!(
        "compose e2e: image {:.1} MB (with the test's stand-ins), build {build_s:.1} s, up to listening {up_s:.1} s, \
         compose stop idle {:.2} s, busy {:.2} s (job of 5 s), whole test {:.1} s",
        size as f64 / 1e6,
        idle_stop.as_secs_f64(),
        busy_stop.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
