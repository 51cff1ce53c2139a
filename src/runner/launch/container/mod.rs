//! A fresh container for every job, through the Docker engine (bollard): created when the
//! slot starts its listener, removed (always) once the listener has exited.
//!
//! The runner is not in the image: the version the slot runs is mounted read-only, entry
//! by entry, at `/runner` (so `bin/` and `externals/` are the install's own files, and the
//! autopilot's versions work unchanged), while `/runner` itself, with `.runner`, `_diag`
//! and `_work`, is the container's own writable layer and dies with it. The JIT config
//! is copied into the created container as a file only it holds (`/.runner-supervisor/`,
//! through the engine's archive call: never in its environment, command, labels or
//! mounts), read by the container's first command and removed before the runner starts.
//! The listener's two streams come from the engine's attach stream, cut into the same
//! lines as a child's pipes; its exit code and `OOMKilled` from the engine.
//!
//! It must not: put the JIT config, the token or the App's key anywhere `docker inspect`
//! shows; reuse a container; leave one behind (a failed removal is retried by label at
//! the slot's next start and at the next supervisor start).

mod jit;
mod probe;
mod spec;
mod watch;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use bollard::container::{
    AttachContainerOptions, CreateContainerOptions, InspectContainerOptions, KillContainerOptions,
    ListContainersOptions, RemoveContainerOptions, StartContainerOptions, UploadToContainerOptions,
};
use bollard::models::{Mount, MountTypeEnum};
use bollard::Docker;
use tokio::sync::mpsc;

use super::process::Listener;
use super::toolcache::ToolCache;
use crate::config::ContainerConfig;
use jit::{jit_tar, numeric_user};
use watch::{follow, group_oom, listener_pid};

/// Every job container carries these labels.
pub const LABEL_INSTANCE: &str = "io.github.runner-supervisor.instance";
pub const LABEL_SLOT: &str = "io.github.runner-supervisor.slot";
pub const LABEL_RUNNER: &str = "io.github.runner-supervisor.runner";
/// `job` or `probe`.
pub const LABEL_ROLE: &str = "io.github.runner-supervisor.role";

/// Where the runner's install is mounted, and is its root.
pub const RUNNER_ROOT: &str = "/runner";
/// Where the hooks (scripts and the hook client) are mounted.
pub const HOOKS_DIR: &str = "/opt/runner-supervisor/hooks";
/// Where the control socket is mounted.
pub const CONTROL_SOCKET: &str = "/opt/runner-supervisor/control.sock";
/// The JIT config's file, inside the container only.
const JIT_DIR: &str = ".runner-supervisor";
const JIT_FILE: &str = "/.runner-supervisor/jitconfig";
/// Where the per-job tool cache is mounted (setup-ruby insists on this path).
pub const TOOL_CACHE: &str = "/opt/hostedtoolcache";

/// Why a job container could not be started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartError {
    /// The engine did not answer (down, restarting, its socket gone).
    Engine(String),
    /// The engine answered and refused (a missing image, a bad mount...).
    Refused(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Engine(m) | StartError::Refused(m) => f.write_str(m),
        }
    }
}

/// Whether an error is the engine being unreachable rather than a refusal.
fn classify(e: bollard::errors::Error, what: &str) -> StartError {
    use bollard::errors::Error as E;
    match e {
        E::DockerResponseServerError {
            status_code,
            message,
        } => StartError::Refused(format!(
            "{what}: the engine refused ({status_code}): {message}"
        )),
        other => StartError::Engine(format!("{what}: the Docker engine did not answer: {other}")),
    }
}

/// A request for one job container.
pub struct StartRequest<'a> {
    pub slot: usize,
    /// The runner's name; also the container's.
    pub name: &'a str,
    /// The runner version's install directory, as the engine sees it.
    pub install: &'a Path,
    /// The runner's environment (the slot's, with host-only variables left out here).
    pub env: &'a [(String, String)],
    /// The JIT config, given to the container as a file.
    pub jit: Option<&'a str>,
    /// The placeholders' values for `[container] env`.
    pub placeholders: &'a [(&'a str, String)],
}

