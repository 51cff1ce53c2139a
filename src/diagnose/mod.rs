//! The host checks `supervisor doctor` adds to [`crate::preflight`]'s: configuration,
//! reachability and DNS, the runner binary and its version, leftovers, ghosts, another
//! supervisor, Docker, disk, keepalive sysctls, host facts, WSL2, dependencies.
//!
//! Files of the host are read under [`HostRoot`] (`/`), so tests can give a made-up one.
//! It must not: change anything, on the host or on GitHub.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{Config, Toggle};
use crate::github::{GithubClient, RunnerApplication};
use crate::preflight::{Check, Level};

mod wsl;
pub use wsl::check_wsl;

/// Where host files are read: `/`, or (debug builds) `SUPERVISOR_DOCTOR_HOST_ROOT`.
#[derive(Debug, Clone)]
pub struct HostRoot(pub PathBuf);

/// Debug builds only: read `/proc/sys/...`, `/etc/wsl.conf` and `/mnt/c/Users` under this
/// directory instead (the doctor tests' made-up hosts).
pub const HOST_ROOT_ENV: &str = "SUPERVISOR_DOCTOR_HOST_ROOT";

impl HostRoot {
    /// The real host (or the test's, in debug builds).
    pub fn from_env() -> HostRoot {
        #[cfg(debug_assertions)]
        if let Some(r) = std::env::var_os(HOST_ROOT_ENV) {
            return HostRoot(PathBuf::from(r));
        }
        HostRoot(PathBuf::from("/"))
    }
    pub(crate) fn path(&self, p: &str) -> PathBuf {
        self.0.join(p.trim_start_matches('/'))
    }
    pub(crate) fn read(&self, p: &str) -> Option<String> {
        std::fs::read_to_string(self.path(p)).ok()
    }
}

fn ok(name: &'static str, d: impl Into<String>) -> Check {
    Check {
        name,
        level: Level::Ok,
        detail: d.into(),
        fix: None,
    }
}

fn bad(name: &'static str, level: Level, d: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        name,
        level,
        detail: d.into(),
        fix: Some(fix.into()),
    }
}

/// What is missing from the configuration for `run`.
pub fn check_config(cfg: &Config) -> Vec<Check> {
    let mut out = vec![];
    match &cfg.github.scope {
        Some(s) => out.push(ok("scope", format!("runners of {}", s.web_path()))),
        None => out.push(bad(
            "scope",
            Level::Fail,
            "no repository or organisation is set",
            "set REPO_OWNER and REPO_NAME (github.owner, github.repo), or github.org",
        )),
    }
    match (&cfg.github.token, &cfg.github.token_error) {
        (Some(_), _) => {}
        (None, _) if cfg.github.app.is_some() => {}
        (None, Some(e)) if e.starts_with("the GitHub App") => out.push(bad(
            "token",
            Level::Fail,
            e.clone(),
            "a root-only key: run `sudo cat KEY | supervisor doctor --app-key-stdin` (README \"doctor\")",
        )),
        (None, Some(e)) => out.push(bad(
            "token",
            Level::Fail,
            format!("cannot read the token file: {e}"),
            "a root-only credential: run `sudo cat FILE | supervisor doctor --token-stdin` (README \"doctor\")",
        )),
        (None, None) => out.push(bad(
            "token",
            Level::Fail,
            "no token is set",
            "set GITHUB_PAT or github.token_file, or pipe it in: `supervisor doctor --token-stdin`",
        )),
    }
    out
}

/// The API host resolves.
pub async fn check_dns(cfg: &Config) -> Check {
    let Some(host) = url_host(&cfg.github.api_url) else {
        return bad(
            "dns",
            Level::Fail,
            format!("no host in {}", cfg.github.api_url),
            "fix github.api_url",
        );
    };
    let port = if cfg.github.api_url.starts_with("http://") {
        80
    } else {
        443
    };
    let lookup = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::lookup_host((host.clone(), port)),
    )
    .await;
    match lookup {
        Ok(Ok(mut a)) => match a.next() {
            Some(addr) => ok("dns", format!("{host} resolves ({})", addr.ip())),
            None => bad(
                "dns",
                Level::Fail,
                format!("{host} resolves to nothing"),
                dns_fix(),
            ),
        },
        Ok(Err(e)) => bad(
            "dns",
            Level::Fail,
            format!("cannot resolve {host}: {e}"),
            dns_fix(),
        ),
        Err(_) => bad(
            "dns",
            Level::Fail,
            format!("resolving {host} timed out (5 s)"),
            dns_fix(),
        ),
    }
}

