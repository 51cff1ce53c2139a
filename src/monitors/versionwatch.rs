//! Version watch: which runner version is installed, which is the newest release, and
//! GitHub's real deadline for the installed one (`GET …/actions/runners/deprecations/
//! {version}`, reference A8/B6). It reads the newest release at start and every
//! [`LATEST_EVERY`], and a version's deadline at start and at most once per
//! [`DEADLINE_EVERY`] per version; a 404 (a version GitHub does not know, or a server
//! without the endpoint) is "unknown", not an error. Health says when the deadline is
//! within [`WARN_DAYS`] days (a note) or past (degraded: GitHub sends that version no jobs).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{AutoUpdate, Config};
use crate::github::{GithubClient, RunnerApplication};
use crate::runner::autopilot::Version;
use crate::runner::store::Store;
use crate::runner::version::{self, describe_deadline, Deadline, Standing, WARN_DAYS};
use crate::status::host::Host;
use crate::status::{Board, Condition, Health};

/// How often the newest release is read.
pub const LATEST_EVERY: Duration = Duration::from_secs(6 * 3600);
/// How often one version's deadline is read, at most.
pub const DEADLINE_EVERY: Duration = Duration::from_secs(24 * 3600);
/// How often the deadline is judged again (days pass) and the installed version looked at.
const TICK: Duration = Duration::from_secs(3600);
/// After a failed read, the next try.
const RETRY: Duration = Duration::from_secs(300);
/// How the condition starts when the newest release cannot be read.
const CANNOT_LOOK: &str = "cannot look for a newer runner now";
/// While the installed version or its deadline is not known yet, the next look.
const UNSETTLED: Duration = Duration::from_secs(5);

/// What the watch remembers between rounds.
#[derive(Default)]
struct Watch {
    next_latest: Option<Instant>,
    /// Version → when its deadline was last read (or is due again after a failure).
    read: HashMap<String, Instant>,
    /// The downloads GitHub listed last.
    apps: Vec<RunnerApplication>,
    /// No upgrade attempt before this (after a failed one).
    next_upgrade: Option<Instant>,
    /// Failed upgrade attempts in a row: the wait before the next one grows with them.
    upgrade_failures: u32,
    /// Rolled-back versions already said to be skipped.
    skipped: std::collections::HashSet<String>,
}

/// The wait after `failures` failed upgrade attempts in a row: [`RETRY`], doubling, at
/// most [`LATEST_EVERY`].
pub fn upgrade_backoff(failures: u32) -> Duration {
    let doubled = RETRY.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    doubled.min(LATEST_EVERY)
}

/// With `[runner] auto_update = "on"`: a newer release, not marked bad, is installed into
/// the versions directory (one download, checksum verified) and offered to the
/// autopilot, whose canary tries it first; an idle slot is recycled to start the canary.
async fn upgrade(cfg: &Config, gh: &GithubClient, board: &Board, host: &Host, w: &mut Watch) {
    let now = Instant::now();
    if w.next_upgrade.is_some_and(|t| now < t) {
        return;
    }
    let Some(latest) = board.system_state().runner_latest else {
        return;
    };
    let Some((current, trying, bad)) = host.autopilot(|f| {
        (
            f.current().name.clone(),
            f.canary().map(|(c, _)| c.name.clone()),
            f.bad().contains(&latest),
        )
    }) else {
        return;
    };
    if bad && w.skipped.insert(latest.clone()) {
        tracing::info!(event = "runner_skipped", version = %latest, "runner {latest} was rolled back: not tried again until a newer release appears or `supervisor runner retry`");
    }
    if bad
        || trying.as_deref() == Some(latest.as_str())
        || version::parse_version(&latest) <= version::parse_version(&current)
    {
        return;
    }
    let Some(app) = w
        .apps
        .iter()
        .find(|a| a.os == "linux" && a.filename.contains(&format!("-{latest}.")))
        .cloned()
    else {
        return;
    };
    let installed = match Store::open(&cfg.versions_dir()) {
        Ok(store) => store.install(gh, &latest, &app).await.map(|r| (store, r)),
        Err(e) => Err(e),
    };
    match installed {
        Ok((store, (dir, downloaded))) => {
            w.upgrade_failures = 0;
            tracing::info!(event = "runner_downloaded", version = %latest, downloaded, dir = %dir.display(), "runner {latest} ready in {}", dir.display());
            let _ = store.prune(&[latest.as_str(), current.as_str()]);
            board.set_condition(Condition::RunnerUpgrade, None);
            let idle: Vec<usize> = host.listening().into_iter().map(|(s, _)| s).collect();
            let offered = host.autopilot(|f| {
                f.offer(
                    Version {
                        name: latest.clone(),
                        dir,
                    },
                    &idle,
                )
            });
            host.runner_versions_changed();
            if let Some(Some(Some(slot))) = offered {
                board.system(|s| s.runner_canary = Some(format!("{latest} on slot {slot}")));
                host.recycle(&[slot]);
            } else if let Some(Some(None)) = offered {
                board.system(|s| {
                    s.runner_canary = Some(format!("{latest} on the next slot to start"))
                });
            }
        }
        Err(e) => {
            w.upgrade_failures += 1;
            let wait = upgrade_backoff(w.upgrade_failures);
            let mins = wait.as_secs().div_ceil(60);
            tracing::warn!(event = "runner_upgrade_failed", version = %latest, error = %e, failures = w.upgrade_failures, retry_s = wait.as_secs(), "cannot install runner {latest}: keeping what runs; next try in {mins} min");
            board.set_condition(
                Condition::RunnerUpgrade,
                Some((
                    Health::Ok,
                    format!("cannot install runner {latest}: {e}; keeping {current}, next try in {mins} min"),
                )),
            );
            w.next_upgrade = Some(now + wait);
        }
    }
}

