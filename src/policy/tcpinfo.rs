//! What a listener's TCP connections say about its path to GitHub, from the kernel's
//! `struct tcp_info`: pure.
//!
//! Two findings, each a watchdog fire with cause `network`:
//! - **dead path**: a connection with retransmissions (sent data unacknowledged, or a SYN
//!   unanswered) or keepalive probes outstanding for longer than `socket_stall`, beyond the
//!   time its own keepalive or user timeout needs to fail it (so a listener we gave
//!   keepalive recovers by itself first);
//! - **silent hang**: an idle listener none of whose established connections has received
//!   any data for longer than `silent_after` (a peer that went quiet after the headers:
//!   the listener's body read has no timeout). Busy listeners are never judged on this.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

/// `TCP_ESTABLISHED`.
pub const ESTABLISHED: u8 = 1;
/// `TCP_SYN_SENT`.
pub const SYN_SENT: u8 = 2;

/// The fields of `struct tcp_info` (linux/tcp.h) the watchdog reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpInfo {
    /// `tcpi_state`.
    pub state: u8,
    /// Unrecovered retransmission timeouts (`tcpi_retransmits`).
    pub retransmits: u8,
    /// Keepalive or zero-window probes sent without an answer (`tcpi_probes`).
    pub probes: u8,
    /// Exponential back-off of the retransmission timer (`tcpi_backoff`).
    pub backoff: u8,
    /// Segments sent and not yet acknowledged (`tcpi_unacked`).
    pub unacked: u32,
    /// Milliseconds since data was last received (`tcpi_last_data_recv`).
    pub last_data_recv_ms: u32,
    /// Milliseconds since an acknowledgement was last received (`tcpi_last_ack_recv`).
    pub last_ack_recv_ms: u32,
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes(b[off..off + 4].try_into().expect("four bytes"))
}

impl TcpInfo {
    /// The size the kernel has filled since Linux 2.6 (up to `tcpi_reordering`).
    pub const MIN_LEN: usize = 92;

    /// Parse the kernel's bytes (from `getsockopt(TCP_INFO)` or an `INET_DIAG_INFO`
    /// attribute); `None` when too short.
    pub fn parse(b: &[u8]) -> Option<TcpInfo> {
        if b.len() < Self::MIN_LEN {
            return None;
        }
        Some(TcpInfo {
            state: b[0],
            retransmits: b[2],
            probes: b[3],
            backoff: b[4],
            unacked: u32_at(b, 24),
            last_data_recv_ms: u32_at(b, 52),
            last_ack_recv_ms: u32_at(b, 56),
        })
    }

    /// Retransmissions or probes are outstanding: the peer does not answer.
    pub fn unanswered(&self) -> bool {
        (self.retransmits > 0 && (self.unacked > 0 || self.state == SYN_SENT)) || self.probes > 0
    }
}

/// One connection of a listener, as seen at one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conn {
    /// The socket's inode: its identity across checks.
    pub inode: u64,
    pub info: TcpInfo,
    /// We set keepalive (and the user timeout) on it: the kernel fails it by itself.
    pub ours: bool,
}

/// A finding about a listener's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finding {
    /// A connection's peer has not answered for this long (retransmissions or probes).
    DeadPath(Duration),
    /// An idle listener has received no data on any connection for this long.
    Silent(Duration),
}

/// The thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `[watchdog] socket_stall`.
    pub socket_stall: Duration,
    /// `[watchdog] silent_after`.
    pub silent_after: Duration,
    /// How long the kernel itself takes to fail a connection with our keepalive whose
    /// probes go unanswered: the user timeout when set, else interval × probes.
    pub probe_giveup: Duration,
    /// How long the kernel itself takes to fail a connection of ours whose sent data goes
    /// unacknowledged: the user timeout (zero when none: retransmissions last ~15 min).
    pub data_giveup: Duration,
}

/// Remembers, per connection, since when its peer has not answered.
#[derive(Debug, Default)]
pub struct Assessor {
    since: HashMap<u64, Instant>,
}

