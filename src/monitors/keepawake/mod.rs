//! Keep the machine awake while busy (issue 18 §4), a monitor like the others: from the
//! first slot running a job to the last one going idle it holds systemd-logind inhibitor
//! locks on sleep and on shutdown, one lock each (`[host] inhibit`, [`logind`]: a
//! combined lock is checked by logind against the wrong polkit action), and on WSL2 with
//! Windows interop a `powershell.exe` helper that keeps Windows itself awake
//! (`[host] windows_keep_awake`, [`windows`]). Both are released the moment no slot is
//! busy.
//!
//! Two loops, one per lock, each woken by every board change, so that a slow
//! PowerShell start never delays logind's release. A lock that cannot be had is said
//! once (`inhibit_unavailable`, `windows_keep_awake_unavailable`, with the fix), shown in
//! status, and tried again quietly at the next busy period; it never affects the runners.
//!
//! It must not: touch a slot, or hold a lock while no slot is busy.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{HostConfig, Inhibit, WindowsKeepAwake};
use crate::status::{Board, SlotState, SlotStatus};

pub mod logind;
pub mod windows;

/// What the locks are taken on, together, as events name it (one lock each:
/// [`logind::WHATS`]).
pub const WHAT: &str = "sleep:shutdown";
/// Who takes it, as `systemd-inhibit --list` shows it.
pub const WHO: &str = "runner-supervisor";

/// Debug builds only: `1` makes WSL2's interop count as present, anything else as
/// absent (tests put a fake `powershell.exe` on PATH).
pub const WSL_INTEROP_ENV: &str = "SUPERVISOR_TEST_WSL_INTEROP";

/// The slots running a job.
pub fn busy_slots(slots: &[SlotStatus]) -> Vec<usize> {
    slots
        .iter()
        .enumerate()
        .filter(|(_, s)| s.state == SlotState::Busy)
        .map(|(i, _)| i)
        .collect()
}

/// Why the lock is held, as logind shows it: `a GitHub Actions job is running (slot 0)`.
pub fn why(busy: &[usize]) -> String {
    let list = busy
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let word = if busy.len() == 1 { "slot" } else { "slots" };
    format!("a GitHub Actions job is running ({word} {list})")
}

/// A lock that could not be had: why, and what would fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable {
    pub reason: String,
    pub fix: String,
}

impl Unavailable {
    /// The status word: `unavailable (reason)`.
    pub fn word(&self) -> String {
        format!("unavailable ({})", self.reason)
    }
}

/// Hold the locks while any slot is busy, until cancelled.
pub async fn run(cfg: HostConfig, board: Arc<Board>, stop: CancellationToken) {
    tokio::join!(
        hold_inhibitor(cfg.inhibit, &board, &stop),
        keep_windows_awake(cfg.windows_keep_awake, &board, &stop),
    );
}

/// Wait for the next board change; false once stopped.
async fn next_change(
    changes: &mut tokio::sync::watch::Receiver<u64>,
    stop: &CancellationToken,
) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        r = changes.changed() => r.is_ok(),
    }
}

/// logind's locks, held from the first busy slot to the last idle one.
async fn hold_inhibitor(mode: Inhibit, board: &Board, stop: &CancellationToken) {
    let word = |w: String| board.system(|s| s.inhibitor = Some(w));
    if mode == Inhibit::Off {
        word("off".into());
        return;
    }
    word("released".into());
    let mode = mode.as_str();
    let mut changes = board.subscribe();
    let mut held: Option<Held> = None;
    // Tried in this busy period (a failure waits for the next one); said since the last
    // success (a failure is said once).
    let (mut tried, mut said) = (false, false);
    loop {
        let busy = busy_slots(&board.slots());
        if busy.is_empty() {
            tried = false;
            if let Some(lock) = held.take() {
                release(lock, mode, board);
            }
        } else if held.is_none() && !tried {
            tried = true;
            let why = why(&busy);
            let taken = tokio::select! {
                _ = stop.cancelled() => break,
                r = logind::inhibit(mode, &why) => r,
            };
            let (locks, refusal) = match taken {
                Ok(locks) => {
                    let refusal = locks.refusal();
                    (locks, refusal)
                }
                Err(u) => (logind::Locks::default(), Some(u)),
            };
            let refused: Vec<&str> = locks.refused.iter().map(|(w, _)| *w).collect();
            let refused = if refused.is_empty() {
                WHAT.to_string()
            } else {
                refused.join(":")
            };
            if !locks.held.is_empty() {
                let what = locks.held_what();
                word(match &refusal {
                    None => "held".into(),
                    Some(u) => format!("held on {what} only; {}", u.word()),
                });
                tracing::info!(event = "inhibitor_taken", what = %what, mode, locks = locks.held.len(), slots_busy = busy.len(), "holding logind inhibitor locks on {what} ({mode}) while {} slot(s) run a job", busy.len());
                held = Some(Held {
                    fds: locks.held.into_iter().map(|(_, fd)| fd).collect(),
                    what,
                    since: tokio::time::Instant::now(),
                });
            } else if let Some(u) = &refusal {
                word(u.word());
            }
            match refusal {
                None => said = false,
                Some(u) if !said => {
                    said = true;
                    tracing::warn!(event = "inhibit_unavailable", what = %refused, mode, reason = %u.reason, fix = %u.fix, "cannot keep the machine awake while jobs run: {}; fix: {} (tried again quietly at the next busy period)", u.reason, u.fix);
                }
                Some(u) => {
                    tracing::debug!(event = "inhibit_unavailable", what = %refused, mode, reason = %u.reason, "still no inhibitor lock on {refused}: {}", u.reason);
                }
            }
            // Slots may have gone idle meanwhile: look again at once.
            continue;
        }
        if !next_change(&mut changes, stop).await {
            break;
        }
    }
    if let Some(lock) = held.take() {
        release(lock, mode, board);
    }
}

