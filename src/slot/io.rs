//! What the slot's machine asks for, carried out: its effects on the status, the log and
//! GitHub ([`SlotIo::apply`]), and its operations, each raced against the supervisor
//! stopping ([`SlotIo::carry_out`]). Every decision is the machine's.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::github::GithubError;
use crate::os::shutdown::Mode;
use crate::policy::exit::{Ended, Seen};
use crate::runner::launch::process::Listener;
use crate::status::SlotState;

use super::listen::{start, wait_for_update, watch_listener, StartError};
use super::registration::{deregister_reg, failure, register, RegSecret, Registration};
use super::{clear_failure, note_failure, sleep_or_stop, Shared, SlotCmd};
use crate::policy::machine::outer::{Effect, Exited, Op, Outcome};
use crate::policy::machine::HostFacts;

/// A slot's hands: the shared context, and the registrations it holds.
pub(super) struct SlotIo {
    pub(super) sh: Arc<Shared>,
    pub(super) slot: usize,
    pub(super) root: PathBuf,
    /// The registration in hand.
    pub(super) reg: Option<Registration>,
    /// Its runner's name, for the log after it is gone.
    pub(super) name: String,
    /// The next registration, being made while a job runs.
    pub(super) prep: Option<JoinHandle<Result<Registration, GithubError>>>,
    /// The listener started and not yet watched.
    pub(super) listener: Option<Listener>,
    /// The engine OOM-killed the last listener's container.
    pub(super) oom_killed: bool,
    /// The supervisor's mode, as this slot sees it (for the stop budget of deletions).
    pub(super) mode: watch::Receiver<Mode>,
    /// The runner version the root was last rebuilt from (None: the configured one).
    pub(super) source: Option<PathBuf>,
    /// The runner version the autopilot gave the last start, when there is an autopilot.
    pub(super) version: Option<String>,
}

impl SlotIo {
    fn stopping(mode: &watch::Receiver<Mode>) -> bool {
        *mode.borrow() != Mode::Run
    }

    fn host(&self) -> HostFacts {
        HostFacts {
            clock_fault: self.sh.host.clock_fault(),
            token_invalid: self.sh.host.token_invalid(),
        }
    }

    /// Carry out one effect.
    pub(super) async fn apply(&mut self, e: Effect) {
        let (sh, slot) = (&self.sh, self.slot);
        let board = &sh.board;
        match e {
            Effect::Show(state) => board.set_state(slot, state),
            Effect::Error(error) => board.update(slot, |s| s.error = error),
            Effect::Failure {
                state,
                error,
                failures,
            } => note_failure(board, slot, state, &error, failures),
            Effect::ClearFailures => clear_failure(board, slot),
            Effect::Token { refused, message } => sh.host.set_token_state(board, refused, &message),
            Effect::ClockPaused(why) => {
                tracing::warn!(event = "clock_pause", slot, reason = %why, "clock fault: registrations paused until the clock is fixed")
            }
            Effect::ClockResumed => {
                tracing::info!(
                    event = "clock_resume",
                    slot,
                    "clock fixed: registrations resume"
                )
            }
            Effect::BreakerShown => sh.show_breaker(slot),
            Effect::RegistrationFailed { error, wait } => {
                tracing::warn!(event = "registration_failed", slot, error = %error, wait_s = wait.as_secs(), "registration failed; backing off")
            }
            Effect::StartFailed { error, wait } => {
                tracing::error!(event = "start_failed", slot, runner = %self.name, error = %error, wait_s = wait.as_secs(), "cannot start the runner; backing off");
                self.autopilot_failed(&format!("cannot start: {error}"));
            }
            Effect::ListenerStarted => {
                board
                    .stats
                    .listeners_started
                    .fetch_add(1, Ordering::Relaxed);
            }
            Effect::ClockFault => sh
                .host
                .set_clock_fault("the runner reported clock skew (more than five minutes)"),
            Effect::ExitNoted {
                reason,
                ended,
                lost_job,
            } => self.exit_noted(reason, ended, lost_job),
            Effect::Deregister => {
                if let Some(p) = sh.pool() {
                    p.gone(slot);
                }
                if let Some(r) = self.reg.take() {
                    deregister_reg(sh, &r, Self::stopping(&self.mode)).await;
                }
            }
            Effect::ListenerFailed {
                reason,
                failures,
                wait,
            } => {
                tracing::warn!(event = "listener_failed", slot, runner = %self.name, reason = reason.as_str(), failures, wait_ms = wait.as_millis() as u64, "listener failed; backing off");
                self.autopilot_failed(&format!("listener exited {}", reason.as_str()));
            }
            Effect::Deprecated {
                failures,
                upgrading,
            } => self.deprecated(failures, upgrading),
        }
    }

