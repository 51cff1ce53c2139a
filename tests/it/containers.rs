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

#[tokio::test]
async fn the_jit_config_is_nowhere_docker_inspect_or_the_engine_logs_show() {
    let mut dk = engine().await;
    let (_sb, gh, mut env) = setup(|_| {}).await;
    container_env(&mut env, &dk);
    gh.enqueue(step("long", "sleep 30"), 1);
    let d = Daemon::start(&env, &["run"]).await;
    d.wait_event("runner_job_started", T).await;
    let names = job_containers(&mut dk);
    assert_eq!(names.len(), 1, "{names:?}");
    let name = &names[0];
    // The runner's credential (in the JIT config) and the variable itself.
    let secret = gh.state(|s| {
        s.runners
            .values()
            .find(|r| &r.name == name)
            .map(|r| r.client_id.clone())
            .expect("the container is named after its runner")
    });
    let inspect = dk.must(&["inspect", name]);
    let logs = dk
        .command("docker")
        .args(["logs", name])
        .output()
        .expect("docker logs");
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&logs.stdout),
        String::from_utf8_lossy(&logs.stderr)
    );
    for (what, text) in [("inspect", &inspect), ("logs", &logs)] {
        assert!(
            !text.contains(&secret),
            "the runner's credential in docker {what}"
        );
        assert!(
            !text.contains("ACTIONS_RUNNER_INPUT_JITCONFIG="),
            "{what}: {text}"
        );
        assert!(
            !text.contains("eyIuY3JlZGVudGlhbHMi"),
            "a JIT blob in docker {what}"
        );
    }
    // Labelled with who made it; the runner read-only; its file gone once read.
    for label in [
        "\"io.github.runner-supervisor.instance\": \"ci-",
        "\"io.github.runner-supervisor.slot\": \"0\"",
        &format!("\"io.github.runner-supervisor.runner\": \"{name}\""),
    ] {
        assert!(inspect.contains(label), "{label}: {inspect}");
    }
    dk.must(&[
        "exec",
        name,
        "test",
        "!",
        "-e",
        "/.runner-supervisor/jitconfig",
    ]);
    dk.must(&[
        "exec",
        name,
        "test",
        "!",
        "-w",
        "/runner/bin/Runner.Listener",
    ]);
    d.signal(Signal::SIGTERM);
}

#[tokio::test]
async fn a_job_over_its_memory_limit_is_lost_with_cause_oom_and_rerun() {
    let mut dk = engine().await;
    let (_sb, gh, mut env) = setup(|o| o.job_lock_timeout = Duration::from_secs(1)).await;
    container_env(&mut env, &dk);
    env.insert("SUPERVISOR_CONTAINER_MEMORY".into(), "48m".into());
    env.insert("SUPERVISOR_RERUN_CHECK_MS".into(), "200".into());
    // tail keeps the whole of a line without an end: memory grows until the limit.
    let mut hog = step("hungry", "tail /dev/zero");
    hog.duration_ms = 20_000;
    gh.enqueue(hog, 1);
    let mut d = Daemon::start(&env, &["run"]).await;
    let lost = d.wait_event("job_lost", T).await;
    assert!(lost.is("cause", "oom"), "{lost:?}");
    let done = d
        .wait_events("job_rerun", |e| e.is("result", "accepted"), 1, T)
        .await;
    assert_eq!(done.u64("attempt"), Some(2), "{done:?}");
    // The supervisor was untouched: it goes on, and its container was removed.
    let removed = d
        .wait_events("container_removed", |e| e.is("oom_killed", "true"), 1, T)
        .await;
    assert!(removed.str("container").is_some());
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
    assert_eq!(job_containers(&mut dk), Vec::<String>::new());
}

