//! The job records (`<state dir>/jobs.redb`): an embedded store (`redb`, copy-on-write
//! B-trees with checksummed commits) so that a SIGKILL or a power cut in the middle of a
//! write leaves the last committed state, never a half record. Bounded: after each new
//! record, the oldest go beyond `[jobs] keep` records or `[jobs] keep_for` of age.
//!
//! One process opens it at a time (redb locks the file): the running supervisor serves
//! the records over its control socket (`GET /v1/jobs`), `supervisor jobs` reads them
//! there, or from the file when no supervisor runs.

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::{JobRecord, Outcome};

const RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("jobs");

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
#[error("job records {path}: {why}")]
pub struct StoreError {
    pub path: String,
    pub why: String,
}

/// The job records.
pub struct JobStore {
    db: Database,
    path: String,
    keep: usize,
    keep_for: Duration,
}

impl JobStore {
    /// Open (or create) the store at `path`, keeping at most `keep` records and none older
    /// than `keep_for`.
    pub fn open(path: &Path, keep: usize, keep_for: Duration) -> Result<JobStore, StoreError> {
        let p = path.display().to_string();
        let err = |why: String| StoreError {
            path: p.clone(),
            why,
        };
        let db = Database::create(path).map_err(|e| err(e.to_string()))?;
        let s = JobStore {
            db,
            path: p.clone(),
            keep,
            keep_for,
        };
        // The table exists from the start: readers never find it missing.
        s.write(|_| Ok(()))?;
        Ok(s)
    }

    fn err(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError {
            path: self.path.clone(),
            why: e.to_string(),
        }
    }

    /// Run `f` on the records table in one committed write transaction.
    fn write<R>(
        &self,
        f: impl FnOnce(&mut redb::Table<'_, u64, &'static [u8]>) -> Result<R, redb::StorageError>,
    ) -> Result<R, StoreError> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        let r = {
            let mut t = tx.open_table(RECORDS).map_err(|e| self.err(e))?;
            f(&mut t).map_err(|e| self.err(e))?
        };
        tx.commit().map_err(|e| self.err(e))?;
        Ok(r)
    }

    /// Add a record (its `id` is given here); the oldest beyond the limits go.
    pub fn add(&self, mut rec: JobRecord, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let (keep, keep_for) = (self.keep, self.keep_for);
        self.write(|t| {
            let id = t.last()?.map(|(k, _)| k.value() + 1).unwrap_or(1);
            rec.id = id;
            let bytes = serde_json::to_vec(&rec).unwrap_or_default();
            t.insert(id, bytes.as_slice())?;
            // Bounded: by count, then by age (records are in id order, oldest first).
            let oldest_kept =
                now - chrono::Duration::from_std(keep_for).unwrap_or(chrono::Duration::MAX);
            let mut gone = vec![];
            let n = t.len()? as usize;
            for (i, entry) in t.iter()?.enumerate() {
                let (k, v) = entry?;
                let old = serde_json::from_slice::<JobRecord>(v.value())
                    .is_ok_and(|r| r.started_at < oldest_kept && r.outcome != Outcome::Running);
                if i + keep < n || old {
                    gone.push(k.value());
                } else {
                    break;
                }
            }
            for k in gone {
                t.remove(k)?;
            }
            Ok(id)
        })
    }

    /// Change record `id`; false when it is no longer kept.
    pub fn update(&self, id: u64, f: impl FnOnce(&mut JobRecord)) -> Result<bool, StoreError> {
        self.write(|t| {
            let Some(mut rec) = t
                .get(id)?
                .and_then(|v| serde_json::from_slice::<JobRecord>(v.value()).ok())
            else {
                return Ok(false);
            };
            f(&mut rec);
            let bytes = serde_json::to_vec(&rec).unwrap_or_default();
            t.insert(id, bytes.as_slice())?;
            Ok(true)
        })
    }

    /// Every record still open (a job the supervisor never saw end) closed as lost with
    /// `cause`, then given to `then`; their ids.
    pub fn close_open(
        &self,
        cause: &str,
        action: &str,
        now: DateTime<Utc>,
        then: impl Fn(&mut JobRecord),
    ) -> Result<Vec<u64>, StoreError> {
        let open: Vec<JobRecord> = self
            .list(false)?
            .into_iter()
            .filter(|r| r.outcome == Outcome::Running)
            .collect();
        let mut ids = vec![];
        for r in open {
            self.update(r.id, |r| {
                r.ended_at = Some(now);
                r.outcome = Outcome::Lost {
                    cause: cause.into(),
                    action: action.into(),
                };
                then(r);
            })?;
            ids.push(r.id);
        }
        Ok(ids)
    }

    /// The records, oldest first (only the lost ones with `lost_only`).
    pub fn list(&self, lost_only: bool) -> Result<Vec<JobRecord>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(RECORDS).map_err(|e| self.err(e))?;
        let mut out = vec![];
        for entry in t.iter().map_err(|e| self.err(e))? {
            let (_, v) = entry.map_err(|e| self.err(e))?;
            if let Ok(r) = serde_json::from_slice::<JobRecord>(v.value()) {
                if !lost_only || r.lost() {
                    out.push(r);
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(slot: usize, at: DateTime<Utc>) -> JobRecord {
        JobRecord {
            id: 0,
            slot,
            runner: format!("r-{slot}"),
            display_name: "build".into(),
            identity: None,
            job_id: None,
            started_at: at,
            ended_at: None,
            outcome: Outcome::Running,
            rerun: None,
        }
    }

    #[test]
    fn records_are_numbered_updated_closed_and_bounded_by_count_and_age() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.redb");
        let now = crate::os::clocks::wall_now();
        let s = JobStore::open(&path, 3, Duration::from_secs(3600)).unwrap();
        let a = s
            .add(rec(0, now - chrono::Duration::hours(2)), now)
            .unwrap();
        s.update(a, |r| {
            r.outcome = Outcome::Done {
                result: "Succeeded".into(),
            }
        })
        .unwrap();
        // An old record that ended goes at the next add; count keeps the newest 3.
        let ids: Vec<u64> = (0..4).map(|i| s.add(rec(i, now), now).unwrap()).collect();
        assert_eq!(ids, [2, 3, 4, 5]);
        let kept: Vec<u64> = s.list(false).unwrap().iter().map(|r| r.id).collect();
        assert_eq!(kept, [3, 4, 5]);
        // Reopened: the same records; the open ones closed as lost.
        drop(s);
        let s = JobStore::open(&path, 3, Duration::from_secs(3600)).unwrap();
        assert_eq!(
            s.close_open("supervisor", "recorded", now, |_| {}).unwrap(),
            [3, 4, 5]
        );
        let lost = s.list(true).unwrap();
        assert_eq!(lost.len(), 3);
        assert!(lost.iter().all(|r| r.outcome
            == Outcome::Lost {
                cause: "supervisor".into(),
                action: "recorded".into()
            }));
    }
}