    /// The listener exited: counted, shown, and its job, if it had one, recorded lost
    /// with its cause (and looked up at GitHub once).
    fn exit_noted(
        &self,
        reason: crate::policy::exit::ExitReason,
        ended: crate::policy::exit::Ended,
        lost_job: Option<String>,
    ) {
        let (sh, slot) = (&self.sh, self.slot);
        let board = &sh.board;
        board.stats.exit(reason.as_str());
        if let Some(job) = lost_job {
            let before = sh
                .oom_at_job_start
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(slot)
                .copied()
                .flatten();
            let oom = self.oom_killed
                || matches!((before, crate::jobs::protect::oom_kills()), (Some(b), Some(n)) if n > b);
            let cause = crate::jobs::lost_cause(reason, ended, oom);
            // Its id at GitHub, looked up once (a re-run needs it).
            let of = board
                .snapshot()
                .slots
                .get(slot)
                .and_then(|s| s.job_of.clone());
            // The re-run looks it up once its run completes; otherwise, now. An ARC pod
            // has no credentials to look it up with (actions-runner-controller knows it).
            let of = of.filter(|_| sh.cfg.runner.jit_config.is_none());
            if let (Some(of), Some(j)) = (of, sh.jobs.clone()) {
                if j.reruns().is_none_or(|r| r.looks_up_at_once(&of)) {
                    tokio::spawn(crate::jobs::look_up(sh.gh.clone(), j, slot, of));
                }
            }
            if let Some(j) = &sh.jobs {
                j.ended(
                    slot,
                    crate::jobs::Outcome::Lost {
                        cause: cause.into(),
                        action: "recorded".into(),
                    },
                );
            }
            board.stats.jobs_lost_by.add(cause);
            tracing::warn!(event = "job_lost", cause, slot, runner = %self.name, job = %job, reason = reason.as_str(), ended = ?ended, "the listener ended mid-job: the job {job:?} is lost (GitHub fails it when the runner does not come back)");
            board.job_lost(slot);
        }
        // No longer busy: its registration is deleted next (GitHub may refuse that for a
        // while after a lost job), and the slot goes on from there.
        if board.state(slot) == Some(SlotState::Busy) {
            board.set_state(slot, SlotState::Finishing);
        }
        board.update(slot, |s| {
            s.last_exit = Some(format!("{} ({ended:?})", reason.as_str()));
            s.last_exit_at = Some(crate::os::clocks::wall_now());
            // Its registration is gone (GitHub's after a job, or deleted next).
            s.runner = None;
            s.job = None;
            s.job_of = None;
            s.job_started_at = None;
        });
        tracing::info!(event = "listener_exited", slot, runner = %self.name, ended = ?ended, reason = reason.as_str(), "listener exited");
        // Scale-set mode: a runner is done when its process exits, whatever the hints say.
        if let Some(p) = sh.pool() {
            p.gone(slot);
        }
        sh.host.autopilot(|f| f.ended(slot));
    }

    /// A deprecated runner: paused, with the exact fix, or until the autopilot upgrades it.
    fn deprecated(&self, failures: u32, upgrading: bool) {
        let (sh, slot) = (&self.sh, self.slot);
        let board = &sh.board;
        let sys = board.system_state();
        let have = self
            .version
            .clone()
            .filter(|v| !v.is_empty())
            .or(sys.runner_version)
            .unwrap_or_else(|| "this version".into());
        let msg = if upgrading {
            format!("runner {have} is too old for GitHub: it sends it no jobs; auto_update is on: the slot goes on with the newest release as soon as it is installed")
        } else {
            // The exact fix: the newest release, when GitHub listed one.
            let install = match sys.runner_latest {
                Some(l) => format!("install actions/runner {l} (https://github.com/actions/runner/releases/tag/v{l})"),
                None => "install the newest actions/runner release".to_string(),
            };
            format!(
                "the runner in {} ({have}) is too old for GitHub: it sends it no jobs; {install} there and restart the supervisor (or set [runner] auto_update = \"on\")",
                sh.cfg.runner.dir.display()
            )
        };
        tracing::error!(event = "runner_deprecated", slot, version = %have, upgrading, "{msg}");
        self.autopilot_failed("a deprecated-version line");
        note_failure(board, slot, SlotState::Paused, &msg, failures);
    }

