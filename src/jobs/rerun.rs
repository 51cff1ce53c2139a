//! Re-running the jobs the host lost (issue 18 §3).
//!
//! A lost job's record gets a [`Rerun`] when it is closed as lost (by the journal's
//! thread, or at start for the records a killed supervisor left open), so the queue is
//! the records whose re-run is pending, and it survives restarts. This task works the
//! queue: it checks the job's run with back-off ([`next_delay`]) until GitHub says it
//! completed (GitHub re-runs only completed runs), gives up after `[jobs] rerun_within`,
//! looks the job up once (its id and GitHub's conclusion for it), and re-runs it only if
//! it did not succeed, within `max_reruns` per job and `max_reruns_per_hour`. What it did
//! is kept in the record ([`RerunState`]), counted and logged.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::store::JobStore;
use super::{JobIdentity, JobRecord, Outcome, Rerun, RerunState};
use crate::config::RerunPolicy;
use crate::github::{GithubClient, GithubError};

/// The first check of a lost job's run, after its loss.
pub const FIRST_CHECK: Duration = Duration::from_secs(10);
/// Checks back off, doubling, to this many times the first.
const MAX_FACTOR: u32 = 6;
/// Debug builds only: the first check in milliseconds instead (tests).
pub const CHECK_ENV: &str = "SUPERVISOR_RERUN_CHECK_MS";

fn first_check() -> Duration {
    #[cfg(debug_assertions)]
    if let Some(ms) = std::env::var(CHECK_ENV).ok().and_then(|v| v.parse().ok()) {
        return Duration::from_millis(ms);
    }
    FIRST_CHECK
}

/// The wait before check number `checks + 1` of a run: `first`, doubling, at most six
/// times `first` (10 s, 20 s, 40 s, then every 60 s).
pub fn next_delay(first: Duration, checks: u32) -> Duration {
    let f = 1u32 << checks.min(8);
    first * f.min(MAX_FACTOR)
}

/// What the counts hear: a re-run's result (`accepted`, `refused`, `given_up`,
/// `skipped`), and how many wait.
pub struct Reporter {
    pub result: Box<dyn Fn(&'static str) + Send + Sync>,
    pub pending: Box<dyn Fn(u64) + Send + Sync>,
}

/// The re-run policy, shared by the journal (which plans) and the task (which acts).
pub struct Reruns {
    pub policy: RerunPolicy,
    wake: Notify,
    report: Reporter,
    first: Duration,
}

impl Reruns {
    pub fn new(policy: RerunPolicy, report: Reporter) -> Arc<Reruns> {
        Arc::new(Reruns {
            policy,
            wake: Notify::new(),
            report,
            first: first_check(),
        })
    }

    /// Plan the re-run of `r`, just closed as lost: wait for its run, or (said at once)
    /// not at all when its job is unknown or its workflow is in `never_rerun`. Nothing
    /// when re-runs are off. [`Reruns::wake`] once it is committed.
    pub fn plan(&self, r: &mut JobRecord, now: DateTime<Utc>) {
        if !self.policy.enabled || !r.lost() || r.rerun.is_some() {
            return;
        }
        let state = match &r.identity {
            None => RerunState::GivenUp {
                why: "its job hooks never said which job it was".into(),
            },
            Some(i) if self.never(&i.workflow) => RerunState::Skipped {
                why: format!("workflow {:?} is in [jobs] never_rerun", i.workflow),
            },
            Some(_) => RerunState::Waiting,
        };
        if let Some(res) = state.result() {
            (self.report.result)(res);
        }
        if let Outcome::Lost { action, .. } = &mut r.outcome {
            *action = state.action();
        }
        r.rerun = Some(Rerun {
            next_check_at: state.pending().then(|| now + chrono_of(self.first)),
            state,
            since: now,
            checks: 0,
            run_completed_at: None,
            requested_at: None,
        });
    }

    /// Wake the task: a plan was committed.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Whether `workflow` is in `never_rerun`.
    pub fn never(&self, workflow: &str) -> bool {
        self.policy.never.iter().any(|w| w == workflow)
    }

