//! Registrations that could not be deleted yet: a queue, persisted in the state directory
//! (`deletions.json`), retried in the background with back-off (honouring `Retry-After`)
//! until GitHub answers 204 or 404, drained within the stop budget when the supervisor
//! stops, and finished by the next start.
//!
//! It must not: give up on a deletion, or retry in a tight loop.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::github::{backoff, GithubClient, GithubError};
use crate::os::layout::write_atomic;
use crate::status::Board;

/// The longest wait between two rounds.
const CAP: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Pending {
    id: u64,
    name: String,
}

/// The queue.
pub struct Deletions {
    path: PathBuf,
    pending: Mutex<BTreeMap<u64, String>>,
    added: Notify,
}

impl Deletions {
    /// The queue at `path`, with what an earlier run left in it.
    pub fn load(path: PathBuf) -> Deletions {
        let list: Vec<Pending> = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        if !list.is_empty() {
            tracing::info!(event = "deletions_inherited", count = list.len(), path = %path.display(), "registrations left to delete by an earlier run");
        }
        Deletions {
            path,
            pending: Mutex::new(list.into_iter().map(|p| (p.id, p.name)).collect()),
            added: Notify::new(),
        }
    }

    /// Queue a registration GitHub did not let us delete now.
    pub fn add(&self, id: u64, name: &str) {
        self.lock().insert(id, name.to_string());
        self.save();
        self.added.notify_one();
    }

    /// How many are waiting.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, String>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn save(&self) {
        let list: Vec<Pending> = self
            .lock()
            .iter()
            .map(|(id, name)| Pending {
                id: *id,
                name: name.clone(),
            })
            .collect();
        let bytes = serde_json::to_vec_pretty(&list).unwrap_or_default();
        if let Err(e) = write_atomic(&self.path, &bytes) {
            tracing::warn!(event = "deletions_persist_failed", path = %self.path.display(), error = %e, "cannot persist the deletion queue");
        }
    }

    /// One attempt at each pending deletion. Returns the wait GitHub asked for, if it
    /// rate-limited us (the round stops there).
    async fn attempt_all(&self, gh: &GithubClient, board: &Board) -> Option<Duration> {
        let all: Vec<(u64, String)> = self.lock().iter().map(|(k, v)| (*k, v.clone())).collect();
        for (id, name) in all {
            match gh.delete_runner(id).await {
                Ok(()) => {
                    self.lock().remove(&id);
                    self.save();
                    board.stats.deregistrations.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(event = "registration_deleted", runner = %name, id, from = "queue", "registration deleted (from the deletion queue)");
                }
                Err(GithubError::RateLimited { retry_after, .. }) => return Some(retry_after),
                Err(e) => {
                    tracing::debug!(runner = %name, id, error = %e, "deletion still refused; retrying later")
                }
            }
        }
        None
    }

    /// Retry until cancelled: at once when something is queued, then with back-off.
    pub async fn run(&self, gh: GithubClient, board: &Board, cancel: CancellationToken) {
        let mut round = 0u32;
        loop {
            if self.is_empty() {
                round = 0;
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = self.added.notified() => {}
                }
                continue;
            }
            let asked = tokio::select! {
                _ = cancel.cancelled() => return,
                a = self.attempt_all(&gh, board) => a,
            };
            if self.is_empty() {
                continue;
            }
            let wait = asked
                .unwrap_or_default()
                .max(backoff(Duration::from_secs(1), CAP, round));
            round = round.saturating_add(1);
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Try to empty the queue before `deadline` (the stop budget). What is left stays in
    /// the file for the next start.
    pub async fn drain(&self, gh: &GithubClient, board: &Board, deadline: Instant) {
        let mut round = 0u32;
        while !self.is_empty() && Instant::now() < deadline {
            let asked = match tokio::time::timeout_at(deadline, self.attempt_all(gh, board)).await {
                Ok(a) => a,
                Err(_) => break,
            };
            if self.is_empty() {
                break;
            }
            let wait = asked.unwrap_or_default().max(backoff(
                Duration::from_millis(200),
                Duration::from_secs(2),
                round,
            ));
            round += 1;
            tokio::time::sleep_until(deadline.min(Instant::now() + wait)).await;
        }
        if !self.is_empty() {
            tracing::warn!(event = "deletions_left", count = self.len(), path = %self.path.display(), "registrations not deleted within the stop budget stay queued; the next start deletes them");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_survives_a_restart() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("deletions.json");
        let q = Deletions::load(p.clone());
        assert!(q.is_empty());
        q.add(7, "ci-host-0-abcdef");
        q.add(9, "ci-host-1-ghijkl");
        let again = Deletions::load(p.clone());
        assert_eq!(again.len(), 2);
        again.lock().remove(&7);
        again.save();
        assert_eq!(Deletions::load(p).len(), 1);
    }
}
