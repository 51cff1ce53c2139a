//! One message session for the whole host (issue 19 §2), kept alive through what the
//! service does to it (`scaleset-protocol.md` §1.5, §2.2–§2.5, §2.11):
//! - the admin token is minted from a registration token, refreshed 60 s before its `exp`
//!   on GitHub's time, and minted again once when a call is refused with 401;
//! - the scale set is found by name, created when missing, and again after a
//!   `RunnerScaleSetNotFoundException` (GitHub deletes one idle for about 7 days);
//! - a 409 session conflict (a dead session lasts about 50 s after a crash) is waited out
//!   with back-off, reported to the caller each time, and given up after `conflict_limit`
//!   naming the likely cause (another host with this scale-set name);
//! - a 401 on the queue refreshes the session and polls again once; a 404 (evicted)
//!   opens a new session; [`Connection::reset`] (after a resume or a clock step) drops
//!   everything so the next call rebuilds it at once.

use std::time::Duration;

use super::client::{Admin, Service};
use super::errors::ServiceError;
use super::types::{Message, RunnerScaleSet, Session};
use crate::github::GithubClient;

/// Told of each session conflict waited out: how many so far, and the service's message.
pub type Waiting = dyn Fn(u64, &str) + Send + Sync;

/// What the connection is for.
#[derive(Debug, Clone)]
pub struct Target {
    /// The REST API base (`https://api.github.com`, `https://HOST/api/v3`).
    pub api_url: String,
    /// The config URL: `https://github.com/<org>` or `…/<owner>/<repo>`.
    pub config_url: String,
    /// The scale set's name (what `runs-on` names).
    pub name: String,
    pub runner_group: String,
    /// Extra labels, after the name.
    pub labels: Vec<String>,
    /// The session's owner: the host.
    pub owner: String,
    /// Give up waiting out session conflicts after this long.
    pub conflict_limit: Duration,
}

/// The host's connection to the service.
pub struct Connection {
    svc: Service,
    gh: GithubClient,
    target: Target,
    /// The local clock's offset from GitHub's, seconds (positive: ahead).
    offset_s: Box<dyn Fn() -> f64 + Send + Sync>,
    admin: Option<Admin>,
    set: Option<RunnerScaleSet>,
    session: Option<Session>,
    /// A session dropped by [`Connection::reset`]: deleted (best effort) before the next
    /// is opened, so a session that is still alive does not cost a 50 s conflict.
    stale: Option<(u64, String)>,
    /// Conflicts waited out so far.
    pub conflicts_waited: u64,
    /// Scale sets created so far (the first, or again after GitHub deleted one).
    pub sets_created: u64,
    /// Sessions opened so far.
    pub sessions_opened: u64,
}

fn no_token(e: impl std::fmt::Display) -> ServiceError {
    ServiceError::Other {
        status: 0,
        type_name: String::new(),
        message: format!("cannot get a registration token: {e}"),
    }
}

impl Connection {
    pub fn new(
        svc: Service,
        gh: GithubClient,
        target: Target,
        offset_s: Box<dyn Fn() -> f64 + Send + Sync>,
    ) -> Connection {
        Connection {
            svc,
            gh,
            target,
            offset_s,
            admin: None,
            set: None,
            session: None,
            stale: None,
            conflicts_waited: 0,
            sets_created: 0,
            sessions_opened: 0,
        }
    }

    /// The session in hand, if any.
    pub fn session(&self) -> Option<&Session> {
        self.session.as_ref()
    }

    /// The scale set in hand, if any.
    pub fn scale_set(&self) -> Option<&RunnerScaleSet> {
        self.set.as_ref()
    }

    /// Forget the session, the queue token and the admin token (after a resume or a
    /// wall-clock step): the next call rebuilds them.
    /// The scale set is looked up by name again (GitHub may have deleted it meanwhile).
    pub fn reset(&mut self) {
        if let (Some(s), Some(set)) = (self.session.take(), self.set.take()) {
            self.stale = Some((set.id, s.session_id));
        }
        self.admin = None;
        self.session = None;
        self.set = None;
    }

    /// Everything a poll needs, made or refreshed as needed: the admin connection (fresh),
    /// the scale set, the session.
    pub async fn ready(
        &mut self,
        waiting: &Waiting,
    ) -> Result<(Admin, RunnerScaleSet), ServiceError> {
        let a = self.admin().await?;
        if self.session.is_none() {
            self.open(waiting).await?;
        }
        let set = self.ensure_set().await?;
        Ok((self.admin.clone().unwrap_or(a), set))
    }

    /// GHES: acquire the jobs of `runnerRequestId`s `ids` (the queue token); the ids
    /// acquired. A 401 refreshes the session and tries once more.
    pub async fn acquire(&mut self, ids: &[i64]) -> Result<Vec<i64>, ServiceError> {
        let (Some(s), Some(set)) = (self.session.clone(), self.set.clone()) else {
            return Ok(vec![]);
        };
        let admin = self.admin().await?;
        match self.svc.acquire_jobs(&admin, &s, set.id, ids).await {
            Err(ServiceError::QueueTokenExpired) => {
                let fresh = self
                    .svc
                    .refresh_session(&admin, set.id, &s.session_id)
                    .await?;
                self.session = Some(fresh.clone());
                self.svc.acquire_jobs(&admin, &fresh, set.id, ids).await
            }
            other => other,
        }
    }