fn dns_fix() -> &'static str {
    "check /etc/resolv.conf and that its nameservers answer (after a VPN change on WSL2: `wsl --shutdown`, or see the WSL2 checks)"
}

/// The host of `http(s)://host[:port]/...`.
fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let hostport = rest.split('/').next()?;
    let hostname = if let Some(v6) = hostport.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        hostport.rsplit_once(':').map_or(hostport, |(h, _)| h)
    };
    (!hostname.is_empty()).then(|| hostname.to_string())
}

/// Without a token: does anything answer HTTP at the API URL?
pub async fn check_reachable(cfg: &Config) -> Check {
    let client = match reqwest::Client::builder()
        .connect_timeout(cfg.github.connect_timeout)
        .timeout(Duration::from_secs(15))
        .build()
    {
        Ok(c) => c,
        Err(e) => return bad("github", Level::Fail, e.to_string(), "report this bug"),
    };
    match client.get(format!("{}/", cfg.github.api_url)).send().await {
        Ok(r) => ok(
            "github",
            format!(
                "{} answers (HTTP {})",
                cfg.github.api_url,
                r.status().as_u16()
            ),
        ),
        Err(e) => bad(
            "github",
            Level::Fail,
            format!("{} is unreachable: {e}", cfg.github.api_url),
            "check network access to the GitHub API (DNS, proxy, firewall)",
        ),
    }
}

/// `bin/Runner.Listener` exists and is executable.
pub fn check_runner(cfg: &Config) -> Check {
    let bin = cfg.runner.dir.join("bin/Runner.Listener");
    let meta = match std::fs::metadata(&bin) {
        Ok(m) => m,
        Err(e) => {
            return bad(
                "runner",
                Level::Fail,
                format!("{}: {e}", bin.display()),
                "download actions/runner and unpack it there (then bin/installdependencies.sh), or set SUPERVISOR_RUNNER_DIR",
            )
        }
    };
    if !meta.is_file() {
        return bad(
            "runner",
            Level::Fail,
            format!("{} is not a file", bin.display()),
            "unpack the runner tarball there again",
        );
    }
    if meta.permissions().mode() & 0o111 == 0
        || nix::unistd::access(&bin, nix::unistd::AccessFlags::X_OK).is_err()
    {
        return bad(
            "runner",
            Level::Fail,
            format!(
                "{} is not executable by this user (mode {:o})",
                bin.display(),
                meta.permissions().mode() & 0o777
            ),
            format!(
                "chmod +x {} (the tarball's modes were lost: unpack it with tar, not a zip tool)",
                bin.display()
            ),
        );
    }
    ok(
        "runner",
        format!("{} present and executable", bin.display()),
    )
}

/// The installed runner's version: `bin/Runner.Listener --version`.
pub async fn runner_version(cfg: &Config) -> Option<String> {
    let bin = cfg.runner.dir.join("bin/Runner.Listener");
    let out = tokio::time::timeout(
        Duration::from_secs(15),
        tokio::process::Command::new(&bin)
            .arg("--version")
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .ok()?
    .ok()?;
    let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && parse_version(&v).is_some()).then_some(v)
}

fn parse_version(v: &str) -> Option<(u64, u64, u64)> {
    let mut p = v.trim().trim_start_matches('v').split('.');
    Some((
        p.next()?.parse().ok()?,
        p.next()?.parse().ok()?,
        p.next()?.split(['-', '+']).next()?.parse().ok()?,
    ))
}

/// The latest version among the downloads (from their file names).
pub fn latest_release(apps: &[RunnerApplication]) -> Option<String> {
    apps.iter()
        .filter(|a| a.os == "linux")
        .filter_map(|a| {
            let v = a
                .filename
                .trim_end_matches(".tar.gz")
                .rsplit('-')
                .next()?
                .to_string();
            parse_version(&v).map(|k| (k, v))
        })
        .max()
        .map(|(_, v)| v)
}

