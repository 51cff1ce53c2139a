//! The jobs as the Actions REST API shows them (`actions-runs-openapi.json`): each
//! enqueued job is its own run, attempt 1, queued, then in progress on the runner that took
//! it, then completed with the conclusion of the runner's result.

use chrono::{DateTime, Utc};

use std::time::Duration;

use super::{CompletedJob, JobSpec, State};

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
    /// What it runs (a re-run enqueues it again).
    pub spec: super::JobSpec,
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

/// GitHub's own example of a workflow run (`components/examples/workflow-run` of the
/// contract), which the runs the fake serves are made from.
fn example_run() -> serde_json::Value {
    static SPEC: &str = include_str!("../../openapi/actions-runs-openapi.json");
    static RUN: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    RUN.get_or_init(|| {
        let spec: serde_json::Value = serde_json::from_str(SPEC).expect("the contract parses");
        spec["components"]["examples"]["workflow-run"]["value"].clone()
    })
    .clone()
}

/// A run's latest attempt, and its status and conclusion from that attempt's jobs:
/// completed when every job is, then `failure` when one failed, `cancelled` when one was,
/// otherwise `success`.
pub(crate) fn run_state(
    s: &State,
    run_id: u64,
) -> Option<(u32, &'static str, Option<&'static str>)> {
    let latest = s
        .actions_jobs
        .values()
        .filter(|j| j.run_id == run_id)
        .map(|j| j.run_attempt)
        .max()?;
    let jobs: Vec<&ActionsJob> = s
        .actions_jobs
        .values()
        .filter(|j| j.run_id == run_id && j.run_attempt == latest)
        .collect();
    if jobs.iter().all(|j| j.status == "queued") {
        return Some((latest, "queued", None));
    }
    if jobs.iter().any(|j| j.status != "completed") {
        return Some((latest, "in_progress", None));
    }
    let has = |c: &str| jobs.iter().any(|j| j.conclusion.as_deref() == Some(c));
    let conclusion = if has("failure") {
        "failure"
    } else if has("cancelled") {
        "cancelled"
    } else {
        "success"
    };
    Some((latest, "completed", Some(conclusion)))
}

/// `GET /repos/{owner}/{repo}/actions/runs/{run_id}` (`actions-runs-openapi.json`).
pub(super) fn workflow_run(
    shared: &super::Shared,
    owner: &str,
    repo: &str,
    run: &str,
) -> super::Resp {
    use super::{basic_error, json_resp};
    use hyper::StatusCode;
    use serde_json::json;
    let Ok(run_id) = run.parse::<u64>() else {
        return basic_error(StatusCode::NOT_FOUND, "Not Found");
    };
    let s = shared.lock();
    let Some((attempt, status, conclusion)) = run_state(&s, run_id) else {
        return basic_error(StatusCode::NOT_FOUND, "Not Found");
    };
    let first = s.actions_jobs.values().find(|j| j.run_id == run_id);
    let workflow = first
        .and_then(|j| j.spec.workflow.clone())
        .unwrap_or_else(|| "CI".into());
    let ts = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let created = first.map_or_else(Utc::now, |j| j.created_at);
    let updated = s
        .actions_jobs
        .values()
        .filter(|j| j.run_id == run_id)
        .filter_map(|j| j.completed_at.or(j.started_at))
        .max()
        .unwrap_or(created);
    let base = &shared.base_url;
    let api = format!("{base}/repos/{owner}/{repo}/actions/runs/{run_id}");
    let mut v = example_run();
    for (k, val) in [
        ("id", json!(run_id)),
        ("name", json!(workflow)),
        ("run_number", json!(run_id)),
        ("run_attempt", json!(attempt)),
        ("status", json!(status)),
        ("conclusion", json!(conclusion)),
        ("url", json!(api)),
        (
            "html_url",
            json!(format!(
                "https://github.com/{owner}/{repo}/actions/runs/{run_id}"
            )),
        ),
        ("jobs_url", json!(format!("{api}/jobs"))),
        ("logs_url", json!(format!("{api}/logs"))),
        ("cancel_url", json!(format!("{api}/cancel"))),
        ("rerun_url", json!(format!("{api}/rerun"))),
        ("artifacts_url", json!(format!("{api}/artifacts"))),
        (
            "previous_attempt_url",
            if attempt > 1 {
                json!(format!("{api}/attempts/{}", attempt - 1))
            } else {
                serde_json::Value::Null
            },
        ),
        ("created_at", json!(ts(created))),
        ("updated_at", json!(ts(updated))),
        ("run_started_at", json!(ts(created))),
    ] {
        v[k] = val;
    }
    json_resp(StatusCode::OK, &v)
}

