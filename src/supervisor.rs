//! The supervisor: prepare the state directory, reap this host's ghost runners, run every
//! slot, and return a summary once they have all stopped.
//!
//! It must not: exit the process, or delete a runner that is not this host's.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clocks::Clocks;
use crate::config::Config;
use crate::github::{GithubClient, GithubError};
use crate::host::Host;
use crate::host::SlotCmd;
use crate::layout;
use crate::naming;
use crate::shutdown::Mode;
use crate::slot::{self, Shared};
use crate::status::Board;

/// What happened during a run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub jobs_completed: u64,
    pub registrations: u64,
    pub deregistrations: u64,
    pub ghosts_reaped: u64,
    pub strays_stopped: u64,
    pub listeners_started: u64,
    pub api_requests: u64,
    pub exits: BTreeMap<String, u64>,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "summary:")?;
        writeln!(f, "  jobs completed      {}", self.jobs_completed)?;
        writeln!(f, "  listeners started   {}", self.listeners_started)?;
        writeln!(f, "  registrations       {}", self.registrations)?;
        writeln!(f, "  deregistrations     {}", self.deregistrations)?;
        writeln!(f, "  ghosts reaped       {}", self.ghosts_reaped)?;
        writeln!(f, "  strays stopped      {}", self.strays_stopped)?;
        writeln!(f, "  GitHub API requests {}", self.api_requests)?;
        let exits: Vec<String> = self.exits.iter().map(|(k, v)| format!("{k}={v}")).collect();
        writeln!(
            f,
            "  listener exits      {}",
            if exits.is_empty() {
                "none".into()
            } else {
                exits.join(" ")
            }
        )
    }
}

/// Reads a variable of the supervisor's own environment.
pub type EnvReader = Box<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Everything `run` needs from outside.
pub struct Deps {
    pub cfg: Arc<Config>,
    pub gh: GithubClient,
    /// The host part of runner names.
    pub host: String,
    /// Reads the supervisor's own environment (for the runner's allow-listed variables).
    pub outer_env: EnvReader,
    /// The clocks (tests simulate suspends and steps).
    pub clocks: Arc<dyn Clocks>,
}

/// Delete offline runners whose names say they are this host's. Returns how many.
pub async fn reap_ghosts(gh: &GithubClient, prefix: &str, host: &str) -> Result<u64, GithubError> {
    let mut n = 0;
    for r in gh.list_runners(None).await? {
        if r.status == "offline" && naming::is_ours(&r.name, prefix, host) {
            match gh.delete_runner(r.id).await {
                Ok(()) => {
                    tracing::info!(runner = %r.name, id = r.id, "deleted a ghost runner left by an earlier run");
                    n += 1;
                }
                Err(e) => {
                    tracing::warn!(runner = %r.name, id = r.id, error = %e, "cannot delete a ghost runner")
                }
            }
        }
    }
    Ok(n)
}

