//! The Docker engine and the host-wide services built on it: [`disk`] prunes on low disk
//! (one pruner per engine), [`autoheal`] restarts labelled unhealthy containers, and
//! [`fleet`] knows every runner's job on this host, whichever supervisor runs it. A new
//! host-wide service on the engine goes here.
//!
//! This file is the engine itself, through bollard: pruning (containers, networks, images,
//! build cache), and the container calls autoheal needs (list, inspect, restart, health
//! events).
//!
//! Invariant: the only module that imports bollard or speaks to the engine's socket.
//! It must not: remove volumes, or force-remove anything (an image in use stays).

pub mod autoheal;
pub mod disk;
pub mod fleet;

use std::collections::HashMap;
use std::time::Duration;

use bollard::container::{
    InspectContainerOptions, ListContainersOptions, PruneContainersOptions, RestartContainerOptions,
};
use bollard::image::{ListImagesOptions, PruneImagesOptions, RemoveImageOptions};
use bollard::network::PruneNetworksOptions;
use bollard::system::EventsOptions;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

use bollard::Docker;

/// A connection to one engine.
#[derive(Clone)]
pub struct Engine {
    docker: Docker,
    /// The socket's path, for the one call bollard lacks.
    socket: String,
}

/// Containers with this label set to `true` are never pruned: the compose stack labels
/// its own services, so that one stopped for maintenance is not removed under it.
pub const KEEP_LABEL: &str = "io.github.runner-supervisor.keep";

/// What a prune removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pruned {
    pub containers: usize,
    pub images: usize,
    pub networks: usize,
    pub build_cache: usize,
    pub bytes: u64,
}

impl std::ops::AddAssign for Pruned {
    fn add_assign(&mut self, o: Pruned) {
        self.containers += o.containers;
        self.images += o.images;
        self.networks += o.networks;
        self.build_cache += o.build_cache;
        self.bytes += o.bytes;
    }
}

/// What to prune.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PruneSpec {
    /// Only what is at least this old (Docker's `until` filter, as a duration).
    pub min_age: Duration,
    /// Also remove unused tagged images (not only dangling ones), except `keep`.
    pub deep: bool,
    /// Images never removed.
    pub keep: Vec<String>,
}

impl Engine {
    /// The engine's version, if it answers.
    pub async fn ping(&self) -> Result<String, String> {
        self.docker
            .version()
            .await
            .map(|v| v.version.unwrap_or_else(|| "?".into()))
            .map_err(|e| e.to_string())
    }
}

/// The engine at `docker_host` (`unix:///var/run/docker.sock`).
pub fn connect(docker_host: &str) -> Result<Engine, String> {
    let docker = Docker::connect_with_unix(docker_host, 30, bollard::API_DEFAULT_VERSION)
        .map_err(|e| format!("cannot connect to Docker at {docker_host}: {e}"))?;
    Ok(Engine {
        docker,
        socket: socket_path(docker_host).to_string(),
    })
}

