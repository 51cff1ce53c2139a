//! The listeners' own connections: keepalive injected into them, and their health read
//! from `TCP_INFO`.
//!
//! One task for every slot, awake only while a listener runs: every
//! `[watchdog] socket_check_interval` it reads `TCP_INFO` of each listener's known TCP
//! connections (the cost grows with the listening slots and their few sockets, never with
//! the host's socket count), and looks for new sockets when a slot says its listener
//! started listening, reconnected or took a job, a few checks after that, at every check
//! while it has no established connection (it is reconnecting), and every [`RESCAN`]. New sockets get `[network] keepalive_*` and
//! `user_timeout` (unless `listener_keepalive = off`), through a duplicate taken with
//! `pidfd_getfd` and closed at once. Findings (`tcpinfo`) go to the slot as
//! `SlotCmd::Connection`.
//!
//! Where the kernel refuses a listener, it judges that listener alone, while it is live
//! (a listener that has just exited is a zombie whose `/proc` entries are root's: never
//! judged), with the reason measured on it ([`sockets::refusal_of`]); it says each
//! reason once, with the fix, in the log, and per slot in status, and watches that
//! listener read-only through socket diagnostics. The next listener is tried afresh.
//!
//! It must not: keep a duplicate open, touch a socket that is not a TCP connection, or
//! touch any process but the listeners the slots registered.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ListenerKeepalive};
use crate::host::{Host, ListenerEntry, SlotCmd, SlotCmds};
use crate::sockets::{self, Keepalive, Reach};
use crate::status::{Board, KeepaliveState, SlotKeepalive};
use crate::tcpinfo::{Assessor, Conn, Limits};

/// How often a listening listener's descriptors are listed for new sockets.
pub const RESCAN: Duration = Duration::from_secs(30);
/// Checks after a rescan request that list its descriptors again (its new connection
/// may open just after the line that announced it).
const FOLLOW_UP_SCANS: u32 = 3;

/// How a listener's sockets are reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Duplicates: keepalive set on new sockets, `TCP_INFO` read through them.
    Inject,
    /// Its descriptors cannot even be listed (a non-dumpable listener, without
    /// CAP_SYS_PTRACE): every TCP connection of its user but ours, from the diagnostics,
    /// judged for silence only (a job's or another process's stalled connection must
    /// never replace it; a connection of theirs that talks only delays the finding).
    ByUid(u32),
    /// Socket diagnostics, read-only: nothing of the listener's is touched.
    Diag,
}

struct Watched {
    pid: i32,
    pidfd: Option<OwnedFd>,
    access: Access,
    /// Descriptor → inode of its TCP connections.
    conns: HashMap<RawFd, u64>,
    /// Sockets already given keepalive.
    ours: HashSet<u64>,
    /// Descriptors that are not TCP connections (checked once).
    other: HashSet<u64>,
    assessor: Assessor,
    rescans_seen: u64,
    scans_due: u32,
    next_scan: Instant,
    /// It listens for a job (silence is judged only then).
    idle: bool,
    /// This listener's keepalive, as its slot shows it.
    verdict: Verdict,
    /// It exited (a zombie, or gone): nothing more is read or judged.
    ended: bool,
}

/// One listener's keepalive: judged for it alone.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// No connection taken yet.
    Pending,
    /// Keepalive set on this many of its connections.
    On(u64),
    /// `listener_keepalive = off`.
    Off,
    /// Refused, measured on this listener: reason and fix.
    Refused(String, String),
}

impl Verdict {
    fn status(&self) -> SlotKeepalive {
        let (state, connections, why) = match self {
            Verdict::Pending => (KeepaliveState::Pending, 0, None),
            Verdict::On(n) => (KeepaliveState::On, *n, None),
            Verdict::Off => (KeepaliveState::Off, 0, None),
            Verdict::Refused(why, fix) => (KeepaliveState::Refused, 0, Some((why, fix))),
        };
        SlotKeepalive {
            state,
            connections,
            reason: why.map(|w| w.0.clone()),
            fix: why.map(|w| w.1.clone()),
        }
    }
}

/// The connection watch.
pub struct ConnWatch {
    keepalive: Keepalive,
    limits: Limits,
    mode: ListenerKeepalive,
    /// Refusal reasons already said at warning level (each is said once).
    said: HashSet<String>,
    injected_total: u64,
    /// Listeners that got keepalive, and listeners that were refused, so far.
    listeners_on: u64,
    listeners_refused: u64,
    /// The host's summary last published.
    summary: String,
    watched: BTreeMap<usize, Watched>,
}

impl ConnWatch {
    pub fn new(cfg: &Config) -> ConnWatch {
        let net = &cfg.network;
        let keepalive = Keepalive::for_listeners(net);
        let probe_giveup = if net.user_timeout.is_zero() {
            net.keepalive_interval * net.keepalive_probes
        } else {
            net.user_timeout
        };
        ConnWatch {
            keepalive,
            limits: Limits {
                socket_stall: cfg.watchdog.socket_stall,
                silent_after: cfg.watchdog.silent_after,
                probe_giveup,
                data_giveup: net.user_timeout,
            },
            mode: net.listener_keepalive,
            said: HashSet::new(),
            injected_total: 0,
            listeners_on: 0,
            listeners_refused: 0,
            summary: String::new(),
            watched: BTreeMap::new(),
        }
    }

