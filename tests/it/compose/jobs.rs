//! The jobs variant (`compose/compose.jobs.yaml`) on a real engine: the supervisor in a
//! container starts a fresh job container per job on the stack's network, where jobs
//! reach `mongo:27017`; what it mounts into them comes from its state directory, a host
//! directory mounted at the same path. Built from compose/Dockerfile with the stand-ins.

use serde_json::json;

use crate::support::dockerd::Dockerd;

use super::stack::*;
use super::stand_ins::*;
use super::*;

const JOBS_PROJECT: &str = "rse2ejobs";

/// The test's override: the fake GitHub on the stack's network, the supervisor pointed
/// at it with short timers, offline build arguments.
fn jobs_override() -> String {
    format!(
        r#"services:
  github:
    image: debian:bookworm-slim
    command: ["/sim/fake-github", "--listen", "0.0.0.0:8080", "--public-url", "http://github:8080", "--time-scale", "0.05"]
    volumes:
      - {fake_github}:/sim/fake-github:ro
    networks:
      - jobs
  supervisor:
    build:
      network: none
      args:
        APT_PACKAGES: ""
    environment:
      SUPERVISOR_GITHUB_API_URL: http://github:8080
      SUPERVISOR_CLOCK_NTP_SERVERS: ""
      SUPERVISOR_CLOCK_CHRONYC: "off"
      SUPERVISOR_GITHUB_BACKOFF_BASE: 50ms
      SUPERVISOR_CONTAINER_MEMORY: 512m
      SUPERVISOR_LOG_FORMAT: json
  mongo:
    healthcheck:
      interval: 1s
      start_period: 1s
      retries: 1
"#,
        fake_github = crate::support::sim_bin("fake-github").display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jobs_variant_runs_each_job_in_a_fresh_container_that_reaches_mongo() {
    let work = tempfile::Builder::new()
        .prefix("rsjobs")
        .tempdir_in("/tmp")
        .unwrap();
    let mut dk = Dockerd::start().await;
    import_images(&mut dk, work.path());
    let (proj, sha) = build_context(work.path());
    std::fs::write(proj.join("compose/e2e.jobs.override.yaml"), jobs_override()).unwrap();
    // The state directory: on the host, at the same path inside, the image's user's.
    let state = work.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let runner = Some(nix::unistd::Uid::from_raw(1001));
    nix::unistd::chown(&state, runner, Some(nix::unistd::Gid::from_raw(1001))).unwrap();
    let gid = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(dk.socket()).unwrap().gid()
    };
    let env: Vec<(String, String)> = [
        ("DOCKER_HOST", dk.host()),
        ("DOCKER_GID", gid.to_string()),
        ("DOCKER_SOCKET", dk.socket().display().to_string()),
        ("STATE_DIR", state.display().to_string()),
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
        project: JOBS_PROJECT,
        files: [
            "compose/compose.jobs.yaml",
            "compose/e2e.jobs.override.yaml",
        ],
        proj,
        env,
        http: reqwest::Client::new(),
        github: String::new(),
        dk,
        _work: work,
    };
    st.compose_ok(&["build"]);
    st.compose_ok(&["up", "-d"]);
    let ip = st.inspect(
        "github",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
    );
    st.github = format!("http://{ip}:8080");
    st.wait_log("supervisor", "two listeners in job containers", |l| {
        l.matches("Listening for Jobs").count() >= 2
    })
    .await;
    // Each idle listener is an idle job container, on the stack's network.
    let jobs = |st: &mut Stack| -> Vec<String> {
        st.docker(&[
            "ps",
            "-a",
            "--filter",
            "label=io.github.runner-supervisor.role=job",
            "--format",
            "{{.Names}}",
        ])
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
        .collect()
    };
    let idle = jobs(&mut st);
    assert_eq!(idle.len(), 2, "{idle:?}");
    let net = st.docker(&[
        "inspect",
        "-f",
        "{{range $k, $v := .NetworkSettings.Networks}}{{$k}}{{end}}",
        &idle[0],
    ]);
    assert_eq!(net, "runner-supervisor-jobs");
    // Jobs reach mongo by name; the second sees nothing of the first.
    for (name, run) in [
        ("first", "bash -c 'echo > /dev/tcp/mongo/27017' && test \"$MONGODB_URI\" = mongodb://mongo:27017 && touch left-by-first"),
        ("second", "bash -c 'echo > /dev/tcp/mongo/27017' && test ! -e left-by-first"),
    ] {
        st.gh(
            reqwest::Method::POST,
            "/_admin/jobs",
            Some(json!({"name": name, "duration_ms": 300, "count": 1, "run": run})),
        )
        .await;
        let s = st
            .wait_state(name, |s| !Stack::completed(s, name).is_empty())
            .await;
        let j = &Stack::completed(&s, name)[0];
        assert_eq!(j["result"], "Succeeded", "{name}: {j}");
    }
    // Their containers are gone; only the idle listeners' are there.
    let now = jobs(&mut st);
    assert!(
        now.iter().all(|n| !idle.contains(n) || now.len() <= 2),
        "{now:?}"
    );
    st.compose_ok(&["stop", "supervisor"]);
    assert_eq!(
        jobs(&mut st),
        Vec::<String>::new(),
        "a job container outlived the stack"
    );
    st.compose_ok(&["down", "-v"]);
}