/// With `auto_update` `notify` or `off`: a newer release is only said (health, status),
/// with how to take it.
fn hold(board: &Board, mode: AutoUpdate) {
    let s = board.system_state();
    let (Some(latest), Some(have)) = (s.runner_latest, s.runner_version) else {
        return;
    };
    let said = (version::parse_version(&latest) > version::parse_version(&have)).then(|| {
        let word = if mode == AutoUpdate::Notify { "notify" } else { "off" };
        (
            Health::Ok,
            format!("runner {latest} is available ({have} runs); auto_update is \"{word}\": install it in the runner directory and restart, or set [runner] auto_update = \"on\""),
        )
    });
    board.set_condition(Condition::RunnerUpgrade, said);
}

/// Read, judge and publish, until cancelled.
pub async fn run(
    cfg: Arc<Config>,
    gh: GithubClient,
    board: Arc<Board>,
    host: Arc<Host>,
    stop: CancellationToken,
) {
    // Every step gives way to the stop: GitHub may be unreachable, and its retries long.
    let work = async {
        if board.system_state().runner_version.is_none() {
            if let Some(v) = version::installed(&cfg.runner.dir).await {
                board.system(|s| {
                    s.runner_version.get_or_insert(v);
                });
            }
        }
        let mut w = Watch::default();
        let mut versions = host.runner_versions.subscribe();
        loop {
            round(&gh, &board, &mut w).await;
            match cfg.runner.auto_update {
                AutoUpdate::On => upgrade(&cfg, &gh, &board, &host, &mut w).await,
                mode => hold(&board, mode),
            }
            // Until the installed version is known (`--version` may fail; the listener
            // says it too) and its deadline read, look again soon.
            let s = board.system_state();
            let settled = s.runner_version.is_some() && s.runner_deadline_for == s.runner_version;
            let asked = tokio::select! {
                _ = tokio::time::sleep(if settled { TICK } else { UNSETTLED }) => false,
                _ = host.check_versions.notified() => true,
                // A version promoted: its deadline is read now.
                _ = versions.changed() => false,
            };
            if asked {
                // `supervisor runner upgrade` or `retry`, or a slot refused as deprecated:
                // the newest release now, and an attempt even after a recent failure.
                w.next_latest = None;
                w.next_upgrade = None;
            }
        }
    };
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = work => {}
    }
}

