//! TCP keepalive on sockets: the settings given (to the listeners' connections and to
//! the supervisor's own), setting them on a descriptor, and reading back what a socket
//! has, including on this process's own connections.
//!
//! It must not: decide which sockets get keepalive (`connwatch` and the GitHub client do),
//! nor what keepalive they get (`policy::keepalive`, from `[network]`).

use std::io;
use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, RawFd};
use std::time::Duration;

pub use crate::policy::keepalive::Keepalive;

/// Set `SO_KEEPALIVE`, `TCP_KEEPIDLE`/`INTVL`/`CNT` and `TCP_USER_TIMEOUT` on `fd`.
pub fn set_keepalive(fd: BorrowedFd<'_>, k: &Keepalive) -> io::Result<()> {
    let s = socket2::SockRef::from(&fd);
    s.set_tcp_keepalive(
        &socket2::TcpKeepalive::new()
            .with_time(k.idle)
            .with_interval(k.interval)
            .with_retries(k.probes),
    )?;
    s.set_tcp_user_timeout((!k.user_timeout.is_zero()).then_some(k.user_timeout))?;
    Ok(())
}

/// The keepalive a socket has, read back from the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketKeepalive {
    /// `SO_KEEPALIVE`.
    pub enabled: bool,
    pub idle: Duration,
    pub interval: Duration,
    pub probes: u32,
    /// `TCP_USER_TIMEOUT`: how long sent data may stay unacknowledged.
    pub user_timeout: Option<Duration>,
}

/// Read back the keepalive on `fd`.
pub fn read_keepalive(fd: BorrowedFd<'_>) -> io::Result<SocketKeepalive> {
    let s = socket2::SockRef::from(&fd);
    Ok(SocketKeepalive {
        enabled: s.keepalive()?,
        idle: s.keepalive_time()?,
        interval: s.keepalive_interval()?,
        probes: s.keepalive_retries()?,
        user_timeout: s.tcp_user_timeout()?,
    })
}

/// What is set on `fd`: (keepalive on, idle, interval, probes, user timeout or zero).
pub fn keepalive_of(fd: BorrowedFd<'_>) -> io::Result<(bool, Duration, Duration, u32, Duration)> {
    let k = read_keepalive(fd)?;
    Ok((
        k.enabled,
        k.idle,
        k.interval,
        k.probes,
        k.user_timeout.unwrap_or_default(),
    ))
}

/// This process's connected TCP sockets: (peer address, the keepalive they have).
pub fn own_connections() -> Vec<(SocketAddr, SocketKeepalive)> {
    let Ok(fds) = super::socket_fds(std::process::id() as i32) else {
        return vec![];
    };
    let mut out = vec![];
    for fd in fds.into_keys() {
        // SAFETY: the fd is open (just listed) and only borrowed for these calls.
        let b = unsafe { BorrowedFd::borrow_raw(fd as RawFd) };
        if socket2::SockRef::from(&b).r#type().ok() != Some(socket2::Type::STREAM) {
            continue;
        }
        if let (Some(peer), Ok(k)) = (super::peer(b), read_keepalive(b)) {
            out.push((peer, k));
        }
    }
    out
}
