//! `supervisor doctor` through the real binary: the table, `--json` and its exit codes,
//! partial configuration, the root-only token, and each check against the fakes with its
//! failure path. Host files (`/proc/sys`, `/etc/wsl.conf`, `/mnt/c/Users`) are read under
//! a made-up root (`SUPERVISOR_DOCTOR_HOST_ROOT`, debug builds).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::support::{github, Cli, Daemon, Sandbox};

/// One run of doctor.
pub struct Doctor {
    pub code: Option<i32>,
    pub json: Value,
}

impl Doctor {
    pub fn check(&self, name: &str) -> &Value {
        self.json["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no check {name}: {:#}", self.json))
    }
    pub fn status(&self, name: &str) -> &str {
        self.check(name)["status"].as_str().unwrap()
    }
    pub fn reason(&self, name: &str) -> String {
        self.check(name)["reason"].as_str().unwrap().to_string()
    }
    pub fn fix(&self, name: &str) -> String {
        self.check(name)["fix"].as_str().unwrap_or("").to_string()
    }
}

/// `supervisor doctor --json` with exactly `env` (as `user`, e.g. nobody, with `stdin`).
pub async fn doctor_as(
    env: &BTreeMap<String, String>,
    wrapper: &[&str],
    extra: &[&str],
    stdin: Option<&str>,
) -> Doctor {
    let mut env = env.clone();
    env.insert("PATH".into(), std::env::var("PATH").unwrap());
    let args: Vec<&str> = ["doctor", "--json"]
        .into_iter()
        .chain(extra.iter().copied())
        .collect();
    let mut cli = Cli::wrapped(&env, wrapper, &args);
    if let Some(s) = stdin {
        cli = cli.stdin(s);
    }
    // Async: the fake GitHub runs on this test's runtime and must keep answering.
    let out = cli.run_async().await;
    let json = out.json();
    Doctor {
        code: out.code,
        json,
    }
}

pub async fn doctor(env: &BTreeMap<String, String>) -> Doctor {
    doctor_as(env, &[], &[], None).await
}

/// A made-up host: a kernel release, keepalive sysctls, and extra files.
fn host_root(dir: &Path, release: &str, files: &[(&str, &str)]) {
    let w = |p: &str, s: &str| {
        let p = dir.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, s).unwrap();
    };
    w("proc/sys/kernel/osrelease", release);
    w("proc/sys/net/ipv4/tcp_keepalive_time", "60\n");
    w("proc/sys/net/ipv4/tcp_keepalive_intvl", "10\n");
    w("proc/sys/net/ipv4/tcp_keepalive_probes", "6\n");
    for (p, s) in files {
        w(p, s);
    }
}

/// A sandbox whose every check passes: no NTP, no chronyd, no Docker, a plain kernel.
fn healthy(sb: &Sandbox, gh: &sim::github::FakeGithub) -> BTreeMap<String, String> {
    let root = sb.dir.path().join("host");
    host_root(&root, "6.1.0-28-amd64\n", &[]);
    let mut env = sb.env(gh);
    env.insert(
        "SUPERVISOR_DOCTOR_HOST_ROOT".into(),
        root.display().to_string(),
    );
    env.insert("SUPERVISOR_DISK_THRESHOLD_GB".into(), "1".into());
    env.insert(
        "SUPERVISOR_DISK_DOCKER_HOST".into(),
        format!("unix://{}/no-docker.sock", sb.dir.path().display()),
    );
    env
}