    /// The admin connection, minted when missing or due.
    async fn admin(&mut self) -> Result<Admin, ServiceError> {
        let now = crate::os::clocks::wall_now();
        let due = self
            .admin
            .as_ref()
            .is_none_or(|a| super::admin_token_refresh_due(&a.token, now, (self.offset_s)()));
        if due {
            let token = self.gh.registration_token().await.map_err(no_token)?;
            let t = &self.target;
            let a = self
                .svc
                .connect(&t.api_url, &t.config_url, token.token.expose())
                .await?;
            self.admin = Some(a);
        }
        Ok(self.admin.clone().expect("set above"))
    }

    /// The scale set: found by name, else created.
    async fn ensure_set(&mut self) -> Result<RunnerScaleSet, ServiceError> {
        if let Some(s) = &self.set {
            return Ok(s.clone());
        }
        let a = self.admin().await?;
        let t = self.target.clone();
        let group = self.svc.runner_group(&a, &t.runner_group).await?;
        let set = match self.svc.scale_set_by_name(&a, group.id, &t.name).await? {
            Some(s) => s,
            None => {
                let s = self
                    .svc
                    .create_scale_set(&a, group.id, &t.name, &t.labels)
                    .await?;
                self.sets_created += 1;
                tracing::info!(event = "scaleset_created", id = s.id, name = %s.name, "created scale set {} (id {})", s.name, s.id);
                s
            }
        };
        self.set = Some(set.clone());
        Ok(set)
    }

    /// Open the session: the scale set first; conflicts waited out with back-off
    /// (`waiting` hears each wait); a scale set gone is created again.
    pub async fn open(&mut self, waiting: &Waiting) -> Result<Session, ServiceError> {
        let started = tokio::time::Instant::now();
        let mut wait = Duration::from_secs(1);
        let mut reminted = false;
        let mut relooked = false;
        if let Some((set_id, id)) = self.stale.take() {
            if let Ok(a) = self.admin().await {
                let _ = tokio::time::timeout(
                    Duration::from_secs(5),
                    self.svc.delete_session(&a, set_id, &id),
                )
                .await;
            }
        }
        loop {
            let set = self.ensure_set().await?;
            let a = self.admin().await?;
            match self
                .svc
                .create_session(&a, set.id, &self.target.owner)
                .await
            {
                Ok(s) => {
                    self.sessions_opened += 1;
                    self.session = Some(s.clone());
                    return Ok(s);
                }
                Err(ServiceError::SessionConflict { message }) => {
                    if started.elapsed() >= self.target.conflict_limit {
                        return Err(ServiceError::SessionConflict {
                            message: format!("{message} (still after {}; another supervisor may use the scale-set name {:?}: give each host its own [scaleset] name)", humantime::format_duration(self.target.conflict_limit), self.target.name),
                        });
                    }
                    self.conflicts_waited += 1;
                    waiting(self.conflicts_waited, &message);
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(10));
                }
                Err(ServiceError::ScaleSetNotFound { .. }) => self.set = None,
                // A bare 404 on creating a session (the emulator's "runner scale set not
                // found"): the set may be gone; look it up by name again, once.
                Err(ServiceError::SessionGone { .. }) if !relooked => {
                    relooked = true;
                    self.set = None;
                }
                Err(ServiceError::AdminTokenInvalid { .. }) if !reminted => {
                    reminted = true;
                    self.admin = None;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One long poll after `last_message_id`, with `capacity`. A 401 refreshes the
    /// session and polls once more; an evicted session or a scale set gone is rebuilt
    /// (then no message this time).
    pub async fn poll(
        &mut self,
        last_message_id: u64,
        capacity: u32,
        waiting: &Waiting,
    ) -> Result<Option<Message>, ServiceError> {
        let s = match &self.session {
            Some(s) => s.clone(),
            None => self.open(waiting).await?,
        };
        match self.svc.poll(&s, last_message_id, capacity).await {
            Err(ServiceError::QueueTokenExpired) => {
                let set = self.ensure_set().await?;
                let a = self.admin().await?;
                match self.svc.refresh_session(&a, set.id, &s.session_id).await {
                    Ok(fresh) => {
                        self.session = Some(fresh.clone());
                        self.svc.poll(&fresh, last_message_id, capacity).await
                    }
                    Err(e) => self.rebuild(e, waiting).await,
                }
            }
            Err(e @ (ServiceError::SessionGone { .. } | ServiceError::ScaleSetNotFound { .. })) => {
                self.rebuild(e, waiting).await
            }
            other => other,
        }
    }

    /// After an error on the session: evicted or gone, open again; anything else, fail.
    async fn rebuild(
        &mut self,
        e: ServiceError,
        waiting: &Waiting,
    ) -> Result<Option<Message>, ServiceError> {
        match &e {
            ServiceError::ScaleSetNotFound { .. } => self.set = None,
            ServiceError::SessionGone { .. } => {}
            _ => return Err(e),
        }
        tracing::warn!(event = "scaleset_session_lost", error = %e, "the session is gone; opening a new one");
        self.session = None;
        self.open(waiting).await.map(|_| None)
    }

    /// Acknowledge message `id` (after what it changed is recorded).
    pub async fn ack(&mut self, id: u64) -> Result<(), ServiceError> {
        match &self.session {
            Some(s) => self.svc.ack(s, id).await,
            None => Ok(()),
        }
    }

    /// Close the session on shutdown (errors only said: the next start waits them out).
    pub async fn close(&mut self) {
        let (Some(s), Some(set)) = (self.session.take(), self.set.clone()) else {
            return;
        };
        if let Ok(a) = self.admin().await {
            if let Err(e) = self.svc.delete_session(&a, set.id, &s.session_id).await {
                tracing::warn!(event = "scaleset_session_close_failed", error = %e, "cannot close the session: {e}");
            }
        }
    }
}
