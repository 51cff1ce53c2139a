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
use crate::os::layout;
use crate::os::shutdown::Mode;
use crate::policy::events::RunnerEvent;
use crate::policy::exit::{Ended, Seen};
use crate::runner::launch::process::{Listener, Output};
use crate::status::SlotState;

use super::registration::{register, RegSecret, Registration};
use super::{clear_failure, Shared, SlotCmd};
use crate::policy::machine::{Action, HostFacts, Input, Limits, Listen, StopCause};

pub(super) struct Watched {
    pub(super) ended: Ended,
    pub(super) seen: Seen,
    pub(super) cause: Option<StopCause>,
    /// The last `An error occurred:` message.
    pub(super) fatal: Option<String>,
    /// The job it was running when it ended, if any.
    pub(super) job: Option<String>,
    /// It listened for `stable_after`: the run of failures is over.
    pub(super) stable: bool,
    /// The result of the job it completed, if any.
    pub(super) completed: Option<String>,
}

/// Why a listener could not be started.
#[derive(Debug)]
pub(super) enum StartError {
    Failed(String),
    /// The Docker engine did not answer (the container backend).
    Engine(String),
    /// `config.sh` printed the boxed `RUNNER UPDATE REQUIRED`: the runner is below
    /// GitHub's registration floor (reference A8).
    BelowFloor(String),
}

impl From<String> for StartError {
    fn from(s: String) -> Self {
        StartError::Failed(s)
    }
}

/// Spawn config.sh (token mode) and then the listener; or, with the container backend,
/// the listener in a fresh job container of `install` (JIT only).
pub(super) async fn start(
    sh: &Shared,
    slot: usize,
    root: &Path,
    install: &Path,
    reg: &mut Registration,
    mode: &mut watch::Receiver<Mode>,
) -> Result<Listener, StartError> {
    if let Some(jobs) = sh.containers.get() {
        let RegSecret::Jit(blob) = &reg.secret else {
            return Err(StartError::Failed(
                "the container backend needs JIT registration ([runner] registration = \"jit\"); this server has no generate-jitconfig".into(),
            ));
        };
        let placeholders = placeholders(sh, slot, &reg.name);
        let req = crate::runner::launch::container::StartRequest {
            slot,
            name: &reg.name,
            install: jobs.install_for(&sh.cfg.runner.dir, install),
            env: &sh.runner_env,
            jit: Some(blob.expose()),
            placeholders: &placeholders,
        };
        return jobs.start(req).await.map_err(|e| match e {
            crate::runner::launch::container::StartError::Engine(m) => StartError::Engine(m),
            crate::runner::launch::container::StartError::Refused(m) => StartError::Failed(m),
        });
    }
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
        .map_err(|e| format!("cannot spawn {}: {e}", program.display()).into())
}

/// `[container] env`'s placeholders for one runner.
fn placeholders(sh: &Shared, slot: usize, name: &str) -> Vec<(&'static str, String)> {
    let (owner, repo, org) = match sh.gh.scope() {
        crate::config::Scope::Repo { owner, repo } => (owner.clone(), repo.clone(), String::new()),
        crate::config::Scope::Org { org } => (String::new(), String::new(), org.clone()),
    };
    vec![
        ("runner_name", name.to_string()),
        ("slot", slot.to_string()),
        ("repo_owner", owner),
        ("repo_name", repo),
        ("org", org),
        ("hostname", sh.hostname.clone()),
    ]
}

