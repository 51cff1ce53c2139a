//! systemd-logind's inhibitor locks through the system D-Bus (`zbus`):
//! `org.freedesktop.login1.Manager.Inhibit(what, who, why, mode)` returns a descriptor
//! that holds the lock until it is closed. The bus is the one `DBUS_SYSTEM_BUS_ADDRESS`
//! names, else the standard socket (zbus reads it; tests point it at a private bus).
//!
//! One lock per *what* ([`WHATS`]), never the combined `"sleep:shutdown"`: logind picks
//! the polkit action it checks by comparing the whole *what* with single values
//! (`method_inhibit` in systemd's `src/login/logind-dbus.c`), so a combination is checked
//! as `org.freedesktop.login1.inhibit-handle-lid-switch` and refused to a service that
//! polkit allows `inhibit-block-sleep` and `inhibit-block-shutdown`. Asked one by one,
//! each lock is checked against its own action ([`polkit_action`]), the one the shipped
//! rule (`systemd/runner-supervisor-inhibit.rules`) grants.
//!
//! Each busy period connects anew: a logind or dbus restarted in between is no matter,
//! and nothing stays open while idle.

use std::os::fd::OwnedFd;
use std::time::Duration;

use super::{Unavailable, WHO};

/// logind's bus name, object and interface.
pub const DEST: &str = "org.freedesktop.login1";
pub const PATH: &str = "/org/freedesktop/login1";
pub const IFACE: &str = "org.freedesktop.login1.Manager";

/// What the locks are taken on, one lock each.
pub const WHATS: [&str; 2] = ["sleep", "shutdown"];

/// Connecting and each call, at most.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The polkit action logind checks before it grants a lock on one `what` in `mode`
/// (`block` or `delay`), as `method_inhibit` chooses it. A caller with `CAP_SYS_BOOT`
/// (root) is granted without asking polkit.
pub fn polkit_action(what: &str, mode: &str) -> &'static str {
    match (what, mode == "block") {
        ("shutdown", true) => "org.freedesktop.login1.inhibit-block-shutdown",
        ("shutdown", false) => "org.freedesktop.login1.inhibit-delay-shutdown",
        ("sleep", true) => "org.freedesktop.login1.inhibit-block-sleep",
        ("sleep", false) => "org.freedesktop.login1.inhibit-delay-sleep",
        ("idle", _) => "org.freedesktop.login1.inhibit-block-idle",
        // The handle-* keys have actions of their own (never asked for here); every
        // combination falls through to the lid switch.
        _ => "org.freedesktop.login1.inhibit-handle-lid-switch",
    }
}

