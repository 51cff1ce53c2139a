//! `fake-logind <bus address> <record file> [--allow ACTION]...`: a test double of
//! systemd-logind's inhibitor locks on a private `dbus-daemon`. It owns
//! `org.freedesktop.login1` and serves, at `/org/freedesktop/login1`,
//! `org.freedesktop.login1.Manager.Inhibit(ssss) -> h` and `ListInhibitors() ->
//! a(ssssuu)` as systemd 252's logind does (`src/login/logind-dbus.c`, `method_inhibit`):
//!
//! - `what` is a `:`-separated list of `shutdown`, `sleep`, `idle`, `handle-power-key`,
//!   `handle-suspend-key`, `handle-reboot-key`, `handle-hibernate-key` and
//!   `handle-lid-switch`, `mode` is `block` or `delay`, and delay is for shutdown and
//!   sleep only; anything else is `InvalidArgs` with logind's words.
//! - The polkit action is chosen from the whole `what` by comparing it with single
//!   values, exactly as logind does: `shutdown` → `inhibit-{block,delay}-shutdown`,
//!   `sleep` → `inhibit-{block,delay}-sleep`, `idle` → `inhibit-block-idle`, each
//!   `handle-*-key` → its own action, and anything else, a combination such as
//!   `sleep:shutdown` included, → `inhibit-handle-lid-switch`.
//! - A caller with `CAP_SYS_BOOT` in its effective set (root, as a rule) is granted
//!   without polkit (`bus_verify_polkit_async(message, CAP_SYS_BOOT, …)`). Anyone else is
//!   asked of "polkit" as a caller with no login session (a service): the action's
//!   `allow_any` default from systemd 252's `org.freedesktop.login1.policy`, or a rule
//!   that the test installs (`--allow ACTION`, for every user, as a
//!   `polkit.addRule` returning `YES` for that action would), or an action the caller is
//!   granted that implies it (the policy's `org.freedesktop.policykit.imply`). Refused is
//!   `org.freedesktop.DBus.Error.AccessDenied: Permission denied`, as logind answers.
//! - A granted call gets one end of a fresh pipe; the lock is released when the caller
//!   closes it (the other end, kept here, reads EOF).
//!
//! Each call and each release is one JSON line in the record file, with the wall time:
//! `{"event":"inhibit","id":1,"what":"sleep","who":…,"why":…,"mode":"block",
//! "action":"org.freedesktop.login1.inhibit-block-sleep","granted_by":"rule","uid":0,
//! "pid":…,"at":…}`, `{"event":"released","id":1,"at":…}`, `{"event":"denied",…}`,
//! `{"event":"invalid",…,"error":…}`. It prints `ready` on standard output once it owns
//! the name, and runs until killed.
// A test double stamps its records with the wall clock on purpose (see clippy.toml).
#![allow(clippy::disallowed_methods)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::unix::AsyncFd;

/// A held lock, as `ListInhibitors` returns it: what, who, why, mode, uid, pid.
type Held = (String, String, String, String, u32, u32);

struct Manager {
    record: Arc<Mutex<std::fs::File>>,
    next: AtomicU64,
    /// Actions a test-installed rule grants to every caller.
    allowed: BTreeSet<String>,
    held: Arc<Mutex<BTreeMap<u64, Held>>>,
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn write(record: &Mutex<std::fs::File>, mut line: serde_json::Value) {
    line["at"] = now().into();
    let mut f = record.lock().unwrap();
    let _ = writeln!(f, "{line}");
    let _ = f.flush();
}

/// logind's `InhibitWhat` bits, by name (`inhibit_what_from_string`).
const WHATS: [(&str, u32); 8] = [
    ("shutdown", 1),
    ("sleep", 2),
    ("idle", 4),
    ("handle-power-key", 8),
    ("handle-suspend-key", 16),
    ("handle-hibernate-key", 32),
    ("handle-lid-switch", 64),
    ("handle-reboot-key", 128),
];
const SHUTDOWN: u32 = 1;
const SLEEP: u32 = 2;

/// `inhibit_what_from_string`: every part known, at least one.
fn parse_what(what: &str) -> Option<u32> {
    let mut bits = 0;
    for part in what.split(':') {
        bits |= WHATS.iter().find(|(n, _)| *n == part)?.1;
    }
    (bits != 0).then_some(bits)
}

/// The polkit action logind checks for `bits` in `block`/`delay` mode: single values
/// only, anything else the lid switch (systemd 252, `method_inhibit`).
fn action(bits: u32, block: bool) -> &'static str {
    let by_bit = |b: u32| WHATS.iter().find(|(_, v)| *v == b).map(|(n, _)| *n);
    match (by_bit(bits), block) {
        (Some("shutdown"), true) => "org.freedesktop.login1.inhibit-block-shutdown",
        (Some("shutdown"), false) => "org.freedesktop.login1.inhibit-delay-shutdown",
        (Some("sleep"), true) => "org.freedesktop.login1.inhibit-block-sleep",
        (Some("sleep"), false) => "org.freedesktop.login1.inhibit-delay-sleep",
        (Some("idle"), _) => "org.freedesktop.login1.inhibit-block-idle",
        (Some("handle-power-key"), _) => "org.freedesktop.login1.inhibit-handle-power-key",
        (Some("handle-suspend-key"), _) => "org.freedesktop.login1.inhibit-handle-suspend-key",
        (Some("handle-reboot-key"), _) => "org.freedesktop.login1.inhibit-handle-reboot-key",
        (Some("handle-hibernate-key"), _) => "org.freedesktop.login1.inhibit-handle-hibernate-key",
        _ => "org.freedesktop.login1.inhibit-handle-lid-switch",
    }
}