/// Connect, retrying every `every` until the engine's socket appears (Docker may start
/// after us) or `cancel`; health is degraded meanwhile, with the reason. None if cancelled.
pub async fn connect_until(
    docker_host: &str,
    every: Duration,
    board: &crate::status::Board,
    cancel: &tokio_util::sync::CancellationToken,
) -> Option<Engine> {
    let mut logged = false;
    loop {
        match connect(docker_host) {
            Ok(e) => {
                if logged {
                    tracing::info!(
                        event = "docker_up",
                        host = docker_host,
                        "Docker is reachable"
                    );
                }
                board.set_condition(crate::status::Condition::Docker, None);
                return Some(e);
            }
            Err(e) => {
                if !logged {
                    tracing::warn!(event = "docker_down", error = %e, "Docker is not reachable; retrying");
                    logged = true;
                }
                board.set_condition(
                    crate::status::Condition::Docker,
                    Some((crate::status::Health::Degraded, e)),
                );
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// The socket path of a `unix://` Docker host.
pub fn socket_path(docker_host: &str) -> &str {
    docker_host.trim_start_matches("unix://")
}

/// The engine's data root (where images, containers and build cache live).
pub async fn data_root(engine: &Engine) -> Option<String> {
    engine
        .docker
        .info()
        .await
        .ok()
        .and_then(|i| i.docker_root_dir)
}

/// Prune by `spec`: stopped containers, unused networks, dangling images, unused build
/// cache, and with `deep` unused tagged images not in `keep`. Never volumes.
pub async fn prune(engine: &Engine, spec: &PruneSpec) -> Result<Pruned, String> {
    let docker = &engine.docker;
    let until = format!("{}s", spec.min_age.as_secs());
    let mut out = Pruned::default();
    let mut f: HashMap<&str, Vec<&str>> = HashMap::new();
    if spec.min_age > Duration::ZERO {
        f.insert("until", vec![until.as_str()]);
    }
    let keep_label = format!("{KEEP_LABEL}=true");
    let mut fc = f.clone();
    fc.insert("label!", vec![keep_label.as_str()]);
    let c = docker
        .prune_containers(Some(PruneContainersOptions { filters: fc }))
        .await
        .map_err(|e| format!("pruning containers: {e}"))?;
    out.containers = c.containers_deleted.map(|v| v.len()).unwrap_or(0);
    out.bytes += c.space_reclaimed.unwrap_or(0).max(0) as u64;
    let n = docker
        .prune_networks(Some(PruneNetworksOptions { filters: f.clone() }))
        .await
        .map_err(|e| format!("pruning networks: {e}"))?;
    out.networks = n.networks_deleted.map(|v| v.len()).unwrap_or(0);
    let mut fi = f.clone();
    fi.insert("dangling", vec!["true"]);
    let i = docker
        .prune_images(Some(PruneImagesOptions { filters: fi }))
        .await
        .map_err(|e| format!("pruning images: {e}"))?;
    out.images = i.images_deleted.map(|v| v.len()).unwrap_or(0);
    out.bytes += i.space_reclaimed.unwrap_or(0).max(0) as u64;
    let (caches, bytes) = prune_build_cache(&engine.socket, spec.min_age).await?;
    out.build_cache = caches;
    out.bytes += bytes;
    if spec.deep {
        // Unused tagged images, except the caches we were told to keep. An image in use
        // by a container is refused by the engine (409) and stays.
        let images = docker
            .list_images(Some(ListImagesOptions::<String> {
                all: false,
                ..Default::default()
            }))
            .await
            .map_err(|e| format!("listing images: {e}"))?;
        let cutoff = crate::os::clocks::wall_now().timestamp() - spec.min_age.as_secs() as i64;
        for img in images {
            let kept = img
                .repo_tags
                .iter()
                .any(|t| spec.keep.iter().any(|k| k == t));
            if kept || img.created > cutoff {
                continue;
            }
            let opts = RemoveImageOptions {
                force: false,
                noprune: false,
            };
            if docker.remove_image(&img.id, Some(opts), None).await.is_ok() {
                out.images += 1;
                out.bytes += img.size.max(0) as u64;
            }
        }
    }
    Ok(out)
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct BuildPruneResponse {
    #[serde(default)]
    caches_deleted: Option<Vec<String>>,
    #[serde(default)]
    space_reclaimed: Option<i64>,
}

/// `POST /build/prune?all=true` with an `until` filter: every unused build cache record at
/// least `min_age` old (BuildKit never removes a record in use by a running build).
/// bollard 0.18 has no call for this endpoint, so it is one HTTP request on the socket.
async fn prune_build_cache(socket: &str, min_age: Duration) -> Result<(usize, u64), String> {
    let mut filters = serde_json::Map::new();
    if min_age > Duration::ZERO {
        filters.insert(
            "until".into(),
            serde_json::json!([format!("{}s", min_age.as_secs())]),
        );
    }
    let query = format!(
        "all=true&filters={}",
        crate::github::urlencode(&serde_json::Value::Object(filters).to_string())
    );
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| format!("pruning build cache: cannot connect to {socket}: {e}"))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("pruning build cache: {e}"))?;
    tokio::spawn(conn);
    let req = hyper::Request::post(format!("/build/prune?{query}"))
        .header("host", "docker")
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| format!("pruning build cache: {e}"))?;
    let resp = tokio::time::timeout(Duration::from_secs(300), send.send_request(req))
        .await
        .map_err(|_| "pruning build cache: no answer within 300 s".to_string())?
        .map_err(|e| format!("pruning build cache: {e}"))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("pruning build cache: {e}"))?
        .to_bytes();
    if !status.is_success() {
        return Err(format!(
            "pruning build cache: {status}: {}",
            String::from_utf8_lossy(&body).trim()
        ));
    }
    let r: BuildPruneResponse = serde_json::from_slice(&body)
        .map_err(|e| format!("pruning build cache: unexpected answer: {e}"))?;
    Ok((
        r.caches_deleted.map(|v| v.len()).unwrap_or(0),
        r.space_reclaimed.unwrap_or(0).max(0) as u64,
    ))
}

/// A container as autoheal sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerHealth {
    pub id: String,
    pub name: String,
    pub hostname: String,
    /// `healthy`, `unhealthy`, `starting`, or `none`.
    pub health: String,
    /// Its own stop timeout (compose `stop_grace_period`), if it has one.
    pub stop_timeout: Option<Duration>,
    pub running: bool,
}