/// The installed runner against the latest release, with GitHub's 30-day rule.
pub fn check_runner_version(
    installed: Option<&str>,
    latest: Result<Option<String>, String>,
) -> Check {
    const RULE: &str = "JIT runners never update themselves; GitHub stops queueing jobs to a runner 30 days after a newer version is released (at once for a critical security update), and the listener then exits with the deprecated-version line";
    let Some(inst) = installed else {
        return bad(
            "runner version",
            Level::Warn,
            "cannot tell the installed version (`bin/Runner.Listener --version` failed)",
            "check the runner install; run bin/installdependencies.sh",
        );
    };
    match latest {
        Err(e) => bad(
            "runner version",
            Level::Warn,
            format!("{inst} installed; cannot read the latest release: {e}"),
            "check the token and the network",
        ),
        Ok(None) => ok("runner version", format!("{inst} installed (no release listed)")),
        Ok(Some(latest)) => match (parse_version(inst), parse_version(&latest)) {
            (Some(a), Some(b)) if a < b => bad(
                "runner version",
                Level::Warn,
                format!("{inst} installed, {latest} is the latest release: {RULE}"),
                format!("install actions/runner {latest} in the runner directory within 30 days of its release, then restart the supervisor"),
            ),
            _ => ok("runner version", format!("{inst} installed, the latest release")),
        },
    }
}

/// Files `config.sh` leaves in the runner directory: a registered runner, which the
/// supervisor never uses (it registers its own, and never writes there).
pub fn check_leftovers(cfg: &Config) -> Check {
    let found: Vec<&str> = [
        ".runner",
        ".credentials",
        ".credentials_rsaparams",
        ".service",
    ]
    .into_iter()
    .filter(|f| cfg.runner.dir.join(f).exists())
    .collect();
    if found.is_empty() {
        ok(
            "leftovers",
            format!("no registration files in {}", cfg.runner.dir.display()),
        )
    } else {
        bad(
            "leftovers",
            Level::Warn,
            format!(
                "{} holds {} from an earlier `config.sh`: a runner registered by hand, which stays on GitHub",
                cfg.runner.dir.display(),
                found.join(", ")
            ),
            format!(
                "run `./config.sh remove --token <remove token>` in {} (or delete the runner in Settings > Actions > Runners), then delete those files; the supervisor registers its own runners",
                cfg.runner.dir.display()
            ),
        )
    }
}

/// Offline runners GitHub lists under this host's names: ghosts.
pub async fn check_ghosts(gh: &GithubClient, cfg: &Config, hostname: &str) -> Check {
    match gh.list_runners(None).await {
        Err(e) => bad(
            "ghosts",
            Level::Warn,
            format!("cannot list runners: {e}"),
            "check the token's permissions",
        ),
        Ok(all) => {
            let ghosts: Vec<String> = all
                .iter()
                .filter(|r| {
                    r.status == "offline"
                        && crate::naming::is_ours(&r.name, &cfg.runner.name_prefix, hostname)
                })
                .map(|r| r.name.clone())
                .collect();
            if ghosts.is_empty() {
                ok(
                    "ghosts",
                    format!(
                        "no offline runner named for this host ({} runners listed)",
                        all.len()
                    ),
                )
            } else {
                bad(
                    "ghosts",
                    Level::Warn,
                    format!(
                        "{} offline runner(s) of this host: {}",
                        ghosts.len(),
                        ghosts.join(", ")
                    ),
                    "`supervisor run` deletes them at start; or delete them in Settings > Actions > Runners",
                )
            }
        }
    }
}

/// Another supervisor holds this state directory.
pub fn check_lock(cfg: &Config) -> Check {
    let path = cfg.state_dir.join("supervisor.lock");
    if !path.exists() {
        return ok("instance", "no supervisor runs on this state directory");
    }
    match crate::layout::take_lock(&path) {
        Ok(_) => ok("instance", "no supervisor runs on this state directory"),
        Err(crate::layout::LockError::Held(_)) => {
            let pid = std::fs::read_to_string(&path).unwrap_or_default();
            bad(
                "instance",
                Level::Warn,
                format!(
                    "a supervisor (pid {}) runs on {}: a second `supervisor run` here would refuse to start",
                    pid.trim(),
                    cfg.state_dir.display()
                ),
                "see it with `supervisor status`; give another one its own state directory (SUPERVISOR_STATE_DIR)",
            )
        }
        Err(crate::layout::LockError::Io(m)) => bad(
            "instance",
            Level::Warn,
            format!("cannot check {}: {m}", path.display()),
            "give the supervisor's user access to the state directory",
        ),
    }
}

