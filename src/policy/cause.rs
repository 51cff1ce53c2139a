//! What a watchdog fire is attributed to, and the commands monitors send to slots: the
//! types slots, monitors and the pure slot machine share.
//!
//! It must not: do IO, or import anything but pure modules.

use serde::{Deserialize, Serialize};

/// Why a watchdog fired: the root cause, not just a count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Cause {
    Clock,
    Token,
    Network,
    Unknown,
}

impl Cause {
    /// A word for logs and health.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Clock => "clock",
            Cause::Token => "token",
            Cause::Network => "network",
            Cause::Unknown => "unknown",
        }
    }
}

/// What the host knows when a fire is attributed (the most specific wins).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Context {
    /// A clock fault is active, or the listener printed the clock-skew line.
    pub clock_fault: bool,
    /// The token was refused (401).
    pub token_invalid: bool,
    /// The evidence points at the network (timeouts, refused connections, a stalled socket).
    pub network_evidence: bool,
}

/// The root cause of a fire: clock before token before network.
pub fn attribute(ctx: Context) -> Cause {
    if ctx.clock_fault {
        Cause::Clock
    } else if ctx.token_invalid {
        Cause::Token
    } else if ctx.network_evidence {
        Cause::Network
    } else {
        Cause::Unknown
    }
}

/// Whether a connect-error message points at the network.
pub fn looks_like_network(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "timed out",
        "temporarily unavailable",
        "connection refused",
        "connection reset",
        "no such host",
        "name or service not known",
        "network is unreachable",
        "resource temporarily",
        "ssl",
        "tls",
    ]
    .iter()
    .any(|k| m.contains(k))
}

/// Commands a slot takes while its listener runs (monitors send them; slots obey).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotCmd {
    /// The host resumed: an idle listener's long-poll is dead; replace it. A busy one stays.
    Recycle,
    /// The host resumed after a suspend longer than the job lease (`[jobs] lease`): a
    /// busy listener's job is gone at GitHub; replace it too (its job is lost, cause
    /// `suspend`).
    LeaseLost,
    /// Intake closed (`[intake]`): stop an idle listener (its registration is deleted);
    /// a busy one finishes its job.
    CloseIntake,
    /// Scale-set mode: no assigned job needs this idle runner any more (its assignment
    /// lapsed, or warm runners are over `min_runners`): stop it; a busy one goes on.
    Surplus,
    /// GitHub shows the listening runner offline: replace it (a watchdog fire).
    Replace(Cause),
    /// The connections of listener `pid` show a dead path or a silent hang (a watchdog
    /// fire; ignored when that listener is gone).
    Connection {
        pid: i32,
        finding: crate::policy::tcpinfo::Finding,
    },
}