/// Run until every slot has stopped (after `mode` leaves `Run`).
pub async fn run(deps: Deps, mode: watch::Receiver<Mode>) -> anyhow::Result<Summary> {
    let cfg = deps.cfg.clone();
    let state = &cfg.state_dir;
    std::fs::create_dir_all(state).map_err(|e| {
        anyhow::anyhow!("cannot create the state directory {}: {e}", state.display())
    })?;
    // State from an earlier run (or container) is not this run's.
    let status_path = state.join("status.json");
    let _ = std::fs::remove_file(&status_path);
    // Scenario 17: a stray listener from this install holds a session; stop it first (before
    // its files are relinked), so its runner goes offline and is reaped below.
    let mut roots_to_scan = vec![cfg.runner.dir.clone()];
    roots_to_scan.extend((0..cfg.runner.slots).map(|i| layout::slot_root(state, i)));
    let strays = crate::procs::stop_strays(&roots_to_scan, cfg.runner.stop_grace).await;
    let roots = layout::prepare_slots(&cfg.runner.dir, state, cfg.runner.slots).map_err(|e| {
        anyhow::anyhow!("cannot prepare runner roots under {}: {e}", state.display())
    })?;

    let board = Arc::new(Board::new(cfg.runner.slots, cfg.health.unhealthy_after));
    // Host-wide work (the one pruner, autoheal) sees this supervisor's jobs in the fleet.
    board.publish_to(
        &deps.host,
        crate::fleet::path(&cfg.shared_dir, &cfg.runner.name_prefix, &deps.host),
    );
    let tracker = TaskTracker::new();
    let writer_cancel = CancellationToken::new();
    {
        let board = board.clone();
        let gh = deps.gh.clone();
        let path = status_path.clone();
        let cancel = writer_cancel.clone();
        tracker.spawn(async move {
            board
                .run_writer(
                    path,
                    move || gh.stats().requests.load(Ordering::Relaxed),
                    cancel,
                )
                .await
        });
    }
    {
        let board = board.clone();
        let mut m = mode.clone();
        let cancel = writer_cancel.clone();
        tracker.spawn(async move {
            loop {
                board.set_mode(*m.borrow());
                tokio::select! {
                    r = m.changed() => if r.is_err() { return },
                    _ = cancel.cancelled() => return,
                }
            }
        });
    }

    board
        .stats
        .strays_stopped
        .fetch_add(strays as u64, Ordering::Relaxed);
    // No registration of ours exists yet, so every offline runner of ours is a ghost.
    match reap_ghosts(&deps.gh, &cfg.runner.name_prefix, &deps.host).await {
        Ok(n) => {
            board.stats.ghosts_reaped.fetch_add(n, Ordering::Relaxed);
        }
        Err(e) => tracing::warn!(error = %e, "cannot list runners to reap ghosts; continuing"),
    }

    let host = Arc::new(Host::new(deps.clocks.clone()));
    let shared = Arc::new(Shared::new(
        cfg.clone(),
        deps.gh.clone(),
        deps.host.clone(),
        board.clone(),
        roots,
        &*deps.outer_env,
        host.clone(),
    ));
    let (cmd_tx, cmd_rx): (Vec<_>, Vec<_>) = (0..cfg.runner.slots)
        .map(|_| mpsc::unbounded_channel::<SlotCmd>())
        .unzip();
    {
        let (shared, cmd_tx, cancel) = (shared.clone(), cmd_tx.clone(), writer_cancel.clone());
        tracker.spawn(async move { run_offline_check(shared, cmd_tx, cancel).await });
    }
    tracker.spawn(crate::sleepwake::run(
        host.clone(),
        cmd_tx.clone(),
        writer_cancel.clone(),
    ));
    tracker.spawn(crate::tokenwatch::run(
        cfg.token.clone(),
        deps.gh.clone(),
        host.clone(),
        board.clone(),
        writer_cancel.clone(),
    ));
    if crate::disk::enabled(&cfg.disk) {
        tracker.spawn(crate::disk::run(
            cfg.disk.clone(),
            cfg.shared_dir.clone(),
            board.clone(),
            writer_cancel.clone(),
        ));
    }
    tracker.spawn(crate::connwatch::run(
        cfg.clone(),
        host.clone(),
        board.clone(),
        cmd_tx.clone(),
        writer_cancel.clone(),
    ));
    tracker.spawn(crate::netwatch::run(
        cfg.clone(),
        board.clone(),
        writer_cancel.clone(),
    ));
    // The clock monitor's first round gates the slots: no registration before the first
    // measurement (a clock fault found now pauses them from the start).
    let mut clock = crate::clock::Monitor::new(
        cfg.clock.clone(),
        deps.gh.clone(),
        host.clone(),
        board.clone(),
    );
    clock.round().await;
    tracker.spawn(clock.run(writer_cancel.clone()));
    {
        let (q, gh, board, cancel) = (
            shared.deletions.clone(),
            deps.gh.clone(),
            board.clone(),
            writer_cancel.clone(),
        );
        tracker.spawn(async move { q.run(gh, &board, cancel).await });
    }
    let slots = TaskTracker::new();
    for (i, rx) in cmd_rx.into_iter().enumerate() {
        slots.spawn(slot::run(shared.clone(), i, mode.clone(), rx));
    }
    slots.close();
    slots.wait().await;
    // What could not be deleted gets the rest of the stop budget; the rest waits in
    // deletions.json for the next start.
    shared.drain_deletions().await;

    writer_cancel.cancel();
    tracker.close();
    tracker.wait().await;
    let api_requests = deps.gh.stats().requests.load(Ordering::Relaxed);
    board.write_final(&status_path, api_requests);
    let st = &board.stats;
    Ok(Summary {
        jobs_completed: st.jobs_completed.load(Ordering::Relaxed),
        registrations: st.registrations.load(Ordering::Relaxed),
        deregistrations: st.deregistrations.load(Ordering::Relaxed),
        ghosts_reaped: st.ghosts_reaped.load(Ordering::Relaxed),
        strays_stopped: st.strays_stopped.load(Ordering::Relaxed),
        listeners_started: st.listeners_started.load(Ordering::Relaxed),
        api_requests,
        exits: st.exits(),
    })
}

