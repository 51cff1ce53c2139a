//! The supervisor: prepare the state directory, reap this host's ghost runners, build the
//! state slots and monitors share, spawn the monitors and every slot, and tear down once
//! they have all stopped, returning the run's summary (`status::Summary`).
//!
//! It must not: exit the process, or delete a runner that is not this host's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::github::{GithubClient, GithubError};
use crate::os::clocks::Clocks;
use crate::os::layout;
use crate::os::shutdown::Mode;
use crate::policy::naming;
use crate::slot::{self, Shared};
use crate::status::host::{Host, SlotCmd, SlotCmds};
use crate::status::Board;

pub mod arc;
mod containers;
mod control_api;
mod jobs;
mod scaleset;
mod settle;
pub use crate::status::Summary;
use control_api::Control;

/// Reads a variable of the supervisor's own environment.
pub type EnvReader = Box<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Everything `run` needs from outside.
pub struct Deps {
    pub cfg: Arc<Config>,
    pub gh: GithubClient,
    /// The host part of runner names (this machine's or container's hostname, cleaned).
    pub hostname: String,
    /// Reads the supervisor's own environment (for the runner's allow-listed variables).
    pub outer_env: EnvReader,
    /// The clocks (tests simulate suspends and steps).
    pub clocks: Arc<dyn Clocks>,
    /// What preflight learnt of the token (shown in the status from the start).
    pub token: Option<crate::github::TokenInfo>,
    /// This binary, which the job hooks run (`supervisor hook`); `None` (in-process
    /// tests and benches) gives the listeners no hook of ours.
    pub hook_exe: Option<PathBuf>,
}

