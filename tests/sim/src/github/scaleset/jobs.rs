//! Jobs of scale sets (reference 3.3, 9.6): routed to the first scale set (lowest id; the
//! real choice is unanswered, actions/scaleset#107) whose scope covers the repository and
//! whose labels include every label of the job; assigned on a poll within its capacity
//! (github.com) or made available for `acquirejobs` (GHES); taken by any idle runner of the
//! set (the oldest assignment first); completed by the runner, or canceled when the
//! assignment lapses and then re-assigned under a new `jobId`, same `workflowRunId`.
//!
//! Message times: those not set are left out, and `JobAssigned` carries no `queueTime`,
//! as in the live dump of 2026-07-26 (reference 3.3).

use super::*;

/// Where a job is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    /// Waiting for a scale set, or for a poll with room.
    Queued,
    /// GHES: announced with `JobAvailable`, waiting for `acquirejobs`.
    Available,
    /// Assigned to its scale set, waiting for a runner.
    Assigned,
    Running {
        runner_id: u64,
        runner_name: String,
    },
    Completed,
}

/// A job as the scale-set service keeps it.
#[derive(Debug, Clone)]
pub struct SsJob {
    /// Its identity in messages, a UUID; new on each re-assignment.
    pub job_id: String,
    /// The job id the fake runner and the Actions REST API use; the workflow run's too.
    pub sim_id: u64,
    /// 0 on github.com; from 10234 on in GHES mode (new on each re-assignment).
    pub runner_request_id: u64,
    pub set_id: Option<u64>,
    pub spec: JobSpec,
    /// `owner/repo`.
    pub repository: String,
    pub state: JobState,
    /// `succeeded`, `failed`, `canceled` once completed.
    pub result: Option<String>,
    /// How many times it was re-assigned after a lapse.
    pub reassignments: u32,
    pub queue_time: DateTime<Utc>,
    pub scale_set_assign_time: Option<DateTime<Utc>>,
    pub runner_assign_time: Option<DateTime<Utc>>,
    pub finish_time: Option<DateTime<Utc>>,
    pub(in crate::github) assigned_at: Option<Instant>,
    /// The session that saw it while announcing capacity 0 (zero-capacity blindness).
    pub(in crate::github) blind_to: Option<String>,
}

impl SsJob {
    pub(in crate::github) fn unroute(&mut self) {
        self.set_id = None;
        self.state = JobState::Queued;
        self.runner_request_id = 0;
        self.assigned_at = None;
        self.scale_set_assign_time = None;
        self.blind_to = None;
    }

    /// The job message of type `kind` (`JobMessageBase` plus the type's own keys).
    pub(in crate::github) fn message(&self, kind: &str, acquire_url: Option<String>) -> Value {
        let (owner, repo) = self
            .repository
            .split_once('/')
            .unwrap_or(("", &self.repository));
        let workflow = self.spec.workflow.as_deref().unwrap_or("ci");
        let mut v = json!({
            "messageType": kind,
            "runnerRequestId": self.runner_request_id,
            "repositoryName": repo,
            "ownerName": owner,
            "jobId": self.job_id,
            "jobWorkflowRef": format!("{}/.github/workflows/{}.yml@refs/heads/main", self.repository, workflow.to_lowercase()),
            "jobDisplayName": self.spec.name,
            "workflowRunId": self.sim_id,
            "eventName": "push",
            "requestLabels": self.spec.labels,
        });
        let ts = |t: &DateTime<Utc>| json!(t.to_rfc3339_opts(SecondsFormat::Secs, true));
        if kind != "JobAssigned" {
            v["queueTime"] = ts(&self.queue_time);
        }
        for (k, t) in [
            ("scaleSetAssignTime", &self.scale_set_assign_time),
            ("runnerAssignTime", &self.runner_assign_time),
            ("finishTime", &self.finish_time),
        ] {
            if let Some(t) = t {
                v[k] = ts(t);
            }
        }
        if let Some(url) = acquire_url {
            v["acquireJobUrl"] = json!(url);
        }
        if let JobState::Running {
            runner_id,
            runner_name,
        } = &self.state
        {
            v["runnerId"] = json!(runner_id);
            v["runnerName"] = json!(runner_name);
        }
        v
    }
}

/// Stands for the service URL in stored job messages until they are sent.
pub(in crate::github) const SERVICE: &str = "{service}";