#[tokio::test]
async fn a_sigkilled_supervisor_leaves_no_container_and_no_registration_after_its_next_start() {
    let mut dk = engine().await;
    let (_sb, gh, mut env) = setup(|_| {}).await;
    container_env(&mut env, &dk);
    env.insert("SUPERVISOR_RUNNER_SLOTS".into(), "2".into());
    let mut d = Daemon::start(&env, &["run"]).await;
    d.wait_listening(2, T).await;
    d.signal(Signal::SIGKILL);
    d.wait_exit(T).await;
    // Containers outlive their supervisor (the engine runs them), with their runners.
    assert_eq!(job_containers(&mut dk).len(), 2);
    let before: Vec<String> = gh.runners().into_iter().map(|r| r.name).collect();
    assert_eq!(before.len(), 2);
    let mut d = Daemon::start(&env, &["run"]).await;
    let reaped = d.wait_event("containers_reaped", T).await;
    assert_eq!(reaped.u64("count"), Some(2), "{reaped:?}");
    d.wait_listening(2, T).await;
    let now: Vec<String> = gh.runners().into_iter().map(|r| r.name).collect();
    assert!(
        now.iter().all(|n| !before.contains(n)),
        "an earlier run's registration survived: {before:?} {now:?}"
    );
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
    assert_eq!(job_containers(&mut dk), Vec::<String>::new());
    assert!(
        gh.wait_for(T, |s| s.runners.is_empty()).await,
        "{:?}",
        gh.runners()
    );
}

#[tokio::test]
async fn the_engine_stopped_and_started_mid_run_is_survived() {
    let mut dk = engine().await;
    let (sb, gh, mut env) = setup(|_| {}).await;
    container_env(&mut env, &dk);
    env.insert("SUPERVISOR_RUNNER_FAILURE_BACKOFF".into(), "200ms".into());
    let mut d = Daemon::start(&env, &["run"]).await;
    d.wait_listening(1, T).await;
    dk.stop();
    // Slots back off; health says why.
    let s = sb
        .wait_status(T, |s| {
            s.reasons
                .iter()
                .any(|r| r.contains("job containers cannot be made"))
        })
        .await;
    assert_ne!(s.health, runner_supervisor::status::Health::Ok, "{s:#?}");
    dk.restart().await;
    // Back by itself: a new listener, and jobs run.
    let listening = d.count_events("runner_listening", |_| true);
    d.wait_nth("runner_listening", listening + 1, T).await;
    gh.enqueue(step("after", "true"), 1);
    assert!(gh.wait_for(T, |s| s.completed.len() == 1).await);
    assert_eq!(results(&gh)[0].1, "Succeeded");
    sb.wait_status(T, |s| {
        !s.reasons.iter().any(|r| r.contains("job containers"))
    })
    .await;
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
    assert_eq!(job_containers(&mut dk), Vec::<String>::new());
}

#[tokio::test]
async fn a_missing_image_is_a_clear_error_at_start_and_nothing_is_registered() {
    let dk = engine().await;
    let (_sb, gh, mut env) = setup(|_| {}).await;
    container_env(&mut env, &dk);
    env.insert(
        "SUPERVISOR_CONTAINER_IMAGE".into(),
        "rs-nope:missing".into(),
    );
    let mut d = Daemon::start(&env, &["run"]).await;
    let (code, out) = d.wait_exit(T).await;
    assert_eq!(code, Some(1), "{out}");
    let fatal = d.wait_event("fatal", T).await;
    let msg = fatal.str("message").unwrap_or_default();
    assert!(
        msg.contains("\"rs-nope:missing\"") && msg.contains("SUPERVISOR_CONTAINER_IMAGE"),
        "{msg}"
    );
    assert!(gh.runners().is_empty());
    assert!(!gh
        .calls()
        .iter()
        .any(|c| c.path.ends_with("generate-jitconfig")));
    // doctor says the same, with the fix.
    let out = crate::support::Cli::new(&env, &["doctor"])
        .run_async()
        .await;
    assert!(
        out.stdout.contains("rs-nope:missing") && out.stdout.contains("build it"),
        "{}",
        out.stdout
    );
}

#[tokio::test]
async fn scale_set_mode_starts_a_container_only_when_a_job_is_assigned() {
    let mut dk = engine().await;
    let sb = crate::support::Sandbox::new();
    let gh = crate::scaleset::fake(500, 2000, |_| {}).await;
    let mut env = crate::scaleset::env(&sb, &gh, 2);
    container_env(&mut env, &dk);
    let d = Daemon::start(&env, &["run"]).await;
    sb.wait_status(T, |s| crate::scaleset::ss(s).session == "polling")
        .await;
    assert_eq!(
        job_containers(&mut dk),
        Vec::<String>::new(),
        "an idle container"
    );
    let mut j = crate::scaleset::job("assigned", 2_000);
    j.run = Some("test -x /runner/bin/Runner.Listener".into());
    gh.enqueue_scaleset_job(j);
    d.wait_event("runner_job_started", T).await;
    assert_eq!(job_containers(&mut dk).len(), 1);
    d.wait_event("container_removed", T).await;
    assert!(
        crate::support::eventually(T, || job_containers(&mut dk).is_empty()).await,
        "the job's container outlived it"
    );
    d.signal(Signal::SIGTERM);
}

