//! One listener for a JIT config given from outside (an actions-runner-controller runner
//! pod, issue 19 §5): started, watched and stopped by this slot's own hands ([`SlotIo`]:
//! the watchdog, the connection watch and its keepalive, job records and hooks, SIGINT,
//! grace, SIGKILL), with nothing registered and nothing deleted. What follows its exit is
//! the caller's to decide (`supervisor::arc`).

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::config::Secret;
use crate::os::shutdown::Mode;
use crate::policy::exit::{Ended, ExitReason};
use crate::status::host::Cause;
use crate::status::SlotState;

use super::io::SlotIo;
use super::registration::{RegSecret, Registration};
use super::{Shared, SlotCmd};
use crate::policy::machine::outer::{Effect, Op, Outcome};
use crate::policy::machine::{reason, StopCause};

/// The runner a JIT config registers: its name (and id) as GitHub knows it, and the config.
pub struct JitRunner {
    pub name: String,
    pub id: Option<u64>,
    /// `ACTIONS_RUNNER_INPUT_JITCONFIG`: the runner's own credential.
    pub jit: Secret,
}

/// How one listener of a [`JitRunner`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ran {
    pub reason: ExitReason,
    pub ended: Ended,
    /// Why we stopped it ourselves, if we did.
    pub cause: Option<StopCause>,
    /// The job it held when it ended: lost.
    pub lost_job: Option<String>,
    /// It completed its job.
    pub job_done: bool,
}

impl Ran {
    /// The watchdog's fire, when the watchdog stopped it: its cause and what it saw.
    pub fn fire(&self) -> Option<(Cause, &str)> {
        match &self.cause {
            Some(StopCause::Watchdog(c, d)) => Some((*c, d.as_str())),
            _ => None,
        }
    }
}

/// Start a listener of `runner` in slot `slot` and watch it until it exits (or until
/// `mode` stops it); `attempt` is how many listeners of it ended before (a relaunch is
/// watched as a failing slot's). `Err` when it cannot be spawned.
pub async fn run_jit(
    sh: &Arc<Shared>,
    slot: usize,
    runner: &JitRunner,
    attempt: u32,
    mode: &mut watch::Receiver<Mode>,
    cmds: &mut mpsc::UnboundedReceiver<SlotCmd>,
) -> Result<Ran, String> {
    let mut io = SlotIo {
        root: sh.roots[slot].clone(),
        sh: sh.clone(),
        slot,
        // The runner's credential goes to its listener only, in its environment, as
        // actions-runner-controller gives it to the stock runner (never on argv).
        reg: Some(Registration {
            id: runner.id,
            name: runner.name.clone(),
            secret: RegSecret::Jit(runner.jit.clone()),
            created: Instant::now(),
        }),
        name: runner.name.clone(),
        prep: None,
        listener: None,
        oom_killed: false,
        mode: mode.clone(),
        source: None,
        version: None,
    };
    io.apply(Effect::Show(SlotState::Starting)).await;
    match io.carry_out(Op::Start, attempt, mode, cmds).await {
        Outcome::Started => {}
        Outcome::StartFailed(m) | Outcome::VersionRefused(m) => {
            io.apply(Effect::Error(Some(m.clone()))).await;
            return Err(m);
        }
        other => return Err(format!("the listener did not start: {other:?}")),
    }
    io.apply(Effect::ListenerStarted).await;
    let x = match io.carry_out(Op::Watch, attempt, mode, cmds).await {
        Outcome::Exited(x) => x,
        other => return Err(format!("the listener was not watched: {other:?}")),
    };
    let why = reason(x.cause.as_ref(), x.ended, &x.seen);
    // As the slot's machine has it: a job held when our own stop ended the listener is
    // lost even if the runner printed its cancellation.
    let lost_job = x
        .job
        .clone()
        .filter(|_| !x.seen.job_completed || x.cause.is_some());
    io.apply(Effect::ExitNoted {
        reason: why,
        ended: x.ended,
        lost_job: lost_job.clone(),
    })
    .await;
    Ok(Ran {
        reason: why,
        ended: x.ended,
        job_done: why == ExitReason::JobDone && lost_job.is_none(),
        cause: x.cause,
        lost_job,
    })
}