#[tokio::test]
async fn every_check_passes_exit_0_and_json_follows_the_schema() {
    let sb = Sandbox::new();
    let gh = github(|_| {}).await;
    let env = healthy(&sb, &gh);
    let d = doctor(&env).await;
    let failing: Vec<_> = d.json["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] != "pass")
        .collect();
    assert!(failing.is_empty(), "{failing:#?}");
    assert_eq!(d.code, Some(0));
    assert_eq!(d.json["schema"], "runner-supervisor.doctor.v1");
    assert_eq!(d.json["result"], "pass");
    assert_eq!(d.json["exit_code"], 0);
    for name in [
        "scope",
        "token",
        "scopes",
        "github",
        "dns",
        "runner",
        "runner version",
        "leftovers",
        "ghosts",
        "instance",
        "state dir",
        "keepalive",
        "sysctls",
        "docker",
        "disk",
        "host",
        "wsl2",
        "dependencies",
    ] {
        let c = d.check(name);
        assert!(c["reason"].as_str().is_some_and(|r| !r.is_empty()), "{c}");
        assert!(c["fix"].is_null(), "a passing check needs no fix: {c}");
    }
    assert!(d.reason("runner").contains("present and executable"));
    assert!(d
        .reason("runner version")
        .contains(&format!("{} installed", sim::protocol::RUNNER_VERSION)));
    assert!(d.reason("host").contains("kernel") && d.reason("host").contains("GiB"));
    assert_eq!(d.reason("wsl2"), "not WSL2 (kernel 6.1.0-28-amd64)");

    // The table: a header, one line per check, no colour when not a terminal.
    let out = Cli::new(&env, &["doctor"]).run_async().await;
    assert_eq!(out.code, Some(0));
    let text = out.stdout;
    assert!(
        text.starts_with("STATUS CHECK           REASON\n"),
        "{text}"
    );
    assert!(text.contains("\npass   runner          "), "{text}");
    assert!(!text.contains('\x1b'), "no colour into a pipe: {text}");
    assert!(text.contains("passed, 0 warnings, 0 failed"), "{text}");
}

#[tokio::test]
async fn warnings_exit_1_and_failures_exit_2_each_with_a_fix() {
    let sb = Sandbox::new();
    // The installed version's runtime deadline in 5 days, a newer release out.
    let soon = chrono::Utc::now() + chrono::Duration::days(5) + chrono::Duration::hours(1);
    let gh = github(|o| {
        o.latest_runner_version = "2.340.1".into();
        o.deprecations
            .insert(sim::protocol::RUNNER_VERSION.into(), Some(soon));
    })
    .await;
    let env = healthy(&sb, &gh);
    // A warning: the deadline within 21 days, and config.sh leftovers.
    std::fs::write(sb.install.join(".runner"), "{}").unwrap();
    let d = doctor(&env).await;
    assert_eq!(d.code, Some(1), "{:#}", d.json);
    assert_eq!(d.json["result"], "warn");
    assert_eq!(d.status("runner version"), "warn");
    assert!(
        d.reason("runner version").contains(&format!(
            "{} installed; 2.340.1 is the newest release; runtime deadline",
            sim::protocol::RUNNER_VERSION
        )) && d.reason("runner version").contains("(in 5 days)"),
        "{}",
        d.reason("runner version")
    );
    assert!(d.fix("runner version").contains("2.340.1"));
    assert_eq!(d.status("leftovers"), "warn");
    assert!(
        d.reason("leftovers").contains(".runner")
            && d.fix("leftovers").contains("config.sh remove")
    );

    // A failure: Runner.Listener is there but not executable.
    let bin = sb.install.join("bin/Runner.Listener");
    let bytes = std::fs::read(&bin).unwrap();
    std::fs::remove_file(&bin).unwrap();
    std::fs::write(&bin, bytes).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o644)).unwrap();
    let d = doctor(&env).await;
    assert_eq!(d.code, Some(2));
    assert_eq!(d.json["result"], "fail");
    assert_eq!(d.status("runner"), "fail");
    assert!(
        d.reason("runner").contains("not executable"),
        "{}",
        d.reason("runner")
    );
    assert!(d.fix("runner").starts_with("chmod +x"));
}