    /// The host's one-line summary: every current listener's verdict, or the last one
    /// while none runs.
    fn summary(&self) -> String {
        if self.mode == ListenerKeepalive::Off {
            return "off (listener_keepalive = off); watched read-only".into();
        }
        let on = format!(
            "on ({} connection{} so far)",
            self.injected_total,
            if self.injected_total == 1 { "" } else { "s" }
        );
        let refused: Vec<(usize, &str, &str)> = self
            .watched
            .iter()
            .filter(|(_, w)| !w.ended)
            .filter_map(|(slot, w)| match &w.verdict {
                Verdict::Refused(why, fix) => Some((*slot, why.as_str(), fix.as_str())),
                _ => None,
            })
            .collect();
        let Some((_, why, fix)) = refused.first() else {
            if self
                .watched
                .values()
                .all(|w| w.ended || w.verdict == Verdict::Pending)
                && !self.summary.is_empty()
            {
                return self.summary.clone();
            }
            return on;
        };
        let slots: Vec<String> = refused.iter().map(|r| r.0.to_string()).collect();
        let others = self
            .watched
            .values()
            .any(|w| !w.ended && matches!(w.verdict, Verdict::On(_)));
        format!(
            "refused for slot {}: {why}; watched read-only. Fix: {fix}{}",
            slots.join(", "),
            if others {
                format!("; {on} for the other slots")
            } else {
                String::new()
            }
        )
    }

    /// Listener `slot` was refused, for `why`: it is watched read-only.
    fn refuse(&mut self, slot: usize, reach: Reach, why: String, fix: String) {
        let Some(w) = self.watched.get_mut(&slot) else {
            return;
        };
        let pid = w.pid;
        w.verdict = Verdict::Refused(why.clone(), fix.clone());
        self.listeners_refused += 1;
        let first = self.said.insert(why.clone());
        let what = match (reach, w.access) {
            (Reach::List, Access::ByUid(uid)) => format!(
                "cannot list the listener's descriptors ({why}): watching every TCP connection of uid {uid} for silence instead"
            ),
            _ => format!(
                "cannot set keepalive on the listener's connections ({why}); watching them read-only (dead paths and silent hangs are still found)"
            ),
        };
        if first {
            tracing::warn!(event = "keepalive_refused", slot, pid, reason = %why, fix = %fix, "{what}. Fix: {fix}");
        } else {
            tracing::debug!(event = "keepalive_refused", slot, pid, reason = %why, "{what}");
        }
    }

    /// What publishing shows, to publish only on a change.
    fn fingerprint(&self) -> Vec<(usize, i32, bool, Verdict)> {
        self.watched
            .iter()
            .map(|(s, w)| (*s, w.pid, w.ended, w.verdict.clone()))
            .collect()
    }

    /// Follow the registry: forget ended listeners, take on new ones.
    fn sync(&mut self, listeners: &BTreeMap<usize, ListenerEntry>, now: Instant) {
        self.watched
            .retain(|slot, w| listeners.get(slot).is_some_and(|e| e.pid == w.pid));
        for (slot, e) in listeners {
            let w = self.watched.entry(*slot).or_insert_with(|| {
                // Every new listener is tried afresh: an earlier one's refusal says
                // nothing of this one.
                let (pidfd, access, verdict) = match self.mode {
                    ListenerKeepalive::Off => (None, Access::Diag, Verdict::Off),
                    ListenerKeepalive::Auto => match sockets::pidfd_open(e.pid) {
                        Ok(fd) => (Some(fd), Access::Inject, Verdict::Pending),
                        Err(_) => (None, Access::Diag, Verdict::Pending),
                    },
                };
                Watched {
                    pid: e.pid,
                    pidfd,
                    access,
                    conns: HashMap::new(),
                    ours: HashSet::new(),
                    other: HashSet::new(),
                    assessor: Assessor::default(),
                    rescans_seen: u64::MAX,
                    scans_due: 0,
                    next_scan: now,
                    verdict,
                    ended: false,
                    idle: false,
                }
            });
            w.idle = e.idle;
            if w.rescans_seen != e.rescans {
                w.rescans_seen = e.rescans;
                w.scans_due = FOLLOW_UP_SCANS + 1;
            }
        }
    }