/// Queue a job for whichever scale set matches (now or once one does); its sim id.
pub(in crate::github) fn enqueue(
    s: &mut State,
    opts: &ScaleSetOptions,
    repository: &str,
    spec: JobSpec,
) -> u64 {
    let id = s.next_job_id;
    s.next_job_id += 1;
    s.actions_jobs.insert(
        id,
        ActionsJob {
            id,
            run_id: id,
            run_attempt: 1,
            name: spec.name.clone(),
            status: "queued".into(),
            conclusion: None,
            runner_id: None,
            runner_name: None,
            labels: spec.labels.clone(),
            created_at: Utc::now(),
            started_at: None,
            completed_at: None,
            spec: spec.clone(),
        },
    );
    s.scalesets.jobs.push(SsJob {
        job_id: uuid(),
        sim_id: id,
        runner_request_id: 0,
        set_id: None,
        spec,
        repository: repository.to_string(),
        state: JobState::Queued,
        result: None,
        reassignments: 0,
        queue_time: Utc::now(),
        scale_set_assign_time: None,
        runner_assign_time: None,
        finish_time: None,
        assigned_at: None,
        blind_to: None,
    });
    route_queued(s, opts);
    id
}

fn covers(scope: &str, repository: &str) -> bool {
    let repo = repository.to_lowercase();
    match scope.split_once('/') {
        Some(("repos", r)) => r == repo,
        Some(("orgs", o)) => repo.split('/').next() == Some(o),
        _ => true,
    }
}

/// Give unrouted jobs a scale set; on GHES, announce them (`JobAvailable`).
pub(in crate::github) fn route_queued(s: &mut State, opts: &ScaleSetOptions) {
    for i in 0..s.scalesets.jobs.len() {
        let j = &s.scalesets.jobs[i];
        if j.set_id.is_some() || j.state != JobState::Queued || j.spec.labels.is_empty() {
            continue;
        }
        let found = s.scalesets.sets.values().find(|set| {
            covers(&set.scope, &j.repository)
                && j.spec
                    .labels
                    .iter()
                    .all(|l| set.labels.iter().any(|x| x.eq_ignore_ascii_case(l)))
        });
        let Some(set_id) = found.map(|set| set.id) else {
            continue;
        };
        s.scalesets.jobs[i].set_id = Some(set_id);
        if opts.ghes {
            make_available(s, i);
        }
    }
}

fn make_available(s: &mut State, i: usize) {
    let rr = s.scalesets.request_id_next();
    let j = &mut s.scalesets.jobs[i];
    j.runner_request_id = rr;
    j.state = JobState::Available;
    let set_id = j.set_id.expect("routed");
    let url = format!("{SERVICE}/_apis/runtime/runnerscalesets/{set_id}/acquirejobs");
    let body = j.message("JobAvailable", Some(url));
    push(s, set_id, false, body);
}

/// Put a job message in scale set `set_id`'s outbox.
pub(in crate::github) fn push(s: &mut State, set_id: u64, lifecycle: bool, body: Value) {
    if let Some(set) = s.scalesets.sets.get_mut(&set_id) {
        set.outbox.push(Event {
            at: Instant::now(),
            lifecycle,
            body,
        });
    }
}

/// A lifecycle message, prompt, late or missing as the test hints say.
fn push_lifecycle(s: &mut State, set_id: u64, delivery: Delivery, body: Value) {
    let Some(set) = s.scalesets.sets.get_mut(&set_id) else {
        return;
    };
    let now = Instant::now();
    let e = Event {
        at: now,
        lifecycle: true,
        body,
    };
    match delivery {
        Delivery::Prompt => set.outbox.push(e),
        Delivery::Late { ms } => set.delayed.push((now + Duration::from_millis(ms), e)),
        Delivery::Missing => {}
    }
}

/// Job `i` is assigned to its scale set now (`JobAssigned`).
pub(in crate::github) fn assign(s: &mut State, i: usize) {
    let j = &mut s.scalesets.jobs[i];
    j.state = JobState::Assigned;
    j.assigned_at = Some(Instant::now());
    j.scale_set_assign_time = Some(Utc::now());
    let (set_id, body) = (j.set_id.expect("routed"), j.message("JobAssigned", None));
    push(s, set_id, false, body);
}

/// github.com: assign queued jobs of `set_id` while assigned-and-unfinished < `capacity`.
pub(in crate::github) fn assign_within(s: &mut State, set_id: u64, sid: &str, capacity: i64) {
    let mut active = s
        .scalesets
        .jobs
        .iter()
        .filter(|j| j.set_id == Some(set_id))
        .filter(|j| matches!(j.state, JobState::Assigned | JobState::Running { .. }))
        .count() as i64;
    for i in 0..s.scalesets.jobs.len() {
        if active >= capacity {
            break;
        }
        let j = &s.scalesets.jobs[i];
        if j.set_id == Some(set_id)
            && j.state == JobState::Queued
            && j.blind_to.as_deref() != Some(sid)
        {
            assign(s, i);
            active += 1;
        }
    }
}

