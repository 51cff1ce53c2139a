//! Scale-set mode in `supervisor run` (issue 19 §2, §3): the host's one session, polled
//! by one task ([`run`]), and the slots, which start a just-in-time runner of the scale
//! set only when [`Demand`] says one is needed ([`Pool::ticket`]).
//!
//! The session task: opens the session (waiting out conflicts, saying so in status),
//! long-polls with `X-ScaleSetMaxCapacity` = `max_runners`, records what each message
//! changed ([`Demand::on_message`]) and only then acknowledges it, keeps `lastMessageId`,
//! acquires `JobAvailable`s (GHES), replaces a poll that neither answers nor fails within
//! `[scaleset] poll_timeout` with a new connection, and after a resume or a wall-clock step
//! drops the session, the queue token and the admin token and rebuilds them at once. On
//! shutdown it deletes the session; it never deletes the scale set.
//!
//! Its invariant: a message is acknowledged only after what it changed is recorded.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::config::{ScaleSetConfig, Secret};
use crate::github::scaleset::client::{Admin, Service};
use crate::github::scaleset::errors::ServiceError;
use crate::github::scaleset::session::Connection;
use crate::github::scaleset::types::JobMessage;
use crate::os::shutdown::Mode;
use crate::policy::demand::{Counts, Demand};
use crate::status::host::SlotCmds;
use crate::status::{Board, Condition, Health, ScaleSetStatus};

/// What slots share with the session task.
pub struct Pool {
    demand: Mutex<Demand>,
    /// Woken whenever the demand changes: slots waiting for a ticket look again.
    changed: Notify,
    /// JIT configs are made with a client of their own (the poll's is held ~50 s).
    jit: Service,
    /// The admin connection and the scale set's id, published by the session task.
    handle: Mutex<Option<(Admin, u64)>>,
    board: Arc<Board>,
    cfg: ScaleSetConfig,
    /// Mints an admin connection of the pool's own when the service refuses the one the
    /// session task published before its `exp`.
    minter: Mutex<Option<Minter>>,
}

/// What an admin connection is minted from: a registration token for the config URL.
pub struct Minter {
    pub gh: crate::github::GithubClient,
    pub api_url: String,
    pub config_url: String,
}

/// A runner of the scale set, registered.
pub struct ScaleSetRunner {
    pub id: u64,
    pub name: String,
    pub jit: Secret,
}

impl Pool {
    pub fn new(cfg: &ScaleSetConfig, jit: Service, board: Arc<Board>) -> Arc<Pool> {
        let p = Arc::new(Pool {
            demand: Mutex::new(Demand::new(
                cfg.min_runners,
                cfg.max_runners,
                cfg.surplus_grace,
            )),
            changed: Notify::new(),
            jit,
            handle: Mutex::new(None),
            board,
            cfg: cfg.clone(),
            minter: Mutex::new(None),
        });
        p.show(|s| {
            s.name = cfg.name.clone();
            s.session = "connecting".into();
            s.since = Some(crate::os::clocks::wall_now());
            s.max_runners = cfg.max_runners as u64;
            s.min_runners = cfg.min_runners as u64;
        });
        p
    }

    /// Change the demand; waiters are woken only when the counts changed (a slot that
    /// looked and was told no must not wake the others, or they wake each other for ever).
    fn demand<R>(&self, f: impl FnOnce(&mut Demand) -> R) -> R {
        let mut d = self.demand.lock().unwrap_or_else(|p| p.into_inner());
        let before = (d.counts(), d.started, d.lapsed);
        let r = f(&mut d);
        let after = (d.counts(), d.started, d.lapsed);
        drop(d);
        if after != before {
            self.changed.notify_waiters();
            self.show_counts(after.0, after.1, after.2);
        }
        r
    }

    fn show_counts(&self, c: Counts, started: u64, lapsed: u64) {
        self.show(|s| {
            s.jobs_assigned = c.assigned as u64;
            s.runners_starting = c.starting as u64;
            s.runners_idle = c.idle as u64;
            s.runners_busy = c.busy as u64;
            s.runners_started = started;
            s.assignments_lapsed = lapsed;
        });
    }

    fn show(&self, f: impl FnOnce(&mut ScaleSetStatus)) {
        self.board
            .system(|s| f(s.scaleset.get_or_insert_with(Default::default)));
    }

    /// Wait until `slot` may start a runner for the scale set.
    pub async fn ticket(&self, slot: usize) {
        loop {
            let n = self.changed.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if self.demand(|d| d.try_take(slot)) {
                return;
            }
            n.await;
        }
    }

    /// How the pool mints an admin connection of its own.
    pub fn set_minter(&self, m: Minter) {
        *self.minter.lock().unwrap_or_else(|p| p.into_inner()) = Some(m);
    }