/// The hook scripts and client the containers mount, and the variables that name them.
#[derive(Debug, Clone)]
pub struct Hooks {
    /// The host directory with `job-started.sh`, `job-completed.sh` and `supervisor`.
    pub dir: PathBuf,
    /// The control socket's host path.
    pub socket: PathBuf,
    /// The hook variables, naming the scripts at [`HOOKS_DIR`].
    pub env: Vec<(String, String)>,
}

/// The engine where job containers are made, and what every container gets.
pub struct Jobs {
    docker: Docker,
    cfg: ContainerConfig,
    instance: String,
    hooks: Option<Hooks>,
    /// The warm tool cache; None where it cannot be had (said once, at start).
    tool_cache: Option<ToolCache>,
    /// Why each job gets a fresh empty tool cache instead of a view, if it does.
    tool_cache_off: Mutex<Option<String>>,
    /// The action archive cache's host directory, mounted read-only.
    action_cache: Option<PathBuf>,
    /// `[runner] dir`'s copy under the state directory, which the engine sees (the
    /// configured install may be inside the supervisor's own container).
    install: Option<PathBuf>,
    /// The image's own `USER`, read when it is probed ("" is root).
    image_user: Mutex<Option<String>>,
}

/// Connect to `url` (`unix:///path` or `tcp://host:port`); no call is made yet.
pub fn connect(url: &str) -> Result<Docker, String> {
    let d = if let Some(path) = url.strip_prefix("unix://") {
        Docker::connect_with_unix(path, 120, bollard::API_DEFAULT_VERSION)
    } else {
        Docker::connect_with_http(url, 120, bollard::API_DEFAULT_VERSION)
    };
    d.map_err(|e| format!("cannot connect to the Docker engine at {url}: {e}"))
}

/// A job container's handle: its name, and the engine that signals it.
#[derive(Clone)]
pub struct Handle {
    docker: Docker,
    id: String,
}

impl Handle {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Send `sig` to the container's init (which passes it to the listener).
    pub fn signal(&self, sig: &'static str) {
        let (docker, id) = (self.docker.clone(), self.id.clone());
        tokio::spawn(async move {
            let r = docker
                .kill_container(&id, Some(KillContainerOptions { signal: sig }))
                .await;
            if let Err(e) = r {
                tracing::debug!(container = %id, signal = sig, error = %e, "signal not delivered");
            }
        });
    }
}

impl Jobs {
    pub fn new(
        cfg: &ContainerConfig,
        instance: &str,
        hooks: Option<Hooks>,
    ) -> Result<Jobs, String> {
        let (tool_cache, off) = match ToolCache::open(&cfg.tool_cache) {
            Ok(t) => (Some(t), None),
            Err(e) => (
                None,
                Some(format!("cannot open {}: {e}", cfg.tool_cache.display())),
            ),
        };
        Ok(Jobs {
            docker: connect(&cfg.docker_host)?,
            cfg: cfg.clone(),
            instance: instance.to_string(),
            hooks,
            tool_cache,
            tool_cache_off: Mutex::new(off),
            action_cache: None,
            install: None,
            image_user: Mutex::new(None),
        })
    }

    /// Job containers mount `dir` (a copy of `[runner] dir`) when the slot runs the
    /// configured runner rather than one of the versions store.
    pub fn with_install(mut self, dir: PathBuf) -> Jobs {
        self.install = Some(dir);
        self
    }

