//! The counters behind the exit summary, the status `counts` and the metrics: tallies by
//! word and the job-duration and turnaround histograms.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

/// Counts by a word (exit reason, job result, fire cause).
#[derive(Debug, Default)]
pub struct Tally(Mutex<BTreeMap<String, u64>>);

impl Tally {
    /// Count one `key`.
    pub fn add(&self, key: &str) {
        *self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.to_string())
            .or_default() += 1;
    }
    /// Every count.
    pub fn get(&self) -> BTreeMap<String, u64> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Job durations: 10 s to 6 h.
pub const JOB_BUCKETS: [f64; 12] = [
    10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0, 14400.0, 21600.0,
];
/// Turnaround (a job's end to the slot's next listener listening): 50 ms to 10 min.
pub const TURNAROUND_BUCKETS: [f64; 12] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 600.0,
];

/// Counters for the summary, the status and the metrics.
#[derive(Debug)]
pub struct Stats {
    pub jobs_completed: AtomicU64,
    /// Jobs whose listener ended before it reported them completed.
    pub jobs_lost: AtomicU64,
    pub registrations: AtomicU64,
    pub deregistrations: AtomicU64,
    pub ghosts_reaped: AtomicU64,
    pub strays_stopped: AtomicU64,
    pub listeners_started: AtomicU64,
    /// "A session for this runner already exists." seen.
    pub session_conflicts: AtomicU64,
    /// Listener exits by reason (`job_done`, `crashed`, ...).
    pub exits: Tally,
    /// Completed jobs by the result the runner printed (`Succeeded`, `Failed`, ...).
    pub job_results: Tally,
    /// Lost jobs by cause (`killed`, `crashed`, `stalled`, `stop_timeout`, `supervisor`).
    pub jobs_lost_by: Tally,
    /// Re-runs of lost jobs by result (`accepted`, `refused`, `given_up`, `skipped`).
    pub jobs_rerun_by: Tally,
    /// Lost jobs waiting for their run to complete before their re-run.
    pub reruns_pending: AtomicU64,
    /// Watchdog fires by cause.
    pub fires: Tally,
    /// Seconds from "Running job" to its completion.
    pub job_duration: prometheus_client::metrics::histogram::Histogram,
    /// Seconds from a job's completion to the slot's next listener listening.
    pub turnaround: prometheus_client::metrics::histogram::Histogram,
}

impl Default for Stats {
    fn default() -> Self {
        use prometheus_client::metrics::histogram::Histogram;
        Stats {
            jobs_completed: AtomicU64::new(0),
            jobs_lost: AtomicU64::new(0),
            registrations: AtomicU64::new(0),
            deregistrations: AtomicU64::new(0),
            ghosts_reaped: AtomicU64::new(0),
            strays_stopped: AtomicU64::new(0),
            listeners_started: AtomicU64::new(0),
            session_conflicts: AtomicU64::new(0),
            exits: Tally::default(),
            job_results: Tally::default(),
            jobs_lost_by: Tally::default(),
            jobs_rerun_by: Tally::default(),
            reruns_pending: AtomicU64::new(0),
            fires: Tally::default(),
            job_duration: Histogram::new(JOB_BUCKETS),
            turnaround: Histogram::new(TURNAROUND_BUCKETS),
        }
    }
}

impl Stats {
    /// Count an exit by reason.
    pub fn exit(&self, reason: &str) {
        self.exits.add(reason);
    }
    /// Exits by reason.
    pub fn exits(&self) -> BTreeMap<String, u64> {
        self.exits.get()
    }
}