    /// A fresh admin connection, published for the next JIT configs.
    async fn remint(&self, set_id: u64) -> Result<Admin, ServiceError> {
        let m = self
            .minter
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|m| (m.gh.clone(), m.api_url.clone(), m.config_url.clone()));
        let Some((gh, api, url)) = m else {
            return Err(ServiceError::AdminTokenInvalid {
                message: "no way to mint an admin connection".into(),
            });
        };
        let t = gh
            .registration_token()
            .await
            .map_err(|e| ServiceError::Other {
                status: 0,
                type_name: String::new(),
                message: format!("cannot get a registration token: {e}"),
            })?;
        let a = self.jit.connect(&api, &url, t.token.expose()).await?;
        *self.handle.lock().unwrap_or_else(|p| p.into_inner()) = Some((a.clone(), set_id));
        Ok(a)
    }

    /// A JIT config for a runner of the scale set named `name`. An admin token the
    /// service refuses before its `exp` is minted again, once.
    pub async fn register(&self, name: &str) -> Result<ScaleSetRunner, ServiceError> {
        let handle = self
            .handle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some((admin, set_id)) = handle else {
            return Err(ServiceError::Other {
                status: 0,
                type_name: String::new(),
                message: "no session with the scale-set service yet".into(),
            });
        };
        let j = match self.jit.generate_jit(&admin, set_id, name).await {
            Err(ServiceError::AdminTokenInvalid { .. }) => {
                let a = self.remint(set_id).await?;
                self.jit.generate_jit(&a, set_id, name).await?
            }
            other => other?,
        };
        Ok(ScaleSetRunner {
            id: j.runner.id,
            name: j.runner.name,
            jit: Secret::new(j.encoded_jit_config),
        })
    }

    /// `slot`'s runner is registered as `name`.
    pub fn registered(&self, slot: usize, name: &str) {
        self.demand(|d| d.registered(slot, name));
    }

    /// `slot`'s runner started its job.
    pub fn busy(&self, slot: usize) {
        self.demand(|d| d.busy(slot));
    }

    /// `slot` holds no runner any more.
    pub fn gone(&self, slot: usize) {
        self.demand(|d| d.gone(slot));
    }

    fn session_state(&self, state: &str, detail: Option<String>) {
        let health = match state {
            "polling" | "closed" => None,
            "connecting" | "rebuilding" => Some(Health::Ok),
            _ => Some(Health::Degraded),
        };
        self.show(|s| {
            if s.session != state {
                s.since = Some(crate::os::clocks::wall_now());
            }
            s.session = state.to_string();
            s.detail = detail.clone();
        });
        self.board.set_condition(
            Condition::ScaleSet,
            health.map(|h| {
                (
                    h,
                    format!(
                        "session {state}{}",
                        detail.map(|d| format!(": {d}")).unwrap_or_default()
                    ),
                )
            }),
        );
    }
}

/// The longest wait between two failed session calls.
const FAIL_WAIT_MAX: Duration = Duration::from_secs(60);

/// The session task: until the supervisor stops, then the session is deleted.
pub async fn run(
    pool: Arc<Pool>,
    mut conn: Connection,
    mut mode: watch::Receiver<Mode>,
    mut resumed: watch::Receiver<u64>,
    cmds: SlotCmds,
) {
    let surplus = tokio::spawn(surplus_task(pool.clone(), cmds, mode.clone()));
    let mut last_id = 0u64;
    let mut fail_wait = Duration::from_secs(1);
    let capacity = pool.cfg.max_runners.max(1) as u32;
    resumed.borrow_and_update();
    loop {
        if *mode.borrow() != Mode::Run {
            break;
        }
        let p = pool.clone();
        let waiting = move |n: u64, msg: &str| {
            p.show(|s| s.conflicts_waited = n);
            p.session_state(
                "conflict",
                Some(format!(
                    "waiting out a session conflict ({n} so far): {msg}"
                )),
            );
        };
        let limit = pool.cfg.poll_timeout;
        let polled = tokio::select! {
            r = tokio::time::timeout(limit, poll_once(&pool, &mut conn, last_id, capacity, &waiting)) => r,
            _ = resumed.changed() => {
                tracing::warn!(event = "scaleset_rebuild", "resumed or the clock stepped: the session, the queue token and the admin token are assumed dead; rebuilding them now");
                conn.reset();
                pool.session_state("rebuilding", Some("after a resume or a clock step".into()));
                continue;
            }
            _ = mode.wait_for(|m| *m != Mode::Run) => break,
        };
        match polled {
            Ok(Ok(Some(id))) => {
                last_id = id;
                fail_wait = Duration::from_secs(1);
            }
            Ok(Ok(None)) => fail_wait = Duration::from_secs(1),
            Err(_) => {
                pool.show(|s| s.polls_timed_out += 1);
                tracing::warn!(event = "scaleset_poll_timeout", timeout_s = limit.as_secs_f64(), "a long poll neither answered nor failed within {}: polling again on a new connection", humantime::format_duration(limit));
            }
            Ok(Err(e)) => {
                tracing::warn!(event = "scaleset_error", error = %e, "scale-set service: {e}");
                pool.session_state("failing", Some(e.to_string()));
                if matches!(e, ServiceError::SessionConflict { .. }) {
                    // Given up waiting: the likely cause is named; keep trying, slowly.
                    fail_wait = FAIL_WAIT_MAX;
                }
                tokio::select! {
                    _ = tokio::time::sleep(fail_wait) => {}
                    _ = resumed.changed() => conn.reset(),
                    _ = mode.wait_for(|m| *m != Mode::Run) => break,
                }
                fail_wait = (fail_wait * 2).min(FAIL_WAIT_MAX);
            }
        }
    }
    surplus.abort();
    pool.session_state("closed", None);
    // Within the stop budget: an unreachable service must not hold up the exit.
    if tokio::time::timeout(Duration::from_secs(5), conn.close())
        .await
        .is_err()
    {
        tracing::warn!(
            event = "scaleset_session_close_failed",
            "no time left to delete the session"
        );
    }
}