/// Delete offline runners whose names say they are this host's, and the registrations
/// an earlier run left in this state directory's slot roots (`left`: proof that they were
/// ours, online or not; their listeners were stopped as strays first). Returns how many
/// were deleted, and the left ones GitHub refused to delete now (busy), to queue.
pub async fn reap_ghosts(
    gh: &GithubClient,
    prefix: &str,
    hostname: &str,
    left: &BTreeMap<u64, String>,
) -> Result<(u64, Vec<(u64, String)>), GithubError> {
    let mut n = 0;
    let mut refused = vec![];
    for r in gh.list_runners(None).await? {
        let leftover = left.contains_key(&r.id);
        if !(leftover || r.status == "offline" && naming::is_ours(&r.name, prefix, hostname)) {
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
    let state = prepare_state_dir(&cfg).await?;
    let endpoints = bind_endpoints(&cfg).await?;
    let background = Background::new();
    let board = start_board(&deps, &state.status_path, mode.clone(), &background);
    board
        .stats
        .strays_stopped
        .fetch_add(state.strays as u64, Ordering::Relaxed);
    // Job containers: those a killed run left removed, the image probed, before anything
    // is registered; their runners are ours, deleted with the ghosts.
    let containers = containers::prepare(&deps).await?;
    let mut left = state.left;
    let left_names = containers
        .as_ref()
        .map(|(_, n)| n.clone())
        .unwrap_or_default();
    if !left_names.is_empty() {
        if let Ok(all) = deps.gh.list_runners(None).await {
            for r in all.into_iter().filter(|r| left_names.contains(&r.name)) {
                left.insert(r.id, r.name);
            }
        }
    }
    let requeue = reap_ghosts_at_start(&deps, &board, left).await;
    let shared = build_shared(&deps, &board, state.roots, requeue);
    if let Some((jobs, _)) = containers {
        let _ = shared.containers.set(jobs);
    }
    // The configured actions, in the archive cache before jobs need them.
    if let (Some(cache), false) = (shared.actions.clone(), cfg.runner.actions.is_empty()) {
        let (gh, list) = (shared.gh.clone(), cfg.runner.actions.clone());
        background.spawn(|stop| async move {
            tokio::select! {
                _ = cache.fill(&gh, &list) => {}
                _ = stop.cancelled() => {}
            }
        });
    }
    let (slot_cmds, slot_cmd_rx): (SlotCmds, Vec<_>) = (0..cfg.runner.slots)
        .map(|_| mpsc::unbounded_channel::<SlotCmd>())
        .unzip();
    let _ = shared.host.slot_cmds.set(slot_cmds.clone());
    start_autopilot(&deps, &shared).await;
    serve_endpoints(endpoints, &shared, &mode_tx, &slot_cmds, &background);
    spawn_monitors(&deps, &shared, &slot_cmds, &background).await;
    let session = match cfg.runner.mode {
        crate::config::RunnerMode::ScaleSet => Some(
            scaleset::start(&shared, mode.clone(), slot_cmds.clone())
                .map_err(|e| anyhow::anyhow!("scale-set mode: {e}"))?,
        ),
        crate::config::RunnerMode::Slots => None,
    };
    let slots = TaskTracker::new();
    for (i, rx) in slot_cmd_rx.into_iter().enumerate() {
        slots.spawn(slot::run(shared.clone(), i, mode.clone(), rx));
    }
    slots.close();
    background.spawn(|stop| {
        crate::status::sdnotify::run(
            board.clone(),
            mode.clone(),
            cfg.runner.drain_timeout + cfg.runner.stop_grace,
            stop,
        )
    });
    slots.wait().await;
    if let Some(s) = session {
        let _ = s.await;
    }
    tear_down(&shared, background, &state.status_path).await;
    Ok(board.summary())
}

/// The state directory, made ready for this run.
struct PreparedState {
    /// This run's status file (the last run's is removed).
    status_path: PathBuf,
    /// The slots' runner roots, rebuilt.
    roots: Vec<PathBuf>,
    /// Stray listeners stopped.
    strays: usize,
    /// Registrations an earlier run left in the slot roots (id → name).
    left: BTreeMap<u64, String>,
}

/// Prepare the state directory: remove the last run's status, stop stray listeners, note
/// the registrations the slot roots still name, and rebuild the roots.
async fn prepare_state_dir(cfg: &Config) -> anyhow::Result<PreparedState> {
    let state = &cfg.state_dir;
    std::fs::create_dir_all(state).map_err(|e| {
        anyhow::anyhow!("cannot create the state directory {}: {e}", state.display())
    })?;
    // State from an earlier run (or container) is not this run's.
    let status_path = status_path(state);
    let _ = std::fs::remove_file(&status_path);
    // Scenario 17: a stray listener from this install holds a session; stop it first (before
    // its files are relinked), so its runner goes offline and is reaped below.
    let mut roots_to_scan = vec![cfg.runner.dir.clone()];
    roots_to_scan.extend((0..cfg.runner.slots).map(|i| layout::slot_root(state, i)));
    let strays = crate::os::procs::stop_strays(&roots_to_scan, cfg.runner.stop_grace).await;
    // Registrations an earlier run left in the slot roots (killed before it could delete
    // them: a watchdog kill, a power cut), read before the roots are rebuilt.
    let left: BTreeMap<u64, String> = (0..cfg.runner.slots)
        .filter_map(|i| layout::registration(&layout::slot_root(state, i)))
        .collect();
    let roots = layout::prepare_slots(&cfg.runner.dir, state, cfg.runner.slots).map_err(|e| {
        anyhow::anyhow!("cannot prepare runner roots under {}: {e}", state.display())
    })?;
    Ok(PreparedState {
        status_path,
        roots,
        strays,
        left,
    })
}

/// Where the running supervisor is watched and controlled.
struct Endpoints {
    control: tokio::net::UnixListener,
    /// Only with `[metrics] listen`.
    metrics: Option<tokio::net::TcpListener>,
}

/// Bind the control socket first: a second supervisor (or a stale socket) is found now;
/// then the metrics port, if configured.
async fn bind_endpoints(cfg: &Config) -> anyhow::Result<Endpoints> {
    let control = crate::status::control::bind(&cfg.control.socket)?;
    let metrics =
        match cfg.control.metrics_listen {
            Some(a) => Some(tokio::net::TcpListener::bind(a).await.map_err(|e| {
                anyhow::anyhow!("cannot serve metrics on {a} (metrics.listen): {e}")
            })?),
            None => None,
        };
    Ok(Endpoints { control, metrics })
}

/// The tasks that run beside the slots: the status writer, the control socket and the
/// metrics, the monitors, the deletion queue and systemd's notifier. They stop together,
/// once every slot has stopped.
struct Background {
    tasks: TaskTracker,
    /// Cancels every background task.
    stop: CancellationToken,
}

impl Background {
    fn new() -> Background {
        Background {
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
        }
    }

    /// Spawn the task `task` makes from the token that stops it.
    fn spawn<F>(&self, task: impl FnOnce(CancellationToken) -> F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task(self.stop.clone()));
    }

    /// Stop every background task and wait for them to end.
    async fn stop(self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// The board: what preflight learnt of the token, the fleet file it publishes to, its
/// writer (a background task) and the mode it shows.
fn start_board(
    deps: &Deps,
    status_path: &Path,
    mode: watch::Receiver<Mode>,
    background: &Background,
) -> Arc<Board> {
    let cfg = &deps.cfg;
    let hostname = &deps.hostname;
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
        hostname,
        crate::docker::fleet::path(&cfg.shared_dir, &cfg.runner.name_prefix, hostname),
    );
    {
        let board = board.clone();
        let path = status_path.to_path_buf();
        background.spawn(|stop| async move { board.run_writer(path, stop).await });
    }
    board.attach_mode(mode);
    board
}

/// Reap the ghosts before any slot registers: no registration of ours exists yet, so
/// every offline runner of ours is a ghost, and so is every registration left in our slot
/// roots. Returns the left ones still to delete (all of them if GitHub cannot list).
async fn reap_ghosts_at_start(
    deps: &Deps,
    board: &Board,
    left: BTreeMap<u64, String>,
) -> Vec<(u64, String)> {
    match reap_ghosts(
        &deps.gh,
        &deps.cfg.runner.name_prefix,
        &deps.hostname,
        &left,
    )
    .await
    {
        Ok((n, refused)) => {
            board.stats.ghosts_reaped.fetch_add(n, Ordering::Relaxed);
            refused
        }
        Err(e) => {
            tracing::warn!(event = "ghost_list_failed", error = %e, "cannot list runners to reap ghosts; continuing");
            left.into_iter().collect()
        }
    }
}

/// The state slots and monitors share: the `Host`, and the slots' `Shared` with its
/// deletion queue, which takes the registrations `requeue` names (retried in the
/// background, and counted as left by an earlier run).
fn build_shared(
    deps: &Deps,
    board: &Arc<Board>,
    roots: Vec<PathBuf>,
    requeue: Vec<(u64, String)>,
) -> Arc<Shared> {
    let host = Arc::new(Host::new(deps.clocks.clone()));
    let mut sh = Shared::new(
        deps.cfg.clone(),
        deps.gh.clone(),
        deps.hostname.clone(),
        board.clone(),
        roots,
        &*deps.outer_env,
        host,
    );
    let cfg = &deps.cfg;
    if let Some(exe) = &deps.hook_exe {
        let dir = cfg.state_dir.join("hooks");
        match crate::jobs::hooks::install(&dir, exe, &cfg.control.socket, &mut sh.runner_env) {
            Ok(()) => {
                tracing::debug!(event = "hooks_installed", dir = %dir.display(), "job hooks in {}", dir.display())
            }
            Err(e) => {
                tracing::warn!(event = "hooks_failed", dir = %dir.display(), error = %e, "cannot write the job hooks: jobs are known by their display name only")
            }
        }
    }
    let (jobs, closed) = jobs::open(cfg, board);
    sh.jobs = jobs;
    for _ in 0..closed {
        board.stats.jobs_lost_by.add("supervisor");
    }
    let shared = Arc::new(sh);
    for (id, name) in requeue {
        shared.deletions.add(id, &name);
    }
    let queue = shared.deletions.clone();
    board.attach(crate::status::Sources {
        api: deps.gh.stats_handle(),
        deletions_pending: Box::new(move || queue.len() as u64),
        deletions_inherited: shared.deletions.len() as u64,
    });
    shared
}

/// Serve the control socket, and the metrics if bound.
fn serve_endpoints(
    endpoints: Endpoints,
    shared: &Arc<Shared>,
    mode_tx: &Arc<watch::Sender<Mode>>,
    slot_cmds: &SlotCmds,
    background: &Background,
) {
    let cfg = &shared.cfg;
    let api = Arc::new(Control {
        shared: shared.clone(),
        mode: mode_tx.clone(),
        cmds: slot_cmds.clone(),
    });
    tracing::info!(event = "control_ready", socket = %cfg.control.socket.display(), "control socket ready (supervisor status, breaker reset, drain)");
    background.spawn(|stop| {
        crate::status::control::serve_unix(
            endpoints.control,
            cfg.control.socket.clone(),
            crate::status::control::routes(api),
            stop,
        )
    });
    if let Some(l) = endpoints.metrics {
        if let Ok(a) = l.local_addr() {
            tracing::info!(event = "metrics_ready", address = %a, "serving Prometheus metrics at /metrics");
        }
        background.spawn(|stop| {
            crate::status::control::serve_tcp(
                l,
                crate::status::metrics::handler(shared.board.clone()),
                stop,
            )
        });
    }
}

/// Start the monitors and the deletion queue. The clock monitor's first round is awaited:
/// it gates the slots (no registration before the first measurement; a clock fault found
/// now pauses them from the start).
/// The monitors that need no GitHub API, which an ARC pod runs too: the connection watch
/// (keepalive, dead paths, silent hangs), suspend and resume, the network and memory
/// pressure; and the memory given back once the host is quiet (`settle`).
fn spawn_host_monitors(
    cfg: &Arc<Config>,
    shared: &Arc<Shared>,
    slot_cmds: &SlotCmds,
    background: &Background,
) {
    let (host, board) = (&shared.host, &shared.board);
    background.spawn(|stop| {
        crate::monitors::connwatch::run(
            cfg.clone(),
            host.clone(),
            board.clone(),
            slot_cmds.clone(),
            stop,
        )
    });
    let lease = cfg.jobs.lease;
    background.spawn(move |stop| {
        crate::monitors::sleepwake::run(host.clone(), slot_cmds.clone(), lease, stop)
    });
    background.spawn(|stop| crate::monitors::netwatch::run(cfg.clone(), board.clone(), stop));
    let warn = cfg.jobs.memory_pressure_warn;
    background.spawn(move |stop| crate::monitors::pressure::run(board.clone(), warn, stop));
    background.spawn(|stop| settle::run(board.clone(), stop));
}

async fn spawn_monitors(
    deps: &Deps,
    shared: &Arc<Shared>,
    slot_cmds: &SlotCmds,
    background: &Background,
) {
    let (cfg, gh, host, board) = (&deps.cfg, &deps.gh, &shared.host, &shared.board);
    background.spawn(|stop| {
        crate::monitors::offline::run(
            cfg.clone(),
            gh.clone(),
            host.clone(),
            slot_cmds.clone(),
            stop,
        )
    });
    spawn_host_monitors(cfg, shared, slot_cmds, background);
    background.spawn(|stop| {
        crate::monitors::tokenwatch::run(
            cfg.token.clone(),
            gh.clone(),
            host.clone(),
            board.clone(),
            stop,
        )
    });
    if crate::docker::disk::enabled(&cfg.disk) {
        background.spawn(|stop| {
            crate::docker::disk::run(
                cfg.disk.clone(),
                cfg.shared_dir.clone(),
                board.clone(),
                crate::docker::disk::Caches {
                    actions: shared.actions.clone(),
                    jobs: shared.containers.get().cloned(),
                },
                stop,
            )
        });
    }
    if intake_judged(&cfg.intake) {
        background.spawn(|stop| {
            crate::monitors::intake::run(cfg.intake.clone(), host.clone(), board.clone(), stop)
        });
    }
    let awake = cfg.host.clone();
    background.spawn(move |stop| crate::monitors::keepawake::run(awake, board.clone(), stop));
    background.spawn(|stop| {
        crate::monitors::versionwatch::run(
            cfg.clone(),
            gh.clone(),
            board.clone(),
            host.clone(),
            stop,
        )
    });
    let mut clock = crate::monitors::clockwatch::Monitor::new(
        cfg.clock.clone(),
        gh.clone(),
        host.clone(),
        board.clone(),
    );
    clock.round().await;
    background.spawn(|stop| clock.run(stop));
    if let Some(j) = shared.jobs.clone().filter(|j| j.reruns().is_some()) {
        let (app, gh) = (cfg.github.app.is_some(), gh.clone());
        background.spawn(move |stop| async move {
            if let Some(r) = j.reruns_arc() {
                crate::jobs::rerun::run(r, j.store(), gh, app, stop).await
            }
        });
    }
    let (queue, gh, board) = (shared.deletions.clone(), gh.clone(), board.clone());
    background.spawn(|stop| async move { queue.run(gh, &board, stop).await });
}

/// Whether `[intake]` can ever close: battery rules (where power is reported) or quiet hours.
fn intake_judged(c: &crate::config::IntakeConfig) -> bool {
    c.on_battery == crate::config::OnBattery::Stop
        || c.min_battery.is_some()
        || !c.quiet_hours.is_empty()
}

/// The runner autopilot, with `[runner] auto_update = "on"`: every slot starts on the
/// configured runner, the version of last resort.
async fn start_autopilot(deps: &Deps, shared: &Shared) {
    use crate::config::AutoUpdate;
    let cfg = &deps.cfg;
    let word = match cfg.runner.auto_update {
        AutoUpdate::On => "on",
        AutoUpdate::Notify => "notify",
        AutoUpdate::Off => "off",
    };
    shared.board.system(|s| s.runner_auto_update = Some(word));
    if cfg.runner.auto_update != AutoUpdate::On {
        return;
    }
    let name = crate::runner::version::installed(&cfg.runner.dir)
        .await
        .unwrap_or_default();
    let mut fleet = crate::runner::autopilot::Fleet::new(
        cfg.runner.slots,
        crate::runner::autopilot::Version {
            name: name.clone(),
            dir: cfg.runner.dir.clone(),
        },
    );
    // A newer version installed in the versions directory before (by this supervisor
    // or one sharing the directory) is tried at once, on the canary: a container or a
    // laptop back from a holiday moves on without a download, or without a network.
    // Only complete versions are seen: an interrupted install left a `.partial-*`.
    let store = crate::runner::store::Store::open(&cfg.versions_dir()).ok();
    // Rollbacks remembered in the directory (by this supervisor before a restart, or one
    // sharing it) stand until a newer release or `supervisor runner retry`.
    let bad = store.as_ref().map(|s| s.bad()).unwrap_or_default();
    for (v, why) in &bad {
        fleet.forbid(v);
        shared
            .board
            .system(|s| s.runner_bad.push(format!("{v}: {why}")));
    }
    let newest = store.as_ref().and_then(|s| {
        s.versions()
            .into_iter()
            .rev()
            .find(|v| !bad.iter().any(|(b, _)| b == v))
            .map(|v| (s.path_of(&v), v))
    });
    if let Some(s) = store {
        let _ = shared.host.versions_store.set(s);
    }
    use crate::runner::version::parse_version;
    if let Some((dir, v)) = newest.filter(|(_, v)| parse_version(v) > parse_version(&name)) {
        tracing::info!(event = "runner_found", version = %v, dir = %dir.display(), "runner {v} is installed in {}: the first slot to start tries it", dir.display());
        fleet.offer(
            crate::runner::autopilot::Version {
                name: v.clone(),
                dir,
            },
            &[],
        );
        shared
            .board
            .system(|s| s.runner_canary = Some(format!("{v} on the next slot to start")));
    }
    *shared
        .host
        .autopilot
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = Some(fleet);
}

/// Once the slots have stopped: what could not be deleted gets the rest of the stop
/// budget (the rest waits in deletions.json for the next start); then the background
/// tasks stop, and the final status is written.
async fn tear_down(shared: &Shared, background: Background, status_path: &Path) {
    shared.drain_deletions().await;
    background.stop().await;
    shared.board.write_final(status_path);
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
pub fn status_path(state_dir: &Path) -> PathBuf {
    state_dir.join("status.json")
}
