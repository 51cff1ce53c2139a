//! The same image as an actions-runner-controller runner pod (issue 19 §5): with
//! `ACTIONS_RUNNER_INPUT_JITCONFIG` in its environment and no token, `run` runs exactly
//! that one runner, with the slot's watchdog, keepalive, job records and hooks, registers
//! and deletes nothing, calls no GitHub API (it has no credentials: its client refuses
//! before sending), and exits the way ARC reads its `runner` container
//! (scaleset-protocol.md §7): 0 when the job is done, 7 when the runner's version is
//! deprecated, non-zero otherwise. A signal stops the runner at once (SIGINT, at most
//! `stop_grace`, capped at 20 s, then SIGKILL): the pod's grace is 30 s.
//!
//! A listener the watchdog replaces while it has taken no job (a dead connection, a
//! silent hang, not listening in time), or that exits 2 (the runner's own "re-launch"),
//! is started again with the same JIT config, as the stock image's `run.sh` does, at most
//! `[watchdog] max_fires` − 1 times; then, or once its breaker opens, the pod fails and
//! ARC recreates it.
//!
//! It must not: register, delete or reap a runner, or pass the JIT config anywhere but
//! in its one listener's environment.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::os::shutdown::Mode;
use crate::policy::exit::{Ended, ExitReason};
use crate::slot::{self, JitRunner, Ran};
use crate::status::host::SlotCmd;
use crate::status::SlotState;

use super::{Background, Deps, Summary};

/// The exit status for a runner version too old for GitHub (ARC marks the set Outdated).
pub const EXIT_DEPRECATED: u8 = 7;

/// Run the pod's one runner until it exits or a signal stops it; the summary and the
/// exit status for ARC.
pub async fn run(deps: Deps, mode_tx: Arc<watch::Sender<Mode>>) -> anyhow::Result<(Summary, u8)> {
    let cfg = deps.cfg.clone();
    let jit =
        cfg.runner.jit_config.clone().ok_or_else(|| {
            anyhow::anyhow!("no JIT config: not an actions-runner-controller pod")
        })?;
    // Its name as GitHub knows it (ARC names the pod after it), read from the config's
    // public `.runner` part; the pod's host name otherwise.
    let (id, name) = match runner_of(jit.expose()) {
        Some((id, name)) => (Some(id), name),
        None => (None, deps.hostname.clone()),
    };
    let runner = JitRunner { name, id, jit };
    tracing::info!(event = "arc_runner", runner = %runner.name, id = runner.id, stop_grace_s = cfg.runner.stop_grace.as_secs(), "an actions-runner-controller pod: running its one JIT runner (nothing is registered or deleted here, and no GitHub API is called)");
    // Registrations an earlier listener left in the root are this runner's own: kept.
    let state = super::prepare_state_dir(&cfg).await?;
    let endpoints = super::bind_endpoints(&cfg).await?;
    let background = Background::new();
    let board = super::start_board(&deps, &state.status_path, mode_tx.subscribe(), &background);
    board.system(|s| s.token_kind = None);
    let shared = super::build_shared(&deps, &board, state.roots, vec![]);
    let (cmd_tx, mut cmds) = mpsc::unbounded_channel::<SlotCmd>();
    let slot_cmds = vec![cmd_tx];
    let _ = shared.host.slot_cmds.set(slot_cmds.clone());
    super::serve_endpoints(endpoints, &shared, &mode_tx, &slot_cmds, &background);
    super::spawn_host_monitors(&deps.cfg, &shared, &slot_cmds, &background);
    let mut mode = pod_mode(&mode_tx);
    let code = run_runner(&shared, &runner, &mut mode, &mut cmds).await;
    shared.board.update(0, |s| {
        s.job = None;
        s.job_of = None;
        s.runner = None;
    });
    shared.board.set_state(0, SlotState::Stopped);
    super::tear_down(&shared, background, &state.status_path).await;
    Ok((board.summary(), code))
}

/// In a pod every stop is immediate: a drain (SIGTERM, SIGINT) is a forced stop, since
/// the runner gets SIGINT, `stop_grace` and SIGKILL within the pod's 30 s grace.
fn pod_mode(tx: &watch::Sender<Mode>) -> watch::Receiver<Mode> {
    fn pod(m: Mode) -> Mode {
        match m {
            Mode::Drain => Mode::Force,
            m => m,
        }
    }
    let mut rx = tx.subscribe();
    let (ptx, prx) = watch::channel(pod(*rx.borrow_and_update()));
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let m = pod(*rx.borrow_and_update());
            if ptx.send(m).is_err() {
                break;
            }
        }
    });
    prx
}

