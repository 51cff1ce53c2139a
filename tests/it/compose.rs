//! The container deployment: `compose/compose.yaml` read and validated by the compose
//! tool, and the whole stack run end to end on a Docker engine this test starts itself
//! (see `support::dockerd`), built from `compose/Dockerfile` without any pull.
//!
//! Stand-ins, all assembled here: the base images (`debian:bookworm-slim` and
//! `rust:1.95-bookworm` are a debootstrap of bookworm minbase, `docker:27-cli` holds this
//! machine's docker CLI), `mongo:7.0` (busybox answering on 27017 and a `mongosh` that
//! answers the health check), the runner tarball (the fake runner as
//! `bin/Runner.Listener`) and the fake GitHub (a service added by an override file).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::dockerd::{busybox, Dockerd};
use crate::support::sim_bin;

const PROJECT: &str = "rse2e";
const T: Duration = Duration::from_secs(120);
/// The runner version of the test tarball (its checksum is the test's own).
const RUNNER_VERSION: &str = "2.336.0";
const TOKEN: &str = "ghp_simulated_token_0000000000000000000000";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `docker-compose config` of the shipped file with `env`: the resolved YAML.
fn compose_config(env: &[(&str, &str)]) -> Value {
    let out = Command::new("docker-compose")
        .args(["-f", "compose/compose.yaml", "config"])
        .current_dir(repo())
        .env_remove("DOCKER_GID")
        .envs(env.iter().copied())
        .output()
        .expect("docker-compose (apt-get install docker-compose; tests/run does)");
    assert!(
        out.status.success(),
        "docker-compose config failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml: serde_yaml::Value = serde_yaml::from_slice(&out.stdout).expect("YAML");
    serde_json::to_value(yaml).expect("JSON")
}

fn env_of(svc: &Value) -> BTreeMap<String, String> {
    svc["environment"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().map_or(v.to_string(), str::to_string)))
                .collect()
        })
        .unwrap_or_default()
}