/// The Docker socket answers, and this user may use it. Returns the engine's data root.
pub async fn check_docker(cfg: &Config) -> (Check, Option<String>) {
    let sock = crate::docker::socket_path(&cfg.disk.docker_host).to_string();
    let meta = match std::fs::metadata(&sock) {
        Ok(m) => m,
        Err(_) if cfg.disk.prune == Toggle::On => {
            return (
                bad(
                    "docker",
                    Level::Fail,
                    format!("no Docker socket at {sock}, and disk.prune = on"),
                    "start Docker (systemctl start docker), or set disk.docker_host",
                ),
                None,
            )
        }
        Err(_) => {
            return (
                ok(
                    "docker",
                    format!(
                    "no Docker engine at {sock}: pruning is off (jobs that need Docker will fail)"
                ),
                ),
                None,
            )
        }
    };
    let user = nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| "this user".into());
    let group = {
        use std::os::unix::fs::MetadataExt;
        meta.gid()
    };
    let group_name = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(group))
        .ok()
        .flatten()
        .map(|g| g.name)
        .unwrap_or_else(|| group.to_string());
    // Permission first: bollard's error does not say it.
    if let Err(e) = std::os::unix::net::UnixStream::connect(&sock) {
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            return (
                bad(
                    "docker",
                    Level::Fail,
                    format!("{user} may not use {sock} (not in its group {group_name})"),
                    format!("sudo usermod -aG {group_name} {user}, then log in again (or restart the service)"),
                ),
                None,
            );
        }
    }
    let engine = match crate::docker::connect(&cfg.disk.docker_host) {
        Ok(e) => e,
        Err(e) => {
            return (
                bad("docker", Level::Fail, e, "check disk.docker_host"),
                None,
            )
        }
    };
    match tokio::time::timeout(Duration::from_secs(10), engine.ping()).await {
        Ok(Ok(version)) => {
            let root = crate::docker::data_root(&engine).await;
            (
                ok(
                    "docker",
                    format!("Docker {version} answers at {sock}; {user} may use it"),
                ),
                root,
            )
        }
        Ok(Err(e)) => (
            bad(
                "docker",
                Level::Fail,
                format!("Docker does not answer at {sock}: {e}"),
                "systemctl status docker",
            ),
            None,
        ),
        Err(_) => (
            bad(
                "docker",
                Level::Fail,
                format!("Docker did not answer at {sock} within 10 s"),
                "systemctl status docker",
            ),
            None,
        ),
    }
}

/// Free space against the prune threshold, on Docker's data root (or the state dir).
pub fn check_disk(cfg: &Config, data_root: Option<&str>) -> Check {
    let path: PathBuf = cfg
        .disk
        .path
        .clone()
        .or_else(|| data_root.map(PathBuf::from))
        .unwrap_or_else(|| cfg.state_dir.clone());
    let probe = nearest_existing(&path);
    let Some(free) = crate::disk::free_bytes(&probe) else {
        return bad(
            "disk",
            Level::Warn,
            format!("cannot read free space of {}", path.display()),
            "check that the path exists",
        );
    };
    let gb = free as f64 / 1e9;
    let t = cfg.disk.threshold_gb as f64;
    let detail = format!(
        "{gb:.1} GB free on {} (prune threshold {} GB)",
        path.display(),
        cfg.disk.threshold_gb
    );
    if gb < t / 2.0 {
        bad("disk", Level::Fail, detail, "free space now: docker system prune (the supervisor prunes only what is unused and older than disk.until)")
    } else if gb < t {
        bad("disk", Level::Warn, detail, "the supervisor will prune Docker when no job runs; or free space, or lower disk.threshold_gb")
    } else {
        ok("disk", detail)
    }
}