/// One poll: the admin token kept fresh and published, the message recorded, then
/// acknowledged. `Some(id)` for a message taken.
async fn poll_once(
    pool: &Pool,
    conn: &mut Connection,
    last_id: u64,
    capacity: u32,
    waiting: &crate::github::scaleset::session::Waiting,
) -> Result<Option<u64>, ServiceError> {
    let (admin, set) = conn.ready(waiting).await?;
    *pool.handle.lock().unwrap_or_else(|p| p.into_inner()) = Some((admin, set.id));
    pool.show(|s| {
        s.id = Some(set.id);
        s.name = set.name.clone();
        s.sessions_opened = conn.sessions_opened;
        s.sets_created = conn.sets_created;
    });
    pool.session_state("polling", None);
    let Some(m) = conn.poll(last_id, capacity, waiting).await? else {
        return Ok(None);
    };
    // GHES: acquire what is available; the service then assigns it.
    let available: Vec<i64> = m
        .jobs
        .iter()
        .filter_map(|j| match j {
            JobMessage::Available { job, .. } => Some(job.runner_request_id),
            _ => None,
        })
        .collect();
    if !available.is_empty() {
        let got = conn.acquire(&available).await?;
        tracing::info!(
            event = "scaleset_acquired",
            asked = available.len(),
            got = got.len(),
            "acquired {} of {} available jobs",
            got.len(),
            available.len()
        );
    }
    for j in &m.jobs {
        if let Some(job) = j.job() {
            tracing::info!(event = "scaleset_message", message_id = m.id, kind = kind(j), job_id = %job.job_id, job = %job.job_display_name, repository = %format!("{}/{}", job.owner_name, job.repository_name), "{} {}", kind(j), job.job_display_name);
        }
    }
    pool.demand(|d| {
        for j in &m.jobs {
            d.on_message(&j.seen());
        }
    });
    pool.show(|s| {
        s.last_message_id = m.id;
        if let Some(st) = m.statistics {
            s.statistics = Some(crate::status::ScaleSetStatistics {
                total_available_jobs: st.total_available_jobs,
                total_acquired_jobs: st.total_acquired_jobs,
                total_assigned_jobs: st.total_assigned_jobs,
                total_running_jobs: st.total_running_jobs,
                total_registered_runners: st.total_registered_runners,
                total_busy_runners: st.total_busy_runners,
                total_idle_runners: st.total_idle_runners,
            });
        }
    });
    // Recorded: now acknowledged.
    conn.ack(m.id).await?;
    Ok(Some(m.id))
}

fn kind(j: &JobMessage) -> &'static str {
    match j {
        JobMessage::Available { .. } => "JobAvailable",
        JobMessage::Assigned { .. } => "JobAssigned",
        JobMessage::Started { .. } => "JobStarted",
        JobMessage::Completed { .. } => "JobCompleted",
        JobMessage::Unknown { .. } => "unknown",
    }
}

/// Stop idle runners no assigned job needs once `surplus_grace` is over. Wakes only when
/// the demand changes or a grace ends: an idle host has no timer here.
async fn surplus_task(pool: Arc<Pool>, cmds: SlotCmds, mode: watch::Receiver<Mode>) {
    loop {
        let n = pool.changed.notified();
        tokio::pin!(n);
        n.as_mut().enable();
        if *mode.borrow() != Mode::Run {
            return;
        }
        let now = Instant::now();
        let (due, next) = {
            let mut d = pool.demand.lock().unwrap_or_else(|p| p.into_inner());
            (d.surplus(now), d.next_surplus_deadline())
        };
        for slot in due {
            tracing::info!(
                event = "scaleset_surplus",
                slot,
                "no assigned job needs this idle runner: stopping it"
            );
            if let Some(c) = cmds.get(slot) {
                let _ = c.send(crate::status::host::SlotCmd::Surplus);
            }
        }
        match next {
            Some(at) => tokio::select! {
                _ = tokio::time::sleep_until(at) => {}
                _ = n => {}
            },
            None => n.await,
        }
    }
}