#[tokio::test]
async fn github_unreachable_or_unresolvable_is_a_failure() {
    let sb = Sandbox::new();
    let gh = github(|_| {}).await;
    let mut env = healthy(&sb, &gh);
    // Nothing listens on the port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    env.insert(
        "SUPERVISOR_GITHUB_API_URL".into(),
        format!("http://{closed}"),
    );
    env.insert("SUPERVISOR_GITHUB_MAX_RETRIES".into(), "0".into());
    let d = doctor(&env).await;
    assert_eq!(d.code, Some(2));
    assert_eq!(d.status("github"), "fail");
    assert!(
        d.reason("github").contains("unreachable"),
        "{}",
        d.reason("github")
    );
    assert!(d.fix("github").contains("network"));
    // A name that cannot resolve (RFC 6761 reserves .invalid).
    env.insert(
        "SUPERVISOR_GITHUB_API_URL".into(),
        "http://api.github.invalid".into(),
    );
    let d = doctor(&env).await;
    assert_eq!(d.status("dns"), "fail");
    assert!(d.reason("dns").contains("api.github.invalid"));
    assert_eq!(d.status("github"), "fail");
}

#[tokio::test]
async fn partial_configuration_still_checks_the_host_and_says_what_is_missing() {
    let sb = Sandbox::new();
    let gh = github(|_| {}).await;
    let mut env = healthy(&sb, &gh);
    for k in ["GITHUB_PAT", "REPO_OWNER", "REPO_NAME"] {
        env.remove(k);
    }
    let d = doctor(&env).await;
    assert_eq!(d.code, Some(2));
    assert_eq!(d.status("scope"), "fail");
    assert!(d.fix("scope").contains("REPO_OWNER"));
    assert_eq!(d.status("token"), "fail");
    assert!(d.reason("token").contains("no token"));
    // The host is still checked.
    for name in [
        "runner",
        "state dir",
        "disk",
        "host",
        "wsl2",
        "github",
        "dns",
    ] {
        assert_eq!(d.status(name), "pass", "{name}: {}", d.check(name));
    }
    // `supervisor config` shows the defaults before owner and repo are set.
    let out = Cli::new(&env, &["config"]).run_async().await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let text = out.stdout;
    assert!(
        text.contains("github.owner") && text.contains("runner.slots"),
        "{text}"
    );
}

#[tokio::test]
async fn a_root_only_token_file_is_reported_and_can_be_piped_in() {
    let sb = Sandbox::new();
    let gh = github(|_| {}).await;
    let mut env = healthy(&sb, &gh);
    let token = env.remove("GITHUB_PAT").unwrap();
    // As the systemd README installs it: root-owned, mode 0600.
    let cred = sb.dir.path().join("github_pat");
    std::fs::write(&cred, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&cred, std::fs::Permissions::from_mode(0o600)).unwrap();
    env.insert(
        "SUPERVISOR_GITHUB_TOKEN_FILE".into(),
        cred.display().to_string(),
    );
    // The supervisor's user (nobody here) cannot read it; the state dir is its own.
    crate::support::as_nobody(&sb, &mut env);
    let d = doctor_as(&env, &crate::support::NOBODY, &[], None).await;
    assert_eq!(d.status("token"), "fail");
    assert!(
        d.reason("token").contains("Permission denied"),
        "{}",
        d.reason("token")
    );
    assert!(
        d.fix("token").contains("--token-stdin"),
        "{}",
        d.fix("token")
    );
    // `sudo cat FILE | sudo -u runner supervisor doctor --token-stdin`.
    let piped = std::fs::read_to_string(&cred).unwrap();
    let d = doctor_as(
        &env,
        &crate::support::NOBODY,
        &["--token-stdin"],
        Some(&piped),
    )
    .await;
    assert_eq!(d.status("token"), "pass", "{:#}", d.json);
    assert_eq!(d.status("state dir"), "pass");
    assert_eq!(d.code, Some(0), "{:#}", d.json);
}

