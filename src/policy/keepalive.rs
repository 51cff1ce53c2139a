//! What keepalive a connection gets: the listeners' connections get `[network]
//! keepalive_*` and `user_timeout` (`config::NetworkConfig::keepalive_for_listeners`); the
//! supervisor's own (the GitHub client's) the same keepalive, with a user timeout as long
//! as the probes take to fail a dead path ([`Keepalive::for_own`]).

use std::time::Duration;

/// The keepalive to set on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    pub idle: Duration,
    pub interval: Duration,
    pub probes: u32,
    /// `TCP_USER_TIMEOUT`; zero for none.
    pub user_timeout: Duration,
}

impl Keepalive {
    /// What the supervisor's own connections get, from what the listeners' get: the same
    /// keepalive, and a user timeout as long as the probes take to fail a dead path.
    pub fn for_own(listeners: Keepalive) -> Keepalive {
        Keepalive {
            user_timeout: listeners.idle + listeners.interval * listeners.probes,
            ..listeners
        }
    }
}
