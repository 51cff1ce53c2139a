//! Runner upgrades: whether the autopilot can install a newer runner here (the versions
//! directory writable and on a disk that survives a reboot), what it runs, and why
//! nothing upgrades when it cannot (`auto_update` notify or off, the running supervisor's
//! last failure).

use std::path::Path;

use super::{bad, ok};
use crate::cli::preflight::{Check, Level};
use crate::config::{AutoUpdate, Config};
use crate::runner::store::Store;
use crate::runner::version::parse_version;

const NAME: &str = "runner upgrades";

/// The version the supervisor runs: with `auto_update = "on"`, the newest complete one in
/// the versions directory when it is newer than the configured one.
pub fn effective_version(cfg: &Config, configured: Option<String>) -> Option<String> {
    if cfg.runner.auto_update != AutoUpdate::On {
        return configured;
    }
    let newest = Store::open(&cfg.versions_dir())
        .ok()
        .and_then(|s| s.versions().pop());
    match (configured, newest) {
        (Some(c), Some(n)) if parse_version(&n) > parse_version(&c) => Some(n),
        (c, n) => c.or(n),
    }
}

/// Whether the autopilot can work, and what stops it. `latest` is the newest release,
/// `running` the running supervisor's runner-upgrade condition, if it has one.
pub fn check_runner_upgrades(
    cfg: &Config,
    installed: Option<&str>,
    latest: Option<&str>,
    running: Option<&str>,
) -> Check {
    let newer = match (installed, latest) {
        (Some(i), Some(l)) if parse_version(l) > parse_version(i) => Some(l),
        _ => None,
    };
    match cfg.runner.auto_update {
        AutoUpdate::On => {}
        mode => {
            let word = if mode == AutoUpdate::Notify {
                "notify"
            } else {
                "off"
            };
            return match newer {
                Some(l) => bad(
                    NAME,
                    Level::Warn,
                    format!("auto_update is \"{word}\": runner {l} is available and nothing installs it"),
                    format!("set [runner] auto_update = \"on\" (SUPERVISOR_RUNNER_AUTO_UPDATE=on), or install actions/runner {l} in {} and restart", cfg.runner.dir.display()),
                ),
                None => ok(NAME, format!("auto_update is \"{word}\": upgrades are by hand")),
            };
        }
    }
    let dir = cfg.versions_dir();
    if let Err(why) = writable(&dir) {
        return bad(
            NAME,
            Level::Fail,
            format!("auto_update is on, and the versions directory {} cannot be written: {why}; the configured runner is all there is", dir.display()),
            format!("make {} writable by this user (under systemd's hardening: ReadWritePaths={}), or set [runner] versions_dir (SUPERVISOR_RUNNER_VERSIONS_DIR)", dir.display(), dir.display()),
        );
    }
    if on_tmpfs(&dir) {
        return bad(
            NAME,
            Level::Warn,
            format!("the versions directory {} is on a tmpfs: every reboot downloads the runner again, and starts on the configured one", dir.display()),
            "set [runner] versions_dir to a directory on disk (the default is <state dir>/runners)",
        );
    }
    if let Some(why) = running {
        return bad(
            NAME,
            Level::Warn,
            format!("the running supervisor says: {why}"),
            "it retries by itself with a growing back-off; `supervisor runner upgrade` tries now, `supervisor runner retry` forgets a rolled-back version",
        );
    }
    ok(
        NAME,
        format!(
            "auto_update is on; versions in {} (writable){}",
            dir.display(),
            match newer {
                Some(l) => format!("; {l} is installed between jobs"),
                None => String::new(),
            }
        ),
    )
}

/// Whether files can be made in `dir` (created if missing).
fn writable(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let probe = dir.join(format!(".doctor-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Whether `dir` is on a tmpfs (gone at the next reboot).
fn on_tmpfs(dir: &Path) -> bool {
    nix::sys::statfs::statfs(dir)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
}