/// `config.sh --unattended --ephemeral --disableupdate --replace`, token in the environment.
async fn configure(
    sh: &Shared,
    root: &Path,
    name: &str,
    token: &AuthToken,
    mode: &mut watch::Receiver<Mode>,
) -> Result<(), StartError> {
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
    let mut below_floor = None;
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut interrupted = false;
    let ended = loop {
        tokio::select! {
            o = p.next() => match o {
                // The boxed notice, and the line under it that names the floor.
                Some(Output::Line { text, .. }) if text.contains(crate::policy::events::UPDATE_REQUIRED) => below_floor = Some(String::new()),
                Some(Output::Line { text, .. }) if below_floor.as_deref() == Some("") && text.contains("minimum runner version") => below_floor = Some(text.trim_matches(|c: char| c == '*' || c == '|' || c.is_whitespace()).to_string()),
                Some(Output::Line { stream: crate::policy::events::Stream::Stderr, text, .. }) if !text.trim().is_empty() => last_err = text,
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
            Err(StartError::Failed(
                "config.sh interrupted by shutdown".into(),
            ))
        }
        Some(Ended::Code(0)) => Ok(()),
        Some(e) if below_floor.is_some() => Err(StartError::BelowFloor(format!(
            "config.sh refused the runner ({e:?}): RUNNER UPDATE REQUIRED{}",
            below_floor
                .filter(|t| !t.is_empty())
                .map(|t| format!(": {t}"))
                .unwrap_or_default()
        ))),
        Some(e) => Err(StartError::Failed(format!(
            "config.sh failed ({e:?}): {last_err}"
        ))),
        None => {
            p.kill_group();
            Err(StartError::Failed(
                "config.sh did not finish within 5 minutes".into(),
            ))
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
            tracing::info!(event = "update_finished", root = %root.display(), "runner self-update finished");
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tracing::warn!(event = "update_timeout", root = %root.display(), "no update.finished after the update wait; starting a fresh runner anyway");
}

/// Watch a listener until it exits: feed [`Listen`] what happens, in order, and carry out
/// what it decides; stop the listener when it says so.
pub(super) async fn watch_listener(
    sh: &Arc<Shared>,
    slot: usize,
    mut l: Listener,
    mode: &mut watch::Receiver<Mode>,
    cmds: &mut mpsc::UnboundedReceiver<SlotCmd>,
    prep: &mut Option<JoinHandle<Result<Registration, GithubError>>>,
    failures: u32,
) -> Watched {
    let m = Listen::new(
        listen_limits(sh),
        Instant::now(),
        failures > 0,
        prep.is_some(),
        *mode.borrow(),
    );
    let mut w = Watch {
        sh,
        slot,
        m,
        failures,
        stable: false,
    };
    // The connection watch inspects its sockets from now until it ends.
    // A job container's listener this supervisor cannot see (its PID namespace is not
    // ours: the supervisor runs in a container, or the engine is remote) is not watched;
    // its status says why.
    let registered = (l.pid() > 0).then(|| Registered::new(&sh.host, slot, l.pid(), l.name()));
    if l.pid() <= 0 && l.container().is_some() {
        sh.board.update(slot, |s| {
            s.keepalive = Some(crate::status::SlotKeepalive {
                state: crate::status::KeepaliveState::Refused,
                connections: 0,
                reason: Some("the listener runs in a job container whose processes this supervisor cannot see (another PID namespace: the supervisor runs in a container itself, or the engine is remote)".into()),
                fix: Some("run the supervisor on the engine's host, as root, to tune the listener's connections; otherwise the job container's network namespace keeps the kernel's keepalive defaults".into()),
            })
        });
    }
    let mut cmds_open = true;
    let mut mode_open = true;
    // A mode already past Run (a signal before the spawn) counts at once.
    let mut pending: Vec<Input> = vec![Input::Mode(*mode.borrow())];
    loop {
        w.feed(&mut pending, &l, mode, prep);
        if w.m.stop_cause().is_some() {
            break;
        }
        let deadline = w.m.deadline();
        tokio::select! {
            o = l.next() => match o {
                Some(Output::Line { event: Some(ev), .. }) => {
                    note_event(sh, slot, &ev);
                    pending.push(Input::Event(ev))
                }
                Some(Output::Line { .. }) => {}
                Some(Output::Exited(ended)) => return w.exited(ended),
                None => return w.exited(Ended::Code(-1)),
            },
            _ = async { tokio::time::sleep_until(deadline.expect("guarded")).await }, if deadline.is_some() => {
                pending.push(Input::Tick);
            }
            c = cmds.recv(), if cmds_open => match c {
                // A finding about an earlier listener of this slot.
                Some(SlotCmd::Connection { pid, .. }) if pid != l.pid() => {}
                Some(c) => pending.push(Input::Cmd(c)),
                None => cmds_open = false,
            },
            r = mode.changed(), if mode_open => {
                if r.is_err() {
                    mode_open = false;
                } else {
                    // Lines already printed (a job that started just now) come first, and
                    // go through the same step as any other.
                    if let Some(ended) = already_printed(&mut l, &mut pending) {
                        w.feed(&mut pending, &l, mode, prep);
                        return w.exited(ended);
                    }
                    pending.push(Input::Mode(*mode.borrow()));
                }
            }
        }
    }
    drop(registered);
    let cause = w.m.stop_cause().cloned();
    sh.board.set_state(slot, SlotState::Stopping);
    let mut seen = w.m.seen.clone();
    let ended = stop(&mut l, sh.cfg.runner.stop_grace, mode, &mut seen).await;
    Watched {
        ended,
        job: w.m.job().cloned(),
        seen,
        cause,
        completed: w.m.completed.clone(),
        fatal: w.m.fatal,
        stable: w.stable,
    }
}

/// The listener machine's limits, from `[runner]` and `[watchdog]`.
fn listen_limits(sh: &Shared) -> Limits {
    let (cfg, wcfg) = (&sh.cfg.runner, &sh.cfg.watchdog);
    Limits {
        grace: wcfg.grace,
        job_stall_timeout: wcfg.job_stall_timeout,
        ready_timeout: cfg.ready_timeout,
        drain_timeout: cfg.drain_timeout,
        stable_after: cfg.stable_after,
        renewal_late: sh.cfg.jobs.renewal_late,
        // Nor in an ARC pod, whose one runner is all it runs.
        prepare_next: cfg.mode != crate::config::RunnerMode::ScaleSet && cfg.jit_config.is_none(),
    }
}

/// What an event means beside the machine: a session conflict is counted, and a listener
/// that opens connections now has them injected and watched at once.
fn note_event(sh: &Shared, slot: usize, ev: &RunnerEvent) {
    if *ev == RunnerEvent::SessionConflict {
        sh.board
            .stats
            .session_conflicts
            .fetch_add(1, Ordering::Relaxed);
    }
    // An action a job had to download: the next jobs find it in the archive cache.
    if let (RunnerEvent::ActionDownloaded { repository, sha }, Some(cache)) = (ev, &sh.actions) {
        let (gh, cache, repository, sha) = (
            sh.gh.clone(),
            cache.clone(),
            repository.clone(),
            sha.clone(),
        );
        tokio::spawn(async move {
            match cache.fetch(&gh, &repository, &sha).await {
                Ok(true) => {
                    tracing::info!(event = "action_cached", action = %repository, sha = %sha, added = true, "action archive cache: {repository} ({sha}), which a job downloaded")
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(event = "action_cache_failed", action = %repository, sha = %sha, error = %e, "cannot cache {repository}")
                }
            }
        });
    }
    if matches!(
        ev,
        RunnerEvent::Listening | RunnerEvent::Reconnected | RunnerEvent::JobStarted { .. }
    ) {
        sh.host.listener_rescan(slot);
    }
}

/// The lines the listener has already printed, as inputs; its exit, if it has exited.
fn already_printed(l: &mut Listener, pending: &mut Vec<Input>) -> Option<Ended> {
    while let Some(o) = l.try_next() {
        match o {
            Output::Line {
                event: Some(ev), ..
            } => pending.push(Input::Event(ev)),
            Output::Line { .. } => {}
            Output::Exited(ended) => return Some(ended),
        }
    }
    None
}

/// A listener under watch: its machine, and what carrying out its actions needs.
struct Watch<'a> {
    sh: &'a Arc<Shared>,
    slot: usize,
    m: Listen,
    failures: u32,
    /// It listened for `stable_after`: the run of failures is over.
    stable: bool,
}

impl Watch<'_> {
    /// Step the machine through `pending`, in order, carrying out each action.
    fn feed(
        &mut self,
        pending: &mut Vec<Input>,
        l: &Listener,
        mode: &watch::Receiver<Mode>,
        prep: &mut Option<JoinHandle<Result<Registration, GithubError>>>,
    ) {
        for input in pending.drain(..) {
            for a in self.m.step(input, Instant::now(), host_facts(self.sh)) {
                let progress = (self.failures, &mut self.stable);
                act(self.sh, self.slot, l, a, mode, prep, progress);
            }
        }
    }

    /// What the watch saw of a listener that exited by itself.
    fn exited(self, ended: Ended) -> Watched {
        Watched {
            ended,
            job: self.m.job().cloned(),
            completed: self.m.completed.clone(),
            seen: self.m.seen,
            cause: None,
            fatal: self.m.fatal,
            stable: self.stable,
        }
    }
}

/// What the host's state says now, for the machine.
fn host_facts(sh: &Shared) -> HostFacts {
    HostFacts {
        clock_fault: sh.host.clock_fault(),
        token_invalid: sh.host.token_invalid(),
    }
}

/// A listener known to the connection watch while this lives.
struct Registered<'a> {
    host: &'a crate::status::host::Host,
    slot: usize,
}

