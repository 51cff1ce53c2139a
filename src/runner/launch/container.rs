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

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::container::{
    AttachContainerOptions, Config, CreateContainerOptions, InspectContainerOptions,
    KillContainerOptions, ListContainersOptions, LogOutput, RemoveContainerOptions,
    StartContainerOptions, UploadToContainerOptions, WaitContainerOptions,
};
use bollard::models::{HostConfig, Mount, MountTypeEnum};
use bollard::Docker;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::process::{Lines, Listener, Output};
use super::toolcache::ToolCache;
use crate::config::{ContainerConfig, JobDocker};
use crate::policy::events::Stream;
use crate::policy::exit::Ended;

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

/// The container's first command: take the JIT config from its file, remove the file,
/// and become the listener.
const ENTRY: &str = r#"f=/.runner-supervisor/jitconfig
if [ -r "$f" ]; then IFS= read -r ACTIONS_RUNNER_INPUT_JITCONFIG < "$f"; export ACTIONS_RUNNER_INPUT_JITCONFIG; rm -f "$f"; fi
cd /runner || exit 1
exec ./bin/Runner.Listener run"#;

/// Host variables that describe the supervisor's machine, not the image's: never given to
/// a job container (the image has its own).
const HOST_ONLY: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "TMPDIR",
    "DOCKER_HOST",
    "RUNNER_TOOL_CACHE",
    "AGENT_TOOLSDIRECTORY",
    crate::runner::actions::VAR,
];

