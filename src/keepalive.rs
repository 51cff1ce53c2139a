//! TCP keepalive: read back what the kernel has on a socket (through socket2), and list
//! this process's own TCP connections with their settings.
//!
//! The settings themselves are applied when the GitHub client connects (see `github`).

use std::os::fd::BorrowedFd;
use std::time::Duration;

/// Keepalive settings in effect on one socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    pub enabled: bool,
    pub idle: Duration,
    pub interval: Duration,
    pub probes: u32,
    /// `TCP_USER_TIMEOUT`: how long sent data may stay unacknowledged.
    pub user_timeout: Option<Duration>,
}

/// Read the keepalive settings of `fd`. `None` if it is not a TCP socket.
pub fn read(fd: BorrowedFd<'_>) -> Option<Keepalive> {
    let s = socket2::SockRef::from(&fd);
    if s.r#type().ok()? != socket2::Type::STREAM {
        return None;
    }
    Some(Keepalive {
        enabled: s.keepalive().ok()?,
        idle: s.keepalive_time().ok()?,
        interval: s.keepalive_interval().ok()?,
        probes: s.keepalive_retries().ok()?,
        user_timeout: s.tcp_user_timeout().ok().flatten(),
    })
}

/// This process's connected TCP sockets: (peer address, settings).
pub fn own_connections() -> Vec<(std::net::SocketAddr, Keepalive)> {
    let mut out = vec![];
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if !target.to_string_lossy().starts_with("socket:") {
            continue;
        }
        // SAFETY: the fd is open (we just listed it) and only borrowed for these calls.
        let b = unsafe { BorrowedFd::borrow_raw(fd) };
        let peer = socket2::SockRef::from(&b)
            .peer_addr()
            .ok()
            .and_then(|a| a.as_socket());
        if let (Some(peer), Some(k)) = (peer, read(b)) {
            out.push((peer, k));
        }
    }
    out
}
