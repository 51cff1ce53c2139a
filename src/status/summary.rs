//! The exit summary of a run: what the board counted, printed by `supervisor run` as text
//! or as JSON once the slots have stopped.

use std::collections::BTreeMap;

use super::Board;

/// What happened during a run: the exit summary, printed as text or as JSON.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    pub jobs_completed: u64,
    /// Jobs whose listener ended mid-job.
    pub jobs_lost: u64,
    pub job_results: BTreeMap<String, u64>,
    pub registrations: u64,
    pub deregistrations: u64,
    /// Registrations an earlier run left in `deletions.json` for this one.
    pub deletions_inherited: u64,
    /// Registrations still to delete, left in `deletions.json` for the next start.
    pub deletions_pending: u64,
    pub ghosts_reaped: u64,
    pub strays_stopped: u64,
    pub listeners_started: u64,
    pub session_conflicts: u64,
    pub watchdog_fires: BTreeMap<String, u64>,
    pub api_requests: u64,
    pub exits: BTreeMap<String, u64>,
}

impl Summary {
    /// Registrations GitHub removed by itself: the ephemeral ones whose listener exited
    /// after its job (`job_done`).
    pub fn removed_by_github(&self) -> u64 {
        self.exits.get("job_done").copied().unwrap_or(0)
    }

    /// Registrations not accounted for: made (or inherited) but neither removed by GitHub,
    /// deleted, nor left for the next start. 0 unless something was lost track of.
    pub fn unaccounted(&self) -> i64 {
        (self.registrations + self.deletions_inherited) as i64
            - (self.removed_by_github() + self.deregistrations + self.deletions_pending) as i64
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |m: &BTreeMap<String, u64>| {
            if m.is_empty() {
                "none".to_string()
            } else {
                m.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            }
        };
        let job_done = self.removed_by_github();
        writeln!(f, "summary:")?;
        writeln!(
            f,
            "  jobs completed      {} ({})",
            self.jobs_completed,
            list(&self.job_results)
        )?;
        writeln!(f, "  jobs lost           {}", self.jobs_lost)?;
        writeln!(f, "  listeners started   {}", self.listeners_started)?;
        writeln!(f, "  listener exits      {}", list(&self.exits))?;
        if self.jobs_completed != job_done {
            writeln!(
                f,
                "    note: {} jobs completed but {job_done} listeners exited job_done: {}",
                self.jobs_completed,
                if self.jobs_completed > job_done {
                    "a listener that completed its job was stopped or failed before exiting by itself"
                } else {
                    "a listener exited job_done without printing its job's completion"
                }
            )?;
        }
        writeln!(f, "  registrations       {}", self.registrations)?;
        writeln!(f, "  deregistrations     {}", self.deregistrations)?;
        writeln!(f, "  ghosts reaped       {}", self.ghosts_reaped)?;
        writeln!(f, "  strays stopped      {}", self.strays_stopped)?;
        writeln!(f, "  session conflicts   {}", self.session_conflicts)?;
        writeln!(f, "  watchdog fires      {}", list(&self.watchdog_fires))?;
        writeln!(f, "  GitHub API requests {}", self.api_requests)?;
        // Every registration is accounted for.
        let inherited = if self.deletions_inherited > 0 {
            format!(" (+ {} left by an earlier run)", self.deletions_inherited)
        } else {
            String::new()
        };
        write!(
            f,
            "  accounting          {} registrations{inherited} = {job_done} removed by GitHub after their job + {} deleted by the supervisor + {} left for the next start",
            self.registrations, self.deregistrations, self.deletions_pending
        )?;
        if self.unaccounted() != 0 {
            write!(f, " ({} unaccounted)", self.unaccounted())?;
        }
        writeln!(f)
    }
}

impl Board {
    /// The exit summary, from the counts so far (called once the slots have stopped).
    pub fn summary(&self) -> Summary {
        let c = self.snapshot().counts;
        Summary {
            jobs_completed: c.jobs_completed,
            jobs_lost: c.jobs_lost,
            job_results: c.job_results,
            registrations: c.registrations,
            deregistrations: c.deregistrations,
            deletions_inherited: self.deletions_inherited(),
            deletions_pending: c.deletions_pending,
            ghosts_reaped: c.ghosts_reaped,
            strays_stopped: c.strays_stopped,
            listeners_started: c.listeners_started,
            session_conflicts: c.session_conflicts,
            watchdog_fires: c.watchdog_fires,
            api_requests: c.api_requests,
            exits: c.listener_exits,
        }
    }
}