    /// The listener failed: on the canary, that counts against its runner version.
    fn autopilot_failed(&self, why: &str) {
        if let Some(d) = self.sh.host.autopilot(|f| f.failed(self.slot, why)) {
            self.sh.host.autopilot_decided(&self.sh.board, d);
        }
    }

    /// Carry out one operation; its outcome.
    pub(super) async fn carry_out(
        &mut self,
        op: Op,
        failures: u32,
        mode: &mut watch::Receiver<Mode>,
        cmds: &mut mpsc::UnboundedReceiver<SlotCmd>,
    ) -> Outcome {
        let (sh, slot) = (self.sh.clone(), self.slot);
        match op {
            Op::CheckGates if Self::stopping(mode) => Outcome::Stopping,
            Op::CheckGates => self.gates(),
            Op::AwaitIntake => self.await_intake(mode).await,
            Op::AwaitBreaker(wait) => tokio::select! {
                stop = sleep_or_stop(wait, mode) => if stop { Outcome::Stopping } else { Outcome::BreakerWaited { reset: false } },
                _ = sh.breaker_reset[slot].notified() => Outcome::BreakerWaited { reset: true },
            },
            Op::AwaitClock => {
                let mut clock = sh.host.clock.subscribe();
                tokio::select! {
                    _ = clock.wait_for(|c| !c.fault) => Outcome::ClockFixed,
                    _ = mode.wait_for(|m| *m != Mode::Run) => Outcome::Stopping,
                }
            }
            Op::TakePrepared => self.take_prepared().await,
            Op::AwaitAssignment => match sh.pool() {
                Some(p) => tokio::select! {
                    _ = p.ticket(slot) => Outcome::Assigned,
                    _ = mode.wait_for(|m| *m != Mode::Run) => Outcome::Stopping,
                },
                None => Outcome::Assigned,
            },
            Op::Register => self.register(mode).await,
            Op::Start => self.start(mode).await,
            Op::Watch => self.watch(failures, mode, cmds).await,
            Op::ConfirmDeprecation { version } => tokio::select! {
                c = confirm_deprecation(&sh, slot, &version) => Outcome::DeprecationConfirmed(c),
                _ = mode.wait_for(|m| *m != Mode::Run) => Outcome::Stopping,
            },
            Op::Record(fires) => {
                let mut opened = None;
                for (cause, detail) in &fires {
                    opened = sh.fire(slot, *cause, detail).or(opened);
                }
                Outcome::Recorded { opened }
            }
            Op::Wait {
                wait,
                early_on_token,
            } => self.wait(wait, early_on_token, mode).await,
            Op::StopStraysThenWait(d) => {
                let roots = std::slice::from_ref(&self.root);
                crate::os::procs::stop_strays(roots, sh.cfg.runner.stop_grace).await;
                self.wait(d, false, mode).await
            }
            Op::AwaitRunnerUpgrade { limit } => self.await_upgrade(limit, mode).await,
            Op::AwaitUpdate => {
                wait_for_update(&self.root, sh.cfg.runner.update_wait).await;
                Outcome::Waited
            }
            Op::Finish => Outcome::Stopping,
        }
    }

    /// Wait, or until the supervisor stops; with `early_on_token`, also until the token
    /// works again.
    async fn wait(
        &self,
        wait: Duration,
        early_on_token: bool,
        mode: &mut watch::Receiver<Mode>,
    ) -> Outcome {
        let recovered = self.sh.host.token_recovered.notified();
        tokio::select! {
            stop = sleep_or_stop(wait, mode) => if stop { Outcome::Stopping } else { Outcome::Waited },
            _ = recovered, if early_on_token => Outcome::Waited,
        }
    }

    /// What the gates say now: the breaker, a clock fault, closed intake.
    fn gates(&self) -> Outcome {
        let sh = &self.sh;
        Outcome::Gates {
            breaker: sh.breaker_open(self.slot),
            clock_fault: sh.host.clock_fault().then(|| {
                let c = sh.host.clock.borrow();
                c.reason.clone().unwrap_or_else(|| "clock fault".into())
            }),
            intake_closed: sh.host.intake_closed(),
        }
    }

    /// Delete the registration made in advance, then wait until intake opens.
    async fn await_intake(&mut self, mode: &mut watch::Receiver<Mode>) -> Outcome {
        if let Some(h) = self.prep.take() {
            if let Ok(Ok(r)) = h.await {
                deregister_reg(&self.sh, &r, false).await;
            }
        }
        let mut intake = self.sh.host.intake.subscribe();
        tokio::select! {
            _ = intake.wait_for(|c| c.is_none()) => Outcome::IntakeOpened,
            _ = mode.wait_for(|m| *m != Mode::Run) => Outcome::Stopping,
        }
    }

