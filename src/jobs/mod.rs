//! Every job a slot runs (issue 18 §1): who it is (the runner's job hooks report the
//! job's repository, run, attempt, job and workflow to the supervisor over its control
//! socket) and what became of it, kept as records in the state directory.
//!
//! - [`hooks`]: the hook scripts the listeners get, and the `supervisor hook` client.
//! - [`store`]: the records, in an embedded crash-safe store, bounded by count and age.
//! - [`protect`]: the job's `Runner.Worker` made the OOM killer's first choice.

pub mod hooks;
pub mod protect;
pub mod rerun;
pub mod store;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Who a job is, as its hooks tell (`GITHUB_*` and `RUNNER_NAME` of the job's environment).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct JobIdentity {
    /// `owner/repo`.
    pub repository: String,
    pub run_id: u64,
    pub run_attempt: u32,
    /// The job's key in the workflow (`GITHUB_JOB`).
    pub job: String,
    pub workflow: String,
    /// The runner it ran on (`RUNNER_NAME`).
    pub runner: String,
}

impl JobIdentity {
    /// From the query the hook sends (`repository=…&run_id=…`): `None` when the runner
    /// name or the repository is missing.
    pub fn from_query(q: &str) -> Option<JobIdentity> {
        let mut id = JobIdentity::default();
        for (k, v) in form_urlencoded::parse(q.as_bytes()) {
            match k.as_ref() {
                "repository" => id.repository = v.into_owned(),
                "run_id" => id.run_id = v.parse().unwrap_or(0),
                "run_attempt" => id.run_attempt = v.parse().unwrap_or(0),
                "job" => id.job = v.into_owned(),
                "workflow" => id.workflow = v.into_owned(),
                "runner" => id.runner = v.into_owned(),
                _ => {}
            }
        }
        (!id.runner.is_empty() && !id.repository.is_empty()).then_some(id)
    }

    /// The query the hook sends.
    pub fn to_query(&self) -> String {
        form_urlencoded::Serializer::new(String::new())
            .append_pair("repository", &self.repository)
            .append_pair("run_id", &self.run_id.to_string())
            .append_pair("run_attempt", &self.run_attempt.to_string())
            .append_pair("job", &self.job)
            .append_pair("workflow", &self.workflow)
            .append_pair("runner", &self.runner)
            .finish()
    }
}

/// Why a job was lost with its listener: `suspend` (the host slept past the job lease),
/// `oom` (SIGKILL, and the kernel counted an OOM kill in this cgroup during the job),
/// `killed` by another SIGKILL, `stalled` (the watchdog replaced a busy listener), `stop_timeout`
/// (a drain ran out), otherwise `crashed`.
pub fn lost_cause(
    reason: crate::policy::exit::ExitReason,
    ended: crate::policy::exit::Ended,
    oom_killed: bool,
) -> &'static str {
    use crate::policy::exit::{Ended, ExitReason};
    match (reason, ended) {
        // Only a suspend past the job lease recycles a busy listener.
        (ExitReason::Recycled, _) => "suspend",
        (ExitReason::Watchdog, _) => "stalled",
        // Our stop at the drain's end (or a forced stop): the runner cancels the job and
        // exits as after a job, or is stopped.
        (ExitReason::Stopped | ExitReason::JobDone, _) => "stop_timeout",
        (_, Ended::Signal(9)) if oom_killed => "oom",
        (_, Ended::Signal(9)) => "killed",
        _ => "crashed",
    }
}

/// How a job ended.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Still running (or the supervisor has not seen it end).
    Running,
    /// Ended by itself, with the runner's result (`Succeeded`, `Failed`, ...).
    Done { result: String },
    /// Lost with its host: why, and what was done about it.
    Lost { cause: String, action: String },
}

/// One job's record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobRecord {
    /// The record's number in this state directory.
    pub id: u64,
    pub slot: usize,
    pub runner: String,
    /// The name the listener printed (`Running job: …`).
    pub display_name: String,
    /// Who it is, once its hook said.
    pub identity: Option<JobIdentity>,
    /// GitHub's id of the job, once looked up.
    pub job_id: Option<u64>,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub outcome: Outcome,
    /// A lost job's re-run, once one was planned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerun: Option<Rerun>,
}

/// A lost job's re-run (issue 18 §3), as far as it went; kept in the job's record, so the
/// queue of pending re-runs is the records whose re-run still waits, and survives restarts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Rerun {
    pub state: RerunState,
    /// When it was planned (the job was lost).
    pub since: DateTime<Utc>,
    /// While waiting: when the run is checked next.
    #[serde(default)]
    pub next_check_at: Option<DateTime<Utc>>,
    /// Checks of the run so far.
    #[serde(default)]
    pub checks: u32,
    /// When the run was first seen completed.
    #[serde(default)]
    pub run_completed_at: Option<DateTime<Utc>>,
    /// When the re-run was requested from GitHub.
    #[serde(default)]
    pub requested_at: Option<DateTime<Utc>>,
}

