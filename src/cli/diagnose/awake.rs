//! Keeping the machine awake while busy (`[host]`): whether logind grants its inhibitor
//! locks (asked for real, released at once), and on WSL2 whether Windows can be kept awake through interop.

use super::{bad, ok, HostRoot};
use crate::cli::preflight::{Check, Level};
use crate::config::{Config, Inhibit, WindowsKeepAwake};
use crate::monitors::keepawake::{logind, windows};

/// Unless `[host] inhibit = "off"`: the locks `supervisor run` takes while a job runs,
/// asked of logind for real in the configured mode and released at once, so that a host
/// where polkit would refuse them is a warning before the first job.
pub async fn check_inhibit(cfg: &Config) -> Check {
    if cfg.host.inhibit == Inhibit::Off {
        return ok(
            "inhibit",
            "off ([host] inhibit): sleep and shutdown are not held off while jobs run",
        );
    }
    let mode = cfg.host.inhibit.as_str();
    let locks = match logind::inhibit(mode, DOCTOR_WHY).await {
        Ok(locks) => locks,
        Err(u) => return unheld(u, ""),
    };
    let refusal = locks.refusal();
    let granted = locks.held_what();
    // Released at once: only the answer was wanted.
    drop(locks.held);
    let who = format!("the user {}", logind::user_name());
    match refusal {
        None => ok(
            "inhibit",
            format!(
                "systemd-logind grants {who} the locks on sleep and shutdown ({mode}; tried and released at once): they are held while a job runs{}",
                if logind::has_cap_sys_boot() {
                    " (as root: logind grants CAP_SYS_BOOT any lock without polkit; a service running as another user needs the polkit rule, so run doctor as that user)"
                } else {
                    ""
                }
            ),
        ),
        Some(u) if granted.is_empty() => unheld(u, ""),
        Some(u) => unheld(u, &format!(" (only {granted} is held)")),
    }
}

/// Why `doctor` asks logind for a lock, as `systemd-inhibit --list` would show it.
const DOCTOR_WHY: &str = "supervisor doctor: trying the lock (released at once)";

/// A lock that cannot be had: a warning with its fix.
fn unheld(u: crate::monitors::keepawake::Unavailable, partly: &str) -> Check {
    bad(
        "inhibit",
        Level::Warn,
        format!(
            "{}: the machine may sleep or shut down in the middle of a job{partly}",
            u.reason
        ),
        u.fix,
    )
}

/// On WSL2 with `[host] windows_keep_awake = "auto"`: whether interop can start
/// `powershell.exe`. Nothing to say elsewhere.
pub fn check_windows_keep_awake(cfg: &Config, root: &HostRoot) -> Option<Check> {
    if cfg.host.windows_keep_awake == WindowsKeepAwake::Off {
        return None;
    }
    #[allow(unused_mut)]
    let mut forced = None;
    #[cfg(debug_assertions)]
    if let Some(v) = std::env::var_os(crate::monitors::keepawake::WSL_INTEROP_ENV) {
        forced = Some(v == "1");
    }
    let path = std::env::var_os("PATH");
    match windows::detect_at(&root.0, path.as_deref(), forced) {
        windows::Interop::NotWsl => None,
        windows::Interop::Ready(p) => Some(ok(
            "windows awake",
            format!(
                "Windows interop works: {} keeps Windows awake while a job runs",
                p.display()
            ),
        )),
        windows::Interop::Unavailable(u) => Some(bad(
            "windows awake",
            Level::Warn,
            format!(
                "{}: Windows may sleep in the middle of a job, and WSL2 with it",
                u.reason
            ),
            u.fix,
        )),
    }
}