    /// Take the registration made in advance into hand, if it was made.
    async fn take_prepared(&mut self) -> Outcome {
        let Some(h) = self.prep.take() else {
            return Outcome::Prepared(None);
        };
        match h.await {
            Ok(Ok(r)) => {
                let usable = r.usable();
                self.name = r.name.clone();
                self.reg = Some(r);
                Outcome::Prepared(Some(usable))
            }
            _ => Outcome::Prepared(None),
        }
    }

    /// Make a registration (or, stopping meanwhile, none).
    async fn register(&mut self, mode: &mut watch::Receiver<Mode>) -> Outcome {
        let r = tokio::select! {
            r = register(&self.sh, self.slot) => r,
            _ = mode.wait_for(|m| *m != Mode::Run) => return Outcome::Stopping,
        };
        match r {
            Ok(r) => {
                let fixed_name = matches!(r.secret, RegSecret::Token(_));
                self.name = r.name.clone();
                self.reg = Some(r);
                Outcome::Registered {
                    fixed_name,
                    stopping: Self::stopping(mode),
                }
            }
            Err(e) => Outcome::RegisterFailed(failure(&e)),
        }
    }

    /// Ask for the newest runner now, and wait until this slot's next listener would run
    /// another version than the refused one, or for `limit`.
    async fn await_upgrade(&self, limit: Duration, mode: &mut watch::Receiver<Mode>) -> Outcome {
        let sh = &self.sh;
        let mut changed = sh.host.runner_versions.subscribe();
        sh.host.check_versions.notify_one();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            // Seen and reserved at once: only one waiting slot becomes the canary.
            let moved = sh
                .host
                .autopilot(|f| {
                    let other = Some(&f.next_for(self.slot).name) != self.version.as_ref();
                    if other {
                        f.reserve(self.slot);
                    }
                    other
                })
                .unwrap_or(false);
            if moved {
                return Outcome::Waited;
            }
            tokio::select! {
                r = changed.changed() => if r.is_err() { return Outcome::Waited },
                _ = tokio::time::sleep_until(deadline) => return Outcome::Waited,
                _ = mode.wait_for(|m| *m != Mode::Run) => return Outcome::Stopping,
            }
        }
    }

    async fn start(&mut self, mode: &mut watch::Receiver<Mode>) -> Outcome {
        let Some(reg) = self.reg.as_mut() else {
            return Outcome::StartFailed("no registration in hand".into());
        };
        let name = reg.name.clone();
        self.sh.board.update(self.slot, |s| {
            s.runner = Some(name);
            s.job = None;
        });
        // The runner version the autopilot gives this start (between jobs, always).
        if let Some(v) = self.sh.host.autopilot(|f| f.start(self.slot)) {
            let name = v.name.clone();
            self.version = Some(name.clone());
            self.sh.board.update(self.slot, |s| {
                s.runner_version = Some(name).filter(|n| !n.is_empty())
            });
            let from = self.source.as_ref().unwrap_or(&self.sh.cfg.runner.dir);
            if *from != v.dir {
                if let Err(e) = crate::os::layout::prepare_slot(&v.dir, &self.root) {
                    return Outcome::StartFailed(format!(
                        "cannot rebuild {} from runner {}: {e}",
                        self.root.display(),
                        v.name
                    ));
                }
                tracing::info!(event = "runner_switched", slot = self.slot, version = %v.name, "slot {} now runs runner {}", self.slot, v.name);
                self.source = Some(v.dir);
            }
        }
        let install = self
            .source
            .clone()
            .unwrap_or_else(|| self.sh.cfg.runner.dir.clone());
        if self.sh.containers.get().is_none()
            && self.sh.cfg.runner.workspace == crate::config::Workspace::Fresh
        {
            crate::os::layout::fresh_workspace(&self.root.join(&self.sh.cfg.runner.work_folder));
        }
        let docker = crate::status::Condition::Docker;
        match start(&self.sh, self.slot, &self.root, &install, reg, mode).await {
            Ok(l) => {
                if let Some(jobs) = self.sh.containers.get() {
                    self.sh.board.set_condition(docker, None);
                    let c = l.container().map(|name| crate::status::SlotContainer {
                        name: name.to_string(),
                        image: jobs.image().to_string(),
                    });
                    self.sh.board.update(self.slot, |s| s.container = c);
                }
                self.listener = Some(l);
                Outcome::Started
            }
            Err(StartError::Failed(msg)) => Outcome::StartFailed(msg),
            Err(StartError::Engine(msg)) => {
                let why = format!("job containers cannot be made: {msg}");
                self.sh
                    .board
                    .set_condition(docker, Some((crate::status::Health::Degraded, why)));
                Outcome::StartFailed(msg)
            }
            Err(StartError::BelowFloor(msg)) => {
                tracing::warn!(event = "registration_floor", slot = self.slot, error = %msg, "config.sh refused the runner: below GitHub's registration floor");
                Outcome::VersionRefused(msg)
            }
        }
    }

    async fn watch(
        &mut self,
        failures: u32,
        mode: &mut watch::Receiver<Mode>,
        cmds: &mut mpsc::UnboundedReceiver<SlotCmd>,
    ) -> Outcome {
        // A canary listener is on probation like a failing one: listening for
        // `stable_after` proves its version.
        let canary = self
            .sh
            .host
            .autopilot(|f| f.canary().and_then(|(_, s)| s) == Some(self.slot))
            .unwrap_or(false);
        let failures = if canary { failures.max(1) } else { failures };
        let w = match self.listener.take() {
            Some(l) => {
                let oom = l.oom_flag();
                let container = l.container().map(str::to_string);
                let w =
                    watch_listener(&self.sh, self.slot, l, mode, cmds, &mut self.prep, failures)
                        .await;
                self.oom_killed = oom.load(Ordering::Acquire);
                self.sh.board.update(self.slot, |s| s.container = None);
                // The job's container is gone: its tool-cache view too, promoted from a
                // successful job.
                if let (Some(jobs), Some(c)) = (self.sh.containers.get(), container) {
                    let ok = w.completed.as_deref() == Some("Succeeded") && !self.oom_killed;
                    jobs.job_done(&c, ok).await;
                }
                w
            }
            None => super::listen::Watched {
                ended: Ended::Code(-1),
                seen: Seen::default(),
                cause: None,
                fatal: None,
                job: None,
                stable: false,
                completed: None,
            },
        };
        Outcome::Exited(Exited {
            ended: w.ended,
            seen: w.seen,
            cause: w.cause,
            fatal: w.fatal,
            job: w.job,
            stable: w.stable,
            prepared: self.prep.is_some(),
            host: self.host(),
        })
    }

    /// The slot has stopped: nothing made in advance may stay registered.
    pub(super) async fn finish(&mut self) {
        if let Some(h) = self.prep.take() {
            if let Ok(Ok(r)) = h.await {
                deregister_reg(&self.sh, &r, Self::stopping(&self.mode)).await;
            }
        }
        self.sh.board.update(self.slot, |s| {
            s.job = None;
            s.job_of = None;
            s.runner = None;
        });
        self.sh.board.set_state(self.slot, SlotState::Stopped);
    }
}

