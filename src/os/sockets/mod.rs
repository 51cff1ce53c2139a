//! A listener's TCP sockets, from outside the process, and keepalive on sockets
//! (`keepalive.rs`: set on the listeners' connections, read back on our own).
//!
//! With `pidfd_open` + `pidfd_getfd` (Linux ≥ 5.6) we take a duplicate of one of its
//! descriptors: it refers to the same open socket, so options set through it (keepalive,
//! `TCP_USER_TIMEOUT`) apply to the listener's socket and stay after the duplicate is
//! closed, and `TCP_INFO` read through it is the socket's own. Duplicates are closed at
//! once: holding one would keep a socket open after the listener closed it.
//!
//! Where the kernel refuses (Yama, a seccomp profile, a non-dumpable or re-parented
//! listener), or when told not to touch them, the same `TCP_INFO` comes read-only from the
//! kernel's socket diagnostics (`NETLINK_SOCK_DIAG`), for the socket inodes listed in
//! `/proc/<pid>/fd`.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use crate::policy::tcpinfo::TcpInfo;

mod access;
mod keepalive;
pub use access::{probe_getfd, refusal_of, Reach};
pub use keepalive::{
    keepalive_of, own_connections, read_keepalive, set_keepalive, Keepalive, SocketKeepalive,
};

/// `pidfd_open(2)`.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: a plain syscall; on success it returns a new descriptor we own.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `r` is a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