/// `[runner] workspace` for the process backend: fresh by default, kept on request.
#[tokio::test]
async fn a_fresh_workspace_leaves_no_file_of_job_one_for_job_two_and_kept_does() {
    for (workspace, second) in [
        ("fresh", "test ! -e left-by-first"),
        ("kept", "test -e left-by-first"),
    ] {
        let (_sb, gh, mut env) = setup(|_| {}).await;
        if workspace == "kept" {
            env.insert("SUPERVISOR_RUNNER_WORKSPACE".into(), "kept".into());
        }
        gh.enqueue(step("first", "touch left-by-first"), 1);
        gh.enqueue(step("second", second), 1);
        let mut d = Daemon::start(&env, &["run"]).await;
        assert!(gh.wait_for(T, |s| s.completed.len() == 2).await);
        assert_eq!(
            results(&gh),
            vec![
                ("first".to_string(), "Succeeded".to_string()),
                ("second".to_string(), "Succeeded".to_string())
            ],
            "{workspace}"
        );
        d.signal(Signal::SIGTERM);
        assert_eq!(d.wait_exit(T).await.0, Some(0));
    }
}

/// The lease's renewals reach the supervisor from the container's stream too.
#[tokio::test]
async fn a_late_lease_renewal_is_seen_from_a_job_container() {
    let dk = engine().await;
    let (_sb, gh, mut env) = setup(|_| {}).await;
    container_env(&mut env, &dk);
    env.insert("SUPERVISOR_JOBS_RENEWAL_LATE".into(), "2s".into());
    gh.script(sim::protocol::Script::LeaseTrouble {
        after_ms: 500,
        fail: false,
    });
    let mut j = step("starved", "true");
    j.duration_ms = 8_000;
    gh.enqueue(j, 1);
    let mut d = Daemon::start(&env, &["run"]).await;
    d.wait_event("lease_renewal_late", T).await;
    d.wait_event("job_completed", T).await;
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

/// The tool cache as a copy-on-write view per job: what a job writes is thrown away with
/// its container, except complete new tool versions of a successful job, which the next
/// jobs see in a new generation; a failed job's install never reaches them.
#[tokio::test]
async fn the_tool_cache_is_a_view_per_job_and_only_a_successful_jobs_new_versions_are_promoted() {
    let mut dk = engine().await;
    let (sb, gh, mut env) = setup(|_| {}).await;
    container_env(&mut env, &dk);
    let install = |tool: &str| {
        format!(
            "d=$RUNNER_TOOL_CACHE/{tool}/1.0.0/x64 && test \"$AGENT_TOOLSDIRECTORY\" = \"$RUNNER_TOOL_CACHE\" && mkdir -p $d && echo {tool} > $d/bin && touch $d.complete"
        )
    };
    gh.enqueue(
        step(
            "installs-node",
            &format!(
                "{} && echo junk > $RUNNER_TOOL_CACHE/pollution",
                install("node")
            ),
        ),
        1,
    );
    gh.enqueue(
        step(
            "installs-go-and-fails",
            &format!("{} && exit 1", install("go")),
        ),
        1,
    );
    gh.enqueue(
        step(
            "sees-node-only",
            "test \"$(cat $RUNNER_TOOL_CACHE/node/1.0.0/x64/bin)\" = node && test ! -e $RUNNER_TOOL_CACHE/pollution && test ! -e $RUNNER_TOOL_CACHE/go && echo mine > $RUNNER_TOOL_CACHE/node/1.0.0/x64/bin",
        ),
        1,
    );
    gh.enqueue(
        step(
            "sees-the-promoted-one-unchanged",
            "test \"$(cat $RUNNER_TOOL_CACHE/node/1.0.0/x64/bin)\" = node",
        ),
        1,
    );
    let mut d = Daemon::start(&env, &["run"]).await;
    assert!(
        gh.wait_for(T, |s| s.completed.len() == 4).await,
        "{}",
        d.log().join("\n")
    );
    let r = results(&gh);
    assert_eq!(
        r.iter().map(|(_, x)| x.as_str()).collect::<Vec<_>>(),
        ["Succeeded", "Failed", "Succeeded", "Succeeded"],
        "{r:?}"
    );
    let p = d.wait_event("tool_cache_promoted", T).await;
    assert_eq!(p.u64("generation"), Some(1), "{p:?}");
    assert_eq!(
        d.count_events("tool_cache_promoted", |_| true),
        1,
        "only the first job's"
    );
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
    // On the host: generation 1 holds node, no view is left, nor a volume.
    let tc = sb.state.join("toolcache");
    assert!(tc.join("gen-1/node/1.0.0/x64/bin").is_file());
    assert!(!tc.join("gen-1/pollution").exists());
    assert!(
        !tc.join("gen-0").exists(),
        "the unused generation was removed"
    );
    assert_eq!(
        std::fs::read_dir(tc.join("jobs"))
            .map(|r| r.count())
            .unwrap_or(0),
        0
    );
    let vols = dk
        .docker(&["volume", "ls", "--format", "{{.Name}}"])
        .unwrap();
    assert!(!vols.contains("toolcache"), "{vols}");
}

/// Job containers read the action archive cache, mounted read-only.
#[tokio::test]
async fn job_containers_read_the_action_archive_cache_and_cannot_write_it() {
    let dk = engine().await;
    let (_sb, gh, mut env) = setup(|_| {}).await;
    container_env(&mut env, &dk);
    let mut cold = crate::action_cache::three_actions("cold");
    cold.run = Some("test \"$ACTIONS_RUNNER_ACTION_ARCHIVE_CACHE\" = /opt/actionarchivecache && ! touch /opt/actionarchivecache/x".into());
    gh.enqueue(cold, 1);
    let mut d = Daemon::start(&env, &["run"]).await;
    d.wait_events("action_cached", |e| e.is("added", "true"), 3, T)
        .await;
    let before = gh.state(|s| s.codeload_downloads.len());
    gh.enqueue(crate::action_cache::three_actions("warm"), 1);
    assert!(gh.wait_for(T, |s| s.completed.len() == 2).await);
    assert!(
        results(&gh).iter().all(|(_, r)| r == "Succeeded"),
        "{:?}",
        results(&gh)
    );
    assert_eq!(gh.state(|s| s.codeload_downloads.len()), before);
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}

/// The container backend with a GitHub App (repository runners) and with an
/// organisation's runners: the same JIT runners, the placeholders filled for each.
#[tokio::test]
async fn container_jobs_run_for_an_app_and_for_an_organisation() {
    let dk = engine().await;
    // A GitHub App on octo/app.
    let gh = crate::app::app_github(|_| {}).await;
    let sb = crate::support::Sandbox::new();
    let mut env = crate::app::app_env(&sb, &gh);
    container_env(&mut env, &dk);
    env.insert(
        "SUPERVISOR_CONTAINER_ENV".into(),
        "WHERE={repo_owner}/{repo_name}".into(),
    );
    gh.enqueue(step("app", "test \"$WHERE\" = octo/app"), 1);
    let mut d = Daemon::start(&env, &["run"]).await;
    assert!(gh.wait_for(T, |s| s.completed.len() == 1).await);
    assert_eq!(results(&gh)[0].1, "Succeeded");
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
    // An organisation's runners, with a token.
    let (_sb, gh, mut env) = setup(|_| {}).await;
    env.remove("REPO_OWNER");
    env.remove("REPO_NAME");
    env.insert("SUPERVISOR_GITHUB_ORG".into(), "acme".into());
    container_env(&mut env, &dk);
    env.insert("SUPERVISOR_CONTAINER_ENV".into(), "ORG={org}".into());
    gh.enqueue(step("org", "test \"$ORG\" = acme"), 1);
    let mut d = Daemon::start(&env, &["run"]).await;
    assert!(gh.wait_for(T, |s| s.completed.len() == 1).await);
    assert_eq!(results(&gh)[0].1, "Succeeded");
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(T).await.0, Some(0));
}
