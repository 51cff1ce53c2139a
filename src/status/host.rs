//! Host-level state that slots and monitors share: the clock's condition, the token's
//! validity, and triggers (measure the clock now, check the token now).
//!
//! The types both sides share (the causes of a watchdog fire and their attribution, the
//! commands monitors send to slots) are in [`crate::policy::cause`], pure, and re-exported here.
//!
//! It must not: do IO itself; monitors write it, slots read it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::{watch, Notify};

use tokio::sync::mpsc;

use crate::os::clocks::Clocks;
pub use crate::policy::cause::{attribute, looks_like_network, Cause, Context, SlotCmd};
use crate::status::{Board, Condition, Health};

/// The clock as last measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClockStatus {
    /// Registrations pause while this is set.
    pub fault: bool,
    /// Why, while faulty.
    pub reason: Option<String>,
    /// The last measured offset of the local clock, seconds (positive: local is ahead).
    pub offset: Option<f64>,
    /// Where the offset came from (an NTP server, or GitHub's Date header).
    pub source: Option<String>,
}

/// Shared host state.
pub struct Host {
    pub clock: watch::Sender<ClockStatus>,
    token_invalid: AtomicBool,
    /// Ask the clock monitor to measure now.
    pub measure_clock: Notify,
    /// Ask the token watch to check now.
    pub check_token: Notify,
    /// Woken when a refused token works again (slots waiting out an auth back-off retry).
    pub token_recovered: Notify,
    pub clocks: Arc<dyn Clocks>,
    /// The running listeners, by slot: written by slots, watched by the connection watch.
    pub listeners: watch::Sender<BTreeMap<usize, ListenerEntry>>,
    /// The runner autopilot's policy (which version each slot's next listener runs), once
    /// the supervisor has set it up.
    pub autopilot: std::sync::Mutex<Option<crate::runner::autopilot::Fleet>>,
    /// The slots' command channels, for whoever must recycle a slot.
    pub slot_cmds: std::sync::OnceLock<SlotCmds>,
    /// Ask the version watch to look for a newer runner now (`supervisor runner upgrade`).
    pub check_versions: Notify,
    /// Bumped whenever the autopilot's versions change (a version offered, promoted or
    /// rolled back): slots waiting for a newer runner look again.
    pub runner_versions: watch::Sender<u64>,
    /// The runner versions directory, once the autopilot runs (where rollbacks are
    /// remembered).
    pub versions_store: std::sync::OnceLock<crate::runner::store::Store>,
    /// Why intake is closed (`[intake]`), or `None` while the host takes jobs.
    pub intake: watch::Sender<Option<String>>,
    /// Bumped at each resume (or a wall-clock step treated as one): the scale-set
    /// session is rebuilt at once.
    pub resumed: watch::Sender<u64>,
}

/// A running listener, as the monitors see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerEntry {
    pub pid: i32,
    /// The runner it serves.
    pub runner: String,
    /// It is listening for a job (not starting, busy or finishing).
    pub idle: bool,
    /// Bumped when its connections may have changed (it started listening, reconnected,
    /// took a job): look for new sockets now.
    pub rescans: u64,
}

impl Host {
    /// A listener runs in `slot`, for `runner`.
    pub fn listener_started(&self, slot: usize, pid: i32, runner: &str) {
        self.listeners.send_modify(|m| {
            m.insert(
                slot,
                ListenerEntry {
                    pid,
                    runner: runner.to_string(),
                    idle: false,
                    rescans: 0,
                },
            );
        });
    }

    /// The listener of `slot` listens for a job (`true`) or no longer (a job, a stop).
    pub fn listener_idle(&self, slot: usize, idle: bool) {
        self.listeners.send_if_modified(|m| match m.get_mut(&slot) {
            Some(e) if e.idle != idle => {
                e.idle = idle;
                true
            }
            _ => false,
        });
    }

    /// The slots whose listener listens for a job, with their runners' names.
    pub fn listening(&self) -> Vec<(usize, String)> {
        self.listeners
            .borrow()
            .iter()
            .filter(|(_, e)| e.idle)
            .map(|(s, e)| (*s, e.runner.clone()))
            .collect()
    }

    /// Its connections may have changed.
    pub fn listener_rescan(&self, slot: usize) {
        self.listeners.send_modify(|m| {
            if let Some(e) = m.get_mut(&slot) {
                e.rescans += 1;
            }
        });
    }

    /// The listener of `slot` ended.
    pub fn listener_ended(&self, slot: usize) {
        self.listeners.send_modify(|m| {
            m.remove(&slot);
        });
    }
}

impl Host {
    /// A host with these clocks.
    pub fn new(clocks: Arc<dyn Clocks>) -> Host {
        Host {
            listeners: watch::channel(BTreeMap::new()).0,
            clock: watch::channel(ClockStatus::default()).0,
            token_invalid: AtomicBool::new(false),
            measure_clock: Notify::new(),
            check_token: Notify::new(),
            token_recovered: Notify::new(),
            clocks,
            autopilot: std::sync::Mutex::new(None),
            check_versions: Notify::new(),
            runner_versions: watch::channel(0).0,
            versions_store: std::sync::OnceLock::new(),
            slot_cmds: std::sync::OnceLock::new(),
            intake: watch::channel(None).0,
            resumed: watch::channel(0).0,
        }
    }

    /// Run `f` on the autopilot, when there is one.
    pub fn autopilot<R>(
        &self,
        f: impl FnOnce(&mut crate::runner::autopilot::Fleet) -> R,
    ) -> Option<R> {
        let mut a = self.autopilot.lock().unwrap_or_else(|p| p.into_inner());
        a.as_mut().map(f)
    }

