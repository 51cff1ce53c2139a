//! One slot: register a runner, start its listener, watch it, act on its exit, repeat.
//!
//! One job at a time per slot: JIT registrations are ephemeral, so each listener takes
//! exactly one job. While a job runs, the next registration is made in advance so the
//! next listener starts the moment this one exits.
//! Invariants: a registration whose listener did not finish its job is deleted (no
//! ghosts); a listener is never SIGKILLed before SIGINT and `stop_grace` (except on the
//! third signal); failures never retry in a tight loop.
//!
//! Layout: [`registration`] makes and deletes registrations; [`listen`] starts a
//! listener (config.sh first in token mode) and watches it; this file is the loop.

mod deletions;
mod listen;
pub mod machine;
mod registration;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::{Config, RegistrationMode};
use crate::github::{GithubClient, GithubError};
pub use crate::host::SlotCmd;
use crate::host::{looks_like_network, Cause, Host};
use crate::runner::process::ENV_ALLOWLIST;
use crate::shutdown::Mode;
use crate::status::{Board, SlotState};
use crate::watchdog::{self, Breaker, Verdict};

pub use deletions::Deletions;
use listen::{start, wait_for_update, watch_listener};
use machine::{failure_backoff, registration_wait, Next, StopCause};
use registration::deregister_reg;
pub use registration::{deregister, register, RegSecret, Registration};