/// `pidfd_getfd(2)`: a duplicate of descriptor `fd` of the process behind `pidfd`.
pub fn pidfd_getfd(pidfd: BorrowedFd<'_>, fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: a plain syscall; on success it returns a new descriptor we own.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `r` is a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

/// The socket descriptors of process `pid`: descriptor number → socket inode.
pub fn socket_fds(pid: i32) -> io::Result<HashMap<RawFd, u64>> {
    let mut out = HashMap::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let Ok(e) = e else { continue };
        let Some(fd) = e.file_name().to_str().and_then(|s| s.parse::<RawFd>().ok()) else {
            continue;
        };
        let link = match std::fs::read_link(e.path()) {
            Ok(l) => l,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if let Some(inode) = link
            .to_str()
            .and_then(|s| s.strip_prefix("socket:["))
            .and_then(|s| s.strip_suffix(']'))
            .and_then(|s| s.parse().ok())
        {
            out.insert(fd, inode);
        }
    }
    Ok(out)
}

/// The inode of an open descriptor.
pub fn inode(fd: BorrowedFd<'_>) -> io::Result<u64> {
    Ok(nix::sys::stat::fstat(fd.as_raw_fd())?.st_ino)
}

/// Whether `fd` is a TCP connection (IPv4 or IPv6, not a listening socket).
pub fn is_tcp_connection(fd: BorrowedFd<'_>) -> bool {
    let s = socket2::SockRef::from(&fd);
    let inet =
        matches!(s.domain(), Ok(d) if d == socket2::Domain::IPV4 || d == socket2::Domain::IPV6);
    inet && matches!(s.r#type(), Ok(socket2::Type::STREAM))
        && matches!(s.protocol(), Ok(Some(socket2::Protocol::TCP)) | Ok(None))
        && !matches!(s.is_listener(), Ok(true))
}

/// The peer of a connection, for logs.
pub fn peer(fd: BorrowedFd<'_>) -> Option<std::net::SocketAddr> {
    socket2::SockRef::from(&fd).peer_addr().ok()?.as_socket()
}

/// `getsockopt(TCP_INFO)`.
pub fn tcp_info(fd: BorrowedFd<'_>) -> io::Result<TcpInfo> {
    let mut buf = [0u8; 256];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `buf` and updates `len`.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    TcpInfo::parse(&buf[..len as usize]).ok_or_else(|| io::Error::other("short tcp_info"))
}

// NETLINK_SOCK_DIAG (linux/sock_diag.h, linux/inet_diag.h).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const INET_DIAG_INFO: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_ERROR: u16 = 2;
/// Every TCP state but LISTEN (10) and TIME_WAIT (6), which hold no live connection.
const STATES: u32 = 0xfff & !(1 << 10) & !(1 << 6);

/// Which sockets the diagnostics return.
#[derive(Debug, Clone, Copy)]
pub enum Select<'a> {
    /// These inodes.
    Inodes(&'a HashSet<u64>),
    /// Every TCP connection owned by this user, except these inodes (our own).
    Uid(u32, &'a HashSet<u64>),
}

/// `TCP_INFO` of the sockets in `inodes`, read-only, from the kernel's socket
/// diagnostics (the network namespace of the caller: the listener's, as it is our child).
pub fn diag_tcp_info(inodes: &HashSet<u64>) -> io::Result<Vec<(u64, TcpInfo)>> {
    if inodes.is_empty() {
        return Ok(vec![]);
    }
    diag(Select::Inodes(inodes))
}

/// The user a process runs as (its real uid; `/proc/<pid>/status` is readable by all).
pub fn uid_of(pid: i32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `TCP_INFO` of the sockets `sel` picks, from the kernel's socket diagnostics.
pub fn diag(sel: Select<'_>) -> io::Result<Vec<(u64, TcpInfo)>> {
    let mut out = vec![];
    // SAFETY: a plain socket(2); the descriptor is owned below.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        // nlmsghdr (16) + inet_diag_req_v2 (56).
        let mut req = [0u8; 72];
        req[0..4].copy_from_slice(&72u32.to_ne_bytes());
        req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        req[6..8].copy_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
        req[16] = family;
        req[17] = libc::IPPROTO_TCP as u8;
        req[18] = 1 << (INET_DIAG_INFO - 1);
        req[20..24].copy_from_slice(&STATES.to_ne_bytes());
        nix::unistd::write(sock.as_fd(), &req)?;
        let mut buf = vec![0u8; 32 * 1024];
        'recv: loop {
            let n = nix::unistd::read(sock.as_raw_fd(), &mut buf)?;
            let mut off = 0;
            while off + 16 <= n {
                let len = u32::from_ne_bytes(buf[off..off + 4].try_into().expect("4")) as usize;
                let kind = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().expect("2"));
                if len < 16 || off + len > n {
                    break 'recv;
                }
                match kind {
                    NLMSG_DONE => break 'recv,
                    NLMSG_ERROR => {
                        let errno =
                            i32::from_ne_bytes(buf[off + 16..off + 20].try_into().expect("4"));
                        return Err(io::Error::from_raw_os_error(-errno));
                    }
                    _ => {}
                }
                // inet_diag_msg: 72 bytes; idiag_uid at 64, idiag_inode at 68. Then
                // attributes.
                let msg = &buf[off + 16..off + len];
                if msg.len() >= 72 {
                    let uid = u32::from_ne_bytes(msg[64..68].try_into().expect("4"));
                    let inode = u32::from_ne_bytes(msg[68..72].try_into().expect("4")) as u64;
                    let picked = match sel {
                        Select::Inodes(set) => set.contains(&inode),
                        Select::Uid(u, ours) => uid == u && inode != 0 && !ours.contains(&inode),
                    };
                    if picked {
                        let mut a = 72;
                        while a + 4 <= msg.len() {
                            let alen =
                                u16::from_ne_bytes(msg[a..a + 2].try_into().expect("2")) as usize;
                            let atype =
                                u16::from_ne_bytes(msg[a + 2..a + 4].try_into().expect("2"));
                            if alen < 4 || a + alen > msg.len() {
                                break;
                            }
                            if atype == INET_DIAG_INFO {
                                if let Some(info) = TcpInfo::parse(&msg[a + 4..a + alen]) {
                                    out.push((inode, info));
                                }
                            }
                            a += (alen + 3) & !3;
                        }
                    }
                }
                off += (len + 3) & !3;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::time::Duration;

    #[test]
    fn a_duplicate_sets_options_on_the_original_and_reads_its_tcp_info() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (_srv, _) = l.accept().unwrap();
        let me = pidfd_open(std::process::id() as i32).unwrap();
        let fds = socket_fds(std::process::id() as i32).unwrap();
        let ino = inode(c.as_fd()).unwrap();
        assert_eq!(fds.get(&c.as_raw_fd()), Some(&ino));
        let dup = pidfd_getfd(me.as_fd(), c.as_raw_fd()).unwrap();
        assert_eq!(inode(dup.as_fd()).unwrap(), ino);
        assert!(is_tcp_connection(dup.as_fd()));
        assert!(
            !is_tcp_connection(l.as_fd()),
            "a listening socket is not a connection"
        );
        let k = Keepalive {
            idle: Duration::from_secs(7),
            interval: Duration::from_secs(3),
            probes: 4,
            user_timeout: Duration::from_secs(25),
        };
        set_keepalive(dup.as_fd(), &k).unwrap();
        drop(dup);
        // Set through the duplicate, kept by the original after it closed.
        assert_eq!(
            keepalive_of(c.as_fd()).unwrap(),
            (true, k.idle, k.interval, 4, k.user_timeout)
        );
        let info = tcp_info(c.as_fd()).unwrap();
        assert_eq!(info.state, crate::policy::tcpinfo::ESTABLISHED);
        // The same numbers, read-only, from socket diagnostics.
        let diag = diag_tcp_info(&[ino].into()).unwrap();
        assert_eq!(diag.len(), 1, "{diag:?}");
        assert_eq!(diag[0].0, ino);
        assert_eq!(diag[0].1.state, crate::policy::tcpinfo::ESTABLISHED);
        assert_eq!(peer(c.as_fd()), Some(l.local_addr().unwrap()));
    }
}