fn nearest_existing(p: &Path) -> PathBuf {
    let mut p = p.to_path_buf();
    while !p.exists() {
        if !p.pop() {
            return PathBuf::from("/");
        }
    }
    p
}

/// The keepalive sysctls: what a connection the supervisor cannot reach gets.
pub fn check_sysctls(root: &HostRoot, cfg: &Config) -> Check {
    let Some([t, i, p]) = crate::netwatch::read_sysctls(&root.path("/proc/sys/net/ipv4")) else {
        return ok("sysctls", "tcp_keepalive_* not readable here");
    };
    let ptrace = root
        .read("/proc/sys/kernel/yama/ptrace_scope")
        .map(|s| format!("; yama ptrace_scope {}", s.trim()))
        .unwrap_or_else(|| "; no Yama".into());
    let detail = format!(
        "net.ipv4.tcp_keepalive_time={t} intvl={i} probes={p}{ptrace} (the supervisor sets keepalive on its own and, where allowed, the listener's sockets)"
    );
    let worst = t + i * p;
    if worst > 1800 && cfg.network.listener_keepalive == crate::config::ListenerKeepalive::Off {
        bad(
            "sysctls",
            Level::Warn,
            detail,
            format!("with listener_keepalive = off, a dead long-poll is found only after {worst} s by the kernel: set net.ipv4.tcp_keepalive_time=60, intvl=10, probes=6 (sysctl.d), or let the read-only watch find it (watchdog.silent_after)"),
        )
    } else {
        ok("sysctls", detail)
    }
}

/// Memory, swap, load and the kernel, through `sysinfo`.
pub fn check_host() -> Check {
    let mut s = sysinfo::System::new();
    s.refresh_memory();
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let avail = s.available_memory();
    let load = sysinfo::System::load_average();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let kernel = sysinfo::System::kernel_version().unwrap_or_else(|| "?".into());
    let detail = format!(
        "kernel {kernel}; {cpus} CPUs, load {:.2} {:.2} {:.2}; memory {:.1} of {:.1} GiB available; swap {:.1} of {:.1} GiB used",
        load.one,
        load.five,
        load.fifteen,
        gib(avail),
        gib(s.total_memory()),
        gib(s.used_swap()),
        gib(s.total_swap()),
    );
    if avail < 512 << 20 {
        bad("host", Level::Warn, detail, "jobs (and MongoDB) need memory: stop other work, or on WSL2 raise memory= in .wslconfig")
    } else if load.five > 2.0 * cpus as f64 {
        bad("host", Level::Warn, detail, "the host is overloaded: jobs will be slow and the listener may miss its long-poll deadline")
    } else {
        ok("host", detail)
    }
}

/// Each `[health] dependencies` entry answers a TCP connect.
pub async fn check_dependencies(cfg: &Config) -> Vec<Check> {
    let mut out = vec![];
    if cfg.health.dependencies.is_empty() {
        return vec![ok(
            "dependencies",
            "none configured ([health] dependencies)",
        )];
    }
    for dep in &cfg.health.dependencies {
        let up = tokio::time::timeout(
            Duration::from_secs(3),
            tokio::net::TcpStream::connect(dep.as_str()),
        )
        .await;
        out.push(match up {
            Ok(Ok(_)) => ok("dependency", format!("{dep} answers")),
            Ok(Err(e)) => bad(
                "dependency",
                Level::Warn,
                format!("{dep} does not answer: {e}"),
                format!("start it (jobs that need {dep} will fail; the runners stay up)"),
            ),
            Err(_) => bad(
                "dependency",
                Level::Warn,
                format!("{dep} did not answer within 3 s"),
                format!("start it (jobs that need {dep} will fail; the runners stay up)"),
            ),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_hosts() {
        assert!(parse_version("2.336.0") > parse_version("2.99.9"));
        assert_eq!(parse_version("v2.1.3"), Some((2, 1, 3)));
        assert_eq!(parse_version("junk"), None);
        assert_eq!(
            url_host("https://api.github.com").as_deref(),
            Some("api.github.com")
        );
        assert_eq!(
            url_host("http://127.0.0.1:8080/api/v3").as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(url_host("http://[::1]:80").as_deref(), Some("::1"));
    }
}
