//! Test support, one concern per file: the sandbox (a runner install, a state directory
//! and the typed status the supervisor writes there), the daemon (the real binary, its
//! typed log events), the CLI runner, the fakes (GitHub, jobs, chronyd, libfaketime), a
//! private D-Bus with a fake logind, the network helpers, Docker and root filesystems.
//! Tests wait on explicit signals, never on sleeps.

#![allow(dead_code)]

pub mod cli;
pub mod daemon;
pub mod dbus;
pub mod dockerd;
pub mod events;
pub mod fakes;
pub mod net;
pub mod rootfs;
pub mod sandbox;

use std::time::Duration;

pub use cli::*;
pub use daemon::*;
pub use fakes::*;
pub use net::*;
pub use sandbox::*;

/// Wait until `cond` holds, checking every 50 ms, for at most `timeout`.
/// For conditions with no event to wait on (a file another process rewrites).
pub async fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
