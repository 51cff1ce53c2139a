//! Registrations: JIT (with a fresh name), or a registration token for config.sh;
//! and their deletion, bounded while the supervisor stops.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{RegistrationMode, Secret};
use crate::github::{backoff, AuthToken, GithubError};
use crate::policy::naming;

use super::{Shared, PREPARED_MAX_AGE};

/// The secret part of a registration.
pub enum RegSecret {
    /// `encoded_jit_config`.
    Jit(Secret),
    /// A registration token for `config.sh`.
    Token(AuthToken),
}

/// A runner registration we own.
pub struct Registration {
    /// GitHub's runner id (token mode learns it from `.runner` after config.sh).
    pub id: Option<u64>,
    pub name: String,
    pub secret: RegSecret,
    pub created: Instant,
}

impl Registration {
    pub(super) fn usable(&self) -> bool {
        let young = self.created.elapsed() < PREPARED_MAX_AGE;
        match &self.secret {
            RegSecret::Jit(_) => young,
            RegSecret::Token(t) => {
                young && t.expires_at - crate::os::clocks::wall_now() > chrono::Duration::minutes(5)
            }
        }
    }
}

/// Register one runner for `slot`, in the configured (or discovered) mode.
pub async fn register(sh: &Shared, slot: usize) -> Result<Registration, GithubError> {
    if let Some(p) = sh.pool() {
        let r = register_scaleset(sh, p, slot).await;
        match &r {
            Ok(reg) => {
                p.registered(slot, &reg.name);
                sh.board.stats.registrations.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => p.gone(slot),
        }
        return r;
    }
    let r = match sh.mode() {
        RegistrationMode::Jit => register_jit(sh, slot).await,
        RegistrationMode::Token => register_token(sh, slot).await,
        RegistrationMode::Auto => match register_jit(sh, slot).await {
            Err(e @ GithubError::NotFound { .. }) => match sh.gh.registration_token().await {
                Ok(token) => {
                    tracing::warn!(event = "jit_fallback", "this server has no generate-jitconfig; falling back to registration tokens and config.sh");
                    sh.set_mode(RegistrationMode::Token);
                    Ok(token_registration(sh, slot, token))
                }
                Err(_) => Err(e),
            },
            other => {
                if other.is_ok() {
                    sh.set_mode(RegistrationMode::Jit);
                }
                other
            }
        },
    };
    if r.is_ok() {
        sh.board.stats.registrations.fetch_add(1, Ordering::Relaxed);
    }
    r
}

async fn register_jit(sh: &Shared, slot: usize) -> Result<Registration, GithubError> {
    let c = &sh.cfg.runner;
    let mut attempt = 0;
    loop {
        let name = naming::jit_name(&c.name_prefix, &sh.hostname, slot);
        match sh
            .gh
            .generate_jitconfig(&name, &c.labels, c.group_id, &c.work_folder)
            .await
        {
            Ok(jit) => {
                return Ok(Registration {
                    id: Some(jit.runner.id),
                    name,
                    secret: RegSecret::Jit(Secret::new(jit.encoded_jit_config)),
                    created: Instant::now(),
                })
            }
            // A name collision: draw another suffix.
            Err(GithubError::Conflict { .. }) if attempt < 2 => attempt += 1,
            Err(e) => return Err(e),
        }
    }
}

/// Scale-set mode: a JIT runner of the scale set (a fresh name each time).
async fn register_scaleset(
    sh: &Shared,
    pool: &crate::slot::demand::scaleset::Pool,
    slot: usize,
) -> Result<Registration, GithubError> {
    use crate::github::scaleset::errors::ServiceError;
    let c = &sh.cfg.runner;
    let mut attempt = 0;
    loop {
        let name = naming::jit_name(&c.name_prefix, &sh.hostname, slot);
        match pool.register(&name).await {
            Ok(r) => {
                tracing::info!(event = "scaleset_runner", slot, runner = %r.name, id = r.id, "a runner of the scale set for an assigned job");
                return Ok(Registration {
                    id: Some(r.id),
                    name: r.name,
                    secret: RegSecret::Jit(r.jit),
                    created: Instant::now(),
                });
            }
            Err(ServiceError::RunnerExists { .. }) if attempt < 2 => attempt += 1,
            Err(e) => return Err(GithubError::Transient(format!("scale-set JIT config: {e}"))),
        }
    }
}

async fn register_token(sh: &Shared, slot: usize) -> Result<Registration, GithubError> {
    let token = sh.gh.registration_token().await?;
    Ok(token_registration(sh, slot, token))
}

fn token_registration(sh: &Shared, slot: usize, token: AuthToken) -> Registration {
    Registration {
        id: None,
        name: naming::fixed_name(&sh.cfg.runner.name_prefix, &sh.hostname, slot),
        secret: RegSecret::Token(token),
        created: Instant::now(),
    }
}

/// Delete a registration, retrying while GitHub says the runner is busy; what GitHub does
/// not let us delete now goes to the deletion queue, which retries until it is gone.
pub async fn deregister(sh: &Shared, id: u64, name: &str) {
    // A runner that died mid-job stays busy until GitHub abandons the job; keep trying a while.
    for attempt in 0..8u32 {
        match sh.gh.delete_runner(id).await {
            Ok(()) => {
                sh.board
                    .stats
                    .deregistrations
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!(event = "registration_deleted", runner = %name, id, "registration deleted");
                return;
            }
            Err(GithubError::Validation { .. }) => {
                tokio::time::sleep(backoff(
                    Duration::from_millis(500),
                    Duration::from_secs(5),
                    attempt,
                ))
                .await;
            }
            Err(e) => {
                tracing::warn!(event = "deletion_queued", runner = %name, id, error = %e, "cannot delete the registration now; queued, retried in the background until it is gone");
                sh.deletions.add(id, name);
                return;
            }
        }
    }
    tracing::warn!(event = "deletion_queued", runner = %name, id, "registration still busy after retries; queued, retried in the background until it is gone");
    sh.deletions.add(id, name);
}

/// Shutdown must fit in a container's stop grace (Docker: 10 s) even when GitHub is
/// unreachable: each deletion while stopping, and the queue after it, get this long.
pub(super) const SHUTDOWN_DEREGISTER_BUDGET: Duration = Duration::from_secs(5);

/// Delete `reg`; `stopping` is the slot's own view of the supervisor's mode.
pub(super) async fn deregister_reg(sh: &Shared, reg: &Registration, stopping: bool) {
    let Some(id) = reg.id else { return };
    // While the supervisor stops, one attempt within the stop budget; the queue keeps the
    // rest (drained within the same budget, then persisted for the next start).
    if !stopping {
        return deregister(sh, id, &reg.name).await;
    }
    let deadline = sh.stop_budget();
    match tokio::time::timeout_at(deadline, sh.gh.delete_runner(id)).await {
        Ok(Ok(())) => {
            sh.board
                .stats
                .deregistrations
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(event = "registration_deleted", runner = %reg.name, id, "registration deleted");
        }
        Ok(Err(e)) => {
            tracing::warn!(event = "deletion_queued", runner = %reg.name, id, error = %e, "cannot delete the registration while stopping; queued");
            sh.deletions.add(id, &reg.name);
        }
        Err(_) => {
            tracing::warn!(event = "deletion_queued", runner = %reg.name, id, "no time left to delete the registration while stopping; queued");
            sh.deletions.add(id, &reg.name);
        }
    }
}

/// A GitHub error as the slot's policy sees it.
pub(super) fn failure(e: &GithubError) -> crate::policy::machine::outer::RegFailure {
    use crate::policy::machine::outer::{RegFailure, RegKind};
    let kind = match e {
        GithubError::Unauthorized { message } => RegKind::Refused {
            message: message.clone(),
        },
        GithubError::Forbidden { .. }
        | GithubError::NotFound { .. }
        | GithubError::Validation { .. } => RegKind::Denied,
        GithubError::RateLimited { retry_after, .. } => RegKind::RateLimited {
            retry_after: *retry_after,
        },
        _ => RegKind::Transient,
    };
    RegFailure {
        kind,
        error: e.to_string(),
    }
}