#[tokio::test]
async fn ghosts_and_another_supervisor_are_found() {
    let sb = Sandbox::new();
    let gh = github(|_| {}).await;
    let env = healthy(&sb, &gh);
    let host = runner_supervisor::config::this_host();
    let ghost = runner_supervisor::policy::naming::jit_name("ci", &host, 0);
    gh.add_runner("repos/octo/app", &ghost, false);
    gh.add_runner("repos/octo/app", "someone-elses-runner", false);
    let d = doctor(&env).await;
    assert_eq!(d.status("ghosts"), "warn");
    assert!(d.reason("ghosts").contains(&ghost) && !d.reason("ghosts").contains("someone"));
    assert!(d.fix("ghosts").contains("supervisor run"));
    assert_eq!(d.status("instance"), "pass");

    let mut daemon = Daemon::start(&env, &["run"]).await;
    daemon.wait_listening(1, Duration::from_secs(60)).await;
    let d = doctor(&env).await;
    assert_eq!(d.status("instance"), "warn");
    assert!(
        d.reason("instance")
            .contains(&format!("pid {}", daemon.pid)),
        "{}",
        d.reason("instance")
    );
    // The running supervisor reaped the ghost at start.
    assert_eq!(d.status("ghosts"), "pass", "{}", d.reason("ghosts"));
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(Duration::from_secs(60)).await.0, Some(0));
}

