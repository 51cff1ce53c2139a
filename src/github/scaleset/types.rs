//! The runner scale-set service's JSON, as `scaleset-protocol.md` documents it (§1.4,
//! §2, §3): camelCase keys, Azure-DevOps list envelopes, and the queue's message
//! envelope whose `body` is a JSON *string* holding an array of job messages.
//!
//! Parsing is lenient where the service has been seen to vary: unknown keys are ignored,
//! an empty `body` (or an empty 200) is no jobs, an unknown job `messageType` is kept as
//! [`JobMessage::Unknown`] and skipped, and a year-1 timestamp is absent.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// `POST {api}/actions/runner-registration` (§1.4): the service URL and the admin JWT.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct AdminConnection {
    pub url: String,
    pub token: String,
}

/// An Azure-DevOps list: `{"count": N, "value": [...]}`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct List<T> {
    #[serde(default)]
    pub count: u64,
    #[serde(default = "Vec::new")]
    pub value: Vec<T>,
}

/// A runner group (§2.1).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RunnerGroup {
    pub id: u64,
    pub name: String,
    #[serde(default)]
    pub is_default_group: bool,
}

/// A label of a scale set (§2.2).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Label {
    pub name: String,
    #[serde(rename = "type", default)]
    pub kind: String,
}

/// A scale set (§2.2), as far as the supervisor reads it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RunnerScaleSet {
    pub id: u64,
    pub name: String,
    #[serde(default)]
    pub runner_group_id: u64,
    #[serde(default)]
    pub labels: Vec<Label>,
    #[serde(default)]
    pub statistics: Option<Statistics>,
}

/// What the service says of a scale set's jobs and runners (§3.2).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Statistics {
    #[serde(default)]
    pub total_available_jobs: u64,
    #[serde(default)]
    pub total_acquired_jobs: u64,
    /// Assigned to the set and not finished, waiting or running.
    #[serde(default)]
    pub total_assigned_jobs: u64,
    #[serde(default)]
    pub total_running_jobs: u64,
    #[serde(default)]
    pub total_registered_runners: u64,
    #[serde(default)]
    pub total_busy_runners: u64,
    #[serde(default)]
    pub total_idle_runners: u64,
}

/// A message session (§2.3, §2.5).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    pub session_id: String,
    #[serde(default)]
    pub owner_name: String,
    #[serde(default)]
    pub runner_scale_set: Option<RunnerScaleSet>,
    /// Validated: the service once answered with an empty one (ARC#4370).
    #[serde(default)]
    pub message_queue_url: String,
    #[serde(default)]
    pub message_queue_access_token: String,
    /// Required: a session without statistics is refused (as the Go listener does).
    #[serde(default)]
    pub statistics: Option<Statistics>,
}

impl Session {
    /// Why this session cannot be used, if it cannot.
    pub fn unusable(&self) -> Option<&'static str> {
        if self.session_id.is_empty() {
            Some("the session has no sessionId")
        } else if !self.message_queue_url.starts_with("http") {
            Some("the session's messageQueueUrl is empty or not a URL")
        } else if self.message_queue_access_token.is_empty() {
            Some("the session has no messageQueueAccessToken")
        } else if self.statistics.is_none() {
            Some("the session has no statistics")
        } else {
            None
        }
    }
}

/// A message from the queue (§3.1): its id, and the job messages of its body.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub id: u64,
    /// `RunnerScaleSetJobMessages`; anything else is kept and its body skipped.
    pub kind: String,
    pub jobs: Vec<JobMessage>,
    pub statistics: Option<Statistics>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    message_id: u64,
    #[serde(default)]
    message_type: String,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    statistics: Option<Statistics>,
}

/// The message type whose body carries job messages.
pub const JOB_MESSAGES: &str = "RunnerScaleSetJobMessages";

/// Parse a 200 from the queue: `Ok(None)` for an empty body (seen live, ARC#4285).
pub fn parse_message(text: &str) -> Result<Option<Message>, String> {
    let text = text.trim_start_matches('\u{feff}').trim();
    if text.is_empty() {
        return Ok(None);
    }
    let e: Envelope =
        serde_json::from_str(text).map_err(|e| format!("a queue message that is not JSON: {e}"))?;
    let jobs = match e.body.as_deref().map(str::trim) {
        Some(b) if !b.is_empty() && e.message_type == JOB_MESSAGES => {
            let raw: Vec<serde_json::Value> = serde_json::from_str(b).map_err(|err| {
                format!(
                    "message {}: its body is not a JSON array: {err}",
                    e.message_id
                )
            })?;
            raw.into_iter().map(JobMessage::from_value).collect()
        }
        _ => vec![],
    };
    Ok(Some(Message {
        id: e.message_id,
        kind: e.message_type,
        jobs,
        statistics: e.statistics,
    }))
}