/// The broker's hook: `Some` when runner `rid` is a scale set's, with the oldest job
/// assigned to its set (now running on it), if any.
pub(in crate::github) fn runner_pick(
    s: &mut State,
    opts: &ScaleSetOptions,
    rid: u64,
) -> Option<Option<(u64, JobSpec)>> {
    let set_id = *s.scalesets.runners.get(&rid)?;
    tick(s, opts);
    let name = s
        .runners
        .get(&rid)
        .map(|r| r.name.clone())
        .unwrap_or_default();
    let Some(i) = s
        .scalesets
        .jobs
        .iter()
        .position(|j| j.set_id == Some(set_id) && j.state == JobState::Assigned)
    else {
        return Some(None);
    };
    let j = &mut s.scalesets.jobs[i];
    j.state = JobState::Running {
        runner_id: rid,
        runner_name: name,
    };
    j.runner_assign_time = Some(Utc::now());
    let (sim_id, spec, body) = (j.sim_id, j.spec.clone(), j.message("JobStarted", None));
    let delivery = s.scalesets.hints.started;
    push_lifecycle(s, set_id, delivery, body);
    Some(Some((sim_id, spec)))
}

/// The runner's result as `JobCompleted` says it.
fn result_word(result: &str) -> String {
    match result {
        "Succeeded" | "SucceededWithIssues" => "succeeded".into(),
        "Failed" | "Abandoned" => "failed".into(),
        "Canceled" => "canceled".into(),
        other => other.to_lowercase(),
    }
}

/// The broker's hook: the job with sim id `sim_id` ended with the runner's `result`.
pub(in crate::github) fn job_finished(s: &mut State, sim_id: u64, result: &str) {
    let Some(i) = s
        .scalesets
        .jobs
        .iter()
        .position(|j| j.sim_id == sim_id && matches!(j.state, JobState::Running { .. }))
    else {
        return;
    };
    let j = &mut s.scalesets.jobs[i];
    j.finish_time = Some(Utc::now());
    let word = result_word(result);
    let mut body = j.message("JobCompleted", None);
    body["result"] = json!(word);
    j.result = Some(word);
    j.state = JobState::Completed;
    let (rid, set_id) = (body["runnerId"].as_u64().unwrap_or(0), j.set_id);
    s.scalesets.runners.remove(&rid);
    if let Some(set_id) = set_id {
        let delivery = s.scalesets.hints.completed;
        push_lifecycle(s, set_id, delivery, body);
    }
}

/// The job's lock ran out (its runner died): GitHub concludes it failed.
pub(in crate::github) fn job_abandoned(s: &mut State, sim_id: u64) {
    job_finished(s, sim_id, "Abandoned");
}

/// Whether a runner of `set_id` holds a job.
pub(in crate::github) fn has_busy_runner(s: &State, set_id: u64) -> bool {
    s.scalesets
        .jobs
        .iter()
        .any(|j| j.set_id == Some(set_id) && matches!(j.state, JobState::Running { .. }))
}

/// Lapse every assignment older than `lapse_after`.
pub(in crate::github) fn lapse_due(s: &mut State, opts: &ScaleSetOptions, now: Instant) {
    while let Some(i) = s.scalesets.jobs.iter().position(|j| {
        j.state == JobState::Assigned
            && j.assigned_at
                .is_some_and(|t| now.duration_since(t) >= opts.lapse_after)
    }) {
        lapse(s, opts, i);
    }
}

/// Job `i`'s assignment lapses: `JobCompleted{canceled}` with no runner, then, up to
/// `max_reassignments` times, the same job again under a new `jobId`.
pub(in crate::github) fn lapse(s: &mut State, opts: &ScaleSetOptions, i: usize) {
    let j = &mut s.scalesets.jobs[i];
    j.state = JobState::Completed;
    j.finish_time = Some(Utc::now());
    j.result = Some("canceled".into());
    let mut body = j.message("JobCompleted", None);
    body["result"] = json!("canceled");
    body["runnerId"] = json!(0);
    body["runnerName"] = json!("");
    let (set_id, sim_id) = (j.set_id.expect("assigned jobs are routed"), j.sim_id);
    let again = (j.reassignments < opts.max_reassignments).then(|| SsJob {
        job_id: uuid(),
        state: JobState::Queued,
        result: None,
        reassignments: j.reassignments + 1,
        runner_request_id: 0,
        scale_set_assign_time: None,
        runner_assign_time: None,
        finish_time: None,
        assigned_at: None,
        ..j.clone()
    });
    push(s, set_id, true, body);
    match again {
        Some(next) => {
            s.scalesets.jobs.insert(i + 1, next);
            if opts.ghes {
                make_available(s, i + 1);
            }
        }
        None => super::super::conclude(s, sim_id, "Canceled"),
    }
}