/// Listeners of the one runner until one ends for good: the exit status.
async fn run_runner(
    sh: &Arc<slot::Shared>,
    runner: &JitRunner,
    mode: &mut watch::Receiver<Mode>,
    cmds: &mut mpsc::UnboundedReceiver<SlotCmd>,
) -> u8 {
    let limit = sh.cfg.watchdog.max_fires.saturating_sub(1);
    let mut relaunches = 0u32;
    loop {
        let ran = match slot::run_jit(sh, 0, runner, relaunches, mode, cmds).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(event = "arc_exit", runner = %runner.name, code = 1, reason = "start_failed", error = %e, "cannot start the runner: the pod fails");
                return 1;
            }
        };
        // A watchdog fire counts in the breaker, as a slot's does.
        let breaker_open = ran
            .fire()
            .is_some_and(|(cause, detail)| sh.fire(0, cause, detail).is_some());
        let stopping = *mode.borrow() != Mode::Run;
        let code = exit_code(&ran);
        match after(&ran, stopping, relaunches, limit, breaker_open) {
            After::Exit(code) => {
                tracing::info!(event = "arc_exit", runner = %runner.name, code, reason = ran.reason.as_str(), lost_job = ran.lost_job.is_some(), "the runner is done: exit {code} for actions-runner-controller");
                return code;
            }
            After::Relaunch => {
                let wait = backoff(sh.cfg.runner.failure_backoff, relaunches);
                tracing::warn!(event = "arc_relaunch", runner = %runner.name, reason = ran.reason.as_str(), relaunches = relaunches + 1, limit, wait_ms = wait.as_millis() as u64, "the runner took no job: starting it again with the same JIT config");
                sh.board.set_state(0, SlotState::Backoff);
                let stopped = tokio::select! {
                    _ = tokio::time::sleep(wait) => false,
                    r = mode.wait_for(|m| *m != Mode::Run) => { let _ = r; true }
                };
                if stopped {
                    tracing::info!(event = "arc_exit", runner = %runner.name, code, reason = ran.reason.as_str(), lost_job = false, "stopped before the runner was started again: exit {code}");
                    return code;
                }
                relaunches += 1;
            }
        }
    }
}

/// What follows a listener's exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    /// The pod exits with this status.
    Exit(u8),
    /// Start the same runner again (after a back-off).
    Relaunch,
}

/// The table: a stop, a lost job or a finished runner ends the pod; a listener that took
/// no job and was replaced by the watchdog, recycled after a resume, not ready in time or
/// that asked to be re-launched (exit 2) starts again, `limit` times at most and only
/// while its breaker is closed.
fn after(ran: &Ran, stopping: bool, relaunches: u32, limit: u32, breaker_open: bool) -> After {
    let relaunchable = matches!(
        ran.reason,
        ExitReason::Watchdog | ExitReason::Recycled | ExitReason::Retryable
    ) || ran.cause == Some(crate::policy::machine::StopCause::NotReady);
    if stopping
        || ran.lost_job.is_some()
        || ran.job_done
        || !relaunchable
        || relaunches >= limit
        || breaker_open
    {
        return After::Exit(exit_code(ran));
    }
    After::Relaunch
}

/// The exit status ARC reads: 0 for a runner that is done (its job completed, or it has
/// nothing left to do: told so by the service, or its registration is gone), 7 for a
/// deprecated version, otherwise non-zero: the runner's own code when it chose one, else 1.
/// A lost job is never 0.
fn exit_code(ran: &Ran) -> u8 {
    use ExitReason as R;
    let own = match ran.ended {
        Ended::Code(c) if (1..=125).contains(&c) && c != i32::from(EXIT_DEPRECATED) => c as u8,
        _ => 1,
    };
    if ran.lost_job.is_some() {
        return own;
    }
    match ran.reason {
        R::VersionDeprecated => EXIT_DEPRECATED,
        R::JobDone | R::CleanExit | R::RegistrationDeleted => 0,
        // Stopped by a signal: as the runner says, 0 when it stopped cleanly.
        R::Stopped if ran.ended == Ended::Code(0) => 0,
        _ => own,
    }
}

/// `failure_backoff` doubling, at most one minute (a pod that keeps failing is ARC's).
fn backoff(base: Duration, relaunches: u32) -> Duration {
    base.saturating_mul(1u32 << relaunches.min(16))
        .min(Duration::from_secs(60))
}

