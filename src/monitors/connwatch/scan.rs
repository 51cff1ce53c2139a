//! Reaching a listener's sockets: listing its descriptors, taking on new TCP connections
//! through a duplicate (given keepalive once, the duplicate closed at once), and reading
//! `TCP_INFO` of the known ones, through duplicates or read-only from socket diagnostics.
//!
//! It must not: keep a duplicate open, or touch a socket that is not a TCP connection.

use std::collections::HashSet;
use std::io;
use std::os::fd::{AsFd, RawFd};

use super::{Access, ConnWatch, Tally, Verdict, Watched};
use crate::os::sockets::{self, Keepalive, Reach};
use crate::policy::tcpinfo::Conn;

impl ConnWatch {
    /// List a listener's descriptors; take on its new TCP connections.
    pub(super) fn scan(&mut self, slot: usize) {
        let w = self.watched.get_mut(&slot).expect("listed");
        let fds = match sockets::socket_fds(w.pid) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                if !matches!(w.access, Access::ByUid(_)) {
                    self.cannot_list(slot, &e);
                }
                return;
            }
            Err(e) => {
                tracing::debug!(slot, pid = w.pid, error = %e, "cannot list the listener's descriptors");
                return;
            }
        };
        w.conns.retain(|fd, ino| fds.get(fd) == Some(ino));
        let known: HashSet<u64> = w.conns.values().copied().collect();
        let mut refusal: Option<io::Error> = None;
        for (fd, ino) in fds {
            if known.contains(&ino) || w.other.contains(&ino) {
                continue;
            }
            if w.access == Access::Inject && w.pidfd.is_some() {
                if let Err(e) = take(w, slot, fd, ino, &self.keepalive, &mut self.tally) {
                    refusal = Some(e);
                    break;
                }
            } else {
                // Read-only: which of these are TCP connections shows in the
                // diagnostics; the rest are skipped there.
                w.conns.insert(fd, ino);
            }
        }
        if let Some(e) = refusal {
            self.cannot_take(slot, &e);
        }
    }

    /// The kernel refused to list the listener's descriptors: watch every TCP connection
    /// of its user for silence (or read-only), unless it exited meanwhile.
    fn cannot_list(&mut self, slot: usize, e: &io::Error) {
        let w = self.watched.get_mut(&slot).expect("listed");
        match sockets::refusal_of(w.pid, Reach::List, e) {
            None => w.ended = true,
            Some((why, fix)) => {
                w.access = sockets::uid_of(w.pid).map_or(Access::Diag, Access::ByUid);
                w.pidfd = None;
                self.refuse(slot, Reach::List, why, fix);
            }
        }
    }

    /// The kernel refused a duplicate of the listener's descriptor: watch it read-only,
    /// unless it exited meanwhile.
    fn cannot_take(&mut self, slot: usize, e: &io::Error) {
        let w = self.watched.get_mut(&slot).expect("listed");
        match sockets::refusal_of(w.pid, Reach::Take, e) {
            // It exited meanwhile: not judged.
            None => w.ended = true,
            Some((why, fix)) => {
                w.access = Access::Diag;
                w.pidfd = None;
                w.scans_due = w.scans_due.max(1);
                self.refuse(slot, Reach::Take, why, fix);
            }
        }
    }
}

/// Take on the listener's new descriptor `fd` (socket `ino`) through a duplicate: a TCP
/// connection is watched, and given keepalive once. An error is the kernel refusing the
/// duplicate; a descriptor closed meanwhile is skipped.
fn take(
    w: &mut Watched,
    slot: usize,
    fd: RawFd,
    ino: u64,
    k: &Keepalive,
    tally: &mut Tally,
) -> io::Result<()> {
    let pidfd = w.pidfd.as_ref().expect("injecting through a pidfd");
    let dup = match sockets::pidfd_getfd(pidfd.as_fd(), fd) {
        Ok(d) => d,
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EPERM | libc::EACCES | libc::ENOSYS)
            ) =>
        {
            return Err(e);
        }
        // Closed meanwhile.
        Err(_) => return Ok(()),
    };
    if sockets::inode(dup.as_fd()).ok() != Some(ino) || !sockets::is_tcp_connection(dup.as_fd()) {
        w.other.insert(ino);
        return Ok(());
    }
    w.conns.insert(fd, ino);
    if !w.ours.insert(ino) {
        return Ok(());
    }
    match sockets::set_keepalive(dup.as_fd(), k) {
        Ok(()) => {
            tally.injected += 1;
            w.verdict = match w.verdict {
                Verdict::On(n) => Verdict::On(n + 1),
                _ => {
                    tally.listeners_on += 1;
                    Verdict::On(1)
                }
            };
            tracing::info!(
                event = "keepalive_set",
                slot,
                pid = w.pid,
                fd,
                peer = %sockets::peer(dup.as_fd()).map(|p| p.to_string()).unwrap_or_default(),
                idle_s = k.idle.as_secs(),
                interval_s = k.interval.as_secs(),
                probes = k.probes,
                user_timeout_s = k.user_timeout.as_secs(),
                "keepalive set on a listener connection"
            );
        }
        Err(e) => {
            w.ours.remove(&ino);
            tracing::debug!(slot, fd, error = %e, "cannot set keepalive on a listener connection");
        }
    }
    // `dup` closes here: the options stay on the listener's socket.
    Ok(())
}

/// `TCP_INFO` of a listener's known connections.
pub(super) fn read(w: &mut Watched) -> Vec<Conn> {
    let mut out = Vec::with_capacity(w.conns.len());
    match (w.access, w.pidfd.as_ref()) {
        (Access::Inject, Some(pidfd)) => {
            for (fd, ino) in &w.conns {
                let Ok(dup) = sockets::pidfd_getfd(pidfd.as_fd(), *fd) else {
                    continue;
                };
                if sockets::inode(dup.as_fd()).ok() != Some(*ino) {
                    continue;
                }
                if let Ok(info) = sockets::tcp_info(dup.as_fd()) {
                    out.push(Conn {
                        inode: *ino,
                        info,
                        ours: w.ours.contains(ino),
                    });
                }
            }
        }
        (Access::ByUid(uid), _) => {
            let ours: HashSet<u64> = sockets::socket_fds(std::process::id() as i32)
                .map(|f| f.into_values().collect())
                .unwrap_or_default();
            match sockets::diag(sockets::Select::Uid(uid, &ours)) {
                Ok(v) => out.extend(
                    v.into_iter()
                        // Silence only: a stalled socket here may be anyone's.
                        .filter(|(_, info)| !info.unanswered())
                        .map(|(inode, info)| Conn {
                            inode,
                            info,
                            ours: false,
                        }),
                ),
                Err(e) => tracing::debug!(pid = w.pid, error = %e, "socket diagnostics failed"),
            }
        }
        _ => {
            let inodes: HashSet<u64> = w.conns.values().copied().collect();
            match sockets::diag_tcp_info(&inodes) {
                Ok(v) => out.extend(v.into_iter().map(|(inode, info)| Conn {
                    inode,
                    info,
                    ours: false,
                })),
                Err(e) => tracing::debug!(pid = w.pid, error = %e, "socket diagnostics failed"),
            }
            // Inodes the diagnostics do not list are not TCP connections (or closed).
            let seen: HashSet<u64> = out.iter().map(|c| c.inode).collect();
            w.conns.retain(|_, ino| seen.contains(ino));
        }
    }
    out
}