/// `POST /repos/{owner}/{repo}/actions/jobs/{job_id}/rerun`: 201 with an empty object, and
/// the run's next attempt, in which the job is queued again; 403 while the run has not
/// completed (the Actions permission was checked by the gate); 404 for a job it does not know.
pub(super) fn rerun_job(
    shared: &super::Shared,
    _owner: &str,
    _repo: &str,
    job: &str,
) -> super::Resp {
    use super::{basic_error, json_resp};
    use hyper::StatusCode;
    let Ok(job_id) = job.parse::<u64>() else {
        return basic_error(StatusCode::NOT_FOUND, "Not Found");
    };
    let mut s = shared.lock();
    let Some(j) = s.actions_jobs.get(&job_id).cloned() else {
        return basic_error(StatusCode::NOT_FOUND, "Not Found");
    };
    let Some((latest, "completed", _)) = run_state(&s, j.run_id) else {
        return basic_error(StatusCode::FORBIDDEN, "This workflow is already running");
    };
    let id = s.next_job_id;
    s.next_job_id += 1;
    s.actions_jobs.insert(
        id,
        ActionsJob {
            id,
            run_attempt: latest + 1,
            status: "queued".into(),
            conclusion: None,
            runner_id: None,
            runner_name: None,
            created_at: Utc::now(),
            started_at: None,
            completed_at: None,
            ..j.clone()
        },
    );
    s.queue.push_back((id, j.spec.clone()));
    s.reruns.push((j.run_id, job_id, latest + 1));
    json_resp(StatusCode::CREATED, &serde_json::json!({}))
}

pub(crate) fn enqueue_jobs(s: &mut State, job: JobSpec, count: usize) {
    for _ in 0..count {
        let id = s.next_job_id;
        s.next_job_id += 1;
        s.actions_jobs.insert(
            id,
            ActionsJob {
                id,
                run_id: id,
                run_attempt: 1,
                name: job.name.clone(),
                status: "queued".into(),
                conclusion: None,
                runner_id: None,
                runner_name: None,
                labels: job.labels.clone(),
                created_at: Utc::now(),
                started_at: None,
                completed_at: None,
                spec: job.clone(),
            },
        );
        s.queue.push_back((id, job.clone()));
    }
}

/// Abandon jobs whose lock expired: the service gives up on a runner that died mid-job.
pub(crate) fn expire_locks(s: &mut State, timeout: Duration) {
    let expired: Vec<(u64, Duration)> = s
        .locks
        .iter()
        .filter(|(_, t)| t.elapsed() > timeout)
        .map(|(id, t)| (*id, t.elapsed() - timeout))
        .collect();
    for (jid, ago) in expired {
        s.locks.remove(&jid);
        if let Some((rid, job)) = s.running.remove(&jid) {
            let name = s
                .runners
                .get(&rid)
                .map(|r| r.name.clone())
                .unwrap_or_default();
            if let Some(r) = s.runners.get_mut(&rid) {
                r.busy = false;
                if let Some(sid) = r.session.take() {
                    s.sessions.remove(&sid);
                }
            }
            s.completed.push(CompletedJob {
                job_id: jid,
                name: job.name,
                runner: name,
                result: "Abandoned".into(),
            });
            conclude(s, jid, "Abandoned");
            super::scaleset::job_abandoned(s, jid);
            // Completed when the lock ran out, whenever this request noticed it.
            if let Some(j) = s.actions_jobs.get_mut(&jid) {
                j.completed_at =
                    Some(Utc::now() - chrono::Duration::from_std(ago).unwrap_or_default());
            }
        }
    }
}
