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

/// What happened during a run: the exit summary, printed as text or as JSON.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Summary {
    pub jobs_completed: u64,
    /// Jobs whose listener ended mid-job.
    pub jobs_lost: u64,
    pub job_results: BTreeMap<String, u64>,
    pub registrations: u64,
    pub deregistrations: u64,
    /// Registrations an earlier run left in `deletions.json` for this one.
    pub deletions_inherited: u64,
    /// Registrations still to delete, left in `deletions.json` for the next start.
    pub deletions_pending: u64,
    pub ghosts_reaped: u64,
    pub strays_stopped: u64,
    pub listeners_started: u64,
    pub session_conflicts: u64,
    pub watchdog_fires: BTreeMap<String, u64>,
    pub api_requests: u64,
    pub exits: BTreeMap<String, u64>,
}

impl Summary {
    /// Registrations GitHub removed by itself: the ephemeral ones whose listener exited
    /// after its job (`job_done`).
    pub fn removed_by_github(&self) -> u64 {
        self.exits.get("job_done").copied().unwrap_or(0)
    }

    /// Registrations not accounted for: made (or inherited) but neither removed by GitHub,
    /// deleted, nor left for the next start. 0 unless something was lost track of.
    pub fn unaccounted(&self) -> i64 {
        (self.registrations + self.deletions_inherited) as i64
            - (self.removed_by_github() + self.deregistrations + self.deletions_pending) as i64
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |m: &BTreeMap<String, u64>| {
            if m.is_empty() {
                "none".to_string()
            } else {
                m.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            }
        };
        let job_done = self.removed_by_github();
        writeln!(f, "summary:")?;
        writeln!(
            f,
            "  jobs completed      {} ({})",
            self.jobs_completed,
            list(&self.job_results)
        )?;
        writeln!(f, "  jobs lost           {}", self.jobs_lost)?;
        writeln!(f, "  listeners started   {}", self.listeners_started)?;
        writeln!(f, "  listener exits      {}", list(&self.exits))?;
        if self.jobs_completed != job_done {
            writeln!(
                f,
                "    note: {} jobs completed but {job_done} listeners exited job_done: {}",
                self.jobs_completed,
                if self.jobs_completed > job_done {
                    "a listener that completed its job was stopped or failed before exiting by itself"
                } else {
                    "a listener exited job_done without printing its job's completion"
                }
            )?;
        }
        writeln!(f, "  registrations       {}", self.registrations)?;
        writeln!(f, "  deregistrations     {}", self.deregistrations)?;
        writeln!(f, "  ghosts reaped       {}", self.ghosts_reaped)?;
        writeln!(f, "  strays stopped      {}", self.strays_stopped)?;
        writeln!(f, "  session conflicts   {}", self.session_conflicts)?;
        writeln!(f, "  watchdog fires      {}", list(&self.watchdog_fires))?;
        writeln!(f, "  GitHub API requests {}", self.api_requests)?;
        // Every registration is accounted for.
        let inherited = if self.deletions_inherited > 0 {
            format!(" (+ {} left by an earlier run)", self.deletions_inherited)
        } else {
            String::new()
        };
        write!(
            f,
            "  accounting          {} registrations{inherited} = {job_done} removed by GitHub after their job + {} deleted by the supervisor + {} left for the next start",
            self.registrations, self.deregistrations, self.deletions_pending
        )?;
        if self.unaccounted() != 0 {
            write!(f, " ({} unaccounted)", self.unaccounted())?;
        }
        writeln!(f)
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
    /// What preflight learnt of the token (shown in the status from the start).
    pub token: Option<crate::github::TokenInfo>,
}

/// Delete offline runners whose names say they are this host's, and the registrations
/// an earlier run left in this state directory's slot roots (`left`: proof that they were
/// ours, online or not; their listeners were stopped as strays first). Returns how many
/// were deleted, and the left ones GitHub refused to delete now (busy), to queue.
pub async fn reap_ghosts(
    gh: &GithubClient,
    prefix: &str,
    host: &str,
    left: &BTreeMap<u64, String>,
) -> Result<(u64, Vec<(u64, String)>), GithubError> {
    let mut n = 0;
    let mut refused = vec![];
    for r in gh.list_runners(None).await? {
        let leftover = left.contains_key(&r.id);
        if !(leftover || r.status == "offline" && naming::is_ours(&r.name, prefix, host)) {
            continue;
        }
        match gh.delete_runner(r.id).await {
            Ok(()) => {
                tracing::info!(event = "ghost_reaped", runner = %r.name, id = r.id, status = %r.status, "deleted a ghost runner left by an earlier run");
                n += 1;
            }
            Err(e) => {
                tracing::warn!(event = "ghost_delete_failed", runner = %r.name, id = r.id, error = %e, "cannot delete a ghost runner");
                if leftover {
                    refused.push((r.id, r.name.clone()));
                }
            }
        }
    }
    Ok((n, refused))
}

/// Run until every slot has stopped (after `mode` leaves `Run`).
pub async fn run(deps: Deps, mode_tx: Arc<watch::Sender<Mode>>) -> anyhow::Result<Summary> {
    let mode = mode_tx.subscribe();
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
    // Registrations an earlier run left in the slot roots (killed before it could delete
    // them: a watchdog kill, a power cut), read before the roots are rebuilt.
    let left: BTreeMap<u64, String> = (0..cfg.runner.slots)
        .filter_map(|i| layout::registration(&layout::slot_root(state, i)))
        .collect();
    let roots = layout::prepare_slots(&cfg.runner.dir, state, cfg.runner.slots).map_err(|e| {
        anyhow::anyhow!("cannot prepare runner roots under {}: {e}", state.display())
    })?;

    // The control socket first: a second supervisor (or a stale socket) is found now.
    let control_listener = crate::control::bind(&cfg.control.socket)?;
    let metrics_listener =
        match cfg.control.metrics_listen {
            Some(a) => Some(tokio::net::TcpListener::bind(a).await.map_err(|e| {
                anyhow::anyhow!("cannot serve metrics on {a} (metrics.listen): {e}")
            })?),
            None => None,
        };
    let board = Arc::new(Board::new(cfg.runner.slots, cfg.health.unhealthy_after));
    board.system(|s| {
        s.token_kind = Some(if deps.gh.app().is_some() {
            "app"
        } else {
            "pat"
        });
        s.token_checked = deps.token.is_some();
        s.token_expires_at = deps.token.as_ref().and_then(|t| t.expires_at);
    });
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
            let _ = gh;
            board.run_writer(path, cancel).await
        });
    }
    board.attach_mode(mode.clone());

    board
        .stats
        .strays_stopped
        .fetch_add(strays as u64, Ordering::Relaxed);
    // No registration of ours exists yet, so every offline runner of ours is a ghost, and
    // so is every registration left in our slot roots.
    let requeue = match reap_ghosts(&deps.gh, &cfg.runner.name_prefix, &deps.host, &left).await {
        Ok((n, refused)) => {
            board.stats.ghosts_reaped.fetch_add(n, Ordering::Relaxed);
            refused
        }
        Err(e) => {
            tracing::warn!(event = "ghost_list_failed", error = %e, "cannot list runners to reap ghosts; continuing");
            left.into_iter().collect()
        }
    };

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
    // What could not be deleted now is retried in the background (and counted as left by
    // an earlier run).
    for (id, name) in requeue {
        shared.deletions.add(id, &name);
    }
    {
        let d = shared.deletions.clone();
        board.attach(crate::status::Sources {
            api: deps.gh.stats_handle(),
            deletions_pending: Box::new(move || d.len() as u64),
            deletions_inherited: shared.deletions.len() as u64,
        });
    }
    let (cmd_tx, cmd_rx): (Vec<_>, Vec<_>) = (0..cfg.runner.slots)
        .map(|_| mpsc::unbounded_channel::<SlotCmd>())
        .unzip();
    {
        let api = Arc::new(Control {
            shared: shared.clone(),
            mode: mode_tx.clone(),
            cmds: cmd_tx.clone(),
        });
        tracing::info!(event = "control_ready", socket = %cfg.control.socket.display(), "control socket ready (supervisor status, breaker reset, drain)");
        tracker.spawn(crate::control::serve_unix(
            control_listener,
            cfg.control.socket.clone(),
            crate::control::routes(api),
            writer_cancel.clone(),
        ));
    }
    if let Some(l) = metrics_listener {
        if let Ok(a) = l.local_addr() {
            tracing::info!(event = "metrics_ready", address = %a, "serving Prometheus metrics at /metrics");
        }
        tracker.spawn(crate::control::serve_tcp(
            l,
            crate::metrics::handler(board.clone()),
            writer_cancel.clone(),
        ));
    }
    tracker.spawn(crate::offline::run(
        cfg.clone(),
        deps.gh.clone(),
        host.clone(),
        cmd_tx.clone(),
        writer_cancel.clone(),
    ));
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
    let mut clock = crate::clockwatch::Monitor::new(
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
    tracker.spawn(crate::sdnotify::run(
        board.clone(),
        mode.clone(),
        cfg.runner.drain_timeout + cfg.runner.stop_grace,
        writer_cancel.clone(),
    ));
    slots.wait().await;
    // What could not be deleted gets the rest of the stop budget; the rest waits in
    // deletions.json for the next start.
    shared.drain_deletions().await;

    writer_cancel.cancel();
    tracker.close();
    tracker.wait().await;
    board.write_final(&status_path);
    let c = board.snapshot().counts;
    Ok(Summary {
        jobs_completed: c.jobs_completed,
        jobs_lost: c.jobs_lost,
        job_results: c.job_results,
        registrations: c.registrations,
        deregistrations: c.deregistrations,
        deletions_inherited: board.deletions_inherited(),
        deletions_pending: c.deletions_pending,
        ghosts_reaped: c.ghosts_reaped,
        strays_stopped: c.strays_stopped,
        listeners_started: c.listeners_started,
        session_conflicts: c.session_conflicts,
        watchdog_fires: c.watchdog_fires,
        api_requests: c.api_requests,
        exits: c.listener_exits,
    })
}

