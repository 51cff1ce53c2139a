//! The host checks `supervisor doctor` adds to [`crate::cli::preflight`]'s: configuration,
//! reachability and DNS, the runner binary and its version, leftovers, ghosts, another
//! supervisor, Docker, disk, keepalive sysctls, host facts, WSL2, dependencies, and
//! keeping the machine awake while busy.
//!
//! Layout by topic: this file has the configuration, another supervisor's lock and the
//! host's facts; `network.rs` DNS, reachability, keepalive sysctls and dependencies;
//! `runner.rs` the runner binary, its version, leftovers and ghosts; `upgrades.rs`
//! whether the runner autopilot can work; `docker.rs` the
//! engine and the disk; `wsl.rs` WSL2; `awake.rs` logind's inhibitor and Windows'
//! keep-awake.
//!
//! Files of the host are read under [`HostRoot`] (`/`), so tests can give a made-up one.
//! It must not: change anything, on the host or on GitHub.

use std::path::PathBuf;

use crate::cli::preflight::{Check, Level};
use crate::config::Config;

mod awake;
mod containers;
mod docker;
mod network;
mod runner;
mod scaleset;
mod upgrades;
mod wsl;
pub use awake::{check_inhibit, check_windows_keep_awake};
pub use containers::check_containers;
pub use docker::{check_disk, check_docker};
pub use network::{check_dependencies, check_dns, check_reachable, check_sysctls};
pub use runner::{
    check_ghosts, check_leftovers, check_runner, check_runner_version, runner_version,
};
pub use scaleset::{check_scaleset, runs_on_advice};
pub use upgrades::{check_runner_upgrades, effective_version};
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

/// Another supervisor holds this state directory.
pub fn check_lock(cfg: &Config) -> Check {
    let path = cfg.state_dir.join("supervisor.lock");
    if !path.exists() {
        return ok("instance", "no supervisor runs on this state directory");
    }
    match crate::os::layout::take_lock(&path) {
        Ok(_) => ok("instance", "no supervisor runs on this state directory"),
        Err(crate::os::layout::LockError::Held(_)) => {
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
        Err(crate::os::layout::LockError::Io(m)) => bad(
            "instance",
            Level::Warn,
            format!("cannot check {}: {m}", path.display()),
            "give the supervisor's user access to the state directory",
        ),
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

#[cfg(test)]
mod tests {
    use super::network::url_host;
    use crate::runner::version::parse_version;

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