/// The locks asked for in one go: those granted, and those refused with why.
#[derive(Debug, Default)]
pub struct Locks {
    pub held: Vec<(&'static str, OwnedFd)>,
    pub refused: Vec<(&'static str, Unavailable)>,
}

impl Locks {
    /// The names of the granted locks, `:`-joined as logind writes a *what*.
    pub fn held_what(&self) -> String {
        self.held
            .iter()
            .map(|(w, _)| *w)
            .collect::<Vec<_>>()
            .join(":")
    }

    /// Every refusal as one: which locks, and the fix (the first's; they are alike).
    pub fn refusal(&self) -> Option<Unavailable> {
        let (_, first) = self.refused.first()?;
        // `logind refused the lock on sleep (…) and the lock on shutdown (…)`.
        let mut reason = first.reason.clone();
        for (_, u) in &self.refused[1..] {
            match (
                first.reason.split_once(" the lock on "),
                u.reason.split_once(" the lock on "),
            ) {
                (Some((a, _)), Some((b, rest))) if a == b => {
                    reason += &format!(" and the lock on {rest}")
                }
                _ => reason += &format!("; {}", u.reason),
            }
        }
        Some(Unavailable {
            reason,
            fix: first.fix.clone(),
        })
    }
}

/// Take a lock on each of [`WHATS`] in `mode`. Err: logind cannot be asked at all.
pub async fn inhibit(mode: &str, why: &str) -> Result<Locks, Unavailable> {
    let conn = connect().await?;
    let mut locks = Locks::default();
    for what in WHATS {
        match inhibit_one(&conn, what, mode, why).await {
            Ok(fd) => locks.held.push((what, fd)),
            Err(u) => locks.refused.push((what, u)),
        }
    }
    Ok(locks)
}

/// One lock on one connection.
async fn inhibit_one(
    conn: &zbus::Connection,
    what: &'static str,
    mode: &str,
    why: &str,
) -> Result<OwnedFd, Unavailable> {
    let reply = tokio::time::timeout(
        CALL_TIMEOUT,
        conn.call_method(
            Some(DEST),
            PATH,
            Some(IFACE),
            "Inhibit",
            &(what, WHO, why, mode),
        ),
    )
    .await
    .map_err(|_| Unavailable {
        reason: format!("logind did not answer Inhibit({what}) within {CALL_TIMEOUT:?}"),
        fix: "check systemd-logind (systemctl status systemd-logind)".into(),
    })?
    .map_err(|e| from_error(&e, what, mode))?;
    let fd: zbus::zvariant::OwnedFd = reply.body().deserialize().map_err(|e| Unavailable {
        reason: format!("logind's answer to Inhibit({what}) carries no descriptor: {e}"),
        fix: "check systemd-logind (systemctl status systemd-logind)".into(),
    })?;
    Ok(fd.into())
}

/// A connection to the system bus.
async fn connect() -> Result<zbus::Connection, Unavailable> {
    match tokio::time::timeout(CALL_TIMEOUT, zbus::Connection::system()).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(no_logind(format!("no system D-Bus ({e})"))),
        Err(_) => Err(no_logind(format!(
            "the system D-Bus did not answer within {CALL_TIMEOUT:?}"
        ))),
    }
}

/// A D-Bus error (of the call for `what` in `mode`, if any), with the fix.
fn from_error(e: &zbus::Error, what: &str, mode: &str) -> Unavailable {
    match e {
        zbus::Error::MethodError(name, detail, _) => {
            classify(name.as_str(), detail.as_deref().unwrap_or(""), what, mode)
        }
        zbus::Error::FDO(fdo) => {
            let s = fdo.to_string();
            let (name, detail) = s.split_once(": ").unwrap_or((s.as_str(), ""));
            classify(name, detail, what, mode)
        }
        other => Unavailable {
            reason: format!("the system D-Bus: {other}"),
            fix: "check dbus and systemd-logind (systemctl status dbus systemd-logind)".into(),
        },
    }
}

/// Whether this process has `CAP_SYS_BOOT` in its effective set: then logind grants it
/// any lock without asking polkit (root, as a rule).
pub fn has_cap_sys_boot() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << 22) != 0)
}

/// This process's user name, as polkit sees the caller (for the fix and `doctor`), or
/// its uid.
pub fn user_name() -> String {
    let uid = nix::unistd::geteuid();
    nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string())
}

/// The fix for a lock polkit refused: the shipped rule, for this user.
fn polkit_fix(mode: &str) -> String {
    let user = user_name();
    let whose = if user == "runner" {
        "it grants the user runner, which this supervisor runs as".to_string()
    } else {
        format!("it grants the user runner; this supervisor runs as {user}: change the name in it")
    };
    let other = if mode == "block" {
        ", or set [host] inhibit = \"delay\" (logind's short delay, which polkit grants by default)"
    } else {
        ""
    };
    format!("a service with no login session needs polkit's consent for this lock: install systemd/runner-supervisor-inhibit.rules as /etc/polkit-1/rules.d/50-runner-supervisor-inhibit.rules ({whose}; systemd/README.md step 9){other}")
}

/// A D-Bus error by its name: no logind, refused, or something else. `what` and `mode`
/// name the lock asked for (empty when none was).
pub fn classify(name: &str, detail: &str, what: &str, mode: &str) -> Unavailable {
    let said = if detail.is_empty() {
        name.to_string()
    } else {
        format!("{name}: {detail}")
    };
    let (lock, said) = if what.is_empty() {
        ("the lock".to_string(), said)
    } else {
        (
            format!("the lock on {what}"),
            format!("polkit action {}: {said}", polkit_action(what, mode)),
        )
    };
    match name.rsplit('.').next().unwrap_or(name) {
        "ServiceUnknown" | "NameHasNoOwner" | "UnknownObject" | "UnknownInterface"
        | "UnknownMethod" => no_logind(format!("no logind on the system bus ({said})")),
        "AccessDenied" | "InteractiveAuthorizationRequired" | "AuthFailed" => Unavailable {
            reason: format!("logind refused {lock} ({said})"),
            fix: polkit_fix(mode),
        },
        _ => Unavailable {
            reason: format!("logind failed {lock} ({said})"),
            fix: "check systemd-logind (systemctl status systemd-logind, journalctl -u systemd-logind)".into(),
        },
    }
}