/// The runner a JIT config registers, from its `.runner` file (base64 JSON of file name
/// to base64 content; `.runner` holds `agentId` and `agentName`): only those public
/// fields are read.
fn runner_of(blob: &str) -> Option<(u64, String)> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let files: std::collections::BTreeMap<String, String> =
        serde_json::from_slice(&b64.decode(blob.trim()).ok()?).ok()?;
    let runner = b64.decode(files.get(".runner")?).ok()?;
    // The runner writes its JSON files with a byte-order mark.
    let runner = runner.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&runner);
    let v: serde_json::Value = serde_json::from_slice(runner).ok()?;
    let name = v["agentName"].as_str().filter(|n| !n.is_empty())?;
    Some((v["agentId"].as_u64()?, name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::machine::StopCause;
    use crate::status::host::Cause;
    use ExitReason as R;

    fn ran(reason: ExitReason, ended: Ended) -> Ran {
        Ran {
            reason,
            ended,
            cause: None,
            lost_job: None,
            job_done: reason == R::JobDone,
        }
    }

    #[test]
    fn exit_statuses_are_what_arc_reads() {
        let cases = [
            (ran(R::JobDone, Ended::Code(0)), 0),
            (ran(R::CleanExit, Ended::Code(0)), 0),
            (ran(R::RegistrationDeleted, Ended::Code(1)), 0),
            (ran(R::Stopped, Ended::Code(0)), 0),
            (ran(R::Stopped, Ended::Signal(9)), 1),
            (ran(R::VersionDeprecated, Ended::Code(7)), 7),
            (ran(R::VersionDeprecated, Ended::Code(1)), 7),
            (ran(R::Terminated, Ended::Code(1)), 1),
            (ran(R::Retryable, Ended::Code(2)), 2),
            (ran(R::SessionConflict, Ended::Code(5)), 5),
            (ran(R::Crashed, Ended::Signal(11)), 1),
            (ran(R::Unknown, Ended::Code(200)), 1),
            // Stopped by the watchdog, the runner exits 0: not done, so not 0.
            (ran(R::Watchdog, Ended::Code(0)), 1),
        ];
        for (r, want) in cases {
            assert_eq!(exit_code(&r), want, "{r:?}");
        }
        // A lost job is never 0, whatever the runner printed of its cancellation.
        let mut lost = ran(R::JobDone, Ended::Code(0));
        lost.job_done = false;
        lost.lost_job = Some("build".into());
        assert_eq!(exit_code(&lost), 1);
    }

    #[test]
    fn only_a_runner_that_took_no_job_is_relaunched_and_not_for_ever() {
        let mut fired = ran(R::Watchdog, Ended::Code(0));
        fired.cause = Some(StopCause::Watchdog(Cause::Network, "dead path".into()));
        assert_eq!(after(&fired, false, 0, 4, false), After::Relaunch);
        assert_eq!(after(&fired, false, 3, 4, false), After::Relaunch);
        assert_eq!(
            after(&fired, false, 4, 4, false),
            After::Exit(1),
            "the limit"
        );
        assert_eq!(
            after(&fired, false, 0, 4, true),
            After::Exit(1),
            "breaker open"
        );
        assert_eq!(after(&fired, true, 0, 4, false), After::Exit(1), "stopping");
        let mut busy = fired.clone();
        busy.lost_job = Some("build".into());
        assert_eq!(
            after(&busy, false, 0, 4, false),
            After::Exit(1),
            "its job is lost"
        );
        assert_eq!(
            after(&ran(R::Retryable, Ended::Code(2)), false, 0, 4, false),
            After::Relaunch
        );
        assert_eq!(
            after(&ran(R::Recycled, Ended::Code(0)), false, 0, 4, false),
            After::Relaunch
        );
        let mut not_ready = ran(R::Unknown, Ended::Code(0));
        not_ready.cause = Some(StopCause::NotReady);
        assert_eq!(after(&not_ready, false, 0, 4, false), After::Relaunch);
        for (r, code) in [
            (ran(R::JobDone, Ended::Code(0)), 0),
            (ran(R::VersionDeprecated, Ended::Code(7)), 7),
            (ran(R::SessionConflict, Ended::Code(5)), 5),
            (ran(R::Terminated, Ended::Code(1)), 1),
            (ran(R::RegistrationDeleted, Ended::Code(0)), 0),
        ] {
            assert_eq!(after(&r, false, 0, 4, false), After::Exit(code), "{r:?}");
        }
    }

    #[test]
    fn the_back_off_doubles_to_a_minute() {
        let b = Duration::from_secs(2);
        assert_eq!(backoff(b, 0), Duration::from_secs(2));
        assert_eq!(backoff(b, 3), Duration::from_secs(16));
        assert_eq!(backoff(b, 10), Duration::from_secs(60));
        assert_eq!(backoff(b, 40), Duration::from_secs(60));
    }

    #[test]
    fn the_runner_is_named_from_the_public_part_of_its_jit_config() {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let runner = b64.encode(
            "\u{feff}{\"agentId\": 42, \"agentName\": \"arc-runner-abc12\", \"poolId\": 1}",
        );
        let files = serde_json::json!({".runner": runner, ".credentials": b64.encode("{}")});
        let blob = b64.encode(files.to_string());
        assert_eq!(runner_of(&blob), Some((42, "arc-runner-abc12".into())));
        assert_eq!(runner_of("not base64!"), None);
        assert_eq!(runner_of(&b64.encode("{\"x\": \"eQ==\"}")), None);
    }
}
