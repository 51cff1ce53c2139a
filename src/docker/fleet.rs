//! The fleet: every supervisor on one host or Docker engine publishes its status in
//! `<shared_dir>/fleet/<name>.json`, so that host-wide work (the one pruner, autoheal) can
//! see whether any runner on the engine is running a job, and since when.
//!
//! It must not: trust a file that has stopped being refreshed (its supervisor is gone,
//! and its listeners died with it), or read anything but the fleet directory.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use crate::status::{StatusFile, HEARTBEAT};

/// `<shared_dir>/fleet`.
pub fn dir(shared_dir: &Path) -> PathBuf {
    shared_dir.join("fleet")
}

/// The file one supervisor publishes: named by its runner-name prefix and host, the same
/// pair that makes its runners' names its own.
pub fn path(shared_dir: &Path, prefix: &str, hostname: &str) -> PathBuf {
    dir(shared_dir).join(format!("{prefix}-{hostname}.json"))
}

/// One supervisor as the fleet sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// The file name without `.json`.
    pub name: String,
    /// The host part of its runner names (a container's hostname).
    pub hostname: String,
    /// Start of each job running now.
    pub jobs: Vec<DateTime<Utc>>,
    /// Whether the file is being refreshed by a running supervisor.
    pub live: bool,
}

impl Member {
    /// From a status file read at `now`: live while refreshed within three heartbeats and
    /// not stopped.
    pub fn from_status(name: String, s: &StatusFile, now: DateTime<Utc>) -> Member {
        let age = (now - s.updated_at).to_std().unwrap_or_default();
        let live = s.mode != "stopped" && age <= HEARTBEAT * 3;
        Member {
            name,
            hostname: s.hostname.clone(),
            jobs: s
                .slots
                .iter()
                .filter(|x| x.state == crate::status::SlotState::Busy)
                .map(|x| x.since)
                .collect(),
            live,
        }
    }

    /// Jobs that count: a dead supervisor's listeners died with it.
    pub fn running_jobs(&self) -> &[DateTime<Utc>] {
        if self.live {
            &self.jobs
        } else {
            &[]
        }
    }
}

/// Every member of the fleet at `shared_dir`. Unreadable or half-written files are
/// skipped (they are written atomically, so this is a file that is not ours).
pub fn read(shared_dir: &Path, now: DateTime<Utc>) -> Vec<Member> {
    let Ok(entries) = std::fs::read_dir(dir(shared_dir)) else {
        return vec![];
    };
    let mut out: Vec<Member> = entries
        .flatten()
        .filter_map(|e| {
            let p = e.path();
            let name = p.file_name()?.to_str()?.strip_suffix(".json")?.to_string();
            let s: StatusFile = serde_json::from_slice(&std::fs::read(&p).ok()?).ok()?;
            Some(Member::from_status(name, &s, now))
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The jobs running anywhere in the fleet: who runs them, and the earliest start.
pub fn busy(members: &[Member]) -> Option<(Vec<String>, DateTime<Utc>)> {
    let names: Vec<String> = members
        .iter()
        .filter(|m| !m.running_jobs().is_empty())
        .map(|m| m.name.clone())
        .collect();
    let earliest = members
        .iter()
        .flat_map(|m| m.running_jobs().iter().copied())
        .min()?;
    Some((names, earliest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{Health, SlotStatus};

    fn status(mode: &str, age_s: i64, states: &[(&str, i64)], now: DateTime<Utc>) -> StatusFile {
        StatusFile {
            pid: 1,
            hostname: "runner-1".into(),
            started_at: now,
            updated_at: now - chrono::Duration::seconds(age_s),
            health: Health::Ok,
            reasons: vec![],
            mode: mode.into(),
            slots: states
                .iter()
                .map(|(st, since)| SlotStatus {
                    state: serde_json::from_value(serde_json::json!(st)).unwrap(),
                    since: now - chrono::Duration::seconds(*since),
                    ..SlotStatus::default()
                })
                .collect(),
            jobs_completed: 0,
            api_requests: 0,
            facts: Default::default(),
            schema: crate::status::SCHEMA.into(),
            version: String::new(),
            system: Default::default(),
            counts: Default::default(),
        }
    }

    #[test]
    fn only_live_members_run_jobs_and_the_earliest_start_wins() {
        let now = crate::os::clocks::wall_now();
        let a = Member::from_status(
            "a".into(),
            &status("run", 1, &[("busy", 30), ("listening", 5)], now),
            now,
        );
        let b = Member::from_status("b".into(), &status("drain", 2, &[("busy", 90)], now), now);
        // Stale: its supervisor stopped refreshing (killed), so its job died with it.
        let stale = (HEARTBEAT * 3).as_secs() as i64 + 1;
        let c = Member::from_status(
            "c".into(),
            &status("run", stale, &[("busy", 500)], now),
            now,
        );
        // Stopped cleanly.
        let d = Member::from_status(
            "d".into(),
            &status("stopped", 0, &[("busy", 600)], now),
            now,
        );
        assert!(a.live && b.live && !c.live && !d.live);
        let (names, earliest) = busy(&[a.clone(), b, c.clone(), d]).unwrap();
        assert_eq!(names, vec!["a".to_string(), "b".to_string()]);
        assert_eq!(earliest, now - chrono::Duration::seconds(90));
        assert_eq!(busy(&[c]), None);
        let idle =
            Member::from_status("e".into(), &status("run", 0, &[("listening", 1)], now), now);
        assert_eq!(busy(&[idle]), None);
        assert_eq!(a.jobs.len(), 1);
    }

    #[test]
    fn reads_every_published_file_and_skips_foreign_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let now = crate::os::clocks::wall_now();
        std::fs::create_dir_all(dir(tmp.path())).unwrap();
        let p = path(tmp.path(), "r1", "runner-1");
        std::fs::write(
            &p,
            serde_json::to_vec(&status("run", 0, &[("busy", 3)], now)).unwrap(),
        )
        .unwrap();
        std::fs::write(dir(tmp.path()).join("junk.json"), b"{").unwrap();
        std::fs::write(dir(tmp.path()).join("notes.txt"), b"x").unwrap();
        let m = read(tmp.path(), now);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].name, "r1-runner-1");
        assert_eq!(m[0].hostname, "runner-1");
        assert!(busy(&m).is_some());
        assert!(read(&tmp.path().join("absent"), now).is_empty());
    }
}