#[tokio::test]
async fn docker_disk_sysctls_and_dependencies_each_fail_with_a_fix() {
    let sb = Sandbox::new();
    let gh = github(|_| {}).await;
    let mut env = healthy(&sb, &gh);
    // Docker: a socket this user may not use (root's, mode 0660, run as nobody).
    let sock = sb.dir.path().join("docker.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o660)).unwrap();
    std::fs::set_permissions(sb.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    env.insert(
        "SUPERVISOR_DISK_DOCKER_HOST".into(),
        format!("unix://{}", sock.display()),
    );
    // Disk: a threshold no disk meets.
    env.insert("SUPERVISOR_DISK_THRESHOLD_GB".into(), "1000000".into());
    // Keepalive: the host's defaults, and listener keepalive off.
    let root = sb.dir.path().join("host");
    host_root(
        &root,
        "6.1.0\n",
        &[
            ("proc/sys/net/ipv4/tcp_keepalive_time", "7200\n"),
            ("proc/sys/net/ipv4/tcp_keepalive_intvl", "75\n"),
            ("proc/sys/net/ipv4/tcp_keepalive_probes", "9\n"),
        ],
    );
    env.insert("SUPERVISOR_NETWORK_LISTENER_KEEPALIVE".into(), "off".into());
    // Dependencies: one answers, one does not.
    let up = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    env.insert(
        "SUPERVISOR_HEALTH_DEPENDENCIES".into(),
        format!("{},{down}", up.local_addr().unwrap()),
    );
    crate::support::as_nobody(&sb, &mut env);
    let d = doctor_as(&env, &crate::support::NOBODY, &[], None).await;
    assert_eq!(d.code, Some(2));
    assert_eq!(d.status("docker"), "fail");
    assert!(
        d.reason("docker").contains("not in its group root"),
        "{}",
        d.reason("docker")
    );
    assert!(
        d.fix("docker").contains("usermod -aG root"),
        "{}",
        d.fix("docker")
    );
    assert_eq!(d.status("disk"), "fail");
    assert!(d.reason("disk").contains("prune threshold 1000000 GB"));
    assert_eq!(d.status("sysctls"), "warn");
    assert!(d.reason("sysctls").contains("tcp_keepalive_time=7200"));
    assert!(d.fix("sysctls").contains("tcp_keepalive_time=60"));
    let deps: Vec<&Value> = d.json["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"] == "dependency")
        .collect();
    assert_eq!(deps.len(), 2);
    assert_eq!(deps[0]["status"], "pass");
    assert_eq!(deps[1]["status"], "warn");
    assert!(deps[1]["reason"]
        .as_str()
        .unwrap()
        .contains(&down.to_string()));
}

#[tokio::test]
async fn a_real_docker_engine_passes() {
    let mut dockerd = crate::support::dockerd::Dockerd::start().await;
    let sb = Sandbox::new();
    let gh = github(|_| {}).await;
    let mut env = healthy(&sb, &gh);
    env.insert("SUPERVISOR_DISK_DOCKER_HOST".into(), dockerd.host());
    let d = doctor(&env).await;
    assert_eq!(d.status("docker"), "pass", "{}", d.check("docker"));
    assert!(
        d.reason("docker").contains("answers"),
        "{}",
        d.reason("docker")
    );
    // The disk is Docker's data root.
    let root = dockerd.must(&["info", "--format", "{{.DockerRootDir}}"]);
    assert!(
        d.reason("disk").contains(root.trim()),
        "{} vs {root}",
        d.reason("disk")
    );
}

#[tokio::test]
async fn wsl2_is_detected_and_its_hazards_are_named() {
    let sb = Sandbox::new();
    let gh = github(|_| {}).await;
    let mut env = healthy(&sb, &gh);
    let wsl = "5.15.167.4-microsoft-standard-WSL2\n";
    // A fresh distro: no wsl.conf, no .wslconfig, no time daemon.
    let bare = sb.dir.path().join("wsl-bare");
    host_root(&bare, wsl, &[("mnt/c/Users/ana/Desktop/x", "")]);
    env.insert(
        "SUPERVISOR_DOCTOR_HOST_ROOT".into(),
        bare.display().to_string(),
    );
    let d = doctor(&env).await;
    assert_eq!(d.code, Some(2));
    assert_eq!(d.status("wsl2"), "pass");
    assert!(d.reason("wsl2").contains("WSL2 detected"));
    assert_eq!(d.status("wsl systemd"), "fail");
    assert!(d.fix("wsl systemd").contains("systemd=true"));
    assert_eq!(d.status("wsl idle"), "warn");
    assert!(d.fix("wsl idle").contains("vmIdleTimeout=-1"));
    assert_eq!(d.status("wsl dns"), "warn");
    assert!(d.reason("wsl dns").contains("VPN"));
    assert_eq!(d.status("wsl clock"), "warn");
    assert!(d.reason("wsl clock").contains("sleeps"));
    // Set up as systemd/README.md says.
    let done = sb.dir.path().join("wsl-done");
    host_root(
        &done,
        wsl,
        &[
            (
                "etc/wsl.conf",
                "[boot]\nsystemd=true\n\n[network]\ngenerateResolvConf = false\n",
            ),
            (
                "mnt/c/Users/ana/.wslconfig",
                "[wsl2]\nvmIdleTimeout=-1\ndnsTunneling=true\n",
            ),
            ("usr/sbin/chronyd", ""),
        ],
    );
    env.insert(
        "SUPERVISOR_DOCTOR_HOST_ROOT".into(),
        done.display().to_string(),
    );
    let d = doctor(&env).await;
    for name in ["wsl2", "wsl systemd", "wsl idle", "wsl dns", "wsl clock"] {
        assert_eq!(d.status(name), "pass", "{name}: {}", d.check(name));
    }
    assert_eq!(d.code, Some(0), "{:#}", d.json);
}

#[tokio::test]
async fn a_state_directory_the_user_cannot_write_fails_with_a_fix() {
    let sb = Sandbox::new();
    let gh = github(|_| {}).await;
    let mut env = healthy(&sb, &gh);
    // Root's directory, and doctor runs as nobody.
    let state = sb.dir.path().join("root-state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(sb.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    env.insert("SUPERVISOR_STATE_DIR".into(), state.display().to_string());
    let d = doctor_as(&env, &crate::support::NOBODY, &[], None).await;
    assert_eq!(d.code, Some(2));
    assert_eq!(d.status("state dir"), "fail");
    assert!(
        d.reason("state dir").contains("Permission denied"),
        "{}",
        d.reason("state dir")
    );
    assert!(
        d.fix("state dir").contains("write access"),
        "{}",
        d.fix("state dir")
    );
}