/// What every job message carries (§3.3).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JobInfo {
    /// A UUID string: the job's identity (never `runnerRequestId`, 0 on github.com).
    #[serde(default)]
    pub job_id: String,
    #[serde(default)]
    pub runner_request_id: i64,
    #[serde(default)]
    pub repository_name: String,
    #[serde(default)]
    pub owner_name: String,
    #[serde(default)]
    pub job_workflow_ref: String,
    #[serde(default)]
    pub job_display_name: String,
    #[serde(default)]
    pub workflow_run_id: u64,
    #[serde(default)]
    pub event_name: String,
    #[serde(default)]
    pub request_labels: Vec<String>,
    #[serde(default, deserialize_with = "maybe_time")]
    pub queue_time: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "maybe_time")]
    pub scale_set_assign_time: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "maybe_time")]
    pub runner_assign_time: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "maybe_time")]
    pub finish_time: Option<DateTime<Utc>>,
}

/// A job message of a message's body.
#[derive(Debug, Clone, PartialEq)]
pub enum JobMessage {
    /// GHES and older backends: to be acquired (`acquirejobs`) before it is assigned.
    Available { job: JobInfo, acquire_url: String },
    /// Assigned to the scale set: a runner is wanted (github.com sends this directly).
    Assigned { job: JobInfo },
    /// A runner of the set took it (a hint: it may come late or never).
    Started {
        job: JobInfo,
        runner_id: u64,
        runner_name: String,
    },
    /// It ended (a hint too); `canceled` also for an assignment that lapsed unserved.
    Completed {
        job: JobInfo,
        result: String,
        runner_id: u64,
        runner_name: String,
    },
    /// A `messageType` this build does not know: skipped.
    Unknown { kind: String },
}

impl JobMessage {
    fn from_value(v: serde_json::Value) -> JobMessage {
        let kind = v
            .get("messageType")
            .and_then(|k| k.as_str())
            .unwrap_or_default()
            .to_string();
        let s = |k: &str| {
            v.get(k)
                .and_then(|x| x.as_str())
                .unwrap_or_default()
                .to_string()
        };
        let n = |k: &str| v.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
        let job: JobInfo = serde_json::from_value(v.clone()).unwrap_or_default();
        match kind.as_str() {
            "JobAvailable" => JobMessage::Available {
                acquire_url: s("acquireJobUrl"),
                job,
            },
            "JobAssigned" => JobMessage::Assigned { job },
            "JobStarted" => JobMessage::Started {
                runner_id: n("runnerId"),
                runner_name: s("runnerName"),
                job,
            },
            "JobCompleted" => JobMessage::Completed {
                result: s("result"),
                runner_id: n("runnerId"),
                runner_name: s("runnerName"),
                job,
            },
            _ => JobMessage::Unknown { kind },
        }
    }

    /// What the scale set's demand needs of it (`policy::demand`).
    pub fn seen(&self) -> crate::policy::demand::JobSeen {
        use crate::policy::demand::JobSeen;
        match self {
            JobMessage::Assigned { job } => JobSeen::Assigned {
                job_id: job.job_id.clone(),
            },
            JobMessage::Started {
                job, runner_name, ..
            } => JobSeen::Started {
                job_id: job.job_id.clone(),
                runner_name: runner_name.clone(),
            },
            JobMessage::Completed { job, .. } => JobSeen::Completed {
                job_id: job.job_id.clone(),
            },
            JobMessage::Available { .. } | JobMessage::Unknown { .. } => JobSeen::Other,
        }
    }

    /// The job it is about (none for an unknown type).
    pub fn job(&self) -> Option<&JobInfo> {
        match self {
            JobMessage::Available { job, .. }
            | JobMessage::Assigned { job }
            | JobMessage::Started { job, .. }
            | JobMessage::Completed { job, .. } => Some(job),
            JobMessage::Unknown { .. } => None,
        }
    }
}

/// Unset times arrive as `0001-01-01T00:00:00Z`, or not at all: both are absent.
fn maybe_time<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    Ok(s.and_then(|s| DateTime::parse_from_rfc3339(&s).ok())
        .map(|t| t.with_timezone(&Utc))
        .filter(|t| chrono::Datelike::year(t) > 1))
}

/// `POST …/runnerscalesets/{id}/generatejitconfig` (§2.8): 200, with `encodedJITConfig`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct JitConfig {
    pub runner: JitRunner,
    #[serde(rename = "encodedJITConfig")]
    pub encoded_jit_config: String,
}