async fn round(gh: &GithubClient, board: &Board, w: &mut Watch) {
    let now = Instant::now();
    if w.next_latest.is_none_or(|t| now >= t) {
        match gh.runner_downloads().await {
            Ok(apps) => {
                if board
                    .condition(Condition::RunnerUpgrade)
                    .is_some_and(|m| m.starts_with(CANNOT_LOOK))
                {
                    board.set_condition(Condition::RunnerUpgrade, None);
                }
                let latest = version::latest_release(&apps);
                board.system(|s| s.runner_latest = latest);
                w.apps = apps;
                w.next_latest = Some(now + LATEST_EVERY);
            }
            Err(e) => {
                tracing::warn!(event = "runner_latest_failed", error = %e, "cannot read the newest runner release now");
                // Said, unless something more telling (a rollback, a failed install) is.
                if board.condition(Condition::RunnerUpgrade).is_none() {
                    let have = board
                        .system_state()
                        .runner_version
                        .unwrap_or_else(|| "the installed runner".into());
                    board.set_condition(
                        Condition::RunnerUpgrade,
                        Some((
                            Health::Ok,
                            format!(
                                "{CANNOT_LOOK}: {e}; keeping {have}, next look in {} min",
                                RETRY.as_secs() / 60
                            ),
                        )),
                    );
                }
                w.next_latest = Some(now + RETRY);
            }
        }
    }
    let Some(v) = board.system_state().runner_version else {
        return;
    };
    if w.read.get(&v).is_none_or(|t| now >= *t) {
        match gh.runner_deprecation(&v).await {
            Ok(answer) => {
                let deadline = Deadline::from_answer(answer);
                let wall = crate::os::clocks::wall_now();
                board.system(|s| {
                    s.runner_deadline = deadline.clone();
                    s.runner_deadline_for = Some(v.clone());
                    s.runner_checked_at = Some(wall);
                });
                log_deadline(&v, &deadline, wall);
                w.read.insert(v.clone(), now + DEADLINE_EVERY);
            }
            Err(e) => {
                tracing::warn!(event = "runner_deadline_failed", version = %v, error = %e, "cannot read the runner version's deadline now");
                w.read.insert(v.clone(), now + RETRY);
            }
        }
    }
    judge(board, crate::os::clocks::wall_now());
}

fn log_deadline(v: &str, d: &Deadline, now: DateTime<Utc>) {
    match d.runtime() {
        Some(at) => {
            tracing::info!(event = "runner_deadline", version = %v, deadline = d.kind(), runtime_deprecates_at = %at, days_left = (at - now).num_days(), "runner {v}: GitHub sends it jobs until {}", describe_deadline(at, now))
        }
        None => {
            tracing::info!(event = "runner_deadline", version = %v, deadline = d.kind(), "runner {v}: no runtime deadline ({})", d.kind())
        }
    }
}

/// The health condition for the installed version's deadline, as it stands at `now`.
pub fn judge(board: &Board, now: DateTime<Utc>) {
    let s = board.system_state();
    let current = s.runner_deadline_for.is_some() && s.runner_deadline_for == s.runner_version;
    let v = s.runner_version.unwrap_or_default();
    let newest = match s.runner_latest {
        Some(l) if version::parse_version(&l) > version::parse_version(&v) => {
            format!("install {l}")
        }
        _ => "install the newest release".to_string(),
    };
    let condition = match (
        current,
        s.runner_deadline.judge(now),
        s.runner_deadline.runtime(),
    ) {
        (true, Standing::Past { .. }, Some(at)) => Some((
            Health::Degraded,
            format!(
                "runner {v} is past its runtime deadline {}: GitHub sends it no jobs; {newest}",
                describe_deadline(at, now)
            ),
        )),
        (true, Standing::Soon { .. }, Some(at)) => Some((
            Health::Ok,
            format!(
                "runner {v}: runtime deadline {}, within {WARN_DAYS} days; {newest}",
                describe_deadline(at, now)
            ),
        )),
        _ => None,
    };
    board.set_condition(Condition::RunnerVersion, condition);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_upgrades_back_off_from_five_minutes_doubling_to_six_hours() {
        let mins: Vec<u64> = (1..=9).map(|n| upgrade_backoff(n).as_secs() / 60).collect();
        assert_eq!(mins, [5, 10, 20, 40, 80, 160, 320, 360, 360]);
        assert_eq!(upgrade_backoff(u32::MAX), LATEST_EVERY);
    }
}