impl<'a> Registered<'a> {
    fn new(
        host: &'a crate::status::host::Host,
        slot: usize,
        pid: i32,
        runner: &str,
    ) -> Registered<'a> {
        host.listener_started(slot, pid, runner);
        Registered { host, slot }
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.host.listener_ended(self.slot);
    }
}

/// Carry out one action of the machine.
fn act(
    sh: &Arc<Shared>,
    slot: usize,
    l: &Listener,
    a: Action,
    mode: &watch::Receiver<Mode>,
    prep: &mut Option<JoinHandle<Result<Registration, GithubError>>>,
    (failures, stable): (u32, &mut bool),
) {
    let board = &sh.board;
    match a {
        Action::Show(state) => {
            board.set_state(slot, state);
            sh.host.listener_idle(slot, state == SlotState::Listening);
        }
        Action::JobStarted(name) => job_started(sh, board, slot, l, name),
        Action::JobCompleted { name, result } => {
            if let Some(j) = &sh.jobs {
                j.ended(
                    slot,
                    crate::jobs::Outcome::Done {
                        result: result.clone(),
                    },
                );
            }
            board.job_completed(slot, &result);
            tracing::info!(event = "job_completed", slot, runner = %l.name(), job = %name, result = %result, "job completed");
            // A job completed on the canary proves its runner version.
            if let Some(d) = sh.host.autopilot(|f| f.proved(slot)) {
                sh.host.autopilot_decided(board, d);
            }
        }
        Action::PrepareNext => {
            if prep.is_none() && *mode.borrow() == Mode::Run {
                let sh2 = sh.clone();
                *prep = Some(tokio::spawn(async move { register(&sh2, slot).await }));
            }
        }
        Action::EndFailures => {
            tracing::info!(event = "listener_stable", slot, runner = %l.name(), failures, stable_s = sh.cfg.runner.stable_after.as_secs(), "listener stable: the run of failures is over");
            *stable = true;
            clear_failure(board, slot);
            // So does listening for `stable_after`.
            if let Some(d) = sh.host.autopilot(|f| f.proved(slot)) {
                sh.host.autopilot_decided(board, d);
            }
        }
        // The host's version is the autopilot's current one (a canary's is not yet).
        Action::RunnerVersion(v) => {
            let current = sh
                .host
                .autopilot(|f| f.current().name.clone())
                .filter(|c| !c.is_empty());
            if current.is_none_or(|c| c == v) {
                board.system(|s| s.runner_version = Some(v))
            }
        }
        Action::DrainWaiting => {
            tracing::info!(event = "drain_waiting", slot, runner = %l.name(), drain_s = sh.cfg.runner.drain_timeout.as_secs(), "draining: letting the running job finish")
        }
        Action::RecycleIdle => {
            tracing::info!(event = "recycle", slot, runner = %l.name(), "host resumed: recycling the idle listener (its long-poll is dead)")
        }
        Action::LeaseLost => {
            tracing::warn!(event = "lease_lost", slot, runner = %l.name(), lease_s = sh.cfg.jobs.lease.as_secs(), "host resumed after a suspend longer than the job lease: GitHub has given up the job; replacing the busy listener now")
        }
        Action::KeepBusyOnResume => {
            tracing::info!(event = "resume_busy", slot, runner = %l.name(), "host resumed: the busy listener keeps its job, under watch")
        }
        Action::Stop(StopCause::NotReady) => {
            tracing::warn!(event = "not_ready", slot, runner = %l.name(), timeout_s = sh.cfg.runner.ready_timeout.as_secs(), "listener not listening in time; replacing it")
        }
        Action::DrainTimedOut => {
            tracing::warn!(event = "drain_timeout", slot, runner = %l.name(), "drain timeout: stopping the busy runner (its job is cancelled)")
        }
        Action::ClockSkew => {
            tracing::warn!(event = "clock_skew", slot, runner = %l.name(), "the runner says the clock is more than five minutes off; registrations pause until the clock is fixed");
            sh.host
                .set_clock_fault("the runner reported clock skew (more than five minutes)");
        }
        Action::LeaseLate(_) | Action::LeaseRenewFailed(_) | Action::LeaseRenewedAgain => {
            lease(board, slot, l.name(), a)
        }
        Action::Stop(_) => {}
    }
}

