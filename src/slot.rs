//! One slot: register a runner, start its listener, watch it, act on its exit, repeat.
//!
//! One job at a time per slot: JIT registrations are ephemeral, so each listener takes
//! exactly one job. While a job runs, the next registration is made in advance so the
//! next listener starts the moment this one exits.
//! Invariants: a registration whose listener did not finish its job is deleted (no
//! ghosts); a listener is never SIGKILLed before SIGINT and `stop_grace` (except on the
//! third signal); failures never retry in a tight loop.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::{Config, RegistrationMode, Secret};
use crate::github::{backoff, AuthToken, GithubClient, GithubError};
use crate::host::Host;
use crate::layout;
use crate::naming;
use crate::runner::events::RunnerEvent;
use crate::runner::exit::{classify, Ended, ExitReason, Seen};
use crate::runner::process::{Listener, Output, ENV_ALLOWLIST};
use crate::shutdown::Mode;
use crate::status::Board;
use crate::watchdog::{self, attribute, looks_like_network, Breaker, Cause, Verdict, Watchdog};

/// A pre-made registration older than this is discarded rather than used.
const PREPARED_MAX_AGE: Duration = Duration::from_secs(3600);
/// The slowest a slot retries after an auth or permission failure (facts: at most one
/// call per 5 minutes per runner while the token is bad).
const AUTH_RETRY: Duration = Duration::from_secs(300);
/// How long a version-deprecated slot waits before trying again.
const DEPRECATED_PAUSE: Duration = Duration::from_secs(3600);

/// What every slot shares.
pub struct Shared {
    pub cfg: Arc<Config>,
    pub gh: GithubClient,
    pub host: String,
    pub board: Arc<Board>,
    pub roots: Vec<PathBuf>,
    /// The environment every runner gets (allow-listed, plus configured extras).
    pub runner_env: Vec<(String, String)>,
    /// `auto` becomes `jit` or `token` on first use.
    reg_mode: Mutex<RegistrationMode>,
    pub hoststate: Arc<Host>,
    /// The circuit breakers, one per slot, persisted at `breaker_path`.
    breakers: Mutex<Vec<Breaker>>,
    breaker_path: PathBuf,
    boot_id: String,
}

/// Commands a slot takes while its listener runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotCmd {
    /// The host resumed: an idle listener's long-poll is dead; replace it. A busy one stays.
    Recycle,
    /// GitHub shows the listening runner offline: replace it (a watchdog fire).
    Replace(Cause),
}

impl Shared {
    /// Assemble the shared slot context.
    pub fn new(
        cfg: Arc<Config>,
        gh: GithubClient,
        host: String,
        board: Arc<Board>,
        roots: Vec<PathBuf>,
        outer_env: &dyn Fn(&str) -> Option<String>,
        hoststate: Arc<Host>,
    ) -> Shared {
        let mut env: Vec<(String, String)> = ENV_ALLOWLIST
            .iter()
            .filter_map(|k| outer_env(k).map(|v| (k.to_string(), v)))
            .collect();
        for (k, v) in cfg.runner.pass_env.iter().chain(cfg.runner.env.iter()) {
            env.retain(|(ek, _)| ek != k);
            env.push((k.clone(), v.clone()));
        }
        // Make a deprecated version visible as exit 7 rather than a generic 1.
        env.push((
            "ACTIONS_RUNNER_RETURN_VERSION_DEPRECATED_EXIT_CODE".into(),
            "1".into(),
        ));
        let reg_mode = Mutex::new(cfg.runner.registration);
        let breaker_path = cfg.state_dir.join("breaker.json");
        let boot_id = watchdog::boot_id();
        let breakers = Mutex::new(watchdog::load(&breaker_path, cfg.runner.slots, &boot_id));
        Shared {
            cfg,
            gh,
            host,
            board,
            roots,
            runner_env: env,
            reg_mode,
            hoststate,
            breakers,
            breaker_path,
            boot_id,
        }
    }