/// No logind to ask: the fix depends on where we are.
fn no_logind(reason: String) -> Unavailable {
    let fix = if super::windows::on_wsl() {
        "WSL2 without systemd: add `[boot]` `systemd=true` to /etc/wsl.conf and run `wsl --shutdown` from Windows; or set [host] inhibit = \"off\""
    } else if std::path::Path::new("/.dockerenv").exists()
        || std::path::Path::new("/run/.containerenv").exists()
    {
        "in a container the host decides when it sleeps: keep the host awake there, or give the container the host's /run/dbus/system_bus_socket; or set [host] inhibit = \"off\""
    } else {
        "start dbus and systemd-logind, or set [host] inhibit = \"off\""
    };
    Unavailable {
        reason,
        fix: fix.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_say_whether_logind_is_missing_or_refused() {
        let missing = classify(
            "org.freedesktop.DBus.Error.ServiceUnknown",
            "The name org.freedesktop.login1 was not provided by any .service files",
            "sleep",
            "block",
        );
        assert!(missing.reason.starts_with("no logind on the system bus"));
        assert!(missing.fix.contains("inhibit = \"off\""), "{missing:?}");
        let refused = classify(
            "org.freedesktop.DBus.Error.AccessDenied",
            "Permission denied",
            "shutdown",
            "block",
        );
        assert_eq!(
            refused.reason,
            "logind refused the lock on shutdown (polkit action org.freedesktop.login1.inhibit-block-shutdown: org.freedesktop.DBus.Error.AccessDenied: Permission denied)"
        );
        assert!(refused.fix.contains("polkit") && refused.fix.contains("delay"));
        assert!(refused.fix.contains("50-runner-supervisor-inhibit.rules"));
        let delay = classify(
            "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired",
            "",
            "sleep",
            "delay",
        );
        assert!(delay.reason.contains("inhibit-delay-sleep"), "{delay:?}");
        assert!(!delay.fix.contains("inhibit = \"delay\""), "{delay:?}");
        let other = classify("org.freedesktop.login1.Whatever", "boom", "", "");
        assert_eq!(
            other.reason,
            "logind failed the lock (org.freedesktop.login1.Whatever: boom)"
        );
    }

    #[test]
    fn two_refusals_are_said_as_one_naming_each_lock_and_its_action() {
        let denied = |what| {
            classify(
                "org.freedesktop.DBus.Error.AccessDenied",
                "Permission denied",
                what,
                "block",
            )
        };
        let mut locks = Locks::default();
        assert!(locks.refusal().is_none());
        locks.refused = vec![("sleep", denied("sleep")), ("shutdown", denied("shutdown"))];
        let u = locks.refusal().unwrap();
        assert_eq!(
            u.reason,
            "logind refused the lock on sleep (polkit action org.freedesktop.login1.inhibit-block-sleep: org.freedesktop.DBus.Error.AccessDenied: Permission denied) and the lock on shutdown (polkit action org.freedesktop.login1.inhibit-block-shutdown: org.freedesktop.DBus.Error.AccessDenied: Permission denied)"
        );
        assert_eq!(u.fix, denied("sleep").fix);
        // Unlike failures are listed one after the other.
        locks.refused[1].1 = classify(
            "org.freedesktop.login1.Whatever",
            "boom",
            "shutdown",
            "block",
        );
        assert!(locks
            .refusal()
            .unwrap()
            .reason
            .contains("); logind failed the lock on shutdown"));
    }

    #[test]
    fn each_lock_is_checked_against_its_own_action_never_the_lid_switch() {
        for mode in ["block", "delay"] {
            for what in WHATS {
                let action = polkit_action(what, mode);
                assert_eq!(
                    action,
                    format!("org.freedesktop.login1.inhibit-{mode}-{what}"),
                    "{what} {mode}"
                );
            }
        }
        // What logind does with the combination this module never asks for.
        assert_eq!(
            polkit_action("sleep:shutdown", "block"),
            "org.freedesktop.login1.inhibit-handle-lid-switch"
        );
    }
}