/// The job lease's actions: shown in the slot's status and logged.
fn lease(board: &crate::status::Board, slot: usize, runner: &str, a: Action) {
    match a {
        Action::LeaseLate(since) => {
            let msg = format!(
                "no renewal of the job's lease for {} s (the runner renews every 60 s): GitHub declares the runner lost when the lease (about 10 min) runs out; a starved CPU or a dead path stops renewals",
                since.as_secs()
            );
            tracing::warn!(event = "lease_renewal_late", slot, runner = %runner, since_s = since.as_secs(), "{msg}");
            board.update(slot, |s| s.lease_warning = Some(msg));
        }
        Action::LeaseRenewFailed(line) => {
            let msg = format!(
                "a renewal of the job's lease failed (\"{line}\"): runners before the fix of actions/runner #4635 abandon the job after one failed renewal"
            );
            tracing::error!(event = "lease_renewal_failed", slot, runner = %runner, line = %line, "{msg}");
            board.update(slot, |s| s.lease_warning = Some(msg));
        }
        Action::LeaseRenewedAgain => {
            tracing::info!(event = "lease_renewed", slot, runner = %runner, "the job's lease is renewed again");
            board.update(slot, |s| s.lease_warning = None);
        }
        _ => {}
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
                tracing::warn!(event = "sigkill", runner = %l.name(), pid = l.pid(), grace_s = grace.as_secs(), "listener ignored SIGINT; SIGKILL to its process group");
                l.kill_group();
                killed = true;
            }
            r = mode.changed(), if !killed => { let _ = r; }
        }
    }
}

