//! Shared status: what each slot is doing, counters, and the status file that
//! `supervisor health` reads.
//!
//! Layout: this file is the `Board` and its snapshot; `health.rs` the conditions and the
//! verdict; `writer.rs` the status file (and the fleet's copy); `summary.rs` the exit
//! summary; `schema.rs`, `slot.rs`, `stats.rs` and `system.rs` what a snapshot holds.
//!
//! Invariant: slots write their own entry only; the writer task is the only one that
//! touches `status.json`, and it writes atomically (temp file + rename).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;

pub mod control;
mod health;
pub mod host;
pub mod metrics;
mod schema;
pub mod sdnotify;
pub mod slot;
mod stats;
mod summary;
mod system;
mod writer;
use crate::os::shutdown::Mode;
pub use health::{evaluate, Condition, Health};
pub use schema::*;
pub use slot::*;
pub use stats::*;
pub use summary::Summary;
pub use system::SystemState;
pub use writer::HEARTBEAT;

/// Shared status of all slots.
pub struct Board {
    slots: Mutex<Vec<SlotStatus>>,
    /// Host-level conditions by name (token, chronyd, dns, a dependency): verdict and reason.
    conditions: Mutex<BTreeMap<Condition, (Health, String)>>,
    /// Failing this long makes a slot unhealthy rather than degraded.
    unhealthy_after: Duration,
    /// What the monitors know of the host, typed.
    system: Mutex<SystemState>,
    /// The supervisor's mode: the one channel signals write (`shutdown`), read here for
    /// display only.
    mode: OnceLock<tokio::sync::watch::Receiver<Mode>>,
    /// The word a service (pruner, autoheal) shows instead of a mode.
    service: OnceLock<&'static str>,
    changed: Notify,
    /// Bumped on every change, for watchers other than the writer (systemd's STATUS=).
    version: tokio::sync::watch::Sender<u64>,
    pub stats: Stats,
    started_at: DateTime<Utc>,
    /// Where the status is also published for the fleet, and this supervisor's host part.
    fleet: OnceLock<(String, PathBuf)>,
    /// Where the counts the board does not keep come from.
    sources: OnceLock<Sources>,
    /// Per slot: when its job started, and when its last job ended (for the histograms).
    marks: Mutex<Vec<Marks>>,
}

/// Counters kept elsewhere: the GitHub client's, and the deletion queue's length.
pub struct Sources {
    pub api: std::sync::Arc<crate::github::ApiStats>,
    pub deletions_pending: Box<dyn Fn() -> u64 + Send + Sync>,
    /// Registrations left by an earlier run for this one to delete.
    pub deletions_inherited: u64,
}

#[derive(Debug, Default, Clone, Copy)]
struct Marks {
    job_started: Option<tokio::time::Instant>,
    job_ended: Option<tokio::time::Instant>,
}

impl Board {
    /// A board for `n` slots.
    pub fn new(n: usize, unhealthy_after: Duration) -> Board {
        Board {
            slots: Mutex::new(vec![SlotStatus::default(); n]),
            conditions: Mutex::new(BTreeMap::new()),
            unhealthy_after,
            system: Mutex::new(SystemState::default()),
            mode: OnceLock::new(),
            service: OnceLock::new(),
            changed: Notify::new(),
            version: tokio::sync::watch::channel(0).0,
            stats: Stats::default(),
            started_at: crate::os::clocks::wall_now(),
            fleet: OnceLock::new(),
            sources: OnceLock::new(),
            marks: Mutex::new(vec![Marks::default(); n]),
        }
    }

    fn touch(&self) {
        self.changed.notify_one();
        self.version.send_modify(|v| *v += 1);
    }

    /// Woken on every change.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Where the API counters and the deletion queue's length come from.
    pub fn attach(&self, sources: Sources) {
        let _ = self.sources.set(sources);
    }

    /// The GitHub client's request counters, once attached.
    pub fn api_stats(&self) -> Option<&crate::github::ApiStats> {
        self.sources.get().map(|s| &*s.api)
    }

    /// Registrations left by an earlier run (0 until attached).
    pub fn deletions_inherited(&self) -> u64 {
        self.sources.get().map_or(0, |s| s.deletions_inherited)
    }

    fn marks(&self, slot: usize, f: impl FnOnce(&mut Marks)) {
        if let Some(m) = self
            .marks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(slot)
        {
            f(m)
        }
    }

    /// Slot `slot` started job `name`.
    pub fn job_started(&self, slot: usize, name: String) {
        self.marks(slot, |m| m.job_started = Some(tokio::time::Instant::now()));
        self.update(slot, |s| {
            s.job = Some(name);
            s.job_started_at = Some(crate::os::clocks::wall_now());
            s.lease_warning = None;
        });
    }

    /// Slot `slot`'s job completed with `result`: counted, and timed.
    pub fn job_completed(&self, slot: usize, result: &str) {
        let now = tokio::time::Instant::now();
        let mut took = None;
        self.marks(slot, |m| {
            took = m.job_started.take().map(|t| now - t);
            m.job_ended = Some(now);
        });
        self.stats.jobs_completed.fetch_add(1, Ordering::Relaxed);
        self.stats.job_results.add(result);
        if let Some(d) = took {
            self.stats.job_duration.observe(d.as_secs_f64());
        }
        self.touch();
    }