    /// What a job container mounts for `configured` (`[runner] dir`): its copy, if made.
    pub fn install_for<'a>(&'a self, configured: &'a Path, chosen: &'a Path) -> &'a Path {
        match &self.install {
            Some(copy) if chosen == configured => copy,
            _ => chosen,
        }
    }

    /// Mount the action archive cache at `dir` read-only into every job container.
    pub fn with_action_cache(mut self, dir: Option<PathBuf>) -> Jobs {
        self.action_cache = dir;
        self
    }

    /// Why jobs get a fresh empty tool cache rather than a copy-on-write view of the warm
    /// one; None while views work.
    pub fn tool_cache_off(&self) -> Option<String> {
        self.tool_cache_off
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn tool_cache_fallback(&self, why: String) {
        let mut g = self
            .tool_cache_off
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if g.is_none() {
            tracing::warn!(event = "tool_cache_fallback", reason = %why, "no copy-on-write tool cache for jobs ({why}): each job gets a fresh empty one, never a shared writable one; doctor says more");
            *g = Some(why);
        }
    }

    /// The warm tool cache, when views work.
    pub fn tool_cache(&self) -> Option<&ToolCache> {
        self.tool_cache
            .as_ref()
            .filter(|_| self.tool_cache_off().is_none())
    }

    /// The disk pruner's last resort: the warm tool cache, when no job uses it.
    pub fn reclaim_tool_cache(&self) -> bool {
        self.tool_cache.as_ref().is_some_and(|t| t.reclaim())
    }

    /// A job's container is gone: its tool-cache view is removed, and what a successful
    /// job installed promoted.
    pub async fn job_done(&self, container: &str, succeeded: bool) {
        if let Some(tc) = &self.tool_cache {
            tc.done(&self.docker, container, succeeded).await;
        }
    }

    /// The user the runner runs as in a job container: `[container] user`, else the
    /// image's (root when it names none).
    fn user(&self) -> Option<String> {
        self.cfg.user.clone().or_else(|| {
            self.image_user
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .filter(|u| !u.is_empty())
        })
    }

    /// The engine's URL, for messages.
    pub fn engine(&self) -> &str {
        &self.cfg.docker_host
    }

    pub fn image(&self) -> &str {
        &self.cfg.image
    }

    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// The supervisor's label value (`<prefix>-<host>`).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Remove every container of this supervisor (of `slot` only, when given) except
    /// `keep`: what a killed supervisor, or a removal the engine refused, left behind.
    /// Returns the runner names of those removed.
    pub async fn reap(
        &self,
        slot: Option<usize>,
        keep: Option<&str>,
    ) -> Result<Vec<String>, String> {
        let mut labels = vec![format!("{LABEL_INSTANCE}={}", self.instance)];
        if let Some(s) = slot {
            labels.push(format!("{LABEL_SLOT}={s}"));
        }
        let list = self
            .docker
            .list_containers(Some(ListContainersOptions::<String> {
                all: true,
                filters: HashMap::from([("label".to_string(), labels)]),
                ..Default::default()
            }))
            .await
            .map_err(|e| {
                format!(
                    "cannot list job containers at {}: {e}",
                    self.cfg.docker_host
                )
            })?;
        let mut n = vec![];
        for c in list {
            let name = c
                .names
                .as_ref()
                .and_then(|v| v.first())
                .map(|s| s.trim_start_matches('/').to_string())
                .unwrap_or_default();
            if keep.is_some_and(|k| k == name) {
                continue;
            }
            let runner = c
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_RUNNER).cloned())
                .unwrap_or_default();
            let Some(id) = c.id else { continue };
            if remove(&self.docker, &id).await {
                n.push(runner);
                tracing::info!(event = "container_reaped", container = %name, "removed a job container left behind");
            }
        }
        Ok(n)
    }

    /// Create, fill and start the job container for `req`, and watch it.
    pub async fn start(&self, req: StartRequest<'_>) -> Result<Listener, StartError> {
        // A container of this slot a crash or a failed removal left: gone first.
        if let Err(e) = self.reap(Some(req.slot), None).await {
            return Err(StartError::Engine(e));
        }
        let name = req.name.to_string();
        let view = match self.tool_cache() {
            Some(tc) => {
                let uid = numeric_user(self.user().as_deref()).0;
                match tc.view(&self.docker, &self.instance, &name, uid).await {
                    Ok(v) => Some(v),
                    Err(e) => {
                        tracing::warn!(event = "tool_cache_view_failed", container = %name, error = %e, "this job gets a fresh empty tool cache");
                        None
                    }
                }
            }
            None => None,
        };
        let config = match self.config(&req, view.as_deref()) {
            Ok(c) => c,
            Err(e) => {
                self.job_done(&name, false).await;
                return Err(StartError::Refused(e));
            }
        };
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptions {
                    name: name.clone(),
                    platform: None,
                }),
                config,
            )
            .await
            .map_err(|e| {
                classify(
                    e,
                    &format!("cannot create the job container from {}", self.cfg.image),
                )
            });
        if let Err(e) = created {
            self.job_done(&name, false).await;
            return Err(e);
        }
        match self.fill_and_start(&req, &name).await {
            Ok(l) => Ok(l),
            Err(e) => {
                remove(&self.docker, &name).await;
                self.job_done(&name, false).await;
                Err(e)
            }
        }
    }

    async fn fill_and_start(
        &self,
        req: &StartRequest<'_>,
        name: &str,
    ) -> Result<Listener, StartError> {
        {
            let (uid, gid) = numeric_user(self.user().as_deref());
            let tar = jit_tar(req.jit, uid, gid);
            self.docker
                .upload_to_container(
                    name,
                    Some(UploadToContainerOptions {
                        path: "/".to_string(),
                        ..Default::default()
                    }),
                    tar.into(),
                )
                .await
                .map_err(|e| classify(e, "cannot hand the JIT config to the job container"))?;
        }
        // Attached before it starts: no line is missed.
        let attach = self
            .docker
            .attach_container(name, Some(both_streams()))
            .await
            .map_err(|e| classify(e, "cannot attach to the job container"))?;
        self.docker
            .start_container(name, None::<StartContainerOptions<String>>)
            .await
            .map_err(|e| {
                classify(
                    e,
                    &format!("cannot start the job container from {}", self.cfg.image),
                )
            })?;
        let init = self
            .docker
            .inspect_container(name, None::<InspectContainerOptions>)
            .await
            .ok()
            .and_then(|i| i.state?.pid)
            .unwrap_or(0) as i32;
        let pid = listener_pid(init).await;
        if pid > 0 {
            group_oom(pid);
        }
        let (tx, rx) = mpsc::channel(256);
        let oom = Arc::new(AtomicBool::new(false));
        let handle = Handle {
            docker: self.docker.clone(),
            id: name.to_string(),
        };
        tokio::spawn(follow(
            self.docker.clone(),
            name.to_string(),
            req.name.to_string(),
            attach.output,
            tx,
            oom.clone(),
        ));
        Ok(Listener::in_container(pid, rx, req.name, handle, oom))
    }
}

/// Attach to both streams, from the start (with the logs so far) and on.
fn both_streams() -> AttachContainerOptions<String> {
    AttachContainerOptions::<String> {
        stdout: Some(true),
        stderr: Some(true),
        stream: Some(true),
        logs: Some(true),
        ..Default::default()
    }
}

fn bind(src: &Path, dst: &str, ro: bool) -> Mount {
    Mount {
        target: Some(dst.to_string()),
        source: Some(src.display().to_string()),
        typ: Some(MountTypeEnum::BIND),
        read_only: Some(ro),
        ..Default::default()
    }
}

/// Remove a container (and its anonymous volumes), whatever its state.
async fn remove(docker: &Docker, id: &str) -> bool {
    match docker
        .remove_container(
            id,
            Some(RemoveContainerOptions {
                force: true,
                v: true,
                ..Default::default()
            }),
        )
        .await
    {
        Ok(()) => true,
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => false,
        Err(e) => {
            tracing::warn!(event = "container_remove_failed", container = %id, error = %e, "cannot remove the job container now; it is removed at the slot's next start");
            false
        }
    }
}