/// Whether GitHub dates `version`'s runtime deadline in the past (the deprecations
/// endpoint). Anything else (no date, a version it does not know, no answer) is no
/// confirmation.
async fn confirm_deprecation(sh: &Shared, slot: usize, version: &str) -> bool {
    // A runner refused at its session's creation never printed its version: the one
    // installed is the one that ran.
    let installed = sh.board.system_state().runner_version;
    let version = match version {
        "" => installed.as_deref().unwrap_or(""),
        v => v,
    };
    // From 2.337.0 the line comes only from the broker's typed error: no doubt.
    if !crate::policy::exit::deprecation_needs_confirmation(Some(version).filter(|v| !v.is_empty()))
    {
        return true;
    }
    let answer = match version {
        "" => Ok(None),
        v => sh.gh.runner_deprecation(v).await,
    };
    let now = crate::os::clocks::wall_now();
    let deadline = match &answer {
        Ok(Some(d)) => d.runtime_deprecates_at,
        _ => None,
    };
    let confirmed = deadline.is_some_and(|at| at <= now);
    match (&answer, confirmed) {
        (_, true) => {
            tracing::warn!(event = "deprecation_confirmed", slot, version, deadline = ?deadline, "GitHub confirms: runner {version} is past its runtime deadline")
        }
        (Err(e), false) => {
            tracing::warn!(event = "deprecation_unconfirmed", slot, version, error = %e, "the runner says it is deprecated, and GitHub cannot confirm it now: treated as a network fault")
        }
        (Ok(_), false) => {
            tracing::warn!(event = "deprecation_unconfirmed", slot, version, deadline = ?deadline, "the runner says it is deprecated, but GitHub dates no past deadline for {version}: a 403 from the broker, treated as a network fault")
        }
    }
    confirmed
}