/// The runner a JIT config registers.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JitRunner {
    pub id: u64,
    pub name: String,
    #[serde(default)]
    pub runner_scale_set_id: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_envelope_and_its_job_messages_parse_as_the_reference_shows_them() {
        let assigned = r#"{"messageType":"JobAssigned","repositoryName":"github-actions-gateway","ownerName":"actions-gateway","workflowRunId":30225287326,"jobDisplayName":"probe-fast","eventName":"workflow_dispatch","jobWorkflowRef":"actions-gateway/github-actions-gateway/.github/workflows/scaleset-probe.yml@refs/heads/main","requestLabels":["gag-probe-scaleset"],"scaleSetAssignTime":"2026-07-26T23:29:36Z","jobId":"bd59f43d-2e1a-567a-b5a4-c147b94d0766","runnerRequestId":0}"#;
        let completed = r#"{"messageType":"JobCompleted","jobId":"bd59f43d-2e1a-567a-b5a4-c147b94d0766","result":"canceled","runnerId":0,"runnerName":"","finishTime":"0001-01-01T00:00:00Z"}"#;
        let body = serde_json::to_string(&format!(
            "[{assigned},{completed},{{\"messageType\":\"JobFuture\"}}]"
        ))
        .unwrap();
        let text = format!(
            "\u{feff}{{\"messageId\":100000001,\"messageType\":\"RunnerScaleSetJobMessages\",\"body\":{body},\"statistics\":{{\"totalAvailableJobs\":0,\"totalAcquiredJobs\":0,\"totalAssignedJobs\":1,\"totalRunningJobs\":0,\"totalRegisteredRunners\":1,\"totalBusyRunners\":0,\"totalIdleRunners\":1}}}}"
        );
        let m = parse_message(&text).unwrap().unwrap();
        assert_eq!(m.id, 100_000_001);
        assert_eq!(m.statistics.unwrap().total_assigned_jobs, 1);
        assert_eq!(m.jobs.len(), 3);
        let JobMessage::Assigned { job } = &m.jobs[0] else {
            panic!("{:?}", m.jobs[0])
        };
        assert_eq!(job.job_id, "bd59f43d-2e1a-567a-b5a4-c147b94d0766");
        assert_eq!(job.workflow_run_id, 30_225_287_326);
        assert_eq!(job.request_labels, ["gag-probe-scaleset"]);
        assert!(job.scale_set_assign_time.is_some() && job.queue_time.is_none());
        assert!(
            matches!(&m.jobs[1], JobMessage::Completed { result, runner_id: 0, job, .. }
            if result == "canceled" && job.finish_time.is_none())
        );
        assert_eq!(
            m.jobs[2],
            JobMessage::Unknown {
                kind: "JobFuture".into()
            }
        );
        // An empty 200, an empty body, another outer type: no jobs, no error.
        assert_eq!(parse_message("").unwrap(), None);
        let empty = r#"{"messageId":100000002,"messageType":"RunnerScaleSetJobMessages","body":"","statistics":{}}"#;
        assert!(parse_message(empty).unwrap().unwrap().jobs.is_empty());
        let other = r#"{"messageId":100000003,"messageType":"SomethingNew","body":"[1]"}"#;
        assert!(parse_message(other).unwrap().unwrap().jobs.is_empty());
    }

    #[test]
    fn a_session_without_a_queue_url_or_statistics_is_unusable() {
        let ok = r#"{"sessionId":"3f2a","ownerName":"host","runnerScaleSet":{"id":6,"name":"ci-host"},"messageQueueUrl":"https://broker.actions.githubusercontent.com/scalesets/message","messageQueueAccessToken":"q","statistics":{"totalAssignedJobs":0}}"#;
        let s: Session = serde_json::from_str(ok).unwrap();
        assert_eq!(s.unusable(), None);
        assert_eq!(s.runner_scale_set.unwrap().id, 6);
        let no_url: Session = serde_json::from_str(&ok.replace(
            "https://broker.actions.githubusercontent.com/scalesets/message",
            "",
        ))
        .unwrap();
        assert!(no_url.unusable().unwrap().contains("messageQueueUrl"));
        let jit: JitConfig = serde_json::from_str(
            r#"{"runner":{"id":167,"name":"runner-1a2b3c4d","runnerScaleSetId":6},"encodedJITConfig":"e30="}"#,
        )
        .unwrap();
        assert_eq!(
            (jit.runner.id, jit.encoded_jit_config.as_str()),
            (167, "e30=")
        );
    }
}
