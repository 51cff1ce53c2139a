//! Disk pressure, host-wide: when free space on Docker's file system falls below the
//! threshold, prune the engine (stopped containers, unused networks, dangling images,
//! build cache; then, only if still short, unused images not in `keep_images`), and report
//! "critical" while still below half.
//!
//! One pruner per engine: the holder of `<shared_dir>/pruner.lock` prunes, any other
//! stands by. It prunes only when no runner of the fleet (`fleet`) runs a job; below the
//! critical level it prunes anyway, but only what is older than the earliest running job,
//! and never tagged images.
//! Invariants: never prunes volumes or touches a runner's `_work`; never removes what a
//! running job created; the policy ([`plan`], [`spec`]) is pure.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::config::{DiskConfig, Toggle};
use crate::docker::{self, Engine, PruneSpec, Pruned};
use crate::os::layout::LockError;
use crate::status::{Board, Condition, Health};

/// Free bytes on the file system holding `path`.
pub fn free_bytes(path: &Path) -> Option<u64> {
    let s = nix::sys::statvfs::statvfs(path).ok()?;
    Some(s.blocks_available() as u64 * s.fragment_size() as u64)
}

/// What the pruner does this round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Enough free space.
    Nothing,
    /// Below the threshold but jobs run: wait until none does.
    Defer { busy: Vec<String> },
    /// Prune. With `protect_since` (critical while jobs run), only what is older than that,
    /// and no tagged images.
    Prune {
        protect_since: Option<DateTime<Utc>>,
    },
}

/// The decision, from free space and the fleet's running jobs (who, earliest start).
pub fn plan(free: u64, threshold: u64, busy: Option<(Vec<String>, DateTime<Utc>)>) -> Plan {
    if free >= threshold {
        return Plan::Nothing;
    }
    match busy {
        None => Plan::Prune {
            protect_since: None,
        },
        Some((_, since)) if free < threshold / 2 => Plan::Prune {
            protect_since: Some(since),
        },
        Some((busy, _)) => Plan::Defer { busy },
    }
}

/// The prune for a `Prune` plan at `now`: at least `until` old, and older than the
/// protected jobs (rounded up, so a thing of the job's first second is kept).
pub fn spec(
    protect_since: Option<DateTime<Utc>>,
    until: Duration,
    keep: &[String],
    deep: bool,
    now: DateTime<Utc>,
) -> PruneSpec {
    let mut min_age = until;
    if let Some(since) = protect_since {
        let age = (now - since).to_std().unwrap_or_default();
        min_age = min_age.max(Duration::from_secs(age.as_secs() + 2));
    }
    PruneSpec {
        min_age,
        deep: deep && protect_since.is_none(),
        keep: keep.to_vec(),
    }
}

/// Merge the jobs this process runs with the fleet's.
fn running_jobs(board: &Board, shared_dir: &Path) -> Option<(Vec<String>, DateTime<Utc>)> {
    let fleet = crate::docker::fleet::read(shared_dir, crate::os::clocks::wall_now());
    let mut busy = crate::docker::fleet::busy(&fleet);
    if let Some(own) = board.earliest_job() {
        busy = Some(match busy {
            Some((mut names, t)) => {
                if names.is_empty() {
                    names.push("this supervisor".into());
                }
                (names, t.min(own))
            }
            None => (vec!["this supervisor".into()], own),
        });
    }
    busy
}

/// Whether `supervisor run` prunes: `on`, or `auto` when the engine's socket exists.
pub fn enabled(cfg: &DiskConfig) -> bool {
    match cfg.prune {
        Toggle::On => true,
        Toggle::Off => false,
        Toggle::Auto => Path::new(docker::socket_path(&cfg.docker_host)).exists(),
    }
}

/// This supervisor's own caches, which the pruner reclaims last: after Docker's prune,
/// only while space is still short and no job runs, the action archives oldest first,
/// then the warm tool cache.
#[derive(Default, Clone)]
pub struct Caches {
    pub actions: Option<Arc<crate::runner::actions::ActionCache>>,
    pub jobs: Option<Arc<crate::runner::launch::container::Jobs>>,
}