/// The locks held in a busy period: their descriptors, what they are on, since when.
struct Held {
    fds: Vec<OwnedFd>,
    what: String,
    since: tokio::time::Instant,
}

/// Close the locks' descriptors: logind sees them closed and lets sleep and shutdown go.
fn release(held: Held, mode: &str, board: &Board) {
    let Held { fds, what, since } = held;
    let locks = fds.len();
    drop(fds);
    board.system(|s| s.inhibitor = Some("released".into()));
    let held_s = since.elapsed().as_secs();
    tracing::info!(
        event = "inhibitor_released",
        what = %what,
        mode,
        locks,
        slots_busy = 0,
        held_s,
        "released the logind inhibitor locks: no slot runs a job"
    );
}

/// How long the Windows helper may take to say it holds the state, and to end.
const HELPER_START: Duration = Duration::from_secs(30);
const HELPER_END: Duration = Duration::from_secs(5);

/// Windows itself kept awake (WSL2), from the first busy slot to the last idle one.
async fn keep_windows_awake(setting: WindowsKeepAwake, board: &Board, stop: &CancellationToken) {
    let word = |w: Option<String>| board.system(|s| s.windows_keep_awake = w);
    if setting == WindowsKeepAwake::Off {
        word(Some("off".into()));
        return;
    }
    let powershell = match windows::detect() {
        windows::Interop::NotWsl => return,
        windows::Interop::Unavailable(u) => {
            word(Some(u.word()));
            tracing::info!(event = "windows_keep_awake_unavailable", reason = %u.reason, fix = %u.fix, "cannot keep Windows awake while jobs run: {}; fix: {}", u.reason, u.fix);
            return;
        }
        windows::Interop::Ready(p) => p,
    };
    word(Some("released".into()));
    let mut changes = board.subscribe();
    let mut helper: Option<windows::Helper> = None;
    let (mut tried, mut said) = (false, false);
    loop {
        let busy = busy_slots(&board.slots());
        if busy.is_empty() {
            tried = false;
            if let Some(h) = helper.take() {
                end_helper(h, board).await;
            }
        } else if helper.is_none() && !tried {
            tried = true;
            let started = tokio::select! {
                _ = stop.cancelled() => break,
                r = windows::Helper::start(&powershell, HELPER_START) => r,
            };
            match started {
                Ok(h) => {
                    said = false;
                    word(Some("held".into()));
                    tracing::info!(event = "windows_keep_awake_held", pid = h.pid(), slots_busy = busy.len(), "keeping Windows awake while {} slot(s) run a job (SetThreadExecutionState in powershell.exe, pid {})", busy.len(), h.pid());
                    helper = Some(h);
                }
                Err(u) => {
                    word(Some(u.word()));
                    if !said {
                        said = true;
                        tracing::warn!(event = "windows_keep_awake_unavailable", reason = %u.reason, fix = %u.fix, "cannot keep Windows awake while jobs run: {}; fix: {} (tried again at the next busy period)", u.reason, u.fix);
                    }
                }
            }
            continue;
        }
        if !next_change(&mut changes, stop).await {
            break;
        }
    }
    if let Some(h) = helper.take() {
        end_helper(h, board).await;
    }
}

/// End the helper: its standard input closed, killed if it lingers.
async fn end_helper(h: windows::Helper, board: &Board) {
    board.system(|s| s.windows_keep_awake = Some("released".into()));
    let pid = h.pid();
    let how = h.end(HELPER_END).await;
    tracing::info!(
        event = "windows_keep_awake_released",
        pid,
        ended = how,
        "Windows may sleep again: no slot runs a job"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_busy_slots_hold_the_lock_and_logind_is_told_which() {
        let mut slots = vec![SlotStatus::default(); 3];
        assert!(busy_slots(&slots).is_empty());
        slots[1].state = SlotState::Busy;
        slots[2].state = SlotState::Finishing;
        assert_eq!(busy_slots(&slots), vec![1]);
        assert_eq!(why(&[1]), "a GitHub Actions job is running (slot 1)");
        assert_eq!(why(&[0, 2]), "a GitHub Actions job is running (slots 0, 2)");
    }
}