    /// Record a watchdog fire for `slot`; returns how long the breaker is now open, if it opened.
    pub fn fire(&self, slot: usize, cause: Cause, detail: &str) -> Option<Duration> {
        let w = &self.cfg.watchdog;
        let now = self.hoststate.clocks.boottime();
        let mut all = self.breakers.lock().unwrap_or_else(|p| p.into_inner());
        let b = &mut all[slot];
        let verdict = b.record(cause, now, w.max_fires, w.window, w.open_for);
        tracing::warn!(slot, cause = cause.as_str(), detail, window = %b.describe(), "watchdog fired: replacing the listener");
        let opened = match verdict {
            Verdict::Opened {
                until,
                fires,
                dominant,
            } => {
                let open = until.saturating_sub(now);
                tracing::error!(
                    slot,
                    fires,
                    cause = dominant.as_str(),
                    open_s = open.as_secs(),
                    "circuit breaker open: {fires} watchdog fires within {}; the slot pauses (root cause: {})",
                    humantime::format_duration(w.window),
                    dominant.as_str()
                );
                Some(open)
            }
            Verdict::Closed => None,
        };
        if let Err(e) = watchdog::save(&self.breaker_path, &self.boot_id, &all) {
            tracing::warn!(error = %e, "cannot persist the circuit breaker");
        }
        drop(all);
        self.board.update(slot, |s| {
            s.last_fire = Some(format!("{}: {detail}", cause.as_str()))
        });
        opened
    }

    /// How long slot `slot`'s breaker stays open, and why.
    fn breaker_open(&self, slot: usize) -> Option<(Duration, String)> {
        let now = self.hoststate.clocks.boottime();
        let all = self.breakers.lock().unwrap_or_else(|p| p.into_inner());
        let b = &all[slot];
        b.open_for(now).map(|d| {
            (
                d,
                format!(
                    "circuit breaker open for {}s after {}",
                    d.as_secs(),
                    b.opened_by.clone().unwrap_or_else(|| b.describe())
                ),
            )
        })
    }

    fn mode(&self) -> RegistrationMode {
        *self.reg_mode.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_mode(&self, m: RegistrationMode) {
        *self.reg_mode.lock().unwrap_or_else(|p| p.into_inner()) = m;
    }
}

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
    fn usable(&self) -> bool {
        let young = self.created.elapsed() < PREPARED_MAX_AGE;
        match &self.secret {
            RegSecret::Jit(_) => young,
            RegSecret::Token(t) => {
                young && t.expires_at - Utc::now() > chrono::Duration::minutes(5)
            }
        }
    }
}