/// A pre-made registration older than this is discarded rather than used.
pub(super) const PREPARED_MAX_AGE: Duration = Duration::from_secs(3600);

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
    /// Registrations still to delete (persisted; retried in the background).
    pub deletions: Arc<Deletions>,
    /// The latest stop-budget deadline handed out (the queue drains until it).
    stop_deadline: Mutex<Option<tokio::time::Instant>>,
    /// Woken when an operator resets a slot's breaker (a slot waiting it out goes on).
    breaker_reset: Vec<tokio::sync::Notify>,
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
        let deletions = Arc::new(Deletions::load(cfg.state_dir.join("deletions.json")));
        let breaker_reset = (0..cfg.runner.slots)
            .map(|_| tokio::sync::Notify::new())
            .collect();
        let sh = Shared {
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
            deletions,
            stop_deadline: Mutex::new(None),
            breaker_reset,
        };
        let all = sh
            .breakers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for (i, b) in all.iter().enumerate() {
            sh.publish_breaker(i, b);
        }
        sh
    }

    /// Show slot `slot`'s breaker in the status: fires in the window by cause, and until
    /// when it is open (as wall-clock time).
    fn publish_breaker(&self, slot: usize, b: &Breaker) {
        let now = self.hoststate.clocks.boottime();
        let mut b = b.clone();
        b.prune(now, self.cfg.watchdog.window);
        let mut fires = std::collections::BTreeMap::new();
        for f in &b.fires {
            *fires.entry(f.cause.as_str().to_string()).or_insert(0u32) += 1;
        }
        let open = b.open_for(now);
        self.board.set_breaker(
            slot,
            crate::status::BreakerStatus {
                fires,
                open_until: open.map(|d| {
                    crate::clocks::wall_now() + chrono::Duration::from_std(d).unwrap_or_default()
                }),
                opened_by: open.and(b.opened_by.clone()),
            },
        );
    }

    /// Close the breaker of `slot`, or of every slot (an operator's `breaker reset`):
    /// its window starts empty, and a slot waiting it out goes on at once.
    pub fn reset_breakers(&self, slot: Option<usize>) -> Result<Vec<usize>, String> {
        let n = self.cfg.runner.slots;
        let which: Vec<usize> = match slot {
            Some(i) if i >= n => {
                return Err(format!(
                    "no slot {i}: this supervisor has slots 0..{}",
                    n.saturating_sub(1)
                ))
            }
            Some(i) => vec![i],
            None => (0..n).collect(),
        };
        let mut all = self.breakers.lock().unwrap_or_else(|p| p.into_inner());
        for &i in &which {
            let was = all[i].open_for(self.hoststate.clocks.boottime());
            all[i] = Breaker::default();
            tracing::info!(
                slot = i,
                was_open_s = was.map(|d| d.as_secs()),
                "circuit breaker reset by the operator"
            );
        }
        if let Err(e) = watchdog::save(&self.breaker_path, &self.boot_id, &all) {
            tracing::warn!(error = %e, "cannot persist the circuit breaker");
        }
        let snapshot = all.clone();
        drop(all);
        for &i in &which {
            self.publish_breaker(i, &snapshot[i]);
            self.breaker_reset[i].notify_one();
        }
        Ok(which)
    }

    /// A deadline for one deletion while stopping, [`registration::SHUTDOWN_DEREGISTER_BUDGET`]
    /// from now; remembered so the queue drains within the latest one.
    fn stop_budget(&self) -> tokio::time::Instant {
        let d = tokio::time::Instant::now() + registration::SHUTDOWN_DEREGISTER_BUDGET;
        let mut g = self.stop_deadline.lock().unwrap_or_else(|p| p.into_inner());
        *g = Some(g.map_or(d, |x| x.max(d)));
        d
    }

    /// Empty the deletion queue within the stop budget (after every slot has stopped).
    pub async fn drain_deletions(&self) {
        if self.deletions.is_empty() {
            return;
        }
        let last = *self.stop_deadline.lock().unwrap_or_else(|p| p.into_inner());
        let deadline = last.unwrap_or_else(|| {
            tokio::time::Instant::now() + registration::SHUTDOWN_DEREGISTER_BUDGET
        });
        self.deletions.drain(&self.gh, &self.board, deadline).await;
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
        let b = all[slot].clone();
        drop(all);
        self.board.stats.fires.add(cause.as_str());
        self.publish_breaker(slot, &b);
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
    // The current run of failures is GitHub refusing the token (not the listener's doing).
    let mut refused_only = false;
    let mut prep: Option<JoinHandle<Result<Registration, GithubError>>> = None;
    let board = &sh.board;
    loop {
        if stopping(&mode) {
            break;
        }
        // 0. Gates: an open breaker, a clock fault.
        if let Some((wait, why)) = sh.breaker_open(slot) {
            board.update(slot, |s| s.error = Some(why.clone()));
            board.set_state(slot, SlotState::BreakerOpen);
            tokio::select! {
                stop = sleep_or_stop(wait, &mut mode) => if stop { break },
                _ = sh.breaker_reset[slot].notified() => {
                    board.update(slot, |s| s.error = None);
                }
            }
            // Open no longer: the fires that opened it leave the status too.
            let b = sh.breakers.lock().unwrap_or_else(|p| p.into_inner())[slot].clone();
            sh.publish_breaker(slot, &b);
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
            board.set_state(slot, SlotState::ClockFault);
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
                board.set_state(slot, SlotState::Registering);
                let r = tokio::select! {
                    r = register(&sh, slot) => r,
                    _ = mode.wait_for(|m| *m != Mode::Run) => break,
                };
                match r {
                    Ok(r) => {
                        sh.hoststate.set_token_state(board, false, "");
                        // The token works again: refusals were no failure of this slot's.
                        if refused_only {
                            refused_only = false;
                            failures = 0;
                            clear_failure(board, slot);
                        }
                        r
                    }
                    Err(e) => {
                        let unauthorized = matches!(e, GithubError::Unauthorized { .. });
                        refused_only = unauthorized && (refused_only || failures == 0);
                        if let GithubError::Unauthorized { message } = &e {
                            sh.hoststate.set_token_state(board, true, message);
                        }
                        failures += 1;
                        let wait = registration_wait(&e, failures);
                        note_failure(board, slot, SlotState::Backoff, &e.to_string(), failures);
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
        board.set_state(slot, SlotState::Starting);
        let listener = match start(&sh, &root, &mut reg, &mut mode).await {
            Ok(l) => l,
            Err(msg) => {
                deregister_reg(&sh, &reg).await;
                failures += 1;
                note_failure(board, slot, SlotState::Backoff, &msg, failures);
                let wait = failure_backoff(failures);
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

        // 4. Act on its exit: the machine plans, the slot carries it out.
        let reason = machine::reason(w.cause.as_ref(), w.ended, &w.seen);
        let plan = machine::after_exit(&machine::Exit {
            reason,
            watchdog: match &w.cause {
                Some(StopCause::Watchdog(c, d)) => Some((*c, d.clone())),
                _ => None,
            },
            fixed_name: matches!(reg.secret, RegSecret::Token(_)),
            failures,
            retryable_streak,
            retryable_exits: sh.cfg.watchdog.retryable_exits,
            network_evidence: last_fatal.as_deref().is_some_and(looks_like_network),
            session_conflict_wait: sh.cfg.runner.session_conflict_wait,
            host: machine::HostFacts {
                clock_fault: sh.hoststate.clock_fault(),
                token_invalid: sh.hoststate.token_invalid(),
            },
        });
        for (cause, detail) in &plan.fires {
            sh.fire(slot, *cause, detail);
        }
        if plan.clock_fault {
            sh.hoststate
                .set_clock_fault("the runner reported clock skew (more than five minutes)");
        }
        retryable_streak = plan.retryable_streak;
        board.stats.exit(reason.as_str());
        // A job that started and never completed is lost with its listener.
        let running = board.slots().get(slot).and_then(|s| s.job.clone());
        if let (Some(job), false) = (&running, w.seen.job_completed) {
            tracing::warn!(slot, runner = %reg.name, job = %job, reason = reason.as_str(), ended = ?w.ended, "the listener ended mid-job: the job {job:?} is lost (GitHub fails it when the runner does not come back)");
            board.job_lost(slot);
        }
        board.update(slot, |s| {
            s.last_exit = Some(format!("{} ({:?})", reason.as_str(), w.ended));
            s.last_exit_at = Some(crate::clocks::wall_now());
            // Its registration is gone (GitHub's after a job, or deleted below).
            s.runner = None;
            s.job = None;
            s.job_started_at = None;
        });
        tracing::info!(slot, runner = %reg.name, ended = ?w.ended, reason = reason.as_str(), "listener exited");
        if plan.deregister {
            // The service removes an ephemeral runner after its job; anything else is ours to delete.
            deregister_reg(&sh, &reg).await;
        }
        failures = plan.failures;
        if failures == 0 {
            clear_failure(board, slot);
        }
        let wait = match plan.next {
            Next::Now => None,
            Next::StopStraysThenWait(d) => {
                // The fixed name's session may be held by a stray listener of this root.
                crate::procs::stop_strays(std::slice::from_ref(&root), sh.cfg.runner.stop_grace)
                    .await;
                Some(d)
            }
            Next::AwaitUpdate => {
                wait_for_update(&root, sh.cfg.runner.update_wait).await;
                None
            }
            Next::Pause { wait } => {
                let msg = format!("the runner in {} is too old for GitHub: install a current actions/runner release there and restart", sh.cfg.runner.dir.display());
                tracing::error!(slot, "{msg}");
                note_failure(board, slot, SlotState::Paused, &msg, failures);
                Some(wait)
            }
            Next::Backoff { wait, error } => {
                note_failure(board, slot, SlotState::Backoff, &error, failures);
                tracing::warn!(slot, runner = %reg.name, reason = reason.as_str(), failures, wait_ms = wait.as_millis() as u64, "listener failed; backing off");
                Some(wait)
            }
        };
        if let Some(d) = wait {
            if !d.is_zero() {
                if board.state(slot) != Some(SlotState::Paused) {
                    board.set_state(slot, SlotState::Backoff);
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
    board.set_state(slot, SlotState::Stopped);
}

fn note_failure(board: &Board, slot: usize, state: SlotState, error: &str, failures: u32) {
    board.update(slot, |s| {
        s.error = Some(error.to_string());
        s.failures = failures;
        if s.failing_since.is_none() {
            s.failing_since = Some(crate::clocks::wall_now());
        }
    });
    board.set_state(slot, state);
}

pub(super) fn clear_failure(board: &Board, slot: usize) {
    board.update(slot, |s| {
        s.error = None;
        s.failures = 0;
        s.failing_since = None;
    });
}