/// Watch free space and prune until cancelled, as the engine's one pruner.
pub async fn run(
    cfg: DiskConfig,
    shared_dir: PathBuf,
    board: Arc<Board>,
    caches: Caches,
    cancel: CancellationToken,
) {
    let Some(engine) = docker::connect_until(&cfg.docker_host, cfg.interval, &board, &cancel).await
    else {
        return;
    };
    // Docker's data root, when it is visible here; in a container it is not, but the
    // container's own root (an overlay whose upper layer lives in the data root) reports
    // the same file system.
    let path: PathBuf = match &cfg.path {
        Some(p) => p.clone(),
        None => docker::data_root(&engine)
            .await
            .map(PathBuf::from)
            .filter(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from("/")),
    };
    let lock_path = shared_dir.join("pruner.lock");
    let mut lock: Option<std::fs::File> = None;
    let mut standby_logged = false;
    let mut deferred: Option<Vec<String>> = None;
    let mut total = 0u64;
    loop {
        if lock.is_none() {
            match crate::os::layout::take_lock(&lock_path) {
                Ok(f) => {
                    tracing::info!(event = "pruner", lock = %lock_path.display(), path = %path.display(), threshold_gb = cfg.threshold_gb, "this supervisor is the engine's pruner");
                    board.system(|s| s.disk_pruner = Some("this supervisor".into()));
                    lock = Some(f);
                }
                Err(e) => {
                    if !standby_logged {
                        match &e {
                            LockError::Held(_) => {
                                tracing::info!(event = "pruner_standby", reason = %e, "another supervisor prunes this Docker engine; standing by")
                            }
                            LockError::Io(_) => {
                                tracing::warn!(event = "pruner_lock_failed", reason = %e, "cannot take the pruner lock, so this supervisor does not prune; make [state] shared_dir writable")
                            }
                        }
                        standby_logged = true;
                    }
                    let who = match &e {
                        LockError::Held(_) => {
                            format!("another supervisor ({})", lock_path.display())
                        }
                        LockError::Io(m) => format!("none here: {m}"),
                    };
                    board.system(|s| s.disk_pruner = Some(who));
                }
            }
        }
        if lock.is_some() {
            if let Some(free) = free_bytes(&path) {
                let now_free = round(
                    &cfg,
                    &engine,
                    &path,
                    &shared_dir,
                    &board,
                    &caches,
                    free,
                    &mut deferred,
                    &mut total,
                )
                .await;
                board.set_condition(Condition::Disk, condition(&cfg, &path, now_free));
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = crate::os::clocks::tick(cfg.interval) => {}
        }
    }
}

/// One round as the pruner; returns the free space after it.
#[allow(clippy::too_many_arguments)]
async fn round(
    cfg: &DiskConfig,
    engine: &Engine,
    path: &Path,
    shared_dir: &Path,
    board: &Board,
    caches: &Caches,
    free: u64,
    deferred: &mut Option<Vec<String>>,
    total: &mut u64,
) -> u64 {
    let threshold = cfg.threshold_gb * 1_000_000_000;
    board.system(|s| s.disk_free_bytes = Some(free));
    let protect_since = match plan(free, threshold, running_jobs(board, shared_dir)) {
        Plan::Nothing => {
            *deferred = None;
            return free;
        }
        Plan::Defer { busy } => {
            // Logged when the set of busy runners changes, not every round.
            if deferred.as_ref() != Some(&busy) {
                tracing::warn!(event = "prune_deferred", free_gb = format!("{:.1}", gb(free)), threshold_gb = cfg.threshold_gb, path = %path.display(), busy = %busy.join(","), "disk below threshold: pruning deferred until no job runs");
                *deferred = Some(busy);
            }
            return free;
        }
        Plan::Prune { protect_since } => protect_since,
    };
    *deferred = None;
    match protect_since {
        Some(since) => {
            tracing::warn!(event = "prune_critical", free_gb = format!("{:.1}", gb(free)), threshold_gb = cfg.threshold_gb, path = %path.display(), jobs_since = %since.to_rfc3339(), "disk critical while jobs run: pruning only what is older than them (never volumes)")
        }
        None => {
            tracing::warn!(event = "prune_start", free_gb = format!("{:.1}", gb(free)), threshold_gb = cfg.threshold_gb, path = %path.display(), "disk below threshold: pruning Docker (never volumes)")
        }
    }
    // Light first; unused tagged images only if that was not enough (and no job runs).
    let mut pruned = Pruned::default();
    let light = spec(
        protect_since,
        cfg.until,
        &cfg.keep_images,
        false,
        crate::os::clocks::wall_now(),
    );
    let mut result = docker::prune(engine, &light).await.map(|p| pruned += p);
    if result.is_ok() && protect_since.is_none() && free_bytes(path).unwrap_or(free) < threshold {
        let deep = spec(
            None,
            cfg.until,
            &cfg.keep_images,
            true,
            crate::os::clocks::wall_now(),
        );
        result = docker::prune(engine, &deep).await.map(|p| pruned += p);
    }
    // Our own caches last, and never while a job may use them.
    if result.is_ok() && protect_since.is_none() && free_bytes(path).unwrap_or(free) < threshold {
        if let Some(a) = &caches.actions {
            let (n, bytes) = a.reclaim_oldest(|| free_bytes(path).unwrap_or(0) < threshold);
            if n > 0 {
                tracing::info!(
                    event = "action_cache_reclaimed",
                    archives = n,
                    reclaimed_bytes = bytes,
                    "disk low: {n} action archive(s) removed, oldest first"
                );
            }
        }
        if free_bytes(path).unwrap_or(free) < threshold {
            if let Some(j) = &caches.jobs {
                j.reclaim_tool_cache();
            }
        }
    }
    let now_free = free_bytes(path).unwrap_or(free);
    match result {
        Ok(()) => {
            *total += pruned.bytes;
            tracing::info!(
                event = "pruned",
                containers = pruned.containers,
                images = pruned.images,
                networks = pruned.networks,
                build_cache = pruned.build_cache,
                reclaimed_bytes = pruned.bytes,
                reclaimed_mb = pruned.bytes / 1_000_000,
                free_gb = format!("{:.1}", gb(now_free)),
                "Docker pruned"
            );
            let last = format!(
                    "{}: {:.1} MB freed ({} containers, {} images, {} networks, {} build cache records)",
                    crate::os::clocks::wall_now().format("%Y-%m-%d %H:%M:%SZ"),
                    pruned.bytes as f64 / 1e6,
                    pruned.containers,
                    pruned.images,
                    pruned.networks,
                pruned.build_cache
            );
            board.system(|s| {
                s.disk_last_prune = Some(last);
                s.disk_pruned_bytes = Some(*total);
            });
        }
        Err(e) => tracing::error!(event = "prune_failed", error = %e, "Docker prune failed"),
    }
    board.system(|s| s.disk_free_bytes = Some(now_free));
    now_free
}

fn gb(b: u64) -> f64 {
    b as f64 / 1e9
}

/// Health's disk condition: critical below half the threshold.
fn condition(cfg: &DiskConfig, path: &Path, free: u64) -> Option<(Health, String)> {
    let threshold = cfg.threshold_gb * 1_000_000_000;
    if free < threshold / 2 {
        Some((
            Health::Degraded,
            format!(
                "critical: {:.1} GB free on {}, below half the {} GB threshold",
                gb(free),
                path.display(),
                cfg.threshold_gb
            ),
        ))
    } else if free < threshold {
        Some((
            Health::Ok,
            format!(
                "{:.1} GB free on {}, below the {} GB threshold",
                gb(free),
                path.display(),
                cfg.threshold_gb
            ),
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GB: u64 = 1_000_000_000;

    #[test]
    fn the_plan_defers_for_jobs_and_protects_them_when_critical() {
        let now = crate::os::clocks::wall_now();
        let job = now - chrono::Duration::seconds(40);
        let busy = || Some((vec!["r1-runner-1".to_string()], job));
        let cases = [
            // (free, busy, plan)
            (20 * GB, None, Plan::Nothing),
            (20 * GB, busy(), Plan::Nothing),
            (
                9 * GB,
                None,
                Plan::Prune {
                    protect_since: None,
                },
            ),
            (
                9 * GB,
                busy(),
                Plan::Defer {
                    busy: vec!["r1-runner-1".into()],
                },
            ),
            // Critical (below half): prune anyway, protecting the running job.
            (
                4 * GB,
                busy(),
                Plan::Prune {
                    protect_since: Some(job),
                },
            ),
            (
                4 * GB,
                None,
                Plan::Prune {
                    protect_since: None,
                },
            ),
        ];
        for (free, b, want) in cases {
            assert_eq!(plan(free, 10 * GB, b), want, "free {free}");
        }
    }

    #[test]
    fn the_spec_never_reaches_into_a_running_job() {
        let now = crate::os::clocks::wall_now();
        let keep = vec!["mongo:7.0".to_string()];
        // No job: the configured age; deep when asked.
        let s = spec(None, Duration::from_secs(6 * 3600), &keep, true, now);
        assert_eq!(s.min_age, Duration::from_secs(6 * 3600));
        assert!(s.deep);
        assert_eq!(
            spec(None, Duration::ZERO, &keep, false, now).min_age,
            Duration::ZERO
        );
        // A job started 40.5 s ago: only what is older than it, and never tagged images.
        let since = now - chrono::Duration::milliseconds(40_500);
        let s = spec(Some(since), Duration::ZERO, &keep, true, now);
        assert_eq!(s.min_age, Duration::from_secs(42));
        assert!(!s.deep);
        assert_eq!(s.keep, keep);
        // An age limit longer than the job still holds.
        let s = spec(Some(since), Duration::from_secs(3600), &keep, false, now);
        assert_eq!(s.min_age, Duration::from_secs(3600));
    }
}