/// systemd 252's `org.freedesktop.login1.policy` for the inhibit actions: whether a
/// caller with no session is allowed by default (`allow_any`), and what each implies.
const POLICY: [(&str, bool, &[&str]); 10] = [
    (
        "inhibit-block-shutdown",
        false,
        &[
            "inhibit-delay-shutdown",
            "inhibit-block-sleep",
            "inhibit-delay-sleep",
            "inhibit-block-idle",
        ],
    ),
    ("inhibit-delay-shutdown", true, &["inhibit-delay-sleep"]),
    (
        "inhibit-block-sleep",
        false,
        &["inhibit-delay-sleep", "inhibit-block-idle"],
    ),
    ("inhibit-delay-sleep", true, &[]),
    ("inhibit-block-idle", true, &[]),
    (
        "inhibit-handle-power-key",
        false,
        &[
            "inhibit-handle-suspend-key",
            "inhibit-handle-hibernate-key",
            "inhibit-handle-lid-switch",
        ],
    ),
    (
        "inhibit-handle-suspend-key",
        false,
        &["inhibit-handle-hibernate-key", "inhibit-handle-lid-switch"],
    ),
    ("inhibit-handle-hibernate-key", false, &[]),
    ("inhibit-handle-lid-switch", false, &[]),
    (
        "inhibit-handle-reboot-key",
        false,
        &[
            "inhibit-handle-suspend-key",
            "inhibit-handle-hibernate-key",
            "inhibit-handle-lid-switch",
        ],
    ),
];

const PREFIX: &str = "org.freedesktop.login1.";

impl Manager {
    /// polkit's answer for a caller with no session: its rules, then the action's
    /// default; not granted, then any action that implies it (one level, as polkit).
    fn polkit(&self, action: &str) -> Option<&'static str> {
        let direct = |a: &str| {
            if self.allowed.contains(a) {
                return Some("rule");
            }
            let short = a.strip_prefix(PREFIX)?;
            POLICY
                .iter()
                .any(|(id, any, _)| *id == short && *any)
                .then_some("default")
        };
        if let Some(how) = direct(action) {
            return Some(how);
        }
        let short = action.strip_prefix(PREFIX)?;
        POLICY
            .iter()
            .filter(|(_, _, implies)| implies.contains(&short))
            .any(|(id, _, _)| direct(&format!("{PREFIX}{id}")).is_some())
            .then_some("implied")
    }
}

/// Whether `pid` has `CAP_SYS_BOOT` (22) in its effective set.
fn has_cap_sys_boot(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << 22) != 0)
}

