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
//! listener (config.sh first in token mode) and watches it; this file is the loop;
//! [`once`] runs one listener of a JIT config given from outside (an ARC runner pod).

mod breaker;
mod deletions;
pub mod demand;
mod io;
mod listen;
mod once;
mod registration;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::config::{Config, RegistrationMode};
use crate::github::GithubClient;
use crate::os::shutdown::Mode;
use crate::policy::watchdog::{Breaker, Verdict};
use crate::runner::launch::process::ENV_ALLOWLIST;
pub use crate::status::host::SlotCmd;
use crate::status::host::{Cause, Host};
use crate::status::{Board, SlotState};

use crate::policy::machine::outer::{self, Backoff, Jitter, Op, Outcome, SlotLimits};
pub use deletions::Deletions;
use io::SlotIo;
pub use once::{run_jit, JitRunner, Ran};
pub use registration::{deregister, register, RegSecret, Registration};

/// A pre-made registration older than this is discarded rather than used.
pub(super) const PREPARED_MAX_AGE: Duration = Duration::from_secs(3600);

/// What every slot shares.
pub struct Shared {
    pub cfg: Arc<Config>,
    pub gh: GithubClient,
    /// The host part of runner names.
    pub hostname: String,
    pub board: Arc<Board>,
    pub roots: Vec<PathBuf>,
    /// The environment every runner gets (allow-listed, plus configured extras).
    pub runner_env: Vec<(String, String)>,
    /// `auto` becomes `jit` or `token` on first use.
    reg_mode: Mutex<RegistrationMode>,
    /// The host-level state monitors write and slots read.
    pub host: Arc<Host>,
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
    /// The job records, when they can be kept.
    pub jobs: Option<Arc<crate::jobs::Journal>>,
    /// Each slot's count of the cgroup's OOM kills when its job started (where the kernel
    /// tells): more at the loss means the OOM killer took it.
    pub oom_at_job_start: Mutex<Vec<Option<u64>>>,
    /// Scale-set mode: the session's pool, which says when a slot may start a runner.
    pool: std::sync::OnceLock<Arc<crate::slot::demand::scaleset::Pool>>,
    /// `[runner] backend = "container"`: the engine where each listener gets its container.
    pub containers: std::sync::OnceLock<Arc<crate::runner::launch::container::Jobs>>,
    /// The runner's action archive cache, filled by the supervisor (None if it cannot be
    /// made).
    pub actions: Option<Arc<crate::runner::actions::ActionCache>>,
}