/// A job started: recorded, its OOM-kill baseline taken, its `Runner.Worker` protected,
/// and shown.
fn job_started(
    sh: &Arc<Shared>,
    board: &crate::status::Board,
    slot: usize,
    l: &Listener,
    name: String,
) {
    if let Some(j) = &sh.jobs {
        j.started(slot, l.name(), &name);
    }
    if let Some(p) = sh.pool() {
        p.busy(slot);
    }
    if let Some(n) = sh
        .oom_at_job_start
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_mut(slot)
    {
        *n = crate::jobs::protect::oom_kills();
    }
    // The job, not the listener, is what the OOM killer should take.
    let (pid, oom, nice) = (l.pid(), sh.cfg.jobs.oom_score_adj, sh.cfg.jobs.nice);
    tokio::spawn(async move {
        match crate::jobs::protect::protect(pid, oom, nice).await {
            Ok(w) => {
                tracing::info!(
                    event = "worker_protected",
                    slot,
                    pid = w,
                    oom_score_adj = oom,
                    nice,
                    "Runner.Worker {w}: oom_score_adj {oom}, nice {nice}"
                )
            }
            Err(e) => {
                tracing::warn!(event = "worker_protect_failed", slot, error = %e, "{e}")
            }
        }
    });
    board.job_started(slot, name)
}
