//! `fake-logind <bus address> <record file> [--deny]`: a test double of systemd-logind's
//! inhibitor locks on a private `dbus-daemon`. It owns `org.freedesktop.login1` and
//! serves `org.freedesktop.login1.Manager.Inhibit(ssss) -> h` at `/org/freedesktop/login1`
//! as logind does: each call gets one end of a fresh pipe, and the lock is released when
//! the caller closes it (the other end, kept here, reads EOF). `--deny` refuses every
//! call with `AccessDenied`, as polkit does for a service with no session.
//!
//! Each call and each release is one JSON line in the record file, with the wall time:
//! `{"event":"inhibit","id":1,"what":"sleep:shutdown","who":…,"why":…,"mode":"block","at":…}`,
//! `{"event":"released","id":1,"at":…}`, `{"event":"denied",…}`. It prints `ready` on
//! standard output once it owns the name, and runs until killed.
// A test double stamps its records with the wall clock on purpose (see clippy.toml).
#![allow(clippy::disallowed_methods)]

use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::unix::AsyncFd;

struct Manager {
    record: Arc<Mutex<std::fs::File>>,
    next: AtomicU64,
    deny: bool,
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

#[zbus::interface(name = "org.freedesktop.login1.Manager")]
impl Manager {
    async fn inhibit(
        &self,
        what: String,
        who: String,
        why: String,
        mode: String,
    ) -> zbus::fdo::Result<zbus::zvariant::OwnedFd> {
        let id = self.next.fetch_add(1, Ordering::SeqCst) + 1;
        let call =
            serde_json::json!({"id": id, "what": what, "who": who, "why": why, "mode": mode});
        if self.deny {
            let mut line = call;
            line["event"] = "denied".into();
            write(&self.record, line);
            return Err(zbus::fdo::Error::AccessDenied(
                "Permission denied (fake-logind --deny)".into(),
            ));
        }
        let (read, handed) = pipe().map_err(|e| zbus::fdo::Error::Failed(e.to_string()))?;
        let mut line = call;
        line["event"] = "inhibit".into();
        write(&self.record, line);
        let record = self.record.clone();
        tokio::spawn(async move {
            watch(read).await;
            write(&record, serde_json::json!({"event": "released", "id": id}));
        });
        Ok(handed.into())
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(address), Some(record)) = (args.first(), args.get(1)) else {
        eprintln!("usage: fake-logind <bus address> <record file> [--deny]");
        std::process::exit(64);
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(PathBuf::from(record))?;
    let manager = Manager {
        record: Arc::new(Mutex::new(file)),
        next: AtomicU64::new(0),
        deny: args.iter().any(|a| a == "--deny"),
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