/// What the control socket may do, over the slots' shared state.
struct Control {
    shared: Arc<Shared>,
    mode: Arc<watch::Sender<Mode>>,
    cmds: Vec<mpsc::UnboundedSender<SlotCmd>>,
}

impl crate::control::Api for Control {
    fn status(&self) -> crate::status::StatusFile {
        self.shared.board.snapshot()
    }

    fn reset_breaker(&self, slot: Option<usize>) -> Result<Vec<usize>, String> {
        self.shared.reset_breakers(slot)
    }

    fn drain(&self) -> bool {
        let started = self.mode.send_if_modified(|m| {
            if *m == Mode::Run {
                *m = Mode::Drain;
                true
            } else {
                false
            }
        });
        if started {
            tracing::info!(event = "drain", "draining (asked through the control socket): no new jobs; idle runners stop now, busy ones may finish their job");
        }
        started
    }

    fn recycle(&self, slot: Option<usize>) -> Result<Vec<usize>, String> {
        let n = self.cmds.len();
        if let Some(i) = slot.filter(|i| *i >= n) {
            return Err(format!(
                "no slot {i}: this supervisor has slots 0..{}",
                n.saturating_sub(1)
            ));
        }
        let mut done = vec![];
        for (i, _) in self.shared.hoststate.listening() {
            if slot.is_none_or(|s| s == i) && self.cmds[i].send(SlotCmd::Recycle).is_ok() {
                tracing::info!(
                    event = "recycle",
                    slot = i,
                    "recycling the idle listener (asked through the control socket)"
                );
                done.push(i);
            }
        }
        Ok(done)
    }
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
