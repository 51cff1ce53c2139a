//! systemd-logind's inhibitor lock through the system D-Bus (`zbus`):
//! `org.freedesktop.login1.Manager.Inhibit(what, who, why, mode)` returns a descriptor
//! that holds the lock until it is closed. The bus is the one `DBUS_SYSTEM_BUS_ADDRESS`
//! names, else the standard socket (zbus reads it; tests point it at a private bus).
//!
//! Each busy period connects anew: a logind or dbus restarted in between is no matter,
//! and nothing stays open while idle.

use std::os::fd::OwnedFd;
use std::time::Duration;

use super::{Unavailable, WHAT, WHO};

/// logind's bus name, object and interface.
pub const DEST: &str = "org.freedesktop.login1";
pub const PATH: &str = "/org/freedesktop/login1";
pub const IFACE: &str = "org.freedesktop.login1.Manager";

/// Connecting and each call, at most.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Take the lock: the descriptor that holds it.
pub async fn inhibit(mode: &str, why: &str) -> Result<OwnedFd, Unavailable> {
    let conn = connect().await?;
    let reply = tokio::time::timeout(
        CALL_TIMEOUT,
        conn.call_method(
            Some(DEST),
            PATH,
            Some(IFACE),
            "Inhibit",
            &(WHAT, WHO, why, mode),
        ),
    )
    .await
    .map_err(|_| Unavailable {
        reason: format!("logind did not answer Inhibit within {CALL_TIMEOUT:?}"),
        fix: "check systemd-logind (systemctl status systemd-logind)".into(),
    })?
    .map_err(|e| from_error(&e))?;
    let fd: zbus::zvariant::OwnedFd = reply.body().deserialize().map_err(|e| Unavailable {
        reason: format!("logind's answer to Inhibit carries no descriptor: {e}"),
        fix: "check systemd-logind (systemctl status systemd-logind)".into(),
    })?;
    Ok(fd.into())
}

/// Whether logind is on the system bus (running, or started on demand), for `doctor`.
pub async fn reachable() -> Result<&'static str, Unavailable> {
    let conn = connect().await?;
    let asked = tokio::time::timeout(CALL_TIMEOUT, async {
        let bus = zbus::fdo::DBusProxy::new(&conn).await?;
        let name = zbus::names::BusName::try_from(DEST)?;
        if bus.name_has_owner(name).await? {
            return Ok::<_, zbus::Error>(true);
        }
        Ok(bus
            .list_activatable_names()
            .await?
            .iter()
            .any(|n| n.as_str() == DEST))
    })
    .await
    .map_err(|_| {
        no_logind(format!(
            "the system D-Bus did not answer within {CALL_TIMEOUT:?}"
        ))
    })?;
    match asked.map_err(|e| from_error(&e))? {
        true => Ok("on the system bus"),
        false => Err(no_logind(format!("no {DEST} on the system bus"))),
    }
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

/// A D-Bus error, with the fix that goes with it.
fn from_error(e: &zbus::Error) -> Unavailable {
    match e {
        zbus::Error::MethodError(name, detail, _) => {
            classify(name.as_str(), detail.as_deref().unwrap_or(""))
        }
        zbus::Error::FDO(fdo) => {
            let s = fdo.to_string();
            let (name, detail) = s.split_once(": ").unwrap_or((s.as_str(), ""));
            classify(name, detail)
        }
        other => Unavailable {
            reason: format!("the system D-Bus: {other}"),
            fix: "check dbus and systemd-logind (systemctl status dbus systemd-logind)".into(),
        },
    }
}

/// A D-Bus error by its name: no logind, refused, or something else.
pub fn classify(name: &str, detail: &str) -> Unavailable {
    let said = if detail.is_empty() {
        name.to_string()
    } else {
        format!("{name}: {detail}")
    };
    match name.rsplit('.').next().unwrap_or(name) {
        "ServiceUnknown" | "NameHasNoOwner" | "UnknownObject" | "UnknownInterface"
        | "UnknownMethod" => no_logind(format!("no logind on the system bus ({said})")),
        "AccessDenied" | "InteractiveAuthorizationRequired" | "AuthFailed" => Unavailable {
            reason: format!("logind refused the lock ({said})"),
            fix: "a service with no login session needs polkit's consent for a blocking lock: install systemd/runner-supervisor-inhibit.rules as /etc/polkit-1/rules.d/50-runner-supervisor-inhibit.rules (systemd/README.md), or set [host] inhibit = \"delay\"".into(),
        },
        _ => Unavailable {
            reason: format!("logind failed the lock ({said})"),
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
        );
        assert!(missing.reason.starts_with("no logind on the system bus"));
        assert!(missing.fix.contains("inhibit = \"off\""), "{missing:?}");
        let refused = classify(
            "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired",
            "",
        );
        assert!(refused.reason.starts_with("logind refused the lock"));
        assert!(refused.fix.contains("polkit") && refused.fix.contains("delay"));
        let other = classify("org.freedesktop.login1.Whatever", "boom");
        assert_eq!(
            other.reason,
            "logind failed the lock (org.freedesktop.login1.Whatever: boom)"
        );
    }
}