/// Containers whose `label` is `true`.
pub async fn labelled(engine: &Engine, label: &str) -> Result<Vec<ContainerHealth>, String> {
    let filter = format!("{label}=true");
    let mut filters = HashMap::new();
    filters.insert("label", vec![filter.as_str()]);
    let list = engine
        .docker
        .list_containers(Some(ListContainersOptions {
            all: false,
            filters,
            ..Default::default()
        }))
        .await
        .map_err(|e| format!("listing containers: {e}"))?;
    let mut out = vec![];
    for c in list {
        let Some(id) = c.id else { continue };
        if let Ok(h) = inspect(engine, &id).await {
            out.push(h);
        }
    }
    Ok(out)
}

/// One container's health.
pub async fn inspect(engine: &Engine, id: &str) -> Result<ContainerHealth, String> {
    let c = engine
        .docker
        .inspect_container(id, None::<InspectContainerOptions>)
        .await
        .map_err(|e| format!("inspecting {id}: {e}"))?;
    let state = c.state.unwrap_or_default();
    let config = c.config.unwrap_or_default();
    Ok(ContainerHealth {
        id: id.to_string(),
        name: c
            .name
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string(),
        hostname: config.hostname.unwrap_or_default(),
        health: state
            .health
            .and_then(|h| h.status)
            .map(|s| s.to_string())
            .unwrap_or_else(|| "none".into()),
        stop_timeout: config
            .stop_timeout
            .filter(|t| *t > 0)
            .map(|t| Duration::from_secs(t as u64)),
        running: state.running.unwrap_or(false),
    })
}

/// Restart a container: SIGTERM (its stop signal), `timeout` to stop, then SIGKILL.
pub async fn restart(engine: &Engine, id: &str, timeout: Duration) -> Result<(), String> {
    engine
        .docker
        .restart_container(
            id,
            Some(RestartContainerOptions {
                t: timeout.as_secs() as isize,
            }),
        )
        .await
        .map_err(|e| format!("restarting {id}: {e}"))
}

/// A stream of container ids whose health changed (Docker's `health_status` events),
/// for containers carrying `label`. Ends when the engine closes it.
pub fn health_events<'a>(
    engine: &'a Engine,
    label: &str,
) -> impl futures_util::Stream<Item = Result<String, String>> + 'a {
    let mut filters = HashMap::new();
    filters.insert("type".to_string(), vec!["container".to_string()]);
    filters.insert("label".to_string(), vec![format!("{label}=true")]);
    engine
        .docker
        .events(Some(EventsOptions::<String> {
            filters,
            ..Default::default()
        }))
        .filter_map(|e| async move {
            match e {
                Ok(ev) => {
                    let action = ev.action.unwrap_or_default();
                    if action.starts_with("health_status") {
                        ev.actor.and_then(|a| a.id).map(Ok)
                    } else {
                        None
                    }
                }
                Err(e) => Some(Err(e.to_string())),
            }
        })
}