/// Register one runner for `slot`, in the configured (or discovered) mode.
pub async fn register(sh: &Shared, slot: usize) -> Result<Registration, GithubError> {
    let r = match sh.mode() {
        RegistrationMode::Jit => register_jit(sh, slot).await,
        RegistrationMode::Token => register_token(sh, slot).await,
        RegistrationMode::Auto => match register_jit(sh, slot).await {
            Err(e @ GithubError::NotFound { .. }) => match sh.gh.registration_token().await {
                Ok(token) => {
                    tracing::warn!("this server has no generate-jitconfig; falling back to registration tokens and config.sh");
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
        let name = naming::jit_name(&c.name_prefix, &sh.host, slot);
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

async fn register_token(sh: &Shared, slot: usize) -> Result<Registration, GithubError> {
    let token = sh.gh.registration_token().await?;
    Ok(token_registration(sh, slot, token))
}

fn token_registration(sh: &Shared, slot: usize, token: AuthToken) -> Registration {
    Registration {
        id: None,
        name: naming::fixed_name(&sh.cfg.runner.name_prefix, &sh.host, slot),
        secret: RegSecret::Token(token),
        created: Instant::now(),
    }
}

/// Delete a registration, retrying while GitHub says the runner is busy.
pub async fn deregister(sh: &Shared, id: u64, name: &str) {
    // A runner that died mid-job stays busy until GitHub abandons the job; keep trying a while.
    for attempt in 0..8u32 {
        match sh.gh.delete_runner(id).await {
            Ok(()) => {
                sh.board
                    .stats
                    .deregistrations
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!(runner = %name, id, "registration deleted");
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
                tracing::warn!(runner = %name, id, error = %e, "cannot delete the registration; it will be reaped at the next start once offline");
                return;
            }
        }
    }
    tracing::warn!(runner = %name, id, "registration still busy after retries; it will be reaped at the next start");
}

/// Shutdown must fit in a container's stop grace (Docker: 10 s) even when GitHub is
/// unreachable; a registration not deleted in time is reaped at the next start.
const SHUTDOWN_DEREGISTER_BUDGET: Duration = Duration::from_secs(5);

async fn deregister_reg(sh: &Shared, reg: &Registration) {
    let Some(id) = reg.id else { return };
    // While the supervisor stops, deregistration gets a bounded budget.
    let stopping = sh.board.mode() != "run";
    if stopping {
        if tokio::time::timeout(SHUTDOWN_DEREGISTER_BUDGET, deregister(sh, id, &reg.name))
            .await
            .is_err()
        {
            tracing::warn!(runner = %reg.name, id, "no time left to delete the registration while stopping; the next start reaps it");
        }
    } else {
        deregister(sh, id, &reg.name).await;
    }
}

/// Wait `d`, unless the supervisor starts stopping first (then true).
async fn sleep_or_stop(d: Duration, mode: &mut watch::Receiver<Mode>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        r = mode.wait_for(|m| *m != Mode::Run) => { let _ = r; true }
    }
}

fn stopping(mode: &watch::Receiver<Mode>) -> bool {
    *mode.borrow() != Mode::Run
}

/// How long to wait after a failed registration.
fn registration_wait(e: &GithubError, failures: u32) -> Duration {
    let b = backoff(Duration::from_secs(2), Duration::from_secs(300), failures);
    match e {
        GithubError::RateLimited { retry_after, .. } => (*retry_after).max(b),
        GithubError::Unauthorized { .. }
        | GithubError::Forbidden { .. }
        | GithubError::NotFound { .. }
        | GithubError::Validation { .. } => AUTH_RETRY,
        _ => b,
    }
}

/// Why we stopped a listener ourselves.
#[derive(Debug, Clone, PartialEq, Eq)]
enum StopCause {
    /// Draining or forced by signals.
    Shutdown,
    /// Not listening within `ready_timeout`.
    NotReady,
    /// It reported a session conflict: stop now instead of waiting out its 240 s.
    SessionConflict,
    /// The watchdog fired, with the root cause and what it saw.
    Watchdog(Cause, String),
    /// The host resumed and this listener was idle.
    Recycle,
}

struct Watched {
    ended: Ended,
    seen: Seen,
    cause: Option<StopCause>,
    /// The last `An error occurred:` message.
    fatal: Option<String>,
}

/// Run slot `slot` until the supervisor stops.
pub async fn run(
    sh: Arc<Shared>,
    slot: usize,
    mut mode: watch::Receiver<Mode>,
    mut cmds: mpsc::UnboundedReceiver<SlotCmd>,
) {
    let root = sh.roots[slot].clone();
    let mut failures: u32 = 0;
    let mut retryable_streak: u32 = 0;
    let mut last_fatal: Option<String> = None;
    let mut prep: Option<JoinHandle<Result<Registration, GithubError>>> = None;
    let board = &sh.board;
    loop {
        if stopping(&mode) {
            break;
        }
        // 0. Gates: an open breaker, a clock fault.
        if let Some((wait, why)) = sh.breaker_open(slot) {
            board.update(slot, |s| s.error = Some(why.clone()));
            board.set_state(slot, "breaker-open");
            if sleep_or_stop(wait, &mut mode).await {
                break;
            }
            continue;
        }
        if sh.hoststate.clock_fault() {
            let why = sh
                .hoststate
                .clock
                .borrow()
                .reason
                .clone()
                .unwrap_or_else(|| "clock fault".into());
            tracing::warn!(slot, reason = %why, "clock fault: registrations paused until the clock is fixed");
            board.update(slot, |s| s.error = Some(format!("clock fault: {why}")));
            board.set_state(slot, "clock-fault");
            let mut clock = sh.hoststate.clock.subscribe();
            tokio::select! {
                _ = clock.wait_for(|c| !c.fault) => {}
                _ = mode.wait_for(|m| *m != Mode::Run) => break,
            }
            tracing::info!(slot, "clock fixed: registrations resume");
            board.update(slot, |s| s.error = None);
            continue;
        }
        // 1. A registration: the one made in advance, or a new one.
        let mut ready = None;
        if let Some(h) = prep.take() {
            match h.await {
                Ok(Ok(r)) if r.usable() => ready = Some(r),
                Ok(Ok(r)) => deregister_reg(&sh, &r).await,
                _ => {}
            }
        }
        let mut reg = match ready {
            Some(r) => r,
            None => {
                board.set_state(slot, "registering");
                let r = tokio::select! {
                    r = register(&sh, slot) => r,
                    _ = mode.wait_for(|m| *m != Mode::Run) => break,
                };
                match r {
                    Ok(r) => {
                        crate::tokenwatch::set_token_state(&sh.hoststate, board, false, "");
                        r
                    }
                    Err(e) => {
                        let unauthorized = matches!(e, GithubError::Unauthorized { .. });
                        if let GithubError::Unauthorized { message } = &e {
                            crate::tokenwatch::set_token_state(&sh.hoststate, board, true, message);
                        }
                        let wait = registration_wait(&e, failures);
                        failures += 1;
                        note_failure(board, slot, "backoff", &e.to_string(), failures);
                        tracing::warn!(slot, error = %e, wait_s = wait.as_secs(), "registration failed; backing off");
                        // A refused token is retried early once the token watch sees it work.
                        let recovered = sh.hoststate.token_recovered.notified();
                        tokio::select! {
                            stop = sleep_or_stop(wait, &mut mode) => if stop { break },
                            _ = recovered, if unauthorized => {}
                        }
                        continue;
                    }
                }
            }
        };
        if stopping(&mode) {
            deregister_reg(&sh, &reg).await;
            break;
        }

        // 2. Start the listener.
        board.update(slot, |s| {
            s.runner = Some(reg.name.clone());
            s.job = None;
        });
        board.set_state(slot, "starting");
        let listener = match start(&sh, &root, &mut reg, &mut mode).await {
            Ok(l) => l,
            Err(msg) => {
                deregister_reg(&sh, &reg).await;
                failures += 1;
                note_failure(board, slot, "backoff", &msg, failures);
                let wait = backoff(Duration::from_secs(2), Duration::from_secs(300), failures);
                tracing::error!(slot, runner = %reg.name, error = %msg, wait_s = wait.as_secs(), "cannot start the runner; backing off");
                if sleep_or_stop(wait, &mut mode).await {
                    break;
                }
                continue;
            }
        };
        sh.board
            .stats
            .listeners_started
            .fetch_add(1, Ordering::Relaxed);

        // 3. Watch it.
        let w = watch_listener(
            &sh,
            slot,
            listener,
            &mut mode,
            &mut cmds,
            &mut prep,
            &mut failures,
        )
        .await;
        if let Some(f) = &w.fatal {
            last_fatal = Some(f.clone());
        }

        // 4. Act on its exit.
        let reason = match w.cause {
            Some(StopCause::SessionConflict) => ExitReason::SessionConflict,
            Some(StopCause::NotReady) => ExitReason::Unknown,
            Some(StopCause::Watchdog(..)) => ExitReason::Watchdog,
            Some(StopCause::Recycle) => ExitReason::Recycled,
            _ => classify(w.ended, &w.seen, w.cause.is_some()),
        };
        if let Some(StopCause::Watchdog(cause, detail)) = &w.cause {
            sh.fire(slot, *cause, detail);
        }
        if reason == ExitReason::ClockSkew {
            sh.hoststate
                .set_clock_fault("the runner reported clock skew (more than five minutes)");
        }
        // A listener that keeps exiting with code 2 is stuck too.
        if reason == ExitReason::Retryable {
            retryable_streak += 1;
            if retryable_streak >= sh.cfg.watchdog.retryable_exits {
                retryable_streak = 0;
                let net = last_fatal.as_deref().is_some_and(looks_like_network);
                let cause = attribute(sh.hoststate.context(net));
                sh.fire(
                    slot,
                    cause,
                    &format!(
                        "{} consecutive retryable exits (code 2)",
                        sh.cfg.watchdog.retryable_exits
                    ),
                );
            }
        } else if reason != ExitReason::Stopped {
            retryable_streak = 0;
        }
        board.stats.exit(reason.as_str());
        board.update(slot, |s| {
            s.last_exit = Some(format!("{} ({:?})", reason.as_str(), w.ended));
            s.job = None;
        });
        tracing::info!(slot, runner = %reg.name, ended = ?w.ended, reason = reason.as_str(), "listener exited");
        if reason != ExitReason::JobDone {
            // The service removes an ephemeral runner after its job; anything else is ours to delete.
            deregister_reg(&sh, &reg).await;
        }
        let wait = match reason {
            ExitReason::JobDone
            | ExitReason::Stopped
            | ExitReason::RegistrationDeleted
            | ExitReason::Watchdog
            | ExitReason::Recycled => {
                failures = 0;
                clear_failure(board, slot);
                None
            }
            ExitReason::SessionConflict => {
                // A fresh JIT name has no session to conflict with; a fixed name must let
                // the old session expire first.
                if matches!(reg.secret, RegSecret::Token(_)) {
                    // The fixed name's session may be held by a stray listener of this root.
                    crate::procs::stop_strays(
                        std::slice::from_ref(&root),
                        sh.cfg.runner.stop_grace,
                    )
                    .await;
                    Some(sh.cfg.runner.session_conflict_wait)
                } else {
                    None
                }
            }
            ExitReason::Updating => {
                wait_for_update(&root, sh.cfg.runner.update_wait).await;
                None
            }
            ExitReason::VersionDeprecated => {
                let msg = format!("the runner in {} is too old for GitHub: install a current actions/runner release there and restart", sh.cfg.runner.dir.display());
                tracing::error!(slot, "{msg}");
                note_failure(board, slot, "paused", &msg, failures + 1);
                failures += 1;
                Some(DEPRECATED_PAUSE)
            }
            other => {
                failures += 1;
                note_failure(
                    board,
                    slot,
                    "backoff",
                    &format!("listener exited: {}", other.as_str()),
                    failures,
                );
                Some(backoff(
                    Duration::from_secs(2),
                    Duration::from_secs(300),
                    failures - 1,
                ))
            }
        };
        if let Some(d) = wait {
            if !d.is_zero() {
                if board.slots().get(slot).is_some_and(|s| s.state != "paused") {
                    board.set_state(slot, "backoff");
                }
                if sleep_or_stop(d, &mut mode).await {
                    break;
                }
            }
        }
    }
    // Nothing made in advance may stay registered.
    if let Some(h) = prep.take() {
        if let Ok(Ok(r)) = h.await {
            deregister_reg(&sh, &r).await;
        }
    }
    board.update(slot, |s| {
        s.job = None;
        s.runner = None;
    });
    board.set_state(slot, "stopped");
}

fn note_failure(board: &Board, slot: usize, state: &str, error: &str, failures: u32) {
    board.update(slot, |s| {
        s.error = Some(error.to_string());
        s.failures = failures;
        if s.failing_since.is_none() {
            s.failing_since = Some(Utc::now());
        }
    });
    board.set_state(slot, state);
}

fn clear_failure(board: &Board, slot: usize) {
    board.update(slot, |s| {
        s.error = None;
        s.failures = 0;
        s.failing_since = None;
    });
}

/// Spawn config.sh (token mode) and then the listener.
async fn start(
    sh: &Shared,
    root: &Path,
    reg: &mut Registration,
    mode: &mut watch::Receiver<Mode>,
) -> Result<Listener, String> {
    layout::remove_config_files(root);
    let mut env = sh.runner_env.clone();
    match &reg.secret {
        RegSecret::Jit(blob) => env.push((
            "ACTIONS_RUNNER_INPUT_JITCONFIG".into(),
            blob.expose().to_string(),
        )),
        RegSecret::Token(token) => {
            configure(sh, root, &reg.name, token, mode).await?;
            reg.id = layout::agent_id(root);
        }
    }
    let program = root.join("bin").join("Runner.Listener");
    Listener::spawn(&reg.name, &program, &["run"], root, &env)
        .map_err(|e| format!("cannot spawn {}: {e}", program.display()))
}

/// `config.sh --unattended --ephemeral --disableupdate --replace`, token in the environment.
async fn configure(
    sh: &Shared,
    root: &Path,
    name: &str,
    token: &AuthToken,
    mode: &mut watch::Receiver<Mode>,
) -> Result<(), String> {
    let c = &sh.cfg;
    let url = format!("{}/{}", c.github.web_url, c.github.scope.web_path());
    let labels = c.runner.labels.join(",");
    let args = [
        "--unattended",
        "--ephemeral",
        "--disableupdate",
        "--replace",
        "--url",
        &url,
        "--name",
        name,
        "--labels",
        &labels,
        "--work",
        &c.runner.work_folder,
    ];
    let mut env = sh.runner_env.clone();
    env.push((
        "ACTIONS_RUNNER_INPUT_TOKEN".into(),
        token.token.expose().to_string(),
    ));
    let script = root.join("config.sh");
    let mut p = Listener::spawn(name, &script, &args, root, &env)
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    let mut last_err = String::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut interrupted = false;
    let ended = loop {
        tokio::select! {
            o = p.next() => match o {
                Some(Output::Line { stream: crate::runner::events::Stream::Stderr, text, .. }) if !text.trim().is_empty() => last_err = text,
                Some(Output::Exited(e)) => break Some(e),
                Some(_) => {}
                None => break Some(Ended::Code(-1)),
            },
            // Scenario 16: a signal during config.sh is handled at once (it exits on SIGINT).
            _ = mode.wait_for(|m| *m != Mode::Run), if !interrupted => {
                interrupted = true;
                p.interrupt();
            }
            _ = tokio::time::sleep_until(deadline) => break None,
        }
    };
    match ended {
        _ if interrupted => {
            p.kill_group();
            Err("config.sh interrupted by shutdown".into())
        }
        Some(Ended::Code(0)) => Ok(()),
        Some(e) => Err(format!("config.sh failed ({e:?}): {last_err}")),
        None => {
            p.kill_group();
            Err("config.sh did not finish within 5 minutes".into())
        }
    }
}

/// Wait for `update.finished` (the update script's signal), then remove it.
async fn wait_for_update(root: &Path, limit: Duration) {
    let flag = root.join("update.finished");
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if flag.exists() {
            let _ = std::fs::remove_file(&flag);
            tracing::info!(root = %root.display(), "runner self-update finished");
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tracing::warn!(root = %root.display(), "no update.finished after the update wait; starting a fresh runner anyway");
}

/// Watch a listener until it exits, stopping it when the mode or its state requires.
async fn watch_listener(
    sh: &Arc<Shared>,
    slot: usize,
    mut l: Listener,
    mode: &mut watch::Receiver<Mode>,
    cmds: &mut mpsc::UnboundedReceiver<SlotCmd>,
    prep: &mut Option<JoinHandle<Result<Registration, GithubError>>>,
    failures: &mut u32,
) -> Watched {
    let cfg = &sh.cfg.runner;
    let wcfg = &sh.cfg.watchdog;
    let board = &sh.board;
    let mut seen = Seen::default();
    let mut wd = Watchdog::new(wcfg.grace, wcfg.job_stall_timeout);
    let mut stall = crate::netstall::StallTracker::default();
    let mut sock_tick = tokio::time::interval(wcfg.socket_check_interval);
    sock_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut fatal: Option<String> = None;
    let mut cmds_open = true;
    let mut busy = false;
    let ready_deadline = Instant::now() + cfg.ready_timeout;
    let mut drain_deadline: Option<Instant> = None;
    let mut mode_open = true;
    let cause = loop {
        let m = *mode.borrow();
        if m == Mode::Drain && !busy {
            // A job may have started just now: consume what is queued before judging idle.
            while let Some(o) = l.try_next() {
                match o {
                    Output::Line {
                        event: Some(ev), ..
                    } => {
                        seen.record(&ev);
                        wd.on_event(&ev, Instant::now());
                        if let RunnerEvent::JobStarted { name } = ev {
                            busy = true;
                            board.update(slot, |s| s.job = Some(name));
                            board.set_state(slot, "busy");
                        }
                    }
                    Output::Exited(ended) => {
                        return Watched {
                            ended,
                            seen,
                            cause: None,
                            fatal,
                        }
                    }
                    Output::Line { .. } => {}
                }
            }
        }
        if m >= Mode::Force || (m == Mode::Drain && !busy) {
            break Some(StopCause::Shutdown);
        }
        if m == Mode::Drain && drain_deadline.is_none() {
            tracing::info!(slot, runner = %l.name(), drain_s = cfg.drain_timeout.as_secs(), "draining: letting the running job finish");
            drain_deadline = Some(Instant::now() + cfg.drain_timeout);
        }
        tokio::select! {
            o = l.next() => match o {
                Some(Output::Line { event: Some(ev), .. }) => {
                    seen.record(&ev);
                    wd.on_event(&ev, Instant::now());
                    match ev {
                        RunnerEvent::Listening => {
                            *failures = 0;
                            clear_failure(board, slot);
                            board.set_state(slot, "listening");
                        }
                        RunnerEvent::JobStarted { name } => {
                            busy = true;
                            board.update(slot, |s| s.job = Some(name));
                            board.set_state(slot, "busy");
                            if prep.is_none() && *mode.borrow() == Mode::Run {
                                let sh2 = sh.clone();
                                *prep = Some(tokio::spawn(async move { register(&sh2, slot).await }));
                            }
                        }
                        RunnerEvent::JobCompleted { name, result } => {
                            busy = false;
                            board.stats.jobs_completed.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(slot, runner = %l.name(), job = %name, result = %result, "job completed");
                            board.set_state(slot, "finishing");
                        }
                        RunnerEvent::SessionConflict if !busy => break Some(StopCause::SessionConflict),
                        RunnerEvent::Fatal { message } => fatal = Some(message),
                        _ => {}
                    }
                }
                Some(Output::Line { .. }) => {}
                Some(Output::Exited(ended)) => return Watched { ended, seen, cause: None, fatal },
                None => return Watched { ended: Ended::Code(-1), seen, cause: None, fatal },
            },
            _ = async { tokio::time::sleep_until(wd.deadline().expect("guarded")).await }, if wd.deadline().is_some() => {
                let msg = wd.error().unwrap_or_default().to_string();
                let cause = attribute(sh.hoststate.context(looks_like_network(&msg)));
                let limit = if busy { wcfg.job_stall_timeout } else { wcfg.grace };
                break Some(StopCause::Watchdog(cause, format!("no recovery {}s after \"Runner connect error: {msg}\"", limit.as_secs())));
            }
            _ = sock_tick.tick() => {
                if let Some(d) = stall.update(&crate::netstall::sockets(l.pid()), Instant::now(), wcfg.socket_stall) {
                    let cause = attribute(sh.hoststate.context(true));
                    break Some(StopCause::Watchdog(cause, format!("a listener connection has had retransmissions outstanding for {}s (blackholed)", d.as_secs())));
                }
            }
            c = cmds.recv(), if cmds_open => match c {
                Some(SlotCmd::Recycle) if !busy => {
                    tracing::info!(slot, runner = %l.name(), "host resumed: recycling the idle listener (its long-poll is dead)");
                    break Some(StopCause::Recycle);
                }
                Some(SlotCmd::Recycle) => tracing::info!(slot, runner = %l.name(), "host resumed: the busy listener keeps its job, under watch"),
                Some(SlotCmd::Replace(cause)) if !busy => break Some(StopCause::Watchdog(cause, "GitHub shows the listening runner offline".into())),
                Some(SlotCmd::Replace(_)) => {}
                None => cmds_open = false,
            },
            r = mode.changed(), if mode_open => {
                if r.is_err() {
                    mode_open = false;
                }
            }
            _ = tokio::time::sleep_until(ready_deadline), if !seen.listening => {
                tracing::warn!(slot, runner = %l.name(), timeout_s = cfg.ready_timeout.as_secs(), "listener not listening in time; replacing it");
                break Some(StopCause::NotReady);
            }
            _ = async { tokio::time::sleep_until(drain_deadline.expect("guarded")).await }, if drain_deadline.is_some() => {
                tracing::warn!(slot, runner = %l.name(), "drain timeout: stopping the busy runner (its job is cancelled)");
                break Some(StopCause::Shutdown);
            }
        }
    };
    board.set_state(slot, "stopping");
    let ended = stop(&mut l, cfg.stop_grace, mode, &mut seen).await;
    Watched {
        ended,
        seen,
        cause,
        fatal,
    }
}

/// SIGINT, then SIGKILL to the group after `grace` (at once on the third signal).
async fn stop(
    l: &mut Listener,
    grace: Duration,
    mode: &mut watch::Receiver<Mode>,
    seen: &mut Seen,
) -> Ended {
    l.interrupt();
    let deadline = Instant::now() + grace;
    let mut killed = false;
    loop {
        let kill_now = *mode.borrow() == Mode::Kill;
        if kill_now && !killed {
            l.kill_group();
            killed = true;
        }
        tokio::select! {
            o = l.next() => match o {
                Some(Output::Exited(e)) => return e,
                Some(Output::Line { event: Some(ev), .. }) => seen.record(&ev),
                Some(_) => {}
                None => return Ended::Code(-1),
            },
            _ = tokio::time::sleep_until(deadline), if !killed => {
                tracing::warn!(runner = %l.name(), pid = l.pid(), grace_s = grace.as_secs(), "listener ignored SIGINT; SIGKILL to its process group");
                l.kill_group();
                killed = true;
            }
            r = mode.changed(), if !killed => { let _ = r; }
        }
    }
}
