//! WSL2: detected or not, and its hazards: systemd in `/etc/wsl.conf`, the idle shutdown
//! (`vmIdleTimeout` in the Windows side's `.wslconfig`), DNS after a VPN change
//! (`generateResolvConf`), and a time daemon for the clock after the host sleeps.

use super::{bad, ok, HostRoot};
use crate::cli::preflight::{Check, Level};

/// WSL2: detected or not, and its hazards.
pub fn check_wsl(root: &HostRoot) -> Vec<Check> {
    let release = root.read("/proc/sys/kernel/osrelease").unwrap_or_default();
    let lower = release.to_ascii_lowercase();
    let wsl = lower.contains("microsoft") || lower.contains("wsl");
    if !wsl {
        return vec![ok("wsl2", format!("not WSL2 (kernel {})", release.trim()))];
    }
    let mut out = vec![ok(
        "wsl2",
        format!("WSL2 detected (kernel {})", release.trim()),
    )];
    let conf = root.read("/etc/wsl.conf").unwrap_or_default();
    let setting = |section: &str, key: &str| ini_get(&conf, section, key);
    match setting("boot", "systemd").as_deref() {
        Some("true") => out.push(ok(
            "wsl systemd",
            "systemd is enabled ([boot] systemd=true in /etc/wsl.conf)",
        )),
        _ => out.push(bad(
            "wsl systemd",
            Level::Fail,
            "systemd is not enabled in /etc/wsl.conf: the unit will never start",
            "add `[boot]` `systemd=true` to /etc/wsl.conf, then `wsl --shutdown` from Windows",
        )),
    }
    // The Windows side: %UserProfile%\.wslconfig, seen under /mnt/c/Users.
    let wslconfig = std::fs::read_dir(root.path("/mnt/c/Users"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join(".wslconfig"))
        .find(|p| p.is_file());
    let idle = wslconfig
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| ini_get(&t, "wsl2", "vmIdleTimeout"));
    match idle.as_deref() {
        Some("-1") => out.push(ok("wsl idle", format!("vmIdleTimeout=-1 in {}", wslconfig.as_ref().map(|p| p.display().to_string()).unwrap_or_default()))),
        other => out.push(bad(
            "wsl idle",
            Level::Warn,
            format!(
                "WSL shuts the VM down once no Windows-side session is open (vmIdleTimeout {}): the runners die with it",
                other.unwrap_or("unset, 60 s")
            ),
            "in %UserProfile%\\.wslconfig set `[wsl2]` `vmIdleTimeout=-1`, and keep the distro alive at logon (Task Scheduler: `wsl.exe -d <distro> --exec sleep infinity`); systemd/README.md",
        )),
    }
    match setting("network", "generateResolvConf").as_deref() {
        Some("false") => out.push(ok("wsl dns", "generateResolvConf=false: resolv.conf is yours")),
        _ => out.push(bad(
            "wsl dns",
            Level::Warn,
            "WSL writes resolv.conf from Windows' DNS at start (generateResolvConf): after a VPN connects or drops, the nameserver in it can stop answering and GitHub stops resolving",
            "in .wslconfig set `[wsl2]` `dnsTunneling=true` (WSL 2.0+), or set generateResolvConf=false in /etc/wsl.conf with nameservers that always answer",
        )),
    }
    let sync = [
        "/usr/sbin/chronyd",
        "/lib/systemd/systemd-timesyncd",
        "/usr/lib/systemd/systemd-timesyncd",
    ]
    .iter()
    .find(|p| root.path(p).exists());
    match sync {
        Some(p) => out.push(ok("wsl clock", format!("{p} present: the clock is corrected after the Windows host sleeps"))),
        None => out.push(bad(
            "wsl clock",
            Level::Warn,
            "no time daemon: after the Windows host sleeps, the WSL2 clock can lag by minutes, and beyond 5 minutes the runner's OAuth fails",
            "apt-get install chrony (or enable systemd-timesyncd); the supervisor pauses registrations while the clock is off",
        )),
    }
    out
}

/// `key` of `[section]` in an INI-style file (`wsl.conf`, `.wslconfig`), case-insensitive.
fn ini_get(text: &str, section: &str, key: &str) -> Option<String> {
    let mut current = String::new();
    let mut found = None;
    for line in text.lines() {
        let l = line.split(['#', ';']).next().unwrap_or("").trim();
        if let Some(s) = l.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            current = s.trim().to_ascii_lowercase();
        } else if let Some((k, v)) = l.split_once('=') {
            if current == section.to_ascii_lowercase() && k.trim().eq_ignore_ascii_case(key) {
                found = Some(v.trim().trim_matches('"').to_ascii_lowercase());
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ini_files() {
        let conf = "[boot]\nsystemd = true # yes\n[network]\ngenerateResolvConf=False\n";
        assert_eq!(ini_get(conf, "boot", "systemd").as_deref(), Some("true"));
        assert_eq!(
            ini_get(conf, "network", "generateresolvconf").as_deref(),
            Some("false")
        );
        assert_eq!(ini_get(conf, "wsl2", "vmIdleTimeout"), None);
    }
}
