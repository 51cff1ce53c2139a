//! The status writer: `status.json` (and the fleet file) rewritten on every change,
//! coalesced, and on every heartbeat; the final status once the slots have stopped.
//!
//! Invariant: the writer task is the only one that touches `status.json`, and it writes
//! atomically (temp file + rename).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A status to write: where, the fleet copy, the bytes.
type Written = (PathBuf, Option<PathBuf>, Vec<u8>);

use tokio_util::sync::CancellationToken;

use super::{Board, StatusFile};
use crate::os::layout::write_atomic;

/// How often the status file is rewritten even when nothing changes.
pub const HEARTBEAT: Duration = Duration::from_secs(20);

impl Board {
    /// Also publish every status write at `path` (the fleet directory), as `hostname`.
    pub fn publish_to(&self, hostname: &str, path: PathBuf) {
        if let Some(dir) = path.parent() {
            if let Err(e) = std::fs::create_dir_all(dir) {
                tracing::warn!(event = "fleet_failed", dir = %dir.display(), error = %e, "cannot create the fleet directory; host-wide pruning will not see this supervisor's jobs");
            }
        }
        let _ = self.fleet.set((hostname.to_string(), path));
    }

    /// Write `status.json` on every change (at most every 100 ms) and every heartbeat.
    pub async fn run_writer(&self, path: PathBuf, cancel: CancellationToken) {
        let mut mode = self.mode.get().cloned();
        // The newest status not yet written. The file system may be slow (a laptop's disk,
        // an overlay): the files thread writes it, never the runtime's thread, which reads
        // the listeners' lines; nobody waits for it, and while a slow write is under way a
        // burst of changes leaves one more write, of the newest.
        let pending: Arc<Mutex<Option<Written>>> = Arc::default();
        // Before the final status: every write handed over is done.
        let done = || crate::os::files::run(|| ());
        loop {
            let snap = self.snapshot();
            let (bytes, fleet) = self.encode(&snap);
            let was_empty = pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .replace((path.clone(), fleet, bytes))
                .is_none();
            if was_empty {
                let p = pending.clone();
                crate::os::files::submit(move || {
                    let next = p.lock().unwrap_or_else(|p| p.into_inner()).take();
                    if let Some((path, fleet, bytes)) = next {
                        write_files(&path, fleet.as_deref(), &bytes);
                    }
                });
            }
            tokio::select! {
                _ = cancel.cancelled() => {
                    done().await;
                    return;
                }
                _ = self.changed.notified() => {
                    // Coalesce a burst: changes during this pause leave a permit, and the
                    // write after it carries them all.
                    tokio::select! {
                        _ = cancel.cancelled() => {
                            done().await;
                            return;
                        }
                        _ = crate::os::clocks::sleep_exact(Duration::from_millis(100)) => {}
                    }
                }
                // The mode changed (drain, force, kill): shown at once.
                r = async {
                    match mode.as_mut() {
                        Some(m) => m.changed().await,
                        None => std::future::pending().await,
                    }
                } => if r.is_err() { mode = None },
                // Idle: one wake-up per heartbeat, nothing else.
                _ = crate::os::clocks::tick(HEARTBEAT) => {}
            }
        }
    }

    /// Write the final status (called once the slots have stopped).
    pub fn write_final(&self, path: &Path) {
        let mut snap = self.snapshot();
        snap.mode = "stopped".into();
        self.write(path, &snap);
    }

    /// Write `snap` to `path` and to the fleet directory, if published there.
    fn write(&self, path: &Path, snap: &StatusFile) {
        let (bytes, fleet) = self.encode(snap);
        write_files(path, fleet.as_deref(), &bytes);
    }

    /// The bytes of `snap`, and the fleet file it also goes to.
    fn encode(&self, snap: &StatusFile) -> (Vec<u8>, Option<PathBuf>) {
        (
            serde_json::to_vec_pretty(snap).unwrap_or_default(),
            self.fleet.get().map(|(_, p)| p.clone()),
        )
    }
}

/// Write the status to `path` and, if given, to the fleet file.
fn write_files(path: &Path, fleet: Option<&Path>, bytes: &[u8]) {
    if let Err(e) = write_atomic(path, bytes) {
        tracing::warn!(event = "status_write_failed", path = %path.display(), error = %e, "cannot write the status file");
    }
    if let Some(fleet) = fleet {
        if let Err(e) = write_atomic(fleet, bytes) {
            tracing::debug!(path = %fleet.display(), error = %e, "cannot publish the status to the fleet");
        }
    }
}