/// Where a re-run is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum RerunState {
    /// Waiting for the run to complete (GitHub re-runs only completed runs).
    Waiting,
    /// Asked for; a restart finds out from the run whether GitHub made the attempt.
    Requested,
    /// GitHub made the next attempt.
    Accepted { attempt: u32 },
    /// GitHub said no: its status and message, and the fix.
    Refused {
        status: u16,
        message: String,
        fix: String,
    },
    /// Not re-run, and why (the run did not complete in time, the job succeeded after
    /// all, `max_reruns` or the hourly budget reached, ...).
    GivenUp { why: String },
    /// Its workflow is in `never_rerun`: only recorded.
    Skipped { why: String },
}

impl RerunState {
    /// Still to be done.
    pub fn pending(&self) -> bool {
        matches!(self, RerunState::Waiting | RerunState::Requested)
    }

    /// The metric's `result` label once done.
    pub fn result(&self) -> Option<&'static str> {
        match self {
            RerunState::Waiting | RerunState::Requested => None,
            RerunState::Accepted { .. } => Some("accepted"),
            RerunState::Refused { .. } => Some("refused"),
            RerunState::GivenUp { .. } => Some("given_up"),
            RerunState::Skipped { .. } => Some("skipped"),
        }
    }

    /// What was done about the lost job, in words (its record's `action`).
    pub fn action(&self) -> String {
        match self {
            RerunState::Waiting => "re-run once its run completes".into(),
            RerunState::Requested => "re-run requested".into(),
            RerunState::Accepted { attempt } => format!("re-run as attempt {attempt}"),
            RerunState::Refused {
                status, message, ..
            } => format!("re-run refused ({status}): {message}"),
            RerunState::GivenUp { why } => format!("not re-run: {why}"),
            RerunState::Skipped { why } => format!("recorded only: {why}"),
        }
    }
}

impl JobRecord {
    /// Seconds from its start to its end, once ended.
    pub fn duration_s(&self) -> Option<f64> {
        self.ended_at
            .map(|e| (e - self.started_at).num_milliseconds() as f64 / 1000.0)
    }

