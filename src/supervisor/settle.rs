//! Once the host is quiet (every slot listening or waiting, none registering, starting,
//! running a job or stopping) for [`QUIET`], after start-up and after every busy period,
//! give back what only that work needed (`os::memory::settle`: the heap trimmed, the
//! binary's own pages paged out), so that an idle supervisor's resident memory is its
//! idle working set. Once per quiet period; nothing while busy.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::status::Board;

/// How long the host must stay quiet first: start-up's last checks and a job's last
/// records are done by then.
pub const QUIET: Duration = Duration::from_secs(15);

/// Debug builds only: the quiet period in milliseconds (tests).
#[cfg_attr(not(debug_assertions), allow(dead_code))]
pub const QUIET_ENV: &str = "SUPERVISOR_TEST_SETTLE_AFTER_MS";

fn quiet_for() -> Duration {
    #[cfg(debug_assertions)]
    if let Some(ms) = std::env::var(QUIET_ENV).ok().and_then(|v| v.parse().ok()) {
        return Duration::from_millis(ms);
    }
    QUIET
}

fn quiet(board: &Board) -> bool {
    let slots = board.slots();
    !slots.is_empty() && slots.iter().all(|s| s.state.is_quiet())
}

/// Settle after each quiet period begins, until stopped.
pub async fn run(board: Arc<Board>, stop: CancellationToken) {
    let after = quiet_for();
    let mut changes = board.subscribe();
    // Settled since the host was last busy.
    let mut settled = false;
    loop {
        if !quiet(&board) {
            settled = false;
        } else if !settled {
            let deadline = tokio::time::Instant::now() + after;
            // Still quiet at the deadline, whatever else changed meanwhile.
            let still = loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep_until(deadline) => break quiet(&board),
                    r = changes.changed() => {
                        if r.is_err() { return; }
                        if !quiet(&board) { break false; }
                    }
                }
            };
            if still {
                settled = true;
                if let Some(s) = crate::os::files::run(crate::os::memory::settle).await {
                    tracing::debug!(
                        event = "memory_settled",
                        rss_before_kb = s.rss_before_kb,
                        rss_after_kb = s.rss_after_kb,
                        paged_out = s.paged_out,
                        refused = s.refused,
                        "the host is quiet: heap trimmed and start-up pages given back ({} kB -> {} kB resident)",
                        s.rss_before_kb,
                        s.rss_after_kb
                    );
                }
            }
            continue;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            r = changes.changed() => if r.is_err() { return },
        }
    }
}