impl Assessor {
    /// Judge one check of a listener's connections; `idle` is false while it runs a job.
    pub fn assess(
        &mut self,
        conns: &[Conn],
        idle: bool,
        now: Instant,
        limits: &Limits,
    ) -> Option<Finding> {
        self.since.retain(|inode, _| {
            conns
                .iter()
                .any(|c| c.inode == *inode && c.info.unanswered())
        });
        let mut dead: Option<Duration> = None;
        for c in conns.iter().filter(|c| c.info.unanswered()) {
            let since = *self.since.entry(c.inode).or_insert(now);
            let grace = match (c.ours, c.info.probes > 0) {
                (false, _) => Duration::ZERO,
                (true, true) => limits.probe_giveup,
                (true, false) => limits.data_giveup,
            };
            let stalled = now - since;
            if stalled >= limits.socket_stall + grace {
                dead = dead.max(Some(stalled));
            }
        }
        if let Some(d) = dead {
            return Some(Finding::DeadPath(d));
        }
        if !idle {
            return None;
        }
        let quiet = conns
            .iter()
            .filter(|c| c.info.state == ESTABLISHED)
            .map(|c| Duration::from_millis(c.info.last_data_recv_ms.into()))
            .min()?;
        (quiet > limits.silent_after).then_some(Finding::Silent(quiet))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            socket_stall: Duration::from_secs(60),
            silent_after: Duration::from_secs(180),
            probe_giveup: Duration::from_secs(60),
            data_giveup: Duration::ZERO,
        }
    }

    fn conn(inode: u64, f: impl FnOnce(&mut TcpInfo)) -> Conn {
        let mut info = TcpInfo {
            state: ESTABLISHED,
            ..Default::default()
        };
        f(&mut info);
        Conn {
            inode,
            info,
            ours: false,
        }
    }

    #[test]
    fn parses_the_kernels_layout() {
        let mut b = vec![0u8; 232];
        b[0] = ESTABLISHED;
        b[2] = 3;
        b[3] = 2;
        b[4] = 1;
        b[24..28].copy_from_slice(&5u32.to_ne_bytes());
        b[52..56].copy_from_slice(&12_345u32.to_ne_bytes());
        b[56..60].copy_from_slice(&678u32.to_ne_bytes());
        let i = TcpInfo::parse(&b).unwrap();
        assert_eq!(
            i,
            TcpInfo {
                state: 1,
                retransmits: 3,
                probes: 2,
                backoff: 1,
                unacked: 5,
                last_data_recv_ms: 12_345,
                last_ack_recv_ms: 678
            }
        );
        assert_eq!(TcpInfo::parse(&b[..91]), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dead_path_must_last_past_the_stall_threshold() {
        let mut a = Assessor::default();
        let stuck = [conn(1, |i| {
            i.retransmits = 1;
            i.unacked = 1
        })];
        let l = limits();
        assert_eq!(a.assess(&stuck, true, Instant::now(), &l), None);
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(a.assess(&stuck, true, Instant::now(), &l), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            a.assess(&stuck, false, Instant::now(), &l),
            Some(Finding::DeadPath(Duration::from_secs(60))),
            "busy or not"
        );
        // An answer resets it.
        let ok = [conn(1, |_| {})];
        assert_eq!(a.assess(&ok, true, Instant::now(), &l), None);
        assert_eq!(a.assess(&stuck, true, Instant::now(), &l), None);
    }

    #[tokio::test(start_paused = true)]
    async fn unanswered_syns_and_probes_count_and_ours_get_their_own_giveup_first() {
        let l = limits();
        let mut a = Assessor::default();
        let syn = [conn(1, |i| {
            i.state = SYN_SENT;
            i.retransmits = 2
        })];
        a.assess(&syn, true, Instant::now(), &l);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(matches!(
            a.assess(&syn, true, Instant::now(), &l),
            Some(Finding::DeadPath(_))
        ));
        // Probes on a connection we gave keepalive: the kernel fails it within
        // probe_giveup; the supervisor waits that long beyond socket_stall.
        let mut a = Assessor::default();
        let mut probing = conn(2, |i| i.probes = 1);
        probing.ours = true;
        a.assess(&[probing], true, Instant::now(), &l);
        tokio::time::advance(Duration::from_secs(119)).await;
        assert_eq!(a.assess(&[probing], true, Instant::now(), &l), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(matches!(
            a.assess(&[probing], true, Instant::now(), &l),
            Some(Finding::DeadPath(_))
        ));
        // Retransmissions without unacknowledged data (a recovered loss) are not a stall.
        let recovered = conn(3, |i| i.retransmits = 1);
        assert!(!recovered.info.unanswered());
    }

    #[test]
    fn a_silent_hang_is_judged_only_for_an_idle_listener_and_by_its_freshest_connection() {
        let l = limits();
        let now = Instant::now();
        let mut a = Assessor::default();
        let quiet = conn(1, |i| i.last_data_recv_ms = 181_000);
        let fresh = conn(2, |i| i.last_data_recv_ms = 40_000);
        assert_eq!(
            a.assess(&[quiet], true, now, &l),
            Some(Finding::Silent(Duration::from_secs(181)))
        );
        assert_eq!(a.assess(&[quiet], false, now, &l), None, "busy: never");
        assert_eq!(a.assess(&[quiet, fresh], true, now, &l), None);
        // A normal long-poll cycle: data every poll period, well below the threshold.
        let polling = conn(3, |i| i.last_data_recv_ms = 50_000);
        assert_eq!(a.assess(&[polling], true, now, &l), None);
        // No established connection (between retries): nothing to judge.
        let closing = conn(4, |i| {
            i.state = 8;
            i.last_data_recv_ms = 999_000
        });
        assert_eq!(a.assess(&[closing], true, now, &l), None);
        assert_eq!(a.assess(&[], true, now, &l), None);
    }
}