fn duration(s: &str) -> Duration {
    runner_supervisor::config::parse_duration(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

#[test]
fn the_shipped_compose_file_validates_and_keeps_its_invariants() {
    let env = [
        ("DOCKER_GID", "998"),
        ("REPO_OWNER", "octo"),
        ("REPO_NAME", "app"),
    ];
    let cfg = compose_config(&env);
    let services = cfg["services"].as_object().expect("services");
    let names: Vec<&str> = services.keys().map(String::as_str).collect();
    for s in ["runner-1", "runner-2", "mongo", "pruner", "autoheal"] {
        assert!(names.contains(&s), "service {s} in {names:?}");
    }
    // No token in any environment; the runners read it from a compose secret.
    let text = serde_json::to_string(&cfg).unwrap();
    assert!(!text.contains("ghp_") && !text.contains("github_pat_"));
    for (name, svc) in services {
        for k in env_of(svc).keys() {
            let upper = k.to_ascii_uppercase();
            let secret_name =
                upper.contains("TOKEN") || upper == "GITHUB_PAT" || upper.ends_with("_PAT");
            assert!(
                !secret_name || upper.ends_with("_FILE"),
                "{name} has {k} in its environment"
            );
        }
    }
    assert_eq!(
        cfg["secrets"]["github_token"]["file"]
            .as_str()
            .map(|f| f.ends_with("secrets/github_token")),
        Some(true),
        "{}",
        cfg["secrets"]
    );
    let mut prefixes = vec![];
    for r in ["runner-1", "runner-2"] {
        let svc = &services[r];
        let e = env_of(svc);
        assert_eq!(
            e.get("SUPERVISOR_GITHUB_TOKEN_FILE").map(String::as_str),
            Some("/run/secrets/github_token"),
            "{r}"
        );
        assert!(svc["secrets"].to_string().contains("github_token"), "{r}");
        assert_eq!(e.get("SUPERVISOR_SLOTS").map(String::as_str), Some("1"));
        prefixes.push(e["RUNNER_NAME"].clone());
        // A drained job is never SIGKILLed by Docker.
        let drain = duration(&e["SUPERVISOR_RUNNER_DRAIN_TIMEOUT"]);
        let grace = duration(&e["SUPERVISOR_RUNNER_STOP_GRACE"]);
        let period = duration(
            svc["stop_grace_period"]
                .as_str()
                .expect("stop_grace_period"),
        );
        assert!(
            period >= drain + grace,
            "{r}: stop_grace_period {period:?} < drain {drain:?} + grace {grace:?}"
        );
        assert_eq!(
            svc["healthcheck"]["test"],
            json!(["CMD", "supervisor", "health"]),
            "{r}"
        );
        assert_eq!(
            svc["depends_on"]["mongo"]["condition"], "service_healthy",
            "{r}"
        );
        assert!(e["SUPERVISOR_HEALTH_DEPENDENCIES"].contains("mongo:27017"));
        assert_eq!(svc["restart"], "unless-stopped");
        for k in [
            "net.ipv4.tcp_keepalive_time",
            "net.ipv4.tcp_keepalive_intvl",
            "net.ipv4.tcp_keepalive_probes",
        ] {
            assert!(!svc["sysctls"][k].is_null(), "{r} sets {k}");
        }
        let vols = svc["volumes"].to_string();
        assert!(vols.contains(&format!("{r}-state:/var/lib/runner-supervisor")));
        assert!(vols.contains(&format!("{r}-toolcache:/opt/hostedtoolcache")));
        assert!(vols.contains("supervisor-shared:/run/runner-supervisor"));
        assert_eq!(
            svc["labels"]["io.github.runner-supervisor.autoheal"], "true",
            "{r} opts in to autoheal"
        );
        assert_eq!(svc["group_add"], json!(["998"]), "{r}: the socket's group");
    }
    assert_ne!(prefixes[0], prefixes[1], "distinct name prefixes");
    let mongo = &services["mongo"];
    assert_eq!(mongo["image"], "mongo:7.0");
    assert!(mongo["volumes"].to_string().contains("mongo-data:/data/db"));
    assert!(!mongo["healthcheck"]["test"].is_null());
    assert!(
        mongo["labels"]["io.github.runner-supervisor.autoheal"].is_null(),
        "mongo is never restarted by autoheal"
    );
    assert_eq!(services["pruner"]["command"], json!(["pruner"]));
    assert_eq!(services["autoheal"]["command"], json!(["autoheal"]));
    for v in [
        "supervisor-shared",
        "runner-1-state",
        "runner-2-state",
        "mongo-data",
    ] {
        assert!(cfg["volumes"].get(v).is_some(), "named volume {v}");
    }

    // Without DOCKER_GID the tool refuses, naming the variable.
    let out = Command::new("docker-compose")
        .args(["-f", "compose/compose.yaml", "config", "-q"])
        .current_dir(repo())
        .env_remove("DOCKER_GID")
        .env("REPO_OWNER", "octo")
        .env("REPO_NAME", "app")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("DOCKER_GID"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// === the stack, end to end ===

/// The debootstrap of bookworm minbase, as a tar, cached under `target/`.
fn bookworm_rootfs() -> PathBuf {
    let cache = crate::support::supervisor_bin()
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("e2e-cache");
    let tar = cache.join("bookworm-minbase.tar");
    if tar.exists() {
        return tar;
    }
    std::fs::create_dir_all(&cache).unwrap();
    let tmp = tempfile::Builder::new()
        .prefix("dbs")
        .tempdir_in("/tmp")
        .unwrap();
    let root = tmp.path().join("root");
    let st = Command::new("debootstrap")
        .args(["--variant=minbase", "bookworm"])
        .arg(&root)
        .arg("http://deb.debian.org/debian")
        .stdout(Stdio::null())
        .status()
        .expect("debootstrap (apt-get install debootstrap; tests/run does)");
    assert!(st.success(), "debootstrap bookworm minbase");
    let part = cache.join("bookworm-minbase.tar.part");
    let st = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .args(["-cf"])
        .arg(&part)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::rename(&part, &tar).unwrap();
    tar
}

fn write_exec(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, body).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Every stand-in image, tagged as compose/Dockerfile and compose.yaml name them.
fn import_images(dk: &mut Dockerd, work: &Path) {
    let bookworm = bookworm_rootfs();
    dk.import_rootfs(
        &bookworm,
        "debian:bookworm-slim",
        &["ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
    );
    dk.must(&["tag", "debian:bookworm-slim", "rust:1.95-bookworm"]);
    // docker:27-cli: only its /usr/local/bin/docker is used.
    let cli = work.join("cli");
    std::fs::create_dir_all(cli.join("usr/local/bin")).unwrap();
    let docker_cli = ["/usr/bin/docker", "/usr/local/bin/docker"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("a docker CLI");
    std::fs::copy(docker_cli, cli.join("usr/local/bin/docker")).unwrap();
    dk.import_rootfs(&cli, "docker:27-cli", &[]);
    // mongo:7.0: listens on 27017; its health check fails while /tmp/unhealthy exists.
    let m = work.join("mongo");
    std::fs::create_dir_all(m.join("bin")).unwrap();
    std::fs::create_dir_all(m.join("tmp")).unwrap();
    std::fs::create_dir_all(m.join("srv")).unwrap();
    std::fs::create_dir_all(m.join("data/db")).unwrap();
    std::fs::write(m.join("srv/index.html"), "stand-in for mongod\n").unwrap();
    std::fs::copy(busybox(), m.join("bin/busybox")).unwrap();
    write_exec(
        &m.join("usr/local/bin/mongod"),
        "#!/bin/busybox sh\n# Stand-in for MongoDB 7.0: something that listens on 27017.\nexec /bin/busybox httpd -f -p 27017 -h /srv\n",
    );
    write_exec(
        &m.join("usr/local/bin/mongosh"),
        "#!/bin/busybox sh\n# Stand-in: answers the health check while mongod answers.\n[ ! -e /tmp/unhealthy ] && exec /bin/busybox wget -q -O /dev/null http://127.0.0.1:27017/\nexit 1\n",
    );
    dk.import_rootfs(&m, "mongo:7.0", &["ENV PATH=/usr/local/bin:/bin"]);
    dk.import("rs-e2e/keep:1");
}

/// The runner tarball of the test: the fake runner as bin/Runner.Listener.
fn runner_tarball(work: &Path, dest: &Path) -> String {
    let dir = work.join("actions-runner");
    sim::fixture::install_runner(&dir, &sim_bin("fake-runner")).unwrap();
    // A copy, not the hard link: other tests link the same file at the same time, which
    // changes its ctime under tar ("file changed as we read it").
    let listener = dir.join("bin/Runner.Listener");
    std::fs::remove_file(&listener).unwrap();
    std::fs::copy(sim_bin("fake-runner"), &listener).unwrap();
    write_exec(
        &dir.join("bin/installdependencies.sh"),
        "#!/bin/sh\n# Stand-in: the fake runner needs no .NET dependencies.\necho 'dependencies: nothing to install'\n",
    );
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    let st = Command::new("tar")
        .arg("-C")
        .arg(&dir)
        .arg("-czf")
        .arg(dest)
        .arg(".")
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "tar: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    let out = Command::new("sha256sum").arg(dest).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// A copy of the repository as a build context (without `target` and `.git`).
fn copy_repo(dst: &Path) {
    let mut pack = Command::new("tar")
        .arg("-C")
        .arg(repo())
        .args([
            "--exclude=./target",
            "--exclude=./.git",
            "--exclude=./compose/secrets",
            "--exclude=./compose/.env",
            "-cf",
            "-",
            ".",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let x = Command::new("tar")
        .arg("-C")
        .arg(dst)
        .arg("-xf")
        .arg("-")
        .stdin(pack.stdout.take().unwrap())
        .status()
        .unwrap();
    assert!(pack.wait().unwrap().success() && x.success());
}

/// The override the test adds to the shipped compose.yaml: the fake GitHub as a
/// service, the runners pointed at it, offline build arguments, short timers.
fn override_yaml(threshold_gb: u64) -> String {
    format!(
        r#"# The end-to-end test's override: the fake GitHub as a service, every runner pointed
# at it, offline build arguments and short timers. Nothing else changes.
services:
  github:
    image: debian:bookworm-slim
    command: ["/sim/fake-github", "--listen", "0.0.0.0:8080", "--public-url", "http://github:8080", "--time-scale", "0.05"]
    volumes:
      - {fake_github}:/sim/fake-github:ro
  runner-1:
    build: &build
      network: none
      args:
        APT_PACKAGES: ""
    environment: &env
      SUPERVISOR_GITHUB_API_URL: http://github:8080
      SUPERVISOR_CLOCK_NTP_SERVERS: ""
      SUPERVISOR_CLOCK_CHRONYC: "off"
      SUPERVISOR_GITHUB_BACKOFF_BASE: 50ms
      SUPERVISOR_WATCHDOG_GRACE: 2s
      SUPERVISOR_HEALTH_UNHEALTHY_AFTER: 2s
    healthcheck: &health
      interval: 1s
      timeout: 5s
      start_period: 1s
      retries: 2
  runner-2:
    build: *build
    environment: *env
    healthcheck: *health
  pruner:
    build: *build
    healthcheck: *health
    environment:
      PRUNE_THRESHOLD_GB: "{threshold_gb}"
      SUPERVISOR_DISK_INTERVAL: 300ms
      SUPERVISOR_DISK_UNTIL: 0s
      SUPERVISOR_DISK_KEEP_IMAGES: mongo:7.0,rs-e2e/keep:1
  autoheal:
    build: *build
    healthcheck: *health
    environment:
      SUPERVISOR_AUTOHEAL_INTERVAL: 1s
      SUPERVISOR_AUTOHEAL_MAX_RESTARTS: "1"
  mongo:
    healthcheck:
      interval: 1s
      start_period: 1s
      retries: 1
"#,
        fake_github = sim_bin("fake-github").display()
    )
}

struct Stack {
    proj: PathBuf,
    env: Vec<(String, String)>,
    http: reqwest::Client,
    github: String,
    // Dropped last: the engine outlives the stack's teardown.
    dk: Dockerd,
    _work: tempfile::TempDir,
}

impl Stack {
    fn compose(&self, args: &[&str]) -> Output {
        Command::new("docker-compose")
            .args([
                "-p",
                PROJECT,
                "-f",
                "compose/compose.yaml",
                "-f",
                "compose/e2e.override.yaml",
            ])
            .args(args)
            .current_dir(&self.proj)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .expect("docker-compose")
    }

    fn compose_ok(&self, args: &[&str]) -> String {
        let out = self.compose(args);
        assert!(
            out.status.success(),
            "docker-compose {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn docker(&mut self, args: &[&str]) -> String {
        self.dk.must(args)
    }

    fn cid(&self, service: &str) -> String {
        self.compose_ok(&["ps", "-q", service]).trim().to_string()
    }

    /// Both streams of a service's container, across its restarts.
    fn logs(&self, service: &str) -> String {
        let out = self
            .dk
            .command("docker")
            .args(["logs", &self.cid(service)])
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    fn inspect(&mut self, service: &str, format: &str) -> String {
        let id = self.cid(service);
        self.docker(&["inspect", "-f", format, &id])
    }

    /// Wait until `service`'s log satisfies `f`, following it (`docker logs -f`: each
    /// new line is the signal to look again); panic with the log otherwise.
    async fn wait_log(&self, service: &str, what: &str, f: impl Fn(&str) -> bool) -> String {
        use tokio::io::{AsyncBufReadExt, BufReader};
        let deadline = tokio::time::Instant::now() + T;
        loop {
            // The whole log so far, then each new line as it is printed.
            let mut log = String::new();
            let mut follow = tokio::process::Command::new("docker")
                .env("DOCKER_HOST", self.dk.host())
                .args(["logs", "-f", &self.cid(service)])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .expect("docker logs -f");
            let mut out = BufReader::new(follow.stdout.take().unwrap()).lines();
            let mut err = BufReader::new(follow.stderr.take().unwrap()).lines();
            loop {
                let line = tokio::select! {
                    l = out.next_line() => l,
                    l = err.next_line() => l,
                    _ = tokio::time::sleep_until(deadline) => {
                        panic!("{service}: timed out waiting for {what}; log:\n{}", self.logs(service))
                    }
                };
                match line {
                    Ok(Some(l)) => {
                        log.push_str(&l);
                        log.push('\n');
                        if f(&log) {
                            return self.logs(service);
                        }
                    }
                    // The container stopped (a restart): take a fresh snapshot and follow again.
                    _ => break,
                }
            }
        }
    }

    async fn gh(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(method, format!("{}{path}", self.github));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("fake github answers");
        resp.json().await.unwrap_or(Value::Null)
    }

    async fn state(&self) -> Value {
        self.gh(reqwest::Method::GET, "/_admin/state", None).await
    }

    async fn jobs(&self, name: &str, duration_ms: u64, count: usize) {
        self.gh(
            reqwest::Method::POST,
            "/_admin/jobs",
            Some(json!({"name": name, "duration_ms": duration_ms, "count": count})),
        )
        .await;
    }

    async fn wait_state(&self, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + T;
        loop {
            let s = self.state().await;
            if f(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {s:#}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn completed(s: &Value, name: &str) -> Vec<Value> {
        s["completed"]
            .as_array()
            .map(|a| a.iter().filter(|j| j["name"] == name).cloned().collect())
            .unwrap_or_default()
    }

    fn health(&mut self, service: &str) -> String {
        self.inspect(service, "{{.State.Health.Status}}")
    }

    async fn wait_health(&mut self, service: &str, want: &str) {
        let deadline = Instant::now() + T;
        while self.health(service) != want {
            assert!(
                Instant::now() < deadline,
                "{service} never became {want}; log:\n{}",
                self.logs(service)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Host PIDs and command lines of a service's processes.
    fn top(&mut self, service: &str) -> Vec<(i32, String, String)> {
        let id = self.cid(service);
        self.docker(&["top", &id, "-eo", "pid,user,args"])
            .lines()
            .skip(1)
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                let pid = it.next()?.parse().ok()?;
                let user = it.next()?.to_string();
                Some((pid, user, it.collect::<Vec<_>>().join(" ")))
            })
            .collect()
    }

    /// Time `docker-compose stop <services>`.
    fn timed_stop(&self, services: &[&str]) -> Duration {
        let t = Instant::now();
        let mut args = vec!["stop"];
        args.extend_from_slice(services);
        self.compose_ok(&args);
        t.elapsed()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self.compose(&["down", "-v", "--timeout", "5"]);
    }
}

fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

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

    // The build context: the repository, the test tarball and a prebuilt supervisor.
    let proj = work.path().join("proj");
    std::fs::create_dir_all(&proj).unwrap();
    copy_repo(&proj);
    let sha = runner_tarball(
        work.path(),
        &proj.join(format!(
            "compose/runner/actions-runner-linux-x64-{RUNNER_VERSION}.tar.gz"
        )),
    );
    let prebuilt = proj.join("compose/prebuilt/supervisor");
    std::fs::copy(crate::support::supervisor_bin(), &prebuilt).unwrap();
    let _ = Command::new("strip").arg(&prebuilt).status();
    // The token file: readable by the image's runner user only.
    let secret = proj.join("compose/secrets/github_token");
    std::fs::create_dir_all(secret.parent().unwrap()).unwrap();
    std::fs::write(&secret, format!("{TOKEN}\n")).unwrap();
    nix::unistd::chown(&secret, Some(nix::unistd::Uid::from_raw(1001)), None).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o400)).unwrap();
    }
    // Between half the threshold and the threshold: below it, but not critical.
    let free_gb = runner_supervisor::disk::free_bytes(dk.dir.path()).unwrap() / 1_000_000_000;
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