/// Install entries never mounted (the runner's own writable files).
const SKIP: &[&str] = &[
    "_work",
    "_diag",
    "update.finished",
    ".runner",
    ".credentials",
    ".credentials_rsaparams",
    ".runner_migrated",
    ".credentials_migrated",
    ".service",
    ".env",
    ".path",
];

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

    /// The container's configuration (no secret in it).
    fn config(
        &self,
        req: &StartRequest<'_>,
        tool_cache: Option<&str>,
    ) -> Result<Config<String>, String> {
        let c = &self.cfg;
        let mut env: Vec<String> = vec![];
        let mut push = |k: &str, v: &str| {
            env.retain(|e| e.split('=').next() != Some(k));
            env.push(format!("{k}={v}"));
        };
        for (k, v) in req.env {
            if HOST_ONLY.contains(&k.as_str()) || k == "ACTIONS_RUNNER_INPUT_JITCONFIG" {
                continue;
            }
            push(k, v);
        }
        if let Some(h) = &self.hooks {
            for (k, v) in &h.env {
                push(k, v);
            }
        }
        // The listener's trace on stdout: lease renewals reach the supervisor.
        push("ACTIONS_RUNNER_PRINT_LOG_TO_STDOUT", "1");
        push("RUNNER_ALLOW_RUNASROOT", "1");
        push("RUNNER_TOOL_CACHE", TOOL_CACHE);
        push("AGENT_TOOLSDIRECTORY", TOOL_CACHE);
        let values: Vec<(&str, &str)> = req
            .placeholders
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .collect();
        for (k, v) in &c.env {
            push(k, &crate::config::fill_placeholders(v, &values));
        }
        let mut mounts = vec![];
        let entries = std::fs::read_dir(req.install).map_err(|e| {
            format!(
                "cannot read the runner install {}: {e}",
                req.install.display()
            )
        })?;
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !SKIP.contains(&n.as_str()))
            .collect();
        names.sort();
        for n in names {
            mounts.push(bind(
                &req.install.join(&n),
                &format!("{RUNNER_ROOT}/{n}"),
                true,
            ));
        }
        if let Some(h) = &self.hooks {
            mounts.push(bind(&h.dir, HOOKS_DIR, true));
            mounts.push(bind(&h.socket, CONTROL_SOCKET, false));
        }
        for v in &c.volumes {
            mounts.push(Mount {
                target: Some(v.target.clone()),
                source: Some(v.source.clone()),
                typ: Some(if v.named {
                    MountTypeEnum::VOLUME
                } else {
                    MountTypeEnum::BIND
                }),
                read_only: Some(v.read_only),
                ..Default::default()
            });
        }
        if let Some(dir) = &self.action_cache {
            mounts.push(bind(dir, crate::runner::actions::IN_CONTAINER, true));
            push(
                crate::runner::actions::VAR,
                crate::runner::actions::IN_CONTAINER,
            );
        }
        if let Some(vol) = tool_cache {
            mounts.push(Mount {
                target: Some(TOOL_CACHE.into()),
                source: Some(vol.to_string()),
                typ: Some(MountTypeEnum::VOLUME),
                read_only: Some(false),
                ..Default::default()
            });
        }
        match &c.docker {
            JobDocker::None => {}
            JobDocker::Host => {
                let sock = c
                    .docker_host
                    .strip_prefix("unix://")
                    .ok_or("[container] docker = \"host\" needs a unix:// docker_host")?;
                mounts.push(bind(Path::new(sock), "/var/run/docker.sock", false));
                push("DOCKER_HOST", "unix:///var/run/docker.sock");
            }
            JobDocker::Url(u) => {
                if let Some(sock) = u.strip_prefix("unix://") {
                    mounts.push(bind(Path::new(sock), "/var/run/docker.sock", false));
                    push("DOCKER_HOST", "unix:///var/run/docker.sock");
                } else {
                    push("DOCKER_HOST", u);
                }
            }
        }
        let labels = HashMap::from([
            (LABEL_INSTANCE.to_string(), self.instance.clone()),
            (LABEL_SLOT.to_string(), req.slot.to_string()),
            (LABEL_RUNNER.to_string(), req.name.to_string()),
            (LABEL_ROLE.to_string(), "job".to_string()),
        ]);
        Ok(Config {
            image: Some(c.image.clone()),
            // The image's own entrypoint (the compose image's is the supervisor) is
            // replaced, not prefixed.
            entrypoint: Some(vec!["sh".into(), "-c".into(), ENTRY.into()]),
            cmd: Some(vec![]),
            env: Some(env),
            user: c.user.clone(),
            labels: Some(labels),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(false),
            open_stdin: Some(false),
            host_config: Some(HostConfig {
                mounts: Some(mounts),
                network_mode: c.network.clone(),
                memory: c.memory,
                // No swap beyond the limit: over it is over it.
                memory_swap: c.memory,
                nano_cpus: c.nano_cpus,
                pids_limit: c.pids_limit,
                shm_size: c.shm_size,
                // An init passes SIGINT on to the listener and reaps the job's orphans.
                init: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        })
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
            .attach_container(
                name,
                Some(AttachContainerOptions::<String> {
                    stdout: Some(true),
                    stderr: Some(true),
                    stream: Some(true),
                    logs: Some(true),
                    ..Default::default()
                }),
            )
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

    /// Run the image once as a job container would be (the runner and the hooks mounted),
    /// checking that the runner starts (`Runner.Listener --version`), that bash is there
    /// for the runner's hooks, and that the hook client runs: the version it printed, or
    /// what is wrong and how to fix it. Nothing is registered for it.
    pub async fn probe(&self, install: &Path) -> Result<String, String> {
        let install = self.install.as_deref().unwrap_or(install);
        let image = &self.cfg.image;
        let inspected = self.docker.inspect_image(image).await;
        if let Ok(i) = &inspected {
            let user = i
                .config
                .as_ref()
                .and_then(|c| c.user.clone())
                .unwrap_or_default();
            *self.image_user.lock().unwrap_or_else(|p| p.into_inner()) = Some(user);
        }
        if let Err(e) = inspected {
            return Err(match e {
                bollard::errors::Error::DockerResponseServerError { status_code: 404, .. } => format!(
                    "the image {image:?} is not on the engine at {}: build it (docker compose -f compose/compose.yaml build), load it, or set [container] image (SUPERVISOR_CONTAINER_IMAGE)",
                    self.cfg.docker_host
                ),
                other => format!(
                    "the Docker engine at {} did not answer about the image {image:?}: {other}",
                    self.cfg.docker_host
                ),
            });
        }
        let name = format!("{}-probe-{}", self.instance, std::process::id());
        let req_env = vec![("PROBE".to_string(), "1".to_string())];
        let req = StartRequest {
            slot: usize::MAX,
            name: &name,
            install,
            env: &req_env,
            jit: None,
            placeholders: &[],
        };
        // The tool cache's view is checked by the same container: written through, the
        // write landing in the view's own upper layer.
        let view = match &self.tool_cache {
            Some(tc) if self.tool_cache_off().is_none() => {
                let uid = numeric_user(self.user().as_deref()).0;
                match tc.view(&self.docker, &self.instance, &name, uid).await {
                    Ok(v) => Some(v),
                    Err(e) => {
                        self.tool_cache_fallback(e);
                        None
                    }
                }
            }
            _ => None,
        };
        let r = self.probe_with(&req, view.as_deref()).await;
        if view.is_some() {
            self.job_done(&name, false).await;
            if let Err(e) = &r {
                // Without the view: is it the overlay that fails?
                if let Ok(v) = self.probe_with(&req, None).await {
                    self.tool_cache_fallback(format!(
                        "the engine cannot mount an overlay of {} ({})",
                        self.cfg.tool_cache.display(),
                        e.lines().next().unwrap_or("")
                    ));
                    return Ok(v);
                }
            }
        }
        r
    }

    async fn probe_with(
        &self,
        req: &StartRequest<'_>,
        view: Option<&str>,
    ) -> Result<String, String> {
        let image = &self.cfg.image;
        let name = req.name.to_string();
        let mut config = self.config(req, view)?;
        // The control socket is this run's (doctor has none): not needed to run the client.
        if let Some(m) = config.host_config.as_mut().and_then(|h| h.mounts.as_mut()) {
            m.retain(|m| m.target.as_deref() != Some(CONTROL_SOCKET));
        }
        let client = match &self.hooks {
            Some(_) => format!(" && {HOOKS_DIR}/supervisor --version >/dev/null"),
            None => String::new(),
        };
        let hook = format!(
            " && {{ command -v bash >/dev/null || {{ echo 'no bash: the runner runs its job hooks with bash' >&2; exit 1; }}; }}{client}"
        );
        let write = if view.is_some() {
            format!(" && touch {TOOL_CACHE}/.probe")
        } else {
            String::new()
        };
        config.entrypoint = Some(vec![
            "sh".into(),
            "-c".into(),
            format!("cd {RUNNER_ROOT} && ./bin/Runner.Listener --version{hook}{write}"),
        ]);
        if let Some(l) = config.labels.as_mut() {
            l.insert(LABEL_ROLE.into(), "probe".into());
            l.remove(LABEL_SLOT);
        }
        let _ = remove(&self.docker, &name).await;
        self.docker
            .create_container(
                Some(CreateContainerOptions {
                    name: name.clone(),
                    platform: None,
                }),
                config,
            )
            .await
            .map_err(|e| format!("the image {image:?} cannot be made into a job container: {e}"))?;
        let out = self.run_probe(&name).await;
        remove(&self.docker, &name).await;
        let (code, text) = out?;
        if code == 0 {
            Ok(text.lines().next().unwrap_or("").trim().to_string())
        } else {
            let what = if text.contains("no bash") {
                "has no bash, which the runner needs for its job hooks"
            } else if text.contains("supervisor") {
                "cannot run the supervisor's hook client (it needs glibc 2.36 or later)"
            } else {
                "cannot start the runner: it lacks the runner's dependencies (libicu, libssl, libkrb5, zlib: actions/runner's installdependencies.sh), or sh"
            };
            Err(format!(
                "the image {image:?} {what}: exit {code}: {}; fix: base it on compose/Dockerfile or install them",
                text.trim().lines().last().unwrap_or("")
            ))
        }
    }

    async fn run_probe(&self, name: &str) -> Result<(i64, String), String> {
        let image = &self.cfg.image;
        let mut attach = self
            .docker
            .attach_container(
                name,
                Some(AttachContainerOptions::<String> {
                    stdout: Some(true),
                    stderr: Some(true),
                    stream: Some(true),
                    logs: Some(true),
                    ..Default::default()
                }),
            )
            .await
            .map_err(|e| format!("cannot attach to the probe of {image:?}: {e}"))?;
        self.docker
            .start_container(name, None::<StartContainerOptions<String>>)
            .await
            .map_err(|e| format!("the image {image:?} cannot start a container: {e}"))?;
        let mut text = String::new();
        let read = async {
            while let Some(Ok(o)) = attach.output.next().await {
                if text.len() < 16 * 1024 {
                    text.push_str(&String::from_utf8_lossy(&o.into_bytes()));
                }
            }
        };
        if tokio::time::timeout(Duration::from_secs(60), read)
            .await
            .is_err()
        {
            return Err(format!("the probe of {image:?} did not finish within 60 s"));
        }
        let code = exit_code(&self.docker, name).await.0;
        Ok((code, text))
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

/// The exit code and `OOMKilled`, once the container is not running.
async fn exit_code(docker: &Docker, id: &str) -> (i64, bool) {
    let mut wait = docker.wait_container(
        id,
        Some(WaitContainerOptions {
            condition: "not-running",
        }),
    );
    let code = match wait.next().await {
        Some(Ok(r)) => r.status_code,
        Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => code,
        _ => -1,
    };
    let state = docker
        .inspect_container(id, None::<InspectContainerOptions>)
        .await
        .ok()
        .and_then(|i| i.state);
    let oom = state.as_ref().and_then(|s| s.oom_killed).unwrap_or(false);
    let code = match (code, state.and_then(|s| s.exit_code)) {
        (-1, Some(c)) => c,
        (c, _) => c,
    };
    (code, oom)
}

/// Read the attach stream into lines, await the exit, remove the container, then deliver
/// `Exited`: lines first, the exit last, the container gone by then.
async fn follow(
    docker: Docker,
    id: String,
    runner: String,
    mut output: std::pin::Pin<
        Box<dyn futures_util::Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>,
    >,
    tx: mpsc::Sender<Output>,
    oom: Arc<AtomicBool>,
) {
    let oom_watch = tokio::spawn(kill_on_oom(docker.clone(), id.clone(), runner.clone()));
    let mut out = Lines::new(Stream::Stdout, runner.clone(), tx.clone());
    let mut err = Lines::new(Stream::Stderr, runner.clone(), tx.clone());
    while let Some(item) = output.next().await {
        match item {
            Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
                out.push(&message).await
            }
            Ok(LogOutput::StdErr { message }) => err.push(&message).await,
            Ok(LogOutput::StdIn { .. }) => {}
            Err(_) => break,
        }
    }
    out.finish().await;
    err.finish().await;
    oom_watch.abort();
    let (code, killed) = exit_code(&docker, &id).await;
    oom.store(killed, Ordering::Release);
    let removed = remove(&docker, &id).await;
    tracing::info!(event = "container_removed", container = %id, runner = %runner, exit = code, oom_killed = killed, removed, "job container ended");
    let ended = match code {
        _ if killed => Ended::Signal(9),
        // The init reports a listener killed by a signal as 128 + the signal.
        c @ 129..=159 => Ended::Signal((c - 128) as i32),
        c => Ended::Code(c as i32),
    };
    let _ = tx.send(Output::Exited(ended)).await;
}

/// An OOM kill inside the job container ends the whole container: a job over its memory
/// limit is lost as one and re-run, never left half-killed to report a misleading failure.
/// (With cgroup v2 the kernel does it at once, `memory.oom.group`; this covers v1 and a
/// cgroup not ours to write.)
async fn kill_on_oom(docker: Docker, id: String, runner: String) {
    let mut events = docker.events(Some(bollard::system::EventsOptions::<String> {
        filters: HashMap::from([
            ("container".to_string(), vec![id.clone()]),
            ("event".to_string(), vec!["oom".to_string()]),
        ]),
        ..Default::default()
    }));
    if let Some(Ok(_)) = events.next().await {
        tracing::warn!(event = "container_oom", container = %id, runner = %runner, "the job went over its memory limit ([container] memory): its container is killed, the job lost and re-run");
        let _ = docker
            .kill_container(&id, Some(KillContainerOptions { signal: "SIGKILL" }))
            .await;
    }
}

/// The listener's PID on this host: the container's init's one child (the entry command
/// execs the listener). 0 when the engine's processes are not ours to see.
async fn listener_pid(init: i32) -> i32 {
    if init <= 0 {
        return 0;
    }
    let path = format!("/proc/{init}/task/{init}/children");
    for _ in 0..40 {
        if let Ok(s) = std::fs::read_to_string(&path) {
            if let Some(p) = s.split_whitespace().next().and_then(|p| p.parse().ok()) {
                return p;
            }
        } else {
            return 0;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    init
}

/// An OOM kill takes the whole job container (`memory.oom.group`), so a job over its
/// limit is lost as one, not left half-killed. Where the cgroup is not ours to write,
/// the engine's per-process OOM kill stays.
fn group_oom(pid: i32) {
    let Ok(cg) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
        return;
    };
    let Some(path) = cg.lines().find_map(|l| l.strip_prefix("0::")) else {
        return;
    };
    let file = Path::new("/sys/fs/cgroup")
        .join(path.trim_start_matches('/'))
        .join("memory.oom.group");
    if let Err(e) = std::fs::write(&file, "1") {
        tracing::debug!(file = %file.display(), error = %e, "memory.oom.group not set");
    }
}

/// `uid[:gid]` when numeric, else root's (the file is then readable by the container's
/// user, whoever it is: no one else has it).
fn numeric_user(user: Option<&str>) -> (Option<u32>, Option<u32>) {
    let Some(u) = user else {
        return (Some(0), Some(0));
    };
    let (a, b) = u.split_once(':').unwrap_or((u, ""));
    let uid = a.parse().ok();
    let gid = b.parse().ok().or(uid);
    (uid, gid)
}

/// A tar of `/runner/` (the runner's root, writable by the container's user whoever it is:
/// 1777, as /tmp; the install is mounted inside it at start) and, with a JIT config,
/// `/.runner-supervisor/jitconfig`, the container user's alone where its uid is known.
fn jit_tar(jit: Option<&str>, uid: Option<u32>, gid: Option<u32>) -> Vec<u8> {
    let known = uid.is_some();
    let (u, g) = (uid.unwrap_or(0), gid.unwrap_or(0));
    let mut out = Vec::with_capacity(4096);
    out.extend(tar_header("runner/", 0o1777, 0, 0, 0, b'5'));
    let Some(jit) = jit else {
        out.extend([0u8; 1024]);
        return out;
    };
    let dir_mode = if known { 0o700 } else { 0o777 };
    let file_mode = if known { 0o400 } else { 0o444 };
    out.extend(tar_header(&format!("{JIT_DIR}/"), dir_mode, u, g, 0, b'5'));
    let body = format!("{jit}\n");
    out.extend(tar_header(
        JIT_FILE.trim_start_matches('/'),
        file_mode,
        u,
        g,
        body.len(),
        b'0',
    ));
    out.extend(body.as_bytes());
    let pad = (512 - body.len() % 512) % 512;
    out.extend(std::iter::repeat_n(0u8, pad));
    out.extend([0u8; 1024]);
    out
}

/// One ustar header.
fn tar_header(name: &str, mode: u32, uid: u32, gid: u32, size: usize, kind: u8) -> [u8; 512] {
    let mut h = [0u8; 512];
    let put = |h: &mut [u8; 512], at: usize, len: usize, v: &[u8]| {
        h[at..at + v.len().min(len)].copy_from_slice(&v[..v.len().min(len)]);
    };
    put(&mut h, 0, 100, name.as_bytes());
    put(&mut h, 100, 8, format!("{mode:07o}\0").as_bytes());
    put(&mut h, 108, 8, format!("{uid:07o}\0").as_bytes());
    put(&mut h, 116, 8, format!("{gid:07o}\0").as_bytes());
    put(&mut h, 124, 12, format!("{size:011o}\0").as_bytes());
    let now = crate::os::clocks::wall_now().timestamp().max(0);
    put(&mut h, 136, 12, format!("{now:011o}\0").as_bytes());
    h[156] = kind;
    put(&mut h, 257, 6, b"ustar\0");
    put(&mut h, 263, 2, b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    put(&mut h, 148, 8, format!("{sum:06o}\0 ").as_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_jit_tar_is_one_private_file_that_tar_reads_back() {
        let t = jit_tar(Some("c2VjcmV0"), Some(1001), Some(1001));
        assert_eq!(t.len() % 512, 0);
        let dir = tempfile::tempdir().unwrap();
        let tar = dir.path().join("x.tar");
        std::fs::write(&tar, &t).unwrap();
        let list = std::process::Command::new("tar")
            .args(["-tvf"])
            .arg(&tar)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&list.stdout);
        assert!(list.status.success(), "{text}");
        assert!(text.contains("-r-------- 1001/1001"), "{text}");
        assert!(text.contains(".runner-supervisor/jitconfig"), "{text}");
        assert!(
            text.contains("drwxrwxrwt 0/0") && text.contains("runner/"),
            "{text}"
        );
        let x = std::process::Command::new("tar")
            .args(["-xOf"])
            .arg(&tar)
            .arg(".runner-supervisor/jitconfig")
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&x.stdout), "c2VjcmV0\n");
    }

    #[test]
    fn users_are_numeric_or_unknown() {
        assert_eq!(numeric_user(None), (Some(0), Some(0)));
        assert_eq!(numeric_user(Some("1001")), (Some(1001), Some(1001)));
        assert_eq!(numeric_user(Some("1001:27")), (Some(1001), Some(27)));
        assert_eq!(numeric_user(Some("runner")), (None, None));
    }
}
