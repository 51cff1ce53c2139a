//! systemd's notify protocol (`Type=notify`), through the `sd-notify` crate:
//! `READY=1` once the slots are started, `STATUS=` with a one-line summary on every
//! change, `WATCHDOG=1` at half of `WATCHDOG_USEC` from the runtime's own loop (a hung
//! supervisor stops pinging and systemd restarts it), `STOPPING=1` when the supervisor
//! starts to stop, and `EXTEND_TIMEOUT_USEC` while a job drains.
//!
//! Without `NOTIFY_SOCKET` every call is a no-op. The runner never sees the variable (its
//! environment is an allow-list).
//!
//! It must not: block the runtime (a datagram send to a local socket does not).

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::os::shutdown::Mode;
use crate::status::{Board, SlotState, StatusFile};

/// Debug builds only: `SUPERVISOR_TEST_STALL_AFTER=<ms>` blocks the runtime's thread for
/// good that long after start, as a hung supervisor would (the watchdog test).
pub const TEST_STALL_ENV: &str = "SUPERVISOR_TEST_STALL_AFTER";

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// Whether systemd (or a test) listens.
pub fn enabled() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// The one-line summary systemd shows in `systemctl status`.
pub fn summary(s: &StatusFile) -> String {
    let count = |st: SlotState| s.slots.iter().filter(|x| x.state == st).count();
    let mut line = format!(
        "{}: {} busy, {} idle",
        s.mode,
        count(SlotState::Busy),
        count(SlotState::Listening)
    );
    let other = s.slots.len() - count(SlotState::Busy) - count(SlotState::Listening);
    if other > 0 {
        line.push_str(&format!(", {other} other"));
    }
    line.push_str(&format!(
        "; {} jobs done; health {:?}",
        s.counts.jobs_completed, s.health
    ));
    if s.counts.jobs_lost > 0 {
        line.push_str(&format!("; {} jobs lost", s.counts.jobs_lost));
    }
    if let Some(r) = s.reasons.first() {
        line.push_str(&format!(" ({r})"));
    }
    line
}

/// Tell systemd READY with the first status line; the watchdog interval, if systemd set
/// one.
fn ready(board: &Board) -> (String, Option<Duration>) {
    let last = summary(&board.snapshot());
    send(&[NotifyState::Ready, NotifyState::Status(&last)]);
    tracing::info!(event = "systemd_ready", "told systemd: READY=1");
    let watchdog = sd_notify::watchdog_enabled();
    if let Some(w) = watchdog {
        tracing::info!(
            event = "systemd_watchdog",
            watchdog_ms = w.as_millis() as u64,
            "systemd watchdog on: pinging at half the interval"
        );
    }
    (last, watchdog)
}

/// Debug builds: block the runtime's thread for good once `stall_at` has passed, as a
/// hung supervisor would ([`TEST_STALL_ENV`]).
#[cfg(debug_assertions)]
fn stall_if_due(stall_at: Option<tokio::time::Instant>) {
    if stall_at.is_some_and(|t| tokio::time::Instant::now() >= t) {
        tracing::warn!(
            event = "test_stall",
            "{TEST_STALL_ENV}: blocking the runtime's thread (test build)"
        );
        #[allow(clippy::disallowed_methods)]
        std::thread::sleep(Duration::from_secs(24 * 3600));
    }
}

/// Tell systemd the slots are started, then keep it informed until cancelled.
pub async fn run(
    board: Arc<Board>,
    mut mode: watch::Receiver<Mode>,
    drain_budget: Duration,
    cancel: CancellationToken,
) {
    if !enabled() {
        return;
    }
    let mut changes = board.subscribe();
    let (mut last, watchdog) = ready(&board);
    let mut stopping_sent = false;
    let mut drain_ends: Option<tokio::time::Instant> = None;
    let mut next_extend: Option<tokio::time::Instant> = None;
    let ping = watchdog.map(|w| (w / 2).max(Duration::from_millis(10)));
    let mut next_ping = tokio::time::Instant::now();
    #[cfg(debug_assertions)]
    let stall_at = std::env::var(TEST_STALL_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(|ms| tokio::time::Instant::now() + Duration::from_millis(ms));
    loop {
        #[cfg(debug_assertions)]
        stall_if_due(stall_at);
        if let Some(p) = ping {
            if tokio::time::Instant::now() >= next_ping {
                send(&[NotifyState::Watchdog]);
                next_ping = tokio::time::Instant::now() + p;
            }
        }
        let m = *mode.borrow();
        // The mode as it is now (the board learns it a moment later).
        let snapshot = || {
            let mut s = board.snapshot();
            s.mode = m.as_str().to_string();
            s
        };
        if m != Mode::Run && !stopping_sent {
            stopping_sent = true;
            last = summary(&snapshot());
            send(&[NotifyState::Stopping, NotifyState::Status(&last)]);
            tracing::info!(event = "systemd_stopping", "told systemd: STOPPING=1");
            drain_ends = Some(tokio::time::Instant::now() + drain_budget);
        }
        // While a job drains, the stop may take the whole drain budget: say so, at the
        // start and every 15 s.
        if let Some(end) = drain_ends {
            let now = tokio::time::Instant::now();
            if board.earliest_job().is_some()
                && m == Mode::Drain
                && next_extend.is_none_or(|t| now >= t)
            {
                let left = end.saturating_duration_since(now) + Duration::from_secs(30);
                send(&[NotifyState::ExtendTimeoutUsec(
                    left.as_micros().min(u32::MAX as u128) as u32,
                )]);
                next_extend = Some(now + Duration::from_secs(15));
            }
        }
        let now = summary(&snapshot());
        if now != last {
            send(&[NotifyState::Status(&now)]);
            last = now;
        }
        let wake = match ping {
            Some(_) => next_ping,
            None => tokio::time::Instant::now() + Duration::from_secs(3600),
        };
        #[cfg(debug_assertions)]
        let wake = stall_at.map_or(wake, |t| wake.min(t));
        let wake = if drain_ends.is_some() {
            wake.min(tokio::time::Instant::now() + Duration::from_secs(20))
        } else {
            wake
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep_until(wake) => {}
            r = changes.changed() => if r.is_err() { return },
            r = mode.changed() => if r.is_err() { return },
        }
    }
}