    /// The autopilot's versions changed: slots waiting for a newer runner look again.
    pub fn runner_versions_changed(&self) {
        self.runner_versions.send_modify(|n| *n += 1);
    }

    /// Carry out what the autopilot decided: recycle the idle slots a promotion moves, or
    /// say once that a version was rolled back.
    pub fn autopilot_decided(&self, board: &Board, d: crate::runner::autopilot::Decision) {
        use crate::runner::autopilot::Decision;
        match d {
            Decision::None => {}
            Decision::Promoted { version, recycle } => {
                tracing::info!(event = "runner_promoted", version = %version, recycle = ?recycle, "runner {version} proved on the canary: every slot moves to it between jobs");
                board.system(|s| {
                    s.runner_canary = None;
                    // GitHub's deadline for the new version is read next (the version
                    // watch wakes on `runner_versions`); the old one's no longer applies.
                    s.runner_version = Some(version.clone());
                    s.runner_deadline = crate::runner::version::Deadline::Unchecked;
                    s.runner_deadline_for = None;
                    s.runner_upgraded = Some(format!(
                        "{version} at {}",
                        crate::os::clocks::wall_now().format("%Y-%m-%d %H:%M UTC")
                    ));
                });
                board.set_condition(Condition::RunnerVersion, None);
                self.recycle(&recycle);
                self.runner_versions_changed();
            }
            Decision::RolledBack {
                version,
                to,
                reason,
            } => {
                if let Some(st) = self.versions_store.get() {
                    if let Err(e) = st.mark_bad(&version, &reason) {
                        tracing::warn!(event = "runner_mark_failed", version = %version, error = %e, "cannot remember the rollback of {version}: {e}");
                    }
                }
                tracing::error!(event = "runner_rolled_back", version = %version, to = %to, reason = %reason, "runner {version} failed twice on the canary ({reason}): every slot stays on {to}; {version} is not tried again until a newer release appears or `supervisor runner retry`");
                board.system(|s| {
                    s.runner_canary = None;
                    s.runner_bad.push(format!("{version}: {reason}"));
                });
                board.set_condition(
                    Condition::RunnerUpgrade,
                    Some((
                        Health::Ok,
                        format!("runner {version} rolled back to {to}: {reason}"),
                    )),
                );
                self.runner_versions_changed();
            }
        }
    }

    /// Intake closed (`Some(why)`) or open: when it closes, every slot stops its idle
    /// listener (a busy one finishes its job); no slot registers while it is closed.
    pub fn set_intake(&self, closed: Option<String>) {
        let closing = closed.is_some() && self.intake.borrow().is_none();
        self.intake.send_replace(closed);
        if closing {
            if let Some(cmds) = self.slot_cmds.get() {
                for c in cmds {
                    let _ = c.send(SlotCmd::CloseIntake);
                }
            }
        }
    }

    /// Why intake is closed, while it is.
    pub fn intake_closed(&self) -> Option<String> {
        self.intake.borrow().clone()
    }

    /// Ask these slots to replace their idle listener.
    pub fn recycle(&self, slots: &[usize]) {
        if let Some(cmds) = self.slot_cmds.get() {
            for &s in slots {
                if let Some(c) = cmds.get(s) {
                    let _ = c.send(SlotCmd::Recycle);
                }
            }
        }
    }

    /// Whether a clock fault is active.
    pub fn clock_fault(&self) -> bool {
        self.clock.borrow().fault
    }

    /// Mark the clock faulty (e.g. the runner printed the clock-skew line).
    pub fn set_clock_fault(&self, reason: &str) {
        self.clock.send_modify(|c| {
            c.fault = true;
            c.reason = Some(reason.to_string());
        });
        self.measure_clock.notify_one();
    }

    /// Whether GitHub refused the token.
    pub fn token_invalid(&self) -> bool {
        self.token_invalid.load(Ordering::Relaxed)
    }

    /// Record the token's validity; returns true when it changed.
    pub fn set_token_invalid(&self, invalid: bool) -> bool {
        self.token_invalid.swap(invalid, Ordering::Relaxed) != invalid
    }

    /// What is known for attributing a watchdog fire.
    pub fn context(&self, network_evidence: bool) -> Context {
        Context {
            clock_fault: self.clock_fault(),
            token_invalid: self.token_invalid(),
            network_evidence,
        }
    }
}

/// A sender of commands to each slot.
pub type SlotCmds = Vec<mpsc::UnboundedSender<SlotCmd>>;

impl Host {
    /// Record the token's validity (here and in health); logs transitions.
    pub fn set_token_state(&self, board: &Board, invalid: bool, why: &str) {
        if self.set_token_invalid(invalid) {
            if invalid {
                // The token watch re-checks every 30 s from now on, not at its next
                // 6-hourly check.
                self.check_token.notify_one();
                tracing::error!(event = "token_refused", error = %why, "GitHub refused the token: {why}; registrations retry at most once per 5 minutes per slot, and the token is checked every 30 s, until it works again; replace GITHUB_PAT or the token file, or fix the GitHub App's installation");
            } else {
                tracing::info!(event = "token_recovered", "the token works again");
                self.token_recovered.notify_waiters();
            }
        }
        board.set_condition(
            Condition::Token,
            invalid.then(|| {
                (
                    Health::Degraded,
                    format!("GitHub refuses the token (401): {why}"),
                )
            }),
        );
    }
}
