//! Keeping the machine awake while busy (`[host]`): whether logind can be asked for its
//! inhibitor lock, and on WSL2 whether Windows can be kept awake through interop.

use super::{bad, ok, HostRoot};
use crate::config::{Config, Inhibit, WindowsKeepAwake};
use crate::keepawake::{logind, windows};
use crate::preflight::{Check, Level};

/// logind on the system bus, unless `[host] inhibit = "off"`.
pub async fn check_inhibit(cfg: &Config) -> Check {
    if cfg.host.inhibit == Inhibit::Off {
        return ok(
            "inhibit",
            "off ([host] inhibit): sleep and shutdown are not held off while jobs run",
        );
    }
    let mode = cfg.host.inhibit.as_str();
    match logind::reachable().await {
        Ok(how) => ok(
            "inhibit",
            format!(
                "systemd-logind is {how}: sleep and shutdown are held off ({mode}) while a job runs"
            ),
        ),
        Err(u) => bad(
            "inhibit",
            Level::Warn,
            format!(
                "{}: the machine may sleep or shut down in the middle of a job",
                u.reason
            ),
            u.fix,
        ),
    }
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
    if let Some(v) = std::env::var_os(crate::keepawake::WSL_INTEROP_ENV) {
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
