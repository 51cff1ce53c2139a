//! The jobs as the Actions REST API shows them (`actions-runs-openapi.json`): each
//! enqueued job is its own run, attempt 1, queued, then in progress on the runner that took
//! it, then completed with the conclusion of the runner's result.

use chrono::{DateTime, Utc};

use super::State;

/// A job as `GET …/actions/runs/{run_id}/attempts/{n}/jobs` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionsJob {
    pub id: u64,
    pub run_id: u64,
    pub run_attempt: u32,
    pub name: String,
    /// `queued`, `in_progress`, `completed`.
    pub status: String,
    /// Once completed: `success`, `failure`, `cancelled`.
    pub conclusion: Option<String>,
    pub runner_id: Option<u64>,
    pub runner_name: Option<String>,
    pub labels: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
}

impl ActionsJob {
    /// Completed, with the conclusion GitHub gives the runner's result (a job whose runner
    /// vanished is a `failure`: "The self-hosted runner lost communication with the server").
    fn complete(&mut self, result: &str) {
        self.status = "completed".into();
        self.conclusion = Some(
            match result {
                "Succeeded" | "SucceededWithIssues" => "success",
                "Canceled" => "cancelled",
                "Skipped" => "skipped",
                _ => "failure",
            }
            .into(),
        );
        self.completed_at = Some(Utc::now());
    }
}

/// Mark job `id` completed with `result`, as the Actions API shows it.
pub(crate) fn conclude(s: &mut State, id: u64, result: &str) {
    if let Some(j) = s.actions_jobs.get_mut(&id) {
        j.complete(result);
    }
}