/// A pipe: (read end, non-blocking, kept here; write end, handed out).
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Wait until every copy of the write end is closed (the read end sees EOF).
async fn watch(read: OwnedFd) {
    // SAFETY: we own the descriptor and keep it open for as long as it is registered.
    let Ok(fd) = (unsafe { AsyncFd::register(read) }) else {
        return;
    };
    loop {
        let Ok(mut guard) = fd.readable().await else {
            return;
        };
        let mut buf = [0u8; 64];
        // SAFETY: reading into a local buffer from a descriptor we own.
        let n = unsafe {
            libc::read(
                std::os::fd::AsRawFd::as_raw_fd(fd.get_ref()),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        match n {
            0 => return,
            n if n > 0 => continue,
            _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock => {
                guard.clear_ready();
            }
            _ => return,
        }
    }
}

/// The caller's PID and UID, as the bus tells them.
async fn sender(
    conn: &zbus::Connection,
    header: &zbus::message::Header<'_>,
) -> zbus::fdo::Result<(u32, u32)> {
    let name = header
        .sender()
        .ok_or_else(|| zbus::fdo::Error::Failed("no sender".into()))?;
    let bus = zbus::fdo::DBusProxy::new(conn).await?;
    let pid = bus
        .get_connection_unix_process_id(name.clone().into())
        .await?;
    let uid = bus.get_connection_unix_user(name.clone().into()).await?;
    Ok((pid, uid))
}

#[zbus::interface(name = "org.freedesktop.login1.Manager")]
impl Manager {
    async fn inhibit(
        &self,
        what: String,
        who: String,
        why: String,
        mode: String,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: zbus::message::Header<'_>,
    ) -> zbus::fdo::Result<zbus::zvariant::OwnedFd> {
        let id = self.next.fetch_add(1, Ordering::SeqCst) + 1;
        let mut line =
            serde_json::json!({"id": id, "what": what, "who": who, "why": why, "mode": mode});
        let invalid = |mut line: serde_json::Value, msg: String| {
            line["event"] = "invalid".into();
            line["error"] = msg.clone().into();
            write(&self.record, line);
            zbus::fdo::Error::InvalidArgs(msg)
        };
        let Some(bits) = parse_what(&what) else {
            return Err(invalid(line, format!("Invalid what specification {what}")));
        };
        let block = match mode.as_str() {
            "block" => true,
            "delay" => false,
            _ => return Err(invalid(line, format!("Invalid mode specification {mode}"))),
        };
        if !block && bits & !(SHUTDOWN | SLEEP) != 0 {
            return Err(invalid(
                line,
                "Delay inhibitors only supported for shutdown and sleep".into(),
            ));
        }
        let action = action(bits, block);
        let (pid, uid) = sender(conn, &header).await?;
        line["action"] = action.into();
        line["pid"] = pid.into();
        line["uid"] = uid.into();
        let granted_by = if has_cap_sys_boot(pid) {
            Some("CAP_SYS_BOOT")
        } else {
            self.polkit(action)
        };
        let Some(granted_by) = granted_by else {
            line["event"] = "denied".into();
            write(&self.record, line);
            return Err(zbus::fdo::Error::AccessDenied("Permission denied".into()));
        };
        let (read, handed) = pipe().map_err(|e| zbus::fdo::Error::Failed(e.to_string()))?;
        line["event"] = "inhibit".into();
        line["granted_by"] = granted_by.into();
        write(&self.record, line);
        self.held
            .lock()
            .unwrap()
            .insert(id, (what, who, why, mode, uid, pid));
        let (record, held) = (self.record.clone(), self.held.clone());
        tokio::spawn(async move {
            watch(read).await;
            held.lock().unwrap().remove(&id);
            write(&record, serde_json::json!({"event": "released", "id": id}));
        });
        Ok(handed.into())
    }

    async fn list_inhibitors(&self) -> Vec<Held> {
        self.held.lock().unwrap().values().cloned().collect()
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(address), Some(record)) = (args.first(), args.get(1)) else {
        eprintln!("usage: fake-logind <bus address> <record file> [--allow ACTION]...");
        std::process::exit(64);
    };
    let mut allowed = BTreeSet::new();
    let mut rest = args[2..].iter();
    while let Some(a) = rest.next() {
        match (a.as_str(), rest.next()) {
            ("--allow", Some(action)) => {
                allowed.insert(action.clone());
            }
            _ => {
                eprintln!("fake-logind: unknown argument {a} (only --allow ACTION)");
                std::process::exit(64);
            }
        }
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(PathBuf::from(record))?;
    let manager = Manager {
        record: Arc::new(Mutex::new(file)),
        next: AtomicU64::new(0),
        allowed,
        held: Arc::default(),
    };
    let _conn = zbus::connection::Builder::address(address.as_str())?
        .name("org.freedesktop.login1")?
        .serve_at("/org/freedesktop/login1", manager)?
        .build()
        .await?;
    println!("ready");
    std::io::stdout().flush()?;
    std::future::pending::<()>().await;
    Ok(())
}