/// Hold the state directory for this process's life: a second `supervisor run` on it
/// would take the first one's listeners for strays and overwrite its status. The lock
/// file holds the holder's PID, so the refusal can name it.
pub fn lock_state_dir(state: &Path) -> anyhow::Result<std::fs::File> {
    use std::io::Write;
    let path = state.join("supervisor.lock");
    match layout::take_lock(&path) {
        Ok(mut f) => {
            let _ = f.set_len(0);
            let _ = write!(f, "{}", std::process::id());
            Ok(f)
        }
        Err(layout::LockError::Held(_)) => {
            let pid = std::fs::read_to_string(&path).unwrap_or_default();
            anyhow::bail!(
                "another supervisor (pid {}) is running on the state directory {}; stop it, or give this one its own state directory (SUPERVISOR_STATE_DIR)",
                pid.trim(),
                state.display()
            )
        }
        Err(layout::LockError::Io(m)) => {
            anyhow::bail!("cannot lock the state directory {}: {m}", state.display())
        }
    }
}

/// The status file of a state directory.
pub fn status_path(state_dir: &Path) -> std::path::PathBuf {
    state_dir.join("status.json")
}

/// Scenario 11: a runner that says it is listening while GitHub shows it offline for
/// `offline_after` is replaced. One API call per check, only while a slot is listening.
async fn run_offline_check(
    sh: Arc<Shared>,
    cmds: Vec<mpsc::UnboundedSender<SlotCmd>>,
    cancel: CancellationToken,
) {
    let w = sh.cfg.watchdog.clone();
    let mut since: Vec<Option<tokio::time::Instant>> = vec![None; cmds.len()];
    let mut tick = tokio::time::interval(w.offline_check_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let listening = sh.board.listening();
        if listening.is_empty() {
            since.iter_mut().for_each(|s| *s = None);
            continue;
        }
        let Ok(runners) = sh.gh.list_runners(None).await else {
            continue;
        };
        let now = tokio::time::Instant::now();
        for (i, s) in since.iter_mut().enumerate() {
            let offline = listening
                .iter()
                .find(|(j, _)| *j == i)
                .and_then(|(_, name)| runners.iter().find(|r| &r.name == name))
                .is_some_and(|r| r.status == "offline");
            if !offline {
                *s = None;
                continue;
            }
            let first = *s.get_or_insert(now);
            if now - first >= w.offline_after {
                tracing::warn!(
                    slot = i,
                    offline_s = (now - first).as_secs(),
                    "GitHub shows the listening runner offline"
                );
                let cause = crate::host::attribute(sh.hoststate.context(true));
                let _ = cmds[i].send(SlotCmd::Replace(cause));
                *s = None;
            }
        }
    }
}
