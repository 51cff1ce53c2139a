//! One listener's life: start it (config.sh first in token mode), watch its events,
//! the watchdog, its sockets and slot commands, and stop it: SIGINT, grace, SIGKILL.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::github::{AuthToken, GithubError};
use crate::layout;
use crate::runner::events::RunnerEvent;
use crate::runner::exit::{Ended, Seen};
use crate::runner::process::{Listener, Output};
use crate::shutdown::Mode;
use crate::status::SlotState;
use crate::watchdog::{attribute, looks_like_network, Cause, Watchdog};

use super::registration::{register, RegSecret, Registration};
use super::{clear_failure, Shared, SlotCmd};

/// Why we stopped a listener ourselves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum StopCause {
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

pub(super) struct Watched {
    pub(super) ended: Ended,
    pub(super) seen: Seen,
    pub(super) cause: Option<StopCause>,
    /// The last `An error occurred:` message.
    pub(super) fatal: Option<String>,
}

/// Spawn config.sh (token mode) and then the listener.
pub(super) async fn start(
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
    let url = format!("{}/{}", c.github.web_url, sh.gh.scope().web_path());
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
pub(super) async fn wait_for_update(root: &Path, limit: Duration) {
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
pub(super) async fn watch_listener(
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
    let mut stable_at: Option<Instant> = None;
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
                            board.set_state(slot, SlotState::Busy);
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
                            board.set_state(slot, SlotState::Listening);
                            // A crash loop listens too: the failures end only once it
                            // has listened for `stable_after`.
                            if *failures > 0 {
                                stable_at = Some(Instant::now() + cfg.stable_after);
                            }
                        }
                        RunnerEvent::JobStarted { name } => {
                            busy = true;
                            board.update(slot, |s| s.job = Some(name));
                            board.set_state(slot, SlotState::Busy);
                            if prep.is_none() && *mode.borrow() == Mode::Run {
                                let sh2 = sh.clone();
                                *prep = Some(tokio::spawn(async move { register(&sh2, slot).await }));
                            }
                        }
                        RunnerEvent::JobCompleted { name, result } => {
                            busy = false;
                            board.stats.jobs_completed.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(slot, runner = %l.name(), job = %name, result = %result, "job completed");
                            board.set_state(slot, SlotState::Finishing);
                        }
                        RunnerEvent::SessionConflict if !busy => break Some(StopCause::SessionConflict),
                        RunnerEvent::Fatal { message } => fatal = Some(message),
                        RunnerEvent::Version(v) => board.set_fact("runner_version", v),
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
            _ = async { tokio::time::sleep_until(stable_at.expect("guarded")).await }, if stable_at.is_some() => {
                stable_at = None;
                tracing::info!(slot, runner = %l.name(), failures = *failures, stable_s = cfg.stable_after.as_secs(), "listener stable: the run of failures is over");
                *failures = 0;
                clear_failure(board, slot);
            }
            _ = async { tokio::time::sleep_until(drain_deadline.expect("guarded")).await }, if drain_deadline.is_some() => {
                tracing::warn!(slot, runner = %l.name(), "drain timeout: stopping the busy runner (its job is cancelled)");
                break Some(StopCause::Shutdown);
            }
        }
    };
    board.set_state(slot, SlotState::Stopping);
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