    /// Whether a lost job of `of` is looked up at once (it will not be re-run).
    pub fn looks_up_at_once(&self, of: &JobIdentity) -> bool {
        !self.policy.enabled || self.never(&of.workflow)
    }
}

fn chrono_of(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// Set `r`'s re-run state and the words of what was done about it.
fn set_state(r: &mut JobRecord, state: RerunState) {
    if let Outcome::Lost { action, .. } = &mut r.outcome {
        *action = state.action();
    }
    match &mut r.rerun {
        Some(rr) => {
            if !state.pending() {
                rr.next_check_at = None;
            }
            rr.state = state;
        }
        None => {
            r.rerun = Some(Rerun {
                state,
                since: crate::os::clocks::wall_now(),
                next_check_at: None,
                checks: 0,
                run_completed_at: None,
                requested_at: None,
            })
        }
    }
}

/// The fix for a refused re-run: the permission, and where it is granted.
pub fn permission_fix(app: bool) -> String {
    if app {
        "the GitHub App needs the repository permission Actions: Read and write (actions: write): App settings > Permissions & events, then approve the new permission on the installation".into()
    } else {
        "the token needs to re-run workflows: a classic token the repo scope (https://github.com/settings/tokens), a fine-grained token the repository permission Actions: Read and write (https://github.com/settings/personal-access-tokens)".into()
    }
}

/// Work the queue until cancelled.
pub async fn run(
    reruns: Arc<Reruns>,
    store: Arc<JobStore>,
    gh: GithubClient,
    app: bool,
    stop: CancellationToken,
) {
    let w = Worker {
        reruns,
        store,
        gh,
        app,
    };
    loop {
        let now = crate::os::clocks::wall_now();
        let pending = w.pending().await;
        (w.reruns.report.pending)(pending.len() as u64);
        let mut next: Option<DateTime<Utc>> = None;
        let mut acted = false;
        for r in pending {
            let at = r
                .rerun
                .as_ref()
                .and_then(|x| x.next_check_at)
                .unwrap_or(now);
            if at <= now {
                w.step(r).await;
                acted = true;
            } else {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        if acted {
            continue;
        }
        // Wall-clock times: sleep at most a minute at a time, so a clock step or a
        // suspend is caught up with soon.
        let wait = next
            .map(|n| (n - now).to_std().unwrap_or(Duration::ZERO))
            .unwrap_or(Duration::from_secs(3600))
            .min(Duration::from_secs(60));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = w.reruns.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

struct Worker {
    reruns: Arc<Reruns>,
    store: Arc<JobStore>,
    gh: GithubClient,
    app: bool,
}

impl Worker {
    async fn all(&self) -> Vec<JobRecord> {
        let s = self.store.clone();
        match tokio::task::spawn_blocking(move || s.list(true)).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                tracing::warn!(event = "jobs_store_failed", error = %e, "cannot read the job records: {e}");
                vec![]
            }
            Err(_) => vec![],
        }
    }

    async fn pending(&self) -> Vec<JobRecord> {
        self.all()
            .await
            .into_iter()
            .filter(|r| r.rerun.as_ref().is_some_and(|x| x.state.pending()))
            .collect()
    }

    async fn update(&self, id: u64, f: impl FnOnce(&mut JobRecord) + Send + 'static) {
        let s = self.store.clone();
        let r = tokio::task::spawn_blocking(move || s.update(id, f)).await;
        if let Ok(Err(e)) = r {
            tracing::warn!(event = "jobs_store_failed", error = %e, "cannot write a job record: {e}");
        }
    }

    /// Check again after the back-off.
    async fn later(&self, r: &JobRecord) {
        let first = self.reruns.first;
        self.update(r.id, move |r| {
            if let Some(rr) = &mut r.rerun {
                rr.checks += 1;
                rr.next_check_at =
                    Some(crate::os::clocks::wall_now() + chrono_of(next_delay(first, rr.checks)));
            }
        })
        .await;
    }

    /// Done with `r`: its final state, recorded, counted and said.
    async fn finish(&self, r: &JobRecord, state: RerunState) {
        let of = r.identity.clone().unwrap_or_default();
        let res = state.result().unwrap_or("given_up");
        let words = state.action();
        match &state {
            RerunState::Accepted { attempt } => {
                tracing::info!(event = "job_rerun", result = res, record = r.id, repository = %of.repository, run_id = of.run_id, attempt, job = %of.job, "lost job {} of run {} re-run as attempt {attempt}", of.job, of.run_id)
            }
            RerunState::Refused { fix, status, .. } => {
                tracing::warn!(event = "job_rerun", result = res, status, record = r.id, repository = %of.repository, run_id = of.run_id, job = %of.job, "lost job {} of run {}: {words}; {fix}", of.job, of.run_id)
            }
            _ => {
                tracing::info!(event = "job_rerun", result = res, record = r.id, repository = %of.repository, run_id = of.run_id, job = %of.job, "lost job {} of run {}: {words}", of.job, of.run_id)
            }
        }
        (self.reruns.report.result)(res);
        self.update(r.id, move |r| set_state(r, state)).await;
    }

    /// One check of `r`'s run, and what follows from it.
    async fn step(&self, r: JobRecord) {
        let Some(of) = r.identity.clone() else {
            return self
                .finish(
                    &r,
                    RerunState::GivenUp {
                        why: "its job hooks never said which job it was".into(),
                    },
                )
                .await;
        };
        let rr = r.rerun.clone().expect("pending records have a re-run");
        let now = crate::os::clocks::wall_now();
        let within = self.reruns.policy.within;
        if rr.state == RerunState::Waiting && now - rr.since > chrono_of(within) {
            let why = format!(
                "its run did not complete within [jobs] rerun_within ({})",
                humantime::format_duration(within)
            );
            return self.finish(&r, RerunState::GivenUp { why }).await;
        }
        let run = match self.gh.workflow_run(&of.repository, of.run_id).await {
            Ok(run) => run,
            Err(e) => return self.failed(&r, e).await,
        };
        let latest = run.run_attempt.unwrap_or(of.run_attempt);
        if latest > of.run_attempt {
            // A later attempt exists: ours (a request whose answer a restart lost), or
            // someone else's.
            let state = if rr.state == RerunState::Requested {
                RerunState::Accepted { attempt: latest }
            } else {
                RerunState::GivenUp {
                    why: format!("the run was already re-run (attempt {latest})"),
                }
            };
            return self.finish(&r, state).await;
        }
        if run.status.as_deref() != Some("completed") {
            tracing::debug!(event = "rerun_waiting", record = r.id, run_id = of.run_id, status = ?run.status, "run {} not completed yet", of.run_id);
            return self.later(&r).await;
        }
        if rr.run_completed_at.is_none() {
            self.update(r.id, move |r| {
                if let Some(x) = &mut r.rerun {
                    x.run_completed_at = Some(now);
                }
            })
            .await;
        }
        // The one look-up: the job's id and GitHub's conclusion for it.
        let job = match self
            .gh
            .attempt_jobs(&of.repository, of.run_id, of.run_attempt)
            .await
        {
            Ok(jobs) => jobs
                .into_iter()
                .find(|j| j.runner_name.as_deref() == Some(of.runner.as_str())),
            Err(e) => return self.failed(&r, e).await,
        };
        let Some(job) = job else {
            let why = format!(
                "no job of run {} attempt {} ran on {}",
                of.run_id, of.run_attempt, of.runner
            );
            return self.finish(&r, RerunState::GivenUp { why }).await;
        };
        let job_id = job.id;
        self.update(r.id, move |r| r.job_id = Some(job_id)).await;
        if job.conclusion.as_deref() == Some("success") {
            let why = "GitHub concluded it success".to_string();
            return self.finish(&r, RerunState::GivenUp { why }).await;
        }
        if let Some(why) = self.over_limits(&r, &of, now).await {
            return self.finish(&r, RerunState::GivenUp { why }).await;
        }
        self.update(r.id, move |r| {
            if let Some(x) = &mut r.rerun {
                x.state = RerunState::Requested;
                x.requested_at = Some(now);
            }
        })
        .await;
        tracing::info!(event = "rerun_requested", record = r.id, repository = %of.repository, run_id = of.run_id, job_id, conclusion = ?job.conclusion, "re-running lost job {} (GitHub's job {job_id}, {}) of run {}", of.job, job.conclusion.as_deref().unwrap_or("no conclusion"), of.run_id);
        match self.gh.rerun_job(&of.repository, job_id).await {
            Ok(()) => {
                self.finish(
                    &r,
                    RerunState::Accepted {
                        attempt: latest + 1,
                    },
                )
                .await
            }
            Err(e) => self.failed(&r, e).await,
        }
    }

    /// `max_reruns` for this job across its attempts, then the hourly budget.
    async fn over_limits(
        &self,
        r: &JobRecord,
        of: &JobIdentity,
        now: DateTime<Utc>,
    ) -> Option<String> {
        let p = &self.reruns.policy;
        let all = self.all().await;
        let ours = all
            .iter()
            .filter(|o| o.id != r.id)
            .filter(|o| {
                o.identity.as_ref().is_some_and(|i| {
                    i.repository == of.repository && i.run_id == of.run_id && i.job == of.job
                })
            })
            .filter(|o| {
                o.rerun.as_ref().is_some_and(|x| {
                    matches!(x.state, RerunState::Accepted { .. } | RerunState::Requested)
                })
            })
            .count() as u32;
        if ours >= p.max_per_job {
            return Some(format!(
                "it was re-run {ours} time(s) already ([jobs] max_reruns = {})",
                p.max_per_job
            ));
        }
        let hour_ago = now - chrono::Duration::hours(1);
        let last_hour = all
            .iter()
            .filter(|o| o.id != r.id)
            .filter_map(|o| o.rerun.as_ref().and_then(|x| x.requested_at))
            .filter(|t| *t > hour_ago)
            .count() as u32;
        (last_hour >= p.max_per_hour).then(|| {
            format!(
                "{last_hour} re-runs were requested in the last hour ([jobs] max_reruns_per_hour = {}): this host keeps losing jobs",
                p.max_per_hour
            )
        })
    }

    /// GitHub did not answer as hoped: a refusal is final (recorded with the fix); anything
    /// else is tried again after the back-off.
    async fn failed(&self, r: &JobRecord, e: GithubError) {
        let refusal = match &e {
            GithubError::Forbidden { message, accepted } => Some((
                403,
                match accepted {
                    Some(a) => format!("{message} (needs {a})"),
                    None => message.clone(),
                },
            )),
            GithubError::NotFound { message } => Some((404, message.clone())),
            GithubError::Unauthorized { message } => Some((401, message.clone())),
            GithubError::Validation { message, .. } => Some((422, message.clone())),
            _ => None,
        };
        match refusal {
            Some((status, message)) => {
                let fix = if status == 422 {
                    "re-run it from the run's page if it still matters".to_string()
                } else {
                    permission_fix(self.app)
                };
                self.finish(
                    r,
                    RerunState::Refused {
                        status,
                        message,
                        fix,
                    },
                )
                .await
            }
            None => {
                tracing::warn!(event = "rerun_check_failed", record = r.id, error = %e, "cannot check or re-run lost job {}: {e}; trying again", r.display_name);
                self.later(r).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_back_off_from_the_first_doubling_to_six_times_it() {
        let s = |c| next_delay(FIRST_CHECK, c).as_secs();
        assert_eq!(
            [s(0), s(1), s(2), s(3), s(4), s(30)],
            [10, 20, 40, 60, 60, 60]
        );
    }

    fn lost(identity: Option<JobIdentity>) -> JobRecord {
        JobRecord {
            id: 7,
            slot: 0,
            runner: "r-0".into(),
            display_name: "deploy".into(),
            identity,
            job_id: None,
            started_at: crate::os::clocks::wall_now(),
            ended_at: None,
            outcome: Outcome::Lost {
                cause: "killed".into(),
                action: "recorded".into(),
            },
            rerun: None,
        }
    }

    #[test]
    fn a_lost_job_waits_for_its_run_unless_unknown_or_never_rerun() {
        let counted = Arc::new(std::sync::Mutex::new(vec![]));
        let c = counted.clone();
        let reruns = Reruns::new(
            RerunPolicy {
                enabled: true,
                within: Duration::from_secs(6 * 3600),
                never: vec!["Deploy".into()],
                max_per_job: 1,
                max_per_hour: 10,
            },
            Reporter {
                result: Box::new(move |r| c.lock().unwrap().push(r)),
                pending: Box::new(|_| {}),
            },
        );
        let now = crate::os::clocks::wall_now();
        let id = |w: &str| JobIdentity {
            repository: "octo/app".into(),
            run_id: 1,
            run_attempt: 1,
            job: "e2e".into(),
            workflow: w.into(),
            runner: "r-0".into(),
        };
        let mut a = lost(Some(id("CI")));
        reruns.plan(&mut a, now);
        let rr = a.rerun.clone().unwrap();
        assert_eq!(rr.state, RerunState::Waiting);
        assert!(rr.next_check_at.unwrap() > now);
        let mut b = lost(Some(id("Deploy")));
        reruns.plan(&mut b, now);
        assert!(matches!(b.rerun.unwrap().state, RerunState::Skipped { .. }));
        assert!(
            matches!(&b.outcome, Outcome::Lost { action, .. } if action.starts_with("recorded only"))
        );
        let mut c = lost(None);
        reruns.plan(&mut c, now);
        assert!(matches!(c.rerun.unwrap().state, RerunState::GivenUp { .. }));
        assert_eq!(*counted.lock().unwrap(), ["skipped", "given_up"]);
    }
}