    /// Whether it was lost.
    pub fn lost(&self) -> bool {
        matches!(self.outcome, Outcome::Lost { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_goes_through_the_query_unchanged() {
        let id = JobIdentity {
            repository: "octo/app".into(),
            run_id: 9_876_543_210,
            run_attempt: 2,
            job: "e2e tests".into(),
            workflow: "CI & deploy/ü".into(),
            runner: "ci-host-0-abc123".into(),
        };
        assert_eq!(JobIdentity::from_query(&id.to_query()), Some(id));
        assert_eq!(JobIdentity::from_query("repository=octo%2Fapp"), None);
    }
}

/// Find the GitHub id of the job `of` describes (the job of its run attempt whose
/// `runner_name` is its runner): one API call; said in the log and kept in its record.
pub async fn look_up(
    gh: crate::github::GithubClient,
    journal: std::sync::Arc<Journal>,
    slot: usize,
    of: JobIdentity,
) {
    match gh
        .attempt_jobs(&of.repository, of.run_id, of.run_attempt)
        .await
    {
        Ok(jobs) => match jobs
            .iter()
            .find(|j| j.runner_name.as_deref() == Some(of.runner.as_str()))
        {
            Some(j) => {
                tracing::info!(event = "job_looked_up", slot, job_id = j.id, repository = %of.repository, run_id = of.run_id, run_attempt = of.run_attempt, status = %j.status, "job {} of run {} attempt {} is GitHub's job {}", of.job, of.run_id, of.run_attempt, j.id);
                journal.job_id(slot, of.run_id, of.run_attempt, j.id);
            }
            None => {
                tracing::warn!(event = "job_lookup_failed", slot, repository = %of.repository, run_id = of.run_id, "no job of run {} attempt {} ran on {}", of.run_id, of.run_attempt, of.runner)
            }
        },
        Err(e) => {
            tracing::warn!(event = "job_lookup_failed", slot, repository = %of.repository, run_id = of.run_id, error = %e, "cannot look up job {} of run {}: {e}", of.job, of.run_id)
        }
    }
}

/// A change to the records, applied in order by the journal's own thread (a store commit
/// waits for the disk; the slots never do).
#[derive(Debug)]
enum Op {
    Start {
        slot: usize,
        runner: String,
        display_name: String,
        at: DateTime<Utc>,
    },
    Identify {
        slot: usize,
        identity: JobIdentity,
    },
    End {
        slot: usize,
        outcome: Outcome,
        at: DateTime<Utc>,
    },
    JobId {
        slot: usize,
        run_id: u64,
        run_attempt: u32,
        job_id: u64,
    },
}

/// The job records as the slots write them: one open record per busy slot.
pub struct Journal {
    store: std::sync::Arc<store::JobStore>,
    reruns: Option<std::sync::Arc<rerun::Reruns>>,
    writer: std::sync::Arc<std::sync::Mutex<Writer>>,
}

impl Journal {
    /// The journal over `store`, written on the files thread (`os::files`); lost jobs get
    /// their re-run planned by `reruns`.
    pub fn start(
        store: std::sync::Arc<store::JobStore>,
        reruns: Option<std::sync::Arc<rerun::Reruns>>,
    ) -> Journal {
        let writer = Writer {
            store: store.clone(),
            reruns: reruns.clone(),
            open: Default::default(),
        };
        Journal {
            store,
            reruns,
            writer: std::sync::Arc::new(std::sync::Mutex::new(writer)),
        }
    }

    /// The re-run policy, when lost jobs are re-run at all.
    pub fn reruns(&self) -> Option<&rerun::Reruns> {
        self.reruns.as_deref()
    }

    /// The same, shared.
    pub fn reruns_arc(&self) -> Option<std::sync::Arc<rerun::Reruns>> {
        self.reruns.clone()
    }

    /// The store the records are in.
    pub fn store(&self) -> std::sync::Arc<store::JobStore> {
        self.store.clone()
    }

    /// Written on the files thread, in order (`os::files`).
    fn send(&self, op: Op) {
        let w = self.writer.clone();
        crate::os::files::submit(move || {
            apply(&mut w.lock().unwrap_or_else(|p| p.into_inner()), op)
        });
    }

    /// Slot `slot`'s listener took a job.
    pub fn started(&self, slot: usize, runner: &str, display_name: &str) {
        self.send(Op::Start {
            slot,
            runner: runner.into(),
            display_name: display_name.into(),
            at: crate::os::clocks::wall_now(),
        });
    }

    /// Its hook said who it is.
    pub fn identified(&self, slot: usize, identity: JobIdentity) {
        self.send(Op::Identify { slot, identity });
    }

    /// It ended: by itself, or lost.
    pub fn ended(&self, slot: usize, outcome: Outcome) {
        self.send(Op::End {
            slot,
            outcome,
            at: crate::os::clocks::wall_now(),
        });
    }

    /// GitHub's id of slot `slot`'s job of run `run_id` attempt `run_attempt`, looked up.
    pub fn job_id(&self, slot: usize, run_id: u64, run_attempt: u32, job_id: u64) {
        self.send(Op::JobId {
            slot,
            run_id,
            run_attempt,
            job_id,
        });
    }

    /// The records (read directly: the store serves readers beside its writer).
    pub fn list(&self, lost_only: bool) -> Result<Vec<JobRecord>, store::StoreError> {
        self.store.list(lost_only)
    }
}

/// The journal's state, on the files thread: the store, the re-run policy, and each busy
/// slot's open record.
struct Writer {
    store: std::sync::Arc<store::JobStore>,
    reruns: Option<std::sync::Arc<rerun::Reruns>>,
    open: std::collections::HashMap<usize, u64>,
}

fn apply(w: &mut Writer, op: Op) {
    let (store, reruns, open) = (&*w.store, w.reruns.as_deref(), &mut w.open);
    let warn = |e: store::StoreError| tracing::warn!(event = "jobs_store_failed", error = %e, "cannot write a job record: {e}");
    match op {
        Op::Start {
            slot,
            runner,
            display_name,
            at,
        } => {
            let rec = JobRecord {
                id: 0,
                slot,
                runner,
                display_name,
                identity: None,
                job_id: None,
                started_at: at,
                ended_at: None,
                outcome: Outcome::Running,
                rerun: None,
            };
            match store.add(rec, at) {
                Ok(id) => {
                    open.insert(slot, id);
                }
                Err(e) => warn(e),
            }
        }
        Op::Identify { slot, identity } => {
            if let Some(&id) = open.get(&slot) {
                if let Err(e) = store.update(id, |r| r.identity = Some(identity)) {
                    warn(e)
                }
            }
        }
        Op::JobId {
            slot,
            run_id,
            run_attempt,
            job_id,
        } => {
            let found = store.list(false).ok().and_then(|all| {
                all.into_iter().rev().find(|r| {
                    r.slot == slot
                        && r.identity
                            .as_ref()
                            .is_some_and(|i| i.run_id == run_id && i.run_attempt == run_attempt)
                })
            });
            if let Some(r) = found {
                if let Err(e) = store.update(r.id, |r| r.job_id = Some(job_id)) {
                    warn(e)
                }
            }
        }
        Op::End { slot, outcome, at } => {
            if let Some(id) = open.remove(&slot) {
                let r = store.update(id, |r| {
                    r.ended_at = Some(at);
                    r.outcome = outcome;
                    if let Some(p) = reruns {
                        p.plan(r, at);
                    }
                });
                if let Err(e) = r {
                    warn(e)
                }
                if let Some(p) = reruns {
                    p.wake();
                }
            }
        }
    }
}