    /// One check of every listener; findings to send.
    fn check(&mut self, now: Instant) -> Vec<(usize, SlotCmd)> {
        let mut out = vec![];
        let slots: Vec<usize> = self.watched.keys().copied().collect();
        for slot in slots {
            if self.watched.get(&slot).is_some_and(|w| w.ended) {
                continue;
            }
            let scan = {
                let w = self.watched.get_mut(&slot).expect("listed");
                let due = w.scans_due > 0 || now >= w.next_scan;
                if due {
                    w.scans_due = w.scans_due.saturating_sub(1);
                    w.next_scan = now + RESCAN;
                }
                due
            };
            if scan {
                self.scan(slot);
            }
            let w = self.watched.get_mut(&slot).expect("listed");
            if w.ended {
                continue;
            }
            let conns = read(w);
            if conns.len() < w.conns.len() {
                // A socket went (closed, or its number reused): look again next check.
                w.conns
                    .retain(|_, ino| conns.iter().any(|c| c.inode == *ino));
                w.scans_due = w.scans_due.max(1);
            }
            if let Some(finding) = w.assessor.assess(&conns, w.idle, now, &self.limits) {
                out.push((
                    slot,
                    SlotCmd::Connection {
                        pid: w.pid,
                        finding,
                    },
                ));
            }
        }
        out
    }

    /// List a listener's descriptors; take on its new TCP connections.
    fn scan(&mut self, slot: usize) {
        let w = self.watched.get_mut(&slot).expect("listed");
        let fds = match sockets::socket_fds(w.pid) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                if !matches!(w.access, Access::ByUid(_)) {
                    match sockets::refusal_of(w.pid, Reach::List, &e) {
                        None => w.ended = true,
                        Some((why, fix)) => {
                            w.access = sockets::uid_of(w.pid).map_or(Access::Diag, Access::ByUid);
                            w.pidfd = None;
                            self.refuse(slot, Reach::List, why, fix);
                        }
                    }
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
        let mut refusal: Option<std::io::Error> = None;
        for (fd, ino) in fds {
            if known.contains(&ino) || w.other.contains(&ino) {
                continue;
            }
            match (w.access, w.pidfd.as_ref()) {
                (Access::Inject, Some(pidfd)) => {
                    let dup = match sockets::pidfd_getfd(pidfd.as_fd(), fd) {
                        Ok(d) => d,
                        Err(e)
                            if matches!(
                                e.raw_os_error(),
                                Some(libc::EPERM | libc::EACCES | libc::ENOSYS)
                            ) =>
                        {
                            refusal = Some(e);
                            break;
                        }
                        // Closed meanwhile.
                        Err(_) => continue,
                    };
                    if sockets::inode(dup.as_fd()).ok() != Some(ino)
                        || !sockets::is_tcp_connection(dup.as_fd())
                    {
                        w.other.insert(ino);
                        continue;
                    }
                    w.conns.insert(fd, ino);
                    if w.ours.insert(ino) {
                        let k = &self.keepalive;
                        match sockets::set_keepalive(dup.as_fd(), k) {
                            Ok(()) => {
                                self.injected_total += 1;
                                w.verdict = match w.verdict {
                                    Verdict::On(n) => Verdict::On(n + 1),
                                    _ => {
                                        self.listeners_on += 1;
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
                    }
                    // `dup` closes here: the options stay on the listener's socket.
                }
                _ => {
                    // Read-only: which of these are TCP connections shows in the
                    // diagnostics; the rest are skipped there.
                    w.conns.insert(fd, ino);
                }
            }
        }
        if let Some(e) = refusal {
            match sockets::refusal_of(w.pid, Reach::Take, &e) {
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
}

/// `TCP_INFO` of a listener's known connections.
fn read(w: &mut Watched) -> Vec<Conn> {
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

/// Each slot's verdict, and the host's summary and counts.
fn publish(board: &Board, cw: &mut ConnWatch, slots: usize) {
    for slot in 0..slots {
        let k = cw
            .watched
            .get(&slot)
            .filter(|w| !w.ended)
            .map(|w| w.verdict.status());
        board.update(slot, |s| s.keepalive = k);
    }
    cw.summary = cw.summary();
    board.set_listener_keepalive(cw.summary.clone(), cw.listeners_on, cw.listeners_refused);
}

/// Watch the listeners' connections until cancelled.
pub async fn run(
    cfg: Arc<Config>,
    host: Arc<Host>,
    board: Arc<Board>,
    cmds: SlotCmds,
    cancel: CancellationToken,
) {
    let mut cw = ConnWatch::new(&cfg);
    let mut listeners = host.listeners.subscribe();
    let interval = cfg.watchdog.socket_check_interval;
    let slots = cfg.runner.slots;
    publish(&board, &mut cw, slots);
    // The first look at a listener is at once; then one tick of the grid for every slot.
    let mut ticked = true;
    loop {
        let now = Instant::now();
        let snapshot = listeners.borrow_and_update().clone();
        let before = cw.fingerprint();
        cw.sync(&snapshot, now);
        let rescan_now = cw.watched.values().any(|w| w.scans_due > FOLLOW_UP_SCANS);
        if !cw.watched.is_empty() && (ticked || rescan_now) {
            for (slot, cmd) in cw.check(now) {
                if let Some(tx) = cmds.get(slot) {
                    let _ = tx.send(cmd);
                }
            }
        }
        if cw.fingerprint() != before {
            publish(&board, &mut cw, slots);
        }
        // Asleep while no listener runs.
        let idle = cw.watched.is_empty();
        ticked = false;
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = listeners.changed() => if r.is_err() { return },
            _ = crate::clocks::tick(interval), if !idle => ticked = true,
        }
    }
}