    /// Slot `slot`'s listener ended while running `job`, before reporting it completed.
    pub fn job_lost(&self, slot: usize) {
        self.marks(slot, |m| m.job_started = None);
        self.stats.jobs_lost.fetch_add(1, Ordering::Relaxed);
        self.touch();
    }

    /// Record slot `slot`'s circuit breaker.
    pub fn set_breaker(&self, slot: usize, b: BreakerStatus) {
        self.update(slot, |s| s.breaker = b);
    }

    /// Whether any slot runs a job, and the earliest start among those that do.
    pub fn earliest_job(&self) -> Option<DateTime<Utc>> {
        self.slots()
            .iter()
            .filter(|s| s.state == SlotState::Busy)
            .map(|s| s.since)
            .min()
    }

    /// Update slot `i`.
    pub fn update(&self, i: usize, f: impl FnOnce(&mut SlotStatus)) {
        if let Some(s) = self
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(i)
        {
            f(s);
        }
        self.touch();
    }

    /// Set slot `i`'s state word.
    pub fn set_state(&self, i: usize, state: SlotState) {
        if state == SlotState::Listening {
            // The slot is ready again: the time since its last job ended is its turnaround.
            let now = tokio::time::Instant::now();
            let mut ended = None;
            self.marks(i, |m| ended = m.job_ended.take());
            if let Some(t) = ended {
                self.stats.turnaround.observe((now - t).as_secs_f64());
            }
        }
        self.update(i, |s| {
            if s.state != state {
                s.state = state;
                s.since = crate::os::clocks::wall_now();
            }
            // A lease is a busy listener's: warned of only while busy.
            if state != SlotState::Busy {
                s.lease_warning = None;
            }
        });
    }

    /// Show the supervisor's mode from `mode`, the channel the signal handler writes.
    pub fn attach_mode(&self, mode: tokio::sync::watch::Receiver<Mode>) {
        let _ = self.mode.set(mode);
        self.touch();
    }

    /// The supervisor's mode, for display (decisions read the channel themselves).
    pub fn mode(&self) -> Mode {
        self.mode.get().map_or(Mode::Run, |m| *m.borrow())
    }

    /// Show `word` as the mode: this board is a service's (`prune`, `autoheal`).
    pub fn set_service(&self, word: &'static str) {
        let _ = self.service.set(word);
        self.touch();
    }

    /// One slot's state.
    pub fn state(&self, slot: usize) -> Option<SlotState> {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(slot)
            .map(|s| s.state)
    }

    /// A snapshot of every slot.
    pub fn slots(&self) -> Vec<SlotStatus> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The connection watch's summary for the host (`on (...)`, `refused for slot ...`,
    /// `off`), and how many listeners got keepalive and how many were refused.
    pub fn set_listener_keepalive(&self, summary: String, on: u64, refused: u64) {
        self.system(|s| {
            s.listener_keepalive = Some(summary);
            s.listeners_keepalive_on = on;
            s.listeners_keepalive_refused = refused;
        });
    }

    /// The status now, in [`SCHEMA`].
    pub fn snapshot(&self) -> StatusFile {
        let now = crate::os::clocks::wall_now();
        let (health, reasons) = self.health(now);
        let state = self.system_state();
        let conditions = self
            .conditions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let api = self.sources.get().map(|s| &s.api);
        let api_requests = api.map_or(0, |a| a.requests.load(Ordering::Relaxed));
        let st = &self.stats;
        let counts = Counts {
            jobs_completed: st.jobs_completed.load(Ordering::Relaxed),
            jobs_lost: st.jobs_lost.load(Ordering::Relaxed),
            jobs_lost_by_cause: st.jobs_lost_by.get(),
            jobs_rerun_by_result: st.jobs_rerun_by.get(),
            reruns_pending: st.reruns_pending.load(Ordering::Relaxed),
            job_results: st.job_results.get(),
            listeners_started: st.listeners_started.load(Ordering::Relaxed),
            listener_exits: st.exits(),
            registrations: st.registrations.load(Ordering::Relaxed),
            deregistrations: st.deregistrations.load(Ordering::Relaxed),
            ghosts_reaped: st.ghosts_reaped.load(Ordering::Relaxed),
            strays_stopped: st.strays_stopped.load(Ordering::Relaxed),
            session_conflicts: st.session_conflicts.load(Ordering::Relaxed),
            watchdog_fires: st.fires.get(),
            deletions_pending: self.sources.get().map_or(0, |s| (s.deletions_pending)()),
            api_requests,
        };
        StatusFile {
            schema: SCHEMA.to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            hostname: self.fleet.get().map(|f| f.0.clone()).unwrap_or_default(),
            started_at: self.started_at,
            updated_at: now,
            health,
            reasons,
            mode: self
                .service
                .get()
                .map(|w| w.to_string())
                .unwrap_or_else(|| self.mode().as_str().to_string()),
            slots: self.slots(),
            jobs_completed: counts.jobs_completed,
            api_requests,
            system: state.render(&conditions, api.and_then(|a| a.rate_limit()), now),
            facts: state.facts(),
            counts,
        }
    }
}
