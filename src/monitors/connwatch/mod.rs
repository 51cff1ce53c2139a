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
use std::os::fd::{OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ListenerKeepalive};
use crate::os::sockets::{self, Keepalive};
use crate::policy::tcpinfo::{Assessor, Limits};
use crate::status::host::{Host, ListenerEntry, SlotCmd, SlotCmds};
use crate::status::Board;

mod scan;
mod verdict;

use verdict::Verdict;

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

/// What the watch has done so far, over every listener.
#[derive(Debug, Default)]
struct Tally {
    /// Connections given keepalive.
    injected: u64,
    /// Listeners that got keepalive.
    listeners_on: u64,
    /// Listeners the kernel refused.
    listeners_refused: u64,
}

/// The connection watch.
pub struct ConnWatch {
    keepalive: Keepalive,
    limits: Limits,
    mode: ListenerKeepalive,
    /// Refusal reasons already said at warning level (each is said once).
    said: HashSet<String>,
    tally: Tally,
    /// The host's summary last published.
    summary: String,
    watched: BTreeMap<usize, Watched>,
}

impl ConnWatch {
    pub fn new(cfg: &Config) -> ConnWatch {
        let net = &cfg.network;
        let keepalive = net.keepalive_for_listeners();
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
            tally: Tally::default(),
            summary: String::new(),
            watched: BTreeMap::new(),
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
            let conns = scan::read(w);
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
    board.set_listener_keepalive(
        cw.summary.clone(),
        cw.tally.listeners_on,
        cw.tally.listeners_refused,
    );
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
            _ = crate::os::clocks::tick(interval), if !idle => ticked = true,
        }
    }
}
