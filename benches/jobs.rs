//! Job-record figures, printed (issue 18 §5): the store after 10,000 records with the
//! default limits (`[jobs] keep` 1000, `keep_for` 30 days), its size on disk, and the time
//! one record takes (each is a committed, fsynced write on the journal's own thread, never
//! on a slot's).
//!
//! Run: `cargo bench --bench jobs`.
// Tests and benches measure and read real time on purpose (see clippy.toml).
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use chrono::Utc;
use runner_supervisor::jobs::store::JobStore;
use runner_supervisor::jobs::{JobIdentity, JobRecord, Outcome};

const RECORDS: u64 = 10_000;

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.redb");
    let store = JobStore::open(&path, 1000, Duration::from_secs(30 * 24 * 3600)).unwrap();
    let mut took = vec![];
    for i in 0..RECORDS {
        let now = Utc::now();
        let rec = JobRecord {
            id: 0,
            slot: (i % 2) as usize,
            runner: format!("ci-laptop-{}-a1b2c3", i % 2),
            display_name: "e2e tests (mongo 7)".into(),
            identity: Some(JobIdentity {
                repository: "octo-org/application".into(),
                run_id: 12_000_000_000 + i,
                run_attempt: 1,
                job: "e2e".into(),
                workflow: "CI".into(),
                runner: format!("ci-laptop-{}-a1b2c3", i % 2),
            }),
            job_id: Some(34_000_000_000 + i),
            started_at: now,
            ended_at: None,
            outcome: Outcome::Running,
            rerun: None,
        };
        let t = Instant::now();
        let id = store.add(rec, now).unwrap();
        store
            .update(id, |r| {
                r.ended_at = Some(Utc::now());
                r.outcome = Outcome::Done {
                    result: "Succeeded".into(),
                };
            })
            .unwrap();
        took.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let kept = store.list(false).unwrap().len();
    drop(store);
    let size = std::fs::metadata(&path).unwrap().len();
    took.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let p50 = took[took.len() / 2];
    let p99 = took[took.len() * 99 / 100];
    println!("\nrunner-supervisor job records benchmark");
    println!("  {RECORDS} jobs recorded (start and end, each a committed write), default limits");
    println!("  records kept {kept} (keep 1000)");
    println!("  file size {:.2} MB", size as f64 / 1e6);
    println!("  per job (both writes): p50 {p50:.2} ms, p99 {p99:.2} ms");
}