impl Shared {
    /// Assemble the shared slot context.
    pub fn new(
        cfg: Arc<Config>,
        gh: GithubClient,
        hostname: String,
        board: Arc<Board>,
        roots: Vec<PathBuf>,
        outer_env: &dyn Fn(&str) -> Option<String>,
        host: Arc<Host>,
    ) -> Shared {
        let mut env: Vec<(String, String)> = ENV_ALLOWLIST
            .iter()
            .filter_map(|k| outer_env(k).map(|v| (k.to_string(), v)))
            .collect();
        for (k, v) in cfg.runner.pass_env.iter().chain(cfg.runner.env.iter()) {
            env.retain(|(ek, _)| ek != k);
            env.push((k.clone(), v.clone()));
        }
        // The listener's trace on stdout: its job-lease renewals reach the watch (logged
        // at debug, like every other trace line).
        env.retain(|(k, _)| k != "ACTIONS_RUNNER_PRINT_LOG_TO_STDOUT");
        env.push(("ACTIONS_RUNNER_PRINT_LOG_TO_STDOUT".into(), "1".into()));
        // The action archive cache the supervisor fills; jobs only read it.
        let actions = match crate::runner::actions::ActionCache::open(&cfg.runner.action_cache) {
            Ok(a) => {
                env.retain(|(k, _)| k != crate::runner::actions::VAR);
                env.push((
                    crate::runner::actions::VAR.into(),
                    a.dir().display().to_string(),
                ));
                Some(Arc::new(a))
            }
            Err(e) => {
                tracing::warn!(event = "action_cache_unavailable", dir = %cfg.runner.action_cache.display(), error = %e, "no action archive cache: jobs download every action");
                None
            }
        };
        // Make a deprecated version visible as exit 7 rather than a generic 1.
        env.push((
            "ACTIONS_RUNNER_RETURN_VERSION_DEPRECATED_EXIT_CODE".into(),
            "1".into(),
        ));
        let reg_mode = Mutex::new(cfg.runner.registration);
        let slots = cfg.runner.slots;
        let breaker_path = cfg.state_dir.join("breaker.json");
        let boot_id = breaker::boot_id();
        let breakers = Mutex::new(breaker::load(&breaker_path, cfg.runner.slots, &boot_id));
        let deletions = Arc::new(Deletions::load(cfg.state_dir.join("deletions.json")));
        let breaker_reset = (0..cfg.runner.slots)
            .map(|_| tokio::sync::Notify::new())
            .collect();
        let sh = Shared {
            cfg,
            gh,
            hostname,
            board,
            roots,
            runner_env: env,
            reg_mode,
            host,
            breakers,
            breaker_path,
            boot_id,
            deletions,
            stop_deadline: Mutex::new(None),
            oom_at_job_start: Mutex::new(vec![None; slots]),
            breaker_reset,
            jobs: None,
            pool: std::sync::OnceLock::new(),
            containers: std::sync::OnceLock::new(),
            actions,
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
        let now = self.host.clocks.boottime();
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
                    crate::os::clocks::wall_now()
                        + chrono::Duration::from_std(d).unwrap_or_default()
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
            let was = all[i].open_for(self.host.clocks.boottime());
            all[i] = Breaker::default();
            tracing::info!(
                event = "breaker_reset",
                slot = i,
                was_open_s = was.map(|d| d.as_secs()),
                "circuit breaker reset by the operator"
            );
        }
        if let Err(e) = breaker::save(&self.breaker_path, &self.boot_id, &all) {
            tracing::warn!(event = "breaker_persist_failed", error = %e, "cannot persist the circuit breaker");
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

    /// Scale-set mode: the pool, set once before the slots start.
    pub fn set_pool(&self, p: Arc<crate::slot::demand::scaleset::Pool>) {
        let _ = self.pool.set(p);
    }

    /// The scale-set pool, in scale-set mode.
    pub fn pool(&self) -> Option<&Arc<crate::slot::demand::scaleset::Pool>> {
        self.pool.get()
    }

    /// The limits of the slot's policy.
    fn slot_limits(&self) -> SlotLimits {
        SlotLimits {
            backoff: Backoff {
                base: self.cfg.runner.failure_backoff,
                cap: crate::policy::machine::outer::FAILURE_BACKOFF_CAP,
            },
            retryable_exits: self.cfg.watchdog.retryable_exits,
            session_conflict_wait: self.cfg.runner.session_conflict_wait,
            auto_update: self.cfg.runner.auto_update == crate::config::AutoUpdate::On,
            on_demand: self.cfg.runner.mode == crate::config::RunnerMode::ScaleSet,
        }
    }

    /// Show slot `slot`'s breaker as it is now.
    fn show_breaker(&self, slot: usize) {
        let b = self.breakers.lock().unwrap_or_else(|p| p.into_inner())[slot].clone();
        self.publish_breaker(slot, &b);
    }

    /// Record a watchdog fire for `slot`; the breaker's verdict: how long it is now open
    /// and why, if the fire opened it.
    pub fn fire(&self, slot: usize, cause: Cause, detail: &str) -> Option<(Duration, String)> {
        let w = &self.cfg.watchdog;
        let now = self.host.clocks.boottime();
        let mut all = self.breakers.lock().unwrap_or_else(|p| p.into_inner());
        let b = &mut all[slot];
        let verdict = b.record(cause, now, w.max_fires, w.window, w.open_for);
        tracing::warn!(event = "watchdog_fire", slot, cause = cause.as_str(), detail, window = %b.describe(), "watchdog fired: replacing the listener");
        let opened = match verdict {
            Verdict::Opened {
                until,
                fires,
                dominant,
            } => {
                let open = until.saturating_sub(now);
                tracing::error!(event = "breaker_open", 
                    slot,
                    fires,
                    cause = dominant.as_str(),
                    open_s = open.as_secs(),
                    "circuit breaker open: {fires} watchdog fires within {}; the slot pauses (root cause: {})",
                    humantime::format_duration(w.window),
                    dominant.as_str()
                );
                Some((
                    open,
                    format!(
                        "circuit breaker open for {}s after {}",
                        open.as_secs(),
                        b.opened_by.clone().unwrap_or_else(|| b.describe())
                    ),
                ))
            }
            Verdict::Closed => None,
        };
        if let Err(e) = breaker::save(&self.breaker_path, &self.boot_id, &all) {
            tracing::warn!(event = "breaker_persist_failed", error = %e, "cannot persist the circuit breaker");
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
        let now = self.host.clocks.boottime();
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

/// Run slot `slot` until the supervisor stops: carry out what the slot's machine decides
/// ([`outer::Slot`]) and feed it the outcomes. Nothing is decided here.
pub async fn run(
    sh: Arc<Shared>,
    slot: usize,
    mut mode: watch::Receiver<Mode>,
    mut cmds: mpsc::UnboundedReceiver<SlotCmd>,
) {
    let mut m = outer::Slot::new(sh.slot_limits(), Jitter::Seeded(rand::random()));
    let mut io = SlotIo {
        root: sh.roots[slot].clone(),
        sh,
        slot,
        reg: None,
        name: String::new(),
        prep: None,
        listener: None,
        oom_killed: false,
        mode: mode.clone(),
        source: None,
        version: None,
    };
    let mut outcome = Outcome::Begin;
    loop {
        let step = m.step(outcome);
        for e in step.effects {
            io.apply(e).await;
        }
        if step.op == Op::Finish {
            break;
        }
        outcome = io
            .carry_out(step.op, m.failures, &mut mode, &mut cmds)
            .await;
    }
    io.finish().await;
}

fn note_failure(board: &Board, slot: usize, state: SlotState, error: &str, failures: u32) {
    board.update(slot, |s| {
        s.error = Some(error.to_string());
        s.failures = failures;
        if s.failing_since.is_none() {
            s.failing_since = Some(crate::os::clocks::wall_now());
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
