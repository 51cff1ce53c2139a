//! Finding a listener's stalled TCP connections from outside the process.
//!
//! The runner's HTTP client does not enable TCP keepalive, so a blackholed long-poll can
//! hang for minutes. We list the listener's socket inodes (`/proc/<pid>/fd`), find them in
//! `/proc/<pid>/net/tcp` and `tcp6`, and call a connection stalled when it has unsent or
//! unacknowledged data with retransmissions outstanding for longer than a threshold.
//! Read-only; it must not touch the sockets.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;

/// TCP state SYN_SENT.
const SYN_SENT: u8 = 2;

/// One TCP socket of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sock {
    pub inode: u64,
    /// Bytes in the send queue (unacknowledged).
    pub tx_queue: u64,
    /// Unrecovered retransmission timeouts.
    pub retransmits: u64,
    /// TCP state (1 = established).
    pub state: u8,
}

/// Parse `/proc/net/tcp`-format text, keeping rows whose inode is in `inodes`.
pub fn parse_tcp_table(text: &str, inodes: &HashSet<u64>) -> Vec<Sock> {
    let mut out = vec![];
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 {
            continue;
        }
        let Ok(inode) = f[9].parse::<u64>() else {
            continue;
        };
        if !inodes.contains(&inode) {
            continue;
        }
        let tx_queue = f[4]
            .split(':')
            .next()
            .and_then(|h| u64::from_str_radix(h, 16).ok())
            .unwrap_or(0);
        let retransmits = u64::from_str_radix(f[6], 16).unwrap_or(0);
        let state = u8::from_str_radix(f[3], 16).unwrap_or(0);
        out.push(Sock {
            inode,
            tx_queue,
            retransmits,
            state,
        });
    }
    out
}

/// The TCP sockets of process `pid`.
pub fn sockets(pid: i32) -> Vec<Sock> {
    let mut inodes = HashSet::new();
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in dir.flatten() {
            if let Ok(t) = std::fs::read_link(e.path()) {
                if let Some(n) = t
                    .to_str()
                    .and_then(|s| s.strip_prefix("socket:["))
                    .and_then(|s| s.strip_suffix(']'))
                {
                    if let Ok(n) = n.parse() {
                        inodes.insert(n);
                    }
                }
            }
        }
    }
    let mut out = vec![];
    for table in ["tcp", "tcp6"] {
        if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) {
            out.extend(parse_tcp_table(&text, &inodes));
        }
    }
    out
}

/// Remembers since when each socket has been retransmitting.
#[derive(Debug, Default)]
pub struct StallTracker {
    since: HashMap<u64, Instant>,
}

impl StallTracker {
    /// Update with a fresh view; returns the longest stall if it reached `threshold`.
    pub fn update(
        &mut self,
        socks: &[Sock],
        now: Instant,
        threshold: Duration,
    ) -> Option<Duration> {
        // Unacknowledged data being retransmitted, or a SYN that goes unanswered.
        let stalled: HashSet<u64> = socks
            .iter()
            .filter(|s| s.retransmits > 0 && (s.tx_queue > 0 || s.state == SYN_SENT))
            .map(|s| s.inode)
            .collect();
        self.since.retain(|inode, _| stalled.contains(inode));
        for inode in stalled {
            self.since.entry(inode).or_insert(now);
        }
        self.since
            .values()
            .map(|t| now - *t)
            .max()
            .filter(|d| *d >= threshold)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0000000000000000 100 0 0 10 0
   1: 0100007F:A1B2 0100007F:1F90 01 000000C8:00000000 01:00000123 00000003     0        0 222 2 0000000000000000 20 4 30 10 -1
   2: 0100007F:A1B3 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 333 1 0000000000000000 20 4 30 10 -1
";

    #[test]
    fn parses_the_rows_of_our_inodes() {
        let inodes: HashSet<u64> = [222, 333].into();
        let s = parse_tcp_table(TABLE, &inodes);
        assert_eq!(
            s,
            vec![
                Sock {
                    inode: 222,
                    tx_queue: 200,
                    retransmits: 3,
                    state: 1
                },
                Sock {
                    inode: 333,
                    tx_queue: 0,
                    retransmits: 0,
                    state: 1
                }
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stall_must_last_past_the_threshold() {
        let mut t = StallTracker::default();
        let stuck = [Sock {
            inode: 1,
            tx_queue: 10,
            retransmits: 1,
            state: 1,
        }];
        let th = Duration::from_secs(60);
        assert_eq!(t.update(&stuck, Instant::now(), th), None);
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(t.update(&stuck, Instant::now(), th), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(t.update(&stuck, Instant::now(), th), Some(th));
        // Recovery resets it.
        let ok = [Sock {
            inode: 1,
            tx_queue: 0,
            retransmits: 0,
            state: 1,
        }];
        assert_eq!(t.update(&ok, Instant::now(), th), None);
        assert_eq!(t.update(&stuck, Instant::now(), th), None);
    }
}
